"""Checkpoints that survive a crash mid-write and never execute code on load.

A checkpoint is one ``torch.save``d dict of tensors, numbers, strings, lists and dicts, so it loads
with ``torch.load(..., weights_only=True)`` (no pickled classes, nothing to trust). Saving writes a
temporary file in the same folder, fsyncs it and renames it over the old one (``os.replace`` is
atomic), so a reader sees either the previous complete checkpoint or the new complete one.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import tempfile
import threading
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

try:  # POSIX; elsewhere run folders are not locked (see run_folder_lock)
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

#: Written into every checkpoint so that a foreign ``.pt`` file is recognised as such.
FORMAT = "snrprune-checkpoint"
VERSION = 1

#: The entries every checkpoint of this version has (see :func:`snrprune.training.train`).
REQUIRED_KEYS = ("format", "version", "config", "epoch", "model", "optimizer", "scheduler", "pruning", "rng")


class CheckpointError(RuntimeError):
    """A checkpoint is missing, unreadable, truncated, or was not written by snrprune."""


class NoSpaceError(CheckpointError):
    """The disk (or the quota) filled up while a file was written; the previous file is kept."""


class RunFolderLockedError(RuntimeError):
    """Another process holds the lock of a run folder: it is training that run right now."""


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save`` to ``path`` so that a crash leaves either the old file or the new one, never half.

    A full disk (``ENOSPC``, or ``EDQUOT``) raises :class:`NoSpaceError` naming the folder and the
    file; the temporary file is removed and the previous ``path`` is left as it was.
    """
    path = Path(path)
    fd, tmp = open_temp_beside(path)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if _no_space(exc):
            kept = f"the previous {path.name} is kept" if path.exists() else f"no {path.name} was written"
            raise NoSpaceError(
                f"no space left on the device of {path.parent.resolve()} while writing {path}; {kept}. "
                f"Free some space (or choose a folder on another disk) and run again"
            ) from exc
        raise
    _fsync_dir(path.parent)


def _no_space(exc: BaseException) -> bool:
    """Whether ``exc`` or an exception it was raised from or during is a full disk or quota.

    torch's zip writer reports a failed write as its own RuntimeError, with the ``OSError`` of the
    file object in the chain (or the other way round, from the flush on close).
    """
    seen: set[int] = set()
    todo: list[BaseException | None] = [exc]
    while todo:
        e = todo.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)):
            return True
        todo += [e.__cause__, e.__context__]
    return False


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


#: Name prefix of the empty folder :func:`writable_folder_problem` creates and removes. Another
#: process's probe can be in a folder for an instant (every rank of a torchrun launch checks the
#: run folder), so a folder holding only probes counts as empty.
WRITE_PROBE_PREFIX = ".snrprune-write-test-"


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
        probe = tempfile.mkdtemp(prefix=WRITE_PROBE_PREFIX, dir=ancestor)
    except OSError as exc:
        return f"cannot create anything in {ancestor} ({exc.strerror or type(exc).__name__})"
    os.rmdir(probe)
    return None


# ------------------------------------------------------------------------------------------------
# The run-folder lock: one process trains a run folder at a time
# ------------------------------------------------------------------------------------------------

#: Folders this process holds the lock of: real path -> (thread, depth). The lock is re-entrant
#: within one thread (``snrprune bench`` holds it around ``train()``, which takes it again).
_HELD: dict[str, tuple[int, int]] = {}
_HELD_GUARD = threading.Lock()
_WARNED_NO_LOCK: set[str] = set()


