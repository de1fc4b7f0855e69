"""Tests for the units of structured pruning: groups found, masks against hand-built oracles, compaction
that computes what the masked model computes, refusals."""

from __future__ import annotations

import sys
import warnings

import pytest
import torch
from torch import nn

from snrprune.models import build_model
from snrprune.units import (
    UnsupportedModelError,
    compact_model,
    find_unit_groups,
    removed_units,
    unit_keep_masks,
)

pytest.importorskip("torch_pruning")

MNIST = (1, 28, 28)


@pytest.fixture(autouse=True)
def one_thread():
    """One intra-op thread: these tests run many small forward passes, which threads only slow down on a
    shared machine (the outputs compared do not depend on it)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def _bn_mlp() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(6, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 5), nn.ReLU(), nn.Linear(5, 3)
    )


def _randomise_batchnorm(model: nn.Module, seed: int = 0) -> None:
    """BatchNorm with non-trivial affine parameters and running statistics, so that they matter."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            n = m.num_features
            with torch.no_grad():
                m.weight.copy_(torch.rand(n, generator=g) + 0.5)
                m.bias.copy_(torch.randn(n, generator=g))
                m.running_mean.copy_(torch.randn(n, generator=g))
                m.running_var.copy_(torch.rand(n, generator=g) + 0.5)


def _sizes(groups):
    return [(g.name, g.size) for g in groups]


def _slice(group, param):
    (s,) = [s for s in group.slices if s.param == param]
    return s


# --------------------------------------------------------------------------- groups found


def test_lenet300_groups():
    model = build_model("lenet300", MNIST, 10)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # every group is a unit group: nothing to warn about
        groups = find_unit_groups(model, torch.randn(1, *MNIST))
    assert _sizes(groups) == [("1.weight", 300), ("3.weight", 100)]
    first = groups[0]
    assert {(s.param, s.dim) for s in first.slices} == {("1.weight", 0), ("1.bias", 0), ("3.weight", 1)}
    for s in first.slices:
        assert torch.equal(s.index.sort().values, torch.arange(300))
        assert torch.equal(s.unit, s.index)  # one position per unit, in the same order


