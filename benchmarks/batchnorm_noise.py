"""Which noise does the optimizer see? Per-sample variance against the spread of batch gradients across steps.

For independent samples the variance of a batch-mean gradient is the per-sample variance over B, so
the two estimates of the mini-batch gradient's noise agree. BatchNorm in training mode couples the
samples of a batch. This script holds the weights fixed (no update), draws T batches of B images,
and for every prunable weight compares (per-sample variance within the batches) / B with the variance
of the batch gradients across the T batches; it prints the per-layer median of that ratio. A ratio
near 1 means a per-sample test is calibrated; far above 1, the per-sample variance overstates the
noise of the gradient that is applied, and a per-sample SNR reads signal as noise (finding 7 of the
report). `snr-auto` uses the across-step spread.

    python benchmarks/batchnorm_noise.py [--batches 20] [--batch-size 128]
"""

import argparse
import statistics

import torch
import torch.nn.functional as F

from snrprune import GradientStats
from snrprune.data import load_dataset
from snrprune.models import build_model


def noise_ratio(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, batches: int, batch: int) -> dict[str, float]:
    stats = GradientStats(model)
    within = {}  # sum over batches of the per-sample variance / B
    first = {}  # sum of batch gradients
    second = {}  # sum of squared batch gradients
    for t in range(batches):
        xb, yb = x[t * batch : (t + 1) * batch], y[t * batch : (t + 1) * batch]
        model.zero_grad()
        F.cross_entropy(model(xb), yb).backward()
        for name, m in stats.moments().items():
            mean = m.sum / m.count
            var = (m.sum_sq - m.sum * mean) / (m.count - 1)
            within[name] = within.get(name, 0) + var / m.count
            first[name] = first.get(name, 0) + mean
            second[name] = second.get(name, 0) + mean * mean
        stats.reset()
    stats.remove()
    out = {}
    for name in within:
        across = (second[name] - first[name] ** 2 / batches) / (batches - 1)
        ratio = (within[name] / batches) / across.clamp_min(1e-30)
        out[name] = float(ratio.median())
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batches", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=128)
    args = parser.parse_args()
    torch.manual_seed(0)
    data = load_dataset("fashion-mnist")
    n = args.batches * args.batch_size
    x, y = data.x_train[:n].float(), data.y_train[:n]
    if x.dim() == 3:
        x = x.unsqueeze(1)
    print(f"Fashion-MNIST, {args.batches} batches of {args.batch_size}, weights fixed at a fresh initialisation (seed 0)")
    print("per-layer median of (per-sample variance / B) / (variance of batch gradients across batches); 1 = calibrated\n")
    print("| network | layers | min | median | max |")
    print("|---|---|---|---|---|")
    for label, name, train_mode in [
        ("LeNet-5 (no normalisation)", "lenet5", True),
        ("ResNet-20, BatchNorm in training mode", "resnet20", True),
        ("ResNet-20, BatchNorm frozen (eval mode, running statistics of the same batches)", "resnet20", False),
    ]:
        torch.manual_seed(0)
        model = build_model(name, tuple(data.input_shape), 10)
        if not train_mode:
            model.train()
            with torch.no_grad():  # running statistics from the batches, then frozen
                for t in range(args.batches):
                    model(x[t * args.batch_size : (t + 1) * args.batch_size])
        model.train(train_mode)
        ratios = noise_ratio(model, x, y, args.batches, args.batch_size)
        values = sorted(ratios.values())
        print(f"| {label} | {len(values)} | {values[0]:.2f} | {statistics.median(values):.2f} | {values[-1]:.2f} |")


if __name__ == "__main__":
    main()
