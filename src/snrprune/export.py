"""Exports of a pruned model: compressed (``sparse``) and physically smaller (``compact``).

``sparse``: a bitmask of the nonzeros plus their values. A pruned float32 tensor of density d costs N/8 bytes of mask and 4dN bytes of values instead of 4N,
so it shrinks whenever d < 31/32. Every floating-point tensor that gets smaller this way is stored
so, everything else (biases that are dense, BatchNorm statistics, integer buffers) as is. The file is
a plain dict of tensors, lists and strings: it loads with ``torch.load(..., weights_only=True)``, and
:func:`load_sparse` rebuilds the exact state_dict (bit for bit; a ``-0.0`` comes back as ``0.0``).

``compact``: the units (neurons, channels; see :mod:`snrprune.units`) whose entries are all zero are cut
out, which leaves a smaller dense network that runs faster with the stock kernels. The file holds the
removed unit indices and the compact state_dict (plus the architecture for a run): it too loads with
``weights_only=True``, and :func:`load_compact` rebuilds the compact module by cutting the dense one.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .checkpoint import atomic_torch_save, safe_torch_load, writable_folder_problem
from .errors import InputError
from .models import build_model, count_parameters, model_task

__all__ = [
    "pack_bits", "unpack_bits", "compress_state_dict", "decompress_state_dict", "export_sparse", "load_sparse",
    "load_run_model", "read_state_dict", "ExportPathError",
    "export_compact", "load_compact", "export_run_compact", "count_macs", "measure_latency",
]

FORMAT = "snrprune-sparse"
VERSION = 1
SPARSE_FILE = "model_sparse.pt"
COMPACT_FORMAT = "snrprune-compact"
COMPACT_VERSION = 1
COMPACT_FILE = "model_compact.pt"

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
    source = _finished_model(run_dir)
    target = Path(output).expanduser() if output is not None else run_dir / SPARSE_FILE
    _check_output(target, run_dir, source, overwrite, SPARSE_FILE)
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


def _finished_model(run_dir: Path) -> Path:
    """The ``model.pt`` of a finished run; a missing one raises FileNotFoundError saying what to do."""
    source = run_dir / "model.pt"
    if not source.is_file():
        hint = (
            f"the run has not finished; finish it with `snrprune train --resume {run_dir}`"
            if (run_dir / "checkpoint.pt").is_file()
            else "is it a snrprune run folder?"
        )
        raise FileNotFoundError(f"{source} not found: {hint}")
    return source


def _check_output(target: Path, run_dir: Path, source: Path, overwrite: bool, own_name: str) -> None:
    """Raises :class:`ExportPathError` unless ``target`` is a file path the export may write; ``own_name``
    is the export's own file in a run folder (rewritten without asking in its own run)."""
    if target.is_dir():
        raise ExportPathError(f"--output {target} is a folder; give a file path, e.g. {target / own_name}")
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
    if target.samefile(source) or (run_folder and target.name != own_name):
        raise ExportPathError(
            f"{target} is a file of the run in {folder}; an export never replaces a run's files: "
            f"choose another --output, e.g. {folder / own_name}"
        )
    if not overwrite and not (own_run and target.name == own_name):
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


# --------------------------------------------------------------------------- compact export


def export_compact(
    model: nn.Module, example_inputs: Any, path: str | os.PathLike, *, architecture: Mapping[str, Any] | None = None
) -> nn.Module:
    """Writes the compact form of a unit-masked ``model`` to ``path`` and returns the compact module.

    The units removed are those whose consumer entries are exactly zero (what unit masks leave: the
    unit computes, nothing reads it; :func:`snrprune.units.removed_units`); a group with all its units
    removed keeps one (nothing reads it, so no output changes). ``example_inputs`` is what the model is called with (batch 1 suffices). The file is
    a dict of tensors, strings and numbers, read with ``torch.load(weights_only=True)``: the removed
    unit indices per group, the compact state_dict and ``architecture`` (``build_model``'s arguments:
    ``model``, ``input_shape``, ``num_classes``, ``model_options``), which lets :func:`load_compact`
    rebuild a model of snrprune's registry without being given one. (Not ``torch.export.save``'s program:
    ``torch.export.load`` unpickles objects named by the file, so it is unsafe on files from others.)
    """
    from .units import compact_model, find_unit_groups, removed_units, resolve_removed

    groups = find_unit_groups(model, example_inputs)
    removed = resolve_removed(groups, removed_units(groups, dict(model.named_parameters())))
    compact = compact_model(model, example_inputs, removed, groups=groups)
    blob = {
        "format": COMPACT_FORMAT,
        "version": COMPACT_VERSION,
        "architecture": dict(architecture) if architecture is not None else None,
        "groups": {g.name: g.size for g in groups},
        "removed": removed,
        "state_dict": {k: v.detach().cpu().clone() for k, v in compact.state_dict().items()},
    }
    try:
        atomic_torch_save(blob, path)
    except OSError as exc:
        raise RuntimeError(f"could not write {path}: {exc.strerror or exc}") from exc
    return compact


