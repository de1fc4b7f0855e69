"""Units for structured pruning: sets of parameter entries that must be removed together.

A *unit* is what a smaller dense network can lose without any other change: an output neuron of a
Linear (its weight row and bias entry, and the matching input column of every layer that reads it), an
output channel of a convolution (with its bias, its BatchNorm entries and the consumers' input
channels, the columns a Flatten spreads it over, and every convolution feeding the same residual sum).
An attention head of a known attention module type is a unit too: its rows of the query, key and
value projections (weights and biases) and its columns of the output projection. The units of one
coupled set of layers (or the heads of one attention module) form a :class:`UnitGroup`.

Channel groups are traced from the model by Torch-Pruning's ``DependencyGraph`` (never from
per-architecture tables). Head groups come from a small table, ``_HEAD_KINDS``, one entry per attention
module type (snrprune's ``gpt`` ``CausalSelfAttention``, Hugging Face BERT's ``BertAttention``): where
its four projections are and how its head count is read and set; they are cut by slicing the
projections, and the graph takes no query, key or value projection of such a module as a root. Then
every group is *verified*: a random half of its units is zeroed in its consumer slices, the inputs of
the layers that read the units (the masked model, as training masks it: the units still compute,
nothing reads them) and also physically cut (the compact model); a group whose compact model does not
compute what its masked model computes is not a unit group. That check is what keeps out the couplings
Torch-Pruning follows but cannot cut faithfully: a LayerNorm across the units (a removed feature still
enters its mean and variance), a view into the heads of an attention module the table does not know, a
residual sum whose shortcut zero-pads channels (ResNet shortcut ``'A'``). Those groups are left out
with a warning that names them; layers whose units cannot be traced or cut at all (recurrent layers,
grouped convolutions, Hugging Face ``Conv1D`` outside GPT-2's attention and MLP, an
``nn.MultiheadAttention`` without a packed projection) are refused with an error. Modules whose units
snrprune finds and cuts itself have a table of their own, ``_TABLED_KINDS``: GPT-2's Conv1D modules (the
heads of its fused ``c_attn``, its MLP's hidden units), through which Torch-Pruning cannot trace, and
``nn.MultiheadAttention`` (its heads; cut into a :class:`FewerHeadsMultiheadAttention`), around which it can.

Torch-Pruning is an optional dependency (``pip install "snrprune[structured]"``), imported on first use.
"""

from __future__ import annotations

import copy
import math
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils._pytree import tree_flatten, tree_map

from .errors import InputError
from .layers import is_hf_conv1d

__all__ = [
    "FewerHeadsMultiheadAttention",
    "UnitSlice",
    "UnitGroup",
    "UnsupportedModelError",
    "find_unit_groups",
    "unit_keep_masks",
    "removed_units",
    "resolve_removed",
    "compact_model",
]

#: Tolerance of the check that a group's cut model equals its masked model, relative to the output's
#: largest entry. The check runs in float64, whose round-off is ~1e-15 of it, so that a wrong coupling
#: shows however small the outputs are (an absolute floor in float32 let one pass on outputs of 0.01).
_VERIFY_RTOL = 1e-9


class UnsupportedModelError(InputError):
    """The model holds a layer whose units cannot be traced or cut; the message names it and why."""


@dataclass(frozen=True)
class UnitSlice:
    """The entries of one parameter that belong to units: positions ``index`` along ``dim``, position
    ``index[i]`` belonging to unit ``unit[i]`` (a unit may own several positions, e.g. the 16 columns a
    Flatten maps one channel to). ``consumer``: the entries read the units (a next layer's input
    columns, an output projection's columns of a head), rather than compute them (the units' own rows,
    biases and norm entries); zero in every consumer slice, a unit computes what nothing reads."""

    param: str
    dim: int
    index: Tensor
    unit: Tensor
    consumer: bool = False


@dataclass(frozen=True)
class UnitGroup:
    """``size`` units of coupled layers, named after the weight of the layer whose outputs they are."""

    name: str
    size: int
    slices: tuple[UnitSlice, ...]


def _torch_pruning():
    try:
        import torch_pruning
    except ImportError as exc:
        raise ImportError(
            'structured pruning needs Torch-Pruning: pip install "snrprune[structured]"'
        ) from exc
    return torch_pruning


def _refuse_untraceable(model: nn.Module) -> None:
    """Raises for layers whose units Torch-Pruning 1.6 cannot trace or cut (and no table of this module
    covers); says why and what works."""
    covered = {id(m) for _, module, kind in _tabled_modules(model) for m in kind.layers(module)}
    for name, module in model.named_modules():
        label = name or "(the model)"
        if id(module) in covered:
            continue
        if isinstance(module, nn.MultiheadAttention):
            reason = (
                "snrprune removes the heads of an nn.MultiheadAttention with one packed query/key/value projection of "
                "the embedding width, without add_bias_kv or add_zero_attn; this one has "
                + ("separate key/value widths (kdim/vdim)" if module.in_proj_weight is None else "add_bias_kv or add_zero_attn")
            )
        elif isinstance(module, nn.RNNBase):
            reason = "the hidden units of a recurrent layer are coupled across time steps and its gates, which the graph cannot cut"
        elif is_hf_conv1d(module):
            reason = (
                "Torch-Pruning has no pruner for Hugging Face's Conv1D (a transposed Linear); snrprune cuts it only "
                "inside GPT-2's self-attention (heads) and MLP (hidden units)"
            )
        elif isinstance(module, nn.modules.conv._ConvNd) and module.groups > 1:
            reason = f"it is a grouped convolution (groups={module.groups}), whose channels are tied by group"
        else:
            continue
        raise UnsupportedModelError(
            f"cannot find units in {label} ({type(module).__name__}): {reason}. "
            "Unit granularity supports Linear and convolution layers (with BatchNorm, Flatten and residual sums); "
            "train this model with granularity 'weight'"
        )


