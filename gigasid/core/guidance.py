"""The guidance step of text-guided style (spec §6.7), as pure tensor math.

A guided step moves the clean estimate along the gradient of a differentiable score (the
CLIP similarity to a text) without letting the gradient's few large pixels dominate:

1. momentum: ``x_m = (1 - lam) x_prev + lam x_hat`` (``x_hat`` alone at the first step);
2. soft threshold: with ``e(p) = ||g(p)||`` over the channels and ``tau`` the
   ``(1 - fill_factor)``-quantile of ``e``, keep ``max(e - tau, 0) g / e`` on ``M = [e > tau]``;
3. energy normalisation: scale so the update has the energy of ``x_m`` on ``M``;
4. ``clamp(x_m + gamma_t c g~ M, -1, 1)``, with ``gamma_t = gamma sigma_t / sigma_t*`` fading
   linearly to zero at the end of the reconstruction.

Nothing here knows about CLIP: the gradient comes in as a tensor.
"""

from __future__ import annotations

import torch


def momentum_mix(x_hat: torch.Tensor, x_prev: torch.Tensor | None, lam: float) -> torch.Tensor:
    """``(1 - lam) x_prev + lam x_hat``, or ``x_hat`` when there is no previous estimate."""
    if x_prev is None:
        return x_hat
    return (1.0 - lam) * x_prev + lam * x_hat


def faded_strength(strength: float, sigma_t: float, sigma_start: float) -> float:
    """``gamma_t = gamma sigma_t / sigma_t*``: full strength at the first guided step, close to
    zero at the last (``sigma_1 = sigma_min``)."""
    return strength * sigma_t / sigma_start


def soft_threshold(grad: torch.Tensor, fill_factor: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Shrink per-pixel gradient vectors by the ``(1 - fill_factor)``-quantile of their norms.

    Parameters
    ----------
    grad:
        ``(C, H, W)`` gradient.
    fill_factor:
        Share of pixels (about) that keep a non-zero update, in ``(0, 1]``.

    Returns
    -------
    (torch.Tensor, torch.Tensor)
        The shrunk gradient ``(C, H, W)`` and the boolean mask ``M`` ``(1, H, W)``.
    """
    g = grad.to(torch.float32)
    e = torch.linalg.vector_norm(g, dim=0, keepdim=True)  # (1, H, W)
    tau = torch.quantile(e.flatten(), 1.0 - fill_factor, interpolation="nearest")
    mask = e > tau
    shrunk = torch.clamp(e - tau, min=0.0) * g / e
    return torch.nan_to_num(shrunk, nan=0.0, posinf=0.0, neginf=0.0), mask


def guided_update(x_m: torch.Tensor, grad: torch.Tensor, gamma_t: float,
                  fill_factor: float) -> torch.Tensor:
    """One guidance update of ``x_m`` along the ascent direction ``grad`` (spec §6.7 G 3-5).

    The thresholded gradient is scaled to the energy of ``x_m`` on the mask, so ``gamma_t``
    is a relative step whatever the gradient's magnitude. A zero gradient leaves ``x_m``
    as it is (clamped).
    """
    shrunk, mask = soft_threshold(grad, fill_factor)
    m = mask.to(x_m.dtype)
    g_norm = torch.linalg.vector_norm(shrunk * m)
    if float(g_norm) == 0.0:
        return x_m.clamp(-1.0, 1.0)
    c = torch.linalg.vector_norm(x_m * m) / g_norm
    return (x_m + (gamma_t * c) * shrunk * m).clamp(-1.0, 1.0)


__all__ = ["faded_strength", "guided_update", "momentum_mix", "soft_threshold"]
