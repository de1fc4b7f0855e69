"""Tests for prunable-layer discovery: shared (tied) weights are refused, unprunable weights are named."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

from snrprune import GradientStats, SNRPruning, find_prunable_layers


def mlp() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 6), nn.ReLU(), nn.Linear(6, 6), nn.ReLU(), nn.Linear(6, 3))


def test_tied_weights_are_refused_with_the_names_and_the_fix():
    model = mlp()
    model[2].weight = model[0].weight  # one tensor, two modules
    for make in (find_prunable_layers, GradientStats, lambda m: SNRPruning(m, burn_in_steps=0)):
        with pytest.raises(ValueError) as info:
            make(model)
        msg = str(info.value)
        assert "0.weight and 2.weight" in msg and "shared (tied)" in msg
        assert "--exclude-layers 0 --exclude-layers 2" in msg and "its own weight" in msg


def test_tied_weights_excluding_one_use_is_not_enough_excluding_all_is():
    model = mlp()
    model[2].weight = model[0].weight
    with pytest.raises(ValueError, match="shared"):
        find_prunable_layers(model, exclude=["2"])  # 0.weight would still get the statistics of one use only
    assert [layer.name for layer in find_prunable_layers(model, exclude=["0", "2"])] == ["4.weight"]


def test_weight_tied_to_an_embedding_is_refused():
    class Tied(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Embedding(10, 4)
            self.out = nn.Linear(4, 10, bias=False)
            self.out.weight = self.embed.weight

    with pytest.raises(ValueError, match="embed.weight and out.weight"):
        find_prunable_layers(Tied())


def test_a_module_registered_twice_is_one_layer():
    model = mlp()
    model.add_module("again", model[0])  # the same module object under two names: not a tied pair
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        names = [layer.name for layer in find_prunable_layers(model)]
    assert names == ["0.weight", "2.weight", "4.weight"]


def test_parametrized_and_frozen_weights_are_skipped_with_a_warning():
    model = mlp()
    model[0] = nn.utils.parametrizations.weight_norm(model[0])
    model[2].weight.requires_grad_(False)
    with pytest.warns(UserWarning) as record:
        layers = find_prunable_layers(model)
    assert [layer.name for layer in layers] == ["4.weight"]
    msg = " ".join(str(w.message) for w in record)
    assert "0.weight (parametrized" in msg and "weight_norm" in msg
    assert "2.weight (frozen: requires_grad=False)" in msg
    # excluded layers are not warned about
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert [layer.name for layer in find_prunable_layers(model, exclude=["0", "2"])] == ["4.weight"]


def test_old_style_weight_norm_is_named():
    model = mlp()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch deprecates nn.utils.weight_norm
        model[4] = nn.utils.weight_norm(model[4])
    with pytest.warns(UserWarning, match=r"4\.weight \(computed from other parameters"):
        assert [layer.name for layer in find_prunable_layers(model)] == ["0.weight", "2.weight"]


def test_nothing_prunable_left_is_an_error_naming_the_skipped_layers():
    model = mlp()
    for i in (0, 2, 4):
        model[i].weight.requires_grad_(False)
    with pytest.raises(ValueError) as info:
        find_prunable_layers(model)
    msg = str(info.value)
    assert "no prunable layer" in msg and "skipped: 0.weight (frozen" in msg and "4.weight (frozen" in msg
