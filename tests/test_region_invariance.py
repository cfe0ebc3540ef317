"""Tile invariance: a transition computed as tiles with halos equals the whole-image one."""

import pytest
import torch

from gigasid.config import load_config
from gigasid.core import patches as P
from gigasid.core.denoisers import AnnDenoiser, AnnSettings, ExactDenoiser
from gigasid.core.image_denoiser import blend_low_shape
from gigasid.core.noise import gaussian_region
from gigasid.core.resample import resize
from gigasid.core.schedule import flow_linear
from gigasid.engine.plan import tile_grid
from gigasid.engine.progress import Reporter
from gigasid.engine.runner import prepare, sample_once
from gigasid.engine.transition import ScaleContext, Transition, run_transition


def _context(photo, backend, stride):
    fine = photo[:, :70, :90]
    coarse_shape = (35, 45)
    y = P.extract(fine, P.patch_starts(70, 7), P.patch_starts(90, 7), 7)
    den = ExactDenoiser(y) if backend == "exact" else AnnDenoiser(
        y, AnnSettings(k=6, index="ivf", nprobe=4, pca_dim=24))
    ctx = ScaleContext(scale=1, shape=(70, 90), channels=3, patch=7, query_stride=stride,
                       window=P.fold_window(7, 0.2), denoiser=den, schedule=flow_linear(10),
                       low_shape=blend_low_shape((70, 90), 0.5, None),
                       coarser_shape=coarse_shape)
    coarser = resize(fine, coarse_shape)
    return ctx, coarser


@pytest.mark.parametrize("backend", ["exact", "ann"])
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("tr", [Transition(6, 5, 0.5, True), Transition(3, 4, 0.0, False),
                                Transition(1, 0, 1.0, False)])
def test_tiles_equal_whole(photo, backend, stride, tr):
    ctx, coarser = _context(photo, backend, stride)
    a = ctx.schedule.alphas[tr.t_from]
    s = ctx.schedule.sigmas[tr.t_from]
    x = a * photo[:, 30:100, 20:110] + s * gaussian_region(3, 1, tr.t_from, 3, (0, 70, 0, 90))

    def read_x(w):
        return x[:, w[0]:w[1], w[2]:w[3]]

    def read_c(w):
        return coarser[:, w[0]:w[1], w[2]:w[3]]

    whole = run_transition(ctx, tr, (0, 70, 0, 90), read_x, read_c, seed=11)
    tiled = torch.empty_like(whole)
    for (y0, y1, x0, x1) in tile_grid((70, 90), 37):  # 2 x 3 uneven tiles
        tiled[:, y0:y1, x0:x1] = run_transition(ctx, tr, (y0, y1, x0, x1), read_x, read_c, 11)
    assert (tiled - whole).abs().max() <= 1e-5


@pytest.mark.parametrize("backend", ["exact", "ann"])
def test_multiscale_job_tile_size_invariant(tmp_path, small_photo, backend):
    from gigasid.io.images import save_png, to_uint8

    img = tmp_path / "ref.png"
    save_png(to_uint8((small_photo + 1) / 2), img)
    base = [f"input={img}", "patch_size=7", "num_steps=4", "eta=0.5",
            "pyramid.min_short_side=14", f"denoiser.backend={backend}", "denoiser.pca_dim=16"]
    outs = []
    for tile in (0, 32, 48, 24):
        job = prepare(load_config(None, base + [f"engine.tile_size={tile}"]))
        outs.append(sample_once(job, 5, Reporter()))
    assert len(job.plan.scales) >= 3
    for o in outs[1:]:
        assert (o - outs[0]).abs().max() <= 1e-4
