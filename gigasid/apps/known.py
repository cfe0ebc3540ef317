"""A known region held through sampling: shared by inpainting and outpainting.

The canvas ``K`` (the image to keep) and the boolean ``hole`` (what to generate) are carried
down the pyramid together: each level of ``K`` is resampled from the previous one, and a
pixel of a coarser level counts as known only if the hole makes up less than
:data:`HOLE_REACH` of its value (known pixels carry no visible hole content, and the hole
does not swallow small coarse levels through the resampler's faint outer taps).

After every step of every scale the known pixels are set to ``alpha_t K + sigma_t z`` (fresh
counter-based noise): the generated region always sees context at its own noise level, and
at the last step (``alpha = 1, sigma = 0``) the known pixels are ``K`` itself, bit for bit.
"""

from __future__ import annotations

import torch

from gigasid.core import noise
from gigasid.core.pyramid import resize_in_bands
from gigasid.core.sampler import HoldFn, InitFn
from gigasid.core.schedule import Schedule

#: A coarse pixel belongs to the hole when the hole makes up more than this share of it.
HOLE_REACH = 0.02


def hole_pyramid(hole: torch.Tensor, shapes: list[tuple[int, int]]) -> list[torch.Tensor]:
    """The hole at every level: the pixels that more than :data:`HOLE_REACH` of hole
    content reaches (through the same level-by-level resampling as the pyramid)."""
    levels = [hole.bool()]
    share = hole.to(torch.float64)[None]
    for shp in shapes[1:]:
        # Absolute taps: the negative lobes of the cubic carry hole content too.
        share = resize_in_bands(share, shp).abs().clamp(max=1.0)
        levels.append(share[0] > HOLE_REACH)
    return levels


def hold_fn(known: torch.Tensor, hole: torch.Tensor, schedule: Schedule, seed: int,
            scale: int) -> HoldFn:
    """``x <- alpha_t K + sigma_t z`` on the known pixels of a region, after a step to t."""
    c = known.shape[0]

    def hold(region, t: int, x: torch.Tensor) -> torch.Tensor:
        y0, y1, x0, x1 = region
        keep = ~hole[y0:y1, x0:x1].to(x.device)
        k = known[:, y0:y1, x0:x1].to(x.device, torch.float32)
        a, s = schedule.alphas[t], schedule.sigmas[t]
        if s > 0:
            z = noise.gaussian_region(seed, scale, t, c, region, noise.STREAM_HOLD,
                                      device=x.device)
            k = a * k + s * z
        return torch.where(keep, k, x)

    return hold


def held_init(init: InitFn, hold: HoldFn, t: int) -> InitFn:
    """An initial state at step ``t`` with the known pixels held."""

    def start(region) -> torch.Tensor:
        return hold(region, t, init(region))

    return start
