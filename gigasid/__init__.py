"""gigasid: training-free single-image diffusion, from thumbnails to gigapixels.

The reference image's own patches, at several scales, are the model: a closed-form
(softmax-over-patches) denoiser drives a coarse-to-fine diffusion sampler.
"""

__version__ = "0.1.0"

from gigasid.errors import GigasidError  # noqa: E402

__all__ = ["GigasidError", "__version__"]
