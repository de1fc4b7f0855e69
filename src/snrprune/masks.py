"""Mask arithmetic: exact k-smallest selection by magnitude, scopes, and the four SNR/magnitude combinations.

Keep-masks are 1 = keep, 0 = prune. The selections here write them as floating-point 0/1 tensors
of the weights' dtype: on CPU, comparisons that write floats and float sums run several times
faster than their bool counterparts. A pruning object stores them as bool (one byte a weight
instead of four: ``benchmarks/memory.py``) and applies them every step with a fused kernel
(``Pruning`` in ``pruners/base.py``). Selection is exact and deterministic: the k smallest values are pruned, ties at the
threshold broken towards the lower flat index (in global scope: the layer order, then the index).
"""

from __future__ import annotations

import functools

import numpy as np
import torch
from torch import Tensor

COMBINE_MODES = ("agree", "either", "snr", "magnitude")
SCOPES = ("layer", "global")
#: What one mask entry decides: a single weight, or a whole unit (a neuron, a channel: :mod:`snrprune.units`).
GRANULARITIES = ("weight", "unit")


def count(mask: Tensor) -> int:
    """Number of ones in a bool mask, or in a 0/1 float mask (a float32 sum is exact below 2**24 entries, and faster)."""
    if mask.dtype == torch.bool:
        return int(torch.count_nonzero(mask))
    return round(float(mask.sum(dtype=torch.float64 if mask.numel() >= 1 << 24 else None)))


def check_choice(value: str, valid: tuple[str, ...], what: str) -> str:
    if value not in valid:
        raise ValueError(f"unknown {what} {value!r}; valid values: {', '.join(valid)}")
    return value


def kth_smallest(values: Tensor, k: int, scratch: bool = False) -> Tensor:
    """The exact k-th smallest entry (1-based) of a 1-D tensor.

    On CPU numpy's introselect (``np.partition``, vectorized in numpy 2) is several times faster than
    ``torch.kthvalue`` (``benchmarks/mask_selection.py``); other devices use ``torch.kthvalue``.
    With ``scratch`` the caller gives up ``values``: it is reordered in place instead of copied.
    (Starting from the previous update's threshold was tried: on 2 cores the counting and band
    extraction cost as much as the whole introselect, and a 3-epoch LeNet-300 run spent 25% longer
    selecting. A radix-histogram select and a sampled-band select in C++ were slower than numpy's.)
    """
    n = values.numel()
    if not 1 <= k <= n:
        raise ValueError(f"k={k} is outside [1, {n}]")
    if values.device.type != "cpu" or values.dtype not in (torch.float32, torch.float64, torch.float16):
        return torch.kthvalue(values, k).values
    array = values.detach().numpy()
    if scratch:
        array.partition(k - 1)
        return torch.tensor(array[k - 1], dtype=values.dtype)
    return torch.tensor(np.partition(array, k - 1)[k - 1], dtype=values.dtype)


def keep_largest(values: Tensor, n_prune: int, out: Tensor | None = None) -> Tensor:
    """Float keep-mask (same shape) pruning exactly the ``n_prune`` smallest entries.

    Ties at the threshold are pruned from the lowest flat index on. ``out`` may be a float or bool
    tensor of the same shape to write into (the mask is then of its dtype).
    """
    flat = values.reshape(-1)
    n = flat.numel()
    if out is None:
        out = torch.empty(values.shape, dtype=values.dtype if values.is_floating_point() else torch.float32, device=values.device)
    if n_prune <= 0:
        return out.fill_(1.0)
    if n_prune >= n:
        return out.fill_(0.0)
    threshold = kth_smallest(flat, n_prune)  # itself pruned
    keep = torch.gt(values, threshold, out=out)
    excess = n - count(keep) - n_prune  # ties pruned beyond n_prune
    if excess > 0:  # keep the last `excess` entries equal to the threshold
        ties = (flat == threshold).nonzero().squeeze(1)
        keep.view(-1)[ties[ties.numel() - excess :]] = 1.0
    return keep


def smallest_k_mask(values: Tensor, k: int) -> Tensor:
    """Bool mask (same shape) of exactly the k smallest entries, ties broken towards lower flat index."""
    return keep_largest(values, k) == 0


