"""The experiment suite behind ``snrprune bench``: a declarative grid of ordinary runs, resumable.

A suite file (``benchmarks/suites/*.py``) defines ``SUITE`` (and optionally ``QUICK``, the smoke-test
tier) from the classes below: cells (a dataset, a model, its epochs and seeds) crossed with methods
(``TrainConfig`` fields), in groups so that ablations cover only some cells. Every run is an ordinary
``snrprune train`` run folder under ``runs/bench/<suite>/`` (checkpoints stay there, uncommitted); when
it finishes, its small files (``config.json``, ``summary.json``, ``metrics.jsonl``, a thinned
``curve.jsonl``) are copied to ``benchmarks/results/<suite>/<cell>/<method>/seed<k>/``, the folder
that is committed. A run whose ``summary.json`` is there (and is a valid finished run's summary, see
:func:`summary_problem`) is finished and skipped; a run interrupted mid-way continues from its last
epoch with ``--resume``. A run that another process is training (it holds its run folder's lock,
see :func:`snrprune.checkpoint.run_folder_lock`) is skipped: two benches on one suite share the work.

A method with ``matched_to`` (DPF at the sparsity SNR found) takes its target from the finished run
of that method in the same cell and seed, so it waits for that run.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import os
import platform
import runpy
import shutil
import time
import traceback
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from multiprocessing import get_context
from pathlib import Path
from typing import Any

from . import reporting
from .checkpoint import RunFolderLockedError, run_folder_busy, run_folder_lock
from .data import cifar10_folder
from .training import CHECKPOINT, CONFIG, CURVE, METRICS, SUMMARY, TrainConfig

__all__ = [
    "Method", "Cell", "Group", "Suite", "Run", "BenchError", "load_suite", "check_suite", "plan", "run_suite",
    "cell_unavailable", "summary_problem", "read_summary", "read_json",
]

#: Files of a finished run that are committed (checkpoints and model files are not).
RESULT_FILES = (CONFIG, METRICS, CURVE, SUMMARY)
#: Beside a run's results: how it was run (parallel jobs, threads per run) and on which machine.
EXECUTION = "bench.json"
#: ``curve.jsonl`` is thinned to at most this many points when it is copied to the results.
CURVE_POINTS = 400


class BenchError(RuntimeError):
    """The suite cannot run as asked; the message says why and what to do."""


#: What a finished run's ``summary.json`` must hold (the suite, its report and ``matched_to`` read these).
SUMMARY_FIELDS: dict[str, tuple[type, ...]] = {
    "finished": (bool,),
    "method": (str,),
    "seed": (int,),
    "epochs": (int,),
    "test_accuracy": (int, float),
    "sparsity": (int, float),
    "wall_seconds": (int, float),
    "params": (int,),
    "nonzero_params": (int,),
    "layer_sparsity": (dict,),
    "layer_params": (dict,),
}


def _load_json(path: Path) -> tuple[Any, str | None]:
    """(the parsed file, None), or (None, what is wrong with it, as words that follow the path)."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        return None, f"cannot be read ({exc.strerror or type(exc).__name__})"
    if not raw.strip():
        return None, "is empty"
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return None, f"is not UTF-8 text (byte {exc.start}): not a JSON file"
    try:
        return json.loads(text), None
    except json.JSONDecodeError as exc:
        return None, f"is not valid JSON (truncated or corrupt: {exc.msg} at line {exc.lineno}, column {exc.colno})"


