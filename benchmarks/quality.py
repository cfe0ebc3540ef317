"""Quality benchmark: gigasid's pictures next to a peer's, on photographs split into a
tuning and a report half (see ``quality_data.py``).

Usage::

    python benchmarks/quality.py inpaint --split tune [--set key=value ...] [--out DIR]
    python benchmarks/quality.py outpaint --split report

``inpaint`` fills each case's drawn mask with gigasid (``configs/inpaint.yaml``, one sample,
whole ``gigasid run`` process timed) and with Resynthesizer, the classic content-aware fill
(``pip install resynthesizer``, GPL; benchmark only), timed both as a whole process
(``wall_s``, the peer of a whole ``gigasid run``) and in-process (``fill_s``, the fill
alone). ``outpaint`` centres each picture in a
canvas four times as wide. Writes ``<app>_<split>.json``, ``<app>_<split>.md`` (a table) and
``<app>_<split>.jpg`` (a contact sheet: input and mask, gigasid, the peer) to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
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

from quality_data import cases  # noqa: E402
from quality_metrics import border_seam, fill_texture, known_error  # noqa: E402


def run_gigasid(preset: str, overrides: list[str], work: Path) -> tuple[np.ndarray, dict]:
    """One ``gigasid run`` in a fresh process: its first sample and its timings."""
    out = work / "run"
    cmd = [sys.executable, "-m", "gigasid", "run", str(REPO / "configs" / f"{preset}.yaml"),
           "num_samples=1", "output.formats=[png]", *overrides, "--quiet", "-o", str(out),
           "--fresh"]
    t0 = time.perf_counter()
    res = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    wall = time.perf_counter() - t0
    if res.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{res.stderr[-2000:]}")
    timings = json.loads((out / "timings.json").read_text())
    img = np.asarray(Image.open(out / "sample_000.png").convert("RGB"))
    return img, {"wall_s": wall, "setup_s": timings["setup_seconds"],
                 "sample_s": timings["sample_seconds"][0]}


def run_resynth(img: np.ndarray, hole: np.ndarray, repeats: int = 1) -> tuple[np.ndarray, float]:
    """Resynthesizer's fill (its default parameters) and its median in-process time."""
    from resynthesizer import resynthesize

    src, m = Image.fromarray(img), Image.fromarray(hole.astype(np.uint8) * 255)
    times, out = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = resynthesize(src, m)
        times.append(time.perf_counter() - t0)
    return np.asarray(out.convert("RGB")), statistics.median(times)


#: Resynthesizer as a user runs it: a fresh process that reads the image and the mask, fills,
#: writes the result (the peer of a whole ``gigasid run``).
_RESYNTH_SCRIPT = """
import sys
from PIL import Image
from resynthesizer import resynthesize
img = Image.open(sys.argv[1]).convert("RGB")
mask = Image.open(sys.argv[2]).convert("L")
resynthesize(img, mask).save(sys.argv[3])
"""


def resynth_process(img: np.ndarray, hole: np.ndarray, work: Path) -> float:
    """Wall time of a whole Resynthesizer process on ``img`` and ``hole``."""
    Image.fromarray(img).save(work / "peer_in.png")
    Image.fromarray(hole.astype(np.uint8) * 255).save(work / "peer_mask.png")
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", _RESYNTH_SCRIPT, str(work / "peer_in.png"),
                    str(work / "peer_mask.png"), str(work / "peer_out.png")], check=True)
    return time.perf_counter() - t0


def _fill_metrics(img: np.ndarray, ref: np.ndarray, hole: np.ndarray) -> dict:
    return {"texture": fill_texture(img, hole), "seam": border_seam(img, hole),
            "known_err": known_error(img, ref, hole)}


def bench_inpaint(split: str, overrides: list[str], peer: bool) -> tuple[list[dict], list]:
    rows, sheet = [], []
    for case in cases(split):
        with tempfile.TemporaryDirectory() as tmp:
            work = Path(tmp)
            Image.fromarray(case.image).save(work / "input.png")
            Image.fromarray(case.mask.astype(np.uint8) * 255).save(work / "mask.png")
            ours, t = run_gigasid("inpaint", [f"input={work / 'input.png'}",
                                              f"mask={work / 'mask.png'}", *overrides], work)
            proc = resynth_process(case.image, case.mask, work) if peer else None
        row = {"image": case.name, "mask": case.mask_kind,
               "hole_pct": round(100 * float(case.mask.mean()), 1),
               "ref_texture": fill_texture(case.image, case.mask),
               "ours": {**_fill_metrics(ours, case.image, case.mask), **t}}
        pics = [_overlay(case.image, case.mask), ours]
        if peer:
            theirs, ts = run_resynth(case.image, case.mask)
            row["resynth"] = {**_fill_metrics(theirs, case.image, case.mask), "wall_s": proc,
                              "fill_s": ts}
            pics.append(theirs)
        rows.append(row)
        sheet.append((case.name, pics))
        print(json.dumps(row), flush=True)
    return rows, sheet


