"""Tests for reporting: parameter counts, the final table, JSON-lines reading, plots."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from snrprune import NoPruning
from snrprune.reporting import append_jsonl, format_table, model_counts, plot_layers, plot_sparsity, read_jsonl, write_json

PNG = b"\x89PNG\r\n\x1a\n"


def test_model_counts():
    model = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3), nn.Linear(3, 2))
    with torch.no_grad():
        model[0].weight.zero_()
        model[0].weight[0, 0] = 1.0
    counts = model_counts(model, NoPruning(model))
    assert counts["params"] == 12 + 3 + 3 + 3 + 6 + 2
    assert counts["prunable_params"] == 12 + 6
    assert counts["layer_params"] == {"0.weight": 12, "2.weight": 6}
    assert counts["layer_shapes"] == {"0.weight": [3, 4], "2.weight": [2, 3]}
    zeros = sum(int((p == 0).sum()) for p in model.parameters())
    assert counts["nonzero_params"] == counts["params"] - zeros
    assert counts["total_sparsity"] == pytest.approx(zeros / counts["params"])


def summary_example() -> dict:
    return {
        "dataset": "digits", "model": "mlp", "method": "snr", "seed": 0, "epochs": 3, "wall_seconds": 1.5,
        "test_accuracy": 0.9512, "dense_test_accuracy": 0.9478, "val_accuracy": None,
        "sparsity": 0.4, "total_sparsity": 0.39, "params": 1000, "nonzero_params": 610, "prunable_params": 900,
        "regrown": 12345, "layer_sparsity": {"1.weight": 0.5, "3.weight": 0.1},
        "layer_params": {"1.weight": 600, "3.weight": 300}, "layer_shapes": {"1.weight": [20, 30], "3.weight": [10, 30]},
    }


def test_format_table():
    table = format_table(summary_example())
    assert "digits / mlp / snr" in table
    assert "95.12%" in table and "94.78%" in table  # pruned and dense accuracy
    assert "40.00%" in table and "39.00%" in table and "610 of 1,000" in table
    assert "12,345" in table
    assert "20x30" in table and "50.00%" in table and "10.00%" in table
    assert "validation" not in table


def test_json_files(tmp_path):
    write_json(tmp_path / "a.json", {"x": 1})
    assert json.loads((tmp_path / "a.json").read_text()) == {"x": 1}
    path = tmp_path / "m.jsonl"
    append_jsonl(path, [{"epoch": 1}, {"epoch": 2}])
    with open(path, "a") as f:
        f.write('{"epoch": 3, "torn')  # a crash mid-line
    assert read_jsonl(path) == [{"epoch": 1}, {"epoch": 2}]
    assert read_jsonl(tmp_path / "missing.jsonl") == []


def test_plots(tmp_path):
    curve = [{"step": s, "sparsity": min(0.9, s / 100)} for s in range(1, 201)]
    metrics = [{"step": 100 * e, "test_accuracy": 0.9 + 0.01 * e, "dense_test_accuracy": 0.91 + 0.01 * e} for e in (1, 2)]
    plot_sparsity(curve, metrics, tmp_path / "sparsity.png", title="t")
    plot_layers({f"layer{i}.weight": i / 60 for i in range(60)}, tmp_path / "layers.png")
    for name in ("sparsity.png", "layers.png"):
        assert (tmp_path / name).read_bytes()[:8] == PNG

