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
import math

import numpy as np
import torch
from torch import Tensor

from snrprune import fused

COMBINE_MODES = ("agree", "either", "snr", "magnitude")
SCOPES = ("layer", "global")
#: From this many weights on (all layers together), the global scope finds its threshold by a sampled
#: bracket (:func:`_sampled_threshold`) instead of partitioning a copy of every magnitude (4 bytes a
#: weight: 0.46 GiB at GPT-2-small scale, ``benchmarks/global_select_memory.py``). Same masks either way.
SAMPLED_SELECT_MIN = 1 << 24
#: Entries of a layer handled at once by the sampled path (its temporaries are a few of these).
_CHUNK = 1 << 22
#: Sample size of the sampled path, and how many sample standard deviations of the k-th smallest's
#: sample rank the bracket spans on each side on the first try (4x more on each retry).
_SAMPLE = 1 << 17
_MARGIN = 5.0
_ATTEMPTS = 3
#: The sampled path gives up (and copies every magnitude) if the bracket's interior holds more than
#: this many entries, or more than 4x what the sample predicts, whichever is larger.
_INTERIOR_MIN_CAP = 1 << 20
_INTERIOR_CAP_FACTOR = 4
#: What one mask entry decides: a single weight, or a whole unit (a neuron, a channel: :mod:`snrprune.units`).
GRANULARITIES = ("weight", "unit")
#: How units of different groups compare in global scope (:meth:`snrprune.pruners.Pruning.unit_scores`):
#: ``"rms"``, the RMS of a unit's dense weights; ``"relative"``, that RMS over its group's median.
UNIT_RANKINGS = ("rms", "relative")
DEFAULT_UNIT_RANKING = "relative"


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
    its own layer (``benchmarks/memory.py``: the global update's temporaries were most of DPF's memory).
    From ``SAMPLED_SELECT_MIN`` weights on, the threshold is found by a sampled bracket instead and the
    masks are written in chunks (:func:`_sampled_threshold`): a few chunks and the bracket's entries
    of scratch instead of a float per weight; the masks are the same."""
    if not weights:
        return {}
    first = next(iter(weights.values()))
    dtype = functools.reduce(torch.promote_types, (w.dtype for w in weights.values()))
    dtype = dtype if dtype.is_floating_point else torch.float32
    n = sum(w.numel() for w in weights.values())
    if n_prune <= 0 or n_prune >= n:
        return {name: torch.full(w.shape, n_prune <= 0, dtype=torch.bool, device=w.device) for name, w in weights.items()}
    if n >= SAMPLED_SELECT_MIN:
        threshold = _sampled_threshold(weights, n, n_prune, dtype)
        if threshold is not None:
            return _chunked_global_masks(weights, n, n_prune, dtype, threshold)
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


def _magnitudes(flat: Tensor, dtype: torch.dtype) -> Tensor:
    """|flat| in the selection's dtype (a fresh tensor: the caller may reuse it)."""
    magnitude = flat.abs()
    return magnitude if magnitude.dtype == dtype else magnitude.to(dtype)


def _magnitude_chunks(layers: list[Tensor], dtype: torch.dtype, reverse: bool = False):
    """Yields (layer, start, |chunk| in ``dtype``, two bool buffers of its size) for the flattened
    layers ``_CHUNK`` entries at a time, in order (or from the end). The three buffers are allocated
    once and reused: chunk temporaries allocated and freed between the masks' allocations would
    fragment the heap, and freed holes stay resident (seen as 1.5 bytes a weight of peak RSS)."""
    size = min(_CHUNK, max(flat.numel() for flat in layers))
    buffers: dict[torch.device, tuple[Tensor, Tensor, Tensor]] = {}
    for i in reversed(range(len(layers))) if reverse else range(len(layers)):
        flat = layers[i]
        if flat.device not in buffers:
            buffers[flat.device] = (
                torch.empty(size, dtype=dtype, device=flat.device),
                torch.empty(size, dtype=torch.bool, device=flat.device),
                torch.empty(size, dtype=torch.bool, device=flat.device),
            )
        starts = range(0, flat.numel(), _CHUNK)
        for s in reversed(starts) if reverse else starts:
            chunk = flat[s : s + _CHUNK]
            magnitude, first, second = (buffer[: chunk.numel()] for buffer in buffers[flat.device])
            if chunk.dtype == dtype:
                torch.abs(chunk, out=magnitude)
            else:
                magnitude.copy_(chunk).abs_()
            yield i, s, magnitude, first, second


