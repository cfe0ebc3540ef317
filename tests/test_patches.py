import pytest
import torch
import torch.nn.functional as F

from gigasid.core import patches as P
from gigasid.core.denoisers import ExactDenoiser
from gigasid.core.domain import Domain
from gigasid.core.image_denoiser import denoise_region


@pytest.mark.parametrize("stride", [1, 2, 3, 5])
@pytest.mark.parametrize("size", [(31, 40), (29, 29)])
def test_query_grid_covers_every_pixel(stride, size):
    h, w = size
    ys, xs = P.patch_starts(h, 7, stride), P.patch_starts(w, 7, stride)
    cov = torch.zeros(h, w)
    for y in ys.tolist():
        for x in xs.tolist():
            cov[y : y + 7, x : x + 7] += 1
    assert (cov > 0).all()
    assert int(ys[-1]) == h - 7 and int(xs[-1]) == w - 7
    assert all(int(v) % stride == 0 for v in ys[:-1])  # anchored at global multiples


def test_extract_matches_unfold():
    x = torch.rand(3, 20, 23)
    ys, xs = P.patch_starts(20, 5), P.patch_starts(23, 5)
    ours = P.extract(x, ys, xs, 5)
    ref = F.unfold(x[None], 5)[0].T
    torch.testing.assert_close(ours, ref)


@pytest.mark.parametrize("stride", [1, 2, 3])
@pytest.mark.parametrize("rho", [0.2, 1.0, float("inf")])
def test_fold_of_own_patches_reproduces_image(photo, stride, rho):
    x = photo[:, :45, :52]
    ys, xs = P.patch_starts(45, 9, stride), P.patch_starts(52, 9, stride)
    data = P.extract(x, P.patch_starts(45, 9), P.patch_starts(52, 9), 9)
    g = P.fold_window(9, rho)
    # At a tiny noise level the denoiser returns each patch itself.
    out = denoise_region(x, (0, 0), Domain.make((45, 52)), (0, 45, 0, 52), 9, stride, g,
                         ExactDenoiser(data), 1.0, 1e-4)
    assert len(ys) * len(xs) > 0
    torch.testing.assert_close(out, x, rtol=0, atol=1e-5)


def test_fold_weights_shape_and_uniform():
    w = P.fold_weights(5, float("inf"), 3)
    assert w.shape == (75,) and torch.all(w == 1)
    g = P.fold_weights(5, 0.2, 1)
    assert g.argmax() == 12  # centre of the 5x5 window


@pytest.mark.parametrize("stride", [1, 2, 3])
def test_patch_grid_gathers_the_extracted_patches(photo, stride):
    img = photo[:, :40, :53]
    grid = P.PatchGrid(img, 7, stride)
    ys, xs = P.patch_starts(40, 7, stride), P.patch_starts(53, 7, stride)
    ref = P.extract(img, ys, xs, 7)
    assert grid.n == ref.shape[0] and grid.dim == ref.shape[1]
    idx = torch.randint(0, grid.n, (5, 9), generator=torch.Generator().manual_seed(stride))
    got = grid.gather(idx)
    assert got.shape == (5, 9, ref.shape[1])
    assert torch.equal(got.reshape(45, -1), ref[idx.reshape(-1)])
    assert torch.equal(grid.block(0, grid.n), ref)


def test_patch_grid_of_several_images_with_exclusions(photo):
    """Multi-reference datasets: the patches of every image, minus excluded windows."""
    a, b = photo[:, :30, :41], photo[:, 100:126, 60:95]
    ex = torch.zeros(len(P.patch_starts(30, 5)), len(P.patch_starts(41, 5)), dtype=torch.bool)
    ex[3:9, 10:20] = True
    grid = P.PatchGrid([a, b], 5, 1, [ex, None])
    ref_a = P.extract(a, P.patch_starts(30, 5), P.patch_starts(41, 5), 5)[~ex.reshape(-1)]
    ref_b = P.extract(b, P.patch_starts(26, 5), P.patch_starts(35, 5), 5)
    ref = torch.cat([ref_a, ref_b])
    assert grid.n == ref.shape[0]
    assert torch.equal(grid.block(0, grid.n), ref)


def test_patch_grid_corners_name_where_each_patch_comes_from():
    """``corners`` of every patch of a two-image grid with left-out windows: the patch read
    at that image and corner is the patch gathered."""
    g = torch.Generator().manual_seed(3)
    a, b = torch.rand(3, 12, 15, generator=g), torch.rand(3, 9, 11, generator=g)
    ex = torch.zeros(len(P.patch_starts(12, 4)), len(P.patch_starts(15, 4)), dtype=torch.bool)
    ex[2:5, 3:7] = True
    grid = P.PatchGrid([a, b], 4, 1, [ex, None])
    idx = torch.arange(grid.n)
    image, y, x = grid.corners(idx)
    imgs = (a, b)
    for i in range(grid.n):
        want = imgs[image[i]][:, y[i]:y[i] + 4, x[i]:x[i] + 4].reshape(-1)
        assert torch.equal(grid.gather(idx[i:i + 1])[0], want)
    assert int((image == 0).sum()) == int((~ex).sum())
