"""Issue 18, what is prunable: every weight a user wants pruned, on any model, exactly.

GradientStats against an independent oracle on every new layer type: per-sample gradients from one
backward pass per sample (``naive``: one forward and one backward per sample; ``one_forward``: one
batched forward, then one backward per sample's loss, for models with dropout, whose masks a
separate forward would draw anew). Both use nothing of snrprune. Then the pruners on these models:
``snr`` prunes every layer of an attention model, every method prunes tied weights with one mask,
and the masks live in the parameters, so the fused eval paths see them.
"""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from snrprune import DPFPruning, GradientStats, NoPruning, SNRAutoPruning, SNRPruning
from snrprune.layers import NotExact


pytestmark = pytest.mark.usefixtures("float64_default")  # every test here (tests/conftest.py)


def naive(model, losses, names, batch):
    """S1, S2 from one forward and one backward per sample."""
    params = dict(model.named_parameters())
    grads = {n: [] for n in names}
    for i in range(batch):
        model.zero_grad()
        losses(slice(i, i + 1)).sum().backward()
        for n in names:
            g = params[n].grad
            grads[n].append(torch.zeros_like(params[n]) if g is None else g.clone())
    model.zero_grad()
    return {n: (torch.stack(g).sum(0), torch.stack(g).square().sum(0)) for n, g in grads.items()}


def one_forward(model, losses, names, batch, seed):
    """S1, S2 from one batched forward (the same dropout masks) and one backward per sample's loss."""
    params = dict(model.named_parameters())
    torch.manual_seed(seed)
    per_sample = losses(slice(None))
    grads = {n: [] for n in names}
    for i in range(batch):
        got = torch.autograd.grad(per_sample[i], [params[n] for n in names], retain_graph=True, allow_unused=True)
        for n, g in zip(names, got):
            grads[n].append(torch.zeros_like(params[n]) if g is None else g)
    return {n: (torch.stack(g).sum(0), torch.stack(g).square().sum(0)) for n, g in grads.items()}


def collect(model, losses, seed=0, **selection):
    stats = GradientStats(model, **selection)
    try:
        model.zero_grad()
        torch.manual_seed(seed)
        losses(slice(None)).sum().backward()
        return {n: (m.sum.clone(), m.sum_sq.clone(), m.count) for n, m in stats.moments().items()}
    finally:
        stats.remove()
        model.zero_grad()


def assert_exact(model, losses, batch, expected=None, random=False, **selection):
    """GradientStats equals the oracle on every selected weight; returns the selected names."""
    moments = collect(model, losses, **selection)
    names = sorted(moments)
    if expected is not None:
        assert names == sorted(expected)
    oracle = one_forward(model, losses, names, batch, seed=0) if random else naive(model, losses, names, batch)
    for name, (s1, s2) in oracle.items():
        m1, m2, count = moments[name]
        assert count == batch, name
        torch.testing.assert_close(m1, s1, rtol=1e-10, atol=1e-12, msg=lambda m: f"S1 of {name}: {m}")
        torch.testing.assert_close(m2, s2, rtol=1e-10, atol=1e-12, msg=lambda m: f"S2 of {name}: {m}")
    return names


def labels(batch, classes=3, seed=1):
    return torch.randint(0, classes, (batch,), generator=torch.Generator().manual_seed(seed))


# -- nn.MultiheadAttention ---------------------------------------------------------------------------
ATTENTION = {
    "self, key padding mask": dict(module={}, cross=False, padding=True),
    "cross, kdim and vdim": dict(module=dict(kdim=6, vdim=5), cross=True),
    "3-D float mask, attention weights in the loss": dict(module={}, cross=False, mask3=True, weights=True),
    "causal": dict(module={}, cross=False, causal=True),
    "bias_kv, zero_attn, no bias": dict(module=dict(add_bias_kv=True, add_zero_attn=True, bias=False), cross=True),
    "dropout": dict(module=dict(dropout=0.3), cross=True, padding=True, weights=True),
}


