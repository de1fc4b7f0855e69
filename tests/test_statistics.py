"""GradientStats against independent oracles: a naive per-sample backward loop and torch.func."""

import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad, vmap

from snrprune import SNR_CAP, GradientStats, snr_from_moments
from snrprune.layers import NotExact



pytestmark = pytest.mark.usefixtures("float64_default")  # every test here (tests/conftest.py)


def naive_moments(model, x, y, loss_fn=F.cross_entropy, reduction="sum"):
    """S1, S2 per weight from B separate single-sample backward passes (the definition)."""
    names = [n for n, p in model.named_parameters() if n.endswith("weight") and p.dim() >= 2]
    params = dict(model.named_parameters())
    grads = {n: [] for n in names}
    batch = x.shape[0]
    for i in range(batch):
        model.zero_grad()
        loss = loss_fn(model(x[i : i + 1]), y[i : i + 1], reduction="sum")
        if reduction == "mean":
            loss = loss / batch
        loss.backward()
        for n in names:
            grads[n].append(params[n].grad.detach().clone())
    model.zero_grad()
    return {n: (torch.stack(g).sum(0), torch.stack(g).square().sum(0)) for n, g in grads.items()}


def collect(model, x, y, loss_fn=F.cross_entropy, reduction="sum"):
    stats = GradientStats(model)
    model.zero_grad()
    loss_fn(model(x), y, reduction=reduction).backward()
    moments = {n: (m.sum.clone(), m.sum_sq.clone(), m.count) for n, m in stats.moments().items()}
    snr = {n: t.clone() for n, t in stats.snr().items()}
    stats.remove()
    return moments, snr


def assert_matches(moments, oracle, batch):
    assert set(moments) == set(oracle)
    for name, (s1, s2) in oracle.items():
        m1, m2, count = moments[name]
        assert count == batch
        torch.testing.assert_close(m1, s1, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(m2, s2, rtol=1e-10, atol=1e-12)


def test_mlp_matches_naive_loop():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 3, bias=False))
    x, y = torch.randn(6, 5), torch.randint(0, 3, (6,))
    moments, _ = collect(model, x, y)
    assert_matches(moments, naive_moments(model, x, y), 6)


class SeqModel(nn.Module):
    """Linear on (batch, sequence, features): the per-sample gradient sums over the sequence."""

    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(4, 6)
        self.head = nn.Linear(6, 3)

    def forward(self, x):
        return self.head(torch.tanh(self.proj(x)).mean(1))


def test_linear_on_sequences_matches_naive_loop():
    torch.manual_seed(1)
    model = SeqModel()
    x, y = torch.randn(5, 9, 4), torch.randint(0, 3, (5,))
    moments, _ = collect(model, x, y)
    assert_matches(moments, naive_moments(model, x, y), 5)


def test_linear_on_4d_inputs_matches_torch_func():
    torch.manual_seed(2)
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Flatten(), nn.Linear(2 * 5 * 4, 2))
    x, y = torch.randn(4, 2, 5, 3), torch.randint(0, 2, (4,))
    moments, _ = collect(model, x, y)
    params = {k: v.detach() for k, v in model.named_parameters()}

    def loss(p, xi, yi):
        return F.cross_entropy(functional_call(model, p, (xi[None],)), yi[None], reduction="sum")

    per_sample = vmap(grad(loss), in_dims=(None, 0, 0))(params, x, y)
    oracle = {n: (per_sample[n].sum(0), per_sample[n].square().sum(0)) for n in moments}
    assert_matches(moments, oracle, 4)


