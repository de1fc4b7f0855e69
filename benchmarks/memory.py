"""Peak memory of each pruning method on a GPT-2-small-shaped stack, against plain AdamW training.

The model is snrprune's own ``gpt`` (nanoGPT shape) at GPT-2-small size: 12 layers, 12 heads, width
768, a vocabulary of 50,257 and an *untied* head, so that the head's 38.6M weights are prunable by
default (a tied head is an opt-in weight and would not be pruned) and the prunable weights are the
12 x 7.08M block projections plus the head: 123.5M, the size issue 18 counts with. Each variant runs
a few AdamW steps on random tokens in a fresh subprocess; its peak memory is the growth of the
process's peak RSS over its resident size after the imports (the kernel's high-water mark is reset
there, as in ``benchmarks/stats_overhead.py``). What a method adds is its growth minus plain
AdamW's, in bytes per prunable weight and over AdamW's own state (8 bytes per weight): issue 18's
goal is at most 2x.

Next to the measurement, each child sums the tensors its pruning object holds (dense copies, masks,
window sums, moments, scratch buffers; storages shared with the model or the optimizer not
counted), so that measured and expected can be compared.

    nice python benchmarks/memory.py                          # the README's table (~10 minutes on 2 cores)
    nice python benchmarks/memory.py --n-layer 2 --steps 2    # a quick look
    nice python benchmarks/memory.py --snr-layers 4           # snr on a 4-layer stack, extrapolated per weight
"""

from __future__ import annotations

import argparse
import json
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import snrprune
from snrprune.models import build_model
from snrprune.pruners.snr_auto import BAND_SAMPLE, MIN_WINDOW_STEPS, SIGN_CLASSES
from stats_overhead import _rss_kib  # this folder is on the path when a benchmark runs as a script

VOCAB = 50257  # GPT-2's
ADAMW_BYTES = 8  # AdamW's state per weight: exp_avg and exp_avg_sq in float32

# name -> (how to build the pruning object from the model and the number of steps; None: plain AdamW, no snrprune)
VARIANTS = {
    "AdamW": None,
    "dense": lambda m, steps: snrprune.NoPruning(m),
    # a global magnitude mask on every step, so that the mask update's temporaries count
    "dpf (masks every step)": lambda m, steps: snrprune.DPFPruning(m, target_sparsity=0.9, total_steps=steps, update_every=1),
    # the window sums only: no decision, no mask update in the run (the default: the noise band from a
    # sample of about BAND_SAMPLE kept weights, the sum of g_t and of its squares per weight)
    "snr-auto (window sums)": lambda m, steps: snrprune.SNRAutoPruning(m, window_steps=10**9),
    # a window of exactly the run's steps: the decision (the noise band's draws) and a global mask update at the end
    "snr-auto (decision)": lambda m, steps: snrprune.SNRAutoPruning(m, window_steps=steps),
    # the same two with the exact band: every weight's 16 sign-class sums (band_sample=None)
    "snr-auto, exact band (window sums)": lambda m, steps: snrprune.SNRAutoPruning(m, window_steps=10**9, band_sample=None),
    "snr-auto, exact band (decision)": lambda m, steps: snrprune.SNRAutoPruning(m, window_steps=steps, band_sample=None),
    # per-sample statistics every step, masks every step (the paper's setting)
    "snr (per-sample stats)": lambda m, steps: snrprune.SNRPruning(m, burn_in_steps=0),
}

#: Variants that need more steps than the others (a decision reads at least MIN_WINDOW_STEPS steps).
MIN_STEPS = {"snr-auto (decision)": MIN_WINDOW_STEPS, "snr-auto, exact band (decision)": MIN_WINDOW_STEPS}


def held_tensors(pruning: snrprune.Pruning, model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, int]:
    """Bytes of the tensors a pruning object holds, by its attribute (e.g. ``window``, ``stats._flat``).

    Walks the object's attributes (dicts, lists, nested objects such as its GradientStats) without
    entering modules or optimizers; a storage is counted once, and not at all if it is a parameter's,
    a gradient's or the optimizer's (NoPruning's ``dense`` is the parameters themselves).
    """
    outside = {p.untyped_storage().data_ptr() for p in model.parameters()}
    outside |= {p.grad.untyped_storage().data_ptr() for p in model.parameters() if p.grad is not None}
    outside |= {t.untyped_storage().data_ptr() for s in optimizer.state.values() for t in s.values() if isinstance(t, Tensor)}
    seen_storage, seen_objects, sizes = set(outside), set(), {}

    def walk(value: object, path: str) -> None:
        if isinstance(value, Tensor):
            storage = value.untyped_storage()
            if storage.data_ptr() not in seen_storage and storage.nbytes():
                seen_storage.add(storage.data_ptr())
                sizes[path] = sizes.get(path, 0) + storage.nbytes()
            return
        if isinstance(value, (nn.Module, torch.optim.Optimizer)) or id(value) in seen_objects:
            return
        seen_objects.add(id(value))
        if isinstance(value, dict):
            items = value.values()
        elif isinstance(value, (list, tuple, set)):
            items = value
        elif hasattr(value, "__dict__") and type(value).__module__.startswith("snrprune"):
            for key, item in vars(value).items():
                walk(item, f"{path}.{key}" if path else key)
            return
        else:
            return
        for item in items:
            walk(item, path)

    walk(pruning, "")
    return sizes


