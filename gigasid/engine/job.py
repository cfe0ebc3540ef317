"""Build a job once: references, plan, per-scale contexts, datasets and their denoisers.

Everything a sample needs that does not depend on its seed is made here and reused by
every sample (and rebuilt once per worker process from the run directory).
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from gigasid import registry
from gigasid.codecs import make_codec
from gigasid.config import JobConfig
from gigasid.core import patches as P
from gigasid.core.denoisers import AnnSettings, make_denoiser
from gigasid.core.domain import Domain
from gigasid.core.image_denoiser import blend_low_shape
from gigasid.core.pyramid import build_pyramid
from gigasid.core.sampler import ScaleContext, ScaleProgram
from gigasid.core.schedule import make_schedule
from gigasid.engine import reference as refmod
from gigasid.engine.plan import JobPlan, make_plan
from gigasid.engine.progress import Reporter
from gigasid.engine.view import DatasetSpec, JobView
from gigasid.errors import ConfigError, InputError
from gigasid.io.pixel_format import PixelFormat

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
    """Cap torch, FAISS and BLAS threads (``None`` -> all cores) so they don't oversubscribe.

    torch's and FAISS's OpenMP counts belong to the calling thread; the OpenBLAS copies
    bundled with faiss and numpy keep one process-wide count, read from the environment
    when they load (a Dask worker starts them at 1, a spawned process at every core), so
    they are set here too.
    """
    n = n or os.cpu_count() or 1
    torch.set_num_threads(n)  # (the compiled kernels keep it when numba starts its pool)
    try:
        import faiss

        faiss.omp_set_num_threads(n)
    except ImportError:  # pragma: no cover - faiss is a dependency
        pass
    # an OpenBLAS copy loaded later (numba loads scipy's for its linear algebra) reads this
    os.environ["OPENBLAS_NUM_THREADS"] = str(n)
    try:
        from threadpoolctl import threadpool_limits

        threadpool_limits(n, user_api="blas")
    except ImportError:  # pragma: no cover - a dependency; only costs oversubscription
        pass
    return n


@dataclass
class Job:
    """A job's resolved state, built once and reused by every sample."""

    cfg: JobConfig
    plan: JobPlan
    app: object  # the application (see gigasid.apps.base.App)
    view: JobView
    setup_seconds: float = 0.0
    input_sha256: str = ""
    codec: object = None  # gigasid.codecs: pixel identity or a VAE

    @property
    def contexts(self) -> list[ScaleContext]:
        return self.view.contexts

    @property
    def reference(self) -> torch.Tensor:
        """The main reference, ``(C, H, W)`` in ``[-1, 1]``."""
        return self.view.references[0][0]

    @property
    def levels(self) -> list[torch.Tensor]:
        return self.view.references[0]

    def program(self, scale: int, seed: int) -> ScaleProgram:
        return self.app.program(self.view, scale, seed)


def get_app(name: str):
    """A fresh instance of the application registered as ``name``."""
    return registry.get(name)()


def job_files(cfg: JobConfig, app=None) -> list[Path]:
    """Every file a job reads: the references, then the application's extra inputs."""
    app = app or get_app(cfg.app)
    return cfg.input_paths() + list(app.input_files(cfg).values())


def check_input_files(named: dict[str, Path]) -> None:
    """Refuse missing or unreadable extra inputs, naming the config key that points there."""
    from gigasid.io.images import image_shape

    for key, path in named.items():
        if not Path(path).is_file():
            raise InputError(f"{key}: file not found: {path} (relative paths are resolved "
                             "against the config file's folder)")
        image_shape(path)  # an unreadable file fails here, before any work


def resized_shape(shape: tuple[int, int], long_side: int | None) -> tuple[int, int]:
    """``shape`` scaled (aspect kept) so its long side is at most ``long_side`` (None: as
    is); never enlarged."""
    h, w = shape
    if long_side is None or max(h, w) <= long_side:
        return (h, w)
    f = long_side / max(h, w)
    return (max(1, round(h * f)), max(1, round(w * f)))


