"""Applications: each is the same coarse-to-fine sampler with its own per-scale program.

One module per application; each registers itself with :func:`gigasid.registry.register`
and is found by the registry (every module of this package is imported), so adding one
touches no other file.
An application holds no math of its own: it chooses a domain, datasets, pinned scales and
the programs (initial state, transitions, hooks) the engine runs.
"""

from __future__ import annotations

from gigasid.apps.base import App, DatasetSpec, JobView, ScaleProgram

__all__ = ["App", "DatasetSpec", "JobView", "ScaleProgram"]
