"""The reference pyramid of a large input, built band by band into files in the run directory.

Level 0 is the input itself, decoded sequentially in bands and stored as a float32
``(C, H, W)`` file in ``[-1, 1]``; level ``k`` is resampled from level ``k - 1`` band by band
exactly as :func:`gigasid.core.pyramid.build_pyramid` does it in memory (same bands, same
bits) while memory holds only a few bands. The files are opened
memory-mapped: the page cache, not the process, holds them, and every worker process shares
them. A manifest written last (with the input's fingerprint and the level shapes) makes a
resumed run reuse them; anything without a matching manifest is rebuilt.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch

from gigasid.core.pyramid import resize_in_bands
from gigasid.io.images import read_bands
from gigasid.io.pixel_format import RGB8, PixelFormat

#: Inputs with more pixels than this are streamed into on-disk levels (``auto``).
STREAM_MIN_PIXELS = 64 * 2**20

#: Input rows decoded per band.
BAND_ROWS = 256


def streams(mode: str, shape: tuple[int, int]) -> bool:
    """Whether a reference of ``shape`` pixels is decoded into on-disk files
    (``engine.reference``: ``disk`` always, ``auto`` above :data:`STREAM_MIN_PIXELS`)."""
    return mode == "disk" or (mode == "auto" and shape[0] * shape[1] > STREAM_MIN_PIXELS)


def _open(path: Path, shape: tuple[int, ...], mode: str) -> np.memmap:
    return np.memmap(path, dtype=np.float32, mode=mode, shape=shape)


def _level_file(folder: Path, k: int) -> Path:
    return folder / f"level{k}.f32"


def build_levels_on_disk(input_path: Path, shapes: list[tuple[int, int]], folder: Path,
                         fingerprint: str, fmt: PixelFormat | None = None
                         ) -> list[torch.Tensor]:
    """Build (or reopen) the reference pyramid as memory-mapped ``(C, H, W)`` tensors.

    Parameters
    ----------
    input_path:
        The reference image; it must have the shape ``shapes[0]``.
    shapes:
        ``(H, W)`` of every level, finest first.
    folder:
        Where the level files and ``levels.json`` live (``RUN/reference``).
    fingerprint:
        The input's fingerprint; a manifest with another one is rebuilt.
    fmt:
        The job's pixel format (default 8-bit RGB): channels and value window.
    """
    fmt = fmt or RGB8
    channels = fmt.channels
    folder.mkdir(parents=True, exist_ok=True)
    manifest = folder / "levels.json"
    want = {"fingerprint": fingerprint, "shapes": [list(s) for s in shapes],
            "channels": channels}
    if not fmt.is_rgb8:
        want["format"] = fmt.to_dict()
    if not (manifest.is_file() and json.loads(manifest.read_text()) == want):
        manifest.unlink(missing_ok=True)
        _build(input_path, shapes, folder, fmt)
        tmp = manifest.with_suffix(".tmp")
        tmp.write_text(json.dumps(want))
        os.replace(tmp, manifest)
    # Copy-on-write maps: reads come from the shared page cache, and a stray in-place write
    # could never reach the files.
    return [torch.from_numpy(_open(_level_file(folder, k), (channels, *shp), "c"))
            for k, shp in enumerate(shapes)]


def _build(input_path: Path, shapes: list[tuple[int, int]], folder: Path,
           fmt: PixelFormat) -> None:
    channels = fmt.channels
    partial = folder / "level0.f32.partial"
    lvl = _open(partial, (channels, *shapes[0]), "w+")
    for y0, band in read_bands(input_path, BAND_ROWS, None if fmt.is_rgb8 else fmt):
        if band.shape[1:] != (min(BAND_ROWS, shapes[0][0] - y0), shapes[0][1]):
            raise ValueError(f"{input_path}: band at row {y0} has shape {tuple(band.shape)}")
        lvl[:, y0 : y0 + band.shape[1]] = (band * 2.0 - 1.0).numpy()
    lvl.flush()
    del lvl
    os.replace(partial, _level_file(folder, 0))
    for k in range(1, len(shapes)):
        src = torch.from_numpy(_open(_level_file(folder, k - 1), (channels, *shapes[k - 1]), "c"))
        partial = folder / f"level{k}.f32.partial"
        dst = _open(partial, (channels, *shapes[k]), "w+")
        resize_in_bands(src, shapes[k], out=torch.from_numpy(dst))
        dst.flush()
        del dst
        os.replace(partial, _level_file(folder, k))