def summary_problem(path: str | os.PathLike) -> str | None:
    """What is wrong with the ``summary.json`` at ``path`` as a finished run's summary, or None.

    The one test of "finished" used everywhere (the run's state, copying it to the results, the
    report, ``matched_to``): a JSON object with ``finished: true`` and the :data:`SUMMARY_FIELDS`
    of their types. A missing file is a problem too ("does not exist").
    """
    path = Path(path)
    if not path.exists():
        return "does not exist"
    data, problem = _load_json(path)
    if problem is not None:
        return problem
    if not isinstance(data, dict):
        return f"is not a JSON object (it holds a {type(data).__name__})"
    if data.get("finished") is not True:
        return "does not say finished: true" if data else "is an empty JSON object, not a run's summary"
    missing = [key for key in SUMMARY_FIELDS if key not in data]
    if missing:
        return f"lacks {', '.join(missing)} (not a complete summary of a finished run)"
    for key, types in SUMMARY_FIELDS.items():
        value = data[key]
        if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
            return f"has {key} = {value!r} (a {type(value).__name__}), where a finished run's summary has a {' or '.join(t.__name__ for t in types)}"
    for key in ("test_accuracy", "sparsity"):
        if not 0 <= data[key] <= 1:
            return f"has {key} = {data[key]!r}, outside [0, 1]"
    return None


def read_summary(path: str | os.PathLike) -> dict[str, Any]:
    """A finished run's summary; :class:`BenchError` naming the file if it is missing or broken."""
    problem = summary_problem(path)
    if problem is not None:
        raise BenchError(
            f"{path} {problem}; restore it (git checkout -- {path}, if it is committed) or delete its run's "
            f"results folder {Path(path).parent} to run it again"
        )
    return json.loads(Path(path).read_text())


def read_json(path: str | os.PathLike, what: str) -> Any:
    """A JSON file of a run (``what``: "run configuration", ...); :class:`BenchError` naming it if broken."""
    path = Path(path)
    data, problem = _load_json(path)
    if problem is not None:
        raise BenchError(f"{path} (a {what}) {problem}; restore it or delete its run's folder {path.parent} to run it again")
    return data


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


def matched_target(run: Run, summary: dict[str, Any]) -> float:
    """The target a ``matched_to`` run takes from the finished run it is matched to: that run's final
    sparsity, of units when this run prunes units (``granularity="unit"``: DPF's target is then a
    fraction of units)."""
    if run.method.options.get("granularity") != "unit":
        return float(summary["sparsity"])
    if "unit_sparsity" not in summary:
        raise BenchError(
            f"{run.key} prunes units and is matched to {run.depends_on}, which has no unit sparsity (it pruned "
            "weights): match a unit-granularity method to another unit-granularity method"
        )
    return float(summary["unit_sparsity"])


def load_suite(path: str | os.PathLike, quick: bool = False) -> Suite:
    """Reads ``SUITE`` (or ``QUICK``) from a suite file and checks it (:func:`check_suite`).

    Every problem is a :class:`BenchError` naming the file (and the line, for a Python error in it).
    """
    path = Path(path).expanduser()
    if path.is_dir():
        raise BenchError(f"{path} is a folder, not a suite file (a suite is a .py file, e.g. benchmarks/suites/paper.py)")
    if not path.is_file():
        raise BenchError(f"suite file {path} not found (the suites of this repository are in benchmarks/suites/)")
    try:
        namespace = runpy.run_path(str(path))
    except SyntaxError as exc:  # the file itself, or a module it imports
        where = f"{exc.filename}, line {exc.lineno}" if exc.filename else f"line {exc.lineno}"
        raise BenchError(f"suite file {path} cannot be read: {type(exc).__name__} in {where}: {exc.msg}; fix the file") from None
    except (Exception, SystemExit) as exc:
        frames = [f for f in traceback.extract_tb(exc.__traceback__) if Path(f.filename) == path]
        where = f", line {frames[-1].lineno} ({(frames[-1].line or '').strip()[:80]})" if frames else ""
        raise BenchError(f"suite file {path}{where}: {type(exc).__name__}: {exc}; fix the file") from None
    name = "QUICK" if quick else "SUITE"
    suite = namespace.get(name)
    if not isinstance(suite, Suite):
        raise BenchError(f"{path} defines no {name} = Suite(...)" + (" (no quick tier)" if quick else ""))
    suite = dataclasses.replace(suite, source=str(path))
    check_suite(suite)
    return suite


#: TrainConfig fields a suite sets itself: per cell (dataset, model, epochs) and per run (seed).
_SET_BY_SUITE = ("dataset", "model", "epochs", "seed")


