"""The image-wide parts of a VAE fixed once per call, so every tile sees the same ones.

Two kinds of layer in a VAE look at the whole image: GroupNorm normalises with the mean and
variance of the whole feature map, and the mid-block self-attention lets every position
attend to every other. Run on tiles, each tile would use its own statistics and its own
attention context, and tiles would differ in tone (the seams of naive tiled VAE decoding).
Here both are *measured* once, jointly over a sample of windows (or the whole image when it
fits the budget), and then *applied* unchanged to every tile: each GroupNorm uses the recorded
mean and variance, and each attention layer attends to the recorded keys and values (the
tokens of the measured windows' cores). A tile's result then depends only on the latent
around it, never on how the image was cut; when the whole image was measured, a tile differs
from the whole-image call only through its halo.

Usage::

    fx = FixedStatistics(model)
    with fx.measure(cores):            # one batch of windows; records every layer's state
        out = model(batch)
    with fx.apply():                    # every later call uses the recorded state
        tile = model(window)

``cores`` tells the measurement which part of each window is its own (not halo): the
statistics are taken over the cores only, as fractions of the window, so they apply at every
resolution inside the network.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn

#: A window's own part as fractions of its height and width: ``(top, bottom, left, right)``.
CoreFrac = tuple[float, float, float, float]


def _core_slices(core: CoreFrac, h: int, w: int) -> tuple[slice, slice]:
    """Rows and columns of a window's core at a feature map of ``h x w``."""
    t, b, left, r = core
    y0, x0 = int(round(t * h)), int(round(left * w))
    y1 = max(int(round(b * h)), y0 + 1)
    x1 = max(int(round(r * w)), x0 + 1)
    return slice(y0, y1), slice(x0, x1)


class FixedStatistics:
    """Fix the statistics of every ``nn.GroupNorm`` and the context of every diffusers
    ``Attention`` in ``model`` (measure, then apply).

    Outside :meth:`measure` and :meth:`apply` the model is untouched.
    """

    def __init__(self, model: nn.Module) -> None:
        self.layers = [m for m in model.modules() if isinstance(m, nn.GroupNorm)]
        self.stats: list[tuple[torch.Tensor, torch.Tensor] | None] = [None] * len(self.layers)
        self.attentions = _attention_layers(model)
        self.context: list[tuple[torch.Tensor, torch.Tensor] | None] = [None] * len(
            self.attentions)
        self._last_hw = (0, 0)
        self._cores: list[CoreFrac] = []

    @property
    def empty(self) -> bool:
        """Whether the model has nothing image-wide (tiles need no measurement)."""
        return not self.layers and not self.attentions

    @property
    def ready(self) -> bool:
        """Whether every layer has recorded its state."""
        return all(s is not None for s in self.stats) and all(
            c is not None for c in self.context)

    @contextlib.contextmanager
    def measure(self, cores: Sequence[CoreFrac]) -> Iterator[None]:
        """Within the block, a batch of windows is normalised with the statistics of all their
        cores together and attends to all their cores' tokens; both are recorded."""
        self._cores = list(cores)
        with self._patched(lambda i, layer: self._measuring(i, layer, self._cores),
                           lambda i: _ContextAttention(self, i, measure=True)):
            yield

    @contextlib.contextmanager
    def apply(self) -> Iterator[None]:
        """Within the block, every layer uses its recorded statistics and context."""
        if not self.ready:
            raise RuntimeError("the image-wide statistics were not measured")
        with self._patched(self._applying, lambda i: _ContextAttention(self, i, measure=False)):
            yield

    # ------------------------------------------------------------------------ internals
    @contextlib.contextmanager
    def _patched(self, make_norm, make_attention) -> Iterator[None]:
        for i, layer in enumerate(self.layers):
            layer.forward = make_norm(i, layer)  # an instance attribute shadows the method
        saved = [a.processor for a in self.attentions]
        for i, a in enumerate(self.attentions):
            a.processor = make_attention(i)
        try:
            yield
        finally:
            for layer in self.layers:
                del layer.forward
            for a, p in zip(self.attentions, saved, strict=True):
                a.processor = p

    def _measuring(self, i: int, layer: nn.GroupNorm, cores: list[CoreFrac]):
        def forward(x: torch.Tensor) -> torch.Tensor:
            flat = x.dim() == 3  # attention normalises (N, C, tokens) of the last map
            if flat:
                h, w = self._last_hw
                if h * w != x.shape[2]:
                    raise RuntimeError("cannot place a flattened GroupNorm input")
                x = x.reshape(x.shape[0], x.shape[1], h, w)
            n, c, h, w = x.shape
            self._last_hw = (h, w)
            g = layer.num_groups
            cores_px = [_core_slices(core, h, w) for core in cores]
            # two passes (mean, then squared deviations), float32 per window, summed in
            # float64 across windows: no float64 copy of a full-resolution feature map
            total = torch.zeros(g, dtype=torch.float64, device=x.device)
            count = 0
            for k, (ys, xs) in enumerate(cores_px):
                part = x[k, :, ys, xs].float().reshape(g, -1)
                total += part.sum(dim=1).double()
                count += part.shape[1]
            mean = total / count
            sq = torch.zeros(g, dtype=torch.float64, device=x.device)
            for k, (ys, xs) in enumerate(cores_px):
                part = x[k, :, ys, xs].float().reshape(g, -1)
                sq += ((part - mean.float()[:, None]) ** 2).sum(dim=1).double()
            var = sq / count
            self.stats[i] = (mean, var)
            y = _normalise(layer, x, mean, var)
            return y.reshape(n, c, h * w) if flat else y

        return forward

    def _applying(self, i: int, layer: nn.GroupNorm):
        mean, var = self.stats[i]

        def forward(x: torch.Tensor) -> torch.Tensor:
            return _normalise(layer, x, mean, var)

        return forward


