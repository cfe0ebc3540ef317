"""Per-scale plan of a job: shapes, patch counts, backend, steps, tiles, cost estimates.

``gigasid plan`` prints it; the runner executes it. Nothing here touches pixels.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from gigasid.config import JobConfig, per_scale
from gigasid.core.patches import patch_starts
from gigasid.core.pyramid import auto_num_scales, pyramid_shapes
from gigasid.errors import InputError

#: Default ``denoiser.exact_max_patches`` per device: exact below, ANN above ("auto").
EXACT_MAX_PATCHES = {"cpu": 1000, "cuda": 250_000}

#: ``query_stride: auto`` -> 2 on scales with more stride-1 query patches than this.
STRIDE2_MIN_QUERIES = {"cpu": 8000, "cuda": 8_000_000}
#: ... and 3 above this many, when ``P >= STRIDE3_MIN_PATCH`` (every pixel still lies in
#: ``(P / 3)^2 >= 25`` windows).
#: Measured on CPU: unchanged sample quality (docs/benchmarks.md, Core).
STRIDE3_MIN_QUERIES = {"cpu": 32000, "cuda": None}
STRIDE3_MIN_PATCH = 15

#: ``dataset_stride: auto`` -> the smallest stride keeping a level under this many reference
#: patches (about 0.5 GB of index with the default PCA-32); 1 for any ordinary reference.
DATASET_MAX_PATCHES = 4 * 2**20

#: ``engine.store: auto`` -> zarr (resumable, out-of-core) above this many output pixels.
ZARR_MIN_PIXELS = 4 * 2**20
#: ``engine.tile_size: 0`` with a Zarr store -> tiles (= chunks) of this side.
DEFAULT_ZARR_TILE = 512

#: Resident memory of a computing process before any job data: Python, torch, FAISS, numba
#: and the loaded kernels (measured: 357 MiB RSS, 195 MiB of it anonymous).
PROCESS_BASE_BYTES = 360 * 2**20

#: Throughput model for estimates, calibrated with benchmarks/bench_core.py on 2 CPU cores
#: (GPU values are placeholders until measured on a GPU). bfloat16 on a CPU without bf16
#: matrix instructions (AVX2 only) is emulated: the exact denoiser call was ~50x slower.
CPU_GFLOPS = {"float32": 150.0, "bfloat16": 3.0}
CUDA_GFLOPS = {"float32": 40_000.0, "bfloat16": 300_000.0}
#: ANN step cost per query patch element (search + re-weighting + extraction + fold). CPU:
#: calibrated on the 1 MP and 134-million-pixel retargets on 2 cores (docs/benchmarks.md, "Compiled
#: kernels" and the 134 MP run); CUDA: a placeholder until measured on a GPU.
ANN_SECONDS_PER_ELEMENT = {"cpu": 1.3e-8, "cuda": 2e-10}
#: Extraction + fold cost per query patch element (exact backends).
FOLD_SECONDS_PER_ELEMENT = {"cpu": 5e-9, "cuda": 5e-11}


@dataclass
class ScalePlan:
    """What the engine does at one scale."""

    index: int
    ref_shape: tuple[int, int]
    shape: tuple[int, int]
    num_steps: int
    patch: int
    dataset_stride: int
    query_stride: int
    fold_rho: float
    backend: str
    denoised: bool
    n_patches: int
    n_queries: int
    domain: tuple[str, str] = ("plane", "plane")
    stored_shape: tuple[int, int] = (0, 0)
    transitions: int = 0
    tile: int = 0
    tiles: list[tuple[int, int, int, int]] = field(default_factory=list)
    #: ANN scales: the FAISS index kind and its memory (vectors or codes, and ids)
    ann_index: str = "-"
    index_bytes: int = 0
    est_seconds: float = 0.0
    #: Memory of a step of this scale: its resident data (``dataset_bytes``: reference
    #: level, index, dense patches) plus its working buffers.
    est_bytes: int = 0
    dataset_bytes: int = 0


@dataclass
class JobPlan:
    """The whole job: scales finest first plus totals."""

    app: str
    channels: int
    ref_shape: tuple[int, int]
    out_shape: tuple[int, int]
    device: str
    dtype: str
    num_samples: int
    scales: list[ScalePlan]
    store: str = "memory"
    ref_pyramids: list = field(default_factory=list)  # per reference, its shape per scale
    est_setup_seconds: float = 0.0
    est_disk_bytes: int = 0
    #: the output image in pixels (``out_shape`` times the codec's factor)
    pixel_shape: tuple[int, int] = (0, 0)
    #: the codec the sampler runs in (``{"name": "pixel", ...}`` or the VAE's description)
    codec: dict = field(default_factory=lambda: {"name": "pixel", "factor": 1})
    #: per reference, the centred crop ``(y0, y1, x0, x1)`` of its pixels that is encoded
    crops: list = field(default_factory=list)
    #: per reference, its pixel shape before the crop (after ``input_resize_to``)
    pixel_refs: list = field(default_factory=list)
    #: the references' pixel format (:class:`~gigasid.io.pixel_format.PixelFormat` as a dict):
    #: what every output keeps
    pixel_format: dict = field(default_factory=lambda: {"channels": 3, "dtype": "uint8",
                                                        "lo": 0.0, "hi": 255.0})

    @property
    def format(self):
        """:attr:`pixel_format` as a :class:`~gigasid.io.pixel_format.PixelFormat`."""
        from gigasid.io.pixel_format import PixelFormat

        return PixelFormat.from_dict(self.pixel_format)

    @property
    def num_scales(self) -> int:
        return len(self.scales)

    @property
    def est_sample_seconds(self) -> float:
        return sum(s.est_seconds for s in self.scales)

    @property
    def est_peak_bytes(self) -> int:
        """Peak resident memory of the process that computes a sample: the interpreter with
        its libraries, every scale's data (a sample holds all its denoisers), the largest
        step's working buffers."""
        resident = sum(s.dataset_bytes for s in self.scales)
        working = max(s.est_bytes - s.dataset_bytes for s in self.scales)
        return PROCESS_BASE_BYTES + resident + working

    def to_dict(self) -> dict:
        d = asdict(self)
        d["est_sample_seconds"] = self.est_sample_seconds
        d["est_peak_bytes"] = self.est_peak_bytes
        return d


