"""Offline deep-zoom viewer: an ``index.html`` next to a DeepZoom pyramid or IIIF tiles.

The page uses the OpenSeadragon build vendored in ``gigasid/io/static/openseadragon`` (copied to
``<out_dir>/viewer/`` together with its BSD licence), never a CDN, so it works with no network.
The tile source's descriptor (the DeepZoom ``image.dzi``, or the IIIF ``info.json``) is embedded
in the page as an inline tile source: browsers refuse the XMLHttpRequest that would fetch it from
a ``file://`` page, whereas tiles are plain image loads, which they allow. Double-clicking
``index.html`` therefore works without a server; serving the directory over http
(:func:`gigasid.io.serve.serve`) works too.

An IIIF ``info.json`` names its service by an absolute URL (``id``) from which clients build the
tile URLs; the inlined copy has the tile directory's path relative to the page instead, so the
page finds the tiles wherever the directory is opened or served from.
"""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import xml.etree.ElementTree as ET
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import Any

from gigasid.errors import GigasidError
from gigasid.io.export_options import ExportError
from gigasid.io.iiif import read_iiif_info

__all__ = ["DziInfo", "ViewerError", "read_dzi", "write_viewer"]

_DZ_NAMESPACE = "http://schemas.microsoft.com/deepzoom/2008"
#: Sub-directory of the output directory that receives the vendored OpenSeadragon files.
VIEWER_ASSETS_DIR = "viewer"


class ViewerError(GigasidError):
    """The viewer cannot be written (missing or unreadable DeepZoom descriptor, ...)."""


class DziInfo(dict):
    """Fields of a DeepZoom descriptor: ``TileSize``, ``Overlap``, ``Format``, ``Width``,
    ``Height`` (integers except ``Format``)."""


def read_dzi(dzi_path: str | os.PathLike[str]) -> DziInfo:
    """Parse a ``.dzi`` descriptor.

    Parameters
    ----------
    dzi_path
        The ``.dzi`` XML file written by :func:`gigasid.io.export.export_dzi`.

    Returns
    -------
    DziInfo
        ``{"TileSize": int, "Overlap": int, "Format": str, "Width": int, "Height": int}``.
    """
    path = Path(dzi_path)
    try:
        root = ET.parse(path).getroot()
    except (OSError, ET.ParseError) as exc:
        raise ViewerError(
            f"cannot read the DeepZoom descriptor {path}: {exc}; re-run the export with "
            "--format dzi"
        ) from exc
    size = root.find(f"{{{_DZ_NAMESPACE}}}Size")
    if root.tag != f"{{{_DZ_NAMESPACE}}}Image" or size is None:
        raise ViewerError(f"{path} is not a DeepZoom (2008) descriptor")
    try:
        return DziInfo(
            TileSize=int(root.attrib["TileSize"]),
            Overlap=int(root.attrib["Overlap"]),
            Format=str(root.attrib["Format"]),
            Width=int(size.attrib["Width"]),
            Height=int(size.attrib["Height"]),
        )
    except (KeyError, ValueError) as exc:
        raise ViewerError(f"{path}: incomplete DeepZoom descriptor ({exc})") from exc


def _static_root() -> Any:
    return resources.files("gigasid.io") / "static" / "openseadragon"


def _copy_tree(src: Any, dst: Path) -> None:
    dst.mkdir(parents=True, exist_ok=True)
    for item in src.iterdir():
        if item.is_dir():
            _copy_tree(item, dst / item.name)
        else:
            with item.open("rb") as fin, open(dst / item.name, "wb") as fout:
                shutil.copyfileobj(fin, fout)


def _json_for_script(value: Any) -> str:
    """JSON safe to place inside a ``<script>`` element (no ``</script>`` or ``<!--``)."""
    text = json.dumps(value, sort_keys=True, default=str)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def _caption(title: str, width: int, height: int, provenance: Mapping[str, Any] | None) -> str:
    parts = [f"<strong>{html.escape(title)}</strong>"]
    mp = width * height / 1e6
    size = f"{width:,} &times; {height:,} px"
    size += f" ({mp / 1000:.2f} GP)" if mp >= 1000 else f" ({mp:.1f} MP)"
    parts.append(size)
    prov = dict(provenance or {})
    if prov.get("seed") is not None:
        parts.append(f"seed {html.escape(str(prov['seed']))}")
    version = prov.get("gigasid_version") or prov.get("version")
    if version:
        parts.append(f"gigasid {html.escape(str(version))}")
    return " &middot; ".join(parts)


_PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="generator" content="gigasid">
<link rel="icon" href="data:,">
<title>{title}</title>
<style>
  html, body {{ margin: 0; height: 100%; background: #1b1b1b; color: #e8e8e8;
               font: 13px/1.4 system-ui, sans-serif; overflow: hidden; }}
  #gigasid-view {{ position: absolute; inset: 0; }}
  #gigasid-caption {{ position: absolute; left: 8px; bottom: 8px; z-index: 10;
                     padding: 4px 8px; border-radius: 4px; background: rgba(0, 0, 0, 0.6);
                     pointer-events: none; }}
  #gigasid-error {{ display: none; position: absolute; top: 40%; width: 100%;
                   text-align: center; color: #ff8080; }}
