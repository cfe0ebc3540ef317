"""Run (or resume) a whole job into a run directory: prepare once, then every sample.

The pieces live in their own modules: :mod:`~gigasid.engine.job` (building a job),
:mod:`~gigasid.engine.execute` (tile graphs and executors), :mod:`~gigasid.engine.resume`
(resume repair) and :mod:`~gigasid.engine.outputs` (writing a sample's files).
"""

from __future__ import annotations

import time
from pathlib import Path

from gigasid.config import JobConfig
from gigasid.engine.execute import generate, make_executor, run_scale, sample_once
from gigasid.engine.job import Job, prepare, resolve_device, set_threads
from gigasid.engine.outputs import write_outputs
from gigasid.engine.progress import Reporter
from gigasid.engine.resume import repair_state
from gigasid.errors import GigasidError


def run(cfg: JobConfig, out_dir: Path, reporter: Reporter, job: Job | None = None,
        executor=None) -> dict:
    """Run (or resume) a whole job into ``out_dir``; returns paths and timings.

    ``executor`` (see :func:`~gigasid.engine.execute.make_executor`; made from the config if
    not given) is shut down when the job ends.
    """
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
    reporter.event("job_start", app=cfg.app, out_shape=plan.pixel_shape,
                   num_scales=plan.num_scales, num_samples=plan.num_samples,
                   work_total=work_total, store=plan.store)
    outputs, sample_seconds = [], []
    executor = executor or make_executor(cfg, out_dir)
    executor.start(job, out_dir, reporter)
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
            written = write_outputs(job, store, name, Path(out_dir), i, reporter)
            store.mark(done_key)
            store.drop(f"x{i}/")
            dt = time.perf_counter() - t0
            outputs.append(written)
            sample_seconds.append(dt)
            reporter.event("sample_done", sample=i, path=written.get("png") or written.get("zarr"),
                           seconds=round(dt, 4), seed=cfg.seed + i,
                           metrics=written.get("metrics", {}))
    finally:
        executor.shutdown()
    total = time.perf_counter() - t_start
    reporter.event("job_done", seconds=round(total, 4), out_dir=str(out_dir))
    return {"samples": [o.get("png") for o in outputs], "outputs": outputs,
            "metrics": [o.get("metrics", {}) for o in outputs],
            "setup_seconds": job.setup_seconds, "sample_seconds": sample_seconds,
            "total_seconds": total, "plan": plan.to_dict()}


__all__ = ["GigasidError", "Job", "generate", "prepare", "resolve_device", "run", "run_scale",
           "sample_once", "set_threads"]
