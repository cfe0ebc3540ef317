"""Run one sample's scales as Dask graphs of tile tasks: in this thread, on a pool, or on
a Dask distributed cluster (:mod:`gigasid.engine.cluster`).

Every scale runs its program as a sequence of transitions; each transition is a wave of
region tasks over the scale's tile grid (a single region for in-memory jobs). Each wave
writes its own array, which never changes once written, so any task can run again at any
time with the same result; an array is freed once no task can read it (see
:mod:`gigasid.engine.graph`). Worker processes rebuild the job once from the run directory;
only tile coordinates travel.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import Protocol

import torch

from gigasid.config import JobConfig
from gigasid.core.domain import read_window
from gigasid.engine import graph
from gigasid.engine.job import Job, set_threads
from gigasid.engine.progress import Reporter
from gigasid.engine.worker import tile_marker, tile_work, wave_array, worker_init, worker_tile


def run_scale(job: Job, store, program, sample: int, scale: int, seed: int,
              coarser_name: str | None, reporter: Reporter,
              executor: Executor | None = None) -> str:
    """Run one scale's program as a Dask graph of tile tasks; returns the result's name.

    Wave 0 writes the initial state, wave k the k-th transition, each into its own array.
    Each tile task waits only for the tiles it reads and for the wave ``LOOKAHEAD`` steps
    back (see :mod:`gigasid.engine.graph`), so waves overlap. Tiles already marked done (a
    resumed run) are not recomputed. A wave's marker is written once all its tiles are done;
    then the array nothing can read any more is deleted.
    """
    executor = executor or SyncExecutor()
    ctx = job.contexts[scale]
    sp = job.plan.scales[scale]
    n = len(program.transitions)
    ntiles = len(sp.tiles)
    shape = (ctx.channels, *ctx.stored_shape)
    reporter.event("scale_start", sample=sample, num_samples=job.plan.num_samples,
                   scale=scale, shape=sp.shape, num_transitions=n, tiles=ntiles)
    work = sp.est_seconds / max(1, n)
    marks = store.marked(f"x{sample}-s{scale}-w")
    waves_done = {w for w in range(n + 1) if tile_marker(sample, scale, w) in marks}

    def done(w: int, t: int) -> bool:
        return w in waves_done or tile_marker(sample, scale, w, t) in marks

    left = [sum(1 for t in range(ntiles) if not done(w, t)) for w in range(n + 1)]
    complete = [w for w in range(n + 1) if left[w] == 0]
    for w in complete:
        if w not in waves_done:  # every tile done, wave marker missing
            store.mark(tile_marker(sample, scale, w))
    newest = max(complete, default=-1)
    for w in range(max(0, newest - 1), n + 1):  # what a resumed scale still needs
        store.ensure(wave_array(sample, scale, w), shape, sp.tile)
    for w in complete:
        _collect(store, sample, scale, w)
    for w in range(1, n + 1):
        if left[w] == 0:
            reporter.event("step_done", sample=sample, num_samples=job.plan.num_samples,
                           scale=scale, step_index=w - 1, num_transitions=n,
                           seconds=0.0, work=work, resumed=True)
    if left[n] == 0:
        return wave_array(sample, scale, n)

    reads = graph.read_sets(ctx, sp.tile, sp.tiles, program.transitions)
    deps = graph.wave_dependencies(reads, ntiles)
    task = executor.tile_task(job, store, program, sample, scale, seed, coarser_name)
    dsk, keys = graph.scale_graph(f"x{sample}-s{scale}", deps, task, done)
    t_wave = [time.perf_counter()]

    def on_tile_done(key, result) -> None:
        _, w, t = key
        if w == "wave":
            return
        secs, computed = result
        reporter.event("tile_done", sample=sample, scale=scale, wave=w, tile=t,
                       seconds=round(secs, 4), computed=computed)
        left[w] -= 1
        if left[w] == 0:
            store.mark(tile_marker(sample, scale, w))
            _collect(store, sample, scale, w)
            if w > 0:
                tr = program.transitions[w - 1]
                now = time.perf_counter()
                reporter.event("step_done", sample=sample, num_samples=job.plan.num_samples,
                               scale=scale, step_index=w - 1, num_transitions=n,
                               t_from=tr.t_from, t_to=tr.t_to,
                               seconds=round(now - t_wave[0], 4), work=work)
                t_wave[0] = now

    executor.run_graph(dsk, keys, on_tile_done)
    return wave_array(sample, scale, n)


def _collect(store, sample: int, scale: int, complete_wave: int) -> None:
    """Free the array that no task can read now that ``complete_wave`` is complete."""
    old = graph.collectable(complete_wave)
    if old is not None:
        store.delete(wave_array(sample, scale, old))


def _local_tile_task(job, store, program, sample, scale, seed, coarser_name, wave, ti, _deps):
    return tile_work(job, store, program, sample, scale, wave, ti, seed, coarser_name)


def _process_tile_task(sample, scale, seed, coarser_name, wave, ti, _deps):
    return worker_tile(sample, scale, wave, ti, seed, coarser_name)


class Executor(Protocol):
    """What every scheduler implements (sync, threads, processes, a Dask cluster): the
    engine builds the same task graph for all of them and only asks for these four."""

    def start(self, job: Job, run_dir: Path, reporter: Reporter) -> None:
        """Called once the job is prepared (a cluster ships the run to its workers)."""

    def tile_task(self, job: Job, store, program, sample: int, scale: int, seed: int,
                  coarser_name: str | None) -> Callable:
        """The graph's task for one scale: called with ``(wave, tile, deps)``, returns
        ``(seconds, computed)``; what travels to a worker is up to the executor."""

    def run_graph(self, dsk: dict, keys: list, on_done: Callable) -> None:
        """Run a task graph to its ``keys``, calling ``on_done(key, result)`` per task."""

    def shutdown(self) -> None:
        """Release pools, processes or the cluster connection."""


class SyncExecutor:
    """Tile tasks one after another in this thread (:func:`graph.run_in_order`); the
    :class:`Executor` every other scheduler follows."""

    def start(self, job: Job, run_dir: Path, reporter: Reporter) -> None:
        pass

    def tile_task(self, job, store, program, sample, scale, seed, coarser_name):
        return partial(_local_tile_task, job, store, program, sample, scale, seed,
                       coarser_name)

    def run_graph(self, dsk: dict, keys: list, on_done) -> None:
        graph.run_in_order(dsk, keys, on_done)

    def shutdown(self) -> None:
        pass


class ThreadExecutor(SyncExecutor):
    """Tile tasks on a pool of threads sharing this process's job."""

    def __init__(self, workers: int, threads: int):
        # OpenMP thread counts are per thread: set them in every pool thread.
        self.pool = ThreadPoolExecutor(workers, thread_name_prefix="gigasid-tile",
                                       initializer=set_threads, initargs=(threads,))

    def run_graph(self, dsk: dict, keys: list, on_done) -> None:
        import dask.threaded

        dask.threaded.get(dsk, keys, pool=self.pool, chunksize=1,
                          callbacks=[_callback(on_done)])

    def shutdown(self) -> None:
        self.pool.shutdown()


