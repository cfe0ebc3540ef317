"""The input's format kept end to end: grey, RGB, RGBA; 8-bit, 16-bit and float32."""

import doctest
import json

import numpy as np
import pytest
import tifffile
import torch
import zarr
from PIL import Image

import gigasid.io.pixel_format as pf
from conftest import REPO, run_cli, run_here
from gigasid.errors import InputError
from gigasid.io.images import load_image, read_bands
from gigasid.io.pixel_format import PixelFormat, common_format, from_unit, probe_format, to_unit


@pytest.fixture(scope="module")
def grey16(tmp_path_factory):
    """A real photograph's grey values as a 16-bit TIFF spanning 620..10700 (not 0..65535)."""
    from skimage import data

    a = data.camera()[100:164, 120:216].astype(np.uint16) * 40 + 500
    path = tmp_path_factory.mktemp("grey16") / "grey16.tif"
    tifffile.imwrite(path, a)
    return path, a


def test_docstring_examples():
    assert doctest.testmod(pf).failed == 0


def test_uint16_round_trip_is_exact_through_the_window():
    rng = np.random.default_rng(0)
    a = rng.integers(1000, 60000, (40, 50, 1)).astype(np.uint16)
    fmt = pf.format_of(a)
    assert (fmt.lo, fmt.hi) == (float(a.min()), float(a.max()))
    x = to_unit(a, fmt)
    assert x.dtype == torch.float32 and float(x.min()) == 0.0 and float(x.max()) == 1.0
    # through the sampler's [-1, 1] float32 and back: every stored value comes back
    back = from_unit(((x * 2 - 1) + 1) / 2, fmt)
    np.testing.assert_array_equal(back, a)


def test_uint8_keeps_the_earlier_conversion():
    a = np.random.default_rng(1).integers(0, 256, (9, 7, 3)).astype(np.uint8)
    fmt = pf.format_of(a)
    assert fmt == pf.RGB8 and fmt.is_rgb8
    legacy = torch.from_numpy(a).to(torch.float32).permute(2, 0, 1) / 255.0
    assert torch.equal(to_unit(a, fmt), legacy)
    np.testing.assert_array_equal(from_unit(legacy, fmt), a)


def test_float_and_constant_images():
    a = np.linspace(-3.0, 40.0, 60, dtype=np.float32).reshape(6, 10, 1)
    fmt = pf.format_of(a)
    assert fmt.dtype == "float32" and (fmt.lo, fmt.hi) == (-3.0, 40.0)
    np.testing.assert_allclose(from_unit(to_unit(a, fmt), fmt), a, rtol=0, atol=1e-5)
    flat = pf.format_of(np.full((4, 4), 7, np.uint16))
    assert flat.hi > flat.lo  # a constant image still has a usable window
    with pytest.raises(InputError, match="NaN"):
        pf.format_of(np.array([[np.nan, 1.0]], np.float32))


def test_grey_alpha_becomes_rgba_and_bad_channel_counts_are_refused():
    la = np.dstack([np.full((3, 3), 10, np.uint8), np.full((3, 3), 200, np.uint8)])
    fmt = pf.format_of(la)
    assert fmt.channels == 4
    x = to_unit(la, fmt)
    assert torch.equal(x[0], x[2]) and float(x[3, 0, 0]) == pytest.approx(200 / 255)
    with pytest.raises(InputError, match="5 channels"):
        pf.format_of(np.zeros((3, 3, 5), np.uint8))


def test_references_must_agree():
    a = PixelFormat(1, "uint16", 100.0, 900.0)
    b = PixelFormat(1, "uint16", 50.0, 800.0)
    assert common_format([a, b]) == PixelFormat(1, "uint16", 50.0, 900.0)
    with pytest.raises(InputError, match="disagree.*16-bit grey.*8-bit RGB"):
        common_format([a, pf.RGB8], ["a.tif", "b.png"])


