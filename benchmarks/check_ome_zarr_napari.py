"""Open gigasid's OME-Zarr output with napari's OME-Zarr reader, headless, and print the layers.

A reader check, not a benchmark: napari is a heavy GUI stack that gigasid does not depend on, so
it runs in a throwaway virtual environment. Two steps::

    # 1. write sample outputs with gigasid (the project's environment)
    .venv/bin/python benchmarks/check_ome_zarr_napari.py --make /tmp/ome-samples

    # 2. open them with napari + napari-ome-zarr (a separate environment)
    python -m venv /tmp/napari-venv
    /tmp/napari-venv/bin/pip install "napari[pyqt5]" napari-ome-zarr
    QT_QPA_PLATFORM=offscreen /tmp/napari-venv/bin/python \\
        benchmarks/check_ome_zarr_napari.py /tmp/ome-samples/*.ome.zarr

Step 2 accepts any ``image.ome.zarr`` (a run's ``out/image.ome.zarr`` too) and adds its layers
to napari's viewer model through napari's reader machinery, which needs no OpenGL; ``--render``
also draws them in a hidden Qt viewer and takes a screenshot (that needs OpenGL: run it under
``xvfb-run`` with Mesa, or on a desktop). For each image it prints every layer's pyramid (shape
of each level), dtype, contrast limits and colormap and compares them with the group's own NGFF
metadata; it exits non-zero on a mismatch or when napari's reader returns nothing.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def make_samples(directory: Path) -> list[Path]:
    """Write a uint8 RGB and a uint16 single-channel OME-Zarr image (gigasid's environment)."""
    import numpy as np

    from gigasid.io.export import ExportOptions, export_ome_zarr

    directory.mkdir(parents=True, exist_ok=True)
    yy, xx = np.mgrid[0:1500, 0:2000]
    checker = ((yy // 16 + xx // 16) % 2) * 60
    rgb = np.stack([150 * xx / 2000 + checker, 150 * yy / 1500 + checker, 80 + 0 * xx], -1)
    grey = (3000 * (xx + yy) / 3500 + checker * 10)[..., None]
    opts = ExportOptions()
    return [
        export_ome_zarr(rgb.astype(np.uint8), directory / "rgb_uint8.ome.zarr", opts),
        export_ome_zarr(grey.astype(np.uint16), directory / "grey_uint16.ome.zarr", opts),
    ]


def check(path: Path, render: bool = False, save: Path | None = None) -> bool:
    """Open ``path`` with napari-ome-zarr through napari's reader machinery; print and compare.

    Without ``render`` the layers are added to a ``ViewerModel`` (napari without Qt or OpenGL);
    with it, to a hidden ``napari.Viewer`` whose canvas is then rendered (needs OpenGL: a display
    or ``xvfb-run`` with Mesa; Qt's ``offscreen`` platform has none).
    """
    import napari
    import numpy as np
    import zarr
    from napari.components import ViewerModel

    group = zarr.open_group(str(path), mode="r")
    ome = group.attrs.get("ome") or {}
    datasets = ome["multiscales"][0]["datasets"]
    expected = [tuple(group[d["path"]].shape) for d in datasets]
    channels, per_level = expected[0][0], [s[1:] for s in expected]
    print(f"{path}: NGFF {ome.get('version')}, levels {expected}, dtype {group['0'].dtype}")

    if render:
        viewer = napari.Viewer(show=True)
    else:
        # napari.Viewer discovers the installed reader plugins; a bare model must ask for it
        from napari.plugins import _initialize_plugins

        _initialize_plugins()
        viewer = ViewerModel()
    layers = viewer.open(str(path), plugin="napari-ome-zarr")
    ok = len(layers) == channels  # napari-ome-zarr splits the channel axis into layers
    for layer in layers:
        data = layer.data if layer.multiscale else [layer.data]
        levels = [tuple(level.shape) for level in data]
        first = np.asarray(data[-1][:])  # the smallest level, read through napari's layer
        print(
            f"  layer {layer.name!r}: multiscale={layer.multiscale}, levels={levels}, "
            f"dtype={first.dtype}, "
            f"contrast_limits={[round(float(v), 3) for v in layer.contrast_limits]}, "
            f"colormap={layer.colormap.name}, blending={layer.blending}, "
            f"scale={[float(v) for v in layer.scale]}"
        )
        ok &= layer.multiscale and levels == per_level and first.dtype == group["0"].dtype
    if render:
        import time

        from qtpy.QtWidgets import QApplication

        viewer.reset_view()
        deadline = time.monotonic() + 5  # let napari slice and upload the visible level
        while time.monotonic() < deadline:
            QApplication.processEvents()
            time.sleep(0.05)
        screenshot = viewer.screenshot(canvas_only=True, flash=False)
        rgb = screenshot[..., :3].reshape(-1, 3).astype(float)
        print(
            f"  rendered canvas {screenshot.shape}, mean RGB "
            f"{[round(float(v), 1) for v in rgb.mean(axis=0)]}, std {float(rgb.std()):.1f}"
        )
        if save is not None:
            from PIL import Image

            save.mkdir(parents=True, exist_ok=True)
            Image.fromarray(screenshot).save(save / f"{path.name}.png")
        viewer.close()
    print(f"  {'OK' if ok else 'MISMATCH'}: napari read {len(layers)} layer(s)")
    return bool(ok)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("paths", nargs="*", type=Path, help="OME-Zarr images to open")
    parser.add_argument("--make", type=Path, help="write sample outputs into this directory")
    parser.add_argument("--render", action="store_true", help="also render (needs OpenGL)")
    parser.add_argument("--save", type=Path, help="with --render: write the screenshots here")
    args = parser.parse_args(argv)
    if args.make:
        for path in make_samples(args.make):
            print(path)
        return 0
    if not args.paths:
        parser.error("give OME-Zarr paths, or --make DIR")
    import napari
    import napari_ome_zarr

    versions = {"napari": napari.__version__, "napari-ome-zarr": napari_ome_zarr.__version__}
    print(json.dumps(versions))
    results = [check(p, args.render, args.save) for p in args.paths]
    return 0 if all(results) else 1


if __name__ == "__main__":
    sys.exit(main())