def reference_shapes(cfg: JobConfig) -> list[tuple[int, int]]:
    """``(H, W)`` of every reference as the job uses it (after ``input_resize_to``), read
    from the files' headers."""
    from gigasid.io.images import image_shape

    return [resized_shape(image_shape(p), cfg.input_resize_to) for p in cfg.input_paths()]


def combine_digests(digests: list[str]) -> str:
    """The files' SHA-256 digests as one (a single file keeps its own)."""
    if len(digests) == 1:
        return digests[0]
    return hashlib.sha256("".join(digests).encode()).hexdigest()


def input_format(cfg: JobConfig) -> PixelFormat:
    """The pixel format the job keeps: the references' channels and sample type, and the
    window of their values (:mod:`gigasid.io.pixel_format`). Raises :class:`InputError` when
    the references disagree."""
    from gigasid.io.pixel_format import common_format, probe_format

    paths = cfg.input_paths()
    return common_format([probe_format(p) for p in paths], [str(p) for p in paths])


def check_format(fmt: PixelFormat, app, codec) -> None:
    """Refuse, before any work, a format the application or the codec cannot take."""
    from gigasid.io.pixel_format import describe

    if fmt.channels not in app.channels:
        raise InputError(f"app '{app.name}' takes {' or '.join(map(str, app.channels))}-channel "
                         f"images ({app.channels_reason}); the input is {describe(fmt)}")
    if codec is not None and codec.factor > 1 and fmt.channels != 3:
        raise InputError(f"the latent codec's VAE encodes RGB images; the input is "
                         f"{describe(fmt)}: set latent.enabled: false (the pixel path keeps "
                         "any channel count)")


def input_pixels(path: Path, crop, shape: tuple[int, int] | None = None,
                 fmt: PixelFormat | None = None) -> torch.Tensor:
    """An input's pixels as a job uses them: ``(C, h, w)`` in ``[0, 1]`` through the job's
    format ``fmt`` (default 8-bit RGB conventions), resized to ``shape`` when given
    (``input_resize_to``), then cropped to ``crop``."""
    from gigasid.io.images import load_image

    img = load_image(path, fmt)
    if shape is not None and tuple(img.shape[1:]) != tuple(shape):
        from gigasid.core.resample import resize

        img = resize(img, tuple(shape))
    y0, y1, x0, x1 = crop
    return img[:, y0:y1, x0:x1]


def encode_image(codec, path: Path, crop, run_dir: Path | None, fingerprint: str,
                 reporter: Reporter | None = None, name: str = "ref",
                 shape: tuple[int, int] | None = None, stream: bool = False,
                 fmt: PixelFormat | None = None) -> torch.Tensor:
    """An image file in the codec's space: ``(C, h, w)``, resized to ``shape`` when given
    (``input_resize_to``), then cropped to ``crop``.

    A latent encoding of a persistent run is cached in ``RUN/latent`` (keyed by the file's
    and the codec's fingerprints), so a resumed run and every worker process reuse it. With
    ``stream`` (a large input, see :func:`gigasid.engine.reference.streams`) the pixels are
    first decoded band by band into a memory-mapped file, which the encoder's tiles read
    window by window (the image is never whole in memory); the file is removed once the
    latent is cached.
    """
    from gigasid.io.images import image_shape

    cache = None
    if run_dir is not None and codec.factor > 1:
        cache = Path(run_dir) / "latent" / f"{name}-{fingerprint[:16]}-{codec.fingerprint()}.pt"
        if cache.is_file():
            return torch.load(cache, weights_only=True)
    folder = None
    full = image_shape(path) if stream and cache is not None else None
    if full is not None and (shape is None or tuple(shape) == full):
        # input_resize_to on a large input still decodes it whole (as the pixel path does)
        folder = Path(run_dir) / "latent" / f"{name}-pixels"
        y0, y1, x0, x1 = crop
        pixels = refmod.build_levels_on_disk(path, [full], folder, fingerprint, fmt=fmt)[0][
            :, y0:y1, x0:x1]
    else:
        pixels = input_pixels(path, crop, shape, fmt) * 2.0 - 1.0
    if codec.factor == 1:
        return pixels
    t0 = time.perf_counter()
    z = codec.encode(pixels, reporter).contiguous()
    if reporter is not None:
        reporter.event("encoded", input=str(path), shape=list(z.shape),
                       seconds=round(time.perf_counter() - t0, 3))
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_suffix(".tmp")
        torch.save(z, tmp)
        os.replace(tmp, cache)  # a killed write never leaves a truncated cache
    if folder is not None:
        del pixels
        shutil.rmtree(folder, ignore_errors=True)  # the cached latent replaces it
    return z


