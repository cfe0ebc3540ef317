"""Resume repair: check the chunks a resumed sample still needs, restart damaged scales."""

from __future__ import annotations

from gigasid.engine.job import Job
from gigasid.engine.progress import Reporter
from gigasid.engine.worker import tile_marker, wave_array


def repair_state(job: Job, store, sample: int, reporter: Reporter) -> list[int]:
    """Check the chunks a resumed sample still needs; recompute scales whose state is damaged.

    For every tile with progress, the chunks its latest done wave wrote and the one before
    it (a neighbour's next wave may still read it) must be present and whole, unless that
    wave's array was freed because a complete later wave made it unreadable. If one is
    missing or truncated, that scale and all finer ones restart from their first wave: the
    output is deterministic, so the bytes are the same as if nothing had happened. Returns
    the restarted scales.
    """
    if not store.persistent:
        return []
    restarted: list[int] = []
    for s in reversed(range(job.plan.num_scales)):
        if restarted:
            store.unmark(f"x{sample}-s{s}-")
            restarted.append(s)
            continue
        n = len(job.program(s, job.cfg.seed + sample).transitions)
        sp = job.plan.scales[s]
        marks = store.marked(f"x{sample}-s{s}-w")
        complete = max((w for w in range(n + 1) if tile_marker(sample, s, w) in marks), default=-1)
        tile = sp.tile or max(sp.stored_shape)
        bad: list[int] = []
        for ti, (y0, _, x0, _) in enumerate(sp.tiles):
            # Waves overlap, so each tile has its own progress: its latest chunk and the
            # one before (which neighbours may still read) must both be whole.
            last = max((w for w in range(n + 1) if tile_marker(sample, s, w) in marks
                        or tile_marker(sample, s, w, ti) in marks), default=None)
            if last is None:
                continue
            names = {wave_array(sample, s, w) for w in (last, last - 1) if w >= max(0, complete)}
            if not all(store.chunk_ok(nm, (y0 // tile, x0 // tile)) for nm in names):
                bad.append(ti)
        if bad:
            reporter.event("state_damaged", sample=sample, scale=s, tiles=bad)
            store.unmark(f"x{sample}-s{s}-")
            restarted.append(s)
    return restarted


