"""Round trip: DDIM-invert the reference to a noise level, then reconstruct it (spec §6.5).

At every scale the reference level is warm-started (``x = alpha_1 y + sigma_1 z``), inverted
with deterministic steps up to ``noise_level``, then brought back down with eta = 0 (blended
with the finished coarser scale as usual). A good setup returns the reference closely; the
PSNR against the reference is written to the run's ``timings.json`` (``report``). Run it to
check a new image or new settings.
"""

from __future__ import annotations

from gigasid.apps.base import (
    App,
    JobView,
    ScaleProgram,
    inversion_transitions,
    sampling_transitions,
    warm_init,
)
from gigasid.errors import ConfigError
from gigasid.registry import register


@register
class Reconstruct(App):
    name = "reconstruct"

    def output_shape(self, cfg, ref_shapes):
        if cfg.output_size and tuple(cfg.output_size) != tuple(ref_shapes[0]):
            raise ConfigError("app 'reconstruct' reproduces the input: remove output_size")
        return tuple(ref_shapes[0])

    def transitions_per_scale(self, cfg, scale: int, num_steps: int) -> int:
        return 2 * max(1, round(cfg.noise_level * num_steps))

    def program(self, view: JobView, scale: int, seed: int) -> ScaleProgram:
        sch = view.schedule(scale)
        stop = sch.index_for_noise_level(view.noise_level)
        coarsest = scale == view.num_scales - 1
        return ScaleProgram(
            init=warm_init(view.references[0][scale], seed, scale, sch, view.device),
            transitions=inversion_transitions(stop)
            + sampling_transitions(sch.num_steps, 0.0, blend=not coarsest, start=stop))

    def report(self, view: JobView, image) -> dict:
        from gigasid.metrics import psnr

        ref = view.input_image(0)  # the pixels that were encoded
        return {"psnr_db": round(psnr(image.clamp(0, 1), ref.clamp(0, 1)), 3)}
