"""Tests for gigasid.metrics: properties that a wrong implementation would break."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from skimage import data as skdata
from skimage.transform import resize

from gigasid import metrics
from gigasid.metrics import (
    mirror_asymmetry,
    near_duplicate_rate,
    patch_nn_distance,
    patch_swd,
    pixel_diversity,
    psnr,
    seam_error,
)

RATIOS = (100, 95, 90, 85, 80, 75, 70)


def _small(img: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    out = resize(img, size, anti_aliasing=True)
    return np.clip(out, 0.0, 1.0).astype(np.float64)


@pytest.fixture(scope="module")
def astro() -> np.ndarray:
    return _small(skdata.astronaut(), (64, 64))


@pytest.fixture(scope="module")
def coffee() -> np.ndarray:
    return _small(skdata.coffee()[:, 100:500], (64, 64))


def _shuffle_blocks(img: np.ndarray, block: int, seed: int) -> np.ndarray:
    h, w, _ = img.shape
    blocks = [
        img[y : y + block, x : x + block] for y in range(0, h, block) for x in range(0, w, block)
    ]
    order = np.random.default_rng(seed).permutation(len(blocks))
    nb = w // block
    rows = [
        np.concatenate([blocks[order[r * nb + c]] for c in range(nb)], axis=1)
        for r in range(h // block)
    ]
    return np.concatenate(rows, axis=0)


def _periodic(h: int, w: int, seed: int = 0) -> np.ndarray:
    """Sum of sines with integer periods over the image size, random phases per channel."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    out = np.zeros((h, w, 3))
    for c in range(3):
        for kx, ky in [(1, 0), (0, 2), (3, 1), (2, 3), (5, 4)]:
            ph = rng.uniform(0, 2 * np.pi)
            out[:, :, c] += np.sin(2 * np.pi * (kx * xx / w + ky * yy / h) + ph)
    out -= out.min()
    return out / out.max()


# ---------------------------------------------------------------------------------------------
# layout conversion
# ---------------------------------------------------------------------------------------------


def test_numpy_hwc_torch_chw_and_uint8_agree(astro: np.ndarray) -> None:
    q = np.round(astro * 255) / 255
    u8 = np.round(astro * 255).astype(np.uint8)
    t = torch.from_numpy(q).permute(2, 0, 1).float()
    other = np.roll(q, 5, axis=1)
    t_other = torch.from_numpy(other).permute(2, 0, 1)
    assert mirror_asymmetry(q) == pytest.approx(mirror_asymmetry(t), abs=1e-4)
    assert mirror_asymmetry(q) == pytest.approx(mirror_asymmetry(u8), abs=1e-9)
    assert mirror_asymmetry(q) == pytest.approx(mirror_asymmetry(t[None]), abs=1e-4)
    assert seam_error(q) == pytest.approx(seam_error(t), abs=1e-4)
    assert psnr(q, other) == pytest.approx(psnr(t, t_other), abs=1e-4)
    assert near_duplicate_rate([t_other], t) == near_duplicate_rate([other], q)
    stacked_np = np.stack([q, other])
    stacked_t = torch.stack([t.double(), t_other])
    assert pixel_diversity(stacked_np) == pytest.approx(pixel_diversity(stacked_t), abs=1e-7)
    assert pixel_diversity(stacked_np) == pytest.approx(pixel_diversity([q, other]), abs=1e-12)


def test_bad_layouts_raise() -> None:
    with pytest.raises(ValueError):
        mirror_asymmetry(np.zeros((2, 4, 4, 3)))
    with pytest.raises(ValueError):
        mirror_asymmetry(torch.zeros(2, 3, 4, 4))
    with pytest.raises(ValueError):
        mirror_asymmetry(np.zeros((4, 4, 3), dtype=np.int32))
    with pytest.raises(ValueError):
        pixel_diversity(np.zeros((4, 4, 3)))  # a single image is not a stacked set


# ---------------------------------------------------------------------------------------------
# near_duplicate_rate
# ---------------------------------------------------------------------------------------------


def test_near_duplicate_reference_and_tiny_noise(astro: np.ndarray) -> None:
    rng = np.random.default_rng(0)
    noisy = np.clip(astro + rng.uniform(-3 / 255, 3 / 255, astro.shape), 0, 1)
    out = near_duplicate_rate([astro, noisy], astro)
    assert list(out) == list(RATIOS)
    assert all(v == 1.0 for v in out.values())


def test_near_duplicate_unrelated_is_zero(astro: np.ndarray, coffee: np.ndarray) -> None:
    out = near_duplicate_rate([coffee, 1.0 - astro], astro)
    assert all(v == 0.0 for v in out.values())


