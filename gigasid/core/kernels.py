"""Compiled CPU kernels (numba) for the hot loops of a denoising step.

The plain-torch code in :mod:`gigasid.core.denoisers` and :mod:`gigasid.core.patches` is the
reference; these kernels compute the same things in one pass over memory:

* :func:`reweight` - the ANN re-weighting: for every query, the exact distances to its ``k``
  candidates, their softmax and the weighted sum of the candidates, reading each candidate
  straight from the patch source (the image of a :class:`~gigasid.core.patches.PatchGrid`
  or the rows of a patch matrix). The torch path materialises several ``(m, k, D)``
  temporaries (gather, difference, product) and streams them through memory four times.
* :func:`ivf_search` - IVF-Flat retrieval (coarse lists and list scan) from direct
  differences, independent of the batch by construction; FAISS's own search needs a
  shortlist re-ranked pair by pair for that (see ``AnnDenoiser._coarse``).
* :func:`exact_denoise` - the exact denoiser over every patch, distances from direct
  differences and every sum in a fixed order (a GEMM's rounding depends on the thread
  count, the batch and the CPU's kernels).
* :func:`project` - the ANN search's PCA projection in a fixed order (same reason).
* :func:`sq_dists` - squared distances to given candidates from direct differences,
  without the ``(m, k, D)`` gather and difference tensors.
* :func:`resample_axis` - one axis of the tap-based resampling (pyramid, blend), summing
  each output's taps in the reference's order straight into the result.
* :func:`gaussian` - the counter-based noise, hashed and transformed pixel by pixel.
* :func:`fold` - the separable overlap-add, adding each pixel's contributions in exactly the
  order of :func:`gigasid.core.patches.fold` (bit for bit the same result), one patch row at
  a time, so the partial row sums stay in cache, and applying the fold window's weights as
  it adds (the weighted patches are never written out).

All are per-query / per-row loops in a fixed order: their result never depends on how many
queries or rows a call holds, nor on the thread count or the CPU, which keeps tiling
invariance exact and a job's bytes the same on every machine.

numba is a dependency (wheels on the package index, no compiler) but optional: without it,
or with ``GIGASID_KERNELS=torch`` in the environment, the torch reference runs instead; this is
also how the two are compared in benchmarks.
"""

from __future__ import annotations

import functools
import math
import os
import threading

import numpy as np
import torch

#: Environment variable choosing the kernels: ``auto`` (numba when importable), ``torch``
#: (the reference) or ``numba`` (fail if it is missing).
ENV = "GIGASID_KERNELS"


def mode() -> str:
    """The kernel family in use: ``"numba"`` or ``"torch"`` (see :data:`ENV`)."""
    want = os.environ.get(ENV, "auto").strip().lower() or "auto"
    if want not in ("auto", "torch", "numba"):
        raise ValueError(f"{ENV} must be auto, torch or numba, not {want!r}")
    if want == "torch":
        return "torch"
    if _compiled() is None:
        if want == "numba":
            raise ImportError(f"{ENV}=numba but numba is not installed (pip install numba)")
        return "torch"
    return "numba"


def enabled(x: torch.Tensor) -> bool:
    """Whether the compiled kernels apply to tensors like ``x`` (CPU float32, numba on)."""
    return x.device.type == "cpu" and mode() == "numba"


@functools.cache
def _compiled():
    """The compiled kernels module (numba compiles or loads them once); None without numba."""
    try:
        from gigasid.core import _numba_kernels
    except ImportError:
        return None
    return _numba_kernels


# numba's default (workqueue) threading layer must not be entered by two threads at once
# (the ``threads`` scheduler runs tiles in a thread pool): calls take turns, each using the
# thread count torch was given.
_LOCK = threading.Lock()


def _threads(nb) -> None:
    n = torch.get_num_threads()
    nb.set_num_threads(max(1, min(n, nb.config.NUMBA_NUM_THREADS)))
    # numba's OpenMP layer starts its pool on the first call, and that sets the calling
    # thread's OpenMP count to NUMBA_NUM_THREADS, undoing torch.set_num_threads (a worker
    # meant to use one thread then ran torch on every core): put torch's count back.
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)


