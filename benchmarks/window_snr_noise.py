"""How wide is snr-auto's noise band really? The window SNR of a network whose gradients are pure noise.

Labels drawn from the model's own softmax make the expected gradient of the loss exactly zero for
every weight (the score-function identity), so every weight's window SNR z is noise only. The
weights are held fixed (lr 0) over a window of T steps of fresh random inputs; the script prints the
mean z of all weights for several seeds next to the noise mean of F(1, T - 1) and the half-width of
the band `SNRAutoPruning` uses, which treats the weights as independent. They are not: all weights
see the same batches, so the mean z varies from seed to seed far more than that band says.

    python benchmarks/window_snr_noise.py [--steps 60] [--seeds 8]
"""

import argparse
import math

import torch
import torch.nn.functional as F
from torch import nn

from snrprune import SNRAutoPruning
from snrprune.pruners.snr_auto import noise_moments


def mean_window_snr(batchnorm: bool, steps: int, seed: int, batch: int = 32) -> tuple[float, int]:
    torch.manual_seed(seed)
    layers = [nn.Conv2d(1, 8, 3), *([nn.BatchNorm2d(8)] if batchnorm else []), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 6 * 6, 5)]
    model = nn.Sequential(*layers)
    pruning = SNRAutoPruning(model, window_steps=10**9)
    optimizer = pruning.wrap(torch.optim.SGD(model.parameters(), lr=0.0))
    g = torch.Generator().manual_seed(1000 + seed)
    for _ in range(steps):
        optimizer.zero_grad()
        out = model(torch.randn(batch, 1, 8, 8, generator=g))
        y = torch.multinomial(out.softmax(1).detach(), 1, generator=g).squeeze(1)  # zero-mean gradients
        F.cross_entropy(out, y).backward()
        optimizer.step()
    pruning.evidence(SNRAutoPruning.GLOBAL)
    return pruning.window_snr[SNRAutoPruning.GLOBAL], sum(w.numel() for w in pruning.weights.values())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--seeds", type=int, default=8)
    args = parser.parse_args()
    null_mean, null_var = noise_moments(args.steps)
    print(f"pure-noise gradients, T = {args.steps} steps of 32 samples, weights fixed\n")
    print("| network | mean z over the seeds | min | max | noise mean | band half-width (independent weights) |")
    print("|---|---|---|---|---|---|")
    for batchnorm in (False, True):
        runs = [mean_window_snr(batchnorm, args.steps, seed) for seed in range(args.seeds)]
        z = [r[0] for r in runs]
        n = runs[0][1]
        name = "conv + BatchNorm + linear" if batchnorm else "conv + linear"
        print(f"| {name} ({n} weights) | {sum(z) / len(z):.3f} | {min(z):.3f} | {max(z):.3f} | {null_mean:.3f} | {2 * math.sqrt(null_var / n):.3f} |")


if __name__ == "__main__":
    main()
