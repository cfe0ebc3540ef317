"""The live view of a running job (gigasid.engine.live, gigasid.io.live_page, `gigasid view`).

A finished streamed run is the oracle: a copy of it with some completion markers removed is
the same run stopped half-way through its finest scale (markers are what the engine and the
live view trust), and its final state is what every finished tile must show.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import REPO, run_cli
from gigasid.engine.live import LiveView
from gigasid.io.live_page import live_routes
from gigasid.io.serve import serve

#: A streamed job of 16 tiles per step at its finest scale (64 x 64 px, tiles of 16).
SMALL_RUN = ["run", REPO / "configs" / "uncond.yaml", "input=builtin:astronaut",
             "input_resize_to=64", "num_samples=1", "num_steps=3", "engine.store=zarr",
             "engine.tile_size=16", "output.formats=[png,dzi,viewer]", "--quiet"]
KEPT_TILES = 5  # finest-scale tiles left finished in the "partial" copy


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("live") / "run"
    r = run_cli(*SMALL_RUN, "--out", out)
    assert r.returncode == 0, r.stderr
    return out


def final_image(run: Path) -> np.ndarray:
    return np.asarray(Image.open(run / "sample_000.png").convert("RGB"))


def finest(run: Path) -> tuple[int, list[list[int]]]:
    """The finest scale's last wave and tiles, from the plan."""
    sp = json.loads((run / "plan.json").read_text())["scales"][0]
    return sp["transitions"], sp["tiles"]


@pytest.fixture
def partial_run(finished_run: Path, tmp_path: Path) -> Path:
    """The finished run as it was while its finest scale's last wave was running, with
    ``KEPT_TILES`` of its tiles finished."""
    run = tmp_path / "partial"
    shutil.copytree(finished_run, run)
    wave, tiles = finest(run)
    marks = run / "markers"
    for name in ["x0-written", f"x0-s0-w{wave}"] + [
            f"x0-s0-w{wave}-t{t}" for t in range(KEPT_TILES, len(tiles))]:
        (marks / name).unlink()
    log = run / "log.jsonl"
    events = log.read_text().splitlines()
    cut = next(i for i, line in enumerate(events) if '"sample_done"' in line)
    log.write_text("\n".join(events[:cut]) + "\n")
    return run


def tree_state(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in root.rglob("*")}


def tile_pixels(img: np.ndarray, region) -> np.ndarray:
    y0, y1, x0, x1 = region
    return img[y0:y1, x0:x1].astype(int)


# ------------------------------------------------------------------------------------------------
# snapshots of a real run


def test_finished_run_shows_its_final_image(finished_run: Path) -> None:
    live = LiveView(finished_run, min_interval=0)
    status = live.status()
    assert status["state"] == "finished" and status["finished"] is True
    assert status["percent"] == 100.0 and status["eta"] is None
    assert status["tiles_done"] == status["tiles_total"] == len(finest(finished_run)[1])
    assert status["viewer"] == "index.html" and not status["latent"]
    # every tile of the finest scale drawn: exactly the written sample
    assert np.array_equal(live.snapshot(), final_image(finished_run))


def test_partial_run_shows_finished_tiles_over_the_coarser_scale(partial_run: Path,
                                                                   finished_run: Path) -> None:
    live = LiveView(partial_run, min_interval=0)
    status = live.status()
    assert status["state"] == "running" and not status["finished"]
    assert (status["scale"], status["num_scales"]) == (0, 3)
    assert (status["tiles_done"], status["tiles_total"]) == (KEPT_TILES, 16)
    assert (status["step"], status["steps"]) == (2, 3)
    assert 0 < status["percent"] < 100 and status["eta_seconds"] is not None
    snap, final = live.snapshot(), final_image(finished_run)
    assert snap.shape == final.shape and not np.array_equal(snap, final)
    _, tiles = finest(partial_run)
    for t, region in enumerate(tiles):
        got, want = tile_pixels(snap, region), tile_pixels(final, region)
        if t < KEPT_TILES:
            assert np.array_equal(got, want), f"finished tile {t} differs from the result"
        else:
            # the coarser scale upsampled: the same picture, blurred
            assert not np.array_equal(got, want), t
            assert np.corrcoef(got.ravel(), want.ravel())[0, 1] > 0.6, t
    png = Image.open(io.BytesIO(live.snapshot_png()))
    assert np.array_equal(np.asarray(png.convert("RGB")), snap)

    # one more tile finishes: a new snapshot version, with that tile in it
    version = status["snapshot"]
    wave, _ = finest(partial_run)
    (partial_run / "markers" / f"x0-s0-w{wave}-t{KEPT_TILES}").touch()
    before = tree_state(partial_run)
    status = live.status()
    assert status["tiles_done"] == KEPT_TILES + 1 and status["snapshot"] > version
    assert np.array_equal(tile_pixels(live.snapshot(), tiles[KEPT_TILES]),
                          tile_pixels(final, tiles[KEPT_TILES]))
    # nothing written into the run directory (no lock taken, no Zarr metadata touched)
    assert tree_state(partial_run) == before


