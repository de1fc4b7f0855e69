"""Dynamic Pruning with Feedback (Lin et al. 2020): magnitude masks on a sparsity schedule."""

from __future__ import annotations

import warnings
from typing import Any

from torch import Tensor, nn

from ..layers import NameFilter
from ..masks import keep_units, magnitude_keep_masks
from ..schedules import polynomial_sparsity
from .base import Pruning, _check_float, _check_int, register_method


@register_method("dpf")
class DPFPruning(Pruning):
    """DPF: global magnitude masks at a cubic (Zhu & Gupta) sparsity schedule, every ``update_every`` steps.

    The target is reached at ``end_fraction * total_steps`` (an update is forced on that step) and
    held afterwards, exact to one weight.

    ``granularity="unit"`` (with ``example_inputs``): the sparsity is the fraction of *units*
    removed, over all groups (global scope) or in each group (layer scope), on the same schedule,
    exact to one unit; units are ranked by the RMS of their dense prunable weights over their group's
    median (``unit_ranking="relative"``, the default), or by the RMS alone (``"rms"``: the L2 norm over
    the square root of their number, so that groups of different fan-in compare;
    :meth:`~snrprune.pruners.Pruning.unit_scores`). Every group keeps at least its largest unit, which
    caps the unit sparsity at ``1 - groups / units`` (a warning says so when the target is above).
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
        granularity: str = "weight",
        example_inputs: Any = None,
        unit_ranking: str | None = None,
    ):
        super().__init__(
            model, scope=scope, include=include, exclude=exclude, granularity=granularity, example_inputs=example_inputs, unit_ranking=unit_ranking
        )
        self.target_sparsity = _check_float("target_sparsity", target_sparsity, 0.0, 1.0)
        self.initial_sparsity = _check_float("initial_sparsity", initial_sparsity, 0.0, self.target_sparsity, high_open=False)
        self.total_steps = _check_int("total_steps", total_steps, 1)
        self.end_fraction = _check_float("end_fraction", end_fraction, 0.0, 1.0, high_open=False)
        self.update_every = _check_int("update_every", update_every, 1)
        self.end_step = max(1, round(self.end_fraction * self.total_steps))
        if self.granularity == "unit":
            self._warn_if_capped()

    def _warn_if_capped(self) -> None:
        sizes = [group.size for group in self.groups]
        if self.scope == "global":
            capped = round(self.target_sparsity * self.unit_total) > self.unit_total - len(sizes)
        else:
            capped = any(round(self.target_sparsity * size) > size - 1 for size in sizes)
        if capped:
            warnings.warn(
                f"dpf: target_sparsity {self.target_sparsity:g} of units would empty a group; every group keeps at least one unit, "
                f"so the unit sparsity stops below the target; use a lower target",
                stacklevel=3,
            )

    def scheduled_sparsity(self, step: int) -> float:
        return polynomial_sparsity(step, self.target_sparsity, self.end_step, self.initial_sparsity)

    def update_due(self, step: int) -> bool:
        return step % self.update_every == 0 or step == self.end_step

    def compute_masks(self) -> dict[str, Tensor]:
        s = self.scheduled_sparsity(self.step_count)
        if self.granularity == "unit":
            scores = self.unit_scores()
            n_units = round(s * self.unit_total) if self.scope == "global" else {name: round(s * v.numel()) for name, v in scores.items()}
            return keep_units(scores, n_units, self.scope)
        if self.scope == "global":
            n_prune: int | dict[str, int] = round(s * sum(w.numel() for w in self.dense.values()))
        else:
            n_prune = {name: round(s * w.numel()) for name, w in self.dense.items()}
        return magnitude_keep_masks(self.dense, n_prune, self.scope)


