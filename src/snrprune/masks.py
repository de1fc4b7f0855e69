"""Mask arithmetic: exact k-smallest selection by magnitude, scopes, and the four SNR/magnitude combinations.

Masks are keep-masks: a bool tensor of the weight's shape, True = keep. Selection is exact and
deterministic: the k smallest values are pruned, ties at the threshold broken towards the lower flat
index (in global scope: the layer order, then the flat index).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

COMBINE_MODES = ("agree", "either", "snr", "magnitude")
SCOPES = ("layer", "global")

# Below this size a plain kthvalue is as fast as the bracketing below.
_SAMPLE_SIZE = 4096


def check_choice(value: str, valid: tuple[str, ...], what: str) -> str:
    if value not in valid:
        raise ValueError(f"unknown {what} {value!r}; valid values: {', '.join(valid)}")
    return value


def kth_smallest(values: Tensor, k: int) -> Tensor:
    """The exact k-th smallest entry (1-based) of a 1-D tensor, faster than ``torch.kthvalue`` on big ones.

    A strided sample, sorted, brackets the k-th value; one counting pass checks the bracket, and the
    exact value is selected among the few entries inside it. A bracket that misses falls back to
    ``torch.kthvalue`` on everything, so the answer never depends on the sample.
    """
    n = values.numel()
    if not 1 <= k <= n:
        raise ValueError(f"k={k} is outside [1, {n}]")
    if n <= 4 * _SAMPLE_SIZE:
        return torch.kthvalue(values, k).values
    sample = values[:: n // _SAMPLE_SIZE].sort().values
    m = sample.numel()
    q = k / n
    margin = 4.0 * math.sqrt(q * (1.0 - q) / m) + 2.0 / m
    lo, hi = int((q - margin) * m), math.ceil((q + margin) * m)
    below = 0
    inside = torch.ones_like(values, dtype=torch.bool)
    if lo >= 0:
        not_below = values >= sample[lo]
        below = n - int(not_below.sum())
        inside = not_below
    if hi < m:
        inside = inside & (values < sample[hi])
    candidates = values[inside]
    rank = k - below
    if 1 <= rank <= candidates.numel():
        return torch.kthvalue(candidates, rank).values
    return torch.kthvalue(values, k).values


def smallest_k_mask(values: Tensor, k: int) -> Tensor:
    """Bool mask (same shape) of exactly the k smallest entries, ties broken towards lower flat index."""
    flat = values.reshape(-1)
    n = flat.numel()
    if k <= 0:
        return torch.zeros_like(values, dtype=torch.bool)
    if k >= n:
        return torch.ones_like(values, dtype=torch.bool)
    threshold = kth_smallest(flat, k)
    mask = flat < threshold
    missing = k - int(mask.sum())
    if missing > 0:  # ties at the threshold: take the first `missing` of them
        ties = flat == threshold
        mask |= ties & (ties.cumsum(0) <= missing)
    return mask.view_as(values)


def magnitude_keep_masks(weights: dict[str, Tensor], n_prune: dict[str, int] | int, scope: str) -> dict[str, Tensor]:
    """Keep-masks that prune the smallest |w|: per layer (``n_prune`` per name) or over all layers (an int)."""
    check_choice(scope, SCOPES, "scope")
    if scope == "layer":
        if isinstance(n_prune, int):
            raise TypeError("layer scope needs a prune count per layer")
        return {name: ~smallest_k_mask(w.abs(), n_prune[name]) for name, w in weights.items()}
    if not isinstance(n_prune, int):
        n_prune = sum(n_prune.values())
    flat = torch.cat([w.detach().abs().reshape(-1) for w in weights.values()])
    keep = ~smallest_k_mask(flat, n_prune)
    out, start = {}, 0
    for name, w in weights.items():
        out[name] = keep[start : start + w.numel()].view_as(w)
        start += w.numel()
    return out


def combine(keep_snr: Tensor, keep_mag: Tensor, mode: str) -> Tensor:
    """SPEC section 3: ``agree`` prunes only where both criteria say prune; ``either`` where one does."""
    if mode == "agree":
        return keep_snr | keep_mag
    if mode == "either":
        return keep_snr & keep_mag
    if mode == "snr":
        return keep_snr.clone()
    if mode == "magnitude":
        return keep_mag
    raise ValueError(f"unknown combine mode {mode!r}; valid values: {', '.join(COMBINE_MODES)}")


def sparsity(masks: dict[str, Tensor]) -> float:
    """Fraction of pruned entries over all masks."""
    total = sum(m.numel() for m in masks.values())
    kept = sum(int(m.sum()) for m in masks.values())
    return 1.0 - kept / total if total else 0.0
