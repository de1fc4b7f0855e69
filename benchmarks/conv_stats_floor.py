"""Where a ResNet-20 statistics step spends its extra time: is 1.35x of a plain step reachable?

Exact per-sample second moments of a convolution need every per-sample weight gradient (no
factorisation like Linear's (delta^2)^T (x^2) exists for a kernel that slides), so their cost is at
least that of the layer's weight gradient again, plus squaring and summing B gradients. This script
times, per step of ResNet-20 at batch 128 on the CPU, (a) a plain step, (b) the weight-gradient
share of it (the same convolution backward asked for the weight gradient only), (c) the per-sample
S2 work of the statistics hooks, split into the per-sample products and the square-and-sum.

    python benchmarks/conv_stats_floor.py --rounds 10
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F
from torch import nn

from snrprune.layers import ConvMoments, _explicit_padding, _per_sample_conv_grad, find_prunable_layers
from snrprune.models import build_model


def median_ms(fn, rounds: int) -> float:
    fn()
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=10)
    args = parser.parse_args()
    torch.manual_seed(0)
    model = build_model("resnet20", (3, 32, 32), 10)
    x, y = torch.randn(128, 3, 32, 32), torch.randint(0, 10, (128,))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

    def plain() -> None:
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        optimizer.step()

    # record every conv's input and output-gradient once
    captured: dict[str, tuple[nn.Module, torch.Tensor, torch.Tensor]] = {}
    layers = [layer for layer in find_prunable_layers(model) if isinstance(layer.module, nn.Conv2d)]
    handles = []
    for layer in layers:
        def forward_hook(module, inputs, output, name=layer.name):
            output.register_hook(lambda grad, inp=inputs[0].detach(): captured.__setitem__(name, (module, inp, grad)))
        handles.append(layer.module.register_forward_hook(forward_hook))
    plain()
    for h in handles:
        h.remove()

    def weight_grads() -> None:  # the weight-gradient share of the backward pass
        for module, inp, grad in captured.values():
            torch.ops.aten.convolution_backward(grad, inp, module.weight, None, list(module.stride), list(module.padding),
                                                list(module.dilation), False, [0, 0], module.groups, [False, True, False])

    moments = ConvMoments()
    outs = {name: torch.empty_like(m.weight) for name, (m, _, _) in captured.items()}

    def s2_all() -> None:
        for name, (module, inp, grad) in captured.items():
            moments.sum_sq(module, inp, grad, outs[name], accumulate=False)

    def per_sample_only() -> None:  # the per-sample products without squaring and summing
        for module, inp, grad in captured.values():
            padded, padding = _explicit_padding(module, inp)
            _per_sample_conv_grad(module, padded, grad, padding)

    grads = {}
    for name, (module, inp, grad) in captured.items():
        padded, padding = _explicit_padding(module, inp)
        grads[name] = _per_sample_conv_grad(module, padded, grad, padding)

    def square_sum_only() -> None:
        for name, g in grads.items():
            outs[name].copy_(g.square().sum(0))

    t = {
        "plain step": median_ms(plain, args.rounds),
        "weight gradients of the convolutions": median_ms(weight_grads, args.rounds),
        "S2 of all convolutions (as the hooks compute it)": median_ms(s2_all, args.rounds),
        "per-sample gradients, grouped form, all layers": median_ms(per_sample_only, args.rounds),
        "square and sum of the per-sample gradients": median_ms(square_sum_only, args.rounds),
    }
    print(f"# conv_stats_floor: ResNet-20, batch 128, torch {torch.__version__}, {torch.get_num_threads()} threads\n")
    print("| part | ms | / plain step |")
    print("|---|---|---|")
    for name, ms in t.items():
        print(f"| {name} | {ms:.1f} | {ms / t['plain step']:.2f} |")


if __name__ == "__main__":
    main()