def _load_references(cfg: JobConfig, plan: JobPlan, device: str, run_dir: Path | None,
                     fingerprints: list[str], codec=None,
                     reporter: Reporter | None = None) -> list[list[torch.Tensor]]:
    from gigasid.core.resample import resize
    from gigasid.io.images import image_shape, load_image

    refs = []
    fmt = plan.format
    for i, path in enumerate(cfg.input_paths()):
        shapes = plan.ref_pyramids[i]
        h, w = shapes[0]
        if codec is not None and codec.factor > 1:
            z = encode_image(codec, path, plan.crops[i], run_dir, fingerprints[i], reporter,
                             f"ref{i}", shape=plan.pixel_refs[i],
                             stream=refmod.streams(cfg.engine.reference, plan.pixel_refs[i]),
                             fmt=fmt)
            refs.append(build_pyramid(z.to(device), shapes))
            continue
        if image_shape(path) != (h, w):
            # input_resize_to: decoded whole, resized once, then used as if it were the input
            # (the streamed path reads level 0 straight from the file, so it is not used).
            ref = resize(load_image(path, fmt) * 2.0 - 1.0, (h, w)).to(device)
            refs.append(build_pyramid(ref, shapes))
            continue
        on_disk = refmod.streams(cfg.engine.reference, (h, w))
        if on_disk and run_dir is None:
            raise ConfigError("engine.reference: disk (or an input above "
                              f"{refmod.STREAM_MIN_PIXELS // 2**20} MP) needs a run directory: "
                              "use `gigasid run`")
        if on_disk:
            # Decoded in bands and resampled band by band into memory-mapped files: a
            # reference larger than RAM never sits in this process (or in any worker).
            folder = Path(run_dir) / "reference" / ("" if i == 0 else f"ref{i}")
            refs.append(refmod.build_levels_on_disk(path, shapes, folder, fingerprints[i],
                                                    fmt=fmt))
        else:
            ref = (load_image(path, fmt) * 2.0 - 1.0).to(device)
            refs.append(build_pyramid(ref, shapes))
    return refs


def _contexts(cfg: JobConfig, plan: JobPlan, channels: int, device: str) -> list[ScaleContext]:
    out = []
    domains = [Domain.make(sp.shape, tuple(sp.domain)) for sp in plan.scales]
    for sp in plan.scales:
        coarser = domains[sp.index + 1] if sp.index + 1 < plan.num_scales else None
        low = (blend_low_shape(sp.shape, cfg.pyramid.relative_scale, cfg.pyramid.min_short_side)
               if coarser else None)
        out.append(ScaleContext(
            scale=sp.index, domain=domains[sp.index], channels=channels, patch=sp.patch,
            query_stride=sp.query_stride, window=P.fold_window(sp.patch, sp.fold_rho),
            denoisers={}, schedule=make_schedule(cfg.schedule, sp.num_steps, cfg.sigma_min),
            low_shape=low, coarser=coarser, device=device))
    return out


#: A dataset keeps at least this many patches: when excluding every window that overlaps
#: the excluded region would leave fewer (a large hole on a small coarse level), windows
#: that are at most 1/4, 1/2, ... excluded are let back in, and the job's log says so.
MIN_DATASET_PATCHES = 64
_RELAX = (0.0, 0.25, 0.5, 0.75, 1.0)


