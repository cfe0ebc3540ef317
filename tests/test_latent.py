"""The latent codec: tiny randomly initialised diffusers VAEs saved with save_pretrained and
loaded through the user's code path; streamed encode/decode vs the whole-image call; latent
jobs (tile invariance, resume, tileable, symmetric); every way the weights can be missing."""

import json
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from conftest import DATA, REPO, run_cli, run_here

pytest.importorskip("diffusers")


def _codec(path, **kw):
    from gigasid.codecs.vae import VaeCodec, load_vae, resolve_vae

    src = resolve_vae(str(path), "vae")
    return VaeCodec(src, load_vae(src, torch.float32, "cpu"), dtype=torch.float32,
                    device="cpu", **kw)


def _psnr(a, b):
    return float(10 * torch.log10(4.0 / ((a - b) ** 2).mean()))


@pytest.fixture(scope="module")
def pixels():
    from gigasid.io.images import load_image

    return load_image(DATA / "coffee.png")[:, :176, :248] * 2 - 1  # 44 x 62 latent


def test_fixed_groupnorm_on_the_whole_image_is_torch_groupnorm(vae_dirs):
    from gigasid.codecs.fixed_stats import FixedStatistics

    c = _codec(vae_dirs["kl"])
    z = torch.randn(1, 4, 30, 38, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = c._decode_net(z)
        gn = FixedStatistics(c.model.decoder)
        assert len(gn.layers) > 5
        with gn.measure([(0.0, 1.0, 0.0, 1.0)]):
            measured = c._decode_net(z)
        with gn.apply():
            applied = c._decode_net(z)
    assert torch.allclose(measured, ref, atol=1e-5)
    assert torch.allclose(applied, ref, atol=1e-5)


def _streamed_and_whole(codec, pixels):
    """``(streamed encode, whole encode, streamed decode, whole decode)`` of ``pixels``
    (the decodes both of the whole-image latent)."""
    from gigasid.core.domain import Domain

    z = codec.encode(pixels)
    with torch.no_grad():
        z_whole = codec._encode_net(pixels[None])[0]
        y_whole = codec._decode_net(z_whole[None])[0]
    dec = codec.decoder(lambda r: z_whole[:, r[0]:r[1], r[2]:r[3]], Domain.make(z.shape[1:]))
    _, h, w = pixels.shape
    return z, z_whole, dec((0, h, 0, w)), y_whole


@pytest.mark.parametrize("kind", ["kl", "tiny"])
def test_streamed_equals_whole_call_when_the_image_fits_the_budget(vae_dirs, pixels, kind):
    c = _codec(vae_dirs[kind], tile=12, halo=4)  # 12 divides neither 44 nor 62
    z, z_whole, y, y_whole = _streamed_and_whole(c, pixels)
    assert torch.allclose(z, z_whole, atol=1e-4)
    assert torch.allclose(y, y_whole, atol=1e-4)


def test_tiny_autoencoder_tiles_exactly(vae_dirs, pixels):
    """AutoencoderTiny has a bounded receptive field and no GroupNorm: with a halo that
    covers it, tiles equal the whole call even when the image is over the budget."""
    c = _codec(vae_dirs["tiny"], tile=12, halo=8, stats_pixels=4096)
    z, z_whole, y, y_whole = _streamed_and_whole(c, pixels)
    assert torch.allclose(z, z_whole, atol=1e-5)
    assert torch.allclose(y, y_whole, atol=1e-5)


def _tiles_with(fixed, codec, z, tile, halo):
    """Decode ``z`` tile by tile with the image-wide state ``fixed`` already measured."""
    from gigasid.codecs.tiles import tile_grid
    from gigasid.core.domain import Domain, read_window

    dom = Domain.make(z.shape[1:])
    f = codec.factor
    out = torch.zeros(3, z.shape[1] * f, z.shape[2] * f)
    with torch.no_grad():
        for t in tile_grid(dom, tile, halo):
            w = read_window(lambda r: z[:, r[0]:r[1], r[2]:r[3]], dom, t.window)
            with fixed.apply():
                o = codec._decode_net(w[None])[0]
            y0, y1, x0, x1 = (v * f for v in t.core)
            out[:, y0:y1, x0:x1] = codec._crop(t, o, f)
    return out


def test_tiles_with_fixed_statistics_match_the_whole_decode(vae_dirs, pixels):
    """With the whole image's GroupNorm statistics and attention context, the tiled decode's
    error comes from the halo only: >= 40 dB on the tiny KL VAE."""
    from gigasid.codecs.fixed_stats import FixedStatistics

    c = _codec(vae_dirs["kl"], tile=12, halo=6)
    with torch.no_grad():
        z = c._encode_net(pixels[None])[0]
        y_whole = c._decode_net(z[None])[0]
        gn = FixedStatistics(c.model.decoder)
        with gn.measure([(0.0, 1.0, 0.0, 1.0)]):
            c._decode_net(z[None])
    out = _tiles_with(gn, c, z, 12, 6)
    assert _psnr(out, y_whole) >= 40.0
    # and without a halo it is clearly worse: the halo is what buys the agreement
    out0 = _tiles_with(gn, c, z, 12, 0)
    assert _psnr(out0, y_whole) < _psnr(out, y_whole) - 3


@pytest.mark.parametrize("budget", [2**30, 4096])
def test_periodic_decode_of_a_periodic_latent_is_periodic(vae_dirs, budget):
    """On a torus, decoding a circularly shifted latent gives the shifted image: exactly as
    one ring (whole call, circular padding), within the halo's error when tiled."""
    from gigasid.core.domain import Domain

    c = _codec(vae_dirs["kl"], tile=12, halo=6, stats_pixels=budget)
    z = torch.randn(4, 24, 36, generator=torch.Generator().manual_seed(3))
    dom = Domain.make((24, 36), ("torus", "torus"))
    shifted = torch.roll(z, shifts=(5, 11), dims=(1, 2))
    a = c.decoder(lambda r: z[:, r[0]:r[1], r[2]:r[3]], dom)((0, 96, 0, 144))
    b = c.decoder(lambda r: shifted[:, r[0]:r[1], r[2]:r[3]], dom)((0, 96, 0, 144))
    rolled = torch.roll(a, shifts=(20, 44), dims=(1, 2))
    if budget > 2**20:
        assert torch.allclose(rolled, b, atol=1e-4)
    else:
        assert _psnr(rolled, b) >= 30.0
    # the wrap seam is no stronger than the image's interior column steps
    d_wrap = (a[:, :, 0] - a[:, :, -1]).abs().mean()
    d_in = (a[:, :, 1:] - a[:, :, :-1]).abs().mean()
    assert d_wrap <= 1.5 * d_in


def _latent_args(ref, vae, *extra):
    return [REPO / "configs" / "demo.yaml", f"input={ref}", "num_samples=1", "patch_size=5",
            "num_steps=4", "eta=0.5", "pyramid.min_short_side=9", "latent.enabled=true",
            f"latent.vae={vae}", "latent.tile=12", "latent.halo=4", "latent.stats_pixels=4096",
            "output.formats=[png]", *extra]


def test_latent_job_is_tile_invariant_and_resumes_to_identical_bytes(tmp_path, photo_file,
                                                                     vae_dirs):
    """A latent job in 16-px tiles, SIGKILLed mid-run and resumed, gives the bytes of the
    same job computed as one region (tile invariance and resume in one comparison)."""
    ref = photo_file((96, 136))
    base = _latent_args(ref, vae_dirs["kl"], "output_size=[96,128]", "engine.store=zarr")
    whole = tmp_path / "t0"
    run_here([*base, "engine.tile_size=0"], whole)
    args = [*base, "engine.tile_size=16"]
    killed = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "gigasid", "run", *map(str, args), "--out",
                             str(killed), "--quiet"])
    deadline = time.time() + 120
    marks = killed / "markers"
    while proc.poll() is None and time.time() < deadline and (
            not marks.exists() or len(list(marks.iterdir())) < 12):
        time.sleep(0.005)
    was_killed = proc.poll() is None
    if was_killed:
        proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert was_killed, "the job finished before it could be killed"
    plan = json.loads((killed / "plan.json").read_text())
    assert plan["codec"]["name"] == "vae" and plan["pixel_shape"] == [96, 128]
    assert plan["scales"][0]["shape"] == [24, 32]  # latent pixels
    assert plan["scales"][0]["tile"] == 16
    assert list((killed / "latent").glob("ref0-*.pt"))
    r = run_cli("run", *args, "--out", killed, "--quiet")
    assert r.returncode == 0, r.stderr
    assert (killed / "sample_000.png").read_bytes() == (whole / "sample_000.png").read_bytes()


