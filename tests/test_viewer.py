"""Tests of the offline deep-zoom viewer (gigasid.io.viewer) and the local server (serve)."""

from __future__ import annotations

import io
import json
import re
import shutil
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from gigasid.io.export import ExportOptions, export_all, export_dzi
from gigasid.io.serve import ServeError, serve
from gigasid.io.viewer import ViewerError, read_dzi, write_viewer

PROVENANCE = {"gigasid_version": "0.1.0", "seed": 4242, "config": {"app": "sample"}}


def textured(height: int, width: int) -> np.ndarray:
    """Gradients plus a 6-px checkerboard: structure at every zoom level."""
    yy, xx = np.mgrid[0:height, 0:width]
    checker = (((yy // 6) + (xx // 6)) % 2) * 90
    img = np.stack(
        [200 * xx / width + checker // 2, 200 * yy / height + checker // 3, 40 + checker], -1
    )
    return np.clip(img, 0, 255).astype(np.uint8)


def _viewer_site(out: Path, tiles: str, title: str) -> Path:
    """The viewer over the ``tiles`` pyramid (``dzi`` or ``iiif``) of the textured image."""
    export_all(textured(1500, 2000), out, ExportOptions(), PROVENANCE,
               formats=(tiles, "viewer"), title=title)
    return out


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    return _viewer_site(tmp_path_factory.mktemp("site"), "dzi", "Test <picture> & co")


@pytest.fixture(scope="module")
def iiif_site(tmp_path_factory) -> Path:
    """The viewer on IIIF Image API 3.0 tiles only (no DeepZoom pyramid)."""
    out = _viewer_site(tmp_path_factory.mktemp("iiif-site"), "iiif", "IIIF picture")
    assert not (out / "image_files").exists()
    return out


# ------------------------------------------------------------------------------------------------
# page content


def test_viewer_is_self_contained(site: Path) -> None:
    page = (site / "index.html").read_text(encoding="utf-8")
    # vendored OpenSeadragon, its icons and licence are copied next to the page
    assert (site / "viewer" / "openseadragon.min.js").stat().st_size > 100_000
    assert (site / "viewer" / "images" / "zoomin_rest.png").is_file()
    assert "Redistribution and use" in (site / "viewer" / "LICENSE.txt").read_text()
    assert 'src="viewer/openseadragon.min.js"' in page
    # nothing from the network
    assert not re.search(r"(src|href)=\"(https?:)?//", page)
    # descriptor inlined (no XHR for image.dzi), with the values of the .dzi file
    match = re.search(r"var tileSource = (\{.*?\});\n", page)
    assert match, "inline tile source missing"
    source = json.loads(match.group(1))["Image"]
    info = read_dzi(site / "image.dzi")
    assert source["Url"] == "image_files/"
    assert source["xmlns"] == "http://schemas.microsoft.com/deepzoom/2008"
    assert (int(source["TileSize"]), int(source["Overlap"]), source["Format"]) == (
        info["TileSize"],
        info["Overlap"],
        info["Format"],
    )
    assert (int(source["Size"]["Width"]), int(source["Size"]["Height"])) == (2000, 1500)
    # caption: escaped title, size and seed
    assert "Test &lt;picture&gt; &amp; co" in page and "<picture>" not in page
    assert "2,000 &times; 1,500 px" in page and "seed 4242" in page


def test_viewer_needs_loose_dzi(tmp_path: Path) -> None:
    pic = textured(200, 300)
    zipped = export_dzi(pic, tmp_path / "image", ExportOptions(dzi_container="zip"))
    with pytest.raises(ViewerError, match="dzi_container='fs'"):
        write_viewer(tmp_path, zipped, "x")
    with pytest.raises(ViewerError, match="cannot read"):
        write_viewer(tmp_path, tmp_path / "missing.dzi", "x")
    dzi = export_dzi(pic, tmp_path / "loose.dzi")
    shutil.rmtree(tmp_path / "loose_files")
    with pytest.raises(ViewerError, match="missing"):
        write_viewer(tmp_path, dzi, "x")


# ------------------------------------------------------------------------------------------------
# server


def test_serve_binds_loopback_only(site: Path, monkeypatch) -> None:
    opened: list[str] = []
    monkeypatch.setattr("webbrowser.open", lambda url, *a, **k: opened.append(url) or True)
    server = serve(site, port=0, open_browser=True)
    try:
        host, port = server.server_address[:2]
        assert host == "127.0.0.1" and port > 0
        assert server.url == f"http://127.0.0.1:{port}/"
        assert opened == [server.url + "index.html"]
        with urllib.request.urlopen(server.url + "index.html", timeout=5) as resp:
            assert resp.status == 200 and b"openseadragon.min.js" in resp.read()
        with urllib.request.urlopen(server.url + "image.dzi", timeout=5) as resp:
            assert resp.headers["Content-Type"].startswith("application/xml")
        with pytest.raises(urllib.error.HTTPError):
            urllib.request.urlopen(server.url + "nope.txt", timeout=5)
    finally:
        server.stop()
    with pytest.raises(OSError):
        urllib.request.urlopen(server.url + "index.html", timeout=2)


def test_serve_refuses_remote_hosts(site: Path) -> None:
    for host in ("0.0.0.0", "192.168.1.10", "::"):
        with pytest.raises(ServeError, match="allow_remote"):
            serve(site, host=host, open_browser=False)
    with serve(site, host="localhost", open_browser=False) as server:
        assert server.server_address[0] == "127.0.0.1"
    with pytest.raises(ServeError, match="not a directory"):
        serve(site / "index.html", open_browser=False)


# ------------------------------------------------------------------------------------------------
# a real browser




def wait_fully_loaded(page) -> None:
    """Poll until the image reports all tiles of the current view loaded (or opening failed)."""
    page.wait_for_function(
        """() => {
            const s = window.gigasidStatus, v = window.gigasidViewer;
            if (s && s.openFailed > 0) return true;
            return !!(v && v.world.getItemCount() > 0 && v.world.getItemAt(0).getFullyLoaded());
        }""",
        timeout=30_000,
    )


ZOOM_TO_MAX = """() => new Promise((resolve) => {
    const v = window.gigasidViewer, item = v.world.getItemAt(0);
    const timer = setTimeout(() => resolve(false), 30000);
    item.addHandler("fully-loaded-change", function handler(event) {
        if (event.fullyLoaded) {
            item.removeHandler("fully-loaded-change", handler);
            clearTimeout(timer);
            resolve(true);
        }
    });
    v.viewport.zoomTo(v.viewport.getMaxZoom(), null, true);
})"""


def screenshot_std(page, path: Path) -> float:
    png = page.screenshot(path=str(path))
    pixels = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), dtype=float)
    # central area only: leave out the navigator, the buttons and the caption
    h, w = pixels.shape[:2]
    return float(pixels[h // 4 : 3 * h // 4, w // 4 : 3 * w // 4].std())


def check_in_browser(browser, site: Path, tmp_path: Path, transport: str) -> list[str]:
    """Open the viewer, zoom to the deepest level, assert no error and no failed request.

    Returns the URLs of the images the page loaded.
    """
    server = serve(site, open_browser=False) if transport == "http" else None
    try:
        url = (server.url + "index.html") if server else (site / "index.html").as_uri()
        page = browser.new_page(viewport={"width": 900, "height": 700})
        page_errors: list[str] = []
        bad_responses: list[str] = []
        images: list[str] = []
        page.on("pageerror", lambda exc: page_errors.append(str(exc)))
        page.on("requestfailed", lambda req: bad_responses.append(f"failed {req.url}"))
        page.on(
            "requestfinished",
            lambda req: images.append(req.url) if req.resource_type == "image" else None,
        )
        page.on(
            "response",
            lambda resp: (
                bad_responses.append(f"{resp.status} {resp.url}") if resp.status >= 400 else None
            ),
        )
        page.goto(url)
        wait_fully_loaded(page)
        status = page.evaluate("window.gigasidStatus")
        assert status["openFailed"] == 0, status
        assert status["opened"] and status["tileLoadFailed"] == 0, status
        assert screenshot_std(page, tmp_path / f"{transport}-home.png") > 20

        # deepest zoom: the full-resolution tiles must load as well
        assert page.evaluate(ZOOM_TO_MAX), "no fully-loaded-change after zooming in"
        zoom = page.evaluate(
            "() => [window.gigasidViewer.viewport.getZoom(true),"
            " window.gigasidViewer.viewport.getMaxZoom()]"
        )
        assert zoom[0] == pytest.approx(zoom[1], rel=1e-3)
        status = page.evaluate("window.gigasidStatus")
        assert status["openFailed"] == 0 and status["tileLoadFailed"] == 0, status
        assert status["errors"] == []
        assert screenshot_std(page, tmp_path / f"{transport}-max-zoom.png") > 20
        assert page_errors == [] and bad_responses == []
        page.close()
    finally:
        if server is not None:
            server.stop()
    return images


@pytest.mark.parametrize("transport", ["file", "http"])
def test_viewer_in_headless_chromium(browser, site: Path, tmp_path: Path, transport) -> None:
    images = check_in_browser(browser, site, tmp_path, transport)
    assert any("/image_files/" in url for url in images)


@pytest.mark.parametrize("transport", ["file", "http"])
def test_iiif_viewer_in_headless_chromium(
    browser, iiif_site: Path, tmp_path: Path, transport
) -> None:
    images = check_in_browser(browser, iiif_site, tmp_path, transport)
    tiles = [url for url in images if "/iiif/" in url]
    assert tiles and all(url.endswith("/0/default.jpg") for url in tiles)
    # full-resolution tiles (scale factor 1: region size == tile size) were loaded too
    full = [u for u in tiles if re.search(r"/iiif/\d+,\d+,(\d+),(\d+)/\1,\2/0/", u)]
    assert full, tiles
