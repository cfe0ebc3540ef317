"""The compiled kernels (gigasid.core.kernels) against the plain-torch reference paths."""

import pytest
import torch

from gigasid.core import kernels
from gigasid.core import patches as P
from gigasid.core.denoisers import AnnDenoiser, AnnSettings, ExactDenoiser, MatrixSource

pytest.importorskip("numba")


@pytest.fixture
def use(monkeypatch):
    """``use("torch")`` / ``use("numba")``: pick the kernels for the rest of the test."""
    def pick(name: str) -> None:
        monkeypatch.setenv(kernels.ENV, name)
        assert kernels.mode() == name
    return pick


def _weighted(x, cand, alpha, sigma):
    """Float64 softmax re-weighting of given candidates ``(m, k, D)``."""
    x, cand = x.double(), cand.double()
    d2 = ((x[:, None, :] - alpha * cand) ** 2).sum(-1)
    w = torch.softmax(-d2 / (2 * sigma**2), dim=1)
    return (w[:, :, None] * cand).sum(1)


def _sources(photo):
    img = photo[:, :40, :47]
    yield "grid", P.PatchGrid(img, 7, 1)
    a, b = photo[:, :30, :41], photo[:, 100:126, 60:95]
    ex = torch.zeros(len(P.patch_starts(30, 5)), len(P.patch_starts(41, 5)), dtype=torch.bool)
    ex[3:9, 10:20] = True
    yield "two images", P.PatchGrid([a, b], 5, 1, [ex, None])
    yield "matrix", MatrixSource(P.extract(img, P.patch_starts(40, 7), P.patch_starts(47, 7), 7))


@pytest.mark.parametrize("alpha,sigma", [(0.9, 0.1), (0.5, 0.5), (0.999, 0.002)])
def test_fused_reweight_equals_float64_and_torch(photo, use, alpha, sigma):
    """The fused kernel is the float64 softmax over the candidates (1e-5), within the torch
    path's float32 error of it, and every row is independent of the batch (exactly)."""
    for name, src in _sources(photo):
        g = torch.Generator().manual_seed(7)
        idx = torch.randint(0, src.n, (300, 6), generator=g)
        x = alpha * src.gather(idx[:, 0]) + sigma * torch.randn(300, src.dim, generator=g)
        layout = kernels.source_layout(src)
        out = kernels.reweight(layout, x, idx, alpha, sigma, torch.empty_like(x))
        ref = _weighted(x, src.gather(idx), alpha, sigma)
        assert (out.double() - ref).abs().max() < 1e-5, name
        # copies: other addresses (alignments) as well as other batches
        part = torch.cat([kernels.reweight(layout, x[a : a + 37].clone(), idx[a : a + 37],
                                           alpha, sigma, torch.empty_like(x[a : a + 37]))
                          for a in range(0, 300, 37)])
        assert torch.equal(part, out), name


@pytest.mark.parametrize("index", ["flat", "ivf"])
def test_ann_denoiser_same_with_either_kernel(photo, use, index):
    img = photo[:, :48, :48]
    grid = P.PatchGrid(img, 7, 1)
    y = grid.block(0, grid.n)
    g = torch.Generator().manual_seed(4)
    x = 0.8 * y[torch.randint(0, grid.n, (300,), generator=g)] + 0.3 * torch.randn(
        300, y.shape[1], generator=g)
    den = AnnDenoiser(grid, AnnSettings(k=6, index=index, pca_dim=16, nprobe=8))
    use("torch")
    a = den(x, 0.8, 0.3)
    use("numba")
    b = den(x, 0.8, 0.3)
    assert (a - b).abs().max() < 1e-5


def test_exact_denoiser_rescoring_kernel(photo, use):
    """The compiled re-scoring of the exact denoiser's best candidates: the torch result
    within float32 rounding, at a small sigma where the re-scoring decides, and the same
    bits for a query whatever batch it is in."""
    grid = P.PatchGrid(photo[:, :40, :40], 5, 1)
    y = grid.block(0, grid.n)
    g = torch.Generator().manual_seed(6)
    x = 0.9 * y[torch.randint(0, grid.n, (200,), generator=g)] + 0.02 * torch.randn(
        200, y.shape[1], generator=g)
    den = ExactDenoiser(y)
    use("torch")
    a = den(x, 0.9, 0.02)
    use("numba")
    b = den(x, 0.9, 0.02)
    assert (a - b).abs().max() < 1e-4
    assert torch.equal(torch.cat([den(x[:77], 0.9, 0.02), den(x[77:], 0.9, 0.02)]), b)


