"""Latent codec benchmark: VAE encode / decode cost, streamed vs whole-image agreement, and
latent vs pixel jobs end to end.

Usage::

    python benchmarks/bench_latent.py codec [--size 1024]        # full-size FLUX VAE
    python benchmarks/bench_latent.py codec --size 2048 --tile 128 --cost-only   # 4 MP cost
    python benchmarks/bench_latent.py e2e [--mp 4]                # gigasid run, latent vs pixel
    python benchmarks/bench_latent.py e2e --mp 16 --pipelines pixel latent_tiny
    python benchmarks/bench_latent.py store                       # Zarr chunk codecs for latents

``codec`` builds the FLUX.1 VAE architecture (AutoencoderKL, 16 latent channels, 83.8 M
parameters) from its config with random weights (the cost and the tiling behaviour depend on
the architecture, not on the weights), saves it with ``save_pretrained`` and loads it
through gigasid's loader. On a real photograph of ``size`` px it measures the whole-image
diffusers call and gigasid's streamed call (tiles + halo, image-wide statistics measured on a
sample): seconds per MP, peak RssAnon, PSNR of streamed vs whole (peak-to-peak 2, the
[-1, 1] range), and a seam ratio (mean |step| across tile borders / at interior offsets).

``e2e`` runs ``gigasid run`` in fresh processes: the pixel pipeline and the latent pipeline
(FLUX architecture, and the full-size AutoencoderTiny architecture) at the same output size.

Writes ``results/bench_latent.json`` (merged per part) and ``results/bench_latent.md``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))

from _measure import PeakRssAnon, machine, run_measured  # noqa: E402

#: The FLUX.1 VAE's diffusers config (public; see the ecosystem notes).
FLUX_VAE = dict(in_channels=3, out_channels=3, latent_channels=16,
                down_block_types=("DownEncoderBlock2D",) * 4,
                up_block_types=("UpDecoderBlock2D",) * 4,
                block_out_channels=(128, 256, 512, 512), layers_per_block=2,
                norm_num_groups=32, sample_size=1024, scaling_factor=0.3611,
                shift_factor=0.1159, use_quant_conv=False, use_post_quant_conv=False,
                mid_block_add_attention=True, force_upcast=True)
#: The TAESD / TAEF1 architecture (AutoencoderTiny defaults, 16 latent channels as TAEF1).
TINY_VAE = dict(latent_channels=16)


def model_dir(kind: str, root: Path) -> Path:
    from diffusers import AutoencoderKL, AutoencoderTiny

    d = root / kind
    if not (d / "config.json").is_file():
        torch.manual_seed(0)
        m = AutoencoderKL(**FLUX_VAE) if kind == "flux" else AutoencoderTiny(**TINY_VAE)
        m.save_pretrained(d)
    return d


def photo(size: int) -> torch.Tensor:
    from gigasid.core.resample import resize
    from gigasid.io.images import builtin_image, load_image

    return resize(load_image(builtin_image("astronaut")) * 2 - 1, (size, size))


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(10 * torch.log10(4.0 / ((a - b) ** 2).mean()))


def seam_ratio(img: torch.Tensor, period: int) -> float:
    """Mean |step| across tile borders (columns and rows at multiples of ``period``) over
    the mean |step| at all other offsets."""
    dx = (img[:, :, 1:] - img[:, :, :-1]).abs().mean(dim=(0, 1))
    dy = (img[:, 1:, :] - img[:, :-1, :]).abs().mean(dim=(0, 2))
    border = torch.zeros_like(dx, dtype=torch.bool)
    border[period - 1::period] = True
    bordery = torch.zeros_like(dy, dtype=torch.bool)
    bordery[period - 1::period] = True
    at = torch.cat([dx[border], dy[bordery]]).mean()
    off = torch.cat([dx[~border], dy[~bordery]]).mean()
    return float(at / off)


def timed(fn):
    with PeakRssAnon() as mem:
        t0 = time.perf_counter()
        out = fn()
        secs = time.perf_counter() - t0
    return out, secs, mem.peak / 2**20


def bench_codec(size: int, tile: int, halo: int, root: Path, cost_only: bool = False) -> dict:
    from gigasid.codecs.fixed_stats import FixedStatistics
    from gigasid.codecs.tiles import tile_grid
    from gigasid.codecs.vae import VaeCodec, load_vae, resolve_vae
    from gigasid.core.domain import Domain, read_window

    torch.set_num_threads(torch.get_num_threads())
    src = resolve_vae(str(model_dir("flux", root)), None)
    model = load_vae(src, torch.float32, "cpu")
    x = photo(size)
    mp = size * size / 2**20
    out: dict = {"size": size, "tile": tile, "halo": halo, "mp": mp}

    def codec(stats_pixels):
        return VaeCodec(src, model, dtype=torch.float32, device="cpu", tile=tile, halo=halo,
                        stats_pixels=stats_pixels)

    c = codec(2**40)
    with torch.no_grad():
        z, t, m = timed(lambda: c._encode_net(x[None])[0])
    out["whole_encode"] = {"seconds": t, "s_per_mp": t / mp, "peak_mb": m}
    with torch.no_grad():
        y, t, m = timed(lambda: c._decode_net(z[None])[0])
    out["whole_decode"] = {"seconds": t, "s_per_mp": t / mp, "peak_mb": m,
                           "seam_ratio": seam_ratio(y, tile * c.factor)}
    print(json.dumps(out), flush=True)
    dom = Domain.make(tuple(z.shape[1:]))
    # streamed, statistics measured on a sample of a quarter of the image (the default path
    # whenever the image is larger than latent.stats_pixels)
    for label, budget in (("streamed_quarter_stats", size * size // 4),):
        cs = codec(budget)
        zs, t, m = timed(lambda cs=cs: cs.encode(x))
        out[f"{label}_encode"] = {"seconds": t, "s_per_mp": t / mp, "peak_mb": m,
                                  "ratio_to_whole": t / out["whole_encode"]["seconds"],
                                  "rel_rmse_vs_whole": float((zs - z).pow(2).mean().sqrt()
                                                             / z.std())}
        dec = cs.decoder(lambda r: z[:, r[0]:r[1], r[2]:r[3]], dom)
        ys, t, m = timed(lambda dec=dec: dec((0, size, 0, size)))
        out[f"{label}_decode"] = {"seconds": t, "s_per_mp": t / mp, "peak_mb": m,
                                  "ratio_to_whole": t / out["whole_decode"]["seconds"],
                                  "psnr_vs_whole_db": psnr(ys, y),
                                  "seam_ratio": seam_ratio(ys, tile * c.factor)}
        print(json.dumps(out), flush=True)
    if cost_only:
        return out

    def tiles(context) -> torch.Tensor:
        """Decode tile by tile; ``context()`` wraps every tile's call."""
        yt = torch.zeros_like(y)
        f = c.factor
        with torch.no_grad():
            for tl in tile_grid(dom, tile, halo):
                w = read_window(lambda r: z[:, r[0]:r[1], r[2]:r[3]], dom, tl.window)
                with context():
                    o = c._decode_net(w[None])[0]
                y0, y1, x0, x1 = (v * f for v in tl.core)
                yt[:, y0:y1, x0:x1] = c._crop(tl, o, f)
        return yt

    # tiles with the whole image's statistics: what the halo alone costs in agreement
    fx = FixedStatistics(model.decoder)
    with torch.no_grad(), fx.measure([(0.0, 1.0, 0.0, 1.0)]):
        c._decode_net(z[None])
    t0 = time.perf_counter()
    yt = tiles(fx.apply)
    t = time.perf_counter() - t0
    out["tiles_whole_stats_decode"] = {"seconds": t, "psnr_vs_whole_db": psnr(yt, y),
                                       "seam_ratio": seam_ratio(yt, tile * c.factor)}
    # naive tiles: each tile normalised by its own statistics and attending to itself
    yn = tiles(contextlib.nullcontext)
    out["naive_tiles_decode"] = {"psnr_vs_whole_db": psnr(yn, y),
                                 "seam_ratio": seam_ratio(yn, tile * c.factor)}
    print(json.dumps(out), flush=True)
    return out


