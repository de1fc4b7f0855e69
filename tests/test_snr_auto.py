"""snr-auto: its decision rules on hand-made window sums, the learning-rate scaling and hysteresis, masks, resume, errors."""

import io

import pytest
import torch
import torch.nn.functional as F
from test_pruners import make_batches, small_mlp, stable_prune_count_mask, train
from torch import nn

import snrprune
from snrprune import SNRAutoPruning, get_method
from snrprune.pruners.snr_auto import SIGN_CLASSES, resolve_rules

#: The rule each mechanism below is tested on alone: one decision a window, on the kept weights, with a
#: step that only halves (the default until issue 19 added nested windows, the pruned witness and step growth).
SINGLE = {"nested": False, "pruned_witness": False, "step_growth": False}


def _window(pruning, name, steps):
    """The window sums of per-step gradients ``steps`` (T x the weight's shape), as training builds them."""
    slots = [pruning.slot(t) for t in range(len(steps))]
    classes = torch.zeros((SIGN_CLASSES, *steps.shape[1:]))
    classes.index_add_(0, torch.tensor([c for _, c in slots]), steps)  # step t into its interleaved class
    s2 = torch.zeros((pruning.parts, *steps.shape[1:]))
    s2.index_add_(0, torch.tensor([p for p, _ in slots]), steps.pow(2))
    pruning.window[name] = [classes, s2]
    pruning.window_count = len(steps)


def _set_window(pruning, name, mean, std, n=400, seed=0):
    """A window of n step gradients drawn around ``mean`` (a tensor) with spread ``std``: a random walk for mean 0."""
    g = torch.Generator().manual_seed(seed)
    _window(pruning, name, mean + std * torch.randn((n, *mean.shape), generator=g))


def _converged(pruning, name, n=400, seed=0):
    """A window of a weight held at a minimum: each step's gradient undoes the last one's noise, so they cancel."""
    g = torch.Generator().manual_seed(seed)
    noise = torch.randn((n + 1, *pruning.dense[name].shape), generator=g)
    _window(pruning, name, noise[1:] - noise[:-1])


def test_snr_auto_decisions_follow_the_kept_weights_evidence():
    model = small_mlp()
    pruning = SNRAutoPruning(model, window_steps=4, step=0.5, scope="layer")
    converged, noise, signal = "0.weight", "2.weight", "4.weight"
    _converged(pruning, converged)  # z = 0: below the noise band
    _set_window(pruning, noise, torch.zeros_like(pruning.dense[noise]), 1.0)  # random walk: z ~ chi2(1)
    _set_window(pruning, signal, torch.full_like(pruning.dense[signal], 0.5), 1.0)  # drift: z ~ 400 * 0.25
    pruning.decide()
    assert pruning.density == {converged: 0.5, noise: 1.0, signal: 1.0}  # noise is held; drift is capped at dense
    assert pruning.direction == {converged: -1, noise: 0, signal: 0}  # capped at dense: no move
    assert pruning.window == {} and pruning.window_count == 0
    assert pruning.window_snr[converged] < 0.05 and pruning.window_snr[signal] > 50
    mean, std = pruning.window_band[noise]  # the drawn band: near F(1, 399)'s mean for independent weights
    assert abs(mean - 1) < 0.05 and abs(pruning.window_snr[noise] - mean) <= 2 * std


