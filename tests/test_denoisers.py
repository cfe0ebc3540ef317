import pytest
import torch

from gigasid.core import patches as P
from gigasid.core.denoisers import AnnDenoiser, AnnSettings, ExactDenoiser, SdpaDenoiser


def brute_force(x, y, alpha, sigma, topk=None):
    """Float64 closed-form denoiser, optionally restricted to the true top-k patches."""
    x, y = x.double(), y.double()
    # Direct differences, a few query rows at a time: no (M, N, D) float64 temporary
    d2 = torch.cat([((x[a : a + 16, None, :] - alpha * y[None]) ** 2).sum(-1)
                    for a in range(0, x.shape[0], 16)])
    if topk is not None:
        keep = d2.topk(topk, dim=1, largest=False).indices
        mask = torch.full_like(d2, float("inf"))
        mask.scatter_(1, keep, 0.0)
        d2 = d2 + mask
    w = torch.softmax(-d2 / (2 * sigma**2), dim=1)
    return w @ y


def real_patches(photo, p=7, n=1500):
    data = P.extract(photo[:, :64, :64], P.patch_starts(64, p), P.patch_starts(64, p), p)
    return data[torch.randperm(data.shape[0], generator=torch.Generator().manual_seed(0))[:n]]


def cases(photo):
    g = torch.Generator().manual_seed(0)
    yield "random", torch.randn(1200, 75, generator=g) * 0.5
    yield "photo", real_patches(photo)


@pytest.mark.parametrize("alpha,sigma", [(0.9, 0.1), (0.5, 0.5), (0.2, 0.8), (0.999, 0.02)])
@pytest.mark.parametrize("cls", [ExactDenoiser, SdpaDenoiser])
def test_exact_backends_match_float64(photo, cls, alpha, sigma):
    for name, y in cases(photo):
        g = torch.Generator().manual_seed(1)
        idx = torch.randint(0, y.shape[0], (200,), generator=g)
        x = alpha * y[idx] + sigma * torch.randn(200, y.shape[1], generator=g)
        ref = brute_force(x, y, alpha, sigma)
        out = cls(y)(x, alpha, sigma)
        assert (out.double() - ref).abs().max() < 1e-4, name


@pytest.mark.parametrize("alpha,sigma", [(0.9, 0.1), (0.5, 0.5), (0.999, 0.02)])
def test_ann_flat_equals_exact_topk(photo, alpha, sigma):
    for _, y in cases(photo):
        g = torch.Generator().manual_seed(2)
        idx = torch.randint(0, y.shape[0], (150,), generator=g)
        x = alpha * y[idx] + sigma * torch.randn(150, y.shape[1], generator=g)
        ann = AnnDenoiser(y, AnnSettings(k=8, index="flat", pca_dim=0))
        ref = brute_force(x, y, alpha, sigma, topk=8)
        assert (ann(x, alpha, sigma).double() - ref).abs().max() < 1e-4


def test_alpha_zero_returns_dataset_mean(photo):
    y = real_patches(photo)
    x = torch.randn(10, y.shape[1])
    mean = y.double().mean(0)
    for den in (ExactDenoiser(y), SdpaDenoiser(y), AnnDenoiser(y, AnnSettings(index="ivf"))):
        out = den(x, 0.0, 1.0)
        assert (out.double() - mean).abs().max() < 1e-5


def test_tiny_sigma_returns_nearest_patch(photo):
    y = real_patches(photo)
    g = torch.Generator().manual_seed(3)
    idx = torch.randint(0, y.shape[0], (50,), generator=g)
    x = y[idx] + 1e-3 * torch.randn(50, y.shape[1], generator=g)
    nearest = y[torch.cdist(x.double(), y.double()).argmin(1)]
    for den in (ExactDenoiser(y), SdpaDenoiser(y),
                AnnDenoiser(y, AnnSettings(k=4, index="ivf", nprobe=4))):
        out = den(x, 1.0 - 1e-4, 1e-4)
        assert (out - nearest).abs().max() < 1e-4, den.name


def test_ivf_recall_and_error_are_reported(photo, capsys):
    """IVF+PCA retrieval: report recall@k against exact search and the denoiser error."""
    y = P.extract(photo[:, :96, :96], P.patch_starts(96, 7), P.patch_starts(96, 7), 7)
    ann = AnnDenoiser(y, AnnSettings(k=5, index="ivf", nprobe=8, pca_dim=32))
    g = torch.Generator().manual_seed(4)
    idx = torch.randint(0, y.shape[0], (300,), generator=g)
    for alpha in (0.95, 0.7):
        sigma = 1 - alpha
        x = alpha * y[idx] + sigma * torch.randn(300, y.shape[1], generator=g)
        true = torch.cdist(x / alpha, y).topk(5, largest=False).indices
        got = ann.search(x, alpha)
        hits = sum(len(set(a.tolist()) & set(b.tolist())) for a, b in zip(got, true, strict=True))
        recall = hits / true.numel()
        err = (ann(x, alpha, sigma).double() - brute_force(x, y, alpha, sigma)).abs().mean().item()
        print(f"alpha={alpha}: recall@5={recall:.3f} mean abs error vs exact={err:.4f}")
        assert recall > 0.5
        assert err < 0.05


