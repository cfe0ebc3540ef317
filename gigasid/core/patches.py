"""Patch grids, extraction and the Gaussian-weighted fold (spec §2), region by region.

Patch positions are functions of GLOBAL coordinates: only windows fully inside the image are
valid (no padding), and with stride ``s > 1`` the grid is anchored at global multiples of
``s`` *plus* the last window ``size - P``, so every row and column is covered (the reference
implementation leaves a zero band there instead).
"""

from __future__ import annotations

import math

import torch

from gigasid.core import kernels


def patch_starts(size: int, patch: int, stride: int = 1) -> torch.Tensor:
    """Start offsets of the valid windows along one axis, covering every pixel.

    Parameters
    ----------
    size:
        Length of the axis (global).
    patch:
        Patch side ``P``; must be ``<= size``.
    stride:
        Grid step; the window ``size - P`` is always added so the border is covered.
    """
    if patch > size:
        raise ValueError(f"patch {patch} larger than axis {size}")
    starts = torch.arange(0, size - patch + 1, stride, dtype=torch.int64)
    if int(starts[-1]) != size - patch:
        starts = torch.cat([starts, torch.tensor([size - patch])])
    return starts


def starts_touching(starts: torch.Tensor, patch: int, lo: int, hi: int) -> torch.Tensor:
    """The subset of window starts whose window intersects ``[lo, hi)``."""
    keep = (starts + patch > lo) & (starts < hi)
    return starts[keep]


def input_span(starts: torch.Tensor, patch: int) -> tuple[int, int]:
    """The pixel range ``[lo, hi)`` read by the windows starting at ``starts``."""
    return int(starts[0]), int(starts[-1]) + patch


def extract(x: torch.Tensor, ys: torch.Tensor, xs: torch.Tensor, patch: int) -> torch.Tensor:
    """Gather the windows at ``ys x xs`` (offsets into ``x``) as flat patches.

    Parameters
    ----------
    x:
        ``(C, H, W)`` tensor.
    ys, xs:
        1-D int64 start offsets relative to ``x``'s origin, increasing.

    Returns
    -------
    torch.Tensor
        ``(len(ys) * len(xs), C * P * P)``, rows in row-major window order, each patch
        flattened channel-major ``(C, P, P)``.
    """
    c = x.shape[0]
    out = torch.empty((len(ys), len(xs), c, patch, patch), dtype=x.dtype, device=x.device)
    # Each arithmetic run of starts is a strided view of x (no copy); one copy per block.
    yi = 0
    for y0, dy, ny in _runs(ys):
        rows = x[:, y0 : y0 + (ny - 1) * dy + patch].unfold(1, patch, dy)  # (C, ny, W, P)
        xi = 0
        for x0, dx, nx in _runs(xs):
            block = rows[:, :, x0 : x0 + (nx - 1) * dx + patch].unfold(2, patch, dx)
            # block: (C, ny, nx, P_y, P_x) -> (ny, nx, C, P, P)
            out[yi : yi + ny, xi : xi + nx] = block.permute(1, 2, 0, 3, 4)
            xi += nx
        yi += ny
    return out.reshape(len(ys) * len(xs), c * patch * patch)


def fold_window(patch: int, rho: float) -> torch.Tensor:
    """1-D fold window ``g(u) = exp(-u^2 / (2 rho^2))`` over ``u in [-1, 1]`` (float64).

    ``rho`` is relative to the patch half-width; ``rho = inf`` gives uniform weights.
    """
    if math.isinf(rho):
        return torch.ones(patch, dtype=torch.float64)
    if rho <= 0:
        raise ValueError("fold_rho must be positive (use inf for uniform weights)")
    u = torch.linspace(-1.0, 1.0, patch, dtype=torch.float64)
    return torch.exp(-0.5 * (u / rho) ** 2)


def fold_weights(patch: int, rho: float, channels: int, dtype=torch.float32) -> torch.Tensor:
    """The separable 2-D window ``g(u) g(v)`` as a ``(C * P * P,)`` vector matching the
    flattened patch layout."""
    g = fold_window(patch, rho)
    w2 = g[:, None] * g[None, :]
    return w2.expand(channels, patch, patch).reshape(-1).to(dtype)


def _runs(starts: torch.Tensor) -> list[tuple[int, int, int]]:
    """Split sorted starts into arithmetic runs ``(first, step, count)`` for ``F.fold``."""
    s = starts.tolist()
    runs: list[tuple[int, int, int]] = []
    i = 0
    while i < len(s):
        if i + 1 == len(s):
            runs.append((s[i], 1, 1))
            break
        d = s[i + 1] - s[i]
        j = i + 1
        while j + 1 < len(s) and s[j + 1] - s[j] == d:
            j += 1
        runs.append((s[i], d, j - i + 1))
        i = j + 1
    return runs


