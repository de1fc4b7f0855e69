"""Data-parallel SNR pruning: 1 vs N gloo processes on one machine, and what the statistics add to the traffic.

For each model and process count the global batch stays the same (as with ``snrprune train``: every
process takes batch / N samples), so the table shows how a step's time scales. Per variant it
reports optimizer steps per second (every process does each step), the time spent in the one
all-reduce of the gradient statistics per step, and the bytes it moves as a fraction of the gradient
all-reduce DDP does anyway (2 floats per prunable weight + one count per layer, against one float
per parameter). Processes talk over gloo on 127.0.0.1; each gets cores / N threads.

    python benchmarks/distributed.py                                   # LeNet-5 and ResNet-20, 1 and 2 processes
    python benchmarks/distributed.py --models lenet5 --steps 3 --warmup 1 --batch 16   # smoke test
"""

from __future__ import annotations

import argparse
import os
import platform
import socket
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

import snrprune
from snrprune.models import build_model
from snrprune.statistics import GradientStats

SHAPES = {"lenet300": (1, 28, 28), "lenet5": (1, 28, 28), "resnet20": (3, 32, 32)}
VARIANTS = ("training", "training + snr")  # DDP when processes > 1


def _worker(rank: int, world: int, port: int, args: argparse.Namespace, variant: str, results: dict) -> None:
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))
    if world > 1:
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    torch.manual_seed(0)
    shape = SHAPES[args.model]
    model = build_model(args.model, shape, 10)
    net = torch.nn.parallel.DistributedDataParallel(model) if world > 1 else model
    optimizer = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
    reduce_seconds = [0.0]
    if variant == "training + snr":
        pruning = snrprune.SNRPruning(model, burn_in_steps=0)
        optimizer = pruning.wrap(optimizer)
        stats = pruning.stats
        real = stats.all_reduce

        def timed_all_reduce(*a, **k):
            t0 = time.perf_counter()
            real(*a, **k)
            reduce_seconds[0] += time.perf_counter() - t0

        stats.all_reduce = timed_all_reduce
    local = args.batch // world
    g = torch.Generator().manual_seed(rank)
    pool = [(torch.randn(local, *shape, generator=g), torch.randint(0, 10, (local,), generator=g)) for _ in range(4)]

    def step(i: int) -> None:
        x, y = pool[i % len(pool)]
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(net(x), y).backward()
        optimizer.step()

    for i in range(args.warmup):
        step(i)
    if world > 1:
        dist.barrier()
    reduce_seconds[0] = 0.0
    t0 = time.perf_counter()
    for i in range(args.steps):
        step(i)
    seconds = time.perf_counter() - t0
    if rank == 0:
        results[variant] = {"steps_per_s": args.steps / seconds, "reduce_ms": 1e3 * reduce_seconds[0] / args.steps}
    if world > 1:
        dist.destroy_process_group()


def traffic(model_name: str) -> tuple[int, int]:
    """(bytes of the statistics all-reduce, bytes of DDP's gradient all-reduce) per step, float32."""
    model = build_model(model_name, SHAPES[model_name], 10)
    layers = GradientStats(model, enabled=False).layers
    stats = 4 * (2 * sum(layer.weight.numel() for layer in layers) + len(layers))
    grads = 4 * sum(p.numel() for p in model.parameters() if p.requires_grad)
    return stats, grads


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["lenet5", "resnet20"], choices=sorted(SHAPES))
    parser.add_argument("--procs", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--batch", type=int, default=128, help="global batch per step (default 128)")
    parser.add_argument("--steps", type=int, default=30, help="timed steps per variant (default 30)")
    parser.add_argument("--warmup", type=int, default=3)
    args = parser.parse_args()

    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
          f"global batch {args.batch}, {args.steps} timed steps, gloo on 127.0.0.1\n")
    print("| model | processes | variant | steps/s | stats all-reduce ms/step | stats bytes / DDP grad bytes |")
    print("|---|---|---|---|---|---|")
    for model_name in args.models:
        stats_bytes, grad_bytes = traffic(model_name)
        for world in args.procs:
            if args.batch % world:
                raise SystemExit(f"--batch {args.batch} does not split over {world} processes")
            for variant in VARIANTS:
                with socket.socket() as s:
                    s.bind(("127.0.0.1", 0))
                    port = s.getsockname()[1]
                run_args = argparse.Namespace(**vars(args), model=model_name)
                with mp.Manager() as manager:
                    results = manager.dict()
                    mp.spawn(_worker, args=(world, port, run_args, variant, results), nprocs=world)
                    r = dict(results)[variant]
                share = f"{stats_bytes:,} / {grad_bytes:,} = {stats_bytes / grad_bytes:.2f}" if variant != "training" else ""
                reduce_ms = f"{r['reduce_ms']:.2f}" if variant != "training" and world > 1 else ""
                print(f"| {model_name} | {world} | {variant} | {r['steps_per_s']:.2f} | {reduce_ms} | {share} |", flush=True)


if __name__ == "__main__":
    main()
