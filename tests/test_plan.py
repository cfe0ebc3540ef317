"""The planner's automatic choices."""

from gigasid.config import load_config
from gigasid.engine.plan import DATASET_MAX_PATCHES, make_plan


def test_dataset_stride_auto_caps_huge_reference_levels():
    cfg = load_config(None, ["input=builtin:hubble", "app=retarget", "output_size=[512,512]"])
    plan = make_plan(cfg, (12000, 9000))
    strides = [s.dataset_stride for s in plan.scales]
    assert strides[0] > 1 and strides[-1] == 1
    for s in plan.scales:
        assert s.n_patches <= DATASET_MAX_PATCHES
        if s.dataset_stride > 1:  # the smallest stride that fits
            from gigasid.engine.plan import _count

            assert _count(s.ref_shape, s.patch, s.dataset_stride - 1) > DATASET_MAX_PATCHES


def test_ordinary_reference_uses_every_patch():
    cfg = load_config(None, ["input=builtin:hubble"])
    plan = make_plan(cfg, (512, 768))
    assert all(s.dataset_stride == 1 for s in plan.scales)
    pinned = load_config(None, ["input=builtin:hubble", "dataset_stride=3"])
    assert all(s.dataset_stride == 3 for s in make_plan(pinned, (512, 768)).scales)
