"""A reference larger than the in-memory limit: memory and time of a job that streams it.

Usage::

    python benchmarks/bench_big_input.py [--megapixels 100] [--out benchmarks/results]
    python benchmarks/bench_big_input.py --latent tiny --megapixels 32   # latent ingest

``--latent tiny|flux`` measures the latent path's ingest instead: the same job with
``latent.enabled`` (the full-size AutoencoderTiny or FLUX VAE architecture, random weights,
built as in ``bench_latent.py``), once with the input decoded whole in memory
(``engine.reference: memory``) and once streamed from a memory-mapped file
(``engine.reference: disk``); same latent bytes. Writes ``bench_big_input_latent.json`` / ``.md``.

Makes a synthetic JPEG of about ``--megapixels`` (the astronaut photograph tiled and mirrored,
so it has real texture at every scale; written by libvips without holding it whole), then
runs ``gigasid run configs/retarget.yaml`` to a 1024x1024 output with the Zarr store. The
reference is decoded in bands and its pyramid built band by band into memory-mapped files
(``engine.reference: auto`` picks this above 64 MP). Records wall and CPU time, setup time,
peak RssAnon over the process tree (memory-mapped files are not anonymous memory: they live
in the page cache) and the run directory's size. Writes ``bench_big_input.json`` / ``.md``.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _measure import machine, run_measured  # noqa: E402


def make_input(path: Path, megapixels: float, width: int | None = None) -> tuple[int, int]:
    """Write the synthetic reference; ``width`` fixes its width (height from the pixel
    count). Returns ``(height, width)``."""
    import pyvips

    from gigasid.io.images import builtin_image

    tile = pyvips.Image.new_from_file(str(builtin_image("astronaut")))
    if width is None:
        side = int(math.sqrt(megapixels * 2**20))
        h, w = side, side
    else:
        w, h = width, max(1, int(megapixels * 2**20 / width))
    # Mirror-tile the photo (no seams), then crop to the requested size.
    pair = tile.join(tile.fliphor(), "horizontal")
    quad = pair.join(pair.flipver(), "vertical")
    big = quad.replicate(math.ceil(w / quad.width), math.ceil(h / quad.height)).crop(0, 0, w, h)
    if path.suffix == ".tif":
        big.tiffsave(str(path), tile=True, compression="jpeg", Q=90, bigtiff=True)
    else:
        big.jpegsave(str(path), Q=90)
    return h, w


def latent_ingest(args, src: Path, h: int, w: int, tmp: Path) -> None:
    from bench_latent import model_dir

    vae = model_dir(args.latent, tmp / "models")
    rows = {}
    for ref in ("memory", "disk"):
        run_dir = tmp / f"run-{ref}"
        cmd = [sys.executable, "-m", "gigasid", "run", str(HERE.parent / "configs" /
               "retarget.yaml"), f"input={src}", "num_samples=1", "output_size=[1024,1024]",
               "num_steps=5", "engine.store=zarr", f"engine.reference={ref}",
               "latent.enabled=true", f"latent.vae={vae}", "patch_size=7", "fold_rho=.inf",
               "pyramid.min_short_side=14", "output.formats=[png]", "--out", str(run_dir),
               "--quiet"]
        m = run_measured(cmd, interval=0.5)
        log = [json.loads(x) for x in (run_dir / "log.jsonl").read_text().splitlines()]
        enc = [e for e in log if e.get("event") == "encoded"]
        rows[ref] = {**m, "encode_s": enc[0]["seconds"] if enc else None,
                     "latent": enc[0]["shape"] if enc else None,
                     "latent_sha": _latent_sha(run_dir)}
        print(ref, json.dumps(rows[ref]), flush=True)
    res = {"machine": machine(), "input": [h, w], "input_megapixels": h * w / 2**20,
           "vae": args.latent, "runs": rows,
           "same_latent": rows["memory"]["latent_sha"] == rows["disk"]["latent_sha"]}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "bench_big_input_latent.json").write_text(json.dumps(res, indent=2))
    mach = res["machine"]
    lines = [f"# bench_big_input --latent {args.latent} ({mach['date']}, {mach['cpu']}, "
             f"{mach['cores']} cores)", "",
             f"Input {w}x{h} JPEG ({res['input_megapixels']:.0f} MP), latent retarget to "
             f"1024x1024 px (5 steps), {args.latent} VAE architecture (random weights). "
             f"Same latent from both runs: {res['same_latent']}.", "",
             "| input pixels | wall s | encode s | peak RssAnon MB (all processes) |",
             "|---|---|---|---|"]
    for ref, r in rows.items():
        how = "decoded whole (memory)" if ref == "memory" else "streamed from a mapped file (disk)"
        lines.append(f"| {how} | {r['wall_s']:.0f} | {r['encode_s'] or 0:.0f} | "
                     f"{r['peak_rss_anon_mb']:.0f} |")
    (args.out / "bench_big_input_latent.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def _latent_sha(run_dir: Path) -> str | None:
    import hashlib

    import torch

    files = sorted((run_dir / "latent").glob("ref0-*.pt"))
    if not files:
        return None
    z = torch.load(files[0], weights_only=True)
    return hashlib.sha256(z.contiguous().numpy().tobytes()).hexdigest()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--megapixels", type=float, default=100)
    ap.add_argument("--width", type=int, default=None,
                    help="reference width in px (height from --megapixels); above JPEG's "
                    "65 535 px limit the input is a tiled JPEG-compressed BigTIFF")
    ap.add_argument("--output-size", type=int, nargs=2, default=[1024, 1024],
                    metavar=("H", "W"))
    ap.add_argument("--reference", default="auto", choices=["auto", "memory", "disk"])
    ap.add_argument("--latent", choices=["tiny", "flux"],
                    help="measure the latent path's ingest (memory vs streamed) instead")
    ap.add_argument("--out", type=Path, default=HERE / "results")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(dir=HERE) as d:
        wide = args.width is not None and args.width > 65535
        src = Path(d) / ("big.tif" if wide else "big.jpg")
        h, w = make_input(src, args.megapixels, args.width)
        if args.latent:
            latent_ingest(args, src, h, w, Path(d))
            return
        run_dir = Path(d) / "run"
        cmd = [sys.executable, "-m", "gigasid", "run", str(HERE.parent / "configs" /
               "retarget.yaml"), f"input={src}", "num_samples=1",
               f"output_size=[{args.output_size[0]},{args.output_size[1]}]",
               "engine.store=zarr", f"engine.reference={args.reference}", "--out",
               str(run_dir), "--quiet"]
        m = run_measured(cmd, interval=0.5)
        timings = json.loads((run_dir / "timings.json").read_text())
        plan = json.loads((run_dir / "plan.json").read_text())
        disk = sum(p.stat().st_size for p in run_dir.rglob("*") if p.is_file())
        ref_disk = sum(p.stat().st_size for p in (run_dir / "reference").rglob("*"))
    res = {"machine": machine(), "input": [h, w], "input_megapixels": h * w / 2**20,
           "output": args.output_size, **m, "setup_s": timings["setup_seconds"],
           "disk_mb": disk / 2**20, "reference_levels_mb": ref_disk / 2**20,
           "scales": [{"ref_shape": s["ref_shape"], "backend": s["backend"],
                       "dataset_stride": s["dataset_stride"], "n_patches": s["n_patches"]}
                      for s in plan["scales"]]}
    args.out.mkdir(parents=True, exist_ok=True)
    stem = "bench_big_input" if args.width is None else f"bench_big_input_w{w}"
    (args.out / f"{stem}.json").write_text(json.dumps(res, indent=2))
    mach = res["machine"]
    lines = [f"# bench_big_input ({mach['date']}, {mach['cpu']}, {mach['cores']} cores)", "",
             f"Reference {w}x{h} {src.suffix[1:].upper()} ({res['input_megapixels']:.0f} MP) "
             f"retargeted to {args.output_size[1]}x{args.output_size[0]} "
             "(`configs/retarget.yaml`, Zarr store, reference pyramid on disk).", "",
             "| wall s | CPU s | setup s | peak RssAnon MB (all processes) | run dir MB | "
             "reference levels MB |", "|---|---|---|---|---|---|",
             f"| {m['wall_s']:.0f} | {m['cpu_s']:.0f} | {res['setup_s']:.0f} | "
             f"{m['peak_rss_anon_mb']:.0f} | {res['disk_mb']:.0f} | "
             f"{res['reference_levels_mb']:.0f} |", "",
             "| scale | reference | backend | dataset stride | patches |", "|---|---|---|---|---|"]
    for i, s in enumerate(res["scales"]):
        lines.append(f"| {i} | {s['ref_shape'][1]}x{s['ref_shape'][0]} | {s['backend']} | "
                     f"{s['dataset_stride']} | {s['n_patches']:,} |")
    (args.out / f"{stem}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
