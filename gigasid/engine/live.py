"""Live view of a run directory: where a job stands, and a picture of it, while it runs.

:class:`LiveView` reads a run directory - never writing into it, never taking its driver
lock, so it can watch a job that another process drives - and answers two questions:

* :meth:`LiveView.status`: the sample and scale being computed, its finished tiles, progress
  and ETA (the numbers of ``gigasid status``, from :func:`gigasid.engine.status.progress_of`);
* :meth:`LiveView.snapshot_png`: the latest finished scale, upsampled to the current scale's
  size, with every finished tile of the current scale drawn over it, at most ``max_side``
  pixels on its long side.

A tile of a scale is *finished* when its last wave is marked: wave ``n`` of a scale with
``n`` steps writes the scale's result into ``data.zarr/x<i>/s<s>/w<n>`` (one chunk per tile),
and its marker ``x<i>-s<s>-w<n>-t<t>`` is written only after the chunk reached the disk - the
same markers a resumed run trusts. Result arrays are never freed while the run goes on, so a
marked tile's chunk can always be read.

Cost stays small for gigapixel runs: the snapshot is built incrementally (each finished tile
is read once, when it first appears), and only every ``stride``-th row and column of it
(memory-mapped chunk files touch only those rows). The log is read incrementally too.
"""

from __future__ import annotations

import io
import json
import math
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from gigasid.engine.progress import _fmt_eta
from gigasid.engine.status import RunProgress, list_markers, parse_events, progress_of

__all__ = ["LiveView", "MAX_SIDE"]

#: Longest side of a snapshot (pixels): enough for a screen, small enough to encode each second.
MAX_SIDE = 1536
#: Grey of the parts of a snapshot where nothing is known yet (no finished scale or tile).
BLANK = 40
#: ``tile_done`` events the log reader keeps (the latest): the measured tile rate uses no more.
_TILE_EVENTS_KEPT = 200


class _Unready(Exception):
    """A chunk cannot be read yet (missing, truncated, being replaced): try again later."""


class _LogTail:
    """Reads ``log.jsonl`` incrementally, keeping only the events progress needs.

    A line still being written (no newline yet) is left for the next read. The log only grows
    during a run; when it shrinks (a fresh start), it is read again from the beginning.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._reset()

    def _reset(self) -> None:
        self.offset = 0
        self.count = 0
        self.events: list[tuple[int, dict]] = []  # (position in the log, event)
        self.tiles: list[tuple[int, dict]] = []  # the latest tile_done events
        self.codec: tuple[int, dict] | None = None  # the latest codec_tile event

    def read(self) -> list[dict]:
        try:
            size = self.path.stat().st_size
        except OSError:
            size = 0
        if size < self.offset:
            self._reset()  # a fresh start replaced the log
        if size > self.offset:
            with open(self.path, "rb") as fh:
                fh.seek(self.offset)
                data = fh.read(size - self.offset)
            end = data.rfind(b"\n") + 1
            self.offset += end
            for ev in parse_events(data[:end].decode("utf-8", "replace")):
                self.count += 1
                kind = ev.get("event")
                if kind == "tile_done":
                    # the rate needs only the latest ones; a gigapixel run logs 100 000s
                    self.tiles.append((self.count, ev))
                    del self.tiles[:-_TILE_EVENTS_KEPT]
                elif kind == "codec_tile":
                    self.codec = (self.count, ev)
                else:
                    self.events.append((self.count, ev))
        merged = self.events + self.tiles + ([self.codec] if self.codec else [])
        return [ev for _, ev in sorted(merged, key=lambda item: item[0])]


@dataclass
class _Canvas:
    """The snapshot of one (sample, scale), built up as its tiles finish.

    ``background`` is the previous finished scale resized to the canvas (full-image
    coordinates); ``current`` holds the finished tiles in stored coordinates (the leading
    half of a mirrored axis), NaN elsewhere. Both sample every ``stride``-th pixel.
    """

    key: tuple
    stride: int
    background: np.ndarray
    current: np.ndarray
    latent: bool
    drawn: set[int] = field(default_factory=set)


def _json(path: Path) -> dict | None:
    """A JSON file, or None if it is missing or half-written."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _mtime(path: Path) -> int | None:
    try:
        return path.stat().st_mtime_ns
    except OSError:
        return None