# --------------------------------------------------------------------------- attention heads


@dataclass(frozen=True)
class _HeadKind:
    """How the heads of one attention module type are found and cut: the paths (relative to the module)
    of its query, key, value and output projections (``nn.Linear``), and how its head count is read and
    set. Head h is rows [h*d, (h+1)*d) of the query, key and value weights and biases and columns
    [h*d, (h+1)*d) of the output weight, d = query outputs / heads; the output bias stays."""

    matches: Callable[[nn.Module], bool]
    projections: tuple[str, str, str, str]
    count: Callable[[nn.Module], int]
    set_count: Callable[[nn.Module, int], None]


def _is_gpt_attention(module: nn.Module) -> bool:
    from .models import CausalSelfAttention

    return isinstance(module, CausalSelfAttention)


def _is_bert_self_attention(module: nn.Module) -> bool:
    """Hugging Face BERT's ``BertAttention`` around a ``BertSelfAttention`` (not cross-attention), matched by
    name so that transformers is never imported here; its forward reshapes with ``-1`` heads of the stored
    ``attention_head_size``, so it runs with fewer heads once the projections are sliced."""
    kind = type(module)
    return (
        kind.__name__ == "BertAttention"
        and kind.__module__.startswith("transformers.models.bert.")
        and type(getattr(module, "self", None)).__name__ == "BertSelfAttention"
    )


def _set_bert_heads(module: nn.Module, heads: int) -> None:
    module.self.num_attention_heads = heads
    module.self.all_head_size = heads * module.self.attention_head_size


#: One entry per attention module type whose heads are units, tried in order (the first match wins).
_HEAD_KINDS: tuple[_HeadKind, ...] = (
    _HeadKind(
        _is_gpt_attention, ("q_proj", "k_proj", "v_proj", "out_proj"),
        lambda m: m.n_head, lambda m, n: setattr(m, "n_head", n),
    ),
    _HeadKind(
        _is_bert_self_attention, ("self.query", "self.key", "self.value", "output.dense"),
        lambda m: m.self.num_attention_heads, _set_bert_heads,
    ),
)  # fmt: skip


def _head_modules(model: nn.Module) -> list[tuple[str, nn.Module, _HeadKind]]:
    """The attention modules of a known kind whose projections are plain Linears of matching widths."""
    found = []
    for prefix, module in model.named_modules():
        kind = next((k for k in _HEAD_KINDS if k.matches(module)), None)
        if kind is None:
            continue
        q, k, v, out = (module.get_submodule(path) for path in kind.projections)
        heads = kind.count(module)
        if (
            not all(type(m) is nn.Linear for m in (q, k, v, out))
            or heads < 1
            or q.out_features % heads
            or not q.out_features == k.out_features == v.out_features == out.in_features
        ):
            continue
        found.append((prefix, module, kind))
    return found


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def _head_group(prefix: str, module: nn.Module, kind: _HeadKind) -> UnitGroup:
    """The heads of one attention module as a group named after its query weight."""
    heads = kind.count(module)
    width = module.get_submodule(kind.projections[0]).out_features
    positions = torch.arange(width)
    units = positions // (width // heads)
    slices = []
    for path in kind.projections[:3]:
        layer = module.get_submodule(path)
        params = ("weight", "bias") if layer.bias is not None else ("weight",)
        slices += [UnitSlice(_join(prefix, f"{path}.{p}"), 0, positions, units) for p in params]
    slices.append(UnitSlice(_join(prefix, f"{kind.projections[3]}.weight"), 1, positions, units, consumer=True))
    return UnitGroup(_join(prefix, f"{kind.projections[0]}.weight"), heads, tuple(slices))


def _slice_linear(layer: nn.Linear, index: Tensor, dim: int) -> None:
    """Keeps the rows (``dim`` 0, with the bias entries) or columns (``dim`` 1) ``index`` of a Linear, in place."""
    with torch.no_grad():
        weight = layer.weight.index_select(dim, index.to(layer.weight.device)).clone()
        layer.weight = nn.Parameter(weight, requires_grad=layer.weight.requires_grad)
        if dim == 0 and layer.bias is not None:
            layer.bias = nn.Parameter(layer.bias[index.to(layer.bias.device)].clone(), requires_grad=layer.bias.requires_grad)
    if dim == 0:
        layer.out_features = len(index)
    else:
        layer.in_features = len(index)


def _cut_heads(module: nn.Module, kind: _HeadKind, removed: Tensor) -> None:
    """Removes the heads ``removed`` of one attention module (in place): its projections sliced, its head count lowered."""
    heads = kind.count(module)
    size = module.get_submodule(kind.projections[0]).out_features // heads
    kept = _kept(heads, removed)
    index = (kept[:, None] * size + torch.arange(size)).flatten()
    for path in kind.projections[:3]:
        _slice_linear(module.get_submodule(path), index, 0)
    _slice_linear(module.get_submodule(kind.projections[3]), index, 1)
    kind.set_count(module, len(kept))