def source_layout(src) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, int]:
    """``(image, base, offs, kind, row_len)`` of a patch source, as :func:`reweight` reads it.

    A :class:`~gigasid.core.patches.PatchGrid` is read from its image (``C * P`` runs of
    ``P`` pixels per patch); a matrix source (an ``(N, D)`` tensor ``y``) as ``N`` runs of
    ``D`` values.
    """
    if hasattr(src, "_base"):
        offs = src._offsets if src._offsets.dim() == 2 else src._offsets[None]
        kind = src._kind if src._kind is not None else torch.empty(0, dtype=torch.int64)
        return (src.image.numpy(), src._base.numpy(), offs.contiguous().numpy(),
                kind.numpy(), src.patch)
    y = src.y
    base = torch.arange(y.shape[0], dtype=torch.int64) * y.shape[1]
    return (y.reshape(-1).numpy(), base.numpy(), np.zeros((1, 1), dtype=np.int64),
            np.empty(0, dtype=np.int64), y.shape[1])


def reweight(layout, x: torch.Tensor, idx: torch.Tensor, alpha: float, sigma: float,
             out: torch.Tensor) -> torch.Tensor:
    """Fused ANN re-weighting into ``out`` ``(m, D)``: see :func:`_numba_kernels.reweight`.

    ``layout`` is :func:`source_layout` of the dataset, ``x`` ``(m, D)`` float32 CPU queries,
    ``idx`` ``(m, k)`` candidate numbers.
    """
    nk = _compiled()
    image, base, offs, kind, row_len = layout
    xs = x.contiguous().numpy()
    cand = idx.to(torch.int64).contiguous().numpy()
    with _LOCK:
        _threads(nk.numba)
        nk.reweight(xs, cand, base, offs, kind, image, row_len, float(alpha),
                    1.0 / (2.0 * sigma * sigma), out.numpy())
    return out


def sq_dists(x: torch.Tensor, y: torch.Tensor, top: torch.Tensor, alpha: float) -> torch.Tensor:
    """``(m, k)`` squared distances ``||x_i - alpha y_{top[i, j]}||^2`` (float32, CPU):
    see :func:`_numba_kernels.sq_dists`."""
    nk = _compiled()
    out = torch.empty(top.shape, dtype=torch.float32)
    with _LOCK:
        _threads(nk.numba)
        nk.sq_dists(x.contiguous().numpy(), y.contiguous().numpy(),
                    top.to(torch.int64).contiguous().numpy(), float(alpha), out.numpy())
    return out


def exact_denoise(x: torch.Tensor, y: torch.Tensor, alpha: float, sigma: float) -> torch.Tensor:
    """The exact denoiser's estimate ``(m, D)`` for float32 CPU queries ``x`` over every row
    of ``y`` ``(N, D)``, in a fixed order: see :func:`_numba_kernels.exact_denoise`."""
    nk = _compiled()
    out = torch.empty(x.shape, dtype=torch.float32)
    with _LOCK:
        _threads(nk.numba)
        nk.exact_denoise(x.contiguous().numpy(), y.contiguous().numpy(), float(alpha),
                         1.0 / (2.0 * sigma * sigma), out.numpy(),
                         exact_block(x.shape[0], nk.numba.get_num_threads()))
    return out


#: Largest thread task of :func:`exact_denoise` (queries).
EXACT_BLOCK = 64