class ProcessExecutor:
    """Tile tasks on spawned worker processes, each rebuilding the job from the run
    directory once (indexes memory-mapped from ``RUN/index``); only coordinates travel."""

    def __init__(self, cfg: JobConfig, run_dir: Path, workers: int, threads: int):
        import multiprocessing

        ctx = multiprocessing.get_context("spawn")  # fork after torch/OpenMP init can hang
        self.pool = ProcessPoolExecutor(
            workers, mp_context=ctx, initializer=worker_init,
            initargs=(cfg.to_dict(), str(Path(cfg.base_dir).resolve()), str(run_dir), threads))

    def start(self, job: Job, run_dir: Path, reporter: Reporter) -> None:
        pass

    def tile_task(self, job, store, program, sample, scale, seed, coarser_name):
        return partial(_process_tile_task, sample, scale, seed, coarser_name)

    def run_graph(self, dsk: dict, keys: list, on_done) -> None:
        import dask.multiprocessing

        try:
            dask.multiprocessing.get(dsk, keys, pool=self.pool, chunksize=1,
                                     optimize_graph=False, callbacks=[_callback(on_done)])
        except dask.multiprocessing.RemoteException as exc:
            # A worker process failed: raise its own exception (e.g. disk full), not the
            # wrapper that carries the remote traceback in its message.
            raise exc.exception from None

    def shutdown(self) -> None:
        self.pool.shutdown()


def _callback(on_done):
    """Dask local-scheduler callbacks calling ``on_done(key, result)`` after each task."""
    return (None, None, None, lambda key, result, *_: on_done(key, result), None)