def child(variant: str, steps: int, batch: int, context: int, n_layer: int, threads: int) -> dict:
    """Runs in a fresh subprocess: builds the model, trains ``steps`` AdamW steps, returns what it measured."""
    torch.set_num_threads(threads)
    base = _rss_kib("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets VmHWM to the current resident size
    torch.manual_seed(0)
    model = build_model("gpt", (1,), VOCAB, n_layer=n_layer, n_head=12, n_embd=768, block_size=context)
    optimizer = torch.optim.AdamW(model.parameters(), lr=6e-4, weight_decay=0.1)
    make_pruning = VARIANTS[variant]
    pruning = None if make_pruning is None else make_pruning(model, steps)
    if pruning is not None:
        optimizer = pruning.wrap(optimizer)
    g = torch.Generator().manual_seed(0)
    start = time.perf_counter()
    for _ in range(steps):
        tokens = torch.randint(0, VOCAB, (batch, context + 1), generator=g)
        optimizer.zero_grad(set_to_none=True)
        logits = model(tokens[:, :-1])
        F.cross_entropy(logits.view(-1, VOCAB), tokens[:, 1:].reshape(-1)).backward()
        del logits
        optimizer.step()
    seconds = time.perf_counter() - start
    peak = (_rss_kib("VmHWM") - base) * 1024
    adamw = sum(t.numel() * t.element_size() for s in optimizer.state.values() for t in s.values() if isinstance(t, Tensor) and t.dim())
    prunable = sum(p.numel() for p in (pruning.weights.values() if pruning is not None else [])) or None
    if prunable is None:  # what the methods would prune: the same default selection
        prunable = sum(layer.weight.numel() for layer in snrprune.layers.find_prunable_layers(model))
    return {
        "variant": variant,
        "n_layer": n_layer,
        "steps": steps,
        "peak_growth": peak,
        "parameters": sum(p.numel() for p in model.parameters()),
        "prunable": prunable,
        "adamw_state": adamw,
        "held": {} if pruning is None else held_tensors(pruning, model, optimizer),
        "sparsity": None if pruning is None else pruning.mask_sparsity()[0],
        "seconds": seconds,
    }


def run_child(variant: str, args: argparse.Namespace, n_layer: int) -> dict:
    steps = max(args.steps, MIN_STEPS.get(variant, 0))
    cached = None
    if args.cache:  # a child measured before with the same settings is read back, not run again
        key = f"{variant}-{n_layer}l-{steps}s-{args.batch}x{args.context}-{args.threads}t".replace(" ", "_").replace("/", "_")
        cached = args.cache / f"{key}.json"
        if cached.exists():
            return json.loads(cached.read_text())
    command = [sys.executable, __file__, "--child", variant, "--steps", str(steps), "--batch", str(args.batch),
               "--context", str(args.context), "--n-layer", str(n_layer), "--threads", str(args.threads)]
    out = subprocess.run(command, check=True, capture_output=True, text=True)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    if cached is not None:
        cached.parent.mkdir(parents=True, exist_ok=True)
        cached.write_text(json.dumps(result))
    print(f"  {variant} ({n_layer} layers, {steps} steps): peak growth {result['peak_growth'] / 2**30:.2f} GiB, "
          f"held {sum(result['held'].values()) / 2**30:.2f} GiB, {result['seconds']:.0f} s", file=sys.stderr, flush=True)
    return result


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    with open("/proc/meminfo") as f:
        total = int(next(line.split()[1] for line in f if line.startswith("MemTotal:"))) / 2**20
    return f"{cpu}, {torch.get_num_threads()} threads available, {total:.0f} GiB RAM"


def revision() -> str:
    """The commit measured, and whether the library's sources differ from it."""
    root = Path(__file__).resolve().parent.parent
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "src"], cwd=root, capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "snrprune outside a git checkout"
    return f"snrprune at {head}" + (" with uncommitted changes in src/" if dirty else "")


