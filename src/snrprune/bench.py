"""The experiment suite behind ``snrprune bench``: a declarative grid of ordinary runs, resumable.

A suite file (``benchmarks/suites/*.py``) defines ``SUITE`` (and optionally ``QUICK``, the smoke-test
tier) from the classes below: cells (a dataset, a model, its epochs and seeds) crossed with methods
(``TrainConfig`` fields), in groups so that ablations cover only some cells. Every run is an ordinary
``snrprune train`` run folder under ``runs/bench/<suite>/`` (checkpoints stay there, uncommitted); when
it finishes, its small files (``config.json``, ``summary.json``, ``metrics.jsonl``, a thinned
``curve.jsonl``) are copied to ``benchmarks/results/<suite>/<cell>/<method>/seed<k>/``, the folder
that is committed. A run whose ``summary.json`` is there is finished and skipped; a run interrupted
mid-way continues from its last epoch with ``--resume``.

A method with ``matched_to`` (DPF at the sparsity SNR found) takes its target from the finished run
of that method in the same cell and seed, so it waits for that run.
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import runpy
import shutil
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from multiprocessing import get_context
from pathlib import Path
from typing import Any

from . import reporting
from .data import cifar10_folder
from .training import CHECKPOINT, CONFIG, CURVE, METRICS, SUMMARY, TrainConfig

__all__ = ["Method", "Cell", "Group", "Suite", "Run", "BenchError", "load_suite", "plan", "run_suite", "cell_unavailable"]

#: Files of a finished run that are committed (checkpoints and model files are not).
RESULT_FILES = (CONFIG, METRICS, CURVE, SUMMARY)
#: ``curve.jsonl`` is thinned to at most this many points when it is copied to the results.
CURVE_POINTS = 400


class BenchError(RuntimeError):
    """The suite cannot run as asked; the message says why and what to do."""


@dataclass(frozen=True)
class Method:
    """One training method of the grid: a label and the ``TrainConfig`` fields that make it.

    ``matched_to``: the label of another method whose finished run in the same cell and seed gives
    this one its ``target_sparsity`` (the final sparsity that run reached).
    """

    name: str
    options: Mapping[str, Any] = field(default_factory=dict)
    matched_to: str | None = None


@dataclass(frozen=True)
class Cell:
    """A dataset and a model, trained for ``epochs`` with ``seeds`` seeds (0, 1, ...).

    ``options`` are ``TrainConfig`` fields shared by every run of the cell; ``family`` groups cells
    into the report's tables; ``why`` says why these epochs (dense near convergence, the budget).
    """

    dataset: str
    model: str
    epochs: int
    seeds: int = 3
    family: str = "image"
    options: Mapping[str, Any] = field(default_factory=dict)
    why: str = ""
    name: str = ""

    @property
    def key(self) -> str:
        return self.name or f"{self.dataset}-{self.model}"


@dataclass(frozen=True)
class Group:
    """Every method crossed with every cell of the group (the main grid, or an ablation)."""

    title: str
    cells: Sequence[Cell]
    methods: Sequence[Method]


@dataclass(frozen=True)
class Suite:
    name: str
    groups: Sequence[Group]
    #: Markdown report, relative to the repository root; None: ``RESULTS.md`` in the results folder.
    report: str | None = None
    description: str = ""
    #: A hand-written interpretation (relative to the suite file) included in the report verbatim.
    findings: str | None = None
    source: str = ""  # the suite file, filled in by load_suite

    def runs(self) -> list[Run]:
        """Every run of the suite, each once, in grid order (cells, then seeds, then methods)."""
        seen: dict[str, Run] = {}
        for group in self.groups:
            for cell in group.cells:
                for seed in range(cell.seeds):
                    for method in group.methods:
                        run = Run(cell, method, seed)
                        seen.setdefault(run.key, run)
        return list(seen.values())

    def cells(self) -> list[Cell]:
        out: dict[str, Cell] = {}
        for group in self.groups:
            for cell in group.cells:
                out.setdefault(cell.key, cell)
        return list(out.values())


@dataclass(frozen=True)
class Run:
    cell: Cell
    method: Method
    seed: int

    @property
    def key(self) -> str:
        return f"{self.cell.key}/{self.method.name}/seed{self.seed}"

    @property
    def depends_on(self) -> str | None:
        m = self.method.matched_to
        return None if m is None else f"{self.cell.key}/{m}/seed{self.seed}"

    def config(self, matched_sparsity: float | None = None, data_dir: str | None = None) -> TrainConfig:
        values: dict[str, Any] = {"dataset": self.cell.dataset, "model": self.cell.model, "epochs": self.cell.epochs, "seed": self.seed}
        values.update(self.cell.options)
        values.update(self.method.options)
        if data_dir is not None and values.get("data_dir") is None and self.cell.dataset == "cifar10":  # the only data given by folder
            values["data_dir"] = data_dir
        if self.method.matched_to is not None:
            if matched_sparsity is None:
                raise BenchError(f"{self.key} needs the finished run {self.depends_on} for its target sparsity")
            values["target_sparsity"] = matched_sparsity
        return TrainConfig(**values)


def load_suite(path: str | os.PathLike, quick: bool = False) -> Suite:
    """Reads ``SUITE`` (or ``QUICK``) from a suite file."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise BenchError(f"suite file {path} not found (the suites of this repository are in benchmarks/suites/)")
    namespace = runpy.run_path(str(path))
    name = "QUICK" if quick else "SUITE"
    suite = namespace.get(name)
    if not isinstance(suite, Suite):
        raise BenchError(f"{path} defines no {name} = Suite(...)" + (" (no quick tier)" if quick else ""))
    return dataclasses.replace(suite, source=str(path))


