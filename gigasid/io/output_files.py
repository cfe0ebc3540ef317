"""File-system helpers of the exports: free-space checks, atomic replacement, provenance JSON.

Outputs are written under a hidden ``.<name>.partial`` name (or in a staging directory) and moved
into place only when complete, so a failed or interrupted export never leaves a file that looks
valid.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from gigasid.io.export_options import ExportError


def _check_disk(directory: Path, nbytes: int, what: str) -> None:
    try:
        free = shutil.disk_usage(directory).free
    except OSError:  # pragma: no cover - exotic filesystems
        return
    if free < nbytes:
        raise ExportError(
            f"not enough free disk space in {directory} for {what}: need {nbytes / 1e9:.2f} GB, "
            f"{free / 1e9:.2f} GB free; free some space or export to another directory"
        )


def _write_provenance_json(path: Path, provenance: Mapping[str, Any] | None) -> Path:
    text = json.dumps(dict(provenance or {}), indent=2, sort_keys=True, default=str)
    _atomic_write_text(path, text + "\n")
    return path


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.partial")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def _partial_path(path: Path) -> Path:
    return path.with_name(f".{path.name}.partial")


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()
