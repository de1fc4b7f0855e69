"""snr-auto's band sample (``band_sample``): the noise band from a random sample of the kept weights.

Exactness where the sample is every weight, the estimator's unbiasedness over samples, the draw,
resume and state conversion, and the memory it holds.
"""

import io

import pytest
import torch
import torch.nn.functional as F
from test_pruners import make_batches, small_mlp, train
from torch import nn

from snrprune import SNRAutoPruning
from snrprune.pruners import snr_auto
from snrprune.pruners.snr_auto import SIGN_CLASSES, band_variance

WEIGHTS = 6 * 16 + 16 * 12 + 12 * 3  # small_mlp's prunable weights


def _decisions(band_sample, scope="global", nested=False, steps=64):
    """Trains small_mlp with snr-auto (a wide threshold, so that it prunes); per step: the density, the last band and mean window SNR."""
    model = small_mlp()
    pruning = SNRAutoPruning(model, window_steps=14 if nested else 8, update_every=2, scope=scope, nested=nested, threshold=10.0, band_sample=band_sample)
    optimizer = pruning.wrap(torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9))
    path = []
    for batch in make_batches(steps, seed=1):
        train(model, optimizer, [batch])
        path.append((dict(pruning.density), dict(pruning.window_band), dict(pruning.window_snr)))
    return path, pruning


@pytest.mark.parametrize("scope, nested", [("global", False), ("layer", False), ("global", True)])
def test_a_sample_of_every_weight_decides_as_without(scope, nested):
    """band_sample at least the controller's weights: the window keeps every class sum, bit for bit today's decisions."""
    exact, pruning = _decisions(None, scope, nested)
    assert any(band for _, band, _ in exact) and min(min(density.values()) for density, _, _ in exact) < 1  # decisions, and moves
    for band_sample in (WEIGHTS, 10**9, 0):
        path, sampled = _decisions(band_sample, scope, nested)
        assert path == exact
        assert sampled.sample == {}


def _gradients(model, steps, seed=0, shared=0.5):
    """Per step a gradient for each weight: a random factor shared by all weights (times a fixed
    loading) plus each weight's own noise, a random walk whose z are correlated across the weights."""
    g = torch.Generator().manual_seed(seed)
    loadings = {name: shared * torch.randn(p.shape, generator=g) for name, p in model.named_parameters() if name.endswith("weight")}
    out = []
    for _ in range(steps):
        factor = torch.randn((), generator=g)
        out.append({name: factor * loading + torch.randn(loading.shape, generator=g) for name, loading in loadings.items()})
    return out


def _feed(pruning, steps):
    """The window's gradients set on the model and summed, as in training."""
    for grads in steps:
        for name, w in pruning.weights.items():
            w.grad = grads[name].clone()
        pruning.observe_gradients()


def test_a_sample_that_would_hold_every_weight_draws_the_band_as_without():
    """band_sample over the density at least the weights (228 of 324 kept, band_sample 300: 427 would be
    drawn): no sample, every class sum kept, the band and the mean z bit for bit today's."""
    steps = _gradients(small_mlp(), 40)
    results = []
    for band_sample in (None, 300):
        pruning = SNRAutoPruning(small_mlp(), window_steps=40, band_sample=band_sample)
        pruning.keep["2.weight"][:, ::2] = False  # 96 weights pruned: 228 kept
        _feed(pruning, steps)
        assert pruning.sample == {}
        results.append((pruning.evidence("*"), pruning.window_band["*"], pruning.window_snr["*"]))
    assert results[0] == results[1]


def test_the_sample_is_drawn_among_all_weights_so_that_about_band_sample_are_kept():
    """A sample of the kept weights at the window's start would miss the weights the masks take in
    during the window; the sample is drawn among all weights instead: band_sample / density of them."""
    pruning = SNRAutoPruning(small_mlp(), window_steps=40, band_sample=100)
    pruning.keep["2.weight"][:, ::2] = False  # 228 of 324 kept: ceil(100 * 324 / 228) = 143 drawn
    _feed(pruning, _gradients(small_mlp(), 40))
    drawn = {(name, i) for name, index in pruning.sample.items() for i in index.tolist()}
    assert len(drawn) == 143
    pruned = [(name, i) for name, i in drawn if not pruning.keep[name].reshape(-1)[i]]
    assert pruned and all(name == "2.weight" for name, _ in pruned)  # pruned weights are drawn too
    pruning.keep["2.weight"][:] = True  # masks recomputed within the window: every weight kept at the decision
    pruning.evidence("*")  # the band reads the sample's weights kept now, the pruned ones of the start included


