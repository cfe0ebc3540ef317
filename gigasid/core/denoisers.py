"""Closed-form patch denoisers (spec §1): the MMSE estimate under the empirical patch prior.

``D(x) = sum_j softmax_j(-||x - alpha y_j||^2 / (2 sigma^2)) y_j``

Every backend takes queries ``(M, D)`` and scalars ``alpha, sigma`` and returns ``(M, D)``
clean estimates. The values are always the raw reference patches ``y_j``.

* :class:`ExactDenoiser` - GEMM + softmax over all ``N`` patches, query rows in chunks.
* :class:`SdpaDenoiser` - the same math through ``scaled_dot_product_attention`` with the
  homogeneous-coordinate trick: ``q = [x; 1]``, ``k_j = [alpha y_j; -||alpha y_j||^2 / 2]``,
  ``v_j = y_j``, softmax scale ``1 / sigma^2``; the ``M x N`` matrix is never materialised.
* :class:`AnnDenoiser` - FAISS retrieval of ``k`` candidates with the query divided by
  ``alpha`` (``||x - alpha y||^2 = alpha^2 ||x / alpha - y||^2``), optionally in a PCA
  subspace, then exact softmax re-weighting against the raw candidate patches.

At ``alpha = 0`` the estimate is the dataset mean for every backend.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from gigasid.core import ivf, kernels
from gigasid.errors import GigasidError
from gigasid.index.build import build_faiss_index, pca_basis

BACKENDS = ("exact", "sdpa", "ann")


def _dataset_mean(y: torch.Tensor, block: int = 16384) -> torch.Tensor:
    return _source_mean(MatrixSource(y), block)


class MatrixSource:
    """An ``(N, D)`` patch matrix behind the interface of :class:`patches.PatchGrid`."""

    def __init__(self, y: torch.Tensor):
        self.y = y.to(torch.float32).contiguous()
        self.n, self.dim = self.y.shape
        self.device = self.y.device

    def gather(self, idx: torch.Tensor) -> torch.Tensor:
        return torch.index_select(self.y, 0, idx.reshape(-1)).view(*idx.shape, self.dim)

    def block(self, start: int, stop: int) -> torch.Tensor:
        return self.y[start:stop]


def _source_mean(src, block: int = 16384) -> torch.Tensor:
    """Float64 mean patch of a source, block by block (no float64 copy of the whole
    dataset), rows added one after another: numpy's reduction over the first axis has that
    fixed order, where torch's can split the rows between threads."""
    if src.device.type != "cpu":  # a device's own reduction (no copy to the host)
        total = torch.zeros(src.dim, dtype=torch.float64, device=src.device)
        for a in range(0, src.n, block):
            total += src.block(a, min(src.n, a + block)).to(torch.float64).sum(dim=0)
        return total / src.n
    total = np.zeros(src.dim, dtype=np.float64)
    for a in range(0, src.n, block):
        rows = src.block(a, min(src.n, a + block)).to(torch.float64).numpy()
        total += np.add.reduce(rows, axis=0)
    return torch.from_numpy(total / src.n)


#: The exact backend re-scores its k best candidates per query from direct differences.
REFINE_K = 8


#: Query batches are padded to at least this many rows before a float32 GEMM (see
#: :meth:`AnnDenoiser._project_queries`).
MIN_GEMM_ROWS = 64

#: Most patches the PCA basis of the ANN search is computed from (evenly spaced rows of the
#: index's seeded training sample): its float64 covariance costs ``rows * D^2``.
PCA_ROWS = 4096

#: Largest IVF-Flat index (list bytes) that the compiled search copies into its layout.
IVF_KERNEL_MAX_BYTES = 256 * 2**20