def check_suite(suite: Suite) -> None:
    """Refuses a suite that cannot run, before any run starts: options that are no ``TrainConfig``
    field (naming the valid ones), options that make an invalid configuration, a ``matched_to``
    that names no method of the cell. Raises :class:`BenchError` naming the suite, run and option.
    """
    where = f"suite {suite.name!r} ({suite.source})" if suite.source else f"suite {suite.name!r}"
    fields = [f.name for f in dataclasses.fields(TrainConfig) if f.name not in ("world_size",)]
    valid = [f for f in fields if f not in _SET_BY_SUITE]
    for group in suite.groups:
        for thing, options in [*((f"cell {c.key!r}", c.options) for c in group.cells), *((f"method {m.name!r}", m.options) for m in group.methods)]:
            for option in options:
                if option not in fields:
                    close = difflib.get_close_matches(str(option), valid, n=1, cutoff=0.8)
                    hint = f" (did you mean {close[0]!r}?)" if close else ""
                    raise BenchError(
                        f"{where}: {thing} in group {group.title!r} has an unknown option {option!r}{hint}; "
                        f"valid options: {', '.join(valid)}"
                    )
                if option == "seed":
                    raise BenchError(f"{where}: {thing} in group {group.title!r} sets 'seed'; a suite's seeds come from Cell(seeds=N) (0 .. N-1)")
    keys = {run.key for run in suite.runs()}
    granularity = {m.name: m.options.get("granularity", "weight") for g in suite.groups for m in g.methods}
    checked: set[tuple[str, str]] = set()
    for run in suite.runs():
        if (run.cell.key, run.method.name) in checked:
            continue
        checked.add((run.cell.key, run.method.name))
        if run.depends_on is not None and run.depends_on not in keys:
            raise BenchError(
                f"{where}: method {run.method.name!r} is matched_to {run.method.matched_to!r}, which cell "
                f"{run.cell.key!r} does not run; add that method to the cell's group or drop matched_to"
            )
        if run.depends_on is not None and granularity[run.method.name] != granularity[run.method.matched_to]:
            raise BenchError(
                f"{where}: method {run.method.name!r} (granularity {granularity[run.method.name]!r}) is "
                f"matched_to {run.method.matched_to!r} (granularity {granularity[run.method.matched_to]!r}): a target of "
                "units and a sparsity of weights do not match; give both the same granularity"
            )
        try:
            run.config(0.5 if run.method.matched_to else None).resolved()  # 0.5: a stand-in for the matched target
        except (TypeError, ValueError) as exc:
            options = {**run.cell.options, **run.method.options}
            raise BenchError(
                f"{where}: run {run.key} (cell {run.cell.key!r}, method {run.method.name!r}, options {options}) "
                f"is not a valid configuration: {exc}"
            ) from None


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
        """The committed summary of a finished run, None if there is none; :class:`BenchError` if it is broken."""
        path = self.results / run_key / SUMMARY
        return read_summary(path) if path.exists() else None

    def state(self, run: Run) -> str:
        """One of :data:`STATES` but "skipped" (see :meth:`inspect`)."""
        return self.inspect(run)[0]

    def inspect(self, run: Run) -> tuple[str, str | None]:
        """The run's state and, where a file is broken, a note naming it.

        finished: a valid summary in the results. running: another process holds the run folder's
        lock. uncopied: a valid summary in the run folder only (copied by the next bench; a broken
        committed summary is replaced by it). interrupted: a checkpoint (a broken summary beside it
        is rewritten by the resume). broken: a broken summary and nothing to repair it from.
        """
        result = self.result_dir(run) / SUMMARY
        result_problem = summary_problem(result) if result.exists() else None
        if result.exists() and result_problem is None:
            return "finished", None
        work = self.work_dir(run)
        if run_folder_busy(work):
            return "running", None
        state, note = work_state(work)
        if result_problem is not None:
            broken = f"{result} {result_problem}"
            if state == "finished":
                return "uncopied", f"{broken}; it is copied again from {work}"
            return "broken", f"{broken}; restore it (git checkout -- {result}) or delete {result.parent} to run it again"
        return ("uncopied" if state == "finished" else state), note