# --------------------------------------------------------------------------- Hugging Face Conv1D modules


def _slice_conv1d(layer: nn.Module, index: Tensor, dim: int) -> None:
    """Keeps the outputs (``dim`` 1 of the weight, stored [in, out], with the bias entries) or the inputs
    (``dim`` 0) ``index`` of a Hugging Face Conv1D, in place."""
    with torch.no_grad():
        index = index.to(layer.weight.device)
        layer.weight = nn.Parameter(layer.weight.index_select(dim, index).clone(), requires_grad=layer.weight.requires_grad)
        if dim == 1:
            layer.bias = nn.Parameter(layer.bias[index].clone(), requires_grad=layer.bias.requires_grad)
            layer.nf = len(index)
        else:
            layer.nx = len(index)


@dataclass(frozen=True)
class _TabledKind:
    """A module whose units snrprune finds and cuts itself: ``layers`` the modules it covers (not refused,
    not roots of the graph), ``group`` its units (None: none to remove), ``cut`` removes the units
    listed, in place. ``traceable``: whether Torch-Pruning's graph traces through the module, so that
    the model's other layers can be traced around it (Hugging Face's Conv1D: no)."""

    matches: Callable[[nn.Module], bool]
    layers: Callable[[nn.Module], tuple[nn.Module, ...]]
    group: Callable[[str, nn.Module], "UnitGroup | None"]
    cut: Callable[[nn.Module, Tensor], None]
    traceable: bool = False


def _is_gpt2_module(module: nn.Module, name: str) -> bool:
    kind = type(module)
    return kind.__name__ == name and kind.__module__.startswith("transformers.models.gpt2.")


def _gpt2_attention_ok(module: nn.Module) -> bool:
    """GPT-2's self-attention (not cross-attention): ``c_attn`` (queries, keys, values side by side) and
    ``c_proj``, Conv1D layers of matching widths."""
    if not _is_gpt2_module(module, "GPT2Attention") or getattr(module, "is_cross_attention", True):
        return False
    c_attn, c_proj = getattr(module, "c_attn", None), getattr(module, "c_proj", None)
    if not (is_hf_conv1d(c_attn) and is_hf_conv1d(c_proj)):
        return False
    width = module.split_size
    return module.num_heads >= 1 and width == module.num_heads * module.head_dim and c_attn.nf == 3 * width and c_proj.nx == width


def _packed_head_positions(heads: Tensor, d: int, width: int) -> tuple[Tensor, Tensor]:
    """Positions of heads ``heads`` (of size ``d``) in an output projection's inputs (q), and in a packed
    query/key/value projection's outputs (q, k, v: three blocks of ``width``)."""
    q = (heads[:, None] * d + torch.arange(d)).flatten()
    return q, torch.cat([q, width + q, 2 * width + q])


def _gpt2_head_positions(module: nn.Module, heads: Tensor) -> tuple[Tensor, Tensor]:
    """Positions of heads ``heads`` in ``c_proj``'s inputs (q) and in ``c_attn``'s outputs (q, k, v)."""
    return _packed_head_positions(heads, module.head_dim, module.split_size)


def _every_head(module: nn.Module, positions: Callable[[nn.Module, Tensor], tuple[Tensor, Tensor]]) -> tuple[Tensor, Tensor, Tensor] | None:
    """(q, qkv, units) of every head of a module of ``num_heads`` heads of ``head_dim`` with a packed
    query/key/value projection: ``positions`` (q, qkv) and the head each q position belongs to; None for
    a single head, which can never be removed."""
    if module.num_heads < 2:
        return None
    q, qkv = positions(module, torch.arange(module.num_heads))
    return q, qkv, q // module.head_dim


def _gpt2_heads(prefix: str, module: nn.Module) -> UnitGroup | None:
    if (heads := _every_head(module, _gpt2_head_positions)) is None:
        return None
    q, qkv, units = heads
    return _conv1d_pair_group(prefix, ("c_attn", "c_proj"), module.num_heads, (qkv, units.repeat(3)), (q, units))


def _conv1d_pair_group(prefix: str, paths: tuple[str, str], size: int, outs: tuple[Tensor, Tensor], ins: tuple[Tensor, Tensor]) -> UnitGroup:
    """The units of a pair of Conv1D layers: outputs (positions, units) ``outs`` of the first (weight
    columns and bias entries) feeding inputs ``ins`` of the second (weight rows); named after the first."""
    first, second = (_join(prefix, path) for path in paths)
    return UnitGroup(
        f"{first}.weight",
        size,
        (UnitSlice(f"{first}.weight", 1, *outs), UnitSlice(f"{first}.bias", 0, *outs), UnitSlice(f"{second}.weight", 0, *ins, consumer=True)),
    )


def _kept(size: int, removed: Tensor) -> Tensor:
    gone = set(int(u) for u in removed)
    return torch.tensor([u for u in range(size) if u not in gone], dtype=torch.int64)


def _cut_gpt2_heads(module: nn.Module, removed: Tensor) -> None:
    kept = _kept(module.num_heads, removed)
    q, qkv = _gpt2_head_positions(module, kept)
    _slice_conv1d(module.c_attn, qkv, 1)
    _slice_conv1d(module.c_proj, q, 0)
    module.num_heads = len(kept)
    module.split_size = len(kept) * module.head_dim  # the forward splits c_attn's output by it and views -1 heads


