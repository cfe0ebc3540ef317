"""Applications benchmark: cost next to ``uncond``, each app's own metric, sample quality.

Usage::

    python benchmarks/bench_apps.py [--images rocket chelsea coffee] [--samples 3]
        [--apps tileable ...] [--set output_size=[512,512]] [--out DIR]

For every image and application the app runs with its preset (``configs/<app>.yaml``) and
``uncond`` runs with the *same* settings and output size in the same process, so the time
ratio is the app's own cost. Inpainting is also compared with the classic Resynthesizer
content-aware fill when the ``resynthesizer`` package is installed (``pip install
resynthesizer``; GPL, only used here). Writes ``bench_apps.json`` and ``bench_apps.md``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))

#: app -> (preset, extra overrides, the image used as the second input or structure)
APPS = {
    "tileable": ("tileable", [], None),
    "symmetric": ("symmetric", [], None),
    "symmetric_both": ("symmetric", ["symmetry.axis=both"], None),
    "inpaint": ("inpaint", [], None),
    "outpaint": ("outpaint", ["output_size=[256,512]"], None),
    "analogy": ("analogy", [], "astronaut"),
    "multi_reference": ("uncond", ["num_steps=10"], "hubble"),
}


def _mask_file(image: str, out: Path) -> Path:
    """The rocket's bundled mask; a centred 30 % x 40 % rectangle for other images."""
    from PIL import Image

    from gigasid.io.images import builtin_image

    if image == "rocket":
        return builtin_image("rocket_mask")
    w, h = Image.open(builtin_image(image)).size
    m = np.zeros((h, w), np.uint8)
    m[int(h * 0.35):int(h * 0.65), int(w * 0.3):int(w * 0.7)] = 255
    path = out / f"mask_{image}.png"
    Image.fromarray(m).save(path)
    return path


def _prepared(args: list[str]):
    from gigasid.config import load_config
    from gigasid.engine.job import prepare

    return prepare(load_config(args[0], args[1:]))


def _sample(job, i: int) -> tuple[float, np.ndarray]:
    from gigasid.engine.execute import sample_once
    from gigasid.io.images import to_uint8

    t0 = time.perf_counter()
    x = sample_once(job, i)
    return time.perf_counter() - t0, to_uint8(x)


def _paired(job, base, samples: int) -> tuple[list[float], list[float], list[np.ndarray]]:
    """Samples of ``job`` and of ``base`` in turn (A B A B ...), after one warm-up each:
    a ratio taken pair by pair stays meaningful when the machine's speed drifts."""
    _sample(job, samples)
    _sample(base, samples)
    t_app, t_base, images = [], [], []
    for i in range(samples):
        t, img = _sample(job, i)
        t_app.append(t)
        images.append(img)
        t_base.append(_sample(base, i)[0])
    return t_app, t_base, images


def _grad_ratio(img: np.ndarray, hole: np.ndarray) -> float:
    """Mean gradient across the hole's border / mean gradient outside it (1 = seamless)."""
    x = img.astype(np.float64)
    gy = np.abs(np.diff(x, axis=0)).mean(axis=2)
    gx = np.abs(np.diff(x, axis=1)).mean(axis=2)
    by = hole[:-1] != hole[1:]
    bx = hole[:, :-1] != hole[:, 1:]
    border = np.concatenate([gy[by], gx[bx]]).mean()
    inner = np.concatenate([gy[~(hole[:-1] | hole[1:])], gx[~(hole[:, :-1] | hole[:, 1:])]])
    return float(border / inner.mean())


