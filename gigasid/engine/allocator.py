"""glibc ``malloc`` settings for the processes that compute tiles.

Dask's nanny starts every worker with ``MALLOC_TRIM_THRESHOLD_=65536`` (its
``distributed.nanny.pre-spawn-environ``, so that idle workers hand memory back), and it also
writes that variable into its own process's environment, so a ``LocalCluster`` started by the
driver leaks it into every process the driver spawns afterwards. Setting any malloc tunable
switches off glibc's *dynamic* mmap threshold: every buffer above 128 KiB is then a fresh
``mmap`` that the kernel zero-fills, unmapped again when freed. A tile allocates and frees
tensors of megabytes thousands of times, so the process spends as much time in the kernel as
in the math (see docs/benchmarks.md, Dask cluster, for the measurement).

:func:`tune_malloc` sets a fixed threshold above the engine's largest per-chunk tensors
instead: the queries and estimates of one chunk of 16 384 patches are 44 MB each (D = 675),
over glibc's largest *dynamic* threshold (32 MiB), so even in a clean environment every
chunk's tensors were fresh mmaps, zero-filled page by page (docs/benchmarks.md, compiled kernels
has the measurement). Memory is still returned to the system above the trim threshold, in
larger steps.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

M_TRIM_THRESHOLD = -1  # glibc <malloc.h>
M_MMAP_THRESHOLD = -3
#: Buffers below this come from the heap (and are reused); above glibc's dynamic maximum
#: (``DEFAULT_MMAP_THRESHOLD_MAX``, 32 MiB on 64-bit systems).
MMAP_THRESHOLD = 128 * 2**20
TRIM_THRESHOLD = 2 * MMAP_THRESHOLD


def _libc():
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None
    return libc if hasattr(libc, "mallopt") else None


def tune_malloc(environ: dict | None = None) -> bool:
    """Serve buffers up to :data:`MMAP_THRESHOLD` from the heap; True if applied.

    This also undoes a fixed malloc threshold inherited from the environment (Dask's
    nanny); ``GIGASID_KEEP_MALLOC=1`` keeps the environment's (or glibc's) settings instead.
    Process-wide and cheap: call it once in each process that computes tiles.
    """
    env = os.environ if environ is None else environ
    if env.get("GIGASID_KEEP_MALLOC") == "1":
        return False
    libc = _libc()
    if libc is None:  # musl, macOS, Windows: their allocators don't read these variables
        return False
    ok = libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)
    ok &= libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD)
    return bool(ok)


class _MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena ordblks smblks hblks hblkhd usmblks "
                                               "fsmblks uordblks fordblks keepcost").split()]


def reuses_heap(nbytes: int = 4 * 2**20) -> bool | None:
    """Whether this process serves a repeated ``nbytes`` allocation from the heap.

    Allocates and frees ``nbytes`` three times and reports whether the last allocation
    came without a fresh ``mmap`` (glibc's ``mallinfo2().hblks`` counts mapped chunks).
    ``None`` where that cannot be observed (not glibc 2.33 or newer). A diagnostic: a
    False here means every large tensor costs page faults.
    """
    libc = _libc()
    if libc is None or not hasattr(libc, "mallinfo2"):
        return None
    libc.mallinfo2.restype = _MallInfo2
    libc.malloc.restype = ctypes.c_void_p
    libc.free.argtypes = [ctypes.c_void_p]
    mapped = True
    for _ in range(3):
        before = libc.mallinfo2().hblks
        ptr = libc.malloc(nbytes)
        mapped = libc.mallinfo2().hblks > before
        libc.free(ptr)
    return not mapped
