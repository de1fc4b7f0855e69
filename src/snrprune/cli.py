"""The ``snrprune`` command: ``snrprune train`` runs one experiment, ``snrprune export`` compresses its result.

Every mistake a user can make on the command line is reported before any work starts, argparse
style (usage line, message, exit status 2). Bad input that shows only when it is read (a missing
csv:PATH file or --data-dir folder, a malformed CSV, a batch larger than the data set, an --output
that cannot be written) ends with a one-line message and exit status 2 as well. Problems found while
running (a data set that is not installed, a diverging loss, a corrupt checkpoint or model file) end
with a one-line message and exit status 1, no traceback. Warnings are one line each.
"""

from __future__ import annotations

import argparse
import ast
import functools
import json
import math
import os
import re
import sys
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from . import __version__
from .checkpoint import CheckpointError, writable_folder_problem
from .data import DatasetNotFoundError, dataset_names
from .errors import InputError
from .masks import COMBINE_MODES, DEFAULT_UNIT_RANKING, GRANULARITIES, SCOPES, UNIT_RANKINGS
from .models import model_names
from .pruners import PRUNING_METHODS
from .reporting import format_table
from .training import (
    CONFIG,
    OPTIMIZERS,
    SCHEDULES,
    SUMMARY,
    METHOD_OPTIONS,
    RunFinishedError,
    TrainConfig,
    TrainingError,
    check_output_dir,
    train,
)

# TrainConfig fields set by `snrprune train` options (everything a --resume must not change).
_CONFIG_OPTIONS = (
    "dataset", "model", "method", "model_options", "data_dir", "target", "data_seed", "seed", "device",
    "epochs", "batch_size", "optimizer", "lr", "momentum", "nesterov", "weight_decay", "schedule",
    "target_sparsity", "scope", "granularity", "unit_ranking", "update_every", "combine", "ema", "threshold", "burn_in_epochs",
    "stats_every", "window_epochs", "auto_step", "auto_lr_scale", "auto_hysteresis", "auto_nested", "auto_pooled", "auto_pruned_witness", "auto_step_growth", "auto_lr_power", "auto_band_sample", "end_fraction", "include_layers", "exclude_layers", "curve_every",
    "accumulate", "amp",
)


# -- argument types: each rejects a bad value with a message that names the valid ones ------------


def _dataset(value: str) -> str:
    if value.strip().lower().replace("_", "-") in dataset_names() or value.strip().lower().startswith("csv:"):
        return value
    raise argparse.ArgumentTypeError(f"unknown dataset {value!r}; valid names: {', '.join(dataset_names())}, csv:PATH")


def _positive_int(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value!r}") from None
    if number < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return number


