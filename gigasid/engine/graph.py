"""The task graph of one scale: one task per (wave, tile), with exactly the edges it needs.

A scale's program is an init wave followed by one wave per transition. Every wave writes its
own array (``w0, w1, ...``): a chunk, once written, never changes, so a task run again — a
result lost with a dead worker, a duplicate, a replay in any order — reads the same bytes and
writes the same bytes. Two kinds of edges:

* read after write: ``(w, t)`` needs ``(w - 1, u)`` for every tile ``u`` its window touches;
* look-ahead bound: ``(w, t)`` waits for the whole of wave ``w - LOOKAHEAD`` (one barrier
  node per wave, so the edge count stays linear in the number of tiles).

Without a barrier between consecutive waves a corner of the image can run a step ahead of the
opposite corner, which keeps every worker busy at the end of a wave; the bound keeps the number
of live arrays at ``LOOKAHEAD + 1``: once wave ``c`` is complete, nothing can read wave
``c - 1`` again (see :func:`collectable`). Tiles already marked done (a resumed run) become
constants, so they are never recomputed.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

from gigasid.core.domain import Domain, stored_ranges
from gigasid.engine.transition import Region, ScaleContext, Transition, input_windows

Key = tuple

#: How many waves a tile may run ahead of the slowest tile (live state arrays = this + 1).
LOOKAHEAD = 2


def tiles_touching(shape: tuple[int, int], tile: int, window: Region,
                   domain: Domain | None = None) -> list[int]:
    """Row-major indices of the tiles of a ``tile``-sided grid over the stored ``shape`` that
    a full-image ``window`` reads (through ``domain``'s wrap and reflection, if given)."""
    if tile <= 0:
        return [0]
    ncols = math.ceil(shape[1] / tile)
    if domain is None:
        rows, cols = [(window[0], window[1])], [(window[2], window[3])]
    else:
        rows, cols = stored_ranges(domain, window)

    def span(ranges, n):
        out: set[int] = set()
        for a, b in ranges:
            out.update(range(max(0, a) // tile, (min(b, n) - 1) // tile + 1))
        return sorted(out)

    return [iy * ncols + ix for iy in span(rows, shape[0]) for ix in span(cols, shape[1])]


def read_sets(ctx: ScaleContext, tile: int, tiles: Sequence[Region],
              transitions: Sequence[Transition]) -> list[list[list[int]]]:
    """``reads[k][t]``: the tiles whose state transition ``k`` reads to compute tile ``t``.

    The window depends on the transition only through its blend flag, so at most two
    geometries are computed whatever the number of steps.
    """
    by_blend: dict[bool, list[list[int]]] = {}
    out = []
    for tr in transitions:
        if tr.blend not in by_blend:
            by_blend[tr.blend] = [
                tiles_touching(ctx.stored_shape, tile, input_windows(ctx, tr, r)[3], ctx.domain)
                for r in tiles]
        out.append(by_blend[tr.blend])
    return out


def wave_dependencies(reads: list[list[list[int]]], num_tiles: int) -> list[list[list[int]]]:
    """``deps[w][t]`` for waves ``w = 0 .. n``: the tiles of wave ``w - 1`` that ``(w, t)``
    reads (wave 0 reads nothing). The look-ahead bound is added by :func:`scale_graph`."""
    return [[[] for _ in range(num_tiles)]] + [[sorted(set(r)) for r in rd] for rd in reads]


def collectable(complete_wave: int) -> int | None:
    """The wave whose array nothing can read once wave ``complete_wave`` is complete (every
    tile done): its readers were that wave's tasks, and later waves read later arrays."""
    return complete_wave - 1 if complete_wave >= 1 else None


def wave_key(name: str, wave: int) -> Key:
    """Key of the barrier node that completes when every tile of ``wave`` is done."""
    return (name, "wave", wave)


def scale_graph(name: str, deps: list[list[list[int]]], task: Callable,
                done: Callable[[int, int], bool]) -> tuple[dict, list[Key]]:
    """A Dask graph ``{(name, wave, tile): (task, wave, tile, [dependency keys])}``.

    ``task(wave, tile, deps)`` computes and stores one tile (it ignores the dependency
    values: they only order the work). Tiles for which ``done(wave, tile)`` holds are
    constants. Barrier nodes :func:`wave_key` join each wave that a later wave waits for.
    Returns the graph and the keys of the last wave, whose ancestors are every task of the
    scale (each tile reads itself).
    """
    dsk: dict = {}
    nwaves = len(deps)
    for w, per_tile in enumerate(deps):
        for t, ds in enumerate(per_tile):
            key = (name, w, t)
            if done(w, t):
                dsk[key] = 0.0
                continue
            need = [(name, w - 1, u) for u in ds]
            if w >= LOOKAHEAD:
                need.append(wave_key(name, w - LOOKAHEAD))
            dsk[key] = (task, w, t, need)
    for w in range(max(0, nwaves - LOOKAHEAD)):
        tiles = [(name, w, t) for t in range(len(deps[w]))]
        all_done = all(not isinstance(dsk[k], tuple) for k in tiles)
        dsk[wave_key(name, w)] = 0.0 if all_done else (_joined, tiles)
    last = nwaves - 1
    return dsk, [(name, last, t) for t in range(len(deps[last]))]


def _joined(_values) -> float:
    return 0.0


def _is_task(node) -> bool:
    return isinstance(node, tuple) and len(node) > 0 and callable(node[0])


def _keys_in(arg, dsk: dict) -> list:
    """The graph keys an argument of a task names (a key, or a list of keys)."""
    if isinstance(arg, list):
        return [a for a in arg if isinstance(a, tuple) and a in dsk]
    return [arg] if isinstance(arg, tuple) and arg in dsk else []


def run_in_order(dsk: dict, keys: Sequence[Key], on_done: Callable[[Key, object], None]) -> dict:
    """Run a graph of :func:`scale_graph`'s form in this thread; returns every key's value.

    A task ``(func, *args)`` runs once every key among its arguments (a key, or a list of
    keys) has a value, with those values in their place; any other node is a constant.
    Tasks run depth first from ``keys`` in their order (what Dask's synchronous scheduler
    does, without importing Dask for a one-thread run); ``on_done(key, value)`` follows
    each task, not the constants.
    """
    values: dict = {}

    def resolve(arg):
        if isinstance(arg, list):
            return [values[a] if isinstance(a, tuple) and a in dsk else a for a in arg]
        return values[arg] if isinstance(arg, tuple) and arg in dsk else arg

    for root in keys:
        stack = [(root, False)]
        while stack:
            key, ready = stack.pop()
            if key in values:
                continue
            node = dsk[key]
            if not _is_task(node):
                values[key] = node
            elif ready:
                values[key] = value = node[0](*(resolve(a) for a in node[1:]))
                on_done(key, value)
            else:
                stack.append((key, True))
                for arg in reversed(node[1:]):
                    stack.extend((k, False) for k in reversed(_keys_in(arg, dsk))
                                 if k not in values)
    return values
