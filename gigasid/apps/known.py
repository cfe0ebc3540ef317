"""A known region held through sampling: shared by inpainting and outpainting.

The canvas ``K`` (the image to keep) and the boolean ``hole`` (what to generate) are carried
down the pyramid together: each level of ``K`` is resampled from the previous one, and so is
the hole's *share* of every pixel. Two masks follow from the share at each level:

* what is generated: pixels that are mostly hole (share >= 1/2), so that each coarse level's
  known region has the same footprint as the finest one. (Generating every pixel the hole
  merely reaches would leave, at the next finer scale, a band where the coarse result was
  invented but the fine pixels are kept: a low-frequency seam along the border.)
* what the datasets leave out: windows that hold any pixel with a share above
  :data:`HOLE_REACH`, so no reference patch carries visible hole content.

After every step of every scale the known pixels are set to ``alpha_t K + sigma_t z`` (fresh
counter-based noise): the generated region always sees context at its own noise level, and
at the last step (``alpha = 1, sigma = 0``) the known pixels are ``K`` itself, bit for bit.
"""

from __future__ import annotations

import torch

from gigasid.core import noise
from gigasid.core.pyramid import resize_in_bands
from gigasid.core.sampler import ActiveFn, HoldFn, InitFn
from gigasid.core.schedule import Schedule

#: A coarse pixel belongs to the hole when the hole makes up more than this share of it.
HOLE_REACH = 0.02


def hole_shares(hole: torch.Tensor, shapes: list[tuple[int, int]]) -> list[torch.Tensor]:
    """The hole's share of every pixel at every level (1 in the hole at the finest), carried
    through the same level-by-level resampling as the pyramid."""
    shares = [hole.to(torch.float64)]
    for shp in shapes[1:]:
        # Absolute values: the negative lobes of the cubic carry hole content too.
        shares.append(resize_in_bands(shares[-1][None], shp)[0].abs().clamp(max=1.0))
    return shares


def known_pyramid(image: torch.Tensor, hole: torch.Tensor,
                  shapes: list[tuple[int, int]]) -> list[torch.Tensor]:
    """The known image at every level, made from the known pixels alone.

    Each level is a normalised resampling: the image times the known weight (1 outside the
    hole) and the weight itself go through the same level-by-level resampling as the
    pyramid, and their ratio is the level. A coarse pixel next to the hole is then an
    average of known pixels only, not a mix with what the hole holds (the object to remove,
    or an empty canvas), which would be held as known and show as a band along the border.
    Where the weight is at most 1/4 the pixel is at least 3/4 hole, generated at every
    level, and never read: it is set to 0.
    """
    w = (~hole).to(image.device, torch.float64)[None]
    num = image.to(torch.float64) * w
    levels = [image]
    for shp in shapes[1:]:
        num = resize_in_bands(num, shp)
        w = resize_in_bands(w, shp)
        ok = w > 0.25
        levels.append(torch.where(ok, num / torch.where(ok, w, 1.0), 0.0).to(image.dtype))
    return levels


def generated_mask(share: torch.Tensor, finest: bool) -> torch.Tensor:
    """The pixels a level generates: the hole itself at the finest, mostly-hole ones above."""
    return share > 0.5 if not finest else share > 0


def excluded_mask(share: torch.Tensor) -> torch.Tensor:
    """The pixels whose windows a dataset leaves out (any visible hole content)."""
    return share > HOLE_REACH


def smooth_fill(image: torch.Tensor, hole: torch.Tensor) -> torch.Tensor:
    """``image`` with its hole filled smoothly from the surrounding known pixels (push-pull:
    masked averages on ever coarser grids, then filled back up, each level blurred)."""
    import torch.nn.functional as F

    x = image.to(torch.float32)[None]
    w = (~hole).to(x.device, torch.float32)[None, None]
    # when to stop is decided on the CPU copy of the mask: no device sync per level
    left = hole.cpu()[None, None].to(torch.float32)
    stack = []
    while True:
        stack.append((x, w))
        if not bool((left > 0).any()) or min(x.shape[-2:]) <= 1:
            break
        num = F.avg_pool2d(x * w, 2, ceil_mode=True)
        den = F.avg_pool2d(w, 2, ceil_mode=True)
        x = num / den.clamp(min=1e-8)
        w = (den > 0).to(torch.float32)
        left = (F.avg_pool2d(left, 2, ceil_mode=True) == 1).to(torch.float32)
    filled = stack[-1][0]
    for x, w in reversed(stack[:-1]):
        up = F.interpolate(filled, size=x.shape[-2:], mode="bilinear", align_corners=False)
        filled = torch.where(w > 0, x, up)
    return filled[0]


