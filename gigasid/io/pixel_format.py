"""The pixel format of a reference -- channels, sample type, value range -- and the conversions
between it and the ``[0, 1]`` floats the sampler works in.

A run keeps the input's format end to end: a 16-bit grey TIFF gives 16-bit grey outputs, an
RGBA PNG gives RGBA. The sampler sees every channel (alpha included) as one more plane of the
patches; it works in ``[0, 1]`` (then ``[-1, 1]``) whatever the storage, so a format also names
the window ``[lo, hi]`` of stored values that maps onto ``[0, 1]``:

* ``uint8``: always ``0 .. 255``, which keeps 8-bit jobs exactly as they were;
* ``uint16`` and ``float32``: the data's own minimum and maximum over every reference, so a
  12-bit camera image in a 16-bit file, or float radiances in ``[0, 40]``, fill the sampler's
  range (a fixed ``0 .. 65535`` would squeeze them into a sliver that the noise swamps).

Outputs are mapped back through the same window, rounded for integers, hence always within the
references' range. The window is also what the 8-bit renderings (deep zoom, viewer, preview)
show, and it is recorded in the provenance.

>>> fmt = PixelFormat(channels=1, dtype="uint16", lo=1000.0, hi=3000.0)
>>> import numpy as np
>>> x = to_unit(np.array([[[1000], [2000]], [[3000], [1500]]], dtype=np.uint16), fmt)
>>> x.flatten().tolist()
[0.0, 0.5, 1.0, 0.25]
>>> from_unit(x, fmt)[:, :, 0].tolist()
[[1000, 2000], [3000, 1500]]
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gigasid.errors import InputError

#: Sample types a run keeps (anything else is read as float32).
DTYPES = ("uint8", "uint16", "float32")

#: Channel counts a run keeps: grey, RGB, RGBA (grey + alpha is widened to RGBA).
CHANNELS = (1, 3, 4)


@dataclass(frozen=True)
class PixelFormat:
    """Channels, sample type and value window of a run's pixels.

    Attributes
    ----------
    channels:
        1 (grey), 3 (RGB) or 4 (RGBA).
    dtype:
        ``"uint8"``, ``"uint16"`` or ``"float32"``.
    lo, hi:
        Stored values that map to 0 and 1 in the sampler (``hi > lo``).
    """

    channels: int = 3
    dtype: str = "uint8"
    lo: float = 0.0
    hi: float = 255.0

    @property
    def is_rgb8(self) -> bool:
        """8-bit RGB: the format every output wrote before formats were kept."""
        return self.channels == 3 and self.dtype == "uint8"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> PixelFormat:
        return cls(**d) if d else cls()


#: The format of 8-bit RGB images (and of every job before formats were kept).
RGB8 = PixelFormat()

#: 8-bit formats per channel count (the renderings of :func:`to_display`).
RGB8_LIKE = {c: PixelFormat(c, "uint8") for c in CHANNELS}


def _window(dtype: str, lo: float, hi: float) -> tuple[float, float]:
    if dtype == "uint8":
        return 0.0, 255.0
    lo, hi = float(lo), float(hi)
    if not (np.isfinite(lo) and np.isfinite(hi)):
        raise InputError("the image holds NaN or infinite values; gigasid needs finite pixels")
    if hi <= lo:  # a constant image: any window holds it
        hi = lo + (1.0 if dtype == "float32" else 1.0)
    return lo, hi


def _native(arr: np.ndarray) -> tuple[np.ndarray, str]:
    """``(H, W, C)`` array in one of :data:`DTYPES` and channels widened to 1, 3 or 4."""
    if arr.ndim == 2:
        arr = arr[:, :, None]
    c = arr.shape[2]
    if c == 2:  # grey + alpha: RGBA, the nearest format every output can hold
        arr = np.concatenate([arr[:, :, :1]] * 3 + [arr[:, :, 1:2]], axis=2)
    elif c not in CHANNELS:
        raise InputError(f"the image has {c} channels; gigasid reads grey (1), grey + alpha "
                         "(2), RGB (3) or RGBA (4) images")
    if arr.dtype == np.bool_:
        arr = arr.astype(np.uint8) * 255
    if arr.dtype in (np.uint8, np.uint16):
        return arr, str(arr.dtype)
    return arr.astype(np.float32, copy=False), "float32"


def format_of(arr: np.ndarray) -> PixelFormat:
    """The format of decoded pixels (their range sets the window of non-8-bit types)."""
    arr, dtype = _native(arr)
    lo, hi = (0.0, 255.0) if dtype == "uint8" else (float(arr.min()), float(arr.max()))
    lo, hi = _window(dtype, lo, hi)
    return PixelFormat(arr.shape[2], dtype, lo, hi)


def common_format(formats: list[PixelFormat], names: list[str] | None = None) -> PixelFormat:
    """The format of a job's references: they must share channels and type; the window
    spans all of them. Raises :class:`InputError` naming the files that disagree."""
    first = formats[0]
    for i, f in enumerate(formats[1:], start=1):
        if (f.channels, f.dtype) != (first.channels, first.dtype):
            a, b = (names[0], names[i]) if names else ("reference 0", f"reference {i}")
            raise InputError(f"the references disagree: {a} is {describe(first)} but {b} is "
                             f"{describe(f)}; convert them to one format")
    if first.dtype == "uint8":
        return first
    lo, hi = _window(first.dtype, min(f.lo for f in formats), max(f.hi for f in formats))
    return PixelFormat(first.channels, first.dtype, lo, hi)


def describe(fmt: PixelFormat) -> str:
    """``"16-bit grey"``, ``"8-bit RGBA"``, ``"float32 RGB"``..."""
    kind = {1: "grey", 3: "RGB", 4: "RGBA"}[fmt.channels]
    depth = {"uint8": "8-bit", "uint16": "16-bit", "float32": "float32"}[fmt.dtype]
    return f"{depth} {kind}"


def to_unit(arr: np.ndarray, fmt: PixelFormat) -> torch.Tensor:
    """``(H, W, C)`` stored pixels -> float32 ``(C, H, W)`` in ``[0, 1]`` through the window
    (channels are widened as the format says: grey + alpha becomes RGBA)."""
    arr, dtype = _native(arr)
    if arr.shape[2] != fmt.channels:
        raise InputError(f"the image has {arr.shape[2]} channels, the job's references "
                         f"{fmt.channels}; convert it to {describe(fmt)}")
    if dtype == "uint8" and fmt.dtype == "uint8":
        # exactly the 8-bit conversion of every earlier version (same bits)
        x = torch.from_numpy(np.array(arr, copy=True)).to(torch.float32) / 255.0
    else:
        span = fmt.hi - fmt.lo
        x = ((torch.from_numpy(arr.astype(np.float64)) - fmt.lo) / span).clamp(0, 1)
        x = x.to(torch.float32)
    return x.permute(2, 0, 1).contiguous()


def from_unit(x: torch.Tensor, fmt: PixelFormat) -> np.ndarray:
    """``(C, H, W)`` floats in ``[0, 1]`` -> ``(H, W, C)`` stored pixels (rounded for
    integer types; 8-bit RGB exactly as every earlier version wrote it)."""
    x = x.detach().to(torch.float32).clamp(0, 1)
    if fmt.dtype == "uint8":
        a = (x * 255.0).round().to(torch.uint8)
        return a.permute(1, 2, 0).cpu().numpy()
    v = fmt.lo + x.to(torch.float64) * (fmt.hi - fmt.lo)
    v = v.permute(1, 2, 0).cpu().numpy()
    if fmt.dtype == "uint16":
        return np.clip(np.round(v), 0, 65535).astype(np.uint16)
    return v.astype(np.float32)


def to_display(arr: np.ndarray, fmt: PixelFormat) -> np.ndarray:
    """``(H, W, C)`` stored pixels -> ``(H, W, 3)`` uint8 for pictures made from the result
    (previews): the window onto 0..255, grey repeated, alpha dropped; 8-bit RGB as it is."""
    if fmt.is_rgb8:
        return np.asarray(arr)
    x = from_unit(to_unit(arr, fmt), RGB8_LIKE[fmt.channels])
    return np.repeat(x, 3, axis=2) if x.shape[2] == 1 else x[:, :, :3]


def probe_format(path: str | Path) -> PixelFormat:
    """The format of an image file, read without keeping its pixels.

    8-bit files need only their header. 16-bit and float files are read once for their
    range: whole when they fit in memory, else streamed by libvips.
    """
    from gigasid.io.images import (
        MAX_IN_MEMORY_PIXELS,
        decode_native,
        header_channels_8bit,
        image_shape,
    )

    h, w = image_shape(path)
    channels = header_channels_8bit(path)
    if channels is not None:
        return PixelFormat(channels, "uint8")
    if h * w <= MAX_IN_MEMORY_PIXELS:
        return format_of(decode_native(path))
    import pyvips

    try:
        im = pyvips.Image.new_from_file(str(path), access="sequential", fail=True)
        bands = im.bands
        dtype = {"uchar": "uint8", "ushort": "uint16"}.get(im.format, "float32")
        channels = 4 if bands == 2 else bands
        if channels not in CHANNELS:
            raise InputError(f"{path}: the image has {bands} channels; gigasid reads grey, "
                             "grey + alpha, RGB or RGBA images")
        if dtype == "uint8":
            return PixelFormat(channels, "uint8")
        stats = im.stats()  # one streamed pass; row 0 holds min and max over every band
        lo, hi = _window(dtype, stats(0, 0)[0], stats(1, 0)[0])
    except pyvips.Error as exc:
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else "decode error"
        raise InputError(f"{path}: the image file is corrupt or truncated ({msg})") from None
    return PixelFormat(channels, dtype, lo, hi)