@pytest.mark.parametrize(
    "conv_kwargs",
    [
        dict(kernel_size=3),
        dict(kernel_size=3, stride=2, padding=1, bias=False),
        dict(kernel_size=2, dilation=2, padding=2),
        dict(kernel_size=3, groups=2, padding="same"),
        dict(kernel_size=4, padding="same", dilation=1),  # asymmetric 'same' padding
        dict(kernel_size=3, padding=1, padding_mode="reflect"),
        dict(kernel_size=3, padding=1, padding_mode="circular", stride=2),
        dict(kernel_size=1, padding="valid"),
    ],
)
@pytest.mark.parametrize("dims,side", [(1, 9), (1, 200), (2, 9), (2, 16)])
def test_conv_matches_naive_loop(conv_kwargs, dims, side):
    """Small outputs take the shifted-input path, large ones the grouped-convolution path."""
    torch.manual_seed(3)
    conv = (nn.Conv1d if dims == 1 else nn.Conv2d)(4, 6, **conv_kwargs)
    size = (side,) * dims
    with torch.no_grad():
        features = conv(torch.zeros(1, 4, *size)).numel()
    model = nn.Sequential(conv, nn.ReLU(), nn.Flatten(), nn.Linear(features, 3))
    x, y = torch.randn(5, 4, *size), torch.randint(0, 3, (5,))
    moments, _ = collect(model, x, y)
    assert_matches(moments, naive_moments(model, x, y), 5)


def test_conv3d_matches_naive_loop():
    torch.manual_seed(4)
    model = nn.Sequential(nn.Conv3d(2, 3, 2, stride=(1, 2, 1)), nn.Flatten(), nn.LazyLinear(2))
    x, y = torch.randn(3, 2, 4, 5, 4), torch.randint(0, 2, (3,))
    model(x)  # materialise the lazy layer
    moments, _ = collect(model, x, y)
    assert_matches(moments, naive_moments(model, x, y), 3)


def test_batchnorm_contributions_sum_to_batch_gradient():
    """With BatchNorm in train mode samples interact: S1 must still be the batch gradient."""
    torch.manual_seed(5)
    model = nn.Sequential(nn.Conv2d(2, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 3))
    x, y = torch.randn(8, 2, 8, 8), torch.randint(0, 3, (8,))
    stats = GradientStats(model)
    F.cross_entropy(model(x), y).backward()
    for name, m in stats.moments().items():
        batch_grad = dict(model.named_parameters())[name].grad
        torch.testing.assert_close(m.sum, batch_grad)
        # sum of squares of contributions is at least the square of their sum / B (Cauchy-Schwarz)
        assert torch.all(m.sum_sq * 8 >= m.sum.square() * (1 - 1e-9))
    assert set(stats.moments()) == {"0.weight", "4.weight"}  # BatchNorm is never prunable


def test_mean_and_sum_reduction_give_same_snr():
    torch.manual_seed(6)
    model = nn.Sequential(nn.Linear(5, 8), nn.ReLU(), nn.Linear(8, 3))
    x, y = torch.randn(10, 5), torch.randint(0, 3, (10,))
    _, snr_sum = collect(model, x, y, reduction="sum")
    _, snr_mean = collect(model, x, y, reduction="mean")
    for name in snr_sum:
        torch.testing.assert_close(snr_sum[name], snr_mean[name])


def test_snr_formula_against_direct_definition():
    torch.manual_seed(7)
    model = nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 2))
    x, y = torch.randn(12, 4), torch.randint(0, 2, (12,))
    _, snr = collect(model, x, y)
    params = {k: v.detach() for k, v in model.named_parameters()}

    def loss(p, xi, yi):
        return F.cross_entropy(functional_call(model, p, (xi[None],)), yi[None], reduction="sum")

    g = vmap(grad(loss), in_dims=(None, 0, 0))(params, x, y)
    for name in snr:
        mean = g[name].mean(0)
        var = g[name].var(0, unbiased=True)
        torch.testing.assert_close(snr[name], 12 * mean.square() / var)


