"""Is a unit-pruned network faster? Latency of the dense, the masked and the compact model, side by side.

A model pruned at unit granularity (``--granularity unit``) still has its dense shapes while it trains:
the masked model costs what the dense one costs. ``snrprune export RUN --format compact`` cuts the
removed units out (``snrprune.units.compact_model``); this script measures what that buys, for

- a finished run folder (``--run DIR``, repeatable): its own masks, as a user would export it;
- or each model of ``--models`` with a fraction of the units of every group kept (``--keep``, chosen at
  random with a fixed seed): latency depends on the shapes alone, so this maps speedup against units
  kept without training anything.

Per model and batch size (1 and 256 by default) the three models run interleaved (one forward pass of
each per round, the order alternating, ``snrprune.export.measure_latency``), so a change of the machine's
load hits all three alike. Reported: the median time per forward pass, its interquartile range, and the
speedup of the compact model over the masked one as the median (and quartiles) of the per-round ratios.
Before timing, the compact model's outputs are checked against the masked model's on random inputs.

    python benchmarks/structured.py                      # lenet300, lenet5, resnet20, gpt, encoder at 50/25/10% of units
    python benchmarks/structured.py --models gpt --keep 0.5 --heads-only   # half of gpt's heads, nothing else
    python benchmarks/structured.py --run runs/my-run    # a trained run's own units
    python benchmarks/structured.py --device cuda        # on a GPU: each pass timed between synchronizations

Time it on an otherwise idle machine; say which one.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import warnings
from pathlib import Path

import torch

from snrprune.export import count_macs, example_input, load_run_model, measure_latency
from snrprune.models import build_model
from snrprune.training import _check_device as check_device
from snrprune.units import UnsupportedModelError, compact_model, find_unit_groups, removed_units, unit_keep_masks

#: (model name, input shape, classes) of the synthetic cases: the suite's image models, the default gpt,
#: and ``encoder``, a stack of PyTorch's own ``nn.TransformerEncoderLayer`` (built here, :func:`encoder`).
MODELS = {
    "lenet300": ((1, 28, 28), 10),
    "lenet5": ((1, 28, 28), 10),
    "resnet20": ((1, 28, 28), 10),
    "gpt": ((1,), 96),
    "encoder": ((64, 32), 10),
}


class Encoder(torch.nn.Module):
    """Two ``nn.TransformerEncoderLayer`` (width 128, 8 heads of 16, feed-forward 512) over sequences of 64
    tokens of 32 features, mean-pooled into a Linear classifier: heads of ``nn.MultiheadAttention``."""

    def __init__(self, shape: tuple[int, int], classes: int):
        super().__init__()
        layer = torch.nn.TransformerEncoderLayer(128, 8, 512, dropout=0.0, batch_first=True)
        self.embed = torch.nn.Linear(shape[1], 128)
        self.encoder = torch.nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.head = torch.nn.Linear(128, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(self.embed(x)).mean(dim=1))


def build(name: str, shape: tuple[int, ...], classes: int) -> torch.nn.Module:
    return Encoder(shape, classes) if name == "encoder" else build_model(name, shape, classes)


def make_input(model: torch.nn.Module, name: str, shape: tuple[int, ...], classes: int, batch: int) -> torch.Tensor:
    if name == "encoder":
        return torch.randn(batch, *shape, generator=torch.Generator().manual_seed(batch))
    return example_input(model, name, shape, classes, batch=batch)


def quartiles(values: list[float]) -> tuple[float, float, float]:
    q = statistics.quantiles(values, n=4, method="inclusive")
    return q[0], statistics.median(values), q[2]


def is_heads(group) -> bool:
    """Whether a group is the heads of an attention module (named after gpt's query weight, or after an
    ``nn.MultiheadAttention``'s packed projection)."""
    return group.name.endswith((".attn.q_proj.weight", ".in_proj_weight"))


def random_units(model: torch.nn.Module, example: torch.Tensor, keep: float, seed: int = 0, heads_only: bool = False):
    """The groups of ``model`` and, per group, a random ``keep`` fraction of its units to keep (at least one);
    with ``heads_only`` only the attention heads' groups lose units."""
    groups = find_unit_groups(model, example)
    generator = torch.Generator().manual_seed(seed)
    masks = {}
    for g in groups:
        if heads_only and not is_heads(g):
            continue
        kept = max(1, round(keep * g.size))
        masks[g.name] = torch.zeros(g.size).index_fill_(0, torch.randperm(g.size, generator=generator)[:kept], 1.0)
    return groups, masks


def mask_model(model: torch.nn.Module, groups, keep) -> torch.nn.Module:
    """The model with the units' entries zeroed in place (what unit-granularity training leaves)."""
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, mask in unit_keep_masks(groups, keep, params).items():
            params[name].mul_(mask)
    return model


def units_left(groups, removed) -> str:
    """Units per group before -> after, e.g. 20-50-500 -> 7-18-120."""
    before = "-".join(str(g.size) for g in groups)
    after = "-".join(str(g.size - len(removed.get(g.name, []))) for g in groups)
    return f"{before} -> {after}"


def measure(label: str, masked: torch.nn.Module, dense: torch.nn.Module | None, make_input, batches, rounds, device: str = "cpu") -> list[str]:
    """Rows of the results table for one masked model: checks its compact twin, then times all of them on
    ``device`` (the units are found and cut on the CPU, the three models then moved)."""
    masked.eval()
    example = make_input(1)
    groups = find_unit_groups(masked, example)
    removed = removed_units(groups, dict(masked.named_parameters()))
    compact = compact_model(masked, example, removed, groups=groups).eval()  # the groups traced above, not again
    params = [sum(p.numel() for p in m.parameters()) for m in (masked, compact)]
    macs = [count_macs(m, example) for m in (masked, compact)]
    masked, compact = masked.to(device), compact.to(device)
    dense = None if dense is None else dense.to(device)
    check = make_input(64).to(device)
    with torch.inference_mode():
        expected, got = masked(check), compact(check)
    error = (expected - got).abs().max().item() / max(expected.abs().max().item(), 1e-12)
    print(f"{label}: units {units_left(groups, removed)}, parameters {params[0]:,} -> {params[1]:,}, "
          f"MACs {macs[0]:,} -> {macs[1]:,}, largest output difference {error:.1e} of the largest output", flush=True)
    rows = []
    for batch in batches:
        x = make_input(batch).to(device)
        models = {"masked": masked, "compact": compact} if dense is None else {"dense": dense, "masked": masked, "compact": compact}
        times = measure_latency(models, x, rounds)
        median = {name: quartiles(t) for name, t in times.items()}
        ratio = quartiles([m / c for m, c in zip(times["masked"], times["compact"])])
        cells = " | ".join(f"{1e3 * median[n][1]:.3f} ({1e3 * median[n][0]:.3f}-{1e3 * median[n][2]:.3f})" for n in ("masked", "compact"))
        dense_cell = "-" if dense is None else f"{1e3 * median['dense'][1]:.3f}"
        rows.append(
            f"| {label} | {units_left(groups, removed)} | {params[0]:,} -> {params[1]:,} | {macs[0] / max(macs[1], 1):.2f}x | "
            f"{batch} | {dense_cell} | {cells} | **{ratio[1]:.2f}x** ({ratio[0]:.2f}-{ratio[2]:.2f}) | {error:.0e} |"
        )
        print(rows[-1], flush=True)
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS), help="synthetic cases (default: all)")
    parser.add_argument("--keep", nargs="+", type=float, default=[0.5, 0.25, 0.1], help="fractions of each group's units kept")
    parser.add_argument("--run", action="append", default=[], help="a finished run folder (repeatable); replaces --models")
    parser.add_argument("--heads-only", action="store_true", help="remove attention heads only (gpt, encoder), keep every other unit")
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 256])
    parser.add_argument("--rounds", type=int, default=31, help="interleaved rounds per batch size")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--device", default="cpu", help="where the models run, e.g. cuda (default cpu)")
    parser.add_argument("--out", type=Path, default=None, help="also write the table to this markdown file")
    args = parser.parse_args()
    if any(not 0 < k <= 1 for k in args.keep):
        parser.error("--keep fractions must be in (0, 1]")
    try:
        check_device(args.device)
    except ValueError as error:
        parser.error(str(error))
    device = torch.device(args.device)
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else (platform.processor() or platform.machine())
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    rows: list[str] = []
    notes: list[str] = []
    if args.run:
        for run in args.run:
            model = load_run_model(run)
            summary = json.loads((Path(run) / "summary.json").read_text())  # the finished run's shapes
            make = lambda b, m=model, s=summary: example_input(m, s["model"], tuple(s["input_shape"]), s["num_classes"], batch=b)  # noqa: E731
            rows += measure("/".join(Path(run).parts[-3:]), model, None, make, args.batches, args.rounds, args.device)
    else:
        for name in args.models:
            shape, classes = MODELS[name]
            dense = build(name, shape, classes).eval()
            make = lambda b, m=dense, n=name, s=shape, c=classes: make_input(m, n, s, c, b)  # noqa: E731
            for keep in args.keep:
                masked = build(name, shape, classes)
                masked.load_state_dict(dense.state_dict())
                try:
                    with warnings.catch_warnings(record=True) as caught:
                        warnings.simplefilter("always")
                        groups, masks = random_units(masked, make(1), keep, heads_only=args.heads_only)
                except UnsupportedModelError as error:
                    notes.append(f"- `{name}`: refused: {error}")
                    print(notes[-1], flush=True)
                    break
                for w in caught:
                    notes.append(f"- `{name}`: {w.message}")
                if not groups or (args.heads_only and not any(is_heads(g) for g in groups)):
                    notes.append(f"- `{name}`: no {'attention heads' if args.heads_only else 'unit groups'}, nothing to cut")
                    break
                what = "heads" if args.heads_only else "units"
                rows += measure(f"{name}, {100 * keep:g}% of {what}", mask_model(masked, groups, masks), dense, make, args.batches, args.rounds, args.device)
    header = [
        f"Measured with `python {' '.join(sys.argv)}` (torch {torch.__version__}, {args.threads} thread(s), "
        f"{where}). Times: ms per forward pass, median (interquartile range) of "
        f"{args.rounds} interleaved rounds; speedup: median (quartiles) of the per-round masked/compact ratios; "
        "MACs: masked/compact multiply-accumulates of the Linear and conv layers; difference: largest |masked - compact| "
        "output over the largest output, on 64 random inputs.",
        "",
        "| model | units | parameters | MACs cut | batch | dense | masked | compact | speedup | difference |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    text = "\n".join(header + rows + ([""] + sorted(set(notes)) if notes else [])) + "\n"
    if args.out:
        args.out.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
