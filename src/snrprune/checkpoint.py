"""Checkpoints that survive a crash mid-write and never execute code on load.

A checkpoint is one ``torch.save``d dict of tensors, numbers, strings, lists and dicts, so it loads
with ``torch.load(..., weights_only=True)`` (no pickled classes, nothing to trust). Saving writes a
temporary file in the same folder, fsyncs it and renames it over the old one (``os.replace`` is
atomic), so a reader sees either the previous complete checkpoint or the new complete one.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import tempfile
from pathlib import Path
from typing import Any

import torch

#: Written into every checkpoint so that a foreign ``.pt`` file is recognised as such.
FORMAT = "snrprune-checkpoint"
VERSION = 1

#: The entries every checkpoint of this version has (see :func:`snrprune.training.train`).
REQUIRED_KEYS = ("format", "version", "config", "epoch", "model", "optimizer", "scheduler", "pruning", "rng")


class CheckpointError(RuntimeError):
    """A checkpoint is missing, unreadable, truncated, or was not written by snrprune."""


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save`` to ``path`` so that a crash leaves either the old file or the new one, never half."""
    path = Path(path)
    fd, tmp = open_temp_beside(path)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


def open_temp_beside(path: Path) -> tuple[int, str]:
    """A new hidden temporary file next to ``path`` (same file system, so ``os.replace`` is atomic).

    Unlike ``tempfile.mkstemp`` (mode 0600) it gets the permissions of any other new file (umask).
    """
    for _ in range(100):
        tmp = path.parent / f".{path.name}.{secrets.token_hex(4)}.tmp"
        try:
            return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), str(tmp)
        except FileExistsError:
            continue
    raise FileExistsError(f"could not create a temporary file next to {path}")


def save_checkpoint(state: dict[str, Any], path: str | os.PathLike) -> None:
    """Atomically writes a training checkpoint (``state`` holds the :data:`REQUIRED_KEYS` but format/version)."""
    atomic_torch_save({"format": FORMAT, "version": VERSION, **state}, path)


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device | None = "cpu") -> dict[str, Any]:
    """Loads and checks a checkpoint written by :func:`save_checkpoint`; raises :class:`CheckpointError`."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}")
    state = safe_torch_load(path, "checkpoint", map_location)
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{path} is a torch file but not a snrprune checkpoint (no format={FORMAT!r} entry)")
    if state.get("version") != VERSION:
        raise CheckpointError(
            f"{path} is a snrprune checkpoint of version {state.get('version')!r}; this snrprune reads version {VERSION}"
        )
    missing = [key for key in REQUIRED_KEYS if key not in state]
    if missing:
        raise CheckpointError(f"{path} is incomplete: it lacks {', '.join(missing)}")
    return state


def safe_torch_load(path: str | os.PathLike, what: str, map_location: str | torch.device | None = "cpu") -> Any:
    """``torch.load(path, weights_only=True)``; any failure becomes a :class:`CheckpointError` naming the file.

    ``what`` names the kind of file in the message ("checkpoint", "model file").
    """
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # truncated zip, random bytes, pickled classes, ...: all mean "not usable"
        raise CheckpointError(
            f"{path} is not a readable {what} (corrupt, truncated or not written by snrprune): "
            f"{type(exc).__name__}: {_first_line(exc)}"
        ) from exc


def writable_folder_problem(folder: str | os.PathLike) -> str | None:
    """Why files cannot be written into ``folder`` (created with its parents if missing), or None.

    Tried by creating and removing an empty folder in the nearest existing ancestor: permission
    bits do not tell (root, read-only mounts, /proc and /sys), so only an attempt does.
    """
    ancestor = Path(folder)
    while not os.path.exists(ancestor) and ancestor.parent != ancestor:  # os.path: no PermissionError
        ancestor = ancestor.parent
    if not os.path.isdir(ancestor):
        return f"{ancestor} is a file, not a folder"
    try:
        probe = tempfile.mkdtemp(prefix=".snrprune-write-test-", dir=ancestor)
    except OSError as exc:
        return f"cannot create anything in {ancestor} ({exc.strerror or type(exc).__name__})"
    os.rmdir(probe)
    return None


def _first_line(exc: BaseException) -> str:
    """The gist of an exception; torch's weights-only refusal is cut before its advice to disable
    the check, which is never the right fix for a file that is not a snrprune checkpoint."""
    text = str(exc).strip()
    line = text.splitlines()[0] if text else ""
    return line.split(" In PyTorch 2.6,")[0]


def _fsync_dir(folder: Path) -> None:
    """Makes the rename itself durable (POSIX); a no-op where directories cannot be opened (Windows)."""
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

