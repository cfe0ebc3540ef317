"""Where a job's arrays and completion markers live: in memory, or a Zarr directory.

Both stores speak in global regions of named ``(C, H, W)`` float32 arrays. Tiles are whole
Zarr chunks, so no two tasks ever write the same chunk. A completion marker is written only
after its chunk write returned, so "marked" always means "the bytes are on disk".
"""

from __future__ import annotations

import errno
import os
import threading
from pathlib import Path

import numpy as np
import torch

from gigasid.errors import GigasidError

Region = tuple[int, int, int, int]


class DiskFullError(GigasidError):
    """The run directory's file system is full."""


class MemoryStore:
    """Arrays as tensors in this process; markers in a set (nothing survives the process)."""

    persistent = False

    def __init__(self) -> None:
        self.arrays: dict[str, torch.Tensor] = {}
        self.marks: set[str] = set()
        self.lock = threading.Lock()

    def ensure(self, name: str, shape: tuple[int, ...], chunk: int) -> None:
        with self.lock:
            if name not in self.arrays:
                self.arrays[name] = torch.empty(shape, dtype=torch.float32)

    def read(self, name: str, win: Region) -> torch.Tensor:
        return self.arrays[name][:, win[0]:win[1], win[2]:win[3]]

    def write(self, name: str, region: Region, value: torch.Tensor) -> None:
        y0, y1, x0, x1 = region
        self.arrays[name][:, y0:y1, x0:x1] = value.to("cpu", torch.float32)

    def drop(self, prefix: str) -> None:
        with self.lock:
            for k in [k for k in self.arrays if k.startswith(prefix)]:
                del self.arrays[k]

    def delete(self, name: str) -> None:
        """Free one array (no-op if it is gone already)."""
        with self.lock:
            self.arrays.pop(name, None)

    def is_done(self, key: str) -> bool:
        return key in self.marks

    def mark(self, key: str) -> None:
        with self.lock:
            self.marks.add(key)

    def marked(self, prefix: str) -> set[str]:
        """Every marker whose name starts with ``prefix``."""
        with self.lock:
            return {m for m in self.marks if m.startswith(prefix)}


