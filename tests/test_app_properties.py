"""What each application promises, measured on real photographs (default backends)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import DATA, run_cli
from gigasid.config import load_config
from gigasid.core.resample import resize
from gigasid.engine.execute import sample_once
from gigasid.engine.job import prepare
from gigasid.io.images import load_image, save_png, to_uint8
from gigasid.metrics import patch_nn_distance, seam_ratio

COMMON = ["patch_size=7", "num_steps=6", "pyramid.min_short_side=14", "eta=1.0"]


def _photo(name: str, shape: tuple[int, int]) -> torch.Tensor:
    return resize(load_image(DATA / f"{name}.png") * 2 - 1, shape)


def _save(tmp_path, img: torch.Tensor, name: str):
    p = tmp_path / name
    save_png(to_uint8((img + 1) / 2), p)
    return p


def _run(args, seed=1):
    job = prepare(load_config(None, args))
    return job, to_uint8(sample_once(job, seed))


def _grad_energy(img: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    x = img.astype(np.float64)
    gy = np.abs(np.diff(x, axis=0)).mean(axis=2)  # between rows r and r+1
    gx = np.abs(np.diff(x, axis=1)).mean(axis=2)  # between cols c and c+1
    return gy, gx


@pytest.fixture(scope="module")
def rocket_file(tmp_path_factory):
    return _save(tmp_path_factory.mktemp("rocket"), _photo("rocket", (72, 96)), "rocket.png")


@pytest.mark.parametrize("direction", ["both", "horizontal"])
def test_tileable_wraps_without_a_seam(rocket_file, direction):
    _, out = _run([f"input={rocket_file}", "app=tileable", f"tiling.direction={direction}",
                   *COMMON])
    ratio = seam_ratio(out, direction)
    _, plain = _run([f"input={rocket_file}", *COMMON])
    print(f"seam ratio tileable {ratio:.3f}, uncond {seam_ratio(plain, direction):.3f}")
    assert ratio <= 1.3
    assert seam_ratio(plain, direction) > ratio  # the metric tells a seam when there is one
    if direction == "both":
        # a 2x2 tiling of the output has no seam where the copies meet
        grid = np.concatenate([np.concatenate([out, out], 1)] * 2, 0)
        h, w = out.shape[:2]
        gy, gx = _grad_energy(grid)
        assert gx[:, w - 1].mean() <= 1.3 * gx.mean()
        assert gy[h - 1, :].mean() <= 1.3 * gy.mean()


@pytest.mark.parametrize("axis", ["horizontal", "vertical", "both"])
def test_symmetric_is_exactly_mirrored_and_made_of_reference_patches(rocket_file, axis):
    job, out = _run([f"input={rocket_file}", "app=symmetric", f"symmetry.axis={axis}",
                     "output_size=[67,91]", *COMMON])
    if axis in ("horizontal", "both"):
        assert np.array_equal(out, out[:, ::-1])
    if axis in ("vertical", "both"):
        assert np.array_equal(out, out[::-1])
    ref = ((job.reference + 1) / 2).clamp(0, 1)
    d = patch_nn_distance(out, ref, patch=7, max_queries=1500)["median"]
    d_noise = patch_nn_distance(torch.rand_like(ref), ref, patch=7, max_queries=1500)["median"]
    assert d < 0.25 * d_noise


@pytest.fixture(scope="module")
def inpaint_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("inpaint")
    ref = _photo("chelsea", (80, 96))
    mask = torch.zeros(3, 80, 96)
    mask[:, 28:52, 30:60] = 1.0  # a hole over the cat's face
    return _save(d, ref, "ref.png"), _save(d, mask * 2 - 1, "mask.png"), ref


def test_inpaint_keeps_outside_fills_inside_without_copying(inpaint_files):
    ref_file, mask_file, ref = inpaint_files
    _, out = _run([f"input={ref_file}", "app=inpaint", f"mask={mask_file}", *COMMON])
    src = to_uint8((ref + 1) / 2)
    hole = np.zeros(out.shape[:2], dtype=bool)
    hole[28:52, 30:60] = True
    assert np.array_equal(out[~hole], src[~hole])  # bit-identical outside the mask
    assert np.abs(out[hole].astype(int) - src[hole].astype(int)).mean() > 5  # not the original
    # No copying: output patches inside the hole are nearer to the patches outside the hole
    # than to the original hole content (all but the odd patch of fur that happens to look
    # like the hole's; with the hole in the dataset the fill would reproduce it instead).
    P = 7
    o = torch.from_numpy(out).permute(2, 0, 1).float() / 255
    r = torch.from_numpy(src).permute(2, 0, 1).float() / 255
    q = torch.stack([o[:, y:y + P, x:x + P].reshape(-1) for y in range(28, 52 - P + 1, 2)
                     for x in range(30, 60 - P + 1, 2)])
    inside, outside = [], []
    for y in range(0, 80 - P + 1):
        for x in range(0, 96 - P + 1):
            v = r[:, y:y + P, x:x + P].reshape(-1)
            h = hole[y:y + P, x:x + P]
            if h.all():
                inside.append(v)
            elif not h.any():
                outside.append(v)
    d_in = torch.cdist(q, torch.stack(inside)).min(dim=1).values
    d_out = torch.cdist(q, torch.stack(outside)).min(dim=1).values
    print(f"hole patches nearer to the outside: {(d_out <= d_in).float().mean():.3f}")
    print(f"median d_out {d_out.median():.3f} d_in {d_in.median():.3f}")
    assert float((d_out <= d_in).float().mean()) >= 0.95
    assert float(d_out.median()) < 0.7 * float(d_in.median())


def test_inpaint_border_is_seamless(tmp_path):
    """On a texture (a deep-field photograph), the gradient across the hole's border is like
    the rest of the image's: no seam where the fill meets the kept pixels."""
    ref = _photo("hubble", (80, 96))
    mask = torch.zeros(3, 80, 96)
    mask[:, 28:52, 30:60] = 1.0
    hole = np.zeros((80, 96), dtype=bool)
    hole[28:52, 30:60] = True
    ratios = []
    for seed in (1, 2):
        _, out = _run([f"input={_save(tmp_path, ref, 'ref.png')}", "app=inpaint",
                       f"mask={_save(tmp_path, mask * 2 - 1, 'mask.png')}", *COMMON], seed)
        gy, gx = _grad_energy(out)
        border = np.concatenate([gy[27, 30:60], gy[51, 30:60], gx[28:52, 29], gx[28:52, 59]])
        interior = np.concatenate([gy[~hole[:-1]], gx[~hole[:, :-1]]])
        ratios.append(border.mean() / interior.mean())
    print(f"border / interior gradient {ratios}")
    assert max(ratios) <= 1.5


