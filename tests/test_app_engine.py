"""Every application through the engine: tiled == whole (bit for bit) == the core sampler.

The core sampler (``gigasid.core.sampler.sample``) is a separate whole-image implementation
(index arithmetic, ``index_add_`` folds, circular padding); the engine's region-by-region
output must agree with it for every application, domain and tile size.
"""

from __future__ import annotations

import pytest
import torch

from gigasid.config import load_config
from gigasid.core.sampler import sample
from gigasid.engine.execute import sample_once
from gigasid.engine.job import prepare
from gigasid.io.images import save_png, to_uint8


@pytest.fixture
def files(tmp_path, photo):
    """A reference, a mask, a second reference and a structure image (real photographs)."""
    from conftest import DATA
    from gigasid.core.resample import resize
    from gigasid.io.images import load_image

    ref = resize(photo, (60, 68))
    save_png(to_uint8((ref + 1) / 2), tmp_path / "ref.png")
    mask = torch.zeros(3, 60, 68)
    mask[:, 22:38, 26:44] = 1.0
    save_png(to_uint8(mask), tmp_path / "mask.png")
    other = resize(load_image(DATA / "coffee.png") * 2 - 1, (52, 70))
    save_png(to_uint8((other + 1) / 2), tmp_path / "other.png")
    struct = resize(load_image(DATA / "chelsea.png") * 2 - 1, (60, 90))
    save_png(to_uint8((struct + 1) / 2), tmp_path / "structure.png")
    return tmp_path


BASE = ["patch_size=7", "num_steps=4", "pyramid.min_short_side=14", "eta=0.5",
        "denoiser.backend=exact"]

APPS = {
    "uncond": [],
    "retarget": ["app=retarget", "output_size=[50,90]", "pyramid.min_short_side=10"],
    "reconstruct": ["app=reconstruct", "noise_level=0.5"],
    "tileable": ["app=tileable", "tiling.direction=both"],
    "tileable_h": ["app=tileable", "tiling.direction=horizontal", "output_size=[48,80]"],
    "symmetric": ["app=symmetric", "symmetry.axis=horizontal"],
    "symmetric_both": ["app=symmetric", "symmetry.axis=both", "output_size=[57,71]"],
    "inpaint": ["app=inpaint", "mask={d}/mask.png"],
    "outpaint": ["app=outpaint", "output_size=[72,110]", "outpaint.offset=[5,30]"],
    "analogy": ["app=analogy", "structure={d}/structure.png", "noise_level=0.6", "sigma_min=0.01",
                "pyramid.num_scales=2"],
    "multi": ["input=[{d}/ref.png,{d}/other.png]"],
}


#: Applications tested in a file of their own (they need model weights).
ELSEWHERE = {"text_style": "test_text_style.py"}


def _variants() -> dict[str, list[str]]:
    """``APPS``, plus every other registered application with its defaults: a new
    application is covered here without editing this file."""
    from gigasid import registry

    named = {a.split("=", 1)[1] for args in APPS.values() for a in args if a.startswith("app=")}
    named.add("uncond")
    extra = {n: [f"app={n}"] for n in sorted(registry.apps())
             if n not in named and n not in ELSEWHERE}
    return {**APPS, **extra}


VARIANTS = _variants()


def _cfg(files, app, extra=()):
    args = [f"input={files}/ref.png", *BASE] + [a.format(d=files) for a in VARIANTS[app]]
    return load_config(None, args + list(extra))


@pytest.mark.parametrize("app", list(VARIANTS))
def test_engine_equals_core_sampler_and_tiles_equal_whole(files, app):
    seed = 4
    job = prepare(_cfg(files, app))
    whole = sample_once(job, seed)
    tiled = sample_once(prepare(_cfg(files, app, ["engine.tile_size=23"])), seed)
    assert torch.equal(tiled, whole), float((tiled - whole).abs().max())
    programs = [job.program(s, seed) for s in range(job.plan.num_scales)]
    x = sample(job.contexts, programs, seed)
    fin = job.app.finish(job.view, seed)  # the app's last step, on the whole image
    if fin is not None:
        y0, y1, x0, x1 = fin.region
        x = x.clone()
        x[:, y0:y1, x0:x1] = fin.apply(x[:, y0:y1, x0:x1].clone())
    oracle = (x + 1) / 2
    assert oracle.shape == whole.shape
    err = float((oracle - whole).abs().max())
    assert err <= 1e-4, err
