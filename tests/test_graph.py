"""The per-scale task graph: its edges make every schedule read the right data."""

from __future__ import annotations

import functools
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


def _graph_deps(dsk):
    """Dependencies of every node of a scale graph (tile tasks and wave barriers)."""
    out = {}
    for key, val in dsk.items():
        if not isinstance(val, tuple):
            out[key] = []
        elif len(val) == 4:  # (task, wave, tile, deps)
            out[key] = list(val[3])
        else:  # (join, tiles)
            out[key] = list(val[1])
    return out


def _simulate(reads, ntiles, rng, replay=0.3, twins=0.3):
    """Run a scale graph under an adversarial scheduler and a model of the run directory.

    Every tile task runs the phases of ``worker.tile_work``: marker check, reads of the
    previous wave's array, marker check, write, marker. The scheduler starts ready tasks in
    random order, interleaves the phases of all running copies at random, starts twins of
    running tasks (a task run twice) and replays of finished ones (a result lost with a
    worker) at any time; the driver frees arrays as ``graph.collectable`` allows. Asserts
    that no write is ever based on a read of a missing or wrong chunk and that the last
    wave ends complete; returns how many copies ran to a write.
    """
    n = len(reads)
    deps = graph.wave_dependencies(reads, ntiles)
    dsk, _ = graph.scale_graph("s", deps, lambda *a: None, lambda w, t: False)
    need = _graph_deps(dsk)
    arrays = {w: {} for w in range(n + 1)}  # wave -> tile -> wave that wrote the chunk
    freed: set[int] = set()
    marks: set[tuple[int, int]] = set()
    left = [ntiles] * (n + 1)
    finished: set = set()  # keys the scheduler has seen complete
    started: set = set()
    running: list = []
    writes = 0

    def copy(w, t):
        if (w, t) in marks:
            return
        yield
        ok = True
        for u in (reads[w - 1][t] if w else []):
            got = None if (w - 1) in freed else arrays[w - 1].get(u)
            ok &= got == w - 1
            yield
        if (w, t) in marks:  # a twin finished first
            return
        assert ok, f"task {(w, t)} would write a tile computed from a stale read"
        assert w not in freed, f"task {(w, t)} writes into a freed array"
        arrays[w][t] = w
        yield
        marks.add((w, t))

    def complete(key):
        if key in finished:
            return
        finished.add(key)
        if key[1] == "wave":
            return
        w = key[1]
        left[w] -= 1
        if left[w] == 0:
            old = graph.collectable(w)
            if old is not None:
                freed.add(old)

    while len(finished) < len(dsk):
        ready = [k for k in dsk if k not in started and all(d in finished for d in need[k])]
        choice = rng.random()
        if ready and (not running or choice < 0.4):
            key = rng.choice(ready)
            started.add(key)
            if key[1] == "wave":
                complete(key)
            else:
                running.append((key, key, copy(key[1], key[2])))
            continue
        crowded = len(running) > 6  # extra copies compete with real progress, keep them few
        if running and not crowded and choice < 0.4 + twins * 0.2:
            _, key, _ = rng.choice(running)
            running.append((None, key, copy(key[1], key[2])))  # a twin: reports nothing
            continue
        done_tiles = [k for k in finished if k[1] != "wave"]
        if done_tiles and not crowded and choice > 1 - replay * 0.2:
            key = rng.choice(done_tiles)
            running.append((None, key, copy(key[1], key[2])))
            continue
        if running:
            i = rng.randrange(len(running))
            key, _, gen = running[i]
            try:
                next(gen)
            except StopIteration:
                running.pop(i)
                if key is not None:
                    complete(key)
                    writes += 1
    for _, _, gen in running:  # late copies finish after everything else
        for _ in gen:
            pass
    assert all(arrays[n].get(t) == n for t in range(ntiles))
    assert freed == set(range(n)), "every wave but the last is freed"
    return writes


@pytest.mark.parametrize("tile", [16, 23, 40])
@pytest.mark.parametrize("kinds", [("plane", "plane"), ("torus", "torus"), ("mirror", "mirror")])
def test_every_schedule_reads_the_wave_it_needs(tile, kinds):
    """Whatever order the edges allow, with tasks run twice, replayed late and interleaved,
    every write comes from reads of the previous wave's chunks and no write lands in a
    freed array."""
    ctx = _ctx((90, 104), kinds=kinds)
    trs = _transitions()
    tiles = tile_grid(ctx.stored_shape, tile)
    reads = graph.read_sets(ctx, tile, tiles, trs)
    rng = random.Random(tile)
    for _ in range(4):
        _simulate(reads, len(tiles), rng)


