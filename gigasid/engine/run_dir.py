"""The run directory: what it holds, whose job it is, and whether the job fits on its disk.

Layout (every name gigasid writes at the top level of ``RUN``)::

    job.yaml        the job's resolved config and fingerprint (written before any work)
    plan.json       the per-scale plan
    log.jsonl       events, one JSON object per line
    timings.json    a finished run's summary
    data.zarr/      the state tiles of every scale and wave (streamed runs), and the input of
                    an application's finishing step (``x<i>/finish-input``)
    markers/        finished tasks (a resumed run skips them)
    index/          ANN indexes, built once and memory-mapped
    app_state/      state an application keeps between steps (resumable)
    latent/         cached latent encodings of the inputs
    out/            the exports (TIFF, DeepZoom, viewer, Zarr image)
    sample_NNN.png  the samples
    driver.lock     held by the driver while it runs (:mod:`gigasid.engine.lock`)

A run directory belongs to one job: :func:`guard_job` refuses another config or input
there unless the run is started afresh, and :func:`clear_run` removes only the names above.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from gigasid import __version__
from gigasid.errors import RunDirError

#: Folders of a run's state, removed by a fresh start.
STATE_DIRS = ("data.zarr", "markers", "out", "index", "app_state", "latent")
#: Files of a run's state, removed by a fresh start (with the ``sample_*.png``).
STATE_FILES = ("job.yaml", "plan.json", "timings.json", "log.jsonl")


def job_fingerprint(cfg, input_sha: str) -> str:
    """What a run directory belongs to: the resolved config and the inputs' SHA-256."""
    return hashlib.sha256((cfg.fingerprint() + input_sha).encode()).hexdigest()


def guard_job(out: Path, fingerprint: str, fresh: bool) -> None:
    """Refuse to reuse a run directory that belongs to a different job (unless ``fresh``)."""
    job_file = out / "job.yaml"
    if not job_file.exists() or fresh:
        return
    import yaml

    try:
        old = yaml.safe_load(job_file.read_text()) or {}
    except yaml.YAMLError:
        old = {}
    if old.get("fingerprint") != fingerprint:
        raise RunDirError(
            f"{out} holds a run with a different config or input (job.yaml fingerprint "
            "differs); pass --fresh to start over there, or --out to choose another folder")


def write_job_file(out: Path, cfg, fingerprint: str, files: list[Path],
                   input_sha: str) -> None:
    """``RUN/job.yaml``: the fingerprint :func:`guard_job` compares, the inputs and the
    resolved config."""
    import yaml

    from gigasid.config import dump_yaml

    job_doc = {"gigasid": __version__, "fingerprint": fingerprint,
               "input": str(files[0]), "inputs": [str(f) for f in files],
               "input_sha256": input_sha,
               "config": yaml.safe_load(dump_yaml(cfg))}
    (out / "job.yaml").write_text(yaml.safe_dump(job_doc, sort_keys=False))


def check_disk(plan, out: Path) -> None:
    """Refuse to start a streamed job whose estimated footprint (``plan``) exceeds the free
    space where ``out`` is (or will be)."""
    import os
    import shutil

    from gigasid.engine.store import DiskFullError

    if (out / "data.zarr").exists() or os.environ.get("GIGASID_SKIP_DISK_CHECK"):
        return  # a resumed run was checked when it started
    if plan.store != "zarr":
        return
    probe = out
    while not probe.exists():
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    if plan.est_disk_bytes > free:
        raise DiskFullError(
            f"this job needs about {plan.est_disk_bytes / 2**30:.2f} GiB in {out} but only "
            f"{free / 2**30:.2f} GiB is free; free some space, choose another --out, or make "
            "the output smaller (output_size)")


def clear_run(out: Path) -> None:
    """Remove a previous run's state (only gigasid's own files) before a fresh start."""
    import shutil

    for name in STATE_DIRS:
        if (out / name).exists():
            shutil.rmtree(out / name)
    for name in STATE_FILES:
        (out / name).unlink(missing_ok=True)
    for p in out.glob("sample_*.png"):
        p.unlink()
