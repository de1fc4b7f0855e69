"""Scale-out: gradient accumulation, mixed precision and data parallelism against one-process, one-batch oracles."""

from __future__ import annotations

import json
import os
import socket

import pytest
import torch
import torch.nn.functional as F

from snrprune import DPFPruning, GradientStats, SNRAutoPruning, SNRPruning
from snrprune.training import TrainConfig, TrainingError, train
from test_pruners import make_batches as batches
from test_pruners import small_mlp as mlp


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def moments_of(stats):
    return {n: (m.sum.clone(), m.sum_sq.clone(), m.count) for n, m in stats.moments().items()}


def assert_same_state(a, b, exact=False, rtol=1e-5, atol=1e-6):
    """a, b: (masks, dense weights, snr_ema) dicts; masks always exactly equal."""
    for name in a[0]:
        assert torch.equal(a[0][name], b[0][name]), name
        for part in (1, 2):
            if name in a[part]:
                if exact:
                    assert torch.equal(a[part][name], b[part][name]), name
                else:
                    torch.testing.assert_close(a[part][name], b[part][name], rtol=rtol, atol=atol)


def state_of(pruning):
    """Masks, dense weights, and the method's own statistics: SNR's averages, snr-auto's window sums per class."""
    own = getattr(pruning, "snr_ema", None)
    if own is None:
        own = {n: pair[0] for n, pair in getattr(pruning, "window", {}).items()}
    return (
        {n: m.clone() for n, m in pruning.masks.items()},
        {n: t.clone() for n, t in pruning.dense.items()},
        {n: t.clone() for n, t in own.items()},
    )


# -- gradient accumulation and skipped steps ----------------------------------------------------


def test_sums_follow_the_gradient_accumulation():
    """Two backward calls add up; after zero_grad a backward call starts afresh (a skipped step's sums go)."""
    model = mlp()
    (xa, ya), (xb, yb) = batches(2, batch=8)
    stats = GradientStats(model)
    F.cross_entropy(model(xa), ya, reduction="sum").backward()
    F.cross_entropy(model(xb), yb, reduction="sum").backward()
    both = moments_of(stats)

    model2 = mlp()
    stats2 = GradientStats(model2)
    F.cross_entropy(model2(torch.cat([xa, xb])), torch.cat([ya, yb]), reduction="sum").backward()
    for name, (s1, s2, count) in moments_of(stats2).items():
        assert both[name][2] == count == 16
        torch.testing.assert_close(both[name][0], s1)
        torch.testing.assert_close(both[name][1], s2)

    model.zero_grad(set_to_none=True)  # the step never came: the next backward must not add to these sums
    F.cross_entropy(model(xb), yb, reduction="sum").backward()
    only_b = moments_of(stats)
    stats3 = GradientStats(model3 := mlp())
    F.cross_entropy(model3(xb), yb, reduction="sum").backward()
    for name, (s1, s2, count) in moments_of(stats3).items():
        assert only_b[name][2] == count == 8
        assert torch.equal(only_b[name][0], s1) and torch.equal(only_b[name][1], s2)


def run_snr(data, accumulate=1, lr=0.2, steps_hook=None):
    model = mlp()
    pruning = SNRPruning(model, burn_in_steps=2)
    optimizer = pruning.wrap(torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9))
    for x, y in data:
        optimizer.zero_grad(set_to_none=True)
        for xk, yk in zip(x.chunk(accumulate), y.chunk(accumulate)):
            (F.cross_entropy(model(xk), yk) / accumulate).backward()  # every g_i scaled by 1/batch
        optimizer.step()
    return pruning


def test_accumulation_equals_one_big_batch(float64_default):
    data = batches(8, batch=16)
    big, accumulated = run_snr(data), run_snr(data, accumulate=4)
    assert accumulated.stats.count == 0 and big.sparsity() > 0
    assert_same_state(state_of(accumulated), state_of(big), rtol=1e-10, atol=1e-12)


def test_grad_scaler_skipped_step_changes_nothing():
    """A forced overflow: GradScaler skips the step, the statistics and masks go on as if the batch never came."""
    data = batches(8, batch=16)

    def run(skip, overflow):
        model = mlp()
        pruning = SNRPruning(model, burn_in_steps=2)
        optimizer = pruning.wrap(torch.optim.SGD(model.parameters(), lr=0.2, momentum=0.9))
        scaler = torch.amp.GradScaler("cpu")
        for i, (x, y) in enumerate(data):
            if i == skip and not overflow:
                continue  # the oracle never sees the batch
            optimizer.zero_grad(set_to_none=True)
            loss = F.cross_entropy(model(x), y)
            if i == skip:
                loss = loss * float("inf")  # inf/NaN gradients in every layer
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        return pruning, scaler.get_scale()

    skipped, scale = run(4, overflow=True)
    oracle, oracle_scale = run(4, overflow=False)
    assert scale == oracle_scale / 2  # the step really was skipped (the scale backed off)
    assert skipped.step_count == oracle.step_count == len(data) - 1
    assert skipped.sparsity() > 0
    # scales are powers of two, so the scaled sums and the SNR are exactly those of the oracle
    assert_same_state(state_of(skipped), state_of(oracle), exact=True)


