"""One training run, from a configuration to a folder of results.

:func:`train` reads top to bottom: load the data, build the model, the pruning method, the optimizer
and the learning-rate schedule, then run the epochs (train, evaluate the pruned and the dense weights,
log, checkpoint) and write the final files. Everything a run needs is in :class:`TrainConfig`;
unset optimisation fields come from the model family's :class:`Recipe`. What the run learns (how an
epoch's batches are drawn, what a prediction is, the evaluation and its headline metric) is the data
set's task, :mod:`snrprune.tasks`: classification, or next-character language modelling.

Files in the run folder:

- ``config.json``: the resolved configuration (rerun with ``TrainConfig.from_dict``)
- ``metrics.jsonl``: one line per epoch; ``curve.jsonl``: sparsity, loss and lr every few steps
- ``checkpoint.pt``: everything needed to continue, written atomically after every epoch
- ``model.pt`` (the pruned weights as a plain state_dict), ``summary.json``, ``sparsity.png``,
  ``layers.png`` when the run has finished.

A resumed run is bit-identical to an uninterrupted one on the same machine: the checkpoint holds the
model, optimizer, scheduler and pruning states and both random number generators (the data order and
augmentation generator, and torch's global one used by dropout).

Several processes (``torchrun --nproc_per_node=N -m snrprune train ...``): ``batch_size`` is the
global batch of one optimizer step. Every rank draws the same shuffled (and augmented) batch and
trains on its slice of batch_size / N samples under DistributedDataParallel; the gradient statistics
are summed over the ranks, so the run equals a one-process run up to float round-off (except for
BatchNorm, whose batch statistics are per process, and dropout, whose random masks then differ).
Only rank 0 prints and writes files. ``accumulate`` K splits each process's slice into K
micro-batches, one backward each, gradients synchronised on the last only. ``amp`` runs the forward
under ``torch.autocast`` (bf16, or fp16 with a GradScaler).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from . import reporting
from .checkpoint import WRITE_PROBE_PREFIX, CheckpointError, atomic_torch_save, load_checkpoint, save_checkpoint, writable_folder_problem
from .data import dataset_names, dataset_task, load_dataset
from .errors import InputError
from .masks import COMBINE_MODES, DEFAULT_UNIT_RANKING, GRANULARITIES, SCOPES, UNIT_RANKINGS
from .models import MODELS, build_model, model_names, model_task
from .pruners import PRUNING_METHODS, SNR_HISTOGRAM_EDGES, DPFPruning, NoPruning, Pruning, SNRAutoPruning, SNRPruning
from .pruners.snr_auto import BAND_SAMPLE, DEFAULT_WINDOW_EPOCHS, epoch_window_steps, resolve_rules
from .tasks import Task, evaluate, make_task

__all__ = [
    "Recipe",
    "RECIPES",
    "recipe_for",
    "TrainConfig",
    "train",
    "evaluate",
    "TrainingError",
    "OutputDirError",
    "RunFinishedError",
    "TrainingDiverged",
    "RUN_FILES",
]

OPTIMIZERS = ("sgd", "adam", "adamw")
#: The configuration fields that only mean something to some methods. One rule for all of them: set
#: to anything but their default on another method, they are refused (an option that silently does
#: nothing is worse than an error).
METHOD_OPTIONS: dict[str, tuple[str, ...]] = {
    "target_sparsity": ("dpf",),
    "end_fraction": ("dpf",),
    "scope": ("snr", "dpf", "snr-auto"),
    "granularity": ("dpf", "snr-auto"),
    "update_every": ("snr", "dpf", "snr-auto"),
    "combine": ("snr",),
    "ema": ("snr",),
    "burn_in_epochs": ("snr",),
    "stats_every": ("snr",),
    "threshold": ("snr", "snr-auto"),
    "window_epochs": ("snr-auto",),
    "auto_step": ("snr-auto",),
    "auto_lr_scale": ("snr-auto",),
    "auto_hysteresis": ("snr-auto",),
    "auto_nested": ("snr-auto",),
    "auto_pooled": ("snr-auto",),
    "auto_pruned_witness": ("snr-auto",),
    "auto_step_growth": ("snr-auto",),
    "auto_lr_power": ("snr-auto",),
    "auto_band_sample": ("snr-auto",),
    "unit_ranking": ("dpf", "snr-auto"),
}


def _before_recorded(values: dict[str, Any]) -> dict[str, Any]:
    """For a recorded configuration, the fields added after it was written, with what the run applied
    then: snr-auto's rules did not exist (off), units were ranked by RMS."""
    before: dict[str, Any] = {}
    if values.get("method") == "snr-auto":
        before.update(auto_nested=False, auto_pruned_witness=False, auto_step_growth=False, auto_lr_power=1.0)
    if values.get("method") in METHOD_OPTIONS["unit_ranking"] and values.get("granularity") == "unit":
        before["unit_ranking"] = "rms"
    return before


AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
SCHEDULES = ("cosine", "step", "constant")
#: The learning rate used when ``optimizer`` is switched away from the recipe's and ``lr`` is not given.
DEFAULT_LR = {"sgd": 0.1, "adam": 1e-3, "adamw": 1e-3}

CONFIG, METRICS, CURVE, CHECKPOINT = "config.json", "metrics.jsonl", "curve.jsonl", "checkpoint.pt"
SUMMARY, MODEL = "summary.json", "model.pt"
#: Every file a run (or an export of it) writes; ``overwrite=True`` removes exactly these.
RUN_FILES = (CONFIG, METRICS, CURVE, CHECKPOINT, SUMMARY, MODEL, "sparsity.png", "layers.png", "model_sparse.pt")


class TrainingError(RuntimeError):
    """A run cannot start or continue; the message says why and what to do."""


class OutputDirError(TrainingError):
    """The output folder holds another run (or is not a folder)."""


class RunFinishedError(TrainingError):
    """``resume`` was asked for a run that has already finished."""


class TrainingDiverged(TrainingError):
    """The training loss became NaN or infinite; the last good checkpoint is kept."""


class TrainingInputError(TrainingError, InputError):
    """The configuration does not fit the data (e.g. a batch larger than the training set)."""


# ------------------------------------------------------------------------------------------------
# Recipes: published defaults per model family
# ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Recipe:
    """Optimisation defaults of a model family. ``momentum`` and ``nesterov`` apply to SGD only."""

    optimizer: str
    lr: float
    momentum: float
    nesterov: bool
    weight_decay: float
    schedule: str
    epochs: int
    batch_size: int


