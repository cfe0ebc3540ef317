"""Unconditional generation: every scale starts from noise (spec §6.1)."""

from __future__ import annotations

from gigasid.apps.base import App, ScaleProgram, noise_init, sampling_transitions


class Uncond(App):
    """Random samples whose patches, at every scale, come from the reference."""

    name = "uncond"

    def program(self, job, scale: int, seed: int) -> ScaleProgram:
        ctx = job.contexts[scale]
        coarsest = scale == job.plan.num_scales - 1
        return ScaleProgram(
            init=noise_init(seed, scale, ctx.schedule, ctx.channels, ctx.device),
            transitions=sampling_transitions(ctx.schedule.num_steps, job.cfg.eta,
                                             blend=not coarsest),
        )
