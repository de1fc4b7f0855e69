"""snr reads S1 from weight.grad (GradientStats(sum_from_grad=True)): the same results as a stored S1, less memory."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F

from snrprune import GradientStats, SNRPruning
from snrprune.statistics import _LazyMoments
from test_pruners import make_batches as batches
from test_pruners import small_mlp as mlp
from snrprune.pruners import snr as snr_module


@pytest.fixture(autouse=True)
def from_grad_on_small_models(monkeypatch):
    """snr reads S1 from the gradient from SUM_FROM_GRAD_MIN weights on: on every model here."""
    monkeypatch.setattr(snr_module, "SUM_FROM_GRAD_MIN", 0)


def stored(pruning, model):
    """The same pruning with today's statistics: S1 copied into its own buffer."""
    pruning.stats.remove()
    pruning.stats = GradientStats(model, layers=pruning.layers)
    assert not pruning.stats._from_grad
    return pruning


def run(data, from_grad=True, accumulate=1, edit=None, steps_check=None, scaler=None, momentum=0.9):
    torch.manual_seed(0)
    model = mlp()
    pruning = SNRPruning(model, burn_in_steps=2)
    if not from_grad:
        stored(pruning, model)
    else:
        assert pruning.stats._from_grad == set(pruning.weights)
    optimizer = pruning.wrap(torch.optim.SGD(model.parameters(), lr=0.2, momentum=momentum))
    averages = []
    for i, (x, y) in enumerate(data):
        optimizer.zero_grad(set_to_none=True)
        for xs, ys in zip(x.chunk(accumulate), y.chunk(accumulate)):
            loss = F.cross_entropy(model(xs), ys) / accumulate
            (loss if scaler is None else scaler.scale(loss)).backward()
        if scaler is not None:
            scaler.unscale_(optimizer)
        if edit is not None:
            edit(i, model, pruning)
        if steps_check is not None:
            steps_check(i, model, pruning)
        if scaler is None:
            optimizer.step()
        else:
            scaler.step(optimizer)
            scaler.update()
        averages.append({n: t.clone() for n, t in pruning.snr_ema.items()})
    return pruning, averages


def assert_same(a, b, exact=True, rtol=1e-5):
    (pa, avg_a), (pb, avg_b) = a, b
    assert pa.sparsity() > 0
    for name in pa.weights:
        assert torch.equal(pa.masks[name], pb.masks[name]), name
    for step_a, step_b in zip(avg_a, avg_b):
        assert step_a.keys() == step_b.keys()
        for name in step_a:
            if exact:
                assert torch.equal(step_a[name], step_b[name]), name
            else:
                torch.testing.assert_close(step_a[name], step_b[name], rtol=rtol, atol=1e-6)
    for name in pa.weights:
        assert torch.equal(pa.dense[name], pb.dense[name]) if exact else torch.allclose(pa.dense[name], pb.dense[name], rtol=rtol, atol=1e-6)


@pytest.mark.parametrize("accumulate", [1, 3])
def test_bit_identical_to_a_stored_s1(accumulate):
    data = batches(8, batch=24)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        from_grad = run(data, accumulate=accumulate)
    assert from_grad[0].stats._from_grad  # never fell back
    assert_same(from_grad, run(data, from_grad=False, accumulate=accumulate))


def test_scratch_reuse_of_s2_is_exact(monkeypatch):
    data = batches(8, batch=24)
    reused = run(data)
    assert reused[0]._buffers == {}  # the magnitudes went to the S2 buffers
    monkeypatch.setattr(GradientStats, "_free_s2", lambda self, name: None)
    own = run(data)
    assert own[0]._buffers  # its own scratch buffer
    assert_same(reused, own)


def test_clip_grad_norm_divided_back():
    data = batches(8, batch=24)

    def clip(i, model, pruning):
        norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm=0.05)
        assert norm > 0.05  # really rescaled

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        from_grad = run(data, edit=clip)
    assert from_grad[0].stats._from_grad
    assert_same(from_grad, run(data, from_grad=False, edit=clip), exact=False)


@pytest.mark.parametrize("accumulate", [1, 2])
def test_grad_scaler_exact(accumulate):
    data = batches(8, batch=24)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        from_grad = run(data, accumulate=accumulate, scaler=torch.amp.GradScaler("cpu", init_scale=2.0**12))
    assert from_grad[0].stats._from_grad
    oracle = run(data, from_grad=False, accumulate=accumulate, scaler=torch.amp.GradScaler("cpu", init_scale=2.0**12))
    assert_same(from_grad, oracle)  # scales are powers of two: dividing them back is exact


def _moment_check(reference):
    """Compares the statistics with a stored-S1 collector on the same model, every step after the fallback."""
    checked = []

    def check(i, model, pruning):
        if not pruning.stats._from_grad and i > 3:
            ours, theirs = pruning.stats.moments(), reference[0].moments()
            assert ours.keys() == theirs.keys()
            for name in ours:
                assert torch.equal(ours[name].sum, theirs[name].sum) and torch.equal(ours[name].sum_sq, theirs[name].sum_sq)
                assert ours[name].count == theirs[name].count
            checked.append(i)
        reference[0].reset()

    return check, checked


