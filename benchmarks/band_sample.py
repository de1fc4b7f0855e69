"""snr-auto's noise band from a sample of the kept weights (``band_sample``) against the band from all of them, decision by decision.

One real training run per cell (the suite's recipe and epochs, ``benchmarks/suites/paper.py``,
``snr-auto`` with its defaults, seed 0) holds every class sum, as without ``band_sample``, and
decides from the exact band. At each decision the same window also gives the band of each sample
size m: the sample is drawn at the window's start as ``band_sample=m`` draws it (the first of
``--repeats`` samples with the seed the code uses, the others with other seeds), its class sums
gathered from the full ones, and the band computed by ``SNRAutoPruning.evidence`` itself. Recorded
per decision: the mean z, the exact band, each sampled band, and whether the decision (-1 prune,
0 hold, +1 drift) would differ.

    nice python benchmarks/band_sample.py            # writes benchmarks/results/band_sample.md
"""

from __future__ import annotations

import argparse
import dataclasses
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

import snrprune
from snrprune.bench import Run, load_suite
from snrprune.pruners import snr_auto
from snrprune.pruners.snr_auto import MIN_WINDOW_STEPS, SNRAutoPruning
from snrprune.training import train

ROOT = Path(__file__).resolve().parent.parent
SIZES = (4096, 16384, 65536)
CELLS = ("mnist-lenet300", "letter-mlp", "mnist-lenet5")


def kept_with_gradient(pruning: SNRAutoPruning, unit: str, sample: dict[str, torch.Tensor] | None = None) -> int:
    """The unit's kept weights with gradient in the window (n), or those of them in ``sample`` (m; a layer without one: all)."""
    total = 0
    for name in pruning.units[unit]:
        live = (pruning.window[name][1].sum(dim=0).reshape(-1) > 0) & (pruning.keep[name].reshape(-1) > 0)
        if sample is not None and name in sample:
            live = live[sample[name]]
        total += int(live.sum())
    return total


class Recorder:
    """Wraps ``observe_gradients`` (the samples drawn at each window's start) and ``decide`` (the bands compared)."""

    def __init__(self, repeats: int):
        self.repeats = repeats
        self.rows: list[dict] = []
        self.samples: dict[tuple[int, int], dict[str, torch.Tensor]] = {}
        self.draw_seconds: dict[int, list[float]] = {m: [] for m in SIZES}

    def draw(self, pruning: SNRAutoPruning, m: int, repeat: int) -> dict[str, torch.Tensor]:
        seed = snr_auto.SAMPLE_SEED
        snr_auto.SAMPLE_SEED = seed + repeat * 1_000_003  # repeat 0: the code's own seed
        pruning.band_sample = m
        try:
            start = time.perf_counter()
            sample = pruning.draw_band_sample()
            self.draw_seconds[m].append(time.perf_counter() - start)
            return sample
        finally:
            snr_auto.SAMPLE_SEED, pruning.band_sample = seed, None

    def install(self) -> None:
        observe, decide, recorder = SNRAutoPruning.observe_gradients, SNRAutoPruning.decide, self

        def observe_gradients(pruning: SNRAutoPruning) -> None:
            if pruning.window_count == 0:
                recorder.samples = {(m, r): recorder.draw(pruning, m, r) for m in SIZES for r in range(recorder.repeats)}
            observe(pruning)

        def decide_(pruning: SNRAutoPruning) -> None:
            if pruning.window_count >= MIN_WINDOW_STEPS:
                recorder.compare(pruning)
            decide(pruning)

        SNRAutoPruning.observe_gradients = observe_gradients
        SNRAutoPruning.decide = decide_

    def compare(self, pruning: SNRAutoPruning) -> None:
        snr, band = dict(pruning.window_snr), dict(pruning.window_band)
        for unit in pruning.units:
            pruning.window_band = {}
            move = pruning.evidence(unit)
            if unit not in pruning.window_band:
                continue  # no kept weight with gradient: no band
            row = {
                "step": pruning.step_count,
                "density": pruning.density[unit],
                "n": kept_with_gradient(pruning, unit),
                "mean_z": pruning.window_snr[unit],
                "band": pruning.window_band[unit],
                "move": move,
                "sampled": {},
            }
            window = pruning.window
            for (m, r), sample in self.samples.items():
                pruning.window, pruning.sample = dict(window), {}
                pruning._sample_window(sample)
                sampled_move = pruning.evidence(unit)
                row["sampled"][m, r] = (pruning.window_band[unit], sampled_move, kept_with_gradient(pruning, unit, pruning.sample))
                pruning.window, pruning.sample = window, {}
            self.rows.append(row)
        pruning.window_snr, pruning.window_band = snr, band


def edge_difference(exact: tuple[float, float], sampled: tuple[float, float]) -> float:
    """The larger shift of the band's two edges (centre -+ 2 std), in exact standard deviations."""
    (c, s), (c2, s2) = exact, sampled
    return max(abs((c2 - 2 * s2) - (c - 2 * s)), abs((c2 + 2 * s2) - (c + 2 * s))) / s