def fold(
    patches: torch.Tensor,
    ys: torch.Tensor,
    xs: torch.Tensor,
    patch: int,
    channels: int,
    out_shape: tuple[int, int] | None = None,
    out: torch.Tensor | None = None,
    rows: torch.Tensor | None = None,
    cols: torch.Tensor | None = None,
    weight: torch.Tensor | None = None,
) -> torch.Tensor:
    """Overlap-add flat patches at window offsets ``ys x xs`` into a ``(C, H, W)`` canvas.

    The offsets are relative to the canvas origin; windows may reach past the canvas, and
    what falls outside is dropped (a region's canvas need not hold its halo). The window grid
    may be irregular (a regular stride grid plus the border window); it is split into
    arithmetic runs. Pass ``out`` to accumulate into an existing canvas, or ``out_shape`` to
    start from zeros.

    ``rows`` / ``cols`` (optional index maps) fold patch grid row ``rows[i]`` at ``ys[i]``
    and column ``cols[j]`` at ``xs[j]``: ``patches`` is then ``(n_rows, n_cols, D)`` and a
    window that appears twice (across a torus's wrap) is folded twice without being copied.
    The result equals folding the grid expanded by ``index_select``, bit for bit.

    ``weight`` (``(C * P * P,)``, optional) multiplies every patch before it is added, with
    the bits of ``patches * weight`` (the compiled kernel does it on the fly, without
    writing the weighted patches out).
    """
    if out is None:
        if out_shape is None:
            raise ValueError("fold needs out_shape or out")
        out = torch.zeros((channels, *out_shape), dtype=patches.dtype, device=patches.device)
    ny = len(ys) if rows is None else patches.shape[0]
    nx = len(xs) if cols is None else patches.shape[1]
    grid = patches.reshape(ny, nx, channels, patch, patch)
    if kernels.enabled(out) and out.dtype == torch.float32 and out.is_contiguous():
        kernels.fold(grid.to(torch.float32), ys, xs, out, rows, cols, weight)
        return out
    if weight is not None:
        patches = patches * weight.to(patches.dtype)
        grid = patches.reshape(ny, nx, channels, patch, patch)
    height, width = out.shape[1], out.shape[2]
    if len(ys) and len(xs):
        top, left = max(0, -int(ys.min())), max(0, -int(xs.min()))
        bottom = max(0, int(ys.max()) + patch - height)
        right = max(0, int(xs.max()) + patch - width)
        if top or left or bottom or right:
            # Fold into a canvas that holds every window, then keep the inside: the inside
            # pixels get the same additions in the same order as the compiled kernel's.
            big = torch.zeros((channels, height + top + bottom, width + left + right),
                              dtype=out.dtype, device=out.device)
            inner = big[:, top : top + height, left : left + width]
            inner.copy_(out)
            fold(patches, ys + top, xs + left, patch, channels, out=big, rows=rows, cols=cols)
            out.copy_(inner)
            return out
    if rows is not None:
        grid = grid.index_select(0, rows.to(grid.device))
    if cols is not None:
        grid = grid.index_select(1, cols.to(grid.device))
    width = out.shape[2]
    # Separable: overlap-add along x into a strip of patch rows (ny, C, P, W), then along y.
    # That is 2P strided additions per run instead of P^2. The offset loop is the OUTER
    # loop, so every pixel receives its contributions in the order of the offset (i.e. of
    # the window start), whatever arithmetic runs the region's grid splits into: a pixel's
    # bits do not depend on the region. Plain additions only: a fused multiply-add would
    # round differently in vectorised and scalar loop tails.
    strip = torch.zeros((len(ys), channels, patch, width), dtype=out.dtype, device=out.device)
    x_runs = _runs(xs)
    for px in range(patch):
        xi = 0
        for x0, dx, nx in x_runs:
            block = grid[:, xi : xi + nx, :, :, px]  # (ny, nx, C, P_y), a view
            strip[:, :, :, x0 + px : x0 + px + (nx - 1) * dx + 1 : dx] += block.permute(
                0, 2, 3, 1)
            xi += nx
    y_runs = _runs(ys)
    for py in range(patch):
        yi = 0
        for y0, dy, ny in y_runs:
            rows = slice(y0 + py, y0 + py + (ny - 1) * dy + 1, dy)
            out[:, rows, :] += strip[yi : yi + ny, :, py, :].permute(1, 0, 2)
            yi += ny
    return out