def load_compact(path: str | os.PathLike, model: nn.Module | None = None, example_inputs: Any = None) -> nn.Module:
    """The compact module stored by :func:`export_compact`, in eval mode.

    Without ``model`` it is rebuilt from the file's architecture (a model of snrprune's registry); for a
    model of your own pass a dense instance of the exported architecture (any weights) and the
    ``example_inputs`` it is called with: it is cut like the exported one, then given the stored weights.
    Needs Torch-Pruning (``pip install "snrprune[structured]"``) to cut.
    """
    from .units import compact_model

    blob = safe_torch_load(path, "compact export")
    if not isinstance(blob, dict) or blob.get("format") != COMPACT_FORMAT:
        raise ValueError(f"{path} is not a snrprune compact export (no format={COMPACT_FORMAT!r} entry)")
    if blob.get("version") != COMPACT_VERSION:
        raise ValueError(f"{path} is a compact export of version {blob.get('version')!r}; this snrprune reads version {COMPACT_VERSION}")
    if model is None:
        architecture = blob.get("architecture")
        if not architecture:
            raise ValueError(f"{path} holds no architecture (it was exported from a model of your own): pass the dense model and example_inputs")
        model = build_model(architecture["model"], tuple(architecture["input_shape"]), architecture["num_classes"], **architecture["model_options"])
        example_inputs = example_input(model, architecture["model"], tuple(architecture["input_shape"]), architecture["num_classes"])
    elif example_inputs is None:
        raise ValueError("load_compact with a model needs the example_inputs it is called with")
    compact = compact_model(model.eval(), example_inputs, blob["removed"])
    compact.load_state_dict(blob["state_dict"])
    return compact.eval()


def example_input(model: nn.Module, name: str, input_shape: tuple[int, ...], num_classes: int, batch: int = 1) -> Tensor:
    """A batch of inputs for a model of the registry: random images/features, or random token ids in
    windows of ``block_size`` for a language model (random rather than zeros, so that every unit is live)."""
    generator = torch.Generator().manual_seed(0)
    if model_task(name) == "language-modelling":
        return torch.randint(0, num_classes, (batch, model.block_size), generator=generator)
    return torch.randn(batch, *input_shape, generator=generator)


