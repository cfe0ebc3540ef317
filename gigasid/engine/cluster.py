"""Tile graphs on a Dask distributed cluster: ``engine.scheduler: local-cluster | tcp://...``.

The same per-scale graphs as the local schedulers (:mod:`gigasid.engine.graph`) run through
``distributed.Client``. Tasks carry coordinates only. Each worker rebuilds a run's job once
from the run directory (indexes memory-mapped) when its first task of that run arrives and
keeps it under the run's id, set up by a :class:`RunPlugin` registered for the run, so many
runs can share one cluster. Tile tasks are idempotent (see
:func:`gigasid.engine.worker.tile_work`): a result lost with a dead worker is simply
recomputed, and a recomputed task of a finished tile returns at once.

The driver learns of finished tiles from the futures (progress, wave markers, freeing old
arrays); the tiles' own markers are written by the workers, so a run whose driver died is
resumed by running ``gigasid run`` on the run directory again.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import threading
from pathlib import Path

import torch
from distributed.diagnostics.plugin import WorkerPlugin

from gigasid.engine.allocator import tune_malloc
from gigasid.engine.job import Job, set_threads
from gigasid.engine.progress import Reporter
from gigasid.errors import GigasidError

#: Seconds to wait for the scheduler (and, on an empty cluster, for a first worker);
#: ``GIGASID_CONNECT_TIMEOUT`` overrides it (a slow or distant cluster).
CONNECT_TIMEOUT = float(os.environ.get("GIGASID_CONNECT_TIMEOUT", 10))

_RUNS: dict[str, dict] = {}  # on a worker: run id -> {"spec": ..., "job": WorkerJob | None}
_RUNS_LOCK = threading.Lock()


class ClusterError(GigasidError):
    """The cluster cannot be reached or cannot run this job (exit 2, before any work)."""


def connect(cfg) -> ClusterExecutor:
    """Start a ``LocalCluster`` or connect to ``engine.scheduler``; fails fast with exit 2."""
    import logging

    from distributed import Client, LocalCluster

    e = cfg.engine
    cluster = None
    try:
        if e.scheduler == "local-cluster":
            cluster = LocalCluster(n_workers=e.workers, threads_per_worker=1, processes=True,
                                   host="127.0.0.1", dashboard_address="127.0.0.1:0",
                                   silence_logs=logging.ERROR)
            client = Client(cluster, timeout=CONNECT_TIMEOUT)
        else:
            client = Client(e.scheduler, timeout=CONNECT_TIMEOUT)
    except (OSError, TimeoutError) as exc:
        if cluster is not None:
            cluster.close()
        raise ClusterError(
            f"cannot reach the Dask scheduler at {e.scheduler} ({exc}); start one (`dask "
            "scheduler` and `dask worker ADDRESS`), check the address and port, or use "
            "engine.scheduler=local-cluster to run workers on this machine") from None
    return ClusterExecutor(client, cluster, cfg)


def _probe(token_path: str, token: str, inputs: list[str]) -> list[str]:
    """On a worker: what it cannot see of the run directory and the inputs."""
    problems = []
    try:
        if Path(token_path).read_text() != token:
            problems.append(f"{token_path} has other contents")
    except OSError as exc:
        problems.append(f"cannot read {token_path} ({exc.strerror or exc})")
    problems += [f"cannot read input {p}" for p in inputs if not os.access(p, os.R_OK)]
    return problems


def _threads_per_task(nthreads: int, workers_on_host: int) -> int:
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return max(1, cores // max(1, nthreads * workers_on_host))


class RunPlugin(WorkerPlugin):
    """Worker plugin of one run: records how to build the run's job and sets the worker's
    torch / FAISS / libvips threads from the worker's own cores (shared by the workers of
    its host) unless ``engine.threads`` fixes them."""

    def __init__(self, run_id: str, spec: dict, workers_by_host: dict[str, int],
                 threads: int | None):
        self.name = f"gigasid-{run_id}"
        self.run_id = run_id
        self.spec = spec
        self.workers_by_host = workers_by_host
        self.threads = threads

    def setup(self, worker) -> None:
        host = worker.address.rsplit(":", 1)[0]
        n = self.threads or _threads_per_task(worker.state.nthreads,
                                              self.workers_by_host.get(host, 1))
        os.environ["VIPS_CONCURRENCY"] = str(n)
        tune_malloc()  # the nanny's MALLOC_TRIM_THRESHOLD_ doubles a tile's time
        with _RUNS_LOCK:
            _RUNS[self.run_id] = {"spec": self.spec, "job": None, "threads": n}

    def teardown(self, worker) -> None:
        with _RUNS_LOCK:
            _RUNS.pop(self.run_id, None)


def _worker_job(run_id: str):
    from gigasid.engine.worker import WorkerJob

    with _RUNS_LOCK:
        entry = _RUNS.get(run_id)
        if entry is None:
            raise RuntimeError(f"this worker has no gigasid plugin for run {run_id}")
        if entry["job"] is None:  # first task of this run on this worker: build once
            s = entry["spec"]
            entry["job"] = WorkerJob.load(s["cfg"], s["base_dir"], s["run_dir"])
        return entry["job"]


def cluster_tile(run_id: str, sample: int, scale: int, seed: int, coarser_name: str | None,
                 wave: int, ti: int, _deps) -> tuple[float, bool]:
    """The graph's tile task on a cluster worker (coordinates only)."""
    job = _worker_job(run_id)
    # OpenMP thread counts (torch, FAISS, the compiled kernels) belong to the calling thread,
    # and a worker runs tasks on its own pool threads, which start from the nanny's
    # OMP_NUM_THREADS=1: set them here, in the thread that computes.
    n = _RUNS[run_id]["threads"]
    if torch.get_num_threads() != n:
        set_threads(n)
    return job.tile(sample, scale, wave, ti, seed, coarser_name)


