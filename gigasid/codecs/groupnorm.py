"""GroupNorm with statistics fixed once per job, so every tile of a VAE call is normalised
identically.

A VAE's GroupNorm layers normalise with the mean and variance of the whole feature map. Run
on tiles, each tile would use its own statistics and tiles would differ in tone (the seams of
naive tiled VAE decoding). Here the statistics are *measured* once, jointly over a sample of
windows (or the whole image when it fits the budget), and then *applied* unchanged to every
tile: a tile's result then depends only on its pixels, never on how the image was cut.

Usage::

    gn = FixedGroupNorm(model)
    with gn.measure(cores):            # one batch of windows; records every layer's stats
        out = model(batch)
    with gn.apply():                    # every later call uses the recorded stats
        tile = model(window)

``cores`` tells the measurement which part of each window is its own (not halo): the
statistics are taken over the cores only, as fractions of the window, so they apply at every
resolution inside the network.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import torch
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


class FixedGroupNorm:
    """Replace the statistics of every ``nn.GroupNorm`` in ``model`` (measure, then apply).

    Outside :meth:`measure` and :meth:`apply` the model is untouched.
    """

    def __init__(self, model: nn.Module) -> None:
        self.layers = [m for m in model.modules() if isinstance(m, nn.GroupNorm)]
        self.stats: list[tuple[torch.Tensor, torch.Tensor] | None] = [None] * len(self.layers)
        self._last_hw = (0, 0)

    @property
    def ready(self) -> bool:
        """Whether every layer has recorded statistics."""
        return all(s is not None for s in self.stats)

    def state(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """The recorded ``(mean, var)`` per layer (``(G,)`` float64 each)."""
        if not self.ready:
            raise RuntimeError("GroupNorm statistics were not measured")
        return [(m.clone(), v.clone()) for m, v in self.stats]

    def load(self, state: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
        if len(state) != len(self.layers):
            raise ValueError("statistics do not match this model's GroupNorm layers")
        self.stats = [(m.clone(), v.clone()) for m, v in state]

    @contextlib.contextmanager
    def measure(self, cores: Sequence[CoreFrac]) -> Iterator[None]:
        """Within the block, each layer normalises a batch of windows with the statistics of
        all their cores together, and records them."""
        with self._patched(lambda i, layer: self._measuring(i, layer, list(cores))):
            yield

    @contextlib.contextmanager
    def apply(self) -> Iterator[None]:
        """Within the block, each layer normalises with its recorded statistics."""
        if not self.ready:
            raise RuntimeError("GroupNorm statistics were not measured")
        with self._patched(self._applying):
            yield

    # ------------------------------------------------------------------------ internals
    @contextlib.contextmanager
    def _patched(self, make) -> Iterator[None]:
        for i, layer in enumerate(self.layers):
            layer.forward = make(i, layer)  # an instance attribute shadows the class method
        try:
            yield
        finally:
            for layer in self.layers:
                del layer.forward

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


__all__ = ["CoreFrac", "FixedGroupNorm"]
