"""Unconditional generation: every scale starts from noise (spec §6.1)."""

from __future__ import annotations

from gigasid.apps.base import App
from gigasid.registry import register


@register
class Uncond(App):
    """Random samples whose patches, at every scale, come from the reference(s)."""

    name = "uncond"