RECIPES: dict[str, Recipe] = {
    # CIFAR ResNets (He et al. 2016), WRN (Zagoruyko & Komodakis 2016), VGG-BN: SGD 0.1, Nesterov,
    # wd 5e-4, batch 128, cosine over 200 epochs (DPF trains 300 with step decays; cosine is the
    # common modern equivalent).
    "cifar": Recipe("sgd", 0.1, 0.9, True, 5e-4, "cosine", 200, 128),
    # LeNet-300-100 / LeNet-5 on MNIST: SGD momentum 0.9, wd 1e-4, cosine; ~98% (LeNet-300-100) in a
    # few epochs. 12 epochs keeps the default run at a few minutes on two CPU cores.
    "lenet": Recipe("sgd", 0.05, 0.9, False, 1e-4, "cosine", 12, 128),
    # MNIST-1D's small CNN (Greydanus 2020): Adam 1e-2, batch 100, ~6000 steps (here 100 epochs x 40).
    "conv1d": Recipe("adam", 1e-2, 0.9, False, 0.0, "cosine", 100, 100),
    # Tabular MLPs: Adam 1e-3, the usual default for small fully connected nets.
    "mlp": Recipe("adam", 1e-3, 0.9, False, 0.0, "cosine", 30, 128),
    # Character-level GPT (nanoGPT's shakespeare_char): AdamW 1e-3, cosine; batch 32 windows of the
    # model's block_size. An epoch is one pass of the training characters in windows (see tasks).
    "gpt": Recipe("adamw", 1e-3, 0.9, False, 0.01, "cosine", 2, 32),
}

_FAMILY = {"lenet300": "lenet", "lenet5": "lenet", "conv1d": "conv1d", "mlp": "mlp", "gpt": "gpt"}


def recipe_for(model: str) -> Recipe:
    """The recipe of a model name: LeNets, the 1-D CNN, MLPs and GPT by name, every other model is a CIFAR net."""
    return RECIPES[_FAMILY.get(model, "cifar")]


# ------------------------------------------------------------------------------------------------
# The configuration of a run
# ------------------------------------------------------------------------------------------------


