"""The task graph of one scale: one task per (wave, tile), with exactly the edges it needs.

A scale's program is an init wave followed by one wave per transition. Wave ``w`` reads
buffer ``(w - 1) % 2`` on each tile's input window (tile + patch halo + blend support) and
writes its own tile of buffer ``w % 2``. Two kinds of edges follow:

* read after write: ``(w, t)`` needs ``(w - 1, u)`` for every tile ``u`` its window touches;
* write after read: ``(w, t)`` overwrites tile ``t`` of the buffer that wave ``w - 2`` wrote,
  so it waits for every ``(w - 1, u)`` whose window reads tile ``t``.

With only these edges there is no barrier between waves: a corner of the image can run a
few steps ahead of the opposite corner, which keeps every worker busy at the end of a wave.
Tiles already marked done (a resumed run) become constants, so they are never recomputed.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

from gigasid.core.domain import Domain, stored_ranges
from gigasid.engine.transition import Region, ScaleContext, Transition, input_windows

Key = tuple


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
    waits for (wave 0 waits for nothing)."""
    deps: list[list[list[int]]] = [[[] for _ in range(num_tiles)]]
    for w in range(1, len(reads) + 1):
        need = [set(r) for r in reads[w - 1]]
        if w >= 2:
            for u, touched in enumerate(reads[w - 2]):
                for t in touched:
                    need[t].add(u)
        deps.append([sorted(s) for s in need])
    return deps


def scale_graph(name: str, deps: list[list[list[int]]], task: Callable,
                done: Callable[[int, int], bool]) -> tuple[dict, list[Key]]:
    """A Dask graph ``{(name, wave, tile): (task, wave, tile, [dependency keys])}``.

    ``task(wave, tile, deps)`` computes and stores one tile (it ignores the dependency
    values: they only order the work). Tiles for which ``done(wave, tile)`` holds are
    constants. Returns the graph and the keys of the last wave, whose ancestors are every
    task of the scale (each tile reads itself).
    """
    dsk: dict = {}
    for w, per_tile in enumerate(deps):
        for t, ds in enumerate(per_tile):
            key = (name, w, t)
            if done(w, t):
                dsk[key] = 0.0
            else:
                dsk[key] = (task, w, t, [(name, w - 1, u) for u in ds])
    last = len(deps) - 1
    return dsk, [(name, last, t) for t in range(len(deps[last]))]
