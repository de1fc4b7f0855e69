"""Exact per-weight mini-batch gradient statistics and their signal-to-noise ratio (SPEC section 2).

:class:`GradientStats` hooks the prunable layers of a model. During every ``loss.backward()`` it adds,
per weight entry k, the sums S1_k = sum_i g_ik and S2_k = sum_i g_ik**2 over the samples i, and the
sample count B. The sums add up over several backward calls (gradient accumulation) and over
processes (all-reduce), so the SNR of the whole batch stays exact.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .layers import NameFilter, PrunableLayer, find_prunable_layers

#: SNR given to an entry whose individual gradients are all equal and non-zero (zero variance).
SNR_CAP = 1e12


@dataclass
class Moments:
    """Sums of per-sample gradients of one weight tensor: S1 = sum g_i, S2 = sum g_i**2, count = B."""

    sum: Tensor
    sum_sq: Tensor
    count: int

    def snr(self) -> Tensor:
        return snr_from_moments(self.sum, self.sum_sq, self.count)


def snr_from_moments(s1: Tensor, s2: Tensor, count: int) -> Tensor:
    """snr_k = B * mean_k**2 / var_k with the unbiased variance of the individual gradients.

    Equals S1**2 / (B * var) where var = (S2 - S1**2 / B) / (B - 1), clamped at 0 against round-off.
    Zero variance gives 0 where S1 = 0 (no signal at all) and :data:`SNR_CAP` otherwise.
    """
    if count < 2:
        raise ValueError(
            f"the gradient SNR needs at least 2 samples per statistic (got B={count}): "
            "the variance of individual gradients is undefined for one sample; use a batch size >= 2"
        )
    s1_sq = s1.square()
    var = (s2 - s1_sq / count).clamp_min_(0.0).div_(count - 1)
    snr = s1_sq.div_(var.mul_(count))  # 0/0 -> nan, c/0 -> inf
    snr.nan_to_num_(nan=0.0, posinf=SNR_CAP).clamp_max_(SNR_CAP)
    return snr


class GradientStats:
    """Collects exact per-weight gradient moments of a model's prunable layers during backward.

    Example::

        stats = GradientStats(model)
        loss_fn(model(x), y).backward()
        snr = stats.snr()          # {"fc1.weight": tensor of fc1.weight's shape, ...}
        stats.reset()

    Per-sample terms come from each layer's input and output-gradient (see :mod:`snrprune.layers`).
    With cross-sample layers in training mode (BatchNorm), g_i is sample i's contribution to the batch
    gradient; the g_i still sum to the batch gradient. A module applied several times in one forward
    pass contributes one "sample" set per application. While ``enabled`` is False no hook is attached,
    so collecting nothing costs nothing.
    """

    def __init__(
        self,
        model: nn.Module,
        include: NameFilter = None,
        exclude: NameFilter = None,
        enabled: bool = True,
    ) -> None:
        self.layers: list[PrunableLayer] = find_prunable_layers(model, include, exclude)
        self._sums: dict[str, list] = {}
        self._handles: list = []
        self._enabled = False
        self.enabled = enabled

    # -- hook management -------------------------------------------------------------------------
    @property
    def enabled(self) -> bool:
        return self._enabled

    @enabled.setter
    def enabled(self, value: bool) -> None:
        value = bool(value)
        if value and not self._enabled:
            self._handles = [
                layer.module.register_forward_hook(functools.partial(self._on_forward, layer))
                for layer in self.layers
            ]
        elif not value and self._enabled:
            self._detach()
        self._enabled = value

    def _detach(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def remove(self) -> None:
        """Removes all hooks; the collected sums stay readable."""
        self._detach()
        self._enabled = False

    def _on_forward(self, layer: PrunableLayer, module: nn.Module, inputs: tuple, output: Tensor) -> None:
        if not (torch.is_grad_enabled() and isinstance(output, Tensor) and output.requires_grad):
            return
        output.register_hook(functools.partial(self._on_output_grad, layer, inputs[0].detach()))

    def _on_output_grad(self, layer: PrunableLayer, x: Tensor, delta: Tensor) -> None:
        with torch.no_grad():
            dtype = torch.promote_types(layer.weight.dtype, torch.float32)
            s1, s2 = layer.moments.sums(layer.module, x.to(dtype), delta.to(dtype))
            entry = self._sums.get(layer.name)
            if entry is None:
                self._sums[layer.name] = [s1, s2, x.shape[0]]
            else:
                entry[0] += s1
                entry[1] += s2
                entry[2] += x.shape[0]

    # -- results ---------------------------------------------------------------------------------
    @property
    def count(self) -> int:
        """Samples seen since the last reset (the B of the statistics)."""
        return max((entry[2] for entry in self._sums.values()), default=0)

    def moments(self) -> dict[str, Moments]:
        """The raw sums per parameter name, S1, S2 and B, accumulated since the last reset."""
        if not self._sums:
            raise RuntimeError(
                "no gradient statistics collected yet: run loss.backward() while the statistics are enabled"
            )
        return {name: Moments(s1, s2, count) for name, (s1, s2, count) in self._sums.items()}

    def snr(self) -> dict[str, Tensor]:
        """Per-weight mini-batch gradient SNR, ``{parameter name: tensor of the weight's shape}``."""
        return {name: m.snr() for name, m in self.moments().items()}

    def reset(self) -> None:
        """Forgets the collected sums (hooks stay)."""
        self._sums = {}

    def all_reduce(self, group=None) -> None:
        """Sums S1, S2 and B over the processes of ``group`` so that every rank sees the global batch."""
        import torch.distributed as dist

        names = sorted(self._sums)
        for name in names:
            s1, s2, count = self._sums[name]
            dist.all_reduce(s1, group=group)
            dist.all_reduce(s2, group=group)
            n = torch.tensor([count], dtype=torch.float64, device=s1.device)
            dist.all_reduce(n, group=group)
            self._sums[name][2] = int(n.item())