@pytest.mark.parametrize("batch_first", [True, False])
@pytest.mark.parametrize("case", list(ATTENTION))
def test_multihead_attention_matches_the_oracle(case, batch_first):
    spec = ATTENTION[case]
    torch.manual_seed(0)
    batch, length, source, embed = 5, 4, 3, 8
    attention = nn.MultiheadAttention(embed, 2, batch_first=batch_first, **spec["module"])
    head = nn.Linear(embed, 3)
    model = nn.ModuleDict(dict(attn=attention, head=head))
    kdim, vdim = spec["module"].get("kdim", embed), spec["module"].get("vdim", embed)

    def seq(n, features):  # (batch, n, features) as the module takes it
        t = torch.randn(batch, n, features)
        return t if batch_first else t.transpose(0, 1).contiguous()

    query = seq(length, embed)
    key, value = (seq(source, kdim), seq(source, vdim)) if spec["cross"] else (query, query)
    s = source if spec["cross"] else length
    padding = torch.zeros(batch, s, dtype=torch.bool)
    padding[1, -2:] = True
    mask3 = torch.randn(batch * 2, length, s)
    y = labels(batch)

    def losses(rows):
        def pick(t):
            return t[rows] if batch_first else t[:, rows]

        kwargs = dict(need_weights=spec.get("weights", False))
        if spec.get("padding"):
            kwargs["key_padding_mask"] = padding[rows]
        if spec.get("mask3"):
            kwargs["attn_mask"] = mask3.view(batch, 2, length, s)[rows].reshape(-1, length, s)
        if spec.get("causal"):
            kwargs.update(attn_mask=nn.Transformer.generate_square_subsequent_mask(length), is_causal=True)
        out, weights = attention(pick(query), pick(key), pick(value), **kwargs)
        loss = F.cross_entropy(head(out.mean(1 if batch_first else 0)), y[rows], reduction="none")
        return loss + weights.square().sum((1, 2)) if weights is not None else loss

    projections = ["attn.in_proj_weight"] if not spec["cross"] or "kdim" not in spec["module"] else ["attn.q_proj_weight", "attn.k_proj_weight", "attn.v_proj_weight"]
    assert_exact(model, losses, batch, projections + ["attn.out_proj.weight", "head.weight"], random="dropout" in case)


@pytest.mark.parametrize("batch_first", [True, False])
@pytest.mark.parametrize("case", ["self, key padding mask", "3-D float mask, attention weights in the loss"])
def test_multihead_attention_with_heads_removed_matches_the_oracle(case, batch_first):
    """The compact export's FewerHeadsMultiheadAttention (4 heads of 2, two cut): its statistics are as exact
    as the stock module's, so that a compact model can be trained on with snr."""
    pytest.importorskip("torch_pruning")
    from snrprune.units import FewerHeadsMultiheadAttention, compact_model

    spec = ATTENTION[case]
    torch.manual_seed(0)
    batch, length, embed = 5, 4, 8

    class Wrapper(nn.Module):
        def __init__(self):
            super().__init__()
            self.attn = nn.MultiheadAttention(embed, 4, batch_first=batch_first)
            self.head = nn.Linear(embed, 3)

        def forward(self, x):
            return self.head(self.attn(x, x, x, need_weights=False)[0].mean(1 if batch_first else 0))

    shape = (batch, length, embed) if batch_first else (length, batch, embed)
    cut = compact_model(Wrapper(), torch.randn(*shape), {"attn.in_proj_weight": torch.tensor([0, 2])})
    attention, head = cut.attn, cut.head
    assert isinstance(attention, FewerHeadsMultiheadAttention) and attention.in_proj_weight.shape == (12, 8)
    model = nn.ModuleDict(dict(attn=attention, head=head))
    query = torch.randn(*shape)
    padding = torch.zeros(batch, length, dtype=torch.bool)
    padding[1, -2:] = True
    mask3 = torch.randn(batch * 4, length, length)  # one mask per original head
    y = labels(batch)

    def losses(rows):
        x = query[rows] if batch_first else query[:, rows]
        kwargs = dict(need_weights=spec.get("weights", False))
        if spec.get("padding"):
            kwargs["key_padding_mask"] = padding[rows]
        if spec.get("mask3"):
            kwargs["attn_mask"] = mask3.view(batch, 4, length, length)[rows].reshape(-1, length, length)
        out, weights = attention(x, x, x, **kwargs)
        loss = F.cross_entropy(head(out.mean(1 if batch_first else 0)), y[rows], reduction="none")
        return loss + weights.square().sum((1, 2)) if weights is not None else loss

    assert_exact(model, losses, batch, ["attn.in_proj_weight", "attn.out_proj.weight", "head.weight"])