#: A run's states, in the order ``--list`` prints them.
STATES = ("finished", "uncopied", "running", "interrupted", "new", "broken", "skipped")


def work_state(work: Path) -> tuple[str, str | None]:
    """The state of a run folder by its files alone: finished, interrupted, new or broken (and a note)."""
    summary, checkpoint = work / SUMMARY, work / CHECKPOINT
    if summary.exists():
        problem = summary_problem(summary)
        if problem is None:
            return "finished", None
        if checkpoint.is_file():
            return "interrupted", f"{summary} {problem}; resuming from {CHECKPOINT} writes it again"
        return "broken", f"{summary} {problem} and there is no {CHECKPOINT} to resume from; delete {work} to run it again"
    return ("interrupted" if checkpoint.is_file() else "new"), None


def default_layout(suite: Suite, results: str | None = None, work: str | None = None) -> Layout:
    return Layout(
        Path(results).expanduser() if results else Path("benchmarks/results") / suite.name,
        Path(work).expanduser() if work else Path("runs/bench") / suite.name,
    )


def copy_results(work_dir: Path, result_dir: Path, execution: dict[str, Any] | None = None) -> None:
    """Copies a finished run's small files; ``summary.json`` last, since its presence means finished.

    ``execution`` (parallel jobs, threads per run; by default what the run folder's ``bench.json``
    says, written by the process that trained it) goes to ``bench.json`` with the machine: timings
    are only comparable between runs made the same way. A run folder whose ``summary.json`` is not a
    finished run's (:func:`summary_problem`) is refused with :class:`BenchError`: nothing is copied.
    """
    problem = summary_problem(work_dir / SUMMARY)
    if problem is not None:
        raise BenchError(f"{work_dir / SUMMARY} {problem}; nothing was copied to {result_dir}")
    result_dir.mkdir(parents=True, exist_ok=True)
    machine = {"cpus": os.cpu_count(), "platform": platform.platform(), "processor": platform.processor() or platform.machine()}
    if execution is None and (work_dir / EXECUTION).is_file():
        recorded, problem = _load_json(work_dir / EXECUTION)
        execution = recorded if problem is None and isinstance(recorded, dict) else None  # unreadable: unknown, as before
    reporting.write_json(result_dir / EXECUTION, {**(execution or {}), **machine})
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
    """The runs by state (:data:`STATES`; skipped: data missing), filtered by ``only``.

    An ``only`` pattern that matches no run is a :class:`BenchError` listing the cells and methods.
    """
    by_state: dict[str, list[Run]] = {s: [] for s in STATES}
    unavailable = {cell.key: cell_unavailable(cell, data_dir) for cell in suite.cells()}
    runs = [run for run in suite.runs() if not only or fnmatchcase(run.key, only)]
    if only and not runs:
        raise BenchError(no_match_message(suite, only))
    for run in runs:
        state = "skipped" if unavailable[run.cell.key] else layout.state(run)
        by_state[state].append(run)
    return by_state


def no_match_message(suite: Suite, only: str) -> str:
    every = suite.runs()
    methods = list(dict.fromkeys(run.method.name for run in every))
    return (
        f"--only {only!r} matches none of the {len(every)} runs of suite {suite.name!r}; a run's key is "
        f"CELL/METHOD/seedN (e.g. {every[0].key if every else 'cell/method/seed0'}, or 'CELL/*'). "
        f"Cells: {', '.join(c.key for c in suite.cells())}. Methods: {', '.join(methods)}"
    )


# ------------------------------------------------------------------------------------------------
# Execution
# ------------------------------------------------------------------------------------------------