def exact_block(m: int, threads: int) -> int:
    """Queries per thread task of :func:`exact_denoise`: :data:`EXACT_BLOCK` (the width its
    inner loop vectorises best at) unless that leaves fewer than two tasks per thread, then
    halved down to 16, so that a few hundred coarse-scale queries still keep every thread
    busy. The result does not depend on it (each query's sums are its own).

    >>> exact_block(10_000, 2), exact_block(132, 2), exact_block(20, 2)
    (64, 32, 16)
    """
    qb = EXACT_BLOCK
    while qb > 16 and -(-m // qb) < 2 * threads:
        qb //= 2
    return qb


def project(x: torch.Tensor, basis: torch.Tensor, scale: float = 1.0,
            shift: torch.Tensor | None = None) -> torch.Tensor:
    """``scale * (x @ basis) - shift`` for float32 CPU tensors, each sum in dimension order
    (:func:`_numba_kernels.project`): the same bits for any batch, thread count and CPU."""
    nk = _compiled()
    out = torch.empty((x.shape[0], basis.shape[1]), dtype=torch.float32)
    sh = torch.zeros(basis.shape[1]) if shift is None else shift
    with _LOCK:
        _threads(nk.numba)
        nk.project(x.to(torch.float32).contiguous().numpy(),
                   basis.to(torch.float32).contiguous().numpy(), float(scale),
                   sh.to(torch.float32).contiguous().numpy(), out.numpy())
    return out


#: Output columns per fold task: a few tasks per channel for two threads, each task's
#: ``(P, band)`` row strip small enough for the L1/L2 cache.
FOLD_BAND = 128


def fold(grid: torch.Tensor, ys: torch.Tensor, xs: torch.Tensor, out: torch.Tensor,
         rows: torch.Tensor | None = None, cols: torch.Tensor | None = None,
         weight: torch.Tensor | None = None) -> None:
    """Bit-exact compiled :func:`gigasid.core.patches.fold` of ``grid`` ``(ny, nx, C, P, P)``
    (times ``weight``, ``(C * P * P,)``, when given) into ``out`` ``(C, H, W)`` (float32,
    CPU, contiguous), in place; ``rows`` / ``cols`` map window ``(i, j)`` to grid entry
    ``(rows[i], cols[j])`` (identity when None)."""
    nk = _compiled()
    c, p = grid.shape[2], grid.shape[3]

    def index(m, n):
        m = torch.arange(n) if m is None else m
        return m.to(torch.int64).contiguous().numpy()

    w = torch.ones(c * p * p) if weight is None else weight
    w = w.to(torch.float32).reshape(c, p, p).contiguous().numpy()
    with _LOCK:
        _threads(nk.numba)
        nk.fold(grid.contiguous().numpy(), ys.to(torch.int64).contiguous().numpy(),
                xs.to(torch.int64).contiguous().numpy(), index(rows, len(ys)),
                index(cols, len(xs)), w, FOLD_BAND, out.numpy())


def resample_axis(x: torch.Tensor, dim: int, idx: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """Compiled :func:`gigasid.core.resample._resample_axis` of a ``(C, H, W)`` float32 CPU
    tensor along ``dim`` (1 or 2): the same bits, one pass, no per-tap temporaries.
    ``idx`` ``(n, K)`` are in-range local indices, ``w`` ``(n, K)`` float32 weights."""
    nk = _compiled()
    xs = x.contiguous()
    shape = list(xs.shape)
    shape[dim] = idx.shape[0]
    out = torch.empty(shape, dtype=torch.float32)
    fn = nk.resample_rows if dim == 1 else nk.resample_cols
    with _LOCK:
        _threads(nk.numba)
        fn(xs.numpy(), idx.to(torch.int64).contiguous().numpy(),
           w.to(torch.float32).contiguous().numpy(), out.numpy())
    return out


def gaussian(base: int, channels: int, region: tuple[int, int, int, int]) -> torch.Tensor:
    """Compiled :func:`gigasid.core.noise.gaussian_region` (float32, CPU) from the region's
    32-bit hash state ``base``: the same hash and Box-Muller per pixel, in one pass."""
    nk = _compiled()
    y0, y1, x0, x1 = region
    out = torch.empty((channels, y1 - y0, x1 - x0), dtype=torch.float32)
    with _LOCK:
        _threads(nk.numba)
        nk.gaussian(base, y0, x0, out.numpy())
    return out


def ivf_layout(index, alloc=None) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(cent_t, starts, vecs, ids)`` of a FAISS ``IndexIVFFlat``, as :func:`ivf_search`
    reads it: centroids and each list's vectors transposed, lists back to back.

    ``alloc(name, shape, dtype)`` makes each part's array (e.g. a memory-mapped file);
    default: ``np.empty``.
    """
    import faiss

    alloc = alloc or (lambda name, shape, dtype: np.empty(shape, dtype=dtype))
    nlist, d = index.nlist, index.d
    cent = index.quantizer.reconstruct_n(0, nlist)
    inv = index.invlists
    sizes = np.array([inv.list_size(li) for li in range(nlist)], dtype=np.int64)
    starts = alloc("starts", (nlist + 1,), np.int64)
    starts[0] = 0
    np.cumsum(sizes, out=starts[1:])
    vecs = alloc("vecs", (int(starts[-1]) * d,), np.float32)
    ids = alloc("ids", (int(starts[-1]),), np.int64)
    for li in range(nlist):
        n = int(sizes[li])
        if n == 0:
            continue
        codes = faiss.rev_swig_ptr(inv.get_codes(li), n * d * 4)
        block = np.frombuffer(codes, dtype=np.float32, count=n * d).reshape(n, d)
        vecs[starts[li] * d : starts[li + 1] * d] = block.T.reshape(-1)
        ids[starts[li] : starts[li + 1]] = faiss.rev_swig_ptr(inv.get_ids(li), n)
    cent_t = alloc("cent_t", (d, nlist), np.float32)
    cent_t[:] = cent.T
    return cent_t, starts, vecs, ids


def coarse_groups(cent_t: np.ndarray, iters: int = 20,
                  seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(sup_t, gstarts, gcent, glist)``: the IVF centroids ``(d, nlist)`` clustered into
    ``round(sqrt(nlist) / 2)`` groups, as :func:`_numba_kernels.ivf_search_grouped` reads
    them (group centres transposed; each group's lists in list order, their centroids as a
    transposed block).

    Seeded Lloyd iterations in float64 from direct differences (no GEMM): every process
    that builds the groups of one index gets the same groups.
    """
    c = np.ascontiguousarray(cent_t.T, dtype=np.float64)  # (nlist, d)
    nlist, d = c.shape
    ng = max(1, min(nlist, int(round(math.sqrt(nlist) / 2))))
    rng = np.random.default_rng(seed)
    centres = c[np.sort(rng.choice(nlist, ng, replace=False))].copy()

    def assign(centres):
        # blocks of centroids: the (block, G, d) differences stay a few MB
        out = np.empty(nlist, dtype=np.int64)
        for a in range(0, nlist, 512):
            diff = c[a:a + 512, None, :] - centres[None]
            out[a:a + 512] = np.einsum("ngd,ngd->ng", diff, diff).argmin(1)
        return out

    for _ in range(iters):
        owner = assign(centres)
        sums = np.zeros_like(centres)
        np.add.at(sums, owner, c)
        counts = np.bincount(owner, minlength=ng)
        filled = counts > 0  # an emptied group keeps its centre
        centres[filled] = sums[filled] / counts[filled, None]
    owner = assign(centres)
    glist = np.argsort(owner, kind="stable").astype(np.int64)  # list order within a group
    gstarts = np.zeros(ng + 1, dtype=np.int64)
    np.cumsum(np.bincount(owner, minlength=ng), out=gstarts[1:])
    gcent = np.empty(nlist * d, dtype=np.float32)
    for g in range(ng):
        members = glist[gstarts[g]:gstarts[g + 1]]
        gcent[gstarts[g] * d:gstarts[g + 1] * d] = cent_t[:, members].reshape(-1)
    return (np.ascontiguousarray(centres.T, dtype=np.float32), gstarts, gcent, glist)


def ivf_search(layout, q: np.ndarray, nprobe: int, k: int, groups=None,
               probe_groups: int = 0) -> np.ndarray:
    """Batch-invariant IVF-Flat search (see :func:`_numba_kernels.ivf_search`):
    ``(m, k)`` int64 patch numbers, nearest first, ``-1`` where fewer than ``k`` were found.

    With ``groups`` (:func:`coarse_groups` of the layout) and ``probe_groups > 0`` the
    coarse step scores only the centroids of each query's ``max(probe_groups, nprobe)``
    nearest groups (:func:`_numba_kernels.ivf_search_grouped`); otherwise every centroid.
    """
    nk = _compiled()
    cent_t, starts, vecs, ids = layout
    out = np.empty((q.shape[0], k), dtype=np.int64)
    qc = np.ascontiguousarray(q, dtype=np.float32)
    nprobe = min(nprobe, cent_t.shape[1])
    with _LOCK:
        _threads(nk.numba)
        if groups is not None and probe_groups > 0:
            nk.ivf_search_grouped(qc, *groups, starts, vecs, ids, nprobe, probe_groups, k, out)
        else:
            nk.ivf_search(qc, cent_t, starts, vecs, ids, nprobe, k, out)
    return out