def _float_in(low: float, high: float | None, high_open: bool = True, low_open: bool = False):
    def parse(value: str) -> float:
        try:
            number = float(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {value!r}") from None
        ok = math.isfinite(number) and (number > low if low_open else number >= low)
        if high is not None:
            ok = ok and (number < high if high_open else number <= high)
        if not ok:
            left = "(" if low_open else "["
            right = "inf)" if high is None else (f"{high:g})" if high_open else f"{high:g}]")
            raise argparse.ArgumentTypeError(f"must be in {left}{low:g}, {right}, got {value}")
        return number

    return parse


def _model_option(value: str) -> tuple[str, Any]:
    """``key=value``; the value is a Python literal if it parses as one (64, 0.1, 64,64, [32]), else a string."""
    key, sep, raw = value.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE (e.g. widths=128,128), got {value!r}")
    try:
        parsed: Any = ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        parsed = raw
    if isinstance(parsed, tuple):
        parsed = list(parsed)
    return key.strip(), parsed


def _user_path(value: str) -> str:
    """A path with ``~`` expanded (a quoted ``'~/x'`` reaches us unexpanded by the shell)."""
    return str(Path(value).expanduser())


def _device(value: str) -> str:
    if value == "cpu" or re.fullmatch(r"cuda(:\d+)?", value):
        return value
    raise argparse.ArgumentTypeError(f"unknown device {value!r}; valid: cpu, cuda, cuda:N")


# -- the parser ---------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    # allow_abbrev=False everywhere: an option added later must not change what an old command means
    parser = argparse.ArgumentParser(prog="snrprune", description="Dynamic pruning during training, guided by per-weight gradient SNR.", allow_abbrev=False)
    parser.add_argument("--version", action="version", version=f"snrprune {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True, parser_class=functools.partial(argparse.ArgumentParser, allow_abbrev=False))

    t = commands.add_parser(
        "train",
        help="train a model: dense, or pruned by snr, snr-auto or dpf",
        description="Train a model while pruning it. Without options: LeNet-300-100 on MNIST with SNR pruning. "
        "Optimisation options left out come from the model family's recipe (see snrprune.training.RECIPES). "
        "Several processes: torchrun --nproc_per_node=N -m snrprune train ...; --batch-size is then the global "
        "batch of one optimizer step, split over the processes (and --accumulate micro-batches).",
    )
    what = t.add_argument_group("what to train")
    what.add_argument("--dataset", type=_dataset, help=f"{', '.join(dataset_names())}, or csv:PATH (default mnist)")
    what.add_argument("--target", metavar="COLUMN", help="label column of a csv:PATH data set (default: the last)")
    what.add_argument("--data-dir", metavar="DIR", help="folder with the data files (see snrprune.data)")
    what.add_argument("--model", choices=model_names(), metavar="MODEL", help=f"{', '.join(model_names())} (default lenet300)")
    what.add_argument("--model-option", dest="model_options", action="append", type=_model_option, metavar="KEY=VALUE", help="model option, repeatable (e.g. widths=128,128)")

    how = t.add_argument_group("pruning")
    how.add_argument("--method", choices=sorted(PRUNING_METHODS), help="default snr")
    how.add_argument("--target-sparsity", type=_float_in(0.0, 1.0), metavar="S", help="dpf: final sparsity in [0, 1) (required)")
    how.add_argument("--end-fraction", metavar="F", type=_float_in(0.0, 1.0, high_open=False, low_open=True), help="dpf: reach the target at this fraction of training (default 0.75)")
    how.add_argument("--combine", choices=COMBINE_MODES, help="snr: how SNR and magnitude masks combine (default agree)")
    how.add_argument("--scope", choices=SCOPES, help="per-layer or global masks (default: layer for snr, global for dpf and snr-auto); snr-auto layer: one density per layer")
    how.add_argument("--granularity", choices=GRANULARITIES, help="dpf, snr-auto: what a mask entry removes: a weight, or a unit (a neuron or channel with everything coupled to it; dpf's target is then a fraction of units) (default weight)")
    how.add_argument(
        "--unit-ranking",
        choices=UNIT_RANKINGS,
        help="dpf, snr-auto at --granularity unit, global scope: which units go first: the smallest RMS of their weights, or the smallest "
        f"relative to their layer's median unit (layers initialised at different scales then compete evenly) (default {DEFAULT_UNIT_RANKING})",
    )
    how.add_argument("--ema", metavar="BETA", type=_float_in(0.0, 1.0), help="snr: moving-average factor of the SNR (default 0.9)")
    how.add_argument("--threshold", metavar="T", type=_float_in(0.0, None), help="snr: SNR below which a weight may be pruned; snr-auto: a factor on the edges of the noise band of its window SNR (default 1)")
    how.add_argument("--burn-in-epochs", metavar="E", type=_float_in(0.0, None), help="snr: epochs before the first mask update (default 1)")
    how.add_argument("--window-epochs", metavar="E", type=_float_in(0.0, None, low_open=True), help="snr-auto: epochs of summed statistics behind each decision, read at each half too (default 1: one setting for small and large data sets)")
    how.add_argument("--auto-step", metavar="A", type=_float_in(0.0, 1.0, low_open=True), help="snr-auto: a decision at the full learning rate multiplies the density by 1 - A (default 0.5)")
    how.add_argument("--auto-lr-scale", action=argparse.BooleanOptionalAction, help="snr-auto: scale each move by the learning rate over the largest seen (default on)")
    how.add_argument("--auto-hysteresis", action=argparse.BooleanOptionalAction, help="snr-auto: drift in the window right after a prune holds the density instead of regrowing (default on)")
    how.add_argument("--auto-nested", action=argparse.BooleanOptionalAction, help="snr-auto: decide at each half of the window too, with the whole window as a second witness (default on, unless --auto-pooled)")
    how.add_argument("--auto-pooled", action=argparse.BooleanOptionalAction, help="snr-auto: pool each window's evidence with that of the windows since the evidence last fired, instead of nested windows and the pruned witness (default off; a negative result, measured in benchmarks/RESULTS.md)")
    how.add_argument("--auto-pruned-witness", action=argparse.BooleanOptionalAction, help="snr-auto: read the pruned weights' window SNR too: converged if either set is, regrow only if the pruned weights drift (default on at --granularity weight, unless --auto-pooled)")
    how.add_argument("--auto-step-growth", action=argparse.BooleanOptionalAction, help="snr-auto: a move the same way as the last doubles the step, up to --auto-step (default on)")
    how.add_argument("--auto-lr-power", metavar="P", type=_float_in(0.0, None, low_open=True), help="snr-auto: scale each move by (lr / lr_max) ** P (default 1 at --granularity weight, 2 at unit, where late moves cost whole units)")
    how.add_argument("--auto-band-sample", type=_positive_int, metavar="N", help="snr-auto: a network (or, with --scope layer, a layer) of more than N weights draws its noise band from about N of its kept weights, holding 8 bytes a weight instead of 68; N at least the prunable weights: the exact band (default 1048576)")
    how.add_argument("--stats-every", type=_positive_int, metavar="K", help="snr: collect gradient statistics every K steps (default 1)")
    how.add_argument("--update-every", type=_positive_int, metavar="K", help="recompute masks every K steps (default: 16 for dpf and snr-auto; snr: on every step with new statistics)")
    how.add_argument("--include-layers", action="append", metavar="PATTERN", help="prune only the weights whose parameter or module name matches this glob (also selects opt-in kinds: embeddings, tied weights), repeatable")
    how.add_argument("--exclude-layers", action="append", metavar="PATTERN", help="never prune the weights whose parameter or module name matches this glob, repeatable")

    opt = t.add_argument_group("optimisation (defaults: the model family's recipe)")
    opt.add_argument("--epochs", type=_positive_int, metavar="N")
    opt.add_argument("--batch-size", type=_positive_int, metavar="B")
    opt.add_argument("--optimizer", choices=OPTIMIZERS)
    opt.add_argument("--lr", metavar="LR", type=_float_in(0.0, None, low_open=True))
    opt.add_argument("--momentum", metavar="M", type=_float_in(0.0, 1.0), help="SGD momentum")
    opt.add_argument("--nesterov", action=argparse.BooleanOptionalAction, help="SGD Nesterov momentum")
    opt.add_argument("--weight-decay", metavar="WD", type=_float_in(0.0, None))
    opt.add_argument("--schedule", choices=SCHEDULES, help="learning-rate schedule, stepped every step")
    opt.add_argument("--seed", metavar="N", type=int, help="initialisation, data order, augmentation (default 0)")
    opt.add_argument("--data-seed", metavar="N", type=int, help="train/test split of data sets split here (default 0)")
    opt.add_argument("--device", type=_device, metavar="{cpu,cuda}", help="cpu or cuda (default cpu)")
    opt.add_argument("--accumulate", type=_positive_int, metavar="K", help="split each step's batch into K micro-batches, one backward each (default 1)")
    opt.add_argument("--amp", choices=["bf16", "fp16"], help="mixed precision: autocast to bf16, or fp16 with a GradScaler")

    run = t.add_argument_group("the run folder")
    run.add_argument("--out", metavar="DIR", type=_user_path, help="output folder (default runs/<dataset>-<model>-<method>-<time>)")
    run.add_argument("--overwrite", action="store_true", help="replace the run files in an existing --out")
    run.add_argument("--resume", metavar="DIR", type=_user_path, help="continue the interrupted run in DIR (no other options)")
    run.add_argument("--stop-after-epochs", type=_positive_int, metavar="N", help="stop after N epochs of this call (continue with --resume)")
    run.add_argument("--curve-every", type=_positive_int, metavar="K", help="log the sparsity curve every K steps (default ~100 points per epoch)")
    run.add_argument("--quiet", action="store_true", help="no progress bars")
    t.set_defaults(handler=_train_command, parser=t)

    e = commands.add_parser("export", help="write a finished run's pruned model in compressed or compact form")
    e.add_argument("run_dir", metavar="DIR", type=_user_path, help="a finished run folder (with model.pt)")
    e.add_argument(
        "--format", choices=["sparse", "compact"], default="sparse",
        help="sparse: bitmask of the nonzeros + their values (a smaller file); compact: the units nothing reads "
        "(neurons, channels) cut out, a smaller and faster dense network (needs snrprune[structured]; "
        "prints parameters, multiply-accumulates and CPU latency before and after)",
    )
    e.add_argument("--output", metavar="PATH", type=_user_path, help="where to write (default DIR/model_sparse.pt or DIR/model_compact.pt)")
    e.add_argument("--overwrite", action="store_true", help="replace an existing --output file (never a file of a run)")
    e.add_argument("--repeats", type=_positive_int, metavar="N", help="compact: timed passes per model and batch size (default 21)")
    e.add_argument("--threads", type=_positive_int, metavar="N", help="compact: CPU threads for the timing (default: torch's)")
    e.set_defaults(handler=_export_command, parser=e)

    b = commands.add_parser(
        "bench",
        help="run the experiment suite (resumable) or write its report",
        description="Run every unfinished run of a suite file (finished runs are skipped), or with --report "
        "write the report from the finished ones. Results go to benchmarks/results/<suite>/, run folders "
        "with checkpoints to runs/bench/<suite>/. Every run locks its run folder while it trains: a run that "
        "another process is training is skipped, so several benches may share one suite.",
    )
    b.add_argument("suite", nargs="?", default="benchmarks/suites/paper.py", metavar="SUITE", help="suite file (default benchmarks/suites/paper.py)")
    b.add_argument("--quick", action="store_true", help="the suite's quick tier (QUICK): a smoke test of the whole pipeline")
    b.add_argument("--report", action="store_true", help="write the report and plots from the finished runs; train nothing")
    b.add_argument("--resume", action="store_true", help="continue interrupted runs from their last epoch")
    b.add_argument("--list", action="store_true", help="list the runs and their state; train nothing")
    b.add_argument("--only", metavar="GLOB", help="only runs whose key (cell/method/seedN) matches, e.g. 'mnist-lenet300/*'; a pattern that matches no run is an error (exit 2) that lists the cells and methods")
    b.add_argument("--jobs", type=_positive_int, default=1, metavar="N", help="runs in parallel (default 1)")
    b.add_argument("--threads", type=_positive_int, default=None, metavar="T", help="torch threads per run (default: CPUs / jobs)")
    b.add_argument("--results", metavar="DIR", help="results folder (default benchmarks/results/<suite>)")
    b.add_argument("--work", metavar="DIR", help="run folders (default runs/bench/<suite>)")
    b.add_argument("--report-path", metavar="PATH", help="where the report goes (default: the suite's, or RESULTS.md in the results folder)")
    b.add_argument("--data-dir", metavar="DIR", help="folder with the CIFAR-10 python batches (cells without it are skipped)")
    b.set_defaults(handler=_bench_command, parser=b)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        with warnings.catch_warnings():
            warnings.showwarning = _show_warning
            status = args.handler(args, args.parser)
        sys.stdout.flush()  # here, so that a closed pipe is seen here and not at exit
        return status
    except BrokenPipeError:  # output piped into a reader that stopped (`snrprune bench --list | head`)
        _silence_stdout()
        return 141  # as a shell reports a command ended by SIGPIPE (128 + 13)


def _silence_stdout() -> None:
    """Points stdout at /dev/null so that Python's final flush at exit raises nothing (the
    standard recipe of the Python docs for SIGPIPE)."""
    try:
        fileno = sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):  # replaced by an object without a descriptor
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, fileno)
    os.close(devnull)


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    print(f"snrprune: warning: {message}", file=sys.stderr)


