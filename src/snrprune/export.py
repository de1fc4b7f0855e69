"""Compressed export of a pruned model: a bitmask of the nonzeros plus their values.

A pruned float32 tensor of density d costs N/8 bytes of mask and 4dN bytes of values instead of 4N,
so it shrinks whenever d < 31/32. Every floating-point tensor that gets smaller this way is stored
so, everything else (biases that are dense, BatchNorm statistics, integer buffers) as is. The file is
a plain dict of tensors, lists and strings: it loads with ``torch.load(..., weights_only=True)``, and
:func:`load_sparse` rebuilds the exact state_dict (bit for bit; a ``-0.0`` comes back as ``0.0``).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .checkpoint import atomic_torch_save, safe_torch_load, writable_folder_problem
from .errors import InputError
from .models import build_model

__all__ = [
    "pack_bits", "unpack_bits", "compress_state_dict", "decompress_state_dict", "export_sparse", "load_sparse",
    "load_run_model", "read_state_dict", "ExportPathError",
]

FORMAT = "snrprune-sparse"
VERSION = 1
SPARSE_FILE = "model_sparse.pt"

#: Files whose presence marks a folder as a snrprune run folder (whose files an export never replaces).
_RUN_MARKERS = ("config.json", "checkpoint.pt")


class ExportPathError(InputError):
    """The export's output path cannot be used (a folder, a missing folder, a file it must not replace)."""


_BIT_WEIGHTS = torch.tensor([128, 64, 32, 16, 8, 4, 2, 1], dtype=torch.uint8)


def pack_bits(mask: Tensor) -> Tensor:
    """A bool tensor as uint8 bytes, 8 entries per byte, most significant bit first (like numpy.packbits)."""
    flat = mask.reshape(-1).to(torch.uint8)
    pad = (-flat.numel()) % 8
    if pad:
        flat = torch.cat([flat, flat.new_zeros(pad)])
    return (flat.view(-1, 8) * _BIT_WEIGHTS.to(flat.device)).sum(1, dtype=torch.uint8)


def unpack_bits(packed: Tensor, count: int) -> Tensor:
    """The first ``count`` bits of :func:`pack_bits`' output as a flat bool tensor."""
    bits = packed.reshape(-1, 1).bitwise_and(_BIT_WEIGHTS.to(packed.device)) != 0
    return bits.reshape(-1)[:count]


def _nbytes(t: Tensor) -> int:
    return t.numel() * t.element_size()


def compress_state_dict(state: dict[str, Tensor]) -> dict[str, Any]:
    """The sparse file's contents: per tensor either ``{"dense": t}`` or ``{"shape", "bits", "values"}``."""
    tensors: dict[str, Any] = {}
    for name, t in state.items():
        t = t.detach().cpu()
        if t.is_floating_point() and t.numel() > 0:
            keep = t != 0
            bits, values = pack_bits(keep), t[keep].clone()
            if _nbytes(bits) + _nbytes(values) < _nbytes(t):
                tensors[name] = {"shape": list(t.shape), "bits": bits, "values": values}
                continue
        tensors[name] = {"dense": t.clone()}
    return {"format": FORMAT, "version": VERSION, "tensors": tensors}


def decompress_state_dict(blob: dict[str, Any]) -> dict[str, Tensor]:
    state = {}
    for name, entry in blob["tensors"].items():
        if "dense" in entry:
            state[name] = entry["dense"]
            continue
        shape = torch.Size(entry["shape"])
        keep = unpack_bits(entry["bits"], shape.numel())
        values = entry["values"]
        if int(keep.sum()) != values.numel():
            raise ValueError(f"{name}: the mask has {int(keep.sum())} nonzeros but {values.numel()} values are stored")
        dense = values.new_zeros(shape.numel())
        dense[keep] = values
        state[name] = dense.view(shape)
    return state


def payload_bytes(blob: dict[str, Any]) -> int:
    """Bytes of tensor data in a compressed dict (file overhead excluded)."""
    return sum(sum(_nbytes(v) for v in entry.values() if isinstance(v, Tensor)) for entry in blob["tensors"].values())


def load_sparse(path: str | os.PathLike) -> dict[str, Tensor]:
    """The dense state_dict stored in a ``model_sparse.pt`` (``model.load_state_dict`` takes it as is)."""
    blob = safe_torch_load(path, "sparse export")
    if not isinstance(blob, dict) or blob.get("format") != FORMAT:
        raise ValueError(f"{path} is not a snrprune sparse export (no format={FORMAT!r} entry)")
    if blob.get("version") != VERSION:
        raise ValueError(f"{path} is a sparse export of version {blob.get('version')!r}; this snrprune reads version {VERSION}")
    return decompress_state_dict(blob)


