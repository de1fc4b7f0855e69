"""Pruning methods: the feedback mechanism, SNR and DPF against independent reference loops, resume, errors (snr-auto: test_snr_auto.py)."""

import copy
import io

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad, vmap

import snrprune
from snrprune import DPFPruning, NoPruning, SNRPruning, get_method
from snrprune.schedules import polynomial_sparsity


def small_mlp(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 12), nn.ReLU(), nn.Linear(12, 3))


def make_batches(n, batch=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    teacher = torch.randn(6, 3, generator=g)
    out = []
    for _ in range(n):
        x = torch.randn(batch, 6, generator=g)
        y = (x @ teacher + 0.5 * torch.randn(batch, 3, generator=g)).argmax(1)
        out.append((x, y))
    return out


def train(model, optimizer, batches, scheduler=None):
    for x, y in batches:
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        optimizer.step()
        if scheduler is not None:
            scheduler.step()


def stable_prune_count_mask(values, k):
    """Keep-mask pruning the k smallest, ties to the lower index (independent of the library)."""
    flat = values.reshape(-1)
    keep = torch.ones_like(flat, dtype=torch.bool)
    keep[torch.sort(flat, stable=True).indices[:k]] = False
    return keep.view_as(values)


def reference_snr_run(model, batches, lr, burn_in, ema, combine, scope, momentum=0.9):
    """Algorithm 1 of SPEC section 3 written plainly, per-sample gradients from torch.func."""
    names = [n for n, p in model.named_parameters() if n.endswith("weight")]
    params = dict(model.named_parameters())
    dense = {n: params[n].detach().clone() for n in names}
    masks = {n: torch.ones_like(dense[n], dtype=torch.bool) for n in names}
    avg = {}
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum)

    def loss_one(p, xi, yi):
        return F.cross_entropy(functional_call(model, p, (xi[None],)), yi[None])

    def update_masks():
        keep_snr = {n: avg[n] > 1.0 + snrprune.pruners.SNR_ROUNDOFF for n in names}
        if scope == "layer":
            keep_mag = {n: stable_prune_count_mask(dense[n].abs(), int((~keep_snr[n]).sum())) for n in names}
        else:
            flat = torch.cat([dense[n].abs().reshape(-1) for n in names])
            k = sum(int((~keep_snr[n]).sum()) for n in names)
            keep_flat, start, keep_mag = stable_prune_count_mask(flat, k), 0, {}
            for n in names:
                keep_mag[n] = keep_flat[start : start + dense[n].numel()].view_as(dense[n])
                start += dense[n].numel()
        rule = {
            "agree": lambda a, b: a | b,
            "either": lambda a, b: a & b,
            "snr": lambda a, b: a,
            "magnitude": lambda a, b: b,
        }[combine]
        return {n: rule(keep_snr[n], keep_mag[n]) for n in names}

    # t = 0 .. T: the last iteration only prunes (theta_hat_T), it trains no more
    for t in range(len(batches) + 1):
        if t > burn_in and avg:
            masks = update_masks()
        if t == len(batches):
            break
        x, y = batches[t]
        with torch.no_grad():
            for n in names:
                params[n].copy_(dense[n] * masks[n])
        detached = {k: v.detach() for k, v in params.items()}
        per_sample = vmap(grad(loss_one), in_dims=(None, 0, 0))(detached, x, y)
        for n in names:
            g = per_sample[n]
            snr = len(x) * g.mean(0).square() / g.var(0, unbiased=True)
            snr = torch.nan_to_num(snr, nan=0.0, posinf=snrprune.SNR_CAP)
            avg[n] = snr if n not in avg else ema * avg[n] + (1 - ema) * snr
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        with torch.no_grad():
            for n in names:
                params[n].copy_(dense[n])
        opt.step()
        dense = {n: params[n].detach().clone() for n in names}
    with torch.no_grad():
        for n in names:
            params[n].copy_(dense[n] * masks[n])
    return dense, masks, avg




