"""Make ``docs/apps.jpg``: every application's preset, input(s) next to the result.

Usage::

    python tools/make_gallery.py [--runs runs/gallery] [--out docs/apps.jpg]

Each preset runs once (``num_samples=1``) through the CLI, exactly as a user would run it.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

REPO = Path(__file__).resolve().parents[1]
H = 200  # panel height

#: (title, preset, overrides, input panels, result file relative to the run directory)
ROWS = [
    ("tileable: the result tiled 2x2 (seamless)", "tileable", [], ["builtin:chelsea"],
     "tiled2x2"),
    ("symmetric: left/right halves mirror exactly", "symmetric", [], ["builtin:rocket"],
     "sample_000.png"),
    ("inpaint: the rocket removed (mask shaded)", "inpaint", [], ["masked"],
     "sample_000.png"),
    ("outpaint: the input (centre) extended to 640 px", "outpaint", [], ["builtin:hubble"],
     "sample_000.png"),
    ("analogy: the cat's layout in coffee patches", "analogy", [],
     ["builtin:coffee", "builtin:chelsea"], "sample_000.png"),
    ("two references: cat + coffee patches", "uncond",
     ["input=[builtin:chelsea,builtin:coffee]", "output_size=[256,384]", "num_steps=10"],
     ["builtin:chelsea", "builtin:coffee"], "sample_000.png"),
]


def _image(spec: str) -> Image.Image:
    from gigasid.io.images import builtin_image

    if spec == "masked":
        img = np.asarray(Image.open(builtin_image("rocket")).convert("RGB")).astype(float)
        m = np.asarray(Image.open(builtin_image("rocket_mask")).convert("L")) > 127
        img[m] = img[m] * 0.35 + np.array([255, 60, 60]) * 0.65
        return Image.fromarray(img.astype(np.uint8))
    return Image.open(builtin_image(spec.split(":", 1)[1])).convert("RGB")


def _panel(img: Image.Image) -> Image.Image:
    w = max(1, round(img.width * H / img.height))
    return img.resize((w, H), Image.LANCZOS)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=Path, default=REPO / "runs" / "gallery")
    ap.add_argument("--out", type=Path, default=REPO / "docs" / "apps.jpg")
    a = ap.parse_args()
    rows = []
    for title, preset, extra, inputs, result in ROWS:
        run = a.runs / f"{preset}_{len(rows)}"
        cmd = [sys.executable, "-m", "gigasid", "run", str(REPO / "configs" / f"{preset}.yaml"),
               "num_samples=1", *extra, "--out", str(run), "--quiet", "--fresh"]
        subprocess.run(cmd, check=True)
        if result == "tiled2x2":
            tile = Image.open(run / "sample_000.png").convert("RGB")
            out = Image.new("RGB", (2 * tile.width, 2 * tile.height))
            for y in range(2):
                for x in range(2):
                    out.paste(tile, (x * tile.width, y * tile.height))
        else:
            out = Image.open(run / result).convert("RGB")
        panels = [_panel(_image(s)) for s in inputs] + [_panel(out)]
        width = sum(p.width for p in panels) + 8 * (len(panels) - 1)
        row = Image.new("RGB", (width, H + 22), "white")
        x = 0
        for p in panels:
            row.paste(p, (x, 22))
            x += p.width + 8
        ImageDraw.Draw(row).text((2, 4), title, fill="black")
        rows.append(row)
        print(f"{title}: {run}", flush=True)
    width = max(r.width for r in rows)
    sheet = Image.new("RGB", (width, sum(r.height + 10 for r in rows)), "white")
    y = 0
    for r in rows:
        sheet.paste(r, (0, y))
        y += r.height + 10
    a.out.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(a.out, quality=85, optimize=True)
    print(f"wrote {a.out} ({sheet.width}x{sheet.height})")


if __name__ == "__main__":
    main()
