"""Process-level setup of the libvips exports: pyvips itself and glibc's heap.

pyvips is imported once with its operation cache off and its thread pool capped to the cores
this process may use (:func:`_vips`). The heap helpers keep freed buffers of the pixel copies
and of libvips' pipelines from staying resident (:func:`limit_heap_fragmentation`,
:func:`_decoding_heap`, :func:`_release_free_memory`); their effect on peak memory is measured
in ``benchmarks/bench_export.py`` (report in ``benchmarks/results/bench_export.md``).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any

__all__ = ["limit_heap_fragmentation"]


_VIPS_READY = False


def _cpu_count() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # pragma: no cover - non-Linux
        return max(1, os.cpu_count() or 1)


def _vips() -> Any:
    """Import pyvips once, with its operation cache off and its thread pool capped.

    libvips sizes its worker pool from ``VIPS_CONCURRENCY`` (read at import) or the machine's
    core count; a value set by the user wins, otherwise the pool is capped to the cores this
    process may use (its CPU affinity, e.g. a Dask worker pinned to some cores).
    """
    global _VIPS_READY
    import pyvips

    if not _VIPS_READY:
        pyvips.cache_set_max(0)
        if not os.environ.get("VIPS_CONCURRENCY") and hasattr(pyvips, "concurrency_set"):
            pyvips.concurrency_set(_cpu_count())
        _VIPS_READY = True
    return pyvips


def _release_free_memory() -> None:
    """Hand memory freed by the copy (blocks, Zarr buffers) back to the OS (glibc only).

    glibc keeps freed heap pages of the reading threads' arenas resident; without this, ~50 MB
    of dead blocks would stay in RssAnon underneath the libvips pipelines that follow.
    """
    global _MALLOC_TRIM
    if _MALLOC_TRIM is None:
        try:
            import ctypes

            _MALLOC_TRIM = ctypes.CDLL("libc.so.6").malloc_trim
        except (OSError, AttributeError):
            _MALLOC_TRIM = False
    if _MALLOC_TRIM:
        _MALLOC_TRIM(0)


_MALLOC_TRIM: Any = None


def limit_heap_fragmentation(threshold: int = 256 * 1024) -> bool:
    """Serve every allocation of ``threshold`` bytes or more with its own ``mmap`` (glibc).

    By default glibc raises its mmap threshold as large blocks are freed (up to 32 MB), after
    which Zarr's chunk buffers and libvips' strip buffers come from the heap arenas, fragment
    them, and stay resident after being freed: in the benchmark, peak RssAnon of
    :func:`~gigasid.io.export.export_all` fell from 162 to 88 MB for a 16384 x 16384 image and
    from 356 to 209 MB for a 4096 x 65536 one, with no measurable change in time.

    The setting is **process-wide and permanent** (it also disables glibc's dynamic threshold
    for, e.g., torch tensors), so the export functions never call it themselves: call it at
    the start of a process dedicated to exporting (``gigasid export``). A value set by the user
    through the ``MALLOC_MMAP_THRESHOLD_`` environment variable wins.

    Returns
    -------
    bool
        Whether the setting was applied (False on non-glibc systems or when overridden).
    """
    global _HEAP_THRESHOLD
    if os.environ.get("MALLOC_MMAP_THRESHOLD_"):
        return False
    applied = _set_mmap_threshold(int(threshold))
    if applied:
        _HEAP_THRESHOLD = int(threshold)
    return applied


#: The mmap threshold :func:`limit_heap_fragmentation` set in this process (None: glibc default).
_HEAP_THRESHOLD: int | None = None
#: mmap threshold while the bridge is filled from a source that decodes chunks (e.g. zstd Zarr
#: chunks of 0.8 MB): glibc's largest allowed value on 64-bit systems.
_COPY_MMAP_THRESHOLD = 32 * 1024 * 1024


def _set_mmap_threshold(nbytes: int) -> bool:
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        m_mmap_threshold = -3  # from glibc's malloc.h
        return bool(libc.mallopt(m_mmap_threshold, int(nbytes)))
    except (OSError, AttributeError):
        return False


@contextlib.contextmanager
def _decoding_heap() -> Iterator[None]:
    """Lift :func:`limit_heap_fragmentation`'s threshold while chunks are decoded, then trim.

    With a 256 KiB threshold every decoded chunk buffer (and every decompression buffer) is a
    fresh ``mmap`` whose pages the kernel faults in and zeroes, then unmaps: copying a
    zstd-compressed 268 MP Zarr array took 3.9-6.2 s instead of 2.1-3.0 s (2 cores,
    ``benchmarks/bench_export.py``). The buffers are short-lived and all freed before libvips
    starts, so they come from the heap for the copy and are handed back to the OS afterwards
    (``malloc_trim``); the fixed threshold then applies again to libvips' buffers.
    """
    lifted = _HEAP_THRESHOLD is not None and _set_mmap_threshold(_COPY_MMAP_THRESHOLD)
    try:
        yield
    finally:
        if lifted and _HEAP_THRESHOLD is not None:
            _set_mmap_threshold(_HEAP_THRESHOLD)
        _release_free_memory()