def test_symmetric_latent_output_is_exactly_symmetric(tmp_path, photo_file, vae_dirs):
    from PIL import Image

    ref = photo_file((96, 128))
    out = tmp_path / "sym"
    run_here(_latent_args(ref, vae_dirs["kl"], "app=symmetric", "symmetry.axis=both",
                          "output_size=[88,120]"), out)
    img = np.asarray(Image.open(out / "sample_000.png"))
    assert img.shape == (88, 120, 3)
    assert np.array_equal(img, img[:, ::-1]) and np.array_equal(img, img[::-1])
    assert img.std() > 1.0  # not a constant image


def test_tiny_autoencoder_job_runs_and_reports_codec_progress(tmp_path, photo_file, vae_dirs):
    ref = photo_file((64, 96))
    out = tmp_path / "tiny"
    r = run_cli("run", *_latent_args(ref, vae_dirs["tiny"], "app=tileable"), "--out", out)
    assert r.returncode == 0, r.stderr
    assert (out / "sample_000.png").is_file()
    # plain progress lines (stderr is not a terminal) cover the VAE's encode and decode
    from gigasid.codecs.tiles import tile_grid
    from gigasid.core.domain import Domain

    n = len(tile_grid(Domain.make((16, 24), ("torus", "torus")), 12, 4))
    assert "VAE encode: tile 4/4" in r.stderr  # 16 x 24 latent in 12-px tiles, a plane
    assert f"VAE decode: tile {n}/{n}" in r.stderr
    events = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert any(e.get("event") == "codec_tile" and e.get("what") == "decode" for e in events)