def _gpt2_mlp_ok(module: nn.Module) -> bool:
    c_fc, c_proj = getattr(module, "c_fc", None), getattr(module, "c_proj", None)
    return _is_gpt2_module(module, "GPT2MLP") and is_hf_conv1d(c_fc) and is_hf_conv1d(c_proj) and c_fc.nf == c_proj.nx


def _gpt2_mlp_units(prefix: str, module: nn.Module) -> UnitGroup | None:
    size = module.c_fc.nf
    if size < 2:
        return None
    positions = torch.arange(size)
    return _conv1d_pair_group(prefix, ("c_fc", "c_proj"), size, (positions, positions), (positions, positions))


def _cut_gpt2_mlp(module: nn.Module, removed: Tensor) -> None:
    kept = _kept(module.c_fc.nf, removed)
    _slice_conv1d(module.c_fc, kept, 1)
    _slice_conv1d(module.c_proj, kept, 0)


# --------------------------------------------------------------------------- nn.MultiheadAttention


def _mha_ok(module: nn.Module) -> bool:
    """An ``nn.MultiheadAttention`` whose heads are units: packed query/key/value projection of the
    embedding width (no ``kdim``/``vdim``), no ``add_bias_kv``, no ``add_zero_attn``."""
    return (
        isinstance(module, nn.MultiheadAttention)
        and module.in_proj_weight is not None
        and module.bias_k is None
        and not module.add_zero_attn
        and module.in_proj_weight.shape[0] == 3 * module.num_heads * module.head_dim
    )


def _mha_positions(module: nn.MultiheadAttention, heads: Tensor) -> tuple[Tensor, Tensor]:
    """Positions of heads ``heads`` in ``out_proj``'s inputs (q) and in ``in_proj_weight``'s rows (q, k, v)."""
    return _packed_head_positions(heads, module.head_dim, module.num_heads * module.head_dim)


def _mha_heads(prefix: str, module: nn.MultiheadAttention) -> UnitGroup | None:
    if (heads := _every_head(module, _mha_positions)) is None:
        return None
    q, qkv, units = heads
    slices = [UnitSlice(_join(prefix, "in_proj_weight"), 0, qkv, units.repeat(3))]
    if module.in_proj_bias is not None:
        slices.append(UnitSlice(_join(prefix, "in_proj_bias"), 0, qkv, units.repeat(3)))
    slices.append(UnitSlice(_join(prefix, "out_proj.weight"), 1, q, units, consumer=True))
    return UnitGroup(_join(prefix, "in_proj_weight"), module.num_heads, tuple(slices))


def _cut_mha_heads(module: nn.MultiheadAttention, removed: Tensor) -> None:
    """Slices the kept heads' rows of the packed projection and columns of ``out_proj``, and makes the
    module a :class:`FewerHeadsMultiheadAttention` (the stock forward ties the heads' width to the
    embedding width)."""
    before = module.num_heads
    kept = _kept(before, removed)
    q, qkv = _mha_positions(module, kept)
    with torch.no_grad():
        weight = module.in_proj_weight
        module.in_proj_weight = nn.Parameter(weight[qkv.to(weight.device)].clone(), requires_grad=weight.requires_grad)
        if module.in_proj_bias is not None:
            bias = module.in_proj_bias
            module.in_proj_bias = nn.Parameter(bias[qkv.to(bias.device)].clone(), requires_grad=bias.requires_grad)
    _slice_linear(module.out_proj, q, 1)
    original = getattr(module, "heads_kept", tuple(range(before)))  # a second cut indexes the first one's heads
    module.__class__ = FewerHeadsMultiheadAttention
    module.heads_before = getattr(module, "heads_before", before)
    module.heads_kept = tuple(original[int(h)] for h in kept)
    module.num_heads = len(kept)
    # the fused fast paths of nn.TransformerEncoder(Layer) assume the stock layout (heads of embed_dim / num_heads)
    # and take it when this is True; the packed projection stays in_proj_weight either way
    module._qkv_same_embed_dim = False


