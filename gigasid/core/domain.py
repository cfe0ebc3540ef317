"""The domain of one scale's image: plane, torus or mirror, chosen per axis.

Every region operation (patch grid, fold, resampling, reading a window of the state) asks the
domain what lies beyond a region's edge:

* ``plane`` - the image ends at its border: only windows fully inside are patches, and the
  resampler mirrors its taps at the border (the paper's behaviour).
* ``torus`` - the axis wraps around (tileable textures): every start ``0, s, 2s, ...`` is a
  patch that may wrap past the end, the resampler wraps its taps, and a window that crosses
  the end reads the other side. Nothing is ever a border, so there is no seam.
* ``mirror`` - the image is mirror-symmetric about the axis's centre line (symmetric designs):
  only the leading half is stored and computed; every pixel of the trailing half is the
  reflection of one in the leading half. Patches and resampling see the whole (symmetric)
  image with plane borders; the window grid is symmetric too, and a window in the trailing
  half takes the reflected estimate of its partner (:meth:`Axis.canonical_windows`).

Coordinates passed around are *full-image* coordinates; on a torus they may lie outside
``[0, size)`` (unwrapped). :meth:`Axis.stored` maps them to the stored array.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

KINDS = ("plane", "torus", "mirror")


@dataclass(frozen=True)
class Axis:
    """One axis of a domain: its kind and its full length (pixels)."""

    kind: str
    size: int

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown axis kind {self.kind!r}; choose from {KINDS}")

    @property
    def stored_size(self) -> int:
        """Length of the stored array: the leading half (centre included) for ``mirror``."""
        return (self.size + 1) // 2 if self.kind == "mirror" else self.size

    def stored(self, idx: torch.Tensor) -> torch.Tensor:
        """Map full-image (or unwrapped) indices to indices of the stored array."""
        if self.kind == "torus":
            return torch.remainder(idx, self.size)
        if self.kind == "mirror":
            return torch.where(idx < self.stored_size, idx, self.size - 1 - idx)
        return idx

    def patch_grid(self, patch: int, stride: int) -> torch.Tensor:
        """Every window start along the axis (see :func:`gigasid.core.patches.patch_starts`).

        On a torus the starts are ``0, s, 2s, ... < size``: windows may wrap, and every pixel
        is covered by the same number of windows (when ``s`` divides the size).
        """
        if patch > self.size:
            raise ValueError(f"patch {patch} larger than axis {self.size}")
        if self.kind == "torus":
            return torch.arange(0, self.size, stride, dtype=torch.int64)
        if self.kind == "mirror":
            return mirror_starts(self.size, patch, stride)
        from gigasid.core.patches import patch_starts

        return patch_starts(self.size, patch, stride)

    def canonical_windows(self, starts: torch.Tensor, patch: int
                          ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(canonical, flipped)`` of each window: the window whose estimate it uses, and
        whether that estimate is reflected first.

        On a mirror axis the state is symmetric, so a window in the trailing half reads the
        reflection of its partner ``size - patch - start`` and takes the reflection of the
        partner's estimate: only windows that start in the leading half are denoised, and
        the estimate is mirror-symmetric by construction (the trailing half sees the
        reflected reference, as a mirror image should). On a torus a window and its copies
        a period apart are one window (never flipped); on a plane each window is its own.
        """
        flipped = torch.zeros(starts.shape, dtype=torch.bool)
        if self.kind == "mirror":
            partner = self.size - patch - starts
            return torch.minimum(starts, partner), starts > partner
        if self.kind == "torus":
            return self.stored(starts), flipped
        return starts, flipped

    def starts_touching(self, patch: int, stride: int, lo: int, hi: int) -> torch.Tensor:
        """Unwrapped window starts whose window intersects ``[lo, hi)`` (ascending)."""
        grid = self.patch_grid(patch, stride)
        if self.kind == "torus":
            grid = torch.cat([grid - self.size, grid, grid + self.size])
        return grid[(grid + patch > lo) & (grid < hi)]

    def runs(self, lo: int, hi: int) -> list[tuple[int, int, bool]]:
        """The stored ranges that full-image pixels ``lo .. hi-1`` read, in order.

        Returns ``(start, stop, reversed)`` pieces of the stored array; concatenated (each
        reversed piece flipped) they give the pixels of ``[lo, hi)``.
        """
        idx = self.stored(torch.arange(lo, hi, dtype=torch.int64)).tolist()
        pieces: list[tuple[int, int, bool]] = []
        i = 0
        while i < len(idx):
            j = i
            step = idx[i + 1] - idx[i] if i + 1 < len(idx) else 1
            if step not in (1, -1):
                step = 1
            while j + 1 < len(idx) and idx[j + 1] - idx[j] == step:
                j += 1
            a, b = idx[i], idx[j]
            pieces.append((min(a, b), max(a, b) + 1, step == -1 and j > i))
            i = j + 1
        return pieces

    def canonical(self, lo: int, hi: int) -> tuple[int, int, torch.Tensor | None]:
        """Where the values of full-image pixels ``[lo, hi)`` are computed.

        Returns ``(a, b, index)``: compute on ``[a, b)``, then ``index`` (local, into
        ``[a, b)``) picks each pixel's value; ``None`` means ``[a, b) == [lo, hi)``. On a
        plane a pixel is computed where it is; on a mirror axis a pixel of the trailing half
        takes its reflection's value; on a torus a range that goes all the way round is
        computed once over ``[0, size)`` (a shorter one where it is: the torus is
        translation invariant, and computing across the wrap avoids a split).
        """
        if self.kind == "torus":
            if hi - lo < self.size:
                return lo, hi, None
            return 0, self.size, self.stored(torch.arange(lo, hi, dtype=torch.int64))
        if self.kind != "mirror" or hi <= self.stored_size:
            return lo, hi, None
        idx = self.stored(torch.arange(lo, hi, dtype=torch.int64))
        a, b = int(idx.min()), int(idx.max()) + 1
        return a, b, idx - a