def cell_unavailable(cell: Cell, data_dir: str | None = None) -> str | None:
    """Why a cell cannot run here (its data is missing), or None. Only data sets that may be absent are checked."""
    if cell.dataset != "cifar10":
        return None
    if cifar10_folder(cell.options.get("data_dir") or data_dir) is None:  # looks for the files, reads none
        return "the CIFAR-10 python batches were not found (no --data-dir, no $SNRPRUNE_CIFAR10_DIR)"
    return None


# ------------------------------------------------------------------------------------------------
# State of a run: finished (results committed), interrupted (checkpoint), or not started
# ------------------------------------------------------------------------------------------------


@dataclass
class Layout:
    """Where a suite keeps its committed results and its uncommitted run folders."""

    results: Path
    work: Path

    def result_dir(self, run: Run) -> Path:
        return self.results / run.key

    def work_dir(self, run: Run) -> Path:
        return self.work / run.key

    def summary(self, run_key: str) -> dict[str, Any] | None:
        path = self.results / run_key / SUMMARY
        return json.loads(path.read_text()) if path.is_file() else None

    def state(self, run: Run) -> str:
        if (self.result_dir(run) / SUMMARY).is_file():
            return "finished"
        if (self.work_dir(run) / SUMMARY).is_file():
            return "uncopied"  # finished, but stopped before its files were copied
        if (self.work_dir(run) / CHECKPOINT).is_file():
            return "interrupted"
        return "new"


def default_layout(suite: Suite, results: str | None = None, work: str | None = None) -> Layout:
    return Layout(
        Path(results).expanduser() if results else Path("benchmarks/results") / suite.name,
        Path(work).expanduser() if work else Path("runs/bench") / suite.name,
    )


