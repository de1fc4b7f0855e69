"""Dynamic Pruning with Feedback (Lin et al. 2020): magnitude masks on a sparsity schedule."""

from __future__ import annotations

from torch import Tensor, nn

from ..layers import NameFilter
from ..masks import magnitude_keep_masks
from ..schedules import polynomial_sparsity
from .base import Pruning, _check_float, _check_int, register_method


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