def _execute(config: dict[str, Any], work_dir: str, resume: bool, threads: int, expected: str, jobs: int = 1) -> dict[str, Any]:
    """One run in a worker process (spawned: its own torch threads).

    Holds the run folder's lock from before it looks at the folder until the run ends (``train``
    takes it again, re-entrantly): another process training the folder raises
    :class:`RunFolderLockedError`; a folder that changed since the bench looked (``expected``, the
    state then) is left alone and ``{"bench_changed": why}`` returned.
    """
    import torch

    from .training import train

    torch.set_num_threads(threads)
    work = Path(work_dir)
    with run_folder_lock(work, create=True):
        now, _ = work_state(work)
        if now != expected:
            return {"bench_changed": f"its run folder was {expected} when this bench looked and is {now} now (another process)"}
        if resume and (work / SUMMARY).exists():  # a broken summary beside the checkpoint: the resume writes it again
            (work / SUMMARY).unlink()
        # how this process runs it, beside the run: a later bench that copies the results finds it there
        reporting.write_json(work / EXECUTION, {"jobs": jobs, "threads": threads, **({"resumed": True} if resume else {})})
        return train(None if resume else TrainConfig.from_dict(config), work, resume=resume, overwrite=not resume, progress=False)


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
    Every run holds its run folder's lock while it trains (:func:`snrprune.checkpoint.run_folder_lock`),
    so several benches (and ``snrprune train --resume``) may run on one suite at once: a run that
    another process is training is reported as "running in another process" and skipped, neither
    started nor called interrupted; a run that another process finished meanwhile is not run again.
    A broken ``summary.json`` (:func:`summary_problem`) is never counted as finished: in the results
    it stops the call before any run starts (unless the run folder holds a valid one to copy), in a
    run folder with a checkpoint the run counts as interrupted. An ``only`` that matches nothing
    raises :class:`BenchError`.
    """
    state = plan(suite, layout, only, data_dir)
    if state["broken"]:
        listed = "\n  ".join(f"{r.key}: {layout.inspect(r)[1]}" for r in state["broken"])
        raise BenchError(f"{len(state['broken'])} run(s) have a broken summary.json; nothing was started:\n  {listed}")
    if state["interrupted"] and not resume:
        listed = "\n  ".join(r.key + (f" ({note})" if (note := layout.inspect(r)[1]) else "") for r in state["interrupted"])
        raise BenchError(
            f"{len(state['interrupted'])} run(s) were interrupted and have a checkpoint:\n  {listed}\n"
            f"continue them with --resume (or delete their folders under {layout.work} to start them over)"
        )
    planned = {run.key for runs in state.values() for run in runs}
    broken_deps = []
    for run in state["interrupted"] + state["new"]:  # a dependency outside this call (--only) must not be broken either
        if run.depends_on is not None and run.depends_on not in planned:
            try:
                layout.summary(run.depends_on)
            except BenchError as exc:
                broken_deps.append(f"{run.key} needs {run.depends_on}: {exc}")
    if broken_deps:
        raise BenchError("a run's dependency has a broken summary.json; nothing was started:\n  " + "\n  ".join(broken_deps))
    running = {run.key for run in state["running"]}
    for run in state["running"]:
        log(f"[bench] {run.key}: running in another process (skipped)")
    for run in state["uncopied"]:
        if _copy_finished(run, layout, layout.inspect(run)[1], log):
            continue
        running.add(run.key)
    order = {run.key: i for i, run in enumerate(suite.runs())}
    todo = sorted(state["interrupted"] + state["new"], key=lambda r: order[r.key])
    skipped_cells: dict[str, int] = {}
    for run in state["skipped"]:
        skipped_cells[run.cell.key] = skipped_cells.get(run.cell.key, 0) + 1
    cells = {cell.key: cell for cell in suite.cells()}
    for key, n in skipped_cells.items():  # the reason once per cell
        log(f"[bench] {key}: {n} run(s) skipped ({cell_unavailable(cells[key], data_dir)})")
    done = failed = 0
    pending: dict[Future, Run] = {}
    started = time.time()

    def ready(run: Run) -> tuple[bool, float | None]:
        dep = run.depends_on
        if dep is None:
            return True, None
        summary = layout.summary(dep)  # validated: checked above, or written by this call
        if summary is None:
            return False, None
        return True, matched_target(run, summary)

    with ProcessPoolExecutor(max_workers=jobs, mp_context=get_context("spawn")) as pool:
        while todo or pending:
            waiting_on = {r.key for r in [*pending.values(), *todo]}
            for run in list(todo):
                if len(pending) >= jobs:
                    break
                try:
                    ok, matched = ready(run)
                except BenchError as exc:  # its dependency finished elsewhere, with a broken summary
                    todo.remove(run)
                    failed += 1
                    log(f"[bench] {run.key}: not run: {exc}")
                    continue
                if not ok:
                    if run.depends_on not in waiting_on:  # its dependency failed, is filtered out, or runs elsewhere
                        todo.remove(run)
                        elsewhere = " (running in another process: run this again when it has finished)" if run.depends_on in running else ""
                        log(f"[bench] {run.key}: not run, it needs the finished run {run.depends_on}{elsewhere}")
                    continue
                todo.remove(run)
                now, note = layout.inspect(run)  # again: another process may have taken it meanwhile
                if now == "finished":
                    log(f"[bench] {run.key}: finished by another process meanwhile (not run again)")
                    continue
                if now == "uncopied" and _copy_finished(run, layout, note, log):
                    continue
                if now in ("uncopied", "running"):  # an uncopied run whose copy found the folder locked: logged
                    running.add(run.key)
                    if now == "running":
                        log(f"[bench] {run.key}: running in another process (skipped)")
                    continue
                if now == "broken":
                    failed += 1
                    log(f"[bench] {run.key}: not run: {note}")
                    continue
                if now == "interrupted" and not resume:
                    log(f"[bench] {run.key}: not run: interrupted in another process since this call started; continue it with --resume")
                    continue
                config = run.config(matched, data_dir).to_dict()
                pending[pool.submit(_execute, config, str(layout.work_dir(run)), now == "interrupted", threads, now, jobs)] = run
                log(f"[bench] {run.key}: {'resumed' if now == 'interrupted' else 'started'}" + (f" ({note})" if note else ""))
            if not pending:
                break
            finished, _ = wait(pending, return_when=FIRST_COMPLETED)
            for future in finished:
                run = pending.pop(future)
                try:
                    summary = future.result()
                    if "bench_changed" in summary:
                        log(f"[bench] {run.key}: not run: {summary['bench_changed']}")
                        continue
                    copy_results(layout.work_dir(run), layout.result_dir(run), {"jobs": jobs, "threads": threads})
                except RunFolderLockedError:  # another process took the folder between our look and the start
                    running.add(run.key)
                    log(f"[bench] {run.key}: running in another process (skipped)")
                    continue
                except Exception as exc:  # one broken run must not stop the suite
                    failed += 1
                    log(f"[bench] {run.key}: FAILED: {type(exc).__name__}: {exc}")
                    continue
                done += 1
                log(
                    f"[bench] {run.key}: test accuracy {summary['test_accuracy']:.4f}, sparsity {summary['sparsity']:.4f}, "
                    f"{summary['wall_seconds']:.0f} s  ({time.time() - started:.0f} s into this call)"
                )
    return {
        "finished_before": len(state["finished"]),
        "ran": done,
        "failed": failed,
        "skipped": len(state["skipped"]),
        "running_elsewhere": len(running),
    }


def _copy_finished(run: Run, layout: Layout, note: str | None, log: Callable[[str], None]) -> bool:
    """Copies the results of a run that finished in its folder but not in the results; False if
    another process holds the folder (it is training the run again)."""
    try:
        with run_folder_lock(layout.work_dir(run)):
            copy_results(layout.work_dir(run), layout.result_dir(run))
    except RunFolderLockedError:
        log(f"[bench] {run.key}: running in another process (skipped)")
        return False
    log(f"[bench] {run.key}: finished earlier, results copied" + (f" ({note})" if note else ""))
    return True


def iter_results(layout: Layout, suite: Suite) -> Iterator[tuple[Run, dict[str, Any] | None]]:
    """Every run of the suite with its summary (None while pending)."""
    for run in suite.runs():
        yield run, layout.summary(run.key)
