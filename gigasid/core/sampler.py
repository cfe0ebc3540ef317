"""The coarse-to-fine sampler on whole images: the readable spec and the engine's test oracle.

This is the paper's algorithm (spec §5) written for one image held in memory, in the
k-diffusion style: a scale is an initial state and a list of transitions ``t -> t'``; every
transition denoises, optionally blends with the finished coarser scale, and steps.
Applications change only what a :class:`ScaleProgram` says: how a scale starts, which
transitions run with which dataset's denoiser, and two hooks.

The engine (``gigasid.engine``) runs the same programs region by region, streamed and
resumable; its output must equal :func:`sample` for every application (tested). Nothing
here is tiled: patches are extracted with plain index arithmetic, folded with
``index_add_``, and a torus is handled by wrapping indices, so the two implementations share
as little as possible.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from gigasid.core import noise as noise_mod
from gigasid.core import resample
from gigasid.core.domain import Domain
from gigasid.core.schedule import Schedule, implied_noise, step

Region = tuple[int, int, int, int]
#: ``init(region) -> (C, h, w)``: a scale's initial state on a stored region.
InitFn = Callable[[Region], torch.Tensor]
#: ``hold(region, transition, x) -> x``: after a step (to ``transition.t_to``), put back what
#: is known on ``region``.
HoldFn = Callable[[Region, "Transition", torch.Tensor], torch.Tensor]
#: ``estimate(region, transition, x_hat) -> x_hat``: post-process the clean estimate of
#: ``transition`` on ``region`` (full-image coordinates). The noise estimate of the step is
#: implied by the returned estimate. A hook on a tiled scale must be local (a pixel's output
#: depends on that pixel's input only); a non-local hook needs its app's ``whole_image``.
EstimateFn = Callable[[Region, "Transition", torch.Tensor], torch.Tensor]
#: ``active(region) -> parts``: the sub-regions of a stored region whose pixels ``hold`` does
#: not overwrite. Everything else in the region is held after every step, so a region's
#: transition only needs to compute its parts (each exactly as the whole region would: the
#: estimate of a pixel does not depend on the region it is computed in).
ActiveFn = Callable[[Region], "list[Region]"]


@dataclass(frozen=True)
class Transition:
    """Move from step ``t_from`` to ``t_to`` with a given eta, blending or not, using the
    denoiser of dataset ``dataset``.

    ``visit`` tells repeated visits of the same step apart (e.g. resampling, which goes back
    and forth between two steps): each visit draws its own noise.
    """

    t_from: int
    t_to: int
    eta: float = 0.0
    blend: bool = False
    dataset: str = "main"
    visit: int = 0

    @property
    def noise_step(self) -> int:
        """The step counter of this transition's noise (distinct for every visit)."""
        return self.t_from + 100_000 * self.visit


@dataclass
class ScaleProgram:
    """How one scale runs: its initial state, its transitions in order, and its hooks."""

    init: InitFn
    transitions: list[Transition] = field(default_factory=list)
    hold: HoldFn | None = None
    estimate: EstimateFn | None = None
    #: where work is needed (with ``hold``; None: everywhere); the whole-image :func:`sample`
    #: computes everywhere, which gives the same result
    active: ActiveFn | None = None


@dataclass
class ScaleContext:
    """Everything a transition at one scale needs besides the pixels."""

    scale: int
    domain: Domain
    channels: int
    patch: int
    query_stride: int
    window: torch.Tensor  # 1-D fold window
    denoisers: dict
    schedule: Schedule
    low_shape: tuple[int, int] | None = None  # blend low band (None: no coarser scale)
    coarser: Domain | None = None
    device: str = "cpu"

    @property
    def shape(self) -> tuple[int, int]:
        """Full image ``(H, W)`` of this scale."""
        return self.domain.shape

    @property
    def stored_shape(self) -> tuple[int, int]:
        return self.domain.stored_shape


def sampling_transitions(num_steps: int, eta: float, blend: bool, start: int | None = None,
                         dataset: str = "main") -> list[Transition]:
    """``start -> ... -> 0``; the blend is skipped at the final step (spec §5)."""
    t0 = num_steps if start is None else start
    return [Transition(t, t - 1, eta, blend and t != 1, dataset) for t in range(t0, 0, -1)]


def inversion_transitions(stop: int, dataset: str = "main") -> list[Transition]:
    """Deterministic DDIM inversion ``1 -> 2 -> ... -> stop`` (spec §6.5), no blend."""
    return [Transition(t, t + 1, 0.0, False, dataset) for t in range(1, stop)]


# --------------------------------------------------------------------------- whole images


def _axis_windows(axis, patch: int, stride: int) -> torch.Tensor:
    """``(n, P)`` pixel indices of every window along an axis (wrapped on a torus)."""
    starts = axis.patch_grid(patch, stride)
    return torch.remainder(starts[:, None] + torch.arange(patch)[None, :], axis.size)