def test_probe_reads_the_files_format(tmp_path, grey16):
    path, a = grey16
    assert probe_format(path) == PixelFormat(1, "uint16", float(a.min()), float(a.max()))
    rgb16 = np.dstack([a, a // 2, a // 3]).astype(np.uint16)
    import pyvips

    pyvips.Image.new_from_array(rgb16).copy(interpretation="rgb16").pngsave(
        str(tmp_path / "rgb16.png"))
    got = probe_format(tmp_path / "rgb16.png")
    assert (got.channels, got.dtype, got.lo, got.hi) == (3, "uint16", float(rgb16.min()),
                                                         float(rgb16.max()))
    # Pillow alone would read this file as 8-bit: the values must be the 16-bit ones
    x = load_image(tmp_path / "rgb16.png", got)
    np.testing.assert_array_equal(from_unit(x, got), rgb16)
    Image.fromarray(np.zeros((5, 6, 4), np.uint8)).save(tmp_path / "rgba.png")
    assert probe_format(tmp_path / "rgba.png") == PixelFormat(4, "uint8")
    Image.fromarray(np.zeros((5, 6), np.uint8)).save(tmp_path / "grey.png")
    assert probe_format(tmp_path / "grey.png") == PixelFormat(1, "uint8")
    # without a format (masks, guides) images still load as three channels
    assert load_image(tmp_path / "grey.png").shape == (3, 5, 6)


def test_large_files_are_probed_streamed(monkeypatch, grey16):
    path, a = grey16
    import gigasid.io.images as images

    monkeypatch.setattr(images, "MAX_IN_MEMORY_PIXELS", 100)
    assert probe_format(path) == PixelFormat(1, "uint16", float(a.min()), float(a.max()))


def test_streamed_bands_equal_the_whole_decode(grey16):
    path, _ = grey16
    fmt = probe_format(path)
    whole = load_image(path, fmt)
    bands = torch.cat([b for _, b in read_bands(path, 16, fmt)], dim=1)
    assert torch.equal(bands, whole)


JOB = [REPO / "configs" / "uncond.yaml", "num_samples=1", "num_steps=3", "seed=4"]


def _run(tmp_path, name, *args):
    out = tmp_path / name
    r = run_cli("run", *JOB, *args, "--out", out, "--quiet")
    assert r.returncode == 0, r.stderr
    return out


def test_16bit_grey_in_gives_16bit_grey_out_in_every_format(tmp_path, grey16):
    path, a = grey16
    out = _run(tmp_path, "run", f"input={path}", "engine.store=zarr", "engine.tile_size=32",
               "output.formats=[png,tiff,ome-zarr,dzi,viewer,preview]")
    png = Image.open(out / "sample_000.png")
    assert png.mode == "I;16"
    img = np.asarray(png)
    assert img.shape == a.shape and img.dtype == np.uint16
    # the values span the input's range (patches of the input), never beyond it
    assert a.min() <= img.min() and img.max() <= a.max()
    assert img.max() - img.min() >= 0.8 * (int(a.max()) - int(a.min()))
    tif = tifffile.imread(out / "out" / "image.tif")
    np.testing.assert_array_equal(tif, img)
    ome = zarr.open_group(str(out / "out" / "image.ome.zarr"), mode="r")
    np.testing.assert_array_equal(np.asarray(ome["0"])[0], img)
    assert np.asarray(zarr.open_array(str(out / "out" / "image.zarr"), mode="r")).dtype == np.uint16
    # the viewers get an 8-bit rendering through the input's window, stated in provenance
    tile = Image.open(next((out / "out" / "image_files").glob("*/0_0.jpg")))
    assert tile.mode == "L"
    prov = json.loads((out / "out" / "provenance.json").read_text())
    assert prov["pixel_format"]["dtype"] == "uint16"
    assert prov["pixel_format"]["display_window"] == [float(a.min()), float(a.max())]
    # a re-export keeps the type and renders the viewers' tiles through the same window
    r = run_cli("export", out, "--format", "tiff", "--format", "jpeg", "--to", tmp_path / "re")
    assert r.returncode == 0, r.stderr
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "re" / "image.tif"), img)
    jpg = np.asarray(Image.open(tmp_path / "re" / "image.jpg"), dtype=np.float64)
    want = (img.astype(np.float64) - a.min()) / (int(a.max()) - int(a.min())) * 255
    assert np.abs(jpg - want).mean() < 3.0
    # tiles and the whole image give the same bytes
    whole = tmp_path / "whole"
    run_here([*JOB, f"input={path}", "output.formats=[png]"], whole)
    np.testing.assert_array_equal(np.asarray(Image.open(whole / "sample_000.png")), img)
    # so does a reference decoded in bands into on-disk levels
    disk = tmp_path / "disk"
    run_here([*JOB, f"input={path}", "output.formats=[png]", "engine.store=zarr",
              "engine.reference=disk"], disk)
    np.testing.assert_array_equal(np.asarray(Image.open(disk / "sample_000.png")), img)


