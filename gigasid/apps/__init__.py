"""Applications: each is the same coarse-to-fine sampler with its own per-scale program.

A program says how a scale's state starts (noise, a pinned image, an inverted reference) and
which transitions run on it. Apps hold no math of their own.
"""

from __future__ import annotations

from gigasid.apps.base import App, ScaleProgram
from gigasid.apps.reconstruct import Reconstruct
from gigasid.apps.retarget import Retarget
from gigasid.apps.uncond import Uncond

APPS: dict[str, type[App]] = {"uncond": Uncond, "retarget": Retarget,
                              "reconstruct": Reconstruct}


def get_app(name: str) -> App:
    """Instantiate the application registered under ``name``."""
    return APPS[name]()


__all__ = ["APPS", "App", "ScaleProgram", "get_app"]
