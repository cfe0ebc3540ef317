"""The planner's automatic choices."""

from pathlib import Path

import pytest

from gigasid.config import load_config
from gigasid.engine.plan import DATASET_MAX_PATCHES, _count, make_plan


def test_dataset_stride_auto_caps_huge_reference_levels():
    cfg = load_config(None, ["input=builtin:hubble", "app=retarget", "output_size=[512,512]"])
    plan = make_plan(cfg, (12000, 9000))
    strides = [s.dataset_stride for s in plan.scales]
    assert strides[0] > 1 and strides[-1] == 1
    for s in plan.scales:
        assert s.n_patches <= DATASET_MAX_PATCHES
        if s.dataset_stride > 1:  # the smallest stride that fits
            assert _count(s.ref_shape, s.patch, s.dataset_stride - 1) > DATASET_MAX_PATCHES


def test_ordinary_reference_uses_every_patch():
    cfg = load_config(None, ["input=builtin:hubble"])
    plan = make_plan(cfg, (512, 768))
    assert all(s.dataset_stride == 1 for s in plan.scales)
    pinned = load_config(None, ["input=builtin:hubble", "dataset_stride=3"])
    assert all(s.dataset_stride == 3 for s in make_plan(pinned, (512, 768)).scales)


def test_small_scales_of_a_streamed_job_run_as_one_region():
    base = ["input=builtin:hubble", "app=retarget", "output_size=[3000,3000]",
            "engine.store=zarr"]
    plan = make_plan(load_config(None, base), (512, 512))
    assert plan.scales[0].tile == 512 and len(plan.scales[0].tiles) == 36
    for s in plan.scales:  # one region exactly when the scale fits in 2 x 2 tiles
        assert (s.tile == 0) == (s.shape[0] * s.shape[1] <= 1024 * 1024)
        assert (len(s.tiles) == 1) == (s.tile == 0)
    for extra in (["engine.tile_size=512"], ["engine.workers=2", "engine.scheduler=threads"]):
        tiled = make_plan(load_config(None, [*base, *extra]), (512, 512))
        assert all(s.tile == 512 for s in tiled.scales)


def test_auto_index_switches_to_ivfpq_where_ivf_would_not_fit():
    from gigasid.config import load_config
    from gigasid.engine.plan import make_plan

    cfg = load_config(None, ["input=builtin:astronaut", "output_size=[1024,1024]",
                             "denoiser.index_memory_mb=3", "denoiser.pca_dim=32"])
    plan = make_plan(cfg, [(256, 256)])
    ann = [s for s in plan.scales if s.backend == "ann"]
    assert ann, "the job should have ANN scales"
    for s in ann:
        ivf_bytes = s.n_patches * (32 * 4 + 8)
        want = "ivf" if ivf_bytes <= 3 * 2**20 else "ivfpq"
        assert s.ann_index == want, (s.index, s.n_patches)
        assert s.index_bytes <= max(ivf_bytes, 3 * 2**20)
    assert {s.ann_index for s in ann} == {"ivf", "ivfpq"}


def test_disk_estimate_counts_streamed_reference_files():
    """A reference decoded into on-disk levels (engine.reference: disk) adds its float32
    levels to the estimate the disk check compares with the free space."""
    base = ["input=builtin:hubble", "app=retarget", "output_size=[300,300]", "engine.store=zarr"]
    mem = make_plan(load_config(None, [*base, "engine.reference=memory"]), (400, 500))
    disk = make_plan(load_config(None, [*base, "engine.reference=disk"]), (400, 500))
    levels = sum(12 * h * w for h, w in disk.ref_pyramids[0])
    assert disk.est_disk_bytes - mem.est_disk_bytes == levels


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads /proc (Linux)")
def test_peak_memory_estimate_is_near_a_measured_run(tmp_path, photo_file):
    """``gigasid plan``'s peak memory against the peak resident size of the same job run in
    a fresh process: within -35 % / +50 % (it counts the interpreter and libraries, every
    scale's data and the largest step's buffers)."""
    import subprocess
    import sys

    ref = photo_file((96, 128))
    preset = Path(__file__).resolve().parents[1] / "configs" / "retarget.yaml"
    cfg_args = [f"input={ref}", "output_size=[160,200]", "num_steps=3", "num_samples=1",
                "engine.store=zarr"]
    plan = make_plan(load_config(str(preset), cfg_args), (96, 128))
    # VmHWM: this process image's peak RSS (ru_maxrss would carry the forking parent's).
    child = ("import re, runpy, sys\n"
             "sys.argv = ['gigasid', 'run', sys.argv[2], '--out', sys.argv[1], '--quiet']"
             " + sys.argv[3:]\n"
             "try:\n    runpy.run_module('gigasid', run_name='__main__')\n"
             "finally:\n"
             "    hwm = re.search(r'VmHWM:\\s+(\\d+)', open('/proc/self/status').read())\n"
             "    print('PEAK', hwm.group(1), file=sys.stderr)\n")
    res = subprocess.run([sys.executable, "-c", child, str(tmp_path / "run"), str(preset),
                          *cfg_args],
                         capture_output=True, text=True, timeout=300)
    assert (tmp_path / "run" / "sample_000.png").exists(), res.stderr[-2000:]
    peak = int(res.stderr.rsplit("PEAK", 1)[1].split()[0]) * 1024  # kB
    assert 0.65 <= peak / plan.est_peak_bytes <= 1.5, (peak / 2**20, plan.est_peak_bytes / 2**20)


def test_auto_query_stride_by_scale_size_and_patch():
    """``query_stride: auto`` on CPU: 3 on large scales when P >= 15 (every pixel still in
    25 windows), 2 on large scales with a smaller patch, 1 on small scales."""
    from gigasid.engine.plan import STRIDE2_MIN_QUERIES, STRIDE3_MIN_QUERIES

    cfg = load_config(None, ["input=builtin:hubble", "app=retarget", "output_size=[1024,1024]"])
    for s in make_plan(cfg, (256, 256)).scales:
        n = _count(s.shape, s.patch, 1)
        want = 3 if n > STRIDE3_MIN_QUERIES["cpu"] else 2 if n > STRIDE2_MIN_QUERIES["cpu"] else 1
        assert s.query_stride == want, (s.shape, n)
    assert make_plan(cfg, (256, 256)).scales[0].query_stride == 3
    small_p = load_config(None, ["input=builtin:hubble", "app=retarget", "patch_size=7",
                                 "output_size=[1024,1024]"])
    assert make_plan(small_p, (256, 256)).scales[0].query_stride == 2