def bench_outpaint(split: str, overrides: list[str], peer: bool) -> tuple[list[dict], list]:
    rows, sheet = [], []
    for case in cases(split):
        h, w = case.image.shape[:2]
        with tempfile.TemporaryDirectory() as tmp:
            work = Path(tmp)
            Image.fromarray(case.image).save(work / "input.png")
            ours, t = run_gigasid("outpaint", [f"input={work / 'input.png'}",
                                               f"output_size=[{h},{4 * w}]", *overrides], work)
            oy, ox = (ours.shape[0] - h) // 2, (ours.shape[1] - w) // 2
            hole = np.ones(ours.shape[:2], bool)
            hole[oy:oy + h, ox:ox + w] = False
            canvas = np.zeros_like(ours)
            canvas[oy:oy + h, ox:ox + w] = case.image
            proc = resynth_process(canvas, hole, work) if peer else None
        row = {"image": case.name, "ours": {"edge": border_seam(ours, hole),
                                            "known_err": known_error(ours, canvas, hole), **t}}
        pics = [ours]
        if peer:
            theirs, ts = run_resynth(canvas, hole)
            row["resynth"] = {"edge": border_seam(theirs, hole), "wall_s": proc, "fill_s": ts}
            pics.append(theirs)
        rows.append(row)
        sheet.append((case.name, pics))
        print(json.dumps(row), flush=True)
    return rows, sheet


def _overlay(img: np.ndarray, hole: np.ndarray) -> np.ndarray:
    out = img.copy()
    out[hole] = (0.4 * out[hole] + 0.6 * np.array([255, 0, 255])).astype(np.uint8)
    return out


def contact_sheet(sheet: list, path: Path, height: int = 220) -> None:
    """One row per case, its pictures side by side, scaled to ``height`` pixels."""
    rows = []
    for _, pics in sheet:
        ims = [Image.fromarray(p) for p in pics]
        ims = [im.resize((max(1, round(im.width * height / im.height)), height), Image.LANCZOS)
               for im in ims]
        rows.append(ims)
    width = max(sum(im.width + 6 for im in r) for r in rows)
    out = Image.new("RGB", (width, len(rows) * (height + 6)), "white")
    for i, r in enumerate(rows):
        x = 0
        for im in r:
            out.paste(im, (x, i * (height + 6)))
            x += im.width + 6
    s = min(1.0, 1100 / out.width)  # small enough to keep in the repository
    out = out.resize((round(out.width * s), round(out.height * s)), Image.LANCZOS)
    out.save(path, quality=80)


def _table(app: str, rows: list[dict]) -> str:
    keys = {"inpaint": ["texture", "seam", "known_err", "wall_s"],
            "outpaint": ["edge", "known_err", "wall_s"]}[app]
    peer = any("resynth" in r for r in rows)
    theirs = [k for k in keys if k != "known_err"] + ["fill_s"]
    head = ["image"] + [f"ours {k}" for k in keys] + ([f"resynth {k}" for k in theirs]
                                                      if peer else [])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]

    def fmt(v):
        return f"{v:.2f}" if isinstance(v, float) else str(v)

    for r in rows + [_means(rows, keys)]:
        cells = [r["image"]] + [fmt(r["ours"][k]) for k in keys]
        if peer:
            cells += [fmt(r["resynth"][k]) for k in theirs]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _means(rows: list[dict], keys: list[str]) -> dict:
    out = {"image": "**mean**"}
    for who in ("ours", "resynth"):
        if all(who in r for r in rows):
            out[who] = {k: statistics.mean(r[who][k] for r in rows) for k in [*keys, "fill_s"]
                        if all(k in r[who] for r in rows)}
            if "known_err" in keys and who == "ours":
                out[who]["known_err"] = max(r[who]["known_err"] for r in rows)
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("app", choices=["inpaint", "outpaint"])
    ap.add_argument("--split", default="tune", choices=["tune", "report", "all"])
    ap.add_argument("--set", dest="overrides", action="append", default=[],
                    help="a config override for gigasid (repeatable)")
    ap.add_argument("--no-peer", action="store_true", help="skip Resynthesizer")
    ap.add_argument("--out", type=Path, default=REPO / "docs" / "quality")
    ap.add_argument("--tag", default="", help="suffix of the output files")
    ap.add_argument("--keep", action="store_true", help="also save every picture as PNG")
    args = ap.parse_args(argv)
    os.environ.setdefault("PYTHONHASHSEED", "0")
    bench = {"inpaint": bench_inpaint, "outpaint": bench_outpaint}[args.app]
    rows, sheet = bench(args.split, args.overrides, not args.no_peer)
    args.out.mkdir(parents=True, exist_ok=True)
    stem = f"{args.app}_{args.split}{args.tag}"
    (args.out / f"{stem}.json").write_text(json.dumps(
        {"overrides": args.overrides, "rows": rows}, indent=1))
    (args.out / f"{stem}.md").write_text(_table(args.app, rows))
    contact_sheet(sheet, args.out / f"{stem}.jpg")
    if args.keep:
        (args.out / stem).mkdir(exist_ok=True)
        for name, pics in sheet:
            for i, p in enumerate(pics):
                Image.fromarray(p).save(args.out / stem / f"{name}_{i}.png")
    print(_table(args.app, rows))


if __name__ == "__main__":
    main()
