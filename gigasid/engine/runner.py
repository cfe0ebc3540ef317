"""Run a job: build the reference pyramid and per-scale denoisers once, then sample.

Every scale runs its program as a sequence of transitions; each transition is a wave of
region tasks over the scale's tile grid (a single region for in-memory jobs). The state is
double-buffered: a wave reads ``x_t`` and writes ``x_t'`` into the other buffer.
"""

from __future__ import annotations

import os
import time
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch

from gigasid.apps import get_app
from gigasid.config import JobConfig
from gigasid.core import patches as P
from gigasid.core.denoisers import AnnSettings, make_denoiser
from gigasid.core.image_denoiser import blend_low_shape
from gigasid.core.pyramid import build_pyramid
from gigasid.core.schedule import make_schedule
from gigasid.engine import graph
from gigasid.engine.plan import JobPlan, make_plan
from gigasid.engine.progress import Reporter
from gigasid.engine.transition import ScaleContext, run_transition
from gigasid.errors import ConfigError, GigasidError
from gigasid.io.images import load_image

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def resolve_device(name: str) -> str:
    """``auto`` -> ``cuda`` when available, else ``cpu``; refuse ``cuda`` without a GPU."""
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device: cuda was requested but PyTorch sees no CUDA device; "
                          "use device: auto or cpu")
    return name


def set_threads(n: int | None) -> int:
    """Cap torch and FAISS threads (``None`` -> all cores) so they don't oversubscribe."""
    n = n or os.cpu_count() or 1
    torch.set_num_threads(n)
    try:
        import faiss

        faiss.omp_set_num_threads(n)
    except ImportError:  # pragma: no cover - faiss is a dependency
        pass
    return n


@dataclass
class Job:
    """A job's resolved state, built once and reused by every sample."""

    cfg: JobConfig
    plan: JobPlan
    reference: torch.Tensor  # (C, H, W) in [-1, 1]
    levels: list[torch.Tensor]
    contexts: list[ScaleContext]
    setup_seconds: float = 0.0
    input_sha256: str = ""


