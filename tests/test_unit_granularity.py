"""Tests for granularity="unit" in dpf and snr-auto: masks remove whole units (checked against units
written out by hand for LeNet-300-100 and LeNet-5), targets, regrowth, the guard, resume, refusals, the CLI."""

from __future__ import annotations

import io
import json
import math
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from snrprune.cli import main
from snrprune.masks import DEFAULT_UNIT_RANKING, count
from snrprune.models import build_model
from snrprune.pruners import DPFPruning, NoPruning, SNRAutoPruning, SNRPruning
from snrprune.training import TrainConfig, make_pruning

SHAPE = (1, 28, 28)


# The units of the two LeNets by hand, independent of snrprune.units: group -> size and, per
# parameter, (axis, the positions of unit u along it). The output layers' outputs are no units.
ORACLE = {
    "lenet300": {
        "1.weight": (300, {"1.weight": (0, 1), "1.bias": (0, 1), "3.weight": (1, 1)}),
        "3.weight": (100, {"3.weight": (0, 1), "3.bias": (0, 1), "5.weight": (1, 1)}),
    },
    "lenet5": {
        "0.weight": (20, {"0.weight": (0, 1), "0.bias": (0, 1), "3.weight": (1, 1)}),
        # Flatten maps each of the 50 channels (4 x 4 after pooling) to 16 columns of the Linear
        "3.weight": (50, {"3.weight": (0, 1), "3.bias": (0, 1), "7.weight": (1, 16)}),
        "7.weight": (500, {"7.weight": (0, 1), "7.bias": (0, 1), "9.weight": (1, 1)}),
    },
}


def unit_entries(tensor: torch.Tensor, dim: int, width: int, u: int) -> torch.Tensor:
    """The entries of ``tensor`` that belong to unit ``u`` (``width`` consecutive positions along ``dim``)."""
    return tensor.narrow(dim, u * width, width)


def model_and_data(name: str, seed: int = 0):
    torch.manual_seed(seed)
    model = build_model(name, SHAPE, 10)
    x, y = torch.randn(64, *SHAPE), torch.randint(0, 10, (64,))
    return model, x, y


def run(model, pruning, x, y, steps: int, optimizer=None, start: int = 0):
    """SGD steps on fixed batches of 16 (step t uses batch t mod 4), so that two runs see the same data."""
    optimizer = optimizer or pruning.wrap(torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-4))
    for t in range(start, start + steps):
        batch = slice(16 * (t % 4), 16 * (t % 4 + 1))
        optimizer.zero_grad()
        F.cross_entropy(model(x[batch]), y[batch]).backward()
        optimizer.step()
    return optimizer


def check_whole_units(name: str, model: nn.Module, pruning) -> dict[str, torch.Tensor]:
    """Every mask is the product of whole units (the tables above) and nothing else is masked (the
    output layer's rows and bias); the model holds the masks at the consumers only: a removed unit's
    input columns of the next layer are zero, its own entries keep their dense values (it computes,
    nothing reads it). Returns each group's keep-vector."""
    params = dict(model.named_parameters())
    dense = {**pruning.dense, **pruning.coupled_dense}
    assert {g.name for g in pruning.groups} == set(ORACLE[name])
    keep = {group: pruning.unit_keep[group].bool() for group in ORACLE[name]}
    whole = {n: torch.ones_like(p, dtype=torch.bool) for n, p in params.items()}
    read = {n: torch.ones_like(p, dtype=torch.bool) for n, p in params.items()}
    for group, (size, pieces) in ORACLE[name].items():
        assert keep[group].shape == (size,)
        for param, (dim, width) in pieces.items():
            shape = [1] * params[param].dim()
            shape[dim] = -1
            axis = keep[group].repeat_interleave(width).view(shape)
            whole[param] = whole[param] & axis
            if dim == 1:  # a consumer's input columns
                read[param] = read[param] & axis
    masks = pruning.masks
    for param, mask in whole.items():
        if param in masks:
            assert torch.equal(masks[param], mask), param
        elif param not in dense:  # neither prunable nor coupled to a unit: the output layer's bias
            assert mask.all(), param
        if param in dense:
            assert torch.equal(params[param].detach(), dense[param] * read[param]), param
    return keep


# -- masks remove whole units ---------------------------------------------------------------------