def test_bf16_autocast_statistics_are_float32():
    model = mlp()
    stats = GradientStats(model)
    x, y = batches(1, batch=16)[0]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = F.cross_entropy(model(x), y, reduction="sum")
    loss.backward()
    moments = stats.moments()
    stats.remove()
    params = dict(model.named_parameters())
    per_sample = {n: [] for n in params if n.endswith("weight")}
    for i in range(len(x)):  # the definition: one backward per sample, under the same autocast
        model.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            one = F.cross_entropy(model(x[i : i + 1]), y[i : i + 1], reduction="sum")
        one.backward()
        for n in per_sample:
            per_sample[n].append(params[n].grad.double())
    for name, m in moments.items():
        assert m.sum.dtype == m.sum_sq.dtype == torch.float32 and m.count == 16
        g = torch.stack(per_sample[name])
        torch.testing.assert_close(m.sum.double(), g.sum(0), rtol=0.02, atol=1e-3)
        torch.testing.assert_close(m.sum_sq.double(), g.square().sum(0), rtol=0.02, atol=1e-4)


# -- data parallel: two gloo processes ------------------------------------------------------------


def _ddp_worker(rank, world, port, data, result):
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    calls = {"n": 0}
    real_all_reduce = dist.all_reduce

    def counting_all_reduce(*args, **kwargs):
        calls["n"] += 1
        return real_all_reduce(*args, **kwargs)

    dist.all_reduce = counting_all_reduce  # DDP's own gradient reduction does not come through here
    group = dist.new_group([0, 1])
    out = {}
    for method in ("snr", "dpf", "snr-auto"):
        calls["n"] = 0
        inner = mlp()
        model = DistributedDataParallel(inner)
        pruning = make_pruning(method, inner, len(data), process_group=group)
        optimizer = pruning.wrap(torch.optim.SGD(model.parameters(), lr=0.2, momentum=0.9))
        share = len(data[0][0]) // world
        for x, y in data:
            x, y = x[rank * share : (rank + 1) * share], y[rank * share : (rank + 1) * share]
            optimizer.zero_grad(set_to_none=True)
            parts = list(zip(x.chunk(2), y.chunk(2)))
            for k, (xk, yk) in enumerate(parts):  # accumulation: gradients synchronised on the last only
                with model.no_sync() if k == 0 else torch.enable_grad():
                    (F.cross_entropy(model(xk), yk) / 2).backward()
            optimizer.step()
        out[method] = (state_of(pruning), calls["n"], getattr(pruning, "window_band", None))
    dist.all_reduce = real_all_reduce
    result[rank] = out
    dist.destroy_process_group()


def make_pruning(method, model, steps, process_group=None):
    if method == "snr":
        return SNRPruning(model, burn_in_steps=2, stats_every=2, process_group=process_group)
    if method == "dpf":
        return DPFPruning(model, target_sparsity=0.6, total_steps=steps, update_every=2)
    return SNRAutoPruning(model, window_steps=6, update_every=2)  # one decision, then a window under way


def test_two_processes_equal_one_process_on_the_global_batch():
    """SNR, DPF and snr-auto under DDP with accumulation: identical on both ranks, equal to one process on the whole batch."""
    import torch.multiprocessing as mp

    data = batches(8, batch=16)
    with mp.Manager() as manager:
        result = manager.dict()
        mp.spawn(_ddp_worker, args=(2, free_port(), data, result), nprocs=2)
        per_rank = dict(result)
    single = {}
    for method in ("snr", "dpf", "snr-auto"):
        ranks = [per_rank[r][method][0] for r in (0, 1)]
        assert_same_state(ranks[0], ranks[1], exact=True)
        model = mlp()
        pruning = single[method] = make_pruning(method, model, len(data))
        optimizer = pruning.wrap(torch.optim.SGD(model.parameters(), lr=0.2, momentum=0.9))
        for x, y in data:
            optimizer.zero_grad(set_to_none=True)
            F.cross_entropy(model(x), y).backward()
            optimizer.step()
        assert pruning.sparsity() > 0 or method == "snr-auto"  # snr-auto prunes only on evidence
        assert_same_state(ranks[0], state_of(pruning))
    # snr-auto: the same noise band on both ranks and in one process (the same signs, the same gradients)
    bands = [per_rank[r]["snr-auto"][2]["*"] for r in (0, 1)]
    assert bands[0] == bands[1] and bands[0] == pytest.approx(single["snr-auto"].window_band["*"], rel=1e-4)
    # one all-reduce per statistics step (steps 0, 2, 4, 6 of 8), none otherwise; DPF and snr-auto have no statistics
    assert per_rank[0]["snr"][1] == per_rank[1]["snr"][1] == 4
    assert per_rank[0]["dpf"][1] == per_rank[0]["snr-auto"][1] == 0