def copy_results(work_dir: Path, result_dir: Path, execution: dict[str, Any] | None = None) -> None:
    """Copies a finished run's small files; ``summary.json`` last, since its presence means finished.

    ``execution`` (parallel jobs, threads per run, the machine) goes to ``bench.json``: timings are
    only comparable between runs made the same way.
    """
    result_dir.mkdir(parents=True, exist_ok=True)
    machine = {"cpus": os.cpu_count(), "platform": platform.platform(), "processor": platform.processor() or platform.machine()}
    reporting.write_json(result_dir / "bench.json", {**(execution or {}), **machine})
    curve = reporting.read_jsonl(work_dir / CURVE)
    stride = max(1, -(-len(curve) // CURVE_POINTS))
    kept = [p for i, p in enumerate(curve) if i % stride == stride - 1 or i == len(curve) - 1]
    tmp = result_dir / f".{CURVE}.tmp"
    tmp.write_text("".join(json.dumps(p) + "\n" for p in kept))
    tmp.replace(result_dir / CURVE)
    for name in (CONFIG, METRICS, SUMMARY):
        tmp = result_dir / f".{name}.tmp"
        shutil.copyfile(work_dir / name, tmp)
        tmp.replace(result_dir / name)


def plan(suite: Suite, layout: Layout, only: str | None = None, data_dir: str | None = None) -> dict[str, list[Run]]:
    """The runs by state: finished, uncopied, interrupted, new, skipped (data missing), filtered by ``only``."""
    by_state: dict[str, list[Run]] = {s: [] for s in ("finished", "uncopied", "interrupted", "new", "skipped")}
    unavailable = {cell.key: cell_unavailable(cell, data_dir) for cell in suite.cells()}
    for run in suite.runs():
        if only and not fnmatchcase(run.key, only):
            continue
        state = "skipped" if unavailable[run.cell.key] else layout.state(run)
        by_state[state].append(run)
    return by_state


# ------------------------------------------------------------------------------------------------
# Execution
# ------------------------------------------------------------------------------------------------


def _execute(config: dict[str, Any], work_dir: str, resume: bool, threads: int) -> dict[str, Any]:
    """One run in a worker process (spawned: its own torch threads)."""
    import torch

    from .training import train

    torch.set_num_threads(threads)
    return train(None if resume else TrainConfig.from_dict(config), work_dir, resume=resume, overwrite=not resume, progress=False)


def run_suite(
    suite: Suite,
    layout: Layout,
    *,
    resume: bool = False,
    jobs: int = 1,
    threads: int = 1,
    only: str | None = None,
    data_dir: str | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, int]:
    """Runs every unfinished run of the suite; returns counts of what was done.

    Interrupted runs continue only with ``resume`` (otherwise nothing starts and the error lists
    them). ``jobs`` runs go in parallel, each in a fresh process with ``threads`` torch threads.
    Run folders are not locked: run one ``bench`` per suite at a time, or give concurrent calls
    disjoint ``only`` patterns (a run in progress elsewhere looks interrupted here).
    """
    state = plan(suite, layout, only, data_dir)
    if state["interrupted"] and not resume:
        listed = "\n  ".join(r.key for r in state["interrupted"])
        raise BenchError(
            f"{len(state['interrupted'])} run(s) were interrupted and have a checkpoint:\n  {listed}\n"
            f"continue them with --resume (or delete their folders under {layout.work} to start them over)"
        )
    for run in state["uncopied"]:
        copy_results(layout.work_dir(run), layout.result_dir(run))
        log(f"[bench] {run.key}: finished earlier, results copied")
    skipped_cells = {run.cell.key: run.cell for run in state["skipped"]}
    reasons = {key: cell_unavailable(cell, data_dir) for key, cell in skipped_cells.items()}  # once per cell
    for run in state["skipped"]:
        log(f"[bench] {run.key}: skipped ({reasons[run.cell.key]})")
    order = {run.key: i for i, run in enumerate(suite.runs())}
    todo = sorted(state["interrupted"] + state["new"], key=lambda r: order[r.key])
    done = failed = 0
    pending: dict[Future, Run] = {}
    started = time.time()

    def ready(run: Run) -> tuple[bool, float | None]:
        dep = run.depends_on
        if dep is None:
            return True, None
        summary = layout.summary(dep)
        return (summary is not None), (None if summary is None else float(summary["sparsity"]))

    with ProcessPoolExecutor(max_workers=jobs, mp_context=get_context("spawn")) as pool:
        while todo or pending:
            waiting_on = {r.key for r in [*pending.values(), *todo]}
            for run in list(todo):
                if len(pending) >= jobs:
                    break
                ok, matched = ready(run)
                if not ok:
                    if run.depends_on not in waiting_on:  # its dependency failed or is filtered out
                        todo.remove(run)
                        log(f"[bench] {run.key}: not run, it needs the finished run {run.depends_on}")
                    continue
                todo.remove(run)
                interrupted = layout.state(run) == "interrupted"
                config = run.config(matched, data_dir).to_dict()
                pending[pool.submit(_execute, config, str(layout.work_dir(run)), interrupted, threads)] = run
                log(f"[bench] {run.key}: {'resumed' if interrupted else 'started'}")
            if not pending:
                break
            finished, _ = wait(pending, return_when=FIRST_COMPLETED)
            for future in finished:
                run = pending.pop(future)
                try:
                    summary = future.result()
                except Exception as exc:  # one broken run must not stop the suite
                    failed += 1
                    log(f"[bench] {run.key}: FAILED: {type(exc).__name__}: {exc}")
                    continue
                copy_results(layout.work_dir(run), layout.result_dir(run), {"jobs": jobs, "threads": threads})
                done += 1
                log(
                    f"[bench] {run.key}: test accuracy {summary['test_accuracy']:.4f}, sparsity {summary['sparsity']:.4f}, "
                    f"{summary['wall_seconds']:.0f} s  ({time.time() - started:.0f} s into this call)"
                )
    return {"finished_before": len(state["finished"]), "ran": done, "failed": failed, "skipped": len(state["skipped"])}


def iter_results(layout: Layout, suite: Suite) -> Iterator[tuple[Run, dict[str, Any] | None]]:
    """Every run of the suite with its summary (None while pending)."""
    for run in suite.runs():
        yield run, layout.summary(run.key)
