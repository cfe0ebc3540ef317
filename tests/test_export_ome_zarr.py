"""Tests of the OME-Zarr export (gigasid.io.ome_zarr): OME-NGFF 0.5 multiscales, out-of-core."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tifffile
import zarr

from gigasid.io.export import (
    ExportError,
    ExportOptions,
    export_all,
    export_ome_zarr,
    export_tiff,
    pyramid_levels_tiff,
)
from gigasid.io.ome_zarr import ome_zarr_layout

PROVENANCE = {"gigasid_version": "0.1.0", "seed": 77, "config": {"app": "sample"}}


def gradient(height: int, width: int, channels: int, dtype: str, top: float) -> np.ndarray:
    """Deterministic picture with structure at every scale, ``0..top`` in ``dtype``."""
    rng = np.random.default_rng(3)
    yy, xx = np.mgrid[0:height, 0:width]
    planes = [
        (xx / width + ((yy // 5 + xx // 7) % 2) * 0.3 + c * 0.1) % 1.0 for c in range(channels)
    ]
    img = np.stack(planes, -1) * 0.9 + rng.random((height, width, channels)) * 0.1
    img = img / img.max() * top
    if np.dtype(dtype).kind == "f":
        return img.astype(dtype)
    return np.round(img).astype(dtype)


def block_mean(level: np.ndarray) -> np.ndarray:
    """Reference 2x2 mean of a ``(C, H, W)`` level: floor halving, integers rounded half up."""
    c, h, w = level.shape
    x = level[:, : h // 2 * 2, : w // 2 * 2].astype(np.float64)
    mean = (x[:, 0::2, 0::2] + x[:, 1::2, 0::2] + x[:, 0::2, 1::2] + x[:, 1::2, 1::2]) / 4
    if level.dtype.kind == "f":
        return mean.astype(level.dtype)
    return np.floor(mean + 0.5).astype(level.dtype)


class RecordingArray:
    """Array-like over a numpy array with a chunk grid; records every slice read."""

    def __init__(self, data: np.ndarray, chunks: tuple[int, int, int], fail_after: int = -1):
        self._data = data
        self.shape, self.dtype, self.chunks = data.shape, data.dtype, chunks
        self.reads: list[tuple[slice, slice]] = []
        self.fail_after = fail_after

    def __getitem__(self, key):  # noqa: ANN001 - numpy-style key
        if len(self.reads) == self.fail_after:
            raise OSError("simulated unreadable chunk")
        ys, xs = key
        self.reads.append((ys, xs))
        return self._data[ys, xs].copy()


def no_temp_left(directory: Path) -> bool:
    return not [p for p in directory.rglob("*") if p.name.startswith(".gigasid-")]


def check_pyramid(path: Path, picture: np.ndarray, tile_size: int) -> list[np.ndarray]:
    """Assert the NGFF structure and the pixels of every level; return the levels."""
    group = zarr.open_group(str(path), mode="r")
    assert group.metadata.zarr_format == 3
    ome = group.attrs["ome"]
    assert ome["version"] == "0.5"
    (multiscale,) = ome["multiscales"]
    assert [a["name"] for a in multiscale["axes"]] == ["c", "y", "x"]
    assert [a["type"] for a in multiscale["axes"]] == ["channel", "space", "space"]
    expected = pyramid_levels_tiff(picture.shape[0], picture.shape[1], tile_size)
    assert len(multiscale["datasets"]) == len(expected) > 1
    levels = []
    for k, (dataset, (h, w)) in enumerate(zip(multiscale["datasets"], expected, strict=True)):
        assert dataset["path"] == str(k)
        assert dataset["coordinateTransformations"] == [
            {"type": "scale", "scale": [1.0, 2.0**k, 2.0**k]}
        ]
        arr = group[dataset["path"]]
        assert arr.shape == (picture.shape[2], h, w) and arr.dtype == picture.dtype
        assert arr.chunks == (1, min(512, h), min(512, w))
        assert tuple(arr.metadata.dimension_names) == ("c", "y", "x")
        levels.append(arr[...])
    np.testing.assert_array_equal(levels[0], picture.transpose(2, 0, 1))
    for k in range(1, len(levels)):
        np.testing.assert_array_equal(levels[k], block_mean(levels[k - 1]))
    return levels


# ------------------------------------------------------------------------------------------------
# structure and pixels


def test_uint8_rgb_pyramid_matches_the_tiff_levels(tmp_path: Path) -> None:
    picture = gradient(1100, 1300, 3, "uint8", 255)
    source = zarr.create_array(
        store=str(tmp_path / "source.zarr"),
        shape=picture.shape,
        chunks=(256, 256, 3),
        dtype="uint8",
        zarr_format=3,
    )
    source[...] = picture
    out = export_ome_zarr(source, tmp_path / "image.ome.zarr", ExportOptions(), PROVENANCE)
    assert out == tmp_path / "image.ome.zarr"
    levels = check_pyramid(out, picture, 256)
    # the same level sizes as libvips' pyramidal TIFF
    tif = export_tiff(picture, tmp_path / "image.tif", ExportOptions(tiff_compression="deflate"))
    with tifffile.TiffFile(tif) as t:
        tiff_shapes = [lvl.shape[:2] for lvl in t.series[0].levels]
    assert [lvl.shape[1:] for lvl in levels] == tiff_shapes
    group = zarr.open_group(str(out), mode="r")
    assert group.attrs["gigasid_provenance"] == PROVENANCE
    omero = group.attrs["ome"]["omero"]
    assert [c["label"] for c in omero["channels"]] == ["red", "green", "blue"]
    assert [c["color"] for c in omero["channels"]] == ["FF0000", "00FF00", "0000FF"]
    assert omero["rdefs"]["model"] == "color"
    # colour channels share the type's full range: the display keeps their balance
    for c in omero["channels"]:
        assert c["window"] == {"min": 0, "max": 255, "start": 0, "end": 255}
    assert no_temp_left(tmp_path)


def test_uint16_single_channel_keeps_its_type_and_data_range(tmp_path: Path) -> None:
    picture = gradient(600, 700, 1, "uint16", 4000)  # 12-bit data in 16-bit pixels
    picture[0, 0, 0] = 95
    out = export_ome_zarr(picture, tmp_path / "grey.ome.zarr", ExportOptions(tile_size=128))
    check_pyramid(out, picture, 128)
    omero = zarr.open_group(str(out), mode="r").attrs["ome"]["omero"]
    (channel,) = omero["channels"]
    assert channel["label"] == "grey" and omero["rdefs"]["model"] == "greyscale"
    window = channel["window"]
    assert (window["min"], window["max"]) == (0, 65535)
    assert (window["start"], window["end"]) == (int(picture.min()), int(picture.max()))
    assert window["end"] <= 4000 and window["start"] == 0


def test_float32_rgba_averages_in_float_and_hides_alpha(tmp_path: Path) -> None:
    picture = gradient(300, 520, 4, "float32", 1.0)
    picture[5, 7, 1] = np.nan  # non-finite pixels stay out of the display window
    out = export_ome_zarr(picture, tmp_path / "rgba.ome.zarr", ExportOptions(tile_size=64))
    group = zarr.open_group(str(out), mode="r")
    assert group["0"].dtype == np.float32
    np.testing.assert_array_equal(group["0"][...], picture.transpose(2, 0, 1))
    level1 = group["1"][...]
    np.testing.assert_allclose(level1, block_mean(picture.transpose(2, 0, 1)), rtol=1e-6)
    channels = group.attrs["ome"]["omero"]["channels"]
    assert [c["label"] for c in channels] == ["red", "green", "blue", "alpha"]
    assert [c["active"] for c in channels] == [True, True, True, False]
    finite = picture[..., :3][np.isfinite(picture[..., :3])]
    assert channels[0]["window"]["start"] == pytest.approx(float(finite.min()))
    assert channels[0]["window"]["end"] == pytest.approx(float(finite.max()))


def test_refuses_other_shapes_and_types_before_reading(tmp_path: Path) -> None:
    for bad in (np.zeros((8, 8, 2), np.uint8), np.zeros((8, 8), np.uint8)):
        with pytest.raises(ExportError, match="C = 1, 3 or 4"):
            export_ome_zarr(bad, tmp_path / "x.ome.zarr")
    with pytest.raises(ExportError, match="uint8, uint16, float32"):
        export_ome_zarr(np.zeros((8, 8, 3), np.int32), tmp_path / "x.ome.zarr")
    assert ome_zarr_layout(np.zeros((5, 6, 4), np.uint16))[:3] == (5, 6, 4)
    assert not list(tmp_path.iterdir())


# ------------------------------------------------------------------------------------------------
# out-of-core, atomic


def test_source_is_read_in_bounded_chunk_aligned_blocks(tmp_path: Path) -> None:
    picture = gradient(700, 900, 3, "uint8", 255)
    src = RecordingArray(picture, chunks=(100, 100, 3))
    budget = 2 * 128 * 128 * 3  # two 128 x 128 chunks of RGB
    out = export_ome_zarr(
        src,
        tmp_path / "image.ome.zarr",
        ExportOptions(tile_size=64),
        chunk=128,
        block_budget=budget,
    )
    for ys, xs in src.reads:
        assert (ys.stop - ys.start) * (xs.stop - xs.start) * 3 <= budget
        # whole chunks of the output: no chunk is written twice
        assert ys.start % 128 == 0 and xs.start % 128 == 0
    covered = sum((ys.stop - ys.start) * (xs.stop - xs.start) for ys, xs in src.reads)
    assert covered == 700 * 900  # every pixel read exactly once
    group = zarr.open_group(str(out), mode="r")
    np.testing.assert_array_equal(group["0"][...], picture.transpose(2, 0, 1))
    np.testing.assert_array_equal(group["1"][...], block_mean(picture.transpose(2, 0, 1)))


def test_failed_export_leaves_the_previous_output(tmp_path: Path) -> None:
    picture = gradient(300, 400, 3, "uint8", 255)
    out = export_ome_zarr(picture, tmp_path / "image.ome.zarr", ExportOptions(tile_size=64))
    before = sorted(p.relative_to(out) for p in out.rglob("*"))
    failing = RecordingArray(picture[::-1].copy(), chunks=(64, 64, 3), fail_after=1)
    with pytest.raises(OSError, match="simulated"):
        export_ome_zarr(failing, out, ExportOptions(tile_size=64), chunk=64, block_budget=1)
    assert sorted(p.relative_to(out) for p in out.rglob("*")) == before
    np.testing.assert_array_equal(
        zarr.open_group(str(out), mode="r")["0"][...], picture.transpose(2, 0, 1)
    )
    assert no_temp_left(tmp_path)


def test_refuses_to_write_over_its_own_source(tmp_path: Path) -> None:
    out = tmp_path / "image.ome.zarr"
    inside = zarr.create_array(
        store=str(out / "src"),
        shape=(64, 64, 3),
        chunks=(64, 64, 3),
        dtype="uint8",
        zarr_format=3,
    )
    with pytest.raises(ExportError, match="stored inside it"):
        export_ome_zarr(inside, out)
    assert sorted(p.name for p in out.iterdir()) == ["src"]


# ------------------------------------------------------------------------------------------------
# export_all


def test_export_all_writes_ome_zarr_of_any_supported_type(tmp_path: Path) -> None:
    grey = gradient(200, 300, 1, "uint16", 60000)
    written = export_all(
        grey, tmp_path / "a", ExportOptions(tile_size=64), PROVENANCE, formats=["ome-zarr"]
    )
    assert set(written) == {"provenance", "ome-zarr"}
    assert written["ome-zarr"] == tmp_path / "a" / "image.ome.zarr"
    check_pyramid(written["ome-zarr"], grey, 64)
    # the TIFF keeps the type and the channel too
    written = export_all(grey, tmp_path / "b", formats=["ome-zarr", "tiff"])
    import tifffile

    with tifffile.TiffFile(written["tiff"]) as tf:
        np.testing.assert_array_equal(tf.pages[0].asarray(), grey[:, :, 0])
    # an unsupported layout is refused before anything is written
    with pytest.raises(ExportError, match="C = 1, 3 or 4"):
        export_all(np.zeros((20, 20, 2), np.uint8), tmp_path / "d", formats=["ome-zarr", "tiff"])
    assert not (tmp_path / "d").exists()
    rgb = gradient(200, 300, 3, "uint8", 255)
    written = export_all(rgb, tmp_path / "c", formats=["tiff", "ome-zarr"], title="my title")
    assert set(written) == {"tiff", "ome-zarr"}
    name = zarr.open_group(str(written["ome-zarr"]), mode="r").attrs["ome"]["multiscales"][0]
    assert name["name"] == "my title"


# ------------------------------------------------------------------------------------------------
# well-kept readers


@pytest.mark.parametrize(("channels", "dtype"), [(3, "uint8"), (1, "uint16")])
def test_ome_zarr_models_validates_the_output(tmp_path: Path, channels, dtype) -> None:
    models = pytest.importorskip("ome_zarr_models", reason="pip install ome-zarr-models")
    from ome_zarr_models.v05.image import Image

    picture = gradient(520, 610, channels, dtype, 255 if dtype == "uint8" else 4095)
    out = export_ome_zarr(picture, tmp_path / "image.ome.zarr", ExportOptions(tile_size=128))
    model = models.open_ome_zarr(zarr.open_group(str(out), mode="r"))
    assert isinstance(model, Image) and model.ome_zarr_version == "0.5"
    (multiscale,) = model.ome_attributes.multiscales
    assert [d.path for d in multiscale.datasets] == ["0", "1", "2", "3"]


@pytest.mark.parametrize(("channels", "dtype"), [(3, "uint8"), (1, "uint16")])
def test_ome_zarr_py_reads_the_pyramid(tmp_path: Path, channels, dtype) -> None:
    pytest.importorskip("ome_zarr", reason="pip install ome-zarr")
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Reader

    picture = gradient(400, 300, channels, dtype, 255 if dtype == "uint8" else 4095)
    out = export_ome_zarr(picture, tmp_path / "image.ome.zarr", ExportOptions(tile_size=64))
    location = parse_url(str(out))
    assert location.version == "0.5"
    node = next(iter(Reader(location)()))
    shapes = [tuple(d.shape) for d in node.data]
    assert shapes == [(channels, h, w) for h, w in pyramid_levels_tiff(400, 300, 64)]
    np.testing.assert_array_equal(np.asarray(node.data[0]), picture.transpose(2, 0, 1))
    np.testing.assert_array_equal(np.asarray(node.data[1]), block_mean(picture.transpose(2, 0, 1)))
    meta = node.metadata
    assert [a["name"] for a in meta["axes"]] == ["c", "y", "x"]
    if channels == 3:
        assert meta["channel_names"] == ["red", "green", "blue"]
    else:
        assert meta["contrast_limits"] == [[int(picture.min()), int(picture.max())]]
    json.dumps(meta["coordinateTransformations"])  # plain JSON, one per level
    assert len(meta["coordinateTransformations"]) == len(shapes)
