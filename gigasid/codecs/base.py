"""The codec protocol: what the engine runs the sampler on, and how it gets back to pixels.

A codec maps a pixel image to the *model space* the sampler works in and back. The pixel
codec is the identity (what every job did before latents); a VAE codec encodes to latents
with ``factor`` times fewer pixels per side and ``channels`` channels. The engine applies the
codec once at ingest (every reference, and an app's extra images) and once at output; nothing
between assumes three channels.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from gigasid.core.domain import Domain, read_window

Region = tuple[int, int, int, int]
#: ``read(stored_region) -> (C, h, w)``: reads the model-space result of a job.
Reader = Callable[[Region], torch.Tensor]


class PixelCodec:
    """The identity: the sampler runs on RGB pixels in ``[-1, 1]``."""

    name = "pixel"
    channels = 3
    factor = 1
    pixel_multiple = 1

    def crop_box(self, shape: tuple[int, int]) -> Region:
        """The part of a ``(H, W)`` input that is encoded: a centred crop to a multiple of
        :attr:`pixel_multiple` (the whole image for the pixel codec)."""
        m = self.pixel_multiple
        h, w = shape
        ch, cw = h // m * m, w // m * m
        y0, x0 = (h - ch) // 2, (w - cw) // 2
        return (y0, y0 + ch, x0, x0 + cw)

    def model_shape(self, pixel_shape: tuple[int, int]) -> tuple[int, int]:
        """Model-space ``(h, w)`` of a (cropped) pixel image."""
        return (pixel_shape[0] // self.factor, pixel_shape[1] // self.factor)

    def output_model_shape(self, pixel_shape: tuple[int, int]) -> tuple[int, int]:
        """Model-space shape of a requested output size (rounded to whole latent pixels)."""
        f = self.factor
        return (max(1, round(pixel_shape[0] / f)), max(1, round(pixel_shape[1] / f)))

    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        """``(3, H, W)`` pixels in ``[-1, 1]`` (already cropped) -> model space."""
        return pixels

    def decoder(self, read: Reader, domain: Domain, reporter=None) -> Callable[[Region],
                                                                                torch.Tensor]:
        """A reader of output pixels: ``decode(full_pixel_window) -> (3, h, w)`` in
        ``[-1, 1]`` (not clamped) for a job's finished model-space result ``read``."""
        return lambda win: read_window(read, domain, win)

    def describe(self) -> dict:
        """What the plan and provenance record about the codec."""
        return {"name": self.name, "channels": self.channels, "factor": self.factor}

    def fingerprint(self) -> str:
        """Changes whenever an encoding could change (cache key of encoded references)."""
        return self.name


__all__ = ["PixelCodec", "Reader", "Region"]