def _halves(w, first, second, n=400, seed=0):
    """n steps of gradients for a weight like ``w``: the first half of kind ``first``, the second of kind
    ``second`` ("converged": each step undoes the last one's noise; "noise": a random walk; "drift")."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for kind in (first, second):
        noise = torch.randn((n // 2 + 1, *w.shape), generator=g)
        out.append({"converged": noise[1:] - noise[:-1], "noise": noise[1:], "drift": 0.5 + noise[1:]}[kind])
    return torch.cat(out)


@pytest.mark.parametrize(
    "first, second, at_half, at_end",
    [
        ("converged", "noise", -1, 0),  # the first half converged: prune at the half; the end reads the second half alone
        ("noise", "converged", 0, -1),  # the second half alone is witness enough to prune
        ("drift", "noise", 0, 0),  # drift in one half only: never a regrowth
        ("drift", "drift", 0, 1),  # drift in the second half and in the whole window: regrow
    ],
)
def test_snr_auto_nested_windows_decide_at_the_half_and_at_the_end(first, second, at_half, at_end):
    """Nested windows sum the halves apart: at the half the first half alone can prune (drift there
    only holds); at the end the whole window and the second half are two witnesses: prune if either
    reads converged, regrow only if both read drift; after a move at the half, the second half alone
    (the first half's evidence was acted on)."""
    model = small_mlp()
    pruning = SNRAutoPruning(model, window_steps=400, step=0.5, scope="layer", **{**SINGLE, "nested": True})
    pruning.density = {name: 0.5 for name in pruning.units}  # room to regrow
    steps = {name: _halves(w, first, second, seed=i) for i, (name, w) in enumerate(pruning.dense.items())}
    for name in steps:
        _window(pruning, name, steps[name][:200])
    assert pruning.part_counts() == [200, 0] and pruning.half_due(200) and not pruning.half_due(100)
    pruning.decide_half()
    assert set(pruning.direction.values()) == {at_half} and pruning.window_count == 200  # the window goes on
    for name in steps:
        _window(pruning, name, steps[name])
        # the halves went apart: classes 0-7 and the first sum of squares hold the first half alone
        assert torch.allclose(pruning.window[name][0][:8].sum(0), steps[name][:200].sum(0), atol=1e-4)
        assert torch.allclose(pruning.window[name][1][0], steps[name][:200].pow(2).sum(0), atol=1e-3)
    before = dict(pruning.density)
    pruning.decide()
    moved = {name: (d > before[name]) - (d < before[name]) for name, d in pruning.density.items()}
    assert set(moved.values()) == {at_end}, (moved, pruning.window_snr, pruning.window_band)
    assert pruning.window == {} and pruning.window_count == 0


def test_snr_auto_without_nesting_decides_once_a_window():
    pruning = SNRAutoPruning(small_mlp(), window_steps=400, nested=False)
    assert pruning.parts == 1 and not pruning.half_due(200) and pruning.part_counts() == [0]


def test_snr_auto_default_rule_nests_reads_the_pruned_weights_and_grows_the_step():
    """The default (issue 19) at weight granularity: nested windows, the pruned witness and step growth;
    pooled evidence is a different rule and turns the first two off; at unit granularity the witness alone."""
    pruning = SNRAutoPruning(small_mlp(), window_steps=400)
    assert (pruning.nested, pruning.pruned_witness, pruning.step_growth, pruning.pooled) == (True, True, True, False)
    assert pruning.parts == 2 and pruning.half_due(200)
    pooled = SNRAutoPruning(small_mlp(), window_steps=400, pooled=True)
    assert (pooled.nested, pooled.pruned_witness, pooled.step_growth, pooled.parts) == (False, False, True, 1)
    assert resolve_rules(False, None, None, None, "weight") == (True, True, True, 1.0)
    assert resolve_rules(False, False, True, None, "weight") == (False, True, True, 1.0)
    assert resolve_rules(True, None, None, False, "weight") == (False, False, False, 1.0)
    assert resolve_rules(False, None, None, None, "unit") == (False, True, False, 2.0)
    assert resolve_rules(False, None, None, None, "unit", "layer") == (False, False, False, 2.0)
    assert resolve_rules(False, None, None, None, "unit", "global", 1.0) == (False, True, False, 1.0)
    pytest.importorskip("torch_pruning")
    units = SNRAutoPruning(small_mlp(), window_steps=400, granularity="unit", example_inputs=torch.randn(2, 6))
    assert (units.nested, units.pruned_witness, units.step_growth, units.parts, units.lr_power) == (False, True, False, 1, 2.0)
    nested_units = SNRAutoPruning(small_mlp(), window_steps=400, nested=True, step_growth=True, granularity="unit", example_inputs=torch.randn(2, 6))
    assert (nested_units.nested, nested_units.pruned_witness, nested_units.step_growth) == (True, True, True)
    layer = SNRAutoPruning(small_mlp(), window_steps=400, scope="layer", granularity="unit", example_inputs=torch.randn(2, 6))
    assert not layer.pruned_witness  # a group's controller reads its own layer; the outgoing columns are in the next
    with pytest.raises(ValueError, match="outgoing columns, which lie in the next layer.*use scope 'global'"):
        SNRAutoPruning(small_mlp(), window_steps=4, scope="layer", pruned_witness=True, granularity="unit", example_inputs=torch.randn(2, 6))
    with pytest.raises(ValueError, match="nested must be True or False"):
        SNRAutoPruning(small_mlp(), window_steps=4, nested="yes")


def test_snr_auto_holds_a_layer_without_gradient():
    model = small_mlp()
    pruning = SNRAutoPruning(model, window_steps=4)
    for name, w in pruning.dense.items():
        _window(pruning, name, torch.zeros((400, *w.shape)))  # no gradient reached any weight
    pruning.decide()
    assert set(pruning.density.values()) == {1.0} and pruning.window_snr == {}


def test_snr_auto_settles_and_never_collapses():
    model = small_mlp()
    pruning = SNRAutoPruning(model, window_steps=4, step=0.5, scope="layer", **SINGLE)
    name = "2.weight"  # 12 x 16: the floor is one weight per output unit, 12 of 192
    for _ in range(10):  # ten windows of converged layers
        for other in pruning.dense:
            _converged(pruning, other)
        pruning.decide()
    assert pruning.density[name] == pytest.approx(12 / 192)
    masks = pruning.compute_masks()
    assert int(masks[name].sum()) == 12
    before = pruning.density[name]
    # now every layer drifts: regrowth with half the step (a reversal), at once: the floor was reached
    # windows ago, so this drift is no adaptation to a prune (the hysteresis holds only right after one)
    assert pruning.adapting[name] is False
    for other in pruning.dense:
        _set_window(pruning, other, torch.full_like(pruning.dense[other], 0.5), 1.0)
    pruning.decide()
    assert pruning.step[name] == 0.25 and pruning.density[name] == pytest.approx(before / 0.75)
    for other in pruning.dense:  # converged again: another reversal, another halving
        _converged(pruning, other)
    pruning.decide()
    assert pruning.step[name] == 0.125 and pruning.density[name] == pytest.approx(before / 0.75 * 0.875)


def _decide(pruning, drift):
    """One window: every kept weight converged (drift False) or drifting (drift True), then the decision."""
    for name in pruning.dense:
        if drift:
            _set_window(pruning, name, torch.full_like(pruning.dense[name], 0.5), 1.0)
        else:
            _converged(pruning, name)
    pruning.decide()
    return pruning.density[SNRAutoPruning.GLOBAL]


@pytest.mark.parametrize("hysteresis", [True, False])
def test_snr_auto_hysteresis_holds_the_window_after_a_prune(hysteresis):
    pruning = SNRAutoPruning(small_mlp(), window_steps=4, step=0.5, hysteresis=hysteresis, **SINGLE)
    assert _decide(pruning, drift=False) == 0.5 and pruning.adapting == {"*": hysteresis}
    if hysteresis:  # drift right after the prune: the network adapting, held
        assert _decide(pruning, drift=True) == 0.5 and pruning.adapting == {"*": False} and pruning.step == {"*": 0.5}
    assert _decide(pruning, drift=True) == pytest.approx(0.5 / 0.75)  # drift that persists regrows, at half the step
    assert pruning.direction == {"*": 1} and pruning.adapting == {"*": False}
    assert _decide(pruning, drift=True) == pytest.approx(0.5 / 0.75**2)  # after a regrowth drift is not held


def _feed(pruning, deviations, monkeypatch):
    """Decisions on windows whose deviation from the band centre (in band stds) is each of ``deviations``."""
    stream = iter(deviations)

    def evidence(unit, parts=None):
        d = pruning.deviation[unit] = next(stream)
        return -1 if d < -2 else (1 if d > 2 else 0)

    monkeypatch.setattr(pruning, "evidence", evidence)
    pruning.window_count = 10
    out = []
    for _ in deviations:
        pruning.decide()
        pruning.window_count = 10
        out.append(pruning.density["*"])
    return out


def test_snr_auto_pooled_windows_add_up_weak_evidence(monkeypatch):
    # each window alone is inside the band (|d| < 2); pooled, two at -1.5 read -3 / sqrt(2) = -2.12: prune
    plain = SNRAutoPruning(small_mlp(), window_steps=4, step=0.5, **SINGLE)
    assert _feed(plain, [-1.5, -1.5, -1.5], monkeypatch) == [1.0, 1.0, 1.0]
    pooled = SNRAutoPruning(small_mlp(), window_steps=4, step=0.5, pooled=True)
    assert _feed(pooled, [-1.5, -1.5], monkeypatch) == [1.0, 0.5]
    assert pooled.pool == {"*": (0.0, 0)}  # fired: the next windows pool afresh
    # the window right after the prune is not pooled (its drift is the adaptation); then the pool restarts
    assert _feed(pooled, [1.9, 1.9, 0.8], monkeypatch) == [0.5, 0.5, 0.5]
    assert pooled.pool["*"] == pytest.approx((2.7, 2))  # 2.7 / sqrt(2) = 1.91: hold (with the first 1.9 it would regrow)
    assert _feed(pooled, [1.5], monkeypatch) == [pytest.approx(0.5 / 0.75)]  # 4.2 / sqrt(3) = 2.42: drift that persists regrows
    # readings of either sign cancel: no move however long they go on
    pooled = SNRAutoPruning(small_mlp(), window_steps=4, step=0.5, pooled=True)
    assert _feed(pooled, [-1.9, 1.9] * 5, monkeypatch)[-1] == 1.0
    # the pool sums deviations, so it survives a resume
    state = pooled.state_dict()
    again = SNRAutoPruning(small_mlp(), window_steps=4, step=0.5, pooled=True)
    again.load_state_dict(state)
    assert again.pool == pooled.pool and again.deviation == pooled.deviation


@pytest.mark.parametrize("rules", [("pooled", "nested"), ("pooled", "pruned_witness")])
def test_snr_auto_candidate_rules_are_refused_together(rules):
    with pytest.raises(ValueError, match=f"{rules[0]} and {rules[1]} are different decision rules.*choose one"):
        SNRAutoPruning(small_mlp(), window_steps=4, **{rule: True for rule in rules})
    with pytest.raises(ValueError, match="pooled must be True or False"):
        SNRAutoPruning(small_mlp(), window_steps=4, pooled=1)


def test_snr_auto_reads_the_removed_units_outgoing_gradient_and_never_applies_it():
    """Unit granularity: the model holds a removed unit at its consumers only (it computes, nothing reads
    it), so its outgoing columns get the gradient they would have with the unit in; the window sums read
    it for the pruned witness, and the update never applies it: the unit's dense copies stay as they were."""
    pytest.importorskip("torch_pruning")
    model = small_mlp()
    pruning = SNRAutoPruning(model, window_steps=1000, update_every=1000, granularity="unit", example_inputs=torch.randn(2, 6))
    keep = {g.name: torch.ones(g.size) for g in pruning.groups}
    keep["0.weight"][:8] = 0  # half of the first hidden layer's units, by hand
    pruning._set_masks(keep)
    pruning.apply_masks()
    before = {name: d.clone() for name, d in {**pruning.dense, **pruning.coupled_dense}.items()}
    train(model, pruning.wrap(torch.optim.SGD(model.parameters(), lr=0.1)), make_batches(4))
    assert not model[2].weight[:, :8].any() and torch.equal(model[0].weight[:8].detach(), before["0.weight"][:8])
    s2 = pruning.window["2.weight"][1].sum(0)
    assert (s2[:, :8] > 0).any(dim=0).all()  # every removed unit's outgoing column was read
    for name, rows in (("0.weight", slice(0, 8)), ("0.bias", slice(0, 8))):  # their own entries get no gradient
        assert torch.equal({**pruning.dense, **pruning.coupled_dense}[name][rows], before[name][rows])
    assert torch.equal(pruning.dense["2.weight"][:, :8], before["2.weight"][:, :8])  # read, never applied
    assert not torch.equal(pruning.dense["2.weight"][:, 8:], before["2.weight"][:, 8:])  # the kept units train


def test_snr_auto_removed_units_drift_first():
    """At unit granularity the removed units' drift regrows even when the kept weights read converged;
    at weight granularity converged comes first."""
    pytest.importorskip("torch_pruning")
    for granularity, expected in (("unit", 1), ("weight", -1)):
        options = {"granularity": "unit", "example_inputs": torch.randn(2, 6)} if granularity == "unit" else {}
        pruning = SNRAutoPruning(small_mlp(), window_steps=4, pruned_witness=True, **options)
        pruning.evidence = lambda unit, parts=None, pruned=False: 1 if pruned else -1
        assert pruning._reading(SNRAutoPruning.GLOBAL) == expected, granularity


def _two_sets(pruning, kept_kind, pruned_kind, n=400, seed=0):
    """A window whose kept weights are of ``kept_kind`` and pruned weights of ``pruned_kind``
    ("converged": each step undoes the last one's noise; "noise": a random walk; "drift")."""
    g = torch.Generator().manual_seed(seed)
    for name, w in pruning.dense.items():
        noise = torch.randn((n + 1, *w.shape), generator=g)
        kinds = {"converged": noise[1:] - noise[:-1], "noise": noise[1:], "drift": noise[1:] + 0.5}
        _window(pruning, name, torch.where(pruning.keep[name].bool(), kinds[kept_kind], kinds[pruned_kind]))


def _half_pruned(pruning):
    """Masks that keep the first half of every layer's weights, at density 0.5."""
    pruning._set_masks({name: (torch.arange(w.numel()) < w.numel() // 2).reshape(w.shape) for name, w in pruning.dense.items()})
    pruning.density["*"] = 0.5


@pytest.mark.parametrize(
    "kept, pruned, density",
    [
        ("noise", "converged", 0.25),  # the pruned weights are not wanted back: prune on
        ("converged", "noise", 0.25),  # the kept weights converged: prune, as without the witness
        ("noise", "drift", 1.0),  # the masked network keeps pushing the pruned weights one way: regrow
        ("drift", "noise", 0.5),  # still learning with what it has, not asking for more: hold
        ("noise", "noise", 0.5),
    ],
)
def test_snr_auto_pruned_witness_decides_by_both_sets(kept, pruned, density):
    pruning = SNRAutoPruning(small_mlp(), window_steps=4, step=0.5, **{**SINGLE, "pruned_witness": True})
    _half_pruned(pruning)
    _two_sets(pruning, kept, pruned)
    pruning.decide()
    assert pruning.density["*"] == pytest.approx(density)
    z = pruning.pruned_snr["*"]
    mean, std = pruning.pruned_band["*"]
    assert (z < mean - 2 * std) == (pruned == "converged") and (z > mean + 2 * std) == (pruned == "drift")
    if (kept, pruned) == ("drift", "noise"):  # without the witness, the kept weights' drift regrows
        plain = SNRAutoPruning(small_mlp(), window_steps=4, step=0.5, **SINGLE)
        _half_pruned(plain)
        _two_sets(plain, kept, pruned)
        plain.decide()
        assert plain.density["*"] == pytest.approx(1.0)


@pytest.mark.parametrize(
    "pruned_first, pruned_second, at_half, at_end",
    [
        ("converged", "noise", -1, 0),  # the pruned weights converged in the first half: prune at the half
        ("drift", "noise", 0, 0),  # drift in the first half only: the second half's witness does not read it
        ("drift", "drift", 0, 1),  # the pruned weights drift in the second half and the whole window: regrow
    ],
)
def test_snr_auto_nested_windows_read_both_sets_at_each_witness(pruned_first, pruned_second, at_half, at_end):
    # the kept weights are a random walk throughout: every move comes from the pruned weights
    pruning = SNRAutoPruning(small_mlp(), window_steps=400, step=0.5, nested=True, pruned_witness=True)
    _half_pruned(pruning)
    steps = {}
    for i, (name, w) in enumerate(pruning.dense.items()):
        kept, pruned = _halves(w, "noise", "noise", seed=i), _halves(w, pruned_first, pruned_second, seed=10 + i)
        steps[name] = torch.where(pruning.keep[name].bool(), kept, pruned)
        _window(pruning, name, steps[name][:200])
    pruning.decide_half()
    assert pruning.direction["*"] == at_half
    for name in steps:
        _window(pruning, name, steps[name])
    before = pruning.density["*"]
    pruning.decide()
    assert (pruning.density["*"] > before) - (pruning.density["*"] < before) == at_end


def test_snr_auto_pruned_witness_before_anything_is_pruned():
    pruning = SNRAutoPruning(small_mlp(), window_steps=4, step=0.5, pruned_witness=True)
    _two_sets(pruning, "converged", "drift")  # every weight is kept: only the kept set has evidence
    pruning.decide()
    assert pruning.density["*"] == 0.5 and "*" not in pruning.pruned_snr


@pytest.mark.parametrize("growth", [False, True])
def test_snr_auto_step_growth(growth):
    pruning = SNRAutoPruning(small_mlp(), window_steps=4, step=0.5, hysteresis=False, step_growth=growth)
    steps = []
    for move in (-1, 1, 1, 1, -1, -1):
        pruning._move({"*": move})
        steps.append(pruning.step["*"])
    # reversals halve the step; with growth, a move the same way as the last doubles it, up to the initial 0.5
    assert steps == ([0.5, 0.25, 0.5, 0.5, 0.25, 0.5] if growth else [0.5, 0.25, 0.25, 0.25, 0.125, 0.125])


def test_snr_auto_moves_scale_with_the_learning_rate():
    model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 3))
    pruning = SNRAutoPruning(model, window_steps=4, step=0.5)
    assert pruning.lr_scale() == 1.0  # not wrapped: no learning rate known, full moves
    optimizer = torch.optim.SGD(
        [{"params": [model[0].weight, model[2].weight], "lr": 0.4}, {"params": [model[0].bias, model[2].bias], "lr": 5.0}]
    )
    optimizer = pruning.wrap(optimizer)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0 if step < 3 else 0.25)
    batches = make_batches(3)
    train(model, optimizer, batches, scheduler)  # three steps at 0.4: the largest seen (the biases' 5.0 is not the weights')
    assert pruning.lr_max == 0.4 and pruning.lr() == pytest.approx(0.1)
    assert pruning.lr_scale() == pytest.approx(0.25)
    assert _decide(pruning, drift=False) == pytest.approx(1 - 0.5 * 0.25)
    state = pruning.state_dict()
    again = SNRAutoPruning(model, window_steps=4, step=0.5)
    again.load_state_dict(state)
    assert again.lr_max == 0.4 and again.adapting == pruning.adapting
    unscaled = SNRAutoPruning(model, window_steps=4, step=0.5, lr_scaled=False)
    unscaled.wrap(optimizer)
    unscaled.lr_max = 0.4
    assert unscaled.lr_scale() == 1.0 and _decide(unscaled, drift=False) == 0.5
    squared = SNRAutoPruning(model, window_steps=4, step=0.5, lr_power=2)  # the unit granularity's default power
    squared.wrap(optimizer)
    squared.lr_max = 0.4
    assert squared.lr_scale() == pytest.approx(0.25**2) and _decide(squared, drift=False) == pytest.approx(1 - 0.5 * 0.25**2)
    with pytest.raises(ValueError, match=r"moves were scaled by \(lr / lr_max\) \*\* 1, this object's by \*\* 2: load it into an SNRAutoPruning with lr_power=1"):
        squared.load_state_dict(state)  # a resume continues the run as it began
    del state["lr_power"]  # a state from before the power: its moves were lr / lr_max
    again.load_state_dict(state)
    with pytest.raises(ValueError, match="lr_power=1"):
        squared.load_state_dict(state)


def test_snr_auto_masks_keep_the_largest_magnitudes_at_the_layer_density():
    model = small_mlp()
    pruning = SNRAutoPruning(model, window_steps=4, scope="layer")
    pruning.density = {name: 0.25 for name in pruning.dense}
    masks = pruning.compute_masks()
    for name, w in pruning.dense.items():
        n_keep = round(0.25 * w.numel())
        assert torch.equal(masks[name].bool(), stable_prune_count_mask(w.abs(), w.numel() - n_keep))


def test_snr_auto_window_sums_are_the_applied_gradients():
    """The window sums the mini-batch gradients the optimizer applies, and their squares, one term a step."""
    model = small_mlp()
    pruning = SNRAutoPruning(model, window_steps=100)
    optimizer = pruning.wrap(torch.optim.SGD(model.parameters(), lr=0.0))
    batches = make_batches(3)
    train(model, optimizer, batches)
    reference = small_mlp()  # the same weights (lr 0, no mask yet): one backward per batch
    sums = {name: [0.0, 0.0] for name in pruning.weights}
    for x, y in batches:
        reference.zero_grad()
        F.cross_entropy(reference(x), y).backward()
        for name, p in reference.named_parameters():
            if name in sums:
                sums[name][0] += p.grad
                sums[name][1] += p.grad**2
    for name, (s1, s2) in sums.items():
        classes = pruning.window[name][0]
        assert torch.allclose(classes.sum(0), s1, atol=1e-6)
        assert torch.allclose(pruning.window[name][1][0], s2, atol=1e-7)
        assert classes[3:].abs().sum() == 0  # step t went into class t mod SIGN_CLASSES: three steps, three classes
    assert pruning.window_count == 3


def test_snr_auto_accumulated_micro_batches_give_the_batch_window():
    """Gradient accumulation over micro-batches leaves the applied gradient, so the window, unchanged."""
    windows = []
    for parts in (1, 4):
        model = small_mlp()
        pruning = SNRAutoPruning(model, window_steps=100)
        optimizer = pruning.wrap(torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9))
        for x, y in make_batches(5):
            optimizer.zero_grad()
            for xk, yk in zip(x.chunk(parts), y.chunk(parts)):
                (F.cross_entropy(model(xk), yk) / parts).backward()
            optimizer.step()
        windows.append(pruning.window)
    for name, (s1, s2) in windows[0].items():
        assert torch.allclose(windows[1][name][0], s1, atol=1e-6) and torch.allclose(windows[1][name][1], s2, atol=1e-7)


