"""Same bytes on every machine: the determinism matrix.

Every kind of job (``tests/determinism_jobs.py``: uncond, retarget, tileable, symmetric,
inpaint, outpaint, analogy, latent; exact and ANN denoisers; Zarr tiles) runs in a fresh
process under other thread counts, thread-pool environments, CPU kernel choices (PyTorch's
``ATEN_CPU_CAPABILITY``, numba's generic CPU target) and schedulers; each must give exactly
the bytes of the one-thread sync run. A run started with one thread count and resumed with
another must too.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from conftest import REPO, kill_cli_when, run_here

JOBS = REPO / "tests" / "determinism_jobs.py"


def _digests(work, vae, *overrides, env=None):
    full = {**os.environ, **(env or {})}
    r = subprocess.run([sys.executable, str(JOBS), str(work), str(vae), *overrides],
                       capture_output=True, text=True, timeout=900, env=full)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout.strip().splitlines()[-1])["digests"]


@pytest.fixture(scope="module")
def reference(tmp_path_factory, vae_dirs):
    """Digests of the one-thread sync runs."""
    work = tmp_path_factory.mktemp("det-ref")
    return work, _digests(work, vae_dirs["kl"], "engine.threads=1")


def _avx2() -> bool:
    return torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512")


#: The jobs of each variant: all, or fewer where a variant costs more (a scheduler's start)
#: or where a guarantee stops. The VAE (latent jobs) runs PyTorch's own convolutions,
#: normalisations and attention, whose vectorised reductions follow the CPU kernels that
#: ``ATEN_CPU_CAPABILITY`` picks: latent jobs are the same on any thread count, not on
#: other PyTorch CPU kernels (docs/determinism.md, "Not covered").
PIXEL = "uncond,retarget,tileable,symmetric,inpaint,outpaint,analogy"

VARIANTS = {
    "threads-2": (["engine.threads=2"], {}),
    "threads-3-single-thread-pools": (
        ["engine.threads=3"],
        {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}),
    # numba's generic target: other vector widths than the host's (an AVX2 host against an
    # AVX-512 one, say) - its own kernel cache, so this compiles every kernel once more
    "generic-cpu-kernels": (
        ["--only", PIXEL, "engine.threads=2"],
        {"NUMBA_CPU_NAME": "generic", "ATEN_CPU_CAPABILITY": "default"}),
    "processes": (["--only", "retarget,inpaint,latent", "engine.scheduler=processes",
                   "engine.workers=2"], {}),
    "local-cluster": (["--only", "uncond,analogy", "engine.scheduler=local-cluster",
                       "engine.workers=2"], {}),
}
if _avx2():
    VARIANTS["avx2-torch-kernels"] = (["--only", PIXEL, "engine.threads=2"],
                                      {"ATEN_CPU_CAPABILITY": "avx2"})


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_every_job_gives_the_same_bytes(variant, reference, vae_dirs, tmp_path):
    _, expected = reference
    overrides, env = VARIANTS[variant]
    got = _digests(tmp_path, vae_dirs["kl"], *overrides, env=env)
    assert got and set(got) <= set(expected)
    differ = sorted(k for k in got if got[k] != expected[k])
    assert not differ, f"{variant}: other bytes than the one-thread sync run for {differ}"


def test_a_run_resumed_with_another_thread_count_gives_the_same_bytes(reference, vae_dirs,
                                                                      tmp_path):
    sys.path.insert(0, str(JOBS.parent))
    import determinism_jobs as dj

    work, expected = reference
    args = dj.jobs(work, vae_dirs["kl"])["inpaint"]
    full = [args[0], *dj.COMMON, *args[1:]]
    run_dir = tmp_path / "run"
    marks = run_dir / "markers"

    def ready() -> bool:
        return marks.exists() and len(list(marks.iterdir())) >= 10

    assert kill_cli_when(["run", *full, "engine.threads=1", "--out", run_dir, "--quiet"], ready)
    run_here([*full, "engine.threads=2"], run_dir)
    assert dj.digest(run_dir) == expected["inpaint"]