def test_ann_search_widens_instead_of_failing():
    """Lists too small for k are widened automatically (no -1 indices)."""
    y = torch.randn(300, 12)
    ann = AnnDenoiser(y, AnnSettings(k=20, index="ivf", nlist=60, nprobe=1, pca_dim=0))
    idx = ann.search(torch.randn(40, 12), 1.0)
    assert (idx >= 0).all() and idx.shape == (40, 20)


@pytest.mark.parametrize("cls", [ExactDenoiser, SdpaDenoiser])
def test_bfloat16_close_to_float32(photo, cls):
    y = real_patches(photo)
    g = torch.Generator().manual_seed(5)
    x = 0.5 * y[:100] + 0.5 * torch.randn(100, y.shape[1], generator=g)
    a = cls(y)(x, 0.5, 0.5)
    b = cls(y, compute_dtype=torch.bfloat16)(x, 0.5, 0.5)
    assert (a - b).abs().mean() < 0.05


@pytest.mark.parametrize("index,pca", [("flat", 0), ("ivf", 16)])
def test_ann_on_patch_grid_matches_patch_matrix(photo, index, pca):
    """Reading candidates by position from the level gives the matrix path's results."""
    img = photo[:, :48, :48]
    grid = P.PatchGrid(img, 7, 1)
    y = P.extract(img, P.patch_starts(48, 7), P.patch_starts(48, 7), 7)
    g = torch.Generator().manual_seed(4)
    idx = torch.randint(0, y.shape[0], (300,), generator=g)
    x = 0.8 * y[idx] + 0.3 * torch.randn(300, y.shape[1], generator=g)
    s = AnnSettings(k=6, index=index, pca_dim=pca, nprobe=64)
    a, b = AnnDenoiser(y, s)(x, 0.8, 0.3), AnnDenoiser(grid, s)(x, 0.8, 0.3)
    assert (a - b).abs().max() < 1e-5
    ref = brute_force(x, y, 0.8, 0.3, topk=6)
    assert (b.double() - ref).abs().max() < 1e-4 or index != "flat"
    assert (AnnDenoiser(grid, s).mean - y.double().mean(0)).abs().max() < 1e-6


def test_ivfpq_reranked_stays_close_to_exact_on_latent_patches():
    """IVF-PQ on 784-dim (7 x 7 x 16) patches: codes only rank the candidates, which are
    then re-scored with the exact patches; the result stays within a stated error of the
    exact denoiser (and recall stays useful), like IVF-Flat."""
    g = torch.Generator().manual_seed(5)
    # a smooth 16-channel field, like a VAE latent (neighbouring patches overlap)
    z = torch.nn.functional.interpolate(torch.randn(1, 16, 20, 20, generator=g), size=(72, 72),
                                        mode="bicubic", align_corners=False)[0]
    y = P.extract(z, P.patch_starts(72, 7), P.patch_starts(72, 7), 7)
    idx = torch.randint(0, y.shape[0], (300,), generator=g)
    anns = {index: AnnDenoiser(y, AnnSettings(k=5, index=index, nprobe=8, pq_m=28, pca_dim=0))
            for index in ("ivf", "ivfpq")}
    for alpha in (0.95, 0.7):
        sigma = 1 - alpha
        x = alpha * y[idx] + sigma * torch.randn(300, y.shape[1], generator=g)
        xd, yd = x.double(), y.double()  # float64 closed form, expanded (no (M, N, D) array)
        d2 = (xd**2).sum(1, keepdim=True) - 2 * alpha * xd @ yd.T + alpha**2 * (yd**2).sum(1)
        ref = torch.softmax(-d2 / (2 * sigma**2), dim=1) @ yd
        true = torch.cdist(x / alpha, y).topk(5, largest=False).indices
        errs = {}
        for index, ann in anns.items():
            errs[index] = (ann(x, alpha, sigma).double() - ref).abs().mean().item()
            got = ann.search(x, alpha)
            hits = sum(len(set(a.tolist()) & set(b.tolist()))
                       for a, b in zip(got, true, strict=True))
            assert hits / true.numel() > 0.5, (index, alpha)
        assert errs["ivfpq"] < 0.05 and errs["ivfpq"] < 3 * errs["ivf"] + 0.01, errs
