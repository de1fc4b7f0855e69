"""The suite's report: ``snrprune bench --report`` turns whatever has finished into markdown and plots.

Every number comes from the committed files under ``benchmarks/results/<suite>/``; a run that has not
finished is listed as pending, never filled in. A broken file (a truncated, empty, non-UTF-8 or
incomplete ``summary.json``, see :func:`snrprune.bench.summary_problem`; an unreadable
``bench.json``, ``config.json`` or log) stops the report with a :class:`BenchError` naming it.
Plots use matplotlib's object API (see reporting).
"""

from __future__ import annotations

import math
import os
import re
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from . import reporting
from .bench import EXECUTION, BenchError, Cell, Layout, Suite, cell_unavailable, read_json
from .data import dataset_task
from .tasks import TASKS, headline_of
from .training import METRICS

__all__ = ["write_report", "noise_snr_average"]

#: Main-grid method labels whose comparison the claims section reads, when the grid has them.
DENSE, SNR, DPF_MATCHED = "dense", "snr", "dpf-matched"
#: (method, DPF matched to its sparsity, title) compared cell by cell with dense and with DPF.
COMPARISONS = [
    (SNR, DPF_MATCHED, "Is SNR (`agree`, the paper's method) on par with dense training and with DPF?"),
    (
        "snr-auto-nested-witness",
        "dpf-matched-auto-nested-witness",
        "Is `snr-auto` (the default: nested one-epoch windows, the pruned weights a second witness, step growth; "
        "issue 19's fourth candidate) on par with dense training and with DPF at the sparsity it chose?",
    ),
    ("snr-auto", "dpf-matched-auto", "The default until commit ada3a1c (half-epoch windows; `snr-auto` in the suite): on par with dense and with DPF at its sparsity?"),
    ("snr-auto-nested", "dpf-matched-auto-nested", "Issue 19's candidate (one-epoch windows in nested halves): on par with dense and with DPF at its sparsity?"),
    ("snr-auto-pooled", "dpf-matched-auto-pooled", "Issue 19's second candidate (evidence pooled over one-epoch windows): on par with dense and with DPF at its sparsity?"),
    ("snr-auto-witness", "dpf-matched-auto-witness", "Issue 19's third candidate (the pruned weights a second witness): on par with dense and with DPF at its sparsity?"),
    ("snr-auto-window-1", "dpf-matched-auto-window-1", "The default before that (one-epoch windows): on par with dense and with DPF at its sparsity?"),
    ("snr-auto-indep-band", "dpf-matched-auto-indep-band", "An earlier default (one-epoch windows, a noise band of independent weights): on par with dense and with DPF at its sparsity?"),
    ("snr-auto-fixed", "dpf-matched-auto-fixed", "The earlier global design (fixed halving steps, no hysteresis): on par with dense and with DPF at its sparsity?"),
    ("snr-auto-layer-fixed", "dpf-matched-auto-layer-fixed", "The first design (per layer, fixed halving steps): on par with dense and with DPF at its sparsity?"),
]


# -- numbers ------------------------------------------------------------------------------------


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def _pm(values: Sequence[float], scale: float = 100.0, digits: int = 2) -> str:
    if not values:
        return "pending"
    mean, std = _mean_std([scale * v for v in values])
    return f"{mean:.{digits}f} ± {std:.{digits}f}" if len(values) > 1 else f"{mean:.{digits}f}"


def noise_snr_average(batch_size: int, ema: float, steps: int, n: int = 20000, seed: int = 0) -> np.ndarray:
    """Moving averages of the per-step SNR of weights whose true gradient is zero (pure noise).

    With Gaussian per-sample gradients of mean 0 the mini-batch SNR B*mean**2/var follows F(1, B-1)
    exactly; the average starts at the first value and mixes in each step with weight 1 - ema.
    """
    rng = np.random.default_rng(seed)
    avg = rng.f(1, batch_size - 1, n)
    for _ in range(max(0, min(steps, 400) - 1)):  # 0.99**400 < 0.02: later steps change nothing visible
        avg += (1.0 - ema) * (rng.f(1, batch_size - 1, n) - avg)
    return avg


@dataclass(frozen=True)
class Headline:
    """A cell's headline metric (from its runs' ``summary.json``: ``metric``, ``metric_name``,
    ``higher_is_better``) as the report compares it: as an error, lower is better. A higher-is-better
    metric (the test accuracy) becomes 1 - value, shown in percent ("error %"); a lower-is-better one
    (bits per character) is shown as it is, with its unit."""

    key: str = "test_accuracy"
    name: str = "test accuracy"
    higher_is_better: bool = True

    def error(self, summary: dict[str, Any]) -> float:
        value = float(summary[self.key])
        return 1.0 - value if self.higher_is_better else value

    @property
    def percent(self) -> bool:
        return self.higher_is_better

    @property
    def label(self) -> str:
        """The column title: ``error %``, or the metric's name (``bits per character``)."""
        return "error %" if self.percent else self.name.removeprefix("test ")

    @property
    def unit(self) -> str:
        """What follows a value in a table that mixes metrics: nothing for %, else the key (``bpc``)."""
        return "" if self.percent else " " + self.key.removeprefix("test_")

    def format(self, errors: Sequence[float]) -> str:
        return _pm(errors) if self.percent else _pm(errors, scale=1.0, digits=3)

    def difference(self, d: float) -> str:
        """A difference of two mean errors: in points of %, or in the metric's unit."""
        return f"{100 * d:+.2f}" if self.percent else f"{d:+.3f}"