def prepare(cfg: JobConfig, reporter: Reporter | None = None,
            run_dir: Path | None = None) -> Job:
    """Load the reference, plan the job, build the pyramid, datasets and denoisers.

    For a persistent (Zarr) run in ``run_dir``, ANN indexes are loaded from ``RUN/index``
    (memory-mapped) when present and saved there when built, so a resumed run and every
    worker process share one trained index per scale.
    """
    t0 = time.perf_counter()
    device = resolve_device(cfg.device)
    set_threads(cfg.engine.threads)
    from gigasid.engine import reference as refmod
    from gigasid.io.images import file_fingerprint, image_shape

    in_shape = image_shape(cfg.input_path())
    fingerprint = file_fingerprint(cfg.input_path())
    on_disk = cfg.engine.reference == "disk" or (
        cfg.engine.reference == "auto" and in_shape[0] * in_shape[1] > refmod.STREAM_MIN_PIXELS)
    if on_disk and run_dir is None:
        raise ConfigError("engine.reference: disk (or an input above "
                          f"{refmod.STREAM_MIN_PIXELS // 2**20} MP) needs a run directory: "
                          "use `gigasid run`")
    plan = make_plan(cfg, in_shape, device, 3)
    index_dir = Path(run_dir) / "index" if run_dir is not None and plan.store == "zarr" else None
    if on_disk:
        # Decoded in bands and resampled band by band into memory-mapped files: a reference
        # larger than RAM never sits in this process (or in any worker).
        levels = refmod.build_levels_on_disk(
            cfg.input_path(), [s.ref_shape for s in plan.scales], Path(run_dir) / "reference",
            fingerprint)
        ref = levels[0]
    else:
        ref = (load_image(cfg.input_path()) * 2.0 - 1.0).to(device)
        levels = build_pyramid(ref, [s.ref_shape for s in plan.scales])
    compute = DTYPES[cfg.dtype]
    d = cfg.denoiser
    contexts = []
    for sp in plan.scales:
        if sp.denoised:
            lvl = levels[sp.index]
            if sp.backend == "ann":
                # Candidates are read by position from the level: no (N, D) patch matrix.
                data = P.PatchGrid(lvl.to(device), sp.patch, sp.dataset_stride)
            else:
                ys = P.patch_starts(lvl.shape[1], sp.patch, sp.dataset_stride)
                xs = P.patch_starts(lvl.shape[2], sp.patch, sp.dataset_stride)
                data = P.extract(lvl, ys, xs, sp.patch)
            ann = AnnSettings(k=d.k, index=d.index, nlist=d.nlist, nprobe=d.nprobe,
                              pq_m=d.pq_m, pca_dim=d.pca_dim, train_size=d.train_size,
                              seed=cfg.seed)
            path = None
            if index_dir is not None and sp.backend == "ann":
                Path(index_dir).mkdir(parents=True, exist_ok=True)
                path = str(Path(index_dir) / f"scale{sp.index}.faiss")
            den = make_denoiser(sp.backend, data, compute, ann, index_path=path)
        else:
            den = None
        window = P.fold_window(sp.patch, sp.fold_rho)
        coarser = plan.scales[sp.index + 1] if sp.index + 1 < plan.num_scales else None
        low = (blend_low_shape(sp.shape, cfg.pyramid.relative_scale, cfg.pyramid.min_short_side)
               if coarser else None)
        contexts.append(ScaleContext(
            scale=sp.index, shape=sp.shape, channels=ref.shape[0], patch=sp.patch,
            query_stride=sp.query_stride, window=window, denoiser=den,
            schedule=make_schedule(cfg.schedule, sp.num_steps, cfg.sigma_min),
            low_shape=low, coarser_shape=coarser.shape if coarser else None, device=device))
    job = Job(cfg, plan, ref, levels, contexts, input_sha256=fingerprint)
    get_app(cfg.app).prepare(job)  # validation only; the app object is rebuilt per run
    job.setup_seconds = time.perf_counter() - t0
    return job


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

        value = run_transition(ctx, tr, region, read_x, read_c if coarser_name else None, seed)
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
    shape = (ctx.channels, *ctx.shape)
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


def _worker_init(cfg_doc: dict, run_dir: str, threads: int) -> None:
    """Process-pool initializer: rebuild the job from the run directory once per worker."""
    from gigasid.config import from_dict
    from gigasid.engine.store import ZarrStore

    set_threads(threads)
    cfg = from_dict(cfg_doc)
    job = prepare(cfg, run_dir=Path(run_dir))
    app = get_app(cfg.app)
    app.prepare(job)
    _WORKER.update(job=job, store=ZarrStore(Path(run_dir)), app=app, programs={})


def _worker_tile(sample: int, scale: int, wave: int, ti: int, seed: int,
                 coarser_name: str | None) -> float:
    job, app = _WORKER["job"], _WORKER["app"]
    key = (scale, seed)
    if key not in _WORKER["programs"]:
        _WORKER["programs"][key] = app.program(job, scale, seed)
    return _tile_work(job, _WORKER["store"], _WORKER["programs"][key], sample, scale, wave,
                      ti, seed, coarser_name)