@dataclass
class TrainConfig:
    """Everything needed to rerun a run; ``None`` fields are filled by :meth:`resolved`.

    JSON round trip: ``TrainConfig.from_dict(json.loads(json.dumps(config.to_dict())))``.
    """

    dataset: str = "mnist"
    model: str = "lenet300"
    method: str = "snr"
    model_options: dict[str, Any] = field(default_factory=dict)
    data_dir: str | None = None
    target: str | None = None  # label column of a csv:PATH data set
    data_seed: int = 0  # the train/test split of data sets split here (digits, tabular)
    seed: int = 0  # initialisation, data order, augmentation, dropout
    device: str = "cpu"
    # optimisation; None: from the model family's recipe
    epochs: int | None = None
    batch_size: int | None = None
    optimizer: str | None = None
    lr: float | None = None
    momentum: float | None = None
    nesterov: bool | None = None
    weight_decay: float | None = None
    schedule: str | None = None
    # pruning
    target_sparsity: float | None = None  # dpf only, required
    scope: str | None = None  # None: "layer" for snr, "global" for dpf and snr-auto
    granularity: str = "weight"  # dpf, snr-auto: "unit" prunes whole neurons and channels (Pruning's docstring)
    unit_ranking: str | None = None  # dpf, snr-auto at unit granularity: "rms" or "relative" to the group's median (None: the default)
    update_every: int | None = None  # None: 16 for dpf and snr-auto; snr: 1, or when statistics arrive if stats_every > 1
    combine: str = "agree"  # snr
    ema: float = 0.9  # snr
    threshold: float = 1.0  # snr
    burn_in_epochs: float = 1.0  # snr
    stats_every: int = 1  # snr
    window_epochs: float = DEFAULT_WINDOW_EPOCHS  # snr-auto: the window of summed statistics behind each decision
    auto_step: float = 0.5  # snr-auto: a decision at the full learning rate multiplies the density by 1 - auto_step
    auto_lr_scale: bool = True  # snr-auto: moves scaled by the learning rate over the largest seen
    auto_hysteresis: bool = True  # snr-auto: drift right after a prune holds the density instead of regrowing
    auto_nested: bool | None = None  # snr-auto: a decision at each half of the window too, the whole window a second witness (None: on at weight granularity unless pooled)
    auto_pooled: bool = False  # snr-auto: each window's evidence pooled with the windows' since the evidence last fired
    auto_pruned_witness: bool | None = None  # snr-auto: the pruned weights' window SNR a second witness (None: on unless pooled)
    auto_step_growth: bool | None = None  # snr-auto: a move the same way as the last doubles the step back up to auto_step (None: on at weight granularity)
    auto_lr_power: float | None = None  # snr-auto: moves scaled by (lr / lr_max) ** this (None: 1 at weight granularity, 2 at unit)
    auto_band_sample: int | None = BAND_SAMPLE  # snr-auto: the noise band from about this many kept weights per controller (0 or None: all)
    # scale-out
    accumulate: int = 1  # micro-batches (backward calls) per optimizer step
    amp: str | None = None  # mixed precision: None, "bf16" or "fp16"
    world_size: int | None = None  # processes; None: set by train() from the launch (torchrun)
    end_fraction: float = 0.75  # dpf: the target is reached at this fraction of training
    include_layers: list[str] | None = None  # glob patterns of module names to prune (None: all)
    exclude_layers: list[str] = field(default_factory=list)
    # logging
    curve_every: int | None = None  # steps between sparsity-curve points; None: ~100 per epoch
    eval_batch_size: int = 1000

    def to_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps(dataclasses.asdict(self)))

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown configuration field(s): {', '.join(unknown)}")
        return cls(**values)

    @classmethod
    def from_record(cls, values: dict[str, Any]) -> TrainConfig:
        """A configuration a run recorded (``config.json``, a checkpoint's): a field added after the
        run was written takes the value that applied then, not today's default, so that a resume
        continues the same run (:func:`_before_recorded`)."""
        if isinstance(values, dict):
            values = {**{k: v for k, v in _before_recorded(values).items() if k not in values}, **values}
        return cls.from_dict(values)

    def resolved(self) -> TrainConfig:
        """A validated copy with every ``None`` default filled in (what ``config.json`` records)."""
        self._check_names()
        recipe = recipe_for(self.model)
        c = dataclasses.replace(self, model_options=json.loads(json.dumps(self.model_options)))
        switched = c.optimizer is not None and c.optimizer != recipe.optimizer
        c.optimizer = c.optimizer or recipe.optimizer
        if c.lr is None:
            c.lr = DEFAULT_LR.get(c.optimizer, recipe.lr) if switched else recipe.lr
        if c.epochs is None:
            c.epochs = recipe.epochs
        if c.batch_size is None:
            c.batch_size = recipe.batch_size
        if c.momentum is None:
            c.momentum = recipe.momentum
        if c.nesterov is None:
            c.nesterov = recipe.nesterov and c.optimizer == "sgd" and c.momentum > 0
        if c.weight_decay is None:
            c.weight_decay = recipe.weight_decay
        if c.schedule is None:
            c.schedule = recipe.schedule
        if c.method != "dense":
            c.scope = c.scope or {"snr": "layer", "dpf": "global", "snr-auto": "global"}.get(c.method, "layer")
            if c.update_every is None and not (c.method == "snr" and c.stats_every > 1):
                # snr with statistics every k > 1 steps keeps None: masks follow the new statistics
                c.update_every = {"snr": 1, "dpf": 16, "snr-auto": 16}.get(c.method, 1)
        if c.method in METHOD_OPTIONS["unit_ranking"] and c.granularity == "unit" and c.unit_ranking is None and c.scope == "global":
            c.unit_ranking = DEFAULT_UNIT_RANKING  # recorded, as the rules below are (in scope 'layer' the rankings agree)
        if c.method == "snr-auto":  # the rules a run applies, recorded: a resume keeps them whatever the defaults become
            c.auto_nested, c.auto_pruned_witness, c.auto_step_growth, c.auto_lr_power = resolve_rules(
                c.auto_pooled, c.auto_nested, c.auto_pruned_witness, c.auto_step_growth, c.granularity, c.scope, c.auto_lr_power
            )
        c.validate()
        return c

    def _check_names(self) -> None:
        key = self.dataset.strip().lower()
        if not (key.replace("_", "-") in dataset_names() or key.startswith("csv:")):
            raise ValueError(f"unknown dataset {self.dataset!r}; valid names: {', '.join(dataset_names())}, csv:PATH")
        if self.model not in MODELS:
            raise ValueError(f"unknown model {self.model!r}; valid names: {', '.join(model_names())}")
        if self.method not in PRUNING_METHODS:
            raise ValueError(f"unknown method {self.method!r}; valid names: {', '.join(sorted(PRUNING_METHODS))}")
        data_task, net_task = dataset_task(self.dataset), model_task(self.model)
        if data_task != net_task:
            fits = ", ".join(name for name in model_names() if model_task(name) == data_task)
            raise ValueError(f"model {self.model!r} is for {net_task} and data set {self.dataset!r} for {data_task}; use a model for {data_task}: {fits}")

    def validate(self) -> None:
        """Raises ValueError naming the first invalid field (call on a resolved config)."""
        self._check_names()
        _check(_is_int(self.epochs) and self.epochs >= 1, f"epochs must be a positive integer, got {self.epochs!r}")
        _check(_is_int(self.batch_size) and self.batch_size >= 1, f"batch_size must be a positive integer, got {self.batch_size!r}")
        _check(
            self.method != "snr" or self.batch_size >= 2,  # snr-auto's noise is the spread across steps
            "SNR pruning needs batch_size >= 2: one sample has no gradient variance, so its SNR is undefined",
        )
        _check(_is_int(self.eval_batch_size) and self.eval_batch_size >= 1, f"eval_batch_size must be a positive integer, got {self.eval_batch_size!r}")
        _check(self.optimizer in OPTIMIZERS, f"unknown optimizer {self.optimizer!r}; valid names: {', '.join(OPTIMIZERS)}")
        _check(self.schedule in SCHEDULES, f"unknown schedule {self.schedule!r}; valid names: {', '.join(SCHEDULES)}")
        _check(_is_number(self.lr) and self.lr > 0, f"lr must be a positive number, got {self.lr!r}")
        _check(_is_number(self.momentum) and 0 <= self.momentum < 1, f"momentum must be in [0, 1), got {self.momentum!r}")
        _check(_is_number(self.weight_decay) and self.weight_decay >= 0, f"weight_decay must be >= 0, got {self.weight_decay!r}")
        _check(
            not self.nesterov or (self.optimizer == "sgd" and self.momentum > 0),
            "nesterov needs optimizer 'sgd' with momentum > 0",
        )
        _check(_is_int(self.seed) and _is_int(self.data_seed), "seed and data_seed must be integers")
        _check(self.target is None or self.dataset.strip().lower().startswith("csv:"), "target (the label column) only applies to csv:PATH data sets")
        defaults = {f.name: f.default for f in dataclasses.fields(TrainConfig)}
        for name, methods in METHOD_OPTIONS.items():
            _check(
                self.method in methods or getattr(self, name) == defaults[name],
                f"{name} only applies to method{'s' if len(methods) > 1 else ''} {', '.join(map(repr, methods))} "
                f"(this run uses {self.method!r}, on which it would do nothing); remove it",
            )
        if self.method == "dpf":
            _check(self.target_sparsity is not None, "method 'dpf' needs a target sparsity (e.g. 0.9)")
        if self.target_sparsity is not None:
            _check(
                _is_number(self.target_sparsity) and 0 <= self.target_sparsity < 1,
                f"target_sparsity must be in [0, 1), got {self.target_sparsity!r}",
            )
        _check(self.granularity in GRANULARITIES, f"unknown granularity {self.granularity!r}; valid names: {', '.join(GRANULARITIES)}")
        _check(
            self.unit_ranking is None or self.unit_ranking in UNIT_RANKINGS,
            f"unknown unit ranking {self.unit_ranking!r}; valid names: {', '.join(UNIT_RANKINGS)}",
        )
        _check(
            self.unit_ranking is None or self.granularity == "unit",
            "--unit-ranking ranks whole units and applies at --granularity unit only; remove it, or add --granularity unit",
        )
        if self.method != "dense":
            _check(self.scope in SCOPES, f"unknown scope {self.scope!r}; valid names: {', '.join(SCOPES)}")
            _check(
                (self.update_every is None and self.method == "snr") or (_is_int(self.update_every) and self.update_every >= 1),
                f"update_every must be a positive integer, got {self.update_every!r}",
            )
        _check(self.combine in COMBINE_MODES, f"unknown combine mode {self.combine!r}; valid names: {', '.join(COMBINE_MODES)}")
        _check(_is_number(self.ema) and 0 <= self.ema < 1, f"ema must be in [0, 1), got {self.ema!r}")
        _check(_is_number(self.threshold) and self.threshold >= 0, f"threshold must be >= 0, got {self.threshold!r}")
        _check(_is_number(self.burn_in_epochs) and self.burn_in_epochs >= 0, f"burn_in_epochs must be >= 0, got {self.burn_in_epochs!r}")
        _check(_is_int(self.stats_every) and self.stats_every >= 1, f"stats_every must be a positive integer, got {self.stats_every!r}")
        _check(_is_number(self.window_epochs) and self.window_epochs > 0, f"window_epochs must be > 0, got {self.window_epochs!r}")
        _check(_is_number(self.auto_step) and 0 < self.auto_step < 1, f"auto_step must be in (0, 1), got {self.auto_step!r}")
        for flag in ("auto_lr_scale", "auto_hysteresis", "auto_nested", "auto_pooled", "auto_pruned_witness", "auto_step_growth"):
            value, optional = getattr(self, flag), flag in ("auto_nested", "auto_pruned_witness", "auto_step_growth")
            _check(isinstance(value, bool) or (optional and value is None), f"{flag} must be true or false{' (or null: the default rule)' if optional else ''}, got {value!r}")
        _check(
            self.auto_lr_power is None or (_is_number(self.auto_lr_power) and 0 < self.auto_lr_power < math.inf),
            f"auto_lr_power must be a positive number (or null: the default rule), got {self.auto_lr_power!r}",
        )
        rules = [f"--{flag.replace('_', '-')}" for flag in ("auto_pooled", "auto_nested", "auto_pruned_witness") if getattr(self, flag) is True]
        _check(
            self.auto_pooled is not True or len(rules) <= 1,
            f"{' and '.join(rules)} are different snr-auto decision rules: choose one (--auto-pooled replaces the default nested windows and pruned witness)",
        )
        _check(
            not (self.auto_pruned_witness is True and self.granularity == "unit" and self.scope == "layer"),
            "--auto-pruned-witness at --granularity unit reads the removed units' outgoing columns, which lie in the next layer, and with "
            "--scope layer a group's controller reads its own layer alone: use --scope global, or --no-auto-pruned-witness",
        )
        _check(
            self.auto_band_sample is None or (_is_int(self.auto_band_sample) and self.auto_band_sample >= 0),
            f"auto_band_sample must be a non-negative integer (0: every weight), got {self.auto_band_sample!r}",
        )
        _check(_is_number(self.end_fraction) and 0 < self.end_fraction <= 1, f"end_fraction must be in (0, 1], got {self.end_fraction!r}")
        _check(self.curve_every is None or (_is_int(self.curve_every) and self.curve_every >= 1), f"curve_every must be a positive integer, got {self.curve_every!r}")
        _check(_is_int(self.accumulate) and self.accumulate >= 1, f"accumulate must be a positive integer, got {self.accumulate!r}")
        _check(self.world_size is None or (_is_int(self.world_size) and self.world_size >= 1), f"world_size must be a positive integer, got {self.world_size!r}")
        _check(
            self.accumulate <= self.batch_size,
            f"accumulate {self.accumulate} is larger than batch_size {self.batch_size}: every micro-batch needs at least one sample; "
            f"use accumulate <= {self.batch_size}",
        )
        split = self.accumulate * (self.world_size or 1)
        _check(
            self.batch_size % split == 0,
            f"batch_size {self.batch_size} (the global batch of one optimizer step) must be divisible by "
            f"accumulate x processes = {self.accumulate} x {self.world_size or 1}; choose a multiple of {split}",
        )
        _check(self.amp is None or self.amp in AMP_DTYPES, f"unknown amp {self.amp!r}; valid values: {', '.join(AMP_DTYPES)}")
        _check_device(self.device)
        _check_amp(self.amp, self.device)


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ValueError(message)


