"""Would a held-out witness see DPF's lossless frontier where the training gradient does not? (issue 19)

Finding 13 of ``benchmarks/RESULTS.md``: on the cells where ``snr-auto`` stops far short of the frontier,
DPF at the frontier has many times dense's training loss and the same test error, so every rule that
reads the training gradient reads "the pruned weights are still wanted". The obvious remedy is to read
the pruned weights' gradient on data the network was not trained on. This script measures whether that
reading differs.

The training set is split (stratified, 20% held out); DPF (global magnitude masks, the suite cell's
recipe: Adam 1e-3, batch 128, cosine, target reached at 75% of the steps) trains on the rest at a
ladder of targets. At the end of the ramp and at the end of training it reads, at the masked network,
every weight's per-sample z = N mean^2 / var (mean and unbiased variance of its N per-sample gradients,
``torch.func``) on the held-out part and on as many samples drawn from the training part (z grows with
N for a given true gradient, so both use the same N), and averages it over the pruned and over the
kept weights. A gradient of noise only gives z of about 1 (F(1, N - 1)); the means here treat the
weights' z as a population, not as a test. Also the test error and loss and the held-out loss.

If the held-out z of the pruned weights stayed at the noise level up to the frontier and rose beyond
it, while the training z rose all along, a held-out witness would find the frontier. The tables say
whether it does.

    python benchmarks/heldout_gradient.py --cell optdigits --seeds 0 1 2 --out benchmarks/results/heldout_gradient.md
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from pathlib import Path

import torch
from torch import nn
from torch.func import functional_call, grad, vmap

from snrprune.data.base import stratified_split
from snrprune.data.registry import load_dataset
from snrprune.models import build_model
from snrprune.pruners.dpf import DPFPruning

#: The suite's tabular cells and their epochs (``benchmarks/suites/paper.py``).
EPOCHS = {"optdigits": 60, "letter": 60, "adult": 20, "pendigits": 40, "satimage": 60, "magic": 40, "digits": 60, "mnist1d": 100}


def mean_z(model: nn.Module, keep: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
    """The mean per-sample z over the pruned and over the kept weights of ``keep``'s layers, on (x, y)."""
    params = {k: v.detach() for k, v in model.named_parameters()}

    def loss(p, xi, yi):
        return nn.functional.cross_entropy(functional_call(model, p, (xi[None],)), yi[None])

    per_sample = vmap(grad(loss), in_dims=(None, 0, 0))
    s1 = {n: torch.zeros_like(params[n]) for n in keep}
    s2 = {n: torch.zeros_like(params[n]) for n in keep}
    for i in range(0, len(x), 512):
        g = per_sample(params, x[i : i + 512], y[i : i + 512])
        for n in keep:
            s1[n] += g[n].sum(0)
            s2[n] += g[n].square().sum(0)
    n_samples = len(x)
    out = {}
    for which in ("pruned", "kept"):
        zs = []
        for n, k in keep.items():
            mean = s1[n] / n_samples
            var = (s2[n] - n_samples * mean.square()) / (n_samples - 1)
            sel = (k if which == "kept" else ~k) & (var > 0)  # a weight with no gradient (a dead unit) says nothing
            zs.append((n_samples * mean.square() / var)[sel])
        z = torch.cat(zs)
        out[which] = z.mean().item() if z.numel() else math.nan
    return out


