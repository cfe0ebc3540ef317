"""Pyramidal tiled BigTIFF export (``image.tif``), provenance JSON in its ImageDescription."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from gigasid.io.export_options import ExportOptions
from gigasid.io.output_files import _partial_path
from gigasid.io.pixel_blocks import _image_shape
from gigasid.io.vips_bridge import VipsBridge, _bridge_for
from gigasid.io.vips_runtime import _vips

__all__ = ["export_tiff", "provenance_description", "pyramid_levels_tiff"]


def provenance_description(provenance: Mapping[str, Any]) -> str:
    """Serialise provenance as the JSON text stored in a TIFF ImageDescription.

    The text is plain JSON (``json.loads`` returns the dict). A key spelled ``"shape"`` is written
    with the JSON escape ``\\u0073`` for its first letter: tifffile treats any description that
    starts with ``{`` and contains the bytes ``"shape":`` as its own array metadata and would
    then misread the pyramid.
    """
    text = json.dumps(dict(provenance), sort_keys=True, default=str, ensure_ascii=True)
    return text.replace('"shape":', '"\\u0073hape":')


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
        "compression": _compression(image, options.tiff_compression),
    }
    if kwargs["compression"] in ("jpeg", "webp"):
        kwargs["Q"] = options.quality
    if kwargs["compression"] in ("deflate", "lzw") and image.format != "float":
        # (the floating-point predictor would need readers that many lack, tifffile's
        # numpy-only install among them)
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


def _compression(image: Any, asked: str) -> str:
    """JPEG and WebP hold 8 bits per sample and JPEG no alpha: 16-bit and float images, and
    RGBA asked with JPEG, are written losslessly (deflate) instead of being cut down."""
    if image.format != "uchar" and asked in ("jpeg", "webp"):
        return "deflate"
    if image.bands == 4 and asked == "jpeg":
        return "deflate"
    return asked


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
        Array-like of shape ``(H, W, C)`` (``C`` = 1, 3 or 4; uint8, uint16 or float32;
        ``zarr.Array``, numpy array, ...), written with its channels and type. 16-bit and float
        images asked with JPEG or WebP compression, and RGBA ones asked with JPEG, are written
        with deflate (lossless).
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