def generate(job: Job, store, seed: int, sample: int, reporter: Reporter,
             executor: Executor | None = None) -> str:
    """Run every scale of one sample (coarse to fine); returns the finest result's name."""
    coarser = None
    for s in reversed(range(job.plan.num_scales)):
        program = job.program(s, seed)
        coarser = run_scale(job, store, program, sample, s, seed, coarser, reporter, executor)
    fin = job.app.finish(job.view, seed)
    if fin is not None:
        run_finish(job, store, coarser, fin, sample, reporter)
    return coarser


def run_finish(job: Job, store, name: str, fin, sample: int, reporter: Reporter) -> None:
    """Apply the application's :class:`~gigasid.apps.base.Finish` to the finest result
    ``name`` in place, once.

    The whole chunks around the region are copied aside first (marked when complete), and
    the output is computed from that copy and written as whole chunks: a run killed at any
    point recomputes the same bytes from the copy, never from a half-written result.
    """
    done = f"x{sample}-finish"
    if store.is_done(done):
        return
    sp = job.plan.scales[0]
    h, w = sp.stored_shape
    tile = sp.tile or max(h, w)
    y0, y1, x0, x1 = fin.region
    big = ((y0 // tile) * tile, min(h, -(-y1 // tile) * tile),
           (x0 // tile) * tile, min(w, -(-x1 // tile) * tile))
    whole = (0, big[1] - big[0], 0, big[3] - big[2])
    saved = f"x{sample}/finish-input"
    if not store.is_done(f"x{sample}-finish-input"):
        store.ensure(saved, (job.contexts[0].channels, whole[1], whole[3]), max(whole))
        store.write(saved, whole, store.read(name, big))
        store.mark(f"x{sample}-finish-input")
    t0 = time.perf_counter()
    before = store.read(saved, whole).clone()
    iy, ix = y0 - big[0], x0 - big[2]
    after = before.clone()
    after[:, iy:iy + y1 - y0, ix:ix + x1 - x0] = fin.apply(
        before[:, iy:iy + y1 - y0, ix:ix + x1 - x0].clone())
    store.write(name, big, after)
    store.mark(done)
    reporter.event("finish_done", sample=sample, region=list(fin.region),
                   seconds=round(time.perf_counter() - t0, 4))


def sample_once(job: Job, seed: int, reporter: Reporter | None = None,
                sample: int = 0) -> torch.Tensor:
    """Generate one sample in memory; returns ``(C, H, W)`` in ``[0, 1]`` (not clamped)."""
    from gigasid.engine.store import MemoryStore

    store = MemoryStore()
    reporter = reporter or Reporter()
    name = generate(job, store, seed, sample, reporter, SyncExecutor())
    h, w = job.plan.pixel_shape
    return (pixel_reader(job, store, name, reporter)((0, h, 0, w)) + 1.0) / 2.0


def read_finest(job: Job, store, name: str, win) -> torch.Tensor:
    """Full-image window ``win`` of the finest scale's result ``name`` in the sampler's
    space (mirror halves reflected from the stored part)."""
    return read_window(lambda r: store.read(name, r), job.contexts[0].domain, win)


def pixel_reader(job: Job, store, name: str, reporter: Reporter | None = None):
    """``read(full_pixel_window) -> (3, h, w)`` in ``[-1, 1]`` of the finished result
    ``name``: the codec's streamed decode (the identity for pixel jobs)."""
    return job.codec.decoder(lambda r: store.read(name, r), job.contexts[0].domain, reporter)


def make_executor(cfg: JobConfig, run_dir: Path | None = None) -> Executor:
    """The tile executor of ``engine.scheduler``.

    ``sync``: tiles in this thread. ``threads``: a thread pool sharing this process's job.
    ``processes``: spawned worker processes, each rebuilding the job from the run directory
    once. ``local-cluster`` / ``tcp://``: a Dask distributed cluster
    (:mod:`gigasid.engine.cluster`; normally connected by the CLI before any work). Threads
    per worker = cores // workers.
    """
    e = cfg.engine
    per_worker = max(1, (e.threads or os.cpu_count() or 1) // e.workers)
    if e.scheduler == "threads" and e.workers > 1:
        set_threads(per_worker)
        return ThreadExecutor(e.workers, per_worker)
    if e.scheduler == "processes":
        return ProcessExecutor(cfg, run_dir, e.workers, per_worker)
    if is_cluster(e.scheduler):
        from gigasid.engine.cluster import connect

        return connect(cfg)
    return SyncExecutor()


def is_cluster(scheduler: str) -> bool:
    """Whether ``engine.scheduler`` names a Dask distributed cluster."""
    return scheduler == "local-cluster" or "://" in scheduler
