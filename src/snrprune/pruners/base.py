"""The base class every method subclasses (DPF's dense/pruned bookkeeping and the optimizer hooks), the registry of method names, and the dense baseline."""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Iterator
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from .. import fused
from ..layers import NameFilter, find_prunable_layers
from ..masks import DEFAULT_UNIT_RANKING, GRANULARITIES, SCOPES, UNIT_RANKINGS, check_choice, count
from ..statistics import GradientStats

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
    """Base class: dense-weight bookkeeping, optimizer hooks, masks, reporting and checkpoint state.

    ``granularity`` is what one mask entry decides. ``"weight"``: single entries of the prunable
    weights. ``"unit"``: whole units, the coupled sets of :func:`snrprune.units.find_unit_groups`
    (an output neuron or channel with its bias, its norm's affine entries and the matching inputs of
    every consumer), traced on ``example_inputs``. A method then returns one 0/1 keep-vector per
    group (:attr:`groups`, by group name) and this class expands it to the parameters' masks:
    :attr:`masks` (``keep``) remove a unit in every slice, and they are what ``kept``, the sparsity and
    the checkpoint count. The model holds them at the consumers only (:attr:`forward_keep`): a removed
    unit still computes, its consumers' input columns are zero, so the network computes what the
    compact export of it computes, and the gradient its consumer columns receive is the one they would
    get with the unit back in. The statistics read that gradient (``snr-auto``'s pruned witness); it is
    then zeroed before the update, with every other gradient of a removed unit's entries: a removed
    unit is not trained (feeding it back let many removed units, each trained on the same residual,
    return together and collapse LeNet-300-100: ``benchmarks/prototypes/unit-feedback.md``). The unit's
    parameters that are not prunable weights (biases, norm parameters, the columns of an excluded
    consumer) keep dense copies too (:attr:`coupled`), so a unit that comes back returns with all its
    values. :meth:`zero_removed` writes zeros into a removed unit's own entries as well (for a model
    to save). Only groups rooted at a pruned layer count: ``exclude`` keeps a layer's units. The
    output layer's outputs are never units.
    """

    method: ClassVar[str] = "base"
    #: Whether the method ever prunes; the dense baseline skips all bookkeeping.
    prunes: ClassVar[bool] = True
    #: The granularities the method's rule is defined for.
    granularities: ClassVar[tuple[str, ...]] = GRANULARITIES

    def __init__(
        self,
        model: nn.Module,
        *,
        scope: str = "layer",
        include: NameFilter = None,
        exclude: NameFilter = None,
        granularity: str = "weight",
        example_inputs: Any = None,
        unit_ranking: str | None = None,
    ):
        self.model = model
        self.granularity = self._check_granularity(granularity, example_inputs)
        self.scope = check_choice(scope, SCOPES, "scope")
        self.unit_ranking = self._check_unit_ranking(unit_ranking)
        self.layers = find_prunable_layers(model, include, exclude)
        self.weights: dict[str, nn.Parameter] = {layer.name: layer.weight for layer in self.layers}
        if self.prunes:
            self.dense = {name: w.detach().clone() for name, w in self.weights.items()}
        else:
            self.dense = {name: w.detach() for name, w in self.weights.items()}
        # keep-masks as bool, one byte per weight (``benchmarks/memory.py``), applied every step by
        # :func:`_mask_into`; a method that never prunes holds a broadcast one instead (no memory: dense
        # training adds nothing per weight)
        self.keep: dict[str, Tensor] = {
            name: torch.ones(w.shape, dtype=torch.bool, device=w.device) if self.prunes else torch.ones((), dtype=torch.bool, device=w.device).expand_as(w)
            for name, w in self.weights.items()
        }
        self.kept: dict[str, int] = {name: w.numel() for name, w in self.weights.items()}  # ones per keep-mask
        self.total = sum(self.kept.values())  # prunable entries
        # True where a weight was pruned and later kept again, at least once: distinct regrown weights
        self.ever_regrown: dict[str, Tensor] = {name: torch.zeros_like(k) for name, k in self.keep.items()} if self.prunes else {}
        # unit granularity: the masks the model holds (consumer slices only); weight granularity: ``keep`` itself
        self.forward_keep: dict[str, Tensor] = self.keep
        self.step_count = 0
        self.regrown = 0
        self.last_flips = {"pruned": 0, "regrown": 0}
        self.stats: GradientStats | None = None
        self._snr_buffers: dict[str, Tensor] = {}
        self._hooks: list = []
        self.optimizer: torch.optim.Optimizer | None = None  # the wrapped one
        self._lr_groups: list[int] = []  # the positions of its param groups that hold prunable weights
        # unit granularity: the groups, a keep-vector per group, and the parameters units take with them
        self.groups: list[Any] = []  # snrprune.units.UnitGroup, rooted at a pruned layer
        self.unit_keep: dict[str, Tensor] = {}
        self.unit_total = 0
        self.coupled: dict[str, nn.Parameter] = {}
        self.coupled_dense: dict[str, Tensor] = {}
        self.coupled_keep: dict[str, Tensor] = {}
        if self.granularity == "unit":
            self._find_units(example_inputs)

    def _check_granularity(self, granularity: str, example_inputs: Any) -> str:
        check_choice(granularity, GRANULARITIES, "granularity")
        if granularity not in self.granularities:
            able = ", ".join(sorted(name for name, cls in PRUNING_METHODS.items() if granularity in cls.granularities))
            raise ValueError(
                f"method {self.method!r} ({type(self).__name__}) prunes at granularity {' or '.join(map(repr, self.granularities))} only, "
                f"not {granularity!r} (its docstring says why); methods with granularity {granularity!r}: {able}"
            )
        if granularity == "unit" and example_inputs is None:
            raise ValueError(
                "granularity 'unit' needs example_inputs=: a batch of the model's inputs (e.g. the first batch's x), "
                "on which the coupled units are traced"
            )
        if granularity == "weight" and example_inputs is not None:
            raise ValueError("example_inputs is used only with granularity='unit' (to trace the units); remove it, or pass granularity='unit'")
        return granularity

    def _check_unit_ranking(self, unit_ranking: str | None) -> str | None:
        """The ranking of units (unit granularity; ``None`` there: :data:`~snrprune.masks.DEFAULT_UNIT_RANKING`)."""
        if self.granularity != "unit":
            if unit_ranking is not None:
                raise ValueError(f"unit_ranking ranks whole units and applies at granularity 'unit' only, not {self.granularity!r}; remove it, or pass granularity='unit'")
            return None
        ranking = check_choice(DEFAULT_UNIT_RANKING if unit_ranking is None else unit_ranking, UNIT_RANKINGS, "unit_ranking")
        if unit_ranking == "relative" and self.scope == "layer":
            warnings.warn(
                "unit_ranking='relative' changes nothing in scope 'layer': each group ranks its own units, and dividing them "
                "all by their group's median keeps their order; it compares groups in scope 'global' only",
                stacklevel=4,
            )
        return ranking

    def _find_units(self, example_inputs: Any) -> None:
        """The groups rooted at a pruned layer, their keep-vectors, and the coupled parameters."""
        from ..units import find_unit_groups  # torch_pruning is loaded only for unit granularity

        self.groups = [group for group in find_unit_groups(self.model, example_inputs) if group.name in self.weights]
        if not self.groups:
            raise ValueError(
                f"granularity 'unit': none of the pruned weights {sorted(self.weights)} has units that can be removed "
                "(an output layer's outputs never are); prune more layers, or use granularity 'weight'"
            )
        touched = {piece.param for group in self.groups for piece in group.slices}
        if untouched := [name for name in self.weights if name not in touched]:
            warnings.warn(
                f"granularity 'unit': no unit reaches the pruned weight(s) {untouched}, so they stay dense; "
                "exclude them, or prune at granularity 'weight'",
                stacklevel=3,
            )
        self.unit_keep = {group.name: torch.ones(group.size, dtype=self.keep[group.name].dtype, device=self.keep[group.name].device) for group in self.groups}
        self.unit_total = sum(group.size for group in self.groups)
        self.coupled = {name: p for name, p in self.model.named_parameters() if name in touched and name not in self.weights}
        self.coupled_dense = {name: p.detach().clone() for name, p in self.coupled.items()}
        self.coupled_keep = {name: torch.ones_like(p.detach()) for name, p in self.coupled.items()}  # consumer slices only
        self.coupled_whole = dict(self.coupled_keep)  # whole units: what a removed unit owns of each
        self.forward_keep = dict(self.keep)

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
        if self._hooks and optimizer is not self.optimizer:
            raise ValueError(
                f"this {type(self).__name__} already wraps another optimizer ({type(self.optimizer).__name__}); "
                "one pruning object prunes through one optimizer: call unwrap() first, or build a single "
                "optimizer with one param group per part of the model"
            )
        held = {id(p) for group in optimizer.param_groups for p in group["params"]}
        missing = [name for name, w in self.weights.items() if id(w) not in held]
        if missing:
            raise ValueError(
                f"the optimizer does not update the prunable weights {missing}: "
                "build the optimizer from model.parameters() of the pruned model"
            )
        self.unwrap()
        self.optimizer = optimizer
        # by position: optimizer.load_state_dict() replaces the group dicts but keeps their order
        prunable = {id(w) for w in self.weights.values()}
        self._lr_groups = [i for i, g in enumerate(optimizer.param_groups) if any(id(p) in prunable for p in g["params"])]
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
        """Removes the hooks: the optimizer steps unpruned again (and another one may be wrapped)."""
        for handle in self._hooks:
            handle.remove()
        self._hooks = []
        self.optimizer = None

    def lr(self) -> float | None:
        """The wrapped optimizer's learning rate now: the largest over the groups that hold prunable
        weights (None before ``wrap``). Read from ``optimizer.param_groups`` every time, since
        ``optimizer.load_state_dict()`` replaces the group dicts and schedulers write into them."""
        if self.optimizer is None:
            return None
        return max((float(self.optimizer.param_groups[i]["lr"]) for i in self._lr_groups), default=None)

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
        if self.granularity == "unit":  # read by the statistics above, never applied: removed units are not trained
            self._zero_removed_gradients()
        for name, w in self.weights.items():
            if self.kept[name] < w.numel():  # a layer with nothing pruned holds theta already
                w.copy_(self.dense[name])
        for name, p in self.coupled.items():
            p.copy_(self.coupled_dense[name])

    @torch.no_grad()
    def after_step(self) -> None:
        """After the update: keep the new dense weights, maybe update the masks, prune the model."""
        if not self.prunes:
            self.step_count += 1
            return
        for name, w in self.weights.items():
            self.dense[name].copy_(w)
        for name, p in self.coupled.items():
            self.coupled_dense[name].copy_(p)
        self.step_count += 1
        if self.update_due(self.step_count):
            self.update_masks()
        else:
            for name, w in self.weights.items():
                if self.kept[name] < w.numel():  # theta_hat = theta where nothing is pruned
                    _mask_into(self.dense[name], self.forward_keep[name], w.data)
            self._apply_coupled_masks()
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
        if self.granularity == "unit":
            masks, forward = self._expand_units(masks)
            for name in self.coupled:
                self.coupled_whole[name] = masks.pop(name).to(self.coupled_keep[name].dtype)
                self.coupled_keep[name] = forward[name].to(self.coupled_keep[name].dtype)
            self.forward_keep = {name: forward[name] > 0 if name in forward else self.keep[name] for name in self.weights}
        changed = net = 0
        for name, new in masks.items():
            new = new if new.dtype == torch.bool else new > 0  # the selections write 0/1 floats
            kept = count(new)
            net += kept - self.kept[name]  # regrown - pruned
            flips = new ^ self.keep[name]  # regrown or pruned
            changed += count(flips)
            self.ever_regrown[name] |= flips.logical_and_(new)  # regrown
            self.keep[name] = new
            self.kept[name] = kept
        self._record_flips(changed, net)

    def _expand_units(self, unit_keep: dict[str, Tensor]) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        """Takes one keep-vector per group; returns the masks of every parameter a group touches: whole
        units, and at the consumer slices only (what the model holds)."""
        from ..units import unit_keep_masks

        for group in self.groups:
            keep = unit_keep.get(group.name)
            if keep is None or keep.shape != (group.size,):
                raise ValueError(f"unit masks need a keep-vector of length {group.size} for group {group.name!r}, got {None if keep is None else tuple(keep.shape)}")
        if set(unit_keep) != set(self.unit_keep):
            raise ValueError(f"unit masks are for the groups {sorted(self.unit_keep)}, got {sorted(unit_keep)}")
        self.unit_keep = {group.name: unit_keep[group.name].to(self.unit_keep[group.name]) for group in self.groups}
        params = {**self.weights, **self.coupled}
        return unit_keep_masks(self.groups, self.unit_keep, params), unit_keep_masks(self.groups, self.unit_keep, params, consumers_only=True)

    def _whole_unit_masks(self) -> Iterator[tuple[Tensor, Tensor]]:
        """Unit granularity: (parameter, its whole-unit keep-mask) for every parameter a removed unit owns entries of."""
        for name, w in self.weights.items():
            if self.kept[name] < w.numel():
                yield w, self.keep[name]
        for name, p in self.coupled.items():
            yield p, self.coupled_whole[name]

    @torch.no_grad()
    def _zero_removed_gradients(self) -> None:
        """Unit granularity: zeroes the gradient of every entry of a removed unit (its consumer columns
        receive one: the model holds the unit at its consumers only)."""
        for p, mask in self._whole_unit_masks():
            if p.grad is not None:
                p.grad.mul_(mask)

    @torch.no_grad()
    def zero_removed(self) -> None:
        """Unit granularity: writes zeros into every entry of the removed units, their own weights, biases
        and norm entries included (the model holds them at the consumers only, so the outputs do not
        change), e.g. before saving the model; the next optimizer step writes them back. A no-op at
        weight granularity."""
        if self.granularity != "unit":
            return
        for p, mask in self._whole_unit_masks():
            p.data.mul_(mask)

    def _apply_coupled_masks(self) -> None:
        for name, p in self.coupled.items():
            torch.mul(self.coupled_dense[name], self.coupled_keep[name], out=p.data)

    def unit_scores(self) -> dict[str, Tensor]:
        """Per group, each unit's magnitude: the RMS of its dense prunable weights, sqrt(sum w**2 / n).

        The sum runs over every prunable-weight entry of the unit (its rows, and the consumers'
        columns); dividing by their number n makes units of layers with different fan-in and fan-out
        comparable in global scope (a plain L2 norm would favour the wide layers' units).
        ``unit_ranking="relative"`` (the default) divides each group's RMS by its median over the
        group's units, so that groups compete on how their units compare with their own layer, not on
        the layers' scales: default initialisations scale a layer by 1/sqrt(fan-in), which by RMS
        alone (``"rms"``, the ranking until the commit after 8cb986b) puts every unit of a first
        convolution above all others (``benchmarks/prototypes/unit-ranking.md``).
        """
        scores = {}
        for group in self.groups:
            dtype = torch.promote_types(self.dense[group.name].dtype, torch.float32)
            squares = torch.zeros(group.size, dtype=dtype, device=self.dense[group.name].device)
            entries = torch.zeros_like(squares)
            for piece in group.slices:
                if piece.param not in self.dense:
                    continue
                w = self.dense[piece.param].movedim(piece.dim, 0)
                per_position = w.reshape(w.shape[0], -1).to(dtype).square().sum(dim=1)
                unit = piece.unit.to(squares.device)
                squares.index_add_(0, unit, per_position[piece.index.to(squares.device)])
                entries.index_add_(0, unit, torch.full_like(unit, w[0].numel(), dtype=dtype))
            scores[group.name] = squares.div_(entries).sqrt_()
            if self.unit_ranking == "relative":  # a group whose median unit is all zeros keeps its RMS
                median = scores[group.name].median()
                scores[group.name].div_(torch.where(median > 0, median, torch.ones_like(median)))
        return scores

    def unit_counts(self) -> dict[str, Any]:
        """Unit granularity: units kept per group, their sizes, and the unit sparsity (fraction of units removed); else empty."""
        if not self.groups:
            return {}
        kept = {name: count(keep) for name, keep in self.unit_keep.items()}
        return {
            "unit_sparsity": 1.0 - sum(kept.values()) / self.unit_total,
            "units_kept": kept,
            "units_total": {group.name: group.size for group in self.groups},
        }

    @property
    def masks(self) -> dict[str, Tensor]:
        """Bool keep-masks of the prunable weights by parameter name (True = keep); at unit granularity
        whole units, of which the model holds the consumer slices (:attr:`forward_keep`)."""
        return {name: keep.clone() if self.prunes else keep for name, keep in self.keep.items()}

    @torch.no_grad()
    def apply_masks(self) -> None:
        """Writes theta_hat = mask * theta into the model (at unit granularity, the masks of the consumer slices)."""
        for name, w in self.weights.items():
            _mask_into(self.dense[name], self.forward_keep[name], w.data)
        self._apply_coupled_masks()

    @contextlib.contextmanager
    def dense_weights(self) -> Iterator[None]:
        """Temporarily puts the dense weights theta into the model (e.g. to evaluate them)."""
        with torch.no_grad():
            for name, w in self.weights.items():
                w.copy_(self.dense[name])
            for name, p in self.coupled.items():
                p.copy_(self.coupled_dense[name])
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

    def _zeros(self, name: str, w: Tensor) -> int:
        """Entries of theta_hat that are exact zeros (at unit granularity: or belong to a removed unit, which computes what nothing reads)."""
        zero = w == 0
        if self.granularity == "unit" and self.kept[name] < w.numel():
            zero |= ~self.keep[name]
        return int(zero.sum())

    def layer_sparsity(self) -> dict[str, float]:
        """Fraction of exact zeros of theta_hat per prunable tensor (at unit granularity, removed units' entries count as zeros)."""
        return {name: self._zeros(name, w) / w.numel() for name, w in self.weights.items()}

    def sparsity(self) -> float:
        """Fraction of exact zeros of theta_hat over all prunable entries (at unit granularity, removed units' entries count as zeros)."""
        zeros = sum(self._zeros(name, w) for name, w in self.weights.items())
        return zeros / sum(w.numel() for w in self.weights.values())

    def snr_quantiles(self, quantiles: tuple[float, ...] = (0.1, 0.5, 0.9)) -> dict[str, dict[str, float]]:
        """Per-layer quantiles of the SNR moving average (empty for methods that do not track it)."""
        return {}

    def diagnostics(self) -> dict[str, Any]:
        """Method-specific state worth logging every epoch (the unit counts at unit granularity, else empty)."""
        return self.unit_counts()

    def idle_reason(self) -> str | None:
        """Why the run pruned nothing, read from the method's own state, or None (it pruned, or the method has no reason to give)."""
        return None

    def warn_if_idle(self) -> None:
        """At the end of training: a warning with :meth:`idle_reason`, if there is one, so that a run that stayed dense is never silent."""
        reason = self.idle_reason()
        if reason:
            warnings.warn(reason, stacklevel=2)

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
            "ever_regrown": {name: t.clone() for name, t in self.ever_regrown.items()},
            "last_flips": dict(self.last_flips),
            "stats_enabled": self.stats is not None and self.stats.enabled,
            "granularity": self.granularity,
            **(self._unit_state() if self.granularity == "unit" else {}),
        }

    def _unit_state(self) -> dict[str, Any]:
        return {
            "unit_ranking": self.unit_ranking,
            "units": {name: keep.bool() for name, keep in self.unit_keep.items()},
            "coupled_dense": {name: t.clone() for name, t in self.coupled_dense.items()},
        }

    def _check_method(self, state: Any) -> None:
        """Refuses a state of another method first, before a subclass compares its own entries."""
        if not isinstance(state, dict) or "method" not in state:
            raise ValueError("not a snrprune pruning state (no 'method' entry)")
        if state["method"] != self.method:
            raise ValueError(
                f"the state is from method {state['method']!r}, this object is {self.method!r} ({type(self).__name__}): "
                f"load it into a {get_method(state['method']).__name__ if state['method'] in PRUNING_METHODS else 'pruning object of that method'}"
            )
        granularity = state.get("granularity", "weight")  # states from before granularities were weight masks
        if granularity != self.granularity:
            raise ValueError(
                f"the state is of granularity {granularity!r}, this {type(self).__name__} prunes at granularity {self.granularity!r}: "
                f"load it into one built with granularity={granularity!r}"
            )
        ranking = state.get("unit_ranking", "rms") if granularity == "unit" else None  # unit states from before rankings: by RMS
        if ranking != self.unit_ranking and self.scope == "global":  # in scope 'layer' the two keep the same units
            raise ValueError(
                f"the state ranks units by {ranking!r}, this {type(self).__name__} by {self.unit_ranking!r}: "
                f"load it into one built with unit_ranking={ranking!r}"
            )

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._check_method(state)
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
                if not self.prunes:  # never pruned: the masks are all ones and stay a broadcast one
                    w.copy_(state["dense"][name])
                    continue
                self.dense[name].copy_(state["dense"][name])
                # bool in every version's states; a copy: the fused kernels write the masks in place
                self.keep[name] = state["masks"][name].to(device=w.device, dtype=torch.bool, copy=True)
                self.kept[name] = count(self.keep[name])
                ever = state.get("ever_regrown", {}).get(name)  # absent in states of older versions
                self.ever_regrown[name] = torch.zeros_like(self.keep[name]) if ever is None else ever.to(device=w.device, dtype=torch.bool, copy=True)
        if self.granularity == "unit":
            self._load_unit_state(state)
        if self.prunes:
            self.apply_masks()
        if self.stats is not None:
            self.stats.reset()
            self.stats.enabled = bool(state["stats_enabled"])

    def _load_unit_state(self, state: dict[str, Any]) -> None:
        sizes = {name: tuple(keep.shape) for name, keep in state["units"].items()}
        if sizes != {name: tuple(keep.shape) for name, keep in self.unit_keep.items()}:
            raise ValueError(f"the state's unit groups (name: size) are {sizes}, this model's are { {g.name: (g.size,) for g in self.groups} }")
        if set(state["coupled_dense"]) != set(self.coupled):
            raise ValueError(f"the state's coupled parameters are {sorted(state['coupled_dense'])}, this model's are {sorted(self.coupled)}")
        with torch.no_grad():
            for name, t in state["coupled_dense"].items():
                self.coupled_dense[name].copy_(t)
        whole, forward = self._expand_units({name: keep.to(self.unit_keep[name]) for name, keep in state["units"].items()})
        self.coupled_keep = {name: forward[name].to(self.coupled_keep[name].dtype) for name in self.coupled}
        self.coupled_whole = {name: whole[name].to(self.coupled_keep[name].dtype) for name in self.coupled}
        self.forward_keep = {name: forward[name] > 0 if name in forward else self.keep[name] for name in self.weights}

    def __repr__(self) -> str:
        return f"{type(self).__name__}(layers={len(self.layers)}, step={self.step_count}, sparsity={self.sparsity():.4f})"


@register_method("dense")
class NoPruning(Pruning):
    """The dense baseline through the same interface: never prunes; a step only counts itself.

    ``granularity`` is ``"weight"`` only: with nothing removed there are no units to find.
    """

    prunes = False
    granularities = ("weight",)

    def __init__(self, model: nn.Module, *, include: NameFilter = None, exclude: NameFilter = None, granularity: str = "weight"):
        super().__init__(model, include=include, exclude=exclude, granularity=granularity)


def _mask_into(dense: Tensor, keep: Tensor, out: Tensor) -> None:
    """``out = dense * keep`` for a bool keep-mask: the fused CPU kernel for float32 (eager ``torch.mul``
    casts a bool operand element by element, several times slower than a float mask), eager elsewhere."""
    if fused.usable(dense, keep, out):
        fused.kernels().mask_copy(dense, keep, out)
    else:
        torch.mul(dense, keep, out=out)