def test_snr_auto_short_windows_are_calibrated_and_extended():
    """Pure noise over 11 steps: mean z near 1.25 (F(1, 10)), not 1: held, not read as drift; under 6 steps, no decision."""
    model = nn.Sequential(nn.Linear(40, 50), nn.ReLU(), nn.Linear(50, 10))  # 2,500 weights
    pruning = SNRAutoPruning(model, window_steps=11)
    pruning.density = {"*": 0.5}  # a move either way would show
    g = torch.Generator().manual_seed(0)
    for name, w in pruning.dense.items():
        _window(pruning, name, torch.randn((11, *w.shape), generator=g))  # a random walk: zero-mean gradients
    pruning.decide()
    z, n = pruning.window_snr["*"], 2500
    assert z > 1 + 2 * (2 / n) ** 0.5  # a band around 1 (long windows) would read this noise as drift ...
    assert pruning.density == {"*": 0.5} and pruning.window_band["*"][0] > 1.15  # ... the drawn band is where F(1, 10) is
    for name in pruning.dense:  # five converged steps: too few for a decision, the window goes on
        _converged(pruning, name, n=5)
    pruning.decide()
    assert pruning.density == {"*": 0.5} and pruning.window_count == 5 and pruning.window


@pytest.mark.parametrize(
    "nested, window, band_sample, rule",
    [(False, 3, None, {}), (True, 14, None, {}), (False, 8, 40, {}), (True, 14, 40, {}), (False, 3, None, {"pooled": True}),
     (False, 3, None, {"pruned_witness": True, "step_growth": True}), (False, 8, 40, {"pruned_witness": True})],
)
def test_snr_auto_resume_is_bit_exact(nested, window, band_sample, rule):
    def setup(seed=0):
        model = small_mlp(seed)
        pruning = SNRAutoPruning(model, window_steps=window, update_every=2, nested=nested, band_sample=band_sample, **rule)
        optimizer = pruning.wrap(torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9))
        return model, pruning, optimizer

    batches = make_batches(20)
    model_a, pruning_a, opt_a = setup()
    train(model_a, opt_a, batches)
    model_b, pruning_b, opt_b = setup()
    train(model_b, opt_b, batches[:9])  # mid-window (nested: after the half's decision)
    buffer = io.BytesIO()
    torch.save({"model": model_b.state_dict(), "opt": opt_b.state_dict(), "pruning": pruning_b.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)
    model_c, pruning_c, opt_c = setup(seed=5)
    model_c.load_state_dict(saved["model"])
    opt_c.load_state_dict(saved["opt"])
    pruning_c.load_state_dict(saved["pruning"])
    train(model_c, opt_c, batches[9:])
    assert pruning_a.density == pruning_c.density and pruning_a.window_count == pruning_c.window_count
    assert pruning_a.moved_at_half == pruning_c.moved_at_half
    assert pruning_a.step == pruning_c.step and pruning_a.direction == pruning_c.direction
    assert pruning_a.adapting == pruning_c.adapting and pruning_a.lr_max == pruning_c.lr_max == 0.1
    assert pruning_a.window_band == pruning_c.window_band and pruning_a.window_snr == pruning_c.window_snr
    assert pruning_a.pool == pruning_c.pool and pruning_a.deviation == pruning_c.deviation
    assert pruning_a.pruned_snr == pruning_c.pruned_snr and pruning_a.pruned_band == pruning_c.pruned_band
    assert pruning_a.sample.keys() == pruning_c.sample.keys() and all(torch.equal(i, pruning_c.sample[n]) for n, i in pruning_a.sample.items())
    for name in pruning_a.masks:
        assert torch.equal(pruning_a.masks[name], pruning_c.masks[name])
        assert torch.equal(pruning_a.dense[name], pruning_c.dense[name])
    for (name, a), c in zip(model_a.state_dict().items(), model_c.state_dict().values()):
        assert torch.equal(a, c), name


def test_snr_auto_global_scope_pools_the_evidence_and_ranks_magnitudes_over_all_layers():
    model = small_mlp()
    pruning = SNRAutoPruning(model, window_steps=4, step=0.5, scope="global", **SINGLE)
    assert set(pruning.density) == {SNRAutoPruning.GLOBAL}
    for name in pruning.dense:
        _converged(pruning, name)
    pruning.decide()  # every kept weight converged: the network's density halves
    assert pruning.density == {"*": 0.5} and pruning.direction == {"*": -1}
    masks = pruning.compute_masks()
    flat = torch.cat([w.abs().reshape(-1) for w in pruning.dense.values()])
    expected = stable_prune_count_mask(flat, flat.numel() - round(0.5 * flat.numel()))
    assert torch.equal(torch.cat([m.bool().reshape(-1) for m in masks.values()]), expected)
    # one layer converged, two drifting strongly: the pooled mean is above the band; held in the
    # window right after the prune, then the network regrows
    for _ in range(2):
        _converged(pruning, "0.weight")
        for name in ("2.weight", "4.weight"):
            _set_window(pruning, name, torch.full_like(pruning.dense[name], 0.5), 1.0)
        pruning.decide()
    assert pruning.step["*"] == 0.25 and pruning.density["*"] == pytest.approx(0.5 / 0.75)
    assert pruning.window_snr["0.weight"] < 0.05 and pruning.window_snr["*"] > 1


def test_snr_auto_global_scope_never_empties_a_layer():
    model = small_mlp()
    with torch.no_grad():
        model[2].weight.mul_(1e-6)  # the global ranking alone would prune this whole layer first
    pruning = SNRAutoPruning(model, window_steps=4, scope="global")
    pruning.density = {"*": 0.3}
    masks = pruning.compute_masks()
    assert int(masks["2.weight"].sum()) == 12  # its floor: one weight per output unit (12 rows)
    assert torch.equal(masks["2.weight"].bool(), stable_prune_count_mask(pruning.dense["2.weight"].abs(), 192 - 12))


def test_snr_auto_global_scope_resumes_and_refuses_a_layer_state():
    model = small_mlp()
    pruning = SNRAutoPruning(model, window_steps=3, update_every=2, scope="global")
    optimizer = pruning.wrap(torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9))
    train(model, optimizer, make_batches(7))
    state = pruning.state_dict()
    again = SNRAutoPruning(small_mlp(3), window_steps=3, update_every=2, scope="global")
    again.load_state_dict(state)
    assert again.density == pruning.density and again.step == pruning.step and again.window_count == pruning.window_count
    with pytest.raises(ValueError, match="same scope"):
        SNRAutoPruning(small_mlp(), window_steps=3, scope="layer").load_state_dict(state)