@contextlib.contextmanager
def run_folder_lock(
    folder: str | os.PathLike,
    *,
    create: bool = False,
    wait: float = 2.0,
    error: type[Exception] = RunFolderLockedError,
) -> Iterator[bool]:
    """Holds an exclusive advisory lock on the run folder ``folder`` while the ``with`` block runs.

    The lock is an ``fcntl.flock`` on the folder itself (no lock file: nothing is added to the
    folder, so an empty new folder stays empty for :func:`snrprune.training.check_output_dir`).
    The kernel releases it when the process ends, however it ends (``kill -9`` too): a lock is
    never stale. Any other process (or another thread of this one) that asks for the same folder's
    lock gets ``error`` naming the folder, after retrying for ``wait`` seconds (so that a brief
    look by :func:`run_folder_busy` never makes a run fail). Re-entrant within one thread.

    A missing folder is created when ``create`` (a new run), and removed again (with the parents
    made for it) if it is still empty when the block ends, e.g. after a run that failed before
    writing anything. Without ``create``, or when it cannot be created, there is nothing to
    protect and the block runs unlocked (the caller reports the missing or unwritable folder in
    its own words). Where ``fcntl`` is missing (Windows), or the file system refuses locks, the
    block runs unlocked with a warning. Yields whether the lock is held.
    """
    path = Path(folder)
    made = _make_folder(path) if create else []
    if not path.is_dir():
        yield False
        return
    key = os.path.realpath(path)
    me = threading.get_ident()
    with _HELD_GUARD:
        holder = _HELD.get(key)
        if holder is not None and holder[0] == me:
            _HELD[key] = (me, holder[1] + 1)
            reentered = True
        else:
            reentered = False
    if reentered:
        try:
            yield True
        finally:
            with _HELD_GUARD:
                _HELD[key] = (me, _HELD[key][1] - 1)
        return
    fd = _lock_folder(path, key, wait, error, create)
    if fd is None:
        try:
            yield False
        finally:
            _remove_if_empty(made)
        return
    with _HELD_GUARD:
        _HELD[key] = (me, 1)
    try:
        yield True
    finally:
        with _HELD_GUARD:
            _HELD.pop(key, None)
        _remove_if_empty(made)  # before the lock goes: a waiter then finds the folder gone and makes its own
        os.close(fd)  # closing the descriptor releases the flock


def _make_folder(path: Path) -> list[Path]:
    """Creates ``path`` with its parents; returns the folders made, deepest first ([] on failure)."""
    missing = []
    ancestor = path
    while not os.path.lexists(ancestor) and ancestor.parent != ancestor:
        missing.append(ancestor)
        ancestor = ancestor.parent
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError:
        return []
    return missing


def _remove_if_empty(folders: list[Path]) -> None:
    for folder in folders:  # deepest first; stops at the first that is not empty (or not removable)
        try:
            folder.rmdir()
        except OSError:
            return


def run_folder_busy(folder: str | os.PathLike) -> bool:
    """Whether another process (or another thread of this one) holds ``folder``'s run-folder lock.

    Looks with a shared lock taken and dropped at once, so two looks never conflict; a folder
    this thread holds is not busy. False for a missing folder, and where folders cannot be locked.
    """
    path = Path(folder)
    if fcntl is None or not path.is_dir():
        return False
    key = os.path.realpath(path)
    with _HELD_GUARD:
        holder = _HELD.get(key)
    if holder is not None:
        return holder[0] != threading.get_ident()
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except OSError:
        return False
    finally:
        os.close(fd)  # also drops the shared lock if it was taken
    return False


def _lock_folder(path: Path, key: str, wait: float, error: type[Exception], create: bool) -> int | None:
    """The descriptor of ``path`` with an exclusive flock on it, or None where locks do not work
    (or the folder is gone, and not ``create``)."""
    if fcntl is None:
        _warn_unlocked(key, "this platform has no fcntl.flock")
        return None
    deadline = time.monotonic() + wait
    while True:
        try:
            fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
        except OSError as exc:
            _warn_unlocked(key, f"it cannot be opened ({exc.strerror or type(exc).__name__})")
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            with _HELD_GUARD:
                other_thread = key in _HELD
            if other_thread or time.monotonic() >= deadline:
                who = "thread of this process" if other_thread else "process"
                raise error(
                    f"another {who} is training the run folder {path} (it holds the folder's lock); "
                    f"wait for it to finish, or stop it, then try again (a process that has ended holds no lock)"
                ) from None
            time.sleep(0.05)
            continue
        except OSError as exc:  # e.g. ENOLCK on a network file system
            os.close(fd)
            _warn_unlocked(key, f"the file system refuses locks ({exc.strerror or type(exc).__name__})")
            return None
        try:  # the folder may have been removed (and made again) while we waited: lock the one that is there
            same = os.path.samestat(os.fstat(fd), os.stat(path))
        except OSError:
            same = False
        if same:
            return fd
        os.close(fd)  # we locked a folder that has been removed since: lock the one at the path now
        if create:
            with contextlib.suppress(OSError):
                path.mkdir(parents=True, exist_ok=True)
        if not path.is_dir():
            return None


def _warn_unlocked(key: str, why: str) -> None:
    if key not in _WARNED_NO_LOCK:
        _WARNED_NO_LOCK.add(key)
        warnings.warn(f"cannot lock the run folder {key} ({why}); make sure no other process trains it at the same time", stacklevel=4)


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

