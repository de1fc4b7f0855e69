"""Attention heads as units: the head groups of gpt's CausalSelfAttention (and Hugging Face BERT's self-
attention), the cut module against the masked one, the compact export and its reload, training that
removes heads, and the unpruned gpt's outputs unchanged by the head-size rule of its forward."""

from __future__ import annotations

import copy
import math
import warnings

import pytest
import torch
import torch.nn.functional as F

from snrprune import export_compact, load_compact
from snrprune.export import example_input
from snrprune.models import build_model
from snrprune.pruners import DPFPruning, SNRAutoPruning
from snrprune.units import compact_model, find_unit_groups, removed_units, resolve_removed, unit_keep_masks

pytest.importorskip("torch_pruning")

VOCAB = 11
OPTIONS = {"n_layer": 2, "n_head": 4, "n_embd": 16, "block_size": 8}
ARCHITECTURE = {"model": "gpt", "input_shape": [1], "num_classes": VOCAB, "model_options": OPTIONS}


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py


def _gpt(seed: int = 0, dtype: torch.dtype = torch.float32):
    torch.manual_seed(seed)
    model = build_model("gpt", (1,), VOCAB, **OPTIONS).to(dtype).eval()
    with torch.no_grad():  # nonzero biases, so that a head's bias entries matter
        for p in model.parameters():
            if p.dim() == 1:
                p.add_(0.1 * torch.randn_like(p))
    return model, example_input(model, "gpt", (1,), VOCAB)


def _groups(model, example):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the residual stream (through the LayerNorms) is no unit group
        return find_unit_groups(model, example)


def _mask(model, groups, removed: dict[str, list[int]]):
    """Zeroes the listed units of the listed groups in place."""
    keep = {g.name: torch.ones(g.size).index_fill_(0, torch.tensor(removed[g.name], dtype=torch.int64), 0.0) for g in groups if g.name in removed}
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, mask in unit_keep_masks(groups, keep, params).items():
            params[name].mul_(mask)
    return model