def _auto_query_stride(count: int, patch: int, dev: str) -> int:
    """``query_stride: auto`` for a scale with ``count`` stride-1 query windows."""
    three = STRIDE3_MIN_QUERIES[dev]
    if three is not None and patch >= STRIDE3_MIN_PATCH and count > three:
        return 3
    return 2 if count > STRIDE2_MIN_QUERIES[dev] else 1


def _count(shape: tuple[int, int], patch: int, stride: int) -> int:
    if min(shape) < patch:
        return 0
    return len(patch_starts(shape[0], patch, stride)) * len(patch_starts(shape[1], patch, stride))


def tile_grid(shape: tuple[int, int], tile: int) -> list[tuple[int, int, int, int]]:
    """Row-major tiles ``(y0, y1, x0, x1)`` of side ``tile`` (0 = one region)."""
    h, w = shape
    if tile <= 0:
        return [(0, h, 0, w)]
    return [(y, min(y + tile, h), x, min(x + tile, w))
            for y in range(0, h, tile) for x in range(0, w, tile)]


def _scale_tile(cfg: JobConfig, tile: int, shape: tuple[int, int], whole: bool = False) -> int:
    """Tile side of one scale: with the automatic tile size and one worker, a scale that fits
    in 2 x 2 tiles runs as one region (no halo recomputation; memory stays bounded by the
    query chunks). With several workers every scale is tiled, so tiles can run in parallel;
    an explicit ``engine.tile_size`` tiles every scale. An application whose hooks see the
    whole image (``whole``) gets one region per scale whatever the settings."""
    if whole:
        return 0
    if tile and cfg.engine.tile_size == 0 and cfg.engine.workers == 1:
        if shape[0] * shape[1] <= (2 * tile) ** 2:
            return 0
    return tile


