"""Per-layer-type knowledge: which weights are prunable and how each produces per-sample gradient sums.

A weight is prunable by what it is: a tensor of two or more dimensions that multiplies an input.
Every supported module type has one :class:`LayerMoments` object (its *extractor*, dispatched by type
as in BackPACK) that names the module's prunable weights and turns what the module saw in one call
(its inputs, and the gradient ``delta`` of its outputs) into *uses*: per weight, an input ``x`` and an
output-gradient ``delta`` of one product with (a block of rows of) the weight. From a use comes

    S2 = sum_i g_i**2

over the samples ``i`` of the mini-batch, where ``g_i`` is sample ``i``'s contribution to the weight
gradient. (S1 = sum_i g_i is the weight gradient itself, which autograd computes anyway.) Nothing is
computed with ``B`` separate backward passes.

=====================================  ======================================================  ========
module type                            weights                                                 default
=====================================  ======================================================  ========
``nn.Linear`` (and subclasses)         ``weight``                                              yes
``nn.Conv1d/2d/3d``                    ``weight``                                              yes
Hugging Face ``Conv1D`` (GPT-2)        ``weight``, stored [in, out]                            yes
``nn.MultiheadAttention``              ``in_proj_weight`` (or ``q/k/v_proj_weight``),          yes
                                       ``out_proj.weight``
``nn.RNN/LSTM/GRU``                    ``weight_ih_l*``, ``weight_hh_l*`` (``weight_hr_l*``)   yes
``nn.RNNCell/LSTMCell/GRUCell``        ``weight_ih``, ``weight_hh``                            yes
``nn.Embedding``                       ``weight``                                              opt-in
any other module                       its own parameters of two or more dimensions            opt-in
=====================================  ======================================================  ========

Opt-in weights, and tied weights (one tensor held by several modules), are pruned when an
``include`` pattern names them (see :func:`find_prunable_layers`). Norm parameters and biases never.

Where the module's own forward hides the products (``nn.MultiheadAttention`` runs its projections
inside ``F.multi_head_attention_forward``; ``nn.LSTM`` runs one fused kernel), the extractor replays
the module's forward once on the recorded inputs, with the products taken out where it can see them,
to get their output-gradients (``AttentionMoments``, ``RecurrentMoments``); the replay is checked
against the recorded output. Modules without an extractor use :class:`GenericMoments`: per-sample
vector-Jacobian products of the module's own forward with ``torch.func``, in chunks of the batch.
New layer types are supported by subclassing :class:`LayerMoments` and adding an entry to
:data:`MOMENTS`. The design is explained in ``docs/any-model.md``.
"""

from __future__ import annotations

import fnmatch
import inspect
import threading
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils import parametrize
from torch.utils._pytree import tree_flatten, tree_unflatten

# Per-sample gradients that must be materialised (convolutions, Linear on sequences, tied weights)
# are processed in chunks of the batch so that at most this many elements live at once (32 MiB in
# float32); a single sample's gradient is materialised even when it is larger.
PER_SAMPLE_BUDGET = 1 << 23

#: The methods that read only the applied gradient and so can prune what ``snr`` cannot.
OTHER_METHODS = "dpf or snr-auto (they read only the applied gradient)"

_replay = threading.local()


def replaying() -> bool:
    """True while an extractor replays a module's forward (statistics hooks ignore those calls)."""
    return getattr(_replay, "depth", 0) > 0


class _Replaying:
    def __enter__(self) -> None:
        _replay.depth = getattr(_replay, "depth", 0) + 1

    def __exit__(self, *exc: Any) -> None:
        _replay.depth -= 1


class NotExact(RuntimeError):
    """``snr`` cannot compute exact per-sample statistics for a weight (the message names it and the fix)."""


# ------------------------------------------------------------------------------------------------
# One call of a module, and the uses of a weight it contains
# ------------------------------------------------------------------------------------------------
@dataclass
class Call:
    """What a module saw in one forward call: its (detached) arguments, its tensor outputs, RNG state."""

    args: tuple
    kwargs: dict
    outputs: list[Tensor]
    rng: Any = None


class Use:
    """One product of the input ``x`` with (rows ``rows`` of) a weight, and its output-gradient ``delta``.

    ``primitive`` is the extractor whose ``sum_sq``/``per_sample``/``grad_sum`` do the arithmetic;
    ``x`` and ``delta`` have the batch in dimension 0.
    """

    __slots__ = ("primitive", "module", "x", "delta", "rows")

    def __init__(self, primitive: LayerMoments, module: nn.Module | None, x: Any, delta: Any, rows: slice | None = None):
        self.primitive, self.module, self.x, self.delta, self.rows = primitive, module, x, delta, rows

    @property
    def batch(self) -> int:
        return self.primitive.batch_size(self.x)

    def _cast(self, dtype: torch.dtype) -> tuple[Any, Any]:
        x = self.x.to(dtype) if self.primitive.float_input and isinstance(self.x, Tensor) else self.x
        delta = self.delta.to(dtype) if isinstance(self.delta, Tensor) else self.delta
        return x, delta

    def sum_sq(self, out: Tensor, accumulate: bool) -> None:
        x, delta = self._cast(out.dtype)
        self.primitive.sum_sq(self.module, x, delta, out, accumulate)

    def per_sample(self, start: int, stop: int, dtype: torch.dtype) -> Tensor:
        return self.primitive.use_per_sample(self, start, stop, dtype)

    def grad_sum(self, dtype: torch.dtype) -> Tensor:
        x, delta = self._cast(dtype)
        return self.primitive.grad_sum(self.module, x, delta)


def _rows(value: Any, start: int, stop: int) -> Any:
    return value[start:stop] if isinstance(value, Tensor) else value


