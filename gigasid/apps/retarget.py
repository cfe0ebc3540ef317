"""Retargeting to any output size (spec §6.2).

The coarsest scale is pinned: the reference stretched to the output's aspect ratio at the
coarsest output size; it is never denoised. Finer scales sample from noise and are blended
with it, so the layout follows the stretched reference while every patch comes from the
reference at its own scale.

Deliberate difference from the reference implementation: it resizes the whole reference to
the full output size and then builds a pyramid down to the coarsest level; we resize straight
to the coarsest output level (antialiased bicubic), which is nearly the same image and keeps
memory independent of the output size.
"""

from __future__ import annotations

import torch.nn.functional as F

from gigasid.apps.base import App, JobView, ScaleProgram, tensor_init, uncond_program
from gigasid.errors import ConfigError
from gigasid.registry import register


@register
class Retarget(App):
    name = "retarget"

    def validate(self, cfg) -> None:
        if cfg.output_size is None:
            raise ConfigError("app 'retarget' needs output_size: [height, width]")

    def pinned_scales(self, cfg, num_scales: int) -> set[int]:
        return {num_scales - 1} if num_scales > 1 else set()

    def prepare(self, view: JobView) -> None:
        ref = view.references[0][0]  # (C, H, W) in [-1, 1]
        h, w = view.plan.scales[-1].shape
        # torch bicubic, antialiased, as the reference implementation's initial resize.
        self.pinned = F.interpolate(ref[None].float(), size=(h, w), mode="bicubic",
                                    antialias=True, align_corners=False)[0]

    def program(self, view: JobView, scale: int, seed: int) -> ScaleProgram:
        if scale in self.pinned_scales(None, view.num_scales):
            return ScaleProgram(init=tensor_init(self.pinned), transitions=[])
        return uncond_program(view, scale, seed)