def magnitude_keep_masks(weights: dict[str, Tensor], n_prune: dict[str, int] | int, scope: str) -> dict[str, Tensor]:
    """Bool keep-masks pruning the smallest |w|: per layer (``n_prune`` per name) or over all layers (an int).

    Bool, because a whole network's new masks exist beside the pruning object's current ones until
    they replace them: one byte a weight of temporaries instead of four (``benchmarks/memory.py``).
    """
    check_choice(scope, SCOPES, "scope")
    if scope == "layer":
        if isinstance(n_prune, int):
            raise TypeError("layer scope needs a prune count per layer")
        return {name: keep_largest(w.detach().abs(), n_prune[name], out=torch.empty(w.shape, dtype=torch.bool, device=w.device)) for name, w in weights.items()}
    if not isinstance(n_prune, int):
        n_prune = sum(n_prune.values())
    return _global_keep_largest(weights, n_prune)


def _global_keep_largest(weights: dict[str, Tensor], n_prune: int) -> dict[str, Tensor]:
    """:func:`keep_largest` over the magnitudes of all tensors at once (ties pruned from the lowest
    index in the layers' order), with one float per weight of scratch instead of three: the magnitudes
    are gathered once and partitioned in place for the threshold, and each mask is then compared from
    its own layer (``benchmarks/memory.py``: the global update's temporaries were most of DPF's memory)."""
    if not weights:
        return {}
    first = next(iter(weights.values()))
    dtype = functools.reduce(torch.promote_types, (w.dtype for w in weights.values()))
    dtype = dtype if dtype.is_floating_point else torch.float32
    n = sum(w.numel() for w in weights.values())
    if n_prune <= 0 or n_prune >= n:
        return {name: torch.full(w.shape, n_prune <= 0, dtype=torch.bool, device=w.device) for name, w in weights.items()}
    flat = torch.empty(n, dtype=dtype, device=first.device)
    start = 0
    for w in weights.values():
        flat[start : start + w.numel()].copy_(w.detach().reshape(-1)).abs_()
        start += w.numel()
    threshold = kth_smallest(flat, n_prune, scratch=True)  # itself pruned
    del flat
    out = {}
    for name, w in weights.items():
        out[name] = torch.gt(w.detach().abs().to(dtype), threshold, out=torch.empty(w.shape, dtype=torch.bool, device=w.device))
    excess = n - sum(count(m) for m in out.values()) - n_prune  # ties pruned beyond n_prune
    for name, w in reversed(weights.items()):  # keep the last `excess` entries equal to the threshold
        if excess <= 0:
            break
        ties = (w.detach().abs().to(dtype).reshape(-1) == threshold).nonzero().squeeze(1)
        take = min(excess, ties.numel())
        out[name].view(-1)[ties[ties.numel() - take :]] = True
        excess -= take
    return out


def keep_units(scores: dict[str, Tensor], n_prune: dict[str, int] | int, scope: str) -> dict[str, Tensor]:
    """Bool unit keep-vectors pruning the lowest scores (per group, or over all groups), as
    :func:`magnitude_keep_masks` does for weights, except that every group keeps its highest-scored
    unit: a group without units would cut the network in two. A count that asks for more is capped
    at what the guard leaves."""
    guarded = {}
    for name, score in scores.items():
        guarded[name] = score.clone()
        guarded[name][score.argmax()] = torch.inf
    if scope == "global":
        if not isinstance(n_prune, int):
            raise TypeError("global scope needs one prune count")
        n_prune = min(n_prune, sum(s.numel() for s in scores.values()) - len(scores))
    elif isinstance(n_prune, int):
        raise TypeError("layer scope needs a prune count per group")
    else:
        n_prune = {name: min(n, scores[name].numel() - 1) for name, n in n_prune.items()}
    return magnitude_keep_masks(guarded, n_prune, scope)


def combine(keep_snr: Tensor, keep_mag: Tensor, mode: str) -> Tensor:
    """SPEC section 3: ``agree`` prunes only where both criteria say prune; ``either`` where one does.

    Works on bool masks and on float 0/1 masks alike.
    """
    if mode == "agree":
        return keep_snr | keep_mag if keep_snr.dtype == torch.bool else torch.maximum(keep_snr, keep_mag)
    if mode == "either":
        return keep_snr & keep_mag if keep_snr.dtype == torch.bool else torch.minimum(keep_snr, keep_mag)
    if mode == "snr":
        return keep_snr.clone()
    if mode == "magnitude":
        return keep_mag
    raise ValueError(f"unknown combine mode {mode!r}; valid values: {', '.join(COMBINE_MODES)}")


def sparsity(masks: dict[str, Tensor]) -> float:
    """Fraction of pruned entries over all masks (bool or float 0/1)."""
    total = sum(m.numel() for m in masks.values())
    kept = sum(count(m.float()) for m in masks.values())
    return 1.0 - kept / total if total else 0.0