def make_plan(cfg: JobConfig, ref_shapes, device: str = "cpu", channels: int = 3,
              app=None, codec=None) -> JobPlan:
    """Resolve every ``auto`` and per-scale field into a :class:`JobPlan`.

    ``ref_shapes`` is the pixel ``(H, W)`` of each reference (one shape is accepted too).
    The application (``app``, default: the one ``cfg.app`` names) supplies the output shape,
    the pinned scales, the domain and the number of transitions per scale. With a latent
    ``codec`` the references are cropped to its pixel multiple and every shape of the plan
    is in latent pixels (``pixel_shape`` is the output image's size).
    Raises :class:`InputError` when an image is too small for the patch size.
    """
    from gigasid import registry
    from gigasid.codecs import PixelCodec
    from gigasid.core.domain import Domain

    if ref_shapes and isinstance(ref_shapes[0], int):
        ref_shapes = [tuple(ref_shapes)]
    codec = codec or PixelCodec()
    crops = [codec.crop_box(tuple(r)) for r in ref_shapes]
    for r, c in zip(ref_shapes, crops, strict=True):
        if c[1] <= c[0] or c[3] <= c[2]:
            raise InputError(f"the input is {r[1]}x{r[0]} px, smaller than the VAE's pixel "
                             f"multiple ({codec.pixel_multiple} px)")
    pixel_refs = [(c[1] - c[0], c[3] - c[2]) for c in crops]
    uncropped = [tuple(r) for r in ref_shapes]
    ref_shapes = [codec.model_shape(r) for r in pixel_refs]
    app = app or registry.get(cfg.app)()
    P = cfg.patch_size
    pixel_out = tuple(app.output_shape(cfg, pixel_refs))
    out_shape = tuple(codec.output_model_shape(pixel_out))
    channels = codec.channels if codec.factor > 1 else channels
    mss = cfg.pyramid.min_short_side
    for r in ref_shapes:
        if min(r) < P:
            raise InputError(
                f"the input is {r[1]}x{r[0]} px, smaller than patch_size={P}; "
                f"use a larger image or a smaller patch_size (at most {min(r)})")
    if cfg.pyramid.num_scales == "auto":
        short = min(min(min(r) for r in ref_shapes), *out_shape)
        try:
            S = auto_num_scales(short, P, mss)
        except ValueError:
            raise InputError(
                f"the shorter side ({short} px, over input and output) is below "
                f"pyramid.min_short_side={mss or round(1.7 * P)}; lower min_short_side or "
                "patch_size, or use a larger image") from None
    else:
        S = int(cfg.pyramid.num_scales)
    try:
        ref_pyr = [pyramid_shapes(r, S, cfg.pyramid.relative_scale, mss) for r in ref_shapes]
        out_shapes = pyramid_shapes(out_shape, S, cfg.pyramid.relative_scale, mss)
    except ValueError as exc:
        raise InputError(f"pyramid: {exc}") from None
    steps = per_scale(cfg.num_steps, S, "num_steps")
    dstr = per_scale(cfg.dataset_stride, S, "dataset_stride")
    qstr = per_scale(cfg.query_stride, S, "query_stride")
    rhos = per_scale(cfg.fold_rho, S, "fold_rho")
    backends = per_scale(cfg.denoiser.backend, S, "denoiser.backend")
    store = cfg.engine.store
    if store == "auto":
        big = pixel_out[0] * pixel_out[1] > ZARR_MIN_PIXELS  # the output image decides
        store = "zarr" if big or cfg.engine.scheduler != "sync" else "memory"
    tile = cfg.engine.tile_size or (DEFAULT_ZARR_TILE if store == "zarr" else 0)
    dev = "cuda" if device.startswith("cuda") else "cpu"
    exact_max = cfg.denoiser.exact_max_patches or EXACT_MAX_PATCHES[dev]
    pinned = app.pinned_scales(cfg, S)
    kinds = tuple(app.domain(cfg))
    whole = app.whole_image(cfg)
    scales = []
    for s in range(S):
        denoised = s not in pinned
        if denoised:
            shapes = [("reference", rp[s]) for rp in ref_pyr] + [("output", out_shapes[s])]
            for what, shp in shapes:
                if min(shp) < P:
                    raise InputError(
                        f"scale {s} of the {what} is {shp[1]}x{shp[0]} px, smaller than "
                        f"patch_size={P}; raise pyramid.min_short_side (now {mss}), lower "
                        f"pyramid.num_scales (now {S}) or lower patch_size")
        dstride = dstr[s]
        if dstride == "auto":
            # Every reference patch (the spec's stride 1) unless the level is so large that
            # its index would not fit: then the smallest stride that keeps it under the cap.
            dstride = 1
            while dstride < P and sum(_count(rp[s], P, dstride)
                                      for rp in ref_pyr) > DATASET_MAX_PATCHES:
                dstride += 1
        n = sum(_count(rp[s], P, dstride) for rp in ref_pyr) if denoised else 0
        dom = Domain.make(out_shapes[s], kinds)
        stride = qstr[s]
        if stride == "auto":
            # by the size of the whole image (a mirror domain computes half of it with the
            # stride the same image gets on a plane)
            stride = _auto_query_stride(_count(out_shapes[s], P, 1), P, dev)
        m = _queries(dom, P, stride) if denoised else 0
        backend = backends[s]
        if backend == "auto":
            backend = "exact" if n <= exact_max else "ann"
        stored = dom.stored_shape
        st = _scale_tile(cfg, tile, stored, whole)
        kind, ibytes = ("-", 0)
        if denoised and backend == "ann":
            kind, ibytes = ann_index_choice(cfg, n, channels * P * P)
        scales.append(ScalePlan(
            index=s, ref_shape=ref_pyr[0][s], shape=out_shapes[s], num_steps=steps[s],
            patch=P, dataset_stride=dstride, query_stride=stride, fold_rho=rhos[s],
            backend=backend if denoised else "-", denoised=denoised, n_patches=n,
            n_queries=m, domain=kinds, stored_shape=stored,
            transitions=app.transitions_per_scale(cfg, s, steps[s]) if denoised else 0,
            tile=st, tiles=tile_grid(stored, st), ann_index=kind, index_bytes=ibytes))
    plan = JobPlan(app=cfg.app, channels=channels, ref_shape=ref_shapes[0],
                   out_shape=out_shape, device=dev, dtype=cfg.dtype,
                   num_samples=cfg.num_samples, scales=scales, store=store,
                   ref_pyramids=ref_pyr, crops=crops, codec=codec.describe(),
                   pixel_refs=uncropped,
                   pixel_shape=(out_shape[0] * codec.factor, out_shape[1] * codec.factor))
    _estimate(plan, cfg)
    return plan


