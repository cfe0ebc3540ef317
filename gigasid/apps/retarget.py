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

from gigasid.apps.base import App, ScaleProgram, noise_init, sampling_transitions, tensor_init


class Retarget(App):
    name = "retarget"

    def prepare(self, job) -> None:
        plan = job.plan
        ref = job.reference  # (C, H, W) in [-1, 1]
        h, w = plan.scales[-1].shape
        # torch bicubic, antialiased, as the reference implementation's initial resize.
        self.pinned = F.interpolate(ref[None], size=(h, w), mode="bicubic", antialias=True,
                                    align_corners=False)[0]

    def program(self, job, scale: int, seed: int) -> ScaleProgram:
        S = job.plan.num_scales
        ctx = job.contexts[scale]
        if scale == S - 1 and S > 1:
            return ScaleProgram(init=tensor_init(self.pinned), transitions=[])
        return ScaleProgram(
            init=noise_init(seed, scale, ctx.schedule, ctx.channels, ctx.device),
            transitions=sampling_transitions(ctx.schedule.num_steps, job.cfg.eta, blend=True),
        )