class ClusterExecutor:
    """Runs scale graphs on a ``distributed.Client`` (see :mod:`gigasid.engine.execute` for
    the executor methods)."""

    def __init__(self, client, cluster, cfg):
        self.client = client
        self.cluster = cluster
        self.cfg = cfg
        self.run_id: str | None = None
        self.plugin: RunPlugin | None = None

    @property
    def dashboard(self) -> str | None:
        return self.client.dashboard_link

    def check_run_dir(self, run_dir: Path, inputs: list[Path]) -> None:
        """Refuse (exit 2) unless every worker reads a token written into ``run_dir`` now,
        and the inputs; call before any heavy work."""
        try:
            self.client.wait_for_workers(1, timeout=CONNECT_TIMEOUT)
        except TimeoutError:
            where = self.cfg.engine.scheduler
            raise ClusterError(f"no Dask worker joined the scheduler at {where} within "
                               f"{CONNECT_TIMEOUT} s; start workers with `dask worker "
                               f"{where}`") from None
        token = secrets.token_hex(16)
        path = Path(run_dir).resolve() / f".cluster-check-{token}"
        path.write_text(token)
        try:
            answers = self.client.run(_probe, str(path), token,
                                      [str(Path(p).resolve()) for p in inputs])
        finally:
            path.unlink(missing_ok=True)
        bad = {w: p for w, p in answers.items() if p}
        if bad:
            lines = "; ".join(f"{w}: {', '.join(p)}" for w, p in sorted(bad.items()))
            raise ClusterError(
                f"the run directory {run_dir} (or an input) is not visible to every Dask worker "
                f"({lines}); put --out and the inputs on a file system every worker mounts at "
                "the same path")

    def start(self, job: Job, run_dir: Path, reporter: Reporter) -> None:
        """Register the run's worker plugin (one per run id, replacing an older one)."""
        run_dir = Path(run_dir).resolve()
        self.run_id = hashlib.sha256(
            f"{run_dir}|{job.cfg.fingerprint()}".encode()).hexdigest()[:16]
        workers = self.client.scheduler_info(n_workers=-1)["workers"]
        by_host: dict[str, int] = {}
        for addr in workers:
            host = addr.rsplit(":", 1)[0]
            by_host[host] = by_host.get(host, 0) + 1
        spec = {"cfg": job.cfg.to_dict(), "base_dir": str(Path(job.cfg.base_dir).resolve()),
                "run_dir": str(run_dir)}
        self.plugin = RunPlugin(self.run_id, spec, by_host, self.cfg.engine.threads)
        self.client.register_plugin(self.plugin, name=self.plugin.name)
        reporter.event("cluster", scheduler=self.cfg.engine.scheduler, workers=len(workers),
                       dashboard=self.dashboard, run_id=self.run_id)

    def tile_task(self, job, store, program, sample, scale, seed, coarser_name):
        from functools import partial

        return partial(cluster_tile, self.run_id, sample, scale, seed, coarser_name)

    def run_graph(self, dsk: dict, keys: list, on_done) -> None:
        """Submit a scale's graph; report every node as its future completes."""
        from distributed import as_completed

        tasks = [k for k, v in dsk.items() if isinstance(v, tuple)]
        futures = self.client.get(dsk, tasks, sync=False)
        try:
            for fut in as_completed(futures):
                on_done(fut.key, fut.result())
        except Exception as exc:
            _raise_cluster_failure(exc)
        finally:
            self.client.cancel(futures)

    def shutdown(self) -> None:
        try:
            if self.plugin is not None:
                self.client.unregister_worker_plugin(self.plugin.name)
        except Exception:  # noqa: BLE001 - a closing cluster need not answer
            pass
        self.client.close()
        if self.cluster is not None:
            self.cluster.close()


def _raise_cluster_failure(exc: Exception) -> None:
    from distributed.scheduler import KilledWorker

    if isinstance(exc, KilledWorker):
        raise GigasidError(
            f"a tile task killed its worker several times ({exc}); the worker probably ran "
            "out of memory: give workers more memory or use a smaller engine.tile_size, then "
            "run the same command again to resume") from None
    raise exc