def hold_fn(known: torch.Tensor, hole: torch.Tensor, schedule: Schedule, seed: int,
            scale: int) -> HoldFn:
    """``x <- alpha_t K + sigma_t z`` on the known pixels of a region, after a step to t."""
    c = known.shape[0]

    def hold(region, tr, x: torch.Tensor) -> torch.Tensor:
        y0, y1, x0, x1 = region
        t = tr.t_to
        keep = ~hole[y0:y1, x0:x1].to(x.device)
        k = known[:, y0:y1, x0:x1].to(x.device, torch.float32)
        a, s = schedule.alphas[t], schedule.sigmas[t]
        if s > 0:
            z = noise.gaussian_region(seed, scale, t + 100_000 * tr.visit, c, region,
                                      noise.STREAM_HOLD, device=x.device)
            k = a * k + s * z
        return torch.where(keep, k, x)

    return hold


#: Side of the blocks (pixels of the scale) in which the work near a hole is cut: only blocks
#: that hold generated pixels are computed.
ACTIVE_BLOCK = 32


#: Above this share of a region, its parts are not worth their halos: the whole region is
#: computed (each part reads its own patch and blend margins).
ACTIVE_MAX_SHARE = 0.5


def active_parts(hole: torch.Tensor, block: int = ACTIVE_BLOCK) -> ActiveFn:
    """The ``active`` hook of a held region: the blocks of a fixed grid that hold generated
    pixels, consecutive ones in a block row merged, then block rows with the same runs
    merged, clipped to the asked region; the whole region when the parts would cover more
    than :data:`ACTIVE_MAX_SHARE` of it.

    >>> hole = torch.zeros(100, 100, dtype=torch.bool); hole[40:45, 70:75] = True
    >>> active_parts(hole)((0, 100, 0, 100))
    [(32, 64, 64, 96)]
    >>> hole[:, :30] = True  # a band down the left edge: one part, not one per block row
    >>> active_parts(hole)((0, 100, 0, 100))
    [(0, 100, 0, 32), (32, 64, 64, 96)]
    """
    import torch.nn.functional as F

    occupied = F.max_pool2d(hole[None, None].to(torch.float32).cpu(), block,
                            ceil_mode=True)[0, 0] > 0

    def runs(by: int, x0: int, x1: int) -> list[tuple[int, int]]:
        row = occupied[by, x0 // block: -(-x1 // block)].tolist()
        found, bx = [], 0
        while bx < len(row):
            if not row[bx]:
                bx += 1
                continue
            end = bx
            while end < len(row) and row[end]:
                end += 1
            found.append((max(x0, (x0 // block + bx) * block),
                          min(x1, (x0 // block + end) * block)))
            bx = end
        return found

    def parts(region) -> list:
        y0, y1, x0, x1 = region
        open_parts: dict[tuple[int, int], int] = {}  # x-run -> first block row, still open
        out = []
        rows = range(y0 // block, -(-y1 // block))
        for by in [*rows, None]:
            now = set(runs(by, x0, x1)) if by is not None else set()
            for run, start in list(open_parts.items()):
                if run not in now:  # the run ends above this block row
                    out.append((max(y0, start * block), min(y1, by * block if by is not None
                                                            else y1), *run))
                    del open_parts[run]
            for run in now:
                open_parts.setdefault(run, by)
        out.sort()
        area = sum((p[1] - p[0]) * (p[3] - p[2]) for p in out)
        if area > ACTIVE_MAX_SHARE * (y1 - y0) * (x1 - x0):
            return [tuple(region)]
        return out

    return parts


def held_init(init: InitFn, hold: HoldFn, t: int) -> InitFn:
    """An initial state at step ``t`` with the known pixels held."""
    from gigasid.core.sampler import Transition

    at = Transition(t, t)

    def start(region) -> torch.Tensor:
        return hold(region, at, init(region))

    return start


def known_program(view, scale: int, seed: int, known: torch.Tensor, hole: torch.Tensor,
                  start_noise: float, hold: bool = True):
    """The program of one scale with a held known region.

    Every scale samples like ``uncond`` with the known pixels held after each step. The
    coarsest scale does not start from pure noise: at the noise level ``start_noise`` it
    starts from a smooth fill of the hole (``alpha K_fill + sigma z``), so the colours and
    the large shapes of the fill come from the hole's surroundings instead of from the
    dataset's mean, which is what the first, noisiest steps of a denoiser return.
    """
    from gigasid.apps.base import ScaleProgram, uncond_program
    from gigasid.core.sampler import sampling_transitions

    sch = view.schedule(scale)
    coarsest = scale == view.num_scales - 1
    fn = hold_fn(known, hole, sch, seed, scale) if hold else None
    if coarsest and start_noise < 1.0:
        t0 = sch.index_for_noise_level(start_noise)
        fill = smooth_fill(known, hole)
        a, s = sch.alphas[t0], sch.sigmas[t0]

        def init(region):
            y0, y1, x0, x1 = region
            z = noise.gaussian_region(seed, scale, t0, known.shape[0], region,
                                      noise.STREAM_INIT, device=view.device)
            return a * fill[:, y0:y1, x0:x1].to(z.device) + s * z

        prog = ScaleProgram(init=init, transitions=sampling_transitions(
            sch.num_steps, view.eta, blend=False, start=t0))
    else:
        prog = uncond_program(view, scale, seed)
        t0 = sch.num_steps
    if fn is not None:
        prog.hold = fn
        prog.init = held_init(prog.init, fn, t0)
        prog.active = active_parts(hole)
    return prog


#: Largest region (pixels) the texture pass works on at once; beyond it the fill is left as
#: sampled (the pass is sequential and holds its region in memory).
TEXTURE_PASS_MAX_PIXELS = 64 * 2**20


def texture_finish(view, known: torch.Tensor, hole: torch.Tensor, seed: int,
                   offset: tuple[int, int] = (0, 0)):
    """The texture pass of a held-region app (:mod:`gigasid.core.resynthesis`) as a
    :class:`~gigasid.apps.base.Finish`, or None when there is nothing to do or the region is
    too large.

    The pass works on the hole's bounding box grown on every side by its larger side (at
    least 32 px): the known pixels it copies come from there. Its layout candidates are the
    finest scale's own ANN search (windows of the first reference; ``offset`` places that
    reference on the canvas).
    """
    from gigasid.apps.base import Finish
    from gigasid.core.resynthesis import resynthesize

    ys, xs = torch.nonzero(hole, as_tuple=True)
    if ys.numel() == 0:
        return None
    h, w = hole.shape
    y0, y1, x0, x1 = int(ys.min()), int(ys.max()) + 1, int(xs.min()), int(xs.max()) + 1
    grow = max(32, y1 - y0, x1 - x0)
    area = (max(0, y0 - grow), min(h, y1 + grow), max(0, x0 - grow), min(w, x1 + grow))
    if (area[1] - area[0]) * (area[3] - area[2]) > TEXTURE_PASS_MAX_PIXELS:
        view.event("texture_pass_skipped", reason="region too large", region=list(area))
        return None
    patch = view.contexts[0].patch
    den = view.contexts[0].denoisers.get("main")
    aw = area[3] - area[2]

    def candidates(windows):
        # the search runs where the index lives (a GPU job's device); the pass on the CPU
        idx = den.search(torch.from_numpy(windows).to(den.src.device), 1.0)
        image, y, x = (t.cpu() for t in den.src.corners(idx.clamp(min=0)))
        ok = (idx >= 0).cpu() & (image == 0)  # only the first reference is on the canvas
        cy = y + patch // 2 + offset[0] - area[0]
        cx = x + patch // 2 + offset[1] - area[2]
        ok &= (cy >= 0) & (cy < area[1] - area[0]) & (cx >= 0) & (cx < aw)
        return torch.where(ok, cy * aw + cx, -1).numpy()

    search = (candidates if hasattr(den, "search") and hasattr(getattr(den, "src", None), "corners")
              else None)
    a0, a1, b0, b1 = area

    def apply(pixels: torch.Tensor) -> torch.Tensor:
        inside = hole[a0:a1, b0:b1]
        out = resynthesize(known[:, a0:a1, b0:b1].cpu().numpy(), inside.numpy(),
                           pixels.cpu().numpy(), seed, search, search_patch=patch)
        # only the generated pixels change (the rest is the held known region already)
        return torch.where(inside[None], torch.from_numpy(out), pixels.cpu())

    return Finish(region=area, apply=apply)
