"""Tests for the training run: recipes, config, output files, bit-exact resume, divergence handling."""

from __future__ import annotations

import json
import math

import pytest
import torch

from snrprune import training
from snrprune.checkpoint import load_checkpoint
from snrprune.training import (
    RECIPES,
    OutputDirError,
    RunFinishedError,
    TrainConfig,
    TrainingDiverged,
    lr_factor,
    recipe_for,
    train,
)

METRIC_KEYS = {
    "epoch", "step", "lr", "train_loss", "train_accuracy", "test_loss", "test_accuracy", "dense_test_accuracy",
    "sparsity", "layer_sparsity", "regrown", "last_flips", "snr_quantiles", "seconds", "wall_seconds",
    "sparsity_steps", "layer_sparsity_steps", "regrown_distinct",
}
SUMMARY_KEYS = {
    "test_accuracy", "dense_test_accuracy", "sparsity", "total_sparsity", "layer_sparsity", "params",
    "nonzero_params", "epochs", "wall_seconds", "method", "dataset", "model", "seed", "regrown",
    "regrown_distinct", "sparsity_last_epoch",
}
TIMING = {"seconds", "wall_seconds"}


def tiny(**changes) -> TrainConfig:
    """A run of about a second: digits (1,438 training images), an MLP with one hidden layer of 32."""
    values = dict(dataset="digits", model="mlp", method="snr", model_options={"widths": [32]}, epochs=3, batch_size=64, lr=0.01)
    values.update(changes)
    return TrainConfig(**values)


