"""Streaming-engine scaling: wall time, memory and disk against output size.

Usage::

    python pipelines/bench_scaling.py [--sizes 1 4 16] [--out pipelines/results]

A 512x512 reference (scikit-image's public-domain astronaut photograph) is retargeted to
outputs of 1, 4 and 16 MP through ``gigasid run`` in a subprocess (Zarr store, 512-px tiles).
Peak RssAnon is sampled over the whole process tree. The 1 MP job also runs with the
in-memory store to measure the engine's overhead (Zarr I/O, halos, scheduling). Writes
``bench_scaling.json`` and ``bench_scaling.md``.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _measure import run_measured  # noqa: E402


def _du(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def run_job(ref: Path, mp: float, store: str, extra: list[str]) -> dict:
    side = int(math.sqrt(mp * 2**20))
    h, w = side - side % 8, side - side % 8
    with tempfile.TemporaryDirectory(dir=HERE) as d:
        run_dir = Path(d) / "run"
        cmd = [sys.executable, "-m", "gigasid", "run", str(HERE.parent / "configs" /
               "retarget.yaml"), f"input={ref}", "num_samples=1", f"output_size=[{h},{w}]",
               f"engine.store={store}", "num_steps=10", "--out", str(run_dir), "--quiet",
               *extra]
        m = run_measured(cmd)
        timings = json.loads((run_dir / "timings.json").read_text())
        disk = _du(run_dir)
    return {"output": [h, w], "megapixels": h * w / 2**20, "store": store, "extra": extra,
            "wall_s": m["wall_s"], "cpu_s": m["cpu_s"], "setup_s": timings["setup_seconds"],
            "s_per_mp": m["wall_s"] / (h * w / 2**20), "peak_rss_anon_mb": m["peak_rss_anon_mb"],
            "disk_mb": disk / 2**20}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--sizes", type=float, nargs="*", default=[1, 4, 16])
    ap.add_argument("--repeats", type=int, default=3,
                    help="alternated Zarr / in-memory runs of the 1 MP job for the overhead")
    ap.add_argument("--out", type=Path, default=HERE / "results")
    args = ap.parse_args()
    from _measure import machine
    from PIL import Image
    from skimage import data

    ref = HERE / "results" / "astronaut_512.png"
    ref.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(data.astronaut()).save(ref)
    rows = []
    for mp in args.sizes:
        rows.append(run_job(ref, mp, "zarr", []))
        print(json.dumps(rows[-1]), flush=True)
    # Engine overhead: the same 1 MP job with the Zarr store + tiles and as one in-memory
    # region, alternated `--repeats` times; medians of wall and CPU time.
    pairs = []
    for _ in range(args.repeats):
        pairs.append((run_job(ref, 1, "zarr", []), run_job(ref, 1, "memory", [])))
        print(json.dumps(pairs[-1]), flush=True)
    mem = min((p[1] for p in pairs), key=lambda r: r["wall_s"])
    med = statistics.median
    zw, mw = med(p[0]["wall_s"] for p in pairs), med(p[1]["wall_s"] for p in pairs)
    zc, mc = med(p[0]["cpu_s"] for p in pairs), med(p[1]["cpu_s"] for p in pairs)
    res = {"machine": machine(), "runs": rows, "in_memory_1mp": mem,
           "overhead_pairs": pairs, "engine_overhead": (zw - mw) / zw,
           "engine_overhead_cpu": (zc - mc) / zc}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "bench_scaling.json").write_text(json.dumps(res, indent=2))
    m = res["machine"]
    lines = [f"# bench_scaling ({m['date']}, {m['cpu']}, {m['cores']} cores)", "",
             "512x512 reference, `configs/retarget.yaml` with `num_steps=10`, Zarr store, "
             "512-px tiles, 1 worker (2 threads).",
             "", "| output | MP | wall s | s/MP | peak RssAnon MB (all processes) | disk MB |",
             "|---|---|---|---|---|---|"]
    for r in rows + [mem]:
        lines.append(f"| {r['output'][1]}x{r['output'][0]} ({r['store']}) | "
                     f"{r['megapixels']:.1f} | {r['wall_s']:.0f} | {r['s_per_mp']:.1f} | "
                     f"{r['peak_rss_anon_mb']:.0f} | {r['disk_mb']:.0f} |")
    lines += ["", f"Engine overhead at 1 MP (Zarr store + 512-px tiles vs one in-memory "
              f"region, medians of {args.repeats} alternated pairs): "
              f"{100 * res['engine_overhead']:.1f} % of wall time, "
              f"{100 * res['engine_overhead_cpu']:.1f} % of CPU time "
              f"(Zarr {zw:.1f} s vs in-memory {mw:.1f} s wall)."]
    (args.out / "bench_scaling.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
