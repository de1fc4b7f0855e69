"""What a finished run reports: parameter counts, the final table, JSON files and the two plots.

Plots use matplotlib's object API (``Figure`` + Agg canvas), never ``pyplot``: no global backend is
switched, so importing this module inside a notebook or a GUI program changes nothing there.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from torch import nn

from .checkpoint import open_temp_beside
from .pruners import Pruning
from .tasks import headline_of

__all__ = [
    "model_counts",
    "write_json",
    "append_jsonl",
    "read_jsonl",
    "format_table",
    "plot_sparsity",
    "plot_layers",
    "plot_run",
]


# -- numbers ------------------------------------------------------------------------------------


def model_counts(model: nn.Module, pruning: Pruning) -> dict[str, Any]:
    """Parameter counts of the pruned model: all parameters, exact zeros, and the prunable tensors.

    ``total_sparsity`` counts zeros over *every* parameter (biases and BatchNorm included), which is
    what the stored model costs; ``sparsity`` (from the pruning object) only the prunable entries.
    """
    params = sum(p.numel() for p in model.parameters())
    nonzero = sum(int((p != 0).sum()) for p in model.parameters())
    return {
        "params": params,
        "nonzero_params": nonzero,
        "total_sparsity": 1.0 - nonzero / params if params else 0.0,
        "prunable_params": sum(w.numel() for w in pruning.weights.values()),
        "layer_params": {name: w.numel() for name, w in pruning.weights.items()},
        "layer_shapes": {name: list(w.shape) for name, w in pruning.weights.items()},
    }


# -- files --------------------------------------------------------------------------------------


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Writes JSON through a temporary file and a rename, so readers never see half a file."""
    path = Path(path)
    fd, tmp = open_temp_beside(path)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(obj, f, indent=2)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def append_jsonl(path: str | os.PathLike, records: Iterable[Mapping[str, Any]]) -> None:
    with open(path, "a") as f:
        for record in records:
            f.write(json.dumps(record) + "\n")
        f.flush()
        os.fsync(f.fileno())


def read_jsonl(path: str | os.PathLike) -> list[dict[str, Any]]:
    """All complete lines of a JSON-lines file (a torn last line from a crash is skipped)."""
    path = Path(path)
    if not path.is_file():
        return []
    records = []
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


# -- the final table ----------------------------------------------------------------------------


def _pct(x: float | None) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.2f}%"


def _value(x: float | None) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.4f}"


def format_table(summary: Mapping[str, Any]) -> str:
    """The end-of-run table: the headline metric and accuracy of the pruned and the dense weights,
    sparsity overall and per layer. A headline other than the test accuracy (``summary["metric"]``,
    e.g. bits per character) comes first, marked higher or lower is better."""
    params, nonzero = summary["params"], summary["nonzero_params"]
    ratio = params / nonzero if nonzero else math.inf
    key, name, higher = headline_of(summary)
    lines = [
        f"{summary['dataset']} / {summary['model']} / {summary['method']}  "
        f"(seed {summary['seed']}, {summary['epochs']} epochs, {summary['wall_seconds']:.1f} s)",
        "",
    ]
    width = 24
    if key != "test_accuracy":
        val_key = "val_" + key.removeprefix("test_")
        label = f"{name} ({'higher' if higher else 'lower'} is better)"
        width = max(width, len(label) + 2)
        rows = [(label, _value(summary.get(key)), _value(summary.get(f"dense_{key}")))]
        if summary.get(val_key) is not None:
            rows.append((f"validation {name.removeprefix('test ')}", _value(summary[val_key]), ""))
    else:
        rows = []
    rows.append(("test accuracy", _pct(summary["test_accuracy"]), _pct(summary["dense_test_accuracy"])))
    if summary.get("val_accuracy") is not None:
        rows.append(("validation accuracy", _pct(summary["val_accuracy"]), ""))
    lines.append(f"{'':{width}}{'pruned':>10}{'dense':>10}")
    lines += [f"{label:{width}}{pruned:>10}{dense:>10}".rstrip() for label, pruned, dense in rows]
    lines += [
        f"{'sparsity (prunable)':{width}}{_pct(summary['sparsity']):>10}   of {summary['prunable_params']:,} weights",
        f"{'sparsity (all params)':{width}}{_pct(summary['total_sparsity']):>10}   "
        f"{nonzero:,} of {params:,} parameters nonzero ({ratio:.1f}x fewer)",
        f"{'weights regrown':{width}}{summary['regrown']:>10,}   (mask flips back to kept, summed over all updates)",
    ]
    if "unit_sparsity" in summary:  # granularity "unit": units left per group, e.g. 20-50-500 -> 5-18-120
        sizes, kept = ("-".join(map(str, summary[key].values())) for key in ("units_total", "units_kept"))
        lines.append(f"{'units removed':{width}}{_pct(summary['unit_sparsity']):>10}   units per layer {sizes} -> {kept}")
    lines.append("")
    layers = summary["layer_sparsity"]
    width = max([len("layer")] + [len(name) for name in layers])
    lines.append(f"{'layer':{width}}  {'shape':>16}  {'weights':>10}  {'sparsity':>9}")
    for name, value in layers.items():
        shape = "x".join(str(s) for s in summary["layer_shapes"][name])
        lines.append(f"{name:{width}}  {shape:>16}  {summary['layer_params'][name]:>10,}  {_pct(value):>9}")
    return "\n".join(lines)


