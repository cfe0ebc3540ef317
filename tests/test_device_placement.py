"""Every tensor a job computes with lives on the job's device (the CUDA path, without a GPU).

The job is built for PyTorch's ``meta`` device: tensors with shapes and a device but no data,
on which every operator still refuses inputs from two devices. A tensor left on the CPU
(a pyramid level, a mask, a canvas, the noise) then fails the run exactly where it would
fail or silently copy on a GPU. The store keeps the real boundary: it hands out CPU windows,
as the Zarr store does, and checks that every tile written back was computed on the device.

The exact denoiser runs (shape-only math), and so does the ANN denoiser: its index is
trained by FAISS on the CPU from stand-in data (meta patches hold none), then searched by the
torch IVF search on the device. Not covered: the VAE codec and CLIP (text_style).
"""

from __future__ import annotations

from pathlib import Path

import pytest

import gigasid.engine.job as jobmod
from gigasid.config import load_config
from gigasid.engine.execute import SyncExecutor, generate
from gigasid.engine.progress import Reporter
from gigasid.engine.store import MemoryStore

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


class DeviceCheckStore(MemoryStore):
    """Reads return CPU windows (zeros); writes must come from ``device`` and are counted."""

    def __init__(self, device: str):
        super().__init__()
        self.device = device
        self.writes = 0

    def write(self, name, region, value):
        assert value.device.type == self.device, f"{name} {region} computed on {value.device}"
        self.writes += 1


# The texture pass (the apps' Finish) is a CPU step over real pixels by design: meta tensors
# hold none. Its device handling is the candidate search's (tests/test_resynthesis.py).
_NO_FINISH = {"inpaint": ["inpaint.texture_pass=false"],
              "outpaint": ["outpaint.texture_pass=false"]}


@pytest.fixture
def on_meta(monkeypatch):
    import torch.fx.experimental._config as fx_config

    monkeypatch.setattr(jobmod, "resolve_device", lambda name: "meta")
    # boolean-mask indexing (dataset exclusions) has a data-dependent shape: let meta assume
    # every element is kept, which keeps devices checked and shapes plausible
    with fx_config.patch(meta_nonzero_assume_all_nonzero=True):
        yield


@pytest.mark.parametrize("app", ["uncond", "retarget", "tileable", "symmetric", "inpaint",
                                 "outpaint", "reconstruct", "analogy"])
def test_a_job_built_for_a_device_computes_every_tile_there(app, on_meta):
    cfg = load_config(CONFIGS / f"{app}.yaml", ["denoiser.backend=exact", "num_steps=2",
                                                *_NO_FINISH.get(app, [])])
    job = jobmod.prepare(cfg)
    for level in job.view.references[0]:
        assert level.device.type == "meta"
    store = DeviceCheckStore("meta")
    generate(job, store, seed=0, sample=0, reporter=Reporter(), executor=SyncExecutor())
    assert store.writes >= sum(1 for _ in job.plan.scales)


@pytest.fixture
def stand_in_patches(monkeypatch):
    """FAISS trains on host copies of the patches: meta tensors have no data, so their
    host copies are seeded random arrays of the same shape."""
    import numpy as np

    from gigasid.core import denoisers

    real = denoisers._host
    rng = np.random.default_rng(0)

    def host(t):
        if t.device.type != "meta":
            return real(t)
        return rng.standard_normal(tuple(t.shape)).astype(np.float32)

    monkeypatch.setattr(denoisers, "_host", host)


@pytest.mark.parametrize("app", ["uncond", "retarget", "inpaint"])
def test_an_ann_job_built_for_a_device_searches_and_computes_there(app, on_meta,
                                                                   stand_in_patches):
    from gigasid.core.denoisers import AnnDenoiser

    cfg = load_config(CONFIGS / f"{app}.yaml", ["denoiser.backend=ann", "num_steps=2",
                                                *_NO_FINISH.get(app, [])])
    job = jobmod.prepare(cfg)
    dens = [d for d in _denoisers(job) if isinstance(d, AnnDenoiser)]
    assert dens and all(d._search_on_device() for d in dens)
    store = DeviceCheckStore("meta")
    generate(job, store, seed=0, sample=0, reporter=Reporter(), executor=SyncExecutor())
    assert store.writes >= sum(1 for _ in job.plan.scales)
    assert all(d._device_lists().vecs_t.device.type == "meta" for d in dens)


def _denoisers(job):
    """Every scale's denoisers (the job's contexts hold them by dataset name)."""
    return [d for c in job.contexts for d in c.denoisers.values()]


def test_the_check_catches_a_tensor_left_on_the_cpu(on_meta, monkeypatch):
    """The mechanism works: step noise drawn on the CPU (its ``device`` ignored) fails."""
    from gigasid.core import noise

    draw = noise.gaussian_region
    monkeypatch.setattr(noise, "gaussian_region",
                        lambda *a, device="cpu", **k: draw(*a, device="cpu", **k))
    cfg = load_config(CONFIGS / "retarget.yaml", ["denoiser.backend=exact", "num_steps=2"])
    job = jobmod.prepare(cfg)
    with pytest.raises((RuntimeError, AssertionError), match="device|computed on cpu"):
        generate(job, DeviceCheckStore("meta"), seed=0, sample=0, reporter=Reporter(),
                 executor=SyncExecutor())


@pytest.mark.gpu
@pytest.mark.skipif(not __import__("torch").cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("app", ["uncond", "retarget", "inpaint", "outpaint"])
def test_a_cuda_job_computes_every_tile_on_the_gpu(app):
    """The real variant: device=cuda, ANN and exact backends as the planner picks them."""
    cfg = load_config(CONFIGS / f"{app}.yaml", ["device=cuda", "num_steps=2"])
    job = jobmod.prepare(cfg)
    store = DeviceCheckStore("cuda")
    generate(job, store, seed=0, sample=0, reporter=Reporter(), executor=SyncExecutor())
    assert store.writes >= len(job.plan.scales)
