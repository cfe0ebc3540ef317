"""IIIF export: static tiles of the IIIF Image API 3.0 at compliance level 0, with ``info.json``.

Version
-------
Image API **3.0**, the current version: OpenSeadragon (the offline viewer), Mirador 3/4 and the
Universal Viewer 4 read it. Its tile URLs also suit static files better: a client names a tile's
size ``w,h`` (``max`` only for the whole image at full size) and finds the file libvips wrote,
whereas with Image API 2 OpenSeadragon asks for the size ``full`` instead of ``w,`` whenever a
tile spans the image's whole width (every tile of an image narrower than one tile), a file a
static tile set does not have.

Layout
------
libvips' ``dzsave(layout="iiif3")`` writes, for a directory ``iiif/``::

    iiif/info.json                                  "id": <base URL>/iiif, "profile": "level0"
    iiif/{x},{y},{w},{h}/{tw},{th}/0/default.jpg    one tile (region, size, rotation, quality)
    iiif/full/{tw},{th}/0/default.jpg               a level that fits in one tile

Tiles are ``ExportOptions.tile_size`` pixels square, JPEG at ``ExportOptions.quality`` (IIIF level
0 requires jpg), at scale factors 1, 2, 4... until a level fits in one tile. An image that fits in
one tile at full size also gets ``full/max/0/default.jpg``, the URL clients (OpenSeadragon among
them) ask for then.

``info.json`` names the service by its absolute URL, ``id``: a client builds every tile URL from
it, so it must be where the directory will be served (``ExportOptions.iiif_base_url`` plus the
directory's name; the default suits the output directory served on port 8000, by
``python -m http.server`` run in it or by ``gigasid view RUN --port 8000``). The offline viewer
does not depend on it: it inlines a copy of ``info.json`` whose ``id`` is the directory's path
relative to the page (:mod:`gigasid.io.viewer`).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from gigasid.io.export_options import ExportError, ExportOptions
from gigasid.io.output_files import _remove
from gigasid.io.pixel_blocks import _image_shape
from gigasid.io.vips_bridge import VipsBridge, _bridge_for

__all__ = ["IIIF_CONTEXT", "export_iiif", "read_iiif_info"]

#: JSON-LD context of the ``info.json`` written (IIIF Image API 3.0).
IIIF_CONTEXT = "http://iiif.io/api/image/3/context.json"
_IIIF_CONTEXT_2 = "http://iiif.io/api/image/2/context.json"
_IIIF_PROTOCOL = "http://iiif.io/api/image"


def export_iiif(
    image: Any,
    path: str | os.PathLike[str],
    options: ExportOptions | None = None,
    *,
    bridge: VipsBridge | None = None,
) -> Path:
    """Write IIIF Image API 3.0 level-0 static tiles and ``info.json`` into a directory.

    Parameters
    ----------
    image
        Array-like of shape ``(H, W, C)`` (see :class:`VipsBridge`; an 8-bit rendering is
        tiled) (read through the libvips bridge, as the
        DeepZoom export).
    path
        The directory (conventionally ``out/iiif``); its name is the last segment of the
        service's ``id``. An existing one is replaced once the new tiles are complete.
    options
        ``tile_size``, ``quality`` and ``iiif_base_url`` (:class:`ExportOptions`).
    bridge
        An open :class:`VipsBridge` of ``image`` to reuse; built (and removed) here if ``None``.

    Returns
    -------
    pathlib.Path
        The ``info.json`` file.
    """
    options = options or ExportOptions()
    options.validate()
    height, width = _image_shape(image)
    out = Path(path)
    if out.suffix.lower() == ".json":  # given as .../iiif/info.json
        out = out.parent
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".gigasid-iiif-", dir=out.parent))
    try:
        with _bridge_for(image, out.parent, bridge) as b:
            b.display(options.display_window).dzsave(
                str(staging / out.name),
                layout="iiif3",
                tile_size=options.tile_size,
                overlap=0,
                suffix=f".jpg[Q={options.quality}]",
                id=options.iiif_base_url.rstrip("/"),
            )
        tiles = staging / out.name
        _add_full_max(tiles, width, height)
        _check_info(tiles / "info.json", width, height)
        _remove(out)
        os.replace(tiles, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out / "info.json"


def _add_full_max(directory: Path, width: int, height: int) -> None:
    """Give a one-tile image the URL ``full/max/0/default.jpg`` too.

    Clients ask for the size ``max`` when a tile is the whole image at full size;
    libvips names that tile by its pixel size. A hard link costs no space (a copy where links
    are not possible).
    """
    for name in (f"full/{width},{height}", f"0,0,{width},{height}/{width},{height}"):
        tile = directory / name / "0" / "default.jpg"
        if tile.is_file():
            target = directory / "full" / "max" / "0" / "default.jpg"
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.link(tile, target)
            except OSError:
                shutil.copyfile(tile, target)
            return


def _check_info(path: Path, width: int, height: int) -> None:
    info = read_iiif_info(path)
    if (info["width"], info["height"]) != (width, height):
        raise ExportError(
            f"{path} describes {info['width']}x{info['height']}, not {width}x{height}"
        )


def read_iiif_info(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read and check an IIIF Image API 3.0 (or 2.x) ``info.json``.

    Parameters
    ----------
    path
        The ``info.json`` file, or the directory that holds it.

    Returns
    -------
    dict
        The parsed document; it has ``width`` and ``height`` (integers), ``tiles`` and an ``id``
        (``@id`` for version 2).

    Raises
    ------
    ExportError
        The file is missing, not JSON, or not an IIIF image information document.
    """
    p = Path(path)
    if p.is_dir():
        p = p / "info.json"
    try:
        info = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ExportError(
            f"cannot read the IIIF description {p}: {exc}; re-run the export with --format iiif"
        ) from exc
    context = info.get("@context") if isinstance(info, dict) else None
    contexts = context if isinstance(context, list) else [context]
    if (
        not isinstance(info, dict)
        or info.get("protocol") != _IIIF_PROTOCOL
        or not {IIIF_CONTEXT, _IIIF_CONTEXT_2} & set(map(str, contexts))
        or not (info.get("id") or info.get("@id"))
    ):
        raise ExportError(f"{p} is not an IIIF Image API 2 or 3 info.json")
    try:
        info["width"], info["height"] = int(info["width"]), int(info["height"])
    except (KeyError, TypeError, ValueError) as exc:
        raise ExportError(f"{p}: no image size in the IIIF description ({exc})") from exc
    return info
