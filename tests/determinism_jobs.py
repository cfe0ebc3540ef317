"""Small seeded jobs of every kind, run in this process; prints one JSON line of digests.

    python tests/determinism_jobs.py WORKDIR VAE_DIR [--only NAME,NAME] [KEY=VALUE ...]

Each job (uncond, retarget, tileable, symmetric, inpaint, outpaint, analogy and a latent job
with the tiny VAE in ``VAE_DIR``) runs on real photographs (the bundled ones, made small)
with both the exact and the ANN denoiser, in Zarr tiles; the ``KEY=VALUE`` overrides (e.g.
``engine.threads=3`` or ``engine.scheduler=processes``) apply to every job. The digest of a
job is the SHA-256 of its output array. ``tests/test_determinism.py`` runs this under
several environments (thread counts, CPU kernels) and compares the digests.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import numpy as np
import torch
import zarr

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "gigasid" / "data"

#: Common to every job: small, few steps, tiles of 32 px, both denoisers (P = 7 makes the
#: finest scales of a 64 x 80 reference larger than the exact backend's limit).
COMMON = ["num_samples=1", "patch_size=7", "num_steps=4", "eta=0.5", "seed=3",
          "pyramid.min_short_side=14", "engine.store=zarr", "engine.tile_size=32",
          "output.formats=[png]", "denoiser.pca_dim=16"]


def _photo(name: str, shape: tuple[int, int], path: Path) -> Path:
    from gigasid.core.resample import resize
    from gigasid.io.images import load_image, save_png, to_uint8

    save_png(to_uint8(resize(load_image(DATA / name), shape).clamp(0, 1)), path)
    return path


def _mask(shape: tuple[int, int], path: Path) -> Path:
    """A Z-shaped hole: three strokes, so no fill can hide behind a straight edge."""
    from PIL import Image

    h, w = shape
    m = np.zeros(shape, dtype=np.uint8)
    m[h // 5 : h // 5 + 6, w // 5 : 4 * w // 5] = 255
    m[4 * h // 5 - 6 : 4 * h // 5, w // 5 : 4 * w // 5] = 255
    for y in range(h // 5, 4 * h // 5):
        x = 4 * w // 5 - (y - h // 5) * (3 * w // 5) // (3 * h // 5)
        m[y, max(0, x - 3) : x + 3] = 255
    Image.fromarray(m).save(path)
    return path


def jobs(work: Path, vae: Path) -> dict[str, list[str]]:
    """Config path and overrides of each job."""
    ref = _photo("astronaut.png", (64, 80), work / "ref.png")
    tex = _photo("chelsea.png", (64, 80), work / "tex.png")
    struct = _photo("coffee.png", (48, 64), work / "struct.png")
    mask = _mask((64, 80), work / "mask.png")
    c = REPO / "configs"
    return {
        "uncond": [c / "uncond.yaml", f"input={ref}"],
        "retarget": [c / "retarget.yaml", f"input={ref}", "output_size=[80,120]"],
        "tileable": [c / "tileable.yaml", f"input={tex}"],
        "symmetric": [c / "symmetric.yaml", f"input={ref}"],
        "inpaint": [c / "inpaint.yaml", f"input={ref}", f"mask={mask}"],
        "outpaint": [c / "outpaint.yaml", f"input={ref}", "output_size=[64,128]"],
        "analogy": [c / "analogy.yaml", f"input={tex}", f"structure={struct}",
                    "num_steps=[4,4,8]", "patch_size=7"],
        "latent": [c / "demo.yaml", f"input={ref}", "latent.enabled=true", f"latent.vae={vae}",
                   "latent.tile=12", "latent.halo=4", "latent.stats_pixels=4096",
                   "patch_size=5", "pyramid.min_short_side=9"],
    }


def digest(run_dir: Path) -> str:
    arr = np.asarray(zarr.open_array(str(run_dir / "out" / "image.zarr"), mode="r")[:])
    return hashlib.sha256(arr.tobytes()).hexdigest()


def main(argv: list[str]) -> None:
    from gigasid.config import load_config
    from gigasid.engine.progress import Reporter
    from gigasid.engine.runner import run

    work, vae, extra = Path(argv[0]), Path(argv[1]), argv[2:]
    only = None
    if extra[:1] == ["--only"]:
        only, extra = set(extra[1].split(",")), extra[2:]
    work.mkdir(parents=True, exist_ok=True)
    out = {}
    for name, args in jobs(work, vae).items():
        if only is not None and name not in only:
            continue
        run_dir = work / f"run-{name}"
        overrides = [str(a) for a in args[1:]]
        # an app's own keys come after the common ones (analogy sets its own steps and P)
        cfg = load_config(args[0], [*COMMON, *overrides[:1], *extra, *overrides[1:]])
        run(cfg, run_dir, Reporter())
        out[name] = digest(run_dir)
    print(json.dumps({"threads": torch.get_num_threads(), "digests": out}))


if __name__ == "__main__":
    main(sys.argv[1:])