def _check_device(device: str) -> None:
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"unknown device {device!r}; use 'cpu' or 'cuda'") from None
    if dev.type == "cpu":
        return
    if dev.type != "cuda":
        raise ValueError(f"unsupported device {device!r}; use 'cpu' or 'cuda'")
    if not torch.cuda.is_available():
        build = f"this torch {torch.__version__} is a CPU-only build" if torch.version.cuda is None else "no CUDA GPU is visible"
        raise ValueError(f"device {device!r} requested but CUDA is not available ({build}); use --device cpu")
    if dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ValueError(f"device {device!r} does not exist: {torch.cuda.device_count()} CUDA device(s) visible")


def _check_amp(amp: str | None, device: str) -> None:
    """Refuses a mixed-precision dtype that this torch's autocast does not support on the device."""
    if amp is None:
        return
    device_type = torch.device(device).type
    dtype = AMP_DTYPES[amp]
    with contextlib.suppress(RuntimeError), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # autocast warns and disables itself for an unsupported dtype
        with torch.autocast(device_type, dtype=dtype), torch.no_grad():
            if torch.mm(torch.ones(1, 1, device=device), torch.ones(1, 1, device=device)).dtype == dtype:
                return
    raise ValueError(f"amp {amp!r} is not supported on {device_type} by torch {torch.__version__}; use amp 'bf16' or train without amp")


# ------------------------------------------------------------------------------------------------
# Building blocks of the loop
# ------------------------------------------------------------------------------------------------


def make_pruning(config: TrainConfig, model: nn.Module, steps_per_epoch: int, example_inputs: Any = None) -> Pruning:
    """The pruning method of the config; SNR burn-in and the DPF schedule are measured in steps.

    ``example_inputs``: a batch of inputs on which unit granularity traces the model's units (needed then only).
    """
    layers = dict(include=config.include_layers, exclude=config.exclude_layers or None)
    if config.method in METHOD_OPTIONS["granularity"]:
        layers.update(granularity=config.granularity, example_inputs=example_inputs if config.granularity == "unit" else None)
        if config.granularity == "unit":
            layers.update(unit_ranking=config.unit_ranking)
    if config.method == "snr":
        return SNRPruning(
            model,
            burn_in_steps=round(config.burn_in_epochs * steps_per_epoch),
            ema=config.ema,
            threshold=config.threshold,
            combine=config.combine,
            scope=config.scope,
            update_every=config.update_every,
            stats_every=config.stats_every,
            **layers,
        )
    if config.method == "snr-auto":
        return SNRAutoPruning(
            model,
            window_steps=epoch_window_steps(steps_per_epoch, config.window_epochs),
            step=config.auto_step,
            threshold=config.threshold,
            update_every=config.update_every,
            scope=config.scope,
            lr_scaled=config.auto_lr_scale,
            hysteresis=config.auto_hysteresis,
            nested=config.auto_nested,
            pooled=config.auto_pooled,
            pruned_witness=config.auto_pruned_witness,
            step_growth=config.auto_step_growth,
            lr_power=config.auto_lr_power,
            band_sample=config.auto_band_sample,
            **layers,
        )
    if config.method == "dpf":
        return DPFPruning(
            model,
            target_sparsity=config.target_sparsity,
            total_steps=config.epochs * steps_per_epoch,
            end_fraction=config.end_fraction,
            update_every=config.update_every,
            scope=config.scope,
            **layers,
        )
    return NoPruning(model, **layers)


def first_inputs(task: Task, data: Any, x: Tensor, y: Tensor, batch_size: int) -> Tensor:
    """Two samples of a first training batch, as the model sees them (a language model: windows), drawn
    with a generator of their own so that the run's data order stays as it is."""
    inputs, _ = next(iter(task.batches(data, x, y, batch_size, torch.Generator().manual_seed(0))))
    return inputs[:2]