def test_gradient_accumulation_adds_up():
    torch.manual_seed(8)
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    x, y = torch.randn(10, 3), torch.randint(0, 2, (10,))
    stats = GradientStats(model)
    for part in (slice(0, 3), slice(3, 7), slice(7, 10)):
        F.cross_entropy(model(x[part]), y[part], reduction="sum").backward()
    accumulated = {n: (m.sum.clone(), m.sum_sq.clone(), m.count) for n, m in stats.moments().items()}
    stats.remove()
    assert_matches(accumulated, naive_moments(model, x, y), 10)


def test_reset_and_read_again():
    torch.manual_seed(9)
    model = nn.Linear(3, 2)
    x, y = torch.randn(6, 3), torch.randint(0, 2, (6,))
    stats = GradientStats(model)
    F.cross_entropy(model(x[:3]), y[:3], reduction="sum").backward()
    stats.reset()
    with pytest.raises(RuntimeError, match="no gradient statistics"):
        stats.moments()
    F.cross_entropy(model(x[3:]), y[3:], reduction="sum").backward()
    got = {n: (m.sum.clone(), m.sum_sq.clone(), m.count) for n, m in stats.moments().items()}
    stats.remove()
    assert_matches(got, naive_moments(model, x[3:], y[3:]), 3)


def test_batch_of_one_is_a_clear_error():
    model = nn.Linear(3, 2)
    stats = GradientStats(model)
    F.cross_entropy(model(torch.randn(1, 3)), torch.tensor([1])).backward()
    assert stats.moments()["weight"].count == 1
    with pytest.raises(ValueError, match="at least 2 samples"):
        stats.snr()


def test_zero_variance_rules():
    s1 = torch.tensor([0.0, 3.0, 2.0, 0.0])
    s2 = torch.tensor([0.0, 3.0, 2.0, 2.0])  # B=3: entry 1 has g_i = 1,1,1; entry 2 has g=(1,1,0)...
    snr = snr_from_moments(s1, s2, 3)
    assert snr[0] == 0.0  # no signal at all (dead unit)
    assert snr[1] == SNR_CAP  # all individual gradients equal and non-zero
    # entry 2: mean 2/3, unbiased var ((1/3)^2*2 + (2/3)^2)/2 = 1/3, snr = 3 * (4/9) / (1/3) = 4
    torch.testing.assert_close(snr[2], torch.tensor(4.0))
    assert snr[3] == 0.0  # zero mean, non-zero variance
    assert torch.isfinite(snr).all()
    # zero variance with a tiny but non-zero mean is still "all gradients agree": the cap
    tiny = snr_from_moments(torch.tensor([3e-20]), torch.tensor([3e-40]), 3)
    assert tiny[0] == SNR_CAP


def test_dead_unit_gets_zero_snr():
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    with torch.no_grad():
        model[0].weight[1].zero_()
        model[0].bias[1] = -1.0  # unit 1 never fires: its outgoing weights get exactly zero gradient
    stats = GradientStats(model)
    F.cross_entropy(model(torch.randn(8, 3)), torch.randint(0, 2, (8,))).backward()
    snr = stats.snr()
    assert torch.all(snr["2.weight"][:, 1] == 0)


