"""The tile work, wherever it runs: one tile task, and the job a worker process keeps.

A tile task (:func:`tile_work`) is the unit every scheduler runs: in this thread, on a
thread pool, in spawned worker processes (:func:`worker_init` rebuilds the job once per
process, :func:`worker_tile` runs a task there) and on Dask workers
(:mod:`gigasid.engine.cluster` keeps a :class:`WorkerJob` per run). Only coordinates travel
between processes; the pixels are in the run directory.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from gigasid.engine.allocator import tune_malloc
from gigasid.engine.job import Job, prepare, set_threads
from gigasid.engine.transition import run_transition


def tile_marker(sample: int, scale: int, wave: int, tile: int | None = None) -> str:
    """The store marker of a finished tile task (or, without ``tile``, of a whole wave)."""
    base = f"x{sample}-s{scale}-w{wave}"
    return base if tile is None else f"{base}-t{tile}"


def wave_array(sample: int, scale: int, wave: int) -> str:
    """The array wave ``wave`` of a scale writes (each wave has its own; see graph)."""
    return f"x{sample}/s{scale}/w{wave}"


def tile_work(job: Job, store, program, sample: int, scale: int, wave: int, ti: int,
               seed: int, coarser_name: str | None) -> tuple[float, bool]:
    """Compute one tile of one wave and write it, unless it is done already.

    Safe to run any number of times, at any moment: a task whose marker exists returns at
    once; otherwise it reads arrays that never change once written and writes the bytes any
    other run of it writes. The marker is checked again before the write, so a late twin
    (a duplicate of a task that finished elsewhere) never writes after later waves moved on.
    Returns ``(seconds, computed)``.
    """
    t0 = time.perf_counter()
    key = tile_marker(sample, scale, wave, ti)
    if store.is_done(key):
        return 0.0, False
    sp = job.plan.scales[scale]
    region = sp.tiles[ti]
    if wave == 0:
        value = program.init(region)
    else:
        src = wave_array(sample, scale, wave - 1)
        ctx = job.contexts[scale]
        tr = program.transitions[wave - 1]

        def read_x(win):
            return store.read(src, win)

        def read_c(win):
            return store.read(coarser_name, win)

        value = run_transition(ctx, program, tr, region, read_x,
                               read_c if coarser_name else None, seed)
    if store.is_done(key):  # a twin finished first; its reads may since have been freed
        return time.perf_counter() - t0, False
    store.write(wave_array(sample, scale, wave), region, value)
    store.mark(key)  # only after the chunk write returned (and reached the disk)
    return time.perf_counter() - t0, True



@dataclass
class WorkerJob:
    """What a worker process keeps per run: the job rebuilt from the run directory
    (indexes memory-mapped), a Zarr store on that directory and the programs it built."""

    job: Job
    store: object
    programs: dict = field(default_factory=dict)

    @classmethod
    def load(cls, cfg_doc: dict, base_dir: str, run_dir: str) -> WorkerJob:
        from gigasid.config import from_dict
        from gigasid.engine.store import ZarrStore

        cfg = from_dict(cfg_doc)
        cfg.base_dir = base_dir  # relative inputs, masks, ... resolve as in the parent
        return cls(prepare(cfg, run_dir=Path(run_dir)), ZarrStore(Path(run_dir)))

    def tile(self, sample: int, scale: int, wave: int, ti: int, seed: int,
             coarser_name: str | None) -> tuple[float, bool]:
        """Run one tile task (see :func:`tile_work`)."""
        key = (scale, seed)
        if key not in self.programs:
            self.programs[key] = self.job.program(scale, seed)
        return tile_work(self.job, self.store, self.programs[key], sample, scale, wave, ti,
                          seed, coarser_name)


_WORKER: dict = {}


def worker_init(cfg_doc: dict, base_dir: str, run_dir: str, threads: int) -> None:
    """Process-pool initializer: rebuild the job from the run directory once per worker."""
    tune_malloc()
    _WORKER["job"] = WorkerJob.load(cfg_doc, base_dir, run_dir)
    set_threads(threads)  # after the load: prepare() sets the job's own count (all cores)


def worker_tile(sample: int, scale: int, wave: int, ti: int, seed: int,
                coarser_name: str | None) -> tuple[float, bool]:
    """A tile task in a pool process (after :func:`worker_init`)."""
    return _WORKER["job"].tile(sample, scale, wave, ti, seed, coarser_name)
