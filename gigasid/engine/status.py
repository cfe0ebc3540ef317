"""``gigasid status RUN``: progress of a run directory from its markers and log.

:func:`run_progress` computes the numbers (read-only: it never writes into the run directory
nor takes its lock); :func:`run_status` words them for the terminal, and the live view
(:mod:`gigasid.engine.live`) serves them as JSON.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

from gigasid.errors import RunDirError


def _load(run_dir: Path) -> tuple[dict, dict, list[dict]]:
    if not (run_dir / "job.yaml").is_file():
        raise RunDirError(f"{run_dir} is not a gigasid run directory (no job.yaml)")
    import yaml

    job = yaml.safe_load((run_dir / "job.yaml").read_text()) or {}
    plan = {}
    if (run_dir / "plan.json").is_file():
        plan = json.loads((run_dir / "plan.json").read_text())
    events = []
    if (run_dir / "log.jsonl").is_file():
        events = parse_events((run_dir / "log.jsonl").read_text())
    return job, plan, events


def parse_events(text: str) -> list[dict]:
    """The events of (a piece of) ``log.jsonl``; lines that are not JSON are skipped."""
    events = []
    for line in text.splitlines():
        try:
            events.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # a line cut by a kill, or still being written
    return events


def _setup_line(events: list[dict]) -> str | None:
    """What setup is doing, if the latest setup event is a step (not ``setup_done``)."""
    last = next((e for e in reversed(events)
                 if e.get("event") in ("setup_step", "setup_done")), None)
    if last is None or last["event"] != "setup_step":
        return None
    count = f" ({last['done']} of {last['total']})" if "total" in last else ""
    ago = time.time() - last.get("time", time.time())
    return (f"setting up: {last['what']}{count}; {last.get('seconds', 0):.0f} s into setup, "
            f"this step started {ago:.0f} s ago")


def list_markers(run_dir: Path) -> set[str]:
    """Names of the completion markers in ``RUN/markers`` (one directory listing)."""
    markers = Path(run_dir) / "markers"
    return {p.name for p in markers.glob("*")} if markers.exists() else set()


@dataclass
class ScaleProgress:
    """Where one scale of an unwritten sample stands.

    Attributes
    ----------
    scale, shape, tiles:
        The scale's index, ``(height, width)`` and tiles per step.
    transitions:
        Its steps ``n``: waves ``0 .. n`` each write every tile; wave ``n`` is the result.
    waves:
        Waves complete (every tile done).
    tile_steps:
        Tile markers of the scale, all waves together (waves overlap).
    """

    scale: int
    shape: tuple[int, int]
    tiles: int
    transitions: int
    waves: int
    tile_steps: int

    @property
    def done(self) -> bool:
        return self.waves == self.transitions + 1


@dataclass
class RunProgress:
    """Everything ``gigasid status`` reports about a run directory, as numbers.

    ``done_tiles`` and ``total_tiles`` count tile steps (a tile at one step), written samples
    included; ``eta_seconds`` is the measured tile rate times the tile steps left (None
    before any tile ran or once none is left).
    """

    job: dict
    plan: dict
    events: list[dict]
    marks: set[str]
    setup: str | None = None
    written: list[bool] = field(default_factory=list)
    scales: dict[int, list[ScaleProgress]] = field(default_factory=dict)
    done_tiles: int = 0
    total_tiles: int = 0
    seconds_per_tile: float | None = None
    eta_seconds: float | None = None
    finished: bool = False

    @property
    def last_event(self) -> dict:
        return self.events[-1] if self.events else {}


def progress_of(job: dict, plan: dict, events: list[dict], marks: set[str]) -> RunProgress:
    """The numbers of :class:`RunProgress` from a run directory's job, plan, log and markers
    (read by the caller, so that a poller can read the log incrementally)."""
    prog = RunProgress(job=job, plan=plan, events=events, marks=marks,
                       setup=_setup_line(events))
    if not plan:
        return prog
    steps = {e["scale"]: e["num_transitions"] for e in events if e.get("event") == "scale_start"}
    # In-memory runs leave no markers: their log says which samples were written.
    logged = {e.get("sample") for e in events if e.get("event") in ("sample_done",
                                                                   "sample_skipped")}
    for i in range(plan["num_samples"]):
        written = f"x{i}-written" in marks or i in logged
        prog.written.append(written)
        per_scale = []
        for sp in reversed(plan["scales"]):
            s, ntiles = sp["index"], len(sp["tiles"])
            n = steps.get(s, sp["num_steps"])
            if written:  # counted as done, so that percentages cover the whole job
                prog.total_tiles += (n + 1) * ntiles
                prog.done_tiles += (n + 1) * ntiles
                continue
            waves = sum(1 for w in range(n + 1) if f"x{i}-s{s}-w{w}" in marks)
            # Waves overlap (a tile waits only for its neighbours), so count every tile
            # marker of the scale, not only those of the next wave.
            tiles_here = sum(1 for m in marks if m.startswith(f"x{i}-s{s}-w") and "-t" in m)
            prog.total_tiles += (n + 1) * ntiles
            prog.done_tiles += max(tiles_here, waves * ntiles)
            per_scale.append(ScaleProgress(s, tuple(sp["shape"]), ntiles, n, waves, tiles_here))
        if not written:
            prog.scales[i] = per_scale
    tiles = [e for e in events if e.get("event") == "tile_done"]
    if tiles and prog.done_tiles < prog.total_tiles:
        prog.seconds_per_tile = sum(e["seconds"] for e in tiles[-200:]) / len(tiles[-200:])
        prog.eta_seconds = prog.seconds_per_tile * (prog.total_tiles - prog.done_tiles)
    prog.finished = any(e.get("event") == "job_done" for e in events) and all(prog.written)
    return prog


def run_progress(run_dir: Path) -> RunProgress:
    """:class:`RunProgress` of a run directory (raises :class:`RunDirError` if it is none)."""
    run_dir = Path(run_dir)
    job, plan, events = _load(run_dir)
    return progress_of(job, plan, events, list_markers(run_dir) if plan else set())


def run_status(run_dir: Path) -> str:
    """Human-readable status: done/total steps and tiles per scale, rate and ETA."""
    run_dir = Path(run_dir)
    prog = run_progress(run_dir)
    job = prog.job
    lines = [f"run {run_dir}: {job.get('config', {}).get('app', '?')} "
             f"(gigasid {job.get('gigasid', '?')})"]
    if not prog.plan:
        lines.append(prog.setup or "not started yet (no plan.json)")
        return "\n".join(lines)
    if prog.setup:  # a resumed run sets up again before any tile runs
        lines.append(prog.setup)
    for i, written in enumerate(prog.written):
        lines.append(f"sample {i}: {'done' if written else 'in progress'}")
        for sc in prog.scales.get(i, []):
            ahead = sc.tile_steps - sc.waves * sc.tiles
            state = "done" if sc.done else f"step {max(0, sc.waves - 1)}/{sc.transitions}, " \
                f"{max(0, ahead)} tile-steps of later steps done ({sc.tiles} tiles per step)"
            lines.append(f"  scale {sc.scale} ({sc.shape[1]}x{sc.shape[0]}): {state}")
    if prog.eta_seconds is not None:
        lines.append(f"measured {prog.seconds_per_tile:.2f} s per tile; about "
                     f"{prog.eta_seconds / 60:.1f} min of tile work left (tiles differ in cost "
                     "between scales)")
    if prog.finished:
        lines.append("finished: every sample is written")
    last = prog.last_event
    if last:
        ago = time.time() - last.get("time", time.time())
        lines.append(f"last event: {last.get('event')} {ago:.0f} s ago")
    return "\n".join(lines)
