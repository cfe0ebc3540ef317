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
import sys
import tempfile
import time
from pathlib import Path

import psutil

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))


def _tree_rss_anon(proc: psutil.Process) -> int:
    from _measure import rss_anon_bytes

    total = 0
    for p in [proc, *proc.children(recursive=True)]:
        try:
            total += rss_anon_bytes(p.pid)
        except (OSError, psutil.Error):
            pass
    return total


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
        t0 = time.perf_counter()
        proc = psutil.Popen(cmd)
        peak = 0
        while proc.poll() is None:
            peak = max(peak, _tree_rss_anon(proc))
            time.sleep(0.2)
        wall = time.perf_counter() - t0
        if proc.returncode != 0:
            raise RuntimeError(f"{cmd} failed with {proc.returncode}")
        timings = json.loads((run_dir / "timings.json").read_text())
        disk = _du(run_dir)
    return {"output": [h, w], "megapixels": h * w / 2**20, "store": store, "extra": extra,
            "wall_s": wall, "setup_s": timings["setup_seconds"],
            "s_per_mp": wall / (h * w / 2**20), "peak_rss_anon_mb": peak / 2**20,
            "disk_mb": disk / 2**20}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--sizes", type=float, nargs="*", default=[1, 4, 16])
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
    mem = run_job(ref, 1, "memory", [])
    print(json.dumps(mem), flush=True)
    zarr1 = next((r for r in rows if abs(r["megapixels"] - 1) < 0.1), None)
    res = {"machine": machine(), "runs": rows, "in_memory_1mp": mem}
    if zarr1:
        res["engine_overhead"] = (zarr1["wall_s"] - mem["wall_s"]) / zarr1["wall_s"]
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
    if "engine_overhead" in res:
        lines += ["", f"Engine overhead at 1 MP (Zarr store + tiles vs one in-memory region): "
                  f"{100 * res['engine_overhead']:.1f} % of wall time."]
    (args.out / "bench_scaling.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
