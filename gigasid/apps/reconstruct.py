"""Round trip: DDIM-invert the reference to a noise level, then reconstruct it (spec §6.5).

At every scale the reference level is warm-started (``x = alpha_1 y + sigma_1 z``), inverted
with deterministic steps up to ``noise_level``, then brought back down with eta = 0 (blended
with the finished coarser scale as usual). A good setup returns the reference closely; the
PSNR is written to the run's timings. Run it to check a new image or new settings.
"""

from __future__ import annotations

import torch

from gigasid.apps.base import App, ScaleProgram, sampling_transitions
from gigasid.core import noise
from gigasid.engine.transition import Transition
from gigasid.errors import ConfigError


class Reconstruct(App):
    name = "reconstruct"

    def prepare(self, job) -> None:
        if tuple(job.plan.out_shape) != tuple(job.plan.ref_shape):
            raise ConfigError("app 'reconstruct' reproduces the input: remove output_size")

    def program(self, job, scale: int, seed: int) -> ScaleProgram:
        ctx = job.contexts[scale]
        sch = ctx.schedule
        stop = sch.index_for_noise_level(job.cfg.noise_level)
        level = job.levels[scale]
        a1, s1 = sch.alphas[1], sch.sigmas[1]

        def init(region):
            y0, y1, x0, x1 = region
            z = noise.gaussian_region(seed, scale, 1, ctx.channels, region, noise.STREAM_WARM,
                                      device=ctx.device)
            return a1 * level[:, y0:y1, x0:x1].to(torch.float32) + s1 * z

        up = [Transition(t, t + 1, 0.0, False) for t in range(1, stop)]
        coarsest = scale == job.plan.num_scales - 1
        down = sampling_transitions(sch.num_steps, 0.0, blend=not coarsest, start=stop)
        return ScaleProgram(init=init, transitions=up + down)