def warn_if_no_op(config: TrainConfig, pruning: Pruning, total_steps: int) -> None:
    """Warns, with the reason, for each setting that makes the method prune nothing in this run."""
    reasons = []
    if isinstance(pruning, SNRAutoPruning) and pruning.window_steps > total_steps:
        reasons.append(
            f"window_epochs {config.window_epochs:g} makes a window of {pruning.window_steps} steps, longer than the run's "
            f"{total_steps}: snr-auto never reaches a decision; use window_epochs <= epochs ({config.epochs})"
        )
    if isinstance(pruning, SNRPruning) and pruning.burn_in_steps >= total_steps:
        reasons.append(f"burn_in_epochs {config.burn_in_epochs:g} is as long as the run ({config.epochs} epochs): snr never prunes; use a shorter burn-in")
    if isinstance(pruning, SNRPruning) and config.threshold == 0:
        reasons.append("threshold 0 counts every gradient that is not exactly zero as reliable: snr prunes (almost) nothing; use threshold 1")
    if isinstance(pruning, DPFPruning) and config.target_sparsity == 0:
        reasons.append("target_sparsity 0: dpf prunes nothing (the dense baseline with more bookkeeping); use method 'dense' or a target > 0")
    for reason in reasons:
        warnings.warn(reason, stacklevel=2)


def make_optimizer(config: TrainConfig, model: nn.Module) -> torch.optim.Optimizer:
    params = model.parameters()
    if config.optimizer == "sgd":
        return torch.optim.SGD(params, lr=config.lr, momentum=config.momentum, nesterov=config.nesterov, weight_decay=config.weight_decay)
    if config.optimizer == "adam":
        return torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay)
    return torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)


