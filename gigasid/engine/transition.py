"""One transition of one scale (x_t -> x_t') evaluated on one stored region.

This is the unit of work the engine schedules: read the region's input window of ``x_t``
(the region grown by the patch halo and the blend support, wrapped or reflected by the
scale's domain), denoise, blend with the finished coarser scale, take the eta-step with
counter-based noise, then let the program's hold hook put back what is known. Its result
depends only on global coordinates, never on how the image was cut into regions.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch

from gigasid.core import image_denoiser as idn
from gigasid.core import noise
from gigasid.core.domain import read_window
from gigasid.core.sampler import ScaleContext, ScaleProgram, Transition
from gigasid.core.schedule import implied_noise, step

Region = tuple[int, int, int, int]
Reader = Callable[[Region], torch.Tensor]


@functools.lru_cache(maxsize=65536)
def _windows(domain, patch, stride, low_shape, coarser, blend: bool, region: Region):
    est_region, coarse = region, None
    if blend:
        est_region, coarse = idn.blend_input_region(domain, low_shape, coarser, region)
    # Where the estimate is computed: on a mirror axis, pixels of the trailing half take the
    # values of their reflections (computed in the leading half).
    ya, yb, iy = domain.y.canonical(est_region[0], est_region[1])
    xa, xb, ix = domain.x.canonical(est_region[2], est_region[3])
    canon = (ya, yb, xa, xb)
    xwin = idn.patch_halo_region(domain, patch, stride, canon)
    # The step also reads x_t on the region itself.
    xwin = (min(xwin[0], region[0]), max(xwin[1], region[1]),
            min(xwin[2], region[2]), max(xwin[3], region[3]))
    return est_region, canon, (iy, ix), xwin, coarse


def input_windows(ctx: ScaleContext, tr: Transition, region: Region):
    """What ``region`` needs: ``(est_region, canonical_region, index_maps, x_window,
    coarser_window)`` in full-image coordinates."""
    return _windows(ctx.domain, ctx.patch, ctx.query_stride, ctx.low_shape, ctx.coarser,
                    tr.blend, tuple(region))


def run_transition(ctx: ScaleContext, program: ScaleProgram, tr: Transition, region: Region,
                   read_x: Reader, read_coarser: Reader | None, seed: int) -> torch.Tensor:
    """Compute ``x_{t_to}`` on stored ``region`` (``(C, h, w)`` float32).

    ``read_x`` and ``read_coarser`` read stored regions of this scale's state and of the
    finished coarser scale. With a program's ``active`` hook only the region's active parts
    are computed; the hold sets the rest (the same bytes as computing everything).
    """
    parts = None if program.active is None or program.hold is None else program.active(region)
    if parts is None or list(parts) == [tuple(region)]:
        return _compute(ctx, program, tr, region, read_x, read_coarser, seed)
    y0, y1, x0, x1 = region
    out = torch.zeros((ctx.channels, y1 - y0, x1 - x0), device=ctx.device)
    for p in parts:  # held once, on the whole region, below
        out[:, p[0] - y0 : p[1] - y0, p[2] - x0 : p[3] - x0] = _compute(
            ctx, program, tr, p, read_x, read_coarser, seed, hold=False)
    return program.hold(region, tr, out)


def _compute(ctx: ScaleContext, program: ScaleProgram, tr: Transition, region: Region,
             read_x: Reader, read_coarser: Reader | None, seed: int,
             hold: bool = True) -> torch.Tensor:
    sch = ctx.schedule
    a, s = sch.alphas[tr.t_from], sch.sigmas[tr.t_from]
    a2, s2 = sch.alphas[tr.t_to], sch.sigmas[tr.t_to]
    est_region, canon, (iy, ix), xwin, cwin = input_windows(ctx, tr, region)
    x = read_window(read_x, ctx.domain, xwin).to(ctx.device, torch.float32)
    x_hat = idn.denoise_region(x, (xwin[0], xwin[2]), ctx.domain, canon, ctx.patch,
                               ctx.query_stride, ctx.window, ctx.denoisers[tr.dataset], a, s)
    if iy is not None:
        x_hat = x_hat.index_select(1, iy.to(x_hat.device))
    if ix is not None:
        x_hat = x_hat.index_select(2, ix.to(x_hat.device))
    if program.estimate is not None:
        x_hat = program.estimate(est_region, tr, x_hat)
    y0, y1, x0, x1 = region
    ey, ex = est_region[0], est_region[2]
    x_hat_r = x_hat[:, y0 - ey : y1 - ey, x0 - ex : x1 - ex]
    x_t = x[:, y0 - xwin[0] : y1 - xwin[0], x0 - xwin[2] : x1 - xwin[2]]
    # The noise estimate comes from the unblended estimate (spec §5 b).
    eps = implied_noise(x_t, x_hat_r, a, s)
    if tr.blend:
        coarser = read_window(read_coarser, ctx.coarser, cwin).to(ctx.device, torch.float32)
        x_hat_r = idn.laplacian_blend(x_hat, (ey, ex), coarser, (cwin[0], cwin[2]), ctx.domain,
                                      ctx.low_shape, ctx.coarser, region)
    z = None
    if tr.eta > 0 and s2 > 0:
        z = noise.gaussian_region(seed, ctx.scale, tr.noise_step, ctx.channels, region,
                                  noise.STREAM_STEP, device=ctx.device)
    out = step(x_hat_r, eps, a2, s2, tr.eta, z)
    if hold and program.hold is not None:
        out = program.hold(region, tr, out)
    return out


__all__ = ["Region", "ScaleContext", "ScaleProgram", "Transition", "input_windows",
           "run_transition"]