@pytest.mark.parametrize("stride,shape,p", [(1, (23, 31), 7), (3, (40, 29), 7),
                                            (4, (130, 300), 7), (2, (61, 170), 15),
                                            (1, (40, 44), 13)])
def test_compiled_fold_is_bit_identical(use, stride, shape, p):
    """Irregular grids (stride + border window), accumulated into a canvas that already
    holds values: the compiled fold gives the torch fold's bits (patch widths that take
    each of the kernel's 8-, 4- and 1-wide paths); with a weight, the bits of folding
    ``est * weight``."""
    c = 3
    ys, xs = P.patch_starts(shape[0], p, stride), P.patch_starts(shape[1], p, stride)
    g = torch.Generator().manual_seed(stride)
    est = torch.randn(len(ys) * len(xs), c * p * p, generator=g)
    start = torch.randn(c, *shape, generator=g)
    weight = P.fold_weights(p, 0.2, c)
    use("torch")
    ref = P.fold(est, ys, xs, p, c, out=start.clone())
    ref_w = P.fold(est * weight, ys, xs, p, c, out=start.clone())
    assert torch.equal(P.fold(est, ys, xs, p, c, out=start.clone(), weight=weight), ref_w)
    use("numba")
    got = P.fold(est, ys, xs, p, c, out=start.clone())
    assert torch.equal(ref, got)
    assert torch.equal(P.fold(est, ys, xs, p, c, out=start.clone(), weight=weight), ref_w)


def test_fold_with_index_maps_equals_the_expanded_grid(use):
    """Windows that repeat (across a torus's wrap) folded through ``rows`` / ``cols`` maps
    give the bits of the grid expanded by index_select, on both paths."""
    p, c, stride = 5, 3, 2
    ys = torch.arange(0, 31, stride)
    xs = torch.arange(0, 25, stride)
    g = torch.Generator().manual_seed(3)
    rows = torch.cat([torch.arange(12), torch.arange(4)])  # 16 windows from 12 grid rows
    cols = torch.cat([torch.arange(3), torch.arange(10)])  # 13 windows from 10 grid cols
    est = torch.randn(12, 10, c * p * p, generator=g)
    start = torch.randn(c, 36, 30, generator=g)
    full = est.index_select(0, rows).index_select(1, cols).reshape(-1, c * p * p)
    for kind in ("torch", "numba"):
        use(kind)
        ref = P.fold(full, ys, xs, p, c, out=start.clone())
        got = P.fold(est, ys, xs, p, c, out=start.clone(), rows=rows, cols=cols)
        assert torch.equal(ref, got), kind


def test_fold_drops_what_falls_outside_the_canvas(use):
    """Folding onto a crop of the canvas (windows reaching past it, on every side) gives the
    crop of the whole fold, bit for bit, on both paths."""
    p, c = 5, 2
    ys, xs = torch.arange(-3, 27, 1), torch.arange(-4, 22, 2)
    g = torch.Generator().manual_seed(5)
    est = torch.randn(len(ys) * len(xs), c * p * p, generator=g)
    whole = torch.randn(c, 36, 30, generator=g)  # canvas origin at (-4, -5)
    crop = (slice(None), slice(6, 27), slice(3, 22))
    for kind in ("torch", "numba"):
        use(kind)
        ref = P.fold(est, ys + 4, xs + 5, p, c, out=whole.clone())[crop]
        got = P.fold(est, ys - 2, xs + 2, p, c, out=whole[crop].clone())
        assert torch.equal(ref, got), kind


def test_saved_ivf_layout_is_the_in_memory_layout(photo, use, tmp_path):
    """The layout written straight into memory-mapped files next to a saved index (what
    every process of a run reads) holds exactly the in-memory layout's arrays."""
    import numpy as np

    use("numba")
    grid = P.PatchGrid(photo[:, :48, :48], 7, 1)
    den = AnnDenoiser(grid, AnnSettings(k=5, index="ivf", pca_dim=16),
                      index_path=str(tmp_path / "scale0.faiss"))
    saved = den._ivf_layout()
    assert all(isinstance(a, np.memmap) or isinstance(a.base, np.memmap) for a in saved)
    for a, b in zip(saved, kernels.ivf_layout(den.index), strict=True):
        assert a.dtype == b.dtype and np.array_equal(a, b)
    assert not list(tmp_path.glob("*.tmp.npy"))


