"""Tests for prunable-weight discovery: what is selected by default and by include/exclude, tied weights, unprunable weights named."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

from snrprune import GradientStats, SNRPruning, find_prunable_layers


def mlp() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 6), nn.ReLU(), nn.Linear(6, 6), nn.ReLU(), nn.Linear(6, 3))


def test_tied_weights_are_opt_in_one_entry_with_every_name():
    model = mlp()
    model[2].weight = model[0].weight  # one tensor, two modules
    with pytest.warns(UserWarning, match=r"not pruned: 0\.weight = 2\.weight \(one tied tensor") as record:
        layers = find_prunable_layers(model)
    assert [layer.name for layer in layers] == ["4.weight"]
    assert "include=" in str(record[0].message)
    for include in (["*"], ["0.weight"], ["2"], lambda name: name == "2.weight"):  # any of its names selects it
        layers = find_prunable_layers(model, include=include)
        tied = [layer for layer in layers if layer.weight is model[0].weight]
        assert len(tied) == 1 and tied[0].name == "0.weight" and tied[0].aliases == ("0.weight", "2.weight")
        assert tied[0].tied and [use.module_name for use in tied[0].uses] == ["0", "2"]
    # one of its names excluded: not pruned (exclude wins), and no warning
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert [layer.name for layer in find_prunable_layers(model, include=["*"], exclude=["2"])] == ["4.weight"]
        assert [layer.name for layer in find_prunable_layers(model, exclude=["0"])] == ["4.weight"]


def test_weight_tied_to_an_embedding_is_one_opt_in_entry():
    class Tied(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Embedding(10, 4)
            self.hidden = nn.Linear(4, 4)
            self.out = nn.Linear(4, 10, bias=False)
            self.out.weight = self.embed.weight

    model = Tied()
    with pytest.warns(UserWarning, match="embed.weight = out.weight"):
        assert [layer.name for layer in find_prunable_layers(model)] == ["hidden.weight"]
    layers = find_prunable_layers(model, include=["*"])
    assert [(layer.name, layer.kind) for layer in layers] == [("embed.weight", "tied embedding+linear"), ("hidden.weight", "linear")]


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


def test_a_weight_is_prunable_by_what_it_is_attention_and_recurrent_weights_by_default():
    torch.manual_seed(0)
    model = nn.ModuleDict(
        dict(
            encoder=nn.TransformerEncoderLayer(8, 2, 16, batch_first=True),
            cross=nn.MultiheadAttention(8, 2, kdim=6, vdim=5),
            lstm=nn.LSTM(4, 5, num_layers=2, bidirectional=True, proj_size=3),
            gru=nn.GRU(4, 5),
            cell=nn.LSTMCell(4, 5),
            conv=nn.Conv1d(2, 3, 3),
            embed=nn.Embedding(10, 4),
            norm=nn.LayerNorm(4),
        )
    )
    names = [layer.name for layer in find_prunable_layers(model)]
    assert names == [
        "encoder.self_attn.in_proj_weight", "encoder.self_attn.out_proj.weight", "encoder.linear1.weight", "encoder.linear2.weight",
        "cross.q_proj_weight", "cross.k_proj_weight", "cross.v_proj_weight", "cross.out_proj.weight",
        *[f"lstm.weight_{kind}_l{k}{sfx}" for k in (0, 1) for sfx in ("", "_reverse") for kind in ("ih", "hh", "hr")],
        "gru.weight_ih_l0", "gru.weight_hh_l0", "cell.weight_ih", "cell.weight_hh", "conv.weight",
    ]  # fmt: skip
    layers = {layer.name: layer for layer in find_prunable_layers(model)}
    out_proj = layers["encoder.self_attn.out_proj.weight"]
    assert out_proj.module_name == "encoder.self_attn" and out_proj.kind == "attention" and not out_proj.tied
    # include=['*']: the embedding too, never norm parameters or biases
    everything = [layer.name for layer in find_prunable_layers(model, include=["*"])]
    assert everything == names + ["embed.weight"]
    assert not any("norm" in n or "bias" in n for n in everything)


def test_patterns_match_parameter_names_and_module_names_as_before():
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8, 4), nn.LSTM(4, 4))
    assert [layer.name for layer in find_prunable_layers(model, include=["0", "3"])] == ["0.weight", "3.weight"]  # module names
    assert [layer.name for layer in find_prunable_layers(model, include=["4.weight_hh_*"])] == ["4.weight_hh_l0"]
    assert [layer.name for layer in find_prunable_layers(model, exclude=["4"])] == ["0.weight", "3.weight"]
    assert [layer.name for layer in find_prunable_layers(model, exclude=["*.weight_ih_*"])] == ["0.weight", "3.weight", "4.weight_hh_l0"]
    attention = nn.ModuleDict(dict(attn=nn.MultiheadAttention(4, 2)))
    # the attention module's name selects both its weights; its out_proj's name only that one
    assert [layer.name for layer in find_prunable_layers(attention, include=["attn"])] == ["attn.in_proj_weight", "attn.out_proj.weight"]
    assert [layer.name for layer in find_prunable_layers(attention, include=["attn.out_proj"])] == ["attn.out_proj.weight"]


def test_embeddings_and_other_modules_weights_are_opt_in():
    class Custom(nn.Module):
        def __init__(self):
            super().__init__()
            self.table = nn.Parameter(torch.randn(3, 4))
            self.gain = nn.Parameter(torch.ones(4))  # 1-D: never

        def forward(self, x):
            return x * self.gain @ self.table.t()

    model = nn.ModuleDict(dict(embed=nn.Embedding(10, 4), custom=Custom(), up=nn.ConvTranspose1d(2, 2, 3), fc=nn.Linear(4, 2)))
    assert [layer.name for layer in find_prunable_layers(model)] == ["fc.weight"]
    chosen = find_prunable_layers(model, include=["*"])
    assert [(layer.name, layer.kind) for layer in chosen] == [
        ("embed.weight", "embedding"), ("custom.table", "generic"), ("up.weight", "generic"), ("fc.weight", "linear"),
    ]  # fmt: skip


class _FakeConv1D(nn.Module):
    """Shaped like transformers.pytorch_utils.Conv1D: weight [in, out]."""

    def __init__(self, nf: int, nx: int):
        super().__init__()
        self.nf = nf
        self.weight = nn.Parameter(torch.randn(nx, nf))
        self.bias = nn.Parameter(torch.zeros(nf))

    def forward(self, x):
        return torch.addmm(self.bias, x.view(-1, x.size(-1)), self.weight).view(*x.shape[:-1], self.nf)


_FakeConv1D.__name__ = _FakeConv1D.__qualname__ = "Conv1D"
_FakeConv1D.__module__ = "transformers.pytorch_utils"


def test_hugging_face_conv1d_is_recognised_by_name_without_importing_transformers():
    model = nn.Sequential(_FakeConv1D(6, 4), nn.Tanh(), _FakeConv1D(3, 6))
    layers = find_prunable_layers(model)
    assert [(layer.name, layer.kind) for layer in layers] == [("0.weight", "hf-conv1d"), ("2.weight", "hf-conv1d")]