</style>
</head>
<body>
<div id="gigasid-view"></div>
<div id="gigasid-caption">{caption}</div>
<div id="gigasid-error"></div>
<noscript><p>This deep-zoom viewer needs JavaScript.</p></noscript>
<script src="{assets}/openseadragon.min.js"></script>
<script>
(function () {{
  "use strict";
  // The tile source's descriptor ({source_name}) is inlined: pages opened from file:// cannot
  // fetch it.
  var tileSource = {tile_source};
  var status = {{ opened: false, openFailed: 0, tileLoadFailed: 0, fullyLoaded: false,
                 errors: [] }};
  window.gigasidStatus = status;
  function fail(message) {{
    status.errors.push(String(message));
    var box = document.getElementById("gigasid-error");
    box.textContent = String(message);
    box.style.display = "block";
  }}
  if (typeof OpenSeadragon === "undefined") {{
    fail("OpenSeadragon did not load ({assets}/openseadragon.min.js is missing).");
    return;
  }}
  var viewer = OpenSeadragon({{
    id: "gigasid-view",
    prefixUrl: "{assets}/images/",
    tileSources: tileSource,
    // WebGL cannot upload images of a file:// page (each file is its own origin); the 2D
    // canvas drawer can, so use it there and let OpenSeadragon pick its default over http.
    drawer: window.location.protocol === "file:" ? "canvas" : undefined,
    showNavigator: true,
    navigatorPosition: "TOP_RIGHT",
    maxZoomPixelRatio: 2,
    visibilityRatio: 0.5,
    minZoomImageRatio: 0.8
  }});
  window.gigasidViewer = viewer;
  viewer.addHandler("open", function () {{
    status.opened = true;
    var item = viewer.world.getItemAt(0);
    status.fullyLoaded = item.getFullyLoaded();
    item.addHandler("fully-loaded-change", function (event) {{
      status.fullyLoaded = event.fullyLoaded;
    }});
  }});
  viewer.addHandler("open-failed", function (event) {{
    status.openFailed += 1;
    fail("Cannot open the image: " + (event && event.message));
  }});
  viewer.addHandler("tile-load-failed", function (event) {{
    status.tileLoadFailed += 1;
    status.errors.push("tile-load-failed: " + (event && event.message));
  }});
}})();
</script>
</body>
</html>
"""


def _dzi_source(out: Path, dzi: Path) -> tuple[dict[str, Any], int, int]:
    """Inline OpenSeadragon tile source of a loose DeepZoom pyramid, and the image size."""
    info = read_dzi(dzi)
    files_dir = dzi.with_name(dzi.stem + "_files")
    if not files_dir.is_dir():
        raise ViewerError(f"tile directory {files_dir} of {dzi} is missing; re-run the export")
    url = Path(os.path.relpath(files_dir.resolve(), out.resolve())).as_posix() + "/"
    source = {
        "Image": {
            "xmlns": _DZ_NAMESPACE,
            "Url": url,
            "Format": info["Format"],
            "Overlap": str(info["Overlap"]),
            "TileSize": str(info["TileSize"]),
            "Size": {"Width": str(info["Width"]), "Height": str(info["Height"])},
        }
    }
    return source, info["Width"], info["Height"]


def _iiif_source(out: Path, directory: Path) -> tuple[dict[str, Any], int, int]:
    """Inline tile source of IIIF tiles: their ``info.json`` with a page-relative ``id``."""
    try:
        info = read_iiif_info(directory)
    except ExportError as exc:
        raise ViewerError(str(exc)) from exc
    # OpenSeadragon builds each tile URL as id + "/" + region/size/rotation/quality: relative
    # to the page, it works from file:// and from any server
    relative = Path(os.path.relpath(directory.resolve(), out.resolve())).as_posix()
    info["@id" if "@id" in info else "id"] = relative
    return info, info["width"], info["height"]


def write_viewer(
    out_dir: str | os.PathLike[str],
    source_path: str | os.PathLike[str],
    title: str = "gigasid image",
    provenance: Mapping[str, Any] | None = None,
) -> Path:
    """Write ``<out_dir>/index.html`` and copy OpenSeadragon into ``<out_dir>/viewer/``.

    Parameters
    ----------
    out_dir
        Directory of the page (usually the run's ``out/``).
    source_path
        What the page shows: a ``.dzi`` descriptor, whose ``<name>_files/`` directory must sit
        beside it (container ``fs``), or IIIF tiles (their ``info.json`` or its directory, as
        written by :func:`gigasid.io.iiif.export_iiif`). It should lie inside ``out_dir`` so
        that the directory can also be served.
    title
        Page title, shown in the caption.
    provenance
        Optional provenance dict; ``seed`` and ``gigasid_version`` (or ``version``) are shown.

    Returns
    -------
    pathlib.Path
        The written ``index.html``.

    Raises
    ------
    ViewerError
        If the descriptor or its tiles are missing or invalid.
    """
    out = Path(out_dir)
    src = Path(source_path)
    if src.name == "info.json" or src.is_dir():
        tile_source, width, height = _iiif_source(out, src.parent if src.is_file() else src)
    elif src.suffix.lower() != ".dzi":
        raise ViewerError(
            f"the viewer needs a .dzi descriptor with loose tiles or IIIF tiles, got {src}; "
            "export DeepZoom with dzi_container='fs', or IIIF"
        )
    else:
        tile_source, width, height = _dzi_source(out, src)
    out.mkdir(parents=True, exist_ok=True)

    assets = out / VIEWER_ASSETS_DIR
    if assets.exists():
        shutil.rmtree(assets)
    _copy_tree(_static_root(), assets)

    page = _PAGE.format(
        title=html.escape(title),
        caption=_caption(title, width, height, provenance),
        assets=VIEWER_ASSETS_DIR,
        source_name=re.sub(r"[^\w.\- ]", "_", src.name),  # inside a JS comment
        tile_source=_json_for_script(tile_source),
    )
    index = out / "index.html"
    tmp = out / ".index.html.partial"
    tmp.write_text(page, encoding="utf-8")
    os.replace(tmp, index)
    return index
