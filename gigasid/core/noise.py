"""Counter-based Gaussian noise: a pixel's value is a pure function of its coordinates.

``z = normal(hash(seed, stream, scale, step, channel, y, x))``. Whichever tile, worker or
process draws a pixel, it gets the same number, which is what makes tiled, parallel and
resumed runs produce the same bytes as a single in-memory run.

The hash is a chain of 32-bit integer mixers (Wellons' "lowbias32") evaluated in int64 with
explicit masking; two independent 32-bit words feed a Box-Muller transform in float64.
"""

from __future__ import annotations

import torch

from gigasid.core import kernels

_MASK = 0xFFFFFFFF

#: Named noise streams, so that different uses of one (scale, step) never share numbers.
STREAM_INIT = 0  # x_T = sigma_T z
STREAM_STEP = 1  # the eta > 0 renoising term
STREAM_WARM = 2  # the warm start of DDIM inversion
STREAM_HOLD = 3  # the noise of a held (known) region: x_t = alpha_t y + sigma_t z


def _mix32(h: torch.Tensor) -> torch.Tensor:
    """32-bit avalanche mixer on int64 tensors holding values in [0, 2**32)."""
    # Products may exceed 2**63 and wrap; the low 32 bits, which we keep, are still exact.
    h = h ^ (h >> 16)
    h = (h * 0x7FEB352D) & _MASK
    h = h ^ (h >> 15)
    h = (h * 0x846CA68B) & _MASK
    h = h ^ (h >> 16)
    return h


def _absorb(h: torch.Tensor | int, value: torch.Tensor | int) -> torch.Tensor:
    """Fold one counter value into the running hash state."""
    if isinstance(value, int):
        value = torch.tensor(value & _MASK, dtype=torch.int64)
    if isinstance(h, int):
        h = torch.tensor(h & _MASK, dtype=torch.int64)
    return _mix32(((h ^ (value & _MASK)) + 0x9E3779B9) & _MASK)


def gaussian_region(
    seed: int,
    scale: int,
    step: int,
    channels: int,
    region: tuple[int, int, int, int],
    stream: int = STREAM_INIT,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """Standard-normal noise for a region of one scale's image.

    Parameters
    ----------
    seed, scale, step, stream:
        Counter coordinates shared by the whole region.
    channels:
        Number of channels ``C``.
    region:
        ``(y0, y1, x0, x1)`` in global pixel coordinates of that scale.

    Returns
    -------
    torch.Tensor
        ``(C, y1 - y0, x1 - x0)`` tensor of i.i.d. N(0, 1) samples.
    """
    y0, y1, x0, x1 = region
    base = _absorb(_absorb(_absorb(_absorb(0x243F6A88, seed), stream), scale), step)
    if dtype == torch.float32 and torch.device(device).type == "cpu" and kernels.mode() == "numba":
        return kernels.gaussian(int(base), channels, region)
    return _gaussian_torch(base, channels, region, dtype, device)


def _gaussian_torch(base: torch.Tensor, channels: int, region: tuple[int, int, int, int],
                    dtype: torch.dtype, device: torch.device | str) -> torch.Tensor:
    """The reference: :func:`gaussian_region` as full-size tensor operations."""
    y0, y1, x0, x1 = region
    c = torch.arange(channels, dtype=torch.int64, device=device)[:, None, None]
    y = torch.arange(y0, y1, dtype=torch.int64, device=device)[None, :, None]
    x = torch.arange(x0, x1, dtype=torch.int64, device=device)[None, None, :]
    h = _absorb(_absorb(_absorb(base.to(device), c), y), x)
    u1 = _mix32(h ^ 0x68E31DA4).to(torch.float64)
    u2 = _mix32(h ^ 0xB5297A4D).to(torch.float64)
    # (k + 0.5) / 2**32 lies strictly inside (0, 1), so log() is finite.
    u1 = (u1 + 0.5) / 4294967296.0
    u2 = (u2 + 0.5) / 4294967296.0
    z = torch.sqrt(-2.0 * torch.log(u1)) * torch.cos(2.0 * torch.pi * u2)
    return z.to(dtype)
