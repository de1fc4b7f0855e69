"""The name -> loader registry and :func:`load_dataset` (also for ``csv:PATH``)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

from .base import Dataset, MissingInputError
from .csv import load_csv

DATASETS: dict[str, Callable[..., Dataset]] = {}
#: The task of each registered data set (see :mod:`snrprune.tasks`); ``csv:PATH`` is classification.
DATASET_TASKS: dict[str, str] = {}


def register_dataset(name: str, *, task: str = "classification") -> Callable[[Callable[..., Dataset]], Callable[..., Dataset]]:
    """Decorator: register ``fn(data_dir=None, seed=0) -> Dataset`` under ``name``, for ``task``
    (``"classification"`` or ``"language-modelling"``, see :mod:`snrprune.tasks`)."""

    key = name.strip().lower()
    if not key or key.startswith("csv:"):
        raise ValueError(f"invalid dataset name {name!r}")

    def deco(fn: Callable[..., Dataset]) -> Callable[..., Dataset]:
        if key in DATASETS and DATASETS[key] is not fn:
            raise ValueError(f"dataset {key!r} is already registered")
        DATASETS[key] = fn
        DATASET_TASKS[key] = task
        return fn

    return deco


def dataset_task(name: str) -> str:
    """The task of a data set name (``csv:PATH`` and unknown names: ``"classification"``)."""
    return DATASET_TASKS.get(name.strip().lower().replace("_", "-"), "classification")


def dataset_names() -> list[str]:
    """Sorted names of the registered data sets (``csv:PATH`` is accepted too)."""
    return sorted(DATASETS)


def load_dataset(
    name: str,
    data_dir: str | os.PathLike | None = None,
    seed: int = 0,
    target: str | None = None,
) -> Dataset:
    """Load a registered data set, or ``csv:PATH`` (``target`` = label column)."""
    if not isinstance(name, str):
        raise TypeError(f"dataset name must be a str, got {type(name).__name__}")
    stripped = name.strip()
    if data_dir is not None and not Path(data_dir).expanduser().is_dir():
        # never fall back silently to an installed copy when the user named a folder
        what = "is not a folder" if Path(data_dir).expanduser().exists() else "does not exist"
        raise MissingInputError(f"data_dir (--data-dir) {data_dir} {what}; give the folder that holds the data files")
    if stripped[:4].lower() == "csv:":
        path = stripped[4:]
        if not path:
            raise ValueError("csv: needs a path, e.g. 'csv:/data/my.csv'")
        if data_dir is not None and not os.path.isabs(path) and not os.path.exists(path):
            candidate = Path(data_dir).expanduser() / path
            if candidate.exists():
                path = str(candidate)
        return load_csv(path, target=target, seed=seed)
    key = stripped.lower().replace("_", "-")
    if key not in DATASETS:
        raise ValueError(
            f"unknown dataset {name!r}; valid names: {', '.join(dataset_names())} "
            "(or 'csv:PATH' for your own CSV file)"
        )
    if target is not None:
        raise ValueError("target= only applies to 'csv:PATH' data sets")
    return DATASETS[key](data_dir=data_dir, seed=seed)