def _label(headlines: Sequence[Headline]) -> str:
    """One column title for the cells of a table: their common label, or each label once."""
    labels = list(dict.fromkeys(h.label for h in headlines)) or [Headline().label]
    return " or ".join(labels)


def _value(h: Headline, errors: Sequence[float], mixed: bool) -> str:
    text = h.format(errors)
    return text + h.unit if mixed and errors else text


class Results:
    """The finished runs of a suite, read once."""

    def __init__(self, suite: Suite, layout: Layout):
        self.suite, self.layout = suite, layout
        self.summaries: dict[str, dict[str, Any]] = {}
        self._headlines: dict[str, Headline] = {}
        for run in suite.runs():
            summary = layout.summary(run.key)
            if summary is not None:
                self.summaries[run.key] = summary

    def finished(self, cell: Cell, method: str) -> bool:
        """Whether every seed the suite runs of this method in this cell has finished (a group may run fewer seeds than the cell's)."""
        keys = [r.key for r in self.suite.runs() if r.cell.key == cell.key and r.method.name == method]
        return bool(keys) and all(k in self.summaries for k in keys)

    def seeds(self, cell: Cell, method: str) -> list[dict[str, Any]]:
        return [s for seed in range(cell.seeds) if (s := self.summaries.get(f"{cell.key}/{method}/seed{seed}"))]

    def values(self, cell: Cell, method: str, key: str) -> list[float]:
        return [float(s[key]) for s in self.seeds(cell, method)]

    def headline(self, cell: Cell) -> Headline:
        """The cell's headline metric, from any of its finished runs (while none has finished: its data set's task's)."""
        if cell.key not in self._headlines:
            found = (Headline(*headline_of(s)) for key, s in self.summaries.items() if key.split("/", 1)[0] == cell.key)
            task = TASKS[dataset_task(cell.dataset)]
            self._headlines[cell.key] = next(found, Headline(f"test_{task.metric}", task.metric_name, task.higher_is_better))
        return self._headlines[cell.key]

    def error(self, cell: Cell, method: str) -> list[float]:
        """The headline of each finished seed as an error (lower is better): 1 - accuracy, or bits per character."""
        h = self.headline(cell)
        return [h.error(s) for s in self.seeds(cell, method)]

    def metrics(self, run_key: str) -> list[dict[str, Any]]:
        return _read_log(self.layout.results / run_key / METRICS)

    def curve(self, run_key: str) -> list[dict[str, Any]]:
        return _read_log(self.layout.results / run_key / "curve.jsonl")

    def time_ratio(self, cell: Cell, method: str) -> list[float]:
        """Wall time over the dense run's of the same seed."""
        out = []
        for seed in range(cell.seeds):
            run, dense = (self.summaries.get(f"{cell.key}/{m}/seed{seed}") for m in (method, DENSE))
            if run and dense and dense["wall_seconds"] > 0:
                out.append(run["wall_seconds"] / dense["wall_seconds"])
        return out


def _read_log(path: Path) -> list[dict[str, Any]]:
    """A run's JSON-lines log (torn lines skipped, as in reporting); BenchError naming an unreadable one."""
    try:
        return reporting.read_jsonl(path)
    except (OSError, UnicodeDecodeError) as exc:
        raise BenchError(f"{path} cannot be read ({exc}); restore it or delete its run's folder {path.parent} to run it again") from None


#: The methods the frontier table compares, when the suite has them (each a method that finds its own sparsity).
FRONTIER_METHODS = ("snr", "snr-auto-nested-witness", "snr-auto-nested-witness-layer", "snr-auto", "snr-auto-window-1", "snr-auto-nested", "snr-auto-pooled", "snr-auto-witness")
#: The least margin of "lossless": a mean test error at most this much above dense's (0.1 points).
LOSSLESS_MARGIN = 0.001


def frontier_ladder(suite: Suite, cell: Cell | None = None) -> dict[str, float]:
    """DPF's ladder in the suite: each method that is plain DPF at a fixed target of weights, by name
    (not DPF at a fraction of units: ``granularity="unit"``); with ``cell``, only those its groups run."""
    return {
        m.name: float(m.options["target_sparsity"])
        for g in suite.groups
        if cell is None or any(c.key == cell.key for c in g.cells)
        for m in g.methods
        if m.matched_to is None
        and m.options.get("method") == "dpf"
        and "target_sparsity" in m.options
        and m.options.get("granularity", "weight") == "weight"
    }