def test_float32_matches_float64():
    torch.manual_seed(10)
    model64 = nn.Sequential(nn.Conv2d(2, 3, 3), nn.ReLU(), nn.Flatten(), nn.Linear(3 * 4 * 4, 2))
    model32 = nn.Sequential(nn.Conv2d(2, 3, 3), nn.ReLU(), nn.Flatten(), nn.Linear(3 * 4 * 4, 2)).float()
    model32.load_state_dict({k: v.float() for k, v in model64.state_dict().items()})
    x, y = torch.randn(6, 2, 6, 6), torch.randint(0, 2, (6,))
    m64, _ = collect(model64, x, y)
    m32, _ = collect(model32, x.float(), y)
    for name in m64:
        assert m32[name][1].dtype == torch.float32
        torch.testing.assert_close(m32[name][0].double(), m64[name][0], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(m32[name][1].double(), m64[name][1], rtol=1e-5, atol=1e-6)


def test_inplace_relu_after_linear():
    """A hook on the layer output must see the gradient of the output before the in-place op."""
    torch.manual_seed(11)
    model = nn.Sequential(nn.Linear(4, 5), nn.ReLU(inplace=True), nn.Linear(5, 2))
    x, y = torch.randn(6, 4), torch.randint(0, 2, (6,))
    moments, _ = collect(model, x, y)
    assert_matches(moments, naive_moments(model, x, y), 6)


def test_disabled_stats_attach_no_hooks_and_collect_nothing():
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    stats = GradientStats(model, enabled=False)
    assert all(not m._forward_hooks for m in model.modules())
    assert all(not p._backward_hooks for p in model.parameters())
    F.cross_entropy(model(torch.randn(4, 3)), torch.randint(0, 2, (4,))).backward()
    assert stats.count == 0
    stats.enabled = True
    assert model[0]._forward_hooks
    stats.remove()
    assert all(not m._forward_hooks for m in model.modules())


def test_eval_forward_without_grad_is_ignored():
    model = nn.Linear(3, 2)
    stats = GradientStats(model)
    with torch.no_grad():
        model(torch.randn(4, 3))
    assert stats.count == 0


def test_include_exclude_filters():
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    assert [layer.name for layer in GradientStats(model, include=["2"]).layers] == ["2.weight"]
    assert [layer.name for layer in GradientStats(model, exclude=["0"]).layers] == ["2.weight"]
    assert [layer.name for layer in GradientStats(model, exclude=lambda n: n == "2").layers] == ["0.weight"]
    with pytest.raises(ValueError, match="no prunable layer"):
        GradientStats(model, include=["nothing*"])
    with pytest.raises(TypeError, match="list of glob patterns"):
        GradientStats(model, include="0")


class Branchy(nn.Module):
    """A branch that runs only when asked: its weight gets no statistics on the other steps."""

    def __init__(self):
        super().__init__()
        self.trunk = nn.Linear(4, 5)
        self.branch = nn.Linear(5, 5)
        self.head = nn.Linear(5, 3)

    def forward(self, x, take=True):
        h = torch.tanh(self.trunk(x))
        return self.head(torch.tanh(self.branch(h)) if take else h)


def test_a_weight_without_statistics_on_a_step_counts_as_a_zero_gradient_and_is_named_once():
    torch.manual_seed(12)
    model = Branchy()
    x, y = torch.randn(6, 4), torch.randint(0, 3, (6,))
    stats = GradientStats(model)
    F.cross_entropy(model(x, take=False), y, reduction="sum").backward()
    with pytest.warns(UserWarning, match=r"no gradient statistics reached branch\.weight on this step .* zero gradient"):
        moments = stats.moments()
    branch = moments["branch.weight"]
    assert branch.count == 6 and not branch.sum.any() and not branch.sum_sq.any()
    assert not stats.snr()["branch.weight"].any()  # SNR 0: no signal
    assert moments["trunk.weight"].count == 6
    stats.reset()
    model.zero_grad()
    F.cross_entropy(model(x, take=False), y, reduction="sum").backward()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # once per weight
        stats.moments()


def test_a_weight_missing_from_one_micro_batch_has_zero_gradients_for_its_samples():
    """Gradient accumulation: the branch runs on the first micro-batch only; B is still all 10 samples."""
    torch.manual_seed(13)
    model = Branchy()
    x, y = torch.randn(10, 4), torch.randint(0, 3, (10,))
    stats = GradientStats(model)
    F.cross_entropy(model(x[:4]), y[:4], reduction="sum").backward()
    F.cross_entropy(model(x[4:], take=False), y[4:], reduction="sum").backward()
    moments = {n: (m.sum.clone(), m.sum_sq.clone(), m.count) for n, m in stats.moments().items()}
    stats.remove()
    oracle = naive_moments(model, x[:4], y[:4])  # the other 6 samples add zeros
    assert moments["branch.weight"][2] == 10 and moments["trunk.weight"][2] == 10
    torch.testing.assert_close(moments["branch.weight"][0], oracle["branch.weight"][0], rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(moments["branch.weight"][1], oracle["branch.weight"][1], rtol=1e-10, atol=1e-12)


def test_a_weight_used_outside_its_modules_forward_is_an_error_naming_it():
    """The weight's gradient arrives, its per-sample terms cannot: never a silent SNR."""

    class Bypass(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 3)
            self.out = nn.Linear(3, 2)

        def forward(self, x):
            return self.out(F.linear(x, self.fc.weight, self.fc.bias))  # fc.forward never runs

    model = Bypass()
    stats = GradientStats(model)
    with pytest.raises(NotExact, match=r"fc\.weight received a gradient but no per-sample statistics.*outside the forward of fc.*dpf or snr-auto"):
        model(torch.randn(5, 4)).sum().backward()
    stats.remove()


def test_a_loss_term_on_the_weight_itself_is_named_once():
    """An L2 penalty enters the gradient but no sample's term: the first backward says so."""
    torch.manual_seed(14)
    model = nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3))
    x, y = torch.randn(6, 4), torch.randint(0, 3, (6,))
    stats = GradientStats(model)
    with pytest.warns(UserWarning, match=r"per-sample gradients of 0\.weight do not add up to its gradient.*weight_decay"):
        (F.cross_entropy(model(x), y) + 0.1 * model[0].weight.square().sum()).backward()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        stats.reset()
        model.zero_grad()
        F.cross_entropy(model(x), y).backward()  # checked once per weight; without the penalty it adds up anyway
        stats.moments()