def window_hole_fraction(hole: torch.Tensor, ys: torch.Tensor, xs: torch.Tensor,
                         patch: int) -> torch.Tensor:
    """``(len(ys), len(xs))``: the fraction of each window ``(y, x)`` that is hole (True)."""
    s = torch.zeros(hole.shape[0] + 1, hole.shape[1] + 1, dtype=torch.int64)
    s[1:, 1:] = hole.to(torch.int64).cumsum(0).cumsum(1)
    y0, x0 = ys[:, None], xs[None, :]
    y1, x1 = y0 + patch, x0 + patch
    return (s[y1, x1] - s[y0, x1] - s[y1, x0] + s[y0, x0]).to(torch.float32) / patch**2


class PatchGrid:
    """The patches of one or more images on a grid, read by position: a dataset without an
    ``(N, D)`` matrix.

    Gathering ``n`` patches reads ``n * C * P`` runs of ``P`` contiguous pixels straight from
    the image (one ``index_select`` over overlapping rows), in the canonical flat layout
    ``(C, P, P)`` of :func:`extract`. It costs about twice a gather from a patch matrix and
    needs ``P^2`` times less memory. Patches are numbered image by image, row-major over
    each image's grid, skipping excluded windows.

    Parameters
    ----------
    images:
        One ``(C, H, W)`` tensor or a list of them (several references); kept as float32
        (a memory-mapped single image is used in place).
    patch:
        Patch side ``P``.
    stride:
        Grid stride (the border window is always included, see :func:`patch_starts`).
    exclude:
        Optional, one per image: a ``(len(ys), len(xs))`` boolean tensor of windows to leave
        out (e.g. windows that overlap an inpainting hole), or None.
    """

    def __init__(self, images, patch: int, stride: int = 1, exclude=None):
        images = [images] if isinstance(images, torch.Tensor) else list(images)
        exclude = list(exclude) if exclude is not None else [None] * len(images)
        self.patch, self.device = patch, images[0].device
        c = images[0].shape[0]
        flats, bases, kinds, offsets = [], [], [], []
        self._origin = []  # (first flat index, width) of each image
        start = 0
        for i, (img, ex) in enumerate(zip(images, exclude, strict=True)):
            _, h, w = img.shape
            ys = patch_starts(h, patch, stride).to(self.device)
            xs = patch_starts(w, patch, stride).to(self.device)
            self._origin.append((start, w))
            base = (ys[:, None] * w + xs[None, :])
            if ex is not None:
                base = base[~ex.to(self.device)]
            base = base.reshape(-1) + start
            flats.append(img.to(torch.float32).contiguous().reshape(-1))
            bases.append(base)
            kinds.append(torch.full((base.numel(),), i, dtype=torch.int64, device=self.device))
            py = torch.arange(patch, device=self.device)
            ch = torch.arange(c, device=self.device)
            offsets.append((ch[:, None] * (h * w) + py[None, :] * w).reshape(-1))  # (C*P,)
            start += c * h * w
        # Row r of this view is the P pixels of the flattened image(s) from r on; the patch
        # at (y, x) is rows start + c*H*W + (y + py)*W + x for every channel c and py < P.
        # The rows overlap in memory (a strided view, no copy).
        self.image = flats[0] if len(flats) == 1 else torch.cat(flats)
        self._rows = torch.as_strided(self.image, (self.image.numel() - patch + 1, patch),
                                      (1, 1))
        self._base = torch.cat(bases)
        if len(images) > 1:
            self._kind = torch.cat(kinds)
            self._offsets = torch.stack(offsets)
        else:
            self._kind = None
            self._offsets = offsets[0]
        self.n = int(self._base.numel())
        self.dim = c * patch * patch

    def gather(self, idx: torch.Tensor) -> torch.Tensor:
        """Patches ``idx`` (any shape) as ``(*idx.shape, D)`` flat ``(C, P, P)`` vectors."""
        flat = idx.reshape(-1)
        offs = self._offsets if self._kind is None else self._offsets[self._kind[flat]]
        rows = (self._base[flat][:, None] + offs).reshape(-1)
        return torch.index_select(self._rows, 0, rows).view(*idx.shape, self.dim)

    def corners(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(image, y, x)`` of patches ``idx``: which image each comes from and its top-left
        corner there."""
        kind = self._kind[idx] if self._kind is not None else torch.zeros_like(idx)
        start = torch.tensor([o[0] for o in self._origin], device=idx.device)[kind]
        width = torch.tensor([o[1] for o in self._origin], device=idx.device)[kind]
        off = self._base[idx] - start
        return kind, off // width, off % width

    def block(self, start: int, stop: int) -> torch.Tensor:
        """Patches ``start .. stop - 1`` (for building indexes block by block)."""
        return self.gather(torch.arange(start, stop, device=self.device))
