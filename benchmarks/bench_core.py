"""Core benchmark: speed per backend, ANN error across noise levels, sample quality.

Usage::

    python benchmarks/bench_core.py [--quick] [--out benchmarks/results]
    python benchmarks/bench_core.py --only speed quality --quick --set query_stride=3 --out DIR

``--set KEY=VALUE`` (repeatable) adds config overrides to every speed run and to the quality
samples, e.g. to measure another setting's time and quality side by side with the defaults.

Writes ``bench_core.json`` and ``bench_core.md`` (docs/benchmarks.md quotes the latter).
Each backend runs in its own subprocess so peak memory (RssAnon) is per backend. Timings
are medians.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

PHOTOS = ["astronaut", "coffee", "chelsea"]


def _speed_worker(backend: str, samples: int, image: str, extra: list[str]) -> dict:
    from _measure import PeakRssAnon

    from gigasid.config import load_config
    from gigasid.engine.allocator import tune_malloc
    from gigasid.engine.progress import Reporter
    from gigasid.engine.runner import prepare, sample_once

    tune_malloc()  # as every process that computes tiles does (`gigasid run`, the workers)
    with PeakRssAnon() as mem:
        cfg = load_config(None, [f"input=builtin:{image}", f"denoiser.backend={backend}", *extra])
        t0 = time.perf_counter()
        job = prepare(cfg)
        setup = time.perf_counter() - t0
        times = []
        for i in range(samples + 1):
            t0 = time.perf_counter()
            sample_once(job, i, Reporter())
            times.append(time.perf_counter() - t0)
    # The first sample also loads the compiled kernels (and compiles them on a fresh
    # install): reported on its own, not in the per-sample median.
    return {"backend": backend, "extra": extra, "setup_s": setup, "first_sample_s": times[0],
            "sample_s": times[1:], "median_s": statistics.median(times[1:]),
            "peak_rss_anon_mb": mem.peak / 2**20,
            "scales": [(s.shape, s.backend, s.query_stride) for s in job.plan.scales]}


def speed(quick: bool, baseline: bool, overrides: list[str]) -> list[dict]:
    runs = [("auto", 3 if quick else 5, [*overrides]), ("ann", 3 if quick else 5, [*overrides]),
            ("ann", 3, [*overrides, "query_stride=1"])]
    if baseline:
        # The naive exact denoiser at the paper's settings (stride 1 everywhere): the
        # baseline every acceleration is measured against. About 14 min per backend here.
        runs += [("exact", 1, ["query_stride=1"]), ("sdpa", 1, ["query_stride=1"])]
    out = []
    for backend, n, extra in runs:
        cmd = [sys.executable, __file__, "--worker", backend, str(n), *extra]
        res = subprocess.run(cmd, capture_output=True, text=True, check=True)
        rec = json.loads(res.stdout.strip().splitlines()[-1])
        print(f"{backend} {extra}: setup {rec['setup_s']:.2f} s, median {rec['median_s']:.2f} s"
              f" per sample, peak RssAnon {rec['peak_rss_anon_mb']:.0f} MB", flush=True)
        out.append(rec)
    return out


def denoiser_calls() -> list[dict]:
    """One patch-denoiser call per backend on the same real data (N = M = 8192, D = 675)."""
    import torch

    from gigasid.core import patches as P
    from gigasid.core.denoisers import AnnDenoiser, AnnSettings, ExactDenoiser, SdpaDenoiser
    from gigasid.io.images import builtin_image, load_image

    img = load_image(builtin_image("coffee")) * 2 - 1
    y = P.extract(img, P.patch_starts(256, 15), P.patch_starts(256, 15), 15)
    y = y[torch.randperm(y.shape[0], generator=torch.Generator().manual_seed(0))[:8192]]
    x = 0.7 * y + 0.3 * torch.randn(y.shape, generator=torch.Generator().manual_seed(1))
    rows = []
    for name, make in (("exact", lambda: ExactDenoiser(y)), ("sdpa", lambda: SdpaDenoiser(y)),
                       ("exact bf16", lambda: ExactDenoiser(y, torch.bfloat16)),
                       ("ann", lambda: AnnDenoiser(y, AnnSettings()))):
        den = make()
        den(x[:256], 0.7, 0.3)  # warm-up
        times = []
        for _ in range(3):
            t0 = time.perf_counter()
            den(x, 0.7, 0.3)
            times.append(time.perf_counter() - t0)
        rows.append({"backend": name, "median_s": statistics.median(times)})
        print(f"denoiser call {name}: {rows[-1]['median_s']:.3f} s", flush=True)
    return rows


def end_to_end(runs: int = 3) -> dict:
    """Whole-process wall time of `gigasid run` for one 256x256 sample (import to PNG)."""
    import tempfile

    times = []
    for i in range(runs):
        with tempfile.TemporaryDirectory() as d:
            t0 = time.perf_counter()
            subprocess.run([sys.executable, "-m", "gigasid", "run",
                            str(HERE.parent / "configs" / "demo.yaml"), "num_samples=1",
                            f"seed={i}", "--out", d, "--quiet"], check=True)
            times.append(time.perf_counter() - t0)
    return {"runs_s": times, "median_s": statistics.median(times)}


def ann_error(quick: bool) -> list[dict]:
    """Mean |ANN - exact| of the patch denoiser across noise levels, on real 128x128 patches."""
    import torch

    from gigasid.core import patches as P
    from gigasid.core.denoisers import AnnDenoiser, AnnSettings, ExactDenoiser
    from gigasid.core.resample import resize
    from gigasid.io.images import builtin_image, load_image

    img = resize(load_image(builtin_image("astronaut")) * 2 - 1, (128, 128))
    y = P.extract(img, P.patch_starts(128, 15), P.patch_starts(128, 15), 15)
    exact = ExactDenoiser(y)
    ann = AnnDenoiser(y, AnnSettings())
    g = torch.Generator().manual_seed(0)
    idx = torch.randint(0, y.shape[0], (500 if quick else 2000,), generator=g)
    rows = []
    for sigma in (0.02, 0.1, 0.3, 0.5, 0.7, 0.9):
        alpha = 1 - sigma
        x = alpha * y[idx] + sigma * torch.randn(len(idx), y.shape[1], generator=g)
        e, a = exact(x, alpha, sigma), ann(x, alpha, sigma)
        rows.append({"sigma": sigma, "mean_abs_err": (a - e).abs().mean().item(),
                     "rel_err": ((a - e).norm() / e.norm()).item()})
        print(f"sigma {sigma}: |ann-exact| mean {rows[-1]['mean_abs_err']:.4f}", flush=True)
    return rows


def quality(quick: bool, overrides: list[str]) -> list[dict]:
    """Near-duplicates (Table S1), pixel diversity (Table 1), patch SWD, over real photos."""
    import torch

    from gigasid import metrics
    from gigasid.config import load_config
    from gigasid.engine.progress import Reporter
    from gigasid.engine.runner import prepare, sample_once

    n = 3 if quick else 10
    rows = []
    for name in PHOTOS:
        job = prepare(load_config(None, [f"input=builtin:{name}", *overrides]))
        ref = ((job.reference + 1) / 2).clamp(0, 1)
        samples = [sample_once(job, i, Reporter()).clamp(0, 1) for i in range(n)]
        nd = metrics.near_duplicate_rate(samples, ref)
        swd = statistics.mean(metrics.patch_swd(s, ref) for s in samples)
        base = metrics.patch_swd(torch.rand_like(ref), ref)
        prov = statistics.mean(metrics.patch_nn_distance(s, ref, max_queries=3000)["median"]
                               for s in samples)
        rows.append({"image": name, "samples": n, "overrides": overrides, "near_dup": nd,
                     "pixel_diversity": metrics.pixel_diversity(samples),
                     "patch_swd": swd, "patch_swd_noise_baseline": base,
                     "nn_patch_rms_median": prov})
        print(f"{name}: near-dup r90 {nd[90]:.2f}, pixel div {rows[-1]['pixel_diversity']:.3f},"
              f" swd {swd:.4f} (noise {base:.4f}), provenance {prov:.4f}", flush=True)
    return rows


def write_report(res: dict, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench_core.json").write_text(json.dumps(res, indent=2))
    m = res["machine"]
    lines = [f"# bench_core ({m['date']}, {m['cpu']}, {m['cores']} cores, torch {m['torch']})",
             "", "## Speed: 256x256 unconditional sample (P=15, T=10, 5 scales)", "",
             "| backend | settings | setup s | first sample s | median s/sample (after the "
             "first) | samples | peak RssAnon MB |", "|---|---|---|---|---|---|---|"]
    for r in res.get("speed", []):
        first = f"{r['first_sample_s']:.2f}" if "first_sample_s" in r else "-"
        lines.append(f"| {r['backend']} | {' '.join(r['extra']) or 'defaults'} | "
                     f"{r['setup_s']:.2f} | {first} | {r['median_s']:.2f} | "
                     f"{len(r['sample_s'])} | {r['peak_rss_anon_mb']:.0f} |")
    if "end_to_end" in res:
        e = res["end_to_end"]
        lines += ["", f"End to end (`gigasid run configs/demo.yaml num_samples=1`, process "
                  f"start to PNG): median {e['median_s']:.2f} s over {len(e['runs_s'])} runs."]
    if "denoiser_calls" in res:
        lines += ["", "## One patch-denoiser call, N = M = 8192 real patches, D = 675", "",
                  "| backend | median s |", "|---|---|"]
        lines += [f"| {r['backend']} | {r['median_s']:.3f} |" for r in res["denoiser_calls"]]
    lines += ["", "## ANN vs exact patch denoiser (128x128 astronaut, P=15)", "",
              "| sigma | mean abs error | relative error |", "|---|---|---|"]
    for r in res.get("ann_error", []):
        lines.append(f"| {r['sigma']} | {r['mean_abs_err']:.4f} | {r['rel_err']:.3f} |")
    lines += ["", "## Quality (default preset, values in [0, 1])", "",
              "| image | samples | near-dup r=100/95/90/80/70 | pixel diversity | patch SWD "
              "(noise baseline) | NN patch RMS |", "|---|---|---|---|---|---|"]
    for r in res.get("quality", []):
        nd = r["near_dup"]
        nd = {int(k): v for k, v in nd.items()}  # JSON turns the keys into strings
        nds = "/".join(f"{nd[k]:.2f}" for k in (100, 95, 90, 80, 70))
        label = " ".join([r["image"], *r.get("overrides", [])])
        lines.append(f"| {label} | {r['samples']} | {nds} | {r['pixel_diversity']:.3f} | "
                     f"{r['patch_swd']:.4f} ({r['patch_swd_noise_baseline']:.4f}) | "
                     f"{r['nn_patch_rms_median']:.4f} |")
    (out / "bench_core.md").write_text("\n".join(lines) + "\n")


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        backend, n, extra = sys.argv[2], int(sys.argv[3]), sys.argv[4:]
        print(json.dumps(_speed_worker(backend, n, "hubble", extra)))
        return
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true", help="fewer samples, skip exact backends")
    ap.add_argument("--out", type=Path, default=HERE / "results")
    ap.add_argument("--only", choices=["speed", "calls", "error", "quality", "e2e"], nargs="*")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="config override for the speed runs and the quality samples")
    ap.add_argument("--baseline", action="store_true",
                    help="also time one full sample with the exact and sdpa backends (slow)")
    args = ap.parse_args()
    from _measure import machine

    parts = set(args.only or ["speed", "calls", "error", "quality", "e2e"])
    path = args.out / "bench_core.json"
    res = json.loads(path.read_text()) if path.exists() else {}
    res["machine"] = machine()
    if "speed" in parts:
        old = [r for r in res.get("speed", []) if r["backend"] in ("exact", "sdpa")]
        res["speed"] = speed(args.quick, args.baseline, args.set)
        if not args.baseline:  # keep earlier baseline measurements
            res["speed"] += old
    if "calls" in parts:
        res["denoiser_calls"] = denoiser_calls()
    if "e2e" in parts:
        res["end_to_end"] = end_to_end()
    if "error" in parts:
        res["ann_error"] = ann_error(args.quick)
    if "quality" in parts:
        res["quality"] = quality(args.quick, args.set)
    write_report(res, args.out)


if __name__ == "__main__":
    main()
