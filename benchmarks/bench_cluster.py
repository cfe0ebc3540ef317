"""Dask distributed vs the local process scheduler at equal cores, and the scheduler's rate.

Usage::

    python benchmarks/bench_cluster.py [--mp 4] [--workers 1 2] [--repeats 1]

A 512x512 reference (the bundled astronaut photograph) is retargeted to ``--mp`` output
megapixels (``configs/retarget.yaml``, 10 steps, Zarr store, 512-px tiles) through
``gigasid run`` in a subprocess, with ``engine.scheduler=processes`` and with a Dask
``LocalCluster`` started by this script (``engine.scheduler=tcp://...``), N workers of one
thread each. Reported per run: wall seconds, the driver's peak RssAnon, every worker's peak
RSS, and whether the bytes equal the ``processes`` run's. The cluster is started (and its
worker processes imported) before the clock starts; that start-up is reported apart.

The scheduler's sustained task rate is measured on the real graph of the job's finest scale
(same keys and edges, tile tasks replaced by a no-op). Writes ``bench_cluster.json`` and
``bench_cluster.md``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _measure import run_measured  # noqa: E402


def _job_args(mp: float) -> tuple[list[str], tuple[int, int]]:
    side = int(math.sqrt(mp * 2**20))
    h = w = side - side % 8
    return ([str(HERE.parent / "configs" / "retarget.yaml"), "input=builtin:astronaut",
             "num_samples=1", f"output_size=[{h},{w}]", "num_steps=10", "engine.store=zarr",
             "engine.tile_size=512", "output.formats=[png]"], (h, w))


def _worker_peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_once(args: list[str], extra: list[str], client=None) -> dict:
    # A LocalCluster's nanny writes its MALLOC_TRIM_THRESHOLD_ into this process's
    # environment; measure every run as if started from a clean shell.
    os.environ.pop("MALLOC_TRIM_THRESHOLD_", None)
    with tempfile.TemporaryDirectory(dir=HERE) as d:
        run_dir = Path(d) / "run"
        cmd = [sys.executable, "-m", "gigasid", "run", *args, *extra, "--out", str(run_dir),
               "--quiet"]
        m = run_measured(cmd)
        png = (run_dir / "sample_000.png").read_bytes()
        events = [json.loads(x) for x in (run_dir / "log.jsonl").read_text().splitlines()]
    tiles = [e for e in events if e.get("event") == "tile_done"]
    out = {"extra": extra, "wall_s": m["wall_s"], "driver_peak_rss_anon_mb":
           m["peak_rss_anon_mb"], "tile_tasks": len(tiles),
           "tiles_recomputed": sum(1 for e in tiles if not e.get("computed", True)),
           "png": png}
    if client is not None:
        out["worker_peak_rss_mb"] = sorted(client.run(_worker_peak_mb).values())
    return out


def scheduler_rate(client, nrows: int, ncols: int, waves: int = 11) -> dict:
    """Tasks per second through the scheduler for one scale's graph over an
    ``nrows x ncols`` tile grid (each tile reads its 3x3 neighbourhood, as a 512-px tile
    with a patch-and-blend halo does), tile tasks replaced by a no-op."""
    from gigasid.engine import graph

    ntiles = nrows * ncols

    def around(t):
        r, c = divmod(t, ncols)
        return sorted(rr * ncols + cc for rr in range(max(0, r - 1), min(nrows, r + 2))
                      for cc in range(max(0, c - 1), min(ncols, c + 2)))

    reads = [[around(t) for t in range(ntiles)] for _ in range(waves - 1)]
    deps = graph.wave_dependencies(reads, ntiles)
    dsk, _ = graph.scale_graph("rate", deps, _noop, lambda w, t: False)
    t0 = time.perf_counter()
    client.get(dsk, [k for k, v in dsk.items() if isinstance(v, tuple)])
    dt = time.perf_counter() - t0
    return {"tasks": len(dsk), "tiles": ntiles, "grid": [nrows, ncols], "seconds": dt,
            "tasks_per_s": len(dsk) / dt}


def _noop(*_a) -> tuple[float, bool]:
    return 0.0, True


def main(argv=None) -> None:
    import logging

    from distributed import Client, LocalCluster

    ap = argparse.ArgumentParser()
    ap.add_argument("--mp", type=float, default=4.0)
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--threads", type=int, default=None,
                    help="engine.threads for both schedulers (default: cores / workers)")
    ap.add_argument("--rate-grid", type=int, nargs=2, default=[64, 64],
                    help="tile grid of the scheduler-rate graph (64x64 512-px tiles = 1 GP)")
    ap.add_argument("--out", type=Path, default=HERE / "results")
    a = ap.parse_args(argv)
    args, shape = _job_args(a.mp)
    if a.threads:
        args.append(f"engine.threads={a.threads}")
    rows = []
    for n in a.workers:
        for _ in range(a.repeats):
            base = run_once(args, ["engine.scheduler=processes", f"engine.workers={n}"])
            t0 = time.perf_counter()
            cluster = LocalCluster(n_workers=n, threads_per_worker=1, processes=True,
                                   host="127.0.0.1", dashboard_address=None,
                                   silence_logs=logging.ERROR)
            client = Client(cluster)
            start_s = time.perf_counter() - t0
            dist = run_once(args, [f"engine.scheduler={cluster.scheduler_address}",
                                   f"engine.workers={n}"], client)
            rate = (scheduler_rate(client, *a.rate_grid) if n == max(a.workers) else None)
            client.close()
            cluster.close()
            same = dist.pop("png") == base.pop("png")
            rows.append({"workers": n, "processes": base, "distributed": dist,
                         "cluster_start_s": start_s, "identical_bytes": same,
                         "overhead": dist["wall_s"] / base["wall_s"] - 1, "rate": rate})
            print(json.dumps(rows[-1]), flush=True)
    report = {"date": time.strftime("%Y-%m-%d"), "machine": platform.processor() or
              platform.machine(), "output": list(shape), "rows": rows}
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / "bench_cluster.json").write_text(json.dumps(report, indent=2))
    lines = [f"# bench_cluster ({report['date']}, {platform.machine()}, "
             f"{os.cpu_count()} cores)", "",
             f"Retarget of the astronaut to {shape[0]}x{shape[1]} ({a.mp:g} MP), 10 steps, "
             "Zarr store, 512-px tiles; one thread per worker. "
             f"`python benchmarks/bench_cluster.py --mp {a.mp:g}"
             f"{f' --threads {a.threads}' if a.threads else ''}`.", "",
             "| workers | processes wall s | distributed wall s | overhead | cluster start s | "
             "driver peak MB (proc / dist) | worker peak RSS MB | tile tasks | recomputed | "
             "same bytes |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        p, d = r["processes"], r["distributed"]
        lines.append(
            f"| {r['workers']} | {p['wall_s']:.1f} | {d['wall_s']:.1f} | "
            f"{100 * r['overhead']:+.1f} % | {r['cluster_start_s']:.1f} | "
            f"{p['driver_peak_rss_anon_mb']:.0f} / {d['driver_peak_rss_anon_mb']:.0f} | "
            f"{', '.join(f'{v:.0f}' for v in d['worker_peak_rss_mb'])} | {d['tile_tasks']} | "
            f"{d['tiles_recomputed']} | {r['identical_bytes']} |")
    for r in rows:
        if r["rate"]:
            q = r["rate"]
            lines += ["", f"Scheduler rate: one scale's graph over a {q['grid'][0]}x"
                      f"{q['grid'][1]} tile grid ({q['tiles']} tiles x 11 waves + barriers = "
                      f"{q['tasks']} tasks, no-op tasks, {r['workers']} workers): "
                      f"{q['seconds']:.1f} s, {q['tasks_per_s']:.0f} tasks/s."]
    (a.out / "bench_cluster.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
