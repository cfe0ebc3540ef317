"""IVF-Flat retrieval in plain torch, on whatever device its tensors live (GPU, CPU, meta).

The same search as the compiled CPU kernel (:func:`gigasid.core.kernels.ivf_search`): each
query's ``nprobe`` nearest lists, then the ``k`` nearest vectors in them, with every distance
a sum of squared differences taken dimension by dimension in float32. Each term is one IEEE
subtraction, one multiplication and one addition in the kernel's order (separate torch
operations, so nothing is fused into a multiply-add), which makes the distances, and with the
same tie rule the results, bit for bit those of the compiled kernel's exhaustive coarse step.

The one GEMM is the coarse shortlist: ``||c||^2 - 2 q.c`` ranks the centroids, and the
``nprobe + shortlist`` best are re-ranked by direct differences. A GEMM's rounding can
depend on the batch, but it could only change the result by pushing one of the true
``nprobe`` nearest lists more than ``shortlist`` places down, far beyond its rounding error.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

#: Label of a padding candidate: sorts after every real patch number.
_PAD_LABEL = 2**31 - 1


@dataclass(frozen=True)
class IvfLists:
    """IVF-Flat lists as tensors on one device.

    Attributes
    ----------
    cent_t:
        ``(d, nlist)`` float32 list centroids, one row per dimension.
    cent_sq:
        ``(nlist,)`` float32 squared centroid norms (for the GEMM shortlist).
    starts:
        ``(nlist + 1,)`` int64: list ``l`` holds columns ``starts[l] .. starts[l + 1] - 1``.
    vecs_t:
        ``(d, N)`` float32 list vectors, lists back to back, one row per dimension (so a
        dimension of a block of candidates is one contiguous gather).
    ids:
        ``(N,)`` int64 patch number of each list vector.
    longest:
        Length of the longest list, as a Python number: it bounds a query's candidates
        without reading the device.
    """

    cent_t: torch.Tensor
    cent_sq: torch.Tensor
    starts: torch.Tensor
    vecs_t: torch.Tensor
    ids: torch.Tensor
    longest: int

    @property
    def nlist(self) -> int:
        return self.cent_t.shape[1]

    @property
    def dim(self) -> int:
        return self.cent_t.shape[0]


def from_layout(cent_t: np.ndarray, starts: np.ndarray, vecs: np.ndarray, ids: np.ndarray,
                device: torch.device | str = "cpu") -> IvfLists:
    """:class:`IvfLists` on ``device`` from the compiled kernel's layout
    (:func:`gigasid.core.kernels.ivf_layout`: each list a transposed ``(d, len)`` block)."""
    d, nlist = cent_t.shape
    # copies: the layout may be read-only memory-mapped files, which torch cannot wrap
    starts = np.array(starts, dtype=np.int64)
    vecs_t = np.empty((d, int(starts[-1])), dtype=np.float32)
    for li in range(nlist):
        s0, s1 = int(starts[li]), int(starts[li + 1])
        vecs_t[:, s0:s1] = np.asarray(vecs[s0 * d : s1 * d]).reshape(d, s1 - s0)
    return _lists(torch.from_numpy(np.array(cent_t, dtype=np.float32)),
                  torch.from_numpy(starts), torch.from_numpy(vecs_t),
                  torch.from_numpy(np.array(ids, dtype=np.int64)), device)


def flat(rows: torch.Tensor, device: torch.device | str | None = None) -> IvfLists:
    """All of ``rows`` ``(N, d)`` as one list: an exhaustive search (FAISS's flat index)."""
    n, d = rows.shape
    device = rows.device if device is None else device
    return _lists(torch.zeros(d, 1), torch.tensor([0, n], dtype=torch.int64),
                  rows.detach().to("cpu", torch.float32).T.contiguous(),
                  torch.arange(n, dtype=torch.int64), device)


def _lists(cent_t, starts, vecs_t, ids, device) -> IvfLists:
    longest = int((starts[1:] - starts[:-1]).max()) if starts.numel() > 1 else 0
    return IvfLists(cent_t=cent_t.to(device), cent_sq=(cent_t * cent_t).sum(0).to(device),
                    starts=starts.to(device), vecs_t=vecs_t.to(device), ids=ids.to(device),
                    longest=longest)


def sq_dists(q: torch.Tensor, cand_t: torch.Tensor) -> torch.Tensor:
    """``sum_e (q[i, e] - cand_t[e, i, j])^2`` ``(m, c)`` for queries ``(m, d)`` and their
    candidates ``(d, m, c)``, summed in dimension order with one rounding per operation."""
    acc = None
    for e in range(q.shape[1]):
        t = q[:, e, None] - cand_t[e]
        t.mul_(t)
        acc = t if acc is None else acc.add_(t)
    return acc


def smallest(dist: torch.Tensor, labels: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``k`` smallest ``(dist, label)`` pairs of each row, in lexicographic order (ties
    go to the smaller label), as ``(dists, labels)``.

    A non-negative float's bit pattern orders like its value, so one int64 key
    ``bits << 32 | label`` sorts by distance, then label, in a single ``topk``.
    """
    key = (dist.contiguous().view(torch.int32).to(torch.int64) << 32) | labels
    top = torch.topk(key, k, dim=1, largest=False, sorted=True).values
    return (top >> 32).to(torch.int32).view(torch.float32), top & 0xFFFFFFFF


def search(lists: IvfLists, q: torch.Tensor, nprobe: int, k: int, shortlist: int = 8,
           budget_bytes: int = 2**28) -> torch.Tensor:
    """The ``k`` nearest list vectors of each query among its ``nprobe`` nearest lists.

    Parameters
    ----------
    lists:
        The index, on the queries' device.
    q:
        ``(m, d)`` float32 queries in the index's space.
    nprobe, k:
        Lists probed and neighbours returned per query.
    shortlist:
        Extra centroids the GEMM shortlist keeps for the exact re-ranking.
    budget_bytes:
        Bound on one block's candidate tensors; the queries are searched in blocks of a
        fixed size (each query's result never depends on its block).

    Returns
    -------
    ``(m, k)`` int64 patch numbers, nearest first; ``-1`` where the probed lists hold fewer
    than ``k`` vectors.
    """
    m = q.shape[0]
    nprobe = min(nprobe, lists.nlist)
    width = max(k, nprobe * lists.longest, min(lists.nlist, nprobe + shortlist))
    rows = max(1, budget_bytes // (3 * 4 * width * lists.dim))
    out = torch.empty((m, k), dtype=torch.int64, device=q.device)
    for a in range(0, m, rows):
        out[a : a + rows] = _search_block(lists, q[a : a + rows].to(torch.float32), nprobe, k,
                                          shortlist)
    return out


def _search_block(lists: IvfLists, q: torch.Tensor, nprobe: int, k: int,
                  shortlist: int) -> torch.Tensor:
    m, dev = q.shape[0], q.device
    nlist = lists.nlist
    # 1. The nprobe nearest lists: GEMM shortlist, re-ranked by direct differences.
    s = min(nlist, nprobe + shortlist)
    if s < nlist:
        score = torch.addmm(lists.cent_sq, q, lists.cent_t, alpha=-2.0)
        short = torch.topk(score, s, dim=1, largest=False).indices
    else:
        short = torch.arange(nlist, device=dev).expand(m, nlist)
    _, probe = smallest(sq_dists(q, lists.cent_t[:, short]), short, nprobe)
    # 2. Their vectors, back to back per query and padded to the longest such row.
    first = lists.starts[probe]
    sizes = lists.starts[probe + 1] - first
    ends = sizes.cumsum(1)
    if dev.type == "meta":  # no data to read the longest row from: take the bound
        width = nprobe * lists.longest
    else:
        width = int(ends[:, -1].max())
    width = max(width, k)
    j = torch.arange(width, device=dev).expand(m, width)
    which = torch.searchsorted(ends, j.contiguous(), right=True)  # probe holding column j
    valid = which < nprobe
    which = which.clamp_(max=nprobe - 1)
    pos = first.gather(1, which) + j - (ends - sizes).gather(1, which)
    pos = torch.where(valid, pos, 0)
    dist = sq_dists(q, lists.vecs_t[:, pos]).masked_fill_(~valid, float("inf"))
    labels = torch.where(valid, lists.ids[pos], _PAD_LABEL)
    best, idx = smallest(dist, labels, k)
    return torch.where(torch.isinf(best), -1, idx)
