"""Shared pieces of the data package: the Dataset type, the not-found error,
where data is looked for, and file helpers used by every reader family."""

from __future__ import annotations

import bz2
import gzip
import importlib.util
import lzma
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from ..errors import InputError

ENV_DATA_DIR = "SNRPRUNE_DATA_DIR"
ENV_CIFAR10_DIR = "SNRPRUNE_CIFAR10_DIR"
#: where ``scripts/install-datasets.sh`` unpacks Debian packages it does not install
SHARE_DIRS = (
    Path("/usr/local/share/snrprune"),
    Path.home() / ".local" / "share" / "snrprune",
)
INSTALL_HINT = "scripts/install-datasets.sh"


# --------------------------------------------------------------------------
# public types
# --------------------------------------------------------------------------


@dataclass(repr=False)
class Dataset:
    """A fully loaded, preprocessed data set (all splits as tensors)."""

    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    x_val: torch.Tensor | None
    y_val: torch.Tensor | None
    input_shape: tuple[int, ...]
    num_classes: int
    kind: str
    augment: Callable[[torch.Tensor, torch.Generator], torch.Tensor] | None
    source: str

    def __repr__(self) -> str:
        val = "None" if self.x_val is None else str(len(self.x_val))
        return (
            f"Dataset(name={self.name!r}, train={len(self.x_train)}, val={val}, "
            f"test={len(self.x_test)}, input_shape={self.input_shape}, "
            f"num_classes={self.num_classes}, kind={self.kind!r}, "
            f"augment={'yes' if self.augment is not None else 'no'})"
        )


class DatasetNotFoundError(FileNotFoundError):
    """The data (or the package providing it) is not on this machine.

    The message says what to install or where to put which files.
    """


class MissingInputError(DatasetNotFoundError, InputError):
    """A file or folder the user named (a ``csv:PATH``, a ``data_dir``) does not exist: bad input."""


class DataWarning(UserWarning):
    """Data was read, but not quite as written (a column dropped, values treated as missing, ...)."""


# --------------------------------------------------------------------------
# small helpers
# --------------------------------------------------------------------------


def _env_dirs(*aliases: str) -> list[Path]:
    root = os.environ.get(ENV_DATA_DIR)
    if not root:
        return []
    return [Path(root) / a for a in aliases]


def _user_dirs(data_dir: str | os.PathLike | None, *aliases: str) -> list[Path]:
    """``data_dir``, ``data_dir/<alias>``, ``$SNRPRUNE_DATA_DIR/<alias>``."""
    dirs: list[Path] = []
    if data_dir is not None:
        base = Path(data_dir).expanduser()
        dirs.append(base)
        dirs.extend(base / a for a in aliases)
    dirs.extend(_env_dirs(*aliases))
    return dirs


def _looked(paths: Sequence[Any]) -> str:
    """For error messages: the places searched."""
    if not paths:
        return f"nowhere (no data_dir given, ${ENV_DATA_DIR} unset, package not installed)"
    return "; ".join(str(p) for p in paths)


def _package_dir(package: str) -> Path | None:
    """Directory of an installed top-level package, without importing it."""
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        return None
    if spec is None:
        return None
    if spec.submodule_search_locations:
        for loc in spec.submodule_search_locations:
            return Path(loc)
    if spec.origin:
        return Path(spec.origin).parent
    return None


def _read_bytes(path: Path) -> bytes:
    """Read a file, transparently decompressing gzip / xz / bzip2."""
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        return gzip.decompress(raw)
    if raw[:6] == b"\xfd7zXZ\x00":
        return lzma.decompress(raw)
    if raw[:3] == b"BZh":
        return bz2.decompress(raw)
    return raw


def stratified_split(
    y: Sequence[int] | np.ndarray, test_fraction: float = 0.2, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Stratified train/test split; returns sorted index arrays.

    Each class with ``n >= 2`` samples puts ``round(n * test_fraction)``
    (at least 1, at most ``n - 1``) samples into the test split, chosen with a
    ``numpy`` generator seeded by ``seed``; single-sample classes stay in train.
    """
    y = np.asarray(y)
    rng = np.random.default_rng(seed)
    test_parts = []
    for cls in np.unique(y):
        idx = np.flatnonzero(y == cls)
        n = len(idx)
        if n < 2:
            continue
        k = min(max(int(round(n * test_fraction)), 1), n - 1)
        test_parts.append(rng.permutation(idx)[:k])
    test_idx = np.sort(np.concatenate(test_parts)) if test_parts else np.zeros(0, dtype=np.int64)
    mask = np.ones(len(y), dtype=bool)
    mask[test_idx] = False
    return np.flatnonzero(mask), test_idx
