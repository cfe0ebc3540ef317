"""Mirror axes: a window in the trailing half reuses its partner's estimate, reflected."""

import pytest
import torch

from gigasid.core import patches as P
from gigasid.core.denoisers import ExactDenoiser
from gigasid.core.domain import Domain, mirror_starts
from gigasid.core.image_denoiser import denoise_region, patch_halo_region
from gigasid.core.sampler import denoise_image


@pytest.mark.parametrize("size,patch,stride", [(20, 5, 1), (20, 5, 3), (31, 7, 2), (64, 15, 3),
                                               (15, 15, 1), (40, 15, 7)])
def test_mirror_grid_is_symmetric_and_covers_every_pixel(size, patch, stride):
    g = mirror_starts(size, patch, stride)
    assert torch.equal(torch.flip(size - patch - g, [0]), g)
    covered = torch.zeros(size, dtype=torch.bool)
    for s in g.tolist():
        covered[s: s + patch] = True
    assert bool(covered.all())
    if stride == 1:
        assert torch.equal(g, P.patch_starts(size, patch, 1))


class _Counting:
    """A denoiser that is not flip-equivariant (adds a left-to-right ramp), counting queries."""

    def __init__(self, inner, patch, channels):
        self.inner, self.n = inner, 0
        ramp = torch.linspace(-0.3, 0.3, patch).expand(channels, patch, patch)
        self.ramp = ramp.reshape(-1)

    def __call__(self, q, alpha, sigma):
        self.n += q.shape[0]
        return self.inner(q, alpha, sigma) + self.ramp


def _setup(kinds, shape=(30, 41), patch=7):
    g = torch.Generator().manual_seed(3)
    ref = torch.rand(3, 40, 40, generator=g) * 2 - 1
    y = P.extract(ref, P.patch_starts(40, patch), P.patch_starts(40, patch), patch)
    dom = Domain.make(shape, kinds)
    stored = torch.rand(3, *dom.stored_shape, generator=g) * 2 - 1
    return dom, dom.expand(stored), _Counting(ExactDenoiser(y), patch, 3), patch


@pytest.mark.parametrize("kinds", [("plane", "mirror"), ("mirror", "plane"),
                                   ("mirror", "mirror")])
@pytest.mark.parametrize("stride", [1, 2])
def test_mirror_estimate_reflects_partners_and_matches_whole_image(kinds, stride):
    dom, full, den, patch = _setup(kinds)
    window = P.fold_window(patch, 0.2)
    whole = denoise_image(full, dom, patch, stride, window, den, 0.7, 0.4)
    # symmetric by construction (up to the order of the fold's sums), even for a denoiser
    # that is not flip-equivariant: its ramp alone would make the halves differ by ~0.3
    # (except under a window centred on the line, its own partner)
    for dim, axis in ((1, dom.y), (2, dom.x)):
        if axis.kind == "mirror":
            keep = torch.ones(axis.size, dtype=torch.bool)
            span = axis.size - patch
            if span % 2 == 0:
                keep[span // 2: span // 2 + patch] = False
            diff = (whole - whole.flip(dim)).index_select(dim, torch.nonzero(keep).flatten())
            assert float(diff.abs().max()) < 1e-5
    # the stored half, computed as a region, denoises only the leading windows
    hs, ws = dom.stored_shape
    region = (0, hs, 0, ws)
    win = patch_halo_region(dom, patch, stride, region)
    den.n = 0
    est = denoise_region(full[:, win[0]:win[1], win[2]:win[3]], (win[0], win[2]), dom, region,
                         patch, stride, window, den, 0.7, 0.4)
    assert torch.allclose(est, dom.fold_in(whole), atol=1e-5)
    touching = 1
    distinct = 1
    for axis, (lo, hi) in ((dom.y, (0, hs)), (dom.x, (0, ws))):
        s = axis.starts_touching(patch, stride, lo, hi)
        touching *= len(s)
        distinct *= len(torch.unique(axis.canonical_windows(s, patch)[0]))
        if axis.kind == "mirror":
            assert int(axis.canonical_windows(s, patch)[0].max()) <= (axis.size - patch) // 2
    assert den.n == distinct < touching


def test_mirror_tiles_equal_the_stored_half():
    dom, full, den, patch = _setup(("mirror", "mirror"), shape=(33, 44))
    window = P.fold_window(patch, 0.2)
    hs, ws = dom.stored_shape

    def region(r):
        w = patch_halo_region(dom, patch, 1, r)
        return denoise_region(full[:, w[0]:w[1], w[2]:w[3]], (w[0], w[2]), dom, r, patch, 1,
                              window, den, 0.6, 0.3)

    whole = region((0, hs, 0, ws))
    tiled = torch.cat([torch.cat([region((y0, min(hs, y0 + 6), x0, min(ws, x0 + 5)))
                                  for x0 in range(0, ws, 5)], 2) for y0 in range(0, hs, 6)], 1)
    assert torch.equal(tiled, whole)