def _fail(message: str, status: int = 1) -> int:
    print(f"snrprune: error: {message}", file=sys.stderr)
    return status


# -- snrprune train -----------------------------------------------------------------------------


def _train_command(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    main_process = os.environ.get("RANK", "0") == "0"  # under torchrun only rank 0 prints
    given = {name: getattr(args, name) for name in _CONFIG_OPTIONS if getattr(args, name) is not None}
    if "model_options" in given:
        given["model_options"] = dict(given["model_options"])

    if args.resume is not None:
        if given or args.out is not None or args.overwrite:
            flags = sorted("--" + name.replace("_", "-") for name in given) + (["--out"] if args.out else []) + (["--overwrite"] if args.overwrite else [])
            parser.error(f"--resume continues a run with the configuration saved in it; drop {', '.join(flags)}")
        out = Path(args.resume)
        if not (out / CONFIG).is_file() and not (out / "checkpoint.pt").is_file():
            parser.error(f"--resume {out}: not a snrprune run folder (no {CONFIG} or checkpoint.pt)")
        config = None
    else:
        config = _config_from_args(given, parser)
        if args.out is None and int(os.environ.get("WORLD_SIZE", "1")) > 1:
            parser.error("with several processes pass --out DIR: the default folder name has the time of each process's start")
        out = Path(args.out) if args.out is not None else _default_out(config)
        try:
            if main_process:  # the others could already see rank 0's first files
                check_output_dir(out, args.overwrite)
        except TrainingError as exc:
            parser.error(str(exc))

    progress = not args.quiet
    if main_process:
        print(f"{'resuming' if args.resume else 'output'}: {out}", flush=True)
    try:
        summary = train(config, out, resume=args.resume is not None, overwrite=args.overwrite, progress=progress, stop_after_epochs=args.stop_after_epochs)
    except RunFinishedError as exc:
        print(exc)
        _print_table(out / SUMMARY)
        return 0
    except InputError as exc:  # e.g. a missing CSV file, a batch larger than the data
        return _fail(str(exc), status=2)
    except DatasetNotFoundError as exc:
        return _fail(str(exc))
    except (TrainingError, CheckpointError) as exc:
        return _fail(str(exc))
    except ValueError as exc:  # e.g. a model option the model rejects, a malformed CSV
        return _fail(str(exc), status=2)
    except KeyboardInterrupt:
        print(file=sys.stderr)
        return _fail(f"interrupted; continue from the last finished epoch with: snrprune train --resume {out}", status=130)

    if not main_process:
        return 0
    if not summary["finished"]:
        print(f"stopped after epoch {summary['epoch']} of {summary['epochs']}; continue with: snrprune train --resume {out}")
        return 0
    print()
    print(format_table(summary))
    print(f"\nresults in {out}/ (summary.json, metrics.jsonl, model.pt, sparsity.png, layers.png)")
    return 0


def _config_from_args(given: dict[str, Any], parser: argparse.ArgumentParser) -> TrainConfig:
    """The run's configuration; combinations that cannot work are reported with the flags' names."""
    method = given.get("method", TrainConfig.method)
    if method == "dpf" and "target_sparsity" not in given:
        parser.error("--method dpf needs --target-sparsity S (the final sparsity, e.g. 0.9)")
    for name, methods in METHOD_OPTIONS.items():  # the same rule as TrainConfig.validate, named by flag
        if name in given and method not in methods:
            flag = "--" + name.replace("_", "-")
            parser.error(f"{flag} only applies to --method {' or '.join(methods)} (this run uses --method {method})")
    if method == "snr" and given.get("batch_size") == 1:  # snr-auto's noise is the spread across steps
        parser.error(f"--batch-size 1 does not work with --method {method}: the gradient SNR needs the variance over at least 2 samples")
    if "target" in given and not given.get("dataset", "").lower().startswith("csv:"):
        parser.error("--target COLUMN only applies to --dataset csv:PATH")
    try:
        return TrainConfig(**given).resolved()
    except ValueError as exc:
        parser.error(str(exc))
        raise  # unreachable: parser.error exits


def _default_out(config: TrainConfig) -> Path:
    dataset = config.dataset
    if dataset.lower().startswith("csv:"):
        dataset = "csv-" + Path(dataset[4:]).stem
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", f"{dataset}-{config.model}-{config.method}-{time.strftime('%Y%m%d-%H%M%S')}")
    return Path("runs") / name


def _print_table(summary_path: Path) -> None:
    if summary_path.is_file():
        print()
        print(format_table(json.loads(summary_path.read_text())))


# -- snrprune export ----------------------------------------------------------------------------


def _export_command(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from .export import export_sparse

    run_dir = Path(args.run_dir)
    if not run_dir.is_dir():
        parser.error(f"{run_dir} is not a folder")
    if args.format == "compact":
        return _export_compact(args, run_dir)
    if args.repeats is not None or args.threads is not None:
        parser.error("--repeats and --threads time the compact model: use them with --format compact")
    try:
        info = export_sparse(run_dir, args.output, overwrite=args.overwrite)
    except InputError as exc:
        return _fail(str(exc), status=2)
    except (FileNotFoundError, ValueError, RuntimeError) as exc:
        return _fail(str(exc))
    print(f"wrote {info['path']} ({len(info['compressed_tensors'])} tensors as bitmask + values)")
    print(f"dense:      {info['dense_bytes']:>12,} bytes of tensor data  (model.pt file: {info['dense_file_bytes']:,} bytes)")
    print(f"compressed: {info['sparse_bytes']:>12,} bytes of tensor data  ({Path(info['path']).name} file: {info['sparse_file_bytes']:,} bytes)")
    print(f"ratio:      {info['ratio']:>12.2f}x")
    return 0


def _export_compact(args: argparse.Namespace, run_dir: Path) -> int:
    import statistics

    import torch

    from .export import export_run_compact

    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        info = export_run_compact(run_dir, args.output, overwrite=args.overwrite, repeats=args.repeats or 21)
    except (InputError, ImportError) as exc:  # UnsupportedModelError is an InputError
        return _fail(str(exc), status=2)
    except (FileNotFoundError, ValueError, RuntimeError) as exc:
        return _fail(str(exc))
    units = ", ".join(f"{name} {size}->{kept}" for name, (size, kept) in info["units"].items())
    print(f"wrote {info['path']}")
    print(f"units kept: {units or '(the model has no unit groups)'}")
    if info["units"] and all(size == kept for size, kept in info["units"].values()):
        print("no unit is entirely zero, so nothing was cut: train with --granularity unit to remove whole units")
    print(f"largest output difference to the masked model: {info['max_difference']:.3g} (outputs up to {info['output_scale']:.3g}) on {info['inputs']}")
    before, after = info["before"], info["after"]
    print(f"{'':24}{'masked':>14}{'compact':>14}{'ratio':>9}")
    for label, key in (("parameters", "parameters"), ("multiply-accumulates", "macs")):
        print(f"{label:24}{before[key]:>14,}{after[key]:>14,}{before[key] / max(after[key], 1):>8.2f}x")
    spreads = []
    for batch in before["latency"]:
        b, a = statistics.median(before["latency"][batch]), statistics.median(after["latency"][batch])
        print(f"{f'latency, batch {batch} (ms)':24}{b * 1e3:>14.3f}{a * 1e3:>14.3f}{b / a:>8.2f}x")
        spreads.append(f"batch {batch}: " + ", ".join(
            f"{name} {min(t) * 1e3:.3f}-{max(t) * 1e3:.3f}" for name, t in (("masked", before["latency"][batch]), ("compact", after["latency"][batch]))
        ))
    print(f"latency: CPU, {info['threads']} threads, median of {info['repeats']} interleaved passes; range (ms) {'; '.join(spreads)}")
    return 0


# -- snrprune bench -----------------------------------------------------------------------------


def _bench_command(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    """Bad input (the suite file, an option, a folder, a broken result file) exits 2 with one line."""
    from .bench import BenchError, default_layout, load_suite, plan, run_suite
    from .bench_report import write_report

    try:
        suite = load_suite(args.suite, quick=args.quick)
        layout = default_layout(suite, args.results, args.work)
        for flag, folder in (("--results", layout.results), ("--work", layout.work)):
            if folder.exists() and not folder.is_dir():
                raise BenchError(f"{flag} {folder} is a file, not a folder; give a folder (it is created if missing)")
        if args.list:
            for state, runs in plan(suite, layout, args.only, args.data_dir).items():
                for run in runs:
                    print(f"{state:12} {run.key}")
            return 0
        if args.report:
            return _bench_report(args, suite, layout, write_report)
        for flag, folder in (("--results", layout.results), ("--work", layout.work)):
            if (problem := writable_folder_problem(folder)) is not None:
                raise BenchError(f"cannot write the {flag[2:]} folder {folder}: {problem}; choose another {flag}")
        threads = args.threads or max(1, (os.cpu_count() or 1) // args.jobs)
        counts = run_suite(suite, layout, resume=args.resume, jobs=args.jobs, threads=threads, only=args.only, data_dir=args.data_dir)
    except BenchError as exc:
        return _fail(str(exc), status=2)
    except KeyboardInterrupt:
        print(file=sys.stderr)
        return _fail("interrupted; continue with the same command and --resume", status=130)
    elsewhere = f", {counts['running_elsewhere']} running in another process" if counts["running_elsewhere"] else ""
    print(
        f"[bench] {counts['ran']} run(s) finished now, {counts['finished_before']} before, {counts['failed']} failed, "
        f"{counts['skipped']} skipped{elsewhere}; write the report with: snrprune bench {args.suite}{' --quick' if args.quick else ''} --report"
    )
    return 1 if counts["failed"] else 0


def _bench_report(args: argparse.Namespace, suite: Any, layout: Any, write_report: Any) -> int:
    """``snrprune bench --report``: checks where the report and plots go, then writes them."""
    from .bench import BenchError

    if args.report_path:
        report = Path(args.report_path).expanduser()
        if report.is_dir():
            raise BenchError(f"--report-path {report} is a folder; give a file name (e.g. {report / 'RESULTS.md'})")
        if not report.parent.is_dir():
            what = "is a file" if report.parent.exists() else "does not exist"
            raise BenchError(f"--report-path {report}: its folder {report.parent} {what}; create the folder or choose another path")
        problem = writable_folder_problem(report.parent)
        if problem is None and report.exists() and not os.access(report, os.W_OK):
            problem = f"{report} is not writable"
        if problem is not None:
            raise BenchError(f"--report-path {report} cannot be written: {problem}; choose another path")
    elif suite.report and not args.results:
        report = Path(suite.report)
    else:
        report = layout.results / "RESULTS.md"
    if (problem := writable_folder_problem(layout.results / "plots")) is not None:
        raise BenchError(f"cannot write the plots into {layout.results / 'plots'}: {problem}; choose another --results")
    command = f"snrprune bench {args.suite}" + (" --quick" if args.quick else "")
    try:
        path = write_report(suite, layout, report, command, args.data_dir)
    except OSError as exc:
        return _fail(f"could not write the report {report} or its plots: {exc.strerror or exc}", status=1)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
