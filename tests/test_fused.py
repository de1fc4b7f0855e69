"""The fused CPU kernels against the eager code they replace: same averages, same selections, same masks."""

import io
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from snrprune import SNRPruning, fused
from snrprune.masks import keep_largest
from snrprune.statistics import snr_from_moments

kernels = fused.kernels()
pytestmark = pytest.mark.skipif(kernels is None, reason="the fused kernels could not be built here (no C++ compiler?)")

#: ATen's vectorized addcmul and lerp round like a fused multiply-add, as the kernel does; on CPUs
#: without those vector paths equality is to round-off only.
VECTORIZED = torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512")


def assert_same(actual, expected):
    if VECTORIZED:
        assert torch.equal(actual, expected), f"{(actual != expected).sum()} entries differ"
    else:
        torch.testing.assert_close(actual, expected, rtol=1e-6, atol=0)


def sums(n, batch=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    grads = torch.randn(batch, n, generator=g) * torch.rand(n, generator=g) + torch.randn(n, generator=g) * 0.3
    s1, s2 = grads.sum(0), grads.pow(2).sum(0)
    s1[:2], s2[:2] = 0.0, 0.0  # no signal at all: SNR 0
    if n > 2:
        s2[2] = s1[2] ** 2 / batch  # zero variance (up to round-off)
    return s1, s2


@pytest.mark.parametrize("n", [3, 1000, 70_001])
@pytest.mark.parametrize("weight", [0.1, 0.5, 0.8])
def test_snr_average_matches_eager_snr_and_lerp(n, weight):
    s1, s2 = sums(n)
    start = torch.rand(n, generator=torch.Generator().manual_seed(1)) * 3
    expected = start.clone().lerp_(snr_from_moments(s1, s2, 32), weight)
    actual = start.clone()
    not_above = kernels.snr_average(s1, s2, actual, 32, weight, False, 1.0001)
    assert_same(actual, expected)
    assert not_above == int((expected <= 1.0001).sum())
    first = torch.full((n,), float("nan"))
    kernels.snr_average(s1, s2, first, 32, weight, True, 1.0)  # the first average is the SNR itself
    assert_same(first, snr_from_moments(s1, s2, 32))


@settings(max_examples=60, deadline=None)
@given(
    values=st.lists(st.sampled_from([-2.0, -0.5, -0.0, 0.0, 0.5, 1.0, 3.0]) | st.floats(-1e6, 1e6, width=32), min_size=1, max_size=300),
    data=st.data(),
)
def test_count_around_counts_ties_with_zeros_and_signs(values, data):
    t = torch.tensor(values, dtype=torch.float32)
    thr = data.draw(st.sampled_from(values))
    for absolute in (False, True):
        source = t.abs() if absolute else t
        thr_value = abs(thr) if absolute else thr
        assert kernels.count_around(t, thr_value, absolute) == [int((source < thr_value).sum()), int((source == thr_value).sum())]


@pytest.mark.parametrize("mode", range(4))
@pytest.mark.parametrize("n_prune", [0, 1, 7, 40, 63, 64])
def test_apply_mask_matches_keep_largest_and_combine_with_ties(mode, n_prune):
    g = torch.Generator().manual_seed(n_prune)
    dense = torch.tensor([-1.0, 0.5, 0.0, 0.5, -0.5, 2.0, 0.0, 1.0] * 8)  # many ties at every magnitude
    avg = torch.rand(64, generator=g) * 2
    old = torch.rand(64, generator=g) > 0.5
    ever = torch.rand(64, generator=g) > 0.8
    keep_mag = keep_largest(dense.abs(), n_prune) > 0
    keep_snr = avg > 1.0
    expected = [keep_snr | keep_mag, keep_snr & keep_mag, keep_snr, keep_mag][mode]
    thr, ties = -1.0, 0
    if n_prune >= 64:
        thr, ties = float("inf"), -1
    elif n_prune > 0:
        thr = float(np.partition(dense.abs().numpy(), n_prune - 1)[n_prune - 1])
        less, equal = kernels.count_around(dense, thr, True)
        ties = n_prune - less
        ties = -1 if ties == equal else ties
    keep, new_ever, weight = old.clone(), ever.clone(), torch.empty(64)
    kept, changed = kernels.apply_mask(avg, dense, keep, new_ever, weight, 1.0, thr, ties, mode)
    assert torch.equal(keep, expected)
    assert torch.equal(new_ever, ever | (expected & ~old))
    assert torch.equal(weight, dense * expected)
    assert kept == int(expected.sum()) and changed == int((expected != old).sum())


@pytest.mark.parametrize("n", [1, 7, 4096, 100_003])
def test_mask_copy_equals_eager_multiply_bit_for_bit(n):
    g = torch.Generator().manual_seed(n)
    dense = torch.randn(n, generator=g)
    dense[:: 5] = -0.0
    dense[1:: 11] = float("nan")
    dense[2:: 13] = float("-inf")
    keep = torch.rand(n, generator=g) > 0.3
    out = torch.empty(n)
    kernels.mask_copy(dense, keep, out)
    expected = dense * keep
    # the same bits: -0 where a negative weight (or -0) is pruned, nan where a nan one is, as eager gives
    assert torch.equal(out.view(torch.int32), expected.view(torch.int32))


def small_net(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 40), nn.ReLU(), nn.Linear(40, 5)
    )


