"""Dynamic pruning with feedback: the base class, SNR-guided pruning, DPF and the dense baseline.

All methods share one mechanism (DPF, Lin et al. 2020): the pruning object holds the dense weights
theta, the model holds the pruned weights theta_hat = m * theta between optimizer steps, so the forward
and backward run at theta_hat; right before the optimizer step theta is put back, so the update (with
the optimizer's momentum and weight decay) acts on the dense weights, and after it the model is
pruned again. A method only decides *which* entries to keep; it overrides a few steps:

- ``stats_due(step)``: collect gradient statistics on this step?
- ``observe(snr)``: take the step's per-weight SNR (after backward, before the update); a method
  that needs the raw sums S1, S2 and B instead overrides ``observe_stats(stats)``
- ``update_due(step)``: recompute the masks before this step?
- ``compute_masks()``: the new keep-masks

Under torch.distributed (initialised, more than one process) the gradient statistics are summed over
all processes before use, so every rank sees the SNR of the global batch and computes the same masks.

Usage in any training loop::

    pruning = SNRPruning(model, burn_in_steps=len(loader))
    optimizer = pruning.wrap(torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9))
    for x, y in loader:
        optimizer.zero_grad(); loss_fn(model(x), y).backward(); optimizer.step()
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from . import fused
from .layers import NameFilter, find_prunable_layers
from .masks import COMBINE_MODES, SCOPES, check_choice, combine, count, keep_largest, kth_smallest, magnitude_keep_masks
from .schedules import polynomial_sparsity
from .statistics import GradientStats, snr_from_moments

PRUNING_METHODS: dict[str, type[Pruning]] = {}

#: A weight whose gradient comes from a single sample of the batch has SNR exactly 1 (mean g/B,
#: variance g**2/B), right at the threshold; round-off would keep or prune it at random. SNR values
#: within this relative margin above the threshold count as "not above", as in exact arithmetic.
SNR_ROUNDOFF = 1e-4

#: Bin edges of :meth:`Pruning.snr_histogram`: log-spaced from 1e-3 to 1e3 (10 bins per decade), with
#: one more bin below (zeros included) and one above.
SNR_HISTOGRAM_EDGES = [10 ** (k / 10) for k in range(-30, 31)]


def register_method(name: str):
    """Class decorator that makes a pruning method available by name (CLI, configs)."""

    def decorate(cls: type[Pruning]) -> type[Pruning]:
        cls.method = name
        PRUNING_METHODS[name] = cls
        return cls

    return decorate


def get_method(name: str) -> type[Pruning]:
    if name not in PRUNING_METHODS:
        raise ValueError(f"unknown pruning method {name!r}; valid methods: {', '.join(sorted(PRUNING_METHODS))}")
    return PRUNING_METHODS[name]


def _distributed() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized() and torch.distributed.get_world_size() > 1


def _check_int(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return value


def _check_float(name: str, value: Any, low: float, high: float, high_open: bool = True) -> float:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and low <= value and (value < high if high_open else value <= high)
    if not ok:
        interval = f"[{low}, {high})" if high_open else f"[{low}, {high}]"
        raise ValueError(f"{name} must be a number in {interval}, got {value!r}")
    return float(value)


class Pruning:
    """Base class: dense-weight bookkeeping, optimizer hooks, masks, reporting and checkpoint state."""

    method: ClassVar[str] = "base"
    #: Whether the method ever prunes; the dense baseline skips all bookkeeping.
    prunes: ClassVar[bool] = True

    def __init__(self, model: nn.Module, *, scope: str = "layer", include: NameFilter = None, exclude: NameFilter = None):
        self.model = model
        self.scope = check_choice(scope, SCOPES, "scope")
        self.layers = find_prunable_layers(model, include, exclude)
        self.weights: dict[str, nn.Parameter] = {layer.name: layer.weight for layer in self.layers}
        if self.prunes:
            self.dense = {name: w.detach().clone() for name, w in self.weights.items()}
        else:
            self.dense = {name: w.detach() for name, w in self.weights.items()}
        # keep-masks as 0/1 in the weights' dtype: cheap to compute and to apply (see masks.py)
        self.keep: dict[str, Tensor] = {name: torch.ones_like(w.detach()) for name, w in self.weights.items()}
        self.kept: dict[str, int] = {name: w.numel() for name, w in self.weights.items()}  # ones per keep-mask
        self.total = sum(self.kept.values())  # prunable entries
        # 1 where a weight was pruned and later kept again, at least once: distinct regrown weights
        self.ever_regrown: dict[str, Tensor] = {name: torch.zeros_like(k) for name, k in self.keep.items()} if self.prunes else {}
        self.step_count = 0
        self.regrown = 0
        self.last_flips = {"pruned": 0, "regrown": 0}
        self.stats: GradientStats | None = None
        self._snr_buffers: dict[str, Tensor] = {}
        self._hooks: list = []

    # -- the steps a method overrides ----------------------------------------------------------
    def stats_due(self, step: int) -> bool:
        return False

    def observe(self, snr: dict[str, Tensor]) -> None:
        """Takes this step's SNR; the tensors are overwritten next time: copy what you keep."""

    def observe_stats(self, stats: GradientStats) -> None:
        """Takes this step's statistics (after any all-reduce); by default their SNR goes to ``observe``."""
        self._snr_buffers = stats.snr(out=self._snr_buffers)  # reused every step
        self.observe(self._snr_buffers)

    def update_due(self, step: int) -> bool:
        return False

    def compute_masks(self) -> dict[str, Tensor]:
        """New keep-masks, bool or 0/1 floats, by parameter name."""
        return self.keep

    # -- the optimizer integration ---------------------------------------------------------------
    def wrap(self, optimizer: torch.optim.Optimizer) -> torch.optim.Optimizer:
        """Hooks this pruning into ``optimizer.step()`` and returns the same optimizer.

        The optimizer object is untouched otherwise, so LR schedulers, ``state_dict()`` and
        ``zero_grad()`` work as usual.
        """
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise TypeError(f"wrap() expects a torch.optim.Optimizer, got {type(optimizer).__name__}")
        held = {id(p) for group in optimizer.param_groups for p in group["params"]}
        missing = [name for name, w in self.weights.items() if id(w) not in held]
        if missing:
            raise ValueError(
                f"the optimizer does not update the prunable weights {missing}: "
                "build the optimizer from model.parameters() of the pruned model"
            )
        self.unwrap()
        self._hooks = [
            optimizer.register_step_pre_hook(self._step_pre_hook),
            optimizer.register_step_post_hook(lambda opt, args, kwargs: self.after_step()),
        ]
        return optimizer

    def _step_pre_hook(self, optimizer: torch.optim.Optimizer, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
        """Runs :meth:`before_step`; with ``optimizer.step(closure)`` (PyTorch Lightning) only once
        the closure's backward is done, since the closure computes the gradients inside the step."""
        closure = kwargs.get("closure", args[1] if len(args) > 1 else None)  # args[0] is the optimizer
        if closure is None:
            self.before_step()
            return None

        def closure_then_before_step() -> Any:
            result = closure()
            self.before_step()
            return result

        if "closure" in kwargs:
            return args, {**kwargs, "closure": closure_then_before_step}
        return (args[0], closure_then_before_step, *args[2:]), kwargs

    def unwrap(self) -> None:
        for handle in self._hooks:
            handle.remove()
        self._hooks = []

    @torch.no_grad()
    def before_step(self) -> None:
        """After backward, before the update: read the statistics, put the dense weights back."""
        if not self.prunes:
            return
        if self.stats is not None and self.stats.enabled:
            if _distributed():  # every rank must see the global batch, or the masks drift apart
                self.stats.all_reduce()
            if self.stats.count:
                self.observe_stats(self.stats)
            self.stats.reset()
        for name, w in self.weights.items():
            if self.kept[name] < w.numel():  # a layer with nothing pruned holds theta already
                w.copy_(self.dense[name])

    @torch.no_grad()
    def after_step(self) -> None:
        """After the update: keep the new dense weights, maybe update the masks, prune the model."""
        if not self.prunes:
            self.step_count += 1
            return
        for name, w in self.weights.items():
            self.dense[name].copy_(w)
        self.step_count += 1
        if self.update_due(self.step_count):
            self.update_masks()
        else:
            for name, w in self.weights.items():
                if self.kept[name] < w.numel():  # theta_hat = theta where nothing is pruned
                    torch.mul(self.dense[name], self.keep[name], out=w.data)
        if self.stats is not None:
            self.stats.enabled = self.stats_due(self.step_count)

    def update_masks(self) -> None:
        """New masks from :meth:`compute_masks`, then theta_hat written (a fused path may do both at once)."""
        self._set_masks(self.compute_masks())
        self.apply_masks()

    def _record_flips(self, changed: int, net: int) -> None:
        """Counts one mask update's flips from (pruned + regrown) and (regrown - pruned)."""
        regrown = (changed + net) // 2
        self.last_flips = {"pruned": changed - regrown, "regrown": regrown}
        self.regrown += regrown

    def _set_masks(self, masks: dict[str, Tensor]) -> None:
        changed = net = 0
        for name, new in masks.items():
            new = new.to(self.keep[name].dtype)
            kept = count(new)
            net += kept - self.kept[name]  # regrown - pruned
            diff = new.sub(self.keep[name])  # +1 regrown, -1 pruned
            torch.maximum(self.ever_regrown[name], diff, out=self.ever_regrown[name])
            changed += count(diff.abs_())  # regrown + pruned
            self.keep[name] = new
            self.kept[name] = kept
        self._record_flips(changed, net)

    @property
    def masks(self) -> dict[str, Tensor]:
        """Bool keep-masks by parameter name (True = keep)."""
        return {name: keep.bool() for name, keep in self.keep.items()}

    @torch.no_grad()
    def apply_masks(self) -> None:
        """Writes theta_hat = mask * theta into the model."""
        for name, w in self.weights.items():
            torch.mul(self.dense[name], self.keep[name], out=w.data)

    @contextlib.contextmanager
    def dense_weights(self) -> Iterator[None]:
        """Temporarily puts the dense weights theta into the model (e.g. to evaluate them)."""
        with torch.no_grad():
            for name, w in self.weights.items():
                w.copy_(self.dense[name])
        try:
            yield
        finally:
            self.apply_masks()

    # -- reporting -------------------------------------------------------------------------------
    def mask_sparsity(self) -> tuple[float, dict[str, float]]:
        """(overall, per layer) fraction of pruned mask entries, from counts kept up to date: free every step.

        Equals :meth:`sparsity` unless a kept dense weight is itself exactly zero.
        """
        layers = {name: 1.0 - kept / self.weights[name].numel() for name, kept in self.kept.items()}
        return (1.0 - sum(self.kept.values()) / self.total if self.total else 0.0), layers

    def regrown_distinct(self) -> int:
        """How many distinct weights were pruned and later kept again, at least once."""
        return sum(count(t) for t in self.ever_regrown.values())

    def layer_sparsity(self) -> dict[str, float]:
        """Fraction of exact zeros of theta_hat per prunable tensor."""
        return {name: float((w == 0).sum()) / w.numel() for name, w in self.weights.items()}

    def sparsity(self) -> float:
        """Fraction of exact zeros of theta_hat over all prunable entries."""
        zeros = sum(int((w == 0).sum()) for w in self.weights.values())
        return zeros / sum(w.numel() for w in self.weights.values())

    def snr_quantiles(self, quantiles: tuple[float, ...] = (0.1, 0.5, 0.9)) -> dict[str, dict[str, float]]:
        """Per-layer quantiles of the SNR moving average (empty for methods that do not track it)."""
        return {}

    def diagnostics(self) -> dict[str, Any]:
        """Method-specific state worth logging every epoch (empty by default)."""
        return {}

    def snr_histogram(self) -> dict[str, list[int]]:
        """Per-layer counts of the SNR moving average in the bins of :data:`SNR_HISTOGRAM_EDGES` (empty if untracked)."""
        return {}

    # -- checkpointing ---------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue bit-exactly; loads with ``torch.load(weights_only=True)``."""
        return {
            "method": self.method,
            "step": self.step_count,
            "dense": {name: t.clone() for name, t in self.dense.items()},
            "masks": self.masks,
            "regrown": self.regrown,
            "ever_regrown": {name: t.bool() for name, t in self.ever_regrown.items()},
            "last_flips": dict(self.last_flips),
            "stats_enabled": self.stats is not None and self.stats.enabled,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if not isinstance(state, dict) or "method" not in state:
            raise ValueError("not a snrprune pruning state (no 'method' entry)")
        if state["method"] != self.method:
            raise ValueError(f"the state is from method {state['method']!r}, this object is {self.method!r}")
        for key in ("dense", "masks"):
            names = set(state[key])
            if names != set(self.weights):
                raise ValueError(f"the state's {key} cover {sorted(names)}, this model's prunable weights are {sorted(self.weights)}")
            for name, t in state[key].items():
                if t.shape != self.weights[name].shape:
                    raise ValueError(f"{key}[{name!r}] has shape {tuple(t.shape)}, the model's is {tuple(self.weights[name].shape)}")
        self.step_count = int(state["step"])
        self.regrown = int(state["regrown"])
        self.last_flips = dict(state["last_flips"])
        with torch.no_grad():
            for name, w in self.weights.items():
                if self.prunes:
                    self.dense[name].copy_(state["dense"][name])
                else:
                    w.copy_(state["dense"][name])
                self.keep[name] = state["masks"][name].to(device=w.device, dtype=w.dtype).clone()
                self.kept[name] = count(self.keep[name])
                if self.prunes:
                    ever = state.get("ever_regrown", {}).get(name)  # absent in states of older versions
                    self.ever_regrown[name] = torch.zeros_like(self.keep[name]) if ever is None else ever.to(self.keep[name]).clone()
        if self.prunes:
            self.apply_masks()
        if self.stats is not None:
            self.stats.reset()
            self.stats.enabled = bool(state["stats_enabled"])

    def __repr__(self) -> str:
        return f"{type(self).__name__}(layers={len(self.layers)}, step={self.step_count}, sparsity={self.sparsity():.4f})"


@register_method("dense")
class NoPruning(Pruning):
    """The dense baseline through the same interface: never prunes; a step only counts itself."""

    prunes = False

    def __init__(self, model: nn.Module, *, include: NameFilter = None, exclude: NameFilter = None):
        super().__init__(model, include=include, exclude=exclude)


@register_method("dpf")
class DPFPruning(Pruning):
    """DPF: global magnitude masks at a cubic (Zhu & Gupta) sparsity schedule, every ``update_every`` steps.

    The target is reached at ``end_fraction * total_steps`` (an update is forced on that step) and
    held afterwards, exact to one weight.
    """

    def __init__(
        self,
        model: nn.Module,
        target_sparsity: float,
        total_steps: int,
        end_fraction: float = 0.75,
        update_every: int = 16,
        scope: str = "global",
        *,
        initial_sparsity: float = 0.0,
        include: NameFilter = None,
        exclude: NameFilter = None,
    ):
        super().__init__(model, scope=scope, include=include, exclude=exclude)
        self.target_sparsity = _check_float("target_sparsity", target_sparsity, 0.0, 1.0)
        self.initial_sparsity = _check_float("initial_sparsity", initial_sparsity, 0.0, self.target_sparsity, high_open=False)
        self.total_steps = _check_int("total_steps", total_steps, 1)
        self.end_fraction = _check_float("end_fraction", end_fraction, 0.0, 1.0, high_open=False)
        self.update_every = _check_int("update_every", update_every, 1)
        self.end_step = max(1, round(self.end_fraction * self.total_steps))

    def scheduled_sparsity(self, step: int) -> float:
        return polynomial_sparsity(step, self.target_sparsity, self.end_step, self.initial_sparsity)

    def update_due(self, step: int) -> bool:
        return step % self.update_every == 0 or step == self.end_step

    def compute_masks(self) -> dict[str, Tensor]:
        s = self.scheduled_sparsity(self.step_count)
        if self.scope == "global":
            n_prune: int | dict[str, int] = round(s * sum(w.numel() for w in self.dense.values()))
        else:
            n_prune = {name: round(s * w.numel()) for name, w in self.dense.items()}
        return magnitude_keep_masks(self.dense, n_prune, self.scope)


@register_method("snr")
class SNRPruning(Pruning):
    """SNR-guided dynamic pruning (SPEC section 3): prune only weights whose gradient is no longer reliable.

    After ``burn_in_steps``: keep_snr = (SNR moving average > threshold); p = fraction with keep_snr
    false (per layer or global, ``scope``); keep_mag = all but the p*N smallest |theta|; the mask
    combines both (``combine``: agree, either, snr, magnitude). Statistics are collected every
    ``stats_every`` steps, and the moving average is only updated then. The masks are recomputed on
    every step on which new statistics arrived (``update_every=None``, the default: with
    ``stats_every=1`` that is every step, as in SPEC), or every ``update_every`` steps when given (the
    magnitude part then follows the weights between statistics). Under torch.distributed the
    statistics are summed over ``process_group`` (None: the default group). On float32 CPU weights the
    per-step arithmetic runs in fused kernels (:mod:`snrprune.fused`) with the same results.
    """

    def __init__(
        self,
        model: nn.Module,
        burn_in_steps: int,
        ema: float = 0.9,
        threshold: float = 1.0,
        combine: str = "agree",
        scope: str = "layer",
        update_every: int | None = None,
        stats_every: int = 1,
        *,
        include: NameFilter = None,
        exclude: NameFilter = None,
        process_group: Any = None,
    ):
        super().__init__(model, scope=scope, include=include, exclude=exclude)
        self.burn_in_steps = _check_int("burn_in_steps", burn_in_steps, 0)
        self.ema = _check_float("ema", ema, 0.0, 1.0)
        self.threshold = _check_float("threshold", threshold, 0.0, math.inf)
        self.combine = check_choice(combine, COMBINE_MODES, "combine mode")
        self.update_every = None if update_every is None else _check_int("update_every", update_every, 1)
        self.stats_every = _check_int("stats_every", stats_every, 1)
        self.snr_ema: dict[str, Tensor] = {}
        self.fresh = False  # statistics arrived since the last mask update
        self._not_above: dict[str, int] = {}  # per layer: averages <= the cut, counted by the fused kernel
        self._not_above_step = -1  # ... for the mask update of this step
        self._buffers: dict[str, Tensor] = {}  # per layer: |theta| for the selection, reused
        self.stats = GradientStats(model, include=include, exclude=exclude, enabled=self.stats_due(0), process_group=process_group)

    @property
    def cut(self) -> float:
        """keep_snr is ``average > cut``: the threshold with the round-off margin (:data:`SNR_ROUNDOFF`)."""
        return self.threshold * (1.0 + SNR_ROUNDOFF)

    def stats_due(self, step: int) -> bool:
        return step % self.stats_every == 0

    def observe_stats(self, stats: GradientStats) -> None:
        self.fresh = True
        moments = stats.moments()
        if not all(fused.usable(m.sum, m.sum_sq) for m in moments.values()):
            super().observe_stats(stats)
            return
        kernels = fused.kernels()
        self._not_above_step = self.step_count + 1  # valid for this step's mask update only
        for name, m in moments.items():  # SNR and moving average in one pass per layer
            avg = self.snr_ema.get(name)
            first = avg is None
            if first:
                avg = self.snr_ema[name] = torch.empty_like(m.sum)
            self._not_above[name] = kernels.snr_average(m.sum, m.sum_sq, avg, m.count, 1.0 - self.ema, first, self.cut)

    def observe(self, snr: dict[str, Tensor]) -> None:
        for name, value in snr.items():
            avg = self.snr_ema.get(name)
            if avg is None:
                self.snr_ema[name] = value.clone()
            else:
                avg.lerp_(value, 1.0 - self.ema)

    def update_due(self, step: int) -> bool:
        if step <= self.burn_in_steps:
            return False
        return self.fresh if self.update_every is None else step % self.update_every == 0

    def update_masks(self) -> None:
        self.fresh = False
        if not self._update_masks_fused():
            super().update_masks()

    def _update_masks_fused(self) -> bool:
        """keep-masks, regrowth record and theta_hat in one kernel pass per layer; False if not applicable."""
        if self.scope != "layer" or len(self.snr_ema) < len(self.weights):
            return False
        if not all(fused.usable(self.dense[n], self.keep[n], self.ever_regrown[n], self.snr_ema[n], w.data) for n, w in self.weights.items()):
            return False
        kernels = fused.kernels()
        mode = COMBINE_MODES.index(self.combine)  # agree, either, snr, magnitude: the kernel's order
        changed = net = 0
        for name, w in self.weights.items():
            dense, n = self.dense[name], self.dense[name].numel()
            n_prune = self._not_above.get(name) if self._not_above_step == self.step_count else None
            if n_prune is None:  # the average is older than this step: count it again (<= cut)
                n_prune = sum(kernels.count_around(self.snr_ema[name], self.cut, False))
            thr, ties = -1.0, 0  # magnitude keeps everything
            if self.combine != "snr" and n_prune >= n:
                thr, ties = math.inf, -1  # magnitude keeps nothing
            elif self.combine != "snr" and n_prune > 0:
                magnitude = torch.abs(dense, out=self._scratch(name)).view(-1)
                thr = float(kth_smallest(magnitude, n_prune, scratch=True))  # reorders the scratch buffer
                less, equal = kernels.count_around(dense, thr, True)
                ties = n_prune - less  # of the entries equal to thr, the first `ties` are pruned
                ties = -1 if ties == equal else ties  # -1: all of them
            kept, flips = kernels.apply_mask(self.snr_ema[name], dense, self.keep[name], self.ever_regrown[name], w.data, self.cut, thr, ties, mode)
            net += kept - self.kept[name]
            changed += flips
            self.kept[name] = kept
        self._record_flips(changed, net)
        return True

    def _scratch(self, name: str) -> Tensor:
        buffer = self._buffers.get(name)
        if buffer is None:
            buffer = self._buffers[name] = torch.empty_like(self.dense[name])
        return buffer

    def compute_masks(self) -> dict[str, Tensor]:
        if len(self.snr_ema) < len(self.weights):
            return self.keep  # no statistics for some layer yet: nothing is known to be unreliable
        cut = self.cut
        keep_snr = {name: torch.gt(avg, cut, out=torch.empty_like(self.dense[name])) for name, avg in self.snr_ema.items()}
        if self.combine == "snr":
            return keep_snr
        n_prune = {name: k.numel() - count(k) for name, k in keep_snr.items()}
        keep_mag = magnitude_keep_masks(self.dense, n_prune, self.scope)
        return {name: combine(keep_snr[name], keep_mag[name], self.combine) for name in self.weights}

    def snr_quantiles(self, quantiles: tuple[float, ...] = (0.1, 0.5, 0.9)) -> dict[str, dict[str, float]]:
        out = {}
        for name in self.weights:  # model order
            if name not in self.snr_ema:
                continue
            flat = self.snr_ema[name].reshape(-1).float()
            if flat.numel() > (1 << 24):  # torch.quantile's size limit: use an even subsample
                flat = flat[:: flat.numel() // (1 << 23) + 1]
            values = torch.quantile(flat, torch.tensor(quantiles, dtype=flat.dtype, device=flat.device))
            out[name] = {f"q{round(q * 100):02d}": float(v) for q, v in zip(quantiles, values)}
        return out

    def snr_histogram(self) -> dict[str, list[int]]:
        edges = None
        out = {}
        for name in self.weights:  # model order
            if name not in self.snr_ema:
                continue
            flat = self.snr_ema[name].reshape(-1)
            if edges is None or edges.device != flat.device:
                edges = torch.tensor(SNR_HISTOGRAM_EDGES, dtype=flat.dtype, device=flat.device)
            bins = torch.bucketize(flat, edges, right=True)  # 0: below the first edge
            out[name] = torch.bincount(bins, minlength=len(SNR_HISTOGRAM_EDGES) + 1).tolist()
        return out

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        state["snr_ema"] = {name: t.clone() for name, t in self.snr_ema.items()}
        state["fresh"] = self.fresh
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.snr_ema = {name: t.to(self.dense[name].device).clone() for name, t in state.get("snr_ema", {}).items()}
        self.fresh = bool(state.get("fresh", False))
        self._not_above, self._not_above_step = {}, -1


@register_method("snr-auto")
class SNRAutoPruning(Pruning):
    """Schedule-free pruning: each layer is pruned further while its *kept* weights have converged.

    The paper's per-weight test cannot say how much to prune: late in training nearly every weight's
    mini-batch SNR sits at the noise level, pruned or not (``shared/research/snr-statistics.md``).
    This method moves the test to the layer and to a window of many steps (``window_steps``, one
    epoch in ``snrprune train``): per weight it sums S1, S2 and the sample count N, so that
    ``z = N * mean**2 / var`` is the SNR of the gradient averaged over the window. Under SGD the
    summed gradient is the weight's displacement over the window divided by the learning rate, so z
    reads how the weight moved: z ~ 1 for a random walk (gradient noise only), z < 1 for a weight held
    at a minimum (its gradients cancel), z > 1 for a weight that drifts (still learning). At the end of
    a window, per layer, the mean z of the kept weights is compared with the noise band
    1 +- 2 * sqrt(2 / n) (the mean of n chi2(1) variables, two standard errors, scaled by ``threshold``):

    - below the band: the layer's weights have converged, the layer can give up weights: its density
      is multiplied by ``1 - step``;
    - above the band: the kept weights drift, the layer is still adapting (or compensating for what
      was pruned): its density is divided by ``1 - step`` (pruned weights of largest magnitude return);
    - inside the band: no evidence either way, the layer is left as it is.

    A layer's step halves every time its direction reverses, so it settles at the boundary instead
    of oscillating. Masks keep the largest dense magnitudes of each layer at its density, recomputed
    every ``update_every`` steps; pruned weights keep training through the DPF feedback. A layer
    never drops below one weight per output unit, and a window in which its kept weights received
    no gradient leaves it as it is, so no layer can collapse. No target sparsity, no schedule.

    ``scope="global"``: one controller for the whole network (key :data:`GLOBAL` of ``density``,
    ``step``, ``direction``), fed by the mean window SNR of all kept weights, and masks that keep the
    largest magnitudes over all layers, as DPF's global scope does, so that the layers share the
    density by magnitude; every layer still keeps at least one weight per output unit.
    """

    #: The key of the network-wide controller in ``density``, ``step`` and ``direction`` (global scope).
    GLOBAL = "*"

    def __init__(
        self,
        model: nn.Module,
        window_steps: int,
        step: float = 0.5,
        threshold: float = 1.0,
        update_every: int = 16,
        scope: str = "layer",
        *,
        include: NameFilter = None,
        exclude: NameFilter = None,
        process_group: Any = None,
    ):
        super().__init__(model, scope=scope, include=include, exclude=exclude)
        self.window_steps = _check_int("window_steps", window_steps, 1)
        self.initial_step = _check_float("step", step, 0.0, 1.0)
        self.threshold = _check_float("threshold", threshold, 0.0, math.inf)
        self.update_every = _check_int("update_every", update_every, 1)
        # the controllers: one per layer, or one for the network
        self.units: dict[str, list[str]] = (
            {name: [name] for name in self.weights} if self.scope == "layer" else {self.GLOBAL: list(self.weights)}
        )
        self.density = {unit: 1.0 for unit in self.units}
        self.step = {unit: self.initial_step for unit in self.units}
        self.direction = {unit: 0 for unit in self.units}  # the last move: -1 pruned, +1 regrown, 0 none yet
        # the guard against collapse: at least one weight per output unit (rows of the weight)
        self.min_kept = {name: w.shape[0] for name, w in self.weights.items()}
        self.min_density = {
            unit: sum(self.min_kept[n] for n in names) / sum(self.weights[n].numel() for n in names) for unit, names in self.units.items()
        }
        self.window: dict[str, list[Tensor]] = {}  # name -> [S1, S2] summed over the window
        self.window_count = 0
        self.window_snr: dict[str, float] = {}  # the last decision's mean window SNR of the kept weights
        self.stats = GradientStats(model, include=include, exclude=exclude, process_group=process_group)

    def stats_due(self, step: int) -> bool:
        return True

    def observe_stats(self, stats: GradientStats) -> None:
        moments = stats.moments()
        for name, m in moments.items():
            acc = self.window.get(name)
            if acc is None:
                self.window[name] = [m.sum.clone(), m.sum_sq.clone()]
            else:
                acc[0].add_(m.sum)
                acc[1].add_(m.sum_sq)
        self.window_count += max(m.count for m in moments.values())

    def window_due(self, step: int) -> bool:
        return step % self.window_steps == 0

    def update_due(self, step: int) -> bool:
        return self.window_due(step) or step % self.update_every == 0

    def evidence(self, unit: str) -> int:
        """-1: the unit's kept weights converged; +1: they drift; 0: noise or no gradient (hold)."""
        means: list[tuple[float, int]] = []  # (mean z, count) of the kept weights per layer
        for name in self.units[unit]:
            s1, s2 = self.window[name]
            z = snr_from_moments(s1, s2, self.window_count)
            informed = (s2 > 0) & (self.keep[name] > 0)  # kept weights that received any gradient
            count_layer = int(informed.sum())
            if count_layer:
                self.window_snr[name] = float(z[informed].mean())
                means.append((self.window_snr[name], count_layer))
        n = sum(c for _, c in means)
        if n == 0:
            return 0  # a dead layer must not be pruned further
        # one layer: its own mean as computed (a weighted mean of one could round differently)
        mean_z = means[0][0] if len(means) == 1 else sum(m * c for m, c in means) / n
        self.window_snr[unit] = mean_z
        margin = 2.0 * math.sqrt(2.0 / n)  # two standard errors of the mean of n chi2(1) variables
        if mean_z < self.threshold * (1.0 - margin):
            return -1
        if mean_z > self.threshold * (1.0 + margin):
            return 1
        return 0

    def decide(self) -> None:
        """End of a window: each unit's density (a layer's, or the network's) moves by the evidence of its kept weights."""
        if self.window_count >= 2 and len(self.window) == len(self.weights):
            for unit in self.units:
                move = self.evidence(unit)
                if move == 0:
                    continue
                if move == -self.direction[unit]:
                    self.step[unit] /= 2  # reversed: settle at the boundary
                factor = 1.0 - self.step[unit]
                density = self.density[unit] * factor if move < 0 else self.density[unit] / factor
                density = min(1.0, max(self.min_density[unit], density))
                if density != self.density[unit]:  # a move against a bound (dense, the floor) is no direction
                    self.density[unit] = density
                    self.direction[unit] = move
        self.window = {}
        self.window_count = 0

    def compute_masks(self) -> dict[str, Tensor]:
        if self.window_due(self.step_count):
            self.decide()
        if self.scope == "layer":
            n_prune = {name: w.numel() - max(1, round(self.density[name] * w.numel())) for name, w in self.dense.items()}
            return magnitude_keep_masks(self.dense, n_prune, "layer")
        total = sum(w.numel() for w in self.dense.values())
        masks = magnitude_keep_masks(self.dense, total - max(1, round(self.density[self.GLOBAL] * total)), "global")
        for name, w in self.dense.items():  # the guard: a layer the global ranking empties keeps its floor
            if count(masks[name]) < self.min_kept[name]:
                floor = keep_largest(w.abs(), w.numel() - self.min_kept[name])
                masks[name] = torch.maximum(masks[name], floor)
        return masks

    def diagnostics(self) -> dict[str, Any]:
        return {"density": dict(self.density), "window_snr": dict(self.window_snr), "step": dict(self.step)}

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        state.update(
            density=dict(self.density),
            auto_step=dict(self.step),
            direction=dict(self.direction),
            window={name: [t.clone() for t in pair] for name, pair in self.window.items()},
            window_count=self.window_count,
            window_snr=dict(self.window_snr),
        )
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if set(state.get("density", {})) != set(self.units):
            raise ValueError(
                f"the state's controllers are {sorted(state.get('density', {}))}, this object's are {sorted(self.units)}: "
                "load it into an SNRAutoPruning of the same scope"
            )
        super().load_state_dict(state)
        self.density = {unit: float(state["density"][unit]) for unit in self.units}
        self.step = {unit: float(state["auto_step"][unit]) for unit in self.units}
        self.direction = {unit: int(state["direction"][unit]) for unit in self.units}
        self.window = {name: [t.to(self.dense[name]).clone() for t in pair] for name, pair in state["window"].items()}
        self.window_count = int(state["window_count"])
        self.window_snr = dict(state.get("window_snr", {}))