def _index_bytes(kind: str, n: int, dim: int, pq_m: int) -> int:
    """Memory of a FAISS index over ``n`` vectors of ``dim`` values: float vectors (flat,
    IVF-Flat) or ``pq_m``-byte codes (IVF-PQ), plus 8-byte ids for the IVF kinds."""
    if kind == "ivfpq":
        return n * (pq_m + 8)
    return n * (dim * 4 + (8 if kind == "ivf" else 0))


def ann_index_choice(cfg: JobConfig, n: int, patch_dim: int) -> tuple[str, int]:
    """``denoiser.index`` for one scale and the index's memory: ``auto`` is IVF-Flat while
    its vectors fit ``denoiser.index_memory_mb``, IVF-PQ above (re-ranked with the exact
    patches, read by position from the level)."""
    d = cfg.denoiser
    dim = d.pca_dim or patch_dim
    kind = d.index
    if kind == "auto":
        fits = _index_bytes("ivf", n, dim, d.pq_m) <= d.index_memory_mb * 2**20
        kind = "ivf" if fits else "ivfpq"
    return kind, _index_bytes(kind, n, dim, d.pq_m)


def _queries(domain, patch: int, stride: int) -> int:
    """Query patches a step denoises: the distinct windows (a mirror partner is reused)
    among those touching the stored part of the domain."""
    import torch

    def count(axis) -> int:
        starts = axis.starts_touching(patch, stride, 0, axis.stored_size)
        return len(torch.unique(axis.canonical_windows(starts, patch)[0]))

    return count(domain.y) * count(domain.x)