def _distributed_worker(rank, world, port, x, y, state, result):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    torch.set_default_dtype(torch.float64)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2))
    model.load_state_dict(state)
    stats = GradientStats(model)
    part = slice(rank * 3, rank * 3 + 3 + rank)  # ranks see 3 and 4 samples
    F.cross_entropy(model(x[part]), y[part], reduction="sum").backward()
    stats.all_reduce()
    result[rank] = {n: (m.sum.clone(), m.sum_sq.clone(), m.count) for n, m in stats.moments().items()}
    dist.destroy_process_group()


def test_all_reduce_gives_the_global_batch_statistics():
    """Two gloo processes with 3 and 4 samples see the moments of the 7-sample batch."""
    import socket

    import torch.multiprocessing as mp

    torch.manual_seed(12)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2))
    x, y = torch.randn(7, 3), torch.randint(0, 2, (7,))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with mp.Manager() as manager:
        result = manager.dict()
        mp.spawn(_distributed_worker, args=(2, port, x, y, model.state_dict(), result), nprocs=2)
        per_rank = dict(result)
    oracle = naive_moments(model, x, y)
    for rank in (0, 1):
        assert_matches(per_rank[rank], oracle, 7)


@pytest.mark.parametrize("side", [6, 16])  # shifted-input path, grouped-convolution path
def test_chunked_per_sample_gradients_are_exact(monkeypatch, side):
    """A tiny memory budget forces one sample per chunk on every path: same sums."""
    import snrprune.layers

    torch.manual_seed(13)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * side * side, 2))
    seq = SeqModel()
    x, y = torch.randn(5, 3, side, side), torch.randint(0, 2, (5,))
    xs, ys = torch.randn(5, 7, 4), torch.randint(0, 3, (5,))
    monkeypatch.setattr(snrprune.layers, "PER_SAMPLE_BUDGET", 1)
    moments, _ = collect(model, x, y)
    assert_matches(moments, naive_moments(model, x, y), 5)
    moments, _ = collect(seq, xs, ys)
    assert_matches(moments, naive_moments(seq, xs, ys), 5)