@pytest.mark.parametrize(
    "combine,scope", [("agree", "layer"), ("either", "layer"), ("snr", "global"), ("magnitude", "global"), ("agree", "global")]
)
def test_snr_pruning_matches_reference_algorithm(float64_default, combine, scope):
    batches = make_batches(14, batch=12)
    ref_model = small_mlp().double()
    ref_dense, ref_masks, ref_avg = reference_snr_run(ref_model, batches, 0.2, 3, 0.5, combine, scope)

    model = small_mlp().double()
    pruning = SNRPruning(model, burn_in_steps=3, ema=0.5, combine=combine, scope=scope)
    optimizer = pruning.wrap(torch.optim.SGD(model.parameters(), lr=0.2, momentum=0.9))
    train(model, optimizer, batches)

    assert pruning.sparsity() > 0
    for name, w in pruning.weights.items():
        torch.testing.assert_close(pruning.snr_ema[name], ref_avg[name], rtol=1e-7, atol=1e-9)
        assert torch.equal(pruning.masks[name], ref_masks[name]), name
        torch.testing.assert_close(pruning.dense[name], ref_dense[name])
        torch.testing.assert_close(w.detach(), ref_dense[name] * ref_masks[name])


def test_single_sample_gradient_has_snr_one_and_counts_as_unreliable():
    """Only sample 0 reaches weight column 0: its SNR is exactly 1 in exact arithmetic."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 2))
    x = torch.randn(8, 3)
    x[1:, 0] = 0.0
    pruning = SNRPruning(model, burn_in_steps=0, combine="snr")
    optimizer = pruning.wrap(torch.optim.SGD(model.parameters(), lr=0.0))
    train(model, optimizer, [(x, torch.randint(0, 2, (8,)))])
    torch.testing.assert_close(pruning.snr_ema["0.weight"][:, 0], torch.ones(2))
    assert not pruning.masks["0.weight"][:, 0].any()


def test_feedback_gradient_at_pruned_weights_updates_dense_weights():
    """One step by hand: gradient at theta_hat, SGD update of the dense theta."""
    model = small_mlp()
    pruning = DPFPruning(model, target_sparsity=0.5, total_steps=4, end_fraction=0.25, update_every=1)
    optimizer = pruning.wrap(torch.optim.SGD(model.parameters(), lr=0.1))
    (x0, y0), (x1, y1) = make_batches(2)
    train(model, optimizer, [(x0, y0)])  # the update at step 1 reaches the target
    assert pruning.sparsity() == pytest.approx(0.5, abs=1e-2)

    dense_before = {n: t.clone() for n, t in pruning.dense.items()}
    masks = {n: m.clone() for n, m in pruning.masks.items()}
    twin = copy.deepcopy(model)  # holds theta_hat for every layer, the bias as is
    F.cross_entropy(twin(x1), y1).backward()
    expected = {n: dense_before[n] - 0.1 * p.grad for n, p in twin.named_parameters() if n in dense_before}
    train(model, optimizer, [(x1, y1)])
    for name in expected:
        torch.testing.assert_close(pruning.dense[name], expected[name])
        assert torch.equal(pruning.weights[name].detach(), expected[name] * pruning.masks[name])
    pruned = sum(int((~m).sum()) for m in pruning.masks.values())
    assert pruned == sum(int((~m).sum()) for m in masks.values())  # target held, masks re-chosen


def test_model_holds_pruned_weights_between_steps_and_dense_on_request():
    model = small_mlp()
    pruning = DPFPruning(model, target_sparsity=0.6, total_steps=8, end_fraction=0.5, update_every=2)
    optimizer = pruning.wrap(torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9))
    train(model, optimizer, make_batches(8))
    for name, w in pruning.weights.items():
        assert torch.all(w[~pruning.masks[name]] == 0)
        assert torch.all(pruning.dense[name][~pruning.masks[name]] != 0)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    with pruning.dense_weights():
        for name, w in pruning.weights.items():
            assert torch.equal(w.detach(), pruning.dense[name])
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k])


def test_dpf_schedule_and_exact_target():
    model = small_mlp()
    total = sum(w.numel() for n, w in model.named_parameters() if n.endswith("weight"))
    pruning = DPFPruning(model, target_sparsity=0.8, total_steps=40, update_every=16)
    assert pruning.end_step == 30
    optimizer = pruning.wrap(torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9))
    seen = []
    for x, y in make_batches(40):
        train(model, optimizer, [(x, y)])
        seen.append(pruning.sparsity())
    # updates at steps 16 and 30 (the forced end step); zero before the first update
    assert seen[14] == 0.0
    assert seen[15] == pytest.approx(polynomial_sparsity(16, 0.8, 30), abs=1 / total)
    zeros = sum(int((~m).sum()) for m in pruning.masks.values())
    assert zeros == round(0.8 * total)
    assert seen[-1] == zeros / total


def test_polynomial_schedule_values():
    assert polynomial_sparsity(0, 0.9, 100) == 0.0
    assert polynomial_sparsity(50, 0.9, 100) == pytest.approx(0.9 - 0.9 * 0.5**3)
    assert polynomial_sparsity(100, 0.9, 100) == 0.9
    assert polynomial_sparsity(500, 0.9, 100) == 0.9
    assert polynomial_sparsity(-3, 0.9, 100, initial=0.1) == 0.1
    values = [polynomial_sparsity(t, 0.9, 100) for t in range(101)]
    assert all(a <= b for a, b in zip(values, values[1:]))


def test_pruned_weight_regrows_when_its_magnitude_recovers():
    model = small_mlp()
    pruning = DPFPruning(model, target_sparsity=0.5, total_steps=2, end_fraction=0.5, update_every=1)
    optimizer = pruning.wrap(torch.optim.SGD(model.parameters(), lr=0.0))
    batches = make_batches(3)
    train(model, optimizer, batches[:1])
    name = "2.weight"
    pruned = (~pruning.masks[name]).nonzero()[0]
    with torch.no_grad():
        pruning.dense[name][tuple(pruned)] = 100.0  # its dense value kept training and grew
    train(model, optimizer, batches[1:2])
    assert pruning.masks[name][tuple(pruned)]
    assert pruning.regrown >= 1 and pruning.last_flips["regrown"] >= 1
    assert pruning.weights[name][tuple(pruned)] == 100.0


def test_snr_regrowth_when_snr_recovers():
    """agree mode: a weight whose SNR recovers comes back although its magnitude is the smallest."""
    model = small_mlp()
    # EMA frozen after step 0, masks recomputed every step nevertheless
    pruning = SNRPruning(model, burn_in_steps=0, combine="agree", stats_every=100, update_every=1)
    optimizer = pruning.wrap(torch.optim.SGD(model.parameters(), lr=0.0))
    batches = make_batches(3)
    train(model, optimizer, batches[:1])
    name = "2.weight"
    pruning.snr_ema[name].fill_(0.0)  # every gradient of the layer unreliable: the whole layer goes
    with torch.no_grad():
        pruning.dense[name][0, 0] = 1e-6  # the smallest magnitude of the layer
    train(model, optimizer, batches[1:2])
    assert not pruning.masks[name].any()
    pruning.snr_ema[name][0, 0] = 10.0  # its gradient became reliable again
    train(model, optimizer, batches[2:3])
    assert pruning.masks[name][0, 0]
    assert pruning.weights[name][0, 0] == 1e-6
    # p = 1 - 1/N: magnitude keeps the largest weight, SNR keeps [0, 0]
    assert int(pruning.masks[name].sum()) == 2
    assert pruning.last_flips["regrown"] == 2


def test_distinct_regrowth_and_mask_counts():
    """A weight regrown twice counts twice as a flip, once as a distinct regrown weight."""
    model = small_mlp()
    pruning = DPFPruning(model, target_sparsity=0.5, total_steps=2, end_fraction=0.5, update_every=1)
    name = "2.weight"
    keep = {n: torch.ones_like(k) for n, k in pruning.keep.items()}
    for _ in range(2):
        keep[name][0, 0] = 0.0
        pruning._set_masks({n: k.clone() for n, k in keep.items()})
        keep[name][0, 0] = 1.0
        pruning._set_masks({n: k.clone() for n, k in keep.items()})
    assert pruning.regrown == 2 and pruning.regrown_distinct() == 1
    keep[name][0, 1] = 0.0
    pruning._set_masks({n: k.clone() for n, k in keep.items()})
    overall, layers = pruning.mask_sparsity()
    pruning.apply_masks()
    assert overall == pytest.approx(pruning.sparsity()) and layers == pytest.approx(pruning.layer_sparsity())
    restored = DPFPruning(small_mlp(), target_sparsity=0.5, total_steps=2, end_fraction=0.5, update_every=1)
    restored.load_state_dict(pruning.state_dict())
    assert restored.regrown_distinct() == 1 and restored.mask_sparsity() == pruning.mask_sparsity()


@pytest.mark.parametrize(
    "make_optimizer",
    [
        lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-4),
        lambda p: torch.optim.Adam(p, lr=1e-2),
        lambda p: torch.optim.AdamW(p, lr=1e-2, weight_decay=1e-2),
    ],
)
def test_any_optimizer_with_scheduler_and_state_dict(make_optimizer, recwarn):
    model = small_mlp()
    pruning = SNRPruning(model, burn_in_steps=2, stats_every=2)
    optimizer = pruning.wrap(make_optimizer(model.parameters()))
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=3, gamma=0.5)
    train(model, optimizer, make_batches(8), scheduler)
    assert not [w for w in recwarn if "lr_scheduler" in str(w.message)]
    assert optimizer.param_groups[0]["lr"] == pytest.approx(make_optimizer(model.parameters()).defaults["lr"] * 0.25)
    state = optimizer.state_dict()
    optimizer.load_state_dict(state)
    assert pruning.step_count == 8
    assert pruning.sparsity() > 0


def test_stats_every_collects_only_on_due_steps():
    model = small_mlp()
    pruning = SNRPruning(model, burn_in_steps=100, stats_every=3)
    optimizer = pruning.wrap(torch.optim.SGD(model.parameters(), lr=0.01))
    hooked = []
    for batch in make_batches(7):
        hooked.append(pruning.stats.enabled)
        train(model, optimizer, [batch])
    assert hooked == [True, False, False, True, False, False, True]


RESUME_METHODS = {
    "snr": lambda model: SNRPruning(model, burn_in_steps=3, stats_every=2, scope="global"),
    "snr-auto": lambda model: snrprune.SNRAutoPruning(model, window_steps=8, update_every=2),  # an epoch of the 8 batches
    "dpf": lambda model: DPFPruning(model, target_sparsity=0.8, total_steps=80, update_every=3),
    "dense": lambda model: NoPruning(model),
}


def test_every_method_has_a_resume_test():
    assert set(RESUME_METHODS) == set(snrprune.PRUNING_METHODS)


def resume_setup(seed=0, method="snr"):
    model = small_mlp(seed)
    pruning = RESUME_METHODS[method](model)
    optimizer = pruning.wrap(torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True))
    # a decaying schedule: a method that reads the learning rate must follow the restored one
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=4, gamma=0.9)
    return model, pruning, optimizer, scheduler


@pytest.mark.parametrize("method, split", [("snr", 5), ("snr", 6), ("snr-auto", 52), ("snr-auto", 60), ("dpf", 7), ("dense", 7)])
def test_resume_is_bit_exact(method, split):
    """Model, optimizer, scheduler and pruning state restored into fresh objects (optimizer.load_state_dict
    replaces the param-group dicts) continue exactly as the uninterrupted run, under a decaying schedule."""
    batches = make_batches(8) * 10  # 10 epochs of 8 batches (snr-auto prunes from the 7th)
    model_a, pruning_a, opt_a, sched_a = resume_setup(method=method)
    train(model_a, opt_a, batches, sched_a)

    model_b, pruning_b, opt_b, sched_b = resume_setup(method=method)
    train(model_b, opt_b, batches[:split], sched_b)
    buffer = io.BytesIO()
    torch.save(
        {"model": model_b.state_dict(), "opt": opt_b.state_dict(), "sched": sched_b.state_dict(), "pruning": pruning_b.state_dict()},
        buffer,
    )
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)
    model_c, pruning_c, opt_c, sched_c = resume_setup(seed=123, method=method)  # fresh objects, different init
    model_c.load_state_dict(saved["model"])
    opt_c.load_state_dict(saved["opt"])
    sched_c.load_state_dict(saved["sched"])
    pruning_c.load_state_dict(saved["pruning"])
    assert pruning_c.lr() == opt_c.param_groups[0]["lr"] < 0.1  # the restored, decayed rate
    train(model_c, opt_c, batches[split:], sched_c)

    assert (pruning_a.sparsity() > 0) == pruning_a.prunes
    for (name, a), c in zip(model_a.state_dict().items(), model_c.state_dict().values()):
        assert torch.equal(a, c), name
    for name in pruning_a.masks:
        assert torch.equal(pruning_a.masks[name], pruning_c.masks[name])
        assert torch.equal(pruning_a.dense[name], pruning_c.dense[name])
    assert pruning_a.regrown == pruning_c.regrown
    assert pruning_a.diagnostics() == pruning_c.diagnostics()
    if method == "snr":
        assert all(torch.equal(pruning_a.snr_ema[n], pruning_c.snr_ema[n]) for n in pruning_a.snr_ema)
    if method == "snr-auto":  # it moved after the split, at the decayed rate
        assert pruning_a.lr_scale() < 1 and pruning_a.density == pruning_c.density


def test_a_second_optimizer_is_refused_not_silently_swapped():
    model = small_mlp()
    pruning = DPFPruning(model, target_sparsity=0.5, total_steps=10)
    first = pruning.wrap(torch.optim.SGD(model.parameters(), lr=0.1))
    assert pruning.wrap(first) is first  # wrapping the same one again is harmless
    with pytest.raises(ValueError, match="already wraps another optimizer.*unwrap"):
        pruning.wrap(torch.optim.Adam(model.parameters()))
    train(model, first, make_batches(10))
    assert pruning.step_count == 10  # the first one still prunes
    pruning.unwrap()
    second = pruning.wrap(torch.optim.Adam(model.parameters()))
    train(model, second, make_batches(2))
    assert pruning.step_count == 12


def test_load_state_rejects_foreign_state():
    model = small_mlp()
    snr = SNRPruning(model, burn_in_steps=1)
    with pytest.raises(ValueError, match="from method 'dpf'"):
        snr.load_state_dict(DPFPruning(small_mlp(), 0.5, 10).state_dict())
    other = SNRPruning(nn.Sequential(nn.Linear(6, 4), nn.Linear(4, 3)), burn_in_steps=1)
    with pytest.raises(ValueError, match="prunable weights"):
        snr.load_state_dict(other.state_dict())
    with pytest.raises(ValueError, match="not a snrprune pruning state"):
        snr.load_state_dict({"weights": 1})


def test_no_pruning_is_plain_training():
    batches = make_batches(6)
    model_a = small_mlp()
    train(model_a, torch.optim.SGD(model_a.parameters(), lr=0.1, momentum=0.9), batches)
    model_b = small_mlp()
    pruning = NoPruning(model_b)
    train(model_b, pruning.wrap(torch.optim.SGD(model_b.parameters(), lr=0.1, momentum=0.9)), batches)
    for a, b in zip(model_a.parameters(), model_b.parameters()):
        assert torch.equal(a, b)
    assert pruning.sparsity() == 0.0 and pruning.regrown == 0 and pruning.snr_quantiles() == {}
    assert pruning.step_count == 6


def test_registry_and_bad_input():
    assert get_method("snr") is SNRPruning and get_method("dpf") is DPFPruning and get_method("dense") is NoPruning
    with pytest.raises(ValueError, match="dense, dpf, snr"):
        get_method("lottery")
    model = small_mlp()
    with pytest.raises(ValueError, match="no prunable layer"):
        SNRPruning(nn.Sequential(nn.ReLU(), nn.BatchNorm1d(3)), burn_in_steps=1)
    for bad in (-0.1, 1.0, 1.5, float("nan")):
        with pytest.raises(ValueError, match=r"target_sparsity must be a number in \[0.0, 1.0\)"):
            DPFPruning(model, bad, 10)
    with pytest.raises(ValueError, match="total_steps must be an integer >= 1"):
        DPFPruning(model, 0.5, 0)
    with pytest.raises(ValueError, match="burn_in_steps must be an integer >= 0"):
        SNRPruning(model, burn_in_steps=-1)
    with pytest.raises(ValueError, match="stats_every must be an integer >= 1"):
        SNRPruning(model, burn_in_steps=1, stats_every=0)
    with pytest.raises(ValueError, match="agree, either, snr, magnitude"):
        SNRPruning(model, burn_in_steps=1, combine="and")
    with pytest.raises(ValueError, match="layer, global"):
        SNRPruning(model, burn_in_steps=1, scope="network")
    with pytest.raises(ValueError, match="ema must be"):
        SNRPruning(model, burn_in_steps=1, ema=1.0)
    with pytest.raises(ValueError, match="does not update the prunable weights"):
        SNRPruning(model, burn_in_steps=1).wrap(torch.optim.SGD(model[0].parameters(), lr=0.1))
    with pytest.raises(TypeError, match="torch.optim.Optimizer"):
        SNRPruning(model, burn_in_steps=1).wrap(object())


def test_snr_quantiles_report():
    model = small_mlp()
    pruning = SNRPruning(model, burn_in_steps=10)
    train(model, pruning.wrap(torch.optim.SGD(model.parameters(), lr=0.1)), make_batches(2))
    q = pruning.snr_quantiles()
    assert set(q) == set(pruning.weights)
    for values in q.values():
        assert set(values) == {"q10", "q50", "q90"}
        assert values["q10"] <= values["q50"] <= values["q90"]


def test_end_to_end_digits_snr_matches_dense_accuracy():
    """A real run: SNR pruning on scikit-learn digits ends sparse, within 2 points of dense."""
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    x = torch.tensor(x / 16.0, dtype=torch.float32)
    y = torch.tensor(y)
    g = torch.Generator().manual_seed(0)
    perm = torch.randperm(len(x), generator=g)
    train_idx, test_idx = perm[:1400], perm[1400:]
    steps_per_epoch, epochs = 1400 // 32, 12

    def run(method):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 128), nn.ReLU(), nn.Linear(128, 10))
        pruning = NoPruning(model) if method == "dense" else SNRPruning(model, burn_in_steps=steps_per_epoch)
        optimizer = pruning.wrap(torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True))
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps_per_epoch * epochs)
        order = torch.Generator().manual_seed(1)
        for _ in range(epochs):
            idx = train_idx[torch.randperm(1400, generator=order)]
            batches = [(x[idx[i : i + 32]], y[idx[i : i + 32]]) for i in range(0, steps_per_epoch * 32, 32)]
            train(model, optimizer, batches, scheduler)
        with torch.no_grad():
            accuracy = (model(x[test_idx]).argmax(1) == y[test_idx]).float().mean().item()
        return accuracy, pruning.sparsity()

    dense_acc, _ = run("dense")
    snr_acc, snr_sparsity = run("snr")
    assert dense_acc > 0.93
    assert snr_sparsity > 0.05
    assert snr_acc >= dense_acc - 0.02


def _ddp_worker(rank, world, port, batches, result):
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    torch.set_default_dtype(torch.float64)
    model = DistributedDataParallel(small_mlp().double())
    pruning = SNRPruning(model, burn_in_steps=2)
    optimizer = pruning.wrap(torch.optim.SGD(model.parameters(), lr=0.2, momentum=0.9))
    half = len(batches[0][0]) // world
    train(model, optimizer, [(x[rank * half : (rank + 1) * half], y[rank * half : (rank + 1) * half]) for x, y in batches])
    result[rank] = ({n: m.clone() for n, m in pruning.masks.items()}, {n: t.clone() for n, t in pruning.snr_ema.items()})
    dist.destroy_process_group()


def test_distributed_ranks_share_global_batch_statistics(float64_default):
    """DDP over two gloo processes: the same SNR as one process on the whole batch, identical masks."""
    import socket

    import torch.multiprocessing as mp

    batches = make_batches(8, batch=16)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with mp.Manager() as manager:
        result = manager.dict()
        mp.spawn(_ddp_worker, args=(2, port, batches, result), nprocs=2)
        per_rank = dict(result)

    model = small_mlp().double()
    pruning = SNRPruning(model, burn_in_steps=2)
    train(model, pruning.wrap(torch.optim.SGD(model.parameters(), lr=0.2, momentum=0.9)), batches)
    masks0, ema0 = per_rank[0]
    masks1, ema1 = per_rank[1]
    for name in pruning.masks:
        ddp_name = "module." + name
        assert torch.equal(masks0[ddp_name], masks1[ddp_name])
        assert torch.equal(ema0[ddp_name], ema1[ddp_name])
        torch.testing.assert_close(ema0[ddp_name], pruning.snr_ema[name], rtol=1e-6, atol=1e-9)
        assert torch.equal(masks0[ddp_name], pruning.masks[name])
    assert pruning.sparsity() > 0


def test_a_loaded_state_is_copied_not_shared():
    """The masks are written in place (fused kernels, the regrowth record): loading a state must copy its tensors."""
    model = small_mlp()
    pruning = DPFPruning(model, target_sparsity=0.5, total_steps=4, update_every=1)
    optimizer = pruning.wrap(torch.optim.SGD(model.parameters(), lr=0.1))
    train(model, optimizer, make_batches(4))
    state = pruning.state_dict()
    saved = {name: mask.clone() for name, mask in state["masks"].items()}
    other = DPFPruning(small_mlp(), target_sparsity=0.5, total_steps=4, update_every=1)
    other.load_state_dict(state)
    assert all(other.keep[name].data_ptr() != state["masks"][name].data_ptr() for name in saved)
    assert all(other.ever_regrown[name].data_ptr() != state["ever_regrown"][name].data_ptr() for name in saved)
    other.keep[next(iter(saved))].fill_(False)
    assert all(torch.equal(state["masks"][name], mask) for name, mask in saved.items())


def test_snr_says_why_it_pruned_nothing():
    """After the burn-in, a run that still keeps every weight warns with the SNR readings; before it, or once it prunes, nothing."""
    idle = SNRPruning(small_mlp(), burn_in_steps=2, threshold=1e-9)  # every gradient that is not ~zero is reliable
    optimizer = idle.wrap(torch.optim.SGD(idle.model.parameters(), lr=0.05))
    batches = make_batches(96)
    train(idle.model, optimizer, batches[:2])
    assert idle.idle_reason() is None  # the burn-in has not ended
    train(idle.model, optimizer, batches[2:])
    assert idle.sparsity() == 0
    reason = idle.idle_reason()
    assert reason.startswith("snr pruned nothing: every weight's SNR moving average stayed above the threshold 1e-09")
    with pytest.warns(UserWarning, match="snr pruned nothing"):
        idle.warn_if_idle()

    pruning = SNRPruning(small_mlp(), burn_in_steps=2, threshold=1.0)
    optimizer = pruning.wrap(torch.optim.SGD(pruning.model.parameters(), lr=0.05))
    train(pruning.model, optimizer, make_batches(96))
    assert pruning.sparsity() > 0 and pruning.idle_reason() is None
