"""Run a job: build the reference pyramid and per-scale denoisers once, then sample.

Every scale runs its program as a sequence of transitions; each transition is a wave of
region tasks over the scale's tile grid (a single region for in-memory jobs). The state is
double-buffered: a wave reads ``x_t`` and writes ``x_t'`` into the other buffer.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from gigasid.apps import get_app
from gigasid.config import JobConfig
from gigasid.core import patches as P
from gigasid.core.denoisers import AnnSettings, make_denoiser
from gigasid.core.image_denoiser import blend_low_shape
from gigasid.core.pyramid import build_pyramid
from gigasid.core.schedule import make_schedule
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
    timings: dict = field(default_factory=dict)


def prepare(cfg: JobConfig, reporter: Reporter | None = None) -> Job:
    """Load the reference, plan the job, build the pyramid, datasets and denoisers."""
    t0 = time.perf_counter()
    device = resolve_device(cfg.device)
    set_threads(cfg.engine.threads)
    ref01 = load_image(cfg.input_path())
    ref = (ref01 * 2.0 - 1.0).to(device)
    plan = make_plan(cfg, tuple(ref.shape[-2:]), device, ref.shape[0])
    levels = build_pyramid(ref, [s.ref_shape for s in plan.scales])
    compute = DTYPES[cfg.dtype]
    d = cfg.denoiser
    contexts = []
    for sp in plan.scales:
        if sp.denoised:
            lvl = levels[sp.index]
            ys = P.patch_starts(lvl.shape[1], sp.patch, sp.dataset_stride)
            xs = P.patch_starts(lvl.shape[2], sp.patch, sp.dataset_stride)
            data = P.extract(lvl, ys, xs, sp.patch)
            ann = AnnSettings(k=d.k, index=d.index, nlist=d.nlist, nprobe=d.nprobe,
                              pq_m=d.pq_m, pca_dim=d.pca_dim, train_size=d.train_size,
                              seed=cfg.seed)
            den = make_denoiser(sp.backend, data, compute, ann)
        else:
            den = None
        g = P.fold_weights(sp.patch, sp.fold_rho, 1)[: sp.patch]  # first row's 1-D window
        window = _window_1d(sp.patch, sp.fold_rho)
        del g
        coarser = plan.scales[sp.index + 1] if sp.index + 1 < plan.num_scales else None
        low = (blend_low_shape(sp.shape, cfg.pyramid.relative_scale, cfg.pyramid.min_short_side)
               if coarser else None)
        contexts.append(ScaleContext(
            scale=sp.index, shape=sp.shape, channels=ref.shape[0], patch=sp.patch,
            query_stride=sp.query_stride, window=window, denoiser=den,
            schedule=make_schedule(cfg.schedule, sp.num_steps, cfg.sigma_min),
            low_shape=low, coarser_shape=coarser.shape if coarser else None, device=device))
    job = Job(cfg, plan, ref, levels, contexts)
    get_app(cfg.app).prepare(job)  # validation only; the app object is rebuilt per run
    job.setup_seconds = time.perf_counter() - t0
    return job


def _window_1d(patch: int, rho: float) -> torch.Tensor:
    if math.isinf(rho):
        return torch.ones(patch, dtype=torch.float64)
    u = torch.linspace(-1.0, 1.0, patch, dtype=torch.float64)
    return torch.exp(-0.5 * (u / rho) ** 2)


def run_scale(job: Job, program, scale: int, seed: int, coarser: torch.Tensor | None,
              reporter: Reporter, sample: int) -> torch.Tensor:
    """Run one scale's program region by region; returns the finished state (in memory)."""
    ctx = job.contexts[scale]
    sp = job.plan.scales[scale]
    h, w = ctx.shape
    buf = torch.empty((ctx.channels, h, w), dtype=torch.float32, device=ctx.device)
    for (y0, y1, x0, x1) in sp.tiles:
        buf[:, y0:y1, x0:x1] = program.init((y0, y1, x0, x1))
    n = len(program.transitions)
    reporter.event("scale_start", sample=sample, num_samples=job.plan.num_samples,
                   scale=scale, shape=sp.shape, num_transitions=n, tiles=len(sp.tiles))

    def read_x(win):
        return cur[:, win[0]:win[1], win[2]:win[3]]

    def read_c(win):
        return coarser[:, win[0]:win[1], win[2]:win[3]]

    work = sp.est_seconds / max(1, n)
    cur = buf
    for i, tr in enumerate(program.transitions):
        t0 = time.perf_counter()
        nxt = torch.empty_like(cur)
        for region in sp.tiles:
            y0, y1, x0, x1 = region
            nxt[:, y0:y1, x0:x1] = run_transition(ctx, tr, region, read_x, read_c, seed)
        cur = nxt
        reporter.event("step_done", sample=sample, num_samples=job.plan.num_samples,
                       scale=scale, step_index=i, num_transitions=n, t_from=tr.t_from,
                       t_to=tr.t_to, seconds=round(time.perf_counter() - t0, 4), work=work)
    return cur


def sample_once(job: Job, seed: int, reporter: Reporter, sample: int = 0) -> torch.Tensor:
    """Generate one sample; returns ``(C, H, W)`` in ``[0, 1]`` (not clamped)."""
    app = get_app(job.cfg.app)
    app.prepare(job)
    finished: dict[int, torch.Tensor] = {}
    for s in reversed(range(job.plan.num_scales)):
        program = app.program(job, s, seed)
        finished[s] = run_scale(job, program, s, seed, finished.get(s + 1), reporter, sample)
        finished.pop(s + 1, None)
    return (finished[0] + 1.0) / 2.0


def run(cfg: JobConfig, out_dir: Path, reporter: Reporter) -> dict:
    """Run a whole job into ``out_dir``; returns a summary with paths and timings."""
    from gigasid.io.images import save_png, to_uint8

    t_start = time.perf_counter()
    job = prepare(cfg, reporter)
    plan = job.plan
    reporter.event("setup_done", seconds=round(job.setup_seconds, 4))
    work_total = plan.est_sample_seconds * plan.num_samples
    reporter.event("job_start", app=cfg.app, out_shape=plan.out_shape,
                   num_scales=plan.num_scales, num_samples=plan.num_samples,
                   work_total=work_total)
    paths, sample_seconds = [], []
    for i in range(cfg.num_samples):
        t0 = time.perf_counter()
        img = sample_once(job, cfg.seed + i, reporter, i)
        dt = time.perf_counter() - t0
        path = save_png(to_uint8(img), Path(out_dir) / f"sample_{i:03d}.png")
        paths.append(str(path))
        sample_seconds.append(dt)
        reporter.event("sample_done", sample=i, path=str(path), seconds=round(dt, 4),
                       seed=cfg.seed + i)
    total = time.perf_counter() - t_start
    reporter.event("job_done", seconds=round(total, 4), out_dir=str(out_dir))
    return {"samples": paths, "setup_seconds": job.setup_seconds,
            "sample_seconds": sample_seconds, "total_seconds": total,
            "plan": plan.to_dict()}


__all__ = ["GigasidError", "Job", "prepare", "run", "run_scale", "sample_once"]