def test_live_arrays_are_bounded_by_the_lookahead():
    """No task of wave ``c + LOOKAHEAD + 1`` can start before wave ``c`` is complete."""
    ctx = _ctx((90, 104))
    tiles = tile_grid(ctx.shape, 16)
    trs = _transitions()
    deps = graph.wave_dependencies(graph.read_sets(ctx, 16, tiles, trs), len(tiles))
    dsk, _ = graph.scale_graph("s", deps, lambda *a: None, lambda w, t: False)
    need = _graph_deps(dsk)

    def ancestors(key):
        seen, todo = set(), [key]
        while todo:
            for d in need[todo.pop()]:
                if d not in seen:
                    seen.add(d)
                    todo.append(d)
        return seen

    for w in range(graph.LOOKAHEAD, len(trs) + 1):
        anc = ancestors(("s", w, 0))
        assert {("s", w - graph.LOOKAHEAD, t) for t in range(len(tiles))} <= anc


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
    dsk, _ = graph.scale_graph("s", deps, lambda *a: None, lambda w, t: False)
    assert ("s", 1, len(tiles) - 1) not in _graph_deps(dsk)[("s", 2, 0)]
    assert len(deps[2][0]) < len(tiles)


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




def _record(calls, w, t, _deps):
    calls.append((w, t))


def _run_in_order_trace(deps, done):
    """Run a scale graph with :func:`graph.run_in_order`; every task checks that each key it
    names has run (or is a constant). Returns the tasks run and the keys reported."""
    ran, reported = [], []

    def task(w, t, values):
        needed = dsk[("s", w, t)][3]
        assert all(k in reported or not isinstance(dsk[k], tuple) for k in needed)
        assert len(values) == len(needed)
        ran.append((w, t))
        return (w, t)

    dsk, keys = graph.scale_graph("s", deps, task, done)
    values = graph.run_in_order(dsk, keys, lambda key, value: reported.append(key))
    assert all(values[k] == (k[1], k[2]) for k in keys if isinstance(dsk[k], tuple))
    return ran, reported


def test_run_in_order_runs_each_task_once_after_what_it_needs():
    """The one-thread runner against Dask's synchronous scheduler: the same tasks, each once,
    never before a key it names, and ``on_done`` for tasks only (not the constants)."""
    import dask.local

    ctx = _ctx((70, 90))
    tiles = tile_grid(ctx.shape, 16)
    deps = graph.wave_dependencies(graph.read_sets(ctx, 16, tiles, _transitions(4)),
                                   len(tiles))
    for done in (lambda w, t: False, lambda w, t: w == 0 or (w == 1 and t % 2 == 0)):
        ran, reported = _run_in_order_trace(deps, done)
        calls: list = []
        want, keys = graph.scale_graph("s", deps, functools.partial(_record, calls), done)
        dask.local.get_sync(want, keys)
        assert sorted(ran) == sorted(calls) and len(ran) == len(set(ran))
        assert [k for k in reported if k[1] != "wave"] == [("s", w, t) for w, t in ran]


def test_asymmetric_reads_are_safe_under_replays():
    """Random, asymmetric read sets (tile t reads u does not imply u reads t) under the
    adversarial scheduler of ``_simulate``."""
    rng = random.Random(3)
    for _ in range(20):
        ntiles, n = 6, 4
        reads = [[sorted({t, *rng.sample(range(ntiles), 2)}) for t in range(ntiles)]
                 for _ in range(n)]
        _simulate(reads, ntiles, rng)


def test_a_clean_schedule_writes_every_tile_once():
    rng = random.Random(5)
    ctx = _ctx((90, 104))
    tiles = tile_grid(ctx.shape, 23)
    reads = graph.read_sets(ctx, 23, tiles, _transitions())
    writes = _simulate(reads, len(tiles), rng, replay=0.0, twins=0.0)
    assert writes == len(tiles) * (len(_transitions()) + 1)
