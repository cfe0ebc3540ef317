"""What an application provides: its config section, domain, datasets, pinned scales, cost
estimate and a per-scale program. The engine, planner and config call these and name no app.

An application module defines one :class:`App` subclass, decorates it with
:func:`gigasid.registry.register`, and ships a preset in ``configs/``. Everything it needs
from the job comes through a :class:`JobView`.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from gigasid.core import noise
from gigasid.core.sampler import (
    InitFn,
    ScaleProgram,
    Transition,
    inversion_transitions,
    sampling_transitions,
)
from gigasid.core.schedule import Schedule
from gigasid.engine.view import DatasetSpec, JobView


def noise_init(seed: int, scale: int, schedule: Schedule, channels: int,
               device: str = "cpu") -> InitFn:
    """``x_T = sigma_T z`` with counter-based noise (stream INIT, step T)."""
    T = schedule.num_steps
    sig = schedule.sigmas[T]

    def init(region) -> torch.Tensor:
        z = noise.gaussian_region(seed, scale, T, channels, region, noise.STREAM_INIT,
                                  device=device)
        return sig * z

    return init


def tensor_init(image: torch.Tensor) -> InitFn:
    """Start from a given (pinned) image."""

    def init(region) -> torch.Tensor:
        y0, y1, x0, x1 = region
        return image[:, y0:y1, x0:x1].to(torch.float32)

    return init


def warm_init(image: torch.Tensor, seed: int, scale: int, schedule: Schedule,
              device: str = "cpu") -> InitFn:
    """The warm start of DDIM inversion: ``x_1 = alpha_1 y + sigma_1 z`` (spec §6.5)."""
    a1, s1 = schedule.alphas[1], schedule.sigmas[1]
    c = image.shape[0]

    def init(region) -> torch.Tensor:
        y0, y1, x0, x1 = region
        z = noise.gaussian_region(seed, scale, 1, c, region, noise.STREAM_WARM, device=device)
        return a1 * image[:, y0:y1, x0:x1].to(device, torch.float32) + s1 * z

    return init


def axis_kinds(which: str, kind: str) -> tuple[str, str]:
    """Domain kinds ``(y, x)`` for ``which`` = ``horizontal`` (along the width: the x axis),
    ``vertical`` (the y axis) or ``both``; the other axis stays a plane."""
    return (kind if which in ("both", "vertical") else "plane",
            kind if which in ("both", "horizontal") else "plane")


def uncond_program(view: JobView, scale: int, seed: int) -> ScaleProgram:
    """Noise, then the usual sampling steps (blended below the coarsest scale)."""
    ctx = view.contexts[scale]
    coarsest = scale == view.num_scales - 1
    return ScaleProgram(
        init=noise_init(seed, scale, ctx.schedule, ctx.channels, ctx.device),
        transitions=sampling_transitions(ctx.schedule.num_steps, view.eta, blend=not coarsest))


@dataclass
class Finish:
    """A last step over one region of the finest result, after every scale.

    ``apply(pixels)`` maps the result's ``(C, h, w)`` values on ``region`` (``(y0, y1, x0,
    x1)`` in scale 0's stored coordinates) to the values to keep there. The engine runs it
    once per sample on the whole region, never tiled (so it may visit pixels in any order,
    e.g. sequentially), and saves its input before it writes the output: a run killed in
    between resumes to the same bytes.
    """

    region: tuple[int, int, int, int]
    apply: Callable[[torch.Tensor], torch.Tensor]


class StepState:
    """Tensors a program carries from one transition to the next (e.g. a momentum term),
    keyed by an integer step, in memory or in the run directory.

    With a ``folder`` (``JobView.state_dir``) every tensor is written to a file first
    (write, then rename), so a run killed at any moment finds, on resume, the state of every
    transition it had finished; the caller drops what no later transition reads. Loading
    gives back the saved bytes, so a resumed run continues exactly like an uninterrupted one.
    """

    def __init__(self, folder: Path | None, prefix: str):
        self.folder, self.prefix = folder, prefix
        self.memory: dict[int, torch.Tensor] = {}

    def _path(self, step: int) -> Path:
        return self.folder / f"{self.prefix}-{step}.npy"

    def save(self, step: int, value: torch.Tensor, older: int | None = None) -> None:
        """Store ``value`` for ``step``, then drop step ``older`` (one that no later
        transition reads; keep the one before ``step`` so a re-run of ``step`` finds it)."""
        value = value.detach().to("cpu", torch.float32).contiguous()
        if self.folder is None:
            self.memory[step] = value.clone()
            self.memory.pop(older, None)
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self._path(step)
        tmp = path.with_suffix(".tmp")
        with open(tmp, "wb") as fh:
            np.save(fh, value.numpy())
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        if older is not None:
            self._path(older).unlink(missing_ok=True)

    def load(self, step: int) -> torch.Tensor | None:
        """The tensor saved for ``step``, or None."""
        if self.folder is None:
            return self.memory.get(step)
        path = self._path(step)
        if not path.is_file():
            return None
        return torch.from_numpy(np.load(path))


class App:
    """Base class: unconditional sampling at every scale on a plane.

    Subclasses override what differs. ``Config`` is a dataclass whose fields are the
    application's own top-level config keys (None: no keys of its own).
    """

    name = "uncond"
    Config: type | None = None
    #: whether the app runs on a latent codec (``latent.enabled``); ``latent_reason`` says
    #: why not
    latent = True
    latent_reason = ""
    #: channel counts of the references the app takes (grey, RGB, RGBA); ``channels_reason``
    #: says why others are not
    channels: tuple[int, ...] = (1, 3, 4)
    channels_reason = ""

    # ---- config time (no images) --------------------------------------------------------
    def validate(self, cfg) -> None:
        """Refuse settings that cannot work, with a message that says what to change."""

    def input_files(self, cfg) -> dict[str, Path]:
        """Extra files the job reads, by config key (``{"mask": path}``): fingerprinted for
        resume and checked before any work."""
        return {}

    def output_shape(self, cfg, ref_shapes: list[tuple[int, int]]) -> tuple[int, int]:
        """Full-resolution output ``(H, W)``."""
        return tuple(cfg.output_size) if cfg.output_size else tuple(ref_shapes[0])

    def domain(self, cfg) -> tuple[str, str]:
        """Axis kinds ``(y, x)`` of every scale: plane, torus or mirror."""
        return ("plane", "plane")

    def pinned_scales(self, cfg, num_scales: int) -> set[int]:
        """Scales that are never denoised (their state is given)."""
        return set()

    def transitions_per_scale(self, cfg, scale: int, num_steps: int) -> int:
        """How many denoiser transitions a scale runs (for the plan's estimates)."""
        return num_steps

    def whole_image(self, cfg) -> bool:
        """Whether every scale must run as one region (a hook that is not local, e.g. one
        that looks at the whole image); the planner then never tiles a scale."""
        return False

    def preflight(self, cfg, ref_shapes: list[tuple[int, int]]) -> None:
        """Checks that need more than the config but no work: external resources (model
        weights) and limits on the input size. ``ref_shapes`` are the references' ``(H, W)``
        after ``input_resize_to``. Called before the run directory is touched; raises a
        :class:`~gigasid.errors.GigasidError` that says how to fix it."""

    # ---- job time -----------------------------------------------------------------------
    def prepare(self, view: JobView) -> None:
        """Precompute what the programs need (pinned levels, masks); called once per job."""

    def datasets(self, view: JobView) -> dict[str, DatasetSpec]:
        """The datasets per scale; ``main`` is every reference's level at every denoised
        scale (several references are concatenated)."""
        scales = [s for s in range(view.num_scales) if view.plan.scales[s].denoised]
        return {"main": DatasetSpec({s: [r[s] for r in view.references] for s in scales})}

    def program(self, view: JobView, scale: int, seed: int) -> ScaleProgram:
        return uncond_program(view, scale, seed)

    def finish(self, view: JobView, seed: int) -> Finish | None:
        """An optional :class:`Finish` run on the finest result of the sample of ``seed``."""
        return None

    # ---- outputs ------------------------------------------------------------------------
    def report(self, view: JobView, image: torch.Tensor) -> dict:
        """Metrics of a finished sample (``(C, H, W)`` in ``[0, 1]``) for timings.json."""
        return {}

    def extra_outputs(self, view: JobView, image, dest: Path) -> dict[str, str]:
        """Extra files written next to the sample's outputs (e.g. a tiled preview)."""
        return {}


__all__ = ["App", "DatasetSpec", "Finish", "JobView", "ScaleProgram", "StepState", "Transition",
           "axis_kinds", "inversion_transitions", "noise_init", "sampling_transitions",
           "tensor_init", "uncond_program", "warm_init"]
