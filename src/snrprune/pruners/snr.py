"""SNR-guided dynamic pruning, the paper's method (SPEC section 3)."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from .. import fused
from ..layers import NameFilter
from ..masks import COMBINE_MODES, check_choice, combine, count, kth_smallest, magnitude_keep_masks
from ..statistics import GradientStats
from .base import SNR_HISTOGRAM_EDGES, SNR_ROUNDOFF, Pruning, _check_float, _check_int, _distributed, register_method


#: From this many prunable weights on, ``snr`` reads the per-sample sum S1 from ``weight.grad`` instead
#: of keeping a copy (4 bytes a weight less; ``benchmarks/results/memory.md``). The check that the
#: gradient is still that sum costs a few small passes per layer and step: on LeNet-300-100 it made a
#: step with statistics 2.22x a plain one instead of 1.57x, on LeNet-5 1.73x instead of 1.55x
#: (``benchmarks/stats_overhead.py``), where the copy costs a few megabytes; at 16.8M weights the copy
#: is 64 MB and the check's passes are small against the backward.
SUM_FROM_GRAD_MIN = 1 << 24


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

    It prunes the weights :func:`~snrprune.layers.find_prunable_layers` selects (``include``/``exclude``),
    with exact per-sample statistics for each (:class:`~snrprune.statistics.GradientStats`); a weight
    they cannot be exact for is refused by name, with the methods that can prune it (``dpf``,
    ``snr-auto``): here when the module type says so (an RNN with dropout between its layers), else from
    ``backward()`` (a weight used outside its module's forward, an output broadcast over the batch).
    A weight without statistics on a step has a zero gradient there, SNR 0.

    Memory: on a network of at least :data:`SUM_FROM_GRAD_MIN` prunable weights and without
    torch.distributed (no ``process_group``, no initialised process group of more than one process
    when it is built) the statistics keep no S1 buffer: S1 is read from the
    weights' ``.grad`` at ``optimizer.step()`` (``GradientStats(sum_from_grad=True)``; a gradient
    rescaled uniformly since the backward, by ``clip_grad_norm_`` or ``GradScaler``, is divided back;
    any other change is a warning, drops that step's statistics and keeps S1 in a buffer from then
    on). Under DDP S1 keeps its buffer, since DDP replaces the local gradient by the processes' mean.
    The magnitudes of the mask update use the layer's S2 buffer as scratch (free between the step's
    statistics and the next backward).

    ``granularity`` is ``"weight"`` only. The rule is per weight: each weight's SNR comes from the
    per-sample spread of its own gradient, and the magnitude criterion it combines with ranks single
    weights. A unit version would need a unit's SNR (per-sample gradients of the whole unit, of its
    output, or a pooling of its weights' SNR), a different statistic that is out of scope here;
    ``snr-auto`` and ``dpf`` prune units (``granularity="unit"``).
    """

    granularities = ("weight",)

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
        granularity: str = "weight",
    ):
        super().__init__(model, scope=scope, include=include, exclude=exclude, granularity=granularity)
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
        self._buffers: dict[str, Tensor] = {}  # per device and dtype: |theta| of one layer at a time for the selection, reused
        # the same weights as the pruning's; refuses those whose exact per-sample statistics it cannot compute
        # S1 read from weight.grad (4 bytes less per weight) on large networks, unless the statistics are
        # summed over processes
        total = sum(layer.weight.numel() for layer in self.layers)
        from_grad = process_group is None and not _distributed() and total >= SUM_FROM_GRAD_MIN
        self.stats = GradientStats(
            model, enabled=self.stats_due(0), process_group=process_group, layers=self.layers, sum_from_grad=from_grad
        )

    @property
    def cut(self) -> float:
        """keep_snr is ``average > cut``: the threshold with the round-off margin (:data:`SNR_ROUNDOFF`)."""
        return self.threshold * (1.0 + SNR_ROUNDOFF)

    def stats_due(self, step: int) -> bool:
        return step % self.stats_every == 0

    def observe_stats(self, stats: GradientStats) -> None:
        moments = stats.moments()
        if not moments:  # the step's statistics were dropped (S1 read from a gradient changed non-uniformly)
            return
        self.fresh = True
        if not all(fused.usable(*moments.tensors(name)) for name in moments):
            super().observe_stats(stats)
            return
        kernels = fused.kernels()
        self._not_above_step = self.step_count + 1  # valid for this step's mask update only
        for name in moments:  # SNR and moving average in one pass per layer
            m = moments[name]  # S1 divided by a gradient's rescaling factor: one layer's temporary at a time
            avg = self.snr_ema.get(name)
            first = avg is None
            if first:
                avg = self.snr_ema[name] = torch.empty_like(m.sum)
            self._not_above[name] = kernels.snr_average(m.sum, m.sum_sq, avg, m.count, 1.0 - self.ema, first, self.cut)
            del m

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
        """A buffer of the layer's shape for its magnitudes: the layer's S2 buffer while the statistics hold
        no sums, else one allocation, the size of the largest layer, shared by the layers (they are
        selected one after another)."""
        dense = self.dense[name]
        free = self.stats._free_s2(name) if self.stats is not None else None
        if free is not None and (free.device, free.dtype) == (dense.device, dense.dtype) and free.is_contiguous():
            return free  # the statistics hold no sums now; the next backward overwrites S2
        key = f"{dense.device}:{dense.dtype}"
        buffer = self._buffers.get(key)
        if buffer is None:
            size = max(w.numel() for w in self.dense.values() if (w.device, w.dtype) == (dense.device, dense.dtype))
            buffer = self._buffers[key] = torch.empty(size, dtype=dense.dtype, device=dense.device)
        return buffer[: dense.numel()].view(dense.shape)

    def compute_masks(self) -> dict[str, Tensor]:
        if len(self.snr_ema) < len(self.weights):
            return self.keep  # no statistics for some layer yet: nothing is known to be unreliable
        cut = self.cut
        keep_snr = {name: avg > cut for name, avg in self.snr_ema.items()}
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

    def idle_reason(self) -> str | None:
        """Why every weight is still kept after the burn-in, from the SNR moving averages; None if any is pruned, or the burn-in never ended."""
        if self.step_count <= self.burn_in_steps or len(self.snr_ema) < len(self.weights):
            return None
        if any(count(self.keep[name]) < w.numel() for name, w in self.weights.items()):
            return None
        cut = self.cut
        below = sum(int((avg <= cut).sum()) for avg in self.snr_ema.values())
        total = sum(w.numel() for w in self.weights.values())
        if below == 0:
            q10 = {name: q["q10"] for name, q in self.snr_quantiles((0.1,)).items()}
            lowest = min(q10, key=q10.get)
            reading = f"every weight's SNR moving average stayed above the threshold {self.threshold:g} (the lowest layer's 10% quantile: {q10[lowest]:.3g}, {lowest})"
        else:
            reading = f"{below:,} of {total:,} weights read below the threshold {self.threshold:g}, but combine {self.combine!r} kept them"
        return f"snr pruned nothing: {reading}. A higher threshold prunes more; dpf with a target (--method dpf --target-sparsity S) prunes regardless"

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


