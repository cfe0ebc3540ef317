"""Mirror-symmetric designs (spec §6.3).

Deliberate difference from the reference implementation: it mirrors only the clean estimate
after each denoiser call, so the noisy state stays asymmetric and the whole image is
denoised. Here the domain of every scale is a mirror: only the leading half (left, top, or
the top-left quarter for ``both``) is stored and computed, and reads across the axis
reflect. The state itself is symmetric at every step, the output is exactly symmetric (0/255
difference with its flip) and each step costs about half (a quarter) of an ordinary one.
Since the state is symmetric, a window in the trailing half reads the reflection of its
partner in the leading half, and it takes the reflection of the partner's estimate (as a
mirror image of the design should; :meth:`gigasid.core.domain.Axis.canonical_windows`):
only the windows that start in the leading half are denoised, which halves the work at the
coarse scales too, where the windows across the centre line are most of them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from gigasid.apps.base import App, JobView, axis_kinds
from gigasid.checks import check_choice
from gigasid.registry import register

AXES = ("horizontal", "vertical", "both")


@dataclass
class SymmetryConfig:
    # horizontal: left and right halves mirror each other (symmetric about a vertical line);
    # vertical: top and bottom halves; both: 4-fold.
    axis: str = "horizontal"


@dataclass
class SymmetricConfig:
    symmetry: SymmetryConfig = field(default_factory=SymmetryConfig)


@register
class Symmetric(App):
    name = "symmetric"
    Config = SymmetricConfig

    def validate(self, cfg) -> None:
        check_choice("symmetry.axis", cfg.app_config.symmetry.axis, AXES)

    def domain(self, cfg) -> tuple[str, str]:
        return axis_kinds(cfg.app_config.symmetry.axis, "mirror")

    def report(self, view: JobView, image) -> dict:
        from gigasid.metrics import mirror_asymmetry

        a = view.settings.symmetry.axis
        axes = ["horizontal", "vertical"] if a == "both" else [a]
        return {"mirror_asymmetry": max(round(mirror_asymmetry(image, x), 4) for x in axes)}