def test_compiled_ivf_search_is_exact_within_the_probed_lists(photo, use):
    """The k nearest vectors (float64 brute force) among those of the nprobe nearest lists,
    nearest first, the same rows whatever the batch, and FAISS's candidates."""
    import numpy as np

    img = photo[:, :64, :64]
    grid = P.PatchGrid(img, 7, 1)
    den = AnnDenoiser(grid, AnnSettings(k=5, index="ivf", pca_dim=16, nprobe=3))
    g = torch.Generator().manual_seed(9)
    x = 0.9 * grid.gather(torch.randint(0, grid.n, (200,), generator=g)) + 0.1 * torch.randn(
        200, grid.dim, generator=g)
    q = den._project_queries(x, 0.9).numpy()
    layout = den._ivf_layout()
    got = kernels.ivf_search(layout, q, 3, 5)
    cent_t, starts, vecs, ids = layout
    qd = q.astype(np.float64)
    lists = ((qd[:, :, None] - cent_t[None].astype(np.float64)) ** 2).sum(1).argsort(1)[:, :3]
    for i in range(q.shape[0]):
        pool = [(ids[s], vecs[starts[li] * 16 : starts[li + 1] * 16].reshape(16, -1)[:, v])
                for li in lists[i] for v, s in enumerate(range(starts[li], starts[li + 1]))]
        d2 = np.array([((qd[i] - vec) ** 2).sum() for _, vec in pool])
        best = [int(pool[j][0]) for j in np.argsort(d2, kind="stable")[:5]]
        assert got[i].tolist() == best
    part = np.concatenate([kernels.ivf_search(layout, q[a : a + 23], 3, 5)
                           for a in range(0, 200, 23)])
    assert np.array_equal(part, got)
    use("torch")
    ref = den.search(x, 0.9).numpy()
    same = np.mean([len(set(a) & set(b)) / 5
                    for a, b in zip(ref.tolist(), got.tolist(), strict=True)])
    assert same > 0.99



@pytest.mark.parametrize("in_shape,out_shape,region,wrap", [
    ((61, 83), (30, 41), (0, 30, 0, 41), (False, False)),     # the pyramid's 2x reduction
    ((30, 41), (61, 83), (7, 50, 11, 70), (False, False)),    # the blend's upsampling
    ((64, 48), (40, 100), (0, 40, 0, 100), (False, False)),   # unequal, non-integer ratios
    ((32, 32), (64, 64), (-5, 20, 50, 70), (True, True)),     # a torus, across the wrap
])
def test_compiled_resampling_is_bit_identical(photo, use, in_shape, out_shape, region, wrap):
    """The compiled tap resampling gives the torch reference's bits on a photograph, for
    downscaling, upscaling and periodic axes, for a region read from a window."""
    from gigasid.core import resample

    img = photo[:, : in_shape[0], : in_shape[1]].contiguous()
    if wrap[0]:  # a periodic image is read through an unwrapped window
        win = resample.input_region(in_shape, out_shape, region, wrap)
        yy = torch.arange(win[0], win[1]) % in_shape[0]
        xx = torch.arange(win[2], win[3]) % in_shape[1]
        src, origin = img.index_select(1, yy).index_select(2, xx), (win[0], win[2])
    else:
        src, origin = img, (0, 0)
    got = {}
    for kind in ("torch", "numba"):
        use(kind)
        got[kind] = resample.resize_region(src, origin, in_shape, out_shape, region, wrap)
    assert got["numba"].shape == (3, region[1] - region[0], region[3] - region[2])
    assert torch.equal(got["torch"], got["numba"])


@pytest.mark.parametrize("region", [(0, 64, 0, 97), (-9, 20, -300, 5),
                                    (70_000, 70_003, 2**31 - 6, 2**31 + 30)])
def test_compiled_noise_is_bit_identical(use, region):
    """Same bits as the torch reference anywhere: negative coordinates, coordinates past
    2**31 (where the 32-bit wrap of the counter matters), several channels; a sub-region
    equals the matching crop of a larger one."""
    from gigasid.core import noise

    use("torch")
    ref = noise.gaussian_region(5, 3, 17, 4, region, stream=noise.STREAM_STEP)
    use("numba")
    got = noise.gaussian_region(5, 3, 17, 4, region, stream=noise.STREAM_STEP)
    assert got.dtype == torch.float32 and got.shape == ref.shape
    assert torch.equal(got, ref)
    y0, y1, x0, x1 = region
    part = noise.gaussian_region(5, 3, 17, 4, (y0 + 1, y1, x0 + 2, x1 - 1),
                                 stream=noise.STREAM_STEP)
    assert torch.equal(part, ref[:, 1:, 2:-1])
    # another stream or step is other numbers
    other = noise.gaussian_region(5, 3, 18, 4, region, stream=noise.STREAM_STEP)
    assert (other != got).float().mean() > 0.99