def test_outpaint_keeps_the_input_and_continues_it(tmp_path):
    """The input region is bit-identical; on a texture (deep field) the extension meets it
    without a seam."""
    ref = _photo("hubble", (64, 80))
    p = _save(tmp_path, ref, "ref.png")
    _, out = _run([f"input={p}", "app=outpaint", "output_size=[84,150]",
                   "outpaint.offset=[10,40]", *COMMON])
    src = to_uint8((ref + 1) / 2)
    assert out.shape == (84, 150, 3)
    assert np.array_equal(out[10:74, 40:120], src)
    gy, gx = _grad_energy(out)
    border = np.concatenate([gx[10:74, 39], gx[10:74, 119], gy[9, 40:120], gy[73, 40:120]])
    whole = np.concatenate([gx.ravel(), gy.ravel()]).mean()
    print(f"border / image gradient {border.mean() / whole:.3f}")
    assert border.mean() <= 1.5 * whole


def test_multiple_references_both_supply_patches(tmp_path):
    a = _save(tmp_path, _photo("chelsea", (64, 64)), "a.png")
    b = _save(tmp_path, _photo("coffee", (64, 80)), "b.png")
    job, out = _run([f"input=[{a},{b}]", *COMMON, "output_size=[64,128]"])
    P = 7
    o = torch.from_numpy(out).permute(2, 0, 1).float() / 255
    q = torch.stack([o[:, y:y + P, x:x + P].reshape(-1) for y in range(0, 64 - P + 1, 3)
                     for x in range(0, 128 - P + 1, 3)])

    def windows(img):
        img = ((img + 1) / 2).clamp(0, 1)
        return torch.stack([img[:, y:y + P, x:x + P].reshape(-1)
                            for y in range(img.shape[1] - P + 1)
                            for x in range(img.shape[2] - P + 1)])

    da = torch.cdist(q, windows(job.view.references[0][0])).min(dim=1).values
    db = torch.cdist(q, windows(job.view.references[1][0])).min(dim=1).values
    share_a = float((da < db).float().mean())
    print(f"share of output patches from reference a: {share_a:.3f}")
    assert 0.05 <= share_a <= 0.95
    # a list of one reference is the single-reference run
    _, one = _run([f"input=[{a}]", *COMMON])
    _, single = _run([f"input={a}", *COMMON])
    assert np.array_equal(one, single)


