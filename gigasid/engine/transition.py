"""One transition of one scale (x_t -> x_t') evaluated on one output region.

This is the unit of work the engine schedules: read the region's input window of ``x_t``
(the region grown by the patch halo and the blend support), denoise, blend with the finished
coarser scale, take the eta-step with counter-based noise. Its result depends only on global
coordinates, never on how the image was cut into regions.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from gigasid.core import image_denoiser as idn
from gigasid.core import noise
from gigasid.core.schedule import Schedule, implied_noise, step

Region = tuple[int, int, int, int]
Reader = Callable[[Region], torch.Tensor]


@dataclass
class ScaleContext:
    """Everything a transition at one scale needs besides the pixels."""

    scale: int
    shape: tuple[int, int]
    channels: int
    patch: int
    query_stride: int
    window: torch.Tensor  # 1-D fold window
    denoiser: object
    schedule: Schedule
    low_shape: tuple[int, int] | None = None  # blend low band (None: no coarser scale)
    coarser_shape: tuple[int, int] | None = None
    device: str = "cpu"


@dataclass(frozen=True)
class Transition:
    """Move from step ``t_from`` to ``t_to`` with a given eta, blending or not."""

    t_from: int
    t_to: int
    eta: float = 0.0
    blend: bool = False


def input_windows(ctx: ScaleContext, tr: Transition,
                  region: Region) -> tuple[Region, Region, Region | None]:
    """What ``region`` needs: the estimate's region, the ``x_t`` window, the coarser window."""
    est_region, coarse = region, None
    if tr.blend:
        est_region, coarse = idn.blend_input_region(ctx.shape, ctx.low_shape,
                                                    ctx.coarser_shape, region)
    xwin = idn.patch_halo_region(ctx.shape, ctx.patch, ctx.query_stride, est_region)
    # The step also reads x_t on the region itself.
    xwin = (min(xwin[0], region[0]), max(xwin[1], region[1]),
            min(xwin[2], region[2]), max(xwin[3], region[3]))
    return est_region, xwin, coarse


def run_transition(ctx: ScaleContext, tr: Transition, region: Region, read_x: Reader,
                   read_coarser: Reader | None, seed: int) -> torch.Tensor:
    """Compute ``x_{t_to}`` on ``region`` (``(C, h, w)`` float32)."""
    sch = ctx.schedule
    a, s = sch.alphas[tr.t_from], sch.sigmas[tr.t_from]
    a2, s2 = sch.alphas[tr.t_to], sch.sigmas[tr.t_to]
    est_region, xwin, cwin = input_windows(ctx, tr, region)
    x = read_x(xwin).to(ctx.device, torch.float32)
    x_hat = idn.denoise_region(x, (xwin[0], xwin[2]), ctx.shape, est_region, ctx.patch,
                               ctx.query_stride, ctx.window, ctx.denoiser, a, s)
    y0, y1, x0, x1 = region
    ey, ex = est_region[0], est_region[2]
    x_hat_r = x_hat[:, y0 - ey : y1 - ey, x0 - ex : x1 - ex]
    x_t = x[:, y0 - xwin[0] : y1 - xwin[0], x0 - xwin[2] : x1 - xwin[2]]
    # The noise estimate comes from the unblended estimate (spec §5 b).
    eps = implied_noise(x_t, x_hat_r, a, s)
    if tr.blend:
        coarser = read_coarser(cwin).to(ctx.device, torch.float32)
        x_hat_r = idn.laplacian_blend(x_hat, (ey, ex), coarser, (cwin[0], cwin[2]), ctx.shape,
                                      ctx.low_shape, ctx.coarser_shape, region)
    z = None
    if tr.eta > 0 and s2 > 0:
        z = noise.gaussian_region(seed, ctx.scale, tr.t_from, ctx.channels, region,
                                  noise.STREAM_STEP, device=ctx.device)
    return step(x_hat_r, eps, a2, s2, tr.eta, z)
