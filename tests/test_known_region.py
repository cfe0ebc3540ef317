"""The known region's pyramid: coarse levels are made of known pixels only."""

from __future__ import annotations

import torch

from gigasid.apps.known import generated_mask, hole_shares, known_pyramid
from gigasid.core.pyramid import build_pyramid, pyramid_shapes


def _scene():
    """A smooth grey-blue field with a saturated red square over the hole (the object a
    user removes, or the empty canvas around an input)."""
    h, w = 96, 128
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, h), torch.linspace(-1, 1, w), indexing="ij")
    img = torch.stack([0.1 * xx - 0.2, 0.1 * yy, 0.3 + 0.0 * xx]).to(torch.float32)
    hole = torch.zeros(h, w, dtype=torch.bool)
    hole[30:62, 40:80] = True
    img[:, hole] = torch.tensor([1.0, -1.0, -1.0])[:, None]
    return img, hole


def test_held_coarse_pixels_carry_no_hole_content():
    img, hole = _scene()
    shapes = pyramid_shapes(tuple(img.shape[1:]), 4, 0.5, 8)
    shares = hole_shares(hole, shapes)
    ours = known_pyramid(img, hole, shapes)
    plain = build_pyramid(img, shapes)
    assert torch.equal(ours[0], img)  # the finest level is the input itself
    leaks = []
    for s in range(1, len(shapes)):
        held = ~generated_mask(shares[s], False)
        band = held & (shares[s] > 0.02)  # held pixels that the hole's footprint reaches
        assert bool(band.any())
        # the field's red channel is at most -0.1: the known pyramid holds the field's own
        # colour there, the plain pyramid a mix with the square's red
        assert float(ours[s][0][band].max()) < -0.08
        leaks.append(float(plain[s][0][band].max()))
        # away from the hole both pyramids agree
        far = shares[s] == 0
        assert torch.allclose(ours[s][:, far], plain[s][:, far].to(ours[s].dtype), atol=1e-5)
    assert max(leaks) > 0.1, leaks  # the case the known pyramid exists for does occur


def test_active_parts_cover_every_generated_pixel_and_little_else():
    from gigasid.apps.known import active_parts

    g = torch.Generator().manual_seed(3)
    hole = torch.zeros(150, 230, dtype=torch.bool)
    for _ in range(6):  # scattered strokes
        y, x = (int(v) for v in torch.randint(0, 140, (2,), generator=g))
        hole[y:y + 8, x:x + 60] = True
    parts_of = active_parts(hole, block=16)
    for region in [(0, 150, 0, 230), (17, 101, 40, 229)]:
        y0, y1, x0, x1 = region
        covered = torch.zeros_like(hole)
        for p in parts_of(region):
            assert y0 <= p[0] < p[1] <= y1 and x0 <= p[2] < p[3] <= x1
            assert not covered[p[0]:p[1], p[2]:p[3]].any()  # disjoint
            covered[p[0]:p[1], p[2]:p[3]] = True
            assert hole[p[0]:p[1], p[2]:p[3]].any()  # only blocks that hold the hole
        inside = hole[y0:y1, x0:x1]
        assert covered[y0:y1, x0:x1][inside].all()
        assert covered.sum() < 0.8 * (y1 - y0) * (x1 - x0)
