"""Inpainting: regenerate the masked part of the input from the rest of it.

``mask`` is an image of the input's size; its white pixels (or, for a 0/1 mask, its nonzero
ones) are regenerated, every other pixel comes out identical to the input.

Two things make the fill honest and seamless:

* the datasets never contain the hole: at every scale, a reference patch that overlaps the
  (resampled) hole is left out, so the fill cannot reproduce what was there;
* the known region is held at every step of every scale (``x_t = alpha_t y + sigma_t z``, see
  :mod:`gigasid.apps.known`), so patches that straddle the border see context at their own
  noise level and the fill matches it at every scale, the finest included.

``inpaint.hold_finest: false`` gives the paper's ROI-conditioned generation (supplement S5):
the known region guides every scale but the finest, which re-synthesises the whole image
(the kept region then changes slightly, and no seam can remain).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from gigasid.apps.base import App, DatasetSpec, JobView, ScaleProgram
from gigasid.apps.known import (
    excluded_mask,
    generated_mask,
    hole_shares,
    known_program,
    known_pyramid,
    texture_finish,
)
from gigasid.errors import ConfigError, InputError
from gigasid.registry import register


@dataclass
class InpaintSection:
    hold_finest: bool = True  # false: ROI-conditioned generation (finest scale is free)
    # Noise level the coarsest scale starts from, over a smooth fill of the hole from its
    # surroundings (1.0: pure noise, as unconditional sampling).
    start_noise: float = 0.8
    # After the finest scale, give every filled pixel the value of one known pixel, chosen to
    # continue its neighbours and follow the fill's layout (gigasid.core.resynthesis).
    texture_pass: bool = True


@dataclass
class InpaintConfig:
    mask: str = ""  # image of the input's size; white (or nonzero in a 0/1 mask) = regenerate
    inpaint: InpaintSection = field(default_factory=InpaintSection)


def mask_to_hole(mask: torch.Tensor) -> torch.Tensor:
    """``(C, H, W)`` mask in ``[0, 1]`` -> boolean hole: white pixels, or nonzero ones when
    the mask only holds the values 0 and 1/255 (a 0/1 label image)."""
    m = mask.max(dim=0).values
    if float(m.max()) <= 1.5 / 255.0:
        return m > 0
    return m >= 0.5


def _check_mask_size(path, mask_shape: tuple[int, int], input_shape: tuple[int, int]) -> None:
    if tuple(mask_shape) != tuple(input_shape):
        raise InputError(f"mask {path} is {mask_shape[1]}x{mask_shape[0]} px but the input is "
                         f"{input_shape[1]}x{input_shape[0]} px; they must be the same size")


@register
class Inpaint(App):
    name = "inpaint"
    Config = InpaintConfig
    latent = False
    latent_reason = "pixels outside the generated region stay identical to the input"

    def validate(self, cfg) -> None:
        if not cfg.app_config.mask:
            raise ConfigError("app 'inpaint' needs mask: PATH (an image of the input's size "
                              "whose white pixels are regenerated)")

    def input_files(self, cfg) -> dict[str, Path]:
        return {"mask": cfg.resolve_path(cfg.app_config.mask)}

    def output_shape(self, cfg, ref_shapes):
        if cfg.output_size and tuple(cfg.output_size) != tuple(ref_shapes[0]):
            raise ConfigError("app 'inpaint' keeps the input's size: remove output_size (use "
                              "app: outpaint to extend the canvas)")
        return tuple(ref_shapes[0])

    def preflight(self, cfg, ref_shapes: list[tuple[int, int]]) -> None:
        from gigasid.io.images import image_shape

        path = cfg.resolve_path(cfg.app_config.mask)
        _check_mask_size(path, image_shape(path), ref_shapes[0])

    def prepare(self, view: JobView) -> None:
        path = view.extra_inputs[0]
        hole = mask_to_hole(view.load_image(path))
        _check_mask_size(path, tuple(hole.shape), tuple(view.references[0][0].shape[1:]))
        if not bool(hole.any()):
            raise InputError(f"mask {path} has no white pixels: nothing to regenerate")
        if bool(hole.all()):
            raise InputError(f"mask {path} covers the whole input: nothing is left to learn "
                             "from (use app: uncond)")
        shapes = [sp.shape for sp in view.plan.scales]
        shares = hole_shares(hole, shapes)
        # the known image at every level from the known pixels alone: what the hole holds
        # (the object to remove) is not held as known next to it at the coarse levels
        self.known = known_pyramid(view.references[0][0], hole, shapes)
        self.holes = [generated_mask(sh, s == 0) for s, sh in enumerate(shares)]
        self.excluded = [excluded_mask(sh) for sh in shares]

    def datasets(self, view: JobView) -> dict[str, DatasetSpec]:
        spec = super().datasets(view)["main"]
        for s, imgs in spec.images.items():
            spec.exclude[s] = [self.excluded[s]] + [None] * (len(imgs) - 1)
        return {"main": spec}

    def program(self, view: JobView, scale: int, seed: int) -> ScaleProgram:
        return known_program(view, scale, seed, self.known[scale], self.holes[scale],
                             view.settings.inpaint.start_noise,
                             hold=scale > 0 or view.settings.inpaint.hold_finest)

    def finish(self, view: JobView, seed: int):
        # Without hold_finest the finest scale re-synthesises the kept region too: the pass,
        # which copies from the input's pixels around the hole, would not match them.
        if not view.settings.inpaint.texture_pass or not view.settings.inpaint.hold_finest:
            return None
        return texture_finish(view, self.known[0], self.holes[0], seed)

    def report(self, view: JobView, image) -> dict:
        ref = (view.references[0][0].float() + 1.0) / 2.0
        keep = ~self.holes[0]
        diff = (torch.round(image * 255) - torch.round(ref * 255)).abs()[:, keep]
        return {"outside_mask_max_error_255": float(diff.max()) if diff.numel() else 0.0,
                "hole_fraction": round(float(self.holes[0].float().mean()), 4)}
