"""Progress reporting: rich bars on a TTY, plain lines otherwise, JSON lines always.

The engine calls a :class:`Reporter` with events; reporters never influence results.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any


class Reporter:
    """Receives engine events. The base class ignores them."""

    def event(self, kind: str, **data: Any) -> None:  # pragma: no cover - interface
        pass

    def close(self) -> None:
        pass


class JsonlLog(Reporter):
    """Appends every event as one JSON object per line (``log.jsonl`` in the run dir)."""

    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.fh = open(path, "a", buffering=1)

    def event(self, kind: str, **data: Any) -> None:
        rec = {"time": round(time.time(), 3), "event": kind, **data}
        self.fh.write(json.dumps(rec, default=str) + "\n")

    def close(self) -> None:
        self.fh.close()


def _fmt_eta(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else (f"{m}m{s:02d}s" if m else f"{s}s")


class _Clock:
    """Work-weighted ETA: units are the plan's estimated seconds, rescaled by what we measure."""

    def __init__(self) -> None:
        self.total = 0.0
        self.done = 0.0
        self.start = time.perf_counter()

    def eta(self) -> float | None:
        if self.done <= 0:
            return None
        elapsed = time.perf_counter() - self.start
        return elapsed / self.done * (self.total - self.done)


class PlainReporter(Reporter):
    """One line per finished step (at most every ``every`` seconds) on stderr."""

    def __init__(self, stream=None, every: float = 1.0):
        self.stream = stream or sys.stderr
        self.every = every
        self.last = 0.0
        self.clock = _Clock()

    def _print(self, text: str) -> None:
        print(text, file=self.stream, flush=True)

    def event(self, kind: str, **d: Any) -> None:
        if kind == "job_start":
            self.clock = _Clock()
            self.clock.total = d["work_total"]
            self._print(f"gigasid: {d['app']} {d['out_shape'][1]}x{d['out_shape'][0]} px, "
                        f"{d['num_scales']} scales, {d['num_samples']} sample(s)")
        elif kind == "setup_step":
            count = f" ({d['done']}/{d['total']})" if "total" in d else ""
            self._print(f"setup: {d['what']}{count}")
        elif kind == "setup_done":
            self._print(f"setup: {d['seconds']:.2f} s")
        elif kind == "step_done":
            self.clock.done += d["work"]
            now = time.perf_counter()
            last_step = d["step_index"] + 1 == d["num_transitions"]
            if now - self.last >= self.every or last_step:
                self.last = now
                eta = self.clock.eta()
                self._print(f"sample {d['sample'] + 1}/{d['num_samples']} scale {d['scale']} "
                            f"step {d['step_index'] + 1}/{d['num_transitions']} "
                            f"({100 * self.clock.done / max(self.clock.total, 1e-9):.0f}%"
                            + (f", ETA {_fmt_eta(eta)})" if eta is not None else ")"))
        elif kind == "codec_tile":
            now = time.perf_counter()
            if now - self.last >= self.every or d["done"] == d["tiles"]:
                self.last = now
                self._print(f"VAE {d['what']}: tile {d['done']}/{d['tiles']}")
        elif kind == "sample_done":
            self._print(f"sample {d['sample'] + 1} written: {d['path']} ({d['seconds']:.2f} s)")
        elif kind == "job_done":
            self._print(f"done in {d['seconds']:.2f} s -> {d['out_dir']}")


class RichReporter(Reporter):
    """Rich progress bars: one for the whole job (ETA) and one for the current scale."""

    def __init__(self) -> None:
        from rich.progress import (
            BarColumn,
            Progress,
            TaskProgressColumn,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self.progress = Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), TaskProgressColumn(),
            TimeElapsedColumn(), TimeRemainingColumn(), transient=False,
        )
        self.job_task = None
        self.scale_task = None
        self.codec_task = None
        self.codec_what = ""
        self.started = False

    def event(self, kind: str, **d: Any) -> None:
        p = self.progress
        if kind == "job_start":
            if not self.started:
                p.start()
            self.started = True
            self.job_task = p.add_task("total", total=d["work_total"])
        elif kind == "scale_start":
            if self.scale_task is not None:
                p.remove_task(self.scale_task)
            self.scale_task = p.add_task(
                f"sample {d['sample'] + 1}/{d['num_samples']} scale {d['scale']} "
                f"{d['shape'][1]}x{d['shape'][0]}", total=max(1, d['num_transitions']))
        elif kind == "step_done":
            p.advance(self.scale_task, 1)
            p.advance(self.job_task, d["work"])
        elif kind == "codec_tile":
            # VAE encode (during setup) and decode (while writing a sample) tile by tile
            if not self.started:
                p.start()
                self.started = True
            if self.codec_task is None or self.codec_what != d["what"]:
                if self.codec_task is not None:
                    p.remove_task(self.codec_task)
                self.codec_task = p.add_task(f"VAE {d['what']}", total=d["tiles"])
                self.codec_what = d["what"]
            p.update(self.codec_task, completed=d["done"])
        elif kind == "sample_done":
            p.console.print(f"sample {d['sample'] + 1} -> {d['path']} ({d['seconds']:.2f} s)")

    def close(self) -> None:
        if self.started:
            self.progress.stop()


class Fanout(Reporter):
    """Sends every event to several reporters."""

    def __init__(self, *reporters: Reporter):
        self.reporters = [r for r in reporters if r is not None]

    def event(self, kind: str, **data: Any) -> None:
        for r in self.reporters:
            r.event(kind, **data)

    def close(self) -> None:
        for r in self.reporters:
            r.close()