def test_snr_auto_bad_input():
    model = small_mlp()
    for kwargs, message in [
        ({"window_steps": 0}, "window_steps must be an integer >= 1"),
        ({"window_steps": 4, "step": 1.0}, "step must be a number in"),
        ({"window_steps": 4, "threshold": -1.0}, "threshold must be a number in"),
        ({"window_steps": 4, "scope": "row"}, "unknown scope"),
        ({"window_steps": 4, "lr_scaled": "yes"}, "lr_scaled must be True or False"),
        ({"window_steps": 4, "hysteresis": 1}, "hysteresis must be True or False"),
        ({"window_steps": 4, "lr_power": 0}, r"lr_power must be a positive number \(or None: the default rule\), got 0"),
        ({"window_steps": 4, "lr_power": "2"}, "lr_power must be a positive number"),
        ({"window_steps": 4, "lr_power": True}, "lr_power must be a positive number"),
    ]:
        with pytest.raises(ValueError, match=message):
            SNRAutoPruning(model, **kwargs)
    assert get_method("snr-auto") is SNRAutoPruning


def test_snr_auto_half_precision_weights_sum_in_float32():
    model = small_mlp().to(torch.bfloat16)
    pruning = SNRAutoPruning(model, window_steps=100)
    optimizer = pruning.wrap(torch.optim.SGD(model.parameters(), lr=0.01))
    train(model, optimizer, [(x.to(torch.bfloat16), y) for x, y in make_batches(3)])
    assert all(t.dtype == torch.float32 for pair in pruning.window.values() for t in pair)
    again = SNRAutoPruning(small_mlp().to(torch.bfloat16), window_steps=100)
    again.load_state_dict(pruning.state_dict())
    for name, pair in again.window.items():
        assert all(torch.equal(a, b) and a.dtype == torch.float32 for a, b in zip(pair, pruning.window[name]))


