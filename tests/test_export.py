"""Tests of the out-of-core export layer (gigasid.io.export)."""

from __future__ import annotations

import json
import logging
import math
import os
import subprocess
import sys
import xml.etree.ElementTree as ET
import zipfile
from pathlib import Path

import numpy as np
import pytest
import pyvips
import tifffile
import zarr
from PIL import Image

from gigasid.errors import GigasidError
from gigasid.io.export import (
    JPEG_MAX_SIDE,
    PNG_MAX_PIXELS,
    ExportError,
    ExportOptions,
    VipsBridge,
    dzi_level_count,
    export_all,
    export_dzi,
    export_jpeg,
    export_png,
    export_preview,
    export_tiff,
    export_zarr,
    image_band_rows,
    provenance_description,
    pyramid_levels_tiff,
    write_image_zarr,
)

DZ_NS = "{http://schemas.microsoft.com/deepzoom/2008}"

PROVENANCE = {
    "gigasid_version": "0.1.0",
    "seed": 1234,
    # a nested "shape" key: tifffile would take a description containing `"shape":` for its own
    # metadata format if it were written verbatim
    "config": {"app": "retarget", "output": {"shape": [777, 1203]}, "note": "héllo </x>"},
    "inputs": {"reference.png": "sha256:0123abcd"},
}


