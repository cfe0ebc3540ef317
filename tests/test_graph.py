"""The per-scale task graph: its edges make every schedule read the right data."""

from __future__ import annotations

import random

import pytest

from gigasid.core.domain import Domain
from gigasid.core.patches import fold_window
from gigasid.core.sampler import ScaleContext, Transition
from gigasid.core.schedule import make_schedule
from gigasid.engine import graph
from gigasid.engine.plan import tile_grid


def _ctx(shape, patch=7, stride=2, kinds=("plane", "plane")):
    return ScaleContext(scale=0, domain=Domain.make(shape, kinds), channels=3, patch=patch,
                        query_stride=stride, window=fold_window(patch, 0.2), denoisers={},
                        schedule=make_schedule("flow_linear", 6, 1e-3), low_shape=(45, 52),
                        coarser=Domain.make((41, 47), kinds))


def _transitions(n=6):
    return [Transition(t, t - 1, 0.5, t != 1) for t in range(n, 0, -1)]


def test_tiles_touching_matches_brute_force():
    shape, tile = (70, 83), 16
    tiles = tile_grid(shape, tile)
    rng = random.Random(0)
    for _ in range(200):
        y0, x0 = rng.randrange(70), rng.randrange(83)
        win = (y0, rng.randrange(y0 + 1, 71), x0, rng.randrange(x0 + 1, 84))
        want = [i for i, (a, b, c, d) in enumerate(tiles)
                if a < win[1] and win[0] < b and c < win[3] and win[2] < d]
        assert graph.tiles_touching(shape, tile, win) == want


def _random_topological_run(deps, done, rng):
    """Execute the graph's tasks in a random order allowed by its edges."""
    ntiles = len(deps[0])
    pending = {(w, t) for w in range(len(deps)) for t in range(ntiles) if not done(w, t)}
    finished = {(w, t) for w in range(len(deps)) for t in range(ntiles) if done(w, t)}
    order = []
    while pending:
        ready = [k for k in pending if all((k[0] - 1, u) in finished for u in deps[k[0]][k[1]])]
        assert ready, "the graph has a cycle or a missing task"
        k = rng.choice(ready)
        pending.remove(k)
        finished.add(k)
        order.append(k)
    return order


def _check_versions(reads, deps, ntiles, rng):
    """Run a random schedule on a double-buffered state; every read must see the previous
    wave's chunk. Returns the wave each chunk of each buffer holds at the end."""
    version = [[None] * ntiles, [None] * ntiles]
    for w, t in _random_topological_run(deps, lambda w, t: False, rng):
        if w > 0:
            for u in reads[w - 1][t]:
                assert version[(w - 1) % 2][u] == w - 1, (w, t, u)
        version[w % 2][t] = w
    return version


@pytest.mark.parametrize("tile", [16, 23, 40])
@pytest.mark.parametrize("kinds", [("plane", "plane"), ("torus", "torus"), ("mirror", "mirror")])
def test_every_schedule_reads_the_wave_it_needs(tile, kinds):
    """Double-buffered state: whatever order the edges allow, each task reads chunks written
    by the previous wave (never overwritten by a later one) and the last wave is complete."""
    ctx = _ctx((90, 104), kinds=kinds)
    trs = _transitions()
    tiles = tile_grid(ctx.stored_shape, tile)
    reads = graph.read_sets(ctx, tile, tiles, trs)
    deps = graph.wave_dependencies(reads, len(tiles))
    rng = random.Random(tile)
    for _ in range(5):
        version = _check_versions(reads, deps, len(tiles), rng)
        assert version[len(trs) % 2] == [len(trs)] * len(tiles)


def test_torus_and_mirror_read_sets_wrap_and_reflect():
    """A corner tile of a torus reads the far edges; a mirror tile at the axis reads only
    the stored half (its reflection), never beyond it."""
    tor = _ctx((90, 104), kinds=("torus", "torus"))
    tiles = tile_grid(tor.stored_shape, 16)
    ncols = -(-104 // 16)
    reads = graph.read_sets(tor, 16, tiles, _transitions(2))[0][0]
    last_row, last_col = (len(tiles) - 1) // ncols, ncols - 1
    assert {last_row * ncols, last_col, len(tiles) - 1} <= set(reads)
    mir = _ctx((90, 104), kinds=("plane", "mirror"))
    assert mir.stored_shape == (90, 52)
    tiles = tile_grid(mir.stored_shape, 16)
    for t, rd in enumerate(graph.read_sets(mir, 16, tiles, _transitions(2))[0]):
        assert all(0 <= u < len(tiles) for u in rd)
        if tiles[t][3] == 52:  # touches the axis: reads its own column of tiles only
            assert all(tiles[u][3] >= tiles[t][2] - 16 for u in rd)


def test_waves_overlap_without_a_barrier():
    """A far tile can start step 2 before the opposite corner has finished step 1."""
    ctx = _ctx((90, 104))
    tiles = tile_grid(ctx.shape, 16)
    reads = graph.read_sets(ctx, 16, tiles, _transitions())
    deps = graph.wave_dependencies(reads, len(tiles))
    assert len(deps[2][0]) < len(tiles)
    assert len(tiles) - 1 not in deps[2][0]


def test_done_tiles_become_constants():
    ctx = _ctx((50, 50))
    tiles = tile_grid(ctx.shape, 16)
    trs = _transitions(3)
    deps = graph.wave_dependencies(graph.read_sets(ctx, 16, tiles, trs), len(tiles))
    calls = []
    dsk, keys = graph.scale_graph("s", deps, lambda w, t, d: calls.append((w, t)),
                                  lambda w, t: w == 0 or (w == 1 and t < 3))
    assert dsk[("s", 0, 5)] == 0.0 and dsk[("s", 1, 2)] == 0.0
    assert callable(dsk[("s", 1, 3)][0])
    assert keys == [("s", 3, t) for t in range(len(tiles))]
    import dask.local

    dask.local.get_sync(dsk, keys)
    assert sorted(calls) == sorted((w, t) for w in range(1, 4) for t in range(len(tiles))
                                   if not (w == 1 and t < 3))




def test_asymmetric_reads_need_write_after_read_edges():
    """Random, asymmetric read sets (tile t reads u does not imply u reads t): the
    write-after-read edges keep every schedule correct."""
    rng = random.Random(3)
    for _ in range(20):
        ntiles, n = 6, 4
        reads = [[sorted({t, *rng.sample(range(ntiles), 2)}) for t in range(ntiles)]
                 for _ in range(n)]
        deps = graph.wave_dependencies(reads, ntiles)
        for _ in range(5):
            _check_versions(reads, deps, ntiles, rng)
