"""``gigasid status RUN``: progress of a run directory from its markers and log."""

from __future__ import annotations

import json
import time
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
        for line in (run_dir / "log.jsonl").read_text().splitlines():
            try:
                events.append(json.loads(line))
            except json.JSONDecodeError:
                continue  # a line cut by a kill
    return job, plan, events


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


def run_status(run_dir: Path) -> str:
    """Human-readable status: done/total steps and tiles per scale, rate and ETA."""
    run_dir = Path(run_dir)
    job, plan, events = _load(run_dir)
    lines = [f"run {run_dir}: {job.get('config', {}).get('app', '?')} "
             f"(gigasid {job.get('gigasid', '?')})"]
    setup = _setup_line(events)
    if not plan:
        lines.append(setup or "not started yet (no plan.json)")
        return "\n".join(lines)
    if setup:  # a resumed run sets up again before any tile runs
        lines.append(setup)
    marks = {p.name for p in (run_dir / "markers").glob("*")} if (run_dir / "markers").exists() \
        else set()
    steps = {e["scale"]: e["num_transitions"] for e in events if e.get("event") == "scale_start"}
    total_tiles = done_tiles = 0
    # In-memory runs leave no markers: their log says which samples were written.
    logged = {e.get("sample") for e in events if e.get("event") in ("sample_done",
                                                                   "sample_skipped")}
    for i in range(plan["num_samples"]):
        written = f"x{i}-written" in marks or i in logged
        lines.append(f"sample {i}: {'done' if written else 'in progress'}")
        if written:
            continue
        for sp in reversed(plan["scales"]):
            s, ntiles = sp["index"], len(sp["tiles"])
            n = steps.get(s, sp["num_steps"])
            waves = sum(1 for w in range(n + 1) if f"x{i}-s{s}-w{w}" in marks)
            # Waves overlap (a tile waits only for its neighbours), so count every tile
            # marker of the scale, not only those of the next wave.
            tiles_here = sum(1 for m in marks if m.startswith(f"x{i}-s{s}-w") and "-t" in m)
            ahead = tiles_here - waves * ntiles
            total_tiles += (n + 1) * ntiles
            done_tiles += max(tiles_here, waves * ntiles)
            state = "done" if waves == n + 1 else f"step {max(0, waves - 1)}/{n}, " \
                f"{max(0, ahead)} tile-steps of later steps done ({ntiles} tiles per step)"
            lines.append(f"  scale {s} ({sp['shape'][1]}x{sp['shape'][0]}): {state}")
    tiles = [e for e in events if e.get("event") == "tile_done"]
    last = events[-1] if events else {}
    if tiles and done_tiles < total_tiles:
        rate = sum(e["seconds"] for e in tiles[-200:]) / len(tiles[-200:])
        eta = rate * (total_tiles - done_tiles)
        lines.append(f"measured {rate:.2f} s per tile; about {eta / 60:.1f} min of tile work "
                     "left (tiles differ in cost between scales)")
    if any(e.get("event") == "job_done" for e in events) and all(
            f"x{i}-written" in marks or i in logged for i in range(plan["num_samples"])):
        lines.append("finished: every sample is written")
    if last:
        ago = time.time() - last.get("time", time.time())
        lines.append(f"last event: {last.get('event')} {ago:.0f} s ago")
    return "\n".join(lines)
