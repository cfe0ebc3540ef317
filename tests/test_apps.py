"""Applications end to end through the engine (small images, few steps)."""

import pytest
import torch

from gigasid.config import load_config
from gigasid.engine.progress import Reporter
from gigasid.engine.runner import prepare, sample_once
from gigasid.errors import ConfigError, InputError
from gigasid.io.images import save_png, to_uint8
from gigasid.metrics import patch_nn_distance, psnr


@pytest.fixture
def ref_file(photo_file):
    return photo_file((96, 96))


def test_reconstruct_round_trip_psnr(tmp_path, photo):
    """Invert a real photograph to noise level 0.3 and back: PSNR >= 30 dB."""
    p = tmp_path / "photo.png"
    save_png(to_uint8((photo + 1) / 2), p)
    cfg = load_config(None, [f"input={p}", "app=reconstruct", "patch_size=7",
                             "num_steps=20", "noise_level=0.3", "pyramid.num_scales=1",
                             "denoiser.backend=ann", "denoiser.k=8", "denoiser.nprobe=8"])
    job = prepare(cfg)
    out = sample_once(job, 0, Reporter())
    ref = (photo + 1) / 2
    value = psnr(out.clamp(0, 1), ref)
    print(f"reconstruct PSNR {value:.2f} dB")
    assert value >= 30.0


def test_uncond_output_is_made_of_reference_patches(ref_file):
    """Provenance: at the last step every output patch comes from the reference."""
    cfg = load_config(None, [f"input={ref_file}", "patch_size=7", "num_steps=6",
                             "pyramid.min_short_side=14", "denoiser.backend=exact"])
    job = prepare(cfg)
    out = sample_once(job, 1, Reporter()).clamp(0, 1)
    ref = (job.reference + 1) / 2
    noise = torch.rand_like(ref)
    d_out = patch_nn_distance(out, ref, patch=7, max_queries=2000)["median"]
    d_noise = patch_nn_distance(noise, ref, patch=7, max_queries=2000)["median"]
    assert d_out < 0.1 * d_noise
    # ... and it is not a copy of the reference.
    assert (out - ref).abs().mean() > 0.02


def test_seeds_differ_and_repeat(ref_file):
    cfg = load_config(None, [f"input={ref_file}", "patch_size=7", "num_steps=4",
                             "pyramid.min_short_side=14"])
    job = prepare(cfg)
    a = sample_once(job, 1, Reporter())
    b = sample_once(job, 1, Reporter())
    c = sample_once(job, 2, Reporter())
    assert torch.equal(a, b)
    assert (a - c).abs().mean() > 0.01


def test_retarget_to_other_aspect(ref_file):
    cfg = load_config(None, [f"input={ref_file}", "app=retarget", "output_size=[64, 160]",
                             "patch_size=7", "num_steps=4", "pyramid.min_short_side=7"])
    job = prepare(cfg)
    assert job.plan.scales[-1].denoised is False  # the coarsest scale is pinned
    out = sample_once(job, 0, Reporter())
    assert out.shape == (3, 64, 160)
    ref = (job.reference + 1) / 2
    d = patch_nn_distance(out.clamp(0, 1), ref, patch=7, max_queries=2000)["median"]
    assert d < 0.05


def test_reconstruct_refuses_output_size(ref_file):
    cfg = load_config(None, [f"input={ref_file}", "app=reconstruct", "output_size=[50, 50]",
                             "patch_size=7"])
    with pytest.raises(ConfigError, match="output_size"):
        prepare(cfg)


def test_image_smaller_than_patch(tmp_path):
    p = tmp_path / "tiny.png"
    save_png(to_uint8(torch.rand(3, 10, 12)), p)
    with pytest.raises(InputError, match="smaller than patch_size"):
        prepare(load_config(None, [f"input={p}"]))