def _sampled_threshold(weights: dict[str, Tensor], n: int, k: int, dtype: torch.dtype) -> Tensor | None:
    """The exact k-th smallest |w| over all layers (as :func:`kth_smallest` of their concatenation
    would give it), found with O(sample + bracket) memory instead of a copy of every magnitude.

    A random sample of the magnitudes (its generator seeded by n and k: the same inputs draw the same
    sample, though only the time taken depends on it) brackets the k-th smallest between two of its
    order statistics, ``_MARGIN`` sample standard deviations of its rank either side. One pass over
    the layers, ``_CHUNK`` entries at a time, counts the entries below and equal to each end and
    gathers those strictly inside; the k-th smallest is then an end, or selected exactly among the
    gathered ones. A bracket that misses is widened (4x) from the side the counts point to, up to
    ``_ATTEMPTS`` passes; None (the caller then copies every magnitude) if all missed, if the interior
    holds far more entries than the sample predicts, or if the k-th smallest is NaN."""
    layers = [w.detach().reshape(-1) for w in weights.values()]
    generator = torch.Generator().manual_seed((n * 0x9E3779B1 + k) % (1 << 62))
    size = min(_SAMPLE, n)
    index = torch.randint(n, (size,), generator=generator).sort().values
    parts, start = [], 0
    for flat in layers:
        lo, hi = torch.searchsorted(index, torch.tensor([start, start + flat.numel()])).tolist()
        if hi > lo:
            parts.append(_magnitudes(flat[(index[lo:hi] - start).to(flat.device)], dtype).cpu())
        start += flat.numel()
    sample = torch.cat(parts).sort().values  # NaNs last
    del parts, index
    q = k / n
    rank = q * size - 1  # 0-based position of the k-th smallest's quantile in the sorted sample
    spread = math.sqrt(size * q * (1.0 - q))
    kernels = fused.kernels() if dtype == torch.float32 else None
    below_bound, above_bound = -math.inf, math.inf  # what earlier misses proved: bound < k-th < bound
    for attempt in range(_ATTEMPTS):
        margin = _MARGIN * 4**attempt * spread + 1.0
        lo_at, hi_at = math.floor(rank - margin), math.ceil(rank + margin)
        lo = float(sample[lo_at]) if lo_at >= 0 else -math.inf
        hi = float(sample[hi_at]) if hi_at < size else math.inf
        lo, hi = max(lo, below_bound), min(hi, above_bound)
        if math.isnan(lo) or math.isnan(hi) or lo > hi:
            return None
        cap = max(_INTERIOR_MIN_CAP, _INTERIOR_CAP_FACTOR * (min(hi_at, size) - max(lo_at, -1) + 1) * n // size)
        lo_t, hi_t = torch.tensor(lo, dtype=dtype), torch.tensor(hi, dtype=dtype)
        less_lo = equal_lo = less_hi = equal_hi = inside_count = 0
        inside = []
        for _, _, magnitude, first, second in _magnitude_chunks(layers, dtype):
            if kernels is not None and magnitude.device.type == "cpu":
                below, equal = kernels.count_around(magnitude, lo, False)
                less_lo, equal_lo = less_lo + below, equal_lo + equal
                below, equal = kernels.count_around(magnitude, hi, False)
                less_hi, equal_hi = less_hi + below, equal_hi + equal
            else:
                less_lo += int(torch.count_nonzero(torch.lt(magnitude, lo_t, out=first)))
                equal_lo += int(torch.count_nonzero(torch.eq(magnitude, lo_t, out=first)))
                less_hi += int(torch.count_nonzero(torch.lt(magnitude, hi_t, out=first)))
                equal_hi += int(torch.count_nonzero(torch.eq(magnitude, hi_t, out=first)))
            if lo < hi:
                torch.gt(magnitude, lo_t, out=first)
                first.logical_and_(torch.lt(magnitude, hi_t, out=second))
                inside.append(magnitude[first])
                inside_count += inside[-1].numel()
                if inside_count > cap:
                    return None
        if k <= less_lo:  # below the bracket
            above_bound = lo
        elif k <= less_lo + equal_lo:
            return lo_t
        elif k <= less_hi:
            values = torch.cat(inside) if len(inside) != 1 else inside[0]
            del inside
            return kth_smallest(values, k - less_lo - equal_lo, scratch=True).to(dtype).cpu()
        elif k <= less_hi + equal_hi:
            return hi_t
        elif hi == math.inf:  # nothing above the bracket but NaNs: the k-th smallest is NaN
            return None
        else:  # above the bracket
            below_bound = hi
    return None


def _chunked_global_masks(weights: dict[str, Tensor], n: int, n_prune: int, dtype: torch.dtype, threshold: Tensor) -> dict[str, Tensor]:
    """The global keep-masks at ``threshold`` (itself pruned, then the last ties kept until exactly
    ``n_prune`` are pruned), as :func:`_global_keep_largest` writes them, ``_CHUNK`` entries at a time."""
    layers = [w.detach().reshape(-1) for w in weights.values()]
    out = {name: torch.empty(w.shape, dtype=torch.bool, device=w.device) for name, w in weights.items()}  # before the scratch
    masks = [m.view(-1) for m in out.values()]
    for i, s, magnitude, _, _ in _magnitude_chunks(layers, dtype):
        torch.gt(magnitude, threshold, out=masks[i][s : s + _CHUNK])
    excess = n - sum(count(m) for m in masks) - n_prune  # ties pruned beyond n_prune: keep the last `excess` entries equal to the threshold
    if excess > 0:
        for i, s, magnitude, first, _ in _magnitude_chunks(layers, dtype, reverse=True):
            ties = torch.eq(magnitude, threshold, out=first)
            n_ties = count(ties)
            if n_ties <= excess:  # all of this chunk's ties
                masks[i][s : s + _CHUNK].logical_or_(ties)
            else:  # its last `excess`
                masks[i][s : s + _CHUNK][ties.nonzero().squeeze(1)[n_ties - excess :]] = True
            excess -= n_ties
            if excess <= 0:
                break
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
