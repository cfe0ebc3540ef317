"""Streaming-engine scaling: wall time, memory and disk against output size.

Usage::

    python benchmarks/bench_scaling.py [--sizes 1 4 16] [--out benchmarks/results]

A 512x512 reference (scikit-image's public-domain astronaut photograph) is retargeted to
outputs of 1, 4 and 16 MP through ``gigasid run`` in a subprocess (Zarr store, 512-px tiles).
Peak RssAnon is sampled over the whole process tree. The 1 MP job also runs with the
in-memory store to measure the engine's overhead (Zarr I/O, halos, scheduling). Writes
``bench_scaling.json`` and ``bench_scaling.md``.

The gigapixel-path check::

    python benchmarks/bench_scaling.py --huge 8192 16384 --kill-after 1800

retargets the bundled astronaut photograph to one large output (here 16384x8192, 134 MP)
with the Zarr store and every export, SIGKILLs the whole process tree after
``--kill-after`` seconds, runs the same command again (it resumes), and records both
runs' wall time and peak memory, what ``gigasid status`` said after the crash, the run
directory's size on disk and the exports (the BigTIFF is opened and its pyramid counted).
Writes ``bench_scaling_huge.json`` / ``.md``.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import statistics
import subprocess
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


def _sizes(path: Path) -> dict:
    """Bytes on disk of each top-level entry under ``path``."""
    return {p.name: (_du(p) if p.is_dir() else p.stat().st_size) for p in sorted(path.iterdir())}


def run_huge(h: int, w: int, kill_after: float, run_dir: Path, out: Path, keep: bool) -> None:
    """One large retarget, killed once and resumed; see the module docstring."""
    from _measure import machine

    if run_dir.exists():
        raise SystemExit(f"{run_dir} exists: remove it (this benchmark starts from nothing)")
    cmd = [sys.executable, "-m", "gigasid", "run", str(HERE.parent / "configs" / "retarget.yaml"),
           "input=builtin:astronaut", "num_samples=1", f"output_size=[{h},{w}]",
           "engine.store=zarr", "num_steps=10", "--out", str(run_dir), "--quiet"]
    first = run_measured(cmd, interval=1.0, kill_after=kill_after)
    print(json.dumps({"first": first}), flush=True)
    status = subprocess.run([sys.executable, "-m", "gigasid", "status", str(run_dir)],
                            capture_output=True, text=True).stdout
    print(status, flush=True)
    second = run_measured(cmd, interval=1.0)
    print(json.dumps({"resumed": second}), flush=True)
    timings = json.loads((run_dir / "timings.json").read_text())
    events = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
    reused = sum(1 for e in events if e.get("resumed"))
    import pyvips

    tiffs = sorted(run_dir.rglob("*.tif*"))
    tiff = {}
    if tiffs:
        im = pyvips.Image.new_from_file(str(tiffs[0]))
        levels = im.get("n-subifds") if im.get_typeof("n-subifds") else 0
        tiff = {"file": str(tiffs[0].relative_to(run_dir)), "width": im.width,
                "height": im.height, "reduced_levels": levels}
    res = {"machine": machine(), "output": [h, w], "megapixels": h * w / 2**20,
           "command": " ".join(cmd[2:]), "kill_after_s": kill_after, "first": first,
           "status_after_kill": status, "resumed": second, "reused_tasks": reused,
           "total_wall_s": first["wall_s"] + second["wall_s"],
           "s_per_mp": (first["wall_s"] + second["wall_s"]) / (h * w / 2**20),
           "timings": timings, "disk_mb": _du(run_dir) / 2**20,
           "entries_mb": {k: v / 2**20 for k, v in _sizes(run_dir).items()},
           "out_mb": {k: v / 2**20 for k, v in _sizes(run_dir / "out").items()},
           "tiff": tiff}
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench_scaling_huge.json").write_text(json.dumps(res, indent=2))
    m = res["machine"]
    peak = max(first["peak_rss_anon_mb"], second["peak_rss_anon_mb"])
    lines = [f"# bench_scaling --huge ({m['date']}, {m['cpu']}, {m['cores']} cores)", "",
             f"`python benchmarks/bench_scaling.py --huge {h} {w} --kill-after {kill_after:g}`: "
             f"the bundled astronaut photograph (256x256) retargeted to {w}x{h} "
             f"({res['megapixels']:.1f} MP), `num_steps=10`, Zarr store, default exports.", "",
             "| run | wall s | CPU s | peak RssAnon MB |", "|---|---|---|---|",
             f"| first (SIGKILL after {kill_after:g} s) | {first['wall_s']:.0f} | "
             f"{first['cpu_s']:.0f} | {first['peak_rss_anon_mb']:.0f} |",
             f"| same command again (resumes) | {second['wall_s']:.0f} | {second['cpu_s']:.0f} | "
             f"{second['peak_rss_anon_mb']:.0f} |", "",
             f"Total {res['total_wall_s']:.0f} s ({res['s_per_mp']:.1f} s per output MP), "
             f"peak RssAnon {peak:.0f} MB, run directory {res['disk_mb']:.0f} MB on disk; "
             f"{reused} scale waves reused from the killed run.", "",
             "`gigasid status` after the kill:", "", "```", status.rstrip(), "```", "",
             "Outputs (`out/`, MB): " + ", ".join(f"{k} {v:.0f}" for k, v in
                                                 res["out_mb"].items()) + ".",
             f"BigTIFF: {tiff.get('width')}x{tiff.get('height')} px plus "
             f"{tiff.get('reduced_levels')} reduced pyramid levels (SubIFDs)."]
    (out / "bench_scaling_huge.md").write_text("\n".join(lines) + "\n")
    if not keep:
        shutil.rmtree(run_dir)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--sizes", type=float, nargs="*", default=[1, 4, 16])
    ap.add_argument("--repeats", type=int, default=3,
                    help="alternated Zarr / in-memory runs of the 1 MP job for the overhead")
    ap.add_argument("--out", type=Path, default=HERE / "results")
    ap.add_argument("--huge", type=int, nargs=2, metavar=("H", "W"),
                    help="instead: one H x W retarget, killed once and resumed")
    ap.add_argument("--kill-after", type=float, default=1800.0,
                    help="--huge: seconds before the first run is killed")
    ap.add_argument("--run-dir", type=Path, default=HERE / "huge_run",
                    help="--huge: the run directory (must not exist)")
    ap.add_argument("--keep", action="store_true", help="--huge: keep the run directory")
    args = ap.parse_args()
    if args.huge:
        run_huge(*args.huge, args.kill_after, args.run_dir, args.out, args.keep)
        return
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
