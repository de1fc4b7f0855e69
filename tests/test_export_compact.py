"""Tests for the compact export: the file loads safely and rebuilds the compact model, outputs match the
masked model on real data, multiply-accumulates against hand counts, the CLI's report and refusals."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn

from snrprune import export_compact, load_compact
from snrprune.cli import main
from snrprune.export import count_macs, example_input, export_run_compact, measure_latency
from snrprune.models import build_model
from snrprune.units import find_unit_groups, unit_keep_masks

pytest.importorskip("torch_pruning")

MNIST = (1, 28, 28)


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py


def _unit_mask(model: nn.Module, example, fraction: float = 0.6, seed: int = 0) -> dict[str, int]:
    """Zeroes a random ``fraction`` of every group's units in place; returns the units kept per group."""
    groups = find_unit_groups(model, example)
    g = torch.Generator().manual_seed(seed)
    keep = {gr.name: (torch.rand(gr.size, generator=g) >= fraction).float() for gr in groups}
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, mask in unit_keep_masks(groups, keep, params).items():
            params[name].mul_(mask)
    return {name: int(k.sum()) for name, k in keep.items()}


def _lenet5(seed: int = 0) -> tuple[nn.Module, torch.Tensor, dict[str, int]]:
    torch.manual_seed(seed)
    model = build_model("lenet5", MNIST, 10).eval()
    example = example_input(model, "lenet5", MNIST, 10)
    return model, example, _unit_mask(model, example)


LENET5_ARCHITECTURE = {"model": "lenet5", "input_shape": [1, 28, 28], "num_classes": 10, "model_options": {}}


def test_compact_file_loads_safely_and_rebuilds_the_compact_model(tmp_path):
    model, example, kept = _lenet5()
    path = tmp_path / "model_compact.pt"
    compact = export_compact(model, example, path, architecture=LENET5_ARCHITECTURE)
    blob = torch.load(path, weights_only=True)  # plain tensors, strings and numbers
    assert blob["format"] == "snrprune-compact" and blob["groups"] == {"0.weight": 20, "3.weight": 50, "7.weight": 500}
    assert {name: size - len(blob["removed"].get(name, ())) for name, size in blob["groups"].items()} == kept
    loaded = load_compact(path)
    assert (loaded[0].out_channels, loaded[3].out_channels, loaded[7].out_features) == (
        kept["0.weight"], kept["3.weight"], kept["7.weight"]
    )
    assert loaded[7].in_features == kept["3.weight"] * 16
    x = torch.randn(32, *MNIST)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(loaded(x), compact(x), rtol=0, atol=0)


def test_a_model_of_ones_own_is_loaded_by_cutting_a_dense_instance(tmp_path):
    def make() -> nn.Module:
        return nn.Sequential(nn.Linear(6, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 3)).eval()

    torch.manual_seed(0)
    model, example = make(), torch.randn(1, 6)
    _unit_mask(model, example)
    export_compact(model, example, tmp_path / "c.pt")
    with pytest.raises(ValueError, match="no architecture"):
        load_compact(tmp_path / "c.pt")
    with pytest.raises(ValueError, match="example_inputs"):
        load_compact(tmp_path / "c.pt", make())
    loaded = load_compact(tmp_path / "c.pt", make(), example)
    assert loaded[0].out_features == loaded[1].num_features < 16
    x = torch.randn(8, 6)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), rtol=1e-5, atol=1e-6)


def test_a_file_that_is_not_a_compact_export_is_refused(tmp_path):
    torch.save({"format": "snrprune-sparse"}, tmp_path / "x.pt")
    with pytest.raises(ValueError, match="not a snrprune compact export"):
        load_compact(tmp_path / "x.pt")


def test_torch_export_and_torch_compile_run_the_compact_model(tmp_path):
    model, example, _ = _lenet5(seed=1)
    export_compact(model, example, tmp_path / "c.pt", architecture=LENET5_ARCHITECTURE)
    compact = load_compact(tmp_path / "c.pt")
    x = torch.randn(4, *MNIST)
    program = torch.export.export(compact, (x,))
    # dynamo traces the loaded module in one graph (aot_eager: the tracing, without a C++ compiler)
    compiled = torch.compile(compact, backend="aot_eager", fullgraph=True)
    with torch.no_grad():
        torch.testing.assert_close(program.module()(x), compact(x))
        torch.testing.assert_close(compiled(x), compact(x))


def test_macs_match_hand_counts(tmp_path):
    lenet300 = build_model("lenet300", MNIST, 10)
    assert count_macs(lenet300, torch.randn(1, *MNIST)) == 784 * 300 + 300 * 100 + 100 * 10
    model, example, kept = _lenet5()
    a, b, c = kept["0.weight"], kept["3.weight"], kept["7.weight"]
    dense = 20 * 24 * 24 * 1 * 25 + 50 * 8 * 8 * 20 * 25 + 800 * 500 + 500 * 10
    assert count_macs(model, example) == dense == 2_293_000
    compact = export_compact(model, example, tmp_path / "c.pt")
    assert count_macs(compact, example) == a * 24 * 24 * 25 + b * 8 * 8 * a * 25 + b * 16 * c + c * 10
    assert count_macs(compact, torch.randn(3, *MNIST)) == 3 * count_macs(compact, example)


