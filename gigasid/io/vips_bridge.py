"""The bridge: how the pixels of an array-like reach libvips (:class:`VipsBridge`).

libvips needs a random-access source; a Zarr array of compressed chunks is not one. How the
pixels reach libvips (measured in ``benchmarks/bench_export.py``, report in
``benchmarks/results/bench_export.md``):

mapped in place (no copy)
    The finished image of a run, ``out/image.zarr``, is written by
    :func:`gigasid.io.image_zarr.write_image_zarr` as uncompressed full-width bands of rows
    (:func:`gigasid.io.image_zarr.create_image_zarr`), so each chunk file *is* the raw RGB bytes
    of its band. The bridge opens every band file with libvips' ``rawload`` (a memory map),
    stacks them with ``arrayjoin`` and libvips reads the pixels where they are: no decoding, no
    temporary file, no anonymous memory. A C-contiguous numpy input (or ``np.memmap``) is
    likewise read in place. This is what makes the exports of a finished run run at libvips' own
    speed (268 MP on 2 cores: pyramidal JPEG BigTIFF and DeepZoom end to end at the speed of
    their libvips save alone).
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
need the image's raw size (``H * W * C`` samples) of temporary disk. The raw copy is the default
because libvips reads it faster and with less memory than the TIFF one: on 2 cores, at 268 MP,
DeepZoom ran 1.2-1.4x and the preview 1.6-3x faster from it, the pyramidal TIFF as fast, and
peak RssAnon was 35-60 MB lower (libtiff decodes one tile at a time under a lock through a tile
cache, whereas mmap'd raw pixels are shared page cache read in place). The ``"tiff"`` bridge
stays selectable, as a fallback and for the benchmark.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from gigasid.io.export_options import ExportError, _check_choice
from gigasid.io.image_zarr import _band_files
from gigasid.io.output_files import _check_disk
from gigasid.io.pixel_blocks import (
    _BLOCK_BUDGET_BYTES,
    _addressable,
    _block_shape,
    _image_format,
    _iter_blocks,
    _read_block,
)
from gigasid.io.vips_runtime import _decoding_heap, _vips

__all__ = ["VipsBridge"]


#: Values of ``VipsBridge(method=...)``: see the module docstring.
_BRIDGES = ("raw", "tiff")

#: libvips' name of each sample type the exports write.
_VIPS_FORMATS = {"uint8": "uchar", "uint16": "ushort", "float32": "float"}


def _interpretation(channels: int, dtype: np.dtype) -> str:
    """How libvips (and so its savers) should read the bands: grey or RGB(A), 8 or 16 bit."""
    if channels == 1:
        return "grey16" if dtype == np.uint16 else "b-w"
    return "rgb16" if dtype == np.uint16 else "srgb"


def render_8bit(image: Any, window: tuple[float, float] | None) -> Any:
    """An 8-bit rendering of a libvips image for the viewers (DeepZoom, IIIF, JPEG, preview).

    8-bit images are returned as they are (the same bytes as always). 16-bit and float
    images are mapped linearly from ``window`` (``(lo, hi)`` stored values; default the
    type's range: 0..65535, or 0..1 for floats) onto 0..255, rounded and clipped. Alpha is
    dropped: the viewers show the colour (PNG and TIFF keep it).
    """
    if image.bands == 4:
        image = image.extract_band(0, n=3)
    elif image.bands == 2:
        image = image.extract_band(0)
    if image.format == "uchar":
        return image.copy(interpretation="b-w" if image.bands == 1 else "srgb")
    if window is None:
        window = (0.0, 65535.0) if image.format == "ushort" else (0.0, 1.0)
    lo, hi = float(window[0]), float(window[1])
    scale = 255.0 / (hi - lo) if hi > lo else 1.0
    out = (image.cast("double") - lo) * scale + 0.5
    out = (out < 0).ifthenelse(0, out)  # cast truncates toward zero and clips at 255
    out = out.cast("uchar")
    return out.copy(interpretation="b-w" if out.bands == 1 else "srgb")


#: Most band files one bridge maps at once (each holds a file descriptor while it is open); an
#: image with more bands is copied into one raw file instead (in the kernel, still no decoding).
_MAX_MAPPED_BANDS = 512


def _pwrite_all(fd: int, block: np.ndarray, offset: int) -> None:
    view = memoryview(np.ascontiguousarray(block)).cast("B")
    while len(view):
        n = os.pwrite(fd, view, offset)
        view, offset = view[n:], offset + n


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


class VipsBridge:
    """A libvips image of an array-like: mapped in place when its layout allows, else copied.

    Arrays written by :func:`~gigasid.io.image_zarr.write_image_zarr` (raw full-width bands) and
    C-contiguous numpy arrays are read where they are (``zero_copy``); anything else is copied,
    uncompressed, into a temporary file. Use it as a context manager: the temporary directory
    (created next to the output, so the copy lands on the output's filesystem and not in a
    possibly small ``/tmp``) is removed on exit, also when an export fails. Build it once and
    pass it to several exports.

    Parameters
    ----------
    image
        Array-like of shape ``(H, W, C)`` (``C`` = 1, 3 or 4), dtype uint8, uint16 or float32,
        supporting numpy slicing.
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
        self.height, self.width, self.channels, self.dtype = _image_format(image)
        self._vformat = _VIPS_FORMATS[self.dtype.name]
        self._pixel = self.channels * self.dtype.itemsize
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
            image = pyvips.Image.new_from_memory(
                src.data, self.width, self.height, self.channels, self._vformat
            )
            self._image = self._interpret(image)
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
        nbytes = self.height * self.width * self._pixel
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
        """The ``pyvips.Image`` reading the bridge: the source's bands and sample type."""
        if self._image is None:
            raise RuntimeError("VipsBridge is not open; use it as a context manager")
        return self._image

    def display(self, window: tuple[float, float] | None = None) -> Any:
        """The 8-bit rendering of :attr:`image` the viewers get (:func:`render_8bit`)."""
        return render_8bit(self.image, window)

    def _interpret(self, image: Any) -> Any:
        return image.copy(interpretation=_interpretation(self.channels, self.dtype))

    def _rawload(self, path: str, height: int) -> Any:
        pyvips = _vips()
        return pyvips.Image.rawload(
            path, self.width, height, self.channels, format=self._vformat
        )

    # -- the two bridges -------------------------------------------------------------------------

    def _open_bands(self, files: list[str], rows: int) -> Any:
        pyvips = _vips()
        # every band file holds `rows` full rows (Zarr pads the last chunk); arrayjoin stacks
        # them and the crop drops the padding below the image
        parts = [self._rawload(f, rows) for f in files]
        image = parts[0] if len(parts) == 1 else pyvips.Image.arrayjoin(parts, across=1)
        if image.height != self.height:
            image = image.crop(0, 0, self.width, self.height)
        return self._interpret(image)

    def _open_raw(self, bands: tuple[list[str], int] | None = None) -> Any:
        src = self._source
        assert self._tmpdir is not None
        path = self._tmpdir / "pixels.raw"
        if bands is not None:  # raw band files, too many to map at once: copied in the kernel
            files, rows = bands
            row_bytes = self.width * self._pixel
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                os.ftruncate(fd, self.height * row_bytes)
                for i, f in enumerate(files):
                    n = min(rows, self.height - i * rows)
                    _copy_file_range_all(f, fd, n * row_bytes, i * rows * row_bytes)
            finally:
                os.close(fd)
            return self._interpret(self._rawload(str(path), self.height))
        rows, cols = _block_shape(src, self.height, self.width, self._budget)
        row_bytes = self.width * self._pixel
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
                                path,
                                dtype=self.dtype,
                                mode="r+",
                                shape=(self.height, self.width, self.channels),
                            )
                        mm[ys, xs] = block
                    del block
            if mm is not None:
                mm.flush()
        finally:
            del mm
            os.close(fd)
        return self._interpret(self._rawload(str(path), self.height))

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
        group = max(tile, (self._budget // (tile * self._pixel)) // tile * tile)

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
                shape=(self.height, self.width, self.channels),
                dtype=self.dtype,
                tile=(tile, tile),
                photometric="minisblack" if self.channels == 1 else "rgb",
                extrasamples=("unassalpha",) if self.channels == 4 else None,
                metadata=None,
                bigtiff=True,
            )
        return self._interpret(pyvips.Image.new_from_file(str(path)))


@contextlib.contextmanager
def _bridge_for(image: Any, workdir: Path, bridge: VipsBridge | None) -> Iterator[VipsBridge]:
    """Yield ``bridge`` if given (caller owns it), else a fresh one closed on exit."""
    if bridge is not None:
        yield bridge
        return
    with VipsBridge(image, workdir) as own:
        yield own