def lr_factor(schedule: str, total_steps: int) -> Callable[[int], float]:
    """Multiplier of the base learning rate at a step; a closed form, so resuming cannot drift."""
    if schedule == "cosine":
        return lambda step: 0.5 * (1.0 + math.cos(math.pi * min(step, total_steps) / total_steps))
    if schedule == "step":  # /10 at 1/2 and at 3/4 of training (the 150/225-of-300 CIFAR schedule)
        return lambda step: 0.1 ** ((step >= total_steps // 2) + (step >= 3 * total_steps // 4))
    return lambda step: 1.0


def compute_loss(logits: Tensor, targets: Tensor) -> Tensor:
    """The training loss of every task: mean cross-entropy over the predictions (one row of logits
    and one label each, see :meth:`snrprune.tasks.Task.predictions`)."""
    return F.cross_entropy(logits, targets)


def rng_state(generator: torch.Generator, device: torch.device) -> dict[str, Tensor]:
    state = {"generator": generator.get_state(), "torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict[str, Tensor], generator: torch.Generator, device: torch.device) -> None:
    generator.set_state(state["generator"])
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def check_output_dir(out: Path, overwrite: bool) -> None:
    """Refuses a folder that already holds files, unless ``overwrite`` (then only run files go)."""
    if out.exists() and not out.is_dir():
        raise OutputDirError(f"{out} exists and is not a folder")
    if out.is_dir() and any(not p.name.startswith(WRITE_PROBE_PREFIX) for p in out.iterdir()) and not overwrite:
        raise OutputDirError(
            f"{out} exists and is not empty; choose another --out, continue the run in it with "
            f"--resume {out}, or pass --overwrite to replace its run files"
        )
    problem = writable_folder_problem(out)
    if problem is not None:
        raise OutputDirError(f"cannot write the run folder {out}: {problem}; choose another --out")


def clear_run_files(out: Path) -> None:
    for name in RUN_FILES:
        (out / name).unlink(missing_ok=True)
    remove_stale_temporaries(out)


def remove_stale_temporaries(out: Path) -> None:
    """Deletes the leftovers of atomic writes that were killed (``.checkpoint.pt.1a2b3c4d.tmp``, ...)."""
    for tmp in out.glob(".*.tmp"):
        tmp.unlink(missing_ok=True)


def _keep_records(path: Path, keep: Callable[[dict], bool]) -> None:
    """Drops log lines written after the checkpoint a run resumes from (they will be written again)."""
    records = [r for r in reporting.read_jsonl(path) if keep(r)]
    text = "".join(json.dumps(r) + "\n" for r in records)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    tmp.replace(path)


class EpochSparsity:
    """Mean, min and max of the mask sparsity over one epoch's steps, overall and per layer.

    SNR masks churn from step to step, so the sparsity at the end of an epoch is one sample of a
    band; these are the band's centre and edges (from the masks' counts, free every step).
    """

    def __init__(self) -> None:
        self.steps = 0
        self.sum: dict[str, float] = {}
        self.min: dict[str, float] = {}
        self.max: dict[str, float] = {}

    def add(self, overall: float, layers: dict[str, float]) -> None:
        self.steps += 1
        for key, value in (("", overall), *layers.items()):
            self.sum[key] = self.sum.get(key, 0.0) + value
            self.min[key] = min(self.min.get(key, value), value)
            self.max[key] = max(self.max.get(key, value), value)

    def _band(self, key: str) -> dict[str, float]:
        return {"mean": self.sum[key] / self.steps, "min": self.min[key], "max": self.max[key]}

    def overall(self) -> dict[str, float]:
        return self._band("")

    def layers(self) -> dict[str, dict[str, float]]:
        return {key: self._band(key) for key in self.sum if key}


def _start_distributed(device: torch.device, cleanup: contextlib.ExitStack) -> tuple[int, int, torch.device]:
    """(rank, world size, device) of this process; joins the torchrun launch if there is one.

    Uses an initialised default process group as it is; otherwise, with ``WORLD_SIZE`` > 1 in the
    environment (torchrun sets it), initialises one (gloo on CPU, nccl on CUDA) and lets
    ``cleanup`` destroy it. On CUDA every process takes the GPU ``LOCAL_RANK``.
    """
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size(), device
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1, device
    if not dist.is_available():
        raise TrainingError("WORLD_SIZE > 1 but this torch build has no torch.distributed; run one process")
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    cleanup.callback(dist.destroy_process_group)
    return dist.get_rank(), dist.get_world_size(), device


def _forward_backward(
    net: nn.Module, task: Task, x: Tensor, y: Tensor, accumulate: int, amp: str | None, scaler: torch.amp.GradScaler | None
) -> tuple[Tensor, Tensor]:
    """Forward and backward of this process's share of one step: (mean loss, number correct).

    ``accumulate`` equal micro-batches, each loss divided by their number, so that every sample's
    gradient has the same scale 1/batch as in one big batch (the SNR is exact for a common scale).
    Under DDP only the last backward synchronises the gradients.
    """
    losses, correct = [], []
    parts = list(zip(x.chunk(accumulate), y.chunk(accumulate))) if accumulate > 1 else [(x, y)]
    for k, (xk, yk) in enumerate(parts):
        sync = k == len(parts) - 1 or not isinstance(net, nn.parallel.DistributedDataParallel)
        with contextlib.nullcontext() if sync else net.no_sync():
            with torch.autocast(xk.device.type, dtype=AMP_DTYPES[amp]) if amp else contextlib.nullcontext():
                logits, yk = task.predictions(net(xk), yk)
                loss = compute_loss(logits, yk)
            if accumulate > 1:
                loss = loss / accumulate
            (loss if scaler is None else scaler.scale(loss)).backward()
        losses.append(loss.detach())
        correct.append((logits.argmax(1) == yk).sum())
    if len(parts) == 1:
        return losses[0], correct[0]
    return torch.stack(losses).sum(), torch.stack(correct).sum()


# ------------------------------------------------------------------------------------------------
# The run
# ------------------------------------------------------------------------------------------------


# -- the run-folder lock (issue 17) ------------------------------------------------------------
from .checkpoint import RunFolderLockedError, run_folder_lock  # noqa: E402


class RunFolderBusyError(TrainingError, RunFolderLockedError):
    """Another process is training the same run folder (it holds the folder's lock)."""


def train(
    config: TrainConfig | None,
    out_dir: str | Path,
    *,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    stop_after_epochs: int | None = None,
) -> dict[str, Any]:
    """Trains (or, with ``resume``, continues) a run in ``out_dir`` and returns its summary.

    ``config`` may be None with ``resume`` (it is read from the checkpoint). ``stop_after_epochs``
    ends this call after that many epochs with the checkpoint written, e.g. to split a long run
    into jobs; the returned dict then has ``finished`` False. Launched by torchrun (or with a
    process group initialised), every process calls it; see the module docstring.

    The process that writes the files holds ``out_dir``'s lock for the whole call (taken before
    anything in the folder is read or cleared, see :func:`snrprune.checkpoint.run_folder_lock`): a
    second process training the same folder, new run or resume, raises :class:`RunFolderBusyError`.
    """
    with contextlib.ExitStack() as cleanup:
        dist_on = torch.distributed.is_available() and torch.distributed.is_initialized()
        writer = torch.distributed.get_rank() == 0 if dist_on else int(os.environ.get("WORLD_SIZE", "1")) <= 1 or os.environ.get("RANK", "0") == "0"
        if writer:  # only rank 0 writes; the other ranks of one launch share its lock
            cleanup.enter_context(run_folder_lock(out_dir, create=not resume, error=RunFolderBusyError))
        # -- end of the run-folder lock ----------------------------------------------------------
        result = _train(config, out_dir, cleanup, resume=resume, overwrite=overwrite, progress=progress, stop_after_epochs=stop_after_epochs)
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.barrier()  # rank 0 has written its files when any rank returns
        return result


def _train(
    config: TrainConfig | None,
    out_dir: str | Path,
    cleanup: contextlib.ExitStack,
    *,
    resume: bool,
    overwrite: bool,
    progress: bool,
    stop_after_epochs: int | None,
) -> dict[str, Any]:
    out = Path(out_dir)

    # -- 1. the configuration: new, or the one the checkpoint was written with ------------------
    checkpoint = None
    if resume:
        checkpoint = _load_resume_checkpoint(out)
        try:
            saved = TrainConfig.from_record(checkpoint["config"])
        except (TypeError, ValueError) as exc:
            raise CheckpointError(f"{out / CHECKPOINT} holds an unusable configuration: {exc}") from exc
        _check_run_config(out, saved)
        given = config.resolved() if config is not None else None
        if given is not None and given.world_size is None:
            given.world_size = saved.world_size
        if given is not None and given != saved:
            raise TrainingError(f"--resume continues {out} with its own configuration; do not pass a different one")
        config = saved
        _check_device(config.device)
    else:
        if config is None:
            raise TypeError("train() needs a config unless resume=True")
        config = config.resolved()
        check_output_dir(out, overwrite)
    rank, world, device = _start_distributed(torch.device(config.device), cleanup)
    if resume and (config.world_size or 1) != world:
        raise TrainingError(
            f"{out} was trained by {config.world_size or 1} process(es) and this launch has {world}: resume it with "
            f"the same number (torchrun --nproc_per_node={config.world_size or 1} -m snrprune train --resume {out})"
        )
    if config.world_size is not None and config.world_size != world:
        raise TrainingError(f"the configuration is for world_size {config.world_size} but {world} process(es) run it; launch {config.world_size}")
    config = dataclasses.replace(config, world_size=world)
    config.validate()  # the batch must split evenly over the processes
    progress = progress and rank == 0
    writes = rank == 0  # only rank 0 writes files
    if world > 1:
        torch.distributed.barrier()  # every rank has looked at the folder before rank 0 writes into it

    # -- 2. data -------------------------------------------------------------------------------
    data = load_dataset(config.dataset, config.data_dir, seed=config.data_seed, target=config.target)
    x_train, y_train = data.x_train.to(device), data.y_train.to(device)
    x_test, y_test = data.x_test.to(device), data.y_test.to(device)
    has_val = data.x_val is not None
    x_val, y_val = (data.x_val.to(device), data.y_val.to(device)) if has_val else (None, None)

    # -- 3. model, task (batches, predictions, metrics), pruning, optimizer, schedule, and the ----
    # generator of data order/augmentation
    torch.manual_seed(config.seed)
    model = build_model(config.model, data.input_shape, data.num_classes, **config.model_options).to(device)
    task = make_task(dataset_task(config.dataset), model)
    steps_per_epoch = task.steps_per_epoch(data, config.batch_size)
    if steps_per_epoch == 0:
        raise TrainingInputError(task.too_small(data, config.batch_size))
    total_steps = config.epochs * steps_per_epoch
    curve_every = config.curve_every or max(1, steps_per_epoch // 100)
    example = first_inputs(task, data, x_train, y_train, config.batch_size) if config.granularity == "unit" else None
    pruning = make_pruning(config, model, steps_per_epoch, example)
    if checkpoint is None:
        warn_if_no_op(config, pruning, total_steps)
    optimizer = pruning.wrap(make_optimizer(config, model))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor(config.schedule, total_steps))
    scaler = torch.amp.GradScaler(device.type) if config.amp == "fp16" else None
    generator = torch.Generator().manual_seed(config.seed)
    counts = reporting.model_counts(model, pruning)

    # -- 4. start a new run folder, or restore the state of the last finished epoch -------------
    start_epoch, wall_seconds = 0, 0.0
    if checkpoint is not None:
        try:
            model.load_state_dict(checkpoint["model"])
            pruning.load_state_dict(checkpoint["pruning"])
            optimizer.load_state_dict(checkpoint["optimizer"])
            scheduler.load_state_dict(checkpoint["scheduler"])
            set_rng_state(checkpoint["rng"], generator, device)
            if scaler is not None:
                scaler.load_state_dict(checkpoint["scaler"])
        except (RuntimeError, ValueError, KeyError, TypeError) as exc:
            raise CheckpointError(f"{out / CHECKPOINT} does not fit this run's model or optimizer: {exc}") from exc
        start_epoch, wall_seconds = int(checkpoint["epoch"]), float(checkpoint["wall_seconds"])
        last_step = start_epoch * steps_per_epoch
        if writes:
            _keep_records(out / METRICS, lambda r: r.get("epoch", 0) <= start_epoch)
            _keep_records(out / CURVE, lambda r: r.get("step", 0) <= last_step)
    elif writes:
        out.mkdir(parents=True, exist_ok=True)
        clear_run_files(out)
        reporting.write_json(out / CONFIG, config.to_dict())
    net: nn.Module = model
    if world > 1:  # after loading: DDP's construction broadcasts rank 0's parameters
        net = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    share = config.batch_size // world  # this rank's slice of every global batch
    if progress:
        _print_header(config, task.describe(data), counts, steps_per_epoch, start_epoch)

    # -- 5. the epochs ---------------------------------------------------------------------------
    logged = reporting.read_jsonl(out / METRICS)
    metrics: dict[str, Any] = logged[-1] if start_epoch and logged else {}
    if start_epoch == config.epochs and not metrics:
        raise TrainingError(f"{out} has a final checkpoint but no {METRICS}; nothing to summarise")
    # the SNR distribution is recorded at the end of the epoch in which burn-in ends, and at the end
    burn_in_epoch = max(1, math.ceil(config.burn_in_epochs - 1e-9))
    for epoch in range(start_epoch, config.epochs):
        t0 = time.perf_counter()
        model.train()
        loss_sum = torch.zeros((), device=device)
        correct = torch.zeros((), dtype=torch.long, device=device)
        curve: list[dict[str, Any]] = []
        band = EpochSparsity()
        bar = tqdm(total=steps_per_epoch, desc=f"epoch {epoch + 1}/{config.epochs}", unit="step", disable=not progress, dynamic_ncols=True)
        batches = task.batches(data, x_train, y_train, config.batch_size, generator)
        with bar:
            for i, (x, y) in enumerate(batches):
                step = epoch * steps_per_epoch + i + 1
                lr = optimizer.param_groups[0]["lr"]
                optimizer.zero_grad(set_to_none=True)
                if world > 1:
                    x, y = x[rank * share : (rank + 1) * share], y[rank * share : (rank + 1) * share]
                loss, step_correct = _forward_backward(net, task, x, y, config.accumulate, config.amp, scaler)
                if world > 1:  # the global mean, so that every rank takes the same decision below
                    torch.distributed.all_reduce(loss)
                    loss /= world
                loss_value = loss.item()
                if not math.isfinite(loss_value):
                    raise TrainingDiverged(_diverged_message(out, loss_value, epoch, step, config))
                if scaler is None:
                    optimizer.step()  # the pruning hooks: update the dense weights, the masks, re-prune
                else:
                    scaler.step(optimizer)  # skipped (with the pruning hooks) on inf/NaN gradients
                    scaler.update()
                scheduler.step()
                loss_sum += loss
                correct += step_correct
                band.add(*pruning.mask_sparsity())
                if step % curve_every == 0 or i + 1 == steps_per_epoch:
                    sparsity = pruning.sparsity()
                    curve.append({"step": step, "sparsity": sparsity, "loss": loss_value, "lr": lr})
                    bar.set_postfix(loss=f"{loss_sum.item() / (i + 1):.4f}", acc=f"{correct.item() / ((i + 1) * y.numel()):.4f}", sparsity=f"{sparsity:.3f}", refresh=False)
                bar.update()

            if world > 1:
                torch.distributed.all_reduce(correct)
            # evaluate the pruned weights (the model) and, for reference, the dense weights
            test = dense = task.evaluate(model, x_test, y_test, config.eval_batch_size)
            if pruning.prunes:
                with pruning.dense_weights():
                    dense = task.evaluate(model, x_test, y_test, config.eval_batch_size)
            val = task.evaluate(model, x_val, y_val, config.eval_batch_size) if has_val else None
            seconds = time.perf_counter() - t0
            wall_seconds += seconds
            metrics = {
                "epoch": epoch + 1,
                "step": (epoch + 1) * steps_per_epoch,
                "lr": lr,
                "train_loss": loss_sum.item() / steps_per_epoch,
                "train_accuracy": correct.item() / (steps_per_epoch * config.batch_size * task.predictions_per_sample),
                **task.record(test, dense, val),
                "sparsity": pruning.sparsity(),
                "layer_sparsity": pruning.layer_sparsity(),
                "sparsity_steps": band.overall(),
                "layer_sparsity_steps": band.layers(),
                "regrown": pruning.regrown,
                "regrown_distinct": pruning.regrown_distinct(),
                "last_flips": dict(pruning.last_flips),
                "snr_quantiles": pruning.snr_quantiles(),
                "seconds": seconds,
                "wall_seconds": wall_seconds,
            }
            if diagnostics := pruning.diagnostics():
                metrics["diagnostics"] = diagnostics
            if epoch + 1 in (burn_in_epoch, config.epochs) and (histogram := pruning.snr_histogram()):
                metrics["snr_histogram"] = {"edges": SNR_HISTOGRAM_EDGES, "counts": histogram}
            bar.set_postfix(loss=f"{metrics['train_loss']:.4f}", acc=f"{metrics['train_accuracy']:.4f}", test=f"{test[task.metric]:.4f}", sparsity=f"{metrics['sparsity']:.3f}")

        # log first, then checkpoint: a crash in between is repaired on resume (lines are dropped)
        if writes:
            reporting.append_jsonl(out / CURVE, curve)
            reporting.append_jsonl(out / METRICS, [metrics])
            save_checkpoint(
                {
                    "config": config.to_dict(),
                    "epoch": epoch + 1,
                    "wall_seconds": wall_seconds,
                    "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "pruning": pruning.state_dict(),
                    "rng": rng_state(generator, device),
                    **({"scaler": scaler.state_dict()} if scaler is not None else {}),
                },
                out / CHECKPOINT,
            )
        if stop_after_epochs is not None and epoch + 1 - start_epoch >= stop_after_epochs and epoch + 1 < config.epochs:
            return {"finished": False, "epoch": epoch + 1, "epochs": config.epochs, "out_dir": str(out), **metrics}

    # -- 6. the finished run: pruned weights, summary, plots --------------------------------------
    if writes:  # every rank decided the same; one warning
        pruning.warn_if_idle()  # a method that ended dense says why (snr-auto: its last reading)
    pruning.zero_removed()  # unit granularity: removed units zero in their own entries too (the outputs stay)
    if writes:
        atomic_torch_save({k: v.detach().cpu().clone() for k, v in model.state_dict().items()}, out / MODEL)
    counts = reporting.model_counts(model, pruning)  # after training: the zeros are there now
    summary = {
        "finished": True,
        "out_dir": str(out),
        "dataset": config.dataset,
        "model": config.model,
        "method": config.method,
        "seed": config.seed,
        "epochs": config.epochs,
        "steps": total_steps,
        **{key: metrics.get(key) for key in task.summary_keys()},
        **task.summary(),
        "train_loss": metrics["train_loss"],
        "sparsity": pruning.sparsity(),
        "total_sparsity": counts["total_sparsity"],
        "layer_sparsity": pruning.layer_sparsity(),
        "sparsity_last_epoch": metrics.get("sparsity_steps"),
        "regrown": pruning.regrown,
        "regrown_distinct": pruning.regrown_distinct(),
        **pruning.unit_counts(),
        "snr_quantiles": pruning.snr_quantiles(),
        "params": counts["params"],
        "nonzero_params": counts["nonzero_params"],
        "prunable_params": counts["prunable_params"],
        "layer_params": counts["layer_params"],
        "layer_shapes": counts["layer_shapes"],
        "input_shape": list(data.input_shape),
        "num_classes": data.num_classes,
        "wall_seconds": wall_seconds,
        "device": str(device),
        "world_size": world,
        "torch_version": torch.__version__,
        "data_source": data.source,
    }
    if writes:
        reporting.write_json(out / SUMMARY, summary)
        reporting.plot_run(out)
    return summary


def _load_resume_checkpoint(out: Path) -> dict[str, Any]:
    if not out.is_dir():
        raise TrainingError(f"cannot resume: {out} is not a run folder")
    if not (out / CHECKPOINT).exists():
        raise TrainingError(
            f"cannot resume: {out} has no {CHECKPOINT} (the run did not finish its first epoch); "
            f"start it over without --resume: the same command as before with --overwrite (its options are in {out / CONFIG})"
        )
    checkpoint = load_checkpoint(out / CHECKPOINT)
    remove_stale_temporaries(out)  # no write of this run is in progress: a temporary file is a leftover
    epochs = checkpoint["config"].get("epochs") if isinstance(checkpoint["config"], dict) else None
    if checkpoint["epoch"] == epochs and (out / SUMMARY).is_file():
        raise RunFinishedError(f"the run in {out} has already finished ({epochs} epochs); its results are in {out / SUMMARY}")
    return checkpoint


def _check_run_config(out: Path, saved: TrainConfig) -> None:
    """Refuses a checkpoint that was not written by the run whose ``config.json`` is in the folder
    (a checkpoint copied in from another run would continue that run under this folder's name)."""
    path = out / CONFIG
    if not path.is_file():
        raise TrainingError(
            f"cannot resume: {out} has a {CHECKPOINT} but no {CONFIG}, so nothing says which run it belongs to; "
            f"restore {CONFIG} or start the run over in another folder"
        )
    try:
        recorded = TrainConfig.from_record(json.loads(path.read_text()))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, TypeError, ValueError, AttributeError) as exc:
        raise TrainingError(f"cannot resume: {path} is unreadable or not a run configuration ({exc}); restore it or start the run over") from exc
    if recorded != saved:
        differ = [
            f"{f.name}: {getattr(recorded, f.name)!r} in {CONFIG}, {getattr(saved, f.name)!r} in {CHECKPOINT}"
            for f in dataclasses.fields(TrainConfig)
            if getattr(recorded, f.name) != getattr(saved, f.name)
        ]
        raise TrainingError(
            f"cannot resume: {out / CHECKPOINT} was written by another run than the one in {path} ({'; '.join(differ)}); "
            f"put the run's own checkpoint back, or start the run over with --overwrite"
        )


def _diverged_message(out: Path, loss: float, epoch: int, step: int, config: TrainConfig) -> str:
    kept = (
        f"the last good checkpoint (end of epoch {epoch}) is kept in {out / CHECKPOINT}"
        if epoch > 0
        else "no checkpoint was written (it diverged in the first epoch)"
    )
    return (
        f"training diverged: the loss is {loss} at step {step} (epoch {epoch + 1}); {kept}. "
        f"Try a smaller learning rate than lr={config.lr:g}."
    )


def _print_header(config: TrainConfig, data: str, counts: dict[str, Any], steps_per_epoch: int, start_epoch: int) -> None:
    method = config.method
    if method == "dpf":
        method += f" (target sparsity {config.target_sparsity:g}, scope {config.scope})"
    elif method == "snr":
        method += f" (combine {config.combine}, scope {config.scope}, ema {config.ema:g}, burn-in {config.burn_in_epochs:g} epochs)"
    elif method == "snr-auto":
        off = [name for name, on in (("lr scaling", config.auto_lr_scale), ("hysteresis", config.auto_hysteresis)) if not on]
        method += (
            f" (scope {config.scope}, window {config.window_epochs:g} epochs{' in nested halves' if config.auto_nested else ''}, "
            f"step {config.auto_step:g}, threshold {config.threshold:g}"
            + (f", band from {config.auto_band_sample:,} sampled weights above that size" if config.auto_band_sample != BAND_SAMPLE and config.auto_band_sample else "")
            + (", exact band" if not config.auto_band_sample else "")
            + "".join(f", {name}" for name, on in (("pooled evidence", config.auto_pooled), ("pruned witness", config.auto_pruned_witness), ("step growth", config.auto_step_growth)) if on)
            + (f", moves scaled by (lr/lr_max)^{config.auto_lr_power:g}" if config.auto_lr_scale and config.auto_lr_power not in (None, 1) else "")
            + "".join(f", no {name}" for name in off)
            + "; no target)"
        )
    if config.granularity != "weight":
        method += f", {config.granularity} granularity" + {"rms": " (units ranked by RMS)", "relative": " (units ranked by RMS relative to their group's median)"}.get(config.unit_ranking or "", "")
    lines = [
        f"data:   {data}",
        f"model:  {config.model}: {counts['params']:,} parameters, {counts['prunable_params']:,} prunable in {len(counts['layer_params'])} tensors",
        f"method: {method}",
        f"optim:  {config.optimizer} lr {config.lr:g}, {config.schedule} schedule, weight decay {config.weight_decay:g}, "
        f"batch {config.batch_size}, {config.epochs} epochs x {steps_per_epoch} steps, {config.device}",
    ]
    if config.world_size != 1 or config.accumulate != 1 or config.amp:
        lines.append(
            f"scale:  {config.world_size} process(es) x {config.accumulate} micro-batch(es) of "
            f"{config.batch_size // (config.world_size * config.accumulate)} samples per step, amp {config.amp or 'off'}"
        )
    if start_epoch:
        lines.append(f"resuming after epoch {start_epoch}")
    tqdm.write("\n".join(lines))