class FewerHeadsMultiheadAttention(nn.MultiheadAttention):
    """An ``nn.MultiheadAttention`` from which heads were removed (:func:`compact_model`): ``num_heads``
    heads of the original ``head_dim`` (``heads_kept``: their indices among the original
    ``heads_before``), the query, key and value projections ``num_heads * head_dim`` wide, the
    embedding width unchanged. Same call and outputs as the module it was cut from with the removed
    heads' output columns zero, up to round-off; a 3-D ``attn_mask`` keeps giving one mask per
    original head (the kept heads' are used). The attention weights it returns (``need_weights``)
    are the kept heads', so their average differs from the uncut module's."""

    heads_before: int
    heads_kept: tuple[int, ...]

    def forward(  # type: ignore[override]
        self,
        query: Tensor,
        key: Tensor,
        value: Tensor,
        key_padding_mask: Tensor | None = None,
        need_weights: bool = True,
        attn_mask: Tensor | None = None,
        average_attn_weights: bool = True,
        is_causal: bool = False,
    ) -> tuple[Tensor, Tensor | None]:
        if is_causal and attn_mask is None:
            raise RuntimeError("Need attn_mask if specifying the is_causal hint (as nn.MultiheadAttention)")
        unbatched = query.dim() == 2
        if unbatched:
            query, key, value = query.unsqueeze(1), key.unsqueeze(1), value.unsqueeze(1)
            key_padding_mask = None if key_padding_mask is None else key_padding_mask.unsqueeze(0)
        if self.batch_first and not unbatched:
            query, key, value = query.transpose(0, 1), key.transpose(0, 1), value.transpose(0, 1)
        (target, batch, _), source = query.shape, key.shape[0]
        heads, d = self.num_heads, self.head_dim
        w_q, w_k, w_v = self.in_proj_weight.chunk(3)
        b_q, b_k, b_v = self.in_proj_bias.chunk(3) if self.in_proj_bias is not None else (None, None, None)

        def split(x: Tensor, w: Tensor, b: Tensor | None, length: int) -> Tensor:  # (length, batch, E) -> (batch, heads, length, d)
            return F.linear(x, w, b).view(length, batch, heads, d).permute(1, 2, 0, 3)

        q, k, v = split(query, w_q, b_q, target), split(key, w_k, b_k, source), split(value, w_v, b_v, source)
        bias = self._additive_mask(attn_mask, key_padding_mask, batch, target, source, q.dtype)
        dropout = self.dropout if self.training else 0.0
        weights = None
        if need_weights:
            scores = (q @ k.transpose(-2, -1)) / math.sqrt(d)
            probabilities = torch.softmax(scores if bias is None else scores + bias, dim=-1)
            weights = probabilities.mean(dim=1) if average_attn_weights else probabilities
            out = F.dropout(probabilities, dropout, self.training) @ v
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, dropout_p=dropout)
        # as the stock module: out_proj's weights through F.linear, never out_proj.forward
        out = F.linear(out.permute(2, 0, 1, 3).reshape(target, batch, heads * d), self.out_proj.weight, self.out_proj.bias)
        if self.batch_first and not unbatched:
            out = out.transpose(0, 1)
        if unbatched:
            out = out.squeeze(1)
            weights = None if weights is None else weights.squeeze(0)
        return out, weights

    def _additive_mask(self, attn_mask: Tensor | None, key_padding_mask: Tensor | None, batch: int, target: int, source: int, dtype: torch.dtype) -> Tensor | None:
        """``attn_mask`` and ``key_padding_mask`` (bool: True is not attended, or float: added) as one float
        mask broadcasting to (batch, heads, target, source)."""
        bias = None
        if attn_mask is not None:
            mask = attn_mask
            if mask.dim() == 3:  # one mask per original head: the kept heads'
                mask = mask.view(batch, self.heads_before, target, source)[:, list(self.heads_kept)]
            bias = _as_additive(mask, dtype)
        if key_padding_mask is not None:
            padding = _as_additive(key_padding_mask, dtype).view(batch, 1, 1, source)
            bias = padding if bias is None else bias + padding
        return bias


def _as_additive(mask: Tensor, dtype: torch.dtype) -> Tensor:
    if mask.dtype == torch.bool:
        return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill_(mask, float("-inf"))
    return mask.to(dtype)


#: Modules whose units snrprune cuts itself (the first match wins): GPT-2's self-attention heads
#: (``c_attn``'s query, key and value columns and ``c_proj``'s rows of a head) and its MLP's hidden
#: units (``c_fc``'s columns, ``c_proj``'s rows), Hugging Face Conv1D layers for which Torch-Pruning has
#: no pruner (matched by name: transformers is never imported here); the heads of an
#: ``nn.MultiheadAttention`` (rows of its packed projection, columns of ``out_proj``), whose forward
#: Torch-Pruning's graph traces around but cannot cut into heads.
_TABLED_KINDS: tuple[_TabledKind, ...] = (
    _TabledKind(_gpt2_attention_ok, lambda m: (m.c_attn, m.c_proj), _gpt2_heads, _cut_gpt2_heads),
    _TabledKind(_gpt2_mlp_ok, lambda m: (m.c_fc, m.c_proj), _gpt2_mlp_units, _cut_gpt2_mlp),
    _TabledKind(_mha_ok, lambda m: (m, m.out_proj), _mha_heads, _cut_mha_heads, traceable=True),
)  # fmt: skip


def _tabled_modules(model: nn.Module) -> list[tuple[str, nn.Module, _TabledKind]]:
    found = []
    for prefix, module in model.named_modules():
        kind = next((k for k in _TABLED_KINDS if k.matches(module)), None)
        if kind is not None:
            found.append((prefix, module, kind))
    return found


def _call(model: nn.Module, example_inputs: Any) -> Any:
    if isinstance(example_inputs, Mapping):
        return model(**example_inputs)
    if isinstance(example_inputs, (tuple, list)):
        return model(*example_inputs)
    return model(example_inputs)


def _output_layers(model: nn.Module, example_inputs: Any) -> list[nn.Module]:
    """The Linear/conv layers whose output tensor is (a part of) the model's output."""
    outputs: dict[int, nn.Module] = {}

    def record(module: nn.Module, _inputs: Any, output: Any) -> None:
        if isinstance(output, Tensor):
            outputs[id(output)] = module

    hooks = [
        m.register_forward_hook(record) for m in model.modules() if isinstance(m, (nn.Linear, nn.modules.conv._ConvNd))
    ]
    try:
        with torch.no_grad():
            result = _call(model, example_inputs)
    finally:
        for hook in hooks:
            hook.remove()
    leaves, _ = tree_flatten(result)
    return [outputs[id(t)] for t in leaves if isinstance(t, Tensor) and id(t) in outputs]