def lossless_frontier(results: Results, cell: Cell, ladder: dict[str, float]) -> tuple[float | None, bool]:
    """(frontier, complete) of a cell: the largest target of DPF's ladder whose mean test error is at most
    dense's mean plus dense's standard deviation or :data:`LOSSLESS_MARGIN`, whichever is larger, among the
    targets whose every seed has finished; ``complete`` is False while a target above it is pending (the
    frontier is then a lower bound). None while dense, or every target, is pending."""
    dense = results.error(cell, DENSE)
    if not dense:
        return None, False
    mean, std = _mean_std(dense)
    bound = mean + max(std, LOSSLESS_MARGIN)
    finished = {name: target for name, target in ladder.items() if results.finished(cell, name)}
    frontier = max((t for name, t in finished.items() if statistics.fmean(results.error(cell, name)) <= bound), default=None)
    complete = all(name in finished for name, t in ladder.items() if frontier is None or t > frontier)
    return frontier, complete


def _frontier_rows(
    results: Results, cells: Sequence[Cell], ladders: dict[str, dict[str, float]], methods: Sequence[str]
) -> tuple[list[str], dict[str, dict[str, float]], dict[str, float], dict[str, dict[str, float]]]:
    """The table of the lossless frontier per cell, each method's chosen sparsity and kept-weight ratio;
    also, per method, the upper bounds of the ratio on the cells where no target of the ladder is lossless."""
    headlines = [results.headline(c) for c in cells]
    mixed = len({h.label for h in headlines}) > 1
    lines = [
        f"| cell | dense {_label(headlines)} | frontier % (DPF lossless) | "
        + " | ".join(f"{m}: sparsity % / kept ratio" for m in methods)
        + " |",
        "|---|---|---|" + "---|" * len(methods),
    ]
    chosen: dict[str, dict[str, float]] = {m: {} for m in methods}
    frontiers: dict[str, float] = {}  # the cells whose ladder is complete
    below: dict[str, dict[str, float]] = {m: {} for m in methods}  # below the ladder: the ratio's upper bound
    for cell in cells:
        ladder = ladders[cell.key]
        frontier, complete = lossless_frontier(results, cell, ladder)
        under = frontier is None  # every target lost accuracy: the frontier is below the ladder
        if under and not (complete and results.error(cell, DENSE)):
            continue
        reference = min(ladder.values()) if under else frontier  # the ratio's denominator (a bound when under)
        label = f"< {100 * reference:g} (no target lossless)" if under else f"{100 * frontier:g}{'' if complete else ' (≥, ladder pending)'}"
        if complete and not under:
            frontiers[cell.key] = frontier
        row = [f"| {cell.key} | {_value(results.headline(cell), results.error(cell, DENSE), mixed)} | {label} |"]
        for m in methods:
            values = results.values(cell, m, "sparsity")
            if not values:
                row.append(" - |")
                continue
            ratio = (1 - statistics.fmean(values)) / (1 - reference)
            if under:
                below[m][cell.key] = ratio
            elif complete:
                chosen[m][cell.key] = statistics.fmean(values)
            row.append(f" {_pm(values, digits=1)} / {'< ' if under else ''}{ratio:.2f} |")
        lines.append("".join(row))
    return lines, chosen, frontiers, below


def _frontier_section(results: Results, suite: Suite, plots: Path) -> tuple[list[str], Path | None]:
    ladders = {c.key: frontier_ladder(suite, c) for c in suite.cells()}
    methods = [m for m in FRONTIER_METHODS if any(m == x.name for g in suite.groups for x in g.methods)]
    cells = [c for c in suite.cells() if any(results.seeds(c, name) for name in ladders[c.key])]
    if not cells:
        return [], None
    targets = sorted({t for c in cells for t in ladders[c.key].values()})
    table, chosen, frontiers, below = _frontier_rows(results, cells, ladders, methods)
    units = sorted({h.unit.strip() for h in map(results.headline, cells) if not h.percent})
    other_units = f" ({LOSSLESS_MARGIN:g} {' or '.join(units)} where the headline is not an error in %)" if units else ""
    lines = [
        "## How close each method comes to DPF's lossless frontier",
        "",
        f"The frontier of a cell is the largest target of DPF's ladder ({', '.join(f'{100 * t:g}' for t in targets)}%: "
        f"global scope, the cell's recipe) whose mean test error is at most dense's mean plus dense's standard deviation "
        f"or {100 * LOSSLESS_MARGIN:g} points{other_units}, whichever is larger. The kept ratio is (1 − chosen) / (1 − frontier): 1 means "
        "the method found the frontier by itself, 3 that it kept three times the weights it needed (below 1: it pruned past it). "
        "Where a target above the frontier is still pending, the frontier is a lower bound (≥) and the ratio an upper bound; "
        "the counts below and the plot take only the cells whose ladder is complete. Where no target is lossless, the frontier "
        f"is below the lowest ({100 * targets[0]:g}%) and the ratio below (1 − chosen) / (1 − {targets[0]:g}): the counts take such a cell "
        "as at most 1.5 only when that bound is, and the plot leaves it out.",
        "",
        *table,
        "",
    ]
    for m in methods:
        ratios = [(1 - chosen[m][k]) / (1 - frontiers[k]) for k in chosen[m] if k in frontiers]
        bounds = list(below[m].values())
        if ratios or bounds:
            under = f" ({sum(b <= 1.5 for b in bounds)} of the {len(bounds)} below the ladder)" if bounds else ""
            median = f"; median {statistics.median(ratios):.2f} over the cells with a frontier" if ratios else ""
            lines.append(
                f"- `{m}`: kept ratio at most 1.5 on {sum(r <= 1.5 for r in ratios) + sum(b <= 1.5 for b in bounds)} of "
                f"{len(ratios) + len(bounds)} cells with a complete ladder{under}{median}."
            )
    lines.append("")
    path = _plot_frontier(chosen, frontiers, plots / "frontier.png") if frontiers else None
    return lines, path