def test_snr_auto_reads_unscaled_gradients_and_skips_what_grad_scaler_skips():
    model = small_mlp()
    pruning = SNRAutoPruning(model, window_steps=100)
    optimizer = pruning.wrap(torch.optim.SGD(model.parameters(), lr=0.01))
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**20)
    expected = {name: torch.zeros_like(w) for name, w in pruning.weights.items()}
    batches = make_batches(4)
    for i, (x, y) in enumerate(batches):
        optimizer.zero_grad()
        loss = F.cross_entropy(model(x), y)
        if i == 1:
            loss = loss * float("inf")  # an overflow: GradScaler skips this step
        scaler.scale(loss).backward()
        scaler.step(optimizer)  # unscales the gradients in place, then steps (or not)
        scaler.update()
        if i != 1:
            for name, w in pruning.weights.items():
                expected[name] += w.grad
    assert pruning.window_count == 3
    for name, s1 in expected.items():
        assert torch.allclose(pruning.window[name][0].sum(0), s1, atol=1e-6)


def test_snr_auto_band_is_calibrated_when_the_weights_share_their_noise():
    """Weights that share the batches share noise: the drawn band holds pure noise, and still sees convergence.

    Each step's gradient is a random factor shared by all weights (times a fixed loading) plus each
    weight's own noise. Pure noise must be held; a band that treats the weights as independent
    (mean of F(1, T - 1) +- two standard errors) reads most of these windows as a signal.
    """
    steps, n, seeds = 60, 2500, 20
    d = steps - 1
    null_mean, null_var = d / (d - 2), 2 * d * d * (d - 1) / ((d - 2) ** 2 * (d - 4))  # F(1, T - 1)
    independent_margin = 2 * (null_var / n) ** 0.5
    moved_noise = moved_independent = held_converged = 0
    for seed in range(seeds):
        g = torch.Generator().manual_seed(seed)
        pruning = SNRAutoPruning(nn.Sequential(nn.Linear(50, 50)), window_steps=steps)
        loading = 0.5 * torch.randn(50, 50, generator=g)
        walk = torch.randn(steps + 1, 1, 1, generator=g) * loading + torch.randn(steps + 1, 50, 50, generator=g)
        _window(pruning, "0.weight", walk[1:])  # a random walk: zero-mean gradients
        moved_noise += pruning.evidence("*") != 0
        moved_independent += abs(pruning.window_snr["*"] - null_mean) > independent_margin
        _window(pruning, "0.weight", walk[1:] - walk[:-1])  # held at a minimum: each step undoes the last one's noise
        held_converged += pruning.evidence("*") != -1
    assert moved_noise <= 4  # about 5% expected (two standard deviations of the draws)
    assert moved_independent >= 12  # the independence band is far too narrow here ...
    assert held_converged <= 2  # ... while the drawn band still sees convergence