def test_large_input_is_encoded_from_a_mapped_file(tmp_path, photo_file, vae_dirs,
                                                  monkeypatch):
    """engine.reference: disk (automatic above 64 MP): the input is decoded band by band to
    a memory-mapped file that the encoder's tiles read window by window; the latent equals
    the in-memory encode bit for bit and the file is gone once the latent is cached."""
    from gigasid.codecs.vae import VaeCodec
    from gigasid.engine.job import encode_image
    from gigasid.io.images import file_fingerprint

    path = photo_file((70, 102))
    codec = _codec(vae_dirs["kl"], tile=6, halo=2, stats_pixels=64 * 64)
    crop = codec.crop_box((70, 102))
    fp = file_fingerprint(path)
    level = tmp_path / "disk" / "latent" / "ref0-pixels" / "level0.f32"
    seen = []
    encode = VaeCodec.encode

    def spy(self, pixels, reporter=None):
        seen.append((level.is_file(), pixels.is_contiguous()))
        return encode(self, pixels, reporter)

    monkeypatch.setattr(VaeCodec, "encode", spy)
    whole = encode_image(codec, path, crop, tmp_path / "mem", fp, name="ref0")
    streamed = encode_image(codec, path, crop, tmp_path / "disk", fp, name="ref0", stream=True)
    assert seen == [(False, True), (True, False)]  # a view of the mapped file, not a copy
    assert torch.equal(whole, streamed)
    assert not level.parent.exists()
    assert list((tmp_path / "disk" / "latent").glob("ref0-*.pt"))


def _refused(r, *words):
    assert r.returncode == 2, (r.returncode, r.stderr)
    assert "Traceback" not in r.stderr
    for w in words:
        assert w in r.stderr, r.stderr


def test_missing_vae_directory_is_refused_before_the_run_dir(tmp_path, photo_file):
    ref = photo_file((64, 64))
    out = tmp_path / "run"
    r = run_cli("run", *_latent_args(ref, tmp_path / "nowhere"), "--out", out)
    _refused(r, "latent.vae", "save_pretrained")
    assert not out.exists()


def test_uncached_hub_model_offline_says_how_to_get_it(tmp_path, photo_file):
    import os

    ref = photo_file((64, 64))
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf"))
    r = subprocess.run([sys.executable, "-m", "gigasid", "run",
                        *map(str, _latent_args(ref, "black-forest-labs/FLUX.1-schnell")),
                        "--out", str(tmp_path / "run")], capture_output=True, text=True,
                       env=env, timeout=300)
    _refused(r, "hf auth login", "FLUX.1-schnell")
    assert not (tmp_path / "run").exists()


def test_corrupt_weights_are_refused_and_leave_an_existing_run_alone(tmp_path, photo_file,
                                                                    vae_dirs):
    import shutil

    ref = photo_file((64, 64))
    bad = tmp_path / "bad"
    shutil.copytree(vae_dirs["tiny"], bad)
    for w in bad.glob("*.safetensors"):
        w.write_bytes(b"not a safetensors file")
    out = tmp_path / "run"
    run_here(_latent_args(ref, vae_dirs["tiny"], "num_steps=2"), out)
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    r = run_cli("run", *_latent_args(ref, bad, "num_steps=2"), "--out", out)
    _refused(r, "corrupt")
    after = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert before == after


def test_pixel_only_apps_refuse_latent_mode(tmp_path, photo_file, vae_dirs):
    ref = photo_file((64, 64))
    r = run_cli("run", *_latent_args(ref, vae_dirs["kl"], "app=inpaint",
                                     f"mask={DATA / 'rocket_mask.png'}"),
                "--out", tmp_path / "run")
    _refused(r, "pixel space only", "latent.enabled")


def test_plan_shows_latent_shapes_without_loading_weights(tmp_path, photo_file, vae_dirs):
    ref = photo_file((100, 130))  # cropped to 96 x 128 (multiples of 8)
    r = run_cli("plan", *_latent_args(ref, vae_dirs["kl"]))
    assert r.returncode == 0, r.stderr
    assert "latent px (4 ch, x4)" in r.stdout and "128x96 -> " not in r.stdout
    assert "32x24" in r.stdout  # the finest scale: 128x96 px / 4