def build_dataset(spec: DatasetSpec, scale: int, patch: int, stride: int, backend: str,
                  device: str):
    """The patch source of one dataset at one scale: a :class:`PatchGrid` (read by
    position, for ANN) or an ``(N, D)`` matrix (exact backends), exclusions applied.

    Returns ``(data, allowed)``: ``allowed`` is the largest excluded share a kept window
    may hold (0 unless the exclusion had to be relaxed, see :data:`MIN_DATASET_PATCHES`).
    """
    images = spec.images[scale]
    excl = spec.exclude.get(scale, [None] * len(images))
    grids = [(P.patch_starts(im.shape[1], patch, stride), P.patch_starts(im.shape[2], patch,
                                                                         stride))
             for im in images]
    fracs = [None if ex is None else P.window_hole_fraction(ex.cpu(), ys, xs, patch)
             for ex, (ys, xs) in zip(excl, grids, strict=True)]
    total = sum(len(ys) * len(xs) for ys, xs in grids)
    for allowed in _RELAX:
        masks = [None if f is None else (f > allowed if allowed else f > 0) for f in fracs]
        n = total - sum(int(m.sum()) for m in masks if m is not None)
        if n >= min(MIN_DATASET_PATCHES, total):
            break
    if backend == "ann":
        data = P.PatchGrid([im.to(device) for im in images], patch, stride, masks)
    else:
        parts = []
        for img, m, (ys, xs) in zip(images, masks, grids, strict=True):
            y = P.extract(img.to(device), ys, xs, patch)
            parts.append(y if m is None else y[~m.reshape(-1).to(y.device)])
        data = parts[0] if len(parts) == 1 else torch.cat(parts)
    return data, allowed


@dataclass
class Checked:
    """What the checks before any work established, made once: the application, the
    references' shapes, the device, the codec (its model loaded) and the plan."""

    app: object
    shapes: list[tuple[int, int]]
    device: str
    codec: object
    plan: JobPlan
    files: list[Path]  # every file the job reads (job_files)
    digests: list[str]  # their SHA-256, read once

    @property
    def input_sha256(self) -> str:
        """One digest of every input file (what resume compares)."""
        return combine_digests(self.digests)


def check_job(cfg: JobConfig) -> Checked:
    """Every check that needs no heavy work: extra input files, the application's
    preflight (model weights, size limits), the codec's model and the plan (sizes a
    pyramid cannot take); then each input file's digest, read once for the whole job.
    Raises a :class:`~gigasid.errors.GigasidError` that says what to change; writes
    nothing."""
    from gigasid.io.images import file_fingerprint

    device = resolve_device(cfg.device)
    app = get_app(cfg.app)
    check_input_files(app.input_files(cfg))
    shapes = reference_shapes(cfg)
    app.preflight(cfg, shapes)
    fmt = input_format(cfg)
    codec = make_codec(cfg, device)
    check_format(fmt, app, codec)
    plan = make_plan(cfg, shapes, device, fmt.channels, app, codec)
    plan.pixel_format = fmt.to_dict()
    files = job_files(cfg, app)
    return Checked(app, shapes, device, codec, plan, files,
                   [file_fingerprint(p) for p in files])