def _estimate(plan: JobPlan, cfg: JobConfig) -> None:
    """Fill in time, memory and disk estimates from a simple throughput model."""
    dev, dt = plan.device, plan.dtype
    gflops = (CPU_GFLOPS if dev == "cpu" else CUDA_GFLOPS)[dt]
    setup = 0.0
    for s in plan.scales:
        if not s.denoised:
            continue
        D = plan.channels * s.patch * s.patch
        steps = s.transitions
        h, w = s.stored_shape
        halo = s.patch + 12  # patch reach + blend support, in pixels
        region_h = min(h, s.tile + 2 * halo) if s.tile else h
        region_w = min(w, s.tile + 2 * halo) if s.tile else w
        overhead = (region_h * region_w) / min(h * w, (s.tile or h) * (s.tile or w))
        overhead = max(1.0, overhead) if s.tile else 1.0
        if s.backend in ("exact", "sdpa"):
            per_step = (4.0 * s.n_patches * s.n_queries * D / (gflops * 1e9)
                        + FOLD_SECONDS_PER_ELEMENT[dev] * s.n_queries * D)
            block = min(s.n_queries, max(1, 256 * 2**20 // (8 * max(1, s.n_patches))))
            work = block * s.n_patches * 8
            dataset = s.n_patches * D * 4 * 2
        else:
            per_step = ANN_SECONDS_PER_ELEMENT[dev] * s.n_queries * D
            work = 8192 * (cfg.denoiser.k + 2) * D * 4
            # Candidates are read from the level itself (PatchGrid); the index holds the
            # projected vectors and their ids.
            dataset = plan.channels * s.ref_shape[0] * s.ref_shape[1] * 4 + s.index_bytes
            setup += 3e-8 * s.n_patches * D
        # alpha = 0 at the first step returns the dataset mean: nearly free.
        s.est_seconds = per_step * overhead * max(steps - 1, 1)
        region = plan.channels * region_h * region_w * 4
        queries = min(s.n_queries, 16384) * D * 4 * 3
        s.est_bytes = int(dataset + 12 * region + work + queries)
        s.dataset_bytes = int(dataset)
    plan.est_setup_seconds = setup
    if plan.store == "zarr":
        # Float32 state per sample: a finished scale keeps its last wave, the running one up
        # to LOOKAHEAD + 1 waves (graph); plus the uint8 output (Zarr + PNG) and the ANN
        # indexes (projected vectors + ids).
        from gigasid.engine.graph import LOOKAHEAD

        sizes = [plan.channels * s.stored_shape[0] * s.stored_shape[1] * 4 for s in plan.scales]
        state = sum(sizes) + LOOKAHEAD * max(sizes)
        h, w = plan.pixel_shape
        out = 2 * h * w * 3
        # the compiled search saves its own copy of an IVF-Flat index's lists next to it
        from gigasid.core import kernels

        copies = 2 if kernels.mode() == "numba" else 1
        index = sum(s.index_bytes * (copies if s.ann_index == "ivf" else 1)
                    for s in plan.scales if s.backend == "ann")
        plan.est_disk_bytes = int(plan.num_samples * (state + out) + index)
    plan.est_disk_bytes += _reference_disk_bytes(plan, cfg)


def _reference_disk_bytes(plan: JobPlan, cfg: JobConfig) -> int:
    """Float32 files of streamed references: the pixel path keeps every level of one on
    disk; the latent path decodes one input at a time to a file while it encodes it."""
    from gigasid.engine.reference import streams

    total = 0
    for shapes, px in zip(plan.ref_pyramids, plan.pixel_refs, strict=True):
        if not streams(cfg.engine.reference, tuple(px)):
            continue
        if plan.codec.get("factor", 1) > 1:
            total = max(total, 3 * 4 * px[0] * px[1])
        else:
            total += sum(3 * 4 * h * w for h, w in shapes)
    return total