def mirror_starts(size: int, patch: int, stride: int = 1) -> torch.Tensor:
    """Window starts of a mirror axis: ``0, s, 2s, ...`` up to the middle (and the middle
    itself), and their reflections, so that every window has its partner on the grid.

    With ``stride = 1`` these are all the starts of a plane.

    >>> mirror_starts(20, 5, 3).tolist()
    [0, 3, 6, 7, 8, 9, 12, 15]
    >>> mirror_starts(20, 5, 1).tolist() == list(range(16))
    True
    """
    if patch > size:
        raise ValueError(f"patch {patch} larger than axis {size}")
    span = size - patch
    left = torch.arange(0, span // 2 + 1, stride, dtype=torch.int64)
    left = torch.unique(torch.cat([left, torch.tensor([span // 2])]))
    return torch.unique(torch.cat([left, span - left]))


@dataclass(frozen=True)
class Domain:
    """A scale's image domain: one :class:`Axis` per image axis."""

    y: Axis
    x: Axis

    @classmethod
    def make(cls, shape: tuple[int, int], kinds: tuple[str, str] = ("plane", "plane")
             ) -> Domain:
        return cls(Axis(kinds[0], shape[0]), Axis(kinds[1], shape[1]))

    @property
    def shape(self) -> tuple[int, int]:
        """Full image ``(H, W)``."""
        return (self.y.size, self.x.size)

    @property
    def stored_shape(self) -> tuple[int, int]:
        return (self.y.stored_size, self.x.stored_size)

    @property
    def wraps(self) -> tuple[bool, bool]:
        return (self.y.kind == "torus", self.x.kind == "torus")

    def expand(self, stored: torch.Tensor) -> torch.Tensor:
        """The full image ``(C, H, W)`` of a whole stored array (mirror halves reflected)."""
        iy = self.y.stored(torch.arange(self.y.size))
        ix = self.x.stored(torch.arange(self.x.size))
        return stored.index_select(1, iy.to(stored.device)).index_select(2, ix.to(stored.device))

    def fold_in(self, full: torch.Tensor) -> torch.Tensor:
        """The stored part of a full image: its leading halves along mirror axes."""
        return full[:, : self.y.stored_size, : self.x.stored_size]


Region = tuple[int, int, int, int]


def read_window(read, domain: Domain, win: Region) -> torch.Tensor:
    """Read full-image window ``win`` of a stored array through ``read(stored_region)``.

    Pieces that wrap (torus) or reflect (mirror) are read separately and assembled, so a
    window never reads more of the store than the pixels it needs.
    """
    rows = domain.y.runs(win[0], win[1])
    cols = domain.x.runs(win[2], win[3])
    if len(rows) == 1 and len(cols) == 1 and not rows[0][2] and not cols[0][2]:
        return read((rows[0][0], rows[0][1], cols[0][0], cols[0][1]))
    bands = []
    for ya, yb, yrev in rows:
        parts = []
        for xa, xb, xrev in cols:
            part = read((ya, yb, xa, xb))
            dims = [d for d, r in ((1, yrev), (2, xrev)) if r]
            parts.append(part.flip(dims) if dims else part)
        bands.append(torch.cat(parts, dim=2) if len(parts) > 1 else parts[0])
    return torch.cat(bands, dim=1) if len(bands) > 1 else bands[0]


def stored_ranges(domain: Domain, win: Region) -> tuple[list[tuple[int, int]],
                                                         list[tuple[int, int]]]:
    """The stored row and column ranges a full-image window reads (for the graph's edges)."""
    rows = [(a, b) for a, b, _ in domain.y.runs(win[0], win[1])]
    cols = [(a, b) for a, b, _ in domain.x.runs(win[2], win[3])]
    return rows, cols
