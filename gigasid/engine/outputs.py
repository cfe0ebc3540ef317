"""A finished sample's outputs: PNG, the deep-zoom formats, provenance, the app's extras."""

from __future__ import annotations

from pathlib import Path

from gigasid.engine.execute import pixel_reader
from gigasid.engine.job import Job


def provenance(job: Job, sample: int) -> dict:
    """What made this image: version, resolved config, seed and input fingerprint."""
    from gigasid import __version__

    return {"title": f"gigasid {job.cfg.app} - {job.cfg.name} - sample {sample}",
            "gigasid": __version__, "app": job.cfg.app, "sample": sample,
            "seed": job.cfg.seed + sample, "input": str(job.cfg.input_path()),
            "inputs": [str(p) for p in job.view.inputs + job.view.extra_inputs],
            "input_sha256": job.input_sha256, "config": job.cfg.to_dict(),
            "domain": list(job.plan.scales[0].domain), "codec": job.plan.codec,
            "input_crops": [list(c) for c in job.plan.crops],
            **({} if job.plan.format.is_rgb8 else {"pixel_format": _format_note(job)})}


def _format_note(job: Job) -> dict:
    """The kept format and the window the 8-bit renderings show (for non-8-bit-RGB runs)."""
    from gigasid.io.pixel_format import describe

    fmt = job.plan.format
    return {**fmt.to_dict(), "kind": describe(fmt),
            "display_window": None if fmt.dtype == "uint8" else [fmt.lo, fmt.hi],
            "display": "DeepZoom, IIIF, JPEG, preview and viewer: 8-bit, linear from "
                       "display_window to 0..255, alpha dropped"}


def write_outputs(job: Job, store, name: str, out_dir: Path, sample: int,
                  reporter=None) -> dict:
    """Finished float state -> pixels in the input's format (channels, 8/16-bit or float) ->
    PNG and the deep-zoom outputs of ``output.formats``.

    Persistent runs convert tile by tile into ``out/image.zarr`` and every export streams
    from it; in-memory runs convert the whole (small) image at once.
    """
    from gigasid.io import export
    from gigasid.io.pixel_format import from_unit, to_display, to_unit

    fmt = job.plan.format

    h, w = job.plan.pixel_shape
    decode = pixel_reader(job, store, name, reporter)

    def read(y0, y1, x0, x1):
        return decode((y0, y1, x0, x1))

    fmts = list(job.cfg.output.formats)
    dest = Path(out_dir) / "out"
    if job.plan.num_samples > 1:
        dest = dest / f"sample_{sample:03d}"
    written: dict = {}
    if store.persistent:
        # uncompressed full-width bands: the exports map these chunk files in place (no
        # decoding, no temporary copy); see export.create_image_zarr
        image = export.write_image_zarr(
            dest / "image.zarr", h, w,
            lambda y0, y1, x0, x1: from_unit((read(y0, y1, x0, x1) + 1.0) / 2.0, fmt),
            tile=_read_tile(job), channels=fmt.channels, dtype=fmt.dtype)
        written["zarr"] = str(dest / "image.zarr")
    else:
        image = from_unit((read(0, h, 0, w) + 1.0) / 2.0, fmt)
        if "zarr" in fmts:
            written["zarr"] = str(export.export_zarr(image, dest / "image.zarr"))
    prov = provenance(job, sample)
    small = h * w <= PNG_MAX_PIXELS
    window = None if fmt.dtype == "uint8" else (fmt.lo, fmt.hi)
    if small:
        import numpy as np

        pixels = np.asarray(image[:])
        # What the application measures on its result (PSNR, seam ratio, ...), on the
        # quantised image a user gets; recorded in provenance and timings.json.
        metrics = job.app.report(job.view, to_unit(pixels, fmt))
        if metrics:
            prov["metrics"] = metrics
            written["metrics"] = metrics
        extra = job.app.extra_outputs(job.view, to_display(pixels, fmt), dest)
        written.update(extra)
    if "png" in fmts and small:
        # one writer for both stores: the same pixels give the same file
        png = Path(out_dir) / f"sample_{sample:03d}.png"
        written["png"] = str(export.export_png(image, png, window=window))
    deep = [f for f in fmts if f in ("tiff", "dzi", "preview", "viewer", "ome-zarr", "iiif")]
    if deep:
        o = job.cfg.output
        opts = export.ExportOptions(
            tile_size=o.tile_size, tiff_compression=o.tiff_compression, quality=o.quality,
            dzi_tile_format=o.dzi_tile_format, dzi_container=o.dzi_container,
            preview_long_side=o.preview_long_side, iiif_base_url=o.iiif_base_url,
            display_window=window)
        files = export.export_all(image, dest, opts, prov, formats=deep, title=prov["title"])
        written.update({k: str(v) for k, v in files.items()})
    return written


def _read_tile(job: Job) -> int:
    """Side of the regions the output is read in: the codec's decode tiles (each decoded
    once), else the finest scale's tiles."""
    if job.codec is not None and job.codec.factor > 1:
        return job.codec.tile * job.codec.factor
    return job.plan.scales[0].tile or 512


#: Largest output also written as PNG (the whole image is assembled in memory for it).
PNG_MAX_PIXELS = 64 * 2**20


