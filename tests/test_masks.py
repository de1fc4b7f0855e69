"""Mask rules on hand-made tensors: exact selection, ties, scopes, the four combine modes."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from snrprune.masks import combine, kth_smallest, magnitude_keep_masks, smallest_k_mask, sparsity


def oracle_smallest_k(values: torch.Tensor, k: int) -> torch.Tensor:
    """k smallest by a stable sort: equal values keep their index order."""
    flat = values.reshape(-1)
    order = torch.sort(flat, stable=True).indices
    mask = torch.zeros_like(flat, dtype=torch.bool)
    mask[order[:k]] = True
    return mask.view_as(values)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.integers(min_value=0, max_value=6), min_size=1, max_size=40),
    st.data(),
)
def test_smallest_k_matches_stable_sort_with_many_ties(ints, data):
    values = torch.tensor(ints, dtype=torch.float32)
    k = data.draw(st.integers(min_value=0, max_value=len(ints)))
    assert torch.equal(smallest_k_mask(values, k), oracle_smallest_k(values, k))


@pytest.mark.parametrize("k", [1, 7, 20_000, 123_456, 234_000, 235_199, 235_200])
def test_kth_smallest_is_exact_on_large_tensors(k):
    torch.manual_seed(0)
    values = torch.randn(235_200).abs()
    assert kth_smallest(values, k) == torch.kthvalue(values, k).values
    assert int(smallest_k_mask(values, k).sum()) == k


def test_kth_smallest_exact_on_structured_and_tied_data():
    # rows of very different scale defeat a strided sample; sorted data and huge ties too
    torch.manual_seed(1)
    scaled = (torch.randn(300, 784) * torch.logspace(-6, 2, 300)[:, None]).abs().reshape(-1)
    sorted_values = torch.arange(100_000, dtype=torch.float32)
    tied = torch.cat([torch.zeros(60_000), torch.ones(40_000)])
    for values in (scaled, sorted_values, tied, sorted_values.flip(0)):
        for k in (1, values.numel() // 3, values.numel() // 2 + 17, values.numel() - 1):
            assert kth_smallest(values, k) == torch.kthvalue(values, k).values
            scratch = values.clone()  # in place: same value, same multiset left behind
            assert kth_smallest(scratch, k, scratch=True) == torch.kthvalue(values, k).values
            assert torch.equal(scratch.sort().values, values.sort().values)
    assert torch.equal(smallest_k_mask(tied, 70_000), oracle_smallest_k(tied, 70_000))


def test_kth_smallest_rejects_k_out_of_range():
    with pytest.raises(ValueError, match="outside"):
        kth_smallest(torch.ones(3), 4)


def test_magnitude_masks_layer_and_global_scope():
    weights = {
        "a": torch.tensor([[0.1, -5.0], [0.3, 0.2]]),
        "b": torch.tensor([4.0, -0.05, 3.0]),
    }
    layer = magnitude_keep_masks(weights, {"a": 2, "b": 1}, "layer")
    assert layer["a"].tolist() == [[False, True], [True, False]]
    assert layer["b"].tolist() == [True, False, True]
    glob = magnitude_keep_masks(weights, 3, "global")  # smallest |w| overall: 0.05, 0.1, 0.2
    assert glob["a"].tolist() == [[False, True], [True, False]]
    assert glob["b"].tolist() == [True, False, True]
    # a global count given per layer is summed
    assert magnitude_keep_masks(weights, {"a": 1, "b": 2}, "global")["b"].tolist() == [True, False, True]


def test_global_scope_breaks_ties_by_layer_order_then_index():
    weights = {"a": torch.tensor([1.0, 2.0, 1.0]), "b": torch.tensor([1.0, 0.5])}
    keep = magnitude_keep_masks(weights, 3, "global")  # 0.5 first, then the first two 1.0s (both in a)
    assert keep["a"].tolist() == [False, True, False]
    assert keep["b"].tolist() == [True, False]


def test_unknown_scope_lists_valid_values():
    with pytest.raises(ValueError, match="layer, global"):
        magnitude_keep_masks({"a": torch.ones(2)}, 1, "model")


def test_combine_truth_table():
    keep_snr = torch.tensor([True, True, False, False])
    keep_mag = torch.tensor([True, False, True, False])
    assert combine(keep_snr, keep_mag, "agree").tolist() == [True, True, True, False]
    assert combine(keep_snr, keep_mag, "either").tolist() == [True, False, False, False]
    assert combine(keep_snr, keep_mag, "snr").tolist() == [True, True, False, False]
    assert combine(keep_snr, keep_mag, "magnitude").tolist() == [True, False, True, False]
    with pytest.raises(ValueError, match="agree, either, snr, magnitude"):
        combine(keep_snr, keep_mag, "both")


def test_sparsity_counts_pruned_entries():
    assert sparsity({"a": torch.tensor([True, False]), "b": torch.tensor([False, False])}) == 0.75


@settings(max_examples=150, deadline=None)
@given(
    st.lists(st.tuples(st.integers(1, 5), st.integers(1, 6)), min_size=1, max_size=4),
    st.booleans(),
    st.booleans(),
    st.data(),
)
def test_global_masks_equal_one_selection_over_the_concatenated_magnitudes(shapes, ties, mixed, data):
    """The global scope selects layer by layer with little scratch memory; the oracle is the plain
    selection over one concatenated vector (ties pruned from the lowest index in the layers' order)."""
    g = torch.Generator().manual_seed(data.draw(st.integers(0, 2**16)))
    weights = {}
    for i, shape in enumerate(shapes):
        w = torch.randint(-3, 4, shape, generator=g).float() if ties else torch.randn(shape, generator=g)
        weights[f"w{i}"] = w.bfloat16() if mixed and i % 2 else w
    n = sum(w.numel() for w in weights.values())
    n_prune = data.draw(st.integers(-1, n + 1))
    flat = torch.cat([w.abs().reshape(-1) for w in weights.values()])
    expected = smallest_k_mask(flat, n_prune) == 0 if 0 < n_prune < n else torch.full((n,), n_prune <= 0)
    got = magnitude_keep_masks(weights, n_prune, "global")
    assert torch.equal(torch.cat([m.reshape(-1) for m in got.values()]), expected)
    assert all(m.shape == w.shape and m.dtype == torch.bool for m, w in zip(got.values(), weights.values()))