def test_torn_or_missing_chunks_are_unfinished(partial_run: Path, finished_run: Path) -> None:
    wave, tiles = finest(partial_run)
    chunks = partial_run / "data.zarr" / "x0" / "s0" / f"w{wave}" / "c" / "0"
    torn, gone = tiles[KEPT_TILES], tiles[KEPT_TILES + 1]
    torn_chunk = chunks / str(torn[0] // 16) / str(torn[2] // 16)
    whole = torn_chunk.read_bytes()
    torn_chunk.write_bytes(whole[:100])  # a write cut off half-way
    (chunks / str(gone[0] // 16) / str(gone[2] // 16)).unlink()
    for t in (KEPT_TILES, KEPT_TILES + 1):  # marked, as if the chunks had been damaged later
        (partial_run / "markers" / f"x0-s0-w{wave}-t{t}").touch()
    with open(partial_run / "log.jsonl", "a") as fh:
        fh.write('{"time": 1, "event": "tile_d')  # a log line being written
    live = LiveView(partial_run, min_interval=0)
    status = live.status()
    assert status["state"] == "running" and status["tiles_done"] == KEPT_TILES
    final = final_image(finished_run)
    snap = live.snapshot()
    assert not np.array_equal(tile_pixels(snap, torn), tile_pixels(final, torn))
    # once the chunk is whole, the tile is drawn at the next look
    torn_chunk.write_bytes(whole)
    assert live.status()["tiles_done"] == KEPT_TILES + 1
    assert np.array_equal(tile_pixels(live.snapshot(), torn), tile_pixels(final, torn))


# ------------------------------------------------------------------------------------------------
# channels, latents, mirrored axes and large scales (hand-made run directories)


def fake_run(root: Path, states: list[np.ndarray], tile: int, *, factor: int = 1,
             domain=("plane", "plane"), full=None, finished_tiles=None) -> Path:
    """A run directory whose scales (finest first) hold ``states`` as their final wave,
    written by the engine's own store; ``finished_tiles``: tiles of the finest scale marked
    (all when None)."""
    import torch

    from gigasid.engine.plan import tile_grid
    from gigasid.engine.store import ZarrStore

    root.mkdir(parents=True)
    (root / "job.yaml").write_text("config:\n  app: uncond\n")
    scales = []
    store = ZarrStore(root, durable=False)
    for s, state in enumerate(states):
        stored = state.shape[1:]
        shape = tuple(full) if (full and s == 0) else stored
        tiles = tile_grid(stored, tile)
        scales.append({"index": s, "shape": list(shape), "stored_shape": list(stored),
                       "num_steps": 1, "transitions": 1, "tiles": [list(t) for t in tiles],
                       "domain": list(domain if s == 0 else ("plane", "plane"))})
        name = f"x0/s{s}/w1"
        store.ensure(name, state.shape, tile)
        for t, (y0, y1, x0, x1) in enumerate(tiles):
            store.write(name, (y0, y1, x0, x1), torch.from_numpy(state[:, y0:y1, x0:x1]))
            if s > 0 or finished_tiles is None or t in finished_tiles:
                store.mark(f"x0-s{s}-w1-t{t}")
        # the engine's wave markers: wave 0 (the initial noise) and, when complete, wave 1
        store.mark(f"x0-s{s}-w0")
        if s > 0 or finished_tiles is None:
            store.mark(f"x0-s{s}-w1")
    plan = {"num_samples": 1, "channels": states[0].shape[0], "scales": scales,
            "codec": {"name": "vae" if factor > 1 else "pixel", "factor": factor}}
    (root / "plan.json").write_text(json.dumps(plan))
    events = [{"time": time.time(), "event": "scale_start", "scale": s, "num_transitions": 1}
              for s in reversed(range(len(states)))]
    (root / "log.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))
    return root


def test_grey_alpha_latent_and_mirror(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)

    def state(c, h, w):
        return rng.uniform(-1, 1, (c, h, w)).astype(np.float32)

    grey = LiveView(fake_run(tmp_path / "grey", [state(1, 24, 40)], 16), min_interval=0)
    snap = grey.snapshot()
    assert snap.shape == (24, 40, 3) and (snap[..., 0] == snap[..., 2]).all()

    rgba = state(4, 24, 40)
    a = LiveView(fake_run(tmp_path / "a", [rgba], 16), min_interval=0).snapshot()
    rgba[3] = -rgba[3]  # another alpha: the same picture
    b = LiveView(fake_run(tmp_path / "b", [rgba], 16), min_interval=0).snapshot()
    assert np.array_equal(a, b)
    want = np.clip(np.round((rgba[:3].transpose(1, 2, 0) + 1) / 2 * 255), 0, 255)
    assert np.abs(a.astype(int) - want).max() <= 1

    lat = state(16, 24, 40) * 4  # latents are not in [-1, 1]
    live = LiveView(fake_run(tmp_path / "lat", [lat], 16, factor=8), min_interval=0)
    status, snap = live.status(), live.snapshot()
    assert status["latent"] and "latent preview" in status["note"]
    # normalised: the channels spread over the whole range instead of clipping at 0 / 255
    assert snap.min() < 40 and snap.max() > 215 and (snap == 255).mean() < 0.03

    half = state(3, 20, 16)  # a mirror-symmetric x axis of 31 px stores 16 columns
    live = LiveView(fake_run(tmp_path / "mir", [half], 8, domain=("plane", "mirror"),
                             full=(20, 31)), min_interval=0)
    snap = live.snapshot().astype(int)
    assert snap.shape == (20, 31, 3)
    assert np.array_equal(snap[:, :15], snap[:, 16:][:, ::-1])


def test_large_scale_is_read_strided_and_tile_by_tile(tmp_path: Path) -> None:
    """A scale larger than ``max_side`` is shown on a stride grid, from the finished tiles
    only, over the coarser scale; a compressed array (not the engine's layout) reads too."""
    rng = np.random.default_rng(1)
    fine = rng.uniform(-1, 1, (3, 400, 96)).astype(np.float32)
    coarse = np.full((3, 200, 48), 0.5, dtype=np.float32)
    run = fake_run(tmp_path / "big", [fine, coarse], 32, finished_tiles={0, 3})
    live = LiveView(run, max_side=100, min_interval=0)
    snap = live.snapshot().astype(int)
    assert snap.shape == (100, 24, 3)  # stride 4
    want = np.round((fine[:, ::4, ::4].transpose(1, 2, 0) + 1) / 2 * 255)
    # tiles 0 and 3 (rows 0-31 and 32-63, first column): the fine state on the stride grid
    assert np.abs(snap[:16, :8] - want[:16, :8]).max() <= 1
    # elsewhere the coarser scale (0.5 everywhere)
    assert (np.abs(snap[:, 8:] - 191) <= 1).all() and (np.abs(snap[16:] - 191) <= 1).all()

    # the same array written by Zarr with a compressor: read through Zarr instead
    import zarr

    path = run / "data.zarr" / "x0" / "s0" / "w1"
    shutil.rmtree(path)
    arr = zarr.create_array(str(path), shape=fine.shape, chunks=(3, 32, 32), dtype="float32")
    arr[:] = fine
    again = LiveView(run, max_side=100, min_interval=0).snapshot().astype(int)
    assert np.array_equal(again, snap)


# ------------------------------------------------------------------------------------------------
# http


def test_live_routes_over_http(partial_run: Path) -> None:
    live = LiveView(partial_run, min_interval=0)
    shutil.rmtree(partial_run / "out")  # a running job has no out/ yet
    with serve(partial_run / "out", open_browser=False,
               routes=live_routes(live.status, live.snapshot_png)) as server:
        assert server.server_address[0] == "127.0.0.1"
        with urllib.request.urlopen(server.url + "live/", timeout=10) as resp:
            page = resp.read().decode()
            assert resp.headers["Content-Type"].startswith("text/html")
        assert "status.json" in page and "snapshot.png" in page
        with urllib.request.urlopen(server.url + "live/status.json", timeout=10) as resp:
            status = json.loads(resp.read())
            assert resp.headers["Cache-Control"] == "no-store"
        assert status["state"] == "running" and status["tiles_done"] == KEPT_TILES
        with urllib.request.urlopen(server.url + "live/snapshot.png?v=3", timeout=10) as resp:
            png = Image.open(io.BytesIO(resp.read()))
        assert np.array_equal(np.asarray(png.convert("RGB")), live.snapshot())
        with pytest.raises(urllib.error.HTTPError):
            urllib.request.urlopen(server.url + "index.html", timeout=10)


def test_view_command(partial_run: Path, tmp_path: Path) -> None:
    r = run_cli("view", tmp_path / "nope", "--no-browser")
    assert r.returncode == 2 and "no such run directory" in r.stderr
    assert "Traceback" not in r.stderr
    proc = subprocess.Popen([sys.executable, "-m", "gigasid", "view", str(partial_run),
                             "--no-browser"], stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stderr.readline()
        assert line.startswith("live view of"), line
        url = line.split(" at ")[1].split()[0]
        assert url.startswith("http://127.0.0.1:") and url.endswith("/live/")
        with urllib.request.urlopen(url + "status.json", timeout=20) as resp:
            status = json.loads(resp.read())
        assert status["state"] == "running" and status["tiles_done"] == KEPT_TILES
        # the viewer's files are served beside the live page
        with urllib.request.urlopen(url.replace("live/", "index.html"), timeout=10) as resp:
            assert b"OpenSeadragon" in resp.read()
    finally:
        proc.terminate()
        proc.wait(timeout=10)


# ------------------------------------------------------------------------------------------------
# a real browser watching a real run




def test_live_page_follows_a_running_job(browser, tmp_path: Path) -> None:
    run = tmp_path / "run"
    # slow enough to watch (about 6 s of tiles on one thread): 5 scales, 12 steps each,
    # 49 tiles per step at the finest
    args = [*SMALL_RUN[:2], "input=builtin:astronaut", "input_resize_to=224", "num_samples=1",
            "num_steps=12", "engine.store=zarr", "engine.tile_size=32", "engine.threads=1",
            "output.formats=[png,dzi,viewer]", "--quiet", "--out", run]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "gigasid", *map(str, args)], env=env,
                            stderr=subprocess.PIPE, text=True)
    live = LiveView(run)  # the directory does not exist yet
    server = serve(run / "out", open_browser=False,
                   routes=live_routes(live.status, live.snapshot_png))
    page = browser.new_page(viewport={"width": 900, "height": 700})
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    try:
        page.goto(server.url + "live/")
        page.wait_for_function("() => window.gigasidLive && window.gigasidLive.done",
                               timeout=120_000, polling=250)
        assert proc.wait(timeout=60) == 0, proc.stderr.read()
        record = page.evaluate("window.gigasidLive")
        body = page.inner_text("body")
    finally:
        page.close()
        server.stop()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert errors == [] and record["errors"] == [], (errors, record["errors"])
    running = [s for s in record["states"] if s.startswith("running")]
    progress = [p for p in record["progress"] if not p.startswith(("0.0", "100.0"))]
    # the page followed the job: its progress moved and the picture changed while it ran
    assert len(running) >= 2 and len(progress) >= 2, record
    assert sum(1 for s in record["swapped"] if s["state"] == "running") >= 2, record
    assert record["swaps"] >= 3 and record["status"]["finished"]
    assert record["status"]["tiles_done"] == record["status"]["tiles_total"] == 49
    assert "finished" in body and "open the deep-zoom viewer" in body