def test_lenet5_groups_map_flatten_columns_to_channels():
    model = build_model("lenet5", MNIST, 10)
    groups = find_unit_groups(model, torch.randn(1, *MNIST))
    assert _sizes(groups) == [("0.weight", 20), ("3.weight", 50), ("7.weight", 500)]
    conv2 = groups[1]
    assert {(s.param, s.dim) for s in conv2.slices} == {("3.weight", 0), ("3.bias", 0), ("7.weight", 1)}
    columns = _slice(conv2, "7.weight")
    assert len(columns.index) == 800  # 50 channels x 4x4 positions
    assert torch.equal(columns.unit, columns.index // 16)  # torch.flatten is channel-major


def test_output_layer_is_never_a_unit():
    model = build_model("lenet5", MNIST, 10)
    for g in find_unit_groups(model, torch.randn(1, *MNIST)):
        assert not any(s.param == "9.bias" or (s.param == "9.weight" and s.dim == 0) for s in g.slices)


def test_ignored_replaces_the_output_layer_default():
    model = build_model("lenet300", MNIST, 10)
    groups = find_unit_groups(model, torch.randn(1, *MNIST), ignored=[model[3], model[5]])
    assert _sizes(groups) == [("1.weight", 300)]


def test_batchnorm_entries_belong_to_their_units():
    model = _bn_mlp()
    groups = find_unit_groups(model, torch.randn(2, 6))
    assert _sizes(groups) == [("0.weight", 8), ("3.weight", 5)]
    assert {(s.param, s.dim) for s in groups[0].slices} == {
        ("0.weight", 0), ("0.bias", 0), ("1.weight", 0), ("1.bias", 0), ("3.weight", 1)
    }


def test_resnet20_projection_shortcuts_share_residual_channels():
    model = build_model("resnet20", (3, 32, 32), 10, shortcut="B")
    groups = {g.name: g for g in find_unit_groups(model, torch.randn(1, 3, 32, 32))}
    assert [g.size for g in groups.values()] == [16, 16, 16, 16, 32, 32, 32, 32, 64, 64, 64, 64]
    stage2 = groups["blocks.3.conv2.weight"]  # the 32 channels of stage 2's residual sum
    out_channels = {s.param for s in stage2.slices if s.dim == 0 and s.param.endswith("conv2.weight")}
    assert out_channels == {"blocks.3.conv2.weight", "blocks.4.conv2.weight", "blocks.5.conv2.weight"}
    assert {"blocks.3.projection.0.weight", "blocks.3.projection.1.weight", "blocks.6.conv1.weight"} <= {
        s.param for s in stage2.slices
    }


def test_resnet20_zero_padding_shortcut_leaves_the_residual_stream_dense():
    model = build_model("resnet20", (3, 32, 32), 10)  # shortcut 'A': channels zero-padded between stages
    with pytest.warns(UserWarning, match="conv1.weight"):
        groups = find_unit_groups(model, torch.randn(1, 3, 32, 32))
    assert _sizes(groups) == [(f"blocks.{i}.conv1.weight", 16 * 2 ** (i // 3)) for i in range(9)]


def test_gpt_has_head_and_mlp_units_and_leaves_the_residual_stream_dense():
    model = build_model("gpt", (1,), 11, n_layer=1, n_head=2, n_embd=8, block_size=4)
    # the residual stream runs through the LayerNorms: its group (named after the first layer writing to it) is left out
    with pytest.warns(UserWarning, match=r"blocks\.0\.attn\.out_proj\.weight \(8 units\): the cut model's outputs differ"):
        groups = find_unit_groups(model, torch.randint(0, 11, (1, 4)))
    assert _sizes(groups) == [("blocks.0.attn.q_proj.weight", 2), ("blocks.0.mlp.fc.weight", 32)]  # heads: tests/test_head_units.py


def test_model_is_left_untouched():
    model = _bn_mlp().train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    find_unit_groups(model, torch.randn(4, 6))
    assert model.training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert not any(m._forward_hooks for m in model.modules())


# --------------------------------------------------------------------------- refusals


class _Wrapper(nn.Module):
    def __init__(self, layer: nn.Module, width: int) -> None:
        super().__init__()
        self.layer, self.head = layer, nn.Linear(width, 2)

    def forward(self, x):
        y = self.layer(x)
        return self.head(y[0] if isinstance(y, tuple) else y)


@pytest.mark.parametrize(
    "layer, example, match",
    [
        (nn.LSTM(8, 8, batch_first=True), None, "recurrent"),
        (nn.Conv1d(8, 8, 3, padding=1, groups=4), torch.randn(1, 8, 5), "grouped convolution"),
    ],
)
def test_untraceable_layers_are_refused(layer, example, match):
    model = _Wrapper(layer, 8 if example is None else 5)
    example = torch.randn(1, 5, 8) if example is None else example
    with pytest.raises(UnsupportedModelError, match=match):
        find_unit_groups(model, example)


def test_hugging_face_conv1d_is_refused():
    pytorch_utils = pytest.importorskip("transformers.pytorch_utils")
    model = _Wrapper(pytorch_utils.Conv1D(8, 6), 8)  # GPT-2's projection: Conv1D(nf=8 outputs, nx=6 inputs)
    with pytest.raises(UnsupportedModelError, match="Conv1D"):
        find_unit_groups(model, torch.randn(2, 6))


def test_missing_torch_pruning_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch_pruning", None)
    with pytest.raises(ImportError, match=r'snrprune\[structured\]'):
        find_unit_groups(_bn_mlp(), torch.randn(2, 6))


# --------------------------------------------------------------------------- masks


def test_unit_keep_masks_match_a_hand_built_oracle():
    model = build_model("lenet300", MNIST, 10)
    groups = find_unit_groups(model, torch.randn(1, *MNIST))
    keep = {"1.weight": torch.ones(300, dtype=torch.bool), "3.weight": torch.ones(100)}
    keep["1.weight"][[3, 299]] = False
    keep["3.weight"][7] = 0.0
    masks = unit_keep_masks(groups, keep, dict(model.named_parameters()))

    oracle = {name: torch.ones_like(p) for name, p in model.named_parameters() if name[0] in "13"}
    oracle["1.weight"][[3, 299], :] = 0  # the units' rows
    oracle["1.bias"][[3, 299]] = 0
    oracle["3.weight"][:, [3, 299]] = 0  # the consumer's columns
    oracle["3.weight"][7, :] = 0  # and its own removed unit's row
    oracle["3.bias"][7] = 0
    oracle["5.weight"] = torch.ones_like(model[5].weight)
    oracle["5.weight"][:, 7] = 0
    assert masks.keys() == oracle.keys()
    for name, mask in masks.items():
        assert mask.dtype == oracle[name].dtype and torch.equal(mask, oracle[name]), name


def test_unit_keep_masks_cut_the_flatten_columns_of_a_channel():
    model = build_model("lenet5", MNIST, 10)
    groups = find_unit_groups(model, torch.randn(1, *MNIST))
    keep = {"3.weight": torch.ones(50)}
    keep["3.weight"][[0, 49]] = 0
    masks = unit_keep_masks(groups, keep, dict(model.named_parameters()))
    expected = torch.ones(500, 800)
    expected[:, 0:16] = 0
    expected[:, 49 * 16:] = 0
    assert torch.equal(masks["7.weight"], expected)
    assert masks["3.weight"][[0, 49]].eq(0).all() and masks["3.weight"][1:49].eq(1).all()


def test_unit_keep_masks_rejects_a_wrong_length():
    model = _bn_mlp()
    groups = find_unit_groups(model, torch.randn(2, 6))
    with pytest.raises(ValueError, match="8 units"):
        unit_keep_masks(groups, {"0.weight": torch.ones(7)}, dict(model.named_parameters()))


def test_removed_units_are_those_zero_in_every_slice():
    model = _bn_mlp()
    groups = find_unit_groups(model, torch.randn(2, 6))
    params = dict(model.named_parameters())
    keep = {"0.weight": torch.tensor([1, 0, 1, 1, 0, 1, 1, 1.0]), "3.weight": torch.ones(5)}
    with torch.no_grad():
        for name, mask in unit_keep_masks(groups, keep, params).items():
            params[name].mul_(mask)
        params["3.weight"][2].zero_()  # a row alone is not a unit: its bias still feeds the next layer
    removed = removed_units(groups, params)
    assert removed.keys() == {"0.weight"}
    assert removed["0.weight"].tolist() == [1, 4]


# --------------------------------------------------------------------------- compaction


def _masked(model: nn.Module, groups, seed: int, fraction: float = 0.5):
    """The model with a random ``fraction`` of every group's units zeroed, and the removed indices."""
    g = torch.Generator().manual_seed(seed)
    keep, removed = {}, {}
    for group in groups:
        cut = torch.randperm(group.size, generator=g)[: int(group.size * fraction)]
        keep[group.name] = torch.ones(group.size).index_fill_(0, cut, 0)
        removed[group.name] = cut
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, mask in unit_keep_masks(groups, keep, params).items():
            params[name].mul_(mask)
    return model, removed


@pytest.mark.parametrize(
    "name, shape, options, kept_widths",
    [
        ("lenet5", MNIST, {}, {"0": ("out_channels", 10), "3": ("out_channels", 25), "7": ("out_features", 250)}),
        ("resnet20", (3, 32, 32), {}, {"blocks.0.conv1": ("out_channels", 8), "blocks.8.conv2": ("in_channels", 32)}),
        ("resnet20", (3, 32, 32), {"shortcut": "B"}, {"conv1": ("out_channels", 8), "fc": ("in_features", 32)}),
    ],
)
def test_compact_model_computes_what_the_masked_model_computes(name, shape, options, kept_widths):
    torch.manual_seed(1)
    model = build_model(name, shape, 10, **options)
    _randomise_batchnorm(model)
    model.eval()
    example = torch.randn(1, *shape)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # resnet20's shortcut-'A' residual stream is not a unit group
        groups = find_unit_groups(model, example)
        masked, removed = _masked(model, groups, seed=2)
        found = removed_units(groups, dict(masked.named_parameters()))
        assert {k: v.sort().values.tolist() for k, v in found.items()} == {
            k: v.sort().values.tolist() for k, v in removed.items()
        }
        compact = compact_model(masked, example, removed)
    for module, (attribute, width) in kept_widths.items():
        assert getattr(compact.get_submodule(module), attribute) == width
    assert sum(p.numel() for p in compact.parameters()) < sum(p.numel() for p in masked.parameters())
    inputs = torch.randn(16, *shape)
    with torch.no_grad():
        expected, got = masked(inputs), compact(inputs)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    assert not compact.training


def test_compact_model_keeps_one_unit_of_a_group_removed_entirely():
    model = _bn_mlp().eval()
    example = torch.randn(2, 6)
    groups = find_unit_groups(model, example)
    masked, _ = _masked(model, groups, seed=0, fraction=1.0)
    removed = removed_units(groups, dict(masked.named_parameters()))
    assert [len(v) for v in removed.values()] == [8, 5]
    with pytest.warns(UserWarning, match="one is kept"):
        compact = compact_model(masked, example, removed)
    assert compact[0].out_features == 1 and compact[1].num_features == 1 and compact[3].out_features == 1
    inputs = torch.randn(5, 6)
    torch.testing.assert_close(compact(inputs), masked(inputs))


def test_compact_model_leaves_the_model_alone_and_rejects_unknown_groups():
    model = _bn_mlp().eval()
    example = torch.randn(2, 6)
    compact = compact_model(model, example, {"0.weight": torch.tensor([0, 2])})
    assert model[0].out_features == 8 and compact[0].out_features == 6
    with pytest.raises(ValueError, match="not a unit group"):
        compact_model(model, example, {"5.weight": torch.tensor([0])})
    with pytest.raises(ValueError, match="outside 0..7"):
        compact_model(model, example, {"0.weight": torch.tensor([8])})