def bench_e2e(mp: int, root: Path, only: list[str] | None = None) -> dict:
    side = int(round((mp * 2**20) ** 0.5 / 64) * 64)
    flux, tiny = model_dir("flux", root), model_dir("tiny", root)
    base = [sys.executable, "-m", "gigasid", "run", str(REPO / "configs" / "retarget.yaml"),
            "input=builtin:astronaut", f"output_size=[{side},{side}]", "num_samples=1",
            "num_steps=10", "output.formats=[png]", "--quiet", "--fresh"]
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        runs = {"pixel": [],
                "latent_tiny": ["latent.enabled=true", f"latent.vae={tiny}", "patch_size=7",
                                "fold_rho=.inf", "pyramid.min_short_side=14"],
                "latent_flux": ["latent.enabled=true", f"latent.vae={flux}", "patch_size=7",
                                "fold_rho=.inf", "pyramid.min_short_side=14"]}
        for name, extra in runs.items():
            if only and name not in only:
                continue
            out = Path(tmp) / name
            r = run_measured([*base, *extra, "--out", str(out)])
            timings = json.loads((out / "timings.json").read_text())
            r["setup_s"] = timings.get("setup_seconds")
            r["sample_s"] = (timings.get("sample_seconds") or [None])[0]
            rows[name] = r
            print(name, json.dumps(r), flush=True)
    return {"output_side": side, "runs": rows}


