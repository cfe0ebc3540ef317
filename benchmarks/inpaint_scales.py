"""Where an inpainting fill loses its texture: the fill's texture after every scale.

Runs the inpaint preset on one benchmark case with the whole-image sampler (the engine's
oracle, same result as ``gigasid run``) and prints, after every scale, the fill texture and
seam of that scale's image against its own hole (``quality_metrics``), with the reference
level's texture for comparison. Variants that isolate a cause:

* ``--free``: the known region is never held (the whole image is a free sample);
* ``--oracle S``: scale ``S`` blends with the *reference's* coarser level instead of the
  sampled one (a perfect coarse fill), so the loss of the scales from ``S`` down shows alone;
* ``--repaint U``: RePaint resampling, ``U`` forward re-noisings ``t-1 -> t`` (fresh noise)
  and re-denoisings after every step with noise between 0.1 and 0.6;
* ``--fine RHO,STRIDE``: fold window and query stride of the finest scale (repeat the option
  for the next scales), e.g. a narrow fold (0.1) and every window (1) against averaging;
* ``--depth``: texture of the final fill in 1-px bands from its border inwards.

Every line also gives the fill's gradient over the *reference's* ring: with ``--free`` the
ring is generated too, and its own ratio hides a fill (and ring) smoother than the input.

Usage::

    python benchmarks/inpaint_scales.py gravel [--free] [--oracle 0] [--repaint 3]
        [--fine 0.1,1] [--depth] [--save out.png] [key=value ...]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from quality_data import cases  # noqa: E402
from quality_metrics import _gradient, _ring, border_seam, fill_texture  # noqa: E402


def _u8(x: torch.Tensor) -> np.ndarray:
    return ((x.float().clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).numpy()


#: per-scale (fold_rho, query_stride) overrides, finest first (--fine)
FINE: list = []


def _transition(ctx, prog, whole, coarser, hold: bool, x, tr, z):
    """One transition of the core sampler (denoise, blend, step, hold)."""
    from gigasid.core import sampler as S
    from gigasid.core.schedule import implied_noise, step

    sch, dom = ctx.schedule, ctx.domain
    a, sg = sch.alphas[tr.t_from], sch.sigmas[tr.t_from]
    x_hat = S.denoise_image(x, dom, ctx.patch, ctx.query_stride, ctx.window,
                            ctx.denoisers[tr.dataset], a, sg)
    eps = implied_noise(x, x_hat, a, sg)
    if tr.blend:
        x_hat = S.blend_image(x_hat, coarser, dom, ctx.low_shape, ctx.coarser)
    x = step(x_hat, eps, sch.alphas[tr.t_to], sch.sigmas[tr.t_to], tr.eta, z)
    return prog.hold(whole, tr, x) if hold else x


def run(job, seed: int, hold: bool, oracle: int, repaint: int) -> torch.Tensor:
    """The core sampler's loop (``gigasid.core.sampler.sample``) with the variants above."""
    from gigasid.core import noise

    programs = [job.program(s, seed) for s in range(job.plan.num_scales)]
    app, coarser = job.app, None
    for s in reversed(range(len(job.contexts))):
        ctx, prog = job.contexts[s], programs[s]
        if s < len(FINE) and FINE[s]:
            from gigasid.core.patches import fold_window

            ctx = replace(ctx, window=fold_window(ctx.patch, FINE[s][0]),
                          query_stride=FINE[s][1])
        dom, sch = ctx.domain, ctx.schedule
        whole = (0, dom.stored_shape[0], 0, dom.stored_shape[1])
        x = prog.init(whole).to(torch.float32)
        if oracle == s and s + 1 < len(job.contexts):
            coarser = job.view.references[0][s + 1].float()
        for tr in prog.transitions:
            a, sg = sch.alphas[tr.t_from], sch.sigmas[tr.t_from]
            a2, s2 = sch.alphas[tr.t_to], sch.sigmas[tr.t_to]
            z = (noise.gaussian_region(seed, s, tr.noise_step, ctx.channels, whole,
                                       noise.STREAM_STEP) if tr.eta > 0 and s2 > 0 else None)
            x = _transition(ctx, prog, whole, coarser, hold, x, tr, z)
            if repaint and 0.1 <= sg <= 0.6 and s2 > 0:
                r = a / a2
                for u in range(repaint):
                    gen = torch.Generator().manual_seed(1000 * s + 10 * tr.t_from + u)
                    x = r * x + (sg ** 2 - (r * s2) ** 2) ** 0.5 * torch.randn(
                        x.shape, generator=gen)
                    x = _transition(ctx, prog, whole, coarser, hold, x,
                                    replace(tr, visit=u + 1), torch.randn(x.shape, generator=gen))
        coarser = x
        hole = app.holes[s].numpy()
        im, ref = _u8(x), _u8(job.view.references[0][s])
        print(f"scale {s} {tuple(x.shape[1:])}: fill texture {fill_texture(im, hole):.2f} "
              f"seam {border_seam(im, hole):.2f}, against the reference's ring "
              f"{absolute_texture(im, ref, hole):.2f} (reference level: texture "
              f"{fill_texture(ref, hole):.2f})", flush=True)
    return coarser


