"""Resumable runs: kill -9 at random moments, re-run, get the same bytes; damaged state."""

import json
import random
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import zarr

from conftest import REPO, kill_cli_when, run_cli, run_here, save_photo


@pytest.fixture(scope="module")
def job_args(photo, tmp_path_factory):
    ref = save_photo(photo, tmp_path_factory.mktemp("resume") / "ref.png", (64, 64))
    return [REPO / "configs" / "demo.yaml", f"input={ref}", "num_samples=1",
            "output_size=[96,128]", "patch_size=7", "num_steps=6", "eta=0.5",
            "pyramid.min_short_side=14", "engine.store=zarr", "engine.tile_size=32",
            "denoiser.backend=exact"]


def _result(run_dir):
    return (np.asarray(zarr.open_array(str(run_dir / "out" / "image.zarr"), mode="r")[:]),
            (run_dir / "sample_000.png").read_bytes())


def _markers(run_dir):
    d = run_dir / "markers"
    return len(list(d.iterdir())) if d.exists() else 0


@pytest.fixture(scope="module")
def clean_run(job_args, tmp_path_factory):
    """The uninterrupted sync run of ``job_args`` (shared: every test compares with it)."""
    run_dir = tmp_path_factory.mktemp("resume") / "clean"
    run_here(job_args, run_dir)
    return run_dir


def test_kill_and_resume_gives_identical_bytes(tmp_path, job_args, clean_run):
    ref_dir = clean_run
    expected = _result(ref_dir)
    total = _markers(ref_dir)

    run_dir = tmp_path / "killed"
    rng = random.Random(1234)
    kills = 0
    for target in sorted(rng.sample(range(2, total - 2), 2)):
        proc = subprocess.Popen([sys.executable, "-m", "gigasid", "run", *map(str, job_args),
                                 "--out", str(run_dir), "--quiet"])
        deadline = time.time() + 120
        while proc.poll() is None and _markers(run_dir) < target and time.time() < deadline:
            time.sleep(0.005)
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            kills += 1
        proc.wait()
    assert kills >= 1, "the job finished before it could be killed"
    st = run_cli("status", run_dir)
    assert st.returncode == 0 and "sample 0: in progress" in st.stdout, st.stdout
    assert "tiles per step" in st.stdout
    # the SIGKILLed driver's lock died with it: the next driver gets the directory
    r = run_cli("run", *job_args, "--out", run_dir, "--quiet")
    assert r.returncode == 0, r.stderr
    got = _result(run_dir)
    assert np.array_equal(got[0], expected[0])
    assert got[1] == expected[1]
    assert not list(run_dir.rglob("*.partial"))
    status = run_cli("status", run_dir)
    assert status.returncode == 0 and "sample 0: done" in status.stdout
    # Running a finished job again recomputes nothing and keeps its files.
    assert run_cli("run", *job_args, "--out", run_dir, "--quiet").returncode == 0
    assert "sample_skipped" in (run_dir / "log.jsonl").read_text()
    assert _result(run_dir)[1] == expected[1]


def test_damaged_state_chunk_is_recomputed(tmp_path, job_args, clean_run):
    import shutil

    run_dir = tmp_path / "run"
    shutil.copytree(clean_run, run_dir)
    (run_dir / "driver.lock").unlink(missing_ok=True)
    expected = _result(run_dir)
    # Pretend the run stopped before writing the output, with one state chunk truncated.
    (run_dir / "markers" / "x0-written").unlink()
    # num_steps=6: the finished state of each scale is wave 6's array (the only one kept).
    assert sorted(p.name for p in (run_dir / "data.zarr" / "x0" / "s1").iterdir()
                  if p.is_dir()) == ["w6"]
    chunk = run_dir / "data.zarr" / "x0" / "s1" / "w6" / "c" / "0" / "0" / "0"
    chunk.write_bytes(chunk.read_bytes()[:100])
    r = run_cli("run", *job_args, "--out", run_dir, "--quiet")
    assert r.returncode == 0, r.stderr
    assert "state_damaged" in (run_dir / "log.jsonl").read_text()
    got = _result(run_dir)
    assert np.array_equal(got[0], expected[0]) and got[1] == expected[1]