def test_the_sampled_band_is_unbiased(monkeypatch):
    """Over many samples, the band's centre and variance average to those of every weight's band, within 4 standard errors."""
    steps, seeds = 40, 400
    model = nn.Sequential(nn.Linear(40, 50))
    exact = SNRAutoPruning(model, window_steps=steps)
    exact.keep["0.weight"][:10] = False  # the sample is drawn among the kept weights
    _feed(exact, _gradients(model, steps))
    exact.evidence("*")
    centre, std = exact.window_band["*"]
    state = exact.state_dict()
    centres, variances = [], []
    for seed in range(seeds):
        monkeypatch.setattr(snr_auto, "SAMPLE_SEED", seed)
        sampled = SNRAutoPruning(nn.Sequential(nn.Linear(40, 50)), window_steps=steps, band_sample=100)
        sampled.load_state_dict(state)  # the window's class sums gathered for this seed's sample
        assert sampled.sample["0.weight"].numel() == 125  # 1,600 of 2,000 kept (rows 0-9 pruned): 100 * 2000 / 1600 drawn
        sampled.evidence("*")
        centres.append(sampled.window_band["*"][0])
        variances.append(sampled.window_band["*"][1] ** 2)
        assert sampled.window_snr["*"] == pytest.approx(exact.window_snr["*"], rel=1e-6)  # the mean z is exact
    centres, variances = torch.tensor(centres, dtype=torch.float64), torch.tensor(variances, dtype=torch.float64)
    assert abs(float(centres.mean()) - centre) < 4 * float(centres.std()) / seeds**0.5
    assert abs(float(variances.mean()) - std**2) < 4 * float(variances.std()) / seeds**0.5
    assert float(variances.std()) > 0  # the samples differ


def test_band_variance_of_every_weight_is_the_mean_s_variance():
    assert band_variance(0.25, 3.0, 50, 50) == pytest.approx(0.25)
    assert band_variance(0.25, 3.0, 1, 50) == 0.25  # one weight: taken as fully correlated
    # independent weights (covariance 0): the variance of a mean of n is avg_var / n
    assert band_variance(3.0 / 10, 3.0, 10, 1000) == pytest.approx(3.0 / 1000)


def test_the_draw_is_uniform_among_all_weights_and_fixed_by_the_window_start():
    pruning = SNRAutoPruning(small_mlp(), window_steps=8, band_sample=50)
    pruning.keep["0.weight"][:8] = False  # 48 pruned, 276 kept: ceil(50 * 324 / 276) = 59 drawn
    pruning.step_count = 16
    sample = pruning.draw_band_sample()
    indices = [(name, i) for name, index in sample.items() for i in index.tolist()]
    assert len(indices) == len(set(indices)) == 59
    assert all(torch.equal(index, index.sort().values) for index in sample.values())
    other = SNRAutoPruning(small_mlp(1), window_steps=8, band_sample=50)  # another rank, or a resumed run
    other.keep["0.weight"][:8] = False
    other.step_count, other.window_count = 19, 3  # the same window, three steps in
    assert all(torch.equal(sample[name], index) for name, index in other.draw_band_sample().items())
    pruning.step_count = 24
    assert any(not torch.equal(sample[name], index) for name, index in pruning.draw_band_sample().items())
    # uniform: every weight, kept or pruned, about equally often over many windows
    hits = torch.zeros(WEIGHTS)
    for step in range(400):
        pruning.step_count = step
        hits += torch.cat([torch.zeros(pruning.weights[name].numel()).index_fill_(0, index, 1) for name, index in pruning.draw_band_sample().items()])
    assert hits.sum() == 400 * 59
    p = 59 / WEIGHTS
    spread = 5 * (400 * p * (1 - p)) ** 0.5
    assert float(hits.min()) > 400 * p - spread and float(hits.max()) < 400 * p + spread