def test_an_attention_replay_that_does_not_reproduce_the_output_is_an_error():
    """A user's forward hook changes the module's output: the replay cannot know, and says so."""
    attention = nn.MultiheadAttention(4, 2, batch_first=True)
    attention.register_forward_hook(lambda module, args, out: (out[0] + 1, out[1]))  # runs in the replay too
    stats = GradientStats(attention)
    x = torch.randn(3, 5, 4)
    with pytest.raises(NotExact, match="replay of MultiheadAttention .* does not reproduce the module's output.*dpf or snr-auto"):
        attention(x, x, x)[0].sum().backward()
    stats.remove()


@pytest.mark.parametrize("norm_first", [False, True])
@pytest.mark.parametrize("dropout", [0.0, 0.2])
def test_transformer_encoder_layer_matches_the_oracle(norm_first, dropout):
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(8, 2, 16, dropout=dropout, batch_first=True, norm_first=norm_first)
    model = nn.ModuleDict(dict(layer=layer, head=nn.Linear(8, 3)))
    x, y = torch.randn(5, 4, 8), labels(5)
    padding = torch.zeros(5, 4, dtype=torch.bool)
    padding[0, 3] = True

    def losses(rows):
        return F.cross_entropy(model["head"](layer(x[rows], src_key_padding_mask=padding[rows]).mean(1)), y[rows], reduction="none")

    names = assert_exact(model, losses, 5, random=dropout > 0)
    assert names == ["head.weight", "layer.linear1.weight", "layer.linear2.weight", "layer.self_attn.in_proj_weight", "layer.self_attn.out_proj.weight"]


# -- recurrent modules ------------------------------------------------------------------------------
RECURRENT = [
    (nn.RNN, True, {}),
    (nn.RNN, False, {"nonlinearity": "relu"}),
    (nn.GRU, True, {}),
    (nn.GRU, False, {"bias": False}),
    (nn.LSTM, True, {}),
    (nn.LSTM, False, {"proj_size": 3}),
]


@pytest.mark.parametrize(("cls", "batch_first", "options"), RECURRENT, ids=lambda v: getattr(v, "__name__", str(v)))
def test_recurrent_modules_match_the_oracle(cls, batch_first, options):
    """Two layers, both directions, a given initial state, the final states in the loss too."""
    torch.manual_seed(0)
    rnn = cls(4, 5, num_layers=2, batch_first=batch_first, bidirectional=True, **options)
    out_size = options.get("proj_size", 5)
    model = nn.ModuleDict(dict(rnn=rnn, head=nn.Linear(2 * out_size, 3)))
    batch = 6
    x = torch.randn(batch, 7, 4) if batch_first else torch.randn(7, batch, 4)
    h0, c0 = torch.randn(4, batch, out_size), torch.randn(4, batch, 5)
    y = labels(batch)

    def losses(rows):
        xs = x[rows] if batch_first else x[:, rows]
        seq, state = rnn(xs, (h0[:, rows], c0[:, rows])) if cls is nn.LSTM else rnn(xs, h0[:, rows])
        h_n, c_n = state if cls is nn.LSTM else (state, None)
        loss = F.cross_entropy(model["head"](seq[:, -1] if batch_first else seq[-1]), y[rows], reduction="none")
        loss = loss + h_n.square().sum((0, 2))
        return loss + c_n.sin().sum((0, 2)) if c_n is not None else loss

    names = assert_exact(model, losses, batch)
    expected = 2 * 2 * (3 if "proj_size" in options else 2) + 1
    assert len(names) == expected and "rnn.weight_hh_l1_reverse" in names


