"""Text-guided style (app text_style) with a tiny randomly initialised CLIP (no weights can be
downloaded): loading, the guidance's effect, strength 0 == reconstruct, provenance, engine ==
oracle, kill/resume, and every missing piece -> exit 2 before any work."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch

from conftest import REPO, kill_cli_when, run_cli
from gigasid.apps.base import ScaleProgram, tensor_init
from gigasid.apps.text_style import TextStyle
from gigasid.config import load_config
from gigasid.core.sampler import sample
from gigasid.engine.execute import sample_once
from gigasid.engine.job import prepare, reference_shapes
from gigasid.engine.progress import Reporter
from gigasid.engine.runner import run
from gigasid.engine.transition import run_transition
from gigasid.errors import ConfigError, GigasidError, InputError
from gigasid.metrics import patch_nn_distance

sys.path.insert(0, str(REPO / "tools"))
from random_clip import write_random_clip  # noqa: E402

PRESET = REPO / "configs" / "text_style.yaml"


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    """A tiny random CLIP (vision + text towers) and tokenizer saved with save_pretrained."""
    return write_random_clip(tmp_path_factory.mktemp("clip") / "tiny")


@pytest.fixture(scope="module")
def content(tmp_path_factory):
    """A real photograph, 64x56 px: input_resize_to=48 brings it to 48x42 (non-square)."""
    from conftest import DATA
    from gigasid.core.resample import resize
    from gigasid.io.images import load_image, save_png, to_uint8

    p = tmp_path_factory.mktemp("content") / "photo.png"
    save_png(to_uint8((resize(load_image(DATA / "astronaut.png") * 2 - 1, (64, 56)) + 1) / 2), p)
    return p


def _args(content, clip, *extra):
    return [f"input={content}", "input_resize_to=48", "num_steps=20", "noise_level=0.5",
            "denoiser.backend=exact", "clip.n_aug=4", f"clip.model={clip}", *extra]


def _cfg(content, clip, *extra):
    return load_config(PRESET, _args(content, clip, *extra))


class Events(Reporter):
    """Keeps the guidance events; optionally stops the run (like a kill) at the n-th event
    of a kind."""

    def __init__(self, stop_kind: str | None = None, stop_at: int = 0):
        self.guidance: list[dict] = []
        self.counts: dict[str, int] = {}
        self.stop_kind, self.stop_at = stop_kind, stop_at

    def event(self, kind, **d):
        if kind == "guidance":
            self.guidance.append(d)
        self.counts[kind] = self.counts.get(kind, 0) + 1
        if kind == self.stop_kind and self.counts[kind] == self.stop_at:
            raise KeyboardInterrupt


def _fixed_loss(job, image01: torch.Tensor, draws: int = 6) -> float:
    """The loss the guidance optimises, averaged over fixed random draws (same for every
    image compared)."""
    from gigasid.apps.text_style import clip_loss

    app = job.app
    with torch.no_grad():
        return float(np.mean([float(clip_loss(app.clip, app.text_emb, image01.clamp(0, 1), 8,
                                              1.0, torch.Generator().manual_seed(100 + i)))
                              for i in range(draws)]))


# ----------------------------------------------------------------------------- loading


def test_loader_reads_a_saved_model_and_tokenizer(tiny_clip):
    from gigasid.models.clip import TEMPLATES, load_clip

    clip = load_clip(str(tiny_clip))
    txt = clip.encode_texts([t.format("Van Gogh style") for t in TEMPLATES])
    assert txt.shape == (14, 16) and torch.allclose(txt.norm(dim=-1), torch.ones(14))
    assert not torch.allclose(txt[0], txt[1])  # the templates are different prompts
    views = torch.rand(2, 3, 40, 72, requires_grad=True)  # non-square, not the model's 32 px
    emb = clip.encode_images(views)
    assert emb.shape == (2, 16)
    (g,) = torch.autograd.grad(emb[:, 0].sum(), views)
    assert g.abs().sum() > 0  # gradients reach the pixels...
    assert all(not p.requires_grad for p in clip.model.parameters())  # ...never the weights


def test_loader_errors_say_how_to_get_weights(tiny_clip, tmp_path):
    import shutil

    from gigasid.models.clip import ClipModelError, load_clip

    with pytest.raises(ClipModelError, match="hf download openai/clip-vit-base-patch32"):
        load_clip("someone/not-a-cached-model")
    with pytest.raises(ClipModelError, match="no directory"):
        load_clip("./no/such/folder")
    no_tok = tmp_path / "model_only"
    no_tok.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy(tiny_clip / name, no_tok / name)
    with pytest.raises(ClipModelError, match="save_pretrained"):
        load_clip(str(no_tok))


def test_augmented_views_are_deterministic_and_differentiable():
    from gigasid.models.augment import views

    img = torch.rand(3, 30, 50, requires_grad=True)
    a = views(img, 5, torch.Generator().manual_seed(1), 1.0, short=24, long_cap=34)
    b = views(img, 5, torch.Generator().manual_seed(1), 1.0, short=24, long_cap=34)
    c = views(img, 5, torch.Generator().manual_seed(2), 1.0, short=24, long_cap=34)
    assert a.shape == (5, 3, 24, 34) and torch.equal(a, b) and not torch.equal(a, c)
    assert float(a.detach().min()) >= 0.0 and float(a.detach().max()) <= 1.0
    (g,) = torch.autograd.grad(a.sum(), img)
    assert g.abs().sum() > 0


def test_guidance_math():
    from gigasid.core.guidance import guided_update, momentum_mix, soft_threshold

    g = torch.zeros(3, 5, 5)
    g[0] = torch.arange(25.0).view(5, 5)  # pixel norms 0..24: the median is 12
    shrunk, mask = soft_threshold(g, 0.5)
    assert int(mask.sum()) == 12  # fill_factor 0.5: the pixels above the median
    assert torch.all(shrunk[:, ~mask[0]] == 0)
    assert torch.allclose(shrunk[0][mask[0]], g[0][mask[0]] - 12.0)  # shrunk by tau
    x = torch.full((3, 5, 5), 0.1)
    out = guided_update(x, g, 0.5, 0.5)
    m = mask.expand_as(x)
    step = out - x  # energy-normalised: |step| on M = gamma |x| on M
    assert torch.isclose(step[m].norm(), 0.5 * x[m].norm(), rtol=1e-5)
    assert torch.equal(out[~m], x[~m])
    assert torch.equal(momentum_mix(x, None, 0.1), x)
    assert torch.allclose(momentum_mix(x, torch.zeros_like(x), 0.1), 0.1 * x)


# ----------------------------------------------------------------------------- behaviour


def test_strength_zero_is_exactly_reconstruct(content):
    """No CLIP needed at strength 0: the model path does not even exist."""
    job = prepare(_cfg(content, "/no/such/clip", "guidance.strength=0"))
    rec = prepare(load_config(PRESET, _args(content, "unused") + ["app=reconstruct"]))
    assert job.plan.scales[0].shape == (48, 42)  # input_resize_to applied
    assert torch.equal(sample_once(job, 3), sample_once(rec, 3))


def test_guidance_moves_towards_the_text(content, tiny_clip):
    ev = Events()
    job = prepare(_cfg(content, tiny_clip), ev)
    out = sample_once(job, 3)
    plain = sample_once(prepare(_cfg(content, tiny_clip, "guidance.strength=0")), 3)
    assert float((out - plain).abs().mean()) > 0.02  # the guidance changed the image
    # ... towards the text: the loss it optimises is lower than the plain reconstruction's
    loss_out, loss_plain = _fixed_loss(job, out), _fixed_loss(job, plain)
    assert loss_out < loss_plain - 0.01, (loss_out, loss_plain)
    # ... and down over the guided steps (each step's loss is logged)
    losses = [e["clip_loss"] for e in ev.guidance]
    start = job.view.schedule(0).index_for_noise_level(0.5)
    assert [e["t"] for e in ev.guidance] == list(range(start, 1, -1))  # last: unguided
    half = len(losses) // 2
    assert np.mean(losses[half:]) < np.mean(losses[:half]), losses


def test_output_is_made_of_the_photos_patches(content, tiny_clip):
    """Provenance at the last step. At strength 0.5 the output differs from the plain
    reconstruction yet every patch is (nearly) one of the photo's; at full strength the tiny
    random CLIP's gradients pull it further off (median distance ~0.05-0.08 on [0, 1])."""
    job = prepare(_cfg(content, tiny_clip, "guidance.strength=0.5"))
    out = sample_once(job, 3).clamp(0, 1)
    plain = sample_once(prepare(_cfg(content, tiny_clip, "guidance.strength=0")), 3)
    assert float((out - plain).abs().mean()) > 0.001  # strength 0 gives exactly 0
    ref = ((job.reference + 1) / 2).clamp(0, 1)
    d = patch_nn_distance(out, ref, patch=7)["median"]
    d_noise = patch_nn_distance(torch.rand_like(ref), ref, patch=7)["median"]
    assert d < 0.1 * d_noise, (d, d_noise)


