"""The compiled kernels one by one, on engine-sized inputs, against the plain-torch path.

Usage::

    python benchmarks/bench_kernels.py [--label NAME] [--repeats 7] [--out benchmarks/results]

Inputs are what one chunk of a 1024-px-wide region holds at the finest scale of the 1 MP
retarget (``P = 15``, RGB, query stride 2): 32 rows of 506 windows (16 192 queries, the
denoiser's chunk) from the bundled astronaut photograph, their ``k = 5`` candidates among the
256x256 reference's patches, and the fold of the result. Each kernel runs with
``GIGASID_KERNELS=numba`` and ``torch`` in the same process, alternated; medians of
``--repeats``. To compare with an older checkout, run this script with ``PYTHONPATH`` set to
it (what it lacks is left out) and another ``--label``. The process first applies that
checkout's ``tune_malloc``, as ``gigasid run`` does. Writes
``bench_kernels_<label>.json`` / ``.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

P, C, STRIDE, ROWS, WIDTH, K = 15, 3, 2, 32, 1024, 5


def _inputs():
    import torch

    from gigasid.core import patches
    from gigasid.io.images import builtin_image, load_image

    ref = load_image(builtin_image("astronaut")) * 2 - 1  # (3, 256, 256) in [-1, 1]
    grid = patches.PatchGrid(ref.contiguous(), P, 1)
    g = torch.Generator().manual_seed(0)
    # A noisy 1024-px-wide canvas made of reference content (tiled), as a query region.
    canvas = ref.repeat(1, 1, WIDTH // ref.shape[2])[:, : (ROWS - 1) * STRIDE + P]
    canvas = (0.9 * canvas + 0.1 * torch.randn(canvas.shape, generator=g)).contiguous()
    ys = torch.arange(ROWS) * STRIDE
    xs = patches.patch_starts(WIDTH, P, STRIDE)
    return grid, canvas, ys, xs, g


def _time(fn, repeats: int) -> float:
    fn()  # warm-up (compiles or loads the kernel)
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--label", default="current")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--out", type=Path, default=HERE / "results")
    args = ap.parse_args()
    import torch
    from _measure import machine

    import gigasid
    from gigasid.core import kernels, patches, resample
    from gigasid.core.denoisers import AnnDenoiser, AnnSettings
    from gigasid.engine.allocator import tune_malloc

    tune_malloc()  # what every process that computes tiles does (the CLI, the workers)

    grid, canvas, ys, xs, g = _inputs()
    m = len(ys) * len(xs)
    den = AnnDenoiser(grid, AnnSettings(k=K))
    queries = patches.extract(canvas, ys, xs, P)
    alpha, sigma = 0.9, 0.1
    idx = den.search(queries, alpha)
    est = torch.randn(m, C * P * P, generator=g)
    photo = torch.nn.functional.interpolate(canvas[None], size=(1100, 1100),
                                            mode="bilinear")[0].contiguous()
    cases = {
        "extract": lambda: patches.extract(canvas, ys, xs, P),
        "search (PCA projection + IVF)": lambda: den.search(queries, alpha),
        "re-weighting": lambda: den.reweight(queries, idx, alpha, sigma,
                                             torch.empty_like(queries)),
        "fold": lambda: patches.fold(est, ys, xs, P, C, out_shape=(canvas.shape[1], WIDTH)),
        # the blend's resampling of one region: down by 2, then back up
        "resampling (1100 px, down 2x and up)": lambda: resample.resize(
            resample.resize(photo, (550, 550)), (1100, 1100)),
        "denoiser call (search + re-weighting)": lambda: den(queries, alpha, sigma),
    }
    if not hasattr(den, "reweight"):  # an older checkout: only the whole call
        del cases["re-weighting"]
    rows = []
    for name, fn in cases.items():
        got = {}
        for _ in range(2):  # alternated: numba, torch, numba, torch
            for mode in ("numba", "torch"):
                os.environ[kernels.ENV] = mode
                got.setdefault(mode, []).append(_time(fn, args.repeats))
        rec = {"kernel": name, **{k: min(v) for k, v in got.items()}}
        rows.append(rec)
        print(json.dumps(rec), flush=True)
    os.environ.pop(kernels.ENV)
    res = {"machine": machine(), "label": args.label,
           "gigasid": str(Path(gigasid.__file__).parent), "queries": m, "patch": P, "k": K,
           "n_patches": grid.n, "threads": torch.get_num_threads(), "rows": rows}
    args.out.mkdir(parents=True, exist_ok=True)
    stem = f"bench_kernels_{args.label}"
    (args.out / f"{stem}.json").write_text(json.dumps(res, indent=2))
    mach = res["machine"]
    lines = [f"# bench_kernels `{args.label}` ({mach['date']}, {mach['cpu']}, {mach['cores']} "
             f"cores, {res['threads']} threads)", "",
             f"One engine chunk: {m} queries (32 rows x {len(xs)} windows, P {P}, RGB, "
             f"stride {STRIDE}, 1024 px wide), k {K} candidates among {grid.n} patches. "
             f"Best of 2 alternated medians of {args.repeats} calls, ms.", "",
             "| kernel | compiled ms | torch ms | torch / compiled |", "|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['kernel']} | {1e3 * r['numba']:.1f} | {1e3 * r['torch']:.1f} | "
                     f"{r['torch'] / r['numba']:.2f} |")
    (args.out / f"{stem}.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
