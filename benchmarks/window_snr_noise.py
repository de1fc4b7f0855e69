"""How wide must snr-auto's noise band be? The window SNR of a network whose gradients are pure noise.

Labels drawn from the model's own softmax make the expected gradient of the loss exactly zero for
every weight (the score-function identity), so every weight's window SNR z is noise only. The
weights are held fixed (lr 0) over a window of T steps of fresh random inputs. For several seeds the
script prints the mean z of all weights and how many windows each band would read as a signal
(prune or regrow), where every one is noise:

- the band of n independent weights: the mean of F(1, T - 1) +- two standard errors (snr-auto's band
  up to commit 1f89985). The weights are not independent: they all see the same batches, so the
  mean z varies from seed to seed far more than this band says;
- the band snr-auto draws now: sign-flipped copies of the window (``SNRAutoPruning.evidence``).

    python benchmarks/window_snr_noise.py [--steps 60] [--seeds 20]
"""

import argparse
import math

import torch
import torch.nn.functional as F
from torch import nn

from snrprune import SNRAutoPruning


def noise_moments(steps: int) -> tuple[float, float]:
    """Mean and variance of one weight's window SNR when its gradient is noise only: F(1, T - 1)."""
    d = steps - 1
    return d / (d - 2), 2.0 * d * d * (d - 1) / ((d - 2) ** 2 * (d - 4))


def noise_window(batchnorm: bool, steps: int, seed: int, batch: int = 32) -> tuple[SNRAutoPruning, int]:
    """A pruning object holding one window of pure-noise gradients (not yet decided), and the weight count."""
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
    return pruning, sum(w.numel() for w in pruning.weights.values())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--seeds", type=int, default=20)
    args = parser.parse_args()
    if args.steps < 6:
        parser.error("--steps must be at least 6 (F(1, T - 1) has a finite variance from T = 6 on)")
    null_mean, null_var = noise_moments(args.steps)
    print(f"pure-noise gradients, T = {args.steps} steps of 32 samples, weights fixed, {args.seeds} seeds; noise mean of z: {null_mean:.3f}\n")
    print("| network | mean z: min | max | independent band (half-width) | read as signal | drawn band: median half-width | read as signal |")
    print("|---|---|---|---|---|---|---|")
    for batchnorm in (False, True):
        z, moved_drawn, widths = [], 0, []
        for seed in range(args.seeds):
            pruning, n = noise_window(batchnorm, args.steps, seed)
            moved_drawn += pruning.evidence(SNRAutoPruning.GLOBAL) != 0
            z.append(pruning.window_snr[SNRAutoPruning.GLOBAL])
            widths.append(2 * pruning.window_band[SNRAutoPruning.GLOBAL][1])
        margin = 2 * math.sqrt(null_var / n)
        moved_independent = sum(abs(v - null_mean) > margin for v in z)
        name = "conv + BatchNorm + linear" if batchnorm else "conv + linear"
        print(
            f"| {name} ({n} weights) | {min(z):.3f} | {max(z):.3f} | {margin:.3f} | {moved_independent} of {args.seeds} "
            f"| {sorted(widths)[len(widths) // 2]:.3f} | {moved_drawn} of {args.seeds} |"
        )


if __name__ == "__main__":
    main()
