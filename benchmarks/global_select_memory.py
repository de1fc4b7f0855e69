"""Peak memory and time of one global magnitude mask update at GPT-2-small scale: today's flat copy
against the sampled bracket (``snrprune.masks.SAMPLED_SELECT_MIN``).

The weights are float32 tensors of GPT-2-small's prunable shapes (12 blocks of (2304, 768),
(768, 768), (3072, 768), (768, 3072) and a (50257, 768) head: 123.5M weights), N(0, 0.02^2) from a
fixed seed. Each measurement runs in a fresh subprocess with one thread: the weights are built in
place, the kernel's high-water mark is reset (``/proc/self/clear_refs``), and one
``magnitude_keep_masks(weights, n_prune, "global")`` runs. *peak growth* is the peak RSS over the
resident size before the call; the bool masks it returns are 1 byte a weight (the flat path frees
its copy before it writes them; the sampled path's peak is while it writes them). The paths alternate (flat, sampled, flat, ...) so that
other work on the machine hits both alike; each child prints a digest of its masks, and the two
paths must agree.

    nice python benchmarks/global_select_memory.py --repeats 3 --out benchmarks/results/memory.md
"""

from __future__ import annotations

import argparse
import hashlib
import json
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from stats_overhead import _rss_kib  # this folder is on the path when a benchmark runs as a script

BLOCK_SHAPES = [(2304, 768), (768, 768), (3072, 768), (768, 3072)]
HEAD_SHAPE = (50257, 768)
PATHS = ("flat", "sampled")


def shapes(n_layer: int) -> list[tuple[int, int]]:
    return [shape for _ in range(n_layer) for shape in BLOCK_SHAPES] + [HEAD_SHAPE]


def child(path: str, n_layer: int, sparsity: float) -> None:
    """Runs in a subprocess: prints peak growth (bytes), seconds and a digest of the masks."""
    torch.set_num_threads(1)
    from snrprune import masks

    if path == "flat":
        masks.SAMPLED_SELECT_MIN = 1 << 62
    g = torch.Generator().manual_seed(0)
    weights = {f"w{i}": torch.empty(shape).normal_(0.0, 0.02, generator=g) for i, shape in enumerate(shapes(n_layer))}
    n = sum(w.numel() for w in weights.values())
    n_prune = int(sparsity * n)
    masks.magnitude_keep_masks({"warm": torch.randn(1000)}, 10, "global")  # imports, kernel load
    base = _rss_kib("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets VmHWM to the current resident size
    start = time.perf_counter()
    keep = masks.magnitude_keep_masks(weights, n_prune, "global")
    seconds = time.perf_counter() - start
    growth = (_rss_kib("VmHWM") - base) * 1024
    digest = hashlib.sha256()
    for m in keep.values():
        digest.update(m.numpy().tobytes())
    print(json.dumps({"n": n, "n_prune": n_prune, "growth": growth, "masks": n, "seconds": seconds, "digest": digest.hexdigest()}))


def measure(path: str, n_layer: int, sparsity: float) -> dict:
    out = subprocess.run(
        ["nice", sys.executable, __file__, "--child", path, "--n-layer", str(n_layer), "--sparsity", str(sparsity)],
        capture_output=True, text=True, check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n-layer", type=int, default=12)
    parser.add_argument("--sparsity", type=float, default=0.9)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, help="append the section to this markdown file")
    parser.add_argument("--child", choices=PATHS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.n_layer, args.sparsity)
        return
    runs: dict[str, list[dict]] = {p: [] for p in PATHS}
    for r in range(args.repeats):
        for path in PATHS if r % 2 == 0 else PATHS[::-1]:
            runs[path].append(measure(path, args.n_layer, args.sparsity))
            print(path, runs[path][-1], flush=True)
    digests = {run["digest"] for rs in runs.values() for run in rs}
    if len(digests) != 1:
        raise SystemExit(f"the paths' masks differ: {digests}")
    n, n_prune = runs["flat"][0]["n"], runs["flat"][0]["n_prune"]
    gib = 1 << 30
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    lines = [
        "",
        "## The global mask update's temporaries",
        "",
        f"Command: `nice python benchmarks/global_select_memory.py --repeats {args.repeats} --n-layer {args.n_layer} --sparsity {args.sparsity}`",
        "",
        f"torch {torch.__version__}, snrprune at {commit}, {platform.processor() or platform.machine()}, 1 thread, each run in a fresh process, "
        f"the two paths alternating ({args.repeats} runs each; the machine was shared with other work, so the times are indicative). "
        f"One `magnitude_keep_masks(weights, n_prune, \"global\")` on {n / 1e6:.1f}M float32 weights of GPT-2-small's prunable shapes "
        f"({args.n_layer} x 4 block matrices and the 50257 x 768 head), pruning {n_prune / 1e6:.1f}M ({args.sparsity:.0%}). "
        "*peak growth*: peak RSS over the resident size before the call (weights built), the largest of the runs. "
        "The bool masks returned are 1 B a weight: the flat path frees its copy of the magnitudes (4 B a weight) before it writes them, "
        "the sampled path's peak is while it writes them (the masks and its chunks' scratch). Both paths' masks are identical (SHA-256 of all masks).",
        "",
        "| path | peak growth | peak growth / weight | beyond the masks / weight | time (median) | times |",
        "|---|---|---|---|---|---|",
    ]
    for path, label in (("flat", "flat copy + numpy partition (before)"), ("sampled", "sampled bracket, chunks of 2^22 (from 2^24 weights)")):
        growth = max(run["growth"] for run in runs[path])
        beyond = max(growth - runs[path][0]["masks"], 0)
        times = [run["seconds"] for run in runs[path]]
        lines.append(
            f"| {label} | {growth / gib:.3f} GiB | {growth / n:.2f} B | {beyond / n:.2f} B | {statistics.median(times):.2f} s | "
            + ", ".join(f"{t:.2f}" for t in times) + " |"
        )
    lines.append("")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        with open(args.out, "a") as f:
            f.write(text)


if __name__ == "__main__":
    main()