@pytest.mark.parametrize("name", ["lenet300", "lenet5"])
@pytest.mark.parametrize("scope", ["global", "layer"])
def test_dpf_masks_whole_units_and_reaches_the_unit_target_exactly(name, scope):
    model, x, y = model_and_data(name)
    pruning = DPFPruning(model, target_sparsity=0.6, total_steps=24, end_fraction=0.5, update_every=4, scope=scope, granularity="unit", example_inputs=x[:2])
    run(model, pruning, x, y, 16)
    kept = check_whole_units(name, model, pruning)
    sizes = {g: size for g, (size, _) in ORACLE[name].items()}
    if scope == "global":
        total = sum(sizes.values())
        assert sum(int(k.sum()) for k in kept.values()) == total - round(0.6 * total)
    else:
        assert {g: int(k.sum()) for g, k in kept.items()} == {g: size - round(0.6 * size) for g, size in sizes.items()}
    units = pruning.unit_counts()
    assert units["units_kept"] == {g: int(k.sum()) for g, k in kept.items()} and units["units_total"] == sizes
    assert math.isclose(units["unit_sparsity"], 1 - sum(units["units_kept"].values()) / sum(sizes.values()))
    # sparsity and kept still count the prunable weights alone
    weights = sum(w.numel() for w in pruning.weights.values())
    assert pruning.total == weights and pruning.mask_sparsity()[0] == 1 - sum(count(k) for k in pruning.keep.values()) / weights
    assert pruning.diagnostics()["unit_sparsity"] == units["unit_sparsity"]


@pytest.mark.parametrize("name", ["lenet300", "lenet5"])
def test_units_are_ranked_by_the_rms_of_their_dense_weights(name):
    model, x, _ = model_and_data(name)
    pruning = DPFPruning(model, target_sparsity=0.5, total_steps=10, granularity="unit", example_inputs=x[:2], unit_ranking="rms")
    for group, (size, pieces) in ORACLE[name].items():
        expected = torch.zeros(size)
        for u in range(size):
            entries = torch.cat([unit_entries(pruning.dense[p], dim, width, u).reshape(-1) for p, (dim, width) in pieces.items() if p in pruning.dense])
            expected[u] = entries.square().mean().sqrt()
        torch.testing.assert_close(pruning.unit_scores()[group], expected)


def test_relative_ranking_divides_each_group_by_its_median_unit():
    model, x, _ = model_and_data("lenet5")
    rms = DPFPruning(model, target_sparsity=0.5, total_steps=10, granularity="unit", example_inputs=x[:2], unit_ranking="rms").unit_scores()
    relative = DPFPruning(model, target_sparsity=0.5, total_steps=10, granularity="unit", example_inputs=x[:2], unit_ranking="relative")
    assert relative.unit_ranking == "relative"
    for group, scores in relative.unit_scores().items():
        torch.testing.assert_close(scores, rms[group] / rms[group].median())


def test_relative_ranking_lets_groups_of_different_scales_compete():
    """A first layer scaled up 10x: by RMS every unit of it outranks the second layer's, so global
    DPF takes all its units from the second layer; relative to their median both lose some."""
    removed = {}
    for ranking in ("rms", "relative"):
        model, x, y = model_and_data("lenet300")
        with torch.no_grad():
            model[1].weight.mul_(10)
        pruning = DPFPruning(model, target_sparsity=0.2, total_steps=1, end_fraction=1.0, update_every=1, granularity="unit", example_inputs=x[:2], unit_ranking=ranking)
        run(model, pruning, x, y, 1, optimizer=pruning.wrap(torch.optim.SGD(model.parameters(), lr=0.0)))
        removed[ranking] = {g: int((k == 0).sum()) for g, k in pruning.unit_keep.items()}
    assert removed["rms"] == {"1.weight": 0, "3.weight": 80}
    assert sum(removed["relative"].values()) == 80 and min(removed["relative"].values()) >= 20