def tiny(**changes) -> TrainConfig:
    values = dict(dataset="digits", model="mlp", method="snr", model_options={"widths": [32]}, epochs=2, batch_size=64, lr=0.05, burn_in_epochs=0.5)
    values.update(changes)
    return TrainConfig(**values)


def _train_worker(rank, world, port, root):
    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
    import torch.distributed as dist

    dist.init_process_group("gloo")  # as torchrun would leave it for train()
    train(tiny(accumulate=2), root / "full", progress=False)
    stopped = train(tiny(accumulate=2), root / "part", progress=False, stop_after_epochs=1)
    assert stopped["finished"] is False
    train(None, root / "part", resume=True, progress=False)
    dist.destroy_process_group()


def test_train_with_two_processes_matches_one_and_resumes(tmp_path):
    import torch.multiprocessing as mp

    mp.spawn(_train_worker, args=(2, free_port(), tmp_path), nprocs=2)
    for name in ("config.json", "summary.json"):
        assert json.loads((tmp_path / "full" / name).read_text())["world_size"] == 2
    full = torch.load(tmp_path / "full" / "model.pt", weights_only=True)
    part = torch.load(tmp_path / "part" / "model.pt", weights_only=True)
    assert all(torch.equal(full[k], part[k]) for k in full)  # killed and resumed = uninterrupted

    single = train(tiny(), tmp_path / "one", progress=False)  # one process, no accumulation
    one = torch.load(tmp_path / "one" / "model.pt", weights_only=True)
    assert single["sparsity"] > 0
    for k in one:
        assert torch.equal(one[k] == 0, full[k] == 0), k  # the same weights pruned
        torch.testing.assert_close(full[k], one[k], rtol=1e-4, atol=1e-5)
    metrics = [json.loads(line) for line in (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()]
    assert metrics[-1]["train_loss"] == pytest.approx(single["train_loss"], rel=1e-4)

    (tmp_path / "part" / "summary.json").unlink()  # as if killed before its end
    with pytest.raises(TrainingError, match=r"trained by 2 process\(es\) and this launch has 1.*nproc_per_node=2"):
        train(None, tmp_path / "part", resume=True, progress=False)


def test_config_errors(tmp_path):
    with pytest.raises(ValueError, match="must be divisible by accumulate x processes = 3 x 1"):
        tiny(accumulate=3).resolved()
    with pytest.raises(ValueError, match="unknown amp 'fp8'"):
        tiny(amp="fp8").resolved()
    with pytest.raises(TrainingError, match="world_size 2 but 1 process"):
        train(tiny(world_size=2), tmp_path, progress=False)


@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_mixed_precision_runs_and_resumes(tmp_path, amp):
    config = tiny(amp=amp, epochs=2)
    summary = train(config, tmp_path / "full", progress=False)
    assert summary["finished"] and summary["test_accuracy"] > 0.5 and summary["sparsity"] > 0
    train(config, tmp_path / "part", progress=False, stop_after_epochs=1)
    train(None, tmp_path / "part", resume=True, progress=False)
    a, b = (torch.load(tmp_path / d / "model.pt", weights_only=True) for d in ("full", "part"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_torchrun_cli(tmp_path):
    """The documented launch: torchrun, two processes, one of them printing and writing."""
    import subprocess
    import sys

    import snrprune

    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.path.dirname(os.path.dirname(snrprune.__file__)))
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1", f"--master_port={free_port()}",
        "-m", "snrprune", "train", "--dataset", "digits", "--model", "mlp", "--model-option", "widths=[16]",
        "--batch-size", "64", "--epochs", "1", "--accumulate", "2", "--quiet", "--out", str(tmp_path / "run"),
    ]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("output:") == 1 and done.stdout.count("test accuracy") == 1
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["world_size"] == 2 and config["accumulate"] == 2


def test_cli_needs_out_with_several_processes(monkeypatch, capsys):
    from snrprune.cli import main

    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--dataset", "digits", "--model", "mlp", "--quiet"])
    assert exit_info.value.code == 2 and "pass --out DIR" in capsys.readouterr().err
