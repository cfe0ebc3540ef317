"""Outpainting: extend the input into a larger canvas (panoramas, more sky, more ground).

The input sits at ``outpaint.offset`` (``[y, x]`` of its top-left corner in the canvas;
default centred) in a canvas of ``output_size``. Its pixels are held at every step of every
scale (see :mod:`gigasid.apps.known`) and come out bit-identical; everything around them is
generated from the input's patches, continuing its structure across the border.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from gigasid.apps.base import App, JobView, ScaleProgram
from gigasid.apps.known import (
    generated_mask,
    hole_shares,
    known_program,
    known_pyramid,
    texture_finish,
)
from gigasid.errors import ConfigError, InputError
from gigasid.registry import register


@dataclass
class OutpaintSection:
    offset: list | None = None  # [y, x] of the input's top-left corner; null = centred
    # After the finest scale, give every generated pixel the value of one input pixel, chosen
    # to continue its neighbours and follow the sample's layout (gigasid.core.resynthesis).
    texture_pass: bool = True


@dataclass
class OutpaintConfig:
    outpaint: OutpaintSection = field(default_factory=OutpaintSection)


def placement(canvas: tuple[int, int], ref_shape: tuple[int, int],
              offset: list | None) -> tuple[int, int]:
    """Where the input's top-left corner sits in the canvas (centred when ``offset`` is
    None); refuses a canvas smaller than the input or an input that leaves the canvas."""
    H, W = canvas
    h, w = ref_shape
    if h > H or w > W:
        raise InputError(f"the input ({w}x{h} px) is larger than the canvas output_size "
                         f"[{H}, {W}]; make output_size larger than the input")
    oy, ox = ((H - h) // 2, (W - w) // 2) if offset is None else tuple(offset)
    if oy < 0 or ox < 0 or oy + h > H or ox + w > W:
        raise ConfigError(f"outpaint.offset [{oy}, {ox}] puts the {w}x{h} input outside "
                          f"the [{H}, {W}] canvas; use 0 <= y <= {H - h} and "
                          f"0 <= x <= {W - w}")
    return oy, ox


@register
class Outpaint(App):
    name = "outpaint"
    Config = OutpaintConfig
    latent = False
    latent_reason = "pixels outside the generated region stay identical to the input"

    def validate(self, cfg) -> None:
        if cfg.output_size is None:
            raise ConfigError("app 'outpaint' needs output_size: [height, width] of the "
                              "canvas (larger than the input)")
        off = cfg.app_config.outpaint.offset
        if off is not None and (len(off) != 2 or not all(
                isinstance(v, int) and not isinstance(v, bool) for v in off)):
            raise ConfigError(f"config key 'outpaint.offset' must be [y, x] in pixels or null; "
                              f"got {off!r}")

    def offset(self, cfg, ref_shape: tuple[int, int]) -> tuple[int, int]:
        return placement(tuple(cfg.output_size), ref_shape, cfg.app_config.outpaint.offset)

    def output_shape(self, cfg, ref_shapes):
        self.offset(cfg, ref_shapes[0])  # refuse a bad placement before any work
        return tuple(cfg.output_size)

    def prepare(self, view: JobView) -> None:
        ref = view.references[0][0]
        H, W = view.plan.out_shape
        h, w = ref.shape[1:]
        oy, ox = self._offset = placement(view.plan.out_shape, (h, w),
                                          view.settings.outpaint.offset)
        canvas = torch.zeros((ref.shape[0], H, W), dtype=torch.float32, device=ref.device)
        canvas[:, oy: oy + h, ox: ox + w] = ref.float()
        hole = torch.ones((H, W), dtype=torch.bool)
        hole[oy: oy + h, ox: ox + w] = False
        shapes = [sp.shape for sp in view.plan.scales]
        self.known = known_pyramid(canvas, hole, shapes)
        self.holes = [generated_mask(sh, s == 0)
                      for s, sh in enumerate(hole_shares(hole, shapes))]

    def program(self, view: JobView, scale: int, seed: int) -> ScaleProgram:
        # from pure noise: the canvas beyond the input has no surroundings to fill from
        return known_program(view, scale, seed, self.known[scale], self.holes[scale], 1.0)

    def finish(self, view: JobView, seed: int):
        if not view.settings.outpaint.texture_pass:
            return None
        return texture_finish(view, self.known[0], self.holes[0], seed, offset=self._offset)

    def report(self, view: JobView, image) -> dict:
        ref = (view.references[0][0].float() + 1.0) / 2.0
        oy, ox = self._offset
        h, w = ref.shape[1:]
        inner = image[:, oy: oy + h, ox: ox + w]
        err = (torch.round(inner * 255) - torch.round(ref * 255)).abs().max()
        return {"input_region_max_error_255": float(err), "offset": [oy, ox]}