def _slices_of(module: nn.Module, prefix: str, is_out: bool, positions: Tensor, units: Tensor) -> list[UnitSlice]:
    """Where the pruned positions of one layer lie in its parameters."""
    if isinstance(module, nn.modules.conv._ConvTransposeNd):
        axes = {"weight": 1 if is_out else 0, "bias": 0 if is_out else None}
    elif isinstance(module, (nn.Linear, nn.modules.conv._ConvNd)):
        axes = {"weight": 0 if is_out else 1, "bias": 0 if is_out else None}
    elif isinstance(module, (nn.modules.batchnorm._BatchNorm, nn.GroupNorm)):
        axes = {"weight": 0, "bias": 0}
    elif isinstance(module, nn.LayerNorm):
        last = len(module.normalized_shape) - 1
        axes = {"weight": last, "bias": last}
    elif isinstance(module, nn.Embedding):
        axes = {"weight": 1}
    else:
        raise UnsupportedModelError(
            f"cannot find units through {prefix or '(the model)'} ({type(module).__name__}): "
            "snrprune does not know which axes of its parameters Torch-Pruning cuts; "
            "train this model with granularity 'weight'"
        )
    own = dict(module.named_parameters(recurse=False))
    consumer = not is_out and isinstance(module, (nn.Linear, nn.modules.conv._ConvNd))
    return [
        UnitSlice(f"{prefix}.{p}" if prefix else p, dim, positions, units, consumer and p == "weight")
        for p, dim in axes.items()
        if dim is not None and p in own
    ]


def _group_from(tp_group: Any, DG: Any, names: Mapping[nn.Module, str], order: Mapping[str, int]) -> UnitGroup:
    """A Torch-Pruning group (full indices) as a :class:`UnitGroup` on parameter names, named after the
    first weight (in parameter order) of the Linear/conv layers whose outputs the units are."""
    size = len(tp_group[0].idxs)
    roots: list[str] = []
    slices: list[UnitSlice] = []
    for item in tp_group:
        module = item.dep.target.module
        if isinstance(module, nn.Parameter):
            raise UnsupportedModelError(
                f"cannot find units through a parameter used outside its module ({DG._param_to_name.get(module)}); "
                "train this model with granularity 'weight'"
            )
        if not any(True for _ in module.parameters(recurse=False)):
            continue  # activations, pools, reshapes, sums: they carry the coupling, not entries
        positions = torch.as_tensor(list(item.idxs), dtype=torch.int64)
        units = torch.as_tensor(list(item.root_idxs), dtype=torch.int64)
        is_out = DG.is_out_channel_pruning_fn(item.dep.handler)
        slices += _slices_of(module, names[module], is_out, positions, units)
        if is_out and isinstance(module, (nn.Linear, nn.modules.conv._ConvNd)):
            roots.append(f"{names[module]}.weight" if names[module] else "weight")
    return UnitGroup(min(roots, key=order.__getitem__), size, tuple(slices))


def _candidate_groups(model: nn.Module, example_inputs: Any, ignored: Iterable[nn.Module] | None) -> list[UnitGroup]:
    """Every group (not yet verified), in parameter order: the heads of the attention modules of
    :data:`_HEAD_KINDS`, and the groups Torch-Pruning traces from the other Linear/conv roots (the query,
    key and value projections of those modules are no roots: their outputs are the heads)."""
    tp = _torch_pruning()
    _refuse_untraceable(model)
    twin = copy.deepcopy(model).eval()  # the graph's forward pass and hooks never touch the user's model
    if ignored is None:
        ignored_twin = _output_layers(twin, example_inputs)
    else:
        names_in_model = {id(m): n for n, m in model.named_modules()}
        ignored_twin = []
        for m in ignored:
            if id(m) not in names_in_model:
                raise InputError(f"ignored layer {type(m).__name__} is not a module of the model")
            ignored_twin.append(twin.get_submodule(names_in_model[id(m)]))
    heads, head_roots = [], []
    for prefix, module, kind in _head_modules(twin):
        projections = [module.get_submodule(path) for path in kind.projections]
        head_roots += projections[:3]
        if kind.count(module) > 1 and not any(any(p is m for m in ignored_twin) for p in projections):
            heads.append(_head_group(prefix, module, kind))  # one head can never be removed: no group
    tabled = []
    for prefix, module, kind in _tabled_modules(twin):
        if not any(any(layer is m for m in ignored_twin) for layer in kind.layers(module)):
            group = kind.group(prefix, module)
            tabled += [group] if group is not None else []
    order = {name: i for i, (name, _) in enumerate(model.named_parameters())}
    roots = (nn.Linear, nn.modules.conv._ConvNd)
    # the tables' traceable modules (nn.MultiheadAttention) are no roots, and a traced group that would cut
    # one (its embedding width) is none of ours
    skip = ignored_twin + head_roots + [m for _, module, kind in _tabled_modules(twin) if kind.traceable for m in kind.layers(module)]
    traced = []
    if any(isinstance(m, roots) and not any(m is k for k in skip) for m in twin.modules()):
        if any(not kind.traceable for _, _, kind in _tabled_modules(twin)):  # Torch-Pruning cannot trace through Conv1D
            raise UnsupportedModelError(
                "cannot find units in a model that has both Hugging Face Conv1D layers and other Linear or convolution "
                "layers to prune (Torch-Pruning cannot trace through Conv1D); only the output layers may be Linear. "
                "Train this model with granularity 'weight'"
            )
        DG = tp.DependencyGraph().build_dependency(twin, example_inputs)
        names = {m: n for n, m in twin.named_modules()}
        traced = [_group_from(g, DG, names, order) for g in DG.get_all_groups(ignored_layers=skip, root_module_types=roots)]
    heads = heads + tabled
    head_axes = {(s.param, s.dim) for g in heads for s in g.slices}
    overlapping = [g for g in traced if any((s.param, s.dim) in head_axes for s in g.slices)]  # none on gpt or BERT
    if overlapping:  # cut along a head axis by the graph too: the two cuts would not agree
        warnings.warn(
            "these coupled groups cut the same axes as attention heads and are left dense: "
            + ", ".join(f"{g.name} ({g.size} units)" for g in overlapping),
            stacklevel=3,
        )
    groups = heads + [g for g in traced if not any(g is o for o in overlapping)]
    return sorted(groups, key=lambda g: order[g.name])


