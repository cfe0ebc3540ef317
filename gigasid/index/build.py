"""Building the nearest-neighbour search structures of the ANN denoiser: the PCA basis of
its search space and the FAISS index itself. The denoiser's math stays in
:mod:`gigasid.core.denoisers`; what FAISS needs to be built lives here.
"""

from __future__ import annotations

import math

import numpy as np
import torch


def pca_basis(sample: np.ndarray, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(mu, V)``: the mean ``(D,)`` and the top ``dim`` principal directions ``(D, dim)``
    (columns, largest variance first) of ``sample`` ``(n, D)``, float32 on the CPU.

    Computed in float64 and rounded once, so a last-bit difference of the arithmetic (another
    BLAS kernel) almost never reaches the float32 basis; the eigensolver runs on one thread,
    and each direction's sign (which LAPACK leaves free) is fixed: its largest entry
    positive. The basis only ranks candidates: their weights
    are exact.
    """
    from threadpoolctl import threadpool_limits

    sd = sample.astype(np.float64)
    mu = np.add.reduce(sd, axis=0) / sd.shape[0]
    c = sd - mu
    # OpenBLAS splits a product's rows and columns between threads, never its sums; the
    # eigensolver's matrix-vector steps may split sums, so it runs on one thread.
    cov = c.T @ c
    with threadpool_limits(1, user_api="blas"):
        _, vecs = np.linalg.eigh(cov)  # ascending eigenvalues
    vecs = vecs[:, ::-1][:, :dim]
    big = np.abs(vecs).argmax(axis=0)
    vecs = vecs * np.sign(vecs[big, np.arange(dim)])
    return (torch.from_numpy(mu.astype(np.float32)),
            torch.from_numpy(np.ascontiguousarray(vecs, dtype=np.float32)))


def build_faiss_index(faiss, kind: str, n: int, dim: int, *, nlist: int | None = None,
                      pq_m: int = 16, seed: int = 0):
    """An untrained FAISS index of type ``kind`` (``flat``, ``ivf`` or ``ivfpq``) for ``n``
    vectors of ``dim`` dimensions.

    ``nlist`` IVF lists (None: ``4 sqrt(n)``, at most ``n``); ``pq_m`` sub-quantisers for
    ``ivfpq`` (lowered to a divisor of ``dim``); ``seed`` seeds the k-means training, so a
    rebuilt index is the same index.
    """
    kind = kind.lower()
    if kind == "flat":
        return faiss.IndexFlatL2(dim)
    nlist = nlist or max(1, int(4 * math.sqrt(n)))
    nlist = min(nlist, n)
    quantizer = faiss.IndexFlatL2(dim)
    if kind == "ivf":
        index = faiss.IndexIVFFlat(quantizer, dim, nlist, faiss.METRIC_L2)
    elif kind == "ivfpq":
        m = max(d for d in range(1, min(pq_m, dim) + 1) if dim % d == 0)
        index = faiss.IndexIVFPQ(quantizer, dim, nlist, m, 8)
    else:
        raise ValueError(f"unknown index type {kind!r} (flat, ivf, ivfpq)")
    index.cp.seed = seed
    index.cp.min_points_per_centroid = 1  # small scales: no warning spam, k-means still fine
    index.quantizer_trains_alone = 0
    index.own_fields = True
    quantizer.this.disown()
    return index