def test_engine_equals_core_sampler(content, tiny_clip):
    seed = 5
    job = prepare(_cfg(content, tiny_clip))
    ctx, sch = job.contexts[0], job.contexts[0].schedule
    full = (0, *ctx.shape[:1], 0, ctx.shape[1])
    prog = job.program(0, seed)
    k = next(i for i, tr in enumerate(prog.transitions) if tr.t_to < tr.t_from)
    x0 = sample(job.contexts, [ScaleProgram(prog.init, prog.transitions[:k])], seed)
    # Two guided transitions (the second uses the first's momentum state) from the same x_t:
    # the two implementations agree to float rounding.
    two = prog.transitions[k:k + 2]
    oracle = sample(job.contexts, [ScaleProgram(tensor_init(x0), two,
                                                estimate=job.program(0, seed).estimate)], seed)
    hooked = job.program(0, seed)
    x = x0
    for tr in two:
        x = run_transition(ctx, hooked, tr, full, lambda w, s=x: s[:, w[0]:w[1], w[2]:w[3]],
                           None, seed)
    assert float((x - oracle).abs().max()) <= 1e-4
    # The whole job: the guidance amplifies float-rounding differences of the denoiser
    # (the energy normalisation's mask is discontinuous), so whole runs agree to within a
    # small fraction of what the guidance changes.
    whole = sample_once(job, seed)
    ref_run = (sample(job.contexts, [job.program(0, seed)], seed) + 1) / 2
    plain = sample_once(prepare(_cfg(content, tiny_clip, "guidance.strength=0")), seed)
    err = float((ref_run - whole).abs().mean())
    effect = float((whole - plain).abs().mean())
    assert err <= 0.05 * effect, (err, effect)
    assert sch.num_steps == 20 and job.plan.scales[0].tiles == [full]