def _app_metrics(app: str, img: np.ndarray, job, src: np.ndarray | None) -> dict:
    from gigasid.metrics import mirror_asymmetry, seam_ratio

    if app == "tileable":
        return {"seam_ratio": seam_ratio(img, job.cfg.app_config.tiling.direction)}
    if app.startswith("symmetric"):
        return {"asymmetry_255": max(mirror_asymmetry(img, "horizontal"),
                                     mirror_asymmetry(img, "vertical")
                                     if app == "symmetric_both" else 0.0)}
    if app == "inpaint":
        hole = job.app.holes[0].numpy()
        return {"outside_max_err_255": float(np.abs(img[~hole].astype(int)
                                                    - src[~hole].astype(int)).max()),
                "border_grad_ratio": _grad_ratio(img, hole)}
    if app == "outpaint":
        oy, ox = job.app._offset
        h, w = src.shape[:2]
        hole = np.ones(img.shape[:2], bool)
        hole[oy:oy + h, ox:ox + w] = False
        return {"input_max_err_255": float(np.abs(img[~hole].astype(int)
                                                  - src.astype(int).reshape(-1, 3)).max()),
                "border_grad_ratio": _grad_ratio(img, hole)}
    return {}


def _quality(images: list[np.ndarray], job) -> dict:
    from gigasid import metrics

    refs = [((r[0] + 1) / 2).clamp(0, 1) for r in job.view.references]
    ref = refs[0]
    swd = statistics.mean(metrics.patch_swd(im, ref) for im in images)
    nn = statistics.mean(min(metrics.patch_nn_distance(im, r, patch=7, max_queries=3000)
                             ["median"] for r in refs) for im in images)
    out = {"patch_swd": swd, "nn_patch_rms": nn}
    if len(images) > 1 and len({im.shape for im in images}) == 1:
        out["pixel_diversity"] = metrics.pixel_diversity(images)
    return out


def _resynth(image: str, mask: Path) -> dict | None:
    try:
        from resynthesizer import resynthesize
    except ImportError:
        return None
    from PIL import Image

    from gigasid.io.images import builtin_image

    src = Image.open(builtin_image(image)).convert("RGB")
    m = Image.open(mask).convert("L")
    times = []
    for _ in range(3):
        t0 = time.perf_counter()
        res = resynthesize(src, m)
        times.append(time.perf_counter() - t0)
    img = np.asarray(res.convert("RGB"))
    hole = np.asarray(m) >= 128
    return {"median_s": statistics.median(times), "border_grad_ratio": _grad_ratio(img, hole),
            "outside_max_err_255": float(np.abs(img[~hole].astype(int) - np.asarray(src)[~hole]
                                                .astype(int)).max()), "image": img}


def run(images: list[str], samples: int, out: Path, apps: list[str] | None = None,
        overrides: list[str] | None = None) -> dict:
    from PIL import Image

    from gigasid.io.images import builtin_image

    rows = []
    for image in images:
        src = np.asarray(Image.open(builtin_image(image)).convert("RGB"))
        for app, (preset, extra, second) in APPS.items():
            if apps and app not in apps:
                continue
            base = [str(REPO / "configs" / f"{preset}.yaml"), f"input=builtin:{image}",
                    "num_samples=1", *extra, *(overrides or [])]
            if app == "inpaint":
                base.append(f"mask={_mask_file(image, out)}")
            if app == "analogy":
                base.append(f"structure=builtin:{second if second != image else 'coffee'}")
            if app == "multi_reference":
                base[1] = f"input=[builtin:{image},builtin:{second}]"
            job = _prepared(base)
            h, w = job.plan.out_shape
            plain = [a for a in base if not a.startswith(("mask=", "structure="))]
            plain[1] = f"input=builtin:{image}"
            unc = _prepared(plain + ["app=uncond", f"output_size=[{h},{w}]"])
            t_app, t_unc, imgs = _paired(job, unc, samples)
            metrics = [_app_metrics(app, im, job, src) for im in imgs]
            rec = {"image": image, "app": app, "out_shape": [h, w],
                   "median_s": statistics.median(t_app),
                   "uncond_median_s": statistics.median(t_unc),
                   "ratio": statistics.median(a / b for a, b in zip(t_app, t_unc,
                                                                    strict=True)),
                   **{k: statistics.median(m[k] for m in metrics) for k in metrics[0]},
                   **_quality(imgs, job)}
            pics = out / "apps"
            pics.mkdir(exist_ok=True)
            if app == "inpaint":
                rs = _resynth(image, Path(str(job.view.extra_inputs[0])))
                if rs is not None:
                    Image.fromarray(rs.pop("image")).save(pics / f"{image}_resynthesizer.png")
                    rec["resynthesizer"] = rs
            Image.fromarray(imgs[0]).save(pics / f"{image}_{app}.png")
            print(json.dumps({k: (round(v, 4) if isinstance(v, float) else v)
                              for k, v in rec.items()}), flush=True)
            rows.append(rec)
    return {"rows": rows}