def _attention_layers(model: nn.Module) -> list:
    try:
        from diffusers.models.attention_processor import Attention
    except ImportError:  # pragma: no cover - the VAE codec needs diffusers anyway
        return []
    return [m for m in model.modules() if isinstance(m, Attention)]


class _ContextAttention:
    """A diffusers attention processor whose keys and values are the recorded context.

    Measuring, the context is the tokens of every window's core (the whole batch together);
    applying, every query attends to that recorded context. Otherwise it computes what
    diffusers' spatial self-attention does (group norm, q/k/v, softmax, out projection,
    residual, rescale).
    """

    def __init__(self, owner: FixedStatistics, index: int, measure: bool) -> None:
        self.owner, self.index, self.measure = owner, index, measure

    def __call__(self, attn, hidden_states: torch.Tensor, encoder_hidden_states=None,
                 attention_mask=None, temb=None, *args, **kwargs) -> torch.Tensor:
        if encoder_hidden_states is not None or attention_mask is not None:
            raise RuntimeError("fixed attention context supports spatial self-attention only")
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        n, c, h, w = hidden_states.shape
        self.owner._last_hw = (h, w)
        tokens = hidden_states.reshape(n, c, h * w).transpose(1, 2)
        if attn.group_norm is not None:
            tokens = attn.group_norm(tokens.transpose(1, 2)).transpose(1, 2)
        q = attn.to_q(tokens)
        if self.measure:
            k_all, v_all = attn.to_k(tokens), attn.to_v(tokens)
            keep = []
            for b, core in enumerate(self.owner._cores):
                ys, xs = _core_slices(core, h, w)
                grid = torch.zeros(h, w, dtype=torch.bool, device=tokens.device)
                grid[ys, xs] = True
                keep.append((b, grid.reshape(-1)))
            k = torch.cat([k_all[b][m] for b, m in keep])[None]
            v = torch.cat([v_all[b][m] for b, m in keep])[None]
            self.owner.context[self.index] = (k.detach(), v.detach())
        else:
            k, v = self.owner.context[self.index]
        heads = attn.heads
        d = k.shape[-1] // heads

        def split(t: torch.Tensor) -> torch.Tensor:
            return t.reshape(t.shape[0], -1, heads, d).transpose(1, 2)

        kh, vh = split(k).expand(n, -1, -1, -1), split(v).expand(n, -1, -1, -1)
        out = F.scaled_dot_product_attention(split(q), kh.to(q.dtype), vh.to(q.dtype))
        out = out.transpose(1, 2).reshape(n, h * w, heads * d).to(q.dtype)
        out = attn.to_out[1](attn.to_out[0](out))
        out = out.transpose(1, 2).reshape(n, c, h, w)
        if attn.residual_connection:
            out = out + residual
        return out / attn.rescale_output_factor


def _normalise(layer: nn.GroupNorm, x: torch.Tensor, mean: torch.Tensor,
               var: torch.Tensor) -> torch.Tensor:
    """``(x - mean) / sqrt(var + eps)`` per group, then the layer's affine, in float32
    (``x`` is ``(N, C, ...)``)."""
    n, c = x.shape[:2]
    g = layer.num_groups
    inv = torch.rsqrt(var + layer.eps).to(torch.float32)
    xg = x.reshape(n, g, c // g, -1).to(torch.float32)
    y = ((xg - mean.to(torch.float32).view(1, g, 1, 1)) * inv.view(1, g, 1, 1))
    y = y.reshape(x.shape)
    if layer.affine:
        shape = (1, c) + (1,) * (x.dim() - 2)
        y = y * layer.weight.float().view(shape) + layer.bias.float().view(shape)
    return y.to(x.dtype)


__all__ = ["CoreFrac", "FixedStatistics"]
