"""Text-guided style benchmark: seconds and peak memory of ``configs/text_style.yaml``.

Usage::

    python benchmarks/bench_text_style.py                 # 256^2 and 512^2, T = 200 (preset)
    python benchmarks/bench_text_style.py --quick         # 64^2, T = 8, 4 views: a smoke run

No CLIP weights can be downloaded here, so the model is the ViT-B/32 *architecture* with
random weights (vision 768 wide, 12 layers, patch 32, 224 px; text 512 wide, 12 layers;
projection 512), built from a ``CLIPConfig`` and saved with ``save_pretrained``
(``tools/random_clip.py``): the cost is that of the real model, the pictures are not. Each
size runs in its own process (so the peak RssAnon is that size's), with the preset's
settings; the time is split into setup (CLIP load, text embedding, dataset / index),
DDIM inversion, and the guided loop, of which the CLIP forward + backward is reported
separately (from the ``guidance`` events the app logs). Writes ``bench_text_style.json``
and ``bench_text_style.md`` under ``--out`` (default ``benchmarks/results``).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(REPO / "tools"))


class _Collect:
    """Reporter that keeps the step and guidance events."""

    def __init__(self) -> None:
        self.steps: list[dict] = []
        self.guidance: list[dict] = []

    def event(self, kind: str, **d) -> None:
        if kind == "step_done" and not d.get("resumed"):
            self.steps.append(d)
        elif kind == "guidance":
            self.guidance.append(d)

    def close(self) -> None:
        pass


def one(size: int, model: Path, steps: int, n_aug: int, threads: int | None) -> dict:
    """Run the preset on a ``size`` x ``size`` photograph in this process; the numbers."""
    import torch
    from _measure import PeakRssAnon

    from gigasid.config import load_config
    from gigasid.core.resample import resize
    from gigasid.engine.execute import sample_once
    from gigasid.engine.job import prepare
    from gigasid.io.images import builtin_image, load_image, save_png, to_uint8

    with tempfile.TemporaryDirectory() as tmp:
        photo = Path(tmp) / f"astronaut_{size}.png"
        img = load_image(builtin_image("astronaut")) * 2 - 1
        save_png(to_uint8((resize(img, (size, size)) + 1) / 2), photo)
        args = [f"input={photo}", f"clip.model={model}", f"num_steps={steps}",
                f"clip.n_aug={n_aug}"]
        if threads:
            args.append(f"engine.threads={threads}")
        cfg = load_config(REPO / "configs" / "text_style.yaml", args)
        rep = _Collect()
        with PeakRssAnon() as mem:
            t0 = time.perf_counter()
            job = prepare(cfg, rep)
            setup = time.perf_counter() - t0
            t1 = time.perf_counter()
            out = sample_once(job, cfg.seed, rep)
            total = time.perf_counter() - t1
    inv = sum(s["seconds"] for s in rep.steps if s.get("t_to", 0) > s.get("t_from", 0))
    guided = total - inv
    clip_s = sum(g["clip_seconds"] for g in rep.guidance)
    losses = [g["clip_loss"] for g in rep.guidance]
    return {"size": size, "num_steps": steps, "n_aug": n_aug, "threads": torch.get_num_threads(),
            "backend": job.plan.scales[0].backend,
            "inversion_steps": sum(1 for s in rep.steps if s.get("t_to", 0) > s.get("t_from", 0)),
            "guided_steps": len(rep.guidance), "setup_s": round(setup, 3),
            "inversion_s": round(inv, 3), "guided_loop_s": round(guided, 3),
            "clip_fwd_bwd_s": round(clip_s, 3),
            "clip_per_guided_step_s": round(clip_s / max(1, len(rep.guidance)), 4),
            "total_s": round(setup + total, 3), "peak_rss_anon_mb": round(mem.peak / 2**20, 1),
            "clip_loss_first": losses[0] if losses else None,
            "clip_loss_last": losses[-1] if losses else None,
            "output_mean": round(float(out.mean()), 4)}


def _report(rows: list[dict], meta: dict, out: Path, name: str) -> None:
    from _measure import machine

    m = machine()
    lines = [f"# text_style benchmark ({meta['model']})", "",
             f"{m['cpu']}, {m['cores']} cores, torch {m['torch']}, {m['date']}. "
             f"Preset `configs/text_style.yaml` (P 7, rho 0.2, sigma_min 1e-4, eta 0, float32, "
             f"noise_level 0.3); CLIP: {meta['model_note']}. Seconds; peak RssAnon of the "
             "process running that size (CLIP weights included).", "",
             "| size | T | backend | inversion steps / s | guided steps / s | CLIP fwd+bwd s "
             "(per step) | setup s | total s | peak RssAnon MB |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(
            f"| {r['size']}² | {r['num_steps']} | {r['backend']} | {r['inversion_steps']} / "
            f"{r['inversion_s']:.2f} | {r['guided_steps']} / {r['guided_loop_s']:.2f} | "
            f"{r['clip_fwd_bwd_s']:.2f} ({r['clip_per_guided_step_s']:.3f}) | "
            f"{r['setup_s']:.2f} | {r['total_s']:.2f} | {r['peak_rss_anon_mb']:.0f} |")
    lines += ["", "Command: `" + meta["command"] + "`"]
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.md").write_text("\n".join(lines) + "\n")
    (out / f"{name}.json").write_text(json.dumps({"machine": m, **meta, "rows": rows},
                                                 indent=1))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[256, 512])
    ap.add_argument("--steps", type=int, default=200, help="num_steps T (preset: 200)")
    ap.add_argument("--n-aug", type=int, default=16, help="clip.n_aug (preset: 16)")
    ap.add_argument("--threads", type=int, default=None, help="engine.threads")
    ap.add_argument("--quick", action="store_true",
                    help="smoke run: 64 px, T = 8, 4 views (report named *_quick)")
    ap.add_argument("--model", type=Path, default=None,
                    help="a saved CLIP folder to time instead of random ViT-B/32 weights")
    ap.add_argument("--out", type=Path, default=HERE / "results")
    ap.add_argument("--one", type=int, default=None, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.one is not None:
        print(json.dumps(one(a.one, a.model, a.steps, a.n_aug, a.threads)))
        return
    if a.quick:
        a.sizes, a.steps, a.n_aug = [64], 8, 4
    with tempfile.TemporaryDirectory() as tmp:
        model, note = a.model, f"the folder {a.model}"
        if model is None:
            from random_clip import VIT_B32, write_random_clip

            model = write_random_clip(Path(tmp) / "vit-b32", VIT_B32)
            note = "ViT-B/32 architecture, random weights (tools/random_clip.py)"
        rows = []
        for size in a.sizes:
            cmd = [sys.executable, __file__, "--one", str(size), "--model", str(model),
                   "--steps", str(a.steps), "--n-aug", str(a.n_aug)]
            if a.threads:
                cmd += ["--threads", str(a.threads)]
            res = subprocess.run(cmd, capture_output=True, text=True)
            if res.returncode != 0:
                sys.exit(f"size {size} failed:\n{res.stderr[-3000:]}")
            rows.append(json.loads(res.stdout.strip().splitlines()[-1]))
            print(json.dumps(rows[-1]), flush=True)
    meta = {"model": "ViT-B/32 (random weights)" if a.model is None else str(a.model),
            "model_note": note, "command": "python " + " ".join(
                [str(Path(sys.argv[0]).relative_to(REPO)) if Path(sys.argv[0]).is_absolute()
                 and REPO in Path(sys.argv[0]).parents else sys.argv[0], *sys.argv[1:]])}
    _report(rows, meta, a.out, "bench_text_style_quick" if a.quick else "bench_text_style")


if __name__ == "__main__":
    main()
