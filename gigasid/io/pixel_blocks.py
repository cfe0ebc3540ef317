"""Checks of the exported array-like and its reading in bounded blocks.

The exports accept any ``(H, W, C)`` array-like that supports numpy slicing (``zarr.Array``,
``numpy.ndarray``, ``numpy.memmap``, a dask array...), with ``C`` in 1, 3, 4 (grey, RGB, RGBA)
and samples of :data:`EXPORT_DTYPES`, and never read it whole: these helpers validate its shape
and dtype and cut it into blocks aligned to its chunk grid, each at most
:data:`_BLOCK_BUDGET_BYTES` of pixels.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np

from gigasid.io.export_options import ExportError

#: Upper bound of source pixels held in memory at once while filling the bridge.
_BLOCK_BUDGET_BYTES = 32 * 1024 * 1024


#: Sample types the exports write (8-bit, 16-bit, float32).
EXPORT_DTYPES = (np.dtype(np.uint8), np.dtype(np.uint16), np.dtype(np.float32))


def _image_format(image: Any) -> tuple[int, int, int, np.dtype]:
    """Return ``(H, W, C, dtype)`` of an exportable array-like, or raise :class:`ExportError`."""
    shape = tuple(getattr(image, "shape", ()))
    if len(shape) != 3 or int(shape[2]) not in (1, 3, 4):
        raise ExportError(
            f"expected an image of shape (H, W, C) with C = 1, 3 or 4 (grey, RGB, RGBA), got "
            f"shape {shape}"
        )
    dtype = getattr(image, "dtype", None)
    try:
        dtype = np.dtype(dtype) if dtype is not None else None
    except TypeError:
        dtype = None
    if dtype not in EXPORT_DTYPES:
        raise ExportError(
            f"expected uint8, uint16 or float32 pixels, got dtype {getattr(image, 'dtype', None)}"
        )
    height, width = int(shape[0]), int(shape[1])
    if height < 1 or width < 1:
        raise ExportError(f"cannot export an empty image of shape {shape}")
    return height, width, int(shape[2]), dtype


def _image_shape(image: Any) -> tuple[int, int]:
    """Return ``(H, W)`` of an exportable array-like, or raise :class:`ExportError`."""
    return _image_format(image)[:2]


def _pixel_bytes(image: Any) -> int:
    """Bytes of one pixel (all its channels) of an exportable array-like."""
    _, _, c, dtype = _image_format(image)
    return c * dtype.itemsize


def _block_shape(image: Any, height: int, width: int, budget: int) -> tuple[int, int]:
    """Rows and columns of one read block: whole source chunks, at most ``budget`` bytes."""
    px = _pixel_bytes(image)
    chunks = getattr(image, "chunks", None)
    ch = cw = 0
    if isinstance(chunks, tuple) and len(chunks) == 3:
        c0, c1 = chunks[0], chunks[1]
        if isinstance(c0, (int, np.integer)) and isinstance(c1, (int, np.integer)):
            ch, cw = int(c0), int(c1)
        elif isinstance(c0, tuple) and c0 and isinstance(c1, tuple) and c1:  # dask-style
            ch, cw = int(max(c0)), int(max(c1))
    if ch <= 0 or cw <= 0:  # in-memory array: any rectangle is as cheap as any other
        rows = max(1, min(height, budget // max(1, width * px)))
        return rows, width if rows > 1 or width * px <= budget else max(1, budget // px)
    ch, cw = min(ch, height), min(cw, width)
    per_chunk_column = ch * cw * px
    ncols = max(1, budget // max(1, per_chunk_column))
    return ch, min(width, ncols * cw)


def _iter_blocks(height: int, width: int, rows: int, cols: int) -> Iterator[tuple[slice, slice]]:
    for y in range(0, height, rows):
        ys = slice(y, min(height, y + rows))
        for x in range(0, width, cols):
            yield ys, slice(x, min(width, x + cols))


def _read_block(image: Any, ys: slice, xs: slice) -> np.ndarray:
    block = image[ys, xs]
    if hasattr(block, "compute") and not isinstance(block, np.ndarray):  # dask
        block = block.compute()
    return np.asarray(block, dtype=np.dtype(image.dtype))


def _addressable(image: Any) -> bool:
    return (
        isinstance(image, np.ndarray)
        and image.dtype in EXPORT_DTYPES
        and image.flags.c_contiguous
        and image.ndim == 3
    )
