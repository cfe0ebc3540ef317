"""Pyramid shapes (spec §4.2), ``num_scales: auto`` (spec §9.4) and pyramid building.

Scale 0 is the finest (full resolution), ``S - 1`` the coarsest.
"""

from __future__ import annotations

import math

import torch

from gigasid.core import resample


def pyramid_shapes(
    shape: tuple[int, int],
    num_scales: int,
    ratio: float = 0.5,
    min_short_side: int | None = None,
    check: bool = True,
) -> list[tuple[int, int]]:
    """Per-scale ``(H, W)``: ``ceil(H ratio^l)``, with the coarsest floored to ``min_short_side``.

    If the second-coarsest level is already shorter than ``min_short_side`` a ``ValueError``
    suggests a smaller ``num_scales`` (unless ``check`` is false).
    """
    h0, w0 = shape
    shapes = [(math.ceil(h0 * ratio**i), math.ceil(w0 * ratio**i)) for i in range(num_scales)]
    if min_short_side and num_scales > 1:
        short0 = min(h0, w0)
        if check and min(shapes[-2]) < min_short_side:
            hint = 1 if short0 < min_short_side else 2 + int(math.log2(short0 / min_short_side))
            raise ValueError(
                f"num_scales={num_scales} makes scale {num_scales - 2} shorter than "
                f"min_short_side={min_short_side}; use num_scales <= {hint}"
            )
        if min(shapes[-1]) < min_short_side:
            hp, wp = shapes[-2]
            shapes[-1] = (
                min(math.ceil(h0 * min_short_side / short0), hp),
                min(math.ceil(w0 * min_short_side / short0), wp),
            )
    return shapes


def auto_num_scales(short_side: int, patch: int, min_short_side: int | None) -> int:
    """Smallest ``S >= 1`` with ``m 2^(S-1) >= short_side``, ``m = min_short_side or 1.7 P``."""
    m = min_short_side or round(1.7 * patch)
    if m > short_side:
        raise ValueError(f"short side {short_side} is smaller than min_short_side {m}")
    s = 1
    while m * 2 ** (s - 1) < short_side:
        s += 1
    return s


def resize_in_bands(src: torch.Tensor, out_shape: tuple[int, int],
                    out: torch.Tensor | None = None, rows: int = 256,
                    cols: int = 4096) -> torch.Tensor:
    """Resample ``src`` (``(C, H, W)``) to ``out_shape`` block by block of ``rows`` x ``cols``
    output pixels.

    Each block reads only its input window (the taps it needs), so ``src`` and ``out`` may be
    memory-mapped files larger than RAM and the working memory is bounded by the block, not
    by the image's width. Every output pixel sums its own taps in a fixed order, so the
    result does not depend on the block size or on where the data lives (the in-memory and
    on-disk pyramids are bit-identical).
    """
    h, w = out_shape
    if out is None:
        out = torch.empty((src.shape[0], h, w), dtype=src.dtype, device=src.device)
    in_shape = (src.shape[1], src.shape[2])
    for y0 in range(0, h, rows):
        for x0 in range(0, w, cols):
            region = (y0, min(h, y0 + rows), x0, min(w, x0 + cols))
            a, b, c, d = resample.input_region(in_shape, out_shape, region)
            out[:, region[0]:region[1], region[2]:region[3]] = resample.resize_region(
                src[:, a:b, c:d], (a, c), in_shape, out_shape, region).to(out.device, out.dtype)
    return out


def build_pyramid(image: torch.Tensor, shapes: list[tuple[int, int]]) -> list[torch.Tensor]:
    """Gaussian pyramid: each level resampled from the previous one to the exact shape."""
    levels = [image]
    for shp in shapes[1:]:
        levels.append(resize_in_bands(levels[-1], shp))
    return levels
