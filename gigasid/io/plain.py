"""Single-file exports: plain PNG and JPEG (refused beyond the formats' limits) and the preview.

Each is one streamed libvips save from the bridge into a temporary name, moved into place once
complete.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gigasid.io.export_options import (
    JPEG_MAX_SIDE,
    PNG_MAX_PIXELS,
    PNG_MAX_SIDE,
    ExportError,
    _check_int,
)
from gigasid.io.output_files import _partial_path
from gigasid.io.pixel_blocks import _image_shape
from gigasid.io.vips_bridge import VipsBridge, _bridge_for, render_8bit

__all__ = ["export_jpeg", "export_png", "export_preview"]


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
    window: tuple[float, float] | None = None,
) -> Path:
    """Write a plain PNG, streamed (refused beyond PNG's practical limits).

    Parameters
    ----------
    image
        Array-like of shape ``(H, W, C)``: grey, RGB or RGBA; 8-bit and 16-bit pixels are
        written as they are, float pixels as 16-bit through ``window``.
    path
        Output file.
    compression
        zlib level 0..9.
    bridge
        An open :class:`VipsBridge` of ``image`` to reuse.
    window
        ``(lo, hi)`` float values mapped to 0..65535 (default 0..1); floats only.

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
        image,
        path,
        bridge,
        lambda v, tmp: _png_ready(v, window).pngsave(tmp, compression=compression, keep="none"),
    )


def _png_ready(image: Any, window: tuple[float, float] | None) -> Any:
    """PNG holds 8 and 16 bits: float pixels go through ``window`` onto 0..65535."""
    if image.format != "float":
        return image
    lo, hi = window or (0.0, 1.0)
    out = (image.cast("double") - lo) * (65535.0 / (hi - lo)) + 0.5
    out = (out < 0).ifthenelse(0, out).cast("ushort")
    return out.copy(interpretation="grey16" if out.bands == 1 else "rgb16")


def export_jpeg(
    image: Any,
    path: str | os.PathLike[str],
    quality: int = 90,
    *,
    bridge: VipsBridge | None = None,
    window: tuple[float, float] | None = None,
) -> Path:
    """Write a plain baseline JPEG, streamed (refused beyond 65500 px per side).

    Parameters
    ----------
    image
        Array-like of shape ``(H, W, C)`` (an 8-bit rendering is written, :func:`render_8bit`).
    path
        Output file.
    quality
        JPEG quality 1..100.
    bridge
        An open :class:`VipsBridge` of ``image`` to reuse.
    window
        ``(lo, hi)`` of 16-bit or float pixels shown as 0..255 (:func:`render_8bit`).

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
        image,
        path,
        bridge,
        lambda v, tmp: render_8bit(v, window).jpegsave(tmp, Q=quality, keep="none"),
    )


def export_preview(
    image: Any,
    path: str | os.PathLike[str],
    long_side: int = 1024,
    *,
    quality: int = 85,
    bridge: VipsBridge | None = None,
    window: tuple[float, float] | None = None,
) -> Path:
    """Write a downscaled JPEG preview whose longest side is at most ``long_side``.

    The image is shrunk by libvips from the bridge in a streaming pass (antialiased box
    shrink, then a Lanczos reduce); images already small enough are written at full size.

    Parameters
    ----------
    image
        Array-like of shape ``(H, W, C)`` (an 8-bit rendering is written, :func:`render_8bit`).
    path
        Output JPEG file.
    long_side
        Longest side of the preview, in pixels.
    quality
        JPEG quality 1..100.
    bridge
        An open :class:`VipsBridge` of ``image`` to reuse.
    window
        ``(lo, hi)`` of 16-bit or float pixels shown as 0..255 (:func:`render_8bit`).

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
        lambda v, tmp: render_8bit(v, window)
        .thumbnail_image(long_side, height=long_side, size="down")
        .jpegsave(tmp, Q=quality, keep="none"),
    )