def prepare(cfg: JobConfig, reporter: Reporter | None = None,
            run_dir: Path | None = None, checked: Checked | None = None) -> Job:
    """Load the references, plan the job, let the application prepare, build the datasets.

    ``checked`` is :func:`check_job`'s result when the caller already ran the checks (the
    CLI does, before it touches the run directory); otherwise they run here.
    For a persistent (Zarr) run in ``run_dir``, ANN indexes are loaded from ``RUN/index``
    (memory-mapped) when present and saved there when built, so a resumed run and every
    worker process share one trained index per scale and dataset.
    """
    from gigasid.io.images import file_fingerprint, load_image

    t0 = time.perf_counter()
    set_threads(cfg.engine.threads)
    checked = checked or check_job(cfg)
    app, device, codec, plan = checked.app, checked.device, checked.codec, checked.plan
    paths = cfg.input_paths()
    extra = [Path(p) for p in app.input_files(cfg).values()]
    fps = checked.digests[: len(paths)]

    def setup_step(what: str, **count) -> None:
        if reporter is not None:  # `gigasid status` shows the latest one during setup
            reporter.event("setup_step", what=what, **count,
                           seconds=round(time.perf_counter() - t0, 3))

    setup_step(f"reading {len(paths)} reference(s) and building their pyramids")
    refs = _load_references(cfg, plan, device, run_dir, fps, codec, reporter)

    digest_of = dict(zip(map(str, checked.files), checked.digests, strict=True))

    def load_reference(path: Path) -> torch.Tensor:
        # an extra image that plays a reference's part (analogy's structure): cropped and
        # encoded like the references
        from gigasid.io.images import image_shape

        shape = image_shape(path)
        return encode_image(codec, Path(path), codec.crop_box(shape), run_dir,
                            digest_of.get(str(path)) or file_fingerprint(path), reporter,
                            "extra",
                            stream=refmod.streams(cfg.engine.reference, shape),
                            fmt=plan.format)

    def input_image(i: int) -> torch.Tensor:
        return input_pixels(paths[i], plan.crops[i], plan.pixel_refs[i], plan.format)

    contexts = _contexts(cfg, plan, refs[0][0].shape[0], device)
    view = JobView(settings=cfg.app_config, seed=cfg.seed, eta=cfg.eta,
                   noise_level=cfg.noise_level, plan=plan, references=refs,
                   contexts=contexts, inputs=paths, extra_inputs=extra,
                   load_image=load_image, device=device, load_reference=load_reference,
                   input_image=input_image, reporter=reporter,
                   base_dir=Path(cfg.base_dir),
                   state_dir=Path(run_dir) / "app_state"
                   if run_dir is not None and plan.store == "zarr" else None)
    setup_step(f"preparing {cfg.app}")
    app.prepare(view)
    index_dir = Path(run_dir) / "index" if run_dir is not None and plan.store == "zarr" else None
    compute = DTYPES[cfg.dtype]
    d = cfg.denoiser
    ann = AnnSettings(k=d.k, index=d.index, nlist=d.nlist, nprobe=d.nprobe, pq_m=d.pq_m,
                      pca_dim=d.pca_dim, train_size=d.train_size, seed=cfg.seed,
                      coarse_groups=d.coarse_groups, search=d.search)
    datasets = app.datasets(view)
    total = sum(len(spec.images) for spec in datasets.values())
    done = 0
    for name, spec in datasets.items():
        for s in sorted(spec.images):
            sp = plan.scales[s]
            done += 1
            setup_step(f"{sp.backend} denoiser of dataset {name} at scale {s} "
                       f"({sp.shape[1]}x{sp.shape[0]} px)", done=done, total=total)
            data, allowed = build_dataset(spec, s, sp.patch, sp.dataset_stride, sp.backend,
                                          device)
            if allowed and reporter is not None:
                reporter.event("dataset_relaxed", dataset=name, scale=s, max_excluded=allowed,
                               reason=f"fewer than {MIN_DATASET_PATCHES} patches avoid the "
                               "excluded region at this scale")
            path = None
            if index_dir is not None and sp.backend == "ann":
                index_dir.mkdir(parents=True, exist_ok=True)
                suffix = "" if name == "main" else f"-{name}"
                path = str(index_dir / f"scale{s}{suffix}.faiss")
            settings = dataclasses.replace(ann, index=sp.ann_index) if sp.backend == "ann" \
                else ann
            contexts[s].denoisers[name] = make_denoiser(sp.backend, data, compute, settings,
                                                        index_path=path)
    job = Job(cfg, plan, app, view, input_sha256=checked.input_sha256,
              codec=codec)
    job.setup_seconds = time.perf_counter() - t0
    return job