def test_near_duplicate_exact_fractions_and_monotone() -> None:
    ref = np.full((10, 10, 3), 0.5)
    samples = []
    # k corrupted pixels out of 100 -> close fraction (100 - k)%.
    for k in (0, 3, 5, 10, 12, 20, 26, 30, 31, 60):
        s = ref.copy()
        s.reshape(-1, 3)[:k] = 1.0
        samples.append(s)
    out = near_duplicate_rate(samples, ref, ratios=(100, 95, 90, 85, 80, 75, 70, 0))
    expected = {
        100: 1 / 10,
        95: 3 / 10,  # k in {0, 3, 5}
        90: 4 / 10,
        85: 5 / 10,
        80: 6 / 10,
        75: 6 / 10,
        70: 8 / 10,
        0: 1.0,
    }
    assert out == pytest.approx(expected)
    vals = [out[r] for r in (100, 95, 90, 85, 80, 75, 70)]
    assert all(a <= b for a, b in zip(vals, vals[1:], strict=False))


@pytest.mark.parametrize("kind", ["float64", "float32", "uint8", "torch"])
def test_near_duplicate_boundary_at_tol(kind: str) -> None:
    ref8 = np.full((8, 8, 3), 100, dtype=np.uint8)
    at_tol = ref8 + np.array([15, 15, 15], dtype=np.uint8)  # mean diff == 15/255: not below
    below = ref8 + np.array([15, 15, 14], dtype=np.uint8)  # mean diff == 44/765 < 15/255
    above_neg = ref8 - np.array([15, 16, 14], dtype=np.uint8)  # mean == 15/255 again

    def conv(a: np.ndarray):
        if kind == "uint8":
            return a
        f = a.astype(np.float64) / 255
        if kind == "float32":
            return f.astype(np.float32)
        if kind == "torch":
            return torch.from_numpy(f).permute(2, 0, 1).float()
        return f

    out = near_duplicate_rate([conv(at_tol), conv(below), conv(above_neg)], conv(ref8))
    assert all(v == pytest.approx(1 / 3) for v in out.values())
    # A slightly looser tolerance admits the on-threshold samples too.
    out2 = near_duplicate_rate([conv(at_tol), conv(above_neg)], conv(ref8), tol=15.5 / 255)
    assert all(v == 1.0 for v in out2.values())


def test_near_duplicate_shape_mismatch_and_empty(astro: np.ndarray) -> None:
    with pytest.raises(ValueError, match=r"\(32, 64, 3\).*\(64, 64, 3\)"):
        near_duplicate_rate([astro, astro[:32]], astro)
    with pytest.raises(ValueError, match="empty"):
        near_duplicate_rate([], astro)
    with pytest.raises(ValueError):
        near_duplicate_rate([astro], astro, ratios=(101,))


# ---------------------------------------------------------------------------------------------
# pixel_diversity
# ---------------------------------------------------------------------------------------------


def test_pixel_diversity_identical_is_zero(astro: np.ndarray) -> None:
    assert pixel_diversity([astro] * 5) == pytest.approx(0.0, abs=1e-12)


def test_pixel_diversity_two_constants() -> None:
    a = np.full((6, 7, 3), 0.2)
    b = np.full((6, 7, 3), 0.6)
    # population std of {0.2, 0.6} is 0.2 at every pixel
    assert pixel_diversity([a, b]) == pytest.approx(0.2, abs=1e-12)
    # three constants {0, 0, 0.9}: std = sqrt(mean(x^2) - mean^2) = sqrt(0.27 - 0.09)
    z = np.zeros((6, 7, 3))
    assert pixel_diversity([z, z, np.full_like(z, 0.9)]) == pytest.approx(math.sqrt(0.18))


def test_pixel_diversity_matches_numpy_and_bounds() -> None:
    rng = np.random.default_rng(1)
    stack = rng.uniform(0, 1, (7, 9, 11, 3))
    assert pixel_diversity(list(stack)) == pytest.approx(stack.std(axis=0).mean(), rel=1e-12)
    # population (not sample) std: for {0, 1} it is exactly 0.5
    assert pixel_diversity([np.zeros((3, 3, 3)), np.ones((3, 3, 3))]) == pytest.approx(0.5)


def test_pixel_diversity_errors() -> None:
    with pytest.raises(ValueError, match="at least 2"):
        pixel_diversity([np.zeros((4, 4, 3))])
    with pytest.raises(ValueError, match="shape"):
        pixel_diversity([np.zeros((4, 4, 3)), np.zeros((4, 5, 3))])


# ---------------------------------------------------------------------------------------------
# patch_nn_distance
# ---------------------------------------------------------------------------------------------


def test_patch_nn_identity_is_exactly_zero(astro: np.ndarray) -> None:
    out = patch_nn_distance(astro, astro, patch=5)
    assert out["mean"] == 0.0 and out["median"] == 0.0 and out["p95"] == 0.0
    assert out["num_queries"] == 60 * 60