def export_sparse(
    run_dir: str | os.PathLike, output: str | os.PathLike | None = None, *, overwrite: bool = False
) -> dict[str, Any]:
    """Writes the pruned weights of a finished run (``model.pt``) as ``model_sparse.pt``; returns the sizes.

    ``output`` (default ``run_dir/model_sparse.pt``) never replaces a file of a run folder other than
    its ``model_sparse.pt``, and replaces any other existing file only with ``overwrite``. The run's own
    ``model_sparse.pt`` is rewritten without asking: it is made from the same ``model.pt``.
    """
    run_dir = Path(run_dir).expanduser()
    source = run_dir / "model.pt"
    if not source.is_file():
        hint = (
            f"the run has not finished; finish it with `snrprune train --resume {run_dir}`"
            if (run_dir / "checkpoint.pt").is_file()
            else "is it a snrprune run folder?"
        )
        raise FileNotFoundError(f"{source} not found: {hint}")
    target = Path(output).expanduser() if output is not None else run_dir / SPARSE_FILE
    _check_output(target, run_dir, source, overwrite)
    state = read_state_dict(source)
    blob = compress_state_dict(state)
    try:
        atomic_torch_save(blob, target)
    except OSError as exc:
        raise RuntimeError(f"could not write {target}: {exc.strerror or exc}") from exc
    dense_bytes = sum(_nbytes(t) for t in state.values())
    sparse_bytes = payload_bytes(blob)
    return {
        "path": str(target),
        "dense_bytes": dense_bytes,
        "sparse_bytes": sparse_bytes,
        "ratio": dense_bytes / sparse_bytes if sparse_bytes else float("inf"),
        "dense_file_bytes": source.stat().st_size,
        "sparse_file_bytes": target.stat().st_size,
        "compressed_tensors": sorted(name for name, entry in blob["tensors"].items() if "bits" in entry),
    }


def _check_output(target: Path, run_dir: Path, source: Path, overwrite: bool) -> None:
    """Raises :class:`ExportPathError` unless ``target`` is a file path the export may write."""
    if target.is_dir():
        raise ExportPathError(f"--output {target} is a folder; give a file path, e.g. {target / SPARSE_FILE}")
    folder = target.parent
    if not folder.is_dir():
        what = "is a file, not a folder" if folder.exists() else "does not exist"
        raise ExportPathError(f"cannot write {target}: the folder {folder} {what}; create it or choose another --output")
    problem = writable_folder_problem(folder)
    if problem is not None:
        raise ExportPathError(f"cannot write {target}: {problem}; choose another --output")
    if not target.exists():
        return
    own_run = folder.resolve() == run_dir.resolve()
    run_folder = own_run or any((folder / name).is_file() for name in _RUN_MARKERS)
    if target.samefile(source) or (run_folder and target.name != SPARSE_FILE):
        raise ExportPathError(
            f"{target} is a file of the run in {folder}; an export never replaces a run's files: "
            f"choose another --output, e.g. {folder / SPARSE_FILE}"
        )
    if not overwrite and not (own_run and target.name == SPARSE_FILE):
        raise ExportPathError(f"{target} exists; choose another --output or pass --overwrite to replace it")


def read_state_dict(path: str | os.PathLike) -> dict[str, Tensor]:
    """A ``model.pt`` (a state_dict saved by a run), loaded safely and checked to be a dict of tensors."""
    state = safe_torch_load(path, "model file")
    if isinstance(state, dict) and state.get("format") == FORMAT:
        raise ValueError(
            f"{path} holds a sparse export, not a run's dense weights (an export may have been written over it); "
            f"rebuild it with load_sparse, or rerun the training"
        )
    if not isinstance(state, dict) or not state or not all(
        isinstance(k, str) and isinstance(v, Tensor) for k, v in state.items()
    ):
        kind = type(state).__name__ if not isinstance(state, dict) else "a dict that is not all name -> tensor"
        raise ValueError(f"{path} is not a state_dict (a dict of parameter names to tensors): it holds {kind}")
    return state


def load_run_model(run_dir: str | os.PathLike, sparse: bool = False) -> nn.Module:
    """The pruned model of a finished run, rebuilt from ``config.json`` and ``summary.json``.

    ``sparse=True`` reads the weights from ``model_sparse.pt`` instead of ``model.pt``.
    """
    run_dir = Path(run_dir)
    config = json.loads((run_dir / "config.json").read_text())
    summary = json.loads((run_dir / "summary.json").read_text())
    model = build_model(config["model"], tuple(summary["input_shape"]), summary["num_classes"], **config["model_options"])
    if sparse:
        state = load_sparse(run_dir / SPARSE_FILE)
    else:
        state = read_state_dict(run_dir / "model.pt")
    model.load_state_dict(state)
    return model.eval()
