"""Out-of-core export of a finished RGB image to viewer and archive formats.

The finished image of a run is a uint8 RGB array of shape ``(H, W, 3)`` -- usually a Zarr v3
array on disk, possibly far larger than memory. Every function here accepts any array-like with
that shape and dtype that supports numpy slicing (``zarr.Array``, ``numpy.ndarray``, a
``numpy.memmap``, ...) and never materialises the whole image: pixels are streamed block by block
(aligned to the source's chunk grid) into a *bridge* that libvips can read with random access,
and libvips then builds every output with its demand-driven, bounded-memory pipelines.

Outputs
-------
* pyramidal tiled BigTIFF (``image.tif``) with the provenance JSON in its ImageDescription,
* DeepZoom (``image.dzi`` + ``image_files/``, or one ``.zip``) plus ``image.provenance.json``,
* a JPEG preview, plain PNG / JPEG (refused beyond the formats' limits), a Zarr copy,
* the offline deep-zoom viewer (see :mod:`gigasid.io.viewer`), via :func:`export_all`.

The bridge
----------
libvips needs a random-access source; a Zarr array of compressed chunks is not one. How the
pixels reach libvips (:class:`VipsBridge`, measured in ``pipelines/bench_export.py``, report in
``pipelines/results/bench_export.md``):

mapped in place (no copy)
    The finished image of a run, ``out/image.zarr``, is written by :func:`write_image_zarr` as
    uncompressed full-width bands of rows (:func:`create_image_zarr`), so each chunk file *is*
    the raw RGB bytes of its band. The bridge opens every band file with libvips' ``rawload``
    (a memory map), stacks them with ``arrayjoin`` and libvips reads the pixels where they
    are: no decoding, no temporary file, no anonymous memory. A C-contiguous numpy input (or
    ``np.memmap``) is likewise read in place. This is what makes the exports of a finished run
    run at libvips' own speed (268 MP on 2 cores: pyramidal JPEG BigTIFF and DeepZoom end to
    end at the speed of their libvips save alone).
``"raw"`` (default) copy
    Any other array-like (Zarr arrays with compressed chunks, e.g. runs written before the band
    layout, or more bands than :data:`_MAX_MAPPED_BANDS` file descriptors allow) is copied into
    an uncompressed raw file in a temporary directory next to the output (full-width
    chunk-rows with one ``pwrite`` each, narrower blocks through a ``np.memmap``; raw band
    files with ``copy_file_range``), which libvips opens with ``rawload``. Decoding Zarr
    chunks dominates this copy.
``"tiff"``
    The pixels are streamed with tifffile into a plain, uncompressed tiled TIFF (a tile
    generator, ``metadata=None``), which libvips then reads through libtiff.

The copies hold one block of source pixels (at most 32 MB) at a time in anonymous memory and
need ``H * W * 3`` bytes of temporary disk. The raw copy is the default because libvips reads
it faster and with less memory than the TIFF one: on 2 cores, at 268 MP, DeepZoom ran 1.2-1.4x
and the preview 1.6-3x faster from it, the pyramidal TIFF as fast, and peak RssAnon was 35-60 MB
lower (libtiff decodes one tile at a time under a lock through a tile cache, whereas mmap'd raw
pixels are shared page cache read in place). The ``"tiff"`` bridge stays selectable, as a
fallback and for the benchmark.

Memory: besides the bridge's block, libvips' pyramid builders hold a few strips of tile height
across the whole image width per level, so peak memory grows with the image *width*, not its
area. Measured peak RssAnon of :func:`export_all`: see ``pipelines/results/bench_export.md``
(about 90 MB for 16384 x 16384 and 210 MB for 4096 x 65536 in a process that called
:func:`limit_heap_fragmentation`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from gigasid.errors import GigasidError

__all__ = [
    "ALL_FORMATS",
    "DEFAULT_FORMATS",
    "IMAGE_BAND_BYTES",
    "JPEG_MAX_SIDE",
    "PNG_MAX_PIXELS",
    "PNG_MAX_SIDE",
    "ExportError",
    "ExportOptions",
    "VipsBridge",
    "create_image_zarr",
    "export_all",
    "export_dzi",
    "export_jpeg",
    "export_png",
    "export_preview",
    "export_tiff",
    "export_zarr",
    "image_band_rows",
    "dzi_level_count",
    "limit_heap_fragmentation",
    "provenance_description",
    "pyramid_levels_tiff",
    "write_image_zarr",
]

log = logging.getLogger(__name__)

#: Largest width or height libjpeg can encode.
JPEG_MAX_SIDE = 65500
#: Largest width or height the PNG specification allows (a 31-bit unsigned integer).
PNG_MAX_SIDE = 2**31 - 1
#: Largest pixel count gigasid writes as one PNG (2**30, about 1.07 gigapixels, 3.2 GB of RGB).
#: PNG is a single sequential zlib stream: no tiles, no random access, no pyramid, so nothing can
#: display or crop it without decoding it whole, and common decoders refuse far smaller images
#: (Pillow's decompression-bomb guard stops at about 179 MP). Beyond this bound PNG is refused and
#: the pyramidal TIFF or DeepZoom outputs are the right containers.
PNG_MAX_PIXELS = 2**30

#: Formats :func:`export_all` knows.
ALL_FORMATS = ("tiff", "dzi", "preview", "viewer", "png", "jpeg", "zarr")
#: Formats :func:`export_all` writes by default.
DEFAULT_FORMATS = ("tiff", "dzi", "preview", "viewer")

_TIFF_COMPRESSIONS = ("jpeg", "deflate", "webp", "lzw", "none")
_DZI_TILE_FORMATS = ("jpg", "png", "webp")
_DZI_CONTAINERS = ("fs", "zip")
_BRIDGES = ("raw", "tiff")

#: Upper bound of source pixels held in memory at once while filling the bridge.
_BLOCK_BUDGET_BYTES = 32 * 1024 * 1024


class ExportError(GigasidError):
    """An image cannot be exported as requested (format limit, bad shape, no disk space...)."""


# ------------------------------------------------------------------------------------------------
# options


@dataclass
class ExportOptions:
    """Settings of the pyramidal outputs.

    Parameters
    ----------
    tile_size
        Tile width and height of the pyramidal TIFF, in pixels (multiple of 16, 16..4096).
        DeepZoom tiles are ``tile_size - 2 * dzi_overlap`` pixels plus the overlap on each side,
        so each tile file is ``tile_size`` pixels square (the size viewers prefer), unless
        ``dzi_tile_size`` says otherwise.
    tiff_compression
        Compression of the TIFF tiles: ``"jpeg"``, ``"deflate"``, ``"webp"``, ``"lzw"`` or
        ``"none"``. ``deflate``, ``lzw`` and ``none`` are lossless.
    quality
        Quality factor (1..100) of JPEG and WebP encodings (TIFF tiles, DeepZoom tiles, preview).
    dzi_tile_format
        Encoding of DeepZoom tiles: ``"jpg"``, ``"png"`` or ``"webp"``.
    dzi_overlap
        Overlap of adjacent DeepZoom tiles, in pixels.
    dzi_container
        ``"fs"`` writes ``image.dzi`` and a directory ``image_files/`` (what the viewer reads);
        ``"zip"`` writes everything into one ``image.zip`` (archiving, serving from a zip-aware
        server; OpenSeadragon cannot read it directly).
    preview_long_side
        Longest side of ``preview.jpg``, in pixels.
    dzi_tile_size
        DeepZoom ``TileSize`` (without the overlap). ``None`` means ``tile_size - 2 *
        dzi_overlap``.
    """

    tile_size: int = 256
    tiff_compression: str = "jpeg"
    quality: int = 90
    dzi_tile_format: str = "jpg"
    dzi_overlap: int = 1
    dzi_container: str = "fs"
    preview_long_side: int = 1024
    dzi_tile_size: int | None = None

    def __post_init__(self) -> None:
        self.validate()

    @property
    def effective_dzi_tile_size(self) -> int:
        """DeepZoom ``TileSize`` actually used (resolves ``dzi_tile_size=None``)."""
        if self.dzi_tile_size is not None:
            return int(self.dzi_tile_size)
        return int(self.tile_size) - 2 * int(self.dzi_overlap)

    def validate(self) -> None:
        """Check every field; raise ``ValueError`` naming the field and the allowed values."""
        _check_choice("tiff_compression", self.tiff_compression, _TIFF_COMPRESSIONS)
        _check_choice("dzi_tile_format", self.dzi_tile_format, _DZI_TILE_FORMATS)
        _check_choice("dzi_container", self.dzi_container, _DZI_CONTAINERS)
        _check_int("tile_size", self.tile_size, 16, 4096)
        if self.tile_size % 16:
            raise ValueError(
                f"tile_size must be a multiple of 16 (TIFF requirement), got {self.tile_size}; "
                "allowed: 16, 32, ..., 4096"
            )
        _check_int("quality", self.quality, 1, 100)
        _check_int("dzi_overlap", self.dzi_overlap, 0, 64)
        _check_int("preview_long_side", self.preview_long_side, 1, JPEG_MAX_SIDE)
        if self.dzi_tile_size is not None:
            _check_int("dzi_tile_size", self.dzi_tile_size, 1, 8192)
        dzi_tile = self.effective_dzi_tile_size
        if dzi_tile < 1 or self.dzi_overlap * 2 > dzi_tile:
            raise ValueError(
                f"DeepZoom tile size {dzi_tile} (tile_size={self.tile_size}, "
                f"dzi_overlap={self.dzi_overlap}, dzi_tile_size={self.dzi_tile_size}) is too "
                "small for its overlap: need dzi_overlap <= TileSize / 2"
            )


def _check_choice(name: str, value: object, allowed: Sequence[str]) -> None:
    if value not in allowed:
        raise ValueError(
            f"invalid {name} {value!r}: allowed values are " + ", ".join(map(repr, allowed))
        )


def _check_int(name: str, value: object, lo: int, hi: int) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{name} must be an integer in [{lo}, {hi}], got {value!r}")
    if not lo <= int(value) <= hi:
        raise ValueError(f"{name} must be in [{lo}, {hi}], got {value}")


# ------------------------------------------------------------------------------------------------
# libvips setup


_VIPS_READY = False


def _cpu_count() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # pragma: no cover - non-Linux
        return max(1, os.cpu_count() or 1)


def _vips() -> Any:
    """Import pyvips once, with its operation cache off and its thread pool capped.

    libvips sizes its worker pool from ``VIPS_CONCURRENCY`` (read at import) or the machine's
    core count; a value set by the user wins, otherwise the pool is capped to the cores this
    process may use (its CPU affinity, e.g. a Dask worker pinned to some cores).
    """
    global _VIPS_READY
    import pyvips

    if not _VIPS_READY:
        pyvips.cache_set_max(0)
        if not os.environ.get("VIPS_CONCURRENCY") and hasattr(pyvips, "concurrency_set"):
            pyvips.concurrency_set(_cpu_count())
        _VIPS_READY = True
    return pyvips


# ------------------------------------------------------------------------------------------------
# input checks and block iteration


def _image_shape(image: Any) -> tuple[int, int]:
    """Return ``(H, W)`` of an RGB uint8 array-like, or raise :class:`ExportError`."""
    shape = tuple(getattr(image, "shape", ()))
    if len(shape) != 3 or int(shape[2]) != 3:
        raise ExportError(
            f"expected an RGB image of shape (H, W, 3), got shape {shape}; convert grey or RGBA "
            "images to RGB before exporting"
        )
    dtype = getattr(image, "dtype", None)
    try:
        dtype = np.dtype(dtype) if dtype is not None else None
    except TypeError:
        dtype = None
    if dtype != np.uint8:
        raise ExportError(
            f"expected a uint8 image, got dtype {getattr(image, 'dtype', None)}; quantise to "
            "uint8 (0..255) before exporting"
        )
    height, width = int(shape[0]), int(shape[1])
    if height < 1 or width < 1:
        raise ExportError(f"cannot export an empty image of shape {shape}")
    return height, width


def _block_shape(image: Any, height: int, width: int, budget: int) -> tuple[int, int]:
    """Rows and columns of one read block: whole source chunks, at most ``budget`` bytes."""
    chunks = getattr(image, "chunks", None)
    ch = cw = 0
    if isinstance(chunks, tuple) and len(chunks) == 3:
        c0, c1 = chunks[0], chunks[1]
        if isinstance(c0, (int, np.integer)) and isinstance(c1, (int, np.integer)):
            ch, cw = int(c0), int(c1)
        elif isinstance(c0, tuple) and c0 and isinstance(c1, tuple) and c1:  # dask-style
            ch, cw = int(max(c0)), int(max(c1))
    if ch <= 0 or cw <= 0:  # in-memory array: any rectangle is as cheap as any other
        rows = max(1, min(height, budget // max(1, width * 3)))
        return rows, width if rows > 1 or width * 3 <= budget else max(1, budget // 3)
    ch, cw = min(ch, height), min(cw, width)
    per_chunk_column = ch * cw * 3
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
    return np.asarray(block, dtype=np.uint8)


def _addressable(image: Any) -> bool:
    return (
        isinstance(image, np.ndarray)
        and image.dtype == np.uint8
        and image.flags.c_contiguous
        and image.ndim == 3
    )


def _release_free_memory() -> None:
    """Hand memory freed by the copy (blocks, Zarr buffers) back to the OS (glibc only).

    glibc keeps freed heap pages of the reading threads' arenas resident; without this, ~50 MB
    of dead blocks would stay in RssAnon underneath the libvips pipelines that follow.
    """
    global _MALLOC_TRIM
    if _MALLOC_TRIM is None:
        try:
            import ctypes

            _MALLOC_TRIM = ctypes.CDLL("libc.so.6").malloc_trim
        except (OSError, AttributeError):
            _MALLOC_TRIM = False
    if _MALLOC_TRIM:
        _MALLOC_TRIM(0)


_MALLOC_TRIM: Any = None


def limit_heap_fragmentation(threshold: int = 256 * 1024) -> bool:
    """Serve every allocation of ``threshold`` bytes or more with its own ``mmap`` (glibc).

    By default glibc raises its mmap threshold as large blocks are freed (up to 32 MB), after
    which Zarr's chunk buffers and libvips' strip buffers come from the heap arenas, fragment
    them, and stay resident after being freed: in the benchmark, peak RssAnon of
    :func:`export_all` fell from 162 to 88 MB for a 16384 x 16384 image and from 356 to 209 MB
    for a 4096 x 65536 one, with no measurable change in time.

    The setting is **process-wide and permanent** (it also disables glibc's dynamic threshold
    for, e.g., torch tensors), so the export functions never call it themselves: call it at
    the start of a process dedicated to exporting (``gigasid export``). A value set by the user
    through the ``MALLOC_MMAP_THRESHOLD_`` environment variable wins.

    Returns
    -------
    bool
        Whether the setting was applied (False on non-glibc systems or when overridden).
    """
    global _HEAP_THRESHOLD
    if os.environ.get("MALLOC_MMAP_THRESHOLD_"):
        return False
    applied = _set_mmap_threshold(int(threshold))
    if applied:
        _HEAP_THRESHOLD = int(threshold)
    return applied


#: The mmap threshold :func:`limit_heap_fragmentation` set in this process (None: glibc default).
_HEAP_THRESHOLD: int | None = None
#: mmap threshold while the bridge is filled from a source that decodes chunks (e.g. zstd Zarr
#: chunks of 0.8 MB): glibc's largest allowed value on 64-bit systems.
_COPY_MMAP_THRESHOLD = 32 * 1024 * 1024


def _set_mmap_threshold(nbytes: int) -> bool:
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        m_mmap_threshold = -3  # from glibc's malloc.h
        return bool(libc.mallopt(m_mmap_threshold, int(nbytes)))
    except (OSError, AttributeError):
        return False


@contextlib.contextmanager
def _decoding_heap() -> Iterator[None]:
    """Lift :func:`limit_heap_fragmentation`'s threshold while chunks are decoded, then trim.

    With a 256 KiB threshold every decoded chunk buffer (and every decompression buffer) is a
    fresh ``mmap`` whose pages the kernel faults in and zeroes, then unmaps: copying a
    zstd-compressed 268 MP Zarr array took 3.9-6.2 s instead of 2.1-3.0 s (2 cores,
    ``pipelines/bench_export.py``). The buffers are short-lived and all freed before libvips
    starts, so they come from the heap for the copy and are handed back to the OS afterwards
    (``malloc_trim``); the fixed threshold then applies again to libvips' buffers.
    """
    lifted = _HEAP_THRESHOLD is not None and _set_mmap_threshold(_COPY_MMAP_THRESHOLD)
    try:
        yield
    finally:
        if lifted and _HEAP_THRESHOLD is not None:
            _set_mmap_threshold(_HEAP_THRESHOLD)
        _release_free_memory()


def _pwrite_all(fd: int, block: np.ndarray, offset: int) -> None:
    view = memoryview(np.ascontiguousarray(block)).cast("B")
    while len(view):
        n = os.pwrite(fd, view, offset)
        view, offset = view[n:], offset + n


def _check_disk(directory: Path, nbytes: int, what: str) -> None:
    try:
        free = shutil.disk_usage(directory).free
    except OSError:  # pragma: no cover - exotic filesystems
        return
    if free < nbytes:
        raise ExportError(
            f"not enough free disk space in {directory} for {what}: need {nbytes / 1e9:.2f} GB, "
            f"{free / 1e9:.2f} GB free; free some space or export to another directory"
        )


# ------------------------------------------------------------------------------------------------
# the finished-image array in the layout libvips can map in place


#: Bytes of one chunk of the image arrays written by :func:`write_image_zarr`: a band of whole
#: rows (the full width), uncompressed.
IMAGE_BAND_BYTES = 32 * 1024 * 1024
#: Most band files one bridge maps at once (each holds a file descriptor while it is open); an
#: image with more bands is copied into one raw file instead (in the kernel, still no decoding).
_MAX_MAPPED_BANDS = 512


def image_band_rows(
    height: int, width: int, tile: int = 512, band_bytes: int = IMAGE_BAND_BYTES
) -> int:
    """Rows of one chunk of an image array written by :func:`write_image_zarr`.

    The largest multiple of ``tile`` whose full-width band fits in ``band_bytes`` or, for
    images too wide for one tile row in that budget, the largest divisor of ``tile`` that
    fits (so that no tile of the engine's grid straddles more bands than it must); at least
    one row, at most ``height``.
    """
    tile = max(1, int(tile))
    fit = max(1, int(band_bytes) // max(1, int(width) * 3))
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
) -> Any:
    """Create an empty ``(height, width, 3)`` uint8 Zarr v3 array in the export-friendly layout.

    Chunks are full-width bands of :func:`image_band_rows` rows with no compression (only the
    ``bytes`` codec), so that every chunk file is exactly the raw RGB rows of its band: the
    exports memory-map those files in place (:class:`VipsBridge`) instead of decoding and
    copying the image, and the array stays a plain Zarr v3 array for any reader
    (``zarr.open_array``). Costs ``3 * height * width`` bytes of disk (no compression), which
    is what the export's temporary copy would otherwise take.
    """
    import zarr

    rows = image_band_rows(height, width, tile, band_bytes)
    return zarr.create_array(
        store=str(path),
        shape=(int(height), int(width), 3),
        chunks=(rows, int(width), 3),
        dtype="uint8",
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
) -> Any:
    """Write a finished image, band by band, as an array of :func:`create_image_zarr`.

    Parameters
    ----------
    path
        Directory of the array (replaced if it exists).
    height, width
        Image size.
    read
        ``read(y0, y1, x0, x1)`` returns the ``(y1 - y0, x1 - x0, 3)`` uint8 pixels of a
        region; it is called for regions that never cross the ``tile`` grid, so a source
        chunked by ``tile`` decodes at most one chunk per call.
    tile
        Tile (chunk) side of the source.
    band_bytes
        Bytes of one band (:data:`IMAGE_BAND_BYTES`): the memory this function holds, besides
        one region from ``read``.

    Returns
    -------
    zarr.Array
        The written array.
    """
    arr = create_image_zarr(path, height, width, tile=tile, band_bytes=band_bytes)
    rows = int(arr.chunks[0])
    tile = max(1, int(tile))
    band = np.empty((rows, int(width), 3), dtype=np.uint8)
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
    chunks spanning the whole width and the 3 channels, every chunk file present with exactly
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
        if cw != width or cc != 3 or rows < 1 or np.dtype(image.dtype) != np.uint8:
            return None
        size = rows * width * 3
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


def _max_mapped_bands() -> int:
    try:
        import resource

        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        if soft != resource.RLIM_INFINITY:
            return max(1, min(_MAX_MAPPED_BANDS, int(soft) // 4))
    except (ImportError, OSError, ValueError):  # pragma: no cover - non-POSIX
        pass
    return _MAX_MAPPED_BANDS


def _copy_file_range_all(src: str, dst_fd: int, count: int, dst_offset: int) -> None:
    """Copy the first ``count`` bytes of ``src`` to ``dst_fd`` at ``dst_offset`` (in-kernel)."""
    fd = os.open(src, os.O_RDONLY)
    try:
        done = 0
        if hasattr(os, "copy_file_range"):
            try:
                while done < count:
                    n = os.copy_file_range(fd, dst_fd, count - done, done, dst_offset + done)
                    if n <= 0:
                        break
                    done += n
            except OSError:  # not supported across these file systems: plain reads below
                pass
        piece = 8 * 1024 * 1024
        while done < count:
            data = os.pread(fd, min(piece, count - done), done)
            if not data:
                raise ExportError(f"{src} is shorter than its Zarr chunk; the array is damaged")
            view = memoryview(data)
            while len(view):
                n = os.pwrite(dst_fd, view, dst_offset + done)
                view, done = view[n:], done + n
    finally:
        os.close(fd)


# ------------------------------------------------------------------------------------------------
# the bridge


class VipsBridge:
    """A libvips image of an array-like: mapped in place when its layout allows, else copied.

    Arrays written by :func:`write_image_zarr` (raw full-width bands) and C-contiguous numpy
    arrays are read where they are (``zero_copy``); anything else is copied, uncompressed, into
    a temporary file. Use it as a context manager: the temporary directory (created next to
    the output, so the copy lands on the output's filesystem and not in a possibly small
    ``/tmp``) is removed on exit, also when an export fails. Build it once and pass it to
    several exports.

    Parameters
    ----------
    image
        Array-like of shape ``(H, W, 3)``, dtype uint8, supporting numpy slicing.
    workdir
        Directory in which the temporary directory is created.
    method
        ``"raw"`` (memory-mapped raw file, the default and faster one) or ``"tiff"`` (plain
        tiled TIFF written with tifffile).
    block_budget
        Most bytes of source pixels read at once.
    """

    def __init__(
        self,
        image: Any,
        workdir: str | os.PathLike[str],
        method: str = "raw",
        block_budget: int = _BLOCK_BUDGET_BYTES,
    ) -> None:
        _check_choice("bridge method", method, _BRIDGES)
        self.height, self.width = _image_shape(image)
        self.method = method
        self._source = image
        self._budget = int(block_budget)
        self._workdir = Path(workdir)
        self._tmpdir: Path | None = None
        self._image: Any = None
        #: True when libvips reads the source in place (C-contiguous numpy input, or a Zarr
        #: array of raw full-width bands): no temporary copy.
        self.zero_copy = False

    # -- lifecycle -------------------------------------------------------------------------------

    def __enter__(self) -> VipsBridge:
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def open(self) -> VipsBridge:
        """Open the source with libvips: in place if possible, else through a copy."""
        if self._image is not None:
            return self
        src = self._source
        if self.method == "raw" and _addressable(src):
            # Already addressable memory (an in-memory array, or a np.memmap of a raw file):
            # libvips reads it in place, no copy, no temporary file. The bridge (and pyvips)
            # keep a reference to the array, so it stays alive as long as the image.
            pyvips = _vips()
            image = pyvips.Image.new_from_memory(src.data, self.width, self.height, 3, "uchar")
            self._image = image.copy(interpretation="srgb")
            self.zero_copy = True
            return self
        bands = _band_files(src) if self.method == "raw" else None
        if bands is not None and len(bands[0]) <= _max_mapped_bands():
            # An image array in the layout of create_image_zarr: its chunk files are the raw
            # rows of full-width bands, which libvips maps in place, stacked; no copy at all.
            self._image = self._open_bands(*bands)
            self.zero_copy = True
            return self
        self._workdir.mkdir(parents=True, exist_ok=True)
        nbytes = self.height * self.width * 3
        _check_disk(self._workdir, nbytes + (1 << 20), "the temporary export copy")
        self._tmpdir = Path(tempfile.mkdtemp(prefix=".gigasid-export-", dir=self._workdir))
        try:
            if self.method == "raw":
                self._image = self._open_raw(bands)
            else:
                self._image = self._open_tiff()
        except BaseException:
            self.close()
            raise
        return self

    def close(self) -> None:
        """Drop the libvips image and delete the temporary directory."""
        self._image = None
        if self._tmpdir is not None:
            shutil.rmtree(self._tmpdir, ignore_errors=True)
            self._tmpdir = None

    @property
    def image(self) -> Any:
        """The ``pyvips.Image`` reading the bridge (sRGB, 3 bands, uchar)."""
        if self._image is None:
            raise RuntimeError("VipsBridge is not open; use it as a context manager")
        return self._image

    # -- the two bridges -------------------------------------------------------------------------

    def _open_bands(self, files: list[str], rows: int) -> Any:
        pyvips = _vips()
        # every band file holds `rows` full rows (Zarr pads the last chunk); arrayjoin stacks
        # them and the crop drops the padding below the image
        parts = [pyvips.Image.rawload(f, self.width, rows, 3) for f in files]
        image = parts[0] if len(parts) == 1 else pyvips.Image.arrayjoin(parts, across=1)
        if image.height != self.height:
            image = image.crop(0, 0, self.width, self.height)
        return image.copy(interpretation="srgb")

    def _open_raw(self, bands: tuple[list[str], int] | None = None) -> Any:
        pyvips = _vips()
        src = self._source
        assert self._tmpdir is not None
        path = self._tmpdir / "pixels.raw"
        if bands is not None:  # raw band files, too many to map at once: copied in the kernel
            files, rows = bands
            row_bytes = self.width * 3
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                os.ftruncate(fd, self.height * row_bytes)
                for i, f in enumerate(files):
                    n = min(rows, self.height - i * rows)
                    _copy_file_range_all(f, fd, n * row_bytes, i * rows * row_bytes)
            finally:
                os.close(fd)
            image = pyvips.Image.rawload(str(path), self.width, self.height, 3)
            return image.copy(interpretation="srgb")
        rows, cols = _block_shape(src, self.height, self.width, self._budget)
        row_bytes = self.width * 3
        # Full-width blocks are contiguous in the file: one pwrite each (5x faster than faulting
        # the pages in through a memmap). Narrower blocks (very wide images) go through a memmap.
        # Either way the pixels land in the page cache (file-backed, reclaimable), so the copy
        # holds one block of anonymous memory (plus the reader's decoding buffers). Reading the
        # next block in a helper thread while writing this one was tried twice: no measurable
        # gain (Zarr decoding dominates and already uses both cores), one more block of memory.
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        mm: np.memmap | None = None
        try:
            os.ftruncate(fd, self.height * row_bytes)
            blocks = _iter_blocks(self.height, self.width, rows, cols)
            with _decoding_heap():
                for ys, xs in blocks:
                    block = _read_block(src, ys, xs)
                    if xs.start == 0 and xs.stop == self.width:
                        _pwrite_all(fd, block, ys.start * row_bytes)
                    else:
                        if mm is None:
                            mm = np.memmap(
                                path, dtype=np.uint8, mode="r+", shape=(self.height, self.width, 3)
                            )
                        mm[ys, xs] = block
                    del block
            if mm is not None:
                mm.flush()
        finally:
            del mm
            os.close(fd)
        image = pyvips.Image.rawload(str(path), self.width, self.height, 3)
        return image.copy(interpretation="srgb")

    def _open_tiff(self) -> Any:
        import tifffile

        pyvips = _vips()
        assert self._tmpdir is not None
        path = self._tmpdir / "pixels.tif"
        tile = 512
        chunks = getattr(self._source, "chunks", None)
        if isinstance(chunks, tuple) and len(chunks) == 3 and isinstance(chunks[0], int):
            if chunks[0] == chunks[1] and chunks[0] % 16 == 0 and 16 <= chunks[0] <= 2048:
                tile = int(chunks[0])
        # a band of `tile` rows is read in column groups of whole tiles within the budget
        group = max(tile, (self._budget // (tile * 3)) // tile * tile)

        def tiles() -> Iterator[np.ndarray]:
            for y in range(0, self.height, tile):
                ys = slice(y, min(self.height, y + tile))
                for x0 in range(0, self.width, group):
                    xs = slice(x0, min(self.width, x0 + group))
                    block = _read_block(self._source, ys, xs)
                    for x in range(0, block.shape[1], tile):
                        yield block[:, x : x + tile]

        with _decoding_heap():
            tifffile.imwrite(
                path,
                tiles(),
                shape=(self.height, self.width, 3),
                dtype=np.uint8,
                tile=(tile, tile),
                photometric="rgb",
                metadata=None,
                bigtiff=True,
            )
        return pyvips.Image.new_from_file(str(path))


@contextlib.contextmanager
def _bridge_for(image: Any, workdir: Path, bridge: VipsBridge | None) -> Iterator[VipsBridge]:
    """Yield ``bridge`` if given (caller owns it), else a fresh one closed on exit."""
    if bridge is not None:
        yield bridge
        return
    with VipsBridge(image, workdir) as own:
        yield own


# ------------------------------------------------------------------------------------------------
# helpers for writing outputs


def provenance_description(provenance: Mapping[str, Any]) -> str:
    """Serialise provenance as the JSON text stored in a TIFF ImageDescription.

    The text is plain JSON (``json.loads`` returns the dict). A key spelled ``"shape"`` is written
    with the JSON escape ``\\u0073`` for its first letter: tifffile treats any description that
    starts with ``{`` and contains the bytes ``"shape":`` as its own array metadata and would
    then misread the pyramid.
    """
    text = json.dumps(dict(provenance), sort_keys=True, default=str, ensure_ascii=True)
    return text.replace('"shape":', '"\\u0073hape":')


def _write_provenance_json(path: Path, provenance: Mapping[str, Any] | None) -> Path:
    text = json.dumps(dict(provenance or {}), indent=2, sort_keys=True, default=str)
    _atomic_write_text(path, text + "\n")
    return path


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.partial")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def _partial_path(path: Path) -> Path:
    return path.with_name(f".{path.name}.partial")


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def _tiff_save(vimage: Any, path: Path, options: ExportOptions, provenance: Any) -> None:
    pyvips = _vips()
    image = vimage.copy()  # a new header, so the shared bridge image is not modified
    if provenance is not None:
        image.set_type(
            pyvips.GValue.gstr_type, "image-description", provenance_description(provenance)
        )
    kwargs: dict[str, Any] = {
        "tile": True,
        "tile_width": options.tile_size,
        "tile_height": options.tile_size,
        "pyramid": True,
        "bigtiff": True,
        "subifd": True,
        "compression": options.tiff_compression,
    }
    if options.tiff_compression in ("jpeg", "webp"):
        kwargs["Q"] = options.quality
    if options.tiff_compression in ("deflate", "lzw"):
        kwargs["predictor"] = "horizontal"
    # keep="none" would also drop the ImageDescription; the bridge images carry no other
    # metadata (no EXIF/XMP/ICC, and the TIFF bridge is written with metadata=None), so the
    # default keep only carries the provenance, which tifffile reads without complaint.
    tmp = _partial_path(path)
    try:
        image.tiffsave(str(tmp), **kwargs)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def _dzi_suffix(options: ExportOptions) -> str:
    if options.dzi_tile_format == "jpg":
        return f".jpg[Q={options.quality}]"
    if options.dzi_tile_format == "webp":
        return f".webp[Q={options.quality}]"
    return ".png"


def _dzi_paths(path: str | os.PathLike[str], container: str) -> tuple[Path, str]:
    """Return (directory, base name) of a DeepZoom output path given with or without suffix."""
    p = Path(path)
    if p.suffix.lower() in (".dzi", ".zip", ".szi"):
        p = p.with_suffix("")
    return p.parent, p.name


# ------------------------------------------------------------------------------------------------
# public exports


def export_tiff(
    image: Any,
    path: str | os.PathLike[str],
    options: ExportOptions | None = None,
    provenance: Mapping[str, Any] | None = None,
    *,
    bridge: VipsBridge | None = None,
) -> Path:
    """Write a tiled, pyramidal BigTIFF (levels as SubIFDs), out-of-core.

    Parameters
    ----------
    image
        Array-like of shape ``(H, W, 3)``, dtype uint8 (``zarr.Array``, numpy array, ...).
    path
        Output file (conventionally ``image.tif``); replaced atomically when complete.
    options
        Tile size, compression and quality (:class:`ExportOptions`); defaults if ``None``.
    provenance
        JSON-serialisable dict stored in the ImageDescription of the full-resolution image
        (gigasid version, resolved config, seed, input fingerprints, ...).
    bridge
        An open :class:`VipsBridge` of ``image`` to reuse; built (and removed) here if ``None``.

    Returns
    -------
    pathlib.Path
        The written file. Level ``k`` has size ``floor(size_{k-1} / 2)`` (libvips' rounding);
        levels stop once a level fits in one tile.
    """
    options = options or ExportOptions()
    options.validate()
    out = Path(path)
    _image_shape(image)
    out.parent.mkdir(parents=True, exist_ok=True)
    with _bridge_for(image, out.parent, bridge) as b:
        _tiff_save(b.image, out, options, provenance)
    return out


def export_dzi(
    image: Any,
    path: str | os.PathLike[str],
    options: ExportOptions | None = None,
    provenance: Mapping[str, Any] | None = None,
    *,
    bridge: VipsBridge | None = None,
) -> Path:
    """Write a DeepZoom pyramid, out-of-core, plus ``<name>.provenance.json`` beside it.

    Parameters
    ----------
    image
        Array-like of shape ``(H, W, 3)``, dtype uint8.
    path
        ``out/image`` or ``out/image.dzi`` (``out/image.zip`` also accepted).
        With ``dzi_container="fs"`` writes ``out/image.dzi`` and ``out/image_files/``; with
        ``"zip"`` writes ``out/image.zip`` (holding ``image.dzi`` and ``image_files/``).
        Existing outputs of the same name are replaced once the new pyramid is complete.
    options
        Tile size, overlap, tile format, quality and container (:class:`ExportOptions`).
    provenance
        Dict written to ``out/image.provenance.json``.
    bridge
        An open :class:`VipsBridge` of ``image`` to reuse; built (and removed) here if ``None``.

    Returns
    -------
    pathlib.Path
        The ``.dzi`` descriptor (container ``fs``) or the ``.zip`` file (container ``zip``).
        The pyramid has ``ceil(log2(max(H, W))) + 1`` levels, level ``L`` being the image
        scaled by ``2 ** (L - max_level)`` with sizes rounded up.
    """
    options = options or ExportOptions()
    options.validate()
    _image_shape(image)
    directory, name = _dzi_paths(path, options.dzi_container)
    directory.mkdir(parents=True, exist_ok=True)
    if options.dzi_container == "zip":
        targets = [directory / f"{name}.zip"]
    else:
        targets = [directory / f"{name}.dzi", directory / f"{name}_files"]

    staging = Path(tempfile.mkdtemp(prefix=".gigasid-dzi-", dir=directory))
    try:
        with _bridge_for(image, directory, bridge) as b:
            b.image.dzsave(
                str(staging / targets[0].name)
                if options.dzi_container == "zip"
                else str(staging / name),
                layout="dz",
                tile_size=options.effective_dzi_tile_size,
                overlap=options.dzi_overlap,
                depth="onepixel",
                suffix=_dzi_suffix(options),
                container=options.dzi_container,
            )
        for target in targets:
            _remove(target)
        # the descriptor goes last: a .dzi next to an incomplete _files/ would look valid
        for target in reversed(targets):
            os.replace(staging / target.name, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    _write_provenance_json(directory / f"{name}.provenance.json", provenance)
    return targets[0]


def _check_plain_limits(fmt: str, height: int, width: int) -> None:
    if fmt == "jpeg":
        if max(height, width) > JPEG_MAX_SIDE:
            raise ExportError(
                f"image of {width}x{height} px is too large for JPEG (at most {JPEG_MAX_SIDE} px "
                "per side); use --format tiff (pyramidal BigTIFF) or --format dzi (DeepZoom) "
                "instead"
            )
    elif fmt == "png":
        if max(height, width) > PNG_MAX_SIDE:
            raise ExportError(
                f"image of {width}x{height} px is too large for PNG (at most {PNG_MAX_SIDE} px "
                "per side); use --format tiff (pyramidal BigTIFF) or --format dzi (DeepZoom) "
                "instead"
            )
        if height * width > PNG_MAX_PIXELS:
            raise ExportError(
                f"image of {width}x{height} px ({height * width / 1e6:.0f} MP) is too large for "
                f"a single PNG (gigasid writes at most {PNG_MAX_PIXELS / 1e6:.0f} MP per PNG: no "
                "viewer could open it); use --format tiff (pyramidal BigTIFF) or --format dzi "
                "(DeepZoom) instead"
            )


def _save_atomically(
    image: Any,
    path: str | os.PathLike[str],
    bridge: VipsBridge | None,
    save: Callable[[Any, str], Any],
) -> Path:
    """Run ``save(vips_image, tmp_path)`` from the bridge, then move the file into place."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = _partial_path(out)
    try:
        with _bridge_for(image, out.parent, bridge) as b:
            save(b.image, str(tmp))
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            tmp.unlink()
    return out


def export_png(
    image: Any,
    path: str | os.PathLike[str],
    *,
    compression: int = 6,
    bridge: VipsBridge | None = None,
) -> Path:
    """Write a plain PNG, streamed (refused beyond PNG's practical limits).

    Parameters
    ----------
    image
        Array-like of shape ``(H, W, 3)``, dtype uint8.
    path
        Output file.
    compression
        zlib level 0..9.
    bridge
        An open :class:`VipsBridge` of ``image`` to reuse.

    Returns
    -------
    pathlib.Path
        The written file.

    Raises
    ------
    ExportError
        If a side exceeds ``PNG_MAX_SIDE`` or the image has more than ``PNG_MAX_PIXELS`` pixels;
        the message names ``--format tiff`` / ``--format dzi``. The format is never switched
        silently.
    """
    height, width = _image_shape(image)
    _check_plain_limits("png", height, width)
    _check_int("compression", compression, 0, 9)
    return _save_atomically(
        image, path, bridge, lambda v, tmp: v.pngsave(tmp, compression=compression, keep="none")
    )


def export_jpeg(
    image: Any,
    path: str | os.PathLike[str],
    quality: int = 90,
    *,
    bridge: VipsBridge | None = None,
) -> Path:
    """Write a plain baseline JPEG, streamed (refused beyond 65500 px per side).

    Parameters
    ----------
    image
        Array-like of shape ``(H, W, 3)``, dtype uint8.
    path
        Output file.
    quality
        JPEG quality 1..100.
    bridge
        An open :class:`VipsBridge` of ``image`` to reuse.

    Returns
    -------
    pathlib.Path
        The written file.

    Raises
    ------
    ExportError
        If a side exceeds ``JPEG_MAX_SIDE``; the message names ``--format tiff`` /
        ``--format dzi``. The format is never switched silently.
    """
    height, width = _image_shape(image)
    _check_plain_limits("jpeg", height, width)
    _check_int("quality", quality, 1, 100)
    return _save_atomically(
        image, path, bridge, lambda v, tmp: v.jpegsave(tmp, Q=quality, keep="none")
    )


def export_preview(
    image: Any,
    path: str | os.PathLike[str],
    long_side: int = 1024,
    *,
    quality: int = 85,
    bridge: VipsBridge | None = None,
) -> Path:
    """Write a downscaled JPEG preview whose longest side is at most ``long_side``.

    The image is shrunk by libvips from the bridge in a streaming pass (antialiased box
    shrink, then a Lanczos reduce); images already small enough are written at full size.

    Parameters
    ----------
    image
        Array-like of shape ``(H, W, 3)``, dtype uint8.
    path
        Output JPEG file.
    long_side
        Longest side of the preview, in pixels.
    quality
        JPEG quality 1..100.
    bridge
        An open :class:`VipsBridge` of ``image`` to reuse.

    Returns
    -------
    pathlib.Path
        The written file.
    """
    height, width = _image_shape(image)
    _check_int("long_side", long_side, 1, JPEG_MAX_SIDE)
    _check_int("quality", quality, 1, 100)
    return _save_atomically(
        image,
        path,
        bridge,
        lambda v, tmp: v.thumbnail_image(long_side, height=long_side, size="down").jpegsave(
            tmp, Q=quality, keep="none"
        ),
    )


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
        Array-like of shape ``(H, W, 3)``, dtype uint8.
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

    height, width = _image_shape(image)
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
            shape=(height, width, 3),
            chunks=(ch, cw, 3),
            dtype="uint8",
            fill_value=0,
            dimension_names=("y", "x", "c"),
            config={"write_empty_chunks": True},
            zarr_format=3,
        )
        if provenance is not None:
            arr.attrs["gigasid_provenance"] = json.loads(json.dumps(dict(provenance), default=str))
        # write whole destination chunks only (rows of chunks, within the block budget)
        cols = max(cw, (_BLOCK_BUDGET_BYTES // (ch * 3)) // cw * cw)
        for ys, xs in _iter_blocks(height, width, ch, min(width, cols)):
            arr[ys, xs] = _read_block(image, ys, xs)
        _remove(out)
        os.replace(staging, out)
    finally:
        shutil.rmtree(staging.parent, ignore_errors=True)
    return out


def export_all(
    image: Any,
    out_dir: str | os.PathLike[str],
    options: ExportOptions | None = None,
    provenance: Mapping[str, Any] | None = None,
    formats: Sequence[str] = DEFAULT_FORMATS,
    *,
    title: str | None = None,
    bridge_method: str = "raw",
    parallel: bool = False,
) -> dict[str, Path]:
    """Write several outputs of one image into ``out_dir``, building the bridge only once.

    Files: ``tiff`` -> ``image.tif``; ``dzi`` -> ``image.dzi`` + ``image_files/`` (or
    ``image.zip``) + ``image.provenance.json``; ``preview`` -> ``preview.jpg``; ``viewer`` ->
    ``index.html`` + ``viewer/`` (needs ``dzi`` with the ``fs`` container); ``png`` ->
    ``image.png``; ``jpeg`` -> ``image.jpg``; ``zarr`` -> ``image.zarr``. When provenance is given
    it is also written to ``provenance.json``.

    Every request is validated (options, format names, PNG/JPEG size limits) before any pixel is
    read; temporary files are removed whatever happens.

    Parameters
    ----------
    image
        Array-like of shape ``(H, W, 3)``, dtype uint8.
    out_dir
        Output directory (created if needed).
    options
        :class:`ExportOptions`; defaults if ``None``.
    provenance
        JSON-serialisable dict (gigasid version, config, seed, input fingerprints...).
    formats
        Subset of ``ALL_FORMATS``.
    title
        Viewer title; default ``provenance["title"]`` or ``"gigasid image"``.
    bridge_method
        ``"raw"`` or ``"tiff"`` (see the module docstring).
    parallel
        Write the libvips outputs concurrently (at most one per core) instead of one after the
        other. Each libvips save is mostly bound by its single writer thread, so this can use an
        idle core, but the pipelines' buffers add up (peak memory 1.5x at 268 MP in the
        benchmark) and on the 2-core development VM, whose disk writes were the bottleneck, it
        gained nothing measurable (18.8 s vs 18.9 s); hence off by default. The bytes written do
        not depend on it.
    Returns
    -------
    dict[str, pathlib.Path]
        Written path per format (plus ``"provenance"`` when provenance was given).
    """
    options = options or ExportOptions()
    options.validate()
    fmts = list(dict.fromkeys(formats))
    unknown = [f for f in fmts if f not in ALL_FORMATS]
    if unknown:
        raise ValueError(
            f"unknown export format(s) {unknown}: allowed values are " + ", ".join(ALL_FORMATS)
        )
    if not fmts:
        raise ValueError("no export format requested; allowed values are " + ", ".join(ALL_FORMATS))
    if "viewer" in fmts and ("dzi" not in fmts or options.dzi_container != "fs"):
        raise ValueError(
            "the 'viewer' format needs 'dzi' with dzi_container='fs' (OpenSeadragon reads loose "
            "tiles, not a zip)"
        )
    height, width = _image_shape(image)
    for fmt in ("png", "jpeg"):
        if fmt in fmts:
            _check_plain_limits(fmt, height, width)
    _check_choice("bridge_method", bridge_method, _BRIDGES)

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}
    if provenance is not None:
        written["provenance"] = _write_provenance_json(out / "provenance.json", provenance)
    if "zarr" in fmts:
        written["zarr"] = export_zarr(image, out / "image.zarr", provenance=provenance)

    vips_formats = [f for f in fmts if f in ("tiff", "dzi", "preview", "png", "jpeg")]
    if vips_formats:
        with VipsBridge(image, out, method=bridge_method) as bridge:
            jobs: dict[str, Callable[[], Path]] = {
                "tiff": lambda: export_tiff(
                    image, out / "image.tif", options, provenance, bridge=bridge
                ),
                "dzi": lambda: export_dzi(
                    image, out / "image.dzi", options, provenance, bridge=bridge
                ),
                "preview": lambda: export_preview(
                    image,
                    out / "preview.jpg",
                    options.preview_long_side,
                    quality=options.quality,
                    bridge=bridge,
                ),
                "png": lambda: export_png(image, out / "image.png", bridge=bridge),
                "jpeg": lambda: export_jpeg(
                    image, out / "image.jpg", options.quality, bridge=bridge
                ),
            }
            workers = min(len(vips_formats), _cpu_count()) if parallel else 1
            if workers <= 1:
                for fmt in vips_formats:
                    log.info("exporting %s (%dx%d)", fmt, width, height)
                    written[fmt] = jobs[fmt]()
                    _release_free_memory()  # one output's freed buffers under the next one
            else:
                # libvips saves are bound by their single write-behind thread (compression and
                # file output), so independent outputs of the shared, read-only bridge run side
                # by side: total time ~ the slowest output instead of the sum.
                with ThreadPoolExecutor(workers, thread_name_prefix="gigasid-export") as pool:
                    futures = {fmt: pool.submit(jobs[fmt]) for fmt in vips_formats}
                    try:
                        for fmt in vips_formats:
                            written[fmt] = futures[fmt].result()
                    except BaseException:
                        for fut in futures.values():
                            fut.cancel()
                        raise

    if "viewer" in fmts:
        from gigasid.io.viewer import write_viewer

        if title is None:
            title = str((provenance or {}).get("title") or "gigasid image")
        written["viewer"] = write_viewer(out, written["dzi"], title, provenance)
    return written


def pyramid_levels_tiff(height: int, width: int, tile_size: int) -> list[tuple[int, int]]:
    """Level sizes ``(H, W)`` libvips writes for a pyramidal TIFF (floor halving).

    Halving continues while the previous level exceeds one tile in either direction.
    """
    levels = [(height, width)]
    h, w = height, width
    while (h > tile_size or w > tile_size) and h > 1 and w > 1:
        h, w = max(1, h // 2), max(1, w // 2)
        levels.append((h, w))
    return levels


def dzi_level_count(height: int, width: int) -> int:
    """Number of DeepZoom levels (``depth=onepixel``): ``ceil(log2(max(H, W))) + 1``."""
    return math.ceil(math.log2(max(height, width))) + 1 if max(height, width) > 1 else 1
