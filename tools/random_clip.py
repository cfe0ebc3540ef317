"""Write a randomly initialised CLIP (model + tokenizer) with ``save_pretrained``, offline.

Tests and benchmarks cannot download weights, so they build a CLIP of the wanted
architecture from a ``transformers.CLIPConfig`` with random weights, plus a tiny byte-level
BPE tokenizer written from scratch (the 256 byte symbols, their end-of-word forms, a few
merges and CLIP's two special tokens). The folder loads through gigasid's own code path
(``clip.model: FOLDER``) exactly like a real model saved with ``save_pretrained``.

    python tools/random_clip.py OUT_DIR [--vit-b32]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

#: Tiny sizes: a few milliseconds per forward pass.
TINY = {"vision": dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                       num_attention_heads=2, image_size=32, patch_size=8),
        "text": dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                     num_attention_heads=2, max_position_embeddings=77),
        "projection_dim": 16}

#: The ViT-B/32 architecture (openai/clip-vit-base-patch32's sizes), random weights.
VIT_B32 = {"vision": dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                          num_attention_heads=12, image_size=224, patch_size=32),
           "text": dict(hidden_size=512, intermediate_size=2048, num_hidden_layers=12,
                        num_attention_heads=8, max_position_embeddings=77, vocab_size=49408),
           "projection_dim": 512}

_MERGES = ["t h", "th e</w>", "o f</w>", "s t", "st y", "sty l", "styl e</w>", "a r", "ar t</w>"]


def _byte_symbols() -> list[str]:
    """The printable stand-in of every byte, as byte-level BPE tokenizers spell them."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAD)) + list(
        range(0xAE, 0x100))
    rest = [b for b in range(256) if b not in keep]
    table = {b: chr(b) for b in keep} | {b: chr(256 + i) for i, b in enumerate(rest)}
    return [table[b] for b in range(256)]


def write_tokenizer(folder: Path):
    """A small CLIP tokenizer saved into ``folder``; returns it."""
    from transformers import CLIPTokenizer

    folder.mkdir(parents=True, exist_ok=True)
    symbols = _byte_symbols()
    vocab: dict[str, int] = {}
    for s in symbols + [s + "</w>" for s in symbols] + [m.replace(" ", "") for m in _MERGES]:
        vocab.setdefault(s, len(vocab))
    for special in ("<|startoftext|>", "<|endoftext|>"):
        vocab[special] = len(vocab)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(_MERGES) + "\n")
    tok = CLIPTokenizer.from_pretrained(str(folder))
    tok.save_pretrained(str(folder))
    return tok


def write_random_clip(folder: Path, sizes: dict | None = None, seed: int = 0,
                      tokenizer: bool = True) -> Path:
    """Save a random CLIP of ``sizes`` (default :data:`TINY`) and its tokenizer to ``folder``."""
    import torch
    from transformers import CLIPConfig, CLIPModel

    sizes = sizes or TINY
    folder = Path(folder)
    tok = write_tokenizer(folder) if tokenizer else None
    text = dict(sizes["text"])
    if tok is not None:
        text.setdefault("vocab_size", len(tok))  # ViT-B/32 keeps CLIP's 49408 rows
        text.update(bos_token_id=tok.bos_token_id,
                    eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    cfg = CLIPConfig(text_config=text, vision_config=dict(sizes["vision"]),
                     projection_dim=sizes["projection_dim"])
    torch.manual_seed(seed)
    CLIPModel(cfg).save_pretrained(str(folder))
    return folder


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--vit-b32", action="store_true", help="ViT-B/32 sizes (about 600 MB)")
    a = ap.parse_args()
    print(write_random_clip(a.out, VIT_B32 if a.vit_b32 else TINY))
