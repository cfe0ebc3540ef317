"""Dask distributed: the same bytes as ``sync``, worker and client deaths survived, tile
tasks safe to replay, clear refusals before any work."""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import sys
import time

import pytest
import torch

from conftest import REPO, run_cli, save_photo
from gigasid.engine.execute import SyncExecutor


@pytest.fixture(scope="module")
def cluster():
    """Two worker processes (one thread each) on 127.0.0.1, shared by this module's tests."""
    from distributed import Client, LocalCluster

    lc = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address=None)
    client = Client(lc)
    yield lc, client
    client.close()
    lc.close()


@pytest.fixture(scope="module")
def job_args(photo, tmp_path_factory):
    ref = save_photo(photo, tmp_path_factory.mktemp("cluster") / "ref.png", (64, 64))
    return [REPO / "configs" / "retarget.yaml", f"input={ref}", "num_samples=1",
            "output_size=[96,144]", "patch_size=7", "num_steps=4", "eta=0.5",
            "pyramid.min_short_side=14", "engine.store=zarr", "engine.tile_size=32",
            "denoiser.backend=exact"]


def _png(run_dir):
    return (run_dir / "sample_000.png").read_bytes()


def _events(run_dir, kind):
    lines = (run_dir / "log.jsonl").read_text().splitlines()
    return [e for e in map(json.loads, lines) if e.get("event") == kind]


def _tile_markers(run_dir):
    d = run_dir / "markers"
    return sum(1 for n in os.listdir(d) if "-t" in n) if d.exists() else 0


