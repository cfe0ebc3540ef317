"""What an application sees of a job (:class:`JobView`) and how it describes its datasets
(:class:`DatasetSpec`): the engine's side of the application interface."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from gigasid.core.sampler import ScaleContext
from gigasid.core.schedule import Schedule


@dataclass
class DatasetSpec:
    """The reference patches of one named dataset, per scale.

    Attributes
    ----------
    images:
        ``{scale: [level, ...]}``: ``(C, h, w)`` images in ``[-1, 1]`` whose patches form
        the dataset at that scale (several references are concatenated).
    exclude:
        ``{scale: [mask or None, ...]}`` parallel to ``images``: boolean ``(h, w)`` masks;
        a window that overlaps a True pixel is left out of the dataset.
    """

    images: dict[int, list[torch.Tensor]]
    exclude: dict[int, list[torch.Tensor | None]] = field(default_factory=dict)


@dataclass
class JobView:
    """What an application sees of a job.

    Attributes
    ----------
    settings:
        The application's own config section (its ``Config`` dataclass), or None.
    seed, eta, noise_level:
        Common sampling settings.
    plan:
        The job's :class:`~gigasid.engine.plan.JobPlan` (scales finest first).
    references:
        ``references[i][s]``: reference ``i``'s pyramid level at scale ``s`` (``(C, h, w)``
        in ``[-1, 1]``, possibly memory-mapped).
    contexts:
        Per-scale :class:`~gigasid.core.sampler.ScaleContext` (schedule, domain, ...). Its
        ``denoisers`` are filled in after :meth:`App.datasets`.
    inputs:
        Paths of the reference images.
    extra_inputs:
        The paths :meth:`App.input_files` named (mask, structure image), resolved.
    load_image:
        ``load_image(path) -> (C, H, W)`` in ``[0, 1]``: reads an extra input (mask,
        structure image) with the same error messages as the references.
    load_reference:
        ``load_reference(path) -> (C, h, w)``: an extra image in the sampler's space, cropped
        and encoded like the references (pixels in ``[-1, 1]``, or VAE latents).
    input_image:
        ``input_image(i) -> (3, H, W)`` in ``[0, 1]``: reference ``i``'s pixels as encoded
        (centre-cropped to the codec's pixel multiple), for metrics against the output.
    state_dir:
        A folder of the run directory where an application may keep per-step state that
        must survive a kill and resume (``RUN/app_state``); None for in-memory jobs.
    reporter:
        The job's event sink (see :meth:`event`), or None.
    base_dir:
        The config file's folder: relative paths in the application's settings resolve
        against it.
    """

    settings: Any
    seed: int
    eta: float
    noise_level: float
    plan: Any
    references: list[list[torch.Tensor]]
    contexts: list[ScaleContext]
    inputs: list[Path]
    extra_inputs: list[Path]
    load_image: Any
    device: str = "cpu"
    load_reference: Any = None
    input_image: Any = None
    state_dir: Path | None = None
    reporter: Any = None
    base_dir: Path = Path(".")

    def event(self, kind: str, **data: Any) -> None:
        """Record an application event in the job's log (``log.jsonl``); a no-op without a
        reporter (e.g. in worker processes)."""
        if self.reporter is not None:
            self.reporter.event(kind, **data)

    @property
    def num_scales(self) -> int:
        return len(self.contexts)

    def schedule(self, scale: int) -> Schedule:
        return self.contexts[scale].schedule