@pytest.mark.parametrize("nested", [False, True])
def test_the_window_holds_eight_bytes_a_weight_and_the_sample(nested):
    model = nn.Sequential(nn.Linear(100, 100), nn.ReLU(), nn.Linear(100, 60))
    pruning = SNRAutoPruning(model, window_steps=20, nested=nested, band_sample=64)
    optimizer = pruning.wrap(torch.optim.SGD(model.parameters(), lr=0.01))
    x, y = torch.randn(16, 100), torch.randint(0, 60, (16,))
    for _ in range(3):
        optimizer.zero_grad()
        F.cross_entropy(model(x), y).backward()
        optimizer.step()
    weights = 100 * 100 + 100 * 60
    held = sum(t.numel() * t.element_size() for sums in pruning.window.values() for t in sums)
    assert held == 4 * pruning.parts * 2 * weights + 4 * SIGN_CLASSES * 64  # S and Q per part, the sample's classes
    assert sum(i.numel() * i.element_size() for i in pruning.sample.values()) == 8 * 64
    for name, (sums, s2, classes) in pruning.window.items():
        index = pruning.sample[name]
        assert classes.shape == (SIGN_CLASSES, index.numel())
        # the sample's class sums add up to its sum of g_t
        assert torch.allclose(classes.sum(dim=0), sums.sum(dim=0).reshape(-1)[index], atol=1e-6)


def _setup(band_sample, nested=False, seed=0, scope="global"):
    model = small_mlp(seed)
    pruning = SNRAutoPruning(model, window_steps=14 if nested else 8, update_every=2, nested=nested, scope=scope, band_sample=band_sample)
    optimizer = pruning.wrap(torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9))
    return model, pruning, optimizer