def unit_keep_masks(
    groups: Sequence[UnitGroup], keep: Mapping[str, Tensor], params: Mapping[str, Tensor], consumers_only: bool = False
) -> dict[str, Tensor]:
    """Expands per-group unit keep-vectors (``keep[group.name]``: 0/1 float or bool, length ``group.size``)
    into keep-masks of the parameters' full shapes (0/1 in each parameter's dtype and on its device), for
    every parameter any group touches: the product over the groups that touch it, so a weight is cut by
    its output group's rows and its input group's columns. A group missing from ``keep`` keeps all units.
    ``consumers_only``: only the consumer slices are masked (the others' masks stay ones): the network
    computes the same, and a removed unit's own entries stay in the forward pass."""
    masks: dict[str, Tensor] = {}
    for group in groups:
        if group.name not in keep:
            continue
        vector = torch.as_tensor(keep[group.name])
        if vector.shape != (group.size,):
            raise InputError(f"keep[{group.name!r}] has shape {tuple(vector.shape)}; the group has {group.size} units")
        for s in group.slices:
            if s.param not in params:
                raise InputError(f"parameter {s.param!r} of unit group {group.name!r} is not in params")
            p = params[s.param]
            if s.param not in masks:
                masks[s.param] = torch.ones_like(p, memory_format=torch.contiguous_format)
            if consumers_only and not s.consumer:
                continue
            axis = torch.ones(p.shape[s.dim], dtype=p.dtype, device=p.device)
            axis[s.index.to(p.device)] = vector.to(device=p.device, dtype=p.dtype)[s.unit.to(p.device)]
            shape = [1] * p.dim()
            shape[s.dim] = -1
            masks[s.param].mul_(axis.view(shape))
    return masks


