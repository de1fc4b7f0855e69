"""What one snr-auto decision costs, next to a plain training step, measured in one process.

``stats_overhead.py`` reports median step times, which leave out the decision that ends each window
(the noise band: 32 sign-flipped copies of the window's class sums, over all prunable weights). This
times that decision and the plain step of the same model side by side, and prints the decision's
share of a step when it is spread over the windows of the suite's image cells (half an epoch of
MNIST or Fashion-MNIST at batch 128: 195 or 234 steps; one epoch: twice that).

    python benchmarks/snr_auto_decision.py            # prints a markdown table
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch
import torch.nn.functional as F

import snrprune
from snrprune.models import build_model

MODELS = {"lenet300": ((1, 28, 28), 195), "lenet5": ((1, 28, 28), 195), "resnet20": ((1, 28, 28), 234)}


def measure(model_name: str, rounds: int, batch: int = 128) -> tuple[float, float]:
    """Median seconds of one plain step and of one decision (``evidence`` on a filled window), interleaved."""
    torch.manual_seed(0)
    shape, _ = MODELS[model_name]
    model = build_model(model_name, shape, 10)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    pruning = snrprune.SNRAutoPruning(model, window_steps=10**9)  # no decision inside the steps
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(batch, *shape, generator=g), torch.randint(0, 10, (batch,), generator=g)

    def plain_step() -> None:
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        optimizer.step()

    for _ in range(20):  # fill the window sums with real gradients
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(model(x + 0.1 * torch.randn(x.shape, generator=g)), y).backward()
        pruning.observe_gradients()
    step_times, decision_times = [], []
    for _ in range(rounds):
        start = time.perf_counter()
        plain_step()
        step_times.append(time.perf_counter() - start)
        start = time.perf_counter()
        pruning.evidence(pruning.GLOBAL)
        decision_times.append(time.perf_counter() - start)
    return statistics.median(step_times), statistics.median(decision_times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=11, help="interleaved rounds per model (default 11)")
    args = parser.parse_args()
    print(f"# snr_auto_decision: torch {torch.__version__}, {torch.get_num_threads()} threads, {platform.machine()}, batch 128, {args.rounds} rounds\n")
    print("| model | plain step | one decision | decision / plain step | share of a step, half-epoch windows | one-epoch windows |")
    print("|---|---|---|---|---|---|")
    for name, (_, half_epoch) in MODELS.items():
        step, decision = measure(name, args.rounds)
        ratio = decision / step
        print(f"| {name} | {step * 1e3:.2f} ms | {decision * 1e3:.1f} ms | {ratio:.1f}x | "
              f"+{100 * ratio / half_epoch:.1f}% ({half_epoch} steps) | +{100 * ratio / (2 * half_epoch):.1f}% |")


if __name__ == "__main__":
    main()