@pytest.mark.parametrize("change", ["clip_value", "none_grad", "edit"])
def test_non_uniform_change_falls_back(change):
    data = batches(8, batch=24)
    reference = []

    def edit(i, model, pruning):
        if not reference:
            reference.append(GradientStats(model, layers=pruning.layers))  # S1 stored, hooks after the pruning's
        if i != 3:
            return
        if change == "clip_value":
            smallest_max = min(float(w.grad.abs().max()) for w in pruning.weights.values())
            torch.nn.utils.clip_grad_value_(model.parameters(), smallest_max / 2)  # clips entries of every weight
        elif change == "none_grad":
            model[0].weight.grad = None
        else:
            model[-1].weight.grad[0, 0] += 1.0

    check, checked = _moment_check(reference)

    def both(i, model, pruning):
        edit(i, model, pruning)
        before = {n: t.clone() for n, t in pruning.snr_ema.items()}
        if i == 3:
            with pytest.warns(UserWarning, match=r"snr reads S1 from the gradient; it was changed non-uniformly.*statistics of this step dropped"):
                pruning.before_step()  # what optimizer.step() runs first: reads the statistics
            assert not pruning.stats._from_grad  # S1 stored from now on
            assert all(torch.equal(before[n], pruning.snr_ema[n]) for n in before)  # the step's statistics dropped
            reference[0].reset()
            return
        check(i, model, pruning)

    # before_step() is called by hand on step 3: run that step's optimizer.step() without the hook's second call
    torch.manual_seed(0)
    model = mlp()
    pruning = SNRPruning(model, burn_in_steps=2)
    optimizer = pruning.wrap(torch.optim.SGD(model.parameters(), lr=0.2, momentum=0.9))
    for i, (x, y) in enumerate(data):
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        both(i, model, pruning)
        if i == 3:
            if model[0].weight.grad is None:
                model[0].weight.grad = torch.zeros_like(model[0].weight)
            count = pruning.stats.count
            assert count == 0  # reset by before_step
        optimizer.step()
    assert checked == [4, 5, 6, 7]  # exact again after the fallback
    assert pruning.sparsity() > 0


def test_stats_hold_no_s1_buffer():
    model = mlp()
    pruning = SNRPruning(model, burn_in_steps=1)
    optimizer = pruning.wrap(torch.optim.SGD(model.parameters(), lr=0.2))
    for x, y in batches(4, batch=16):
        optimizer.zero_grad()
        F.cross_entropy(model(x), y).backward()
        optimizer.step()
    stats = pruning.stats
    n = sum(w.numel() for w in pruning.weights.values())
    assert stats._s1 == {}
    assert stats._flat.numel() == n + len(pruning.weights)  # S2 and the counts only
    held = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in [stats._flat, *stats._s2.values(), *stats._scratch.values()]}
    assert sum(held.values()) == 4 * (n + len(pruning.weights))
    witness = sum(w.index.numel() * 8 + w.values.numel() * 4 for w in stats._witness.values())
    assert witness <= 1000 * len(pruning.weights)  # a few hundred bytes per layer
    assert pruning._buffers == {}  # the mask update's magnitudes reuse S2


def test_moments_are_lazy_and_read_the_gradient():
    torch.manual_seed(0)
    model = mlp()
    stats = GradientStats(model, sum_from_grad=True)
    x, y = batches(1, batch=16)[0]
    F.cross_entropy(model(x), y).backward()
    moments = stats.moments()
    assert isinstance(moments, _LazyMoments)
    for name, layer in zip(moments, stats.layers):
        assert moments[name].sum is layer.weight.grad  # no copy
    for p in model.parameters():
        p.grad.mul_(0.5)
    halved = stats.moments()
    for name, layer in zip(halved, stats.layers):
        s1 = halved[name].sum
        assert s1 is not layer.weight.grad
        assert torch.equal(s1, layer.weight.grad * 2)  # a power of two: exact


def test_no_sum_from_grad_under_a_process_group():
    pruning = SNRPruning(mlp(), burn_in_steps=1, process_group=object())
    assert pruning.stats._from_grad == set()
    assert GradientStats(mlp())._from_grad == set()  # the public default: S1 stored


def test_small_networks_keep_s1_in_a_buffer(monkeypatch):
    """Below SUM_FROM_GRAD_MIN weights the copy is cheap and the check's passes are not: S1 is stored."""
    monkeypatch.setattr(snr_module, "SUM_FROM_GRAD_MIN", WEIGHTS_OF_MLP + 1)
    assert SNRPruning(mlp(), burn_in_steps=1).stats._from_grad == set()
    monkeypatch.setattr(snr_module, "SUM_FROM_GRAD_MIN", WEIGHTS_OF_MLP)
    assert SNRPruning(mlp(), burn_in_steps=1).stats._from_grad != set()


WEIGHTS_OF_MLP = sum(m.weight.numel() for m in mlp() if hasattr(m, "weight"))
