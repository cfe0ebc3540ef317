"""The finished image as a Zarr v3 array: the band layout libvips maps in place, and copies.

:func:`write_image_zarr` writes a run's finished image (``out/image.zarr``) as uncompressed
full-width bands of rows (:func:`create_image_zarr`), so that every chunk file *is* the raw pixel
bytes of its band; :func:`_band_files` recognises such an array, whose files the bridge
(:class:`gigasid.io.vips_bridge.VipsBridge`) then maps without decoding or copying.
:func:`export_zarr` copies any image into a new Zarr array with Zarr's default codecs
(``--format zarr``).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from gigasid.io.output_files import _check_disk, _remove
from gigasid.io.pixel_blocks import (
    _BLOCK_BUDGET_BYTES,
    _image_format,
    _iter_blocks,
    _read_block,
)

__all__ = [
    "IMAGE_BAND_BYTES",
    "create_image_zarr",
    "export_zarr",
    "image_band_rows",
    "write_image_zarr",
]


#: Bytes of one chunk of the image arrays written by :func:`write_image_zarr`: a band of whole
#: rows (the full width), uncompressed.
IMAGE_BAND_BYTES = 32 * 1024 * 1024


def image_band_rows(
    height: int,
    width: int,
    tile: int = 512,
    band_bytes: int = IMAGE_BAND_BYTES,
    pixel_bytes: int = 3,
) -> int:
    """Rows of one chunk of an image array written by :func:`write_image_zarr`.

    The largest multiple of ``tile`` whose full-width band fits in ``band_bytes`` or, for
    images too wide for one tile row in that budget, the largest divisor of ``tile`` that
    fits (so that no tile of the engine's grid straddles more bands than it must); at least
    one row, at most ``height``. ``pixel_bytes`` is the size of one pixel (3 for 8-bit RGB).
    """
    tile = max(1, int(tile))
    fit = max(1, int(band_bytes) // max(1, int(width) * int(pixel_bytes)))
    if fit >= tile:
        rows = fit // tile * tile
    else:
        rows = max(d for d in range(1, fit + 1) if tile % d == 0)
    return max(1, min(int(height), rows))


def create_image_zarr(
    path: str | os.PathLike[str],
    height: int,
    width: int,
    *,
    tile: int = 512,
    band_bytes: int = IMAGE_BAND_BYTES,
    overwrite: bool = True,
    channels: int = 3,
    dtype: str = "uint8",
) -> Any:
    """Create an empty ``(height, width, channels)`` Zarr v3 array in the export-friendly layout.

    Chunks are full-width bands of :func:`image_band_rows` rows with no compression (only the
    ``bytes`` codec), so that every chunk file is exactly the raw RGB rows of its band: the
    exports memory-map those files in place (:class:`~gigasid.io.vips_bridge.VipsBridge`) instead
    of decoding and copying the image, and the array stays a plain Zarr v3 array for any reader
    (``zarr.open_array``). Costs the image's raw size on disk (no compression), which is what
    the export's temporary copy would otherwise take. ``dtype`` is ``uint8`` (the default),
    ``uint16`` or ``float32``.
    """
    import zarr

    pixel_bytes = int(channels) * np.dtype(dtype).itemsize
    rows = image_band_rows(height, width, tile, band_bytes, pixel_bytes)
    return zarr.create_array(
        store=str(path),
        shape=(int(height), int(width), int(channels)),
        chunks=(rows, int(width), int(channels)),
        dtype=dtype,
        fill_value=0,
        compressors=None,
        filters=None,
        dimension_names=("y", "x", "c"),
        config={"write_empty_chunks": True},
        overwrite=overwrite,
        zarr_format=3,
    )


def write_image_zarr(
    path: str | os.PathLike[str],
    height: int,
    width: int,
    read: Callable[[int, int, int, int], np.ndarray],
    *,
    tile: int = 512,
    band_bytes: int = IMAGE_BAND_BYTES,
    channels: int = 3,
    dtype: str = "uint8",
) -> Any:
    """Write a finished image, band by band, as an array of :func:`create_image_zarr`.

    Parameters
    ----------
    path
        Directory of the array (replaced if it exists).
    height, width
        Image size.
    read
        ``read(y0, y1, x0, x1)`` returns the ``(y1 - y0, x1 - x0, channels)`` pixels of a
        region (of ``dtype``); it is called for regions that never cross the ``tile`` grid, so
        a source chunked by ``tile`` decodes at most one chunk per call.
    tile
        Tile (chunk) side of the source.
    band_bytes
        Bytes of one band (:data:`IMAGE_BAND_BYTES`): the memory this function holds, besides
        one region from ``read``.
    channels, dtype
        The pixels' channels and sample type (:func:`create_image_zarr`).

    Returns
    -------
    zarr.Array
        The written array.
    """
    arr = create_image_zarr(
        path, height, width, tile=tile, band_bytes=band_bytes, channels=channels, dtype=dtype
    )
    rows = int(arr.chunks[0])
    tile = max(1, int(tile))
    band = np.empty((rows, int(width), int(channels)), dtype=np.dtype(dtype))
    for y0 in range(0, height, rows):
        y1 = min(height, y0 + rows)
        ty = y0
        while ty < y1:  # tile rows of the band (a band may also be a slice of one tile row)
            ty1 = min(y1, (ty // tile + 1) * tile)
            for x0 in range(0, width, tile):
                x1 = min(width, x0 + tile)
                band[ty - y0 : ty1 - y0, x0:x1] = read(ty, ty1, x0, x1)
            ty = ty1
        arr[y0:y1] = band[: y1 - y0]
    return arr


def _band_files(image: Any) -> tuple[list[str], int] | None:
    """The chunk files of a Zarr v3 array stored as raw full-width bands, else ``None``.

    Matches the arrays of :func:`create_image_zarr` (and any equivalent one): Zarr v3 on a
    local directory, the ``bytes`` codec alone (no compression, no sharding, no transpose),
    chunks spanning the whole width and every channel, every chunk file present with exactly
    the size of a full chunk. Anything else (compressed chunks of older runs, other stores)
    returns ``None`` and is copied by decoding it.
    """
    if not type(image).__module__.startswith("zarr"):
        return None
    try:
        from zarr.codecs import BytesCodec

        meta = image.metadata
        if getattr(meta, "zarr_format", None) != 3 or getattr(meta, "storage_transformers", ()):
            return None
        codecs = tuple(meta.codecs)
        if len(codecs) != 1 or not isinstance(codecs[0], BytesCodec):
            return None
        root = _zarr_directory(image)
        if root is None:
            return None
        height, width = int(image.shape[0]), int(image.shape[1])
        rows, cw, cc = (int(c) for c in image.chunks)
        channels, dtype = int(image.shape[2]), np.dtype(image.dtype)
        if cw != width or cc != channels or rows < 1 or dtype.byteorder == ">":
            return None
        size = rows * width * channels * dtype.itemsize
        files = []
        for i in range(-(-height // rows)):
            f = root / meta.encode_chunk_key((i, 0, 0))
            if f.stat().st_size != size:
                return None
            files.append(str(f))
    except (ImportError, AttributeError, TypeError, ValueError, OSError):
        return None
    return files, rows


def _zarr_directory(image: Any) -> Path | None:
    """The directory of a Zarr array stored on the local file system, else ``None``."""
    if not type(image).__module__.startswith("zarr"):
        return None
    try:
        from zarr.storage import LocalStore

        store = image.store
        if not isinstance(store, LocalStore):
            return None
        root = Path(store.root).resolve()
        return root / str(image.path) if image.path else root
    except (ImportError, AttributeError, TypeError, OSError):
        return None


def export_zarr(
    image: Any,
    path: str | os.PathLike[str],
    *,
    chunks: tuple[int, int] | None = None,
    provenance: Mapping[str, Any] | None = None,
) -> Path:
    """Copy the image, block by block, into a new Zarr v3 array (``--format zarr``).

    Parameters
    ----------
    image
        Array-like of shape ``(H, W, C)`` (``C`` = 1, 3 or 4), dtype uint8, uint16 or float32.
    path
        Directory of the new array; an existing one is replaced once the copy is complete.
    chunks
        ``(rows, cols)`` of a chunk; default: the source's chunks if it has any, else 512x512.
    provenance
        Stored in the array's attributes under ``"gigasid_provenance"``.

    Returns
    -------
    pathlib.Path
        The array's directory.
    """
    import zarr

    height, width, channels, dtype = _image_format(image)
    out = Path(path)
    if _zarr_directory(image) == out.resolve():
        # the image already is this array (``gigasid export RUN --format zarr`` into the run's
        # own out/ folder): replacing it by a copy of itself would pull it from under the reader
        return out
    if chunks is None:
        src = getattr(image, "chunks", None)
        if isinstance(src, tuple) and len(src) == 3 and isinstance(src[0], (int, np.integer)):
            chunks = (int(src[0]), int(src[1]))
        else:
            chunks = (512, 512)
    ch, cw = min(int(chunks[0]), height), min(int(chunks[1]), width)
    out.parent.mkdir(parents=True, exist_ok=True)
    _check_disk(out.parent, 0, "the Zarr copy")
    staging = Path(tempfile.mkdtemp(prefix=".gigasid-zarr-", dir=out.parent)) / out.name
    try:
        arr = zarr.create_array(
            store=str(staging),
            shape=(height, width, channels),
            chunks=(ch, cw, channels),
            dtype=dtype,
            fill_value=0,
            dimension_names=("y", "x", "c"),
            config={"write_empty_chunks": True},
            zarr_format=3,
        )
        if provenance is not None:
            arr.attrs["gigasid_provenance"] = json.loads(json.dumps(dict(provenance), default=str))
        # write whole destination chunks only (rows of chunks, within the block budget)
        cols = max(cw, (_BLOCK_BUDGET_BYTES // (ch * channels * dtype.itemsize)) // cw * cw)
        for ys, xs in _iter_blocks(height, width, ch, min(width, cols)):
            arr[ys, xs] = _read_block(image, ys, xs)
        _remove(out)
        os.replace(staging, out)
    finally:
        shutil.rmtree(staging.parent, ignore_errors=True)
    return out