@torch.no_grad()
def loss_error(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    out = model(x)
    return nn.functional.cross_entropy(out, y).item(), (out.argmax(1) != y).float().mean().item() * 100


def run(cell: str, target: float, seed: int, epochs: int, batch: int) -> list[dict]:
    data = load_dataset(cell)
    train, held = stratified_split(data.y_train.numpy(), 0.2, seed=seed)
    xt, yt, xh, yh = data.x_train[train], data.y_train[train], data.x_train[held], data.y_train[held]
    # as many training samples as held-out ones, drawn once
    same_n = torch.randperm(len(xt), generator=torch.Generator().manual_seed(seed))[: len(xh)]
    torch.manual_seed(seed)
    model = build_model("mlp", data.input_shape, data.num_classes)
    steps = math.ceil(len(xt) / batch) * epochs
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    pruning = None
    if target > 0:
        pruning = DPFPruning(model, target_sparsity=target, total_steps=steps)
        optimizer = pruning.wrap(optimizer)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
    order = torch.Generator().manual_seed(seed)
    layers = [n for n, p in model.named_parameters() if p.dim() > 1]
    read_at = {round(0.75 * epochs), epochs}
    rows = []
    for epoch in range(1, epochs + 1):
        model.train()
        total = 0.0
        perm = torch.randperm(len(xt), generator=order)
        for i in range(0, len(xt), batch):
            idx = perm[i : i + batch]
            optimizer.zero_grad()
            loss = nn.functional.cross_entropy(model(xt[idx]), yt[idx])
            loss.backward()
            optimizer.step()
            schedule.step()
            total += loss.item() * len(idx)
        if epoch not in read_at:
            continue
        model.eval()
        masks = pruning.masks if pruning is not None else {}
        keep = {n: masks[n].bool() if n in masks else torch.ones_like(p, dtype=torch.bool) for n, p in model.named_parameters() if n in layers}
        z_train, z_held = mean_z(model, keep, xt[same_n], yt[same_n]), mean_z(model, keep, xh, yh)
        test_loss, test_err = loss_error(model, data.x_test, data.y_test)
        held_loss, _ = loss_error(model, xh, yh)
        rows.append({
            "cell": cell, "target": target, "seed": seed, "epoch": epoch, "n": len(xh), "train_loss": total / len(xt),
            "held_loss": held_loss, "test_loss": test_loss, "test_error": test_err,
            "z_train_pruned": z_train["pruned"], "z_held_pruned": z_held["pruned"], "z_train_kept": z_train["kept"], "z_held_kept": z_held["kept"],
        })
    return rows


def table(rows: list[dict], epoch: int) -> list[str]:
    keys = ["test_error", "test_loss", "held_loss", "train_loss", "z_train_pruned", "z_held_pruned", "z_train_kept", "z_held_kept"]
    lines = ["| target % | seeds | test error % | test loss | held-out loss | train loss | pruned z: training | pruned z: held-out | kept z: training | kept z: held-out |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for target in sorted({r["target"] for r in rows}):
        sel = [r for r in rows if r["target"] == target and r["epoch"] == epoch]
        if not sel:
            continue
        cells = []
        for k in keys:
            vals = [r[k] for r in sel if not math.isnan(r[k])]
            digits = 2 if k in ("test_error",) or k.startswith("z_") else 4
            cells.append(f"{statistics.mean(vals):.{digits}f}" if vals else "-")
        lines.append(f"| {100 * target:g} | {len(sel)} | " + " | ".join(cells) + " |")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cell", default="optdigits", choices=sorted(EPOCHS), help="a tabular cell of the suite (the MLP of widths 256, 256)")
    ap.add_argument("--targets", type=float, nargs="+", default=[0, 0.5, 0.8, 0.9, 0.95, 0.975, 0.99], help="DPF's ladder (0: dense)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--epochs", type=int, help="default: the suite cell's")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--jsonl", type=Path, help="append every reading here (and skip the runs already in it)")
    ap.add_argument("--out", type=Path, help="append the markdown tables here")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    epochs = args.epochs or EPOCHS[args.cell]
    done = []
    if args.jsonl and args.jsonl.exists():
        done = [json.loads(line) for line in args.jsonl.read_text().splitlines() if line.strip()]
    rows = [r for r in done if r["cell"] == args.cell]
    start = time.time()
    for seed in args.seeds:
        for target in args.targets:
            if any(r["target"] == target and r["seed"] == seed for r in rows):
                continue
            new = run(args.cell, target, seed, epochs, args.batch_size)
            rows += new
            if args.jsonl:
                with args.jsonl.open("a") as f:
                    f.writelines(json.dumps(r) + "\n" for r in new)
            print(f"{args.cell} target {target:g} seed {seed}: test error {new[-1]['test_error']:.2f}%, pruned z training "
                  f"{new[-1]['z_train_pruned']:.2f} / held-out {new[-1]['z_held_pruned']:.2f}", flush=True)
    rows = [r for r in rows if r["seed"] in args.seeds and r["target"] in args.targets]
    n = rows[0]["n"]
    text = [f"## {args.cell}: {epochs} epochs, seeds {' '.join(map(str, args.seeds))}, N = {n:,} held-out samples (and as many training samples) for z", ""]
    for epoch in sorted({r["epoch"] for r in rows}):
        text += [f"At the end of epoch {epoch}" + (" (the end of DPF's ramp)" if epoch < epochs else " (the end of training)") + ":", ""]
        text += table(rows, epoch) + [""]
    epochs_flag = f" --epochs {args.epochs}" if args.epochs else ""
    text.append(f"`python benchmarks/heldout_gradient.py --cell {args.cell}{epochs_flag} --seeds {' '.join(map(str, args.seeds))}`")
    print(f"{time.time() - start:.0f} s for the runs of this invocation", flush=True)
    print("\n".join(text))
    if args.out:
        with args.out.open("a") as f:
            f.write("\n".join(text) + "\n\n")


if __name__ == "__main__":
    main()
