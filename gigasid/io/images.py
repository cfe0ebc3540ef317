"""Reading reference images and writing plain image files, with errors a person can act on."""

from __future__ import annotations

import contextlib
import hashlib
import importlib.resources
from pathlib import Path

import numpy as np
import torch

from gigasid.errors import InputError
from gigasid.io.pixel_format import PixelFormat, _native, to_unit

#: Largest input decoded whole into memory (pixels).
MAX_IN_MEMORY_PIXELS = 256 * 2**20


def builtin_image(name: str) -> Path:
    """Path of an image bundled with gigasid (``hubble``, ``rocket``, ``astronaut``, ...)."""
    root = importlib.resources.files("gigasid") / "data"
    path = Path(str(root / f"{name}.png"))
    if not path.is_file():
        names = sorted(p.name[:-4] for p in Path(str(root)).glob("*.png"))
        raise InputError(f"no bundled image named '{name}'; available: {', '.join(names)}")
    return path


def file_fingerprint(path: Path) -> str:
    """SHA-256 of a file's bytes (what resume compares to detect a changed input)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def load_image(path: str | Path, fmt: PixelFormat | None = None) -> torch.Tensor:
    """Read an image as a float32 ``(C, H, W)`` tensor in ``[0, 1]``.

    Without ``fmt`` (masks, guides): three channels, grey repeated, alpha dropped, 16-bit
    scaled by 65535. With a job's :class:`~gigasid.io.pixel_format.PixelFormat`: the file's own
    channels mapped through the format's window (the references' pixels). Raises
    :class:`InputError` for a missing, unreadable, truncated or oversized file.
    """
    arr = decode_native(path)
    if fmt is not None:
        try:
            return to_unit(arr, fmt)
        except InputError as exc:
            raise InputError(f"{path}: {exc}") from None
    if arr.shape[2] == 1:
        arr = np.repeat(arr, 3, axis=2)
    elif arr.shape[2] >= 4:
        arr = arr[:, :, :3]
    return _legacy_unit(arr)


def _legacy_unit(arr: np.ndarray) -> torch.Tensor:
    if arr.dtype == np.uint8:
        x = torch.from_numpy(np.array(arr, copy=True)).to(torch.float32) / 255.0
    elif arr.dtype == np.uint16:
        x = torch.from_numpy(arr.astype(np.float32)) / 65535.0
    else:
        x = torch.from_numpy(arr.astype(np.float32)).clamp(0, 1)
    return x.permute(2, 0, 1).contiguous()


def decode_native(path: str | Path) -> np.ndarray:
    """Decode an image whole as stored: ``(H, W, C)`` uint8, uint16 or float32 with ``C`` in
    1, 3, 4 (grey + alpha widened to RGBA). Raises :class:`InputError` as :func:`load_image`."""
    p = Path(path)
    if not p.exists():
        raise InputError(f"input image not found: {p} (check 'input' in the config; relative "
                         "paths are resolved against the config file's folder)")
    if not p.is_file():
        raise InputError(f"input path is not a file: {p}")
    if p.suffix.lower() in (".tif", ".tiff"):
        arr = _read_tiff(p)
    elif _png_16bit_colour(p):
        arr = _read_vips(p)  # Pillow reads 16-bit colour PNGs as 8-bit
    else:
        arr = _read_pil(p)
    try:
        return _native(arr)[0]
    except InputError as exc:
        raise InputError(f"{p}: {exc}") from None


def header_channels_8bit(path: str | Path) -> int | None:
    """The channel count an 8-bit image decodes to (1, 3 or 4), read from its header alone;
    None when the file is not 8-bit (its range must be read) or the header does not say."""
    p = Path(path)
    if p.suffix.lower() in (".tif", ".tiff"):
        import tifffile

        try:
            with tifffile.TiffFile(p) as tf:
                series = tf.series[0]
                shape, dtype = series.shape, series.dtype
        except Exception:
            return None
        if dtype != np.uint8:
            return None
        if len(shape) == 2:
            return 1
        if len(shape) == 3:
            c = shape[2] if shape[2] in (1, 2, 3, 4) else shape[0]
            return {1: 1, 2: 4, 3: 3, 4: 4}.get(int(c))
        return None
    if _png_bit_depth(p) == 16:
        return None
    try:
        with _open_pil(p) as im:
            mode = im.mode
    except Exception:
        return None
    if mode in ("1", "L"):
        return 1
    if mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        return None
    return 4 if mode in ("LA", "PA", "RGBA", "La", "RGBa") else 3


def _png_header(p: Path) -> bytes:
    with open(p, "rb") as fh:
        head = fh.read(26)
    return head if head[:8] == b"\x89PNG\r\n\x1a\n" and head[12:16] == b"IHDR" else b""


def _png_bit_depth(p: Path) -> int:
    head = _png_header(p)
    return head[24] if head else 0


def _png_16bit_colour(p: Path) -> bool:
    """A 16-bit PNG with colour (not plain grey), from one read of its header."""
    head = _png_header(p)
    return bool(head) and head[24] == 16 and head[25] != 0


def _read_vips(p: Path) -> np.ndarray:
    import pyvips

    try:
        im = pyvips.Image.new_from_file(str(p), access="sequential", fail=True)
        if im.width * im.height > MAX_IN_MEMORY_PIXELS:
            raise InputError(f"{p}: {im.width}x{im.height} is too large to decode in memory")
        if im.format not in _VIPS_DTYPES:
            im = im.cast("float")
        buf = im.write_to_memory()
    except pyvips.Error as exc:
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else "decode error"
        raise InputError(f"{p}: the image file is corrupt or truncated ({msg})") from None
    return np.frombuffer(buf, dtype=_VIPS_DTYPES[im.format]).reshape(im.height, im.width,
                                                                      im.bands)


@contextlib.contextmanager
def _open_pil(p: Path):
    """``PIL.Image.open`` without Pillow's decompression-bomb limit (about 179 MP raises,
    89 MP warns): gigasid sets its own limits (MAX_IN_MEMORY_PIXELS, streamed decoding),
    and a header read must work for any size. The limit is restored afterwards."""
    from PIL import Image

    old = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None
    try:
        with Image.open(p) as im:
            yield im
    finally:
        Image.MAX_IMAGE_PIXELS = old


def _read_pil(p: Path) -> np.ndarray:
    from PIL import UnidentifiedImageError

    try:
        with _open_pil(p) as im:
            if im.width * im.height > MAX_IN_MEMORY_PIXELS:
                raise InputError(f"{p}: {im.width}x{im.height} is too large to decode in memory")
            im.load()
            if im.mode == "1":
                im = im.convert("L")
            elif im.mode not in ("RGB", "L", "RGBA", "I;16", "I", "F"):
                im = im.convert("RGBA" if "A" in im.getbands() else "RGB")
            arr = np.asarray(im)
            if im.mode == "I" and _png_bit_depth(p) == 16:  # 16-bit grey PNG as 32-bit ints
                arr = arr.astype(np.uint16)
            return arr
    except UnidentifiedImageError:
        raise InputError(f"{p}: not a readable image (unknown or corrupt format)") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise InputError(f"{p}: the image file is corrupt or truncated ({exc})") from None


def _read_tiff(p: Path) -> np.ndarray:
    import tifffile

    try:
        arr = tifffile.imread(p)
    except Exception as exc:  # tifffile raises many types for broken files
        raise InputError(f"{p}: the TIFF file is corrupt or unsupported ({exc})") from None
    if arr.ndim == 3 and arr.shape[0] in (1, 3, 4) and arr.shape[2] not in (1, 3, 4):
        arr = np.moveaxis(arr, 0, 2)
    return arr


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """``(C, H, W)`` float in ``[0, 1]`` -> ``(H, W, C)`` uint8, rounded (not truncated)."""
    a = (x.detach().to(torch.float32).clamp(0, 1) * 255.0).round().to(torch.uint8)
    return a.permute(1, 2, 0).cpu().numpy()


def save_png(rgb: np.ndarray, path: str | Path) -> Path:
    """Write a ``(H, W, 3)`` uint8 array as PNG (parent folders are created)."""
    from PIL import Image

    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rgb).save(p, optimize=False, compress_level=6)
    return p


def image_shape(path: str | Path) -> tuple[int, int]:
    """``(H, W)`` of an image file from its header, without decoding the pixels."""
    p = Path(path)
    if not p.exists():
        raise InputError(f"input image not found: {p} (check 'input' in the config; relative "
                         "paths are resolved against the config file's folder)")
    if p.suffix.lower() in (".tif", ".tiff"):
        import tifffile

        try:
            with tifffile.TiffFile(p) as tf:
                shape = tf.series[0].shape
        except Exception as exc:
            raise InputError(f"{p}: the TIFF file is corrupt or unsupported ({exc})") from None
        if len(shape) == 3 and shape[0] in (1, 3, 4) and shape[2] not in (1, 3, 4):
            return int(shape[1]), int(shape[2])
        return int(shape[0]), int(shape[1])
    from PIL import UnidentifiedImageError

    try:
        with _open_pil(p) as im:
            return im.height, im.width
    except UnidentifiedImageError:
        raise InputError(f"{p}: not a readable image (unknown or corrupt format)") from None
    except OSError as exc:
        raise InputError(f"{p}: the image file is corrupt or truncated ({exc})") from None


_VIPS_DTYPES = {"uchar": np.uint8, "ushort": np.uint16, "float": np.float32}


def read_bands(path: str | Path, rows: int = 256, fmt: PixelFormat | None = None):
    """Decode an image top to bottom in bands, never holding the whole image.

    Yields ``(y0, band)`` with ``band`` a float32 ``(C, h, W)`` tensor in ``[0, 1]``, with the
    same conventions as :func:`load_image` (without ``fmt``: three channels, grey repeated,
    alpha dropped, 16-bit scaled; with it: the file's channels through its window).
    libvips reads the file sequentially (JPEG, PNG, TIFF, WebP, ...), so memory stays at a
    few bands whatever the image size. Raises :class:`InputError` for unreadable files.
    """
    import pyvips

    p = Path(path)
    image_shape(p)  # missing / unreadable header -> InputError with the usual message
    try:
        im = pyvips.Image.new_from_file(str(p), access="sequential", fail=True)
        if im.format not in _VIPS_DTYPES:
            im = im.cast("float")
        dtype = _VIPS_DTYPES[im.format]
        # One region fetched top to bottom: a sequential reader allows nothing else (a new
        # crop per band would restart the decoder).
        region = pyvips.Region.new(im)
        for y0 in range(0, im.height, rows):
            h = min(rows, im.height - y0)
            buf = region.fetch(0, y0, im.width, h)
            arr = np.frombuffer(buf, dtype=dtype).reshape(h, im.width, im.bands)
            if fmt is not None:
                yield y0, to_unit(arr, fmt)
                continue
            if arr.shape[2] in (1, 2):  # grey (+ alpha)
                arr = np.repeat(arr[:, :, :1], 3, axis=2)
            yield y0, _legacy_unit(np.ascontiguousarray(arr[:, :, :3]))
    except pyvips.Error as exc:
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else "decode error"
        raise InputError(f"{p}: the image file is corrupt or truncated ({msg})") from None
