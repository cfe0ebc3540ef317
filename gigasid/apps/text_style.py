"""Text-guided style: a photograph re-made from its own patches, nudged by CLIP towards a
text (spec §6.7).

The content image is DDIM-inverted to ``noise_level`` with a denoiser over its own patches,
then reconstructed with the same denoiser while an estimate hook applies the guidance step
to every clean estimate: momentum with the previous step's guided estimate, the CLIP
similarity gradient over augmented views, soft threshold, energy normalisation and a
strength fading linearly with sigma. The step's noise estimate is implied by the *guided*
estimate. One scale, pixel space, float32; the hook sees the whole image (``whole_image``).

Deliberate difference from the reference implementation: the final step (t = 1 -> 0) is not
guided. Its strength has faded to ``gamma sigma_min / sigma_t*`` (about 0) anyway, but the
momentum would still return 90 % of the previous guided estimate, which is not made of the
photo's patches (nearest-patch distance ~0.06 on [0, 1] after 100 guided steps); the plain
estimate there makes the output the photo's own patches (invariant 5, tested).

``guidance.strength: 0`` runs no hook at all, so it is exactly ``app: reconstruct`` with
one scale (and needs no CLIP weights).

The momentum term (the previous step's guided estimate) is kept in a :class:`StepState`: in
memory for an in-memory job, in ``RUN/app_state`` (written before the step's state is
marked done, the two most recent steps kept) for a run directory, so a killed run resumes
with the same bytes.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field

import torch

from gigasid.apps.base import JobView, ScaleProgram, StepState
from gigasid.apps.reconstruct import Reconstruct
from gigasid.checks import check_choice
from gigasid.core.guidance import faded_strength, guided_update, momentum_mix
from gigasid.errors import ConfigError, InputError, RunDirError
from gigasid.registry import register

#: Largest content image (pixels): the guidance holds the whole image, its gradient and the
#: CLIP views in memory at once.
MAX_PIXELS = 4 * 2**20
#: CLIP loss weight per text (spec §6.7).
LOSS_WEIGHT = 1.2
#: The cutout's long side relative to its short side at most (224 -> 320 for ViT-B/32).
LONG_CAP = 320 / 224


@dataclass
class ClipSection:
    model: str = "openai/clip-vit-base-patch32"  # Hugging Face id or local directory
    n_aug: int = 16  # augmented views per CLIP evaluation
    fill: str = "white"  # what affine/perspective warps bring in: white or black


@dataclass
class GuidanceSection:
    strength: float = 1.0  # gamma at the first guided step (fades linearly with sigma)
    momentum: float = 0.1  # lambda: x_m = (1 - lambda) x_prev + lambda x_hat
    fill_factor: float = 0.5  # share of pixels the soft threshold keeps
    iters: int = 1  # guidance updates per step


@dataclass
class TextStyleConfig:
    text: str = "Van Gogh style"
    clip: ClipSection = field(default_factory=ClipSection)
    guidance: GuidanceSection = field(default_factory=GuidanceSection)


def step_seed(seed: int, scale: int, t: int, visit: int, it: int) -> int:
    """Seed of one guidance update's random draws (views, text picks): a pure function of
    its coordinates, so a resumed or repeated run draws the same numbers."""
    h = hashlib.blake2b(f"text_style:{seed}:{scale}:{t}:{visit}:{it}".encode(), digest_size=8)
    return int.from_bytes(h.digest(), "little") & (2**63 - 1)


def clip_loss(clip, text_emb: torch.Tensor, image01: torch.Tensor, n_aug: int, fill: float,
              gen: torch.Generator) -> torch.Tensor:
    """The CLIP loss of an image ``(3, H, W)`` in ``[0, 1]`` (spec §6.7).

    ``n`` texts are drawn uniformly from 1..14 with replacement among the template
    embeddings ``text_emb``; the loss is ``1.2 (1 - mean cosine)`` over the picked texts and
    the ``n_aug`` augmented views.
    """
    from gigasid.models.augment import views

    k = text_emb.shape[0]
    n = int(torch.randint(1, k + 1, (), generator=gen))
    picks = torch.randint(0, k, (n,), generator=gen)
    short = clip.image_size
    v = views(image01, n_aug, gen, fill, short=short, long_cap=round(short * LONG_CAP))
    emb = clip.encode_images(v)  # (n_aug, d)
    cos = emb @ text_emb[picks.to(text_emb.device)].T  # (n_aug, n)
    return LOSS_WEIGHT * (1.0 - cos.mean())


@register
class TextStyle(Reconstruct):
    name = "text_style"
    Config = TextStyleConfig
    latent = False
    latent_reason = "the CLIP gradient is taken on pixels (spec §8.4)"
    channels = (3,)
    channels_reason = "CLIP compares RGB images with the text"

    def validate(self, cfg) -> None:
        c = cfg.app_config
        if not c.text.strip():
            raise ConfigError("app 'text_style' needs text: the style to move towards, e.g. "
                              "text='Van Gogh style'")
        if cfg.pyramid.num_scales != 1:
            raise ConfigError("app 'text_style' runs one scale (CLIP guides the whole image at "
                              f"full resolution): set pyramid.num_scales: 1 (got "
                              f"{cfg.pyramid.num_scales!r})")
        if cfg.output_size is not None:
            raise ConfigError("app 'text_style' keeps the content image's shape: remove "
                              "output_size (use input_resize_to to make it smaller)")
        check_choice("clip.fill", c.clip.fill, ("white", "black"))
        g = c.guidance
        for key, value, lo, hi, lo_open in (
                ("clip.n_aug", c.clip.n_aug, 1, 256, False),
                ("guidance.strength", g.strength, 0.0, None, False),
                ("guidance.momentum", g.momentum, 0.0, 1.0, True),
                ("guidance.fill_factor", g.fill_factor, 0.0, 1.0, True),
                ("guidance.iters", g.iters, 1, 100, False)):
            if (value <= lo if lo_open else value < lo) or (hi is not None and value > hi):
                rng = f"{'>' if lo_open else '>='} {lo}" + ("" if hi is None else f" and <= {hi}")
                raise ConfigError(f"config key '{key}' must be {rng}; got {value}")

    def whole_image(self, cfg) -> bool:
        return True  # CLIP sees the whole image: one region per scale

    def _guided(self, cfg) -> bool:
        return cfg.app_config.guidance.strength > 0

    def preflight(self, cfg, ref_shapes) -> None:
        h, w = ref_shapes[0]
        if h * w > MAX_PIXELS:
            long_side = int((MAX_PIXELS * max(h, w) / min(h, w)) ** 0.5)
            raise InputError(
                f"app 'text_style' holds the whole image and its CLIP gradient in memory, so "
                f"it takes at most {MAX_PIXELS / 2**20:.0f} MP ({MAX_PIXELS:,} pixels); the "
                f"input is {w}x{h} px ({h * w / 2**20:.1f} MP). Set input_resize_to: "
                f"{long_side} (or less) to resize its long side first")
        if self._guided(cfg):
            from gigasid.models.clip import load_clip

            load_clip(cfg.app_config.clip.model, cfg.base_dir)  # kept for prepare()

    def prepare(self, view: JobView) -> None:
        self.clip = self.text_emb = None
        c = view.settings
        if c.guidance.strength <= 0:
            return
        from gigasid.models.clip import TEMPLATES, load_clip

        self.clip = load_clip(c.clip.model, view.base_dir, view.device)
        self.text_emb = self.clip.encode_texts([t.format(c.text) for t in TEMPLATES])

    def program(self, view: JobView, scale: int, seed: int) -> ScaleProgram:
        prog = super().program(view, scale, seed)
        if self.clip is not None:
            start = view.schedule(scale).index_for_noise_level(view.noise_level)  # t*
            prog.estimate = self._hook(view, scale, seed, start)
        return prog

    def _hook(self, view: JobView, scale: int, seed: int, start: int):
        """The estimate hook of one scale: the guidance step on every reconstruction
        transition (``t -> t-1``), nothing on the inversion."""
        c = view.settings
        g = c.guidance
        sch = view.schedule(scale)
        ctx = view.contexts[scale]
        full = (0, ctx.shape[0], 0, ctx.shape[1])
        fill = 1.0 if c.clip.fill == "white" else 0.0
        state = StepState(view.state_dir, f"xhat-seed{seed}-s{scale}")
        clip, text_emb = self.clip, self.text_emb

        def estimate(region, tr, x_hat: torch.Tensor) -> torch.Tensor:
            if tr.t_to > tr.t_from:  # inversion: unguided
                return x_hat
            if tr.t_to == 0:
                # The last step (gamma_1 ~ 0 by the fade) keeps the denoiser's own estimate,
                # without the momentum mix, so every output patch is one of the photo's.
                return x_hat
            if tuple(region) != full:
                raise RuntimeError(f"text_style's guidance needs the whole image, got region "
                                   f"{region} of {full}")
            t = tr.t_from
            prev = None
            if t != start:
                prev = state.load(t + 1)
                if prev is None:
                    raise RunDirError(
                        f"the guidance state of step {t + 1} is missing from "
                        f"{view.state_dir}; run again with --fresh to start over")
                prev = prev.to(x_hat.device)
            gamma_t = faded_strength(g.strength, sch.sigmas[t], sch.sigmas[start])
            x = x_hat.detach()
            losses = []
            t0, clip_s = time.perf_counter(), 0.0
            for it in range(g.iters):
                gen = torch.Generator().manual_seed(step_seed(seed, scale, t, tr.visit, it))
                # Gradients through CLIP only: the denoiser's estimate is a constant here.
                x_m = momentum_mix(x, prev, g.momentum).detach().requires_grad_(True)
                t1 = time.perf_counter()
                with torch.enable_grad():
                    loss = clip_loss(clip, text_emb, (x_m + 1.0) / 2.0, c.clip.n_aug, fill, gen)
                    (grad,) = torch.autograd.grad(-loss, x_m)
                clip_s += time.perf_counter() - t1
                x = guided_update(x_m.detach(), grad, gamma_t, g.fill_factor)
                losses.append(round(float(loss.detach()), 6))
            # Written before the engine marks this step done: a resumed step t-1 finds it.
            state.save(t, x, older=t + 2)
            view.event("guidance", scale=scale, seed=seed, t=t, gamma=round(gamma_t, 6),
                       clip_loss=losses[-1], clip_losses=losses,
                       clip_seconds=round(clip_s, 4),
                       seconds=round(time.perf_counter() - t0, 4))
            return x

        return estimate

    def report(self, view: JobView, image) -> dict:
        out = super().report(view, image)
        if self.clip is not None:
            gen = torch.Generator().manual_seed(step_seed(view.seed, 0, 0, 0, 0))
            fill = 1.0 if view.settings.clip.fill == "white" else 0.0
            with torch.no_grad():
                loss = clip_loss(self.clip, self.text_emb, image.clamp(0, 1).to(view.device),
                                 view.settings.clip.n_aug, fill, gen)
            out["clip_loss"] = round(float(loss), 6)
        return out
