"""``csv:PATH``: the user's own CSV file.

A hand-made CSV has mistakes a curated data set does not: a stray word in a numeric column, decimal
commas, empty or repeated columns, a regression target. Each is either an error that says what to
fix, or a :class:`DataWarning` that names the column and what was done; nothing is silently turned
into dozens of one-hot inputs.
"""

from __future__ import annotations

import csv
import io
import math
import os
import re
import warnings
from collections import Counter
from pathlib import Path
from typing import Sequence

from .base import Dataset, DataWarning, MissingInputError, _read_bytes
from .encoding import _encode_table, _is_missing, _tabular_dataset

#: A numeric column may hold at most this share of other values (treated as missing, with a warning).
STRAY_SHARE = 0.1
#: More distinct numbers than this in a target are a regression target unless they are consecutive codes.
MAX_NUMBER_CLASSES = 20
_DECIMAL_COMMA = re.compile(r"[+-]?\d*,\d+")


def load_csv(path: str | os.PathLike, target: str | None = None, seed: int = 0) -> Dataset:
    """The user's own CSV (header row required); see the module docstring."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise MissingInputError(f"CSV file not found: {path} (give 'csv:PATH' with an existing file)")
    text = _decode(path, _read_bytes(path))
    delimiter = _delimiter(path, text)
    reader = csv.reader(io.StringIO(text), delimiter=delimiter)
    rows = [(reader.line_num, r) for r in reader if any(c.strip() for c in r)]  # (line number, fields)
    if not rows:
        raise ValueError(f"{path}: empty CSV file")
    header = [h.strip() for h in rows[0][1]]
    body = rows[1:]
    if not body:
        raise ValueError(f"{path}: the file has a header ({', '.join(header)}) but no data rows")
    repeated = [name for name, n in Counter(header).items() if n > 1]
    if repeated:
        raise ValueError(
            f"{path}: column name(s) {', '.join(repr(h) for h in repeated)} appear more than once in the header; "
            "give every column its own name"
        )
    for lineno, r in body:
        if len(r) != len(header):
            raise ValueError(f"{path}: row {lineno} has {len(r)} fields, the header has {len(header)}")
    if target is None:
        t = len(header) - 1
    elif target in header:
        t = header.index(target)
    else:
        raise ValueError(f"{path}: target column {target!r} not found; columns are: {', '.join(header)}")
    if len(header) < 2:
        raise ValueError(f"{path}: needs at least one feature column and the target column")
    lines = [lineno for lineno, _ in body]
    columns = [[r[j] for _, r in body] for j in range(len(header))]
    _check_target(path, header[t], columns[t])
    columns = _clean_features(path, header, columns, t, lines, decimal_commas=delimiter != ",")
    enc = _encode_table(header, columns, t, seed=seed, where=str(path))
    return _tabular_dataset(
        f"csv:{path}", enc,
        source=f"user CSV {path} (target {header[t]!r}, stratified 80/20 split, seed {seed}); licence: the user's",
    )


def _decode(path: Path, raw: bytes) -> str:
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        raise ValueError(
            f"{path}: row {line} is not UTF-8 text (byte 0x{raw[exc.start]:02x}); save the file as UTF-8, "
            f"e.g. `iconv -f latin1 -t utf-8 {path.name} > {path.stem}-utf8{path.suffix}` if it is Latin-1"
        ) from None


def _delimiter(path: Path, text: str) -> str:
    if path.suffix.lower() in (".tsv", ".tab"):
        return "\t"
    first = text[:65536].splitlines()[0] if text.strip() else ""
    try:
        return csv.Sniffer().sniff(first, delimiters=",;\t|").delimiter
    except csv.Error:
        return ","


def _number(value: str) -> float | None:
    try:
        return float(value)
    except ValueError:
        return None


def _finite(value: str) -> bool:
    x = _number(value)
    return x is not None and math.isfinite(x)


def _check_target(path: Path, name: str, values: Sequence[str]) -> None:
    """Refuses a target that is not a class label: a regression-like number, or (nearly) one class per row.

    Numbers look like a regression target when some are fractional, or when there are more than
    :data:`MAX_NUMBER_CLASSES` of them that are not a run of consecutive class codes.
    """
    labels = [v.strip() for v in values if not _is_missing(v)]
    counts = Counter(labels)
    if len(counts) < 3:
        return  # too few classes is reported by the encoder
    numeric = all(_finite(v) for v in counts)
    singles = sum(1 for n in counts.values() if n == 1)
    mostly_single = 2 * singles > len(counts)
    fix = "bin the values into a few classes in the file, or name the label column with --target (target=)"
    if numeric:
        numbers = [float(v) for v in counts]
        fractional = any(not x.is_integer() for x in numbers)
        codes = {int(x) for x in numbers} if not fractional else set()
        scattered = len(counts) > MAX_NUMBER_CLASSES and (fractional or max(codes) - min(codes) + 1 != len(codes))
        if fractional or scattered or mostly_single:
            whole = "fractional numbers" if fractional else "numbers"
            raise ValueError(
                f"{path}: the target column {name!r} holds {len(counts)} distinct {whole} in {len(labels)} rows: it "
                f"looks like a regression target, but snrprune trains classifiers (one class per value); {fix} "
                "(class labels that are numbers can be written as text, e.g. c1, c2)"
            )
    elif mostly_single:
        raise ValueError(
            f"{path}: the target column {name!r} has {len(counts)} classes in {len(labels)} rows, {singles} of them "
            f"with a single row: it does not look like a class label; {fix}"
        )


def _clean_features(
    path: Path, header: list[str], columns: list[list[str]], target: int, lines: list[int], *, decimal_commas: bool
) -> list[list[str]]:
    """Columns ready for the encoder; warns about every change made (see the module docstring)."""
    empty, commas = [], []
    out = list(columns)
    for j, (name, col) in enumerate(zip(header, columns)):
        if j == target:
            continue
        present = [i for i, v in enumerate(col) if not _is_missing(v)]
        if not present:
            empty.append(name)  # the encoder drops it
            continue
        if decimal_commas and any(_DECIMAL_COMMA.fullmatch(col[i].strip()) for i in present):
            converted = [v.strip().replace(",", ".") if _DECIMAL_COMMA.fullmatch(v.strip()) else v for v in col]
            if all(_number(converted[i]) is not None for i in present):
                out[j] = col = converted
                commas.append(name)
        stray = [i for i in present if not _finite(col[i])]
        finite = len(present) - len(stray)
        if not stray or finite < len(stray):
            continue  # all numbers, or a category column
        examples = ", ".join(f"{col[i].strip()!r} (row {lines[i]})" for i in stray[:3]) + (", ..." if len(stray) > 3 else "")
        if len(stray) <= STRAY_SHARE * len(present):
            gone = set(stray)
            out[j] = ["" if i in gone else v for i, v in enumerate(col)]
            warnings.warn(
                f"{path}: column {name!r} is numeric but {len(stray)} value(s) are not finite numbers ({examples}); "
                "they are treated as missing (fix them in the file to use them)",
                DataWarning, stacklevel=2,
            )
        else:
            categories = len({col[i].strip() for i in present})
            warnings.warn(
                f"{path}: column {name!r} mixes {finite} numbers with {len(stray)} other values ({examples}); "
                f"it is encoded as a category column ({categories} one-hot inputs)",
                DataWarning, stacklevel=2,
            )
    if commas:
        warnings.warn(
            f"{path}: read decimal commas as decimal points (1,5 -> 1.5) in column(s) {', '.join(map(repr, commas))}",
            DataWarning, stacklevel=2,
        )
    if empty:
        warnings.warn(
            f"{path}: column(s) {', '.join(map(repr, empty))} are empty in every row and were dropped",
            DataWarning, stacklevel=2,
        )
    return out
