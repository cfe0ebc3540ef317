"""The per-scale program every application provides."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from gigasid.core import noise
from gigasid.core.schedule import Schedule
from gigasid.engine.transition import Region, Transition

#: ``init(region) -> (C, h, w)`` initial state of a scale on a region.
InitFn = Callable[[Region], torch.Tensor]


@dataclass
class ScaleProgram:
    """How one scale runs: its initial state and its transitions, in order."""

    init: InitFn
    transitions: list[Transition] = field(default_factory=list)


def sampling_transitions(num_steps: int, eta: float, blend: bool, start: int | None = None,
                         ) -> list[Transition]:
    """``start -> ... -> 0``; the blend is skipped at the final step (spec §5)."""
    t0 = num_steps if start is None else start
    return [Transition(t, t - 1, eta, blend and t != 1) for t in range(t0, 0, -1)]


def noise_init(seed: int, scale: int, schedule: Schedule, channels: int,
               device: str = "cpu") -> InitFn:
    """``x_T = sigma_T z`` with counter-based noise (stream INIT, step T)."""
    T = schedule.num_steps
    sig = schedule.sigmas[T]

    def init(region: Region) -> torch.Tensor:
        z = noise.gaussian_region(seed, scale, T, channels, region, noise.STREAM_INIT,
                                  device=device)
        return sig * z

    return init


def tensor_init(image: torch.Tensor) -> InitFn:
    """Start from a given (pinned) image."""

    def init(region: Region) -> torch.Tensor:
        y0, y1, x0, x1 = region
        return image[:, y0:y1, x0:x1].to(torch.float32)

    return init


class App:
    """Base class: unconditional sampling at every scale."""

    name = "uncond"

    def prepare(self, job) -> None:
        """Hook to precompute app-specific tensors once per job (e.g. pinned levels)."""

    def program(self, job, scale: int, seed: int) -> ScaleProgram:
        raise NotImplementedError
