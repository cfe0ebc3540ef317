"""Shared helpers for the benchmark pipelines: peak anonymous memory and machine facts."""

from __future__ import annotations

import os
import platform
import threading
import time


def rss_anon_bytes(pid: int | str = "self") -> int:
    """Current RssAnon of a process (bytes); mmapped files are not counted."""
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) * 1024
    return 0


def tree_rss_anon(proc) -> int:
    """RssAnon summed over a ``psutil.Process`` and all its descendants (bytes)."""
    import psutil

    total = 0
    for p in [proc, *proc.children(recursive=True)]:
        try:
            total += rss_anon_bytes(p.pid)
        except (OSError, psutil.Error):
            pass
    return total


def run_measured(cmd: list[str], interval: float = 0.2,
                 kill_after: float | None = None) -> dict:
    """Run a command; wall seconds, CPU seconds of the whole tree, peak tree RssAnon.

    With ``kill_after``, the whole process tree is sent SIGKILL once that many seconds have
    passed (a crash the run must survive); the result then says ``"killed": True``.
    """
    import resource

    import psutil

    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = psutil.Popen(cmd)
    peak = 0
    killed = False
    while proc.poll() is None:
        peak = max(peak, tree_rss_anon(proc))
        if kill_after is not None and time.perf_counter() - t0 > kill_after:
            for p in [*proc.children(recursive=True), proc]:
                try:
                    p.kill()
                except psutil.Error:
                    pass
            proc.wait()
            killed = True
            break
        time.sleep(interval)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    if proc.returncode != 0 and not killed:
        raise RuntimeError(f"{cmd} failed with exit code {proc.returncode}")
    return {"wall_s": wall, "cpu_s": cpu, "peak_rss_anon_mb": peak / 2**20, "killed": killed}


class PeakRssAnon:
    """Samples this process's RssAnon every ``interval`` seconds; ``peak`` is the maximum."""

    def __init__(self, interval: float = 0.02):
        self.interval = interval
        self.peak = rss_anon_bytes()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_anon_bytes())
            time.sleep(self.interval)

    def __enter__(self) -> PeakRssAnon:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_anon_bytes())


def machine() -> dict:
    """Facts that make a number reproducible."""
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "torch": torch.__version__,
            "python": platform.python_version(),
            "date": time.strftime("%Y-%m-%d")}