def _rows_per_chunk(n: int, budget_bytes: int, bytes_per_entry: int = 8) -> int:
    return max(1, int(budget_bytes // max(1, n * bytes_per_entry)))


class ExactDenoiser:
    """Exact closed-form denoiser: softmax over every reference patch.

    On the CPU (float32, compiled kernels) every distance comes from direct differences and
    every sum runs in a fixed order (:func:`gigasid.core.kernels.exact_denoise`): the same
    bits on any thread count and CPU. Elsewhere (a GPU, ``bfloat16``, or without numba) it is
    a chunked GEMM + softmax, where the ``REFINE_K`` best candidates of each query are
    re-scored from direct differences (no expansion), which makes small-sigma results
    accurate and independent of how many queries a call holds (i.e. of the tiling).

    Parameters
    ----------
    dataset:
        ``(N, D)`` clean reference patches.
    compute_dtype:
        dtype of the two GEMMs (``torch.float32`` or ``torch.bfloat16``); the softmax and
        the logits' offsets run in float32.
    memory_budget:
        Bytes allowed for the ``m x N`` score block; sets the query chunk size.
    """

    name = "exact"

    def __init__(self, dataset: torch.Tensor, compute_dtype: torch.dtype = torch.float32,
                 memory_budget: int = 256 * 2**20):
        self.y = dataset.contiguous()
        self.n, self.dim = self.y.shape
        self.compute_dtype = compute_dtype
        self.y_c = self.y.to(compute_dtype)
        self.y32 = self.y.to(torch.float32)
        self.sq = (self.y32**2).sum(dim=1)  # ||y_j||^2, float32
        self.mean = _dataset_mean(self.y)
        self.chunk = _rows_per_chunk(self.n, memory_budget)

    def __call__(self, x: torch.Tensor, alpha: float, sigma: float) -> torch.Tensor:
        if alpha == 0.0:
            return self.mean.to(x.dtype).expand(x.shape[0], -1).clone()
        if self.compute_dtype == torch.float32 and kernels.enabled(self.y32):
            # On the CPU: every distance from direct differences and every sum in a fixed
            # order, so the bits do not depend on the thread count or the CPU's GEMM kernels.
            return kernels.exact_denoise(x.to(torch.float32), self.y32, alpha,
                                         sigma).to(x.dtype)
        out = torch.empty(x.shape[0], self.dim, dtype=torch.float32, device=x.device)
        inv = 1.0 / (sigma * sigma)
        # logit_j = (x . alpha y_j - alpha^2 ||y_j||^2 / 2) / sigma^2; ||x||^2 cancels.
        offset = (0.5 * alpha * alpha * inv) * self.sq
        k = min(REFINE_K, self.n)
        for s in range(0, x.shape[0], self.chunk):
            xc = x[s : s + self.chunk].to(self.compute_dtype)
            logits = (xc @ self.y_c.T).to(torch.float32)
            logits.mul_(alpha * inv).sub_(offset)
            # The GEMM logits carry an absolute error of about eps * |x| |y| / sigma^2, and its
            # rounding depends on how many rows the call has (i.e. on the tile): at small
            # sigma that decides between near-equal patches. The k best are therefore
            # re-scored exactly, relative to the best one, from direct differences.
            top = logits.topk(k, dim=1).indices  # (m, k), best first
            rel = logits - logits.gather(1, top[:, :1])
            xq = x[s : s + self.chunk].to(torch.float32)
            if kernels.enabled(xq):
                d2 = kernels.sq_dists(xq, self.y32, top, alpha)
            else:
                d2 = torch.empty(top.shape, dtype=torch.float32, device=x.device)
                for b in range(0, top.shape[0], 256):  # small blocks: (m, k, D) in cache
                    t = top[b : b + 256]
                    cand = torch.index_select(self.y32, 0, t.reshape(-1)).view(*t.shape, -1)
                    diff = torch.sub(xq[b : b + 256, None, :], cand, alpha=alpha)
                    d2[b : b + 256] = torch.linalg.vecdot(diff, diff)
            rel.scatter_(1, top, (d2 - d2[:, :1]).mul_(-0.5 * inv))
            w = torch.softmax(rel, dim=1)
            out[s : s + self.chunk] = (w.to(self.compute_dtype) @ self.y_c).to(torch.float32)
        return out.to(x.dtype)


class SdpaDenoiser:
    """Exact denoiser through fused scaled-dot-product attention (homogeneous coordinates)."""

    name = "sdpa"

    def __init__(self, dataset: torch.Tensor, compute_dtype: torch.dtype = torch.float32,
                 query_chunk: int = 16384):
        self.y = dataset.contiguous()
        self.n, self.dim = self.y.shape
        self.compute_dtype = compute_dtype
        # One extra column for the homogeneous coordinate, padded to a multiple of 8.
        self.d_head = int(math.ceil((self.dim + 1) / 8) * 8)
        self.v = F.pad(self.y.to(compute_dtype), (0, self.d_head - self.dim))
        self.sq = (self.y.to(torch.float32) ** 2).sum(dim=1)
        self.mean = _dataset_mean(self.y)
        self.chunk = query_chunk

    def __call__(self, x: torch.Tensor, alpha: float, sigma: float) -> torch.Tensor:
        if alpha == 0.0:
            return self.mean.to(x.dtype).expand(x.shape[0], -1).clone()
        k = self.v * alpha
        k[:, -1] = (-0.5 * alpha * alpha * self.sq).to(self.compute_dtype)
        out = torch.empty(x.shape[0], self.dim, dtype=torch.float32, device=x.device)
        for s in range(0, x.shape[0], self.chunk):
            xc = x[s : s + self.chunk]
            q = torch.zeros(xc.shape[0], self.d_head, dtype=self.compute_dtype, device=x.device)
            q[:, : self.dim] = xc
            q[:, -1] = 1.0
            o = F.scaled_dot_product_attention(
                q[None, None], k[None, None], self.v[None, None], scale=1.0 / (sigma * sigma)
            )[0, 0]
            out[s : s + self.chunk] = o[:, : self.dim].to(torch.float32)
        return out.to(x.dtype)


@dataclass
class AnnSettings:
    """Retrieval settings of :class:`AnnDenoiser`.

    Attributes
    ----------
    k:
        Candidates retrieved per query and re-weighted exactly.
    index:
        ``flat`` (exact search), ``ivf`` (IVF-Flat) or ``ivfpq``.
    nlist:
        IVF lists; ``None`` -> ``int(4 sqrt(N))`` (more, smaller lists than the reference
        implementation: faster scans on CPU, where unbalanced lists dominate).
    nprobe:
        Lists probed per query.
    pq_m:
        PQ sub-quantisers (``ivfpq``); lowered to a divisor of the search dimension.
    pca_dim:
        Search in the top ``pca_dim`` principal components of the patches (0 = full ``D``).
    train_size:
        Patches sampled (seeded) to fit the PCA and train the index; raised to 8 per IVF
        list on very large references so k-means stays meaningful.
    seed:
        Seed of that sample and of FAISS k-means.
    coarse_groups:
        Two-level coarse step of the compiled IVF search: the centroids are clustered
        into about ``sqrt(nlist) / 2`` groups and a query scores only the centroids of its
        ``coarse_groups`` nearest groups (at least ``nprobe``); 0 scores every centroid.
    search:
        Where IVF-Flat and flat indexes are searched: ``auto`` (on the patches' device,
        by :func:`gigasid.core.ivf.search`, when that is not the CPU; on the CPU by the
        compiled kernel or FAISS), ``device`` (always the torch search, also on a CPU: the
        plain-torch reference) or ``host`` (always on the CPU, queries copied there). IVF-PQ
        indexes are searched by FAISS: on the GPU for a CUDA job where FAISS has GPU
        support, else on the CPU.
    """

    k: int = 5
    index: str = "ivf"
    nlist: int | None = None
    nprobe: int = 2
    pq_m: int = 16
    pca_dim: int = 32
    train_size: int = 16384
    seed: int = 0
    coarse_groups: int = 4
    search: str = "auto"


def _host(t: torch.Tensor) -> np.ndarray:
    """A float32 tensor's data as a contiguous numpy array on the CPU (FAISS's input)."""
    return np.ascontiguousarray(t.detach().to("cpu", torch.float32).numpy())


class AnnDenoiser:
    """Approximate denoiser: FAISS top-k retrieval, then exact softmax re-weighting.

    ``dataset`` is an ``(N, D)`` patch matrix or a :class:`patches.PatchGrid`, which reads
    the candidates by position from the reference level instead of holding every patch
    (``P^2`` times less memory for a slightly slower gather).
    """

    name = "ann"

    def __init__(self, dataset, settings: AnnSettings | None = None,
                 query_chunk: int = 8192, index_path: str | None = None):
        import faiss

        self.settings = s = settings or AnnSettings()
        if s.search not in ("auto", "device", "host"):
            raise ValueError(f"unknown ANN search place {s.search!r} (auto, device, host)")
        self._faiss = faiss
        self.src = MatrixSource(dataset) if isinstance(dataset, torch.Tensor) else dataset
        self.n, self.dim = self.src.n, self.src.dim
        self.k = min(s.k, self.n)
        self.mean = _source_mean(self.src)
        self.chunk = query_chunk
        self._index_path = index_path
        if index_path is not None and os.path.exists(index_path):
            self._load(index_path)
        else:
            self._build(faiss, s)
            if index_path is not None:
                self._save(index_path)
                # Re-open it memory-mapped: the lists then live in the page cache, shared
                # with the worker processes, instead of in this process's heap.
                self._load(index_path)
                self._save_ivf_layout(index_path)
        if hasattr(self.index, "nprobe"):
            self.index.nprobe = s.nprobe

    def _build(self, faiss, s: AnnSettings) -> None:
        rng = np.random.default_rng(s.seed)
        n_train = s.train_size
        if s.index != "flat":
            n_train = max(n_train, 8 * (s.nlist or int(4 * math.sqrt(self.n))))
        if self.n > n_train:
            pick = np.sort(rng.choice(self.n, n_train, replace=False))
            sample = self.src.gather(torch.from_numpy(pick).to(self.src.device))
        else:
            sample = self.src.block(0, self.n)
        # PCA basis of the search space, from the covariance of at most PCA_ROWS patches
        # of the seeded sample: a basis that only ranks candidates (their weights are
        # exact) needs its leading directions, not every digit of the covariance.
        if 0 < s.pca_dim < self.dim:
            step = -(-sample.shape[0] // PCA_ROWS)
            mu, proj = pca_basis(_host(sample[::step]), s.pca_dim)
            self.mu, self.proj = mu.to(self.src.device), proj.to(self.src.device)
        else:
            self.mu, self.proj = None, None
        search_dim = self.proj.shape[1] if self.proj is not None else self.dim
        self.index = build_faiss_index(faiss, s.index, self.n, search_dim, nlist=s.nlist,
                                       pq_m=s.pq_m, seed=s.seed)
        if not self.index.is_trained:
            self.index.train(_host(self._project(sample)))
        del sample  # tens of thousands of full patches: not held while the index grows
        # Add in blocks: projecting all N patches at once would hold a second (N, D) copy.
        for a in range(0, self.n, 32768):
            block = self.src.block(a, min(self.n, a + 32768))
            self.index.add(_host(self._project(block)))

    def _save(self, path: str) -> None:
        """Write the index (and PCA basis) atomically, so workers can memory-map it."""
        tmp = f"{path}.{os.getpid()}.tmp"
        self._faiss.write_index(self.index, tmp)
        os.replace(tmp, path)
        if self.proj is not None:
            np.savez(f"{path}.pca.tmp.npz", mu=self.mu.cpu().numpy(),
                     proj=self.proj.cpu().numpy())
            os.replace(f"{path}.pca.tmp.npz", f"{path}.pca.npz")

    def _load(self, path: str) -> None:
        """Open a saved index memory-mapped (read-only; IVF lists stay on disk)."""
        self.index = self._faiss.read_index(path, self._faiss.IO_FLAG_MMAP)
        if os.path.exists(f"{path}.pca.npz"):
            z = np.load(f"{path}.pca.npz")
            self.mu = torch.from_numpy(z["mu"]).to(self.src.device)
            self.proj = torch.from_numpy(z["proj"]).to(self.src.device)
        else:
            self.mu, self.proj = None, None

    def _project(self, v: torch.Tensor) -> torch.Tensor:
        v = v.to(torch.float32)
        if self.proj is None:
            return v.contiguous()
        if kernels.enabled(v):  # fixed order: the index's vectors are the same everywhere
            return kernels.project(v - self.mu, self.proj)
        return ((v - self.mu) @ self.proj).contiguous()

    def _project_queries(self, x: torch.Tensor, alpha: float) -> torch.Tensor:
        """``P(x / alpha - mu)`` computed as ``(x @ V) / alpha - mu @ V``, on ``x``'s device.

        On the CPU (compiled kernels) every sum runs in dimension order, so a near-tied
        candidate never flips with the batch (a tile's edge), the thread count or the CPU.
        Elsewhere it is one GEMM, which rounds differently for batches of a few rows than
        for large ones: small batches are padded to :data:`MIN_GEMM_ROWS` rows, so every
        row takes the same kernel path.
        """
        x = x.to(torch.float32)
        if self.proj is None:
            return x / alpha
        if not hasattr(self, "_mu_proj"):
            # mu @ V in float64, rows added in order, rounded once
            terms = (_host(self.mu).astype(np.float64)[:, None]
                     * _host(self.proj).astype(np.float64))
            self._mu_proj = torch.from_numpy(np.add.reduce(terms, axis=0)).to(
                torch.float32).to(self.proj.device)
        if kernels.enabled(x):
            return kernels.project(x, self.proj, 1.0 / alpha, self._mu_proj)
        m = x.shape[0]
        if m < MIN_GEMM_ROWS:
            x = torch.cat([x, x.new_zeros(MIN_GEMM_ROWS - m, x.shape[1])])
        q = torch.addmm(self._mu_proj, x, self.proj, beta=-1.0, alpha=1.0 / alpha)
        return q[:m].contiguous()

    def _coarse(self, q: np.ndarray, nprobe: int) -> tuple[np.ndarray, np.ndarray]:
        """The ``nprobe`` nearest IVF lists of each query, independent of the batch.

        FAISS's own coarse search switches to expanded-GEMM distances for large batches,
        whose rounding depends on the batch size: near-tied centroids then flip, and a tile
        probes other lists than the whole image would. Here that search only shortlists
        ``nprobe + 4`` centroids, and the shortlist is ranked by direct distances computed
        pair by pair (the same trick as the exact backend's re-scoring).
        """
        if not hasattr(self, "_cent"):
            nl = self.index.nlist
            self._cent = torch.from_numpy(self.index.quantizer.reconstruct_n(0, nl))
        qt = torch.from_numpy(q)
        m = min(self._cent.shape[0], nprobe + 4)
        short = torch.from_numpy(self.index.quantizer.search(q, m)[1])
        short = short.sort(dim=1).values  # ties below then resolve by list number
        diff = qt[:, None, :] - self._cent[short]
        exact = torch.linalg.vecdot(diff, diff)
        order = torch.sort(exact, dim=1, stable=True).indices[:, :nprobe]
        return short.gather(1, order).numpy(), exact.gather(1, order).numpy()

    def _search(self, q: np.ndarray, nprobe: int | None) -> np.ndarray:
        if nprobe is None:  # a flat index: exhaustive search
            return self.index.search(q, self.k)[1]
        if self._gpu_index() is not None:
            self._gpu.nprobe = nprobe
            return self._gpu.search(q, self.k)[1]
        if kernels.mode() == "numba" and self._ivf_layout() is not None:
            return kernels.ivf_search(self._ivf_layout(), q, nprobe, self.k,
                                      self._coarse_groups(), self.settings.coarse_groups)
        lists, dists = self._coarse(q, nprobe)
        # search_preassigned reads nprobe from the index (it takes no search parameters)
        self.index.nprobe = nprobe
        try:
            return self.index.search_preassigned(q, self.k, lists, dists)[1]
        finally:
            self.index.nprobe = self.settings.nprobe

    def _gpu_index(self):
        """A FAISS GPU copy of an IVF-PQ index, for a CUDA job whose FAISS was built with
        GPU support (the ``gpu`` extra), else None (FAISS then searches on the CPU).

        As in the reference: float32 storage, the CPU index's lists and codes. FAISS's GPU
        coarse step is a GEMM, so unlike the CPU search its lists can depend on the batch.
        """
        if not hasattr(self, "_gpu"):
            self._gpu, f, dev = None, self._faiss, self.src.device
            if (dev.type == "cuda" and isinstance(self.index, f.IndexIVFPQ)
                    and hasattr(f, "StandardGpuResources") and f.get_num_gpus() > 0):
                self._gpu_res = f.StandardGpuResources()
                opts = f.GpuClonerOptions()
                opts.useFloat16 = False
                self._gpu = f.index_cpu_to_gpu(self._gpu_res, dev.index or 0, self.index, opts)
        return self._gpu

    def search(self, x: torch.Tensor, alpha: float) -> torch.Tensor:
        """Indices ``(M, k)`` of the candidates for queries ``x`` at signal level ``alpha``.

        Queries whose probed lists hold fewer than ``k`` patches are searched again with
        4x the lists (up to all of them) instead of failing.
        """
        q = self._project_queries(x, alpha)
        if self._search_on_device():
            lists = self._device_lists()
            nprobe = min(getattr(self.index, "nprobe", 1), lists.nlist)
            idx = ivf.search(lists, q, nprobe, self.k)
            if q.device.type == "meta":  # no data: nothing to check or widen
                return idx
            return self._widened(idx, nprobe, lists.nlist,
                                 lambda rows, p: ivf.search(lists, q[rows], p, self.k))
        q = _host(q)
        nlist = getattr(self.index, "nlist", 1)
        nprobe = getattr(self.index, "nprobe", None)  # None: a flat index
        if nprobe is not None:
            nprobe = min(nprobe, nlist)
        idx = torch.from_numpy(self._search(q, nprobe))
        idx = self._widened(idx, nprobe or nlist, nlist, lambda rows, p: torch.from_numpy(
            self._search(np.ascontiguousarray(q[rows.numpy()]), p)))
        return idx.to(x.device)

    def _widened(self, idx: torch.Tensor, nprobe: int, nlist: int, find) -> torch.Tensor:
        """``idx`` with the rows that lack ``k`` candidates searched again, with 4x the
        lists each time (``find(rows, nprobe)``), up to all of them."""
        while nprobe < nlist and bool((idx < 0).any()):
            nprobe = min(nlist, nprobe * 4)
            rows = (idx < 0).any(dim=1).nonzero().squeeze(1)
            idx[rows] = find(rows, nprobe)
        if bool((idx < 0).any()):
            raise GigasidError(
                f"ANN search returned fewer than k={self.k} neighbours for some queries; "
                "lower denoiser.k"
            )
        return idx

    def _search_on_device(self) -> bool:
        """Whether :meth:`search` runs the torch search (see :attr:`AnnSettings.search`)."""
        where = self.settings.search
        listed = isinstance(self.index, (self._faiss.IndexIVFFlat, self._faiss.IndexFlat))
        if where == "host" or not listed:
            return False
        return where == "device" or self.src.device.type != "cpu"

    def _device_lists(self) -> ivf.IvfLists:
        """The index's lists as tensors on the patches' device (built once)."""
        if not hasattr(self, "_lists"):
            dev = self.src.device
            if isinstance(self.index, self._faiss.IndexIVFFlat):
                layout = self._ivf_layout() or kernels.ivf_layout(self.index)
                self._lists = ivf.from_layout(*layout, device=dev)
            else:
                rows = torch.from_numpy(self.index.reconstruct_n(0, self.index.ntotal))
                self._lists = ivf.flat(rows, device=dev)
        return self._lists

    def __call__(self, x: torch.Tensor, alpha: float, sigma: float) -> torch.Tensor:
        if alpha == 0.0:
            return self.mean.to(x.dtype).expand(x.shape[0], -1).clone()
        out = torch.empty(x.shape[0], self.dim, dtype=torch.float32, device=x.device)
        for s in range(0, x.shape[0], self.chunk):
            xs = x[s : s + self.chunk].to(torch.float32)
            self.reweight(xs, self.search(xs, alpha), alpha, sigma, out[s : s + xs.shape[0]])
        return out.to(x.dtype)

    def reweight(self, x: torch.Tensor, idx: torch.Tensor, alpha: float, sigma: float,
                 out: torch.Tensor) -> torch.Tensor:
        """Exact softmax re-weighting of the candidates ``idx`` ``(m, k)`` of float32 queries
        ``x`` ``(m, D)`` into ``out``: the compiled kernel where it applies, else torch."""
        if kernels.enabled(x):
            return kernels.reweight(self._layout(), x, idx, alpha, sigma, out)
        inv = 1.0 / (2.0 * sigma * sigma)
        # Re-weight in small blocks: the (m, k, D) temporaries stay in cache, which is
        # several times faster on CPU than one large block (measured).
        for b in range(0, x.shape[0], 256):
            xc, ib = x[b : b + 256], idx[b : b + 256]
            cand = self.src.gather(ib)  # (m, k, D) raw patches
            # Exact distances, computed directly (no expansion, no cancellation), with
            # fused ops: x - alpha c in one pass, then a batched dot product.
            diff = torch.sub(xc[:, None, :], cand, alpha=alpha)
            w = torch.softmax(torch.linalg.vecdot(diff, diff).mul_(-inv), dim=1)
            dst = out[b : b + xc.shape[0]]
            torch.bmm(w[:, None, :], cand, out=dst.view(-1, 1, dst.shape[1]))
        return out

    _LAYOUT_PARTS = ("cent_t", "starts", "vecs", "ids")

    def _save_ivf_layout(self, path: str) -> None:
        """Write the compiled search's copy of the IVF-Flat lists next to the index, so every
        process memory-maps it (page cache) instead of holding its own heap copy."""
        if (kernels.mode() != "numba" or not isinstance(self.index, self._faiss.IndexIVFFlat)
                or self.index.ntotal == 0):  # (an empty file cannot be memory-mapped)
            return
        # Written straight into memory-mapped files: the lists of a large reference never
        # take a second copy's worth of heap next to the index.
        tmp = {n: f"{path}.{n}.{os.getpid()}.tmp.npy" for n in self._LAYOUT_PARTS}

        def alloc(name, shape, dtype):
            return np.lib.format.open_memmap(tmp[name], mode="w+", dtype=dtype, shape=shape)

        for arr in kernels.ivf_layout(self.index, alloc):
            arr.flush()
        for name in self._LAYOUT_PARTS:
            os.replace(tmp[name], f"{path}.{name}.npy")

    def _ivf_layout(self):
        """The IVF-Flat lists as the compiled search reads them (built once), or None for
        other index kinds, which FAISS searches."""
        if not hasattr(self, "_kernel_ivf"):
            p = self._index_path
            if p is not None and all(os.path.exists(f"{p}.{n}.npy")
                                     for n in self._LAYOUT_PARTS):
                self._kernel_ivf = tuple(np.asarray(np.load(f"{p}.{n}.npy", mmap_mode="r"))
                                         for n in self._LAYOUT_PARTS)
                return self._kernel_ivf
            flat = isinstance(self.index, self._faiss.IndexIVFFlat)
            # A layout built here is a heap copy of the lists: past a size, FAISS searches
            # its own (memory-mapped) lists instead, so big references keep their memory
            # bound. (A saved layout, above, is memory-mapped at any size.)
            small = flat and self.index.ntotal * self.index.d * 4 <= IVF_KERNEL_MAX_BYTES
            self._kernel_ivf = kernels.ivf_layout(self.index) if small else None
        return self._kernel_ivf

    def _coarse_groups(self):
        """The IVF centroids' groups for the two-level coarse step (built once, from the
        centroids alone: small, and the same in every process), or None when it is off."""
        if self.settings.coarse_groups <= 0:
            return None
        if not hasattr(self, "_groups"):
            self._groups = kernels.coarse_groups(self._ivf_layout()[0], seed=self.settings.seed)
        return self._groups

    def _layout(self):
        """The dataset as the fused kernel reads it (built once)."""
        if not hasattr(self, "_kernel_layout"):
            self._kernel_layout = kernels.source_layout(self.src)
        return self._kernel_layout


def make_denoiser(backend: str, dataset: torch.Tensor, compute_dtype: torch.dtype = torch.float32,
                  ann: AnnSettings | None = None, index_path: str | None = None):
    """Construct a patch denoiser by backend name (``exact``, ``sdpa`` or ``ann``).

    For ``ann``, ``index_path`` names a file to load the index from (memory-mapped) or to
    save a newly built one to.
    """
    if backend == "exact":
        return ExactDenoiser(dataset, compute_dtype)
    if backend == "sdpa":
        return SdpaDenoiser(dataset, compute_dtype)
    if backend == "ann":
        return AnnDenoiser(dataset, ann, index_path=index_path)
    raise ValueError(f"unknown denoiser backend {backend!r}; choose from {BACKENDS}")
