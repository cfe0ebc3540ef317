"""How many IVF lists: retrieval quality and search time of the ANN denoiser per ``nlist``.

For real photographs (scikit-image's public-domain images) the reference level's patches
(P 15, stride 1, a 32-dim PCA search space as the engine uses) are indexed with
``nlist = c * sqrt(N)`` for several ``c``; queries are noisy patches of a *different* image
of the same size (x = alpha y + sigma n on the flow schedule) at a few noise levels. Reported
per ``c``: recall of the exact top-5 (kernel distance in the full patch space), the error of
the ANN denoiser's output relative to the exact denoiser's (both from the same code the
engine runs), and the compiled search time per query. Run alone on the machine.

    python benchmarks/bench_ann_nlist.py --size 512 --factors 4 2 1
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import torch

from gigasid.core import kernels
from gigasid.core.denoisers import AnnDenoiser, AnnSettings, ExactDenoiser
from gigasid.core.patches import PatchGrid
from gigasid.io.images import builtin_image, load_image

HERE = Path(__file__).resolve().parent
PAIRS = [("astronaut", "coffee"), ("chelsea", "rocket"), ("coffee", "chelsea")]


def _square(name: str, size: int) -> torch.Tensor:
    img = load_image(builtin_image(name))  # (C, H, W) float in [-1, 1] or [0, 1]
    c, h, w = img.shape
    s = min(h, w)
    img = img[:, (h - s) // 2 : (h - s) // 2 + s, (w - s) // 2 : (w - s) // 2 + s]
    img = torch.nn.functional.interpolate(img[None], size=(size, size), mode="area")[0]
    return img * 2.0 - 1.0  # the engine's value range


def _queries(img: torch.Tensor, patch: int, n: int, seed: int) -> torch.Tensor:
    """``n`` seeded random windows of ``img`` as flat patches."""
    rng = np.random.default_rng(seed)
    ys = np.sort(rng.choice(img.shape[1] - patch + 1, n))
    xs = rng.choice(img.shape[2] - patch + 1, n)
    grid = PatchGrid(img, patch)  # stride 1: window (y, x) is patch y * nx + x
    return grid.gather(torch.from_numpy(ys * (img.shape[2] - patch + 1) + xs))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--factors", type=float, nargs="*", default=[4, 2, 1])
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--sigmas", type=float, nargs="*", default=[0.5, 0.2, 0.05, 0.01])
    ap.add_argument("--out", type=Path, default=HERE / "results")
    args = ap.parse_args()
    patch = 15
    rows = []
    for ref_name, q_name in PAIRS:
        ref = _square(ref_name, args.size).contiguous()
        grid = PatchGrid(ref, patch)
        n = grid.n
        dense = grid.block(0, n)
        exact = ExactDenoiser(dense)
        clean = _queries(_square(q_name, args.size), patch, args.queries, seed=1)
        anns, builds = {}, {}
        for c in args.factors:
            nlist = max(1, int(c * math.sqrt(n)))
            t0 = time.perf_counter()
            anns[c] = AnnDenoiser(grid, AnnSettings(nlist=nlist))
            builds[c] = time.perf_counter() - t0
        for sigma in args.sigmas:
            alpha = 1.0 - sigma  # flow schedule: x = (1 - s) y + s n
            g = torch.Generator().manual_seed(2)
            x = alpha * clean + sigma * torch.randn(clean.shape, generator=g)
            true = torch.cat([(torch.cdist(x[a : a + 250].double(), alpha * dense.double())
                               ** 2).topk(5, dim=1, largest=False).indices
                              for a in range(0, x.shape[0], 250)])
            ref_out = exact(x, alpha, sigma)
            for c, ann in anns.items():
                ann.search(x[:64], alpha)  # warm (compiles / maps)
                t0 = time.perf_counter()
                idx = ann.search(x, alpha)
                search_us = 1e6 * (time.perf_counter() - t0) / x.shape[0]
                recall = np.mean([len(set(a.tolist()) & set(b.tolist())) / 5
                                  for a, b in zip(idx, true, strict=True)])
                got = ann(x, alpha, sigma)
                err = ((got - ref_out).norm(dim=1) / ref_out.norm(dim=1).clamp_min(1e-6))
                rows.append({"reference": ref_name, "queries": q_name, "N": n,
                             "factor": c, "nlist": ann.index.nlist, "sigma": sigma,
                             "recall@5": float(recall), "rel_err_median": float(err.median()),
                             "rel_err_p90": float(err.quantile(0.9)),
                             "search_us_per_query": search_us, "build_s": builds[c]})
                print(json.dumps(rows[-1]), flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    stem = f"bench_ann_nlist_{args.size}"
    (args.out / f"{stem}.json").write_text(json.dumps(rows, indent=1))
    lines = [f"# IVF lists per scale ({args.size}x{args.size} references, P 15, "
             f"{args.queries} queries, kernels: {kernels.mode()})", "",
             "| reference | nlist = c sqrt(N) | sigma | recall@5 | rel. error median / p90 | "
             "search us / query |", "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['reference']} | {r['factor']:g} ({r['nlist']}) | {r['sigma']:g} | "
                     f"{r['recall@5']:.3f} | {r['rel_err_median']:.4f} / {r['rel_err_p90']:.4f} | "
                     f"{r['search_us_per_query']:.2f} |")
    (args.out / f"{stem}.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