# -- plots --------------------------------------------------------------------------------------


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def plot_sparsity(
    curve: list[Mapping[str, Any]],
    metrics: list[Mapping[str, Any]],
    path: str | os.PathLike,
    title: str = "",
    metric: str = "test_accuracy",
    metric_name: str = "test accuracy",
) -> None:
    """Two panels over training steps: sparsity (every logged step), and the headline metric of the
    pruned and the dense weights (every epoch): ``metric`` is its key in ``metrics.jsonl``
    (``test_accuracy`` by default, drawn in %; e.g. ``test_bpc`` as it is)."""
    fig = _figure(7.0, 5.5)
    top, bottom = fig.subplots(2, 1, sharex=True)
    top.plot([p["step"] for p in curve], [100 * p["sparsity"] for p in curve], color="tab:blue", lw=1.2)
    top.set_ylabel("sparsity of prunable weights (%)")
    top.set_ylim(bottom=0)
    top.grid(alpha=0.3)
    steps = [m["step"] for m in metrics]
    scale = 100 if metric.endswith("accuracy") else 1
    bottom.plot(steps, [scale * m[metric] for m in metrics], "o-", color="tab:red", label="pruned weights")
    bottom.plot(steps, [scale * m[f"dense_{metric}"] for m in metrics], "s--", color="tab:gray", label="dense weights", ms=4)
    bottom.set_xlabel("training step")
    bottom.set_ylabel(f"{metric_name} (%)" if scale == 100 else metric_name)
    bottom.grid(alpha=0.3)
    bottom.legend(loc="lower right" if scale == 100 else "upper right")
    if title:
        top.set_title(title)
    fig.savefig(path, dpi=120)


def plot_layers(layer_sparsity: Mapping[str, float], path: str | os.PathLike, layer_params: Mapping[str, int] | None = None, title: str = "") -> None:
    """Horizontal bars: final sparsity of every prunable tensor, in model order (first layer on top)."""
    names = list(layer_sparsity)
    labels = [f"{n} ({layer_params[n]:,})" if layer_params else n for n in names]
    fig = _figure(7.0, 1.2 + 0.28 * len(names))
    ax = fig.subplots()
    y = list(range(len(names)))
    bars = ax.barh(y, [100 * layer_sparsity[n] for n in names], color="tab:blue")
    ax.bar_label(bars, fmt="%.1f%%", padding=2, fontsize=8)
    ax.set_yticks(y, labels, fontsize=8 if len(names) > 20 else 10)
    ax.invert_yaxis()
    ax.set_xlim(0, 100)
    ax.set_xlabel("sparsity (%)")
    ax.grid(axis="x", alpha=0.3)
    if title:
        ax.set_title(title)
    fig.savefig(path, dpi=120)


def plot_run(run_dir: str | os.PathLike) -> None:
    """(Re)draws ``sparsity.png`` and ``layers.png`` of a run from its ``metrics.jsonl`` and ``curve.jsonl``."""
    run_dir = Path(run_dir)
    metrics = read_jsonl(run_dir / "metrics.jsonl")
    if not metrics:
        raise ValueError(f"{run_dir / 'metrics.jsonl'} has no epochs to plot")
    summary_path = run_dir / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
    title = " / ".join(str(summary[k]) for k in ("dataset", "model", "method") if k in summary)
    metric, metric_name, _ = headline_of(summary)
    plot_sparsity(read_jsonl(run_dir / "curve.jsonl"), metrics, run_dir / "sparsity.png", title, metric, metric_name)
    plot_layers(metrics[-1]["layer_sparsity"], run_dir / "layers.png", summary.get("layer_params"), title)