def test_a_removed_unit_comes_back_with_all_its_values():
    """DPF feedback: the dense copies of a removed unit (rows, bias, consumer columns) are kept, so it returns whole."""
    model, x, y = model_and_data("lenet300")
    pruning = DPFPruning(model, target_sparsity=0.5, total_steps=8, end_fraction=0.5, update_every=4, granularity="unit", example_inputs=x[:2])
    run(model, pruning, x, y, 8)
    removed = int((pruning.unit_keep["1.weight"] == 0).nonzero()[0])
    bias = pruning.coupled_dense["1.bias"][removed].item()
    assert model[1].bias[removed] == bias and bias != 0  # it still computes
    assert not model[3].weight[:, removed].any()  # nothing reads it
    with torch.no_grad():
        pruning.dense["1.weight"][removed] *= 1e3  # now the largest unit of the network
    regrown = pruning.regrown
    pruning.update_masks()
    assert pruning.unit_keep["1.weight"][removed] == 1 and pruning.regrown > regrown
    assert model[1].bias[removed] == bias and torch.equal(model[1].weight[removed], pruning.dense["1.weight"][removed])
    assert torch.equal(model[3].weight[:, removed], pruning.dense["3.weight"][:, removed])  # read again
    assert sum(pruning.unit_counts()["units_kept"].values()) == 400 - round(0.5 * 400)
    check_whole_units("lenet300", model, pruning)


def test_batchnorm_entries_go_with_their_channel():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 6 * 6, 4))
    x, y = torch.randn(32, 1, 8, 8), torch.randint(0, 4, (32,))
    running = model[1].running_mean.clone()
    pruning = DPFPruning(model, target_sparsity=0.5, total_steps=4, end_fraction=0.5, update_every=1, granularity="unit", example_inputs=x[:2])
    assert torch.equal(model[1].running_mean, running), "finding the units must not touch the BatchNorm statistics"
    assert set(pruning.coupled) == {"0.bias", "1.weight", "1.bias"}
    run(model, pruning, x, y, 4)
    removed = pruning.unit_keep["0.weight"] == 0
    assert int(removed.sum()) == 4
    params = dict(model.named_parameters())
    for param in ("0.bias", "1.weight", "1.bias"):  # a removed channel still computes: its entries hold their dense values
        assert torch.equal(params[param].detach(), pruning.coupled_dense[param]), param
    assert not model[4].weight.view(4, 8, 36)[:, removed].any()  # and nothing reads it
    model.eval()
    before = model(x)
    pruning.zero_removed()  # its own entries zeroed too: the channel outputs exactly zero, the network the same
    for param in ("0.bias", "1.weight", "1.bias"):
        assert not params[param][removed].any(), param
    out = model[:3](x)
    assert not out[:, removed].any() and out[:, ~removed].any()
    torch.testing.assert_close(model(x), before)


# -- snr-auto ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["lenet300", "lenet5"])
@pytest.mark.parametrize("scope", ["global", "layer"])
def test_snr_auto_keeps_a_unit_per_group_and_every_output(name, scope):
    model, x, y = model_and_data(name)
    pruning = SNRAutoPruning(model, window_steps=8, update_every=4, scope=scope, granularity="unit", example_inputs=x[:2])
    sizes = {g: size for g, (size, _) in ORACLE[name].items()}
    floor = {SNRAutoPruning.GLOBAL: len(sizes) / sum(sizes.values())} if scope == "global" else {g: 1 / size for g, size in sizes.items()}
    assert pruning.min_density == pytest.approx(floor)
    run(model, pruning, x, y, 24)
    check_whole_units(name, model, pruning)
    for unit in pruning.density:  # the strongest prune the controllers allow: density 0
        pruning.density[unit] = 0.0
    pruning.update_masks()
    kept = check_whole_units(name, model, pruning)
    assert {g: int(k.sum()) for g, k in kept.items()} == dict.fromkeys(sizes, 1)
    last = list(model.named_parameters())[-2][0]  # the output layer's weight: none of its rows is removed
    assert last not in sizes and pruning.keep[last].bool().any(dim=1).all()
    assert last.replace("weight", "bias") not in pruning.coupled
    assert "unit_sparsity" in pruning.diagnostics() and "density" in pruning.diagnostics()


def test_snr_auto_density_counts_units():
    model, x, y = model_and_data("lenet300")
    pruning = SNRAutoPruning(model, window_steps=8, granularity="unit", example_inputs=x[:2])
    run(model, pruning, x, y, 1)
    pruning.density[SNRAutoPruning.GLOBAL] = 0.25
    pruning.update_masks()
    assert sum(pruning.unit_counts()["units_kept"].values()) == round(0.25 * 400)