def run(combine, eager, monkeypatch, steps=25, **options):
    """Trains small_net with SNR pruning; returns per step (masks, weights, regrown, flips)."""
    with monkeypatch.context() as patch:
        if eager:
            patch.setattr(fused, "kernels", lambda: None)
        model = small_net()
        pruning = SNRPruning(model, burn_in_steps=3, combine=combine, **options)
        optimizer = pruning.wrap(torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9))
        g = torch.Generator().manual_seed(1)
        history = []
        for _ in range(steps):
            x, y = torch.randn(24, 1, 8, 8, generator=g), torch.randint(0, 5, (24,), generator=g)
            optimizer.zero_grad()
            F.cross_entropy(model(x), y).backward()
            optimizer.step()
            history.append((pruning.masks, {n: w.detach().clone() for n, w in pruning.weights.items()},
                            pruning.regrown_distinct(), dict(pruning.last_flips), pruning.mask_sparsity()[0]))
        assert bool(pruning._not_above) != eager  # the kernels ran, or the eager code did
        return history, pruning


@pytest.mark.parametrize("combine", ["agree", "either", "snr", "magnitude"])
@pytest.mark.parametrize("stats_every, update_every", [(1, None), (3, None), (3, 1)])  # (3, 1): masks from older averages
def test_snr_pruning_fused_equals_eager_step_by_step(combine, stats_every, update_every, monkeypatch):
    fast, pruning = run(combine, False, monkeypatch, stats_every=stats_every, update_every=update_every)
    slow, _ = run(combine, True, monkeypatch, stats_every=stats_every, update_every=update_every)
    assert 0 < pruning.sparsity() < 1
    for step, ((masks_f, weights_f, *counts_f), (masks_e, weights_e, *counts_e)) in enumerate(zip(fast, slow)):
        assert all(torch.equal(masks_f[n], masks_e[n]) for n in masks_f), f"masks differ at step {step}"
        assert all(torch.equal(weights_f[n], weights_e[n]) for n in weights_f), f"weights differ at step {step}"
        assert counts_f == counts_e, f"counts differ at step {step}"


def test_masks_follow_new_statistics_unless_update_every_is_given(monkeypatch):
    """stats_every=3: masks change only on steps with statistics; update_every=1 moves them every step."""
    history, _ = run("agree", False, monkeypatch, stats_every=3)
    changed = [step for step in range(1, len(history)) if any(not torch.equal(history[step][0][n], history[step - 1][0][n]) for n in history[0][0])]
    assert changed and all(step % 3 == 0 for step in changed)  # step index s is training step s + 1
    history, _ = run("agree", False, monkeypatch, stats_every=3, update_every=1)
    changed = [step for step in range(1, len(history)) if any(not torch.equal(history[step][0][n], history[step - 1][0][n]) for n in history[0][0])]
    assert any(step % 3 != 0 for step in changed)


def test_fused_resume_is_bit_exact(monkeypatch):
    full, _ = run("agree", False, monkeypatch, steps=12, stats_every=2)
    # the same run, saved after 7 steps (statistics arrived, masks not yet updated) and reloaded
    model = small_net()
    pruning = SNRPruning(model, burn_in_steps=3, stats_every=2)
    optimizer = pruning.wrap(torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9))
    g = torch.Generator().manual_seed(1)
    batches = [(torch.randn(24, 1, 8, 8, generator=g), torch.randint(0, 5, (24,), generator=g)) for _ in range(12)]
    for i, (x, y) in enumerate(batches):
        if i == 7:
            buffer = io.BytesIO()
            torch.save({"pruning": pruning.state_dict(), "model": model.state_dict(), "opt": optimizer.state_dict()}, buffer)
            buffer.seek(0)
            state = torch.load(buffer, weights_only=True)
            model = small_net(seed=5)
            pruning = SNRPruning(model, burn_in_steps=3, stats_every=2)
            optimizer = pruning.wrap(torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9))
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["opt"])
            pruning.load_state_dict(state["pruning"])
        optimizer.zero_grad()
        F.cross_entropy(model(x), y).backward()
        optimizer.step()
    assert all(torch.equal(pruning.masks[n], full[-1][0][n]) for n in pruning.masks)
    assert all(torch.equal(pruning.weights[n], full[-1][1][n]) for n in pruning.weights)


def test_a_failed_build_warns_once_and_falls_back(monkeypatch):
    from torch.utils import cpp_extension

    def broken(*args, **kwargs):
        raise RuntimeError("no compiler here")

    monkeypatch.setattr(cpp_extension, "load", broken)
    monkeypatch.setattr(fused, "_tried", False)
    monkeypatch.setattr(fused, "_module", None)
    with pytest.warns(RuntimeWarning, match="no compiler here.*SNRPRUNE_FUSED=0"):
        assert fused.kernels() is None
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert fused.kernels() is None and not fused.usable(torch.zeros(3))
    monkeypatch.setattr(fused, "_tried", False)
    monkeypatch.setenv("SNRPRUNE_FUSED", "0")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert fused.kernels() is None


def test_only_float32_contiguous_cpu_tensors_take_the_kernels():
    assert fused.usable(torch.zeros(4, 3))
    assert not fused.usable(torch.zeros(4, 3, dtype=torch.float64))
    assert not fused.usable(torch.zeros(4, 3).t())
    with pytest.raises(RuntimeError, match="contiguous float32"):
        kernels.count_around(torch.zeros(3, dtype=torch.float64), 1.0, False)
