"""CLIP at the edge: load the user's weights, embed texts and (differentiably) images.

gigasid reads CLIP through Hugging Face ``transformers`` (``CLIPModel`` + its tokenizer):
no torchvision and no separate ``clip`` package. ``clip.model`` is a Hugging Face model id, read
from the user's Hugging Face cache, or a local directory holding a model and a tokenizer
written with ``save_pretrained``. gigasid never downloads (``local_files_only``, as with
``HF_HUB_OFFLINE=1``): a run stops at once, before any work, with a
:class:`ClipModelError` that says how to get the weights, instead of waiting on a network
that may not be there or fetching 600 MB unasked.

Image views of any size go through the vision tower with its position embeddings
interpolated bicubically to the view's patch grid (transformers'
``interpolate_pos_encoding``), so non-square views other than 224 px work (spec §6.7).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import torch

from gigasid.errors import GigasidError

DEFAULT_MODEL = "openai/clip-vit-base-patch32"
#: OpenAI CLIP's input normalisation (the published preprocessing constants).
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

#: The 14 prompt templates the text is formatted into (spec §6.7; Text2LIVE's "high-res").
TEMPLATES = ("photo of {}.", "high quality photo of {}.", "a photo of {}.", "the photo of {}.",
             "image of {}.", "an image of {}.", "high quality image of {}.",
             "a high quality image of {}.", "the {}.", "a {}.", "{}.", "{}", "{}!", "{}...")


class ClipModelError(GigasidError):
    """CLIP weights or tokenizer are missing, unknown or unreadable."""


def _how_to_get(name: str) -> str:
    return ("text_style needs CLIP weights and their tokenizer. On a machine with internet, "
            f"run `hf download {DEFAULT_MODEL}` (older huggingface_hub: `huggingface-cli "
            f"download {DEFAULT_MODEL}`; `hf auth login` first if the Hub asks for a token): "
            "the files go into the Hugging Face cache, which gigasid reads (copy ~/.cache/"
            "huggingface to an offline machine). Or set clip.model to a local directory "
            "written with CLIPModel.save_pretrained and CLIPTokenizer.save_pretrained "
            f"(now: clip.model={name!r}).")


def resolve_source(name: str, base_dir: str | Path = ".") -> tuple[str, bool]:
    """``(source, is_local)`` for ``clip.model``: an existing directory (relative paths
    against ``base_dir``, the config's folder, then the working directory) or a Hub id.

    Raises :class:`ClipModelError` for a path-like value that names no directory.
    """
    if not name or not name.strip():
        raise ClipModelError("clip.model is empty. " + _how_to_get(name))
    p = Path(name).expanduser()
    for cand in ([p] if p.is_absolute() else [Path(base_dir) / p, p]):
        if cand.is_dir():
            return str(cand.resolve()), True
    # A Hub id is "name" or "owner/name"; anything else that names no directory is a typo'd
    # path, which the Hub must not be asked about.
    pathlike = name.startswith((".", "/", "~")) or name.count("/") > 1 or "\\" in name
    if pathlike or p.suffix in (".bin", ".safetensors", ".pt"):
        raise ClipModelError(f"clip.model: no directory {name!r} (relative paths are resolved "
                             "against the config file's folder). " + _how_to_get(name))
    return name, False


def _hub_errors() -> tuple[type[BaseException], ...]:
    errs: list[type[BaseException]] = [OSError, ValueError, KeyError]
    try:
        from huggingface_hub import errors as hub

        errs += [e for e in (getattr(hub, "HfHubHTTPError", None),
                             getattr(hub, "OfflineModeIsEnabled", None),
                             getattr(hub, "LocalEntryNotFoundError", None)) if e is not None]
    except ImportError:  # pragma: no cover - transformers depends on huggingface_hub
        pass
    return tuple(errs)


@dataclass
class Clip:
    """A frozen CLIP model with its tokenizer."""

    model: torch.nn.Module
    tokenizer: object
    source: str
    device: str = "cpu"

    @property
    def image_size(self) -> int:
        """The vision tower's training resolution (224 for ViT-B/32)."""
        return int(self.model.config.vision_config.image_size)

    def encode_texts(self, texts: list[str]) -> torch.Tensor:
        """Unit-norm embeddings ``(n, d)`` of ``texts`` (no gradients)."""
        max_len = int(self.model.config.text_config.max_position_embeddings)
        batch = self.tokenizer(list(texts), padding=True, truncation=True, max_length=max_len,
                               return_tensors="pt")
        batch = {k: v.to(self.device) for k, v in batch.items()
                 if k in ("input_ids", "attention_mask")}
        with torch.no_grad():
            out = self.model.get_text_features(**batch)
        emb = getattr(out, "pooler_output", out)
        return torch.nn.functional.normalize(emb.to(torch.float32), dim=-1)

    def encode_images(self, views: torch.Tensor) -> torch.Tensor:
        """Unit-norm embeddings ``(n, d)`` of views ``(n, 3, h, w)`` in ``[0, 1]``; gradients
        flow back to ``views``. Any ``h, w`` of at least one patch works: the position
        embeddings are interpolated (bicubic) to the view's patch grid."""
        mean = torch.tensor(CLIP_MEAN, dtype=views.dtype, device=views.device)[:, None, None]
        std = torch.tensor(CLIP_STD, dtype=views.dtype, device=views.device)[:, None, None]
        out = self.model.get_image_features(pixel_values=(views - mean) / std,
                                            interpolate_pos_encoding=True)
        emb = getattr(out, "pooler_output", out)
        return torch.nn.functional.normalize(emb.to(torch.float32), dim=-1)


def load_clip(name: str = DEFAULT_MODEL, base_dir: str | Path = ".",
              device: str = "cpu") -> Clip:
    """Load CLIP (model + tokenizer) from a local directory or the Hugging Face cache
    (``local_files_only``: nothing is downloaded). Loaded models are kept per process, so
    the check before a run and the run itself load once.

    Raises
    ------
    ClipModelError
        transformers is missing, or the model or its tokenizer cannot be found or read.
    """
    source, local = resolve_source(name, base_dir)
    return _load(source, local, device)


@functools.lru_cache(maxsize=2)
def _load(source: str, local: bool, device: str) -> Clip:
    try:
        from transformers import AutoTokenizer, CLIPConfig, CLIPModel
        from transformers.utils import logging as hf_logging
    except ImportError:
        raise ClipModelError("text_style needs the transformers package: pip install "
                             "'gigasid[text]' (or pip install transformers)") from None
    if local and not (Path(source) / "config.json").is_file():
        raise ClipModelError(f"clip.model: {source} has no config.json, so it is not a "
                             "model saved with save_pretrained. " + _how_to_get(source))
    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        try:
            model = CLIPModel.from_pretrained(source, local_files_only=True)
            tok = AutoTokenizer.from_pretrained(source, local_files_only=True)
        except _hub_errors() as exc:
            lines = str(exc).strip().splitlines()
            reason = lines[0][:300] if lines else type(exc).__name__
            if not local:  # the hub's message talks of connecting, which gigasid never does
                from huggingface_hub import constants

                reason = (f"not in the Hugging Face cache {constants.HF_HUB_CACHE}; gigasid "
                          "does not download")
            raise ClipModelError(f"CLIP model {source!r} could not be loaded ({reason}). "
                                 + _how_to_get(source)) from None
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()
    # Without tokenizer files transformers quietly builds an empty-vocabulary tokenizer;
    # every text would then embed as the same few tokens.
    if len(tok) < 256 or len(tok) > int(model.config.text_config.vocab_size):
        raise ClipModelError(f"clip.model: {source!r} has no usable tokenizer (vocabulary of "
                             f"{len(tok)} tokens for a text tower of "
                             f"{model.config.text_config.vocab_size}); save it next to the "
                             "model with CLIPTokenizer.save_pretrained. " + _how_to_get(source))
    if not isinstance(model.config, CLIPConfig):  # pragma: no cover - from_pretrained checks
        raise ClipModelError(f"clip.model: {source!r} is not a CLIP model. " + _how_to_get(source))
    model = model.to(device=device, dtype=torch.float32).eval()
    model.requires_grad_(False)  # frozen: gradients flow to the image only
    return Clip(model=model, tokenizer=tok, source=source, device=device)


__all__ = ["CLIP_MEAN", "CLIP_STD", "DEFAULT_MODEL", "TEMPLATES", "Clip", "ClipModelError",
           "load_clip", "resolve_source"]