def test_snr_auto_null_signs_depend_on_the_step_alone():
    pruning, other = SNRAutoPruning(small_mlp(), window_steps=4), SNRAutoPruning(small_mlp(1), window_steps=9)
    pruning.step_count = other.step_count = 12
    signs = pruning.null_signs()
    assert signs.shape == (snrprune.pruners.snr_auto.NULL_DRAWS, SIGN_CLASSES)
    assert set(signs.unique().tolist()) == {-1, 1}
    assert torch.equal(signs, other.null_signs())  # every rank, and a resumed run, draws the same
    pruning.step_count = 13
    assert not torch.equal(signs, pruning.null_signs())


def test_snr_auto_band_is_the_same_in_slices(monkeypatch):
    """Large layers draw the band in slices of CHUNK weights: the same evidence as in one piece."""
    results = []
    for chunk in (SNRAutoPruning.CHUNK, 7):
        monkeypatch.setattr(SNRAutoPruning, "CHUNK", chunk)
        pruning = SNRAutoPruning(small_mlp(), window_steps=4)
        pruning.keep["2.weight"][::3] = 0  # pruned weights are left out of both
        for i, name in enumerate(pruning.dense):
            _set_window(pruning, name, torch.zeros_like(pruning.dense[name]), 1.0, n=40, seed=i)
        results.append((pruning.evidence("*"), pruning.window_snr, pruning.window_band))
    assert results[0][0] == results[1][0]
    assert results[0][1] == pytest.approx(results[1][1], rel=1e-6)
    assert results[0][2]["*"] == pytest.approx(results[1][2]["*"], rel=1e-6)


