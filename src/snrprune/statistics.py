"""Exact per-weight mini-batch gradient statistics and their signal-to-noise ratio (SPEC section 2).

:class:`GradientStats` hooks the prunable layers of a model. During every ``loss.backward()`` it adds,
per weight entry k, the sums S1_k = sum_i g_ik and S2_k = sum_i g_ik**2 over the samples i, and the
sample count B. The sums add up over several backward calls (gradient accumulation) and over
processes (all-reduce), so the SNR of the whole batch stays exact.

The sums follow the weight gradients: a backward call that finds the gradient cleared
(``zero_grad()``, set to None) while the sums already hold a finished backward starts them afresh.
So the statistics of a step whose ``optimizer.step()`` never came (GradScaler skips a step with
inf/NaN gradients) never leak into the next step's sums.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

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


def snr_from_moments(
    s1: Tensor, s2: Tensor, count: int, out: Tensor | None = None, scratch: Tensor | None = None
) -> Tensor:
    """snr_k = B * mean_k**2 / var_k with the unbiased variance of the individual gradients.

    Equals S1**2 / (B * var) where var = (S2 - S1**2 / B) / (B - 1), clamped at 0 against round-off.
    Zero variance gives 0 where S1 = 0 (no signal at all) and :data:`SNR_CAP` otherwise.
    ``out`` and ``scratch`` (tensors of the weight's shape) avoid fresh allocations on the hot path.
    """
    if count < 2:
        raise ValueError(
            f"the gradient SNR needs at least 2 samples per statistic (got B={count}): "
            "the variance of individual gradients is undefined for one sample; use a batch size >= 2"
        )
    # B * mean**2 / var = (B - 1) / B * S1**2 / (S2 - S1**2 / B), in seven passes over the entries.
    s1_sq = torch.mul(s1, s1, out=out)
    denominator = torch.addcmul(s2, s1, s1, value=-1.0 / count, out=scratch).clamp_min_(0.0)
    snr = s1_sq.div_(denominator).mul_((count - 1) / count)  # 0/0 -> nan (no signal), c/0 -> inf
    return snr.nan_to_num_(nan=0.0, posinf=SNR_CAP).clamp_max_(SNR_CAP)


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
    pass contributes one "sample" set per application. S1 is taken from the weight's gradient, so a
    loss term that touches the weight directly (an L2 penalty in the loss) enters S1 but not S2: use
    the optimizer's weight decay instead. While ``enabled`` is False no hook is attached,
    so collecting nothing costs nothing.
    """

    def __init__(
        self,
        model: nn.Module,
        include: NameFilter = None,
        exclude: NameFilter = None,
        enabled: bool = True,
        process_group: Any = None,
    ) -> None:
        self.layers: list[PrunableLayer] = find_prunable_layers(model, include, exclude)
        #: The torch.distributed group :meth:`all_reduce` sums over (None: the default group).
        self.process_group = process_group
        # Persistent buffers: fresh big tensors every step cost page faults that rival the arithmetic.
        # Where all layers share device and dtype, S1, S2 and the counts are views of one flat
        # tensor, so that the all-reduce is one call on it without copies.
        self._flat: Tensor | None = None
        self._flat_counts: Tensor | None = None
        self._s1: dict[str, Tensor] = {}
        self._s2: dict[str, Tensor] = {}
        self._scratch: dict[str, Tensor] = {}
        self._count: dict[str, int] = {}
        self._has_s1: set[str] = set()
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
            for layer in self.layers:
                self._handles.append(layer.module.register_forward_hook(functools.partial(self._on_forward, layer)))
                self._handles.append(layer.weight.register_hook(functools.partial(self._on_weight_grad, layer)))
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

    @staticmethod
    def _dtype(layer: PrunableLayer) -> torch.dtype:
        return torch.promote_types(layer.weight.dtype, torch.float32)  # float32 at least (bf16/fp16 weights)

    def _allocate_flat(self) -> None:
        kinds = {(layer.weight.device, self._dtype(layer)) for layer in self.layers}
        if len(kinds) != 1:
            return  # mixed devices or dtypes: per-layer buffers, packed for the all-reduce
        device, dtype = kinds.pop()
        n = sum(layer.weight.numel() for layer in self.layers)
        self._flat = torch.zeros(2 * n + len(self.layers), dtype=dtype, device=device)
        offset = 0
        for buffers in (self._s1, self._s2):
            for layer in self.layers:
                size = layer.weight.numel()
                buffers[layer.name] = self._flat[offset : offset + size].view(layer.weight.shape)
                offset += size
        self._flat_counts = self._flat[offset:]

    def _buffer(self, buffers: dict[str, Tensor], layer: PrunableLayer) -> Tensor:
        buf = buffers.get(layer.name)
        if buf is None and self._flat is None:
            self._allocate_flat()
            buf = buffers.get(layer.name)
        if buf is None:
            buf = buffers[layer.name] = torch.zeros(layer.weight.shape, dtype=self._dtype(layer), device=layer.weight.device)
        return buf

    def _on_output_grad(self, layer: PrunableLayer, x: Tensor, delta: Tensor) -> None:
        if layer.name in self._has_s1 and layer.weight.grad is None:
            # The sums hold a finished backward but the gradient has been cleared since: its step
            # never came (e.g. skipped by GradScaler). They belong to no step; start afresh.
            self.reset()
        with torch.no_grad():
            out = self._buffer(self._s2, layer)
            seen = self._count.get(layer.name, 0)
            layer.moments.sum_sq(layer.module, x.to(out.dtype), delta.to(out.dtype), out, accumulate=seen > 0)
            self._count[layer.name] = seen + x.shape[0]

    def _on_weight_grad(self, layer: PrunableLayer, grad: Tensor) -> None:
        # S1 = sum_i g_i is this backward call's gradient of the weight: no extra work needed.
        with torch.no_grad():
            out = self._buffer(self._s1, layer)
            if layer.name in self._has_s1:
                out.add_(grad)
            else:
                out.copy_(grad)
                self._has_s1.add(layer.name)

    # -- results ---------------------------------------------------------------------------------
    @property
    def count(self) -> int:
        """Samples seen since the last reset (the B of the statistics)."""
        return max(self._count.values(), default=0)

    def moments(self) -> dict[str, Moments]:
        """The raw sums per parameter name, S1, S2 and B, accumulated since the last reset.

        The tensors are the collector's buffers, overwritten after the next reset: clone to keep.
        """
        if not self._count:
            raise RuntimeError(
                "no gradient statistics collected yet: run loss.backward() while the statistics are enabled"
            )
        missing = sorted(set(self._count) - self._has_s1)
        if missing:
            raise RuntimeError(f"no weight gradient reached {missing}: compute the statistics with loss.backward()")
        return {name: Moments(self._s1[name], self._s2[name], count) for name, count in self._count.items()}

    def snr(self, out: dict[str, Tensor] | None = None) -> dict[str, Tensor]:
        """Per-weight mini-batch gradient SNR, ``{parameter name: tensor of the weight's shape}``.

        With ``out`` (a dict of tensors of the weights' shapes, e.g. a previous result), the values
        are written into those tensors instead of fresh ones.
        """
        result = {}
        for name, m in self.moments().items():
            scratch = self._scratch.get(name)
            if scratch is None:
                scratch = self._scratch[name] = torch.empty_like(m.sum)
            result[name] = snr_from_moments(m.sum, m.sum_sq, m.count, None if out is None else out.get(name), scratch)
        return result

    def reset(self) -> None:
        """Forgets the collected sums (hooks and buffers stay). Tensors from moments() are reused."""
        self._count = {}
        self._has_s1 = set()

    def all_reduce(self, group: Any = None) -> None:
        """Sums S1, S2 and B over the processes of ``group`` (default: ``process_group``) in one call.

        Collective: every rank of the group must call it, also a rank that saw no sample. Layers a
        rank did not reach count as zeros there. Counts travel in the buffer's float dtype, exact
        up to 2**24 samples per statistics step in float32.
        """
        import torch.distributed as dist

        group = self.process_group if group is None else group
        if self._flat is None and not self._s1:
            self._allocate_flat()
        with torch.no_grad():
            for layer in self.layers:  # a layer without this step's sums contributes zeros
                name = layer.name
                if name not in self._has_s1:
                    self._buffer(self._s1, layer).zero_()
                if name not in self._count:
                    self._buffer(self._s2, layer).zero_()
            counts = [float(self._count.get(layer.name, 0)) for layer in self.layers]
            if self._flat is not None:
                self._flat_counts.copy_(torch.tensor(counts, dtype=self._flat.dtype))
                dist.all_reduce(self._flat, group=group)
                counts = self._flat_counts.tolist()
            else:
                counts = self._all_reduce_packed(counts, group)
        self._count = {layer.name: round(c) for layer, c in zip(self.layers, counts) if c > 0}
        self._has_s1 = set(self._count)

    def _all_reduce_packed(self, counts: list[float], group: Any) -> list[float]:
        """Layers of mixed devices/dtypes: pack everything into one float64 tensor per call."""
        import torch.distributed as dist

        s1 = [self._s1[layer.name] for layer in self.layers]
        s2 = [self._s2[layer.name] for layer in self.layers]
        device = s1[0].device
        flat = torch.cat([t.reshape(-1).to(device, torch.float64) for t in s1 + s2] + [torch.tensor(counts, dtype=torch.float64, device=device)])
        dist.all_reduce(flat, group=group)
        offset = 0
        for t in s1 + s2:
            t.copy_(flat[offset : offset + t.numel()].view(t.shape))
            offset += t.numel()
        return flat[offset:].tolist()

