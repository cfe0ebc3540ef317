"""Random views of an image for CLIP guidance, as differentiable torch ops (spec §6.7).

The reference implementation uses torchvision transforms; gigasid does not depend on
torchvision, so the same list is written here with ``grid_sample`` and plain arithmetic:
horizontal flip, affine (rotation and translation), perspective, colour jitter and
grayscale, each with the spec's probability. Every random number comes from the
``torch.Generator`` passed in, so a view is a pure function of the image and the generator's
seed. Images are ``(3, H, W)`` in ``[0, 1]``; gradients flow back to the input pixels.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

#: Probabilities and ranges of the augmentations (spec §6.7).
FLIP_P = 0.5
AFFINE_P, AFFINE_DEGREES, AFFINE_TRANSLATE = 0.8, 15.0, 0.1
PERSPECTIVE_P, PERSPECTIVE_DISTORTION = 0.5, 0.4
JITTER_P, JITTER_BRIGHTNESS, JITTER_CONTRAST, JITTER_SATURATION, JITTER_HUE = (
    0.7, 0.1, 0.1, 0.1, 0.1)
GRAY_P = 0.15
#: Random crops keep this share of each side, drawn uniformly.
CROP_SCALE = (0.6, 1.0)
#: Luma weights (ITU-R 601), as used for grayscale conversion.
_LUMA = (0.299, 0.587, 0.114)


def _rand(gen: torch.Generator) -> float:
    return float(torch.rand((), generator=gen))


def _uniform(gen: torch.Generator, lo: float, hi: float) -> float:
    return lo + (hi - lo) * _rand(gen)


def _randint(gen: torch.Generator, lo: int, hi: int) -> int:
    """Uniform integer in ``[lo, hi]`` (both included)."""
    return int(torch.randint(lo, hi + 1, (), generator=gen))


def gray(img: torch.Tensor) -> torch.Tensor:
    """Luma ``(1, H, W)`` of an RGB image."""
    w = torch.tensor(_LUMA, dtype=img.dtype, device=img.device)[:, None, None]
    return (img * w).sum(0, keepdim=True)


def resize(img: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    """Antialiased bilinear resize of ``(C, H, W)`` (differentiable)."""
    if tuple(img.shape[-2:]) == tuple(shape):
        return img
    return F.interpolate(img[None], size=shape, mode="bilinear", align_corners=False,
                         antialias=True)[0]


def _sample(img: torch.Tensor, grid: torch.Tensor, fill: float) -> torch.Tensor:
    """``img`` read at normalised ``grid`` ``(H, W, 2)`` (bilinear); outside it, ``fill``."""
    ones = torch.ones_like(img[:1])
    both = torch.cat([img, ones])[None]
    out = F.grid_sample(both, grid[None], mode="bilinear", padding_mode="zeros",
                        align_corners=False)[0]
    inside = out[-1:]
    return out[:-1] + fill * (1.0 - inside)


def _pixel_grid(h: int, w: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float64, device=device),
                            torch.arange(w, dtype=torch.float64, device=device), indexing="ij")
    return xs, ys


def _to_grid(x_in: torch.Tensor, y_in: torch.Tensor, h: int, w: int,
             dtype: torch.dtype) -> torch.Tensor:
    """Input pixel coordinates -> ``grid_sample``'s normalised grid (``align_corners=False``)."""
    return torch.stack([(2.0 * x_in + 1.0) / w - 1.0, (2.0 * y_in + 1.0) / h - 1.0],
                       dim=-1).to(dtype)


def affine(img: torch.Tensor, angle_deg: float, shift: tuple[float, float],
           fill: float) -> torch.Tensor:
    """Rotate by ``angle_deg`` about the centre and translate by ``shift = (dx, dy)`` px."""
    _, h, w = img.shape
    xs, ys = _pixel_grid(h, w, img.device)
    cx, cy = (w - 1) / 2.0, (h - 1) / 2.0
    a = math.radians(angle_deg)
    # Inverse map: output pixel -> where it came from in the input.
    u, v = xs - cx - shift[0], ys - cy - shift[1]
    x_in = math.cos(a) * u + math.sin(a) * v + cx
    y_in = -math.sin(a) * u + math.cos(a) * v + cy
    return _sample(img, _to_grid(x_in, y_in, h, w, img.dtype), fill)


def homography(src: list[tuple[float, float]], dst: list[tuple[float, float]]) -> torch.Tensor:
    """The 3x3 projective map taking the four points ``src`` to ``dst`` (float64)."""
    rows, rhs = [], []
    for (x, y), (u, v) in zip(src, dst, strict=True):
        rows.append([x, y, 1.0, 0.0, 0.0, 0.0, -u * x, -u * y])
        rows.append([0.0, 0.0, 0.0, x, y, 1.0, -v * x, -v * y])
        rhs += [u, v]
    sol = torch.linalg.solve(torch.tensor(rows, dtype=torch.float64),
                             torch.tensor(rhs, dtype=torch.float64))
    return torch.cat([sol, torch.ones(1, dtype=torch.float64)]).view(3, 3)