@pytest.mark.parametrize("cls", [nn.RNNCell, nn.GRUCell, nn.LSTMCell])
def test_a_cell_called_once_per_time_step_sums_each_samples_gradient_over_the_steps(cls):
    torch.manual_seed(0)
    cell = cls(4, 5)
    model = nn.ModuleDict(dict(cell=cell, head=nn.Linear(5, 3)))
    x, y = torch.randn(6, 7, 4), labels(6)

    def losses(rows):
        h = torch.zeros(len(y[rows]), 5)
        c = torch.zeros_like(h)
        for t in range(7):
            if cls is nn.LSTMCell:
                h, c = cell(x[rows, t], (h, c))
            else:
                h = cell(x[rows, t], h)
        return F.cross_entropy(model["head"](h), y[rows], reduction="none") + (c.sin().sum(1) if cls is nn.LSTMCell else 0)

    assert assert_exact(model, losses, 6) == ["cell.weight_hh", "cell.weight_ih", "head.weight"]


def test_recurrent_statistics_refuse_packed_sequences():
    rnn = nn.GRU(3, 4)
    stats = GradientStats(rnn)
    packed = nn.utils.rnn.pack_padded_sequence(torch.randn(5, 2, 3), [5, 3])
    out, _ = rnn(packed)
    with pytest.raises(NotExact, match="PackedSequence.*dpf or snr-auto"):
        out.data.sum().backward()
    stats.remove()


def test_snr_refuses_dropout_between_recurrent_layers_and_names_the_methods_that_can_prune_it():
    model = nn.LSTM(3, 4, num_layers=2, dropout=0.2)
    with pytest.raises(ValueError) as info:
        SNRPruning(model, burn_in_steps=0)
    message = str(info.value)
    assert "weight_ih_l0 (dropout=0.2 between the layers of LSTM" in message and "dpf or snr-auto" in message
    assert "exclude" in message
    assert len(DPFPruning(model, 0.5, total_steps=10).weights) == 4  # the methods that read the applied gradient prune it


# -- embeddings, tied weights, weights used twice ------------------------------------------------------
@pytest.mark.parametrize("options", [{}, {"padding_idx": 2}, {"scale_grad_by_freq": True}], ids=["plain", "padding_idx", "scale_grad_by_freq"])
def test_embedding_with_repeated_tokens_matches_the_oracle(options):
    torch.manual_seed(0)
    embed = nn.Embedding(6, 4, **options)
    model = nn.ModuleDict(dict(embed=embed, head=nn.Linear(4, 3)))
    tokens = torch.tensor([[1, 1, 2, 3], [2, 2, 2, 5], [0, 1, 1, 1], [4, 4, 0, 4]])  # repeats within and across samples
    y = labels(4)

    def losses(rows):
        return F.cross_entropy(model["head"](torch.tanh(embed(tokens[rows])).sum(1)), y[rows], reduction="none")

    # scale_grad_by_freq divides by a token's count in the whole batch, which couples the samples: g_i is then
    # sample i's contribution to the batch gradient, what one backward per sample's loss of the batch gives
    coupled = "scale_grad_by_freq" in options
    assert assert_exact(model, losses, 4, random=coupled, include=["*"]) == ["embed.weight", "head.weight"]
    assert [layer.name for layer in GradientStats(model).layers] == ["head.weight"]  # opt-in


def test_tied_linear_weights_sum_each_samples_gradient_over_the_uses():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 5), nn.Tanh(), nn.Linear(5, 5), nn.Tanh(), nn.Linear(5, 3))
    model[2].weight = model[0].weight
    x, y = torch.randn(6, 5), labels(6)
    assert assert_exact(model, lambda rows: F.cross_entropy(model(x[rows]), y[rows], reduction="none"), 6, include=["*"]) == ["0.weight", "4.weight"]