# -- markdown -----------------------------------------------------------------------------------


def _table(results: Results, cells: Sequence[Cell], methods: Sequence[str]) -> list[str]:
    headlines = [results.headline(c) for c in cells]
    mixed = len({h.label for h in headlines}) > 1
    lines = [
        f"| cell | method | seeds | test {_label(headlines)} | sparsity % (final) | sparsity % (last epoch: mean [min, max]) | distinct regrown | nonzero params | time / dense |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for cell in cells:
        for method in methods:
            runs = results.seeds(cell, method)
            if not runs:
                lines.append(f"| {cell.key} | {method} | 0/{cell.seeds} | pending | | | | | |")
                continue
            bands = [s["sparsity_last_epoch"] for s in runs if s.get("sparsity_last_epoch")]
            band = (
                f"{_pm([b['mean'] for b in bands])} [{100 * min(b['min'] for b in bands):.1f}, {100 * max(b['max'] for b in bands):.1f}]"
                if bands
                else "-"
            )
            nonzero = statistics.fmean(s["nonzero_params"] for s in runs)
            params = runs[0]["params"]
            ratio = results.time_ratio(cell, method)
            lines.append(
                f"| {cell.key} | {method} | {len(runs)}/{cell.seeds} | {_value(results.headline(cell), results.error(cell, method), mixed)} "
                f"| {_pm([s['sparsity'] for s in runs])} | {band} | {statistics.fmean(s.get('regrown_distinct', 0) for s in runs):,.0f} "
                f"| {nonzero:,.0f} of {params:,} | {f'{statistics.fmean(ratio):.2f}x' if ratio else '-'} |"
            )
    return lines


_SIZES: dict[tuple, tuple[int, int] | None] = {}


def compact_size(summary: dict[str, Any], config: dict[str, Any]) -> tuple[int, int] | None:
    """(parameters, multiply-accumulates of one sample) of the network a unit-granularity run exports
    compact, from its units kept per group (sizes depend on how many units are left, not on which), or
    of the dense network for a run without units. None when Torch-Pruning (the ``structured`` extra) is
    absent or the model has no unit groups. Cached per model and units kept."""
    kept = summary.get("units_kept", {})
    key = (summary["model"], tuple(summary["input_shape"]), summary["num_classes"], repr(config.get("model_options") or {}), tuple(sorted(kept.items())))
    if key not in _SIZES:
        import warnings

        import torch

        from .export import count_macs, example_input
        from .models import build_model
        from .units import compact_model, find_unit_groups

        model = build_model(summary["model"], tuple(summary["input_shape"]), summary["num_classes"], **(config.get("model_options") or {})).eval()
        example = example_input(model, summary["model"], tuple(summary["input_shape"]), summary["num_classes"])
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # groups left dense were warned about when the run trained
                groups = find_unit_groups(model, example) if kept else []
                removed = {g.name: torch.arange(kept[g.name], g.size) for g in groups if kept.get(g.name, g.size) < g.size}
                compact = compact_model(model, example, removed, groups=groups) if removed else model
        except ImportError:
            _SIZES[key] = None
        else:
            _SIZES[key] = (sum(p.numel() for p in compact.parameters()), count_macs(compact, example))
    return _SIZES[key]


def _units_table(results: Results, cells: Sequence[Cell], methods: Sequence[str]) -> list[str]:
    """Structured pruning: per cell and method, the error, the units removed, the units left per layer
    (each seed) and the size of the compact network (parameters, multiply-accumulates a sample, mean
    over the seeds) against dense."""
    headlines = [results.headline(c) for c in cells]
    mixed = len({h.label for h in headlines}) > 1
    lines = [
        f"| cell | method | seeds | test {_label(headlines)} | units removed % | units per layer (each seed) | parameters | MACs / sample |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for cell in cells:
        dense_size = None
        for method in methods:
            runs = results.seeds(cell, method)
            if not runs:
                continue
            configs = [read_json(results.layout.results / f"{cell.key}/{method}/seed{s['seed']}/config.json", "run configuration") for s in runs]
            sizes = [compact_size(s, c) for s, c in zip(runs, configs)]
            if method == DENSE:
                dense_size = sizes[0]
            units = "all"
            if "units_kept" in runs[0]:
                left = "; ".join("-".join(str(v) for v in s["units_kept"].values()) for s in runs)
                units = "-".join(str(v) for v in runs[0]["units_total"].values()) + " → " + left
            removed = _pm([s["unit_sparsity"] for s in runs], digits=1) if "unit_sparsity" in runs[0] else "0"
            if all(sizes):
                params, macs = (statistics.fmean(x[i] for x in sizes) for i in (0, 1))
                cut = f" ({dense_size[0] / params:.1f}x fewer)" if dense_size and method != DENSE else ""
                cut_macs = f" ({dense_size[1] / macs:.1f}x fewer)" if dense_size and method != DENSE else ""
                size = f"{params:,.0f}{cut} | {macs:,.0f}{cut_macs}"
            else:
                size = "- | -"
            lines.append(
                f"| {cell.key} | {method} | {len(runs)}/{cell.seeds} | {_value(results.headline(cell), results.error(cell, method), mixed)} "
                f"| {removed} | {units} | {size} |"
            )
    return lines


#: A block index in a parameter name (``blocks.3.attn.q_proj.weight``): layers that differ only there are pooled.
_BLOCK_INDEX = re.compile(r"\.\d+\.")


def _where(results: Results, cell: Cell, methods: Sequence[str]) -> list[str]:
    """Where each method prunes a model of repeated blocks (a Transformer's attention, MLP, head):
    the sparsity of each kind of layer, its blocks pooled (weighted by their weights), mean over the
    finished seeds. Empty when the cell's layers have no block index or nothing has finished."""
    kinds: dict[str, int] = {}
    columns: dict[str, dict[str, float]] = {}
    for method in methods:
        runs = results.seeds(cell, method)
        if method == DENSE or not runs:
            continue
        per_seed = []
        for s in runs:
            zeros: dict[str, float] = {}
            sizes: dict[str, int] = {}
            for name, sparsity in s["layer_sparsity"].items():
                kind = _BLOCK_INDEX.sub(".*.", name)
                zeros[kind] = zeros.get(kind, 0.0) + sparsity * s["layer_params"][name]
                sizes[kind] = sizes.get(kind, 0) + s["layer_params"][name]
            per_seed.append({k: zeros[k] / sizes[k] for k in sizes if sizes[k]})
            kinds.update(sizes)
        columns[method] = {k: statistics.fmean(p[k] for p in per_seed if k in p) for k in per_seed[0]}
    if not columns or not any("*" in k for k in kinds):
        return []
    lines = [
        f"Where the methods prune `{cell.key}`: sparsity % per kind of layer, blocks pooled (`*`), mean over the finished seeds.",
        "",
        "| layer | weights | " + " | ".join(columns) + " |",
        "|---|---|" + "---|" * len(columns),
    ]
    for kind, size in kinds.items():
        lines.append(f"| `{kind}` | {size:,} | " + " | ".join(f"{100 * c[kind]:.1f}" if kind in c else "-" for c in columns.values()) + " |")
    return lines + [""]


def _difference(a: list[float], b: list[float], headline: Headline = Headline()) -> tuple[str, bool]:
    """Mean error of a minus b (in points, or in the headline's unit), against the larger std; on par = within it, or lower."""
    if not (a and b):
        return "pending", False
    d = statistics.fmean(a) - statistics.fmean(b)
    spread = max(_mean_std(a)[1], _mean_std(b)[1])
    where = "within 1 std" if abs(d) <= spread else ("lower by more than 1 std" if d < 0 else "higher by more than 1 std")
    return f"{headline.difference(d)} ({where})", abs(d) <= spread or d <= 0


def _claims(results: Results, cells: Sequence[Cell], method: str, matched: str) -> list[str]:
    """Each main cell: a method against dense and against DPF at the same sparsity, in standard deviations."""
    headlines = [results.headline(c) for c in cells]
    mixed, label = len({h.label for h in headlines}) > 1, _label(headlines)
    lines = [
        f"| cell | dense {label} | {method} {label} | {method} − dense | {matched} {label} | {method} − {matched} | {method} sparsity % (seeds) |",
        "|---|---|---|---|---|---|---|",
    ]
    on_par_dense = on_par_dpf = on_par_dpf_own = compared = 0
    for cell in cells:
        dense, snr, dpf = (results.error(cell, m) for m in (DENSE, method, matched))
        if not (dense and snr):
            continue
        compared += 1
        h = results.headline(cell)
        text_dense, ok_dense = _difference(snr, dense, h)
        text_dpf, ok_dpf = _difference(snr, dpf, h)
        on_par_dense += ok_dense
        on_par_dpf += ok_dpf
        # the stricter reading: within DPF's own spread (a method's own noise does not widen the test)
        on_par_dpf_own += bool(dpf) and statistics.fmean(snr) - statistics.fmean(dpf) <= _mean_std(dpf)[1]
        seeds = ", ".join(f"{100 * v:.1f}" for v in results.values(cell, method, "sparsity"))
        lines.append(f"| {cell.key} | {_value(h, dense, mixed)} | {_value(h, snr, mixed)} | {text_dense} | {_value(h, dpf, mixed)} | {text_dpf} | {seeds} |")
    lines.append("")
    lines.append(
        f"`{method}` is on par with dense (error within one standard deviation, or lower) in {on_par_dense} of {compared} "
        f"cells with both finished, and with DPF at the same sparsity in {on_par_dpf} "
        f"({on_par_dpf_own} within DPF's own standard deviation, or lower)."
    )
    return lines


def write_report(suite: Suite, layout: Layout, report: Path, command: str, data_dir: str | None = None) -> Path:
    """Writes the markdown report and its plots; returns the report's path."""
    results = Results(suite, layout)
    plots = layout.results / "plots"
    plots.mkdir(parents=True, exist_ok=True)
    report.parent.mkdir(parents=True, exist_ok=True)

    def link(path: Path) -> str:
        return os.path.relpath(path, report.parent)

    all_runs = suite.runs()
    finished = [r for r in all_runs if r.key in results.summaries]
    total = sum(results.summaries[r.key]["wall_seconds"] for r in finished)
    settings: dict[str, int] = {}
    machine = "?"
    for r in finished:
        meta = layout.results / r.key / EXECUTION
        if meta.is_file():
            info = read_json(meta, "record of how the run was made")
            if not isinstance(info, dict):
                raise BenchError(f"{meta} is not a JSON object; restore it or delete {meta.parent} to run the run again")
            label = f"{info.get('jobs', '?')} run(s) in parallel x {info.get('threads', '?')} thread(s)"
            settings[label] = settings.get(label, 0) + 1
            machine = f"{info.get('cpus', '?')} CPUs, {info.get('processor', '?')}"
    how = "; ".join(f"{n} runs with {label}" for label, n in settings.items()) or "no runs yet"
    lines = [
        f"# {suite.name}: results",
        "",
        suite.description.strip(),
        "",
        f"Regenerate: `{command}` runs what is missing (add `--resume` to continue interrupted runs), "
        f"`{command} --report` rewrites this page from `{layout.results}/`.",
        "",
        f"**{len(finished)} of {len(all_runs)} runs finished**; their training took {total / 3600:.2f} h of wall time in all "
        f"(sum of the runs' own clocks, on {machine}: {how}). Times relative to dense compare runs made the same way "
        "and are noisy when other work shared the machine.",
        "",
    ]
    skipped = {c.key: why for c in suite.cells() if (why := cell_unavailable(c, data_dir))}
    for key, why in skipped.items():
        lines.append(f"- `{key}`: skipped: {why}. To run it, put the CIFAR-10 python batches in a folder and pass `--data-dir DIR`.")
    pending: dict[str, list[str]] = {}
    for r in all_runs:
        if r.key not in results.summaries and r.cell.key not in skipped:
            pending.setdefault(r.cell.key, []).append(f"{r.method.name}/seed{r.seed}")
    if pending:
        lines += ["", f"Pending ({sum(map(len, pending.values()))} runs):", ""]
        for cell, keys in pending.items():
            in_cell = sum(1 for r in all_runs if r.cell.key == cell)
            shown = "all" if len(keys) == in_cell else ", ".join(keys[:8]) + (", ..." if len(keys) > 8 else "")
            lines.append(f"- `{cell}`: {len(keys)} of {in_cell}: {shown}")
    lines.append("")

    frontier_lines, frontier_plot = _frontier_section(results, suite, plots)
    if frontier_plot is not None:
        frontier_lines += [f"![chosen sparsity against the frontier]({link(frontier_plot)})", ""]
    lines += frontier_lines
    main = suite.groups[0]
    methods_main = [m.name for m in main.methods]
    for method, matched, title in COMPARISONS:  # over the cells of every group that has the method
        cells = list({c.key: c for g in suite.groups if method in [m.name for m in g.methods] for c in g.cells}.values())
        if cells:
            lines += [f"## {title}", "", *_claims(results, cells, method, matched), ""]
    families: dict[str, list[Cell]] = {}
    for cell in main.cells:
        families.setdefault(cell.family, []).append(cell)
    for family, cells in families.items():
        lines += [f"## {main.title}: {family} data", "", *_table(results, cells, methods_main), ""]
        why = [f"- `{c.key}`: {c.epochs} epochs, {c.seeds} seed(s). {c.why}" for c in cells if c.why]
        lines += why + [""] if why else []
    for group in suite.groups[1:]:
        names = [m.name for m in group.methods]
        lines += [f"## {group.title}", "", *_table(results, group.cells, names), ""]
        lines += [f"- `{m.name}`: {', '.join(f'{k}={v}' for k, v in m.options.items())}" for m in group.methods] + [""]
        if any(m.options.get("granularity") == "unit" for m in group.methods):  # what the compact export hands back
            lines += ["The compact networks these runs export (`snrprune export RUN --format compact`): units left per layer, "
                      "parameters and multiply-accumulates of the Linear and convolution layers per sample; measured "
                      "speed: `benchmarks/results/structured.md`.", "", *_units_table(results, group.cells, names), ""]
        if {SNR, "snr-auto"} <= set(names):  # a group that compares both SNR methods: where they prune, too
            for cell in group.cells:
                lines += _where(results, cell, names)

    if suite.findings:
        findings = Path(suite.source).parent / suite.findings
        if findings.is_file():
            lines += [findings.read_text().strip(), ""]
    lines += ["## Plots", ""]
    for title, path in _plots(results, main, plots):
        lines += [f"### {title}", "", f"![{title}]({link(path)})", ""]
    report.write_text("\n".join(lines).rstrip() + "\n")
    return report


# -- plots --------------------------------------------------------------------------------------

MARKERS = {
    "dense": ("o", "black"), "snr": ("s", "tab:blue"), "snr-either": ("D", "tab:cyan"), "dpf-matched": ("^", "tab:orange"),
    "dpf-90": ("v", "tab:red"), "snr-auto": ("P", "tab:green"), "dpf-matched-auto": ("<", "tab:olive"),
}
EXTRA_MARKERS = [("P", "tab:green"), ("X", "tab:purple"), ("*", "tab:brown"), ("h", "tab:pink"), ("<", "tab:olive")]


def _style(method: str, i: int) -> tuple[str, str]:
    return MARKERS.get(method) or EXTRA_MARKERS[i % len(EXTRA_MARKERS)]


def _plots(results: Results, main: Any, folder: Path) -> list[tuple[str, Path]]:
    made = []
    cells = [c for c in main.cells if any(results.seeds(c, m.name) for m in main.methods)]
    if cells:
        made.append(("Test error against sparsity (each point a seed)", _plot_accuracy(results, cells, main.methods, folder / "accuracy_vs_sparsity.png")))
        made.append(("Sparsity over training: SNR against DPF's schedule (seed 0)", _plot_curves(results, cells, folder / "sparsity_curves.png")))
    layer_cells = [c for c in cells if results.seeds(c, SNR) and len(results.seeds(c, SNR)[0]["layer_sparsity"]) > 1][:2]
    if layer_cells:
        made.append(("Per-layer sparsity found by SNR (mean and range over seeds)", _plot_layers(results, layer_cells, folder / "snr_layers.png")))
    for cell in layer_cells:
        path = _plot_snr_distribution(results, cell, folder / f"snr_distribution_{cell.key}.png")
        if path is not None:
            made.append((f"SNR moving average per layer, {cell.key} seed 0, against pure noise", path))
    return made


def _grid(n: int, width: float = 3.4, height: float = 2.8):
    cols = min(4, n)
    rows = math.ceil(n / cols)
    fig = reporting._figure(width * cols, height * rows)
    axes = np.atleast_1d(fig.subplots(rows, cols, squeeze=False)).ravel()
    for ax in axes[n:]:
        ax.set_visible(False)
    return fig, axes


def _plot_accuracy(results: Results, cells: Sequence[Cell], methods: Sequence[Any], path: Path) -> Path:
    fig, axes = _grid(len(cells))
    for ax, cell in zip(axes, cells):
        for i, method in enumerate(methods):
            runs = results.seeds(cell, method.name)
            marker, color = _style(method.name, i)
            h = results.headline(cell)
            scale = 100 if h.percent else 1
            ax.scatter([100 * s["sparsity"] for s in runs], [scale * h.error(s) for s in runs], marker=marker, color=color, label=method.name, s=28, alpha=0.8)
        ax.set_title(cell.key, fontsize=9)
        ax.set_xlabel("sparsity (%)", fontsize=8)
        ax.set_ylabel("test error (%)" if results.headline(cell).percent else f"test {results.headline(cell).label}", fontsize=8)
        ax.grid(alpha=0.3)
        ax.tick_params(labelsize=7)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncols=len(labels), fontsize=8)
    fig.savefig(path, dpi=100)
    return path


def _plot_frontier(chosen: dict[str, dict[str, float]], frontiers: dict[str, float], path: Path) -> Path:
    """Each method's chosen sparsity against the cell's lossless frontier (the diagonal: found it)."""
    fig = reporting._figure(5.0, 4.4)
    ax = fig.subplots()
    ax.plot([0, 100], [0, 100], color="grey", lw=1, ls="--", label="the frontier")
    for i, (method, by_cell) in enumerate(chosen.items()):
        keys = [k for k in by_cell if k in frontiers]
        marker, color = _style(method, i)
        ax.scatter([100 * frontiers[k] for k in keys], [100 * by_cell[k] for k in keys], marker=marker, color=color, label=method, s=30, alpha=0.8)
    ax.set_xlabel("DPF's lossless frontier (%)", fontsize=8)
    ax.set_ylabel("chosen sparsity (%)", fontsize=8)
    ax.set_xlim(0, 100)
    ax.set_ylim(0, 100)
    ax.grid(alpha=0.3)
    ax.tick_params(labelsize=7)
    ax.legend(fontsize=7, loc="upper left")
    fig.savefig(path, dpi=100)
    return path


def _plot_curves(results: Results, cells: Sequence[Cell], path: Path) -> Path:
    fig, axes = _grid(len(cells))
    for ax, cell in zip(axes, cells):
        for method, color in ((SNR, "tab:blue"), ("snr-either", "tab:cyan"), ("snr-auto", "tab:green"), (DPF_MATCHED, "tab:orange"), ("dpf-90", "tab:red")):
            curve = results.curve(f"{cell.key}/{method}/seed0")
            if curve:
                ax.plot([p["step"] for p in curve], [100 * p["sparsity"] for p in curve], color=color, lw=1, label=method)
        ax.set_title(cell.key, fontsize=9)
        ax.set_xlabel("step", fontsize=8)
        ax.set_ylabel("sparsity (%)", fontsize=8)
        ax.set_ylim(0, 100)
        ax.grid(alpha=0.3)
        ax.tick_params(labelsize=7)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncols=max(1, len(labels)), fontsize=8)
    fig.savefig(path, dpi=100)
    return path


