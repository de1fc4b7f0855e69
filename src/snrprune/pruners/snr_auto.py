"""``snr-auto``: schedule-free pruning driven by the window SNR of the kept weights (beyond the paper)."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from ..layers import NameFilter
from ..masks import count, keep_largest, magnitude_keep_masks
from ..statistics import snr_from_moments
from .base import Pruning, _check_float, _check_int, register_method


#: The fewest steps a decision reads: the noise of z, F(1, T - 1), has a finite variance from T = 6 on.
MIN_WINDOW_STEPS = 6


def noise_moments(steps: int) -> tuple[float, float]:
    """Mean and variance of a weight's window SNR when its gradient is noise only: F(1, T - 1)."""
    if steps < MIN_WINDOW_STEPS:
        raise ValueError(f"the window SNR's noise has a finite variance from {MIN_WINDOW_STEPS} steps on, got {steps}")
    d = steps - 1
    return d / (d - 2), 2.0 * d * d * (d - 1) / ((d - 2) ** 2 * (d - 4))


@register_method("snr-auto")
class SNRAutoPruning(Pruning):
    """Schedule-free pruning: the network gives up weights while its *kept* weights have converged.

    The paper's per-weight test cannot say how much to prune: late in training nearly every weight's
    mini-batch SNR sits at the noise level, pruned or not (``shared/research/snr-statistics.md``).
    This method moves the test to a window of many steps (``window_steps``, one epoch in
    ``snrprune train``) and to a set of weights. Per weight it sums the mini-batch gradients g_t that
    the optimizer applies and their squares over the T steps of the window, so that
    ``z = T * mean**2 / var`` (mean and unbiased variance of g_t over the steps) is the SNR of the
    mini-batch gradient averaged over the window. Under SGD the summed gradient is the weight's
    displacement over the window divided by the learning rate, so z reads how the weight moved: z near
    its noise mean (T - 1) / (T - 3) for a random walk (gradient noise only; 1 for long windows), below
    for a weight held at a minimum (its gradients cancel), above for a weight that drifts (still
    learning). At the end of a window the mean z of the kept weights is compared with the noise band
    of the mean of n independent F(1, T - 1) variables (two standard errors; for long windows
    1 +- 2 * sqrt(2 / n)), scaled by ``threshold``:

    - below the band: the kept weights have converged, the network can give up weights: the density
      is multiplied by ``1 - step * lr / lr_max``;
    - above the band: the kept weights drift, the network is still adapting (or compensating for what
      was pruned): the density is divided by that factor (the pruned weights of largest magnitude
      return) -- but not in the window right after a prune: that window always shows the kept
      weights adapting to the loss of the others, so drift there only holds the density (hysteresis);
      regrowth needs drift that outlasts the adaptation;
    - inside the band: no evidence either way, the density is left as it is.

    A move is scaled by the optimizer's learning rate over the largest seen, ``lr / lr_max``: how far
    SGD can carry the network in the next window, so how much change it can absorb. Late in a decaying
    schedule the moves shrink with it, instead of pruning (or regrowing) in bulk when the network can
    no longer recover. The step also halves when the direction reverses, so the density settles at
    the boundary under a constant learning rate. Masks keep the largest dense magnitudes at the
    density, recomputed every ``update_every`` steps; pruned weights keep training through the DPF
    feedback. No target sparsity, no schedule.

    The noise comes from the spread of the mini-batch gradients across steps, not from per-sample
    gradients within a batch. The two agree for independent samples (the variance of a batch mean is
    the per-sample variance over B), but BatchNorm in training mode couples the samples of a batch and
    removes each channel's batch-mean output gradient, which makes the per-sample contributions large
    and nearly cancelling: a per-sample variance then overstates the noise of the gradient the
    optimizer applies, and every convolution looks converged (``benchmarks/batchnorm_noise.py``). The
    step-to-step spread is the noise of the applied gradient whatever couples the samples, and it
    costs no per-sample statistics: two element-wise passes a step. Under DDP the gradients it reads
    are the all-reduced ones, so every rank decides the same.

    ``scope="global"`` (the default): one controller for the whole network (key :data:`GLOBAL` of
    ``density``, ``step``, ``direction``), fed by the mean window SNR of all kept weights, and masks
    that keep the largest magnitudes over all layers, as DPF's global scope does, so that the layers
    share the density by magnitude. ``scope="layer"``: one controller and one magnitude ranking per
    layer. Either way a layer never drops below one weight per output unit, and a window in which the
    kept weights received no gradient leaves the density as it is, so no layer can collapse.
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
        scope: str = "global",
        *,
        lr_scaled: bool = True,
        hysteresis: bool = True,
        include: NameFilter = None,
        exclude: NameFilter = None,
    ):
        super().__init__(model, scope=scope, include=include, exclude=exclude)
        for flag, value in (("lr_scaled", lr_scaled), ("hysteresis", hysteresis)):
            if not isinstance(value, bool):
                raise ValueError(f"{flag} must be True or False, got {value!r}")
        # both on by default; off only to measure what each is worth (the suite's ablations)
        self.lr_scaled, self.hysteresis = lr_scaled, hysteresis
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
        self.adapting = {unit: False for unit in self.units}  # the last window ended with a prune
        self.lr_max = 0.0  # the largest learning rate seen (of the groups holding prunable weights)
        self._lr_groups: list[dict] = []  # those groups, once wrapped
        # the guard against collapse: at least one weight per output unit (rows of the weight)
        self.min_kept = {name: w.shape[0] for name, w in self.weights.items()}
        self.min_density = {
            unit: sum(self.min_kept[n] for n in names) / sum(self.weights[n].numel() for n in names) for unit, names in self.units.items()
        }
        self.window: dict[str, list[Tensor]] = {}  # name -> [sum of g_t, sum of g_t**2] over the window
        self.window_count = 0  # T: the steps summed
        self.window_snr: dict[str, float] = {}  # the last decision's mean window SNR of the kept weights

    def wrap(self, optimizer: torch.optim.Optimizer) -> torch.optim.Optimizer:
        optimizer = super().wrap(optimizer)
        held = {id(w) for w in self.weights.values()}
        self._lr_groups = [g for g in optimizer.param_groups if any(id(p) in held for p in g["params"])]
        return optimizer

    def lr(self) -> float | None:
        """The learning rate of this step (the largest over the groups that hold prunable weights)."""
        return max((float(g["lr"]) for g in self._lr_groups), default=None)

    def lr_scale(self) -> float:
        """How large a move may be now: the learning rate over the largest seen (1 before any is known)."""
        lr = self.lr()
        if not self.lr_scaled or lr is None or self.lr_max <= 0:
            return 1.0
        return min(1.0, lr / self.lr_max)

    @torch.no_grad()
    def before_step(self) -> None:
        self.observe_gradients()
        super().before_step()

    def observe_gradients(self) -> None:
        """Adds the gradients the optimizer is about to apply (at theta_hat) to the window sums."""
        lr = self.lr()
        if lr is not None:
            self.lr_max = max(self.lr_max, lr)
        for name, w in self.weights.items():
            acc = self.window.get(name)
            if acc is None:
                dtype = torch.promote_types(w.dtype, torch.float32)  # half-precision weights sum in float32
                acc = self.window[name] = [torch.zeros_like(w, dtype=dtype), torch.zeros_like(w, dtype=dtype)]
            if w.grad is not None:  # no gradient this step counts as zero
                acc[0].add_(w.grad)
                acc[1].addcmul_(w.grad, w.grad)
        self.window_count += 1

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
        null_mean, null_var = noise_moments(self.window_count)
        margin = 2.0 * math.sqrt(null_var / n)  # two standard errors of the mean of n noise-only weights
        if mean_z < self.threshold * (null_mean - margin):
            return -1
        if mean_z > self.threshold * (null_mean + margin):
            return 1
        return 0

    def decide(self) -> None:
        """End of a window: each unit's density (a layer's, or the network's) moves by the evidence of its kept weights."""
        if self.window_count < MIN_WINDOW_STEPS:
            return  # too few steps for a variance with a finite spread: the window goes on
        scale = self.lr_scale()
        for unit in self.units:
            move = self.evidence(unit)
            adapting, self.adapting[unit] = self.adapting[unit], False
            if move == 0 or (move > 0 and adapting):  # drift right after a prune: the network adapting
                continue
            if move == -self.direction[unit]:
                self.step[unit] /= 2  # reversed: settle at the boundary
            factor = 1.0 - self.step[unit] * scale
            density = self.density[unit] * factor if move < 0 else self.density[unit] / factor
            density = min(1.0, max(self.min_density[unit], density))
            if density != self.density[unit]:  # a move against a bound (dense, the floor) is no direction
                self.density[unit] = density
                self.direction[unit] = move
                self.adapting[unit] = move < 0 and self.hysteresis
        self.window = {}
        self.window_count = 0

    def compute_masks(self) -> dict[str, Tensor]:
        if self.window_due(self.step_count):
            self.decide()
        if self.scope == "layer":
            n_prune = {name: w.numel() - max(1, round(self.density[name] * w.numel())) for name, w in self.dense.items()}
            return magnitude_keep_masks(self.dense, n_prune, "layer")
        masks = magnitude_keep_masks(self.dense, self.total - max(1, round(self.density[self.GLOBAL] * self.total)), "global")
        for name, w in self.dense.items():  # the guard: a layer the global ranking empties keeps its floor
            if count(masks[name]) < self.min_kept[name]:
                floor = keep_largest(w.abs(), w.numel() - self.min_kept[name])
                masks[name] = torch.maximum(masks[name], floor)
        return masks

    def diagnostics(self) -> dict[str, Any]:
        return {"density": dict(self.density), "window_snr": dict(self.window_snr), "step": dict(self.step), "lr_scale": self.lr_scale()}

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        state.update(
            density=dict(self.density),
            auto_step=dict(self.step),
            direction=dict(self.direction),
            adapting=dict(self.adapting),
            lr_max=self.lr_max,
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
        self.adapting = {unit: bool(state.get("adapting", {}).get(unit, False)) for unit in self.units}
        self.lr_max = float(state.get("lr_max", 0.0))
        # the sums keep their own dtype (float32 for half-precision weights), on the weights' device
        self.window = {name: [t.to(self.dense[name].device).clone() for t in pair] for name, pair in state["window"].items()}
        self.window_count = int(state["window_count"])
        self.window_snr = dict(state.get("window_snr", {}))
