"""``csv:PATH``: the user's own CSV file."""

from __future__ import annotations

import csv
import io
import os
from pathlib import Path

from .base import Dataset, DatasetNotFoundError, _read_bytes
from .encoding import _encode_table, _tabular_dataset

def load_csv(path: str | os.PathLike, target: str | None = None, seed: int = 0) -> Dataset:
    """The user's own CSV (header row required); see the module docstring."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise DatasetNotFoundError(f"CSV file not found: {path} (give 'csv:PATH' with an existing file)")
    text = _read_bytes(path).decode("utf-8-sig")
    sample = text[:65536]
    delimiter = "\t" if path.suffix.lower() in (".tsv", ".tab") else ","
    if path.suffix.lower() not in (".tsv", ".tab"):
        try:
            delimiter = csv.Sniffer().sniff(sample.splitlines()[0] if sample else "", delimiters=",;\t|").delimiter
        except csv.Error:
            delimiter = ","
    reader = csv.reader(io.StringIO(text), delimiter=delimiter)
    rows = [r for r in reader if any(c.strip() for c in r)]
    if not rows:
        raise ValueError(f"{path}: empty CSV file")
    header = [h.strip() for h in rows[0]]
    body = rows[1:]
    for lineno, r in enumerate(body, start=2):
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
    columns = [[r[j] for r in body] for j in range(len(header))]
    enc = _encode_table(header, columns, t, seed=seed, where=str(path))
    return _tabular_dataset(
        f"csv:{path}", enc,
        source=f"user CSV {path} (target {header[t]!r}, stratified 80/20 split, seed {seed}); licence: the user's",
    )