def test_snr_auto_loads_a_state_from_before_the_sign_classes():
    """An older checkpoint holds one sum of g_t per weight (and one sum of squares, without nested
    halves): it becomes one class of a one-part window, and the window goes on."""
    model = small_mlp()
    pruning = SNRAutoPruning(model, window_steps=100, **SINGLE)
    optimizer = pruning.wrap(torch.optim.SGD(model.parameters(), lr=0.01))
    train(model, optimizer, make_batches(8))
    state = pruning.state_dict()
    del state["nested"]
    state["window"] = {name: [pair[0].sum(0), pair[1][0]] for name, pair in state["window"].items()}  # the old layout
    with pytest.raises(ValueError, match="summed as one part.*nested=False"):
        SNRAutoPruning(small_mlp(), window_steps=100, nested=True).load_state_dict(state)
    again = SNRAutoPruning(small_mlp(), window_steps=100, **SINGLE)
    again.load_state_dict(state)
    for name, (classes, s2) in again.window.items():
        assert classes.shape == (SIGN_CLASSES, *pruning.dense[name].shape)
        assert torch.equal(classes[0], pruning.window[name][0].sum(0)) and classes[1:].abs().sum() == 0
        assert torch.equal(s2, pruning.window[name][1])
    pruning.evidence("*")
    again.evidence("*")  # the observed window SNR depends on the total sum only: unchanged
    assert again.window_snr["*"] == pytest.approx(pruning.window_snr["*"], rel=1e-6)