def test_threads_and_workers_give_same_output(tmp_path, job_args, clean_run):
    a, b = clean_run, tmp_path / "b"
    run_here([*job_args, "engine.scheduler=threads", "engine.workers=2"], b)
    assert np.array_equal(_result(a)[0], _result(b)[0])


def test_status_of_non_run_dir(tmp_path):
    r = run_cli("status", tmp_path)
    assert r.returncode == 2 and "not a gigasid run directory" in r.stderr


def test_process_workers_give_same_output(tmp_path, job_args):
    a, b = tmp_path / "a", tmp_path / "b"
    args = [*job_args, "denoiser.backend=ann", "denoiser.pca_dim=16"]
    run_here(args, a)
    r = run_cli("run", *args, "engine.scheduler=processes", "engine.workers=2", "--out", b,
                "--quiet")
    assert r.returncode == 0, r.stderr
    assert list((b / "index").glob("scale*.faiss"))  # trained once, shared by the workers
    assert np.array_equal(_result(a)[0], _result(b)[0])


@pytest.fixture
def tiny_fs(tmp_path):
    """A 128 KiB tmpfs (needs root); skipped where mounting is not allowed."""
    mnt = tmp_path / "tiny"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=128k", "tmpfs", str(mnt)],
                       capture_output=True)
    if r.returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def test_out_of_disk_is_refused_up_front(tiny_fs, job_args):
    r = run_cli("run", *job_args, "--out", tiny_fs / "run", "--quiet")
    assert r.returncode == 2 and "GiB is free" in r.stderr and "Traceback" not in r.stderr
    assert not (tiny_fs / "run").exists()


