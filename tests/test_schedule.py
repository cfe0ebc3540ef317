import math

import pytest
import torch

from gigasid.core.schedule import flow_linear, implied_noise, step, ve_edm


def test_flow_linear_endpoints_and_sum():
    s = flow_linear(10, 1e-4)
    assert len(s.alphas) == 11 and s.alphas[0] == 1.0 and s.sigmas[0] == 0.0
    assert s.sigmas[1] == pytest.approx(1e-4, rel=1e-3)
    assert s.alphas[10] == 0.0 and s.sigmas[10] == 1.0
    for t in range(1, 11):
        assert s.alphas[t] + s.sigmas[t] == pytest.approx(1.0, abs=1e-6)
        assert s.alphas[t] == pytest.approx((1 - 1e-4) * (10 - t) / 9, abs=1e-6)


def test_noise_level_lookup():
    s = flow_linear(10, 1e-4)
    assert s.index_for_noise_level(None) == 10
    t = s.index_for_noise_level(0.3)
    assert abs(s.sigmas[t] - 0.3) <= min(abs(s.sigmas[u] - 0.3) for u in range(1, 11)) + 1e-9
    assert s.index_for_noise_level(0.0) == 1  # clamped to at least 1


def test_ve_edm_monotone():
    s = ve_edm(20)
    assert all(a == 1.0 for a in s.alphas)
    assert s.sigmas[1] == pytest.approx(0.002, rel=1e-6)
    assert s.sigmas[20] == pytest.approx(80.0, rel=1e-6)
    assert all(s.sigmas[t] < s.sigmas[t + 1] for t in range(1, 20))


def test_step_eta_zero_is_deterministic_and_exact_on_clean_target():
    torch.manual_seed(0)
    x0 = torch.randn(3, 8, 8)
    eps = torch.randn(3, 8, 8)
    a, s = 0.6, 0.4
    xt = a * x0 + s * eps
    # With a perfect estimate, DDIM recovers the same trajectory at any target.
    e = implied_noise(xt, x0, a, s)
    torch.testing.assert_close(e, eps, rtol=1e-5, atol=1e-5)
    x_next = step(x0, e, 0.8, 0.2, eta=0.0)
    torch.testing.assert_close(x_next, 0.8 * x0 + 0.2 * eps, rtol=1e-5, atol=1e-5)
    assert step(x0, e, 1.0, 0.0, eta=0.7, noise=torch.randn_like(x0)) is x0


@pytest.mark.parametrize("eta", [0.0, 0.5, 1.0])
def test_step_keeps_noise_variance(eta):
    torch.manual_seed(1)
    eps = torch.randn(200_000)
    z = torch.randn(200_000)
    out = step(torch.zeros(200_000), eps, 0.3, 0.7, eta=eta, noise=z)
    assert out.std().item() == pytest.approx(0.7, rel=0.01)


def test_step_rejects_bad_eta():
    with pytest.raises(ValueError):
        step(torch.zeros(1), torch.zeros(1), 0.5, 0.5, eta=1.5)
    assert math.isfinite(step(torch.zeros(1), torch.ones(1), 0.5, 0.5, eta=0.0).item())