def make_rgb(height: int, width: int, seed: int = 0) -> np.ndarray:
    """Deterministic test picture: gradients, an 8-px checkerboard and noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    checker = (((yy // 8) + (xx // 8)) % 2) * 60
    r = 255 * xx / max(1, width - 1) * 0.7 + checker
    g = 255 * yy / max(1, height - 1) * 0.7 + checker
    b = 128 + 60 * np.sin(xx / 23.0) * np.cos(yy / 17.0)
    img = np.stack([r, g, b], axis=-1) + rng.normal(0, 8, size=(height, width, 3))
    return np.clip(img, 0, 255).astype(np.uint8)


def to_zarr(array: np.ndarray, path: Path, chunk: int = 256) -> zarr.Array:
    z = zarr.create_array(
        store=str(path),
        shape=array.shape,
        chunks=(chunk, chunk, 3),
        dtype="uint8",
        zarr_format=3,
    )
    z[...] = array
    return z


class RecordingArray:
    """Array-like over a numpy array with a chunk grid; records every slice read."""

    def __init__(self, data: np.ndarray, chunks: tuple[int, int, int]) -> None:
        self._data = data
        self.shape = data.shape
        self.dtype = data.dtype
        self.chunks = chunks
        self.reads: list[tuple[slice, slice]] = []

    def __getitem__(self, key):  # noqa: ANN001 - numpy-style key
        ys, xs = key
        self.reads.append((ys, xs))
        return self._data[ys, xs].copy()


class HugeArray:
    """Claims a huge shape; reading any pixel is a test failure (limits must be checked first)."""

    def __init__(self, height: int, width: int) -> None:
        self.shape = (height, width, 3)
        self.dtype = np.dtype(np.uint8)
        self.chunks = (512, 512, 3)

    def __getitem__(self, key):  # noqa: ANN001
        raise AssertionError("pixels of a refused image must not be read")


class FailingArray(RecordingArray):
    """Raises after a few reads, like a corrupt chunk in the middle of the image."""

    def __getitem__(self, key):  # noqa: ANN001
        if len(self.reads) >= 2:
            raise OSError("simulated unreadable chunk")
        return super().__getitem__(key)


@pytest.fixture(scope="module")
def picture() -> np.ndarray:
    return make_rgb(777, 1203)


@pytest.fixture
def zarr_picture(tmp_path: Path, picture: np.ndarray) -> zarr.Array:
    return to_zarr(picture, tmp_path / "source.zarr")


def no_temp_left(directory: Path) -> bool:
    return not [
        p
        for p in directory.rglob("*")
        if p.name.startswith(".gigasid-") or p.name.endswith(".partial")
    ]


# ------------------------------------------------------------------------------------------------
# options


@pytest.mark.parametrize(
    ("field", "value", "expected"),
    [
        ("tiff_compression", "zstd", "'jpeg', 'deflate', 'webp', 'lzw', 'none'"),
        ("dzi_tile_format", "avif", "'jpg', 'png', 'webp'"),
        ("dzi_container", "tar", "'fs', 'zip'"),
        ("tile_size", 100, "multiple of 16"),
        ("quality", 0, r"\[1, 100\]"),
        ("dzi_overlap", -1, r"\[0, 64\]"),
        ("preview_long_side", 70000, "65500"),
    ],
)
def test_options_reject_bad_values_with_allowed_values(field, value, expected) -> None:
    with pytest.raises(ValueError, match=expected):
        ExportOptions(**{field: value})


def test_options_defaults_and_dzi_tile_size() -> None:
    opts = ExportOptions()
    assert (opts.tile_size, opts.tiff_compression, opts.quality) == (256, "jpeg", 90)
    assert opts.effective_dzi_tile_size == 254  # 254 + 2 x 1 overlap = 256-px tile files
    assert ExportOptions(dzi_tile_size=512).effective_dzi_tile_size == 512


def test_unsupported_layouts_are_refused() -> None:
    for shape in ((10, 10), (10, 10, 2), (10, 10, 5)):
        with pytest.raises(ExportError, match=r"C = 1, 3 or 4"):
            export_preview(np.zeros(shape, np.uint8), "unused.jpg")
    for dtype in (np.float64, np.int16):
        with pytest.raises(ExportError, match="uint8, uint16 or float32"):
            export_preview(np.zeros((10, 10, 3), dtype), "unused.jpg")


# ------------------------------------------------------------------------------------------------
# bridge


def test_bridge_streams_chunk_rows_from_a_chunked_source(tmp_path: Path, picture) -> None:
    src = RecordingArray(picture, chunks=(128, 128, 3))
    with VipsBridge(src, tmp_path) as bridge:
        assert not bridge.zero_copy
        got = np.ndarray(buffer=bridge.image.write_to_memory(), dtype=np.uint8, shape=picture.shape)
        tmp_files = list(tmp_path.rglob("pixels.raw"))
        assert len(tmp_files) == 1 and tmp_files[0].parent.parent == tmp_path
    np.testing.assert_array_equal(got, picture)
    # one chunk-row per read, never the whole image
    assert len(src.reads) == math.ceil(777 / 128)
    assert all(ys.stop - ys.start <= 128 for ys, _ in src.reads)
    assert no_temp_left(tmp_path) and not list(tmp_path.iterdir())


def test_bridge_respects_its_memory_budget(tmp_path: Path, picture) -> None:
    src = RecordingArray(picture, chunks=(100, 100, 3))
    budget = 3 * 100 * 100 * 3  # three chunks
    with VipsBridge(src, tmp_path, block_budget=budget) as bridge:
        got = np.ndarray(buffer=bridge.image.write_to_memory(), dtype=np.uint8, shape=picture.shape)
    np.testing.assert_array_equal(got, picture)
    for ys, xs in src.reads:
        assert (ys.stop - ys.start) * (xs.stop - xs.start) * 3 <= budget
    covered = sum((ys.stop - ys.start) * (xs.stop - xs.start) for ys, xs in src.reads)
    assert covered == 777 * 1203  # every pixel read exactly once


@pytest.mark.parametrize("method", ["raw", "tiff"])
def test_both_bridges_give_identical_pixels(tmp_path: Path, zarr_picture, picture, method):
    out = tmp_path / method / "image.tif"
    with VipsBridge(zarr_picture, tmp_path / method, method=method) as bridge:
        export_tiff(zarr_picture, out, ExportOptions(tiff_compression="deflate"), bridge=bridge)
    np.testing.assert_array_equal(tifffile.imread(out), picture)
    assert no_temp_left(tmp_path)


def test_contiguous_numpy_input_is_read_in_place(tmp_path: Path, picture) -> None:
    with VipsBridge(picture, tmp_path) as bridge:
        assert bridge.zero_copy
        assert not list(tmp_path.iterdir())  # no temporary copy at all


def test_bridge_is_removed_when_reading_fails(tmp_path: Path, picture) -> None:
    src = FailingArray(picture, chunks=(128, 128, 3))
    out = tmp_path / "out"
    with pytest.raises(OSError, match="simulated"):
        export_all(src, out, ExportOptions(), PROVENANCE)
    assert no_temp_left(out)
    assert not (out / "image.tif").exists() and not (out / "image.dzi").exists()


# ------------------------------------------------------------------------------------------------
# the image array in the layout the bridge maps in place


def bridge_pixels(bridge: VipsBridge, shape: tuple[int, ...]) -> np.ndarray:
    return np.ndarray(buffer=bridge.image.write_to_memory(), dtype=np.uint8, shape=shape)


def test_image_band_rows() -> None:
    assert image_band_rows(16384, 16384, 512) == 512  # 32 MiB hold 682 rows: one tile row
    assert image_band_rows(4096, 65536, 512) == 128  # too wide for a tile row: a divisor of it
    assert image_band_rows(5000, 1024, 512, band_bytes=1024 * 3 * 1500) == 1024  # 2 tile rows
    assert image_band_rows(100, 1000, 512) == 100  # never more than the image
    assert image_band_rows(10, 10**8, 512) == 1  # at least one row


def write_bands(picture: np.ndarray, path: Path, tile: int, rows: int, reads=None) -> zarr.Array:
    height, width = picture.shape[:2]

    def read(y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        if reads is not None:
            reads.append((y0, y1, x0, x1))
        return picture[y0:y1, x0:x1]

    write_image_zarr(path, height, width, read, tile=tile, band_bytes=rows * width * 3)
    return zarr.open_array(str(path), mode="r")


def test_write_image_zarr_is_plain_zarr_in_raw_bands(tmp_path: Path, picture) -> None:
    reads: list[tuple[int, int, int, int]] = []
    z = write_bands(picture, tmp_path / "image.zarr", tile=128, rows=300, reads=reads)
    assert z.chunks == (256, 1203, 3)  # the largest multiple of the tile within the budget
    assert [type(c).__name__ for c in z.metadata.codecs] == ["BytesCodec"]  # no compression
    np.testing.assert_array_equal(z[:], picture)
    # each region read lies in one tile of the source's grid; every pixel is read once
    for y0, y1, x0, x1 in reads:
        assert y0 // 128 == (y1 - 1) // 128 and x0 // 128 == (x1 - 1) // 128
    assert sum((y1 - y0) * (x1 - x0) for y0, y1, x0, x1 in reads) == 777 * 1203
    # bands thinner than a tile row: still one tile per read, still exact
    reads.clear()
    z = write_bands(picture, tmp_path / "thin.zarr", tile=128, rows=50, reads=reads)
    assert z.chunks == (32, 1203, 3)
    np.testing.assert_array_equal(z[:], picture)
    assert all(y0 // 128 == (y1 - 1) // 128 for y0, y1, _, _ in reads)


def test_band_array_is_mapped_in_place(tmp_path: Path, picture) -> None:
    z = write_bands(picture, tmp_path / "image.zarr", tile=128, rows=300)
    work = tmp_path / "work"
    with VipsBridge(z, work) as bridge:
        assert bridge.zero_copy
        assert not work.exists() or not list(work.iterdir())  # no temporary copy
        got = bridge_pixels(bridge, picture.shape)
    np.testing.assert_array_equal(got, picture)  # the padded last band is cropped away
    out = tmp_path / "out"
    export_all(z, out, ExportOptions(tiff_compression="deflate", dzi_tile_format="png"))
    np.testing.assert_array_equal(tifffile.imread(out / "image.tif"), picture)
    assert no_temp_left(tmp_path)


def test_band_array_with_too_many_bands_is_copied(tmp_path: Path, picture, monkeypatch) -> None:
    from gigasid.io import vips_bridge

    z = write_bands(picture, tmp_path / "image.zarr", tile=128, rows=100)  # 13 bands of 64
    monkeypatch.setattr(vips_bridge, "_MAX_MAPPED_BANDS", 4)
    work = tmp_path / "work"
    with VipsBridge(z, work) as bridge:
        assert not bridge.zero_copy
        assert len(list(work.rglob("pixels.raw"))) == 1
        got = bridge_pixels(bridge, picture.shape)
    np.testing.assert_array_equal(got, picture)
    assert no_temp_left(tmp_path)


def test_other_arrays_are_decoded_and_copied(tmp_path: Path, zarr_picture, picture) -> None:
    # a band array with a missing chunk file (e.g. written with write_empty_chunks=False)
    z = write_bands(picture, tmp_path / "image.zarr", tile=128, rows=300)
    (tmp_path / "image.zarr" / "c" / "1" / "0" / "0").unlink()
    expected = z[:]
    assert not expected[256:512].any() and expected[:256].any()
    for src, want in ((z, expected), (zarr_picture, picture)):  # and the tiles of older runs
        with VipsBridge(src, tmp_path / "work") as bridge:
            assert not bridge.zero_copy
            got = bridge_pixels(bridge, picture.shape)
        np.testing.assert_array_equal(got, want)
    assert no_temp_left(tmp_path)


def test_export_zarr_onto_its_own_source_keeps_it(tmp_path: Path, picture) -> None:
    # `gigasid export RUN --format zarr` writes into the run's out/, where the image lives
    z = write_bands(picture, tmp_path / "image.zarr", tile=128, rows=300)
    written = export_all(
        z, tmp_path, ExportOptions(tiff_compression="deflate"), formats=["zarr", "tiff"]
    )
    assert written["zarr"] == tmp_path / "image.zarr"
    again = zarr.open_array(str(tmp_path / "image.zarr"), mode="r")
    assert [type(c).__name__ for c in again.metadata.codecs] == ["BytesCodec"]
    np.testing.assert_array_equal(again[:], picture)
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "image.tif"), picture)


# ------------------------------------------------------------------------------------------------
# pyramidal BigTIFF


def test_tiff_pyramid_lossless_levels_and_provenance(
    tmp_path: Path, zarr_picture, picture, caplog
) -> None:
    out = tmp_path / "image.tif"
    opts = ExportOptions(tiff_compression="deflate", tile_size=256)
    with caplog.at_level(logging.WARNING, logger="tifffile"):
        export_tiff(zarr_picture, out, opts, PROVENANCE)
        with tifffile.TiffFile(out) as tif:
            assert tif.is_bigtiff
            series = tif.series[0]
            shapes = [lvl.shape for lvl in series.levels]
            level0 = series.levels[0].asarray()
            level1 = series.levels[1].asarray()
            page = tif.pages[0]
            description = page.description
            assert page.is_tiled and (page.tilewidth, page.tilelength) == (256, 256)
            assert page.compression == tifffile.COMPRESSION.ADOBE_DEFLATE
            assert len(tif.pages) == 1  # the reduced levels are SubIFDs of the first page
    assert not [r for r in caplog.records if r.name.startswith("tifffile")]

    # each level halves the previous one (libvips rounds down) until it fits in one tile
    expected = [(777, 1203), (388, 601), (194, 300), (97, 150)]
    assert pyramid_levels_tiff(777, 1203, 256) == expected
    assert shapes == [(h, w, 3) for h, w in expected]
    np.testing.assert_array_equal(level0, picture)
    # level 1 is the 2x2 mean of level 0
    ref = picture[:776, :1202].reshape(388, 2, 601, 2, 3).astype(float).mean(axis=(1, 3))
    assert np.abs(level1.astype(float) - ref).max() <= 1.0

    assert json.loads(description) == json.loads(json.dumps(PROVENANCE))
    assert '"shape":' not in description

    vimg = pyvips.Image.new_from_file(str(out))
    assert (vimg.width, vimg.height, vimg.bands) == (1203, 777, 3)
    sub = pyvips.Image.new_from_file(str(out), subifd=0)  # first reduced level
    assert (sub.width, sub.height) == (601, 388)
    assert no_temp_left(tmp_path)


def test_tiff_jpeg_default(tmp_path: Path, zarr_picture, picture) -> None:
    out = export_tiff(zarr_picture, tmp_path / "image.tif", provenance={"seed": 1})
    with tifffile.TiffFile(out) as tif:
        assert tif.pages[0].compression == tifffile.COMPRESSION.JPEG
        assert [lvl.shape[:2] for lvl in tif.series[0].levels] == pyramid_levels_tiff(
            777, 1203, 256
        )
    vimg = pyvips.Image.new_from_file(str(out))
    got = np.ndarray(buffer=vimg.write_to_memory(), dtype=np.uint8, shape=picture.shape)
    err = np.abs(got.astype(float) - picture.astype(float)).mean()
    assert err < 4.0  # JPEG Q90


@pytest.mark.parametrize("compression", ["lzw", "none", "webp"])
def test_tiff_other_compressions(tmp_path: Path, compression: str) -> None:
    pic = make_rgb(300, 420, seed=3)
    out = export_tiff(
        pic, tmp_path / "image.tif", ExportOptions(tiff_compression=compression, tile_size=128)
    )
    vimg = pyvips.Image.new_from_file(str(out))
    got = np.ndarray(buffer=vimg.write_to_memory(), dtype=np.uint8, shape=pic.shape)
    if compression == "webp":
        assert np.abs(got.astype(float) - pic.astype(float)).mean() < 10.0  # lossy, 4:2:0
    else:
        np.testing.assert_array_equal(got, pic)
    with tifffile.TiffFile(out) as tif:
        assert [lvl.shape[:2] for lvl in tif.series[0].levels] == pyramid_levels_tiff(300, 420, 128)


def test_provenance_description_is_plain_json() -> None:
    text = provenance_description({"shape": [1, 2], "a": {"shape": 3}, "b": 'x"shape":'})
    assert '"shape":' not in text
    assert json.loads(text) == {"shape": [1, 2], "a": {"shape": 3}, "b": 'x"shape":'}


# ------------------------------------------------------------------------------------------------
# DeepZoom


def read_descriptor(path: Path) -> dict:
    root = ET.parse(path).getroot()
    assert root.tag == f"{DZ_NS}Image"
    size = root.find(f"{DZ_NS}Size")
    return {
        "TileSize": int(root.attrib["TileSize"]),
        "Overlap": int(root.attrib["Overlap"]),
        "Format": root.attrib["Format"],
        "Width": int(size.attrib["Width"]),
        "Height": int(size.attrib["Height"]),
    }


def expected_dzi_tiles(width: int, height: int, tile: int, overlap: int) -> dict:
    """{level: {(col, row): (w, h)}} of a DeepZoom pyramid with rounding-up halving."""
    top = math.ceil(math.log2(max(width, height)))
    tiles = {}
    for level in range(top + 1):
        scale = 2 ** (top - level)
        w, h = math.ceil(width / scale), math.ceil(height / scale)
        level_tiles = {}
        for col in range(math.ceil(w / tile)):
            for row in range(math.ceil(h / tile)):
                x0, y0 = max(0, col * tile - overlap), max(0, row * tile - overlap)
                x1 = min(w, (col + 1) * tile + overlap)
                y1 = min(h, (row + 1) * tile + overlap)
                level_tiles[(col, row)] = (x1 - x0, y1 - y0)
        tiles[level] = level_tiles
    return tiles


def test_dzi_structure_and_tiles(tmp_path: Path, zarr_picture) -> None:
    opts = ExportOptions()  # jpg, TileSize 254, overlap 1
    dzi = export_dzi(zarr_picture, tmp_path / "image", opts, PROVENANCE)
    assert dzi == tmp_path / "image.dzi"
    desc = read_descriptor(dzi)
    assert desc == {"TileSize": 254, "Overlap": 1, "Format": "jpg", "Width": 1203, "Height": 777}

    files = tmp_path / "image_files"
    levels = sorted(int(p.name) for p in files.iterdir() if p.name.isdigit())
    assert len(levels) == math.ceil(math.log2(1203)) + 1 == dzi_level_count(777, 1203) == 12
    assert levels == list(range(12))
    expected = expected_dzi_tiles(1203, 777, 254, 1)
    for level in levels:
        found = {p.stem: p for p in (files / str(level)).iterdir()}
        assert set(found) == {f"{c}_{r}" for c, r in expected[level]}, level
        for (col, row), size in expected[level].items():
            with Image.open(found[f"{col}_{row}"]) as im:
                im.load()
                assert im.format == "JPEG" and im.mode == "RGB"
                assert im.size == size, (level, col, row)

    assert json.loads((tmp_path / "image.provenance.json").read_text()) == json.loads(
        json.dumps(PROVENANCE)
    )
    assert no_temp_left(tmp_path)


def test_dzi_png_tiles_are_exact_crops_with_overlap(tmp_path: Path, picture) -> None:
    pic = np.ascontiguousarray(picture[:300, :500])
    opts = ExportOptions(dzi_tile_format="png", tile_size=128, dzi_overlap=2)
    dzi = export_dzi(pic, tmp_path / "image.dzi", opts)
    desc = read_descriptor(dzi)
    assert (desc["TileSize"], desc["Overlap"], desc["Format"]) == (124, 2, "png")
    top = dzi_level_count(300, 500) - 1
    for col, row in [(0, 0), (1, 1), (3, 2)]:
        x0, y0 = max(0, col * 124 - 2), max(0, row * 124 - 2)
        x1, y1 = min(500, (col + 1) * 124 + 2), min(300, (row + 1) * 124 + 2)
        tile = np.asarray(Image.open(tmp_path / "image_files" / str(top) / f"{col}_{row}.png"))
        np.testing.assert_array_equal(tile, pic[y0:y1, x0:x1])


def test_dzi_zip_container(tmp_path: Path, zarr_picture) -> None:
    opts = ExportOptions(dzi_container="zip", dzi_tile_format="webp")
    out = export_dzi(zarr_picture, tmp_path / "image.dzi", opts, {"seed": 5})
    assert out == tmp_path / "image.zip"
    assert not (tmp_path / "image_files").exists() and not (tmp_path / "image.dzi").exists()
    with zipfile.ZipFile(out) as zf:
        assert zf.testzip() is None
        names = zf.namelist()
        dzi_names = [n for n in names if n.endswith(".dzi")]
        assert len(dzi_names) == 1
        desc = ET.fromstring(zf.read(dzi_names[0]))
        assert desc.attrib["Format"] == "webp"
        tiles = [n for n in names if n.endswith(".webp")]
        assert sum(len(v) for v in expected_dzi_tiles(1203, 777, 254, 1).values()) == len(tiles)
        with zf.open(tiles[0]) as fh:
            Image.open(fh).load()
    assert json.loads((tmp_path / "image.provenance.json").read_text()) == {"seed": 5}


def test_dzi_rerun_replaces_previous_pyramid(tmp_path: Path) -> None:
    export_dzi(make_rgb(600, 900), tmp_path / "image.dzi")
    export_dzi(make_rgb(100, 120), tmp_path / "image.dzi")
    desc = read_descriptor(tmp_path / "image.dzi")
    assert (desc["Width"], desc["Height"]) == (120, 100)
    levels = sorted(int(p.name) for p in (tmp_path / "image_files").iterdir() if p.is_dir())
    assert levels == list(range(dzi_level_count(100, 120)))  # no stale level 10 left


# ------------------------------------------------------------------------------------------------
# PNG / JPEG / preview / zarr


def test_jpeg_refuses_oversize_and_names_alternatives(tmp_path: Path) -> None:
    huge = HugeArray(100, JPEG_MAX_SIDE + 1)
    with pytest.raises(ExportError, match="--format tiff") as info:
        export_jpeg(huge, tmp_path / "x.jpg")
    assert "--format dzi" in str(info.value) and isinstance(info.value, GigasidError)
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("shape", [(40_000, 40_000), (10, 2**31)])
def test_png_refuses_oversize_and_names_alternatives(tmp_path: Path, shape) -> None:
    assert shape[0] * shape[1] > PNG_MAX_PIXELS
    with pytest.raises(ExportError, match="--format tiff") as info:
        export_png(HugeArray(*shape), tmp_path / "x.png")
    assert "--format dzi" in str(info.value)
    assert not list(tmp_path.iterdir())


def test_export_all_checks_limits_before_reading(tmp_path: Path) -> None:
    with pytest.raises(ExportError, match="--format dzi"):
        export_all(HugeArray(70_000, 70_000), tmp_path / "out", formats=("tiff", "jpeg"))
    assert not list((tmp_path / "out").glob("*"))


def test_png_and_jpeg_round_trip(tmp_path: Path, zarr_picture, picture) -> None:
    png = export_png(zarr_picture, tmp_path / "image.png")
    np.testing.assert_array_equal(np.asarray(Image.open(png).convert("RGB")), picture)
    jpg = export_jpeg(zarr_picture, tmp_path / "image.jpg", quality=95)
    with Image.open(jpg) as im:
        assert im.format == "JPEG" and im.size == (1203, 777)
        assert np.abs(np.asarray(im, dtype=float) - picture).mean() < 4.0
    assert no_temp_left(tmp_path)


def test_preview_long_side(tmp_path: Path, zarr_picture) -> None:
    out = export_preview(zarr_picture, tmp_path / "preview.jpg", 256)
    with Image.open(out) as im:
        assert im.format == "JPEG" and max(im.size) == 256
        assert abs(im.size[0] / im.size[1] - 1203 / 777) < 0.02
    small = export_preview(make_rgb(40, 60), tmp_path / "small.jpg", 256)
    with Image.open(small) as im:
        assert im.size == (60, 40)  # never upscaled


def test_export_zarr_copy(tmp_path: Path, zarr_picture, picture) -> None:
    out = export_zarr(zarr_picture, tmp_path / "copy.zarr", provenance={"seed": 9})
    z = zarr.open_array(str(out), mode="r")
    assert z.shape == picture.shape and z.chunks == (256, 256, 3)
    np.testing.assert_array_equal(z[...], picture)
    assert z.attrs["gigasid_provenance"] == {"seed": 9}
    assert no_temp_left(tmp_path)


# ------------------------------------------------------------------------------------------------
# export_all


def test_export_all_writes_everything_once(tmp_path: Path, zarr_picture) -> None:
    out = tmp_path / "out"
    written = export_all(zarr_picture, out, ExportOptions(), PROVENANCE)
    assert set(written) == {"provenance", "tiff", "dzi", "preview", "viewer"}
    assert written["tiff"] == out / "image.tif"
    assert written["dzi"] == out / "image.dzi"
    assert written["preview"] == out / "preview.jpg"
    assert written["viewer"] == out / "index.html"
    assert (out / "image_files").is_dir() and (out / "viewer" / "openseadragon.min.js").is_file()
    assert json.loads((out / "provenance.json").read_text())["seed"] == 1234
    assert no_temp_left(out)


def test_export_all_parallel_and_serial_write_the_same_bytes(tmp_path: Path, picture) -> None:
    a = export_all(picture, tmp_path / "a", formats=("tiff", "dzi", "preview"), parallel=True)
    b = export_all(picture, tmp_path / "b", formats=("tiff", "dzi", "preview"), parallel=False)
    assert a["tiff"].read_bytes() == b["tiff"].read_bytes()
    assert a["preview"].read_bytes() == b["preview"].read_bytes()
    tiles_a = sorted((tmp_path / "a" / "image_files").rglob("*.jpg"))
    tiles_b = sorted((tmp_path / "b" / "image_files").rglob("*.jpg"))
    assert [p.relative_to(tmp_path / "a") for p in tiles_a] == [
        p.relative_to(tmp_path / "b") for p in tiles_b
    ]
    assert all(x.read_bytes() == y.read_bytes() for x, y in zip(tiles_a, tiles_b, strict=True))


def test_export_all_validates_formats(tmp_path: Path, picture) -> None:
    with pytest.raises(ValueError, match="allowed values are tiff, dzi"):
        export_all(picture, tmp_path, formats=("tiff", "gif"))
    with pytest.raises(ValueError, match="needs 'dzi'"):
        export_all(picture, tmp_path, formats=("viewer",))
    with pytest.raises(ValueError, match="needs 'dzi'"):
        export_all(picture, tmp_path, ExportOptions(dzi_container="zip"))


def test_limit_heap_fragmentation_in_a_subprocess() -> None:
    # process-wide setting: exercised in a child so that this test process is left alone
    code = "from gigasid.io.export import limit_heap_fragmentation as f; print(f())"
    env = {k: v for k, v in os.environ.items() if k != "MALLOC_MMAP_THRESHOLD_"}
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[1])
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "True"
    env["MALLOC_MMAP_THRESHOLD_"] = "1048576"  # the user's choice wins
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert run.stdout.strip() == "False"
