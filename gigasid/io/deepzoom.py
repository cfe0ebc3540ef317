"""DeepZoom export: ``image.dzi`` + ``image_files/`` (or one ``.zip``) + provenance JSON.

The pyramid is what the offline viewer (:mod:`gigasid.io.viewer`) reads with OpenSeadragon.
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from gigasid.io.export_options import ExportOptions
from gigasid.io.output_files import _remove, _write_provenance_json
from gigasid.io.pixel_blocks import _image_shape
from gigasid.io.vips_bridge import VipsBridge, _bridge_for

__all__ = ["dzi_level_count", "export_dzi"]


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
        Array-like of shape ``(H, W, C)`` (see :class:`VipsBridge`; an 8-bit rendering is
        tiled).
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
            b.display(options.display_window).dzsave(
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


def dzi_level_count(height: int, width: int) -> int:
    """Number of DeepZoom levels (``depth=onepixel``): ``ceil(log2(max(H, W))) + 1``."""
    return math.ceil(math.log2(max(height, width))) + 1 if max(height, width) > 1 else 1