def test_analogy_follows_the_structure_with_the_style_patches(tmp_path):
    style = _save(tmp_path, _photo("coffee", (64, 64)), "style.png")
    struct_img = _photo("chelsea", (64, 80))
    struct = _save(tmp_path, struct_img, "structure.png")
    # two scales: the coarsest (32x40) must be large enough against P = 7 to hold a layout
    args = [f"input={style}", *COMMON, "sigma_min=0.01", "pyramid.num_scales=2",
            "num_steps=[6,20]"]
    job, out = _run(args + ["app=analogy", f"structure={struct}", "noise_level=0.5"])
    _, free = _run(args + ["output_size=[64,80]"])
    assert out.shape == (64, 80, 3)

    def lowpass(img):
        t = torch.from_numpy(np.asarray(img)).permute(2, 0, 1).float().mean(0, keepdim=True)
        return resize(t, (8, 10)).reshape(-1)

    target = lowpass(to_uint8((struct_img + 1) / 2))
    c_out = float(torch.corrcoef(torch.stack([lowpass(out), target]))[0, 1])
    c_free = float(torch.corrcoef(torch.stack([lowpass(free), target]))[0, 1])
    print(f"low-pass correlation with the structure: analogy {c_out:.3f}, uncond {c_free:.3f}")
    assert c_out > 0.4 and c_out > c_free + 0.2
    ref = ((job.reference + 1) / 2).clamp(0, 1)
    d = patch_nn_distance(out, ref, patch=7, max_queries=1500)["median"]
    d_struct = patch_nn_distance(out, ((struct_img + 1) / 2).clamp(0, 1), patch=7,
                                 max_queries=1500)["median"]
    assert d < d_struct  # its patches come from the style image


@pytest.mark.parametrize("args, message", [
    (["app=symmetric", "symmetry.axis=diagonal"], "symmetry.axis"),
    (["app=tileable", "tiling.direction=sideways"], "tiling.direction"),
    (["app=inpaint"], "needs mask"),
    (["app=inpaint", "mask={bad_mask}"], "same size"),
    (["app=inpaint", "mask={missing}"], "not found"),
    (["app=outpaint", "output_size=[80,120]", "outpaint.offset=[30,90]"], "outside"),
    (["app=outpaint", "output_size=[20,20]"], "larger than the canvas"),
    (["app=analogy"], "needs structure"),
    (["app=analogy", "structure={missing}"], "not found"),
])
def test_bad_app_configs_exit_2_with_a_message(tmp_path, args, message):
    ref = _save(tmp_path, _photo("coffee", (48, 64)), "ref.png")
    bad_mask = _save(tmp_path, torch.ones(3, 40, 40), "bad_mask.png")
    fmt = {"bad_mask": bad_mask, "missing": tmp_path / "nope.png"}
    r = run_cli("run", DATA.parent.parent / "configs" / "demo.yaml", f"input={ref}",
                *[a.format(**fmt) for a in args], "--out", tmp_path / "run", "--quiet")
    assert r.returncode == 2, r.stderr
    assert message in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "run").exists()  # refused before the run directory is made