def _plot_layers(results: Results, cells: Sequence[Cell], path: Path) -> Path:
    fig, axes = _grid(len(cells), width=4.5, height=3.2)
    for ax, cell in zip(axes, cells):
        runs = results.seeds(cell, SNR)
        names = list(runs[0]["layer_sparsity"])
        values = np.array([[100 * s["layer_sparsity"][n] for n in names] for s in runs])
        y = np.arange(len(names))
        ax.barh(y, values.mean(0), xerr=[values.mean(0) - values.min(0), values.max(0) - values.mean(0)], color="tab:blue", capsize=2)
        ax.set_yticks(y, [f"{n} ({runs[0]['layer_params'][n]:,})" for n in names], fontsize=7)
        ax.invert_yaxis()
        ax.set_xlim(0, 100)
        ax.set_xlabel("sparsity (%)", fontsize=8)
        ax.set_title(f"{cell.key}: snr, {len(runs)} seed(s)", fontsize=9)
        ax.grid(axis="x", alpha=0.3)
    fig.savefig(path, dpi=100)
    return path


def _plot_snr_distribution(results: Results, cell: Cell, path: Path) -> Path | None:
    key = f"{cell.key}/{SNR}/seed0"
    with_hist = [m for m in results.metrics(key) if "snr_histogram" in m]
    if len(with_hist) < 2:
        return None
    config = read_json(results.layout.results / key / "config.json", "run configuration")
    first, last = with_hist[0], with_hist[-1]
    edges = np.array(first["snr_histogram"]["edges"])
    centres = np.sqrt(edges[:-1] * edges[1:])
    steps_per_epoch = first["step"] // first["epoch"]
    burn_in_stats = max(1, round(config["burn_in_epochs"] * steps_per_epoch) // config["stats_every"])
    noise = {
        "end of burn-in": noise_snr_average(config["batch_size"], config["ema"], burn_in_stats),
        "end of training": noise_snr_average(config["batch_size"], config["ema"], 400),
    }
    names = list(first["snr_histogram"]["counts"])
    fig, axes = _grid(len(names), width=3.6, height=2.8)
    for ax, name in zip(axes, names):
        for record, label, color in ((first, "end of burn-in", "tab:green"), (last, "end of training", "tab:blue")):
            counts = np.array(record["snr_histogram"]["counts"][name], dtype=float)
            inner = counts[1:-1] / counts.sum()
            ax.step(centres, inner, where="mid", color=color, label=f"{label} (epoch {record['epoch']})")
        hist, _ = np.histogram(noise["end of training"], bins=edges)
        ax.step(centres, hist / len(noise["end of training"]), where="mid", color="black", ls="--", label="pure noise, stationary")
        hist, _ = np.histogram(noise["end of burn-in"], bins=edges)
        ax.step(centres, hist / len(noise["end of burn-in"]), where="mid", color="gray", ls=":", label="pure noise, at burn-in")
        ax.axvline(config["threshold"], color="tab:red", lw=0.8)
        ax.set_xscale("log")
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("SNR moving average", fontsize=8)
        ax.set_ylabel("fraction of weights", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncols=2, fontsize=7)
    fig.savefig(path, dpi=100)
    return path
