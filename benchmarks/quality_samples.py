"""Quality benchmark of the sampling applications: ``uncond`` next to GPNN, ``tileable`` and
``symmetric`` next to ``uncond``, on the photographs of ``quality_data.py``.

Usage::

    python benchmarks/quality_samples.py --split tune [--samples 4] [--size 256]
        [--set APP:key=value ...] [--no-gpnn] [--out DIR] [--tag T]

Every picture is resized so its long side is ``--size`` px. Each application runs its preset
(``configs/<app>.yaml``) in a fresh ``gigasid run`` process with ``--samples`` samples; its
time per sample is the median of the samples' own times (the index build is reported apart
as setup). GPNN is our re-implementation (``benchmarks/gpnn_baseline.py``, FAISS IVF nearest
neighbours, the authors' defaults). Metrics per picture: patch SWD (7x7 patches, mean over
samples, at full size and at half size), pixel diversity, near-duplicates at r = 90 %, the
worst wrap seam ratio (tileable) and mirror asymmetry (symmetric). Writes
``samples_<split>.json``, ``.md`` and a contact sheet ``.jpg``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(REPO / "benchmarks"))

from quality import contact_sheet  # noqa: E402
from quality_data import cases  # noqa: E402

APPS = ("uncond", "tileable", "symmetric")


def _resized(img: np.ndarray, size: int) -> np.ndarray:
    im = Image.fromarray(img)
    s = size / max(im.size)
    return np.asarray(im.resize((round(im.width * s), round(im.height * s)), Image.LANCZOS))


def _swd(samples: list[np.ndarray], ref: np.ndarray) -> tuple[float, float]:
    """Mean patch SWD at full size and at half size."""
    from gigasid.metrics import patch_swd

    def half(a):
        im = Image.fromarray(a)
        return np.asarray(im.resize((im.width // 2, im.height // 2), Image.LANCZOS))

    return (statistics.mean(patch_swd(s, ref) for s in samples),
            statistics.mean(patch_swd(half(s), half(ref)) for s in samples))


def _diversity(samples: list[np.ndarray], ref: np.ndarray) -> dict:
    from gigasid.metrics import near_duplicate_rate, pixel_diversity

    out = {}
    if len({s.shape for s in samples}) == 1 and len(samples) > 1:
        out["diversity"] = pixel_diversity(samples)
    if all(s.shape == ref.shape for s in samples):
        out["near_dup_90"] = near_duplicate_rate(samples, ref, ratios=(90,))[90]
    return out


def run_app(app: str, img_path: Path, n: int, overrides: list[str], work: Path
            ) -> tuple[list[np.ndarray], dict]:
    out = work / app
    cmd = [sys.executable, "-m", "gigasid", "run", str(REPO / "configs" / f"{app}.yaml"),
           f"input={img_path}", f"num_samples={n}", "output.formats=[png]", *overrides,
           "--quiet", "-o", str(out), "--fresh"]
    res = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    if res.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{res.stderr[-2000:]}")
    t = json.loads((out / "timings.json").read_text())
    imgs = [np.asarray(Image.open(out / f"sample_{i:03d}.png").convert("RGB")) for i in range(n)]
    return imgs, {"s_per_sample": statistics.median(t["sample_seconds"]),
                  "setup_s": t["setup_seconds"]}


def run_gpnn(ref: np.ndarray, n: int) -> tuple[list[np.ndarray], dict]:
    import torch
    from gpnn_baseline import gpnn_sample

    x = torch.from_numpy(ref.copy()).permute(2, 0, 1).float() / 255
    imgs, times = [], []
    for i in range(n):
        t0 = time.perf_counter()
        y = gpnn_sample(x, seed=i, nn="ivf")
        times.append(time.perf_counter() - t0)
        imgs.append((y.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8))
    return imgs, {"s_per_sample": statistics.median(times)}


def bench(split: str, n: int, size: int, overrides: dict[str, list[str]], gpnn: bool):
    from gigasid.metrics import mirror_asymmetry, seam_ratio

    rows, sheet = [], []
    for case in cases(split):
        ref = _resized(case.image, size)
        row = {"image": case.name, "size": list(ref.shape[:2])}
        pics = [ref]
        with tempfile.TemporaryDirectory() as tmp:
            work = Path(tmp)
            Image.fromarray(ref).save(work / "input.png")
            for app in APPS:
                imgs, t = run_app(app, work / "input.png", n, overrides.get(app, []), work)
                swd, swd_half = _swd(imgs, ref)
                m = {"swd": swd, "swd_half": swd_half, **t, **_diversity(imgs, ref)}
                if app == "tileable":
                    m["worst_seam"] = max(seam_ratio(s, "both") for s in imgs)
                if app == "symmetric":
                    m["asymmetry"] = max(mirror_asymmetry(s, "horizontal") for s in imgs)
                row[app] = m
                pics.append(imgs[0])
        if gpnn:
            imgs, t = run_gpnn(ref, n)
            swd, swd_half = _swd(imgs, ref)
            row["gpnn"] = {"swd": swd, "swd_half": swd_half, **t, **_diversity(imgs, ref)}
            pics.append(imgs[0])
        rows.append(row)
        sheet.append((case.name, pics))
        print(json.dumps(row), flush=True)
    return rows, sheet


def table(rows: list[dict]) -> str:
    gp = all("gpnn" in r for r in rows)
    head = ["image", "uncond SWD", "GPNN SWD" if gp else None, "uncond div", "GPNN div" if gp
            else None, "dup@90", "GPNN dup@90" if gp else None, "tileable SWD", "worst seam",
            "tileable x time", "symmetric SWD", "asym", "symmetric x time"]
    head = [h for h in head if h]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        u, t, s = r["uncond"], r["tileable"], r["symmetric"]
        cells = [r["image"], f"{u['swd']:.4f}"]
        if gp:
            cells.append(f"{r['gpnn']['swd']:.4f}")
        cells.append(f"{u.get('diversity', float('nan')):.3f}")
        if gp:
            cells.append(f"{r['gpnn'].get('diversity', float('nan')):.3f}")
        cells.append(f"{u.get('near_dup_90', float('nan')):.2f}")
        if gp:
            cells.append(f"{r['gpnn'].get('near_dup_90', float('nan')):.2f}")
        cells += [f"{t['swd']:.4f}",
                  f"{t['worst_seam']:.2f}", f"{t['s_per_sample'] / u['s_per_sample']:.2f}",
                  f"{s['swd']:.4f}", f"{s['asymmetry']:.1f}",
                  f"{s['s_per_sample'] / u['s_per_sample']:.2f}"]
        lines.append("| " + " | ".join(cells) + " |")
    mean = lambda app, k: statistics.mean(r[app][k] for r in rows)  # noqa: E731
    summary = [f"mean uncond SWD {mean('uncond', 'swd'):.4f}"]
    if gp:
        summary.append(f"GPNN {mean('gpnn', 'swd'):.4f}; uncond <= 1.1x GPNN on "
                       f"{sum(r['uncond']['swd'] <= 1.1 * r['gpnn']['swd'] for r in rows)}"
                       f"/{len(rows)}")
    base = mean("uncond", "swd")
    summary.append(f"tileable SWD / uncond {mean('tileable', 'swd') / base:.2f}, "
                   f"symmetric SWD / uncond {mean('symmetric', 'swd') / base:.2f}")
    return "\n".join(lines) + "\n\n" + "; ".join(summary) + "\n"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--split", default="tune", choices=["tune", "report", "all"])
    ap.add_argument("--samples", type=int, default=4)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--set", dest="overrides", action="append", default=[],
                    help="APP:key=value, a config override for one application (repeatable)")
    ap.add_argument("--no-gpnn", action="store_true")
    ap.add_argument("--out", type=Path, default=REPO / "docs" / "quality")
    ap.add_argument("--tag", default="")
    args = ap.parse_args(argv)
    ov: dict[str, list[str]] = {}
    for item in args.overrides:
        app, kv = item.split(":", 1)
        ov.setdefault(app, []).append(kv)
    rows, sheet = bench(args.split, args.samples, args.size, ov, not args.no_gpnn)
    args.out.mkdir(parents=True, exist_ok=True)
    stem = f"samples_{args.split}{args.tag}"
    (args.out / f"{stem}.json").write_text(json.dumps({"overrides": args.overrides,
                                                       "rows": rows}, indent=1))
    (args.out / f"{stem}.md").write_text(table(rows))
    contact_sheet(sheet, args.out / f"{stem}.jpg", height=160)
    print(table(rows))


if __name__ == "__main__":
    main()