def _result(run_dir):
    return (run_dir / "sample_000.png").read_bytes()


_RESUME = ("engine.store=zarr", "engine.tile_size=16")


@pytest.fixture(scope="module")
def whole_run(content, tiny_clip, tmp_path_factory):
    """The uninterrupted run that every resume test below must reproduce byte for byte."""
    whole = tmp_path_factory.mktemp("whole") / "run"
    run(_cfg(content, tiny_clip, *_RESUME), whole, Reporter())
    return whole


@pytest.mark.parametrize("kind,at", [("step_done", 13), ("guidance", 5)])
def test_interrupted_run_resumes_with_identical_bytes(content, tiny_clip, tmp_path, kind, at,
                                                      whole_run):
    """Stopped after a step was marked done (step_done) or between the momentum state's write
    and the step's (guidance): the resumed run continues with the same bytes."""
    cfg = _cfg(content, tiny_clip, *_RESUME)
    stopped = tmp_path / "stopped"
    with pytest.raises(KeyboardInterrupt):
        run(cfg, stopped, Events(kind, at))
    kept = sorted(p.name for p in (stopped / "app_state").iterdir())
    assert 1 <= len(kept) <= 2 and all(n.endswith(".npy") for n in kept), kept
    run(cfg, stopped, Reporter())
    assert _result(stopped) == _result(whole_run)
    assert len(list((whole_run / "app_state").iterdir())) <= 2  # only the last two steps kept


def test_cli_kill_and_resume(content, tiny_clip, tmp_path, whole_run):
    args = ["run", PRESET, *_args(content, tiny_clip, *_RESUME), "--quiet"]
    killed = tmp_path / "killed"
    state = killed / "app_state"
    # Kill in the guided part (t = 10 .. 2), once the momentum state of t = 8 was written.
    assert kill_cli_when([*args, "--out", killed], lambda: state.is_dir() and any(
        p.name.endswith("-8.npy") for p in state.iterdir())), \
        "the job finished before it could be killed"
    r = run_cli(*args, "--out", killed)
    assert r.returncode == 0, r.stderr
    assert _result(killed) == _result(whole_run)
    log = (killed / "log.jsonl").read_text()
    assert '"event": "guidance"' in log and '"clip_loss"' in log


# ----------------------------------------------------------------------------- refusals


def test_missing_model_and_too_large_input_exit_2_before_any_work(content, tmp_path):
    out = tmp_path / "run"
    r = run_cli("run", PRESET, *_args(content, "someone/not-cached"), "--out", out, "--quiet")
    assert r.returncode == 2 and "hf download" in r.stderr and "Traceback" not in r.stderr
    assert "save_pretrained" in r.stderr
    assert not out.exists()  # nothing written
    from PIL import Image

    big = tmp_path / "big.png"
    Image.new("RGB", (2600, 1700)).save(big)
    r = run_cli("run", PRESET, f"input={big}", "--out", out, "--quiet")
    assert r.returncode == 2 and "4 MP" in r.stderr and "input_resize_to" in r.stderr, r.stderr
    assert not out.exists()
    # input_resize_to brings it within the limit
    cfg = load_config(PRESET, [f"input={big}", "input_resize_to=2048", "guidance.strength=0"])
    shapes = reference_shapes(cfg)
    assert shapes == [(1339, 2048)]
    TextStyle().preflight(cfg, shapes)  # no error


@pytest.mark.parametrize("override,match", [
    ("pyramid.num_scales=3", "pyramid.num_scales: 1"),
    ("pyramid.num_scales=auto", "pyramid.num_scales: 1"),
    ("text=''", "needs text"),
    ("clip.fill=grey", "clip.fill"),
    ("guidance.fill_factor=0", "guidance.fill_factor"),
    ("output_size=[40,40]", "input_resize_to"),
])
def test_config_refusals(content, override, match):
    with pytest.raises(ConfigError, match=match):
        load_config(PRESET, [f"input={content}", override])


def test_too_large_input_is_refused_in_the_api_too(tmp_path):
    from PIL import Image

    big = tmp_path / "big.png"
    Image.new("RGB", (2100, 2100)).save(big)
    with pytest.raises(InputError, match="input_resize_to"):
        prepare(load_config(PRESET, [f"input={big}", "guidance.strength=0"]))
    assert issubclass(InputError, GigasidError)
