"""Tileable textures: the image lives on a torus, so it wraps seamlessly (spec §6.4).

Deliberate difference from the reference implementation: it denoises the whole image 2-4
times per step with half-shifted copies and stitches them with hard masks, and its
cross-scale blend still has mirror borders. Here the domain of every scale is a torus along
the tiled axes: patches wrap around, the fold and the blend's resampling wrap, and windows
that cross the edge read the other side. Every step is one pass over the image and there is
no seam to hide: the last column is as continuous with the first as any two neighbours.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from gigasid.apps.base import App, JobView, axis_kinds
from gigasid.checks import check_choice
from gigasid.registry import register

DIRECTIONS = ("both", "horizontal", "vertical")
#: How many copies of the output the tiled preview shows along each axis.
GRID = {"both": (3, 3), "horizontal": (1, 3), "vertical": (3, 1)}


@dataclass
class TilingConfig:
    direction: str = "both"  # both | horizontal (left-right wrap) | vertical (top-bottom)
    preview_long_side: int = 2048  # long side of out/tiled_preview.jpg (0 = none)


@dataclass
class TileableConfig:
    tiling: TilingConfig = field(default_factory=TilingConfig)


@register
class Tileable(App):
    name = "tileable"
    Config = TileableConfig

    def validate(self, cfg) -> None:
        check_choice("tiling.direction", cfg.app_config.tiling.direction, DIRECTIONS)

    def domain(self, cfg) -> tuple[str, str]:
        return axis_kinds(cfg.app_config.tiling.direction, "torus")

    def report(self, view: JobView, image) -> dict:
        from gigasid.metrics import seam_error, seam_ratio

        d = view.settings.tiling.direction
        return {"seam_ratio": round(seam_ratio(image, d), 4),
                "seam_error": round(seam_error(image, d), 4)}

    def extra_outputs(self, view: JobView, image, dest: Path) -> dict[str, str]:
        """``tiled_preview.jpg``: the output repeated 3x3 (or 1x3 / 3x1), downscaled."""
        from PIL import Image

        long_side = view.settings.tiling.preview_long_side
        if not long_side:
            return {}
        rows, cols = GRID[view.settings.tiling.direction]
        h, w = image.shape[0], image.shape[1]
        f = min(1.0, long_side / max(rows * h, cols * w))
        th, tw = max(1, round(h * f)), max(1, round(w * f))
        tile = Image.fromarray(np.asarray(image)).resize((tw, th), Image.LANCZOS)
        grid = Image.new("RGB", (cols * tw, rows * th))
        for r in range(rows):
            for c in range(cols):
                grid.paste(tile, (c * tw, r * th))
        dest.mkdir(parents=True, exist_ok=True)
        path = dest / "tiled_preview.jpg"
        tmp = dest / "tiled_preview.tmp.jpg"
        grid.save(tmp, quality=90)
        tmp.replace(path)
        return {"tiled_preview": str(path)}
