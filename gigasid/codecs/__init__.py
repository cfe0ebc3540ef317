"""Codecs: the space the sampler runs in (pixels, or a VAE's latents) and the way back.

See :mod:`gigasid.codecs.base` for the protocol, :mod:`gigasid.codecs.vae` for the streamed
VAE codec.
"""

from __future__ import annotations

from gigasid.codecs.base import PixelCodec


def vae_dtype(name: str, device: str):
    """``latent.dtype``: ``auto`` is bfloat16 on CUDA (spec §8.1) and float32 on a CPU,
    where bfloat16 convolutions are slower and less exact."""
    import torch

    from gigasid.codecs.vae import DTYPES

    if name == "auto":
        return torch.bfloat16 if device.startswith("cuda") else torch.float32
    return DTYPES[name]


def make_codec(cfg, device: str = "cpu", load: bool = True):
    """The job's codec: :class:`PixelCodec`, or a :class:`~gigasid.codecs.vae.VaeCodec` when
    ``latent.enabled`` (resolving and, with ``load``, loading the model;
    :class:`~gigasid.errors.ModelError` when it cannot be had). Without ``load`` the codec
    knows its geometry (from the model's config) but cannot encode or decode."""
    lt = cfg.latent
    if not lt.enabled:
        return PixelCodec()
    from gigasid.codecs.vae import VaeCodec, load_vae, resolve_vae

    src = resolve_vae(lt.vae, lt.subfolder, cfg.base_dir)
    dtype = vae_dtype(lt.dtype, device)
    model = load_vae(src, dtype, device) if load else None
    return VaeCodec(src, model, dtype=dtype, device=device, tile=lt.tile, halo=lt.halo,
                    stats_pixels=lt.stats_pixels)


__all__ = ["PixelCodec", "make_codec", "vae_dtype"]
