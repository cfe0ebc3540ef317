"""Benchmark the out-of-core export layer (``gigasid.io.export``): time and peak memory.

What it does
------------
1. Creates synthetic RGB sources as Zarr v3 arrays on disk, generated one band of rows at a
   time so that making them is itself out-of-core (smooth gradients, a few sinusoids and
   per-pixel noise, so JPEG/deflate see realistic entropy), in two layouts:

   * ``bands``: ``out/image.zarr`` as the engine writes it now
     (:func:`gigasid.io.export.create_image_zarr`: uncompressed full-width bands, which the
     export maps in place -- no copy);
   * ``tiles-zstd``: the layout of runs written before that change (512x512x3 chunks, Zarr's
     default zstd codec), which the export must decode and copy into its raw bridge.

2. Runs every measurement in a fresh subprocess (which first calls
   ``limit_heap_fragmentation()``, as ``gigasid export`` does, except the
   ``export_all_glibc_default`` rows) while the parent samples the child's ``RssAnon``
   (anonymous resident memory: heap, libvips buffers; not the page cache of memory-mapped
   files, which the kernel can reclaim) every 5 ms and keeps the peak. Before each run the
   parent waits (up to 2 min) until the machine's CPUs are idle, since a shared 2-core machine
   is noisy; each row reports the median and the min-max range of its repeats.
3. Per size (by default 4096^2 = 16 MP, 16384^2 = 268 MP and 4096 x 65536 = 268 MP): bridge
   build time, then each format from that bridge -- pyramidal BigTIFF (JPEG Q90, and deflate),
   DeepZoom (JPEG tiles), preview (1024 px) -- and ``export_all`` end to end (serial, the
   default, and with ``parallel=True``); the old layout with both bridges (``raw`` memmap vs
   ``tiff`` tifffile) at the ``--bridges-at`` sizes.
4. Writes ``benchmarks/results/bench_export.json`` and ``benchmarks/results/bench_export.md``.

Throughput is reported two ways: the format step alone (libvips reading the bridge) and end to
end (bridge build from the Zarr array + format), in megapixels of the full-resolution image per
second. The outputs of every run are kept until the end of the benchmark: deleting thousands of
DeepZoom tiles just before the next run makes ext4 skip over the freshly freed inodes while
creating the next ones, which slowed ``dzsave`` by up to 1.6x here.

Usage::

    python benchmarks/bench_export.py                 # all sizes, ~25 min on 2 cores
    python benchmarks/bench_export.py --sizes 4096    # quick run
    python benchmarks/bench_export.py --workdir /big/disk --repeats 3
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
FORMATS = (
    "bridge",
    "tiff_jpeg",
    "tiff_deflate",
    "dzi_jpg",
    "preview",
    "export_all",
    "export_all_parallel",
    "export_all_glibc_default",
)
#: formats measured on the old layout (runs written before image.zarr became raw bands)
LEGACY_FORMATS = ("bridge", "tiff_jpeg", "dzi_jpg", "export_all")
#: what the second bridge is measured on (old layout only: the new one is never copied)
TIFF_BRIDGE_FORMATS = ("bridge", "tiff_jpeg", "dzi_jpg", "preview")
#: formats measured on the non-square (wide) shapes: how memory depends on the image width
WIDE_FORMATS = ("bridge", "tiff_jpeg", "dzi_jpg", "export_all", "export_all_glibc_default")
LAYOUTS = {
    "bands": "out/image.zarr as written now: uncompressed full-width bands (create_image_zarr)",
    "tiles-zstd": "runs written before: 512x512x3 chunks, zarr's default codecs (zstd)",
}
CHUNK = 512


# ------------------------------------------------------------------------------------------------
# synthetic source


def _synthetic_rows(y0: int, y1: int, height: int, width: int, rng: Any) -> np.ndarray:
    x = np.arange(width, dtype=np.float32)[None, :] / width
    y = np.arange(y0, y1, dtype=np.float32)[:, None] / height
    r = 255 * x * (1 - 0.5 * y) + 20 * np.sin(40 * np.pi * y)
    g = 255 * y + 30 * np.sin(25 * np.pi * x) * np.cos(17 * np.pi * y)
    b = 255 * (1 - x) * y + 40 * np.sin(60 * np.pi * (x + y))
    band = np.stack(np.broadcast_arrays(r, g, b), axis=-1)
    band += rng.normal(0.0, 6.0, size=band.shape).astype(np.float32)
    return np.clip(band, 0, 255).astype(np.uint8)


def make_source(path: Path, height: int, width: int, layout: str = "bands", seed: int = 0) -> Path:
    """Create a ``height`` x ``width`` RGB Zarr array in ``layout``, one band at a time."""
    import zarr

    from gigasid.io import export as ex

    if (path / "zarr.json").exists():
        arr = zarr.open_array(str(path), mode="r")
        if arr.shape == (height, width, 3):
            return path
        shutil.rmtree(path)
    if layout == "bands":
        arr = ex.create_image_zarr(path, height, width, tile=CHUNK)
    elif layout == "tiles-zstd":
        arr = zarr.create_array(
            store=str(path),
            shape=(height, width, 3),
            chunks=(CHUNK, CHUNK, 3),
            dtype="uint8",
            fill_value=0,
            zarr_format=3,
        )
    else:
        raise ValueError(layout)
    rows = int(arr.chunks[0])
    rng = np.random.default_rng(seed)
    for y0 in range(0, height, rows):
        y1 = min(height, y0 + rows)
        arr[y0:y1] = _synthetic_rows(y0, y1, height, width, rng)
    return path


def parse_size(text: str) -> tuple[int, int]:
    """``"4096"`` -> (4096, 4096); ``"4096x65536"`` -> (4096, 65536) as (height, width)."""
    if "x" in text:
        h, w = text.lower().split("x")
        return int(h), int(w)
    return int(text), int(text)


# ------------------------------------------------------------------------------------------------
# child side: one measurement


def _rss_anon_kb() -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("RssAnon:"):
                return int(line.split()[1])
    return -1


def child(task: dict[str, Any]) -> dict[str, Any]:
    """Run one measurement (in the subprocess) and return its timings."""
    import zarr

    from gigasid.io import export as ex

    if not task.get("glibc_default"):
        ex.limit_heap_fragmentation()  # what a process dedicated to exporting does
    ex._vips()  # import + configure libvips before the baseline sample
    src = zarr.open_array(task["source"], mode="r")
    out = Path(task["out"])
    out.mkdir(parents=True, exist_ok=True)
    res: dict[str, Any] = {"baseline_rss_anon_mb": _rss_anon_kb() / 1024}
    fmt = task["format"]
    if fmt in ("export_all", "export_all_parallel", "export_all_glibc_default"):
        t0 = time.perf_counter()
        ex.export_all(
            src,
            out,
            ex.ExportOptions(),
            {"seed": 0, "bench": True},
            bridge_method=task["bridge"],
            parallel=fmt == "export_all_parallel",
        )
        res["total_s"] = time.perf_counter() - t0
        return res
    t0 = time.perf_counter()
    with ex.VipsBridge(src, out, method=task["bridge"]) as bridge:
        t1 = time.perf_counter()
        if fmt == "bridge":
            pass
        elif fmt in ("tiff_jpeg", "tiff_deflate"):
            ex.export_tiff(
                src,
                out / "image.tif",
                ex.ExportOptions(tiff_compression=fmt.split("_", 1)[1]),
                {"seed": 0},
                bridge=bridge,
            )
        elif fmt == "dzi_jpg":
            ex.export_dzi(src, out / "image.dzi", ex.ExportOptions(), {"seed": 0}, bridge=bridge)
        elif fmt == "preview":
            ex.export_preview(src, out / "preview.jpg", 1024, bridge=bridge)
        else:
            raise ValueError(fmt)
        t2 = time.perf_counter()
    res.update(bridge_s=t1 - t0, format_s=t2 - t1, total_s=time.perf_counter() - t0)
    if fmt == "bridge":
        del res["format_s"]
    return res


# ------------------------------------------------------------------------------------------------
# parent side


def _read_rss_anon_kb(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("RssAnon:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def run_task(task: dict[str, Any]) -> dict[str, Any]:
    """Run ``task`` in a subprocess, sampling its RssAnon; return result + peak (MB)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.Popen(
        [sys.executable, __file__, "--child", json.dumps(task)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    peak = 0
    while proc.poll() is None:
        peak = max(peak, _read_rss_anon_kb(proc.pid))
        time.sleep(0.005)
    out, err = proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"task {task} failed:\n{err}")
    res = json.loads(out.strip().splitlines()[-1])
    res["peak_rss_anon_mb"] = peak / 1024
    return res


def _du_mb(path: Path) -> float:
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            total += os.path.getsize(os.path.join(root, name))
    return total / 1e6


def _cpu_idle_fraction(seconds: float = 1.0) -> float:
    def sample() -> tuple[int, int]:
        with open("/proc/stat") as fh:
            vals = [int(v) for v in fh.readline().split()[1:]]
        return sum(vals[:8]), vals[3] + vals[4]  # total, idle + iowait

    t0, i0 = sample()
    time.sleep(seconds)
    t1, i1 = sample()
    return (i1 - i0) / max(1, t1 - t0)


def wait_for_idle(min_idle: float = 0.9, timeout: float = 120.0) -> bool:
    """Wait until the CPUs are at least ``min_idle`` idle over one second; False on timeout."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if _cpu_idle_fraction() >= min_idle:
                return True
        except OSError:  # no /proc/stat: nothing to wait for
            return True
    return False


def plan(
    sizes: list[tuple[int, int]], layouts: list[str], both_at: set[tuple[int, int]]
) -> list[tuple[int, int, str, str, tuple[str, ...]]]:
    """(height, width, layout, bridge, formats) of every row group, in run order."""
    groups = []
    for height, width in sizes:
        square = height == width
        for layout in layouts:
            if layout == "bands":
                groups.append((height, width, layout, "raw", FORMATS if square else WIDE_FORMATS))
            else:
                groups.append((height, width, layout, "raw", LEGACY_FORMATS))
                if (height, width) in both_at:
                    groups.append((height, width, layout, "tiff", TIFF_BRIDGE_FORMATS))
    return groups


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument(
        "--sizes",
        default="4096,16384,4096x65536",
        help="image sizes, a side (square) or HxW (default 4096,16384,4096x65536)",
    )
    ap.add_argument(
        "--layouts",
        default=",".join(LAYOUTS),
        help="source layouts: " + ", ".join(f"{k} ({v})" for k, v in LAYOUTS.items()),
    )
    ap.add_argument(
        "--bridges-at",
        default="4096,16384",
        help="sizes at which both bridges are compared on the old layout (others: raw only)",
    )
    ap.add_argument("--repeats", type=int, default=3, help="runs per measurement (median time)")
    ap.add_argument("--no-wait-idle", action="store_true", help="do not wait for idle CPUs")
    ap.add_argument("--workdir", default=None, help="scratch directory (default: a temp dir)")
    ap.add_argument("--keep", action="store_true", help="keep the scratch directory")
    ap.add_argument("--results", default=str(RESULTS))
    args = ap.parse_args(argv)

    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return 0

    sizes = [parse_size(s) for s in args.sizes.split(",") if s]
    layouts = [x for x in args.layouts.split(",") if x]
    for layout in layouts:
        if layout not in LAYOUTS:
            ap.error(f"unknown layout {layout!r}; allowed: {', '.join(LAYOUTS)}")
    both_at = {parse_size(s) for s in args.bridges_at.split(",") if s}
    work = Path(args.workdir or tempfile.mkdtemp(prefix="gigasid-bench-export-"))
    work.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    rows: list[dict[str, Any]] = []
    sources: dict[tuple[int, int, str], dict[str, Any]] = {}
    not_idle = 0
    outputs: list[Path] = []
    try:
        for height, width, layout, bridge, fmts in plan(sizes, layouts, both_at):
            side = f"{height}x{width}"
            mp = height * width / 1e6
            src = work / f"src_{side}_{layout}.zarr"
            if (height, width, layout) not in sources:
                t0 = time.perf_counter()
                make_source(src, height, width, layout)
                sources[(height, width, layout)] = {
                    "size": side,
                    "layout": layout,
                    "make_s": round(time.perf_counter() - t0, 1),
                    "zarr_mb": round(_du_mb(src), 1),
                }
                print(f"[{side} = {mp:.0f} MP] source: {sources[(height, width, layout)]}")
            for fmt in fmts:
                runs = []
                for rep in range(max(1, args.repeats)):
                    # every run writes to a new directory, deleted at the end (see docstring)
                    out = work / f"out_{side}_{layout}_{bridge}_{fmt}_{rep}"
                    shutil.rmtree(out, ignore_errors=True)
                    if not args.no_wait_idle and not wait_for_idle():
                        not_idle += 1
                    runs.append(
                        run_task(
                            {
                                "source": str(src),
                                "out": str(out),
                                "bridge": bridge,
                                "format": fmt,
                                "glibc_default": fmt == "export_all_glibc_default",
                            }
                        )
                    )
                    out_mb = _du_mb(out)
                    outputs.append(out)
                row: dict[str, Any] = {
                    "height": height,
                    "width": width,
                    "megapixels": round(mp, 2),
                    "layout": layout,
                    "bridge": bridge,
                    "format": fmt,
                    "repeats": len(runs),
                    "output_mb": round(out_mb, 1),
                    "peak_rss_anon_mb": round(max(r["peak_rss_anon_mb"] for r in runs), 1),
                    "baseline_rss_anon_mb": round(
                        statistics.median(r["baseline_rss_anon_mb"] for r in runs), 1
                    ),
                }
                for key in ("bridge_s", "format_s", "total_s"):
                    if key in runs[0]:
                        row[key] = round(statistics.median(r[key] for r in runs), 3)
                row["total_s_range"] = [
                    round(min(r["total_s"] for r in runs), 3),
                    round(max(r["total_s"] for r in runs), 3),
                ]
                if "format_s" in row:
                    row["format_mp_per_s"] = round(mp / max(row["format_s"], 1e-9), 1)
                row["end_to_end_mp_per_s"] = round(mp / max(row["total_s"], 1e-9), 1)
                rows.append(row)
                print("  " + json.dumps(row), flush=True)
    finally:
        for out in outputs:
            shutil.rmtree(out, ignore_errors=True)
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)

    import pyvips
    import tifffile
    import zarr

    report = {
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": {
            "cores": len(os.sched_getaffinity(0)),
            "cpu": _cpu_name(),
            "memory_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
            "python": platform.python_version(),
            "pyvips": pyvips.__version__,
            "libvips": f"{pyvips.version(0)}.{pyvips.version(1)}.{pyvips.version(2)}",
            "tifffile": tifffile.__version__,
            "zarr": zarr.__version__,
        },
        "method": {
            "source": "Zarr v3 on local disk (hot page cache), gradients + sinusoids + noise; "
            "layouts: " + "; ".join(f"{k} = {v}" for k, v in LAYOUTS.items() if k in layouts),
            "memory": "peak RssAnon of a fresh subprocess per measurement, sampled every 5 ms",
            "timing": "median of repeats (range = min-max of total_s), each run started once "
            "the CPUs were idle; bridge_s = Zarr -> bridge; format_s = libvips save",
            "options": "tile 256, JPEG Q90, DZI 254+1 JPEG tiles, preview 1024 px",
        },
        "targets": {"peak_rss_anon_mb": 300, "tiff_mp_per_s": 50, "dzi_mp_per_s": 25},
        "runs_started_without_idle_cpus": not_idle,
        "bench_seconds": round(time.perf_counter() - started, 1),
        "sources": list(sources.values()),
        "rows": rows,
    }
    out_dir = Path(args.results)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "bench_export.json").write_text(json.dumps(report, indent=2) + "\n")
    (out_dir / "bench_export.md").write_text(markdown(report))
    print(
        f"wrote {out_dir / 'bench_export.json'} and bench_export.md ({report['bench_seconds']} s)"
    )
    return 0


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def markdown(report: dict[str, Any]) -> str:
    """Render the report as a markdown table."""
    m = report["machine"]
    lines = [
        "# Export benchmark (`benchmarks/bench_export.py`)",
        "",
        f"Date: {report['date']}. Machine: {m['cores']} cores ({m['cpu']}), "
        f"{m['memory_gb']} GiB RAM, no GPU; Python {m['python']}, libvips {m['libvips']} "
        f"(pyvips {m['pyvips']}, pyvips-binary), tifffile {m['tifffile']}, zarr {m['zarr']}.",
        "",
        f"Method: {report['method']['source']}; {report['method']['memory']}; "
        f"{report['method']['timing']}; {report['method']['options']}. "
        "MP/s counts full-resolution megapixels. Targets: peak RssAnon <= 300 MB, "
        ">= 50 MP/s pyramidal BigTIFF, >= 25 MP/s DeepZoom (2 cores), end to end.",
        "",
        "Sources: "
        + "; ".join(
            f"{s['size']} {s['layout']}: {s['zarr_mb']} MB on disk, written in {s['make_s']} s"
            for s in report["sources"]
        )
        + ".",
        "",
        "| image | layout | bridge | output | bridge s | format s | total s (min-max) "
        "| format MP/s | end-to-end MP/s | peak RssAnon MB | output MB |",
        "|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in report["rows"]:

        def cell(key: str, row: dict[str, Any] = r) -> str:
            return "" if key not in row else f"{row[key]}"

        lo, hi = r["total_s_range"]
        lines.append(
            f"| {r['height']}x{r['width']} ({r['megapixels']:.0f} MP) | {r['layout']} "
            f"| {r['bridge']} | {r['format']} "
            f"| {cell('bridge_s')} | {cell('format_s')} | {r['total_s']} ({lo}-{hi}) "
            f"| {cell('format_mp_per_s')} | {cell('end_to_end_mp_per_s')} "
            f"| {r['peak_rss_anon_mb']} | {r['output_mb']} |"
        )
    lines += [
        "",
        "`bands` = `out/image.zarr` as the engine writes it now (raw full-width bands, mapped "
        "in place: the `bridge` row is just opening it); `tiles-zstd` = runs written before "
        "(decoded and copied into a raw bridge file). `bridge` = building the bridge only. "
        "`export_all` = bridge + tiff (JPEG) + dzi + preview + viewer in one call (the default: "
        "one output after the other); `export_all_parallel` = the same with `parallel=True` "
        "(libvips outputs concurrently). Every measurement but `export_all_glibc_default` first "
        "calls `limit_heap_fragmentation()` (glibc mmap threshold fixed at 256 KiB, as a process "
        "dedicated to exporting should); `export_all_glibc_default` = `export_all` with glibc's "
        "default (dynamic) threshold, i.e. an export inside a process that does not call it. "
        f"Baseline RssAnon after imports: ~{report['rows'][0]['baseline_rss_anon_mb']} MB "
        "(included in the peaks). Runs started before the CPUs were idle (2 min timeout): "
        f"{report.get('runs_started_without_idle_cpus', 0)}. Whole benchmark: "
        f"{report['bench_seconds']} s.",
        "",
    ]
    lines += _bridge_summary(report["rows"])
    return "\n".join(lines)


def _bridge_summary(rows: list[dict[str, Any]]) -> list[str]:
    """Sentences comparing the two bridges on the measurements both have."""
    by_key = {
        (r["height"], r["width"], r["bridge"], r["format"]): r
        for r in rows
        if r.get("layout", "tiles-zstd") == "tiles-zstd"
    }
    faster = lighter = total = 0
    for (h, w, bridge, fmt), raw in by_key.items():
        tif = by_key.get((h, w, "tiff", fmt))
        if bridge != "raw" or tif is None or fmt == "bridge":
            continue
        total += 1
        faster += raw["total_s"] < tif["total_s"]
        lighter += raw["peak_rss_anon_mb"] <= tif["peak_rss_anon_mb"]
    if not total:
        return []
    return [
        f"Bridge comparison (old layout, where the image is copied): the raw (memmap) bridge "
        f"was faster end to end in {faster} of {total} comparable measurements and used no "
        f"more peak memory in {lighter} of {total}.",
        "",
    ]


if __name__ == "__main__":
    raise SystemExit(main())