def test_embedding_tied_to_the_output_layer_matches_the_oracle():
    class TinyLM(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Embedding(7, 4)
            self.mix = nn.Linear(4, 4)
            self.out = nn.Linear(4, 7, bias=False)
            self.out.weight = self.embed.weight

        def forward(self, tokens):
            return self.out(torch.tanh(self.mix(self.embed(tokens))))

    torch.manual_seed(0)
    model = TinyLM()
    tokens = torch.tensor([[1, 2, 2, 6, 1], [0, 0, 3, 3, 3], [5, 1, 2, 4, 4]])

    def losses(rows):
        logits = model(tokens[rows, :-1])
        return F.cross_entropy(logits.transpose(1, 2), tokens[rows, 1:], reduction="none").sum(1)

    assert assert_exact(model, losses, 3, include=["*"]) == ["embed.weight", "mix.weight"]


def test_a_module_called_twice_sums_each_samples_gradient_over_the_calls():
    torch.manual_seed(0)
    model = nn.ModuleDict(dict(layer=nn.Linear(5, 5), head=nn.Linear(5, 3)))
    x, y = torch.randn(6, 5), labels(6)

    def losses(rows):
        h = torch.tanh(model["layer"](torch.tanh(model["layer"](x[rows]))))
        return F.cross_entropy(model["head"](h), y[rows], reduction="none")

    assert assert_exact(model, losses, 6) == ["head.weight", "layer.weight"]


# -- modules without an extractor: torch.func ---------------------------------------------------------
class Scaled(nn.Module):
    def __init__(self):
        super().__init__()
        self.table = nn.Parameter(torch.randn(5, 4))
        self.gain = nn.Parameter(torch.ones(4))

    def forward(self, x):
        return torch.tanh(x * self.gain) @ self.table.t()


GENERIC = {
    "Bilinear": (lambda: nn.Bilinear(4, 3, 5), lambda: (torch.randn(6, 4), torch.randn(6, 3)), lambda out: out),
    "ConvTranspose2d": (lambda: nn.ConvTranspose2d(2, 5, 3, stride=2), lambda: (torch.randn(6, 2, 3, 3),), lambda out: out.mean((2, 3))),
    "custom parameter": (Scaled, lambda: (torch.randn(6, 3, 4),), lambda out: out.sum(1)),
}


@pytest.mark.parametrize("case", list(GENERIC))
def test_other_modules_weights_are_exact_through_torch_func(case):
    make, inputs, pool = GENERIC[case]
    torch.manual_seed(0)
    model = nn.ModuleDict(dict(layer=make(), head=nn.Linear(5, 3)))
    args, y = inputs(), labels(6)

    def losses(rows):
        return F.cross_entropy(model["head"](pool(model["layer"](*(a[rows] for a in args)))), y[rows], reduction="none")

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "There is a performance drop")
        names = assert_exact(model, losses, 6, include=["*"])
    assert names == ["head.weight", "layer.table" if case == "custom parameter" else "layer.weight"]


def test_a_random_module_forward_is_not_exact_and_says_so():
    class Noisy(Scaled):
        def forward(self, x):
            return F.dropout(super().forward(x), 0.5, self.training)

    model = nn.ModuleDict(dict(layer=Noisy(), head=nn.Linear(5, 3)))
    stats = GradientStats(model, include=["layer.table"])
    with pytest.raises(NotExact, match=r"Noisy\.table.*dpf or snr-auto"):
        model["head"](model["layer"](torch.randn(4, 3, 4)).sum(1)).sum().backward()
    stats.remove()


# -- Hugging Face models (built from configs, nothing downloaded) -------------------------------------
def tiny_gpt2():
    transformers = pytest.importorskip("transformers")
    config = transformers.GPT2Config(
        vocab_size=23, n_positions=12, n_embd=8, n_layer=2, n_head=2, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
        bos_token_id=0, eos_token_id=0,
    )  # fmt: skip
    torch.manual_seed(0)
    return transformers.GPT2LMHeadModel(config).double()


def gpt2_losses(model, tokens):
    def losses(rows):
        logits = model(tokens[rows]).logits[:, :-1]
        return F.cross_entropy(logits.transpose(1, 2), tokens[rows, 1:], reduction="none").sum(1)

    return losses


def test_gpt2_conv1d_and_tied_embeddings_match_the_oracle():
    model = tiny_gpt2()
    tokens = torch.randint(0, 23, (5, 7), generator=torch.Generator().manual_seed(0))
    tokens[0, :4] = 3  # a repeated token
    with pytest.warns(UserWarning, match=r"transformer\.wte\.weight = lm_head\.weight \(one tied tensor"):
        default = [layer.name for layer in GradientStats(model).layers]
    assert len(default) == 8 and all(n.endswith(("c_attn.weight", "c_proj.weight", "c_fc.weight")) for n in default)
    names = assert_exact(model, gpt2_losses(model, tokens), 5, include=["*"], exclude=["*wpe*"])
    assert names == sorted(default + ["transformer.wte.weight"])