def perspective(img: torch.Tensor, corners: list[tuple[float, float]],
                fill: float) -> torch.Tensor:
    """Move the image corners (top-left, top-right, bottom-right, bottom-left) to
    ``corners`` with a projective warp."""
    _, h, w = img.shape
    orig = [(0.0, 0.0), (w - 1.0, 0.0), (w - 1.0, h - 1.0), (0.0, h - 1.0)]
    m = homography(list(corners), orig).to(img.device)  # output -> input
    xs, ys = _pixel_grid(h, w, img.device)
    den = m[2, 0] * xs + m[2, 1] * ys + m[2, 2]
    x_in = (m[0, 0] * xs + m[0, 1] * ys + m[0, 2]) / den
    y_in = (m[1, 0] * xs + m[1, 1] * ys + m[1, 2]) / den
    return _sample(img, _to_grid(x_in, y_in, h, w, img.dtype), fill)


# YIQ: a hue shift is a rotation of the (I, Q) chroma plane, which keeps it linear and
# differentiable (torchvision shifts H in HSV; both turn the colour wheel by the same angle).
_YIQ = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]],
                    dtype=torch.float64)


def hue_shift(img: torch.Tensor, turn: float) -> torch.Tensor:
    """Turn the colour wheel by ``turn`` (in full turns, e.g. 0.1 = 36 degrees)."""
    a = 2.0 * math.pi * turn
    rot = torch.tensor([[1.0, 0.0, 0.0], [0.0, math.cos(a), -math.sin(a)],
                        [0.0, math.sin(a), math.cos(a)]], dtype=torch.float64)
    m = (torch.linalg.inv(_YIQ) @ rot @ _YIQ).to(img.dtype).to(img.device)
    return torch.einsum("ij,jhw->ihw", m, img)


def color_jitter(img: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Brightness, contrast, saturation and hue jitter in a random order."""
    b = _uniform(gen, 1 - JITTER_BRIGHTNESS, 1 + JITTER_BRIGHTNESS)
    c = _uniform(gen, 1 - JITTER_CONTRAST, 1 + JITTER_CONTRAST)
    s = _uniform(gen, 1 - JITTER_SATURATION, 1 + JITTER_SATURATION)
    hue = _uniform(gen, -JITTER_HUE, JITTER_HUE)
    for op in torch.randperm(4, generator=gen).tolist():
        if op == 0:
            img = (img * b).clamp(0, 1)
        elif op == 1:
            img = (c * img + (1 - c) * gray(img).mean()).clamp(0, 1)
        elif op == 2:
            img = (s * img + (1 - s) * gray(img)).clamp(0, 1)
        else:
            img = hue_shift(img, hue).clamp(0, 1)
    return img


def augment(img: torch.Tensor, gen: torch.Generator, fill: float) -> torch.Tensor:
    """One random augmentation of ``(3, H, W)`` in ``[0, 1]``: flip, affine, perspective,
    colour jitter, grayscale, each applied with its probability, in that order."""
    _, h, w = img.shape
    if _rand(gen) < FLIP_P:
        img = torch.flip(img, dims=[2])
    if _rand(gen) < AFFINE_P:
        angle = _uniform(gen, -AFFINE_DEGREES, AFFINE_DEGREES)
        dx = round(_uniform(gen, -AFFINE_TRANSLATE, AFFINE_TRANSLATE) * w)
        dy = round(_uniform(gen, -AFFINE_TRANSLATE, AFFINE_TRANSLATE) * h)
        img = affine(img, angle, (dx, dy), fill)
    if _rand(gen) < PERSPECTIVE_P:
        dw = int(PERSPECTIVE_DISTORTION * (w // 2))
        dh = int(PERSPECTIVE_DISTORTION * (h // 2))
        corners = [(_randint(gen, 0, dw), _randint(gen, 0, dh)),
                   (w - 1 - _randint(gen, 0, dw), _randint(gen, 0, dh)),
                   (w - 1 - _randint(gen, 0, dw), h - 1 - _randint(gen, 0, dh)),
                   (_randint(gen, 0, dw), h - 1 - _randint(gen, 0, dh))]
        img = perspective(img, [(float(x), float(y)) for x, y in corners], fill)
    if _rand(gen) < JITTER_P:
        img = color_jitter(img, gen)
    if _rand(gen) < GRAY_P:
        img = gray(img).expand(3, -1, -1)
    return img


def cutout_shape(shape: tuple[int, int], short: int, long_cap: int) -> tuple[int, int]:
    """``shape`` scaled so its short side is ``short``, the long side capped at ``long_cap``."""
    h, w = shape
    f = short / min(h, w)
    nh, nw = round(h * f), round(w * f)
    return (min(nh, long_cap), nw) if h > w else (nh, min(nw, long_cap))


def views(img: torch.Tensor, n: int, gen: torch.Generator, fill: float, short: int = 224,
          long_cap: int = 320) -> torch.Tensor:
    """``n`` augmented views ``(n, 3, h, w)`` of ``img`` for CLIP (spec §6.7).

    View 1 is the whole image resized to the cutout size (short side ``short``, long side at
    most ``long_cap``); every other view is a random crop keeping 60-100 % of each side,
    resized to the same size. Each view is then augmented (:func:`augment`).
    """
    _, h, w = img.shape
    cut = cutout_shape((h, w), short, long_cap)
    out = [augment(resize(img, cut), gen, fill)]
    for _ in range(n - 1):
        s = _uniform(gen, *CROP_SCALE)
        ch, cw = max(1, math.floor(h * s)), max(1, math.floor(w * s))
        y0, x0 = _randint(gen, 0, h - ch), _randint(gen, 0, w - cw)
        out.append(augment(resize(img[:, y0:y0 + ch, x0:x0 + cw], cut), gen, fill))
    return torch.stack(out)


__all__ = ["affine", "augment", "color_jitter", "cutout_shape", "gray", "homography",
           "hue_shift", "perspective", "resize", "views"]
