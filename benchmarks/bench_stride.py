"""Query stride against time and quality: retargets of real photographs per stride setting.

For each of scikit-image's public-domain photographs (bundled), the retarget preset at
``--size`` x ``--size`` (T = 10) runs with each ``--variant`` (a label and config overrides;
by default the ``auto`` rule and the strides it picked before stride 3 existed), in one
process, and reports per variant: seconds per sample, patch SWD against the reference, the
median distance of output patches to their nearest reference patch (provenance) and pixel
diversity across samples. Run alone on the machine.

    python benchmarks/bench_stride.py --size 512 --samples 3

Writes ``bench_stride_<size>.json`` / ``.md``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

PHOTOS = ["astronaut", "coffee", "chelsea"]
#: ``--size`` -> the strides ``auto`` chose before the stride-3 rule (finest scale first).
OLD_AUTO = {512: "[2,2,2,1,1,1]", 1024: "[2,2,2,2,1,1]"}


def measure(name: str, size: int, samples: int, overrides: list[str]) -> dict:
    from gigasid import metrics
    from gigasid.config import load_config
    from gigasid.engine.progress import Reporter
    from gigasid.engine.runner import prepare, sample_once

    cfg = load_config(str(HERE.parent / "configs" / "retarget.yaml"),
                      [f"input=builtin:{name}", f"output_size=[{size},{size}]", "num_steps=10",
                       *overrides])
    job = prepare(cfg)
    ref = ((job.reference + 1) / 2).clamp(0, 1)
    t0 = time.perf_counter()
    outs = [sample_once(job, i, Reporter()).clamp(0, 1) for i in range(samples)]
    per_sample = (time.perf_counter() - t0) / samples
    nn = [metrics.patch_nn_distance(s, ref, max_queries=3000)["median"] for s in outs]
    return {"image": name, "overrides": overrides,
            "strides": [s.query_stride for s in job.plan.scales],
            "s_per_sample": per_sample,
            "patch_swd": statistics.mean(metrics.patch_swd(s, ref) for s in outs),
            "nn_patch_rms_median": statistics.mean(nn),
            "pixel_diversity": metrics.pixel_diversity(outs) if samples > 1 else None}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--samples", type=int, default=3)
    ap.add_argument("--variant", nargs="+", action="append", metavar=("LABEL", "KEY=VALUE"),
                    help="a label and its config overrides (repeatable)")
    ap.add_argument("--out", type=Path, default=HERE / "results")
    args = ap.parse_args()
    from _measure import machine

    from gigasid.engine.allocator import tune_malloc

    tune_malloc()  # as `gigasid run` does
    variants = args.variant or [["auto"], ["stride-2 auto", f"query_stride={OLD_AUTO[args.size]}"]
                                if args.size in OLD_AUTO else ["stride 2", "query_stride=2"]]
    rows = []
    for name in PHOTOS:
        for label, *overrides in variants:
            rec = {"variant": label, **measure(name, args.size, args.samples, overrides)}
            rows.append(rec)
            print(json.dumps(rec), flush=True)
    res = {"machine": machine(), "size": args.size, "samples": args.samples, "rows": rows}
    args.out.mkdir(parents=True, exist_ok=True)
    stem = f"bench_stride_{args.size}"
    (args.out / f"{stem}.json").write_text(json.dumps(res, indent=2))
    m = res["machine"]
    lines = [f"# bench_stride {args.size}x{args.size} retarget ({m['date']}, {m['cpu']}, "
             f"{m['cores']} cores)", "",
             f"`configs/retarget.yaml`, T = 10, {args.samples} samples per photograph and "
             "variant, one process. Values in [0, 1].", "",
             "| image | variant | strides | s / sample | patch SWD | NN patch RMS | "
             "pixel diversity |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        div = "-" if r["pixel_diversity"] is None else f"{r['pixel_diversity']:.3f}"
        lines.append(f"| {r['image']} | {r['variant']} | {','.join(map(str, r['strides']))} | "
                     f"{r['s_per_sample']:.2f} | {r['patch_swd']:.4f} | "
                     f"{r['nn_patch_rms_median']:.4f} | {div} |")
    (args.out / f"{stem}.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