def read_lines(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def without_timing(records):
    return [{k: v for k, v in r.items() if k not in TIMING} for r in records]


# -- recipes and configuration -------------------------------------------------------------------


def test_recipes_per_family():
    cifar = recipe_for("resnet20")
    assert (cifar.optimizer, cifar.lr, cifar.momentum, cifar.nesterov, cifar.weight_decay, cifar.schedule) == (
        "sgd", 0.1, 0.9, True, 5e-4, "cosine",
    )
    assert recipe_for("wrn28-2") == recipe_for("vgg16") == cifar
    lenet = recipe_for("lenet300")
    assert lenet == recipe_for("lenet5") and lenet.optimizer == "sgd" and 0.05 <= lenet.lr <= 0.1
    assert lenet.weight_decay == 1e-4 and lenet.schedule == "cosine"
    assert recipe_for("mlp").optimizer == "adam" and recipe_for("mlp").lr == 1e-3
    assert set(RECIPES) == {"cifar", "lenet", "conv1d", "mlp", "gpt"}


def test_resolved_fills_recipe_and_method_defaults():
    c = TrainConfig().resolved()
    assert (c.dataset, c.model, c.method) == ("mnist", "lenet300", "snr")
    assert c.optimizer == "sgd" and c.lr == recipe_for("lenet300").lr and c.epochs == recipe_for("lenet300").epochs
    assert c.scope == "layer" and c.update_every == 1
    # statistics every k > 1 steps: the masks follow them (None), unless update_every is given
    assert TrainConfig(stats_every=4).resolved().update_every is None
    assert TrainConfig(stats_every=4, update_every=2).resolved().update_every == 2
    with pytest.raises(ValueError, match="update_every"):
        TrainConfig(method="dpf", target_sparsity=0.5, update_every=0).resolved()
    d = TrainConfig(model="resnet20", method="dpf", target_sparsity=0.9, lr=0.05).resolved()
    assert d.scope == "global" and d.update_every == 16 and d.lr == 0.05 and d.nesterov
    # switching the optimizer away from the recipe's without an lr takes that optimizer's usual lr
    a = TrainConfig(model="resnet20", optimizer="adam").resolved()
    assert a.lr == 1e-3 and a.nesterov is False


def test_config_json_round_trip():
    c = tiny(model_options={"widths": (16, 8)}, exclude_layers=["3"]).resolved()
    again = TrainConfig.from_dict(json.loads(json.dumps(c.to_dict())))
    assert again == c and again.model_options == {"widths": [16, 8]}
    with pytest.raises(ValueError, match="unknown configuration field"):
        TrainConfig.from_dict({**c.to_dict(), "bogus": 1})


def test_snr_auto_default_rule_by_granularity():
    """snrprune train's snr-auto: one-epoch windows, nested, with the pruned witness and step growth at
    weight granularity; at unit granularity the witness alone unless asked for."""
    from torch import nn

    from snrprune.training import make_pruning

    model = nn.Sequential(nn.Linear(8, 6), nn.ReLU(), nn.Linear(6, 3))
    weight = make_pruning(tiny(method="snr-auto").resolved(), model, steps_per_epoch=20)
    assert (weight.window_steps, weight.nested, weight.pruned_witness, weight.step_growth, weight.lr_power) == (20, True, True, True, 1.0)
    pytest.importorskip("torch_pruning")
    unit = make_pruning(tiny(method="snr-auto", granularity="unit").resolved(), model, steps_per_epoch=20, example_inputs=torch.randn(2, 8))
    assert (unit.window_steps, unit.nested, unit.pruned_witness, unit.step_growth, unit.lr_power) == (20, False, True, False, 2.0)
    asked = make_pruning(
        tiny(method="snr-auto", granularity="unit", auto_step_growth=True, auto_lr_power=1.5).resolved(), model, steps_per_epoch=20, example_inputs=torch.randn(2, 8)
    )
    assert (asked.nested, asked.step_growth, asked.lr_power) == (False, True, 1.5)


@pytest.mark.parametrize(
    "changes, message",
    [
        (dict(dataset="nope"), "valid names: .*digits"),
        (dict(model="nope"), "valid names: .*lenet300"),
        (dict(method="nope"), "valid names: dense, dpf, snr"),
        (dict(epochs=-1), "epochs must be a positive integer"),
        (dict(batch_size=1), "batch_size >= 2"),
        (dict(method="dpf"), "needs a target sparsity"),
        (dict(method="dpf", target_sparsity=1.0), r"target_sparsity must be in \[0, 1\)"),
        (dict(method="snr", target_sparsity=0.5), "only applies to method 'dpf'"),
        (dict(optimizer="adam", nesterov=True), "nesterov needs optimizer 'sgd'"),
        (dict(lr=float("nan")), "lr must be a positive number"),
        (dict(combine="sometimes"), "valid names: agree, either, snr, magnitude"),
        (dict(device="tpu"), "use 'cpu' or 'cuda'"),
        (dict(method="snr-auto", auto_lr_scale="no"), "auto_lr_scale must be true or false"),
        (dict(method="snr-auto", auto_hysteresis=0), "auto_hysteresis must be true or false"),
        (dict(method="snr-auto", auto_pooled=True, auto_pruned_witness=True), "--auto-pooled and --auto-pruned-witness are different snr-auto decision rules"),
        (dict(method="snr-auto", auto_pruned_witness=True, granularity="unit", scope="layer"), "outgoing columns, which lie in the next layer.*--scope global"),
        (dict(method="snr-auto", auto_step_growth="yes"), r"auto_step_growth must be true or false \(or null: the default rule\)"),
        (dict(method="snr-auto", auto_lr_power=0), r"auto_lr_power must be a positive number \(or null: the default rule\), got 0"),
        (dict(method="snr-auto", auto_lr_power="2"), "auto_lr_power must be a positive number"),
        (dict(method="dpf", target_sparsity=0.5, auto_lr_power=2.0), "auto_lr_power only applies to method 'snr-auto'"),
        # one rule for every option of another method: refused, never silently ignored
        (dict(method="dense", scope="global"), "scope only applies to methods 'snr', 'dpf', 'snr-auto' .*'dense'"),
        (dict(method="dense", update_every=3), "update_every only applies to methods"),
        (dict(method="dpf", target_sparsity=0.5, ema=0.5), "ema only applies to method 'snr' .*'dpf'"),
        (dict(method="snr", window_epochs=2.0), "window_epochs only applies to method 'snr-auto'"),
        (dict(method="snr-auto", end_fraction=0.5), "end_fraction only applies to method 'dpf'"),
        (dict(method="dpf", target_sparsity=0.5, threshold=2.0), "threshold only applies to methods 'snr', 'snr-auto'"),
        (dict(accumulate=100), "accumulate 100 is larger than batch_size 64"),
    ],
)
def test_invalid_config(changes, message):
    with pytest.raises(ValueError, match=message):
        tiny(**changes).resolved()


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_unavailable_is_a_clear_error():
    with pytest.raises(ValueError, match="CUDA is not available.*--device cpu"):
        tiny(device="cuda").resolved()


def test_lr_schedules():
    cosine = lr_factor("cosine", 100)
    assert cosine(0) == 1.0 and cosine(50) == pytest.approx(0.5) and cosine(100) == pytest.approx(0.0)
    step = lr_factor("step", 100)
    assert [step(49), step(50), step(75)] == [1.0, pytest.approx(0.1), pytest.approx(0.01)]
    assert lr_factor("constant", 100)(99) == 1.0


# -- a run and its files -------------------------------------------------------------------------


def test_run_writes_all_files(tmp_path):
    out = tmp_path / "run"
    summary = train(tiny(), out, progress=False)
    for name in ("config.json", "metrics.jsonl", "curve.jsonl", "summary.json", "model.pt", "checkpoint.pt", "sparsity.png", "layers.png"):
        assert (out / name).is_file(), name
    assert not list(out.glob(".*"))  # no temporary files left behind
    for png in ("sparsity.png", "layers.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    config = TrainConfig.from_dict(json.loads((out / "config.json").read_text()))
    assert config == tiny(world_size=1).resolved()  # train() records the number of processes

    metrics = read_lines(out / "metrics.jsonl")
    assert [m["epoch"] for m in metrics] == [1, 2, 3]
    steps_per_epoch = 1438 // 64
    assert [m["step"] for m in metrics] == [steps_per_epoch * e for e in (1, 2, 3)]
    for m in metrics:
        assert METRIC_KEYS <= set(m)
        assert set(m["layer_sparsity"]) == {"1.weight", "3.weight"}
        assert list(m["snr_quantiles"]) == ["1.weight", "3.weight"]  # model order
        assert set(m["snr_quantiles"]["1.weight"]) == {"q10", "q50", "q90"}
        assert 0 <= m["test_accuracy"] <= 1 and math.isfinite(m["train_loss"])
    assert metrics[0]["sparsity"] == 0.0  # burn-in: one epoch of unpruned steps
    assert metrics[-1]["sparsity"] > 0
    # the band of per-step sparsity holds the end-of-epoch value; distinct regrown <= flip events
    for m in metrics:
        band = m["sparsity_steps"]
        assert band["min"] <= band["mean"] <= band["max"]
        assert band["min"] - 1e-12 <= m["sparsity"] <= band["max"] + 1e-12
        for name, layer_band in m["layer_sparsity_steps"].items():
            assert layer_band["min"] - 1e-12 <= m["layer_sparsity"][name] <= layer_band["max"] + 1e-12
        assert m["regrown_distinct"] <= m["regrown"]
    assert metrics[0]["sparsity_steps"] == {"mean": 0.0, "min": 0.0, "max": 0.0}
    # the SNR distribution at the end of burn-in (epoch 1) and at the end, nowhere else
    assert [m["epoch"] for m in metrics if "snr_histogram" in m] == [1, 3]
    histogram = metrics[0]["snr_histogram"]
    assert list(histogram["counts"]) == ["1.weight", "3.weight"]
    assert len(histogram["counts"]["1.weight"]) == len(histogram["edges"]) + 1
    assert sum(histogram["counts"]["1.weight"]) == 64 * 32

    curve = read_lines(out / "curve.jsonl")
    assert [p["step"] for p in curve] == list(range(1, 3 * steps_per_epoch + 1))
    assert curve[-1]["sparsity"] == metrics[-1]["sparsity"]

    on_disk = json.loads((out / "summary.json").read_text())
    assert SUMMARY_KEYS <= set(on_disk)
    assert on_disk == json.loads(json.dumps(summary))
    assert summary["test_accuracy"] == metrics[-1]["test_accuracy"] and summary["test_accuracy"] > 0.8
    assert summary["params"] == 64 * 32 + 32 + 32 * 10 + 10

    state = torch.load(out / "model.pt", weights_only=True)
    assert set(state) == {"1.weight", "1.bias", "3.weight", "3.bias"}
    zeros = sum(int((state[k] == 0).sum()) for k in ("1.weight", "3.weight"))
    assert zeros / (64 * 32 + 32 * 10) == pytest.approx(summary["sparsity"])
    assert summary["nonzero_params"] == sum(int((t != 0).sum()) for t in state.values())
    assert summary["total_sparsity"] == pytest.approx(1 - summary["nonzero_params"] / summary["params"])

    checkpoint = load_checkpoint(out / "checkpoint.pt")
    assert checkpoint["epoch"] == 3 and checkpoint["config"] == config.to_dict()


def test_dense_and_dpf_runs(tmp_path):
    dense = train(tiny(method="dense", epochs=2), tmp_path / "dense", progress=False)
    assert dense["sparsity"] == 0.0 and dense["test_accuracy"] == dense["dense_test_accuracy"]
    dpf = train(tiny(method="dpf", target_sparsity=0.8, epochs=2), tmp_path / "dpf", progress=False)
    # the schedule reaches the target at 3/4 of training and holds it, exact to one weight
    assert dpf["sparsity"] == pytest.approx(0.8, abs=1e-3)


@pytest.mark.parametrize(
    "method, extra",
    [("snr", {}), ("dpf", {"target_sparsity": 0.7}), ("snr-auto", {"epochs": 10, "batch_size": 16}), ("dense", {})],
)
def test_resume_is_bit_identical(tmp_path, method, extra):
    # dropout makes the run depend on torch's global RNG as well as on the data-order generator;
    # the recipe's cosine schedule decays the learning rate, which snr-auto's moves read
    config = tiny(method=method, model_options={"widths": [32], "dropout": 0.1}, **{"epochs": 4, **extra})
    full = tmp_path / "full"
    train(config, full, progress=False)
    assert (json.loads((full / "summary.json").read_text())["sparsity"] > 0) == (method != "dense")

    part = tmp_path / "part"
    stopped = train(config, part, progress=False, stop_after_epochs=config.epochs // 2)
    assert stopped["finished"] is False and stopped["epoch"] == config.epochs // 2
    assert not (part / "summary.json").exists() and not (part / "model.pt").exists()
    # a crash after logging epoch 3 but before its checkpoint: the stale lines must go
    with open(part / "metrics.jsonl", "a") as f:
        f.write(json.dumps({"epoch": config.epochs // 2 + 1, "stale": True}) + "\n")
    with open(part / "curve.jsonl", "a") as f:
        f.write('{"step": 1000, "sparsity": 0.5}\n{"step": 10')  # and a torn line
    train(None, part, resume=True, progress=False)

    a = torch.load(full / "model.pt", weights_only=True)
    b = torch.load(part / "model.pt", weights_only=True)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert without_timing(read_lines(full / "metrics.jsonl")) == without_timing(read_lines(part / "metrics.jsonl"))
    assert read_lines(full / "curve.jsonl") == read_lines(part / "curve.jsonl")
    sa, sb = (json.loads((d / "summary.json").read_text()) for d in (full, part))
    for key in ("test_accuracy", "dense_test_accuracy", "sparsity", "layer_sparsity", "regrown", "nonzero_params"):
        assert sa[key] == sb[key], key

    with pytest.raises(RunFinishedError, match="already finished"):
        train(None, part, resume=True, progress=False)


@pytest.mark.parametrize(
    "changes, message",
    [
        (dict(method="snr-auto", window_epochs=1e9), "never reaches a decision"),
        (dict(method="snr-auto", threshold=0.0), "never prunes"),
        (dict(method="snr", threshold=0.0), "snr prunes \\(almost\\) nothing"),
        (dict(method="snr", burn_in_epochs=5.0), "snr never prunes"),
        (dict(method="dpf", target_sparsity=0.0), "dpf prunes nothing"),
    ],
)
def test_settings_that_make_a_method_a_no_op_warn(tmp_path, changes, message):
    with pytest.warns(UserWarning, match=message):
        train(tiny(epochs=1, **changes), tmp_path, progress=False)


def test_resume_refuses_a_checkpoint_of_another_run(tmp_path):
    """A checkpoint copied into a run folder from another run (here another method) must not continue
    that run under this folder's config.json: config, summary and metrics would mix both."""
    snr, auto = tmp_path / "snr", tmp_path / "auto"
    train(tiny(epochs=3), snr, progress=False, stop_after_epochs=1)
    train(tiny(method="snr-auto", epochs=3), auto, progress=False, stop_after_epochs=1)
    (snr / "checkpoint.pt").write_bytes((auto / "checkpoint.pt").read_bytes())
    with pytest.raises(training.TrainingError, match="written by another run.*method: 'snr' in config.json, 'snr-auto' in checkpoint.pt"):
        train(None, snr, resume=True, progress=False)
    (snr / "config.json").unlink()
    with pytest.raises(training.TrainingError, match="no config.json"):
        train(None, snr, resume=True, progress=False)
    (auto / "config.json").write_text('{"dataset": ')
    with pytest.raises(training.TrainingError, match="config.json is unreadable"):
        train(None, auto, resume=True, progress=False)


def test_pruning_state_of_another_method_names_the_method():
    from snrprune import SNRAutoPruning, SNRPruning

    model = torch.nn.Sequential(torch.nn.Linear(4, 3))
    with pytest.raises(ValueError, match="from method 'snr', this object is 'snr-auto'.*SNRPruning"):
        SNRAutoPruning(model, window_steps=4).load_state_dict(SNRPruning(model, burn_in_steps=1).state_dict())


def test_resume_rejects_a_different_config(tmp_path):
    train(tiny(epochs=2), tmp_path, progress=False, stop_after_epochs=1)
    with pytest.raises(training.TrainingError, match="its own configuration"):
        train(tiny(epochs=2, lr=0.5), tmp_path, resume=True, progress=False)


def test_resume_without_checkpoint(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(training.TrainingError, match="no checkpoint.pt.*without --resume.*--overwrite"):
        train(None, tmp_path, resume=True, progress=False)


def test_non_empty_out_dir_is_refused(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(OutputDirError, match="not empty.*--overwrite"):
        train(tiny(epochs=1), tmp_path, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]
    train(tiny(epochs=1), tmp_path, progress=False, overwrite=True)
    assert (tmp_path / "notes.txt").read_text() == "mine"  # only run files are replaced
    assert (tmp_path / "summary.json").is_file()


def test_another_processs_write_probe_does_not_make_the_folder_non_empty(tmp_path):
    # every rank of a torchrun launch checks the run folder; rank 1's probe (an empty folder made
    # and removed at once) can be there while rank 0 looks: it must not count as the user's files
    from snrprune.checkpoint import WRITE_PROBE_PREFIX
    from snrprune.training import check_output_dir

    (tmp_path / f"{WRITE_PROBE_PREFIX}x1y2").mkdir()
    check_output_dir(tmp_path, overwrite=False)
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(OutputDirError, match="not empty"):
        check_output_dir(tmp_path, overwrite=False)


def test_batch_larger_than_training_set_is_bad_input(tmp_path):
    from snrprune.errors import InputError

    with pytest.raises(InputError, match="larger than the 1438 training samples"):
        train(tiny(batch_size=5000), tmp_path, progress=False)


@pytest.mark.parametrize("where", ["/proc/snrprune-run", "/sys/snrprune-run", "FILE/run"])
def test_unwritable_output_folder_is_refused_before_any_work(where, tmp_path):
    (tmp_path / "file").write_text("x")
    out = where.replace("FILE", str(tmp_path / "file"))
    with pytest.raises(OutputDirError, match=f"cannot write the run folder {out}"):
        train(tiny(), out, progress=False)


def test_nan_loss_stops_and_keeps_the_last_checkpoint(tmp_path, monkeypatch):
    steps_per_epoch = 1438 // 64
    calls = {"n": 0}
    real_loss = training.compute_loss

    def loss_turning_nan(logits, targets):
        calls["n"] += 1
        loss = real_loss(logits, targets)
        return loss * float("nan") if calls["n"] > 2 * steps_per_epoch + 3 else loss

    monkeypatch.setattr(training, "compute_loss", loss_turning_nan)
    with pytest.raises(TrainingDiverged, match=r"loss is nan at step 48 \(epoch 3\).*end of epoch 2.*checkpoint.pt"):
        train(tiny(epochs=4), tmp_path, progress=False)
    assert load_checkpoint(tmp_path / "checkpoint.pt")["epoch"] == 2
    assert len(read_lines(tmp_path / "metrics.jsonl")) == 2
    assert not (tmp_path / "summary.json").exists()

    # the kept checkpoint is good: with a healthy loss the run continues from it
    monkeypatch.setattr(training, "compute_loss", real_loss)
    summary = train(None, tmp_path, resume=True, progress=False)
    assert summary["finished"] and len(read_lines(tmp_path / "metrics.jsonl")) == 4


def test_divergence_in_the_first_epoch(tmp_path):
    with pytest.raises(TrainingDiverged, match="no checkpoint was written.*smaller learning rate"):
        train(tiny(optimizer="sgd", lr=1e6, epochs=2), tmp_path, progress=False)
    assert not (tmp_path / "checkpoint.pt").exists()


def test_batch_larger_than_training_set(tmp_path):
    with pytest.raises(training.TrainingError, match="larger than the 1438 training samples"):
        train(tiny(batch_size=5000), tmp_path, progress=False)
    assert not tmp_path.joinpath("config.json").exists()


def test_snr_auto_end_to_end(tmp_path):
    """snr-auto through train(): decisions once per window, densities logged, no layer below its floor."""
    summary = train(tiny(method="snr-auto", epochs=4), tmp_path / "auto", progress=False)
    metrics = read_lines(tmp_path / "auto" / "metrics.jsonl")
    assert all("diagnostics" in m for m in metrics)
    assert metrics[0]["sparsity"] == 0.0  # the first epoch's windows show the early learning (drift): no prune yet
    final = metrics[-1]["diagnostics"]["density"]
    config = TrainConfig.from_dict(json.loads((tmp_path / "auto" / "config.json").read_text()))
    assert (config.update_every, config.scope, config.window_epochs) == (16, "global", 1.0)
    assert (config.auto_lr_scale, config.auto_hysteresis) == (True, True)
    # the default rule, recorded as it ran: a resume keeps it whatever the defaults become
    assert (config.auto_nested, config.auto_pruned_witness, config.auto_step_growth, config.auto_pooled) == (True, True, True, False)
    assert set(final) == {"*"}  # the default: one network-wide density
    assert summary["sparsity"] == pytest.approx(1 - final["*"], abs=1e-3)
    for name, sparsity in summary["layer_sparsity"].items():  # every layer above its floor
        assert (1 - sparsity) * summary["layer_params"][name] >= summary["layer_shapes"][name][0] - 1e-6
    scales = [m["diagnostics"]["lr_scale"] for m in metrics]
    assert scales == sorted(scales, reverse=True) and scales[-1] < 1  # the cosine schedule: the moves shrink


def test_snr_auto_trains_with_batch_size_one(tmp_path):
    """snr-auto reads its noise from the spread across steps: one sample a step is enough (snr needs two)."""
    summary = train(tiny(method="snr-auto", batch_size=1, epochs=2, window_epochs=0.1), tmp_path / "one", progress=False)
    assert summary["finished"] and 0 < summary["sparsity"] < 1
    with pytest.raises(ValueError, match="batch_size >= 2"):
        tiny(method="snr", batch_size=1).resolved()


def test_snr_auto_layer_scope_end_to_end(tmp_path):
    """--scope layer, without the learning-rate scaling and hysteresis: a density per layer, none below its floor."""
    config = tiny(method="snr-auto", scope="layer", auto_lr_scale=False, auto_hysteresis=False, epochs=4)
    summary = train(config, tmp_path / "auto", progress=False)
    metrics = read_lines(tmp_path / "auto" / "metrics.jsonl")
    final = metrics[-1]["diagnostics"]["density"]
    assert set(final) == set(summary["layer_sparsity"])
    for name, density in final.items():
        assert summary["layer_sparsity"][name] == pytest.approx(1 - density, abs=1e-3)
        assert density >= summary["layer_shapes"][name][0] / summary["layer_params"][name] - 1e-9
    assert {m["diagnostics"]["lr_scale"] for m in metrics} == {1.0}
