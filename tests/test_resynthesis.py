"""The texture pass: known pixels kept, filled pixels copied from known ones, the same bytes
compiled or not, texture restored under a flat guide, and a finish killed mid-write resumes
to the same bytes."""

import numpy as np
import pytest
import torch

from conftest import REPO
from gigasid.core import resynthesis
from gigasid.core.resynthesis import resynthesize, source_windows


def _texture(shape=(3, 48, 56), seed=0):
    rng = np.random.default_rng(seed)
    return rng.uniform(-1, 1, shape).astype(np.float32)


def _hole(h=48, w=56):
    hole = np.zeros((h, w), bool)
    hole[14:34, 18:40] = True
    return hole


def _grad(img, mask):
    g = np.abs(np.diff(img, axis=2))[:, :-1, :] + np.abs(np.diff(img, axis=1))[:, :, :-1]
    return float(g.mean(axis=0)[mask[:-1, :-1]].mean())


def test_known_pixels_kept_and_fill_copied_from_known_pixels():
    known, hole = _texture(), _hole()
    guide = np.zeros_like(known)
    out = resynthesize(known, hole, guide, seed=3)
    assert np.array_equal(out[:, ~hole], known[:, ~hole])
    ok = source_windows(hole, 5)
    sources = {tuple(v) for v in known[:, ok].T}
    assert all(tuple(v) in sources for v in out[:, hole].T)


def test_flat_guide_still_gets_the_texture_of_its_surroundings():
    """A flat guide has no texture at all; the pass copies texture runs from around it."""
    known, hole = _texture(), _hole()
    guide = np.where(hole[None], 0.0, known).astype(np.float32)
    out = resynthesize(known, hole, guide, seed=3)
    inner = np.zeros_like(hole)
    inner[16:32, 20:38] = True
    ring = ~hole
    assert _grad(guide, inner) < 0.01
    assert _grad(out, inner) > 0.8 * _grad(known, ring)


def test_same_bytes_compiled_and_interpreted(monkeypatch):
    pytest.importorskip("numba")
    known, hole = _texture((3, 30, 34), 2), _hole(30, 34)
    hole[:] = False
    hole[9:20, 10:24] = True
    guide = _texture((3, 30, 34), 5) * 0.3

    def cands(win):
        return np.arange(len(win) * 2).reshape(-1, 2) % (30 * 34)

    compiled = resynthesize(known, hole, guide, seed=7, candidates=cands)
    monkeypatch.setattr(resynthesis, "_SYNTH", resynthesis._synth)
    plain = resynthesize(known, hole, guide, seed=7, candidates=cands)
    assert np.array_equal(compiled, plain)
    assert not np.array_equal(
        compiled, resynthesize(known, hole, guide, seed=8, candidates=cands))


def test_finish_killed_mid_write_resumes_to_the_same_bytes(tmp_path, photo_file):
    from gigasid.config import load_config
    from gigasid.engine.execute import SyncExecutor, generate
    from gigasid.engine.job import prepare
    from gigasid.engine.progress import Reporter
    from gigasid.engine.store import ZarrStore
    from gigasid.io.images import save_png

    ref = photo_file((64, 64))
    mask = np.zeros((64, 64, 3), np.uint8)
    mask[20:40, 18:44] = 255
    save_png(mask, tmp_path / "mask.png")
    cfg = load_config(REPO / "configs" / "demo.yaml", [
        f"input={ref}", "app=inpaint", f"mask={tmp_path / 'mask.png'}", "num_samples=1",
        "patch_size=7", "num_steps=3", "pyramid.min_short_side=14", "engine.store=zarr",
        "engine.tile_size=24"])
    job = prepare(cfg)
    full = (0, 64, 0, 64)

    def run(store):
        return generate(job, store, 5, 0, Reporter(), SyncExecutor())

    clean = ZarrStore(tmp_path / "clean")
    name = run(clean)
    want = clean.read(name, full)
    assert clean.is_done("x0-finish")

    crashed = ZarrStore(tmp_path / "crashed")
    write = crashed.write

    def dying_write(nm, region, value):
        if nm == name and crashed.is_done("x0-finish-input"):
            write(nm, region, torch.full_like(value, 7.0))  # half-written garbage, then gone
            raise RuntimeError("killed")
        write(nm, region, value)

    crashed.write = dying_write
    with pytest.raises(RuntimeError, match="killed"):
        run(crashed)
    resumed = ZarrStore(tmp_path / "crashed")
    assert torch.equal(resumed.read(run(resumed), full), want)


def test_finish_changes_only_the_hole_and_needs_a_held_known_region(tmp_path, photo_file):
    """The pass writes generated pixels only; with ``hold_finest: false`` (the finest scale
    re-synthesises the kept region too) there is no pass."""
    from gigasid.config import load_config
    from gigasid.engine.job import prepare
    from gigasid.io.images import save_png

    ref = photo_file((64, 64))
    mask = np.zeros((64, 64, 3), np.uint8)
    mask[20:40, 18:44] = 255
    save_png(mask, tmp_path / "mask.png")
    args = [f"input={ref}", f"mask={tmp_path / 'mask.png'}", "patch_size=7",
            "pyramid.min_short_side=14"]
    job = prepare(load_config(REPO / "configs" / "inpaint.yaml", args))
    fin = job.app.finish(job.view, 3)
    y0, y1, x0, x1 = fin.region
    pixels = torch.rand(3, y1 - y0, x1 - x0, generator=torch.Generator().manual_seed(0)) * 2 - 1
    out = fin.apply(pixels.clone())
    hole = job.app.holes[0][y0:y1, x0:x1]
    assert torch.equal(out[:, ~hole], pixels[:, ~hole])
    assert not torch.equal(out[:, hole], pixels[:, hole])
    free = prepare(load_config(REPO / "configs" / "inpaint.yaml",
                               [*args, "inpaint.hold_finest=false"]))
    assert free.app.finish(free.view, 3) is None