def test_grouped_coarse_search(photo, use):
    """Two-level coarse step: with every group probed it is the exhaustive search bit for bit;
    with few groups it returns the exact k nearest (float64 brute force) within the nprobe
    nearest lists among the probed groups' centroids, whatever the batch, and mostly the
    exhaustive search's candidates."""
    import numpy as np

    img = photo[:, :96, :96]
    grid = P.PatchGrid(img, 7, 1)
    den = AnnDenoiser(grid, AnnSettings(k=5, index="ivf", pca_dim=16, nprobe=2))
    g = torch.Generator().manual_seed(4)
    x = 0.9 * grid.gather(torch.randint(0, grid.n, (300,), generator=g)) + 0.1 * torch.randn(
        300, grid.dim, generator=g)
    q = den._project_queries(x, 0.9).numpy()
    layout = den._ivf_layout()
    groups = kernels.coarse_groups(layout[0])
    sup_t, gstarts, gcent, glist = groups
    assert sup_t.shape[1] == round(np.sqrt(layout[0].shape[1]) / 2) > 4
    assert np.array_equal(np.sort(glist), np.arange(layout[0].shape[1]))
    assert np.array_equal(groups[2], kernels.coarse_groups(layout[0])[2])  # deterministic
    full = kernels.ivf_search(layout, q, 2, 5)
    assert np.array_equal(kernels.ivf_search(layout, q, 2, 5, groups, sup_t.shape[1]), full)
    got = kernels.ivf_search(layout, q, 2, 5, groups, 2)
    cent_t, starts, vecs, ids = layout
    qd = q.astype(np.float64)
    near_groups = ((qd[:, :, None] - sup_t[None].astype(np.float64)) ** 2).sum(1).argsort(1)
    for i in range(q.shape[0]):
        cands = np.concatenate([glist[gstarts[gi]:gstarts[gi + 1]] for gi in near_groups[i, :2]])
        cd = ((qd[i][:, None] - cent_t[:, cands].astype(np.float64)) ** 2).sum(0)
        lists = cands[np.lexsort((cands, cd))[:2]]
        pool = [(ids[s], vecs[starts[li] * 16 : starts[li + 1] * 16].reshape(16, -1)[:, v])
                for li in lists for v, s in enumerate(range(starts[li], starts[li + 1]))]
        d2 = np.array([((qd[i] - vec) ** 2).sum() for _, vec in pool])
        best = [int(pool[j][0]) for j in np.lexsort(([p[0] for p in pool], d2))[:5]]
        assert got[i].tolist() == best
    part = np.concatenate([kernels.ivf_search(layout, q[a : a + 37], 2, 5, groups, 2)
                           for a in range(0, 300, 37)])
    assert np.array_equal(part, got)
    assert np.mean(got == full) > 0.8


@pytest.mark.parametrize("dim", [7, 27, 63, 64, 100, 675])
def test_squared_distance_stays_in_its_scratch_and_matches_float64(dim):
    """The fixed-order distance reads and writes only its ``dim`` scratch values (the pure
    Python body raises on any other index), matches float64, and the compiled kernel gives
    the interpreted body's bits."""
    import numpy as np

    nk = kernels._compiled()
    g = np.random.default_rng(dim)
    x, y = g.standard_normal((2, dim)).astype(np.float32)
    py = nk._sq_dist.py_func(x, y, 0.7, np.empty(dim, np.float32))
    ref = float(((x.astype(np.float64) - 0.7 * y.astype(np.float64)) ** 2).sum())
    assert abs(py - ref) <= 1e-5 * ref
    out = np.empty((1, 1), np.float32)
    nk.sq_dists(x[None], y[None], np.zeros((1, 1), np.int64), 0.7, out)
    assert out[0, 0] == np.float32(py)


def test_exact_denoise_bits_do_not_depend_on_the_thread_task_size():
    """The exact kernel's block of queries (chosen from the query count and the threads)
    only splits the work: every size gives the same bits."""
    import numpy as np

    nk = kernels._compiled()
    g = torch.Generator().manual_seed(5)
    x = torch.randn(132, 75, generator=g).numpy()
    y = torch.randn(300, 75, generator=g).numpy()
    outs = []
    for qb in (16, 32, 64):
        out = np.empty_like(x)
        nk.exact_denoise(x, y, 0.8, 3.0, out, qb)
        outs.append(out)
    assert all(np.array_equal(outs[0], o) for o in outs[1:])
    assert kernels.exact_block(132, 2) < kernels.exact_block(100_000, 2)