def test_patch_nn_shuffled_blocks_vs_noise() -> None:
    ref = _small(skdata.astronaut(), (96, 96))
    shuffled = _shuffle_blocks(ref, 32, seed=3)
    assert not np.allclose(shuffled, ref)
    shuf = patch_nn_distance(shuffled, ref, patch=7)
    noise = patch_nn_distance(np.random.default_rng(0).uniform(0, 1, ref.shape), ref, patch=7)
    # ~75% of the windows lie inside a block, so the median window is an exact copy.
    assert shuf["median"] < 1e-9
    assert shuf["p95"] > 0.0  # windows straddling block borders are new
    assert noise["median"] > 0.15
    assert shuf["mean"] < 0.2 * noise["mean"]
    # Only windows inside one block: exactly zero.
    inner = patch_nn_distance(shuffled[32:64, 32:64], ref, patch=7)
    assert inner["p95"] < 1e-9


def test_patch_nn_subset_stride_and_seed(astro: np.ndarray, coffee: np.ndarray) -> None:
    a = patch_nn_distance(coffee, astro, patch=5, max_queries=300, seed=1)
    b = patch_nn_distance(coffee, astro, patch=5, max_queries=300, seed=1)
    c = patch_nn_distance(coffee, astro, patch=5, max_queries=300, seed=2)
    full = patch_nn_distance(coffee, astro, patch=5, max_queries=None)
    assert a == b
    assert a["num_queries"] == 300 and full["num_queries"] == 60 * 60
    assert a["mean"] != c["mean"]
    assert a["mean"] == pytest.approx(full["mean"], rel=0.15)
    strided = patch_nn_distance(coffee, astro, patch=5, stride=4)
    assert strided["num_queries"] == 15 * 15
    assert a["median"] <= a["p95"]


def test_patch_nn_brute_force_matches_numpy() -> None:
    rng = np.random.default_rng(4)
    sample = rng.uniform(0, 1, (12, 10, 3))
    ref = rng.uniform(0, 1, (9, 11, 3))
    p = 3
    sp = np.lib.stride_tricks.sliding_window_view(sample, (p, p), axis=(0, 1)).reshape(-1, 27)
    rp = np.lib.stride_tricks.sliding_window_view(ref, (p, p), axis=(0, 1)).reshape(-1, 27)
    d2 = ((sp[:, None, :] - rp[None, :, :]) ** 2).sum(-1).min(axis=1)
    rms = np.sqrt(d2 / 27)
    out = patch_nn_distance(sample, ref, patch=p, max_queries=None)
    assert out["mean"] == pytest.approx(rms.mean(), rel=1e-6)
    assert out["median"] == pytest.approx(np.median(rms), rel=1e-6)
    assert out["p95"] == pytest.approx(np.percentile(rms, 95), rel=1e-6)
    # torch fallback finds the same neighbours as faiss
    q = sp.astype(np.float32)
    b = rp.astype(np.float32)
    np.testing.assert_array_equal(metrics._nearest_torch(q, b), metrics._nearest_index(q, b))


def test_patch_nn_errors(astro: np.ndarray) -> None:
    with pytest.raises(ValueError, match="channels"):
        patch_nn_distance(astro[:, :, 0], astro)
    with pytest.raises(ValueError, match="larger"):
        patch_nn_distance(astro[:4, :4], astro, patch=7)


# ---------------------------------------------------------------------------------------------
# patch_swd
# ---------------------------------------------------------------------------------------------


def test_patch_swd_identity_symmetry_determinism(astro: np.ndarray, coffee: np.ndarray) -> None:
    assert patch_swd(astro, astro, num_projections=64) == 0.0
    d_ab = patch_swd(astro, coffee, num_projections=64, seed=5)
    assert d_ab > 0.0
    assert d_ab == patch_swd(coffee, astro, num_projections=64, seed=5)
    assert d_ab == patch_swd(astro, coffee, num_projections=64, seed=5)
    other_seed = patch_swd(astro, coffee, num_projections=64, seed=6)
    assert other_seed != d_ab
    assert other_seed == pytest.approx(d_ab, rel=0.25)


def test_patch_swd_symmetric_with_subsampling(astro: np.ndarray, coffee: np.ndarray) -> None:
    small = coffee[:40, :50]
    kw = {"num_projections": 32, "max_patches": 500, "seed": 9}
    assert patch_swd(astro, small, **kw) == patch_swd(small, astro, **kw)
    # identical images stay exactly 0 even when subsampled
    assert patch_swd(astro, astro.copy(), **kw) == 0.0


