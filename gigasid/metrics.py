"""Quality metrics and diagnostics for single-image generation (spec §6.3, §6.4, §12).

All functions are pure: they take images, return numbers, and touch no files.

Image convention
----------------
Every image argument may be either

* a ``numpy.ndarray`` laid out ``(H, W, C)`` (or ``(H, W)`` for one channel), or
* a ``torch.Tensor`` laid out ``(C, H, W)`` (or ``(1, C, H, W)``, or ``(H, W)``).

Float values are expected in ``[0, 1]`` (they are not clipped or checked). ``uint8`` arrays and
tensors are accepted and scaled by ``1/255``; ``bool`` becomes ``{0, 1}``. Other integer dtypes
are rejected. A *set* of samples is a sequence of such images, or a stacked ``numpy`` array
``(N, H, W, C)``, or a stacked ``torch`` tensor ``(N, C, H, W)``.

Units
-----
``near_duplicate_rate``, ``pixel_diversity``, ``patch_nn_distance``, ``patch_swd`` and ``psnr``
work on the ``[0, 1]`` scale. ``mirror_asymmetry`` and ``seam_error`` report 0-255 units, which
equals the reference implementation's ``x 255/2`` on its ``[-1, 1]`` range.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import numpy as np
import torch

__all__ = [
    "near_duplicate_rate",
    "pixel_diversity",
    "patch_nn_distance",
    "patch_swd",
    "mirror_asymmetry",
    "seam_error",
    "seam_ratio",
    "psnr",
]

ImageLike = Any  # numpy (H, W[, C]) or torch ((1,) C, H, W) / (H, W)

#: Differences within this (absolute, [0, 1] scale) of ``tol`` count as equal to ``tol`` in
#: :func:`near_duplicate_rate`, so quantised data on the threshold is classified the same way
#: whatever dtype it arrives in (float32 rounding of ``k/255`` is ~1e-9).
_TOL_SLACK = 1e-6

# Elements per chunk of the torch fallback's distance matrix (float32: 64 MiB).
_CDIST_CHUNK_ELEMS = 1 << 24


# --------------------------------------------------------------------------------------------
# Conversion helpers
# --------------------------------------------------------------------------------------------


def _to_hwc(image: ImageLike, name: str = "image") -> np.ndarray:
    """Convert one image to a float64 numpy array laid out ``(H, W, C)``.

    Parameters
    ----------
    image:
        ``numpy`` array ``(H, W, C)`` / ``(H, W)``, or ``torch`` tensor ``(C, H, W)`` /
        ``(1, C, H, W)`` / ``(H, W)``. ``uint8`` is scaled by ``1/255``.
    name:
        Used in error messages.

    Returns
    -------
    numpy.ndarray
        Float64 ``(H, W, C)`` array (a copy when a conversion was needed).
    """
    if isinstance(image, torch.Tensor):
        t = image.detach().cpu()
        if t.ndim == 4 and t.shape[0] == 1:
            t = t[0]
        if t.ndim == 3:
            t = t.permute(1, 2, 0)
        elif t.ndim != 2:
            raise ValueError(
                f"{name}: torch tensor must be (C, H, W), (1, C, H, W) or (H, W); "
                f"got shape {tuple(image.shape)}"
            )
        if t.dtype == torch.uint8:
            arr = t.numpy().astype(np.float64) / 255.0
        elif t.dtype == torch.bool:
            arr = t.numpy().astype(np.float64)
        elif t.is_floating_point():
            arr = t.to(torch.float64).numpy()
        else:
            raise ValueError(f"{name}: unsupported tensor dtype {t.dtype} (use float or uint8)")
    else:
        a = np.asarray(image)
        if a.ndim not in (2, 3):
            raise ValueError(
                f"{name}: numpy array must be (H, W, C) or (H, W); got shape {a.shape}"
            )
        if a.dtype == np.uint8:
            arr = a.astype(np.float64) / 255.0
        elif a.dtype == np.bool_:
            arr = a.astype(np.float64)
        elif np.issubdtype(a.dtype, np.floating):
            arr = a.astype(np.float64, copy=False)
        else:
            raise ValueError(f"{name}: unsupported array dtype {a.dtype} (use float or uint8)")
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if arr.shape[0] == 0 or arr.shape[1] == 0 or arr.shape[2] == 0:
        raise ValueError(f"{name}: empty image of shape (H, W, C) = {arr.shape}")
    return arr


def _iter_samples(samples: Iterable[ImageLike] | np.ndarray | torch.Tensor) -> Iterator[Any]:
    """Yield the individual images of a sample set (stacked array/tensor or a sequence)."""
    if isinstance(samples, torch.Tensor):
        if samples.ndim != 4:
            raise ValueError(
                f"samples: a stacked torch tensor must be (N, C, H, W); got {tuple(samples.shape)}"
            )
        yield from samples
    elif isinstance(samples, np.ndarray):
        if samples.ndim != 4:
            raise ValueError(
                f"samples: a stacked numpy array must be (N, H, W, C); got {samples.shape}"
            )
        yield from samples
    else:
        yield from samples


def _same_shape(a: np.ndarray, b: np.ndarray, name_a: str, name_b: str) -> None:
    if a.shape != b.shape:
        raise ValueError(
            f"{name_a} has shape (H, W, C) = {a.shape} but {name_b} has shape {b.shape}; "
            "they must match"
        )


def _patch_view(img: np.ndarray, patch: int, name: str) -> np.ndarray:
    """Zero-copy view of all ``patch x patch`` windows: ``(nh, nw, C, patch, patch)``."""
    if patch < 1:
        raise ValueError(f"patch must be >= 1, got {patch}")
    h, w, _ = img.shape
    if patch > h or patch > w:
        raise ValueError(f"{name}: patch {patch} is larger than the image ({h} x {w})")
    return np.lib.stride_tricks.sliding_window_view(img, (patch, patch), axis=(0, 1))


def _gather(view: np.ndarray, flat_idx: np.ndarray | None, dtype: type) -> np.ndarray:
    """Materialise the windows of ``view`` at row-major indices ``flat_idx`` (all if None)."""
    nh, nw = view.shape[:2]
    d = int(np.prod(view.shape[2:]))
    if flat_idx is None:
        out = view.reshape(nh * nw, d)
    else:
        out = view[flat_idx // nw, flat_idx % nw].reshape(len(flat_idx), d)
    return np.ascontiguousarray(out, dtype=dtype)


# --------------------------------------------------------------------------------------------
# Table S1 / Table 1 metrics
# --------------------------------------------------------------------------------------------


def near_duplicate_rate(
    samples: Sequence[ImageLike] | np.ndarray | torch.Tensor,
    reference: ImageLike,
    ratios: Sequence[int] = (100, 95, 90, 85, 80, 75, 70),
    tol: float = 15 / 255,
) -> dict[int, float]:
    """Fraction of samples that are near-duplicates of the reference (paper Table S1).

    A sample is a near-duplicate at threshold ``r`` when at least ``r`` % of its pixels have a
    channel-averaged absolute difference from the reference strictly below ``tol``:
    ``mean_c |sample[y, x, c] - reference[y, x, c]| < tol``. Differences within ``1e-6`` of
    ``tol`` are treated as equal to it (so, not below), which makes 8-bit data lying exactly on
    the threshold classify the same whether passed as ``uint8``, float32 or float64.

    Parameters
    ----------
    samples:
        The generated images (see the module docstring for accepted layouts); each must have the
        reference's shape.
    reference:
        The input image.
    ratios:
        Thresholds ``r`` in percent (0-100).
    tol:
        Per-pixel tolerance on the ``[0, 1]`` scale (paper: 15/255).

    Returns
    -------
    dict[int, float]
        ``{r: fraction of samples that are near-duplicates at r}``, in the order of ``ratios``.

    Raises
    ------
    ValueError
        If a sample's shape differs from the reference's, or there are no samples.
    """
    ref = _to_hwc(reference, "reference")
    ratios = list(ratios)
    for r in ratios:
        if not 0 <= r <= 100:
            raise ValueError(f"ratios must lie in [0, 100], got {r}")
    npix = ref.shape[0] * ref.shape[1]
    counts = dict.fromkeys(ratios, 0)
    n = 0
    for i, s in enumerate(_iter_samples(samples)):
        smp = _to_hwc(s, f"samples[{i}]")
        _same_shape(smp, ref, f"samples[{i}]", "reference")
        diff = np.abs(smp - ref).mean(axis=2)
        close = int(np.count_nonzero(diff < tol - _TOL_SLACK))
        for r in ratios:
            # close / npix >= r / 100, exactly (no float division).
            if close * 100 >= r * npix:
                counts[r] += 1
        n += 1
    if n == 0:
        raise ValueError("samples is empty")
    return {r: counts[r] / n for r in ratios}


def pixel_diversity(samples: Sequence[ImageLike] | np.ndarray | torch.Tensor) -> float:
    """Per-pixel standard deviation across samples, averaged (paper Table 1 "pixel div.").

    The population standard deviation (``ddof=0``) is taken over the sample axis independently
    at every pixel and channel, then averaged over pixels and channels. Images are on the
    ``[0, 1]`` scale. Computed in one streaming (Welford) pass, so only two images' worth of
    float64 memory is held regardless of the number of samples.

    Parameters
    ----------
    samples:
        At least two images of identical shape.

    Returns
    -------
    float
        Mean per-pixel standard deviation.

    Raises
    ------
    ValueError
        Fewer than two samples, or shapes differ.
    """
    mean: np.ndarray | None = None
    m2: np.ndarray | None = None
    first_shape: tuple[int, ...] = ()
    n = 0
    for i, s in enumerate(_iter_samples(samples)):
        x = _to_hwc(s, f"samples[{i}]")
        if mean is None:
            first_shape = x.shape
            mean = np.zeros_like(x)
            m2 = np.zeros_like(x)
        elif x.shape != first_shape:
            raise ValueError(
                f"samples[{i}] has shape (H, W, C) = {x.shape} but samples[0] has {first_shape}"
            )
        n += 1
        delta = x - mean
        mean += delta / n
        m2 += delta * (x - mean)
    if n < 2 or m2 is None:
        raise ValueError(f"pixel_diversity needs at least 2 samples, got {n}")
    var = np.maximum(m2 / n, 0.0)
    return float(np.sqrt(var).mean())


# --------------------------------------------------------------------------------------------
# Patch-level provenance and distribution distance
# --------------------------------------------------------------------------------------------


def _nearest_index(queries: np.ndarray, base: np.ndarray) -> np.ndarray:
    """Row index of the nearest ``base`` row (squared L2) for each query row.

    Exact brute-force search with ``faiss.IndexFlatL2``, or a chunked ``torch.cdist`` when
    faiss is unavailable. Both inputs are float32 ``(n, D)``.
    """
    try:
        import faiss
    except ImportError:  # pragma: no cover - faiss-cpu is a declared dependency
        return _nearest_torch(queries, base)
    index = faiss.IndexFlatL2(base.shape[1])
    index.add(base)
    _, idx = index.search(queries, 1)
    return idx[:, 0].astype(np.int64)


def _nearest_torch(queries: np.ndarray, base: np.ndarray) -> np.ndarray:
    """Index of the nearest ``base`` row for each query (chunked exact ``torch.cdist``)."""
    b = torch.from_numpy(base)
    q_all = torch.from_numpy(queries)
    chunk = max(1, _CDIST_CHUNK_ELEMS // max(1, b.shape[0]))
    out = np.empty(q_all.shape[0], dtype=np.int64)
    for start in range(0, q_all.shape[0], chunk):
        q = q_all[start : start + chunk]
        d = torch.cdist(q, b, compute_mode="donot_use_mm_for_euclid_dist")
        out[start : start + q.shape[0]] = d.argmin(dim=1).numpy()
    return out


def patch_nn_distance(
    sample: ImageLike,
    reference: ImageLike,
    patch: int = 7,
    stride: int = 1,
    max_queries: int | None = 20000,
    seed: int = 0,
) -> dict[str, float]:
    """Distance from the sample's patches to their nearest reference patch (provenance).

    Query patches are the sample's ``patch x patch`` windows on a ``stride`` grid (a random
    subset of ``max_queries`` of them when there are more, drawn with ``seed``). The database
    is every stride-1 window of the reference. Search is exact (brute force). Each distance is
    reported as an RMS per element, ``sqrt(d2 / D)`` with ``D = C * patch**2``, on the
    ``[0, 1]`` scale; a sample that rearranges reference patches scores ~0.

    Parameters
    ----------
    sample, reference:
        Images with the same number of channels (sizes may differ); each at least
        ``patch x patch``.
    patch:
        Window side.
    stride:
        Grid step of the query windows (the reference always uses stride 1).
    max_queries:
        Cap on the number of query windows; ``None`` uses them all.
    seed:
        Seed of the query subset.

    Returns
    -------
    dict[str, float]
        ``mean``, ``median`` and ``p95`` of the per-patch RMS distances, and ``num_queries``
        (the number of query windows used, as a float).

    Notes
    -----
    The database holds ``(H_ref - patch + 1)(W_ref - patch + 1)`` float32 vectors of length
    ``D`` and the search costs ``num_queries x database size x D`` operations, so this is
    meant for reference images up to a few hundred thousand pixels.
    """
    smp = _to_hwc(sample, "sample")
    ref = _to_hwc(reference, "reference")
    if smp.shape[2] != ref.shape[2]:
        raise ValueError(
            f"sample has {smp.shape[2]} channels (shape {smp.shape}) but reference has "
            f"{ref.shape[2]} (shape {ref.shape})"
        )
    if stride < 1:
        raise ValueError(f"stride must be >= 1, got {stride}")
    if max_queries is not None and max_queries < 1:
        raise ValueError(f"max_queries must be >= 1 or None, got {max_queries}")
    sview = _patch_view(smp, patch, "sample")[::stride, ::stride]
    rview = _patch_view(ref, patch, "reference")
    m = sview.shape[0] * sview.shape[1]
    idx = None
    if max_queries is not None and m > max_queries:
        rng = np.random.default_rng(seed)
        idx = np.sort(rng.choice(m, size=max_queries, replace=False))
    queries = _gather(sview, idx, np.float32)
    nn = _nearest_index(queries, _gather(rview, None, np.float32))
    # Recompute the distance to the found neighbour in float64 from the original pixels, so
    # identical patches give exactly 0 rather than float32 cancellation noise.
    diff = _gather(sview, idx, np.float64) - _gather(rview, nn, np.float64)
    dist = np.sqrt(np.einsum("ij,ij->i", diff, diff) / diff.shape[1])
    return {
        "mean": float(dist.mean()),
        "median": float(np.median(dist)),
        "p95": float(np.percentile(dist, 95)),
        "num_queries": float(dist.shape[0]),
    }


def _swd_subset(view: np.ndarray, n: int, seed: int) -> np.ndarray:
    """``n`` windows of ``view`` as float32 rows; all of them if there are exactly ``n``.

    The subset depends only on ``(seed, number of windows, n)``, never on argument order, which
    keeps :func:`patch_swd` exactly symmetric.
    """
    total = view.shape[0] * view.shape[1]
    if total == n:
        return _gather(view, None, np.float32)
    rng = np.random.default_rng([seed, total, n])
    idx = np.sort(rng.choice(total, size=n, replace=False))
    return _gather(view, idx, np.float32)


def patch_swd(
    sample: ImageLike,
    reference: ImageLike,
    patch: int = 7,
    num_projections: int = 256,
    max_patches: int = 50000,
    seed: int = 0,
) -> float:
    """Sliced Wasserstein-2 distance between the two images' patch distributions.

    Both images' stride-1 ``patch x patch`` windows are subsampled (with ``seed``) to the same
    size ``n = min(N_sample, N_reference, max_patches)``, projected on ``num_projections``
    random unit directions (drawn with ``seed``), and matched by sorting each 1-D projection
    (quantile matching). The result is
    ``sqrt(mean over projections and quantiles of (q_sample - q_reference)**2)``, on the
    ``[0, 1]`` intensity scale of one projected patch.

    Properties: deterministic for a seed; exactly symmetric in its arguments; exactly 0 for
    identical images; insensitive to rearranging patches; grows with a shift of the patch
    distribution (noise, blur, colour change).

    Parameters
    ----------
    sample, reference:
        Images with the same number of channels (sizes may differ), each at least
        ``patch x patch``.
    patch:
        Window side.
    num_projections:
        Number of random 1-D projections.
    max_patches:
        Cap on the number of windows per image.
    seed:
        Seed of the subsets and the projections.

    Returns
    -------
    float
        The sliced Wasserstein-2 distance.
    """
    a = _to_hwc(sample, "sample")
    b = _to_hwc(reference, "reference")
    if a.shape[2] != b.shape[2]:
        raise ValueError(
            f"sample has {a.shape[2]} channels (shape {a.shape}) but reference has "
            f"{b.shape[2]} (shape {b.shape})"
        )
    if num_projections < 1:
        raise ValueError(f"num_projections must be >= 1, got {num_projections}")
    if max_patches < 1:
        raise ValueError(f"max_patches must be >= 1, got {max_patches}")
    va = _patch_view(a, patch, "sample")
    vb = _patch_view(b, patch, "reference")
    n = min(va.shape[0] * va.shape[1], vb.shape[0] * vb.shape[1], max_patches)
    xa = _swd_subset(va, n, seed)
    xb = _swd_subset(vb, n, seed)
    d = xa.shape[1]
    rng = np.random.default_rng([seed, d, num_projections])
    theta = rng.standard_normal((d, num_projections))
    theta /= np.linalg.norm(theta, axis=0, keepdims=True)
    theta32 = theta.astype(np.float32)
    pa = np.sort(xa @ theta32, axis=0)
    pb = np.sort(xb @ theta32, axis=0)
    diff = pa.astype(np.float64) - pb.astype(np.float64)
    return float(math.sqrt(np.mean(diff * diff)))


# --------------------------------------------------------------------------------------------
# Application diagnostics (spec §6.3, §6.4) and PSNR
# --------------------------------------------------------------------------------------------


def mirror_asymmetry(image: ImageLike, axis: str = "horizontal") -> float:
    """Mean ``|img - flip(img)|`` in 0-255 units (spec §6.3; 0 for a symmetric image).

    Parameters
    ----------
    image:
        The image, on the ``[0, 1]`` scale.
    axis:
        ``"horizontal"`` flips along the width (left/right halves mirror each other, symmetry
        about a vertical centre line); ``"vertical"`` flips along the height.

    Returns
    -------
    float
        Mean absolute difference times 255.
    """
    x = _to_hwc(image)
    if axis == "horizontal":
        flipped = x[:, ::-1]
    elif axis == "vertical":
        flipped = x[::-1]
    else:
        raise ValueError(f"axis must be 'horizontal' or 'vertical', got {axis!r}")
    return float(np.abs(x - flipped).mean() * 255.0)


def _axis_seam(x: np.ndarray, axis: int) -> float:
    """Seam excess along one array axis (0 = rows / vertical tiling, 1 = columns)."""
    n = x.shape[axis]
    if n < 2:
        raise ValueError(f"seam_error needs at least 2 pixels along the tiled axis, got {n}")
    first = np.take(x, 0, axis=axis)
    last = np.take(x, n - 1, axis=axis)
    seam = float(np.abs(first - last).mean())
    inner = float(np.median(np.abs(np.diff(x, axis=axis))))
    return max(seam - inner, 0.0) * 255.0


def seam_error(image: ImageLike, direction: str = "both") -> float:
    """Wrap-around seam error of a (supposedly) tileable image, in 0-255 units (spec §6.4).

    For each tiled axis: the mean absolute difference between the first and last column
    (horizontal tiling) or row (vertical tiling), minus the median absolute difference between
    adjacent pixels inside the image along that axis, clamped at 0. The result is the maximum
    over the tiled axes. ~0 for a seamless texture; large when tiling shows a discontinuity.

    Parameters
    ----------
    image:
        The image, on the ``[0, 1]`` scale.
    direction:
        ``"horizontal"`` (tiles side by side: last column meets first column),
        ``"vertical"`` (last row meets first row) or ``"both"``.

    Returns
    -------
    float
        The seam error times 255.
    """
    x = _to_hwc(image)
    if direction == "horizontal":
        axes = [1]
    elif direction == "vertical":
        axes = [0]
    elif direction == "both":
        axes = [1, 0]
    else:
        raise ValueError(f"direction must be 'horizontal', 'vertical' or 'both', got {direction!r}")
    return max(_axis_seam(x, a) for a in axes)


def seam_ratio(image: ImageLike, direction: str = "both") -> float:
    """How strong the wrap-around seam is compared with an ordinary pixel step (1 = seamless).

    For each tiled axis: the mean absolute difference between the last and the first column
    (or row), divided by the mean absolute difference between adjacent columns (rows)
    inside the image. A texture that tiles seamlessly scores about 1; a visible seam scores
    well above. The result is the maximum over the tiled axes.

    Parameters
    ----------
    image:
        The image, on the ``[0, 1]`` scale.
    direction:
        ``"horizontal"`` (last column meets first), ``"vertical"`` or ``"both"``.
    """
    x = _to_hwc(image)
    axes = {"horizontal": [1], "vertical": [0], "both": [1, 0]}.get(direction)
    if axes is None:
        raise ValueError(f"direction must be 'horizontal', 'vertical' or 'both', got {direction!r}")
    out = 0.0
    for a in axes:
        n = x.shape[a]
        seam = float(np.abs(np.take(x, n - 1, axis=a) - np.take(x, 0, axis=a)).mean())
        inner = float(np.abs(np.diff(x, axis=a)).mean())
        out = max(out, seam / max(inner, 1e-12))
    return out


def psnr(a: ImageLike, b: ImageLike, data_range: float = 1.0) -> float:
    """Peak signal-to-noise ratio ``10 log10(data_range**2 / MSE)`` in dB.

    Parameters
    ----------
    a, b:
        Images of the same shape. ``uint8`` inputs are scaled to ``[0, 1]`` first, so keep
        ``data_range=1`` for them.
    data_range:
        The peak value (1 for ``[0, 1]`` images).

    Returns
    -------
    float
        PSNR in dB; ``inf`` for identical images.
    """
    x = _to_hwc(a, "a")
    y = _to_hwc(b, "b")
    _same_shape(x, y, "a", "b")
    if data_range <= 0:
        raise ValueError(f"data_range must be > 0, got {data_range}")
    mse = float(np.mean((x - y) ** 2))
    if mse == 0.0:
        return math.inf
    return 10.0 * math.log10(data_range**2 / mse)
