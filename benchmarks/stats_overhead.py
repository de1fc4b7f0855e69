"""Cost of SNR pruning relative to plain training, measured side by side in one process.

For each model (batch 128, CPU) one training step of every variant is timed in turn, round after
round, so that drifts of the machine hit all variants alike; the table reports median step time
ratios against the plain step. Peak memory is the growth of the process's peak RSS over its
baseline, measured in a fresh subprocess per variant.

    python benchmarks/stats_overhead.py                 # full run, prints a markdown table
    python benchmarks/stats_overhead.py --rounds 5      # quick look
    python benchmarks/stats_overhead.py --device cuda   # on a GPU: steps timed between synchronizations,
                                                        # memory as the peak of torch's CUDA allocator
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import time

import torch
import torch.nn.functional as F

import snrprune
from snrprune import fused
from snrprune.models import build_model
from snrprune.training import _check_device as check_device

MODELS = {"lenet300": (1, 28, 28), "lenet5": (1, 28, 28), "resnet20": (3, 32, 32)}

# name -> how to build the pruning object (None: plain training, no snrprune at all)
VARIANTS = {
    "plain": None,
    "dense": lambda m: snrprune.NoPruning(m),
    "snr stats/1 (burn-in)": lambda m: snrprune.SNRPruning(m, burn_in_steps=10**9, stats_every=1),
    "snr stats/4 (burn-in)": lambda m: snrprune.SNRPruning(m, burn_in_steps=10**9, stats_every=4),
    "snr stats/1 (pruning)": lambda m: snrprune.SNRPruning(m, burn_in_steps=0, stats_every=1),
    "snr stats/1 (pruning, eager)": lambda m: snrprune.SNRPruning(m, burn_in_steps=0, stats_every=1),
    "snr stats/4 (pruning)": lambda m: snrprune.SNRPruning(m, burn_in_steps=0, stats_every=4),
    "snr stats/4 masks/1": lambda m: snrprune.SNRPruning(m, burn_in_steps=0, stats_every=4, update_every=1),
    "dpf (masks/16)": lambda m: snrprune.DPFPruning(m, target_sparsity=0.9, total_steps=100, end_fraction=0.1),
    "snr-auto (masks/16)": lambda m: _snr_auto_at(m, density=0.1),
}


def _snr_auto_at(model: torch.nn.Module, density: float) -> snrprune.SNRAutoPruning:
    """snr-auto mid-window at a given density: its per-step cost is the window sums plus masks every 16 steps."""
    pruning = snrprune.SNRAutoPruning(model, window_steps=10**9)
    pruning.density = {pruning.GLOBAL: density}
    return pruning

#: Variants that run without the fused CPU kernels (snrprune.fused), for the side-by-side comparison.
EAGER = {"snr stats/1 (pruning, eager)"}


def make_step(model_name: str, variant: str, batch: int = 128, seed: int = 0, device: str = "cpu"):
    """A closure running one training step on a cycling pool of synthetic batches."""
    torch.manual_seed(seed)
    shape = MODELS[model_name]
    model = build_model(model_name, shape, 10).to(device)
    make_pruning = VARIANTS[variant]
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    if make_pruning is not None:
        optimizer = make_pruning(model).wrap(optimizer)
    g = torch.Generator().manual_seed(seed)
    pool = [(torch.randn(batch, *shape, generator=g).to(device), torch.randint(0, 10, (batch,), generator=g).to(device)) for _ in range(8)]
    state = {"i": 0}

    def step() -> None:
        x, y = pool[state["i"] % len(pool)]
        state["i"] += 1
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        optimizer.step()

    if variant not in EAGER:
        return step

    def eager_step() -> None:
        built = fused.kernels
        fused.kernels = lambda: None  # fused.usable() is then False: the eager code runs
        try:
            step()
        finally:
            fused.kernels = built

    return eager_step


def _sync(device: str) -> None:
    if torch.device(device).type != "cpu":
        torch.accelerator.synchronize(device)


def time_model(model_name: str, rounds: int, warmup: int, device: str = "cpu") -> dict[str, float]:
    steps = {v: make_step(model_name, v, device=device) for v in VARIANTS}
    for step in steps.values():
        for _ in range(warmup):
            step()
    times: dict[str, list[float]] = {v: [] for v in VARIANTS}
    for _ in range(rounds):
        for variant, step in steps.items():
            _sync(device)
            start = time.perf_counter()
            step()
            _sync(device)
            times[variant].append(time.perf_counter() - start)
    return {v: statistics.median(t) for v, t in times.items()}


def _rss_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def peak_memory_child(model_name: str, variant: str, steps: int, device: str = "cpu") -> None:
    """Runs in a subprocess: prints the peak-RSS growth (bytes) caused by building and training.

    The baseline is the resident size after the imports; the kernel's high-water mark is reset
    there (``/proc/self/clear_refs``) so that the import's own peak does not hide the training's.
    On a GPU: the peak of torch's CUDA allocator instead (it starts empty).
    """
    if torch.device(device).type == "cuda":
        step = make_step(model_name, variant, device=device)
        for _ in range(steps):
            step()
        print(json.dumps(torch.cuda.max_memory_allocated(device)))
        return
    base = _rss_kib("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    step = make_step(model_name, variant)
    for _ in range(steps):
        step()
    print(json.dumps((_rss_kib("VmHWM") - base) * 1024))


def peak_memory(model_name: str, variant: str, steps: int = 12, device: str = "cpu") -> int:
    out = subprocess.run(
        [sys.executable, __file__, "--memory-child", model_name, variant, str(steps), "--device", device],
        check=True, capture_output=True, text=True,
    )
    return int(json.loads(out.stdout.strip().splitlines()[-1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=40, help="timed steps per variant (default 40)")
    parser.add_argument("--warmup", type=int, default=10, help="untimed steps per variant first (default 10)")
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory subprocesses")
    parser.add_argument("--device", default="cpu", help="where the steps run, e.g. cuda (default cpu; the fused kernels are CPU-only)")
    parser.add_argument("--memory-child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_child:
        peak_memory_child(args.memory_child[0], args.memory_child[1], int(args.memory_child[2]), args.device)
        return
    try:
        check_device(args.device)
    except ValueError as error:
        parser.error(str(error))
    on_gpu = torch.device(args.device).type == "cuda"
    where = torch.cuda.get_device_name(args.device) if on_gpu else (platform.processor() or platform.machine())
    kernels = "not used (GPU)" if on_gpu else ("built" if fused.kernels() is not None else "unavailable")
    print(f"# stats_overhead: torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"fused kernels {kernels}, {where}, batch 128, {args.rounds} rounds\n")
    print("Step time / plain step time (median of interleaved rounds).\n")
    print("| variant | " + " | ".join(args.models) + " |")
    print("|---|" + "---|" * len(args.models))
    timing = {m: time_model(m, args.rounds, args.warmup, args.device) for m in args.models}
    for variant in VARIANTS:
        print(f"| {variant} | " + " | ".join(f"{timing[m][variant] / timing[m]['plain']:.2f}x" for m in args.models) + " |")
    print("\nplain step: " + ", ".join(f"{m} {timing[m]['plain'] * 1e3:.2f} ms" for m in args.models))
    if args.no_memory:
        return
    what = "peak CUDA memory allocated" if on_gpu else "peak memory growth over the imports"
    print(f"\n{what.capitalize()} / plain training's (fresh process per variant, 12 steps).\n")
    print("| variant | " + " | ".join(args.models) + " |")
    print("|---|" + "---|" * len(args.models))
    memory = {m: {v: peak_memory(m, v, device=args.device) for v in VARIANTS} for m in args.models}
    for variant in VARIANTS:
        print(f"| {variant} | " + " | ".join(f"{memory[m][variant] / memory[m]['plain']:.2f}x" for m in args.models) + " |")
    print(f"\nplain {what}: " + ", ".join(f"{m} {memory[m]['plain'] / 2**20:.1f} MiB" for m in args.models))


if __name__ == "__main__":
    main()