def _popen(args, run_dir):
    return subprocess.Popen([sys.executable, "-m", "gigasid", "run", *map(str, args),
                             "--out", str(run_dir), "--quiet"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for(proc, cond, timeout=180):
    deadline = time.time() + timeout
    while proc.poll() is None and not cond() and time.time() < deadline:
        time.sleep(0.02)
    return proc.poll() is None


@pytest.fixture(scope="module")
def sync_png(tmp_path_factory, job_args):
    out = tmp_path_factory.mktemp("cluster") / "sync"
    r = run_cli("run", *job_args, "--out", out, "--quiet")
    assert r.returncode == 0, r.stderr
    return _png(out)


def test_cluster_run_equals_sync_and_survives_a_worker_kill(tmp_path, job_args, sync_png,
                                                            cluster):
    """A run on the cluster gives the sync run's bytes; SIGKILL of one worker process in
    the middle of a scale changes nothing (the nanny restarts it, lost results are
    recomputed, finished tiles return at once); a clean run computes every tile once."""
    lc, client = cluster
    addr = lc.scheduler_address
    clean = tmp_path / "clean"
    r = run_cli("run", *job_args, f"engine.scheduler={addr}", "--out", clean, "--quiet")
    assert r.returncode == 0, r.stderr
    assert _png(clean) == sync_png
    done = _events(clean, "tile_done")
    assert done and all(e["computed"] for e in done), "a clean run ran some tile twice"
    assert len(done) == sum(e["tiles"] * (e["num_transitions"] + 1)
                            for e in _events(clean, "scale_start"))
    assert _events(clean, "cluster")[0]["workers"] == 2
    from gigasid.engine.allocator import reuses_heap

    # the nanny's MALLOC_TRIM_THRESHOLD_ was undone in the workers that ran the tiles
    assert set(client.run(reuses_heap).values()) <= {True, None}

    killed = tmp_path / "worker-killed"
    proc = _popen([*job_args, f"engine.scheduler={addr}"], killed)
    total = len(done)
    assert _wait_for(proc, lambda: _tile_markers(killed) >= total // 2)
    pids = client.run(os.getpid)
    os.kill(next(iter(pids.values())), signal.SIGKILL)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    assert _png(killed) == sync_png
    client.wait_for_workers(2, timeout=60)


def test_client_death_is_resumed_by_running_again(tmp_path, job_args, sync_png, cluster):
    lc, _ = cluster
    args = [*job_args, f"engine.scheduler={lc.scheduler_address}"]
    run_dir = tmp_path / "client-killed"
    proc = _popen(args, run_dir)
    assert _wait_for(proc, lambda: _tile_markers(run_dir) >= 20)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (run_dir / "sample_000.png").exists()
    r = run_cli("run", *args, "--out", run_dir, "--quiet")
    assert r.returncode == 0, r.stderr
    assert _png(run_dir) == sync_png
    assert _events(run_dir, "resume")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_scheduler_is_refused_quickly(tmp_path, job_args):
    run_dir = tmp_path / "nowhere"
    t0 = time.time()
    r = subprocess.run([sys.executable, "-m", "gigasid", "run", *map(str, job_args),
                        f"engine.scheduler=tcp://127.0.0.1:{_free_port()}", "--out",
                        str(run_dir)], capture_output=True, text=True, timeout=120,
                       env={**os.environ, "GIGASID_CONNECT_TIMEOUT": "2"})
    assert r.returncode == 2, r.stderr
    assert "cannot reach the Dask scheduler" in r.stderr and "local-cluster" in r.stderr
    assert time.time() - t0 < 30
    assert not run_dir.exists(), "nothing is created before the cluster answers"


def _hide_from_workers(prefix: str) -> None:
    """On a worker: pretend files under ``prefix`` do not exist (another machine's disk)."""
    import gigasid.engine.cluster as c

    real = c.__dict__.setdefault("_real_probe", c._probe)

    def probe(path, token, inputs):
        if path.startswith(prefix):
            return [f"cannot read {path} (No such file or directory)"]
        return real(path, token, inputs)

    c._probe = probe


def _unhide() -> None:
    import gigasid.engine.cluster as c

    if "_real_probe" in c.__dict__:
        c._probe = c.__dict__.pop("_real_probe")


def test_run_directory_the_workers_cannot_see_is_refused(tmp_path, job_args, cluster):
    lc, client = cluster
    hidden = tmp_path / "local-only"
    client.run(_hide_from_workers, str(hidden.resolve()))
    try:
        r = run_cli("run", *job_args, f"engine.scheduler={lc.scheduler_address}", "--out",
                    hidden / "run")
    finally:
        client.run(_unhide)
    assert r.returncode == 2, r.stderr
    assert "not visible to every Dask worker" in r.stderr
    assert "same path" in r.stderr
    assert not (hidden / "run" / "index").exists() and not (hidden / "run" / "data.zarr").exists()
    assert not list((hidden / "run").glob(".cluster-check-*"))


def test_local_cluster_scheduler(tmp_path, job_args, sync_png):
    """``engine.scheduler: local-cluster`` starts its own workers and prints the dashboard."""
    out = tmp_path / "lc"
    r = run_cli("run", *job_args, "engine.scheduler=local-cluster", "engine.workers=2",
                "--out", out)
    assert r.returncode == 0, r.stderr
    assert "dashboard http://127.0.0.1:" in r.stderr
    assert _png(out) == sync_png


class ReplayExecutor(SyncExecutor):
    """An adversarial in-process scheduler: runs the graph's tasks in a random order its
    edges allow, runs some tasks twice in a row (a duplicate) and replays random finished
    tasks at random later moments (a result lost with a worker) — with the engine's real
    tile tasks, store and array freeing."""

    def __init__(self, seed: int):
        self.rng = random.Random(seed)
        self.runs = 0

    def run_graph(self, dsk, keys, on_done):
        need = {k: (list(v[3]) if len(v) == 4 else list(v[1])) if isinstance(v, tuple) else []
                for k, v in dsk.items()}
        finished = {k for k, v in dsk.items() if not isinstance(v, tuple)}
        pending = set(dsk) - finished
        history = []
        while pending:
            ready = sorted((k for k in pending if all(d in finished for d in need[k])), key=str)
            key = self.rng.choice(ready)
            pending.remove(key)
            val = dsk[key]
            if len(val) == 4:
                res = val[0](val[1], val[2], None)
                if self.rng.random() < 0.3:
                    val[0](val[1], val[2], None)  # a duplicate
                history.append(key)
                self.runs += 1
            else:
                res = 0.0
            finished.add(key)
            on_done(key, res)
            if history and self.rng.random() < 0.5:  # a lost result recomputed, any time
                old = dsk[self.rng.choice(history)]
                old[0](old[1], old[2], None)


@pytest.mark.parametrize("store_kind", ["memory", "zarr"])
def test_replayed_and_duplicated_tasks_give_the_same_bytes(tmp_path, photo, store_kind):
    """Every tile task run twice, replays of finished tasks (whose source arrays may be
    freed already) in random valid orders: the finest scale equals the sync run's."""
    from gigasid.config import load_config
    from gigasid.core.resample import resize
    from gigasid.engine.execute import generate
    from gigasid.engine.job import prepare
    from gigasid.engine.progress import Reporter
    from gigasid.engine.store import MemoryStore, ZarrStore
    from gigasid.io.images import save_png, to_uint8

    ref = tmp_path / "ref.png"
    save_png(to_uint8((resize(photo, (48, 48)) + 1) / 2), ref)
    cfg = load_config(REPO / "configs" / "uncond.yaml",
                      [f"input={ref}", "output_size=[56,72]", "patch_size=7", "num_steps=4",
                       "pyramid.min_short_side=21", "engine.store=memory",
                       "engine.tile_size=24", "denoiser.backend=exact"])
    job = prepare(cfg)

    def store(name):
        return MemoryStore() if store_kind == "memory" else ZarrStore(tmp_path / name,
                                                                      durable=False)

    def final(st, name):
        h, w = job.contexts[0].stored_shape
        return st.read(name, (0, h, 0, w)).clone()

    ref_store = store("sync")
    want = final(ref_store, generate(job, ref_store, 7, 0, Reporter(), SyncExecutor()))
    for seed in range(2 if store_kind == "memory" else 1):
        st = store(f"replay{seed}")
        ex = ReplayExecutor(seed)
        got = final(st, generate(job, st, 7, 0, Reporter(), ex))
        assert torch.equal(got, want), f"replay schedule {seed} changed the result"
        assert ex.runs > 0


def test_cluster_scheduler_needs_a_zarr_store(job_args):
    r = run_cli("run", *job_args, "engine.store=memory", "engine.scheduler=tcp://127.0.0.1:1")
    assert r.returncode == 2 and "needs engine.store: zarr" in r.stderr