def removed_units(groups: Sequence[UnitGroup], params: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """The units whose consumer entries are exactly zero (what unit masks leave behind: the unit may
    still compute, nothing reads it), per group name, as int64 indices; in a group without consumer
    slices, the units zero in every slice. Groups with none removed are left out. Feed it to
    :func:`compact_model`: cutting such a unit leaves the outputs as they are."""
    removed = {}
    for group in groups:
        alive = torch.zeros(group.size, dtype=torch.bool)
        consumers = [s for s in group.slices if s.consumer]
        for s in consumers or group.slices:
            p = params[s.param].detach().cpu()
            nonzero = (p != 0).movedim(s.dim, 0).reshape(p.shape[s.dim], -1).any(1)
            alive[s.unit[nonzero[s.index]]] = True
        if not alive.all():
            removed[group.name] = torch.nonzero(~alive).flatten()
    return removed


def _cut(model: nn.Module, example_inputs: Any, removed: Mapping[str, Tensor]) -> nn.Module:
    """Physically removes the units (in place): attention heads by slicing their projections, the other
    groups with the dependency graph's pruning (traced after the heads are cut)."""
    heads = {_head_group(prefix, module, kind).name: (module, kind) for prefix, module, kind in _head_modules(model)}
    tabled = {}
    for prefix, module, kind in _tabled_modules(model):
        group = kind.group(prefix, module)
        if group is not None:
            tabled[group.name] = (module, kind)
    rest = {}
    for name, units in removed.items():
        if len(units) == 0:
            continue
        if name in heads:
            _cut_heads(*heads[name], units)
        elif name in tabled:
            tabled[name][1].cut(tabled[name][0], units)
        else:
            rest[name] = units
    if not rest:
        return model
    tp = _torch_pruning()
    DG = tp.DependencyGraph().build_dependency(model, example_inputs)
    for name, units in rest.items():
        root = model.get_submodule(name.rsplit(".", 1)[0] if "." in name else "")
        pruner = DG.get_pruner_of_module(root)
        DG.get_pruning_group(root, pruner.prune_out_channels, [int(u) for u in units]).prune()
    return model


def _check_groups(model: nn.Module, example_inputs: Any, groups: Sequence[UnitGroup], seed: int = 0) -> str | None:
    """None when cutting a random half of every group's units reproduces the masked model, else why not.
    The model is masked as training masks it, at the consumers only: the removed units still compute,
    so a path from them to the outputs that no consumer slice covers (a norm across the units) shows."""
    twin = copy.deepcopy(model).double().eval()
    example_inputs = tree_map(lambda x: x.double() if isinstance(x, Tensor) and x.is_floating_point() else x, example_inputs)
    generator = torch.Generator().manual_seed(seed)
    keep, removed = {}, {}
    for g in groups:
        order = torch.randperm(g.size, generator=generator)
        cut = order[: g.size // 2]
        keep[g.name] = torch.ones(g.size).index_fill_(0, cut, 0.0)
        removed[g.name] = cut.sort().values
    params = dict(twin.named_parameters())
    with torch.no_grad():
        for name, mask in unit_keep_masks(groups, keep, params, consumers_only=True).items():
            params[name].mul_(mask)
        expected = tree_flatten(_call(twin, example_inputs))[0]
    try:
        _cut(twin, example_inputs, removed)  # traces with autograd: outside no_grad
        with torch.no_grad():
            got = tree_flatten(_call(twin, example_inputs))[0]
    except Exception as exc:  # noqa: BLE001 - any failure of the cut model is the answer, reported in the warning
        return f"the cut model fails to run ({type(exc).__name__}: {exc})"
    for e, g in zip(expected, got):
        if not isinstance(e, Tensor):
            continue
        if e.shape != g.shape:
            return f"cutting changes the output's shape from {tuple(e.shape)} to {tuple(g.shape)} (an output layer)"
        scale = e.abs().max().item() if e.numel() else 0.0
        error = (e - g).abs().max().item() if e.numel() else 0.0
        if error > _VERIFY_RTOL * scale:
            return f"the cut model's outputs differ from the masked model's by {error:.3g} (of {scale:.3g})"
    return None


def find_unit_groups(model: nn.Module, example_inputs: Any, *, ignored: Iterable[nn.Module] | None = None) -> list[UnitGroup]:
    """Coupled groups of the model, in the order of their root weights in ``model.named_parameters()``;
    the heads of each attention module of a known type (more than one head) are one group, named after
    its query weight.

    ``example_inputs`` is what the model is called with (a tensor, a tuple of positional arguments or a
    dict of keyword arguments). The output layer's outputs are never a unit: by default the Linear/conv
    layers whose output is the model's output are ignored; ``ignored`` replaces that choice. Groups whose
    cut model does not reproduce their masked model are left out with a warning that names them (see the
    module docstring); layers that cannot be traced raise :class:`UnsupportedModelError`. The model is
    not changed.
    """
    candidates = _candidate_groups(model, example_inputs, ignored)
    if not candidates or _check_groups(model, example_inputs, candidates) is None:
        return candidates
    groups, dropped = [], []
    for g in candidates:
        problem = _check_groups(model, example_inputs, [g])
        if problem is None:
            groups.append(g)
        else:
            dropped.append(f"{g.name} ({g.size} units): {problem}")
    if dropped:
        warnings.warn(
            "these coupled groups are not units (their layers cannot be cut to match the masked model; "
            "a LayerNorm across the units, a view into attention heads or a channel-padding shortcut does that) "
            "and are left dense: " + "; ".join(dropped),
            stacklevel=2,
        )
    if groups and (problem := _check_groups(model, example_inputs, groups)) is not None:
        raise UnsupportedModelError(f"the unit groups of this model cannot be cut together: {problem}")
    return groups


def compact_model(
    model: nn.Module, example_inputs: Any, removed: Mapping[str, Tensor], *, groups: Sequence[UnitGroup] | None = None
) -> nn.Module:
    """A deep copy with the removed units (``removed[group.name]``: int64 unit indices) physically cut by
    the dependency graph's pruning: coupled layers cut consistently, size attributes (in/out_features,
    channels, BatchNorm sizes) updated; attention heads by slicing the module's projections and lowering
    its head count. The model is not changed.

    When every unit of a group is listed, the one with the lowest index stays (with a warning): a layer
    of width zero cannot run, and the kept unit, all zero if the model was masked, changes no output.
    Use :func:`removed_units` to list the units a unit-masked model has zeroed. ``groups``: the model's
    :func:`find_unit_groups`, when at hand (spares tracing and verifying them again).
    """
    cuts = resolve_removed(find_unit_groups(model, example_inputs) if groups is None else groups, removed)
    twin = copy.deepcopy(model)
    mode = twin.training
    _cut(twin.eval(), example_inputs, cuts)
    return twin.train(mode)


def resolve_removed(groups: Sequence[UnitGroup], removed: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """The units :func:`compact_model` cuts: ``removed`` checked against ``groups`` (known names, indices in
    range), as sorted unique int64 indices, with the lowest-index unit of a fully removed group kept."""
    sizes = {g.name: g.size for g in groups}
    cuts = {}
    for name, units in removed.items():
        if name not in sizes:
            raise InputError(f"{name!r} is not a unit group of this model; its groups: {', '.join(sizes) or '(none)'}")
        units = torch.as_tensor(units, dtype=torch.int64).flatten().unique()
        size = sizes[name]
        if len(units) and (units.min() < 0 or units.max() >= size):
            raise InputError(f"removed[{name!r}] has unit indices outside 0..{size - 1}")
        if len(units) == size:
            warnings.warn(f"all {size} units of {name} are removed; one is kept so that the network stays connected", stacklevel=3)
            units = units[1:]
        cuts[name] = units
    return cuts