def test_gpt2_position_embeddings_are_broadcast_over_the_batch_and_refused_by_name():
    model = tiny_gpt2()
    tokens = torch.randint(0, 23, (4, 6), generator=torch.Generator().manual_seed(0))
    stats = GradientStats(model, include=["*"])
    with pytest.raises(NotExact, match=r"transformer\.wpe\.weight: transformer\.wpe saw a batch of 1 .* 4 samples.*dpf or snr-auto"):
        gpt2_losses(model, tokens)(slice(None)).sum().backward()
    stats.remove()


def test_bert_matches_the_oracle():
    transformers = pytest.importorskip("transformers")
    config = transformers.BertConfig(
        vocab_size=20, hidden_size=8, num_hidden_layers=1, num_attention_heads=2, intermediate_size=12,
        max_position_embeddings=16, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, num_labels=3,
    )  # fmt: skip
    torch.manual_seed(0)
    model = transformers.BertForSequenceClassification(config).double()
    tokens = torch.randint(0, 20, (5, 6), generator=torch.Generator().manual_seed(0))
    attention_mask = torch.ones(5, 6, dtype=torch.long)
    attention_mask[2, 4:] = 0
    y = labels(5)

    def losses(rows):
        return F.cross_entropy(model(tokens[rows], attention_mask=attention_mask[rows]).logits, y[rows], reduction="none")

    names = assert_exact(model, losses, 5, include=["*"], exclude=["*position_embeddings*"])
    assert "bert.embeddings.word_embeddings.weight" in names and "bert.encoder.layer.0.attention.self.query.weight" in names
    assert len(names) == 10


def test_hugging_face_conv1d_matches_the_oracle():
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    model = nn.Sequential(transformers.pytorch_utils.Conv1D(6, 4), nn.Tanh(), transformers.pytorch_utils.Conv1D(3, 6))
    x, y = torch.randn(5, 3, 4), labels(5)
    assert assert_exact(model, lambda rows: F.cross_entropy(model(x[rows]).sum(1), y[rows], reduction="none"), 5) == ["0.weight", "2.weight"]


# -- the pruners ----------------------------------------------------------------------------------------
class Encoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.inp = nn.Linear(6, 16)
        self.encoder = nn.TransformerEncoderLayer(16, 2, 32, dropout=0.1, batch_first=True)
        self.head = nn.Linear(16, 3)

    def forward(self, x):
        return self.head(self.encoder(self.inp(x)).mean(1))


def test_snr_prunes_every_layer_of_a_model_with_multihead_attention():
    """The bug of issue 18: out_proj was selected, its statistics never came, and no layer was ever pruned."""
    torch.set_default_dtype(torch.float32)
    torch.manual_seed(0)
    model = Encoder()
    x, y = torch.randn(512, 5, 6), torch.randint(0, 3, (512,))  # labels carry no signal: gradients are noise
    pruning = SNRPruning(model, burn_in_steps=10)
    optimizer = pruning.wrap(torch.optim.SGD(model.parameters(), lr=0.05))
    for _ in range(30):
        rows = torch.randint(0, 512, (32,))
        optimizer.zero_grad()
        F.cross_entropy(model(x[rows]), y[rows]).backward()
        optimizer.step()
    sparsity = pruning.layer_sparsity()
    assert set(sparsity) == {"inp.weight", "encoder.self_attn.in_proj_weight", "encoder.self_attn.out_proj.weight", "encoder.linear1.weight", "encoder.linear2.weight", "head.weight"}
    assert all(s > 0.05 for s in sparsity.values()), sparsity


