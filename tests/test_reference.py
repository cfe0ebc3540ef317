"""Large references: decoded in bands, pyramid built band by band into memory-mapped files."""

import numpy as np
import pytest
import torch

from conftest import REPO, run_cli
from gigasid.core.pyramid import build_pyramid
from gigasid.engine.reference import build_levels_on_disk
from gigasid.errors import InputError
from gigasid.io.images import load_image, read_bands

SHAPES = [(300, 420), (225, 315), (169, 237), (127, 178), (60, 84)]


def test_bands_equal_whole_decode(photo_file):
    path = photo_file((300, 420))
    bands = list(read_bands(path, rows=64))
    assert [y0 for y0, _ in bands] == [0, 64, 128, 192, 256]
    assert torch.equal(torch.cat([b for _, b in bands], dim=1), load_image(path))


def test_grey_and_16_bit_bands(tmp_path):
    import tifffile
    from PIL import Image

    grey = np.arange(40 * 50, dtype=np.uint8).reshape(40, 50)
    Image.fromarray(grey).save(tmp_path / "g.png")
    deep = (np.arange(40 * 50 * 3, dtype=np.uint32) * 37 % 65536).astype(np.uint16)
    tifffile.imwrite(tmp_path / "d.tif", deep.reshape(40, 50, 3))
    for name in ("g.png", "d.tif"):
        got = torch.cat([b for _, b in read_bands(tmp_path / name, rows=16)], dim=1)
        assert torch.equal(got, load_image(tmp_path / name)), name


def test_truncated_input_is_reported(photo_file, tmp_path):
    data = photo_file((300, 420)).read_bytes()
    bad = tmp_path / "cut.png"
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match="corrupt or truncated"):
        list(read_bands(bad))


def test_disk_pyramid_is_bit_identical_and_reused(photo_file, tmp_path):
    path = photo_file((300, 420))
    want = build_pyramid(load_image(path) * 2 - 1, SHAPES)
    folder = tmp_path / "reference"
    got = build_levels_on_disk(path, SHAPES, folder, "fp1")
    assert all(torch.equal(a, b) for a, b in zip(want, got, strict=True))
    stamp = (folder / "level2.f32").stat().st_mtime_ns
    build_levels_on_disk(path, SHAPES, folder, "fp1")  # reused: nothing rewritten
    assert (folder / "level2.f32").stat().st_mtime_ns == stamp
    got[1][0, 0, 0] += 1.0  # copy-on-write: never reaches the file
    assert torch.equal(build_levels_on_disk(path, SHAPES, folder, "fp1")[1], want[1])
    build_levels_on_disk(path, SHAPES, folder, "other input")  # fingerprint changed: rebuilt
    assert (folder / "level2.f32").stat().st_mtime_ns != stamp
    assert not list(folder.glob("*.partial"))


def test_run_with_reference_on_disk_gives_same_bytes(tmp_path, photo_file):
    ref = photo_file((72, 96))
    args = [REPO / "configs" / "demo.yaml", f"input={ref}", "num_samples=1", "patch_size=7",
            "num_steps=4", "pyramid.min_short_side=14", "engine.store=zarr",
            "engine.tile_size=32", "output.formats=[png]"]
    a, b = tmp_path / "mem", tmp_path / "disk"
    assert run_cli("run", *args, "engine.reference=memory", "--out", a, "--quiet").returncode == 0
    r = run_cli("run", *args, "engine.reference=disk", "--out", b, "--quiet")
    assert r.returncode == 0, r.stderr
    assert (b / "reference" / "levels.json").is_file()
    assert not (a / "reference").exists()
    assert (a / "sample_000.png").read_bytes() == (b / "sample_000.png").read_bytes()