# -- resume -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["dpf", "snr-auto"])
def test_resume_is_bit_exact(method):
    def build():
        model, x, y = model_and_data("lenet5")
        if method == "dpf":
            pruning = DPFPruning(model, target_sparsity=0.7, total_steps=20, update_every=3, granularity="unit", example_inputs=x[:2])
        else:
            # threshold 50: every window reads "converged" and prunes; the resume (step 10) falls mid-window
            pruning = SNRAutoPruning(model, window_steps=6, update_every=3, threshold=50.0, granularity="unit", example_inputs=x[:2])
        return model, pruning, x, y

    model, pruning, x, y = build()
    run(model, pruning, x, y, 20)

    model2, pruning2, x, y = build()
    optimizer = run(model2, pruning2, x, y, 10)
    buffer = io.BytesIO()
    torch.save({"model": model2.state_dict(), "pruning": pruning2.state_dict(), "optimizer": optimizer.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)
    model3, pruning3, x, y = build()
    optimizer3 = pruning3.wrap(torch.optim.SGD(model3.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-4))
    model3.load_state_dict(saved["model"])
    pruning3.load_state_dict(saved["pruning"])
    optimizer3.load_state_dict(saved["optimizer"])
    run(model3, pruning3, x, y, 10, optimizer3, start=10)

    assert pruning.unit_counts()["unit_sparsity"] > 0
    for (name, p), p3 in zip(model.named_parameters(), model3.parameters(), strict=True):
        assert torch.equal(p, p3), name
    for a, b in ((pruning.dense, pruning3.dense), (pruning.coupled_dense, pruning3.coupled_dense), (pruning.unit_keep, pruning3.unit_keep)):
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert pruning.regrown == pruning3.regrown and pruning.step_count == pruning3.step_count


def test_a_state_of_the_other_granularity_is_refused():
    model, x, _ = model_and_data("lenet300")
    unit = DPFPruning(model, target_sparsity=0.5, total_steps=10, granularity="unit", example_inputs=x[:2])
    weight = DPFPruning(model, target_sparsity=0.5, total_steps=10)
    with pytest.raises(ValueError, match="granularity 'unit'.*granularity='unit'"):
        weight.load_state_dict(unit.state_dict())
    with pytest.raises(ValueError, match="granularity 'weight'.*granularity='weight'"):
        unit.load_state_dict(weight.state_dict())
    old = weight.state_dict()
    del old["granularity"]  # a state written before granularities: weight masks
    weight.load_state_dict(old)


def test_a_state_of_the_other_unit_ranking_is_refused():
    model, x, _ = model_and_data("lenet300")
    rms = DPFPruning(model, target_sparsity=0.5, total_steps=10, granularity="unit", example_inputs=x[:2], unit_ranking="rms")
    relative = DPFPruning(model, target_sparsity=0.5, total_steps=10, granularity="unit", example_inputs=x[:2])  # the default
    assert relative.unit_ranking == "relative"
    with pytest.raises(ValueError, match="ranks units by 'rms'.*unit_ranking='rms'"):
        relative.load_state_dict(rms.state_dict())
    old = rms.state_dict()
    del old["unit_ranking"]  # a state written before rankings: by RMS
    rms.load_state_dict(old)
    with pytest.raises(ValueError, match="ranks units by 'rms'"):
        relative.load_state_dict(old)
    # in scope 'layer' each group ranks its own units: both rankings keep the same ones, and either state loads
    layer = DPFPruning(model, target_sparsity=0.5, total_steps=10, scope="layer", granularity="unit", example_inputs=x[:2])
    layer.load_state_dict(DPFPruning(model, target_sparsity=0.5, total_steps=10, scope="layer", granularity="unit", example_inputs=x[:2], unit_ranking="rms").state_dict())


def test_the_config_records_the_unit_ranking_and_an_older_record_keeps_what_it_ran():
    unit = TrainConfig(dataset="digits", model="mlp", method="dpf", target_sparsity=0.5, granularity="unit").resolved()
    assert unit.unit_ranking == DEFAULT_UNIT_RANKING  # recorded: a resume keeps it whatever the default becomes
    assert TrainConfig(dataset="digits", model="mlp", method="dpf", target_sparsity=0.5).resolved().unit_ranking is None
    layer = TrainConfig(dataset="digits", model="mlp", method="dpf", target_sparsity=0.5, granularity="unit", scope="layer").resolved()
    assert layer.unit_ranking is None  # each group ranks its own units: no ranking to record, and no warning that it does nothing
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        make_pruning(layer, build_model("mlp", (64,), 10, widths=[16, 16]), steps_per_epoch=4, example_inputs=torch.randn(2, 64))
    record = unit.to_dict()
    del record["unit_ranking"]  # config.json of a run from before rankings
    assert TrainConfig.from_record(record).unit_ranking == "rms"
    assert TrainConfig.from_dict(record).unit_ranking is None  # a new configuration: resolved() fills today's default
    record = TrainConfig(dataset="digits", model="mlp", method="snr-auto").resolved().to_dict()
    for rule in ("auto_nested", "auto_pruned_witness", "auto_step_growth", "auto_lr_power"):  # from before snr-auto's rules
        del record[rule]
    old = TrainConfig.from_record(record)
    assert (old.auto_nested, old.auto_pruned_witness, old.auto_step_growth, old.auto_lr_power) == (False, False, False, 1.0)
    old.validate()
    units = TrainConfig(dataset="digits", model="mlp", method="snr-auto", granularity="unit").resolved()
    assert units.auto_lr_power == 2.0  # recorded: a resume keeps it whatever the default becomes
    record = units.to_dict()
    del record["auto_lr_power"]  # a unit run from before the power moved by lr / lr_max
    assert TrainConfig.from_record(record).auto_lr_power == 1.0
    dense = TrainConfig(dataset="digits", model="mlp", method="dense").resolved()
    assert TrainConfig.from_record(dense.to_dict()) == dense


# -- bad input --------------------------------------------------------------------------------------


def test_bad_input_is_one_clear_message():
    model, x, _ = model_and_data("lenet300")
    with pytest.raises(ValueError, match="unknown granularity 'neuron'; valid values: weight, unit"):
        DPFPruning(model, target_sparsity=0.5, total_steps=10, granularity="neuron")
    with pytest.raises(ValueError, match="granularity 'unit' needs example_inputs="):
        SNRAutoPruning(model, window_steps=8, granularity="unit")
    with pytest.raises(ValueError, match="example_inputs is used only with granularity='unit'"):
        DPFPruning(model, target_sparsity=0.5, total_steps=10, example_inputs=x[:2])
    with pytest.raises(ValueError, match="method 'snr' .* granularity 'weight' only, not 'unit'.*dpf, snr-auto"):
        SNRPruning(model, burn_in_steps=1, granularity="unit")
    with pytest.raises(ValueError, match="method 'dense' .* granularity 'weight' only"):
        NoPruning(model, granularity="unit")
    with pytest.raises(ValueError, match="none of the pruned weights"):  # only the output layer: no units
        DPFPruning(model, target_sparsity=0.5, total_steps=10, include=["5"], granularity="unit", example_inputs=x[:2])
    with pytest.warns(UserWarning, match="every group keeps at least one unit"):
        DPFPruning(model, target_sparsity=0.999, total_steps=10, granularity="unit", example_inputs=x[:2])
    with pytest.raises(ValueError, match="unit_ranking ranks whole units and applies at granularity 'unit' only"):
        DPFPruning(model, target_sparsity=0.5, total_steps=10, unit_ranking="relative")
    with pytest.raises(ValueError, match="unknown unit_ranking 'l1'; valid values: rms, relative"):
        DPFPruning(model, target_sparsity=0.5, total_steps=10, granularity="unit", example_inputs=x[:2], unit_ranking="l1")
    with pytest.warns(UserWarning, match="unit_ranking='relative' changes nothing in scope 'layer'"):
        SNRAutoPruning(model, window_steps=8, scope="layer", granularity="unit", example_inputs=x[:2], unit_ranking="relative")
    with pytest.raises(ValueError, match="--unit-ranking ranks whole units and applies at --granularity unit only"):
        TrainConfig(dataset="digits", model="mlp", method="dpf", target_sparsity=0.5, unit_ranking="relative").resolved()
    with pytest.raises(ValueError, match="unit_ranking only applies to methods 'dpf', 'snr-auto'"):
        TrainConfig(dataset="digits", model="mlp", method="snr", unit_ranking="relative").resolved()
    with pytest.raises(ValueError, match="unknown granularity 'neuron'"):
        TrainConfig(dataset="digits", model="mlp", method="dpf", target_sparsity=0.5, granularity="neuron").resolved()
    with pytest.raises(ValueError, match="granularity only applies to methods 'dpf', 'snr-auto'"):
        TrainConfig(dataset="digits", model="mlp", method="snr", granularity="unit").resolved()


def test_an_excluded_layer_keeps_its_units():
    model, x, y = model_and_data("lenet300")
    pruning = DPFPruning(model, target_sparsity=0.5, total_steps=4, end_fraction=0.5, update_every=1, exclude=["1"], granularity="unit", example_inputs=x[:2])
    assert [g.name for g in pruning.groups] == ["3.weight"]
    run(model, pruning, x, y, 2)
    assert int(pruning.unit_keep["3.weight"].sum()) == 50 and pruning.keep["3.weight"].bool().all(dim=1).sum() == 50


# -- the command line -------------------------------------------------------------------------------


def test_cli_trains_at_unit_granularity(tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["train", "--dataset", "digits", "--model", "mlp", "--method", "dpf", "--target-sparsity", "0.5", "--granularity", "unit"]
    assert main([*argv, "--epochs", "1", "--batch-size", "64", "--out", str(out), "--quiet"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["units_total"] == {"1.weight": 256, "3.weight": 256}
    assert sum(summary["units_kept"].values()) == 512 - 256 and summary["unit_sparsity"] == 0.5
    assert "units per layer 256-256 -> " in capsys.readouterr().out  # the end-of-run table
    assert json.loads((out / "config.json").read_text())["granularity"] == "unit"
    weights = torch.load(out / "model.pt", weights_only=True)
    removed = ~weights["1.weight"].any(dim=1)
    assert int(removed.sum()) == summary["units_total"]["1.weight"] - summary["units_kept"]["1.weight"]
    assert not weights["1.bias"][removed].any() and not weights["3.weight"][:, removed].any()
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert metrics[-1]["diagnostics"]["unit_sparsity"] == 0.5


def test_cli_refuses_granularity_on_other_methods(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["train", "--dataset", "digits", "--model", "mlp", "--method", "snr", "--granularity", "unit"])
    assert exc.value.code == 2
    assert "--granularity only applies to --method dpf or snr-auto (this run uses --method snr)" in capsys.readouterr().err


def test_cli_resume_at_unit_granularity_equals_an_uninterrupted_run(tmp_path, capsys):
    argv = ["train", "--dataset", "digits", "--model", "mlp", "--model-option", "widths=[32,32]", "--method", "dpf", "--target-sparsity", "0.5",
            "--granularity", "unit", "--batch-size", "64", "--epochs", "3", "--quiet"]  # fmt: skip
    assert main([*argv, "--out", str(tmp_path / "whole")]) == 0
    assert main([*argv, "--out", str(tmp_path / "parts"), "--stop-after-epochs", "1"]) == 0
    assert main(["train", "--resume", str(tmp_path / "parts"), "--quiet"]) == 0
    whole, parts = (torch.load(tmp_path / run / "model.pt", weights_only=True) for run in ("whole", "parts"))
    assert whole.keys() == parts.keys() and all(torch.equal(whole[k], parts[k]) for k in whole)
    summary = json.loads((tmp_path / "parts" / "summary.json").read_text())
    assert summary["unit_sparsity"] == 0.5 and summary["units_kept"] == json.loads((tmp_path / "whole" / "summary.json").read_text())["units_kept"]


def test_lightning_callback_prunes_units_as_a_plain_loop_does(tmp_path):
    pytest.importorskip("lightning")
    from test_lightning import BATCHES, Module, fit
    from test_pruners import small_mlp

    from snrprune.integrations.lightning import PruningCallback

    class Traceable(Module):  # the units are traced through the LightningModule's forward
        def forward(self, x):
            return self.model(x)

    options = dict(target_sparsity=0.5, update_every=2, granularity="unit", example_inputs=BATCHES[0][0][:2])
    callback = PruningCallback("dpf", **options)
    module = Traceable()
    fit(module, callback, 2, tmp_path)
    params = dict(module.named_parameters())  # at the end of the fit, removed units are zero in every entry
    assert all(not params[name][~keep].any() for name, keep in callback.pruning.masks.items())
    assert all(not params[name][coupled == 0].any() for name, coupled in callback.pruning.coupled_whole.items())
    model = small_mlp(0)  # the oracle: the same pruning in a hand-written loop
    pruning = DPFPruning(model, total_steps=2 * len(BATCHES), **options)
    optimizer = pruning.wrap(torch.optim.SGD(model.parameters(), lr=0.2, momentum=0.9))
    for x, y in BATCHES * 2:
        optimizer.zero_grad()
        F.cross_entropy(model(x), y).backward()
        optimizer.step()
    assert sum(pruning.unit_counts()["units_kept"].values()) == 28 - 14  # 16 + 12 units, half removed
    assert {name: torch.equal(keep, callback.pruning.unit_keep["model." + name]) for name, keep in pruning.unit_keep.items()} == dict.fromkeys(pruning.unit_keep, True)
