import torch

from gigasid.core.noise import STREAM_INIT, STREAM_STEP, gaussian_region


def test_region_independent_of_tiling():
    whole = gaussian_region(7, 2, 5, 3, (0, 40, 0, 50))
    part = gaussian_region(7, 2, 5, 3, (13, 29, 21, 47))
    torch.testing.assert_close(part, whole[:, 13:29, 21:47], rtol=0, atol=0)


def test_statistics_are_standard_normal():
    z = gaussian_region(0, 0, 0, 3, (0, 256, 0, 256)).double()
    assert abs(z.mean().item()) < 0.01
    assert abs(z.std().item() - 1.0) < 0.01
    # Neighbouring pixels and channels are uncorrelated.
    assert abs((z[:, :, 1:] * z[:, :, :-1]).mean().item()) < 0.01
    assert abs((z[0] * z[1]).mean().item()) < 0.01
    # Tails look Gaussian: P(|z| > 3) ~ 0.0027.
    frac = (z.abs() > 3).double().mean().item()
    assert 0.0018 < frac < 0.0036


def test_counters_change_the_numbers():
    base = gaussian_region(1, 0, 0, 1, (0, 16, 0, 16))
    for other in (gaussian_region(2, 0, 0, 1, (0, 16, 0, 16)),
                  gaussian_region(1, 1, 0, 1, (0, 16, 0, 16)),
                  gaussian_region(1, 0, 1, 1, (0, 16, 0, 16)),
                  gaussian_region(1, 0, 0, 1, (0, 16, 0, 16), stream=STREAM_STEP)):
        assert not torch.equal(base, other)
        assert abs(torch.corrcoef(torch.stack([base.flatten(), other.flatten()]))[0, 1]) < 0.3
    assert STREAM_INIT != STREAM_STEP