def absolute_texture(img: np.ndarray, ref: np.ndarray, hole: np.ndarray) -> float:
    """Fill texture with the ring's gradient taken from the reference: a free sample's own
    ring is generated too, so its ratio can hide a fill (and ring) smoother than the input."""
    from scipy import ndimage

    inner = ndimage.binary_erosion(hole, iterations=1)
    inner[-1, :] = inner[:, -1] = False
    if not inner.any():
        inner = hole
    ring = _ring(hole)
    ring[-1, :] = ring[:, -1] = False
    return float(_gradient(img)[inner].mean() / max(_gradient(ref)[ring].mean(), 1e-9))


def depth_profile(img: np.ndarray, hole: np.ndarray, bands: int = 8) -> str:
    """Fill texture in 1-px bands from the border inwards, then the rest."""
    from scipy import ndimage

    g = _gradient(img)
    ring = g[_ring(hole)].mean()
    prev, out = hole, []
    for k in range(1, bands + 1):
        inner = ndimage.binary_erosion(hole, iterations=k)
        out.append(f"{k}:{g[prev & ~inner].mean() / ring:.2f}")
        prev = inner
    return " ".join(out) + (f" deeper:{g[prev].mean() / ring:.2f}" if prev.any() else "")


def main() -> None:
    from gigasid.config import load_config
    from gigasid.engine.job import prepare

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("case", help="a benchmark picture (quality_data.py)")
    ap.add_argument("overrides", nargs="*", help="config overrides (key=value)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--free", action="store_true")
    ap.add_argument("--oracle", type=int, default=-1)
    ap.add_argument("--repaint", type=int, default=0)
    ap.add_argument("--depth", action="store_true")
    ap.add_argument("--save", type=Path, help="write the finished image (PNG)")
    ap.add_argument("--fine", action="append", default=[],
                    help="RHO,STRIDE for the finest scale; repeat for the next ones")
    args = ap.parse_intermixed_args()
    FINE[:] = [(float(f.split(",")[0]), int(f.split(",")[1])) for f in args.fine]
    case = next(c for c in cases("all") if c.name == args.case)
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        Image.fromarray(case.image).save(d / "input.png")
        Image.fromarray(case.mask.astype(np.uint8) * 255).save(d / "mask.png")
        cfg = load_config(str(HERE.parent / "configs" / "inpaint.yaml"),
                          [f"input={d / 'input.png'}", f"mask={d / 'mask.png'}",
                           *args.overrides])
        job = prepare(cfg)
        x = run(job, args.seed, not args.free, args.oracle, args.repaint)
    if args.save:
        Image.fromarray(_u8(x)).save(args.save)
    if args.depth:
        print("depth profile:", depth_profile(_u8(x), case.mask))


if __name__ == "__main__":
    main()
