"""Antialiased Keys-cubic resampling with mirror borders, evaluated region by region.

Behaviour follows the reference's resampler (spec §4.5): Keys cubic (a = -0.5); when
downscaling the kernel is stretched by ``1/scale`` (antialiasing); output pixel centres map to
input coordinates MATLAB-style, ``u = (o + 0.5) / scale - 0.5`` with ``scale = out / in`` per
axis; taps outside the image use symmetric (mirror) extension ``..., 1, 0 | 0, 1, ...``;
each output's weights are normalised to sum to one.

Weights are computed from GLOBAL indices, so resampling a region of a huge image gives
exactly the rows of the whole-image result. :func:`taps` also tells which input range a
region needs, which is how the engine sizes its halos.
"""

from __future__ import annotations

import functools
import math

import torch

from gigasid.core import kernels


def keys_cubic(x: torch.Tensor, a: float = -0.5) -> torch.Tensor:
    """Keys' cubic convolution kernel (support ``[-2, 2]``)."""
    ax = x.abs()
    ax2, ax3 = ax * ax, ax * ax * ax
    inner = (a + 2) * ax3 - (a + 3) * ax2 + 1
    outer = a * ax3 - 5 * a * ax2 + 8 * a * ax - 4 * a
    return torch.where(ax <= 1, inner, torch.where(ax < 2, outer, torch.zeros_like(ax)))


def mirror_index(i: torch.Tensor, n: int) -> torch.Tensor:
    """Map any integer index onto ``[0, n)`` by half-sample symmetric reflection."""
    period = 2 * n
    i = torch.remainder(i, period)
    return torch.where(i < n, i, period - 1 - i)


@functools.lru_cache(maxsize=4096)
def taps(in_size: int, out_size: int, lo: int, hi: int,
         wrap: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Input indices and weights of output samples ``lo .. hi-1`` along one axis.

    Parameters
    ----------
    wrap:
        The axis is periodic (a torus): taps beyond the ends are returned *unwrapped* (the
        caller's reader wraps them), instead of mirrored into ``[0, in_size)``.

    Returns
    -------
    idx : torch.Tensor
        ``(hi - lo, K)`` int64 global input indices.
    weight : torch.Tensor
        ``(hi - lo, K)`` float64 weights, each row summing to one.
    """
    scale = out_size / in_size
    if in_size == out_size:
        o = torch.arange(lo, hi, dtype=torch.int64)[:, None]
        return o, torch.ones(o.shape, dtype=torch.float64)
    stretch = min(scale, 1.0)  # antialias only when downscaling
    support = 2.0 / stretch
    o = torch.arange(lo, hi, dtype=torch.float64)
    u = (o + 0.5) / scale - 0.5
    left = torch.floor(u - support).to(torch.int64) + 1
    k = int(math.ceil(2 * support)) + 1
    j = left[:, None] + torch.arange(k, dtype=torch.int64)[None, :]
    w = stretch * keys_cubic((u[:, None] - j.to(torch.float64)) * stretch)
    w = w / w.sum(dim=1, keepdim=True)
    keep = (w != 0).any(dim=0)  # trim columns that are zero for every output
    j, w = j[:, keep], w[:, keep]
    return (j if wrap else mirror_index(j, in_size)), w


def input_range(in_size: int, out_size: int, lo: int, hi: int,
                wrap: bool = False) -> tuple[int, int]:
    """The input span ``[a, b)`` that output samples ``lo .. hi-1`` read (unwrapped if
    ``wrap``)."""
    idx, _ = taps(in_size, out_size, lo, hi, wrap)
    return int(idx.min()), int(idx.max()) + 1


def _resample_axis(x: torch.Tensor, dim: int, idx: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """``out[o] = sum_k w[o, k] x[idx[o, k]]`` along ``dim``, taps added in a fixed order.

    Each output is summed over its own taps only, always in the same order, so its bits do
    not depend on how large the surrounding window is (a dense GEMM over the window would
    group the additions by the window's size, i.e. by the tiling).
    """
    if (dim in (1, 2) and x.dim() == 3 and x.dtype == torch.float32 and w.dtype == torch.float32
            and kernels.enabled(x)):
        return kernels.resample_axis(x, dim, idx, w)
    out = None
    for k in range(idx.shape[1]):
        term = x.index_select(dim, idx[:, k])
        shape = [1] * x.dim()
        shape[dim] = idx.shape[0]
        term = term * w[:, k].view(shape)
        out = term if out is None else out.add_(term)
    return out


def resize_region(
    x: torch.Tensor,
    origin: tuple[int, int],
    in_shape: tuple[int, int],
    out_shape: tuple[int, int],
    region: tuple[int, int, int, int],
    wrap: tuple[bool, bool] = (False, False),
) -> torch.Tensor:
    """Resample a window of an image to a region of the resized image.

    Parameters
    ----------
    x:
        ``(C, h, w)`` window of the input image, whose top-left pixel is ``origin`` in the
        input's global coordinates (unwrapped on periodic axes). It must cover
        :func:`input_region` of the region.
    in_shape, out_shape:
        Global ``(H, W)`` of the input and of the resized image.
    region:
        ``(y0, y1, x0, x1)`` of the output, in the resized image's global coordinates.
    wrap:
        Per axis ``(y, x)``: periodic (torus) instead of mirrored borders.

    Returns
    -------
    torch.Tensor
        ``(C, y1 - y0, x1 - x0)``; arithmetic in float32 (float64 if ``x`` is float64).
    """
    y0, y1, x0, x1 = region
    work = torch.float64 if x.dtype == torch.float64 else torch.float32
    out = x.to(work)
    for dim, (n_in, n_out, lo, hi, org, wr) in ((1, (in_shape[0], out_shape[0], y0, y1,
                                                      origin[0], wrap[0])),
                                                (2, (in_shape[1], out_shape[1], x0, x1,
                                                     origin[1], wrap[1]))):
        idx, w = taps(n_in, n_out, lo, hi, wr)
        local = idx - org
        if int(local.min()) < 0 or int(local.max()) >= out.shape[dim]:
            raise ValueError("input window does not cover the resampling support")
        out = _resample_axis(out, dim, local.to(out.device), w.to(work).to(out.device))
    return out


def input_region(
    in_shape: tuple[int, int], out_shape: tuple[int, int], region: tuple[int, int, int, int],
    wrap: tuple[bool, bool] = (False, False),
) -> tuple[int, int, int, int]:
    """Input window ``(y0, y1, x0, x1)`` needed by :func:`resize_region` for ``region``."""
    a, b = input_range(in_shape[0], out_shape[0], region[0], region[1], wrap[0])
    c, d = input_range(in_shape[1], out_shape[1], region[2], region[3], wrap[1])
    return a, b, c, d


def resize(x: torch.Tensor, out_shape: tuple[int, int]) -> torch.Tensor:
    """Resample a whole ``(C, H, W)`` image (the one-region case of :func:`resize_region`)."""
    h, w = x.shape[-2:]
    return resize_region(x, (0, 0), (h, w), out_shape, (0, out_shape[0], 0, out_shape[1]))