def bench_store(repeats: int = 5) -> dict:
    """Zarr chunk codecs for 16-channel float32 sampler state (one 16 x 128 x 128 chunk):
    write + read seconds and stored size, for a noisy state (early steps: x_t is mostly
    noise) and a smooth one (late steps: a latent-like field)."""
    import numpy as np
    import zarr
    from zarr.codecs import BloscCodec, ZstdCodec

    g = torch.Generator().manual_seed(0)
    noisy = torch.randn(16, 128, 128, generator=g).numpy()
    smooth = torch.nn.functional.interpolate(torch.randn(1, 16, 32, 32, generator=g),
                                             size=(128, 128), mode="bicubic")[0].numpy()
    codecs = {"none": None, "zstd-1": ZstdCodec(level=1), "zstd-3": ZstdCodec(level=3),
              "blosc-lz4-shuffle": BloscCodec(cname="lz4", clevel=5, shuffle="shuffle"),
              "blosc-zstd-bitshuffle": BloscCodec(cname="zstd", clevel=3,
                                                  shuffle="bitshuffle")}
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, codec in codecs.items():
            for kind, data in (("noisy", noisy), ("smooth", smooth)):
                times = []
                for r in range(repeats):
                    path = f"{tmp}/{name}-{kind}-{r}.zarr"
                    arr = zarr.create_array(path, shape=data.shape, chunks=data.shape,
                                            dtype="float32",
                                            compressors=None if codec is None else [codec])
                    t0 = time.perf_counter()
                    arr[:] = data
                    back = np.asarray(arr[:])
                    times.append(time.perf_counter() - t0)
                    assert np.array_equal(back, data)
                size = sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file()
                           and f.name != "zarr.json")
                out[f"{name}/{kind}"] = {"seconds": sorted(times)[len(times) // 2],
                                         "ratio": size / data.nbytes}
                print(name, kind, out[f"{name}/{kind}"], flush=True)
    return out


def write_report(results: dict) -> None:
    lines = ["# bench_latent", "", f"machine: {json.dumps(results.get('machine', {}))}", ""]
    for key, c in sorted(results.items()):
        if not key.startswith("codec"):
            continue
        lines += [f"## codec: FLUX VAE architecture (random weights), {c['size']}x{c['size']} "
                  f"px, tile {c['tile']} + halo {c['halo']} latent px", "",
                  "| call | seconds | s/MP | peak RssAnon MB | x whole | vs whole | seam ratio |",
                  "|---|---|---|---|---|---|---|"]
        for name in ("whole_encode", "streamed_quarter_stats_encode", "whole_decode",
                     "streamed_quarter_stats_decode", "tiles_whole_stats_decode",
                     "naive_tiles_decode"):
            r = c.get(name)
            if not r:
                continue
            agree = (f"{r['psnr_vs_whole_db']:.1f} dB" if "psnr_vs_whole_db" in r else
                     f"rel. RMSE {r['rel_rmse_vs_whole']:.4f}" if "rel_rmse_vs_whole" in r
                     else "-")

            def fmt(v, spec):
                return format(v, spec) if isinstance(v, (int, float)) else "-"

            lines.append(f"| {name} | {fmt(r.get('seconds'), '.1f')} | "
                         f"{fmt(r.get('s_per_mp'), '.1f')} | {fmt(r.get('peak_mb'), '.0f')} | "
                         f"{fmt(r.get('ratio_to_whole'), '.2f')} | {agree} | "
                         f"{fmt(r.get('seam_ratio'), '.3f')} |")
        lines.append("")
    for key, e in sorted(results.items()):
        if not key.startswith("e2e"):
            continue
        s = e["output_side"]
        lines += [f"## end to end: retarget of the astronaut to {s}x{s} px (gigasid run)", "",
                  "| pipeline | wall s | setup s | sample s | peak RssAnon MB |",
                  "|---|---|---|---|---|"]
        for name, r in e["runs"].items():
            lines.append(f"| {name} | {r['wall_s']:.1f} | {r['setup_s']:.1f} | "
                         f"{r['sample_s']:.1f} | {r['peak_rss_anon_mb']:.0f} |")
        lines.append("")
    if "store" in results:
        lines += ["## Zarr chunk codec for 16-channel float32 state (16 x 128 x 128 chunk)", "",
                  "| codec | noisy: write+read ms, size | smooth: write+read ms, size |",
                  "|---|---|---|"]
        names = sorted({k.split("/")[0] for k in results["store"]})
        for n in names:
            a, b = results["store"][f"{n}/noisy"], results["store"][f"{n}/smooth"]
            lines.append(f"| {n} | {1000 * a['seconds']:.1f} ms, {a['ratio']:.2f} | "
                         f"{1000 * b['seconds']:.1f} ms, {b['ratio']:.2f} |")
        lines.append("")
    (HERE / "results" / "bench_latent.md").write_text("\n".join(lines))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("part", choices=["codec", "e2e", "store"])
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--tile", type=int, default=64)
    ap.add_argument("--halo", type=int, default=8)
    ap.add_argument("--mp", type=int, default=4)
    ap.add_argument("--pipelines", nargs="+", choices=["pixel", "latent_tiny", "latent_flux"],
                    help="e2e: run only these (default: all three)")
    ap.add_argument("--cost-only", action="store_true",
                    help="codec: only the whole and streamed calls (no tile-agreement variants)")
    ap.add_argument("--models", default=str(Path(tempfile.gettempdir()) / "gigasid-bench-vae"))
    a = ap.parse_args()
    root = Path(a.models)
    root.mkdir(parents=True, exist_ok=True)
    path = HERE / "results" / "bench_latent.json"
    results = json.loads(path.read_text()) if path.is_file() else {}
    results["machine"] = machine()
    if a.part == "codec":
        results[f"codec_{a.size}"] = bench_codec(a.size, a.tile, a.halo, root, a.cost_only)
    elif a.part == "store":
        results["store"] = bench_store()
    else:
        results[f"e2e_{a.mp}mp"] = bench_e2e(a.mp, root, a.pipelines)
    path.write_text(json.dumps(results, indent=2))
    write_report(results)
    print((HERE / "results" / "bench_latent.md").read_text())


if __name__ == "__main__":
    main()