def _chunk(numel: int) -> int:
    return max(1, PER_SAMPLE_BUDGET // max(1, numel))


# ------------------------------------------------------------------------------------------------
# Extractors
# ------------------------------------------------------------------------------------------------
class LayerMoments:
    """The extractor of one module type: its prunable weights and their per-sample gradient sums.

    A simple module computes ``y = op(x, weight)`` from its first argument; its extractor implements
    ``sum_sq`` (S2, fast) and, for weights used several times in one step (tied weights, a module
    called twice), ``per_sample`` (the per-sample gradients of a chunk of the batch). Modules with
    several weights or hidden products override :meth:`uses`.
    """

    #: Whether the weights are selected without an ``include`` pattern (Embedding: no).
    default: bool = True
    #: Whether ``x`` is cast to the statistics dtype (not for token indices).
    float_input: bool = True
    #: Whether the forward hook needs the keyword arguments (complex modules replay the call).
    needs_kwargs: bool = False
    #: The weight's axis of output units (rows; Hugging Face's Conv1D stores [in, out]: columns).
    out_axis: int = 0

    def weight_names(self, module: nn.Module) -> tuple[str, ...]:
        """The prunable weights, as paths relative to the module (``"weight"``, ``"out_proj.weight"``)."""
        return ("weight",)

    def refusal(self, module: nn.Module, path: str) -> str | None:
        """Why ``snr`` cannot compute exact statistics for this weight of this module, or None."""
        return None

    def wants_rng(self, module: nn.Module) -> bool:
        """Whether a replay needs the RNG state from before the forward (dropout inside the module)."""
        return False

    def batch_size(self, x: Any) -> int:
        return x.shape[0]

    def uses(self, module: nn.Module, call: Call, grads: Sequence[Tensor | None], wanted: set[str]) -> dict[str, list[Use]]:
        """The uses of the ``wanted`` weights in one call, by path, given the gradients of the call's tensor
        outputs (in ``torch.utils._pytree`` order; None where none arrived)."""
        (delta,) = grads
        return {"weight": [Use(self, module, call.args[0], delta)]}

    def sum_sq(self, module: nn.Module, x: Tensor, delta: Tensor, out: Tensor, accumulate: bool) -> None:
        """Writes S2 into ``out`` (a tensor of the weight's shape), or adds it when ``accumulate``."""
        if not accumulate:
            out.zero_()
        batch = self.batch_size(x)
        chunk = _chunk(out.numel())
        for start in range(0, batch, chunk):
            out += self.per_sample(module, _rows(x, start, start + chunk), _rows(delta, start, start + chunk)).square_().sum(0)

    def use_per_sample(self, use: Use, start: int, stop: int, dtype: torch.dtype) -> Tensor:
        """The per-sample gradients of samples ``start:stop`` of a use, in ``dtype``."""
        x, delta = use._cast(dtype)
        return self.per_sample(use.module, _rows(x, start, stop), _rows(delta, start, stop))

    def per_sample(self, module: nn.Module, x: Tensor, delta: Tensor) -> Tensor:
        """The per-sample gradients, shape (batch, *weight.shape)."""
        raise NotImplementedError(
            f"{type(self).__name__} computes no per-sample gradients, which a weight used several times in one "
            "step needs (tied weights, a module called twice)"
        )

    def grad_sum(self, module: nn.Module, x: Tensor, delta: Tensor) -> Tensor:
        """sum_i g_i, the use's share of the weight gradient (checks that the uses explain the gradient)."""
        total = None
        batch = self.batch_size(x)
        weight = getattr(module, "weight", None)
        chunk = _chunk(weight.numel() if isinstance(weight, Tensor) else PER_SAMPLE_BUDGET)
        for start in range(0, batch, chunk):
            part = self.per_sample(module, _rows(x, start, start + chunk), _rows(delta, start, start + chunk)).sum(0)
            total = part if total is None else total.add_(part)
        return total


class LinearMoments(LayerMoments):
    """nn.Linear: g_i = delta_i^T x_i, summed over any extra (sequence) dimensions."""

    def sum_sq(self, module: nn.Module | None, x: Tensor, delta: Tensor, out: Tensor, accumulate: bool) -> None:
        batch = x.shape[0]
        if x.dim() == 2:
            # The square of a rank-one per-sample gradient factorises: S2 = (delta^2)^T (x^2).
            torch.addmm(out, delta.square().t(), x.square(), beta=1 if accumulate else 0, out=out)
            return
        x = x.reshape(batch, -1, x.shape[-1])
        delta = delta.reshape(batch, -1, delta.shape[-1])
        if not accumulate:
            out.zero_()
        chunk = _chunk(out.numel())
        for start in range(0, batch, chunk):
            g = torch.bmm(delta[start : start + chunk].transpose(1, 2), x[start : start + chunk])
            out += g.square_().sum(0)

    def per_sample(self, module: nn.Module | None, x: Tensor, delta: Tensor) -> Tensor:
        batch = x.shape[0]
        return torch.bmm(delta.reshape(batch, -1, delta.shape[-1]).transpose(1, 2), x.reshape(batch, -1, x.shape[-1]))

    def grad_sum(self, module: nn.Module | None, x: Tensor, delta: Tensor) -> Tensor:
        return delta.reshape(-1, delta.shape[-1]).t() @ x.reshape(-1, x.shape[-1])


class TransposedLinearMoments(LinearMoments):
    """Hugging Face ``Conv1D`` (GPT-2's projections): y = x W + b with W stored [in, out]; g_i = x_i^T delta_i.

    That is nn.Linear's arithmetic with the roles of ``x`` and ``delta`` exchanged.
    """

    out_axis = 1

    def sum_sq(self, module: nn.Module | None, x: Tensor, delta: Tensor, out: Tensor, accumulate: bool) -> None:
        super().sum_sq(module, delta, x, out, accumulate)

    def per_sample(self, module: nn.Module | None, x: Tensor, delta: Tensor) -> Tensor:
        return super().per_sample(module, delta, x)

    def grad_sum(self, module: nn.Module | None, x: Tensor, delta: Tensor) -> Tensor:
        return super().grad_sum(module, delta, x)


class ConvMoments(LayerMoments):
    """nn.Conv1d/2d/3d: per-sample weight gradients, never more than a chunk of the batch at a time.

    Two exact ways, chosen by shape alone (so a run is reproducible). Small outputs (at most
    ``SHIFTED_MAX_POSITIONS`` positions per sample, groups = 1, 1-D or 2-D): for each kernel offset,
    the per-sample gradients of that tap are one batched product of the output-gradient with the
    shifted input, (B, C_out, L) x (B, L, C_in). Otherwise one grouped-convolution backward, where
    folding the batch into the channels (groups = B * groups) makes the weight gradient exactly the
    stack of per-sample gradients. Timed on 2 CPU cores at batch 128, the shifted form was ~3x faster
    than the grouped one (and than unfold + bmm) on ResNet-20's 8x8 stage, and the grouped form the
    fastest from 16x16 up.
    """

    #: Largest output size (positions per sample) for the shifted-input path.
    SHIFTED_MAX_POSITIONS = 144

    def sum_sq(self, module: nn.modules.conv._ConvNd, x: Tensor, delta: Tensor, out: Tensor, accumulate: bool) -> None:
        x, padding = _explicit_padding(module, x)
        if module.groups == 1 and x.dim() in (3, 4) and delta[0, 0].numel() <= self.SHIFTED_MAX_POSITIONS:
            _shifted_sum_sq(module, x, delta, padding, out, accumulate)
            return
        if not accumulate:
            out.zero_()
        chunk = _chunk(out.numel())
        for start in range(0, x.shape[0], chunk):
            g = _per_sample_conv_grad(module, x[start : start + chunk], delta[start : start + chunk], padding)
            out += g.square_().sum(0)

    def per_sample(self, module: nn.modules.conv._ConvNd, x: Tensor, delta: Tensor) -> Tensor:
        x, padding = _explicit_padding(module, x)
        return _per_sample_conv_grad(module, x, delta, padding)

    def grad_sum(self, module: nn.modules.conv._ConvNd, x: Tensor, delta: Tensor) -> Tensor:
        x, padding = _explicit_padding(module, x)
        _, grad_w, _ = torch.ops.aten.convolution_backward(
            delta, x, x.new_empty(()).expand(module.weight.shape), None, list(module.stride), padding,
            list(module.dilation), False, [0] * len(padding), module.groups, [False, True, False],
        )  # fmt: skip
        return grad_w


def _shifted_sum_sq(
    module: nn.modules.conv._ConvNd, x: Tensor, delta: Tensor, padding: list[int], out: Tensor, accumulate: bool
) -> None:
    kernel, stride, dilation = list(module.kernel_size), list(module.stride), list(module.dilation)
    if x.dim() == 3:  # Conv1d as a 2-D convolution of height 1
        x, delta = x.unsqueeze(2), delta.unsqueeze(2)
        kernel, stride, dilation, padding = [1, *kernel], [1, *stride], [1, *dilation], [0, *padding]
    if any(padding):
        x = F.pad(x, (padding[1], padding[1], padding[0], padding[0]))
    batch, c_in = x.shape[:2]
    c_out, h_out, w_out = delta.shape[1:]
    delta = delta.reshape(batch, c_out, h_out * w_out)
    taps = out.view(c_out, c_in, kernel[0], kernel[1])
    if not accumulate:
        out.zero_()
    chunk = max(1, PER_SAMPLE_BUDGET // (c_out * c_in))
    for start in range(0, batch, chunk):
        xs, ds = x[start : start + chunk], delta[start : start + chunk]
        for i in range(kernel[0]):
            for j in range(kernel[1]):
                h0, w0 = i * dilation[0], j * dilation[1]
                shifted = xs[:, :, h0 : h0 + stride[0] * (h_out - 1) + 1 : stride[0], w0 : w0 + stride[1] * (w_out - 1) + 1 : stride[1]]
                g = torch.bmm(ds, shifted.reshape(len(xs), c_in, h_out * w_out).transpose(1, 2))  # (b, C_out, C_in)
                taps[:, :, i, j] += g.square_().sum(0)


def _explicit_padding(module: nn.modules.conv._ConvNd, x: Tensor) -> tuple[Tensor, list[int]]:
    """Returns the input padded as the module pads it, and the symmetric padding left for the conv."""
    dims = x.dim() - 2
    if module.padding_mode != "zeros":
        return F.pad(x, module._reversed_padding_repeated_twice, mode=module.padding_mode), [0] * dims
    if isinstance(module.padding, str):
        if module.padding == "valid":
            return x, [0] * dims
        pads = []  # 'same': total = dilation * (kernel - 1), split left-low like torch does
        for d, k in zip(reversed(module.dilation), reversed(module.kernel_size)):
            total = d * (k - 1)
            pads += [total // 2, total - total // 2]
        return F.pad(x, pads), [0] * dims
    return x, list(module.padding)


def _per_sample_conv_grad(module: nn.modules.conv._ConvNd, x: Tensor, delta: Tensor, padding: list[int]) -> Tensor:
    batch, c_in = x.shape[:2]
    c_out = delta.shape[1]
    groups = module.groups
    w_shape = (batch * c_out, c_in // groups, *module.kernel_size)
    _, grad_w, _ = torch.ops.aten.convolution_backward(
        delta.reshape(1, batch * c_out, *delta.shape[2:]),
        x.reshape(1, batch * c_in, *x.shape[2:]),
        x.new_empty(()).expand(w_shape),  # only its shape is read
        None,
        list(module.stride),
        padding,
        list(module.dilation),
        False,
        [0] * len(padding),
        batch * groups,
        [False, True, False],
    )
    return grad_w.view(batch, *module.weight.shape)


class EmbeddingMoments(LayerMoments):
    """nn.Embedding (opt-in): g_i is delta_i scattered into the rows of sample i's tokens.

    A token repeated within a sample adds up before squaring: S2[v] = sum_i (sum_{t: idx_it = v}
    delta_it)**2. ``padding_idx`` gets no gradient, and ``scale_grad_by_freq`` divides by the token's
    count in the whole call, as torch's embedding backward does.
    """

    default = False
    float_input = False

    @staticmethod
    def _flat(module: nn.Embedding, x: Tensor, delta: Tensor) -> tuple[Tensor, Tensor]:
        batch = x.shape[0]
        idx = x.reshape(batch, -1)
        delta = delta.reshape(batch, idx.shape[1], -1)
        if module.scale_grad_by_freq:
            counts = torch.bincount(x.reshape(-1), minlength=module.num_embeddings).to(delta.dtype)
            delta = delta / counts[idx].unsqueeze(-1)
        if module.padding_idx is not None:
            delta = delta * (idx != module.padding_idx).unsqueeze(-1).to(delta.dtype)
        return idx, delta

    def sum_sq(self, module: nn.Embedding, x: Tensor, delta: Tensor, out: Tensor, accumulate: bool) -> None:
        idx, delta = self._flat(module, x, delta)
        batch, vocab = idx.shape[0], module.num_embeddings
        key = (torch.arange(batch, device=idx.device).unsqueeze(1) * vocab + idx).reshape(-1)
        unique, inverse = torch.unique(key, return_inverse=True)  # one row per (sample, token)
        g = delta.new_zeros(unique.numel(), delta.shape[-1]).index_add_(0, inverse, delta.reshape(-1, delta.shape[-1]))
        if not accumulate:
            out.zero_()
        out.index_add_(0, unique % vocab, g.square_())

    def per_sample(self, module: nn.Embedding, x: Tensor, delta: Tensor) -> Tensor:
        idx, delta = self._flat(module, x, delta)
        batch, vocab = idx.shape[0], module.num_embeddings
        key = (torch.arange(batch, device=idx.device).unsqueeze(1) * vocab + idx).reshape(-1)
        g = delta.new_zeros(batch * vocab, delta.shape[-1]).index_add_(0, key, delta.reshape(-1, delta.shape[-1]))
        return g.view(batch, vocab, -1)

    def grad_sum(self, module: nn.Embedding, x: Tensor, delta: Tensor) -> Tensor:
        idx, delta = self._flat(module, x, delta)
        out = delta.new_zeros(module.num_embeddings, delta.shape[-1])
        return out.index_add_(0, idx.reshape(-1), delta.reshape(-1, delta.shape[-1]))


_LINEAR = LinearMoments()


def _batch_first(t: Tensor | None, batch_first: bool, batched: bool) -> Tensor | None:
    """A (sequence, batch, ...) or (batch, sequence, ...) or unbatched tensor as (batch, sequence, ...)."""
    if t is None:
        return None
    if not batched:
        return t.unsqueeze(0)
    return t if batch_first else t.transpose(0, 1)


def _check_replay(name: str, replayed: Tensor, recorded: Tensor | None) -> None:
    if recorded is None:
        return
    scale = float(recorded.abs().max()) if recorded.numel() else 0.0
    tol = torch.finfo(replayed.dtype).eps ** 0.5 * max(scale, 1.0)  # round-off of a different summation order
    if replayed.shape != recorded.shape or not torch.allclose(replayed, recorded.to(replayed.dtype), rtol=0, atol=tol):
        raise NotExact(
            f"the replay of {name} for its per-sample statistics does not reproduce the module's output "
            "(a random or stateful operation inside it?); snr cannot prune its weights exactly: prune them with "
            f"{OTHER_METHODS}, or exclude them"
        )


def _restore_rng(rng: Any):
    """A context in which the global RNG is the recorded state (and is put back afterwards)."""
    if rng is None:
        return _Nothing()
    cpu, device, cuda = rng
    devices = [device] if cuda is not None else []
    fork = torch.random.fork_rng(devices=devices)

    class _Restore:
        def __enter__(self) -> None:
            fork.__enter__()
            torch.set_rng_state(cpu)
            if cuda is not None:
                torch.cuda.set_rng_state(cuda, device)

        def __exit__(self, *exc: Any) -> None:
            fork.__exit__(*exc)

    return _Restore()


class _Nothing:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: Any) -> None:
        return None


def rng_state(device: torch.device) -> tuple:
    """The global RNG state for ``device`` (CPU always; CUDA where the module lives there)."""
    cuda = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
    return torch.get_rng_state(), device, cuda


class AttentionMoments(LayerMoments):
    """nn.MultiheadAttention: ``in_proj_weight`` (or ``q/k/v_proj_weight``) and ``out_proj.weight``.

    Its projections run inside ``F.multi_head_attention_forward``, where no module hook sees them.
    After the output-gradient arrives, the call is replayed once: the projections q, k, v computed
    here (where their gradients can be read) and fed to the module's own forward with identity
    projection weights (``torch.func.functional_call``), then the output projection applied here. With
    the RNG state of the original call restored, attention dropout draws the same mask. The replay
    must reproduce the recorded output (else :class:`NotExact`); the projections are then Linear uses
    on row blocks of ``in_proj_weight`` and on ``out_proj.weight``. Extra cost on statistics steps:
    one forward and backward of the attention core.
    """

    needs_kwargs = True
    _SIGNATURE = inspect.signature(nn.MultiheadAttention.forward)

    def weight_names(self, module: nn.MultiheadAttention) -> tuple[str, ...]:
        names = ("in_proj_weight",) if module.in_proj_weight is not None else ("q_proj_weight", "k_proj_weight", "v_proj_weight")
        return (*names, "out_proj.weight")

    def wants_rng(self, module: nn.MultiheadAttention) -> bool:
        return module.training and module.dropout > 0

    def batch_size(self, x: Tensor) -> int:
        return x.shape[0]

    def uses(self, module: nn.MultiheadAttention, call: Call, grads: Sequence[Tensor | None], wanted: set[str]) -> dict[str, list[Use]]:
        bound = self._SIGNATURE.bind(module, *call.args, **call.kwargs)
        bound.apply_defaults()
        arguments = dict(bound.arguments)
        arguments.pop("self")
        query, key, value = arguments.pop("query"), arguments.pop("key"), arguments.pop("value")
        # the projections' width: the embedding width, or fewer heads' after a cut (FewerHeadsMultiheadAttention)
        width = module.in_proj_weight.shape[0] // 3 if module.in_proj_weight is not None else module.embed_dim
        if module.in_proj_weight is not None:
            w = module.in_proj_weight.detach()
            weights = (w[:width], w[width : 2 * width], w[2 * width :])
        else:
            weights = (module.q_proj_weight.detach(), module.k_proj_weight.detach(), module.v_proj_weight.detach())
        bias = module.in_proj_bias
        biases = (None,) * 3 if bias is None else tuple(bias.detach().chunk(3))
        dtype = weights[0].dtype
        eye = torch.eye(width, dtype=dtype, device=weights[0].device)
        overrides = {"out_proj.weight": eye}
        if module.in_proj_weight is not None:
            overrides["in_proj_weight"] = torch.cat([eye, eye, eye])
        else:
            overrides.update(q_proj_weight=eye, k_proj_weight=eye, v_proj_weight=eye)
        if bias is not None:
            overrides["in_proj_bias"] = torch.zeros_like(bias.detach())
        if module.out_proj.bias is not None:  # the identity output projection: as wide as the projections
            overrides["out_proj.bias"] = torch.zeros(width, dtype=module.out_proj.bias.dtype, device=module.out_proj.bias.device)
        with torch.enable_grad():
            projected = [F.linear(t, w, b).detach().requires_grad_() for t, w, b in zip((query, key, value), weights, biases)]
            with _Replaying(), _restore_rng(call.rng):
                core, attn_weights = torch.func.functional_call(module, overrides, tuple(projected), arguments)
            out = F.linear(core, module.out_proj.weight.detach(), None if module.out_proj.bias is None else module.out_proj.bias.detach())
        recorded = call.outputs
        name = f"{type(module).__name__}"
        _check_replay(name, out.detach(), recorded[0])
        if attn_weights is not None and len(recorded) > 1:
            _check_replay(name, attn_weights.detach(), recorded[1])
        delta_out = grads[0] if grads[0] is not None else torch.zeros_like(out)
        batched = query.dim() == 3
        bf = module.batch_first
        uses: dict[str, list[Use]] = {}
        in_names = [n for n in self.weight_names(module)[:-1] if n in wanted]
        if in_names:
            targets, grad_outputs = [out], [delta_out]
            if attn_weights is not None and len(grads) > 1 and grads[1] is not None:
                targets.append(attn_weights)
                grad_outputs.append(grads[1])
            with torch.enable_grad():
                deltas = torch.autograd.grad(targets, projected, grad_outputs, allow_unused=True)
            deltas = [torch.zeros_like(p) if d is None else d for p, d in zip(projected, deltas)]
            inputs = [_batch_first(t, bf, batched) for t in (query, key, value)]
            deltas = [_batch_first(d, bf, batched) for d in deltas]
            if module.in_proj_weight is not None:
                uses["in_proj_weight"] = [
                    Use(_LINEAR, None, x, d, slice(k * width, (k + 1) * width)) for k, (x, d) in enumerate(zip(inputs, deltas))
                ]
            else:
                for n, x, d in zip(("q_proj_weight", "k_proj_weight", "v_proj_weight"), inputs, deltas):
                    uses[n] = [Use(_LINEAR, None, x, d)]
        if "out_proj.weight" in wanted:
            uses["out_proj.weight"] = [Use(_LINEAR, None, _batch_first(core.detach(), bf, batched), _batch_first(delta_out, bf, batched))]
        return uses


class RecurrentMoments(LayerMoments):
    """nn.RNN/LSTM/GRU: ``weight_ih_l*``, ``weight_hh_l*`` (and LSTM's ``weight_hr_l*``), every layer and direction.

    The fused kernel hides the per-step products. After the output-gradients arrive, the call is
    replayed step by step in Python (the equations of the torch documentation, with the products
    taken out), checked against the recorded outputs, and one backward of the replay gives each
    product's output-gradient: per weight a Linear use over the time steps. Dropout between layers
    cannot be replayed: ``snr`` refuses such a module. PackedSequence inputs are not supported.
    """

    needs_kwargs = True

    def weight_names(self, module: nn.RNNBase) -> tuple[str, ...]:
        names = []
        for layer in range(module.num_layers):
            for suffix in ("", "_reverse")[: 2 if module.bidirectional else 1]:
                names += [f"weight_ih_l{layer}{suffix}", f"weight_hh_l{layer}{suffix}"]
                if getattr(module, "proj_size", 0):
                    names.append(f"weight_hr_l{layer}{suffix}")
        return tuple(names)

    def refusal(self, module: nn.RNNBase, path: str) -> str | None:
        if module.dropout > 0 and module.num_layers > 1:
            return f"dropout={module.dropout} between the layers of {type(module).__name__}, which its statistics cannot replay"
        return None

    def uses(self, module: nn.RNNBase, call: Call, grads: Sequence[Tensor | None], wanted: set[str]) -> dict[str, list[Use]]:
        args = list(call.args) + [None] * 2
        x = call.kwargs.get("input", args[0])
        hx = call.kwargs.get("hx", args[1])
        if isinstance(x, nn.utils.rnn.PackedSequence):
            raise NotExact(
                f"{type(module).__name__} called with a PackedSequence: its per-sample statistics are not supported; "
                f"prune it with {OTHER_METHODS}, or exclude it"
            )
        lstm = isinstance(module, nn.LSTM)
        batched = x.dim() == 3
        bf = module.batch_first
        xs = _batch_first(x, bf, batched)  # (B, T, in)
        batch, steps = xs.shape[:2]
        dirs = 2 if module.bidirectional else 1
        proj = getattr(module, "proj_size", 0)
        h_size = proj or module.hidden_size
        if hx is None:
            h0 = xs.new_zeros(module.num_layers * dirs, batch, h_size)
            c0 = xs.new_zeros(module.num_layers * dirs, batch, module.hidden_size) if lstm else None
        else:
            h0, c0 = hx if lstm else (hx, None)
            if not batched:
                h0 = h0.unsqueeze(1)
                c0 = c0.unsqueeze(1) if c0 is not None else None
        params = {n: p.detach() for n, p in module.named_parameters()}
        probes: list[Tensor] = []  # tensors whose gradients the uses need, in order
        records: list[tuple[str, Tensor, list[Tensor]]] = []  # (weight, its input (B, T, in), its output probes)
        with torch.enable_grad():
            layer_in = xs
            h_n, c_n = [], []
            for layer in range(module.num_layers):
                outs = []
                for d in range(dirs):
                    sfx = f"_l{layer}{'_reverse' if d else ''}"
                    w_ih, w_hh = params["weight_ih" + sfx], params["weight_hh" + sfx]
                    b_ih, b_hh = params.get("bias_ih" + sfx), params.get("bias_hh" + sfx)
                    w_hr = params.get("weight_hr" + sfx)
                    gi = F.linear(layer_in, w_ih, b_ih)
                    if not gi.requires_grad:
                        gi.requires_grad_()
                    probes.append(gi)
                    records.append(("weight_ih" + sfx, layer_in, [gi]))
                    h = h0[layer * dirs + d].detach().requires_grad_()
                    c = c0[layer * dirs + d].detach() if c0 is not None else None
                    order = range(steps - 1, -1, -1) if d else range(steps)
                    h_prev, gh_list, m_list, hr_list, hs = [], [], [], [], [None] * steps
                    for t in order:
                        gh = F.linear(h, w_hh, b_hh)
                        h_prev.append(h)
                        gh_list.append(gh)
                        h, c, m = _cell_step(module, gi[:, t], gh, h, c)
                        if w_hr is not None:
                            m_list.append(m)
                            h = F.linear(m, w_hr)
                            hr_list.append(h)
                        hs[t] = h
                    probes += gh_list + hr_list
                    records.append(("weight_hh" + sfx, torch.stack(h_prev, 1), gh_list))
                    if w_hr is not None:
                        records.append(("weight_hr" + sfx, torch.stack(m_list, 1), hr_list))
                    outs.append(torch.stack(hs, 1))
                    h_n.append(h)
                    c_n.append(c)
                layer_in = torch.cat(outs, -1) if dirs > 1 else outs[0]
            replayed = [layer_in if bf or not batched else layer_in.transpose(0, 1), torch.stack(h_n)]
            if lstm:
                replayed.append(torch.stack(c_n))
            if not batched:
                replayed = [replayed[0].squeeze(0)] + [t.squeeze(1) for t in replayed[1:]]
        for got, recorded in zip(replayed, call.outputs):
            _check_replay(type(module).__name__, got.detach(), recorded)
        pairs = [(t, g) for t, g in zip(replayed, grads) if g is not None]
        with torch.enable_grad():
            deltas = torch.autograd.grad([t for t, _ in pairs], probes, [g for _, g in pairs], allow_unused=True)
        delta_of = {id(p): (torch.zeros_like(p) if d is None else d) for p, d in zip(probes, deltas)}
        uses: dict[str, list[Use]] = {}
        for name, inputs, outs in records:
            if name not in wanted:
                continue
            delta = delta_of[id(outs[0])] if len(outs) == 1 else torch.stack([delta_of[id(o)] for o in outs], 1)
            uses[name] = [Use(_LINEAR, None, inputs.detach(), delta)]
        return uses


def _cell_step(module: nn.Module, gi: Tensor, gh: Tensor, h: Tensor, c: Tensor | None) -> tuple[Tensor, Tensor | None, Tensor]:
    """One step of an RNN/LSTM/GRU (cell) from the input and hidden products; returns (h, c, LSTM's o*tanh(c))."""
    if isinstance(module, (nn.LSTM, nn.LSTMCell)):
        i, f, g, o = (gi + gh).chunk(4, -1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        m = torch.sigmoid(o) * torch.tanh(c)
        return m, c, m
    if isinstance(module, (nn.GRU, nn.GRUCell)):
        ir, iz, i_n = gi.chunk(3, -1)
        hr, hz, h_n = gh.chunk(3, -1)
        r, z = torch.sigmoid(ir + hr), torch.sigmoid(iz + hz)
        n = torch.tanh(i_n + r * h_n)
        return (1 - z) * n + z * h, None, n
    act = torch.tanh if module.nonlinearity == "tanh" else torch.relu
    h = act(gi + gh)
    return h, None, h


class RecurrentCellMoments(LayerMoments):
    """nn.RNNCell/LSTMCell/GRUCell: ``weight_ih`` and ``weight_hh``, one step replayed as for the full RNNs.

    A cell called once per time step is one weight used several times in a step: each sample's
    gradient is the sum over the steps before squaring (see ``GradientStats``).
    """

    needs_kwargs = True

    def weight_names(self, module: nn.Module) -> tuple[str, ...]:
        return ("weight_ih", "weight_hh")

    def uses(self, module: nn.Module, call: Call, grads: Sequence[Tensor | None], wanted: set[str]) -> dict[str, list[Use]]:
        args = list(call.args) + [None] * 2
        x = call.kwargs.get("input", args[0])
        hx = call.kwargs.get("hx", args[1])
        lstm = isinstance(module, nn.LSTMCell)
        batched = x.dim() == 2
        xs = x if batched else x.unsqueeze(0)
        if hx is None:
            h = xs.new_zeros(xs.shape[0], module.hidden_size)
            c = h.clone() if lstm else None
        else:
            h, c = hx if lstm else (hx, None)
            if not batched:
                h, c = h.unsqueeze(0), (c.unsqueeze(0) if c is not None else None)
        p = {n: t.detach() for n, t in module.named_parameters()}
        with torch.enable_grad():
            gi = F.linear(xs, p["weight_ih"], p.get("bias_ih")).requires_grad_()
            gh = F.linear(h, p["weight_hh"], p.get("bias_hh")).requires_grad_()
            h_new, c_new, _ = _cell_step(module, gi, gh, h, c.detach() if c is not None else None)
            replayed = [h_new] + ([c_new] if lstm else [])
            if not batched:
                replayed = [t.squeeze(0) for t in replayed]
        for got, recorded in zip(replayed, call.outputs):
            _check_replay(type(module).__name__, got.detach(), recorded)
        pairs = [(t, g) for t, g in zip(replayed, grads) if g is not None]
        with torch.enable_grad():
            d_gi, d_gh = torch.autograd.grad([t for t, _ in pairs], [gi, gh], [g for _, g in pairs], allow_unused=True)
        d_gi = torch.zeros_like(gi) if d_gi is None else d_gi
        d_gh = torch.zeros_like(gh) if d_gh is None else d_gh
        uses = {"weight_ih": [Use(_LINEAR, None, xs.detach(), d_gi)], "weight_hh": [Use(_LINEAR, None, h.detach(), d_gh)]}
        return {n: u for n, u in uses.items() if n in wanted}


class GenericMoments(LayerMoments):
    """Any module without an extractor (opt-in): per-sample vector-Jacobian products of its own forward.

    For a chunk of the batch, ``torch.func.vmap(grad(...))`` of ``<module(x_i), delta_i>`` with
    respect to the weight, each sample run as a batch of one (``functional_call``). Arguments whose
    first dimension is the batch size are split over the samples, the others shared. Exact for a
    deterministic forward in which samples do not interact; a random operation (dropout in training
    mode) or a cross-sample one (BatchNorm in training mode) makes it fail with :class:`NotExact`.
    Materialises one chunk of per-sample gradients at a time (:data:`PER_SAMPLE_BUDGET`).
    """

    default = False
    float_input = False
    needs_kwargs = True

    def __init__(self, paths: Iterable[str] = ()) -> None:
        self.paths = tuple(paths)

    def weight_names(self, module: nn.Module) -> tuple[str, ...]:
        return self.paths

    def batch_size(self, x: Any) -> int:
        return x[0]

    def uses(self, module: nn.Module, call: Call, grads: Sequence[Tensor | None], wanted: set[str]) -> dict[str, list[Use]]:
        leaves, spec = tree_flatten((call.args, call.kwargs))
        first = next((t for t in leaves if isinstance(t, Tensor) and t.dim() > 0), None)
        if first is None:
            raise NotExact(f"{type(module).__name__} was called without a tensor argument: its samples are unknown")
        batch = first.shape[0]
        split = [isinstance(t, Tensor) and t.dim() > 0 and t.shape[0] == batch for t in leaves]
        outs = [(k, g) for k, g in enumerate(grads) if g is not None]
        for k, g in outs:
            if g.dim() == 0 or g.shape[0] != batch:
                raise NotExact(
                    f"an output of {type(module).__name__} has no batch dimension of size {batch}: its per-sample "
                    f"gradients are unknown; prune its weights with {OTHER_METHODS}, or exclude them"
                )
        # x carries what the arithmetic needs; x[0] is the batch size (see batch_size)
        x = (batch, leaves, spec, split, [k for k, _ in outs])
        delta = [g for _, g in outs]
        return {path: [Use(self, module, x, (path, delta))] for path in wanted}

    def use_per_sample(self, use: Use, start: int, stop: int, dtype: torch.dtype) -> Tensor:
        return self.per_sample_range(use.module, use.x, use.delta, start, stop, dtype)

    def per_sample_range(self, module: nn.Module, x: tuple, delta: tuple, start: int, stop: int, dtype: torch.dtype) -> Tensor:
        batch, leaves, spec, split, out_index = x
        path, grads = delta
        params = {n: p.detach() for n, p in module.named_parameters()}
        weight = params[path]
        batched = [t[start:stop] for t, s in zip(leaves, split) if s]
        deltas = [g[start:stop] for g in grads]

        def inner(w: Tensor, sample: list[Tensor], grads_i: list[Tensor]) -> Tensor:
            it = iter(sample)
            new = [next(it).unsqueeze(0) if s else leaf for leaf, s in zip(leaves, split)]
            args, kwargs = tree_unflatten(new, spec)
            out = torch.func.functional_call(module, {**params, path: w}, args, kwargs)
            out_leaves = [t for t in tree_flatten(out)[0] if isinstance(t, Tensor)]
            return sum((out_leaves[k] * g.unsqueeze(0)).sum() for k, g in zip(out_index, grads_i))

        try:
            with _Replaying(), torch.enable_grad():
                g = torch.func.vmap(torch.func.grad(inner), in_dims=(None, 0, 0), randomness="error")(weight, batched, deltas)
        except NotExact:
            raise
        except Exception as error:  # noqa: BLE001 - any failure of the replay is reported with the fix
            raise NotExact(
                f"the per-sample gradients of {type(module).__name__}.{path} by replaying its forward with torch.func "
                f"failed ({type(error).__name__}: {error}); snr cannot prune it exactly: prune it with {OTHER_METHODS}, "
                "or exclude it"
            ) from error
        return g.to(dtype)

    def _chunk_of(self, module: nn.Module, path: str) -> int:
        return _chunk(module.get_parameter(path).numel())

    def sum_sq(self, module: nn.Module, x: tuple, delta: tuple, out: Tensor, accumulate: bool) -> None:
        if not accumulate:
            out.zero_()
        chunk = self._chunk_of(module, delta[0])
        for start in range(0, x[0], chunk):
            out += self.per_sample_range(module, x, delta, start, start + chunk, out.dtype).square_().sum(0)

    def grad_sum(self, module: nn.Module, x: tuple, delta: tuple) -> Tensor:
        total = None
        chunk = self._chunk_of(module, delta[0])
        dtype = torch.promote_types(module.get_parameter(delta[0]).dtype, torch.float32)
        for start in range(0, x[0], chunk):
            part = self.per_sample_range(module, x, delta, start, start + chunk, dtype).sum(0)
            total = part if total is None else total.add_(part)
        return total


MOMENTS: dict[type[nn.Module], LayerMoments] = {
    nn.Linear: LinearMoments(),
    nn.Conv1d: ConvMoments(),
    nn.Conv2d: ConvMoments(),
    nn.Conv3d: ConvMoments(),
    nn.MultiheadAttention: AttentionMoments(),
    nn.RNN: RecurrentMoments(),
    nn.LSTM: RecurrentMoments(),
    nn.GRU: RecurrentMoments(),
    nn.RNNCell: RecurrentCellMoments(),
    nn.LSTMCell: RecurrentCellMoments(),
    nn.GRUCell: RecurrentCellMoments(),
    nn.Embedding: EmbeddingMoments(),
}

#: Extractors for classes recognised by ``module.qualname`` without importing their package
#: (Hugging Face's ``Conv1D`` lives in ``transformers.pytorch_utils``, formerly ``modeling_utils``).
HF_CONV1D_NAMES = ("transformers.pytorch_utils.Conv1D", "transformers.modeling_utils.Conv1D")
MOMENTS_BY_NAME: dict[str, LayerMoments] = {name: TransposedLinearMoments() for name in HF_CONV1D_NAMES}


def is_hf_conv1d(module: Any) -> bool:
    """Whether a module is (a subclass of) Hugging Face's ``Conv1D``, a Linear whose weight is stored
    [in, out]; recognised by name, without importing transformers."""
    return any(f"{cls.__module__}.{cls.__qualname__}" in HF_CONV1D_NAMES for cls in type(module).__mro__)


def moments_for(module: nn.Module) -> LayerMoments | None:
    """The extractor for a module, following its class hierarchy (subclasses of Linear are Linear)."""
    for cls in type(module).__mro__:
        if cls in MOMENTS:
            return MOMENTS[cls]
        named = MOMENTS_BY_NAME.get(f"{cls.__module__}.{cls.__qualname__}")
        if named is not None:
            return named
    return None


NameFilter = Iterable[str] | Callable[[str], bool] | None


@dataclass(frozen=True, eq=False)
class WeightUse:
    """One module that uses a prunable weight: its name, the weight's path in it, and its extractor."""

    module_name: str
    module: nn.Module
    path: str
    moments: LayerMoments


@dataclass(frozen=True, eq=False)
class PrunableLayer:
    """One prunable weight tensor.

    ``name`` is its parameter name as in ``model.named_parameters()`` (the first, for a tensor held
    under several names); ``aliases`` are all its names. ``uses`` are the modules whose forward uses
    it, each with its extractor: one, or several for a tied weight. ``module_name``, ``module`` and
    ``moments`` are those of the first use.
    """

    name: str
    module_name: str
    module: nn.Module
    moments: LayerMoments
    weight: nn.Parameter
    aliases: tuple[str, ...] = ()
    uses: tuple[WeightUse, ...] = field(default=())
    kind: str = ""

    @property
    def tied(self) -> bool:
        return len(self.uses) > 1


def _matches(name: str, rule: NameFilter) -> bool:
    if callable(rule):
        return bool(rule(name))
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in rule)


def _is_norm(module: nn.Module) -> bool:
    norms = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm, nn.LocalResponseNorm, getattr(nn, "RMSNorm", nn.LayerNorm))
    return isinstance(module, norms) or "norm" in type(module).__name__.lower()


def _resolve(module: nn.Module, path: str) -> tuple[nn.Module, str]:
    owner_path, _, leaf = path.rpartition(".")
    return (module.get_submodule(owner_path) if owner_path else module), leaf


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def _unprunable_reason(owner: nn.Module, leaf: str) -> str | None:
    if parametrize.is_parametrized(owner, leaf):
        return "parametrized with torch.nn.utils.parametrize, e.g. weight_norm"
    value = getattr(owner, leaf, None)
    if not isinstance(value, nn.Parameter):
        return "computed from other parameters, not a parameter itself"
    if not value.requires_grad:
        return "frozen: requires_grad=False"
    return None


def _kind(moments: LayerMoments) -> str:
    return {
        LinearMoments: "linear", TransposedLinearMoments: "hf-conv1d", ConvMoments: "conv", EmbeddingMoments: "embedding",
        AttentionMoments: "attention", RecurrentMoments: "recurrent", RecurrentCellMoments: "recurrent", GenericMoments: "generic",
    }.get(type(moments), type(moments).__name__)  # fmt: skip


def find_prunable_layers(model: nn.Module, include: NameFilter = None, exclude: NameFilter = None) -> list[PrunableLayer]:
    """The prunable weight tensors of a model, one entry per tensor, in parameter order.

    Without ``include``: every weight of the default types (see the table in this module's
    docstring), except tied ones. ``include``: exactly the prunable weights that a pattern names, the
    opt-in ones (``nn.Embedding``, tied weights, the ≥2-D parameters of modules without an
    extractor) included. ``include``/``exclude`` are glob patterns (or a predicate) matched against
    each of the weight's parameter names (``"encoder.0.self_attn.in_proj_weight"``, ``"*.weight_hh_*"``)
    and the names of the modules that hold or use it (``"features.*"``, ``"encoder.0.self_attn"``), so
    patterns on module names work as before. ``exclude`` wins over ``include``. Biases and
    normalisation parameters are never prunable.

    A tied weight (one tensor held by several modules, GPT-2's ``wte``/``lm_head``) is one entry with
    one mask; its ``aliases`` are all its names. Left out by default with a warning, since pruning it
    prunes every use. A selected weight that cannot be pruned (frozen, or computed by
    ``torch.nn.utils.parametrize`` such as ``weight_norm``) is skipped with a warning.
    """
    if isinstance(include, str) or isinstance(exclude, str):
        raise TypeError("include/exclude take a list of glob patterns or a callable, not a single string: use [pattern]")
    # every registration (module, leaf) of every parameter; a module registered twice is one registration
    registrations: dict[int, list[tuple[str, nn.Module, str]]] = {}
    names: dict[int, list[str]] = {}
    seen: set[tuple[int, str]] = set()
    for module_name, module in model.named_modules(remove_duplicate=False):
        for leaf, param in module.named_parameters(recurse=False):
            names.setdefault(id(param), []).append(_join(module_name, leaf))
            if (id(module), leaf) not in seen:
                seen.add((id(module), leaf))
                registrations.setdefault(id(param), []).append((module_name, module, leaf))
    # the uses known extractors claim, and the registrations they cover
    claims: dict[int, list[WeightUse]] = {}
    covered: set[tuple[int, str]] = set()
    visited: set[tuple[int, str]] = set()
    unprunable: dict[str, tuple[str, list[str], bool]] = {}  # display name -> (reason, names to match, default)
    for module_name, module in model.named_modules():
        moments = moments_for(module)
        if moments is None:
            continue
        for path in moments.weight_names(module):
            try:
                owner, leaf = _resolve(module, path)
            except AttributeError:
                continue
            if getattr(owner, leaf, None) is None and not parametrize.is_parametrized(owner, leaf):
                continue
            if (id(owner), leaf) in visited:  # claimed by an enclosing module (MultiheadAttention's out_proj)
                continue
            visited.add((id(owner), leaf))
            reason = _unprunable_reason(owner, leaf)
            full = _join(module_name, path)
            if reason is not None:
                unprunable[full] = (reason, [full, module_name, full.rpartition(".")[0]], moments.default)
                continue
            param = getattr(owner, leaf)
            covered.add((id(owner), leaf))
            claims.setdefault(id(param), []).append(WeightUse(module_name, module, path, moments))
    # every parameter in model order: claimed ones, and >=2-D ones of modules without an extractor
    layers, skipped, tied_left = [], [], []
    for name, param in model.named_parameters():
        pid = id(param)
        uses = list(claims.get(pid, []))
        generic_paths = []
        for owner_name, owner, leaf in registrations.get(pid, []):
            if (id(owner), leaf) in covered:
                continue
            if moments_for(owner) is not None or _is_norm(owner) or param.dim() < 2:
                uses = None  # held where no extractor covers it (weight_norm's weight_v, a norm, a bias)
                break
            generic_paths.append((owner_name, owner, leaf))
        if not uses and not generic_paths:
            continue
        if uses is None or not param.requires_grad:
            continue
        for owner_name, owner, leaf in generic_paths:
            uses.append(WeightUse(owner_name, owner, leaf, GenericMoments([leaf])))
        match_names = list(dict.fromkeys(names[pid] + [n.rpartition(".")[0] for n in names[pid]] + [u.module_name for u in uses]))
        tied = len(uses) > 1
        default = all(u.moments.default for u in uses) and not tied
        if include is None:
            selected = default
        else:
            selected = any(_matches(n, include) for n in match_names)
        if selected and exclude is not None and any(_matches(n, exclude) for n in match_names):
            selected = False
        if not selected:
            if include is None and tied and any(u.moments.default for u in uses):
                if exclude is None or not any(_matches(n, exclude) for n in match_names):
                    tied_left.append(" = ".join(names[pid]))
            continue
        first = uses[0]
        layers.append(
            PrunableLayer(
                name, first.module_name, first.module, first.moments, param, tuple(dict.fromkeys(names[pid])), tuple(uses),
                "tied " + "+".join(dict.fromkeys(_kind(u.moments) for u in uses)) if tied else _kind(first.moments),
            )
        )  # fmt: skip
    for full, (reason, match_names, default) in unprunable.items():
        if not default if include is None else not any(_matches(n, include) for n in match_names if n):
            continue
        if exclude is not None and any(_matches(n, exclude) for n in match_names if n):
            continue
        skipped.append(f"{full} ({reason})")
    if not layers:
        supported = ", ".join([cls.__name__ for cls in MOMENTS] + ["Hugging Face Conv1D"])
        found = f"; skipped: {', '.join(skipped)}" if skipped else ""
        raise ValueError(
            f"no prunable layer found in {type(model).__name__} (supported layer types: {supported}; nn.Embedding, tied "
            f"weights and other modules' weights when include= names them){found}; check the model and the include/exclude filters"
        )
    if skipped:
        warnings.warn(
            f"not pruned: {', '.join(skipped)}; unfreeze or remove the parametrization to prune them, "
            "or exclude these layers to silence this warning",
        )
    if tied_left:
        warnings.warn(
            f"not pruned: {'; '.join(tied_left)} (one tied tensor each, held by several modules); tied weights are pruned "
            "only when include= names them (one tensor, one mask), e.g. include=['*'] or the parameter's name; "
            "exclude them to silence this warning",
        )
    return layers


def snr_refusals(layers: Iterable[PrunableLayer]) -> list[str]:
    """The selected weights whose exact per-sample statistics ``snr`` cannot compute, with the reason."""
    out = []
    for layer in layers:
        for use in layer.uses:
            reason = use.moments.refusal(use.module, use.path)
            if reason is not None:
                out.append(f"{layer.name} ({reason})")
    return out
