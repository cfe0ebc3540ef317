"""Run one sample's scales as Dask graphs of tile tasks, in this thread or on a pool.

Every scale runs its program as a sequence of transitions; each transition is a wave of
region tasks over the scale's tile grid (a single region for in-memory jobs). The state is
double-buffered: a wave reads ``x_t`` and writes ``x_t'`` into the other buffer. Worker
processes rebuild the job once from the run directory; only tile coordinates travel.
"""

from __future__ import annotations

import os
import time
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from functools import partial
from pathlib import Path

import torch

from gigasid.config import JobConfig
from gigasid.core.domain import read_window
from gigasid.engine import graph
from gigasid.engine.job import Job, prepare, set_threads
from gigasid.engine.progress import Reporter
from gigasid.engine.transition import run_transition


def _mark(sample: int, scale: int, wave: int, tile: int | None = None) -> str:
    base = f"x{sample}-s{scale}-w{wave}"
    return base if tile is None else f"{base}-t{tile}"


def _buf(sample: int, scale: int, wave: int) -> str:
    return f"x{sample}/s{scale}/b{wave % 2}"


def _tile_work(job: Job, store, program, sample: int, scale: int, wave: int, ti: int,
               seed: int, coarser_name: str | None) -> float:
    """Compute one tile of one wave and write it; returns seconds spent."""
    t0 = time.perf_counter()
    sp = job.plan.scales[scale]
    region = sp.tiles[ti]
    if wave == 0:
        value = program.init(region)
    else:
        src = _buf(sample, scale, wave - 1)
        ctx = job.contexts[scale]
        tr = program.transitions[wave - 1]

        def read_x(win):
            return store.read(src, win)

        def read_c(win):
            return store.read(coarser_name, win)

        value = run_transition(ctx, program, tr, region, read_x,
                               read_c if coarser_name else None, seed)
    store.write(_buf(sample, scale, wave), region, value)
    store.mark(_mark(sample, scale, wave, ti))  # only after the chunk write returned
    return time.perf_counter() - t0


def run_scale(job: Job, store, program, sample: int, scale: int, seed: int,
              coarser_name: str | None, reporter: Reporter, executor=None) -> str:
    """Run one scale's program as a Dask graph of tile tasks; returns the result's name.

    Wave 0 writes the initial state, wave k the k-th transition. Each tile task waits only
    for the tiles it reads and for the readers of the chunk it overwrites (see
    :mod:`gigasid.engine.graph`), so waves overlap. Tiles already marked done (a resumed
    run) are not recomputed. A wave's marker is written once all its tiles are done.
    """
    ctx = job.contexts[scale]
    sp = job.plan.scales[scale]
    n = len(program.transitions)
    ntiles = len(sp.tiles)
    shape = (ctx.channels, *ctx.stored_shape)
    for b in range(min(2, n + 1)):
        store.ensure(_buf(sample, scale, b), shape, sp.tile)
    reporter.event("scale_start", sample=sample, num_samples=job.plan.num_samples,
                   scale=scale, shape=sp.shape, num_transitions=n, tiles=ntiles)
    work = sp.est_seconds / max(1, n)
    marks = store.marked(f"x{sample}-s{scale}-w")
    waves_done = {w for w in range(n + 1) if _mark(sample, scale, w) in marks}

    def done(w: int, t: int) -> bool:
        return w in waves_done or _mark(sample, scale, w, t) in marks

    left = [sum(1 for t in range(ntiles) if not done(w, t)) for w in range(n + 1)]
    for w in range(n + 1):
        if left[w] == 0 and w not in waves_done:  # every tile done, wave marker missing
            store.mark(_mark(sample, scale, w))
    for w in range(1, n + 1):
        if left[w] == 0:
            reporter.event("step_done", sample=sample, num_samples=job.plan.num_samples,
                           scale=scale, step_index=w - 1, num_transitions=n,
                           seconds=0.0, work=work, resumed=True)
    if left[n] == 0:
        return _buf(sample, scale, n)

    reads = graph.read_sets(ctx, sp.tile, sp.tiles, program.transitions)
    deps = graph.wave_dependencies(reads, ntiles)
    if isinstance(executor, ProcessPoolExecutor):
        # Workers hold their own job (built once per process from the run directory); only
        # tile coordinates travel, never arrays or indexes.
        task = partial(_process_tile_task, sample, scale, seed, coarser_name)
    else:
        task = partial(_local_tile_task, job, store, program, sample, scale, seed, coarser_name)
    dsk, keys = graph.scale_graph(f"x{sample}-s{scale}", deps, task, done)
    t_wave = [time.perf_counter()]

    def on_tile_done(key, secs, *_):
        _, w, t = key
        reporter.event("tile_done", sample=sample, scale=scale, wave=w, tile=t,
                       seconds=round(secs, 4))
        left[w] -= 1
        if left[w] == 0:
            store.mark(_mark(sample, scale, w))
            if w > 0:
                tr = program.transitions[w - 1]
                now = time.perf_counter()
                reporter.event("step_done", sample=sample, num_samples=job.plan.num_samples,
                               scale=scale, step_index=w - 1, num_transitions=n,
                               t_from=tr.t_from, t_to=tr.t_to,
                               seconds=round(now - t_wave[0], 4), work=work)
                t_wave[0] = now

    _execute(dsk, keys, executor, on_tile_done)
    return _buf(sample, scale, n)


