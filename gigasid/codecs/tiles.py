"""Tiles for VAE calls: cores on a fixed grid, windows grown by a halo, and per-axis padding.

A VAE network is run on *windows*: a tile's core grown by ``halo`` latent pixels on every
side, read through the latent's domain (on a torus the halo wraps to the far side, on a
mirror axis it reflects, on a plane it stops at the border). Only the core of each result is
kept, so a tile's output depends on the latent around it, not on where other tiles fall. The
grid depends on the image and the codec's ``tile`` only, never on the engine's tiles.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from gigasid.core.domain import Axis, Domain


@dataclass(frozen=True)
class Tile:
    """One tile: its core and its window, in full-image latent coordinates."""

    core: tuple[int, int, int, int]
    window: tuple[int, int, int, int]
    #: axes (y, x) whose window is the whole (periodic) axis: decoded with circular padding
    circular: tuple[bool, bool] = (False, False)

    @property
    def window_shape(self) -> tuple[int, int]:
        return (self.window[1] - self.window[0], self.window[3] - self.window[2])


def _axis_window(axis: Axis, a: int, b: int, halo: int) -> tuple[int, int, bool]:
    """Window of core ``[a, b)`` along an axis, and whether it is the whole periodic axis."""
    if axis.kind == "torus":
        if axis.size <= b - a + 2 * halo:  # the halo would meet itself: take the whole ring
            return 0, axis.size, True
        return a - halo, b + halo, False
    return max(0, a - halo), min(axis.size, b + halo), False


def tile_grid(domain: Domain, tile: int, halo: int) -> list[Tile]:
    """Tiles covering the *stored* part of ``domain`` (the leading half on mirror axes)."""
    hs, ws = domain.stored_shape
    out = []
    for y0 in range(0, hs, tile):
        y1 = min(hs, y0 + tile)
        wy0, wy1, cy = _axis_window(domain.y, y0, y1, halo)
        if cy:
            y0, y1 = 0, domain.y.size
        for x0 in range(0, ws, tile):
            x1 = min(ws, x0 + tile)
            wx0, wx1, cx = _axis_window(domain.x, x0, x1, halo)
            core = (y0, y1, 0 if cx else x0, domain.x.size if cx else x1)
            out.append(Tile(core, (wy0, wy1, wx0, wx1), (cy, cx)))
            if cx:
                break
        if cy:
            break
    return out


def calibration_tiles(tiles: list[Tile], budget: int) -> list[Tile]:
    """Tiles whose windows, run together, measure the image-wide statistics of a call.

    Stratified over the whole grid (the middle tile of each of ``k`` equal runs of the
    row-major grid; ``k = 1`` takes the central tile), with cores adding up to at most
    ``budget`` latent pixels (at least one tile).
    """
    core = max((t.core[1] - t.core[0]) * (t.core[3] - t.core[2]) for t in tiles)
    k = max(1, min(len(tiles), budget // max(1, core)))
    if k >= len(tiles):
        return list(tiles)
    picks = sorted({min(len(tiles) - 1, int((i + 0.5) * len(tiles) / k)) for i in range(k)})
    return [tiles[i] for i in picks]


def core_fraction(t: Tile, shape: tuple[int, int]) -> tuple[float, float, float, float]:
    """``t``'s core as fractions of a window of ``shape`` that starts where ``t``'s does
    (its own window, padded at the bottom and right to ``shape``)."""
    h, w = shape
    wy, wx = t.window[0], t.window[2]
    return ((t.core[0] - wy) / h, (t.core[1] - wy) / h, (t.core[2] - wx) / w,
            (t.core[3] - wx) / w)


@contextlib.contextmanager
def axis_padding(model: nn.Module, circular: tuple[bool, bool]) -> Iterator[None]:
    """Within the block, every padded ``Conv2d`` of ``model`` pads circularly along the axes
    marked in ``circular`` ``(y, x)`` and with zeros along the others (a periodic decode of
    a whole ring; ``nn.Conv2d``'s own ``padding_mode`` cannot differ per axis)."""
    if not any(circular):
        yield
        return
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)
             and m.padding_mode == "zeros" and isinstance(m.padding, tuple) and any(m.padding)]

    def make(conv: nn.Conv2d):
        ph, pw = conv.padding

        def forward(x: torch.Tensor) -> torch.Tensor:
            x = F.pad(x, (pw, pw, 0, 0), mode="circular" if circular[1] else "constant")
            x = F.pad(x, (0, 0, ph, ph), mode="circular" if circular[0] else "constant")
            return F.conv2d(x, conv.weight, conv.bias, conv.stride, 0, conv.dilation,
                            conv.groups)

        return forward

    for c in convs:
        c.forward = make(c)
    try:
        yield
    finally:
        for c in convs:
            del c.forward


__all__ = ["Tile", "axis_padding", "calibration_tiles", "core_fraction", "tile_grid"]
