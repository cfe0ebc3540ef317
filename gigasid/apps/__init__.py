"""Applications: each is the same coarse-to-fine sampler with its own per-scale program.

One module per application; each registers itself with :func:`gigasid.registry.register`.
An application holds no math of its own: it chooses a domain, datasets, pinned scales and
the programs (initial state, transitions, hooks) the engine runs.
"""

from __future__ import annotations

from gigasid.apps import (  # noqa: F401  (each module registers its application)
    analogy,
    inpaint,
    outpaint,
    reconstruct,
    retarget,
    symmetric,
    text_style,
    tileable,
    uncond,
)
from gigasid.apps.base import App, DatasetSpec, JobView, ScaleProgram

__all__ = ["App", "DatasetSpec", "JobView", "ScaleProgram"]