def test_disk_full_mid_run_then_resume(tiny_fs, tmp_path, job_args, clean_run):
    import os

    env_args = [*job_args, "--out", tiny_fs / "run", "--quiet"]
    env = {**os.environ, "GIGASID_SKIP_DISK_CHECK": "1"}
    r = subprocess.run([sys.executable, "-m", "gigasid", "run", *map(str, env_args)],
                       capture_output=True, text=True, env=env)
    assert r.returncode == 2, r.stderr
    assert "no space left" in r.stderr and "Traceback" not in r.stderr
    subprocess.run(["mount", "-o", "remount,size=64M", str(tiny_fs)], check=True)
    r = subprocess.run([sys.executable, "-m", "gigasid", "run", *map(str, env_args)],
                       capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stderr
    assert np.array_equal(_result(tiny_fs / "run")[0], _result(clean_run)[0])


@pytest.fixture
def app_files(photo_file, tmp_path):
    """A reference, an inpainting mask and a structure image for every application."""
    from gigasid.io.images import save_png

    ref = photo_file((64, 64))
    mask = np.zeros((64, 64, 3), np.uint8)
    mask[20:40, 18:44] = 255
    save_png(mask, tmp_path / "mask.png")
    photo_file((64, 80), "structure.png")
    return ref, tmp_path


APP_ARGS = {
    "tileable": ["app=tileable", "tiling.direction=both"],
    "symmetric": ["app=symmetric", "symmetry.axis=both", "output_size=[70,90]"],
    "inpaint": ["app=inpaint", "mask={d}/mask.png"],
    "outpaint": ["app=outpaint", "output_size=[72,96]"],
    "analogy": ["app=analogy", "structure={d}/structure.png", "sigma_min=0.01",
                "pyramid.num_scales=2"],
    "multi": ["input=[{ref},{d}/structure.png]", "output_size=[72,72]"],
}


# Resume is app-agnostic (markers and arrays); these cover the torus domain, the hold hook
# (inpaint; outpaint uses the same hook on a larger canvas) and the dataset switch (analogy).
# The mirror domain and multi-reference datasets are covered for tile invariance in
# test_app_engine.
RESUME_APPS = ["tileable", "inpaint", "analogy"]


@pytest.mark.parametrize("app", RESUME_APPS)
def test_every_app_resumes_after_kill_with_identical_bytes(tmp_path, app_files, app):
    ref, d = app_files
    args = [REPO / "configs" / "demo.yaml", f"input={ref}", "num_samples=1", "patch_size=7",
            "num_steps=4", "eta=0.5", "pyramid.min_short_side=14", "engine.store=zarr",
            "engine.tile_size=24", *[a.format(d=d, ref=ref) for a in APP_ARGS[app]]]
    whole = tmp_path / "whole"
    run_here(args, whole)
    total = _markers(whole)
    killed = tmp_path / "killed"
    assert kill_cli_when(["run", *args, "--out", killed, "--quiet"],
                         lambda: _markers(killed) >= total // 2), \
        "the job finished before it could be killed"
    r = run_cli("run", *args, "--out", killed, "--quiet")
    assert r.returncode == 0, r.stderr
    assert _result(killed)[1] == _result(whole)[1]
    st = run_cli("status", killed)
    assert "sample 0: done" in st.stdout and "finished" in st.stdout


def test_status_of_a_finished_in_memory_run(tmp_path, photo_file):
    ref = photo_file((48, 48))
    run_dir = tmp_path / "run"
    r = run_cli("run", REPO / "configs" / "demo.yaml", f"input={ref}", "num_samples=2",
                "patch_size=7", "num_steps=2", "pyramid.min_short_side=14", "--out", run_dir,
                "--quiet")
    assert r.returncode == 0, r.stderr
    st = run_cli("status", run_dir)
    assert st.returncode == 0
    assert "sample 0: done" in st.stdout and "sample 1: done" in st.stdout
    assert "in progress" not in st.stdout and "finished" in st.stdout
    assert "setting up" not in st.stdout
    # setup reported step by step: references, the app, then every denoiser it built
    steps = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
    steps = [e for e in steps if e["event"] == "setup_step"]
    plan = json.loads((run_dir / "plan.json").read_text())
    assert [e.get("done") for e in steps] == [None, None, *range(1, len(plan["scales"]) + 1)]
    assert all(e["total"] == len(plan["scales"]) for e in steps[2:])


def test_status_says_what_setup_is_doing(tmp_path):
    """Before plan.json exists, and on a resumed run that sets up again, status names the
    latest setup step with its count."""
    import time

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "job.yaml").write_text("config:\n  app: uncond\n")
    log = run_dir / "log.jsonl"
    events = [{"time": time.time(), "event": "setup_step", "what": "preparing uncond",
               "seconds": 0.5},
              {"time": time.time(), "event": "setup_step", "done": 2, "total": 6,
               "what": "ann denoiser of dataset main at scale 1 (2000x1500 px)",
               "seconds": 31.0}]
    log.write_text("".join(json.dumps(e) + "\n" for e in events))
    st = run_cli("status", run_dir)
    assert st.returncode == 0, st.stderr
    assert "setting up: ann denoiser of dataset main at scale 1 (2000x1500 px) (2 of 6)" \
        in st.stdout and "31 s into setup" in st.stdout
    with log.open("a") as fh:
        fh.write(json.dumps({"time": time.time(), "event": "setup_done", "seconds": 40}) + "\n")
    assert "setting up" not in run_cli("status", run_dir).stdout


def test_one_driver_per_run_directory(tmp_path, job_args, clean_run):
    """A second `gigasid run` on a directory being driven is refused at once (exit 2) and
    the first finishes with a clean run's bytes."""
    clean = clean_run
    busy = tmp_path / "busy"
    first = subprocess.Popen([sys.executable, "-m", "gigasid", "run", *map(str, job_args),
                              "--out", str(busy), "--quiet"])
    deadline = time.time() + 120
    while first.poll() is None and _markers(busy) < 2 and time.time() < deadline:
        time.sleep(0.005)
    assert first.poll() is None, "the first driver finished before the second started"
    t0 = time.time()
    second = run_cli("run", *job_args, "--out", busy, "--quiet")
    refused_after = time.time() - t0
    still_running = first.poll() is None
    first.wait()
    assert second.returncode == 2, second.stderr
    assert "being run by another gigasid driver" in second.stderr
    assert str(first.pid) in second.stderr
    assert still_running and refused_after < 30
    assert first.returncode == 0
    assert _result(busy)[1] == _result(clean)[1]
    # (that a SIGKILLed driver leaves no stuck lock is test_kill_and_resume's resume)