def count_macs(model: nn.Module, example_inputs: Any) -> int:
    """Multiply-accumulates of one forward pass on ``example_inputs`` in the Linear and convolution layers
    (they dominate; norms, activations, pools and attention products are not counted): ``in_features`` per
    output entry of a Linear, ``in_channels / groups x kernel size`` per output entry of a convolution
    (per input entry, times ``out_channels / groups``, for a transposed one), and the projections of an
    ``nn.MultiheadAttention`` with a packed one (which its forward applies without calling a Linear)."""
    total = 0

    def count(module: nn.Module, inputs: tuple[Any, ...], output: Any) -> None:
        nonlocal total
        if isinstance(module, nn.MultiheadAttention):
            width, embed = module.in_proj_weight.shape[0] // 3, module.in_proj_weight.shape[1]
            tokens = sum(x.numel() // embed for x in inputs[:3])  # query, key, value
            total += tokens * width * embed + inputs[0].numel() // embed * width * module.out_proj.out_features
        elif isinstance(module, nn.Linear):
            total += output.numel() * module.in_features
        elif isinstance(module, nn.modules.conv._ConvTransposeNd):
            total += inputs[0].numel() * module.out_channels // module.groups * math.prod(module.kernel_size)
        else:
            total += output.numel() * module.in_channels // module.groups * math.prod(module.kernel_size)

    attention = [m for m in model.modules() if isinstance(m, nn.MultiheadAttention) and m.in_proj_weight is not None]
    inside = {id(m.out_proj) for m in attention}  # not called as modules: counted with their attention module
    hooks = [
        m.register_forward_hook(lambda module, args, kwargs, output: count(module, (*args, *(kwargs[k] for k in ("query", "key", "value") if k in kwargs)), output), with_kwargs=True)
        for m in attention
    ]
    hooks += [m.register_forward_hook(count) for m in model.modules() if isinstance(m, (nn.Linear, nn.modules.conv._ConvNd)) and id(m) not in inside]
    try:
        with torch.no_grad():
            model(example_inputs)
    finally:
        for hook in hooks:
            hook.remove()
    return total


def measure_latency(models: Mapping[str, nn.Module], inputs: Tensor, repeats: int) -> dict[str, list[float]]:
    """Seconds per forward pass of each model on ``inputs``, ``repeats`` times, interleaved (one pass of each
    model per round, the order alternating) so that a change in the machine's load hits all alike. On an
    accelerator (``inputs`` not on the CPU) each pass is timed from an idle device to the end of its last
    kernel: the device is synchronized before the clock starts and before it stops."""
    names = list(models)
    times: dict[str, list[float]] = {name: [] for name in names}
    device = inputs.device

    def sync() -> None:
        if device.type != "cpu":
            torch.accelerator.synchronize(device)

    with torch.inference_mode():
        for model in models.values():
            model(inputs)  # warm-up: allocations, kernel selection
        for r in range(repeats):
            for name in names if r % 2 == 0 else reversed(names):
                sync()
                start = time.perf_counter()
                models[name](inputs)
                sync()
                times[name].append(time.perf_counter() - start)
    return times


def _test_inputs(config: Mapping[str, Any], model: nn.Module, name: str) -> tuple[Tensor, str]:
    """The run's test inputs (windows of ``block_size`` tokens for a language model), and where they came from."""
    from .data import load_dataset

    data = load_dataset(config["dataset"], config.get("data_dir"), seed=config.get("data_seed", 0), target=config.get("target"))
    x = data.x_test
    if model_task(name) == "language-modelling":
        block = model.block_size
        x = x[: len(x) // block * block].view(-1, block)
    return x, f"the {config['dataset']} test set"


def _max_difference(a: nn.Module, b: nn.Module, x: Tensor, batch: int = 1000) -> tuple[float, float]:
    """Largest absolute difference of the two models' outputs on ``x``, and the largest output magnitude."""
    worst, scale = 0.0, 0.0
    with torch.inference_mode():
        for i in range(0, len(x), batch):
            ya, yb = a(x[i : i + batch]), b(x[i : i + batch])
            worst = max(worst, (ya - yb).abs().max().item())
            scale = max(scale, ya.abs().max().item())
    return worst, scale


def export_run_compact(
    run_dir: str | os.PathLike, output: str | os.PathLike | None = None, *, overwrite: bool = False, repeats: int = 21
) -> dict[str, Any]:
    """Writes the compact model of a finished run as ``model_compact.pt`` (see :func:`export_compact`) and
    measures it against the masked model: parameters, multiply-accumulates, the largest output difference
    on the run's test set (random inputs when the data cannot be loaded), and CPU latency at batch 1 and
    256 (``repeats`` interleaved passes each). ``output`` follows :func:`export_sparse`'s rules."""
    run_dir = Path(run_dir).expanduser()
    source = _finished_model(run_dir)
    target = Path(output).expanduser() if output is not None else run_dir / COMPACT_FILE
    _check_output(target, run_dir, source, overwrite, COMPACT_FILE)
    config = json.loads((run_dir / "config.json").read_text())
    summary = json.loads((run_dir / "summary.json").read_text())
    name, shape, classes = config["model"], tuple(summary["input_shape"]), summary["num_classes"]
    masked = load_run_model(run_dir)
    example = example_input(masked, name, shape, classes)
    architecture = {"model": name, "input_shape": list(shape), "num_classes": classes, "model_options": config["model_options"]}
    compact = export_compact(masked, example, target, architecture=architecture).eval()
    blob = safe_torch_load(target, "compact export")
    try:
        inputs, source_of_inputs = _test_inputs(config, masked, name)
    except Exception as exc:  # noqa: BLE001 - a missing data set must not stop the export; the report says so
        inputs = example_input(masked, name, shape, classes, batch=1000)
        source_of_inputs = f"1000 random inputs (the test set could not be loaded: {type(exc).__name__}: {exc})"
    difference, scale = _max_difference(masked, compact, inputs)
    batches = {1: inputs[:1], 256: inputs[:256] if len(inputs) >= 256 else example_input(masked, name, shape, classes, batch=256)}
    latency = {b: measure_latency({"masked": masked, "compact": compact}, x, repeats) for b, x in batches.items()}
    return {
        "path": str(target),
        "units": {g: (size, size - len(blob["removed"].get(g, ()))) for g, size in blob["groups"].items()},
        "inputs": source_of_inputs,
        "max_difference": difference,
        "output_scale": scale,
        "threads": torch.get_num_threads(),
        "repeats": repeats,
        "before": {"parameters": count_parameters(masked), "macs": count_macs(masked, example),
                   "latency": {b: t["masked"] for b, t in latency.items()}},
        "after": {"parameters": count_parameters(compact), "macs": count_macs(compact, example),
                  "latency": {b: t["compact"] for b, t in latency.items()}},
    }