def _disk_guard(exc: OSError, where: Path) -> None:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        raise DiskFullError(
            f"no space left on the device holding {where}; free some space (or choose "
            "another --out) and run the same command again: the run resumes where it "
            "stopped") from None
    raise exc


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path: Path) -> None:
    """Make a rename in ``path`` durable (where the platform allows opening directories)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # e.g. Windows: directories cannot be opened; renames are journaled
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class ZarrStore:
    """Arrays in ``RUN/data.zarr`` (Zarr v3, one chunk per tile); markers in ``RUN/markers``."""

    persistent = True

    def __init__(self, run_dir: Path, durable: bool = True):
        import zarr

        self.durable = durable
        self.root = Path(run_dir)
        self.marks_dir = self.root / "markers"
        try:
            self.marks_dir.mkdir(parents=True, exist_ok=True)
            self.group = zarr.open_group(str(self.root / "data.zarr"), mode="a")
        except OSError as exc:
            _disk_guard(exc, self.root)
        self._arrays: dict[str, object] = {}
        self._layouts: dict[str, object] = {}
        self.lock = threading.Lock()

    def clean_partial_writes(self) -> int:
        """Delete leftovers of writes killed mid-way (``*.partial``); returns how many."""
        n = 0
        for p in (self.root / "data.zarr").rglob("*.partial"):
            p.unlink(missing_ok=True)
            n += 1
        for p in self.marks_dir.glob("*.tmp"):
            p.unlink(missing_ok=True)
            n += 1
        return n

    def ensure(self, name: str, shape: tuple[int, ...], chunk: int) -> None:
        with self.lock:
            if name in self._arrays:
                return
            try:
                if name in self.group:
                    arr = self.group[name]
                    if tuple(arr.shape) != tuple(shape):
                        raise GigasidError(f"run directory array {name} has shape {arr.shape}, "
                                           f"expected {shape}; re-run with --fresh")
                else:
                    c = shape[0]
                    arr = self.group.create_array(
                        name, shape=shape, chunks=(c, chunk or shape[1], chunk or shape[2]),
                        dtype="float32", fill_value=0.0, compressors=None,
                        config={"write_empty_chunks": True})
            except OSError as exc:
                _disk_guard(exc, self.root)
            self._arrays[name] = arr

    def _arr(self, name: str):
        if name not in self._arrays:
            self._arrays[name] = self.group[name]
        return self._arrays[name]

    def _raw(self, name: str) -> tuple[tuple[int, ...], tuple[int, ...]] | None:
        """``(shape, chunks)`` when the array's chunk files are plain little-endian float32 in
        C order under the default ``c/0/i/j`` keys (how :meth:`ensure` creates them), so that
        tiles can be read and written as files; ``None`` sends the array through Zarr."""
        hit = self._layouts.get(name)
        if hit is None:
            hit = False
            try:
                from zarr.codecs import BytesCodec

                arr = self._arr(name)
                meta = arr.metadata
                codecs = tuple(meta.codecs)
                if (meta.zarr_format == 3 and not getattr(meta, "storage_transformers", ())
                        and len(codecs) == 1 and isinstance(codecs[0], BytesCodec)
                        and codecs[0].endian is not None and codecs[0].endian.value == "little"
                        and np.dtype(arr.dtype) == np.float32 and arr.order == "C"
                        and float(meta.fill_value) == 0.0 and len(arr.shape) == 3
                        and meta.encode_chunk_key((0, 1, 2)) == "c/0/1/2"):
                    hit = (tuple(int(v) for v in arr.shape), tuple(int(v) for v in arr.chunks))
            except (ImportError, AttributeError, TypeError, ValueError):
                hit = False
            self._layouts[name] = hit
        return hit or None

    def read(self, name: str, win: Region) -> torch.Tensor:
        raw = self._raw(name)
        if raw is None:
            a = self._arr(name)[:, win[0]:win[1], win[2]:win[3]]
            return torch.from_numpy(np.asarray(a))
        (c, h, w), (_, th, tw) = raw
        if win[0] < 0 or win[2] < 0:
            raise ValueError(f"window {win} starts outside array {name}")
        y0, y1, x0, x1 = win[0], min(win[1], h), win[2], min(win[3], w)
        out = np.zeros((c, max(y1 - y0, 0), max(x1 - x0, 0)), dtype=np.float32)
        for iy in range(y0 // th, -(-y1 // th)):
            for ix in range(x0 // tw, -(-x1 // tw)):
                path = self._chunk_path(name, (iy, ix))
                try:
                    chunk = np.memmap(path, dtype="<f4", mode="r", shape=(c, th, tw))
                except FileNotFoundError:  # never written: the fill value, as Zarr reads it
                    continue
                except ValueError:
                    raise GigasidError(
                        f"run directory chunk {path} is truncated (a write was cut off?); "
                        "run the same command again to repair it") from None
                cy0, cx0 = iy * th, ix * tw
                ya, yb = max(y0, cy0), min(y1, cy0 + th)
                xa, xb = max(x0, cx0), min(x1, cx0 + tw)
                out[:, ya - y0:yb - y0, xa - x0:xb - x0] = chunk[:, ya - cy0:yb - cy0,
                                                                 xa - cx0:xb - cx0]
                del chunk
        return torch.from_numpy(out)

    def write(self, name: str, region: Region, value: torch.Tensor) -> None:
        """Write a tile (whole chunks). Each chunk goes to a temporary file that is renamed
        into place; the chunk files and their directory are then flushed to the disk, so a
        marker written afterwards survives a power loss together with the bytes it stands for."""
        y0, y1, x0, x1 = region
        arr = self._arr(name)
        data = value.to("cpu", torch.float32).numpy()
        raw = self._raw(name)
        try:
            if raw is not None and self._aligned(raw, region):
                self._write_chunks(name, raw, region, data)
                return
            arr[:, y0:y1, x0:x1] = data
            if self.durable:
                _, th, tw = arr.chunks
                for iy in range(y0 // th, (y1 - 1) // th + 1):
                    for ix in range(x0 // tw, (x1 - 1) // tw + 1):
                        _fsync_file(self._chunk_path(name, (iy, ix)))
                _fsync_dir(self._chunk_path(name, (y0 // th, 0)).parent)
        except OSError as exc:
            _disk_guard(exc, self.root)

    @staticmethod
    def _aligned(raw, region: Region) -> bool:
        """Whether ``region`` covers whole chunks (edge chunks up to the array's border)."""
        (_, h, w), (_, th, tw) = raw
        y0, y1, x0, x1 = region
        return (y0 % th == 0 and x0 % tw == 0 and (y1 % th == 0 or y1 == h)
                and (x1 % tw == 0 or x1 == w) and 0 <= y0 < y1 <= h and 0 <= x0 < x1 <= w)

    def _write_chunks(self, name: str, raw, region: Region, data: np.ndarray) -> None:
        """Whole-chunk writes as Zarr would store them (edge chunks padded with the fill
        value), each through a temporary file and a rename, so a reader never sees half a
        chunk."""
        (c, _, _), (_, th, tw) = raw
        y0, y1, x0, x1 = region
        tag = f"{os.getpid()}-{threading.get_ident()}"
        parents = set()
        buf = None
        for iy in range(y0 // th, -(-y1 // th)):
            for ix in range(x0 // tw, -(-x1 // tw)):
                ya, yb = iy * th - y0, min((iy + 1) * th, y1) - y0
                xa, xb = ix * tw - x0, min((ix + 1) * tw, x1) - x0
                block = data[:, ya:yb, xa:xb]
                if block.shape[1:] != (th, tw):
                    if buf is None:
                        buf = np.zeros((c, th, tw), dtype=np.float32)
                    buf[...] = 0.0
                    buf[:, :yb - ya, :xb - xa] = block
                    block = buf
                path = self._chunk_path(name, (iy, ix))
                path.parent.mkdir(parents=True, exist_ok=True)
                tmp = path.with_name(f"{path.name}.{tag}.partial")
                with open(tmp, "wb") as fh:
                    fh.write(np.ascontiguousarray(block, dtype="<f4").data)
                    if self.durable:
                        fh.flush()
                        os.fsync(fh.fileno())
                os.replace(tmp, path)
                parents.add(path.parent)
        if self.durable:
            for d in parents:
                _fsync_dir(d)

    def drop(self, prefix: str) -> None:  # keep everything on disk: it is the resume state
        pass

    def delete(self, name: str) -> None:
        """Delete one array from the run directory (no-op if it is gone already)."""
        import shutil

        with self.lock:
            self._arrays.pop(name, None)
            self._layouts.pop(name, None)
        shutil.rmtree(self.root / "data.zarr" / name, ignore_errors=True)

    def _chunk_path(self, name: str, chunk_index: tuple[int, int]) -> Path:
        return (self.root / "data.zarr" / name / "c" / "0" / str(chunk_index[0])
                / str(chunk_index[1]))

    def is_done(self, key: str) -> bool:
        return (self.marks_dir / key).exists()

    def mark(self, key: str) -> None:
        path = self.marks_dir / key
        # A name per writer: twins of a task (a replay on another worker) never share one.
        tmp = path.with_name(f"{key}.{os.getpid()}-{threading.get_ident()}.tmp")
        try:
            tmp.write_bytes(b"")
            os.replace(tmp, path)
            if self.durable:
                _fsync_dir(self.marks_dir)
        except OSError as exc:
            _disk_guard(exc, self.root)

    def marked(self, prefix: str) -> set[str]:
        """Every marker whose name starts with ``prefix`` (one directory listing)."""
        return {n for n in os.listdir(self.marks_dir) if n.startswith(prefix)
                and not n.endswith(".tmp")}

    def chunk_ok(self, name: str, chunk_index: tuple[int, int]) -> bool:
        """Whether a tile's chunk file exists with the size of a full uncompressed chunk."""
        try:
            c, th, tw = self._arr(name).chunks
        except KeyError:  # the array is gone
            return False
        path = self._chunk_path(name, chunk_index)
        return path.is_file() and path.stat().st_size == c * th * tw * 4

    def unmark(self, prefix: str) -> int:
        """Remove every marker whose name starts with ``prefix``; returns how many."""
        n = 0
        for p in self.marks_dir.glob(prefix + "*"):
            p.unlink(missing_ok=True)
            n += 1
        return n