def test_measure_latency_interleaves_and_counts_repeats():
    calls = []

    class Recorder(nn.Module):
        def __init__(self, name):
            super().__init__()
            self.name = name

        def forward(self, x):
            calls.append(self.name)
            return x

    times = measure_latency({"a": Recorder("a"), "b": Recorder("b")}, torch.zeros(1), repeats=3)
    assert [len(t) for t in times.values()] == [3, 3]
    assert calls == ["a", "b", "a", "b", "b", "a", "a", "b"]  # warm-up, then alternating order


# --------------------------------------------------------------------------- a run folder and the CLI


def _run_folder(path: Path, dataset: str = "digits", seed: int = 0) -> tuple[nn.Module, dict[str, int]]:
    """A finished run by hand: an MLP on digits (8x8 images, 64 features) with random unit masks."""
    torch.manual_seed(seed)
    options = {"widths": [32, 16]}
    model = build_model("mlp", (64,), 10, **options).eval()
    kept = _unit_mask(model, torch.randn(1, 64), seed=seed)
    path.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), path / "model.pt")
    config = {"dataset": dataset, "model": "mlp", "model_options": options, "data_dir": None, "target": None, "data_seed": 0}
    (path / "config.json").write_text(json.dumps(config))
    (path / "summary.json").write_text(json.dumps({"input_shape": [64], "num_classes": 10}))
    return model, kept


def test_export_run_compact_checks_outputs_on_the_test_set(tmp_path):
    model, kept = _run_folder(tmp_path / "run")
    info = export_run_compact(tmp_path / "run", repeats=2)
    assert info["inputs"] == "the digits test set"
    assert info["max_difference"] <= 1e-5 * max(info["output_scale"], 1.0)
    assert {name: k for name, (_, k) in info["units"].items()} == kept
    a, b = kept["1.weight"], kept["3.weight"]
    assert info["before"]["parameters"] == 64 * 32 + 32 + 32 * 16 + 16 + 16 * 10 + 10
    assert info["after"]["parameters"] == 64 * a + a + a * b + b + b * 10 + 10
    assert info["after"]["macs"] == 64 * a + a * b + b * 10
    assert all(len(t) == 2 for t in info["after"]["latency"].values())
    assert load_compact(info["path"])[1].out_features == a


def test_export_run_compact_falls_back_to_random_inputs_without_the_data(tmp_path):
    _run_folder(tmp_path / "run", dataset="csv:" + str(tmp_path / "missing.csv"))
    info = export_run_compact(tmp_path / "run", repeats=1)
    assert info["inputs"].startswith("1000 random inputs (the test set could not be loaded")


def test_cli_export_compact_prints_the_comparison(tmp_path, capsys):
    _, kept = _run_folder(tmp_path / "run")
    assert main(["export", str(tmp_path / "run"), "--format", "compact", "--repeats", "2", "--threads", "1"]) == 0
    out = capsys.readouterr().out
    assert (tmp_path / "run" / "model_compact.pt").is_file()
    assert f"1.weight 32->{kept['1.weight']}" in out and f"3.weight 16->{kept['3.weight']}" in out
    for row in ("parameters", "multiply-accumulates", "latency, batch 1 (ms)", "latency, batch 256 (ms)"):
        assert row in out
    assert "on the digits test set" in out


def test_cli_export_compact_refuses_run_files_and_untraceable_models(tmp_path, capsys):
    _run_folder(tmp_path / "run")
    assert main(["export", str(tmp_path / "run"), "--format", "compact", "--output", str(tmp_path / "run" / "model.pt")]) == 2
    assert "never replaces a run's files" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["export", str(tmp_path / "empty"), "--format", "compact"]) == 1
    assert "model.pt not found" in capsys.readouterr().err


def test_cli_timing_options_need_the_compact_format(tmp_path, capsys):
    _run_folder(tmp_path / "run")
    with pytest.raises(SystemExit) as exit_:
        main(["export", str(tmp_path / "run"), "--repeats", "3"])
    assert exit_.value.code == 2 and "--format compact" in capsys.readouterr().err
    assert not (tmp_path / "run" / "model_sparse.pt").exists()


def test_cli_export_compact_says_when_nothing_was_cut(tmp_path, capsys):
    _run_folder(tmp_path / "run")
    dense = build_model("mlp", (64,), 10, widths=[32, 16])
    torch.save(dense.state_dict(), tmp_path / "run" / "model.pt")
    assert main(["export", str(tmp_path / "run"), "--format", "compact", "--repeats", "1"]) == 0
    assert "nothing was cut" in capsys.readouterr().out


def test_gpt_is_cut_in_its_heads_and_mlp_units(tmp_path):
    options = {"n_layer": 1, "n_head": 2, "n_embd": 16, "block_size": 8}
    torch.manual_seed(0)
    model = build_model("gpt", (1,), 12, **options).eval()
    example = example_input(model, "gpt", (1,), 12)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the residual stream is not a unit group
        kept = _unit_mask(model, example)
        export_compact(model, example, tmp_path / "c.pt", architecture={"model": "gpt", "input_shape": [1], "num_classes": 12, "model_options": options})
        loaded = load_compact(tmp_path / "c.pt")
    assert loaded.blocks[0].mlp.fc.out_features == kept["blocks.0.mlp.fc.weight"] < 64
    heads = kept["blocks.0.attn.q_proj.weight"]
    assert loaded.blocks[0].attn.n_head == heads and loaded.blocks[0].attn.q_proj.out_features == 8 * heads
    assert loaded.blocks[0].ln1.normalized_shape == (16,)  # the residual stream stays whole
    x = example_input(model, "gpt", (1,), 12, batch=3)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), rtol=1e-5, atol=1e-6)