def summary_table(results: dict[str, list[dict]], repeats: int) -> list[str]:
    lines = [
        "| cell | m | decisions | evaluations (x samples) | of them m = n | decisions that differ | largest edge shift / exact std | median | sampled std / exact std (min - max) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for cell, rows in results.items():
        for m in SIZES:
            pairs = [(row, row["sampled"][m, r]) for row in rows for r in range(repeats)]
            shifts = [edge_difference(row["band"], band) for row, (band, _, _) in pairs]
            ratios = [band[1] / row["band"][1] for row, (band, _, _) in pairs]
            differ = sum(move != row["move"] for row, (_, move, _) in pairs)
            full = sum(k == row["n"] for row, (_, _, k) in pairs)
            lines.append(
                f"| {cell} | {m} | {len(rows)} | {len(pairs)} | {full} | {differ} | {max(shifts):.3f} | {statistics.median(shifts):.3f} | "
                f"{min(ratios):.3f} - {max(ratios):.3f} |"
            )
    return lines


def decision_table(rows: list[dict]) -> list[str]:
    """Per decision, with the sample the code itself would draw (repeat 0)."""
    head = "| step | density | n | mean z | exact band (centre +- 2 std) | move |" + "".join(f" m={m}: m' , band, move |" for m in SIZES)
    lines = [head, "|" + "---:|" * (6 + len(SIZES))]
    for row in rows:
        c, s = row["band"]
        cells = [f"{row['step']}", f"{row['density']:.4f}", f"{row['n']}", f"{row['mean_z']:.4f}", f"{c:.4f} +- {2 * s:.4f}", f"{row['move']:+d}"]
        for m in SIZES:
            (c2, s2), move, k = row["sampled"][m, 0]
            mark = " **differs**" if move != row["move"] else ""
            cells.append(f"{k}, {c2:.4f} +- {2 * s2:.4f}, {move:+d}{mark}")
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cells", nargs="+", default=list(CELLS), help=f"suite cells (default {' '.join(CELLS)})")
    parser.add_argument("--repeats", type=int, default=10, help="samples per size and decision (default 10; the first is the code's own)")
    parser.add_argument("--epochs", type=int, default=None, help="epochs per cell (default: the suite's)")
    parser.add_argument("--out", default=str(ROOT / "benchmarks/results/band_sample.md"), help="the markdown written (default benchmarks/results/band_sample.md)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    suite = load_suite(ROOT / "benchmarks/suites/paper.py")
    cells = {cell.key: cell for cell in suite.cells()}
    snr_auto_method = next(m for g in suite.groups for m in g.methods if m.name == "snr-auto")
    recorder = Recorder(args.repeats)
    recorder.install()
    results, seconds = {}, {}
    for key in args.cells:
        config = Run(cells[key], snr_auto_method, 0).config()
        if args.epochs is not None:
            config = dataclasses.replace(config, epochs=args.epochs)
        recorder.rows = []
        start = time.perf_counter()
        with tempfile.TemporaryDirectory() as out:
            summary = train(config, out, progress=False)
        seconds[key] = time.perf_counter() - start
        results[key] = recorder.rows
        print(f"{key}: {len(recorder.rows)} decisions, sparsity {summary['sparsity']:.4f}, {seconds[key]:.0f} s", file=sys.stderr)
    lines = [
        "# snr-auto's noise band from a sample of the kept weights, decision by decision",
        "",
        f"`nice python benchmarks/band_sample.py {' '.join(sys.argv[1:])}`".replace(" `", "`"),
        "",
        f"torch {torch.__version__}, snrprune {snrprune.__version__}, {platform.machine()}, one thread. Each cell trains once "
        "(the suite's recipe and epochs, snr-auto's defaults: global scope, half-epoch windows, seed 0) deciding from the exact "
        f"band; at every decision the same window gives the band of {args.repeats} samples of each size m (the first drawn "
        "with the seed `band_sample=m` uses, so exactly that run's band; the others with other seeds). n: the kept weights with "
        "gradient; m': those in the sample (m' = n: the sample holds every kept weight, the band is the exact one). "
        "An edge is the band's centre -+ 2 std; its shift is measured in the exact band's std.",
        "",
        *summary_table(results, args.repeats),
        "",
        "Time to draw one window's samples (all cells' windows): "
        + ", ".join(f"m={m}: median {1000 * statistics.median(t):.1f} ms" for m, t in recorder.draw_seconds.items() if t)
        + "; training time per cell: "
        + ", ".join(f"{key} {s:.0f} s" for key, s in seconds.items())
        + " (with the comparisons).",
    ]
    for key, rows in results.items():
        lines += ["", f"## {key}: every decision (the code's own sample)", "", *decision_table(rows)]
    text = "\n".join(lines) + "\n"
    Path(args.out).write_text(text)
    print("\n".join(summary_table(results, args.repeats)))


if __name__ == "__main__":
    main()
