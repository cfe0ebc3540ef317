"""The Zarr run store's file-level tile I/O against the Zarr library itself."""

import numpy as np
import pytest
import torch
import zarr

from gigasid.engine.store import ZarrStore


def _tiles(h, w, t):
    for y in range(0, h, t):
        for x in range(0, w, t):
            yield y, min(y + t, h), x, min(x + t, w)


@pytest.mark.parametrize("durable", [True, False])
def test_tile_files_are_what_zarr_reads_and_writes(tmp_path, durable):
    """Tiles written as chunk files (edge chunks included) read back through ``zarr`` exactly,
    chunks Zarr wrote read back through the store exactly, windows across chunk borders
    (halos) equal the same slice of the whole array, and never-written chunks read as 0."""
    h, w, t = 70, 53, 16
    rng = np.random.default_rng(0)
    full = rng.standard_normal((3, h, w)).astype(np.float32)
    store = ZarrStore(tmp_path / "run", durable=durable)
    store.ensure("a", (3, h, w), t)
    assert store._raw("a") is not None  # the fast path is taken for arrays made by ensure
    for y0, y1, x0, x1 in _tiles(h, w, t):
        store.write("a", (y0, y1, x0, x1), torch.from_numpy(full[:, y0:y1, x0:x1]))
    assert not list((tmp_path / "run").rglob("*.partial"))
    on_disk = zarr.open_array(str(tmp_path / "run/data.zarr/a"))
    np.testing.assert_array_equal(np.asarray(on_disk[:]), full)
    for y0, _, x0, _ in _tiles(h, w, t):
        assert store.chunk_ok("a", (y0 // t, x0 // t))
    # zarr writes, the store reads; windows with halos across chunk borders and the edge
    other = rng.standard_normal((3, h, w)).astype(np.float32)
    zarr.open_array(str(tmp_path / "run/data.zarr/a"), mode="r+")[:] = other
    fresh = ZarrStore(tmp_path / "run", durable=durable)
    for win in [(0, h, 0, w), (13, 40, 5, 50), (60, 70, 40, 53), (0, 1, 52, 53), (30, 90, 0, 80)]:
        got = fresh.read("a", win)
        np.testing.assert_array_equal(got.numpy(), other[:, win[0]:win[1], win[2]:win[3]])
    # a never-written chunk is the fill value, as in zarr
    store.ensure("b", (3, h, w), t)
    store.write("b", (16, 32, 16, 32), torch.ones(3, 16, 16))
    got = store.read("b", (10, 40, 10, 40)).numpy()
    want = np.zeros((3, 30, 30), np.float32)
    want[:, 6:22, 6:22] = 1
    np.testing.assert_array_equal(got, want)
    on_disk = zarr.open_array(str(tmp_path / "run/data.zarr/b"))
    np.testing.assert_array_equal(np.asarray(on_disk[:, 10:40, 10:40]), want)


def test_unaligned_writes_and_truncated_chunks(tmp_path):
    """A write that does not cover whole chunks goes through zarr (read-modify-write keeps
    the rest of the chunk); a truncated chunk file is reported, not read as garbage."""
    from gigasid.errors import GigasidError

    store = ZarrStore(tmp_path / "run")
    store.ensure("a", (1, 32, 32), 16)
    store.write("a", (0, 16, 0, 16), torch.full((1, 16, 16), 2.0))
    store.write("a", (4, 8, 4, 8), torch.full((1, 4, 4), 5.0))
    got = store.read("a", (0, 16, 0, 16)).numpy()[0]
    assert (got[4:8, 4:8] == 5).all() and got.sum() == 2 * 256 + 3 * 16
    path = store._chunk_path("a", (0, 0))
    path.write_bytes(path.read_bytes()[:100])
    assert not store.chunk_ok("a", (0, 0))
    with pytest.raises(GigasidError, match="truncated"):
        store.read("a", (0, 4, 0, 4))


def test_memory_and_zarr_runs_write_the_same_png_file(tmp_path):
    """The sample PNG is the same file, byte for byte, whichever store held the run."""
    from conftest import run_here

    args = ["configs/demo.yaml", "num_samples=1", "output_size=[40,48]", "num_steps=3",
            "patch_size=7", "pyramid.min_short_side=14", "output.formats=[png]"]
    files = {}
    for st in ("memory", "zarr"):
        run_here(args + [f"engine.store={st}"], tmp_path / st)
        files[st] = (tmp_path / st / "sample_000.png").read_bytes()
    assert files["memory"] == files["zarr"]