def test_snr_auto_one_epoch_window_reads_the_full_batch_gradient():
    """At a minimum of the training loss, one epoch of a without-replacement shuffle sums to the full gradient, zero.

    A linear least-squares model held at its exact solution: every mini-batch gradient is noise, but
    over one epoch of a shuffle (each sample once) they sum to N / B times the full-batch gradient,
    which is zero there, so z is ~0 and the window reads "converged" on the data alone, without any
    dynamics. With batches drawn with replacement the same weights are a random walk and are held.
    This is where most of the evidence of one-epoch windows comes from (finding 4 of the report).
    """
    g = torch.Generator().manual_seed(0)
    n, batch, d, k = 512, 16, 8, 4
    x, y = torch.randn(n, d, generator=g), torch.randn(n, k, generator=g)
    model = nn.Linear(d, k, bias=False)
    with torch.no_grad():
        model.weight.copy_(torch.linalg.lstsq(x.double(), y.double()).solution.T.float())

    def epoch_window(order):
        pruning = SNRAutoPruning(model, window_steps=n // batch)
        for rows in order.split(batch):
            model.zero_grad()
            F.mse_loss(model(x[rows]), y[rows]).backward()
            pruning.observe_gradients()
        return pruning, pruning.evidence(SNRAutoPruning.GLOBAL)

    shuffled, move = epoch_window(torch.randperm(n, generator=g))
    assert move == -1 and shuffled.window_snr["*"] < 1e-3  # the epoch's gradients cancel: converged
    holds = 0
    for _ in range(5):
        drawn, move = epoch_window(torch.randint(0, n, (n,), generator=g))
        assert drawn.window_snr["*"] > 0.5  # the same weights, read as the random walk they then are
        holds += move == 0
    assert holds >= 4


def test_snr_auto_floor_counts_output_units_of_hugging_face_conv1d():
    """HF Conv1D stores its weight [in, out]: the floor of one weight per output unit counts columns."""
    pytorch_utils = pytest.importorskip("transformers.pytorch_utils")
    model = nn.Sequential(pytorch_utils.Conv1D(12, 4), nn.ReLU(), nn.Linear(12, 3))
    pruning = SNRAutoPruning(model, window_steps=8)
    assert pruning.min_kept == {"0.weight": 12, "2.weight": 3}


def test_snr_auto_says_why_it_pruned_nothing():
    """A run that ends dense warns with its last reading, and names a layer that holds the network alone (finding 18)."""
    pruning = SNRAutoPruning(small_mlp(), window_steps=4)
    assert pruning.idle_reason() is None  # nothing decided yet: warn_if_no_op's case, not this one
    for name in ("0.weight", "2.weight"):
        _set_window(pruning, name, torch.zeros_like(pruning.dense[name]), 1.0)  # a random walk
    _set_window(pruning, "4.weight", torch.full_like(pruning.dense["4.weight"], 0.5), 1.0)  # 36 of 324 weights drift
    pruning.decide()
    assert pruning.density == {"*": 1.0}
    reason = pruning.idle_reason()
    assert reason.startswith("snr-auto pruned nothing") and "drift" in reason
    assert "Layer 4.weight alone (11.1% of the kept weights" in reason
    with pytest.warns(UserWarning, match="snr-auto pruned nothing"):
        pruning.warn_if_idle()

    quiet = SNRAutoPruning(small_mlp(), window_steps=4)
    for name in quiet.dense:
        _set_window(quiet, name, torch.zeros_like(quiet.dense[name]), 1.0)
    quiet.decide()
    assert quiet.density == {"*": 1.0} and "no evidence either way" in quiet.idle_reason() and "Layer" not in quiet.idle_reason()

    pruned = SNRAutoPruning(small_mlp(), window_steps=4)
    for name in pruned.dense:
        _converged(pruned, name)
    pruned.decide()
    assert pruned.density["*"] < 1.0 and pruned.idle_reason() is None

    layers = SNRAutoPruning(small_mlp(), window_steps=4, scope="layer")
    for name in layers.dense:
        _set_window(layers, name, torch.zeros_like(layers.dense[name]), 1.0)
    _set_window(layers, "4.weight", torch.full_like(layers.dense["4.weight"], 0.5), 1.0)
    layers.decide()
    assert "read 1 above, 2 inside their noise bands" in layers.idle_reason()
