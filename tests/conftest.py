import os
import sys
from pathlib import Path

import pytest
import torch

# Keep tests deterministic and cheap on small CI machines.
torch.set_num_threads(min(2, os.cpu_count() or 1))

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "gigasid" / "data"

#: The browser the viewer tests drive (Debian's chromium; CI installs it).
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture(scope="module")
def browser():
    """A headless Chromium (playwright), or a skip when either is absent."""
    if not CHROMIUM.exists():
        pytest.skip("/usr/bin/chromium is absent (apt-get install -y chromium)")
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        try:
            yield b
        finally:
            b.close()


@pytest.fixture(scope="session")
def photo():
    """A real photograph (public domain, bundled) as (3, 256, 256) in [-1, 1]."""
    from gigasid.io.images import load_image

    return load_image(DATA / "astronaut.png") * 2 - 1


@pytest.fixture(scope="session")
def small_photo(photo):
    from gigasid.core.resample import resize

    return resize(photo, (64, 64))


def save_photo(photo, path: Path, shape: tuple[int, int]) -> Path:
    """Write ``photo`` resized to ``(H, W)`` as a PNG at ``path``."""
    from gigasid.core.resample import resize
    from gigasid.io.images import save_png, to_uint8

    save_png(to_uint8((resize(photo, shape) + 1) / 2), path)
    return path


@pytest.fixture
def photo_file(tmp_path, photo):
    """Write the photograph, resized to ``(H, W)``, as a PNG in the test's folder."""

    def make(shape: tuple[int, int], name: str = "ref.png") -> Path:
        return save_photo(photo, tmp_path / name, shape)

    return make


def run_cli(*args, cwd=None, timeout=600):
    import subprocess

    return subprocess.run([sys.executable, "-m", "gigasid", *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, timeout=timeout)


def run_here(args, run_dir) -> None:
    """``gigasid run`` of ``args`` (config path, then overrides) in this process: a run
    whose only role is to be compared against pays no interpreter start-up."""
    from gigasid.config import load_config
    from gigasid.engine.progress import Reporter
    from gigasid.engine.runner import run

    run(load_config(args[0], [str(a) for a in args[1:]]), run_dir, Reporter())


def kill_cli_when(args, ready, timeout: float = 120) -> bool:
    """Start ``gigasid *args``, SIGKILL it as soon as ``ready()`` holds; returns whether it
    was still running then (False: it finished first)."""
    import signal
    import subprocess
    import time

    proc = subprocess.Popen([sys.executable, "-m", "gigasid", *map(str, args)])
    deadline = time.time() + timeout
    while proc.poll() is None and not ready() and time.time() < deadline:
        time.sleep(0.005)
    was_running = proc.poll() is None
    if was_running:
        proc.send_signal(signal.SIGKILL)
    proc.wait()
    return was_running


@pytest.fixture(scope="session")
def vae_dirs(tmp_path_factory):
    """A 3-block AutoencoderKL (GroupNorm, mid-block attention, factor 4) and an
    AutoencoderTiny (factor 4), random weights, as model directories."""
    from diffusers import AutoencoderKL, AutoencoderTiny

    root = tmp_path_factory.mktemp("vae")
    torch.manual_seed(0)
    kl = AutoencoderKL(down_block_types=("DownEncoderBlock2D",) * 3,
                       up_block_types=("UpDecoderBlock2D",) * 3, block_out_channels=(8, 16, 16),
                       layers_per_block=1, latent_channels=4, norm_num_groups=4,
                       scaling_factor=0.5, shift_factor=0.1, use_quant_conv=False,
                       use_post_quant_conv=False)
    kl.save_pretrained(root / "kl" / "vae")  # a hub-like layout: the VAE in a subfolder
    tiny = AutoencoderTiny(encoder_block_out_channels=(8, 8, 8),
                           decoder_block_out_channels=(8, 8, 8), num_encoder_blocks=(1, 1, 1),
                           num_decoder_blocks=(1, 1, 1), latent_channels=4)
    tiny.save_pretrained(root / "tiny")
    return {"kl": root / "kl", "tiny": root / "tiny"}