def test_gpt_heads_are_one_group_per_block_and_the_projections_no_other():
    model, example = _gpt()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        groups = find_unit_groups(model, example)
    assert [(g.name, g.size) for g in groups] == [
        ("blocks.0.attn.q_proj.weight", 4), ("blocks.0.mlp.fc.weight", 64),
        ("blocks.1.attn.q_proj.weight", 4), ("blocks.1.mlp.fc.weight", 64),
    ]  # fmt: skip
    # what is still left dense is the residual stream (named after the first layer writing to it), not the heads
    messages = " ".join(str(w.message) for w in caught)
    assert "q_proj" not in messages and "v_proj" not in messages
    head = groups[0]
    where = {(s.param, s.dim) for s in head.slices}
    assert where == {(f"blocks.0.attn.{p}_proj.{w}", 0) for p in "qkv" for w in ("weight", "bias")} | {("blocks.0.attn.out_proj.weight", 1)}
    for s in head.slices:  # head h = positions [4h, 4h + 4) of each of them
        assert torch.equal(s.index, torch.arange(16)) and torch.equal(s.unit, torch.arange(16) // 4)


def test_one_head_is_no_group():
    torch.manual_seed(0)
    model = build_model("gpt", (1,), VOCAB, n_layer=1, n_head=1, n_embd=8, block_size=4).eval()
    names = [g.name for g in _groups(model, torch.randint(0, VOCAB, (1, 4)))]
    assert names == ["blocks.0.mlp.fc.weight"]


@pytest.mark.parametrize("heads", [[0], [1, 3], [0, 2, 3], [0, 1, 2], [1, 2, 3]])
def test_cutting_heads_computes_what_masking_them_computes(heads):
    model, example = _gpt(dtype=torch.float64)
    groups = _groups(model, example)
    removed = {"blocks.0.attn.q_proj.weight": heads, "blocks.1.attn.q_proj.weight": [3 - h for h in heads]}
    _mask(model, groups, removed)
    assert {k: v.tolist() for k, v in removed_units(groups, dict(model.named_parameters())).items()} == {k: sorted(v) for k, v in removed.items()}
    compact = compact_model(model, example, {k: torch.tensor(v) for k, v in removed.items()}, groups=groups)
    attention = compact.blocks[0].attn
    assert attention.n_head == 4 - len(heads)
    assert attention.q_proj.weight.shape == attention.k_proj.weight.shape == attention.v_proj.weight.shape == (4 * (4 - len(heads)), 16)
    assert attention.q_proj.bias.shape == (4 * (4 - len(heads)),) and attention.out_proj.weight.shape == (16, 4 * (4 - len(heads)))
    x = torch.randint(0, VOCAB, (3, 8), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(compact(x), model(x), rtol=1e-12, atol=1e-12)
    assert compact.blocks[0].mlp.fc.out_features == 64 and model.blocks[0].attn.n_head == 4  # the model is left as it was


def test_a_module_keeps_one_head_when_all_are_removed():
    model, example = _gpt(dtype=torch.float64)
    groups = _groups(model, example)
    _mask(model, groups, {"blocks.1.attn.q_proj.weight": [0, 1, 2, 3]})
    removed = removed_units(groups, dict(model.named_parameters()))
    assert removed["blocks.1.attn.q_proj.weight"].tolist() == [0, 1, 2, 3]
    with pytest.warns(UserWarning, match="one is kept"):
        assert resolve_removed(groups, removed)["blocks.1.attn.q_proj.weight"].tolist() == [1, 2, 3]
    with pytest.warns(UserWarning, match="one is kept"):
        compact = compact_model(model, example, removed, groups=groups)
    assert compact.blocks[1].attn.n_head == 1 and compact.blocks[1].attn.q_proj.out_features == 4
    x = torch.randint(0, VOCAB, (2, 8), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        torch.testing.assert_close(compact(x), model(x), rtol=1e-12, atol=1e-12)


def _old_attention_forward(self, x):
    """CausalSelfAttention.forward before heads were units: the head size read from the input width."""
    b, t, e = x.shape
    heads = [p(x).view(b, t, self.n_head, e // self.n_head).transpose(1, 2) for p in (self.q_proj, self.k_proj, self.v_proj)]
    y = F.scaled_dot_product_attention(*heads, dropout_p=self.dropout if self.training else 0.0, is_causal=True)
    return self.resid_dropout(self.out_proj(y.transpose(1, 2).reshape(b, t, e)))


def test_an_unpruned_gpt_computes_bit_for_bit_what_it_did():
    model, _ = _gpt(seed=3)
    old = copy.deepcopy(model)
    for block in old.blocks:
        block.attn.forward = _old_attention_forward.__get__(block.attn)
    x = torch.randint(0, VOCAB, (4, 8), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(model(x), old(x))


def test_compact_export_round_trip_and_torch_export(tmp_path):
    model, example = _gpt(seed=1)
    groups = _groups(model, example)
    _mask(model, groups, {"blocks.0.attn.q_proj.weight": [1, 2], "blocks.1.attn.q_proj.weight": [0, 1, 3], "blocks.0.mlp.fc.weight": list(range(0, 64, 3))})
    path = tmp_path / "model_compact.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        export_compact(model, example, path, architecture=ARCHITECTURE)
        loaded = load_compact(path)
    blob = torch.load(path, weights_only=True)
    assert blob["groups"]["blocks.0.attn.q_proj.weight"] == 4
    assert blob["removed"]["blocks.1.attn.q_proj.weight"].tolist() == [0, 1, 3]
    assert (loaded.blocks[0].attn.n_head, loaded.blocks[1].attn.n_head) == (2, 1)
    assert loaded.blocks[1].attn.v_proj.out_features == 4 and loaded.blocks[0].mlp.fc.out_features == 64 - 22
    x = torch.randint(0, VOCAB, (3, 8), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), rtol=1e-5, atol=1e-6)
    program = torch.export.export(loaded, (x,))
    with torch.no_grad():
        torch.testing.assert_close(program.module()(x), loaded(x))


def _train(model, pruning, steps: int):
    generator = torch.Generator().manual_seed(0)
    data = torch.randint(0, VOCAB, (16, 9), generator=generator)
    optimizer = pruning.wrap(torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9))
    model.train()
    for t in range(steps):
        batch = data[4 * (t % 4) : 4 * (t % 4) + 4]
        optimizer.zero_grad()
        logits = model(batch[:, :-1])
        F.cross_entropy(logits.reshape(-1, VOCAB), batch[:, 1:].reshape(-1)).backward()
        optimizer.step()
    return model.eval()


def test_dpf_at_unit_granularity_removes_heads_and_the_export_matches(tmp_path):
    model, example = _gpt(seed=2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pruning = DPFPruning(model, target_sparsity=0.5, total_steps=12, end_fraction=0.5, update_every=2, scope="layer", granularity="unit", example_inputs=example)
    _train(model, pruning, 12)
    units = pruning.unit_counts()
    assert units["units_total"] == {"blocks.0.attn.q_proj.weight": 4, "blocks.0.mlp.fc.weight": 64, "blocks.1.attn.q_proj.weight": 4, "blocks.1.mlp.fc.weight": 64}
    assert units["units_kept"] == {"blocks.0.attn.q_proj.weight": 2, "blocks.0.mlp.fc.weight": 32, "blocks.1.attn.q_proj.weight": 2, "blocks.1.mlp.fc.weight": 32}
    path = tmp_path / "model_compact.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        export_compact(model, example, path, architecture=ARCHITECTURE)
        loaded = load_compact(path)
    assert [b.attn.n_head for b in loaded.blocks] == [2, 2] and [b.attn.out_proj.in_features for b in loaded.blocks] == [8, 8]
    x = torch.randint(0, VOCAB, (3, 8), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), rtol=1e-5, atol=1e-6)


def test_snr_auto_keeps_a_head_per_block():
    model, example = _gpt(seed=4)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pruning = SNRAutoPruning(model, window_steps=4, update_every=2, scope="layer", granularity="unit", example_inputs=example)
    _train(model, pruning, 4)
    assert "blocks.1.attn.q_proj.weight" in pruning.unit_counts()["units_total"]
    for unit in pruning.density:
        pruning.density[unit] = 0.0
    pruning.update_masks()
    kept = pruning.unit_counts()["units_kept"]
    assert kept["blocks.0.attn.q_proj.weight"] == kept["blocks.1.attn.q_proj.weight"] == 1
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        compact = compact_model(model, example, removed_units(pruning.groups, dict(model.named_parameters())))
    assert [b.attn.n_head for b in compact.blocks] == [1, 1]
    x = torch.randint(0, VOCAB, (2, 8), generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        torch.testing.assert_close(compact(x), model(x), rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------------- Hugging Face BERT


def test_bert_heads_are_units_and_cut_like_the_masked_model(tmp_path):
    transformers = pytest.importorskip("transformers")
    config = transformers.BertConfig(
        vocab_size=VOCAB, hidden_size=16, num_hidden_layers=2, num_attention_heads=4, intermediate_size=32,
        max_position_embeddings=8, num_labels=3, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
    )  # fmt: skip

    def make():
        torch.manual_seed(0)
        return transformers.BertForSequenceClassification(config).double().eval()

    model = make()
    example = {"input_ids": torch.randint(0, VOCAB, (2, 8), generator=torch.Generator().manual_seed(0))}
    groups = _groups(model, example)
    heads = [g for g in groups if g.name.endswith("attention.self.query.weight")]
    assert [(g.name, g.size) for g in heads] == [(f"bert.encoder.layer.{i}.attention.self.query.weight", 4) for i in range(2)]
    assert ("bert.encoder.layer.0.attention.output.dense.weight", 1) in {(s.param, s.dim) for s in heads[0].slices}
    assert not any(g.name.endswith(("key.weight", "value.weight")) for g in groups)
    _mask(model, groups, {heads[0].name: [0, 2], heads[1].name: [1, 2, 3]})
    path = tmp_path / "bert_compact.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        export_compact(model, example, path)
        loaded = load_compact(path, make(), example)
    attention = loaded.bert.encoder.layer[1].attention
    assert attention.self.num_attention_heads == 1 and attention.self.query.out_features == 4 and attention.output.dense.in_features == 4
    x = torch.randint(0, VOCAB, (3, 8), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(loaded(input_ids=x).logits, model(input_ids=x).logits, rtol=1e-10, atol=1e-12)


# --------------------------------------------------------------------------- Hugging Face GPT-2 (Conv1D)


def _gpt2(transformers, seed: int = 0, head: str = "GPT2LMHeadModel"):
    config = transformers.GPT2Config(
        vocab_size=VOCAB, n_positions=8, n_embd=16, n_layer=2, n_head=4, n_inner=24, bos_token_id=0, eos_token_id=0,
        use_cache=False, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, num_labels=3, pad_token_id=0,
    )  # fmt: skip
    torch.manual_seed(seed)
    model = getattr(transformers, head)(config).double().eval()
    with torch.no_grad():  # nonzero biases, so that a unit's bias entries matter
        for p in model.parameters():
            if p.dim() == 1:
                p.add_(0.1 * torch.randn_like(p))
    return model


def test_gpt2_heads_and_mlp_units_are_groups_and_cut_like_the_masked_model(tmp_path):
    transformers = pytest.importorskip("transformers")
    model = _gpt2(transformers)
    example = {"input_ids": torch.randint(0, VOCAB, (2, 8), generator=torch.Generator().manual_seed(0))}
    groups = _groups(model, example)
    assert [(g.name, g.size) for g in groups] == [
        ("transformer.h.0.attn.c_attn.weight", 4), ("transformer.h.0.mlp.c_fc.weight", 24),
        ("transformer.h.1.attn.c_attn.weight", 4), ("transformer.h.1.mlp.c_fc.weight", 24),
    ]  # fmt: skip
    # head 1 of 4 (head size 4) is c_attn's columns 4..7 (query), 20..23 (key), 36..39 (value), c_proj's rows 4..7
    heads = groups[0]
    in_c_attn = heads.slices[0]
    assert (in_c_attn.param, in_c_attn.dim) == ("transformer.h.0.attn.c_attn.weight", 1)
    assert sorted(in_c_attn.index[in_c_attn.unit == 1].tolist()) == [4, 5, 6, 7, 20, 21, 22, 23, 36, 37, 38, 39]
    assert ("transformer.h.0.attn.c_proj.weight", 0) in {(s.param, s.dim) for s in heads.slices}
    _mask(model, groups, {groups[0].name: [0, 2], groups[1].name: list(range(0, 24, 3)), groups[2].name: [1, 2, 3]})
    path = tmp_path / "gpt2_compact.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        export_compact(model, example, path)
        loaded = load_compact(path, _gpt2(transformers), example)
    attention, mlp = loaded.transformer.h[1].attn, loaded.transformer.h[0].mlp
    assert attention.num_heads == 1 and attention.split_size == 4 and tuple(attention.c_attn.weight.shape) == (16, 12)
    assert tuple(mlp.c_fc.weight.shape) == (16, 16) and tuple(mlp.c_proj.weight.shape) == (16, 16) and mlp.c_fc.nf == 16
    assert sum(p.numel() for p in loaded.parameters()) < sum(p.numel() for p in model.parameters())
    x = torch.randint(0, VOCAB, (3, 8), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(loaded(input_ids=x).logits, model(input_ids=x).logits, rtol=1e-10, atol=1e-12)


def test_dpf_at_unit_granularity_prunes_gpt2_and_the_compact_model_matches():
    transformers = pytest.importorskip("transformers")
    model = _gpt2(transformers, seed=3).float()
    example = {"input_ids": torch.randint(0, VOCAB, (2, 8), generator=torch.Generator().manual_seed(0))}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pruning = DPFPruning(model, target_sparsity=0.5, total_steps=8, end_fraction=0.5, update_every=2, scope="layer", granularity="unit", example_inputs=example)
    data = torch.randint(0, VOCAB, (16, 9), generator=torch.Generator().manual_seed(2))
    optimizer = pruning.wrap(torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9))
    model.train()
    for t in range(8):
        batch = data[4 * (t % 4) : 4 * (t % 4) + 4]
        optimizer.zero_grad()
        model(input_ids=batch[:, :-1], labels=batch[:, :-1]).loss.backward()
        optimizer.step()
    model.eval()
    assert pruning.unit_counts()["units_kept"] == {
        "transformer.h.0.attn.c_attn.weight": 2, "transformer.h.0.mlp.c_fc.weight": 12,
        "transformer.h.1.attn.c_attn.weight": 2, "transformer.h.1.mlp.c_fc.weight": 12,
    }  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        compact = compact_model(model, example, removed_units(pruning.groups, dict(model.named_parameters())))
    assert [b.attn.num_heads for b in compact.transformer.h] == [2, 2]
    x = torch.randint(0, VOCAB, (2, 8), generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        torch.testing.assert_close(compact(input_ids=x).logits, model(input_ids=x).logits, rtol=1e-5, atol=1e-6)


def test_gpt2_with_another_linear_to_prune_is_refused():
    transformers = pytest.importorskip("transformers")
    from snrprune.units import UnsupportedModelError

    model = _gpt2(transformers)
    model.transformer.h[0].mlp.act = torch.nn.Sequential(torch.nn.GELU(), torch.nn.Linear(24, 24).double())  # a Linear between Conv1Ds
    example = {"input_ids": torch.randint(0, VOCAB, (2, 8), generator=torch.Generator().manual_seed(0))}
    with pytest.raises(UnsupportedModelError, match="both Hugging Face Conv1D layers and other Linear"):
        find_unit_groups(model, example)


# --------------------------------------------------------------------------- nn.MultiheadAttention


class _Attend(torch.nn.Module):
    """An nn.MultiheadAttention between two Linears, called with the masks of one test case."""

    def __init__(self, batch_first: bool, bias: bool, masks: str):
        super().__init__()
        self.batch_first, self.masks = batch_first, masks
        self.inp, self.head = torch.nn.Linear(6, 16), torch.nn.Linear(16, 3)
        self.attn = torch.nn.MultiheadAttention(16, 4, bias=bias, batch_first=batch_first)

    def forward(self, x):  # x: (batch, length, 6)
        h = self.inp(x)
        batch, length = x.shape[:2]
        kwargs = {}
        if self.masks in ("causal", "causal-weights"):
            kwargs["attn_mask"] = torch.ones(length, length, dtype=torch.bool).triu(1)
            kwargs["need_weights"] = self.masks == "causal-weights"
        elif self.masks == "per-head":  # float, one mask per (sample, original head)
            generator = torch.Generator().manual_seed(3)  # random: a mask shifted by a constant per row would not show
            kwargs["attn_mask"] = torch.randn(batch * 4, length, length, generator=generator, dtype=x.dtype)
            kwargs["need_weights"] = False
        elif self.masks == "padding":
            kwargs["key_padding_mask"] = torch.arange(length).expand(batch, length) >= length - 1 - torch.arange(batch)[:, None]
        if not self.batch_first:
            h = h.transpose(0, 1)
        y, _ = self.attn(h, h, h, **kwargs)
        return self.head(y if self.batch_first else y.transpose(0, 1))


@pytest.mark.parametrize(
    "batch_first, bias, masks",
    [(True, True, "causal"), (False, True, "causal-weights"), (True, False, "per-head"), (False, False, "padding"), (True, True, "none")],
)
def test_multihead_attention_heads_are_units_and_cut_like_the_masked_model(batch_first, bias, masks):
    from snrprune.units import FewerHeadsMultiheadAttention

    torch.manual_seed(0)
    model = _Attend(batch_first, bias, masks).double().eval()
    x = torch.randn(2, 5, 6, dtype=torch.float64)
    groups = find_unit_groups(model, x)
    heads = next(g for g in groups if g.name == "attn.in_proj_weight")
    assert heads.size == 4
    # the oracle: the stock module with the removed heads' columns of the output projection zero
    masked = copy.deepcopy(model)
    with torch.no_grad():
        for h in (0, 2):
            masked.attn.out_proj.weight[:, 4 * h : 4 * h + 4] = 0
    compact = compact_model(model, x, {"attn.in_proj_weight": torch.tensor([0, 2])}, groups=groups)
    attention = compact.attn
    assert isinstance(attention, FewerHeadsMultiheadAttention) and attention.num_heads == 2 and attention.heads_kept == (1, 3)
    assert attention.in_proj_weight.shape == (24, 16) and attention.out_proj.weight.shape == (16, 8)
    assert attention.in_proj_bias is None if not bias else attention.in_proj_bias.shape == (24,)
    with torch.no_grad():
        torch.testing.assert_close(compact(x), masked(x), rtol=1e-12, atol=1e-12)
        compact.train(), masked.train()  # no dropout: training mode computes the same
        torch.testing.assert_close(compact(x), masked(x), rtol=1e-12, atol=1e-12)
    assert model.attn.num_heads == 4 and type(model.attn) is torch.nn.MultiheadAttention  # the model is left as it was


def _encoder(seed: int = 0):
    torch.manual_seed(seed)
    layer = torch.nn.TransformerEncoderLayer(16, 4, 32, dropout=0.0, batch_first=True)
    return torch.nn.Sequential(
        torch.nn.Linear(6, 16), torch.nn.TransformerEncoder(layer, 2, enable_nested_tensor=False), torch.nn.Flatten(), torch.nn.Linear(80, 3)
    )


def test_a_transformer_encoder_loses_heads_and_hidden_units_and_its_fast_path_stays_exact():
    """nn.TransformerEncoderLayer's fused inference path (eval, no grad) assumes the stock head layout: the
    cut modules must not take it, and the compact model matches the masked one there, under torch.export too."""
    model = _encoder().eval()
    x = torch.randn(2, 5, 6)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the residual stream (through the LayerNorms) is no unit group
        groups = find_unit_groups(model, x)
    assert {g.name: g.size for g in groups} == {
        "1.layers.0.self_attn.in_proj_weight": 4, "1.layers.0.linear1.weight": 32,
        "1.layers.1.self_attn.in_proj_weight": 4, "1.layers.1.linear1.weight": 32,
    }  # fmt: skip
    removed = {g.name: torch.arange(0, g.size, 2) for g in groups}
    masked = copy.deepcopy(model)
    with torch.no_grad():
        for layer in masked[1].layers:
            for h in (0, 2):
                layer.self_attn.out_proj.weight[:, 4 * h : 4 * h + 4] = 0
            layer.linear2.weight[:, ::2] = 0
    compact = compact_model(model, x, removed, groups=groups)
    assert [layer.self_attn.num_heads for layer in compact[1].layers] == [2, 2] and [layer.linear1.out_features for layer in compact[1].layers] == [16, 16]
    with torch.no_grad():  # the stock layers take the fused path here
        torch.testing.assert_close(compact(x), masked(x), rtol=1e-5, atol=1e-6)
    program = torch.export.export(compact, (x,))
    torch.testing.assert_close(program.module()(x), compact(x))


@pytest.mark.parametrize("method", ["dpf", "snr-auto"])
def test_training_at_unit_granularity_removes_multihead_attention_heads(method):
    model = _encoder(seed=1)
    x, y = torch.randn(32, 5, 6), torch.randint(0, 3, (32,))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if method == "dpf":
            pruning = DPFPruning(model, target_sparsity=0.5, total_steps=8, end_fraction=0.5, update_every=2, scope="layer", granularity="unit", example_inputs=x[:2])
        else:
            pruning = SNRAutoPruning(model, window_steps=4, update_every=2, scope="layer", granularity="unit", example_inputs=x[:2])
    optimizer = pruning.wrap(torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9))
    for t in range(8):
        optimizer.zero_grad()
        F.cross_entropy(model(x[8 * (t % 4) : 8 * (t % 4) + 8]), y[8 * (t % 4) : 8 * (t % 4) + 8]).backward()
        optimizer.step()
    if method == "snr-auto":  # the statistics read the heads' weights: drive the density down and mask once more
        assert all(math.isfinite(pruning.window_snr[f"1.layers.{i}.self_attn.in_proj_weight"]) for i in (0, 1))
        for unit in pruning.density:
            pruning.density[unit] = 0.0
        pruning.update_masks()
    kept = pruning.unit_counts()["units_kept"]
    assert kept["1.layers.0.self_attn.in_proj_weight"] == kept["1.layers.1.self_attn.in_proj_weight"] == (2 if method == "dpf" else 1)
    model.eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        compact = compact_model(model, x[:2], removed_units(pruning.groups, dict(model.named_parameters())))
    assert [layer.self_attn.num_heads for layer in compact[1].layers] == [kept["1.layers.0.self_attn.in_proj_weight"]] * 2
    with torch.no_grad():
        torch.testing.assert_close(compact(x), model(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "options, match", [({"kdim": 6, "vdim": 6}, "separate key/value widths"), ({"add_bias_kv": True}, "add_bias_kv or add_zero_attn")]
)
def test_multihead_attention_without_packed_heads_is_refused(options, match):
    from snrprune.units import UnsupportedModelError

    class Cross(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.inp, self.attn, self.head = torch.nn.Linear(6, 16), torch.nn.MultiheadAttention(16, 4, batch_first=True, **options), torch.nn.Linear(16, 3)

        def forward(self, x):
            h = self.inp(x)
            return self.head(self.attn(h, x if "kdim" in options else h, x if "kdim" in options else h, need_weights=False)[0])

    with pytest.raises(UnsupportedModelError, match=f"attn \\(MultiheadAttention\\).*{match}.*granularity 'weight'"):
        find_unit_groups(Cross(), torch.randn(2, 5, 6))


def test_multiply_accumulates_count_the_attention_projections_before_and_after_the_cut():
    from snrprune.export import count_macs

    model, x = _encoder().eval(), torch.randn(2, 5, 6)
    tokens = 10  # 2 sequences of 5

    def expected(heads: int, hidden: int) -> int:  # per layer: q, k, v and output projections, then the feed-forward
        layer = 3 * tokens * 4 * heads * 16 + tokens * 4 * heads * 16 + 2 * tokens * 16 * hidden
        return tokens * 6 * 16 + 2 * layer + 2 * 80 * 3

    assert count_macs(model, x) == expected(4, 32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        groups = find_unit_groups(model, x)
    compact = compact_model(model, x, {g.name: torch.arange(0, g.size, 2) for g in groups}, groups=groups)
    assert count_macs(compact, x) == expected(2, 16)
