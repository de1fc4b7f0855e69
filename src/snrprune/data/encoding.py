"""Tabular encoding shared by the CSV reader and the tabular data sets."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from .base import Dataset, stratified_split

MISSING_TOKENS = frozenset({"", "?", "na", "nan", "n/a", "null", "none", "<null>"})
_MISSING_CATEGORY = "<missing>"


def _is_missing(v: str) -> bool:
    return v.strip().lower() in MISSING_TOKENS


def _parse_numeric(values: Sequence[str]) -> np.ndarray | None:
    """Column as float64 with NaN for missing, or None if any value is not a finite number."""
    out = np.empty(len(values), dtype=np.float64)
    for i, v in enumerate(values):
        s = v.strip()
        if s.lower() in MISSING_TOKENS:
            out[i] = np.nan
            continue
        try:
            f = float(s)
        except ValueError:
            return None
        if not math.isfinite(f):
            return None
        out[i] = f
    return out


def _sorted_labels(values: Sequence[str]) -> list[str]:
    uniq = set(values)
    try:
        return sorted(uniq, key=lambda s: (float(s), s))
    except ValueError:
        return sorted(uniq)


@dataclass
class _Tabular:
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    classes: list[str]
    feature_names: list[str]


def _encode_table(
    names: Sequence[str],
    columns: Sequence[Sequence[str] | np.ndarray],
    target: int,
    *,
    seed: int = 0,
    split: tuple[np.ndarray, np.ndarray] | None = None,
    kinds: Sequence[str | None] | None = None,
    where: str = "table",
) -> _Tabular:
    """Encode a column-wise table into standardised tensors.

    ``columns`` are lists of raw strings (type inferred) or float arrays (numeric,
    NaN = missing).  ``kinds[i]`` may force ``"numeric"`` or ``"categorical"``.
    ``split`` is ``(train_idx, test_idx)``; default: stratified 80/20 with ``seed``.
    """
    n = len(columns[target])
    labels_raw = [str(v).strip() for v in columns[target]]
    keep = np.array([not _is_missing(v) for v in labels_raw], dtype=bool)
    if split is not None:
        tr, te = (np.asarray(s, dtype=np.int64) for s in split)
        tr, te = tr[keep[tr]], te[keep[te]]
    else:
        kept = np.flatnonzero(keep)
        labels_kept = [labels_raw[i] for i in kept]
        classes_all = _sorted_labels(labels_kept)
        index = {c: i for i, c in enumerate(classes_all)}
        if len(classes_all) < 2:
            raise ValueError(
                f"{where}: the target column {names[target]!r} has {len(classes_all)} class(es) "
                f"({classes_all}); at least 2 are needed"
            )
        ys = np.array([index[v] for v in labels_kept], dtype=np.int64)
        tr_local, te_local = stratified_split(ys, 0.2, seed)
        tr, te = kept[tr_local], kept[te_local]
    classes = _sorted_labels([labels_raw[i] for i in np.concatenate([tr, te])])
    if len(classes) < 2:
        raise ValueError(
            f"{where}: the target column {names[target]!r} has {len(classes)} class(es) "
            f"({classes}); at least 2 are needed"
        )
    if len(tr) == 0 or len(te) == 0:
        raise ValueError(f"{where}: too few rows for a train/test split ({n} rows)")
    cls_index = {c: i for i, c in enumerate(classes)}
    y_all = np.array([cls_index.get(v, -1) for v in labels_raw], dtype=np.int64)

    blocks_tr: list[np.ndarray] = []
    blocks_te: list[np.ndarray] = []
    feat_names: list[str] = []
    for j, (name, col) in enumerate(zip(names, columns)):
        if j == target:
            continue
        kind = kinds[j] if kinds is not None else None
        num: np.ndarray | None = None
        if isinstance(col, np.ndarray) and col.dtype.kind in "fiu" and kind != "categorical":
            num = col.astype(np.float64)
        elif kind != "categorical":
            num = _parse_numeric([str(v) for v in col])
            if num is None and kind == "numeric":
                raise ValueError(f"{where}: column {name!r} is declared numeric but has non-numeric values")
        if num is not None:
            if np.isnan(num).all():
                continue  # no information at all
            train_vals = num[tr]
            present = train_vals[~np.isnan(train_vals)]
            mean = float(present.mean()) if len(present) else 0.0
            std = float(present.std()) if len(present) else 1.0
            if not std > 0:
                std = 1.0
            z = (np.where(np.isnan(num), mean, num) - mean) / std
            blocks_tr.append(z[tr, None])
            blocks_te.append(z[te, None])
            feat_names.append(str(name))
            if np.isnan(train_vals).any():
                ind = np.isnan(num).astype(np.float64)
                blocks_tr.append(ind[tr, None])
                blocks_te.append(ind[te, None])
                feat_names.append(f"{name}=<missing>")
        else:
            vals = [_MISSING_CATEGORY if _is_missing(str(v)) else str(v).strip() for v in col]
            cats = sorted({vals[i] for i in tr})
            cat_index = {c: k for k, c in enumerate(cats)}
            codes = np.array([cat_index.get(v, -1) for v in vals], dtype=np.int64)
            onehot = np.zeros((len(vals), len(cats)), dtype=np.float64)
            seen = codes >= 0
            onehot[np.flatnonzero(seen), codes[seen]] = 1.0
            blocks_tr.append(onehot[tr])
            blocks_te.append(onehot[te])
            feat_names.extend(f"{name}={c}" for c in cats)
    if not blocks_tr:
        raise ValueError(f"{where}: no feature columns besides the target {names[target]!r}")
    x_tr = np.concatenate(blocks_tr, axis=1).astype(np.float32)
    x_te = np.concatenate(blocks_te, axis=1).astype(np.float32)
    return _Tabular(
        x_train=torch.from_numpy(x_tr),
        y_train=torch.from_numpy(y_all[tr].copy()),
        x_test=torch.from_numpy(x_te),
        y_test=torch.from_numpy(y_all[te].copy()),
        classes=classes,
        feature_names=feat_names,
    )


def _tabular_dataset(name: str, t: _Tabular, source: str) -> Dataset:
    return Dataset(
        name=name,
        x_train=t.x_train,
        y_train=t.y_train,
        x_test=t.x_test,
        y_test=t.y_test,
        x_val=None,
        y_val=None,
        input_shape=(int(t.x_train.shape[1]),),
        num_classes=len(t.classes),
        kind="tabular",
        augment=None,
        source=source,
    )