def test_patch_swd_grows_with_shift() -> None:
    from scipy.ndimage import gaussian_filter

    ref = _small(skdata.astronaut(), (80, 80))
    rng = np.random.default_rng(0)
    kw = {"num_projections": 64, "patch": 5}
    noisy_small = np.clip(ref + rng.normal(0, 0.03, ref.shape), 0, 1)
    noisy_big = np.clip(ref + rng.normal(0, 0.15, ref.shape), 0, 1)
    blurred = gaussian_filter(ref, sigma=(2, 2, 0))
    shuffled = _shuffle_blocks(ref, 40, seed=1)
    d_small = patch_swd(noisy_small, ref, **kw)
    d_big = patch_swd(noisy_big, ref, **kw)
    d_blur = patch_swd(blurred, ref, **kw)
    d_shuf = patch_swd(shuffled, ref, **kw)
    assert 0.0 < d_small < d_big
    assert d_blur > 0.0
    # rearranging patches barely changes the patch distribution
    assert d_shuf < 0.5 * d_blur and d_shuf < d_small


# ---------------------------------------------------------------------------------------------
# mirror_asymmetry
# ---------------------------------------------------------------------------------------------


def test_mirror_asymmetry(astro: np.ndarray) -> None:
    left = astro[:, :32]
    sym_h = np.concatenate([left, left[:, ::-1]], axis=1)
    odd = np.concatenate([left, astro[:, 32:33], left[:, ::-1]], axis=1)  # odd width
    assert mirror_asymmetry(sym_h) == 0.0
    assert mirror_asymmetry(odd, "horizontal") == 0.0
    assert mirror_asymmetry(sym_h, "vertical") > 1.0
    sym_v = np.concatenate([astro[:32], astro[:32][::-1]], axis=0)
    assert mirror_asymmetry(sym_v, "vertical") == 0.0
    assert mirror_asymmetry(astro) > 1.0
    half = np.zeros((4, 6, 3))
    half[:, 3:] = 1.0
    assert mirror_asymmetry(half) == pytest.approx(255.0)
    assert mirror_asymmetry(half, "vertical") == 0.0
    with pytest.raises(ValueError):
        mirror_asymmetry(astro, "diagonal")


# ---------------------------------------------------------------------------------------------
# seam_error
# ---------------------------------------------------------------------------------------------


def test_seam_error_periodic_is_small() -> None:
    img = _periodic(48, 64)
    # The wrap step is an ordinary step (median step here is ~9 in 0-255 units).
    for d in ("horizontal", "vertical", "both"):
        assert seam_error(img, d) < 2.5
    # a full period cropped anywhere from the 2x2 tiling is just as seamless
    tiled = np.tile(img, (2, 2, 1))[13 : 13 + 48, 21 : 21 + 64]
    assert seam_error(tiled) < 2.5
    # cropping a non-integer number of periods breaks the wrap
    assert seam_error(img[:, :57], "horizontal") > 20.0
    assert seam_error(img[:40], "vertical") > 20.0


def test_seam_error_discontinuity_is_large(astro: np.ndarray) -> None:
    ramp = np.broadcast_to(np.linspace(0, 1, 32)[None, :, None], (16, 32, 3)).copy()
    expected = (1.0 - 1 / 31) * 255  # seam |0 - 1| minus median step 1/31
    assert seam_error(ramp, "horizontal") == pytest.approx(expected)
    assert seam_error(ramp, "vertical") == 0.0  # constant along rows: seam == median == 0
    assert seam_error(ramp, "both") == pytest.approx(expected)
    assert seam_error(astro) > 10.0


def test_seam_error_direction_semantics() -> None:
    img = _periodic(48, 64)
    # break vertical periodicity only: a ramp along the rows
    broken = img * 0.5 + np.linspace(0, 0.5, 48)[:, None, None]
    h = seam_error(broken, "horizontal")
    v = seam_error(broken, "vertical")
    assert h < 2.5 and v > 50.0
    assert seam_error(broken, "both") == max(h, v)
    with pytest.raises(ValueError):
        seam_error(img, "diagonal")


# ---------------------------------------------------------------------------------------------
# psnr
# ---------------------------------------------------------------------------------------------


def test_psnr(astro: np.ndarray) -> None:
    assert psnr(astro, astro) == math.inf
    rng = np.random.default_rng(2)
    other = np.clip(astro + rng.normal(0, 0.05, astro.shape), 0, 1)
    mse = np.mean((astro - other) ** 2)
    assert psnr(astro, other) == pytest.approx(10 * math.log10(1 / mse), rel=1e-12)
    assert psnr(astro * 255, other * 255, data_range=255) == pytest.approx(psnr(astro, other))
    const = np.zeros((4, 4, 3))
    assert psnr(const, const + 0.1) == pytest.approx(20.0)
    with pytest.raises(ValueError, match="shape"):
        psnr(astro, astro[:10])