def report(results: list[dict], baselines: dict[int, dict], args: argparse.Namespace, command: str) -> str:
    gib = 2**30
    lines = [
        "# Peak memory at GPT-2-small shape",
        "",
        f"Command: `{command}`",
        "",
        f"torch {torch.__version__}, {revision()}, {machine()}; each variant in a fresh process, "
        f"{args.threads} thread(s). Model: `gpt`, 12 heads, width 768, vocabulary {VOCAB}, untied head, context {args.context}; "
        f"AdamW (lr 6e-4, weight decay 0.1) on random tokens, batch {args.batch} x {args.context}, "
        f"{args.steps} steps ({MIN_WINDOW_STEPS} for the snr-auto decision: a decision reads at least {MIN_WINDOW_STEPS} steps).",
        "",
        "*peak growth*: the process's peak RSS over its size after the imports (model, gradients, AdamW state, activations, "
        "the method). *added*: that minus plain AdamW's at the same depth, per prunable weight and over AdamW's own state "
        f"({ADAMW_BYTES} bytes per weight); issue 18's goal is at most 2x. *held*: the tensors the pruning object holds at the "
        "end (summed from the object), per prunable weight.",
        "",
        "| variant | layers | parameters | prunable | peak growth | added | added / prunable weight | added / AdamW state | held / prunable weight |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        base = baselines[r["n_layer"]]
        added = r["peak_growth"] - base["peak_growth"]
        per_weight = added / r["prunable"]
        held = sum(r["held"].values()) / r["prunable"]
        lines.append(
            f"| {r['variant']} | {r['n_layer']} | {r['parameters'] / 1e6:.1f}M | {r['prunable'] / 1e6:.1f}M | "
            f"{r['peak_growth'] / gib:.2f} GiB | {added / gib:+.2f} GiB | {per_weight:.1f} B | {per_weight / ADAMW_BYTES:.2f}x | "
            f"{held:.1f} B |"
        )
    for n_layer, base in sorted(baselines.items()):
        lines.append("")
        lines.append(f"AdamW's own state at {n_layer} layers: {base['adamw_state'] / gib:.2f} GiB "
                     f"({base['adamw_state'] / base['parameters']:.1f} bytes per parameter, all {base['parameters'] / 1e6:.1f}M parameters).")
    lines += ["", "What each pruning object holds at the end (bytes per prunable weight, by attribute):", ""]
    for r in results:
        if r["held"]:
            parts = ", ".join(f"`{k}` {v / r['prunable']:.1f}" for k, v in sorted(r["held"].items(), key=lambda kv: -kv[1]))
            lines.append(f"- {r['variant']}: {parts}")
    n = max(r["prunable"] for r in results)
    sample = SIGN_CLASSES * 4 * BAND_SAMPLE + 8 * BAND_SAMPLE  # class sums and flat indices of the sample
    lines += [
        "",
        f"snr-auto's exact window is {SIGN_CLASSES} sign-class sums and one sum of squares per weight in float32: "
        f"{(SIGN_CLASSES + 1) * 4} bytes per prunable weight, {(SIGN_CLASSES + 1) * 4 * n / gib:.2f} GiB here. By default "
        f"(`band_sample={BAND_SAMPLE}`) a network of more weights estimates its noise band from the class sums of about "
        f"{BAND_SAMPLE:,} of its kept weights, drawn at each window's start; every weight keeps its sum and its sum of squares "
        f"of g_t (8 bytes), so the window is {8 * n / gib:.2f} GiB here plus {sample / 2**20:.0f} MiB for the sample, whatever "
        "the model's size.",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=3, help="optimizer steps per variant (default 3)")
    parser.add_argument("--batch", type=int, default=4, help="sequences per batch (default 4)")
    parser.add_argument("--context", type=int, default=128, help="tokens per sequence (default 128)")
    parser.add_argument("--n-layer", type=int, default=12, help="Transformer blocks (default 12, GPT-2 small)")
    parser.add_argument("--snr-layers", type=int, default=None,
                        help="run snr on a stack of this many blocks instead (with its own AdamW baseline), "
                             "when the full one is too slow; its numbers are per prunable weight")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per child (default 1)")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "memory.md")
    parser.add_argument("--cache", type=Path, default=None,
                        help="a folder keeping each child's result, so that a rerun (e.g. with more variants) reuses them")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.steps, args.batch, args.context, args.n_layer, args.threads)))
        return

    depth = {v: (args.snr_layers if v.startswith("snr (") and args.snr_layers else args.n_layer) for v in args.variants}
    baselines = {n: run_child("AdamW", args, n) for n in sorted(set(depth.values()))}
    results = [baselines[depth[v]] if v == "AdamW" else run_child(v, args, depth[v]) for v in args.variants]
    shown = [a for i, a in enumerate(sys.argv[1:]) if a != "--cache" and sys.argv[i] != "--cache"]  # sys.argv[i]: the one before
    command = "nice python benchmarks/memory.py " + shlex.join(shown)
    text = report(results, baselines, args, command.strip())
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
