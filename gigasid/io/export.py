"""Out-of-core export of a finished image to viewer and archive formats.

The finished image of a run is an ``(H, W, C)`` array in the input's format (grey, RGB or RGBA;
8-bit, 16-bit or float32) -- usually a Zarr v3 array on disk, possibly far larger than memory.
Every export accepts any such array-like that supports numpy slicing (``zarr.Array``,
``numpy.ndarray``, a ``numpy.memmap``, ...) and never materialises the whole image: pixels are
streamed block by block (aligned to the source's chunk grid) into a *bridge* that libvips can
read with random access, and libvips then builds every output with its demand-driven,
bounded-memory pipelines.

This module is the entry point: :func:`export_all` writes several outputs of one image through
one bridge, and every public name of the export layer can be imported from here.

Outputs
-------
* pyramidal tiled BigTIFF (``image.tif``) with the provenance JSON in its ImageDescription
  (:mod:`gigasid.io.tiff`),
* DeepZoom (``image.dzi`` + ``image_files/``, or one ``.zip``) plus ``image.provenance.json``
  (:mod:`gigasid.io.deepzoom`),
* a JPEG preview, plain PNG / JPEG, refused beyond the formats' limits (:mod:`gigasid.io.plain`),
  a Zarr copy (:mod:`gigasid.io.image_zarr`),
* an OME-Zarr multiscale image (``image.ome.zarr/``, OME-NGFF 0.5; :mod:`gigasid.io.ome_zarr`),
  built with numpy from the source array itself, not through libvips,
* IIIF Image API 3.0 level-0 static tiles (``iiif/`` with ``info.json``; :mod:`gigasid.io.iiif`),
* the offline deep-zoom viewer (see :mod:`gigasid.io.viewer`), via :func:`export_all`.

Layout
------
:mod:`gigasid.io.export_options`
    :class:`ExportOptions`, format names and limits, :class:`ExportError`.
:mod:`gigasid.io.vips_bridge`
    :class:`VipsBridge`: how the pixels reach libvips (mapped in place, or copied).
:mod:`gigasid.io.image_zarr`
    the finished image's Zarr layout that the bridge maps in place, and the Zarr copy.
:mod:`gigasid.io.vips_runtime`
    pyvips setup and glibc heap tuning (:func:`limit_heap_fragmentation`).
:mod:`gigasid.io.pixel_blocks`, :mod:`gigasid.io.output_files`
    reading the source in blocks; atomic output files.

Memory: besides the bridge's block, libvips' pyramid builders hold a few strips of tile height
across the whole image width per level, so peak memory grows with the image *width*, not its
area. Measured peak RssAnon of :func:`export_all`: see ``benchmarks/results/bench_export.md``
(about 90 MB for 16384 x 16384 and 210 MB for 4096 x 65536 in a process that called
:func:`limit_heap_fragmentation`).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from gigasid.io.deepzoom import dzi_level_count, export_dzi
from gigasid.io.export_options import (
    ALL_FORMATS,
    DEFAULT_FORMATS,
    JPEG_MAX_SIDE,
    PNG_MAX_PIXELS,
    PNG_MAX_SIDE,
    ExportError,
    ExportOptions,
    _check_choice,
)
from gigasid.io.iiif import export_iiif
from gigasid.io.image_zarr import (
    IMAGE_BAND_BYTES,
    create_image_zarr,
    export_zarr,
    image_band_rows,
    write_image_zarr,
)
from gigasid.io.ome_zarr import export_ome_zarr, ome_zarr_layout
from gigasid.io.output_files import _write_provenance_json
from gigasid.io.pixel_blocks import _image_shape
from gigasid.io.plain import _check_plain_limits, export_jpeg, export_png, export_preview
from gigasid.io.tiff import export_tiff, provenance_description, pyramid_levels_tiff
from gigasid.io.vips_bridge import _BRIDGES, VipsBridge
from gigasid.io.vips_runtime import _cpu_count, _release_free_memory, limit_heap_fragmentation

# benchmarks/bench_export.py configures libvips through this module before its baseline sample
from gigasid.io.vips_runtime import _vips as _vips

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
    "export_iiif",
    "export_jpeg",
    "export_ome_zarr",
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
    ``index.html`` + ``viewer/`` (needs ``dzi`` with the ``fs`` container, or ``iiif``; it shows
    the DeepZoom pyramid when both are written); ``png`` -> ``image.png``; ``jpeg`` ->
    ``image.jpg``; ``zarr`` -> ``image.zarr``; ``ome-zarr`` -> ``image.ome.zarr/``; ``iiif`` ->
    ``iiif/info.json`` + tiles. When provenance is given it is also written to
    ``provenance.json``.

    Every request is validated (options, format names, PNG/JPEG size limits) before any pixel is
    read; temporary files are removed whatever happens.

    Parameters
    ----------
    image
        Array-like of shape ``(H, W, C)``: ``C`` = 1, 3 or 4 (grey, RGB, RGBA), dtype uint8,
        uint16 or float32. TIFF, PNG, Zarr and OME-Zarr keep the channels and the type (PNG
        writes floats as 16-bit through ``options.display_window``); DeepZoom, IIIF, JPEG, the
        preview and the viewer get an 8-bit colour rendering
        (:func:`~gigasid.io.vips_bridge.render_8bit`, window ``options.display_window``).
    out_dir
        Output directory (created if needed).
    options
        :class:`ExportOptions`; defaults if ``None``.
    provenance
        JSON-serialisable dict (gigasid version, config, seed, input fingerprints...).
    formats
        Subset of ``ALL_FORMATS``.
    title
        Viewer title (and name of the OME-Zarr image); default ``provenance["title"]`` or
        ``"gigasid image"`` (``"image"`` for OME-Zarr).
    bridge_method
        ``"raw"`` or ``"tiff"`` (see :mod:`gigasid.io.vips_bridge`).
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
    loose_dzi = "dzi" in fmts and options.dzi_container == "fs"
    if "viewer" in fmts and not (loose_dzi or "iiif" in fmts):
        raise ValueError(
            "the 'viewer' format needs 'dzi' with dzi_container='fs' (OpenSeadragon reads loose "
            "tiles, not a zip) or 'iiif'"
        )
    if "ome-zarr" in fmts:
        height, width = ome_zarr_layout(image)[:2]
    if fmts != ["ome-zarr"]:
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
    if "ome-zarr" in fmts:
        log.info("exporting ome-zarr (%dx%d)", width, height)
        written["ome-zarr"] = export_ome_zarr(
            image,
            out / "image.ome.zarr",
            options,
            provenance,
            name=title or str((provenance or {}).get("title") or "image"),
        )
        _release_free_memory()

    vips_formats = [f for f in fmts if f in ("tiff", "dzi", "preview", "png", "jpeg", "iiif")]
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
                    window=options.display_window,
                ),
                "png": lambda: export_png(
                    image, out / "image.png", bridge=bridge, window=options.display_window
                ),
                "jpeg": lambda: export_jpeg(
                    image,
                    out / "image.jpg",
                    options.quality,
                    bridge=bridge,
                    window=options.display_window,
                ),
                "iiif": lambda: export_iiif(image, out / "iiif", options, bridge=bridge),
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
        source = written["dzi"] if loose_dzi else written["iiif"]
        written["viewer"] = write_viewer(out, source, title, provenance)
    return written