def denoise_image(x: torch.Tensor, domain: Domain, patch: int, stride: int,
                  window: torch.Tensor, denoiser, alpha: float, sigma: float) -> torch.Tensor:
    """The closed-form image denoiser on a whole (full, unstored) image (spec §2.4).

    Every window of the domain's grid is extracted, denoised, weighted by ``g(u) g(v)`` and
    added back (``index_add_``), then divided by the summed weights.
    """
    c, h, w = x.shape
    iy = _axis_windows(domain.y, patch, stride)  # (ny, P)
    ix = _axis_windows(domain.x, patch, stride)  # (nx, P)
    ny, nx = iy.shape[0], ix.shape[0]
    # patches[a, b] = x[:, iy[a], :][:, :, ix[b]] -> (ny, nx, C, P, P)
    pt = x[:, iy][:, :, :, ix]  # (C, ny, P, nx, P)
    q = pt.permute(1, 3, 0, 2, 4).reshape(ny * nx, c * patch * patch)
    est = denoiser(q, alpha, sigma).to(torch.float32).view(ny, nx, c, patch, patch)
    # a window of a mirror axis's trailing half takes its partner's estimate, reflected
    for dim, axis in ((0, domain.y), (1, domain.x)):
        if axis.kind == "mirror":
            starts = axis.patch_grid(patch, stride)
            canon, flipped = axis.canonical_windows(starts, patch)
            est = est.index_select(dim, torch.searchsorted(starts, canon))
            flip = est.flip(dim + 3)
            mask = flipped.view(-1, 1, 1, 1, 1) if dim == 0 else flipped.view(1, -1, 1, 1, 1)
            est = torch.where(mask, flip, est)
    g = window.to(torch.float64)
    w2 = (g[:, None] * g[None, :]).to(torch.float32)
    est = (est * w2).permute(2, 0, 3, 1, 4)  # (C, ny, P, nx, P)
    pix = (iy[:, :, None, None] * w + ix[None, None, :, :]).reshape(-1)
    num = torch.zeros(c, h * w, dtype=torch.float32)
    num.index_add_(1, pix, est.reshape(c, -1))
    den = torch.zeros(h * w, dtype=torch.float64)
    wts = (g[None, :, None, None] * g[None, None, None, :]).expand(ny, patch, nx, patch)
    den.index_add_(0, pix, wts.reshape(-1))
    return (num / den.to(torch.float32)).view(c, h, w)


def resize_image(x: torch.Tensor, out_shape: tuple[int, int],
                 wrap: tuple[bool, bool] = (False, False)) -> torch.Tensor:
    """Resample a whole image; periodic axes are padded circularly first."""
    pad_y = 16 if wrap[0] else 0
    pad_x = 16 if wrap[1] else 0
    xp = x
    if pad_y or pad_x:
        reps_y = -(-pad_y // x.shape[1]) if pad_y else 0
        reps_x = -(-pad_x // x.shape[2]) if pad_x else 0
        # circular padding by whole copies, then trimmed (F.pad allows at most one period)
        xp = x.repeat(1, 2 * reps_y + 1, 2 * reps_x + 1)
        oy, ox = reps_y * x.shape[1] - pad_y, reps_x * x.shape[2] - pad_x
        xp = xp[:, oy: oy + x.shape[1] + 2 * pad_y, ox: ox + x.shape[2] + 2 * pad_x]
    return resample.resize_region(xp, (-pad_y, -pad_x), tuple(x.shape[1:]), out_shape,
                                  (0, out_shape[0], 0, out_shape[1]), wrap)


def blend_image(fine: torch.Tensor, coarser: torch.Tensor, fine_domain: Domain,
                low_shape: tuple[int, int], coarser_domain: Domain) -> torch.Tensor:
    """``up(coarser) + fine - up(down(fine))`` on whole images (spec §4.4)."""
    wrap = fine_domain.wraps
    low = resize_image(fine, low_shape, wrap)
    return (resize_image(coarser, fine_domain.shape, coarser_domain.wraps)
            + fine - resize_image(low, fine_domain.shape, wrap))


def sample(contexts: list[ScaleContext], programs: list[ScaleProgram], seed: int
           ) -> torch.Tensor:
    """Run every scale's program, coarsest first; returns the finest full image in [-1, 1].

    ``contexts[s]`` and ``programs[s]`` describe scale ``s`` (0 = finest). State is kept as
    the whole image; on mirror axes every estimate is symmetrised (its leading half
    reflected), which is what computing only the leading half amounts to.
    """
    coarser = None
    for s in reversed(range(len(contexts))):
        ctx, prog = contexts[s], programs[s]
        dom = ctx.domain
        hs, ws = dom.stored_shape
        whole: Region = (0, hs, 0, ws)
        x = dom.expand(prog.init(whole).to(torch.float32))
        sch = ctx.schedule
        for tr in prog.transitions:
            a, sg = sch.alphas[tr.t_from], sch.sigmas[tr.t_from]
            a2, s2 = sch.alphas[tr.t_to], sch.sigmas[tr.t_to]
            x_hat = denoise_image(x, dom, ctx.patch, ctx.query_stride, ctx.window,
                                  ctx.denoisers[tr.dataset], a, sg)
            x_hat = dom.expand(dom.fold_in(x_hat))  # symmetrise on mirror axes
            if prog.estimate is not None:
                x_hat = prog.estimate((0, dom.shape[0], 0, dom.shape[1]), tr, x_hat)
            eps = implied_noise(x, x_hat, a, sg)  # from the unblended estimate (spec §5 b)
            if tr.blend:
                x_hat = blend_image(x_hat, coarser, dom, ctx.low_shape, ctx.coarser)
            z = None
            if tr.eta > 0 and s2 > 0:
                z = dom.expand(noise_mod.gaussian_region(seed, s, tr.noise_step, ctx.channels,
                                                         whole, noise_mod.STREAM_STEP))
            x = step(x_hat, eps, a2, s2, tr.eta, z)
            if prog.hold is not None:
                x = dom.expand(prog.hold(whole, tr, dom.fold_in(x)))
        coarser = x
    return coarser


__all__ = ["ScaleContext", "ScaleProgram", "Transition", "blend_image", "denoise_image",
           "inversion_transitions", "resize_image", "sample", "sampling_transitions"]
