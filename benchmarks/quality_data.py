"""The photographs and masks of the quality benchmark, split into a tuning and a report half.

Every image ships with a dependency (scikit-image's data module) or with gigasid itself, so
the benchmark runs offline. Images are cropped to a few hundred pixels (colour; grey ones are
repeated over three channels). Masks are drawn by code with a fixed seed: a Z-shaped stroke,
a free-hand scribble, a blob and an object-sized rectangle, assigned in turn so every mask
kind meets several kinds of picture.

Tune on ``tune``; only report ``report``. A change that helps ``tune`` but not ``report`` is
not a gain.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw


def _rgb(a: np.ndarray) -> np.ndarray:
    a = np.asarray(a)
    if a.dtype == bool:
        a = a.astype(np.uint8) * 255
    if a.ndim == 2:
        a = np.stack([a] * 3, axis=-1)
    return np.ascontiguousarray(a[..., :3].astype(np.uint8))


def _skimage(name: str, box: tuple[int, int, int, int] | None = None):
    def load() -> np.ndarray:
        import skimage.data as data

        img = data.stereo_motorcycle()[0] if name == "motorcycle" else getattr(data, name)()
        if box is not None:
            y0, y1, x0, x1 = box
            img = img[y0:y1, x0:x1]
        return _rgb(img)
    return load


def _builtin(name: str, size: int | None = None):
    def load() -> np.ndarray:
        from gigasid.io.images import builtin_image

        im = Image.open(builtin_image(name)).convert("RGB")
        if size is not None:
            s = size / max(im.size)
            im = im.resize((round(im.width * s), round(im.height * s)), Image.LANCZOS)
        return np.asarray(im)
    return load


#: name -> loader; ``TUNE`` and ``REPORT`` split them (textures and photographs in both).
IMAGES = {
    # tuning half
    "coffee": _skimage("coffee", (0, 400, 100, 500)),
    "gravel": _skimage("gravel", (56, 456, 56, 456)),
    "chelsea": _skimage("chelsea"),
    "rocket": _skimage("rocket", (27, 427, 0, 400)),
    "brick": _skimage("brick", (100, 400, 100, 400)),
    "hubble": _skimage("hubble_deep_field", (200, 520, 300, 620)),
    # report half
    "motorcycle": _skimage("motorcycle", (100, 400, 200, 600)),
    "grass": _skimage("grass", (56, 456, 56, 456)),
    "astronaut": _skimage("astronaut", (0, 360, 150, 510)),
    "ihc": _skimage("immunohistochemistry", (100, 420, 100, 420)),
    "retina": _skimage("retina", (500, 860, 300, 660)),
    "coins": _skimage("coins"),
}
TUNE = ["coffee", "gravel", "chelsea", "rocket", "brick", "hubble"]
REPORT = ["motorcycle", "grass", "astronaut", "ihc", "retina", "coins"]
MASK_KINDS = ("z", "scribble", "blob", "rect")


@dataclass
class Case:
    """One benchmark picture with its inpainting mask (True = regenerate)."""

    name: str
    image: np.ndarray
    mask: np.ndarray
    mask_kind: str


def draw_mask(shape: tuple[int, int], kind: str, seed: int) -> np.ndarray:
    """A boolean mask of ``shape`` of one of :data:`MASK_KINDS`, about 8-15 % of the image.

    >>> m = draw_mask((200, 300), "z", 0)
    >>> m.shape, bool(0.03 < m.mean() < 0.3)
    ((200, 300), True)
    """
    h, w = shape
    rng = np.random.default_rng(seed)
    m = Image.new("L", (w, h), 0)
    d = ImageDraw.Draw(m)
    width = max(6, round(0.07 * min(h, w)))
    if kind == "z":
        x0, x1, y0, y1 = 0.22 * w, 0.78 * w, 0.25 * h, 0.75 * h
        d.line([(x0, y0), (x1, y0), (x0, y1), (x1, y1)], fill=255, width=width, joint="curve")
    elif kind == "scribble":
        pts = [(w * rng.uniform(0.2, 0.8), h * rng.uniform(0.2, 0.8)) for _ in range(5)]
        d.line(pts, fill=255, width=width, joint="curve")
    elif kind == "blob":
        cy, cx = h * rng.uniform(0.35, 0.65), w * rng.uniform(0.35, 0.65)
        ang = np.linspace(0, 2 * np.pi, 24, endpoint=False)
        rad = 0.17 * min(h, w) * (1 + 0.35 * rng.standard_normal(24).clip(-1.5, 1.5))
        d.polygon([(cx + r * np.cos(a), cy + r * np.sin(a)) for a, r in zip(ang, rad, strict=True)],
                  fill=255)
    elif kind == "rect":
        bh, bw = round(0.3 * h), round(0.25 * w)
        y, x = round(h * rng.uniform(0.25, 0.45)), round(w * rng.uniform(0.25, 0.5))
        d.rectangle([x, y, x + bw, y + bh], fill=255)
    else:
        raise ValueError(f"unknown mask kind {kind!r}")
    return np.asarray(m) >= 128


def cases(split: str) -> list[Case]:
    """The benchmark's cases of one split (``tune``, ``report`` or ``all``)."""
    names = {"tune": TUNE, "report": REPORT, "all": TUNE + REPORT}[split]
    out = []
    for name in names:
        i = (TUNE + REPORT).index(name)
        img = IMAGES[name]()
        kind = MASK_KINDS[i % len(MASK_KINDS)]
        out.append(Case(name, img, draw_mask(img.shape[:2], kind, seed=i), kind))
    return out