@pytest.mark.parametrize("method", ["dense", "dpf", "snr-auto", "snr"])
def test_every_method_prunes_a_tied_weight_as_one_tensor_with_one_mask(method):
    torch.set_default_dtype(torch.float32)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Embedding(12, 8), nn.Linear(8, 8), nn.Tanh(), nn.Linear(8, 12))
    model[3].weight = model[0].weight
    make = {
        "dense": lambda: NoPruning(model, include=["*"]),
        "dpf": lambda: DPFPruning(model, 0.5, total_steps=8, update_every=2, end_fraction=0.5, include=["*"]),
        "snr-auto": lambda: SNRAutoPruning(model, window_steps=2, include=["*"]),
        "snr": lambda: SNRPruning(model, burn_in_steps=2, include=["*"]),
    }
    pruning = make[method]()
    assert list(pruning.weights) == ["0.weight", "1.weight"] and pruning.weights["0.weight"] is model[3].weight
    optimizer = pruning.wrap(torch.optim.SGD(model.parameters(), lr=0.1))
    tokens = torch.randint(0, 12, (64, 6), generator=torch.Generator().manual_seed(0))
    for step in range(8):
        batch = tokens[step * 8 : step * 8 + 8]
        optimizer.zero_grad()
        F.cross_entropy(model(batch[:, :-1]).transpose(1, 2), batch[:, 1:]).backward()
        optimizer.step()
    assert model[3].weight is model[0].weight  # still one tensor: both uses see the one mask
    keep = pruning.masks["0.weight"]
    assert torch.equal(model[0].weight, pruning.dense["0.weight"] * keep)
    if method == "dpf":
        assert abs(pruning.sparsity() - 0.5) < 0.01 and not keep.all()
    if method == "dense":
        assert keep.all()


def test_masks_live_in_the_parameters_so_the_fused_eval_paths_see_them(monkeypatch):
    """nn.TransformerEncoderLayer's fast path (eval, no grad) equals a hand-masked copy on the slow path."""
    torch.set_default_dtype(torch.float32)
    torch.manual_seed(0)
    model = nn.TransformerEncoder(nn.TransformerEncoderLayer(16, 2, 32, dropout=0.0, batch_first=True), 2, enable_nested_tensor=False)
    pruning = DPFPruning(model, 0.6, total_steps=4, update_every=1, end_fraction=0.5)
    optimizer = pruning.wrap(torch.optim.SGD(model.parameters(), lr=0.01))
    x = torch.randn(4, 5, 16)
    for _ in range(4):
        optimizer.zero_grad()
        model(x).square().mean().backward()
        optimizer.step()
    assert abs(pruning.sparsity() - 0.6) < 0.01
    with pruning.dense_weights():
        masked = copy.deepcopy(model)
    with torch.no_grad():
        for name, param in masked.named_parameters():
            if name in pruning.masks:
                param.mul_(pruning.masks[name])
    fused = []
    original = torch._transformer_encoder_layer_fwd
    monkeypatch.setattr(torch, "_transformer_encoder_layer_fwd", lambda *a, **k: fused.append(1) or original(*a, **k))
    model.eval()
    with torch.no_grad():
        fast = model(x)
    assert len(fused) == 2  # both layers ran the fused kernel
    slow = masked(x)  # training mode with gradients: the Python path
    torch.testing.assert_close(fast, slow.detach(), rtol=1e-5, atol=1e-5)


def test_scaled_dot_product_attention_sees_the_masks():
    """GPT-2's SDPA attention after pruning equals a hand-masked copy run with eager attention."""
    torch.set_default_dtype(torch.float32)
    model = tiny_gpt2().float()
    model.config._attn_implementation = "sdpa"
    pruning = DPFPruning(model, 0.5, total_steps=4, update_every=1, end_fraction=0.5, include=["*"])
    optimizer = pruning.wrap(torch.optim.SGD(model.parameters(), lr=0.01))
    tokens = torch.randint(0, 23, (4, 7), generator=torch.Generator().manual_seed(0))
    for _ in range(4):
        optimizer.zero_grad()
        gpt2_losses(model, tokens)(slice(None)).mean().backward()
        optimizer.step()
    assert "transformer.wte.weight" in pruning.masks and "transformer.wpe.weight" in pruning.masks
    with pruning.dense_weights():
        masked = copy.deepcopy(model)
    masked.config._attn_implementation = "eager"
    with torch.no_grad():
        for name, param in masked.named_parameters():
            if name in pruning.masks:
                param.mul_(pruning.masks[name])
        model.eval()
        masked.eval()
        torch.testing.assert_close(model(tokens).logits, masked(tokens).logits, rtol=1e-5, atol=1e-5)
    assert masked.lm_head.weight is masked.transformer.wte.weight