def _save(model, pruning, optimizer):
    buffer = io.BytesIO()
    torch.save({"model": model.state_dict(), "opt": optimizer.state_dict(), "pruning": pruning.state_dict()}, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


@pytest.mark.parametrize("nested, scope", [(False, "global"), (True, "global"), (False, "layer")])
def test_resume_with_a_band_sample_is_bit_exact(nested, scope):
    band_sample = 40 if scope == "global" else 30
    batches = make_batches(60, seed=2)
    model_a, pruning_a, opt_a = _setup(band_sample, nested, scope=scope)
    bands_a = []
    for batch in batches:
        train(model_a, opt_a, [batch])
        bands_a.append(dict(pruning_a.window_band))
    model_b, pruning_b, opt_b = _setup(band_sample, nested, scope=scope)
    train(model_b, opt_b, batches[:19])  # mid-window
    assert pruning_b.window_count and pruning_b.sample
    saved = _save(model_b, pruning_b, opt_b)
    model_c, pruning_c, opt_c = _setup(band_sample, nested, seed=5, scope=scope)
    model_c.load_state_dict(saved["model"])
    opt_c.load_state_dict(saved["opt"])
    pruning_c.load_state_dict(saved["pruning"])
    bands_c = []
    for batch in batches[19:]:
        train(model_c, opt_c, [batch])
        bands_c.append(dict(pruning_c.window_band))
    assert bands_a[19:] == bands_c and any(bands_c)
    assert pruning_a.density == pruning_c.density and pruning_a.step == pruning_c.step
    for name in pruning_a.dense:
        assert torch.equal(pruning_a.keep[name], pruning_c.keep[name]) and torch.equal(pruning_a.dense[name], pruning_c.dense[name])
        assert all(torch.equal(a, c) for a, c in zip(pruning_a.window[name], pruning_c.window[name]))
        assert torch.equal(pruning_a.sample[name], pruning_c.sample[name])


@pytest.mark.parametrize("nested", [False, True])
def test_a_state_with_every_class_sum_loads_into_a_band_sample(nested):
    """An exact state mid-window: the sample as drawn at the window's start, its class sums gathered, the sum of g_t per part from the classes."""
    batches = make_batches(9, seed=3)
    model, exact, optimizer = _setup(None, nested)
    train(model, optimizer, batches)
    model_s, sampled_all_along, optimizer_s = _setup(40, nested)
    train(model_s, optimizer_s, batches)  # the density is 1 so far: the same masks at the window's start as now
    state = exact.state_dict()
    converted = SNRAutoPruning(small_mlp(), window_steps=14 if nested else 8, update_every=2, nested=nested, band_sample=40)
    converted.load_state_dict(state)
    per_part = SIGN_CLASSES // exact.parts
    for name, (classes, s2) in exact.window.items():
        sums, squares, sample_classes = converted.window[name]
        index = converted.sample[name]
        assert torch.equal(index, sampled_all_along.sample[name])
        assert torch.equal(squares, s2)
        assert torch.equal(sample_classes, classes.reshape(SIGN_CLASSES, -1)[:, index])
        assert torch.equal(sample_classes, sampled_all_along.window[name][2])
        for p in range(exact.parts):
            assert torch.equal(sums[p], classes[p * per_part : (p + 1) * per_part].sum(dim=0))
        assert torch.allclose(sums, sampled_all_along.window[name][0], atol=1e-6)


def test_a_sampled_state_does_not_load_into_an_object_without_a_sample():
    model, pruning, optimizer = _setup(40)
    train(model, optimizer, make_batches(5))
    state = pruning.state_dict()
    move, band = pruning.evidence("*"), pruning.window_band["*"]
    with pytest.raises(ValueError, match=r"band_sample=40\).*band_sample=None.*band_sample set"):
        _setup(None)[1].load_state_dict(state)
    train(model, optimizer, make_batches(3))  # the window's end: the state holds no window
    assert pruning.window_count == 0
    _setup(None)[1].load_state_dict(pruning.state_dict())
    other = _setup(1000)[1]  # a sample larger than the network: the state's window keeps its sample until the window ends
    other.load_state_dict(state)
    assert other.evidence("*") == move and other.window_band["*"] == band


def test_unit_granularity_and_layer_scope_with_a_band_sample():
    from test_unit_granularity import model_and_data, run

    for scope in ("global", "layer"):
        model, x, y = model_and_data("lenet300")
        pruning = SNRAutoPruning(model, window_steps=8, update_every=4, scope=scope, granularity="unit", example_inputs=x[:2], band_sample=500)
        run(model, pruning, x, y, 24)
        assert pruning.window_band and all(std > 0 for _, std in pruning.window_band.values())
        assert sum(index.numel() for index in pruning.sample.values()) <= 500 * len(pruning.units)


def test_bad_band_sample():
    with pytest.raises(ValueError, match="band_sample"):
        SNRAutoPruning(small_mlp(), window_steps=8, band_sample=-1)
    with pytest.raises(ValueError, match="band_sample"):
        SNRAutoPruning(small_mlp(), window_steps=8, band_sample=1.5)
    assert SNRAutoPruning(small_mlp(), window_steps=8, band_sample=0).band_sample is None


def test_train_and_the_command_line_pass_the_band_sample(tmp_path, capsys):
    import json

    from snrprune.cli import main
    from snrprune.training import TrainConfig, make_pruning

    config = TrainConfig(dataset="digits", model="mlp", method="snr-auto", model_options={"widths": [16]}, batch_size=64, lr=0.01, auto_band_sample=64)
    assert make_pruning(config.resolved(), small_mlp(), steps_per_epoch=23).band_sample == 64
    with pytest.raises(ValueError, match="auto_band_sample only applies to method 'snr-auto'"):
        TrainConfig(dataset="digits", model="mlp", method="snr", auto_band_sample=64).resolved()
    with pytest.raises(ValueError, match="auto_band_sample must be a non-negative integer"):
        TrainConfig(dataset="digits", model="mlp", method="snr-auto", auto_band_sample=-1).resolved()
    argv = ["--dataset", "digits", "--model", "mlp", "--model-option", "widths=[16]", "--batch-size", "64", "--lr", "0.01", "--quiet"]
    assert main(["train", *argv, "--method", "snr-auto", "--epochs", "2", "--auto-band-sample", "64", "--out", str(tmp_path / "run")]) == 0
    assert json.loads((tmp_path / "run" / "config.json").read_text())["auto_band_sample"] == 64
    with pytest.raises(SystemExit):
        main(["train", *argv, "--auto-band-sample", "64"])  # snr: refused by flag
    assert "--auto-band-sample only applies to --method snr-auto" in capsys.readouterr().err
