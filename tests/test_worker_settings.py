"""Per-process settings of a tile worker: malloc thresholds and thread counts.

tune_malloc undoes the fixed malloc threshold that Dask's nanny puts in the environment;
set_threads caps torch, FAISS and the bundled BLAS pools and keeps that cap through the
first compiled kernel (numba's OpenMP pool start used to reset torch's count).
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from gigasid.engine.allocator import reuses_heap

needs_glibc = pytest.mark.skipif(reuses_heap() is None, reason="needs glibc >= 2.33")

PROBE = """
import sys
from gigasid.engine.allocator import reuses_heap, tune_malloc
print(tune_malloc() if sys.argv[1] == "tune" else "-", reuses_heap(int(sys.argv[2])))
"""


def _probe(tune: bool, nbytes: int = 4 * 2**20, **env) -> list[str]:
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}, **env}
    r = subprocess.run([sys.executable, "-c", PROBE, "tune" if tune else "plain", str(nbytes)],
                       env=env, capture_output=True, text=True, check=True)
    return r.stdout.split()


@needs_glibc
def test_chunk_sized_buffers_come_from_the_heap():
    """A 48 MiB buffer (a chunk's queries are 44 MB) is above glibc's largest dynamic
    threshold, so it is a fresh mmap every time, until tune_malloc raises the threshold;
    small buffers are reused either way."""
    assert _probe(False) == ["-", "True"]
    assert _probe(False, 48 * 2**20) == ["-", "False"]
    assert _probe(True, 48 * 2**20) == ["True", "True"]
    assert _probe(True, 48 * 2**20, GIGASID_KEEP_MALLOC="1") == ["False", "False"]


@needs_glibc
def test_nanny_trim_threshold_is_undone():
    """Dask's MALLOC_TRIM_THRESHOLD_=65536 makes every 4 MiB buffer a fresh mmap, until
    tune_malloc restores heap reuse; GIGASID_KEEP_MALLOC=1 keeps the environment's way."""
    nanny = {"MALLOC_TRIM_THRESHOLD_": "65536"}
    assert _probe(False, **nanny) == ["-", "False"]
    assert _probe(True, **nanny) == ["True", "True"]
    assert _probe(True, GIGASID_KEEP_MALLOC="1", **nanny) == ["False", "False"]


THREADS = """
import torch
from threadpoolctl import threadpool_info
from gigasid.config import load_config
from gigasid.engine.job import prepare, set_threads
from gigasid.engine.runner import sample_once
cfg = load_config("configs/retarget.yaml", ["input=builtin:astronaut", "output_size=[96,160]",
                                            "num_steps=2", "pyramid.num_scales=2"])
job = prepare(cfg)  # sets the job's own count: all cores
set_threads(1)      # what a one-thread worker does next
sample_once(job, 0)
print(torch.get_num_threads(), *sorted({d["num_threads"] for d in threadpool_info()
                                        if d["internal_api"] == "openblas"}))
"""


def test_one_thread_stays_one_thread_through_the_kernels():
    """A worker capped at one thread runs torch and both bundled OpenBLAS copies (faiss's,
    numpy's) on one thread after a whole sample, compiled kernels included."""
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    env = {k: v for k, v in os.environ.items() if not k.endswith("_NUM_THREADS")}
    r = subprocess.run([sys.executable, "-c", THREADS], env=env, cwd=root,
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["1", "1"]