def write_report(res: dict, out: Path) -> None:
    from _measure import machine

    m = machine()
    lines = ["# bench_apps", "", f"Machine: {m}", "",
             *([f"Overrides for every row: `{' '.join(res['overrides'])}`", ""]
               if res.get("overrides") else []),
             "Each application with its preset (`configs/<app>.yaml`) and `uncond` with the "
             "same settings and output size, same process, sampled in turn (app, uncond, app, "
             "...; one warm-up each); times and metrics are medians over the samples, the "
             "ratio the median of the pairs' ratios.", "",
             "| image | app | output | s / sample | uncond s | ratio | app metric | patch SWD "
             "| NN-patch RMS | pixel diversity |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in res["rows"]:
        metric = ", ".join(f"{k} {r[k]:.3g}" for k in ("seam_ratio", "asymmetry_255",
                                                       "outside_max_err_255",
                                                       "input_max_err_255",
                                                       "border_grad_ratio") if k in r)
        lines.append(f"| {r['image']} | {r['app']} | {r['out_shape'][1]}x{r['out_shape'][0]} | "
                     f"{r['median_s']:.2f} | {r['uncond_median_s']:.2f} | {r['ratio']:.2f} | "
                     f"{metric or '-'} | {r['patch_swd']:.4f} | {r['nn_patch_rms']:.4f} | "
                     f"{r.get('pixel_diversity', float('nan')):.3f} |")
    rs = [r for r in res["rows"] if "resynthesizer" in r]
    if rs:
        lines += ["", "Inpainting against Resynthesizer (classic content-aware fill), same image "
                  "and mask:", "", "| image | gigasid s | gigasid border ratio | Resynthesizer s "
                  "| Resynthesizer border ratio |", "|---|---|---|---|---|"]
        for r in rs:
            q = r["resynthesizer"]
            lines.append(f"| {r['image']} | {r['median_s']:.2f} | {r['border_grad_ratio']:.2f} "
                         f"| {q['median_s']:.2f} | {q['border_grad_ratio']:.2f} |")
    (out / "bench_apps.md").write_text("\n".join(lines) + "\n")
    (out / "bench_apps.json").write_text(json.dumps({"machine": m, **res}, indent=1))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", nargs="+", default=["rocket", "chelsea", "coffee"])
    ap.add_argument("--samples", type=int, default=3)
    ap.add_argument("--apps", nargs="+", choices=list(APPS),
                    help="re-measure only these rows (the others are kept from the report)")
    ap.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE",
                    help="config overrides for every row, e.g. output_size=[512,512] (write "
                         "such a run to its own --out folder)")
    ap.add_argument("--out", type=Path, default=HERE / "results")
    a = ap.parse_args()
    a.out.mkdir(parents=True, exist_ok=True)
    res = run(a.images, a.samples, a.out, a.apps, a.set)
    old = a.out / "bench_apps.json"
    if a.apps and old.is_file():
        new = {(r["image"], r["app"]): r for r in res["rows"]}
        rows = [new.pop((r["image"], r["app"]), r) for r in json.loads(old.read_text())["rows"]]
        res = {"rows": rows + list(new.values())}
    res["overrides"] = a.set
    write_report(res, a.out)


if __name__ == "__main__":
    main()
