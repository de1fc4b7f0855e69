"""Exact k-th smallest magnitude, the core of every mask update, against torch's own selections.

Times, interleaved in one process (median of rounds), on LeNet-300-100's first-layer shape
(235,200 magnitudes) and on all of ResNet-20's prunable weights at once (global scope):
``torch.kthvalue``, ``torch.sort`` and ``snrprune.masks.kth_smallest`` (numpy's introselect); then
a whole ``keep_largest`` mask (selection, comparison, tie check), and one plain LeNet-300-100
training step for scale.

    python benchmarks/mask_selection.py
"""

from __future__ import annotations

import statistics
import time

import torch
import torch.nn.functional as F

from snrprune.masks import keep_largest, kth_smallest
from snrprune.models import build_model


def median_ms(fns: dict, rounds: int = 60) -> dict[str, float]:
    for fn in fns.values():
        fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {k: statistics.median(v) * 1e3 for k, v in times.items()}


def main() -> None:
    torch.manual_seed(0)
    model = build_model("lenet300", (1, 28, 28), 10)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x, y = torch.randn(128, 1, 28, 28), torch.randint(0, 10, (128,))

    def plain_step() -> None:
        optimizer.zero_grad()
        F.cross_entropy(model(x), y).backward()
        optimizer.step()

    resnet = build_model("resnet20", (3, 32, 32), 10)
    cases = {
        "lenet300 layer 1 (235,200)": model[1].weight.detach().abs().reshape(-1).clone(),
        "resnet20 global (268,336)": torch.cat([p.detach().abs().reshape(-1) for n, p in resnet.named_parameters() if p.dim() > 1]),
    }
    print(f"# mask_selection: torch {torch.__version__}, {torch.get_num_threads()} threads\n")
    print("| case | torch.kthvalue | torch.sort | kth_smallest | keep_largest (whole mask) | plain LeNet-300 step |")
    print("|---|---|---|---|---|---|")
    for name, values in cases.items():
        k = int(0.3 * values.numel())
        assert kth_smallest(values, k) == torch.kthvalue(values, k).values
        t = median_ms({
            "kthvalue": lambda: torch.kthvalue(values, k),
            "sort": lambda: torch.sort(values),
            "ours": lambda: kth_smallest(values, k),
            "mask": lambda: keep_largest(values, k),
            "step": plain_step,
        })
        print(f"| {name} | {t['kthvalue']:.2f} ms | {t['sort']:.2f} ms | {t['ours']:.2f} ms | {t['mask']:.2f} ms | {t['step']:.2f} ms |")


if __name__ == "__main__":
    main()
