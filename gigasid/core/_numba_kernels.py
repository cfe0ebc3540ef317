"""numba bodies of :mod:`gigasid.core.kernels` (imported only when numba is installed).

Every loop runs in a fixed order per query (per output band), so a result never depends on
how many queries or rows a call holds, nor on where they lie in memory, nor on the thread
count or the CPU: ``fastmath`` is off everywhere, so no sum is reordered by the compiler and
no product is contracted into a fused multiply-add (whose rounding differs), and every
parallel loop splits work into pieces that each compute whole results. This keeps
:func:`fold` bit-identical to the torch reference and every kernel identical across AVX2,
AVX-512 and generic builds (``NUMBA_CPU_NAME=generic``)."""

from __future__ import annotations

import numba
import numpy as np

#: Queries per thread task of :func:`reweight` (its scratch buffers are allocated per task).
BLOCK = 64

_OPTS = {"nogil": True, "cache": True, "error_model": "numpy", "parallel": True}


#: Partial sums of :func:`_sq_dist` (a fixed number: the order of the additions must not
#: depend on the CPU's vector width).
LANES = 64


@numba.njit(nogil=True, cache=True, error_model="numpy", inline="always")
def _sq_dist(x, c, alpha, sq):  # pragma: no cover
    """``||x - alpha c||^2`` of two float32 vectors, from direct differences, in an order
    written out here (``sq``: float32 scratch of at least ``len(x)`` values).

    The squared differences of the whole blocks of :data:`LANES` dimensions are folded
    onto ``LANES`` partial sums (block after block), which are joined by halving; the last
    dimensions are then added one by one. Every step of the fold is a plain element-wise
    addition, so it vectorises without reassociation: a reassociated loop is summed in the
    order of whatever vector width and unrolling the compiler picks for the host CPU (AVX2
    and AVX-512 hosts would then disagree in the last bit).
    """
    a = np.float32(alpha)
    n = x.shape[0]
    full = (n // LANES) * LANES
    if full:
        for j in range(LANES):
            t = x[j] - a * c[j]
            sq[j] = t * t
    # Each block's squares are added straight into the lanes (the same additions, in the
    # same order, as squaring every value first and folding the blocks after).
    for b in range(LANES, full, LANES):
        for j in range(LANES):
            t = x[b + j] - a * c[b + j]
            sq[j] += t * t
    # Fewer than LANES dimensions: no lanes at all (sq may hold fewer than LANES values).
    h = LANES // 2 if full else 0
    while h >= 1:
        for j in range(h):
            sq[j] += sq[j + h]
        h //= 2
    d = sq[0] if full else np.float32(0.0)
    for e in range(full, n):
        t = x[e] - a * c[e]
        d += t * t
    return d


@numba.njit(**_OPTS)
def reweight(x, cand, base, offs, kind, image, row_len, alpha, inv, out):  # pragma: no cover
    """Softmax-weighted sum of each query's candidates, straight from the patch source.

    Parameters
    ----------
    x:
        ``(m, D)`` float32 queries.
    cand:
        ``(m, k)`` int64 candidate patch numbers.
    base:
        ``(N,)`` int64: where patch ``n`` starts in ``image``.
    offs:
        ``(kinds, R)`` int64: where each of a patch's ``R`` runs of ``row_len`` contiguous
        values starts, relative to ``base`` (one row per reference image).
    kind:
        ``(N,)`` int64 row of ``offs`` for each patch, or empty when there is one.
    image:
        Flat float32 values the patches are read from.
    alpha, inv:
        Signal level and ``1 / (2 sigma^2)``.
    out:
        ``(m, D)`` float32 result, ``sum_j softmax_j(-||x - alpha c_j||^2 inv) c_j``.
    """
    m, k = cand.shape
    rows = offs.shape[1]
    dim = rows * row_len
    run = np.uint64(row_len)
    for blk in numba.prange((m + BLOCK - 1) // BLOCK):
        buf = np.empty((k, dim), dtype=np.float32)
        flat = buf.reshape(-1)
        sq = np.empty(dim, dtype=np.float32)
        w = np.empty(k, dtype=np.float64)
        for i in range(blk * BLOCK, min(m, (blk + 1) * BLOCK)):
            # The k candidates, copied into one contiguous block that stays in L1 for the
            # two passes below. Unsigned offsets: no negative-index wraparound tests.
            for j in range(k):
                c = cand[i, j]
                o = kind[c] if kind.shape[0] > 0 else 0
                for r in range(rows):
                    src = np.uint64(base[c] + offs[o, r])
                    dst = np.uint64(j * dim + r * row_len)
                    for p in range(run):
                        flat[dst + p] = image[src + p]
            # Distances from direct differences: no expansion, so no cancellation at small
            # sigma, where the softmax is decided by tiny differences.
            for j in range(k):
                w[j] = _sq_dist(x[i], buf[j], alpha, sq)
            _softmax_sum(w, buf, inv, out[i])


@numba.njit(nogil=True, cache=True, error_model="numpy", inline="always")
def _softmax_sum(w, rows, inv, out):  # pragma: no cover
    """``out = sum_j softmax_j(-w * inv) rows[j]``, given squared distances ``w`` (float64,
    overwritten) of the ``rows`` ``(k, D)``; weights in float64, rounded once to float32, rows
    added in ``j`` order (a row whose weight rounds to zero is skipped)."""
    k, dim = rows.shape
    lo = w[0]
    for j in range(1, k):
        lo = min(lo, w[j])
    total = 0.0
    for j in range(k):
        w[j] = np.exp(-(w[j] - lo) * inv)
        total += w[j]
    w0 = np.float32(w[0] / total)
    for e in range(dim):
        out[e] = w0 * rows[0, e]
    for j in range(1, k):
        wj = np.float32(w[j] / total)
        if wj == 0.0:
            continue
        for e in range(dim):
            out[e] += wj * rows[j, e]


@numba.njit(nogil=True, cache=True, error_model="numpy", inline="always")
def _transposed_block(x, lo, count, width):  # pragma: no cover
    """Rows ``lo .. lo + count`` of ``x`` as a ``(D, width)`` float32 block, column ``i``
    holding row ``lo + i`` (zeros beyond ``count``): the layout whose innermost loop runs over
    queries."""
    xt = np.zeros((x.shape[1], width), dtype=np.float32)
    for i in range(count):
        for e in range(x.shape[1]):
            xt[e, i] = x[lo + i, e]
    return xt


@numba.njit(**_OPTS)
def exact_denoise(x, y, alpha, inv, out, qb):  # pragma: no cover
    """The exact denoiser over every patch: ``out[i] = sum_j softmax_j(-||x_i - alpha y_j||^2
    inv) y_j`` with ``inv = 1 / (2 sigma^2)``, each distance from direct differences and each
    sum in a fixed order, so unlike a GEMM the result is the same for any batch, thread count
    and CPU.

    As in :func:`project`, a block of ``qb`` queries (a thread task's share; no sum depends
    on it) is transposed so that the innermost loop runs over queries: each query's squared
    differences are added in dimension order (four per pass, written out), and the loop over
    the block's independent sums vectorises without reordering any of them. The block's
    distances to every patch (``qb x N`` float32) are then turned into weights query by
    query.
    """
    m, dim = x.shape
    n = y.shape[0]
    a = np.float32(alpha)
    dim4 = dim - dim % 4
    for blk in numba.prange((m + qb - 1) // qb):
        lo = blk * qb
        cnt = min(m, lo + qb) - lo
        xt = _transposed_block(x, lo, cnt, qb)
        dist = np.zeros((n, qb), dtype=np.float32)
        for j in range(n):
            acc = dist[j]
            yj = y[j]
            for e in range(0, dim4, 4):
                c0, c1, c2, c3 = a * yj[e], a * yj[e + 1], a * yj[e + 2], a * yj[e + 3]
                x0, x1, x2, x3 = xt[e], xt[e + 1], xt[e + 2], xt[e + 3]
                for i in range(qb):
                    t0 = x0[i] - c0
                    t1 = x1[i] - c1
                    t2 = x2[i] - c2
                    t3 = x3[i] - c3
                    acc[i] = (((acc[i] + t0 * t0) + t1 * t1) + t2 * t2) + t3 * t3
            for e in range(dim4, dim):
                ce = a * yj[e]
                xe = xt[e]
                for i in range(qb):
                    t = xe[i] - ce
                    acc[i] += t * t
        w = np.empty(n, dtype=np.float64)
        for i in range(cnt):
            for j in range(n):
                w[j] = dist[j, i]
            _softmax_sum(w, y, inv, out[lo + i])


#: Queries per thread task of :func:`project`: their transposed block and running sums stay
#: in the L1 cache, and the inner loop over them is long enough to vectorise well.
PROJECT_BLOCK = 64


@numba.njit(**_OPTS)
def project(x, basis, scale, shift, out):  # pragma: no cover
    """``out[i] = scale * (x[i] @ basis) - shift`` (float32), each of the ``d`` sums added in
    dimension order: the ANN search's PCA projection, the same for any batch, thread count
    and CPU, where a GEMM's blocking of the sums and its fused multiply-adds depend on all
    three.

    A block of :data:`PROJECT_BLOCK` queries is transposed so that the innermost loop runs
    over queries (independent sums: it vectorises without reordering any of them), and four
    dimensions are added per pass, written out in order, so a running sum is loaded and
    stored once per four products instead of once per product.
    """
    m, dim = x.shape
    d = basis.shape[1]
    s = np.float32(scale)
    qb = PROJECT_BLOCK
    dim4 = dim - dim % 4
    for blk in numba.prange((m + qb - 1) // qb):
        lo = blk * qb
        n = min(m, lo + qb) - lo
        xt = _transposed_block(x, lo, n, qb)
        acc = np.zeros((d, qb), dtype=np.float32)
        for e in range(0, dim4, 4):
            x0, x1, x2, x3 = xt[e], xt[e + 1], xt[e + 2], xt[e + 3]
            for c in range(d):
                b0, b1, b2, b3 = basis[e, c], basis[e + 1, c], basis[e + 2, c], basis[e + 3, c]
                a = acc[c]
                for i in range(qb):
                    a[i] = (((a[i] + x0[i] * b0) + x1[i] * b1) + x2[i] * b2) + x3[i] * b3
        for e in range(dim4, dim):
            xe = xt[e]
            for c in range(d):
                bc = basis[e, c]
                a = acc[c]
                for i in range(qb):
                    a[i] += xe[i] * bc
        for i in range(n):
            for c in range(d):
                out[lo + i, c] = s * acc[c, i] - shift[c]


@numba.njit(**_OPTS)
def sq_dists(x, y, top, alpha, out):  # pragma: no cover
    """``out[i, j] = ||x_i - alpha y_{top[i, j]}||^2`` from direct differences (float32).

    The exact denoiser's re-scoring of its best candidates: one pass over each candidate
    row, no ``(m, k, D)`` temporaries.
    """
    m, k = top.shape
    for blk in numba.prange((m + BLOCK - 1) // BLOCK):
        sq = np.empty(x.shape[1], dtype=np.float32)
        for i in range(blk * BLOCK, min(m, (blk + 1) * BLOCK)):
            for j in range(k):
                out[i, j] = _sq_dist(x[i], y[top[i, j]], alpha, sq)


@numba.njit(**_OPTS)
def fold(grid, ys, xs, rows, cols, weight, band, out):  # pragma: no cover
    """Overlap-add ``grid * weight`` (``(ny, nx, C, P, P)`` times ``(C, P, P)``) at window
    starts ``ys x xs`` into ``out``; window ``(i, j)`` is grid entry ``(rows[i], cols[j])``.
    Windows may reach past the canvas: what falls outside is dropped (never computed).

    A pixel's contributions (each product rounded first, as a separate multiplication
    would) are added in the order of the torch fold: first along x by increasing patch
    column (decreasing window start) into a zeroed row strip, then the strips along y by
    increasing patch row (decreasing window start) into ``out``. The canvas is split into
    (channel, ``band``-column) pieces that threads share out; a piece holds every
    contribution to its pixels, so the order does not depend on the split.

    Flat arrays and unsigned offsets: no per-row array views and no negative-index tests in
    the inner loops (indexing the 5-D grid directly was markedly slower).
    """
    nx_g, c, p = grid.shape[1], grid.shape[2], grid.shape[3]
    ny, nx = ys.shape[0], xs.shape[0]
    height, width = out.shape[1], out.shape[2]
    gflat = grid.reshape(-1)
    wflat = weight.reshape(-1)
    oflat = out.reshape(-1)
    pp = p * p
    nb = (width + band - 1) // band
    for task in numba.prange(c * nb):
        ch = task // nb
        b0 = (task % nb) * band
        b1 = min(width, b0 + band)
        bw = b1 - b0
        strip = np.empty(p * bw, dtype=np.float32)  # (P, bw) rows, flat
        for i in range(ny - 1, -1, -1):
            gi = rows[i]
            y0 = ys[i]
            ylo = max(0, -y0)
            yhi = min(p, height - y0)
            if ylo >= yhi:
                continue
            strip[:] = 0.0
            for j in range(nx - 1, -1, -1):
                x0 = xs[j]
                if x0 + p <= b0 or x0 >= b1:
                    continue
                lo = np.uint64(max(0, b0 - x0))
                hi = np.uint64(min(p, b1 - x0))
                base = ((gi * nx_g + cols[j]) * c + ch) * pp
                for py in range(ylo, yhi):
                    src = np.uint64(base + py * p)
                    dst = np.uint64(py * bw + x0 - b0)
                    wt = np.uint64(ch * pp + py * p)
                    for px in range(lo, hi):
                        strip[dst + px] += gflat[src + px] * wflat[wt + px]
            for py in range(ylo, yhi):
                dst = np.uint64((ch * height + y0 + py) * width + b0)
                src = np.uint64(py * bw)
                for xx in range(np.uint64(bw)):
                    oflat[dst + xx] += strip[src + xx]


#: Centroid distances per group in :func:`ivf_search`'s selection of the probed lists.
GROUP = 16


@numba.njit(nogil=True, cache=True, error_model="numpy", inline="always")
def _group_min(v):  # pragma: no cover
    """Smallest entry of ``v`` (NaNs ignored; ``inf`` when there is none)."""
    mn = np.float32(np.inf)
    for j in range(v.shape[0]):
        a = v[j]
        mn = a if a < mn else mn
    return mn


@numba.njit(nogil=True, cache=True, error_model="numpy", inline="always")
def _scan(q, i, block, n, ld):  # pragma: no cover
    """``ld[v] = sum_e (q[i, e] - block[e * n + v])^2`` for ``v < n`` (a transposed
    ``(d, n)`` block), each sum in dimension order, four dimensions per pass over ``ld``."""
    d = q.shape[1]
    ld[:n] = 0.0
    e = 0
    while e + 4 <= d:
        q0, q1, q2, q3 = q[i, e], q[i, e + 1], q[i, e + 2], q[i, e + 3]
        r0 = block[e * n:(e + 1) * n]
        r1 = block[(e + 1) * n:(e + 2) * n]
        r2 = block[(e + 2) * n:(e + 3) * n]
        r3 = block[(e + 3) * n:(e + 4) * n]
        for v in range(n):
            t = q0 - r0[v]
            s = ld[v] + t * t
            t = q1 - r1[v]
            s = s + t * t
            t = q2 - r2[v]
            s = s + t * t
            t = q3 - r3[v]
            ld[v] = s + t * t
        e += 4
    while e < d:
        qe = q[i, e]
        row = block[e * n:(e + 1) * n]
        for v in range(n):
            t = qe - row[v]
            ld[v] += t * t
        e += 1


@numba.njit(nogil=True, cache=True, error_model="numpy", inline="always")
def _keep(dv, iv, bd, bi):  # pragma: no cover
    """Insert ``(dv, iv)`` into the ascending ``(bd, bi)`` best list (ties: smaller ``iv``)."""
    k = bd.shape[0]
    if dv > bd[k - 1] or (dv == bd[k - 1] and (bi[k - 1] >= 0 and iv > bi[k - 1])):
        return
    pos = k - 1
    while pos > 0 and (dv < bd[pos - 1] or (dv == bd[pos - 1] and iv < bi[pos - 1])):
        bd[pos] = bd[pos - 1]
        bi[pos] = bi[pos - 1]
        pos -= 1
    bd[pos] = dv
    bi[pos] = iv


@numba.njit(**_OPTS)
def ivf_search(q, cent_t, starts, vecs, ids, nprobe, k, out):  # pragma: no cover
    """IVF-Flat search by direct differences: the ``k`` nearest list vectors of each query
    among its ``nprobe`` nearest lists.

    Parameters
    ----------
    q:
        ``(m, d)`` float32 queries (in the index's space).
    cent_t:
        ``(d, nlist)`` float32 list centroids, transposed so that one query's distances to
        all centroids vectorise over the centroids.
    starts:
        ``(nlist + 1,)`` int64: list ``l`` holds vectors ``starts[l] .. starts[l + 1] - 1``.
    vecs:
        ``(N * d,)`` float32: list ``l``'s vectors as a ``(d, len_l)`` block (transposed, for
        the same reason) at ``starts[l] * d``.
    ids:
        ``(N,)`` int64 patch number of each list vector.
    out:
        ``(m, k)`` int64 result, nearest first; ties go to the smaller list / patch number,
        ``-1`` where the lists hold fewer than ``k`` vectors.

    Every distance is a sum of squared differences in a fixed order, so unlike a GEMM
    search the result does not depend on how many queries a call holds.
    """
    m, d = q.shape
    nlist = cent_t.shape[1]
    longest = 0
    for li in range(nlist):
        longest = max(longest, starts[li + 1] - starts[li])
    cent = cent_t.reshape(-1)
    for i in numba.prange(m):
        # Centroid distances, four dimensions per pass over the centroids (fewer loads and
        # stores of ``cd``); each sum still adds its terms in dimension order.
        cd = np.empty(nlist, dtype=np.float32)
        _scan(q, i, cent, nlist, cd)
        pd = np.full(nprobe, np.inf, dtype=np.float32)
        pl = np.full(nprobe, -1, dtype=np.int64)
        # The nprobe smallest, in list order; groups whose minimum cannot enter are skipped
        # whole (a vectorised test instead of one branch per list; the same result).
        g0 = 0
        while g0 < nlist:
            g1 = min(nlist, g0 + GROUP)
            if _group_min(cd[g0:g1]) < pd[nprobe - 1]:
                for li in range(g0, g1):
                    v = cd[li]
                    if v < pd[nprobe - 1]:
                        pos = nprobe - 1
                        while pos > 0 and v < pd[pos - 1]:
                            pd[pos] = pd[pos - 1]
                            pl[pos] = pl[pos - 1]
                            pos -= 1
                        pd[pos] = v
                        pl[pos] = li
            g0 = g1
        bd = np.full(k, np.inf, dtype=np.float32)
        bi = np.full(k, -1, dtype=np.int64)
        ld = np.empty(longest, dtype=np.float32)
        for pi in range(nprobe):
            li = pl[pi]
            if li < 0:
                continue
            s0 = starts[li]
            n = starts[li + 1] - s0
            _scan(q, i, vecs[s0 * d : (s0 + n) * d], n, ld)
            for v in range(n):
                _keep(ld[v], ids[s0 + v], bd, bi)
        for j in range(k):
            out[i, j] = bi[j]


@numba.njit(**_OPTS)
def resample_rows(x, idx, w, out):  # pragma: no cover
    """``out[c, o, :] = sum_k w[o, k] x[c, idx[o, k], :]`` (float32), taps added in ``k``
    order, each product rounded first: the bits of the torch reference's
    ``index_select * w`` terms summed one after another."""
    c, _, width = x.shape
    n, k = idx.shape
    for t in numba.prange(c * n):
        ch = t // n
        o = t % n
        dst = out[ch, o]
        src = x[ch, idx[o, 0]]
        w0 = w[o, 0]
        for j in range(width):
            dst[j] = w0 * src[j]
        for kk in range(1, k):
            src = x[ch, idx[o, kk]]
            wk = w[o, kk]
            for j in range(width):
                dst[j] += wk * src[j]


@numba.njit(**_OPTS)
def resample_cols(x, idx, w, out):  # pragma: no cover
    """``out[c, y, o] = sum_k w[o, k] x[c, y, idx[o, k]]`` (float32), in the order of
    :func:`resample_rows`."""
    c, height, _ = x.shape
    n, k = idx.shape
    for t in numba.prange(c * height):
        src = x[t // height, t % height]
        dst = out[t // height, t % height]
        for o in range(n):
            acc = w[o, 0] * src[idx[o, 0]]
            for kk in range(1, k):
                acc += w[o, kk] * src[idx[o, kk]]
            dst[o] = acc


_MASK32 = np.uint64(0xFFFFFFFF)


@numba.njit(nogil=True, cache=True, error_model="numpy", inline="always")
def _mix32(h):  # pragma: no cover
    """:func:`gigasid.core.noise._mix32` on a uint64 holding 32 bits (products wrap mod 2**64;
    the low 32 bits kept are exact)."""
    h = h ^ (h >> np.uint64(16))
    h = (h * np.uint64(0x7FEB352D)) & _MASK32
    h = h ^ (h >> np.uint64(15))
    h = (h * np.uint64(0x846CA68B)) & _MASK32
    h = h ^ (h >> np.uint64(16))
    return h


@numba.njit(nogil=True, cache=True, error_model="numpy", inline="always")
def _absorb(h, v):  # pragma: no cover
    return _mix32(((h ^ (v & _MASK32)) + np.uint64(0x9E3779B9)) & _MASK32)


@numba.njit(**_OPTS)
def gaussian(base, y0, x0, out):  # pragma: no cover
    """``out[c, r, j]`` = the counter-based normal of pixel ``(c, y0 + r, x0 + j)`` given the
    hash state ``base`` of (seed, stream, scale, step): :func:`gigasid.core.noise.gaussian_region`
    computed per pixel in one pass (the torch version builds a dozen full-size int64 and
    float64 temporaries). Coordinates enter as their two's-complement low 32 bits."""
    c, height, width = out.shape
    b = np.uint64(base)
    inv = 1.0 / 4294967296.0
    two_pi = 2.0 * np.pi
    for t in numba.prange(c * height):
        ch = t // height
        r = t % height
        hy = _absorb(_absorb(b, np.uint64(ch)), np.uint64(np.int64(y0 + r)))
        dst = out[ch, r]
        for j in range(width):
            h = _absorb(hy, np.uint64(np.int64(x0 + j)))
            u1 = (np.float64(_mix32(h ^ np.uint64(0x68E31DA4))) + 0.5) * inv
            u2 = (np.float64(_mix32(h ^ np.uint64(0xB5297A4D))) + 0.5) * inv
            dst[j] = np.float32(np.sqrt(-2.0 * np.log(u1)) * np.cos(two_pi * u2))


@numba.njit(**_OPTS)
def ivf_search_grouped(q, sup_t, gstarts, gcent, glist, starts, vecs, ids, nprobe, groups, k,
                       out):  # pragma: no cover
    """:func:`ivf_search` with a two-level coarse step: the centroids are clustered into
    ``G`` groups (``sup_t`` ``(d, G)`` group centres; group ``g`` holds lists
    ``glist[gstarts[g]:gstarts[g + 1]]``, their centroids a transposed block of ``gcent``);
    a query ranks the ``G`` centres, scores the centroids of its ``max(groups, nprobe)``
    nearest groups only, and probes the ``nprobe`` nearest of those lists. With every group
    probed this is :func:`ivf_search` exactly (same distances, same tie order)."""
    m, d = q.shape
    ng = sup_t.shape[1]
    nlist = starts.shape[0] - 1
    longest = 0
    for li in range(nlist):
        longest = max(longest, starts[li + 1] - starts[li])
    glongest = 0
    for g in range(ng):
        glongest = max(glongest, gstarts[g + 1] - gstarts[g])
    s_probe = min(ng, max(groups, nprobe))
    sup = sup_t.reshape(-1)
    for b in numba.prange((m + BLOCK - 1) // BLOCK):
        sd = np.empty(ng, dtype=np.float32)
        gd = np.empty(s_probe, dtype=np.float32)
        gl = np.empty(s_probe, dtype=np.int64)
        cd = np.empty(glongest, dtype=np.float32)
        pd = np.empty(nprobe, dtype=np.float32)
        pl = np.empty(nprobe, dtype=np.int64)
        bd = np.empty(k, dtype=np.float32)
        bi = np.empty(k, dtype=np.int64)
        ld = np.empty(longest, dtype=np.float32)
        for i in range(b * BLOCK, min(m, (b + 1) * BLOCK)):
            _scan(q, i, sup, ng, sd)
            gd[:] = np.inf
            gl[:] = -1
            for g in range(ng):
                _keep(sd[g], g, gd, gl)
            pd[:] = np.inf
            pl[:] = -1
            for si in range(s_probe):
                g = gl[si]
                s0 = gstarts[g]
                n = gstarts[g + 1] - s0
                _scan(q, i, gcent[s0 * d:(s0 + n) * d], n, cd)
                for v in range(n):
                    _keep(cd[v], glist[s0 + v], pd, pl)
            bd[:] = np.inf
            bi[:] = -1
            for pi in range(nprobe):
                li = pl[pi]
                if li < 0:
                    continue
                s0 = starts[li]
                n = starts[li + 1] - s0
                _scan(q, i, vecs[s0 * d:(s0 + n) * d], n, ld)
                for v in range(n):
                    _keep(ld[v], ids[s0 + v], bd, bi)
            for j in range(k):
                out[i, j] = bi[j]
