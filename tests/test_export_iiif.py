"""Tests of the IIIF export (gigasid.io.iiif): Image API 3.0 level-0 static tiles + info.json."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from gigasid.errors import GigasidError
from gigasid.io.export import ExportOptions, export_all, export_iiif
from gigasid.io.iiif import read_iiif_info
from gigasid.io.viewer import ViewerError, write_viewer


def make_rgb(height: int, width: int) -> np.ndarray:
    yy, xx = np.mgrid[0:height, 0:width]
    checker = (((yy // 8) + (xx // 8)) % 2) * 60
    img = np.stack([180 * xx / width + checker, 180 * yy / height + checker, 90 + 0 * xx], -1)
    return np.clip(img, 0, 255).astype(np.uint8)


def client_tile_urls(info: dict) -> list[tuple[str, int, int, int, int, int, int]]:
    """Every tile URL a client derives from ``info.json`` (IIIF Image API 3.0 tiles).

    For each scale factor s and tile (n, m): region x = n*tw*s, y = m*th*s, clipped to the
    image; size ceil(region / s); region ``full`` when it is the whole image, size ``max`` when
    it is the full image size (what OpenSeadragon asks for). Returns (path, x, y, w, h, sw, sh).
    """
    width, height = info["width"], info["height"]
    urls = []
    for tiles in info["tiles"]:
        tw = tiles["width"]
        th = tiles.get("height", tw)
        for s in tiles["scaleFactors"]:
            for y in range(0, height, th * s):
                for x in range(0, width, tw * s):
                    w, h = min(tw * s, width - x), min(th * s, height - y)
                    sw, sh = math.ceil(w / s), math.ceil(h / s)
                    region = "full" if (x, y, w, h) == (0, 0, width, height) else f"{x},{y},{w},{h}"
                    size = "max" if (sw, sh) == (width, height) else f"{sw},{sh}"
                    urls.append((f"{region}/{size}/0/default.jpg", x, y, w, h, sw, sh))
    return urls


@pytest.mark.parametrize(
    ("height", "width"),
    [(777, 1203), (150, 200), (1000, 200), (400, 512), (256, 256), (257, 256)],
)
def test_every_tile_a_client_asks_for_exists(tmp_path: Path, height: int, width: int) -> None:
    picture = make_rgb(height, width)
    info_path = export_iiif(picture, tmp_path / "iiif", ExportOptions(tile_size=256, quality=95))
    assert info_path == tmp_path / "iiif" / "info.json"
    info = json.loads(info_path.read_text())
    assert info["@context"] == "http://iiif.io/api/image/3/context.json"
    assert info["type"] == "ImageService3" and info["profile"] == "level0"
    assert info["protocol"] == "http://iiif.io/api/image"
    assert info["id"] == "http://localhost:8000/iiif"
    assert (info["width"], info["height"]) == (width, height)
    (tiles,) = info["tiles"]
    assert tiles["width"] == 256
    # scale factors 1, 2, 4, ... until a level fits in one tile
    factors = tiles["scaleFactors"]
    assert factors == [2**k for k in range(len(factors))]
    assert math.ceil(max(height, width) / factors[-1]) <= 256
    assert len(factors) == 1 or math.ceil(max(height, width) / factors[-2]) > 256
    for path, x, y, w, h, sw, sh in client_tile_urls(info):
        tile = tmp_path / "iiif" / path
        assert tile.is_file(), f"missing {path}"
        with Image.open(tile) as im:
            assert im.format == "JPEG" and im.size == (sw, sh), path
            if (sw, sh) == (w, h):  # full-resolution tiles: the pixels of that region
                err = np.abs(np.asarray(im, dtype=float) - picture[y : y + h, x : x + w]).mean()
                assert err < 6, path
    assert not [p for p in tmp_path.rglob("*") if p.name.startswith(".gigasid-")]


def test_base_url_sets_the_service_id(tmp_path: Path) -> None:
    opts = ExportOptions(iiif_base_url="https://example.org/runs/demo/")
    export_iiif(make_rgb(100, 120), tmp_path / "iiif", opts)
    info = read_iiif_info(tmp_path / "iiif")
    assert info["id"] == "https://example.org/runs/demo/iiif"


@pytest.mark.parametrize(
    "url", ["ftp://x/y", "example.org", 'http://x/"a', "http://x/a b", "http://", 42, None]
)
def test_bad_base_url_is_refused(url) -> None:
    with pytest.raises(ValueError, match="iiif_base_url"):
        ExportOptions(iiif_base_url=url)


def test_replaces_an_existing_directory_whole(tmp_path: Path) -> None:
    export_iiif(make_rgb(700, 900), tmp_path / "iiif")
    stale = tmp_path / "iiif" / "0,512,256,188"
    assert stale.is_dir()
    export_iiif(make_rgb(300, 300), tmp_path / "iiif")
    assert not stale.exists()
    assert read_iiif_info(tmp_path / "iiif" / "info.json")["width"] == 300


def test_read_iiif_info_refuses_other_documents(tmp_path: Path) -> None:
    with pytest.raises(GigasidError, match="cannot read"):
        read_iiif_info(tmp_path)
    (tmp_path / "info.json").write_text(json.dumps({"width": 1, "height": 1}))
    with pytest.raises(GigasidError, match="not an IIIF"):
        read_iiif_info(tmp_path / "info.json")


def test_export_all_viewer_on_iiif_tiles(tmp_path: Path) -> None:
    out = tmp_path / "out"
    written = export_all(make_rgb(600, 800), out, formats=["iiif", "viewer"], title="iiif <t>")
    assert set(written) == {"iiif", "viewer"}
    assert written["iiif"] == out / "iiif" / "info.json"
    page = written["viewer"].read_text(encoding="utf-8")
    source = json.loads(re.search(r"var tileSource = (\{.*?\});\n", page).group(1))
    # the inlined info.json names the tiles relative to the page, the file keeps its URL
    assert source["id"] == "iiif" and source["width"] == 800 and source["height"] == 600
    assert source["tiles"] == read_iiif_info(out / "iiif")["tiles"]
    assert read_iiif_info(out / "iiif")["id"] == "http://localhost:8000/iiif"
    assert "800 &times; 600 px" in page and "iiif &lt;t&gt;" in page
    # with DeepZoom too, the viewer shows the DeepZoom pyramid
    both = export_all(make_rgb(60, 80), tmp_path / "both", formats=["dzi", "iiif", "viewer"])
    assert "image_files/" in both["viewer"].read_text(encoding="utf-8")


def test_viewer_needs_an_iiif_description(tmp_path: Path) -> None:
    (tmp_path / "iiif").mkdir()
    with pytest.raises(ViewerError, match="cannot read"):
        write_viewer(tmp_path, tmp_path / "iiif", "x")
    with pytest.raises(ViewerError, match="IIIF"):
        write_viewer(tmp_path, tmp_path / "image.zip", "x")


def test_run_config_sets_the_base_url(tmp_path: Path, photo_file) -> None:
    from conftest import REPO, run_cli

    ref = photo_file((48, 64))
    job = ["run", REPO / "configs" / "uncond.yaml", f"input={ref}", "num_samples=1",
           "num_steps=2", "output.formats=[iiif]", "--quiet"]
    url = "https://example.org/images/run1"
    r = run_cli(*job, f"output.iiif_base_url={url}", "--out", tmp_path / "a")
    assert r.returncode == 0, r.stderr
    info = json.loads((tmp_path / "a" / "out" / "iiif" / "info.json").read_text())
    assert info["id"] == url + "/iiif"
    r = run_cli(*job, "output.iiif_base_url=ftp://x", "--out", tmp_path / "b")
    assert r.returncode == 2 and "iiif_base_url" in r.stderr
    assert not (tmp_path / "b").exists()