def test_rgba_and_float_inputs_keep_their_format(tmp_path, photo):
    from gigasid.io.images import to_uint8

    rgb = to_uint8((photo[:, ::4, ::4] + 1) / 2)
    alpha = np.tile(np.linspace(0, 255, rgb.shape[1]).astype(np.uint8), (rgb.shape[0], 1))
    Image.fromarray(np.dstack([rgb, alpha])).save(tmp_path / "rgba.png")
    out = _run(tmp_path, "rgba", f"input={tmp_path / 'rgba.png'}", "output.formats=[png,tiff]")
    got = np.asarray(Image.open(out / "sample_000.png"))
    assert got.shape == (*rgb.shape[:2], 4) and got.dtype == np.uint8
    assert got[:, :, 3].std() > 10  # alpha is generated with the colour, not dropped
    np.testing.assert_array_equal(tifffile.imread(out / "out" / "image.tif"), got)

    radiance = (rgb.astype(np.float32) / 255.0) ** 2 * 40.0
    tifffile.imwrite(tmp_path / "hdr.tif", radiance, photometric="rgb")
    out = _run(tmp_path, "hdr", f"input={tmp_path / 'hdr.tif'}", "output.formats=[tiff,png]")
    tif = tifffile.imread(out / "out" / "image.tif")
    assert tif.dtype == np.float32 and tif.shape == radiance.shape
    assert radiance.min() - 1e-4 <= tif.min() and tif.max() <= radiance.max() + 1e-4
    assert tif.max() > 20.0  # not clipped to [0, 1]
    import pyvips

    png = pyvips.Image.new_from_file(str(out / "sample_000.png"))
    assert (png.format, png.bands) == ("ushort", 3)  # PNG holds no floats: 16-bit, windowed


def test_formats_an_app_or_codec_cannot_take_are_refused_before_work(tmp_path, grey16):
    path, _ = grey16
    from gigasid.engine.job import check_format, get_app

    grey = probe_format(path)

    class LatentCodec:
        factor = 8

    with pytest.raises(InputError, match="latent.enabled: false"):
        check_format(grey, get_app("uncond"), LatentCodec())
    with pytest.raises(InputError, match="text_style.*RGB"):
        check_format(grey, get_app("text_style"), None)
    check_format(grey, get_app("inpaint"), None)
    # references of different formats: exit 2, nothing written
    r = run_cli("run", *JOB, f"input=[{path},builtin:astronaut]", "--out", tmp_path / "two")
    assert r.returncode == 2 and "disagree" in r.stderr
    assert not (tmp_path / "two").exists()


def test_16bit_inpaint_keeps_every_known_value(tmp_path, grey16):
    path, a = grey16
    mask = np.zeros(a.shape, np.uint8)
    mask[20:40, 30:70] = 255
    Image.fromarray(mask).save(tmp_path / "mask.png")
    out = tmp_path / "inpaint"
    run_here([REPO / "configs" / "inpaint.yaml", f"input={path}", f"mask={tmp_path / 'mask.png'}",
              "num_samples=1", "num_steps=3", "output.formats=[png]"], out)
    got = np.asarray(Image.open(out / "sample_000.png"))
    hole = mask > 0
    assert got.dtype == np.uint16
    np.testing.assert_array_equal(got[~hole], a[~hole])  # bit for bit, in 16 bits
    assert a.min() <= got[hole].min() and got[hole].max() <= a.max()
    assert got[hole].std() > 0.3 * a.std()  # a textured fill, not a flat one


@pytest.mark.parametrize("mode", ["L", "RGB", "RGBA", "LA", "P", "1", "I;16"])
def test_header_probe_agrees_with_a_full_decode(tmp_path, mode):
    from gigasid.io.images import decode_native

    rng = np.random.default_rng(5)
    rgb = Image.fromarray(rng.integers(0, 256, (9, 11, 3)).astype(np.uint8))
    im = (rgb.convert(mode) if mode != "I;16"
          else Image.fromarray(rng.integers(0, 60000, (9, 11)).astype(np.uint16)))
    for name in ("x.png", "x.tif"):
        if mode in ("P", "1", "LA") and name.endswith(".tif"):
            continue
        im.save(tmp_path / name)
        assert probe_format(tmp_path / name) == pf.format_of(decode_native(tmp_path / name))