def repair_state(job: Job, store, sample: int, reporter: Reporter) -> list[int]:
    """Check the chunks a resumed sample still needs; recompute scales whose state is damaged.

    For every tile with progress, the chunks its latest done wave wrote and the one before
    it (the next wave may still read it) must be present and whole. If one is missing or
    truncated,
    that scale and all finer ones restart from their first wave: the output is deterministic,
    so the bytes are the same as if nothing had happened. Returns the restarted scales.
    """
    if not store.persistent:
        return []
    app = get_app(job.cfg.app)
    app.prepare(job)
    restarted: list[int] = []
    for s in reversed(range(job.plan.num_scales)):
        if restarted:
            store.unmark(f"x{sample}-s{s}-")
            restarted.append(s)
            continue
        n = len(app.program(job, s, job.cfg.seed + sample).transitions)
        sp = job.plan.scales[s]
        marks = store.marked(f"x{sample}-s{s}-w")
        tile = sp.tile or max(sp.shape)
        bad: list[int] = []
        for ti, (y0, _, x0, _) in enumerate(sp.tiles):
            # Waves overlap, so each tile has its own progress: its latest chunk and the
            # one before (which neighbours may still read) must both be whole.
            last = max((w for w in range(n + 1) if _mark(sample, s, w) in marks
                        or _mark(sample, s, w, ti) in marks), default=None)
            if last is None:
                continue
            names = {_buf(sample, s, w) for w in (last, last - 1) if w >= 0}
            if not all(store.chunk_ok(nm, (y0 // tile, x0 // tile)) for nm in names):
                bad.append(ti)
        if bad:
            reporter.event("state_damaged", sample=sample, scale=s, tiles=bad)
            store.unmark(f"x{sample}-s{s}-")
            restarted.append(s)
    return restarted


def generate(job: Job, store, seed: int, sample: int, reporter: Reporter,
             executor=None) -> str:
    """Run every scale of one sample (coarse to fine); returns the finest result's name."""
    app = get_app(job.cfg.app)
    app.prepare(job)
    coarser = None
    for s in reversed(range(job.plan.num_scales)):
        program = app.program(job, s, seed)
        coarser = run_scale(job, store, program, sample, s, seed, coarser, reporter, executor)
    return coarser


def sample_once(job: Job, seed: int, reporter: Reporter | None = None,
                sample: int = 0) -> torch.Tensor:
    """Generate one sample in memory; returns ``(C, H, W)`` in ``[0, 1]`` (not clamped)."""
    from gigasid.engine.store import MemoryStore

    store = MemoryStore()
    name = generate(job, store, seed, sample, reporter or Reporter())
    return (store.whole(name) + 1.0) / 2.0


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
        doc = cfg.to_dict()
        doc["input"] = str(cfg.input_path().resolve())
        return ProcessPoolExecutor(e.workers, mp_context=ctx, initializer=_worker_init,
                                   initargs=(doc, str(run_dir), per_worker))
    if e.scheduler.startswith("tcp://"):
        raise ConfigError(f"engine.scheduler: {e.scheduler} (a Dask cluster) is not available "
                          "in this version; use sync, threads or processes")
    return None


def provenance(job: Job, sample: int) -> dict:
    """What made this image: version, resolved config, seed and input fingerprint."""
    from gigasid import __version__

    return {"title": f"gigasid {job.cfg.app} - {job.cfg.name} - sample {sample}",
            "gigasid": __version__, "app": job.cfg.app, "sample": sample,
            "seed": job.cfg.seed + sample, "input": str(job.cfg.input_path()),
            "input_sha256": job.input_sha256, "config": job.cfg.to_dict()}


def write_outputs(job: Job, store, name: str, out_dir: Path, sample: int) -> dict:
    """Finished float state -> uint8 RGB -> PNG and the deep-zoom outputs of ``output.formats``.

    Persistent runs convert tile by tile into ``out/image.zarr`` and every export streams
    from it; in-memory runs convert the whole (small) image at once.
    """
    from gigasid.io import export
    from gigasid.io.images import save_png, to_uint8

    h, w = job.plan.out_shape
    fmts = list(job.cfg.output.formats)
    dest = Path(out_dir) / "out"
    if job.plan.num_samples > 1:
        dest = dest / f"sample_{sample:03d}"
    written: dict = {}
    if store.persistent:
        # uncompressed full-width bands: the exports map these chunk files in place (no
        # decoding, no temporary copy); see export.create_image_zarr
        image = export.write_image_zarr(
            dest / "image.zarr", h, w,
            lambda y0, y1, x0, x1: to_uint8((store.read(name, (y0, y1, x0, x1)) + 1.0) / 2.0),
            tile=job.plan.scales[0].tile or 512)
        written["zarr"] = str(dest / "image.zarr")
    else:
        image = to_uint8((store.whole(name) + 1.0) / 2.0)
        if "zarr" in fmts:
            written["zarr"] = str(export.export_zarr(image, dest / "image.zarr"))
    prov = provenance(job, sample)
    if "png" in fmts:
        png = Path(out_dir) / f"sample_{sample:03d}.png"
        if not store.persistent:
            written["png"] = str(save_png(image, png))
        elif h * w <= PNG_MAX_PIXELS:
            written["png"] = str(export.export_png(image, png))
    deep = [f for f in fmts if f in ("tiff", "dzi", "preview", "viewer")]
    if deep:
        o = job.cfg.output
        opts = export.ExportOptions(
            tile_size=o.tile_size, tiff_compression=o.tiff_compression, quality=o.quality,
            dzi_tile_format=o.dzi_tile_format, dzi_container=o.dzi_container,
            preview_long_side=o.preview_long_side)
        files = export.export_all(image, dest, opts, prov, formats=deep, title=prov["title"])
        written.update({k: str(v) for k, v in files.items()})
    return written


#: Largest output also written as PNG (the whole image is assembled in memory for it).
PNG_MAX_PIXELS = 64 * 2**20


def run(cfg: JobConfig, out_dir: Path, reporter: Reporter, job: Job | None = None) -> dict:
    """Run (or resume) a whole job into ``out_dir``; returns paths and timings."""
    from gigasid.engine.store import MemoryStore, ZarrStore

    t_start = time.perf_counter()
    job = job or prepare(cfg, reporter, run_dir=out_dir)
    plan = job.plan
    reporter.event("setup_done", seconds=round(job.setup_seconds, 4))
    if plan.store == "zarr":
        store = ZarrStore(out_dir)
        cleaned = store.clean_partial_writes()
        if cleaned:
            reporter.event("resume_cleanup", partial_files=cleaned)
    else:
        store = MemoryStore()
    work_total = plan.est_sample_seconds * plan.num_samples
    reporter.event("job_start", app=cfg.app, out_shape=plan.out_shape,
                   num_scales=plan.num_scales, num_samples=plan.num_samples,
                   work_total=work_total, store=plan.store)
    outputs, sample_seconds = [], []
    executor = make_executor(cfg, out_dir)
    try:
        for i in range(cfg.num_samples):
            t0 = time.perf_counter()
            done_key = f"x{i}-written"
            if store.is_done(done_key):  # finished before an interruption: keep its files
                reporter.event("sample_skipped", sample=i, reason="already written")
                outputs.append({})
                sample_seconds.append(0.0)
                continue
            repair_state(job, store, i, reporter)
            name = generate(job, store, cfg.seed + i, i, reporter, executor)
            written = write_outputs(job, store, name, Path(out_dir), i)
            store.mark(done_key)
            store.drop(f"x{i}/")
            dt = time.perf_counter() - t0
            outputs.append(written)
            sample_seconds.append(dt)
            reporter.event("sample_done", sample=i, path=written.get("png") or written.get("zarr"),
                           seconds=round(dt, 4), seed=cfg.seed + i)
    finally:
        if executor is not None:
            executor.shutdown()
    total = time.perf_counter() - t_start
    reporter.event("job_done", seconds=round(total, 4), out_dir=str(out_dir))
    return {"samples": [o.get("png") for o in outputs], "outputs": outputs,
            "setup_seconds": job.setup_seconds, "sample_seconds": sample_seconds,
            "total_seconds": total, "plan": plan.to_dict()}


__all__ = ["GigasidError", "Job", "generate", "prepare", "run", "run_scale", "sample_once"]
