"""Structural analogy: the layout of one image painted with the patches of another (spec §6.6).

``input`` is the style image (whose patches are the model at every scale), ``structure``
the image whose layout the output follows. Both are brought to the same short side (the
style's, or ``analogy.output_short_side``); the output has the structure's aspect ratio. At
the coarsest scale the structure is DDIM-inverted to ``noise_level`` with a denoiser over
the *structure's* patches and then reconstructed with the *style's* (the dataset switch);
every finer scale samples from noise with the style's patches, blended with the coarser
result as usual.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from gigasid.apps.base import (
    App,
    DatasetSpec,
    JobView,
    ScaleProgram,
    inversion_transitions,
    sampling_transitions,
    uncond_program,
    warm_init,
)
from gigasid.core.pyramid import build_pyramid
from gigasid.core.resample import resize
from gigasid.errors import ConfigError
from gigasid.registry import register


@dataclass
class AnalogySection:
    output_short_side: int | None = None  # null = the style image's short side


@dataclass
class AnalogyConfig:
    structure: str = ""  # image whose layout the output follows
    analogy: AnalogySection = field(default_factory=AnalogySection)


def structure_shape(structure: tuple[int, int], short_side: int) -> tuple[int, int]:
    """The structure's shape scaled so that its short side is ``short_side``."""
    h, w = structure
    f = short_side / min(h, w)
    return (max(1, round(h * f)), max(1, round(w * f)))


@register
class Analogy(App):
    name = "analogy"
    Config = AnalogyConfig

    def validate(self, cfg) -> None:
        if not cfg.app_config.structure:
            raise ConfigError("app 'analogy' needs structure: PATH (the image whose layout "
                              "the output follows; input is the style image)")
        if cfg.output_size is not None:
            raise ConfigError("app 'analogy' takes its shape from the structure image: "
                              "remove output_size (set analogy.output_short_side instead)")
        L = cfg.app_config.analogy.output_short_side
        if L is not None and L < cfg.patch_size:
            raise ConfigError(f"analogy.output_short_side must be at least patch_size "
                              f"({cfg.patch_size}); got {L}")

    def input_files(self, cfg) -> dict[str, Path]:
        return {"structure": cfg.resolve_path(cfg.app_config.structure)}

    def output_shape(self, cfg, ref_shapes):
        from gigasid.io.images import image_shape

        L = cfg.app_config.analogy.output_short_side or min(ref_shapes[0])
        return structure_shape(image_shape(self.input_files(cfg)["structure"]), L)

    def transitions_per_scale(self, cfg, scale: int, num_steps: int) -> int:
        return num_steps  # the coarsest runs about the same: up to the level and back

    def prepare(self, view: JobView) -> None:
        img = view.load_reference(view.extra_inputs[0])  # encoded like the references
        shapes = [sp.shape for sp in view.plan.scales]
        self.structure = build_pyramid(resize(img, shapes[0]), shapes)

    def datasets(self, view: JobView) -> dict[str, DatasetSpec]:
        out = super().datasets(view)
        top = view.num_scales - 1
        out["structure"] = DatasetSpec({top: [self.structure[top]]})
        return out

    def program(self, view: JobView, scale: int, seed: int) -> ScaleProgram:
        if scale != view.num_scales - 1:
            return uncond_program(view, scale, seed)
        sch = view.schedule(scale)
        stop = sch.index_for_noise_level(view.noise_level)
        return ScaleProgram(
            init=warm_init(self.structure[scale], seed, scale, sch, view.device),
            transitions=inversion_transitions(stop, dataset="structure")
            + sampling_transitions(sch.num_steps, 0.0, blend=False, start=stop))