def _local_tile_task(job, store, program, sample, scale, seed, coarser_name, wave, ti, _deps):
    return _tile_work(job, store, program, sample, scale, wave, ti, seed, coarser_name)


def _process_tile_task(sample, scale, seed, coarser_name, wave, ti, _deps):
    return _worker_tile(sample, scale, wave, ti, seed, coarser_name)


def _execute(dsk: dict, keys: list, executor, on_done) -> None:
    """Run a graph with Dask's local scheduler on our executor (None: in this thread)."""
    import dask.local
    import dask.multiprocessing
    import dask.threaded

    callbacks = [(None, None, None, on_done, None)]
    try:
        if executor is None:
            dask.local.get_sync(dsk, keys, callbacks=callbacks)
        elif isinstance(executor, ProcessPoolExecutor):
            dask.multiprocessing.get(dsk, keys, pool=executor, chunksize=1,
                                     optimize_graph=False, callbacks=callbacks)
        else:
            dask.threaded.get(dsk, keys, pool=executor, chunksize=1, callbacks=callbacks)
    except dask.multiprocessing.RemoteException as exc:
        # A worker process failed: raise its own exception (e.g. disk full), not the
        # wrapper that carries the remote traceback in its message.
        raise exc.exception from None


_WORKER: dict = {}


def _worker_init(cfg_doc: dict, base_dir: str, run_dir: str, threads: int) -> None:
    """Process-pool initializer: rebuild the job from the run directory once per worker."""
    from gigasid.config import from_dict
    from gigasid.engine.store import ZarrStore

    set_threads(threads)
    cfg = from_dict(cfg_doc)
    cfg.base_dir = base_dir  # relative inputs, masks, ... resolve as in the parent
    job = prepare(cfg, run_dir=Path(run_dir))
    _WORKER.update(job=job, store=ZarrStore(Path(run_dir)), programs={})


def _worker_tile(sample: int, scale: int, wave: int, ti: int, seed: int,
                 coarser_name: str | None) -> float:
    job = _WORKER["job"]
    key = (scale, seed)
    if key not in _WORKER["programs"]:
        _WORKER["programs"][key] = job.program(scale, seed)
    return _tile_work(job, _WORKER["store"], _WORKER["programs"][key], sample, scale, wave,
                      ti, seed, coarser_name)


def generate(job: Job, store, seed: int, sample: int, reporter: Reporter,
             executor=None) -> str:
    """Run every scale of one sample (coarse to fine); returns the finest result's name."""
    coarser = None
    for s in reversed(range(job.plan.num_scales)):
        program = job.program(s, seed)
        coarser = run_scale(job, store, program, sample, s, seed, coarser, reporter, executor)
    return coarser


def sample_once(job: Job, seed: int, reporter: Reporter | None = None,
                sample: int = 0) -> torch.Tensor:
    """Generate one sample in memory; returns ``(C, H, W)`` in ``[0, 1]`` (not clamped)."""
    from gigasid.engine.store import MemoryStore

    store = MemoryStore()
    reporter = reporter or Reporter()
    name = generate(job, store, seed, sample, reporter)
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


def make_executor(cfg: JobConfig, run_dir: Path | None = None):
    """The tile executor of ``engine.scheduler`` (None = run tiles in this thread).

    ``threads``: a thread pool sharing this process's job. ``processes``: a pool of spawned
    worker processes, each rebuilding the job from the run directory once (indexes are
    memory-mapped from ``RUN/index``). Threads per worker = cores // workers.
    """
    e = cfg.engine
    per_worker = max(1, (e.threads or os.cpu_count() or 1) // e.workers)
    if e.scheduler == "threads" and e.workers > 1:
        set_threads(per_worker)
        return ThreadPoolExecutor(e.workers, thread_name_prefix="gigasid-tile")
    if e.scheduler == "processes":
        import multiprocessing

        ctx = multiprocessing.get_context("spawn")  # fork after torch/OpenMP init can hang
        return ProcessPoolExecutor(e.workers, mp_context=ctx, initializer=_worker_init,
                                   initargs=(cfg.to_dict(), str(Path(cfg.base_dir).resolve()),
                                             str(run_dir), per_worker))
    return None


