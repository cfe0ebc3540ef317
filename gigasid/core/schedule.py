"""Noise schedules, the eta-controlled DDIM step, inversion helpers (spec §3, §6.5).

Time index ``t``: 0 is the clean terminal, ``T`` the noisiest. Tables have ``T + 1`` entries;
entry 0 is the terminal ``(alpha, sigma) = (1, 0)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Schedule:
    """Per-step signal and noise scales of one scale's diffusion process.

    Attributes
    ----------
    alphas, sigmas:
        Tuples of ``T + 1`` floats; index 0 is the clean terminal (1, 0).
    """

    alphas: tuple[float, ...]
    sigmas: tuple[float, ...]

    @property
    def num_steps(self) -> int:
        return len(self.alphas) - 1

    def noise_fraction(self, t: int) -> float:
        """Scheduler-invariant noise level ``sigma / (alpha + sigma)`` of step ``t``."""
        a, s = self.alphas[t], self.sigmas[t]
        return 0.0 if t == 0 else s / (a + s)

    def index_for_noise_level(self, level: float | None) -> int:
        """Step whose noise fraction is closest to ``level`` (``None`` -> ``T``), at least 1."""
        if level is None:
            return self.num_steps
        best = min(range(1, self.num_steps + 1), key=lambda t: abs(self.noise_fraction(t) - level))
        return max(1, best)


def flow_linear(num_steps: int, sigma_min: float = 1e-4) -> Schedule:
    """Rectified-flow schedule: ``alpha_t = (1 - sigma_min)(T - t)/(T - 1)``, ``sigma = 1 - alpha``.

    ``sigma_1 = sigma_min`` and ``alpha_T = 0`` (pure noise). ``T = 1`` gives the single
    point ``alpha = 1 - sigma_min`` as in the reference implementation.
    """
    if num_steps < 1:
        raise ValueError("num_steps must be >= 1")
    # Computed in float32 like the reference so tables match bit for bit.
    if num_steps == 1:
        lin = torch.tensor([1.0 - sigma_min], dtype=torch.float32)
    else:
        lin = torch.linspace(1.0 - sigma_min, 0.0, num_steps, dtype=torch.float32)
    alphas = [1.0] + [float(a) for a in lin]
    sigmas = [0.0] + [float(1.0 - a) for a in lin.tolist()]
    return Schedule(tuple(alphas), tuple(sigmas))


def ve_edm(
    num_steps: int, sigma_min: float = 0.002, sigma_max: float = 80.0, rho: float = 7.0
) -> Schedule:
    """Karras (EDM) variance-exploding schedule with ``alpha = 1``."""
    if num_steps < 2:
        raise ValueError("ve_edm needs num_steps >= 2")
    lo, hi = sigma_min ** (1.0 / rho), sigma_max ** (1.0 / rho)
    sig = [(lo + (t - 1) / (num_steps - 1) * (hi - lo)) ** rho for t in range(1, num_steps + 1)]
    return Schedule(tuple([1.0] * (num_steps + 1)), tuple([0.0] + sig))


def make_schedule(kind: str, num_steps: int, sigma_min: float | None = None, **kw) -> Schedule:
    """Build a schedule by name (``flow_linear`` or ``ve_edm``)."""
    if kind == "flow_linear":
        return flow_linear(num_steps, 1e-4 if sigma_min is None else sigma_min)
    if kind == "ve_edm":
        return ve_edm(num_steps, 0.002 if sigma_min is None else sigma_min, **kw)
    raise ValueError(f"unknown schedule {kind!r}")


def implied_noise(x_t: torch.Tensor, x_hat: torch.Tensor, alpha: float,
                  sigma: float) -> torch.Tensor:
    """Noise implied by a clean estimate: ``eps = (x_t - alpha * x_hat) / sigma``."""
    return (x_t - alpha * x_hat) / sigma


def step(
    x_hat: torch.Tensor,
    eps_hat: torch.Tensor,
    alpha_next: float,
    sigma_next: float,
    eta: float = 0.0,
    noise: torch.Tensor | None = None,
) -> torch.Tensor:
    """Move to the target noise level (spec §3).

    ``x' = alpha' x_hat + sqrt(sigma'^2 - (eta sigma')^2) eps_hat + eta sigma' z``. The target
    ``sigma' = 0`` returns ``x_hat`` itself (no noise at any eta). ``eta = 0`` is deterministic
    DDIM; ``eta = 1`` discards ``eps_hat`` and renoises completely. The variance stays
    ``sigma'^2`` for every eta.
    """
    if not 0.0 <= eta <= 1.0:
        raise ValueError("eta must lie in [0, 1]")
    if sigma_next == 0.0:
        return x_hat
    out = alpha_next * x_hat + math.sqrt(max(sigma_next**2 * (1.0 - eta**2), 0.0)) * eps_hat
    if eta > 0.0:
        if noise is None:
            raise ValueError("eta > 0 needs a noise tensor")
        out = out + (eta * sigma_next) * noise
    return out