def _stride(shape: tuple[int, int], max_side: int) -> int:
    """Smallest integer stride that brings ``shape``'s long side to ``max_side`` or less."""
    return max(1, math.ceil(max(shape) / max_side))


def _sampled(lo: int, hi: int, stride: int) -> range:
    """Global coordinates of ``[lo, hi)`` on the ``stride`` grid (multiples of ``stride``)."""
    return range(-(-lo // stride) * stride, hi, stride)


class _StateArray:
    """Read-only access to one state array of ``data.zarr``, tile by tile and strided."""

    def __init__(self, path: Path) -> None:
        meta = _json(path / "zarr.json")
        if meta is None or meta.get("node_type") != "array":
            raise _Unready(f"{path} is not written yet")
        self.path = path
        self.shape = tuple(int(v) for v in meta["shape"])
        self.chunks = tuple(int(v) for v in meta["chunk_grid"]["configuration"]["chunk_shape"])
        codecs = meta.get("codecs", [])
        key = meta.get("chunk_key_encoding", {})
        # The layout the engine's store writes: plain little-endian float32 chunk files under
        # c/0/i/j. Those are memory-mapped, so a strided read touches only the rows it keeps;
        # any other layout goes through Zarr (whole chunks decoded).
        self.raw = (meta.get("data_type") == "float32" and len(self.shape) == 3
                    and len(codecs) == 1 and codecs[0].get("name") == "bytes"
                    and codecs[0].get("configuration", {}).get("endian", "little") == "little"
                    and key.get("name") == "default"
                    and key.get("configuration", {}).get("separator", "/") == "/"
                    and not meta.get("storage_transformers"))
        self._zarr: Any = None

    def read(self, region: tuple[int, int, int, int], stride: int, channels: int) -> np.ndarray:
        """The first ``channels`` channels of ``region`` (stored coordinates) on the global
        ``stride`` grid."""
        y0, y1, x0, x1 = region
        ys, xs = _sampled(y0, y1, stride), _sampled(x0, x1, stride)
        c, th, tw = self.chunks
        if not self.raw:
            return self._read_zarr(ys, xs, stride, channels)
        out = np.empty((channels, len(ys), len(xs)), dtype=np.float32)
        for iy in range(y0 // th, -(-y1 // th)):
            for ix in range(x0 // tw, -(-x1 // tw)):
                path = self.path / "c" / "0" / str(iy) / str(ix)
                try:
                    # a chunk is replaced by a rename, so a reader sees the old file or the
                    # new one; the size check catches anything else (a cut-off copy)
                    if path.stat().st_size != c * th * tw * 4:
                        raise _Unready(f"{path} is incomplete")
                    chunk = np.memmap(path, dtype="<f4", mode="r", shape=(c, th, tw))
                except (OSError, ValueError) as exc:
                    raise _Unready(str(exc)) from None
                cy, cx = iy * th, ix * tw
                rows = [i for i, y in enumerate(ys) if cy <= y < cy + th]
                cols = [j for j, x in enumerate(xs) if cx <= x < cx + tw]
                if rows and cols:
                    ly, lx = ys[rows[0]] - cy, xs[cols[0]] - cx
                    out[:, rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1] = chunk[
                        :channels, ly:ly + (len(rows) - 1) * stride + 1:stride,
                        lx:lx + (len(cols) - 1) * stride + 1:stride]
                del chunk
        return out

    def _read_zarr(self, ys: range, xs: range, stride: int, channels: int) -> np.ndarray:
        try:
            if self._zarr is None:
                import zarr

                self._zarr = zarr.open_array(str(self.path), mode="r")
            if not len(ys) or not len(xs):
                return np.empty((channels, len(ys), len(xs)), dtype=np.float32)
            a = self._zarr[:channels, ys.start:ys.stop:stride, xs.start:xs.stop:stride]
            return np.asarray(a, dtype=np.float32)
        except Exception as exc:  # noqa: BLE001 - any codec error of a chunk being written
            raise _Unready(str(exc)) from None


def _unfold(stored: np.ndarray, domain: list[str], full: tuple[int, int]) -> np.ndarray:
    """The full image of a scale from its stored part: a mirrored axis stores its leading
    half only, the trailing half is its reflection (exact at stride 1, within a stride else).
    """
    out = stored
    for axis, kind in ((1, domain[0]), (2, domain[1])):
        need = full[axis - 1] - out.shape[axis]
        if kind == "mirror" and need > 0:
            head = out[:, :need] if axis == 1 else out[:, :, :need]
            out = np.concatenate([out, np.flip(head, axis)], axis)
    return out[:, :full[0], :full[1]]


def _resize(img: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``(C, h, w)`` float image resized (bilinear) to ``size``; NaN stays NaN (nearest)."""
    from PIL import Image

    if img.shape[1:] == size:
        return img
    nan = np.isnan(img)
    out = np.empty((img.shape[0], *size), dtype=np.float32)
    for k in range(img.shape[0]):
        band = Image.fromarray(np.where(nan[k], 0.0, img[k]).astype(np.float32), mode="F")
        out[k] = np.asarray(band.resize((size[1], size[0]), Image.BILINEAR))
        if nan[k].any():
            hole = Image.fromarray(nan[k].astype(np.uint8) * 255)
            out[k][np.asarray(hole.resize((size[1], size[0]), Image.NEAREST)) > 0] = np.nan
    return out


def to_rgb(img: np.ndarray, latent: bool) -> np.ndarray:
    """``(C, h, w)`` state (floats in ``[-1, 1]``, NaN = unknown) -> ``(h, w, 3)`` uint8.

    Pixels: one channel is grey, three are RGB, a fourth (alpha) is ignored. A latent is not
    an image: its first three channels are stretched to their 1st-99th percentiles, a plain
    look at its structure rather than its colours.
    """
    rgb = img[:3] if img.shape[0] >= 3 else np.repeat(img[:1], 3, axis=0)
    unknown = np.isnan(rgb).any(axis=0)
    if latent:
        out = np.zeros(rgb.shape, dtype=np.float32)
        for k in range(3):
            known = rgb[k][~unknown]
            if known.size:
                lo, hi = np.percentile(known, [1, 99])
                out[k] = (rgb[k] - lo) / max(hi - lo, 1e-6)
    else:
        out = (rgb + 1.0) / 2.0
    out = np.clip(np.nan_to_num(out), 0.0, 1.0)
    u8 = (out * 255.0 + 0.5).astype(np.uint8).transpose(1, 2, 0)
    u8[unknown] = BLANK
    return u8


class LiveView:
    """What a live page shows of a run directory (thread-safe; see the module docstring).

    Parameters
    ----------
    run_dir
        The run directory. It may not exist yet: the view then waits for the run to start.
    sample
        The sample to show; None follows the sample being computed (the last one once the
        run is finished).
    max_side
        Longest side of a snapshot, pixels.
    min_interval
        Seconds between two reads of the run directory, however many clients poll.
    """

    def __init__(self, run_dir: str | os.PathLike[str], sample: int | None = None,
                 max_side: int = MAX_SIDE, min_interval: float = 0.5) -> None:
        self.run_dir = Path(run_dir)
        self.sample = sample
        self.max_side = int(max_side)
        self.min_interval = float(min_interval)
        self._lock = threading.Lock()
        self._log = _LogTail(self.run_dir / "log.jsonl")
        self._job: dict | None = None
        self._plan: dict = {}
        self._canvas: _Canvas | None = None
        self._arrays: dict[str, _StateArray] = {}
        self._status: dict[str, Any] = {"state": "starting", "finished": False,
                                        "snapshot": 0, "run": str(self.run_dir)}
        self._version = 0
        self._png: tuple[int, bytes] | None = None
        self._checked = -math.inf
        self._stamp: tuple[int | None, ...] = ()

    # ------------------------------------------------------------------ public interface

    def status(self) -> dict[str, Any]:
        """The JSON status: ``state``, sample, scale, tiles, percent, ETA, snapshot version."""
        with self._lock:
            self._refresh()
            return dict(self._status)

    def snapshot_png(self) -> bytes:
        """The current snapshot as PNG bytes (encoded again only when it changed)."""
        with self._lock:
            self._refresh()
            if self._png is None or self._png[0] != self._version:
                self._png = (self._version, self._encode())
            return self._png[1]

    def snapshot(self) -> np.ndarray:
        """The current snapshot as an ``(h, w, 3)`` uint8 array."""
        with self._lock:
            self._refresh()
            return self._rgb()

    # ------------------------------------------------------------------ reading the run

    def _refresh(self) -> None:
        now = time.monotonic()
        if now - self._checked < self.min_interval:
            return
        self._checked = now
        stamp = tuple(_mtime(self.run_dir / name) for name in ("job.yaml", "plan.json"))
        if stamp[0] is None:
            self._status = {"state": "waiting for the run to start", "finished": False,
                            "snapshot": self._version, "run": str(self.run_dir)}
            return
        if stamp != self._stamp:  # a new run (or a fresh start) in the directory
            import yaml

            try:
                job = yaml.safe_load((self.run_dir / "job.yaml").read_text()) or {}
            except (OSError, yaml.YAMLError):
                return  # being written: next time
            plan = _json(self.run_dir / "plan.json") if stamp[1] is not None else {}
            if plan is None:
                return  # being written: next time
            self._job, self._plan, self._stamp = job, plan, stamp
            self._canvas, self._arrays = None, {}
        events = self._log.read()
        marks = list_markers(self.run_dir) if self._plan else set()
        prog = progress_of(self._job, self._plan, events, marks)
        sample = self._pick_sample(prog)
        scale = self._current_scale(prog, sample)
        if sample is not None and scale is not None:
            self._draw(prog, sample, scale)
        self._status = self._describe(prog, sample, scale)

    def _pick_sample(self, prog: RunProgress) -> int | None:
        if not self._plan:
            return None
        if self.sample is not None:
            return min(self.sample, self._plan["num_samples"] - 1)
        pending = [i for i, written in enumerate(prog.written) if not written]
        return pending[0] if pending else self._plan["num_samples"] - 1

    def _current_scale(self, prog: RunProgress, sample: int | None) -> int | None:
        """The coarsest scale of ``sample`` not done yet (the finest once all are done)."""
        if sample is None:
            return None
        for sc in prog.scales.get(sample, []):  # coarsest first
            if not sc.done:
                return sc.scale
        return 0

    def _final_wave(self, prog: RunProgress, scale: int) -> int:
        """Index of the wave that writes ``scale``'s result (its number of steps)."""
        for e in reversed(prog.events):
            if e.get("event") == "scale_start" and e.get("scale") == scale:
                return int(e["num_transitions"])
        sp = self._plan["scales"][scale]
        return int(sp.get("transitions", sp["num_steps"]))

    def _array(self, sample: int, scale: int, wave: int) -> _StateArray:
        path = self.run_dir / "data.zarr" / f"x{sample}" / f"s{scale}" / f"w{wave}"
        key = str(path)
        if key not in self._arrays:
            self._arrays[key] = _StateArray(path)
        return self._arrays[key]

    def _blank(self, scale: int, stride: int) -> np.ndarray:
        """A NaN image of a scale's stored shape on the ``stride`` grid."""
        h, w = self._plan["scales"][scale]["stored_shape"]
        return np.full((self._channels, len(_sampled(0, h, stride)),
                        len(_sampled(0, w, stride))), np.nan, dtype=np.float32)

    def _read_scale(self, sample: int, scale: int, wave: int, stride: int) -> np.ndarray:
        """The stored image of a scale's wave on the ``stride`` grid (NaN where a tile
        cannot be read)."""
        img = self._blank(scale, stride)
        for t, region in enumerate(self._plan["scales"][scale]["tiles"]):
            self._paste(img, sample, scale, wave, stride, t, region)
        return img

    def _paste(self, img: np.ndarray, sample: int, scale: int, wave: int, stride: int,
               t: int, region: list[int]) -> bool:
        y0, y1, x0, x1 = region
        try:
            block = self._array(sample, scale, wave).read((y0, y1, x0, x1), stride,
                                                          self._channels)
        except _Unready:
            self._arrays.pop(str(self.run_dir / "data.zarr" / f"x{sample}" / f"s{scale}"
                                 / f"w{wave}"), None)
            return False
        ry, rx = -(-y0 // stride), -(-x0 // stride)
        img[:, ry:ry + block.shape[1], rx:rx + block.shape[2]] = block
        return True

    def _draw(self, prog: RunProgress, sample: int, scale: int) -> None:
        """Bring the canvas up to date: a new background when the scale changed, then every
        newly finished tile of the current scale."""
        sp = self._plan["scales"][scale]
        full = tuple(sp["shape"])
        stride = _stride(full, self.max_side)
        size = (len(_sampled(0, full[0], stride)), len(_sampled(0, full[1], stride)))
        key = (sample, scale)
        if self._canvas is None or self._canvas.key != key:
            in_memory = self._in_memory(prog, sample)  # then the background is a PNG
            self._canvas = _Canvas(key, stride, self._background(prog, sample, scale, size),
                                   self._blank(scale, stride), self.latent and not in_memory)
            self._version += 1
        canvas = self._canvas
        if self._in_memory(prog, sample):
            # no state to read: the background is the written image, every tile of it
            canvas.drawn = set(range(len(sp["tiles"])))
            return
        wave = self._final_wave(prog, scale)
        whole = f"x{sample}-s{scale}-w{wave}" in prog.marks or prog.written[sample]
        changed = False
        for t, region in enumerate(sp["tiles"]):
            if t in canvas.drawn:
                continue
            if whole or f"x{sample}-s{scale}-w{wave}-t{t}" in prog.marks:
                if self._paste(canvas.current, sample, scale, wave, stride, t, region):
                    canvas.drawn.add(t)
                    changed = True
        if changed:
            self._version += 1

    def _background(self, prog: RunProgress, sample: int, scale: int,
                    size: tuple[int, int]) -> np.ndarray:
        """The latest finished scale (the next coarser one) resized to the canvas ``size``;
        NaN when there is none, or the written image of a finished in-memory run."""
        channels = self._channels
        if self._in_memory(prog, sample):
            return self._written_image(sample, size, channels)
        coarser = scale + 1
        if coarser >= len(self._plan["scales"]):
            return np.full((channels, *size), np.nan, dtype=np.float32)
        sp = self._plan["scales"][coarser]
        shape = tuple(sp["shape"])
        stride = _stride(shape, self.max_side)
        img = self._read_scale(sample, coarser, self._final_wave(prog, coarser), stride)
        full = (len(_sampled(0, shape[0], stride)), len(_sampled(0, shape[1], stride)))
        return _resize(_unfold(img, sp["domain"], full), size)

    def _in_memory(self, prog: RunProgress, sample: int) -> bool:
        """Whether ``sample`` is written by a run that kept no state (an in-memory store)."""
        return prog.written[sample] and not (self.run_dir / "data.zarr" / f"x{sample}").is_dir()

    def _written_image(self, sample: int, size: tuple[int, int], channels: int) -> np.ndarray:
        """A finished in-memory run keeps no state: show its PNG, as ``[-1, 1]`` (16-bit and
        float runs: the 8-bit preview, rendered through the run's display window)."""
        from PIL import Image

        multi = self._plan.get("num_samples", 1) > 1
        paths = [self.run_dir / f"sample_{sample:03d}.png",
                 self.run_dir / "out" / (f"sample_{sample:03d}" if multi else "") / "preview.jpg"]
        if self._plan.get("pixel_format", {}).get("dtype", "uint8") != "uint8":
            paths.reverse()
        for path in paths:
            try:
                with Image.open(path) as im:
                    rgb = np.asarray(im.convert("RGB").resize((size[1], size[0])), np.float32)
                break
            except OSError:
                continue
        else:
            return np.full((channels, *size), np.nan, dtype=np.float32)
        img = rgb.transpose(2, 0, 1) / 127.5 - 1.0
        return img if channels >= 3 else img.mean(axis=0, keepdims=True)

    # ------------------------------------------------------------------ rendering

    @property
    def _channels(self) -> int:
        """State channels a snapshot shows (and reads): grey, or the first three."""
        return 3 if self._plan.get("channels", 3) >= 3 else 1

    @property
    def latent(self) -> bool:
        """Whether the state is a latent (a VAE codec's), not pixels."""
        return int(self._plan.get("codec", {}).get("factor", 1)) > 1

    def _rgb(self) -> np.ndarray:
        c = self._canvas
        if c is None:
            return np.full((64, 64, 3), BLANK, dtype=np.uint8)
        sp = self._plan["scales"][c.key[1]]
        full = _unfold(c.current, sp["domain"], c.background.shape[1:])
        return to_rgb(np.where(np.isnan(full), c.background, full), c.latent)

    def _encode(self) -> bytes:
        from PIL import Image

        buf = io.BytesIO()
        # speed over size: the page fetches a snapshot each time a tile finishes
        Image.fromarray(self._rgb()).save(buf, format="PNG", compress_level=1)
        return buf.getvalue()

    def _describe(self, prog: RunProgress, sample: int | None,
                  scale: int | None) -> dict[str, Any]:
        """The JSON status (see :meth:`status`)."""
        plan, last = self._plan, prog.last_event
        out: dict[str, Any] = {
            "run": str(self.run_dir), "app": (self._job or {}).get("config", {}).get("app"),
            "finished": prog.finished, "snapshot": self._version, "latent": self.latent,
            "percent": (round(100.0 * prog.done_tiles / prog.total_tiles, 1)
                        if prog.total_tiles else 0.0),
            "tile_steps_done": prog.done_tiles, "tile_steps_total": prog.total_tiles,
            "eta_seconds": None if prog.eta_seconds is None else round(prog.eta_seconds, 1),
            "eta": None if prog.eta_seconds is None else _fmt_eta(prog.eta_seconds),
            "last_event": last.get("event"),
            "last_event_age": round(time.time() - last["time"], 1) if "time" in last else None,
        }
        if prog.finished:
            state = "finished"
        elif last.get("event") in ("error", "interrupted"):
            state = "stopped: " + (last.get("message") or "interrupted")
        elif prog.setup:
            state = prog.setup.split(";")[0]  # "setting up: <step> (k of n)"
        elif not plan:
            state = "starting"
        elif sample is not None and prog.written[sample]:
            state = "writing outputs" if not all(prog.written) else "finishing"
        elif sample is not None and all(sc.done for sc in prog.scales.get(sample, [])):
            state = "writing outputs"
            if last.get("event") == "codec_tile":
                state += f" (VAE {last['what']}: tile {last['done']} of {last['tiles']})"
        else:
            state = "running"
        out["state"] = state
        if sample is None or scale is None:
            return out
        sp = plan["scales"][scale]
        sc = next((s for s in prog.scales.get(sample, []) if s.scale == scale), None)
        canvas = self._canvas
        out.update({
            "sample": sample, "num_samples": plan["num_samples"],
            "scale": scale, "num_scales": len(plan["scales"]),
            "scale_shape": list(sp["shape"]),
            "step": None if sc is None else max(0, sc.waves - 1),
            "steps": None if sc is None else sc.transitions,
            "tiles_done": len(canvas.drawn) if canvas else 0, "tiles_total": len(sp["tiles"]),
            "snapshot_shape": list(canvas.background.shape[1:]) if canvas else None,
            "viewer": self._viewer(sample),
        })
        if self.latent:
            factor = int(plan["codec"]["factor"])
            out["note"] = (f"latent preview: the first 3 of {plan['channels']} latent channels, "
                           f"normalised; the image is {factor}x larger per side once decoded")
        return out

    def _viewer(self, sample: int) -> str | None:
        """Path of the sample's deep-zoom viewer below ``RUN/out`` (what the live server
        serves), once it is written."""
        multi = self._plan.get("num_samples", 1) > 1
        rel = f"sample_{sample:03d}/index.html" if multi else "index.html"
        return rel if (self.run_dir / "out" / rel).is_file() else None
