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
import math
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils._pytree import tree_flatten, tree_unflatten

from .layers import (
    OTHER_METHODS,
    PER_SAMPLE_BUDGET,
    Call,
    LayerMoments,
    NameFilter,
    NotExact,
    PrunableLayer,
    Use,
    find_prunable_layers,
    replaying,
    rng_state,
    snr_refusals,
)

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
    """Collects exact per-weight gradient moments of a model's prunable weights during backward.

    Example::

        stats = GradientStats(model)
        loss_fn(model(x), y).backward()
        snr = stats.snr()          # {"fc1.weight": tensor of fc1.weight's shape, ...}
        stats.reset()

    Per-sample terms come from what each module saw (see :mod:`snrprune.layers`): a forward hook
    records the call, a hook on its outputs receives their gradients, and the module type's
    extractor turns both into *uses* of its weights. S1 is taken from the weight's gradient.

    Rules, all exact under the definition g_i = sample i's contribution to the batch gradient:

    - A weight used several times between two backward calls (a tied weight, a module called twice,
      a recurrent cell called once per time step) sums each sample's gradient over the uses before
      squaring. The uses are paired sample by sample (row i of every use is sample i), so two forward
      passes over *different* micro-batches must each get their own ``backward()`` (gradient
      accumulation), as usual. Uses with different batch sizes are an error.
    - A weight that gets no statistics in a backward call (its module did not run, or its output did
      not reach the loss) has a zero gradient for that call's samples: S1 and S2 get nothing, B gets
      the call's batch size, so a weight without statistics on a whole step has SNR 0 (no signal), as
      any weight whose gradient is zero. The first time this happens to a weight is a warning naming it.
    - A weight whose gradient arrives without per-sample terms (used outside its module's forward)
      is an error, raised from ``backward()``; so is a module that sees a batch of one while the
      step's batch is larger (its output is broadcast over the samples, e.g. position embeddings).
    - On the first backward call of each weight, the per-sample terms are checked to add up to its
      gradient; if they do not (a loss term on the weight itself, e.g. an L2 penalty, or a use that
      bypasses the module) a warning names it. Use the optimizer's weight decay instead of an L2 term.

    With cross-sample layers in training mode (BatchNorm), g_i is sample i's contribution to the batch
    gradient; the g_i still sum to the batch gradient. While ``enabled`` is False no hook is attached,
    so collecting nothing costs nothing. ``snr`` cannot replay some modules exactly (an RNN with
    dropout between layers): the constructor refuses them, naming the weights and the methods that
    can prune them.

    ``sum_from_grad=True`` (what :class:`~snrprune.SNRPruning` uses without torch.distributed) keeps
    no S1 buffer: S1 is the gradient autograd accumulates into ``weight.grad`` anyway, so
    :meth:`moments` reads it from there (4 bytes less per weight). During backward a small *witness*
    per weight is kept instead (its gradient's values at a few fixed entries, among them the largest
    and the smallest of the step's first gradient, and the sum of all its entries): if the gradient
    still matches it when the moments are read, S1 is ``weight.grad`` itself; if it was rescaled
    uniformly since (``clip_grad_norm_``, ``GradScaler.unscale_``), S1 is ``weight.grad`` divided by the
    factor, computed one weight at a time when that weight's moments are read. Any other change
    (``clip_grad_value_``, a gradient edited or set to None before ``optimizer.step()``) is a warning:
    that step's statistics are dropped (:meth:`moments` is empty) and S1 is kept in its own buffer
    from the next backward on. Weights that are not float32/float64, or whose gradient is sparse, keep
    their S1 buffer. Not with :meth:`all_reduce`: DDP replaces the local gradient by the processes'
    mean, so under torch.distributed S1 keeps its buffer (an ``all_reduce`` on statistics without it
    drops that step's statistics with a warning and stores S1 from then on).
    """

    def __init__(
        self,
        model: nn.Module,
        include: NameFilter = None,
        exclude: NameFilter = None,
        enabled: bool = True,
        process_group: Any = None,
        *,
        layers: list[PrunableLayer] | None = None,
        sum_from_grad: bool = False,
    ) -> None:
        # ``layers``: a selection already made (a pruner's), instead of selecting again
        self.layers: list[PrunableLayer] = find_prunable_layers(model, include, exclude) if layers is None else list(layers)
        refused = snr_refusals(self.layers)
        if refused:
            raise ValueError(
                f"snr cannot compute exact per-sample gradient statistics for {', '.join(refused)}; prune these weights "
                f"with {OTHER_METHODS}, or exclude them (exclude=[...], --exclude-layers PATTERN)"
            )
        #: The torch.distributed group :meth:`all_reduce` sums over (None: the default group).
        self.process_group = process_group
        self._by_name = {layer.name: layer for layer in self.layers}
        # the hooked modules: (module, extractor, {path of a selected weight in it: its layer})
        modules: dict[tuple[int, int], _Hooked] = {}
        for layer in self.layers:
            for use in layer.uses:
                key = (id(use.module), id(use.moments))
                if key not in modules:
                    modules[key] = _Hooked(use.module, use.moments, {})
                modules[key].paths[use.path] = layer
        self._modules = list(modules.values())
        # Persistent buffers: fresh big tensors every step cost page faults that rival the arithmetic.
        # Where all layers share device and dtype, S1, S2 and the counts are views of one flat
        # tensor, so that the all-reduce is one call on it without copies.
        self._flat: Tensor | None = None
        self._flat_counts: Tensor | None = None
        self._s1: dict[str, Tensor] = {}
        self._s2: dict[str, Tensor] = {}
        # weights whose S1 is read from weight.grad (sum_from_grad), checked against a witness per step
        self._from_grad: set[str] = {layer.name for layer in self.layers if _grad_is_sum(layer)} if sum_from_grad else set()
        self._witness: dict[str, _Witness] = {}
        self._dropped = False  # this step's statistics were dropped (the gradient changed non-uniformly)
        self._flat_s1 = False  # whether the flat buffer holds S1 of every layer
        self._scratch: dict[str, Tensor] = {}
        # the step's sums: per weight the samples with per-sample terms, S1 arrived; the step's samples
        self._count: dict[str, int] = {}
        self._has_s1: set[str] = set()
        self._samples = 0
        self._seen_samples: dict[str, int] = {}
        # the current backward call
        self._task: int | None = None
        self._calls: dict[str, int] = {}  # forward calls that used each weight since the last backward
        self._stash: dict[str, list[Use]] = {}  # uses of weights used several times, reduced at the end
        self._bw_batch: dict[str, int] = {}
        self._bw_grad: set[str] = set()
        self._rng: dict[int, Any] = {}
        # the one-time check that the per-sample terms add up to the gradient
        self._verified: set[str] = set()
        self._verify_uses: dict[str, Tensor] = {}
        self._verify_grad: dict[str, Tensor] = {}
        self._verify_eps: dict[str, float] = {}  # the precision the weight's products ran in
        self._warned_missing: set[str] = set()
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
            for hooked in self._modules:
                module, moments = hooked.module, hooked.moments
                if type(moments).wants_rng is not LayerMoments.wants_rng:
                    self._handles.append(module.register_forward_pre_hook(functools.partial(self._on_pre_forward, hooked)))
                if moments.needs_kwargs:
                    hook = functools.partial(self._on_call, hooked)
                    self._handles.append(module.register_forward_hook(hook, with_kwargs=True))
                else:
                    self._handles.append(module.register_forward_hook(functools.partial(self._on_forward, hooked)))
            for layer in self.layers:
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

    # -- forward: record the calls ---------------------------------------------------------------
    def _count_call(self, hooked: _Hooked) -> None:
        for layer in hooked.paths.values():
            self._calls[layer.name] = self._calls.get(layer.name, 0) + 1

    def _on_forward(self, hooked: _Hooked, module: nn.Module, inputs: tuple, output: Tensor) -> None:
        """Simple modules (y = op(x, weight)): keep x, wait for the output's gradient."""
        if replaying() or not (torch.is_grad_enabled() and isinstance(output, Tensor) and output.requires_grad):
            return
        self._count_call(hooked)
        output.register_hook(functools.partial(self._on_output_grad, hooked, inputs[0].detach()))

    def _on_output_grad(self, hooked: _Hooked, x: Tensor, delta: Tensor) -> None:
        self._take(hooked, {"weight": [Use(hooked.moments, hooked.module, x, delta)]})

    def _on_pre_forward(self, hooked: _Hooked, module: nn.Module, args: tuple) -> None:
        if not replaying() and torch.is_grad_enabled() and hooked.moments.wants_rng(module):
            device = next(iter(hooked.paths.values())).weight.device
            self._rng[id(module)] = rng_state(device)

    def _on_call(self, hooked: _Hooked, module: nn.Module, args: tuple, kwargs: dict, output: Any) -> Any:
        """Modules with several outputs or hidden products: keep the call, wait for all output gradients."""
        rng = self._rng.pop(id(module), None)
        if replaying() or not torch.is_grad_enabled():
            return
        leaves, spec = tree_flatten(output)
        positions = [k for k, t in enumerate(leaves) if isinstance(t, Tensor)]
        outputs = [leaves[k] for k in positions]
        positions = [n for n, t in enumerate(outputs) if t.requires_grad]
        if not positions:
            return
        self._count_call(hooked)
        call = Call(_detached(args), _detached(kwargs), [t.detach() for t in outputs], rng)
        replaced = None
        if len(positions) > 1:
            # One output may be computed from another inside the module (LSTMCell's h from c): a hook on
            # the output itself would see the gradient through that internal path too. The module's
            # caller gets aliases instead, whose gradients come from outside the module only.
            aliases = {id(t): t.view_as(t) for t in outputs if t.requires_grad}
            leaves = [aliases.get(id(t), t) if isinstance(t, Tensor) else t for t in leaves]
            outputs = [aliases.get(id(t), t) for t in outputs]
            replaced = tree_unflatten(leaves, spec)
        needed = [outputs[n] for n in positions]

        def on_grads(grads: Sequence[Tensor | None]) -> None:
            full: list[Tensor | None] = [None] * len(outputs)
            for k, g in zip(positions, grads):
                full[k] = g
            self._take(hooked, hooked.moments.uses(module, call, full, set(hooked.paths)))

        if len(needed) == 1:
            needed[0].register_hook(lambda grad: on_grads([grad]))
            return None
        torch.autograd.graph.register_multi_grad_hook(needed, on_grads)
        return replaced

    # -- backward: reduce the uses to S2 ---------------------------------------------------------
    def _begin(self) -> None:
        """Called from every hook: the first one of a backward call queues its end."""
        task = torch._C._current_graph_task_id()
        if task == self._task:
            return
        if self._task is not None:  # a backward call that never finished (it raised): drop its leftovers
            calls = self._calls  # ... but the calls belong to the forward of this backward
            self._clear_backward()
            self._calls = calls
        self._task = task
        torch.autograd.Variable._execution_engine.queue_callback(self._end_backward)

    def _clear_backward(self) -> None:
        self._task = None
        self._calls, self._stash, self._bw_batch, self._bw_grad = {}, {}, {}, set()
        self._verify_uses, self._verify_grad = {}, {}

    def _take(self, hooked: _Hooked, uses: dict[str, list[Use]]) -> None:
        self._begin()
        with torch.no_grad():
            for path, use_list in uses.items():
                layer = hooked.paths[path]
                name = layer.name
                if name in self._has_s1 and name not in self._bw_grad and layer.weight.grad is None:
                    # The sums hold a finished backward but the gradient has been cleared since: its step
                    # never came (e.g. skipped by GradScaler). They belong to no step; start afresh.
                    self.reset()
                if self._calls.get(name, 0) <= 1 and name not in self._stash:
                    self._reduce(layer, use_list)
                else:  # more uses of this weight may come in this backward call
                    self._stash.setdefault(name, []).extend(use_list)

    def _reduce(self, layer: PrunableLayer, uses: list[Use]) -> None:
        name = layer.name
        batches = sorted({use.batch for use in uses})
        if len(batches) > 1:
            raise NotExact(
                f"{name} is used with batch sizes {batches} in one backward call; its per-sample statistics pair the "
                f"uses sample by sample. Prune it with {OTHER_METHODS}, or exclude it"
            )
        batch = batches[0]
        out = self._buffer(self._s2, layer)
        accumulate = self._count.get(name, 0) > 0
        if len(uses) == 1 and uses[0].rows is None:
            uses[0].sum_sq(out, accumulate)
        elif _disjoint(uses):
            if not accumulate:
                out.zero_()
            for use in uses:
                use.sum_sq(out[use.rows], True)
        else:
            self._combine(layer, uses, out, accumulate, batch)
        self._count[name] = self._count.get(name, 0) + batch
        self._bw_batch[name] = self._bw_batch.get(name, 0) + batch
        if name not in self._verified:
            total = self._verify_uses.get(name)
            if total is None:
                total = self._verify_uses[name] = torch.zeros_like(out)
            eps = self._verify_eps.get(name, torch.finfo(layer.weight.dtype).eps)
            for use in uses:  # the coarsest dtype the products ran in (bf16 under autocast)
                for t in (use.x, use.delta):
                    if isinstance(t, Tensor) and t.is_floating_point():
                        eps = max(eps, torch.finfo(t.dtype).eps)
            self._verify_eps[name] = eps
            try:
                for use in uses:
                    target = total if use.rows is None else total[use.rows]
                    target.add_(use.grad_sum(out.dtype).view_as(target))
            except NotImplementedError:  # an extractor of a user's own that only computes S2: not checked
                self._verified.add(name)
                del self._verify_uses[name]

    def _combine(self, layer: PrunableLayer, uses: list[Use], out: Tensor, accumulate: bool, batch: int) -> None:
        """S2 of a weight used several times: per-sample gradients summed over the uses, then squared."""
        if not accumulate:
            out.zero_()
        chunk = max(1, PER_SAMPLE_BUDGET // out.numel())
        for start in range(0, batch, chunk):
            stop = min(batch, start + chunk)
            g = torch.zeros((stop - start, *out.shape), dtype=out.dtype, device=out.device)
            for use in uses:
                try:
                    part = use.per_sample(start, stop, out.dtype)
                except NotImplementedError as error:
                    raise NotExact(f"{layer.name}: {error}; prune it with {OTHER_METHODS}, or exclude it") from error
                (g if use.rows is None else g[:, use.rows]).add_(part.view(stop - start, *(out.shape if use.rows is None else out[use.rows].shape)))
            out += g.square_().sum(0)

    def _on_weight_grad(self, layer: PrunableLayer, grad: Tensor) -> None:
        # S1 = sum_i g_i is this backward call's gradient of the weight: no extra work needed.
        self._begin()
        with torch.no_grad():
            name = layer.name
            if name in self._from_grad and grad.is_sparse:
                self._fall_back(name, "its gradient is sparse")
            if grad.is_sparse:
                grad = grad.to_dense()
            if name in self._from_grad:  # S1 is weight.grad itself: keep only its witness
                witness = self._witness.get(name)
                if name in self._has_s1 and witness is not None:
                    witness.add(grad)
                else:
                    self._witness[name] = _Witness(grad)
                    self._has_s1.add(name)
            else:
                out = self._buffer(self._s1, layer)
                if name in self._has_s1:
                    out.add_(grad)
                else:
                    out.copy_(grad)
                    self._has_s1.add(name)
            self._bw_grad.add(name)
            if name not in self._verified:
                previous = self._verify_grad.get(name)
                self._verify_grad[name] = grad.detach().clone() if previous is None else previous.add_(grad)

    def _end_backward(self) -> None:
        """The end of a backward call: reduce the stashed uses, check, count the call's samples."""
        with torch.no_grad():
            for name, uses in self._stash.items():
                self._reduce(self._by_name[name], uses)
            batch = max(self._bw_batch.values(), default=0)
            bypassed = sorted(self._bw_grad - set(self._bw_batch))
            broadcast = sorted(name for name, b in self._bw_batch.items() if b == 1 and batch > 1)
            self._verify()
            self._samples += batch
            for name in self._bw_batch:
                self._seen_samples[name] = self._seen_samples.get(name, 0) + batch
            self._clear_backward()
        if bypassed:
            raise NotExact(
                f"{', '.join(bypassed)} received a gradient but no per-sample statistics: the weight is used outside the "
                f"forward of {self._module_names(bypassed)} (e.g. by its parent's code, F.linear(x, module.weight)), so "
                f"snr cannot compute its SNR; prune it with {OTHER_METHODS}, or exclude it"
            )
        if broadcast:
            raise NotExact(
                f"{', '.join(broadcast)}: {self._module_names(broadcast)} saw a batch of 1 while this backward's batch has "
                f"{batch} samples: its output is broadcast over the samples (e.g. position embeddings), so its per-sample "
                f"gradients are unknown; prune it with {OTHER_METHODS}, or exclude it"
            )

    def _module_names(self, names: list[str]) -> str:
        modules = [use.module_name or type(use.module).__name__ for n in names for use in self._by_name[n].uses]
        return ", ".join(dict.fromkeys(modules))

    def _verify(self) -> None:
        """The first time: do a weight's per-sample terms add up to its gradient?"""
        for name in set(self._verify_uses) & set(self._verify_grad):
            uses, grad = self._verify_uses[name], self._verify_grad[name].to(self._verify_uses[name].dtype)
            self._verified.add(name)
            scale = max(float(grad.abs().max()), float(uses.abs().max()))
            tol = max(self._verify_eps.get(name, 0.0), torch.finfo(uses.dtype).eps, torch.finfo(grad.dtype).eps) ** 0.5 * scale
            difference = float((uses - grad).abs().max())
            if difference > tol:
                warnings.warn(
                    f"the per-sample gradients of {name} do not add up to its gradient (largest difference {difference:.3g}, "
                    f"largest entry {scale:.3g}): part of its gradient does not come through the forward of "
                    f"{self._module_names([name])}, e.g. a loss term on the weight itself (an L2 penalty: use the "
                    "optimizer's weight_decay instead) or a use that bypasses the module; its SNR misses that part",
                    stacklevel=2,
                )

    # -- buffers ---------------------------------------------------------------------------------
    @staticmethod
    def _dtype(layer: PrunableLayer) -> torch.dtype:
        return torch.promote_types(layer.weight.dtype, torch.float32)  # float32 at least (bf16/fp16 weights)

    def _allocate_flat(self) -> None:
        kinds = {(layer.weight.device, self._dtype(layer)) for layer in self.layers}
        if len(kinds) != 1:
            return  # mixed devices or dtypes: per-layer buffers, packed for the all-reduce
        device, dtype = kinds.pop()
        with_s1 = [layer for layer in self.layers if layer.name not in self._from_grad]  # the others read weight.grad
        n1 = sum(layer.weight.numel() for layer in with_s1)
        n = sum(layer.weight.numel() for layer in self.layers)
        self._flat = torch.zeros(n1 + n + len(self.layers), dtype=dtype, device=device)
        self._flat_s1 = len(with_s1) == len(self.layers)
        offset = 0
        for buffers, layers in ((self._s1, with_s1), (self._s2, self.layers)):
            for layer in layers:
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

    # -- results ---------------------------------------------------------------------------------
    @property
    def count(self) -> int:
        """Samples seen since the last reset (the B of the statistics)."""
        return max(self._samples, max(self._count.values(), default=0))

    def _counts(self, warn: bool) -> dict[str, int]:
        """B per weight, with the zero-gradient rule for the backward calls a weight missed (sums zeroed)."""
        counts = {}
        for layer in self.layers:
            name = layer.name
            own = self._count.get(name, 0)
            counts[name] = own + self._samples - self._seen_samples.get(name, 0)
            if own == 0:
                if name not in self._from_grad:  # from the gradient: S1 is the zeroed S2 (see _LazyMoments)
                    self._buffer(self._s1, layer).zero_()
                self._buffer(self._s2, layer).zero_()
                if warn and counts[name] and name not in self._warned_missing:
                    self._warned_missing.add(name)
                    warnings.warn(
                        f"no gradient statistics reached {name} on this step (its module did not run, or its output did "
                        "not reach the loss): it counts as a zero gradient for the step's samples, SNR 0 (no signal); "
                        "warned once per weight",
                        stacklevel=3,
                    )
        return counts

    def moments(self) -> Mapping[str, Moments]:
        """The raw sums per parameter name, S1, S2 and B, accumulated since the last reset.

        Every selected weight has an entry: one that got no statistics in some backward call has a
        zero gradient for that call's samples (see the class docstring). The tensors are the
        collector's buffers, overwritten after the next reset: clone to keep. With ``sum_from_grad``,
        S1 is ``weight.grad`` itself (do not modify it), or, where the gradient was rescaled since the
        backward, a fresh tensor made when that entry is read; the mapping is empty when this step's
        statistics were dropped (the gradient changed otherwise; see the class docstring).
        """
        if not self.count:
            raise RuntimeError(
                "no gradient statistics collected yet: run loss.backward() while the statistics are enabled"
            )
        missing = sorted(set(self._count) - self._has_s1)
        if missing:
            raise RuntimeError(f"no weight gradient reached {missing}: compute the statistics with loss.backward()")
        counts = self._counts(warn=True)
        factors = self._grad_factors()
        if factors is None:
            return _LazyMoments({}, {}, {}, {})
        sums = {name: self._s1[name] for name in counts if name not in self._from_grad}
        grads = {name: self._by_name[name].weight.grad for name in factors}
        return _LazyMoments(counts, {name: self._s2[name] for name in counts}, sums, grads, factors)

    def _grad_factors(self) -> dict[str, float | None] | None:
        """Per weight whose S1 is read from its gradient: None if the gradient is the backward's sum as
        it came, else the uniform factor it was rescaled by since; None for all if the step is dropped."""
        if self._dropped:
            return None
        factors: dict[str, float | None] = {}
        for name in [layer.name for layer in self.layers if layer.name in self._from_grad]:
            if self._count.get(name, 0) == 0:
                factors[name] = 0.0  # no statistics on this step: S1 = 0 (the zeroed S2 buffer)
                continue
            witness, grad = self._witness.get(name), self._by_name[name].weight.grad
            if witness is None or grad is None:
                reason = "its gradient is None (cleared before optimizer.step())" if grad is None else "it has no witness"
                self._fall_back(name, reason)
                return None
            factor, reason = witness.factor(grad)
            if reason is not None:
                self._fall_back(name, reason)
                return None
            factors[name] = factor
        return factors

    def _fall_back(self, name: str, reason: str) -> None:
        """S1 cannot be read from the gradients: drop this step's statistics, store S1 from now on."""
        warnings.warn(
            f"snr reads S1 from the gradient; it was changed non-uniformly between backward and optimizer.step() "
            f"({name}: {reason}): statistics of this step dropped, S1 kept in its own buffer from now on",
            stacklevel=3,
        )
        self._from_grad = set()
        self._witness = {}
        self._dropped = True

    def _free_s2(self, name: str) -> Tensor | None:
        """The S2 buffer of a weight while the statistics hold no sums (between a reset and the next
        backward; the next backward overwrites it), else None: a scratch buffer for the caller."""
        if self.count or self._has_s1 or self._count or self._stash or self._task is not None:
            return None
        return self._s2.get(name)

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
        self._samples = 0
        self._seen_samples = {}
        self._witness = {}
        self._dropped = False

    def all_reduce(self, group: Any = None) -> None:
        """Sums S1, S2 and B over the processes of ``group`` (default: ``process_group``) in one call.

        Collective: every rank of the group must call it, also a rank that saw no sample. Layers a
        rank did not reach count as zero gradients for its samples. Counts travel in the buffer's
        float dtype, exact up to 2**24 samples per statistics step in float32.
        """
        import torch.distributed as dist

        group = self.process_group if group is None else group
        if self._from_grad:  # S1 summed over processes needs its own buffer: DDP replaces weight.grad by the mean
            self._fall_back(", ".join(sorted(self._from_grad)), "the statistics are summed over processes (all_reduce)")
            self.reset()  # every rank drops the step alike: the collective below sums zeros
        if self._flat is None and not self._s1:
            self._allocate_flat()
        with torch.no_grad():
            local = self._counts(warn=False)  # zero-fills the weights without statistics
            counts = [float(local[layer.name]) for layer in self.layers]
            if self._flat is not None and self._flat_s1:
                self._flat_counts.copy_(torch.tensor(counts, dtype=self._flat.dtype))
                dist.all_reduce(self._flat, group=group)
                counts = self._flat_counts.tolist()
            else:
                counts = self._all_reduce_packed(counts, group)
        self._count = {layer.name: round(c) for layer, c in zip(self.layers, counts) if c > 0}
        self._has_s1 = set(self._count)
        self._samples, self._seen_samples = 0, {}

    def _all_reduce_packed(self, counts: list[float], group: Any) -> list[float]:
        """Layers of mixed devices/dtypes: pack everything into one float64 tensor per call."""
        import torch.distributed as dist

        s1 = [self._buffer(self._s1, layer) for layer in self.layers]
        s2 = [self._buffer(self._s2, layer) for layer in self.layers]
        device = s1[0].device
        flat = torch.cat([t.reshape(-1).to(device, torch.float64) for t in s1 + s2] + [torch.tensor(counts, dtype=torch.float64, device=device)])
        dist.all_reduce(flat, group=group)
        offset = 0
        for t in s1 + s2:
            t.copy_(flat[offset : offset + t.numel()].view(t.shape))
            offset += t.numel()
        return flat[offset:].tolist()


#: Entries of a gradient its witness keeps, evenly spaced (plus its largest and smallest entry).
WITNESS_ENTRIES = 64
#: Relative agreement of a rescaled gradient with its witness (the factor, the sum of all entries).
WITNESS_RTOL = 1e-5


def _grad_is_sum(layer: PrunableLayer) -> bool:
    """Whether the weight's .grad holds exactly what S1 would: a dense gradient in S1's own dtype."""
    weight = layer.weight
    sparse = any(getattr(use.module, "sparse", False) is True for use in layer.uses)
    return weight.numel() > 0 and weight.dtype in (torch.float32, torch.float64) and not sparse


class _Witness:
    """What a weight's gradient was at the end of the step's backward calls, to recognise it later: its
    values at fixed entries (summed over the calls as autograd sums the gradient, so bit for bit equal),
    the sum of all its entries and of their magnitudes (0-dim tensors: no device sync in backward)."""

    def __init__(self, grad: Tensor) -> None:
        flat = grad.detach().reshape(-1)
        n = flat.numel()
        k = min(WITNESS_ENTRIES, n)
        even = torch.arange(k, device=flat.device) * n // k
        self.index = torch.cat([even, torch.max(flat, 0).indices.view(1), torch.min(flat, 0).indices.view(1)])
        self.values = torch.take(flat, self.index)
        # float32 sums accumulated in float64 (a float64 sum of the gradient would copy it to float64)
        self.total = flat.sum().to(torch.float64)
        self.magnitude = torch.linalg.vector_norm(flat, 1).to(torch.float64)
        self.calls = 1

    def add(self, grad: Tensor) -> None:
        self.values += torch.take(grad.detach(), self.index)
        self.total += grad.sum()
        self.magnitude += torch.linalg.vector_norm(grad, 1)
        self.calls += 1

    def factor(self, grad: Tensor) -> tuple[float | None, str | None]:
        """(None, None): ``grad`` is the backward's sum unchanged; (f, None): ``grad`` = f * that sum,
        uniformly; (None, reason): changed otherwise, or the change cannot be determined."""
        with torch.no_grad():
            if grad.is_sparse:
                return None, "its gradient is sparse"
            now = torch.take(grad, self.index)
            total, magnitude = float(grad.sum()), float(torch.linalg.vector_norm(grad, 1))
        was_total, was_magnitude = float(self.total), float(self.magnitude)
        if now.dtype != self.values.dtype:
            return None, "its gradient changed dtype"
        if torch.equal(now, self.values):
            factor = 1.0
        else:
            values = self.values.double()
            j = int(values.abs().argmax())
            if float(values[j]) == 0.0:
                return None, "the change cannot be determined (the gradient was zero at all the entries checked)"
            factor = float(now[j]) / float(values[j])
            if not (math.isfinite(factor) and factor > 0.0):
                return None, f"its entries were scaled by {factor:.3g}"
            if not torch.all((now.double() - factor * values).abs() <= WITNESS_RTOL * factor * values.abs()):
                return None, "its entries were not all scaled by the same factor"
        tol = WITNESS_RTOL * factor * was_magnitude
        if not math.isfinite(total) or abs(total - factor * was_total) > tol:
            return None, "the sum of its entries does not match"
        if self.calls == 1 and abs(magnitude - factor * was_magnitude) > tol:  # |g| sums only add up without accumulation
            return None, "the sum of its entries' magnitudes does not match"
        return (None if factor == 1.0 else factor), None


class _LazyMoments(Mapping):
    """The moments of :meth:`GradientStats.moments`: S1 from the stored buffer or from ``weight.grad``,
    divided by its rescaling factor only when the entry is read (one weight's temporary at a time)."""

    def __init__(
        self,
        counts: dict[str, int],
        sums_sq: dict[str, Tensor],
        sums: dict[str, Tensor],
        grads: dict[str, Tensor],
        factors: dict[str, float | None] | None = None,
    ) -> None:
        self._counts, self._sums_sq, self._sums, self._grads, self._factors = counts, sums_sq, sums, grads, factors or {}

    def __len__(self) -> int:
        return len(self._counts)

    def __iter__(self) -> Iterator[str]:
        return iter(self._counts)

    def tensors(self, name: str) -> tuple[Tensor, Tensor]:
        """The tensors behind an entry, without computing it: (S1's buffer or the gradient, S2)."""
        if name in self._sums:
            return self._sums[name], self._sums_sq[name]
        if self._factors.get(name) == 0.0:
            return self._sums_sq[name], self._sums_sq[name]
        return self._grads[name], self._sums_sq[name]

    def __getitem__(self, name: str) -> Moments:
        count, s2 = self._counts[name], self._sums_sq[name]
        if name in self._sums:
            return Moments(self._sums[name], s2, count)
        factor = self._factors[name]
        if factor == 0.0:  # no statistics on this step: S1 = S2 = 0
            return Moments(s2, s2, count)
        grad = self._grads[name]
        return Moments(grad if factor is None else torch.div(grad, factor), s2, count)


@dataclass
class _Hooked:
    """A module whose calls are recorded: its extractor and the selected weights it uses, by path."""

    module: nn.Module
    moments: LayerMoments
    paths: dict[str, PrunableLayer]


def _disjoint(uses: list[Use]) -> bool:
    """Whether the uses cover disjoint row blocks (one use each), so that their S2 simply add up."""
    if any(use.rows is None for use in uses):
        return False
    spans = sorted((use.rows.start, use.rows.stop) for use in uses)
    return all(a[1] <= b[0] for a, b in zip(spans, spans[1:]))


def _detached(value: Any) -> Any:
    if isinstance(value, Tensor):
        return value.detach()
    if type(value) in (tuple, list):
        return type(value)(_detached(v) for v in value)
    if type(value) is dict:
        return {k: _detached(v) for k, v in value.items()}
    return value
