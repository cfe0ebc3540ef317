"""GPNN baseline: the patch nearest-neighbour single-image generator, on the CPU.

Our own re-implementation of GPNN (Granot, Feinstein, Shocher, Bagon, Irani, "Drop the GAN:
In Defense of Patches Nearest Neighbors as Single Image Generative Models", CVPR 2022) for
unconditional generation (the paper's "random sample" task). It is written from the paper's
description and the defaults its authors publish; no code of theirs is included. It is used
only as a timing baseline ("patch nearest-neighbour generator") that our benchmark compares
against, not as a reference for GPNN's sample quality.

Usage::

    python benchmarks/gpnn_baseline.py [--image PATH] [--size 256] [--samples 5]
                                      [--threads N] [--out benchmarks/results]

Writes ``gpnn_baseline.json`` (setup seconds, seconds per sample, their median, peak
RssAnon, machine facts) and one sample, ``gpnn_sample.png``, to ``--out``.

Algorithm (defaults are those of the authors' published command-line defaults: patch 7,
stride 1, alpha 0.005, 10 iterations per scale, pyramid ratio 4/3, coarsest side 14, noise
sigma 0.75; images in [0, 1])
-----------------------------------------------------------------------------------------
* Pyramid: the reference ``x`` is resampled to levels ``x_0`` (full size) ... ``x_N``
  (coarsest), each side ``ceil(0.75 * previous)``, with ``N = ceil(log(short / 14) /
  log(4 / 3))``; the coarsest level has its short side equal to ``coarse_dim``, aspect kept.
  Every level is made directly from the full-size image (antialiased bicubic).
* Coarsest scale: the initial guess is ``x_N`` plus Gaussian noise of std ``noise_std``; the
  noise is one grey field shared by the three channels, as in the authors' code.
* Each scale runs the PNN module ``iters`` times. Queries are the 7x7 patches (stride 1) of
  the current guess; values are the patches of ``x_n``; keys are the patches of the blurred
  reference ``x_{n+1}`` upsampled to the size of ``x_n`` in the first iteration of every finer
  scale, and of ``x_n`` itself afterwards (and at the coarsest scale), as the authors' code
  does (the blurry keys match the blurry upsampled guess; once a pass has put detail back,
  the sharp reference is the right key set).
* Nearest neighbour by the paper's normalised score ``S(q, k) = D(q, k) / (alpha +
  min_q' D(q', k))`` with ``D`` the L2 distance between patch vectors; every query patch is
  replaced by the value patch of its arg-min key, and the image is rebuilt by averaging the
  overlapping patches (uniform weights).
* Finer scales start from the previous output upsampled (bicubic) to the next size.

How the normalised search is done with FAISS (exact, not approximate)
---------------------------------------------------------------------
1. ``m_k = min_q D(q, k)``: an exact ``IndexFlatL2`` over the queries, searched with the keys
   (k = 1).
2. ``argmin_k D(q, k) / (alpha + m_k)`` equals ``argmin_k w_k * D(q, k)^2`` with ``w_k =
   (alpha + m_k)^-2``, and ``w_k * |q - k|^2 = <(|q|^2, q, 1), (w_k, -2 w_k k, w_k |k|^2)>``.
   So an exact ``IndexFlatIP`` over the augmented, negated key vectors (dimension D + 2),
   searched with the augmented queries (k = 1), returns the exact normalised arg-min in one
   pass; no candidate re-ranking is needed. Patches are centred on the reference's mean
   patch first, which leaves distances unchanged and keeps the float32 expansion accurate.

Each iteration therefore costs two brute-force passes over all (query, key) pairs, the cost
of the paper's full distance matrix. ``nn="flat"`` gives the plain nearest key instead (alpha
unused; one exact pass), and ``nn="ivf"`` the usual CPU FAISS setting of GPNN
implementations: the plain nearest key from an ``IndexIVFFlat`` per key set (``4 sqrt(L)``
lists, ``nprobe`` 1, trained once per level in the setup). That last one is the fast variant
this benchmark compares against.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))


# ---------------------------------------------------------------------------- resampling
def _resample(img: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    """Bicubic resize of a ``(C, H, W)`` image, antialiased when shrinking, clipped to [0, 1]."""
    if tuple(img.shape[-2:]) == tuple(shape):
        return img.clone()
    shrink = shape[0] < img.shape[-2] or shape[1] < img.shape[-1]
    out = F.interpolate(img[None], size=shape, mode="bicubic", align_corners=False,
                        antialias=shrink)[0]
    return out.clamp_(0.0, 1.0)


def pyramid_shapes(h: int, w: int, scale: float = 0.75,
                   coarse_dim: int = 14) -> list[tuple[int, int]]:
    """Level shapes, finest first: each side ``ceil(scale * previous)``, the last level's
    short side ``coarse_dim`` (aspect ratio kept)."""
    short = min(h, w)
    if short <= coarse_dim:
        return [(h, w)]
    depth = math.ceil(math.log(short / coarse_dim) / math.log(1.0 / scale) - 1e-9)
    shapes = [(h, w)]
    for _ in range(depth - 1):
        ph, pw = shapes[-1]
        shapes.append((math.ceil(ph * scale - 1e-9), math.ceil(pw * scale - 1e-9)))
    f = coarse_dim / short
    shapes.append((max(coarse_dim, round(h * f)), max(coarse_dim, round(w * f))))
    return shapes


# ------------------------------------------------------------------------------ patches
def _patches(img: torch.Tensor, p: int) -> np.ndarray:
    """All ``p x p`` patches (stride 1) of a ``(C, H, W)`` image as a C-contiguous float32
    ``(L, C*p*p)`` array (row-major patch positions)."""
    cols = F.unfold(img[None], kernel_size=p)[0]  # (C*p*p, L)
    return np.ascontiguousarray(cols.T.numpy(), dtype=np.float32)


@dataclass
class _Level:
    shape: tuple[int, int]
    ref: torch.Tensor            # x_n, (3, h, w)
    blurred: torch.Tensor        # x_{n+1} upsampled to (h, w); x_n at the coarsest level
    values: torch.Tensor         # patches of x_n, (L, D)
    divisor: torch.Tensor        # how many patches cover each pixel, (1, h, w)
    ref_keys: np.ndarray         # centred patches of x_n (keys after the first iteration)
    blur_keys: np.ndarray        # centred patches of the blurred reference
    indexes: dict = field(default_factory=dict)  # nn="ivf": FAISS index per key set


@dataclass
class GpnnModel:
    """Everything that depends on the reference only (built once by :func:`prepare`)."""

    levels: list[_Level]         # finest first
    mean_patch: np.ndarray       # (D,), subtracted from queries and keys
    patch: int
    alpha: float
    iters: int
    noise_std: float
    nn: str                      # "normalized" | "flat" | "ivf"
    stats: dict = field(default_factory=dict)


def prepare(image: torch.Tensor, patch: int = 7, alpha: float = 0.005, iters: int = 10,
            scale: float = 0.75, coarse_dim: int = 14, noise_std: float = 0.75,
            nn: str = "normalized") -> GpnnModel:
    """Build the reference pyramid, its patches and the fold divisors."""
    if image.ndim != 3 or image.shape[0] != 3:
        raise ValueError(f"expected a (3, H, W) image, got {tuple(image.shape)}")
    x = image.detach().to("cpu", torch.float32).clamp(0.0, 1.0)
    shapes = pyramid_shapes(x.shape[1], x.shape[2], scale, coarse_dim)
    if min(shapes[-1]) < patch:
        raise ValueError(f"coarsest level {shapes[-1]} is smaller than the patch ({patch})")
    refs = [_resample(x, s) for s in shapes]
    mean_patch = _patches(refs[0], patch).mean(axis=0)
    levels = []
    for n, (shape, ref) in enumerate(zip(shapes, refs, strict=True)):
        blurred = _resample(refs[n + 1], shape) if n + 1 < len(refs) else ref
        ones = torch.ones(1, 1, *shape)
        divisor = F.fold(F.unfold(ones, patch), shape, patch)[0]
        levels.append(_Level(
            shape=shape, ref=ref, blurred=blurred,
            values=F.unfold(ref[None], patch)[0].T.contiguous(),
            divisor=divisor,
            ref_keys=_patches(ref, patch) - mean_patch,
            blur_keys=_patches(blurred, patch) - mean_patch))
        if nn == "ivf":
            lv = levels[-1]
            lv.indexes = {"ref": _ivf(lv.ref_keys), "blur": _ivf(lv.blur_keys)}
    return GpnnModel(levels=levels, mean_patch=mean_patch, patch=patch, alpha=alpha,
                     iters=iters, noise_std=noise_std, nn=nn)


def _ivf(keys: np.ndarray, nprobe: int = 1):
    """An IVF-flat index over ``keys`` (``4 sqrt(L)`` lists, seeded k-means)."""
    import faiss

    nlist = max(1, min(len(keys) // 8, int(4 * math.sqrt(len(keys)))))
    quantizer = faiss.IndexFlatL2(keys.shape[1])
    index = faiss.IndexIVFFlat(quantizer, keys.shape[1], nlist)
    index.cp.seed = 0
    index.cp.min_points_per_centroid = 1
    index.train(keys)
    index.add(keys)
    index.nprobe = nprobe
    index.own_fields = True  # the index frees its quantizer, not Python's garbage collector
    quantizer.this.disown()
    return index


# ---------------------------------------------------------------------- nearest neighbour
def _flat_l2_min(index_vectors: np.ndarray, search_vectors: np.ndarray) -> tuple[np.ndarray,
                                                                                np.ndarray]:
    """Exact nearest neighbour of each search vector among ``index_vectors``: (dist^2, idx)."""
    import faiss

    index = faiss.IndexFlatL2(index_vectors.shape[1])
    index.add(index_vectors)
    d2, idx = index.search(search_vectors, 1)
    return d2[:, 0], idx[:, 0]


def normalized_nn(queries: np.ndarray, keys: np.ndarray, alpha: float) -> np.ndarray:
    """For each query, ``argmin_k D(q, k) / (alpha + min_q' D(q', k))`` (``D`` = L2), exact.

    ``queries`` (N, D) and ``keys`` (M, D) are float32 and C-contiguous.
    """
    import faiss

    # 1. Each key's distance to its nearest query.
    d2, _ = _flat_l2_min(queries, keys)
    m = np.sqrt(np.maximum(d2, 0.0, dtype=np.float32))
    w = (1.0 / (alpha + m.astype(np.float64)) ** 2).astype(np.float32)  # (M,)
    # 2. argmin_k w_k |q - k|^2 as a maximum inner product of augmented vectors:
    #    -(w_k |q|^2 - 2 w_k <q, k> + w_k |k|^2) = <(|q|^2, q, 1), (-w_k, 2 w_k k, -w_k |k|^2)>.
    n, dim = queries.shape
    aq = np.empty((n, dim + 2), dtype=np.float32)
    aq[:, 0] = np.einsum("ij,ij->i", queries, queries)
    aq[:, 1:-1] = queries
    aq[:, -1] = 1.0
    ak = np.empty((keys.shape[0], dim + 2), dtype=np.float32)
    ak[:, 0] = -w
    ak[:, 1:-1] = keys * (2.0 * w)[:, None]
    ak[:, -1] = -w * np.einsum("ij,ij->i", keys, keys)
    index = faiss.IndexFlatIP(dim + 2)
    index.add(ak)
    _, idx = index.search(aq, 1)
    return idx[:, 0]


def _pnn(model: GpnnModel, level: _Level, guess: torch.Tensor, keys: np.ndarray) -> torch.Tensor:
    """One PNN pass: replace every patch of ``guess`` by the value of its matched key, fold."""
    queries = _patches(guess, model.patch) - model.mean_patch
    if model.nn == "normalized":
        idx = normalized_nn(queries, keys, model.alpha)
    elif model.nn == "ivf":
        which = "blur" if keys is level.blur_keys else "ref"
        _, idx = level.indexes[which].search(queries, 1)
        idx = idx[:, 0]
    else:
        _, idx = _flat_l2_min(keys, queries)
    cols = level.values[torch.from_numpy(idx.astype(np.int64))].T  # (D, L)
    out = F.fold(cols[None], level.shape, model.patch)[0]
    return out / level.divisor


# -------------------------------------------------------------------------------- sampling
def sample(model: GpnnModel, seed: int) -> torch.Tensor:
    """One unconditional sample, ``(3, H, W)`` in [0, 1]."""
    g = torch.Generator().manual_seed(seed)
    coarse = model.levels[-1]
    noise = torch.randn((1, *coarse.shape), generator=g) * model.noise_std
    guess = coarse.ref + noise  # grey noise, shared by the channels
    for n in range(len(model.levels) - 1, -1, -1):
        level = model.levels[n]
        if n < len(model.levels) - 1:
            guess = _resample(guess, level.shape)
        keys = level.blur_keys
        for _ in range(model.iters):
            guess = _pnn(model, level, guess, keys)
            keys = level.ref_keys
    return guess.clamp_(0.0, 1.0)


def gpnn_sample(image: torch.Tensor, seed: int, patch: int = 7, alpha: float = 0.005,
                iters: int = 10, scale: float = 0.75, coarse_dim: int = 14,
                noise_std: float = 0.75, nn: str = "normalized") -> torch.Tensor:
    """GPNN random sample of a ``(3, H, W)`` image in [0, 1]; returns ``(3, H, W)``."""
    model = prepare(image, patch=patch, alpha=alpha, iters=iters, scale=scale,
                    coarse_dim=coarse_dim, noise_std=noise_std, nn=nn)
    return sample(model, seed)


# ---------------------------------------------------------------------------------- main
def set_threads(n: int) -> None:
    """Thread count for torch and for FAISS's OpenMP pool."""
    import faiss

    torch.set_num_threads(n)
    faiss.omp_set_num_threads(n)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--image", default=None,
                        help="reference image (default: the bundled hubble.png)")
    parser.add_argument("--size", type=int, default=256,
                        help="resize the reference to this square size first")
    parser.add_argument("--samples", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0, help="seed of the first sample")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch and FAISS threads (default: leave as is)")
    parser.add_argument("--patch", type=int, default=7)
    parser.add_argument("--alpha", type=float, default=0.005)
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--scale", type=float, default=0.75)
    parser.add_argument("--coarse-dim", type=int, default=14)
    parser.add_argument("--noise-std", type=float, default=0.75)
    parser.add_argument("--nn", choices=["normalized", "flat", "ivf"], default="ivf",
                        help="alpha-normalised exact score, plain exact nearest key, or plain "
                        "nearest key from an IVF index (default, the fast FAISS variant)")
    parser.add_argument("--out", type=Path, default=HERE / "results")
    args = parser.parse_args(argv)

    import faiss
    from _measure import PeakRssAnon, machine

    from gigasid.core.resample import resize
    from gigasid.io.images import builtin_image, load_image, save_png, to_uint8

    if args.threads is not None:
        set_threads(args.threads)
    image_path = Path(args.image) if args.image else builtin_image("hubble")
    with PeakRssAnon() as mem:
        t0 = time.perf_counter()
        img = load_image(image_path)
        img = resize(img, (args.size, args.size)).clamp(0, 1)
        model = prepare(img, patch=args.patch, alpha=args.alpha, iters=args.iters,
                        scale=args.scale, coarse_dim=args.coarse_dim,
                        noise_std=args.noise_std, nn=args.nn)
        setup = time.perf_counter() - t0
        times, first = [], None
        for i in range(args.samples):
            t0 = time.perf_counter()
            out = sample(model, args.seed + i)
            times.append(time.perf_counter() - t0)
            if first is None:
                first = out
            print(f"sample {i}: {times[-1]:.2f} s", flush=True)
    res = {
        "method": "GPNN (our CPU re-implementation; timing baseline)",
        "image": str(image_path.name), "size": [args.size, args.size],
        "params": {"patch": args.patch, "stride": 1, "alpha": args.alpha,
                   "iters": args.iters, "scale": args.scale, "coarse_dim": args.coarse_dim,
                   "noise_std": args.noise_std,
                   "nn": {"normalized": "alpha-normalised, exact (FAISS flat)",
                          "flat": "plain nearest key, exact (FAISS flat)",
                          "ivf": "plain nearest key, FAISS IVF-flat, nprobe 1"}[args.nn]},
        "levels": [list(lv.shape) for lv in model.levels],
        "threads": {"torch": torch.get_num_threads(), "faiss": faiss.omp_get_max_threads()},
        "faiss": faiss.__version__,
        "setup_s": setup, "sample_s": times,
        "median_s": statistics.median(times) if times else None,
        "peak_rss_anon_mb": mem.peak / 2**20,
        "machine": machine(),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "gpnn_baseline.json").write_text(json.dumps(res, indent=2))
    if first is not None:
        save_png(to_uint8(first), args.out / "gpnn_sample.png")
    med = f"{res['median_s']:.2f}" if times else "n/a"
    print(f"GPNN {args.size}x{args.size}: setup {setup:.2f} s, median {med} s per sample "
          f"over {len(times)}, peak RssAnon {res['peak_rss_anon_mb']:.0f} MB", flush=True)


if __name__ == "__main__":
    main()
