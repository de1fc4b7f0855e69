"""Tests for the experiment suite: grid expansion, resumable execution, matched DPF, the report."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from scipy import stats as scipy_stats

from snrprune.bench import BenchError, Cell, default_layout, load_suite, plan, run_suite
from snrprune.bench_report import noise_snr_average, write_report
from snrprune.cli import main

SUITE_FILE = '''
from snrprune.bench import Cell, Group, Method, Suite
CELL = Cell("digits", "mlp", epochs=2, seeds=2, options={"model_options": {"widths": [16]}, "batch_size": 128, "lr": 0.01}, why="tiny")
SUITE = Suite(
    name="tiny",
    groups=[
        Group("Main grid", [CELL, Cell("cifar10", "resnet20", epochs=1, seeds=1)], [
            Method("dense", {"method": "dense"}),
            Method("snr", {"method": "snr"}),
            Method("dpf-matched", {"method": "dpf"}, matched_to="snr"),
        ]),
        Group("Ablations", [CELL], [Method("snr-ema-0.5", {"method": "snr", "ema": 0.5}), Method("snr", {"method": "snr"})]),
    ],
)
'''


@pytest.fixture()
def suite_file(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.py"
    path.write_text(SUITE_FILE)
    return path


def test_grid_expansion_dedupes_and_orders(suite_file: Path):
    suite = load_suite(suite_file)
    keys = [r.key for r in suite.runs()]
    assert len(keys) == len(set(keys))
    # 2 seeds x 3 methods + 1 cifar seed x 3 methods + the ablation's extra method x 2 seeds (snr is shared)
    assert len(keys) == 6 + 3 + 2
    assert keys.index("digits-mlp/snr/seed0") < keys.index("digits-mlp/dpf-matched/seed0")
    run = next(r for r in suite.runs() if r.key == "digits-mlp/dpf-matched/seed1")
    assert run.depends_on == "digits-mlp/snr/seed1"
    with pytest.raises(BenchError, match="needs the finished run digits-mlp/snr/seed1"):
        run.config()
    config = run.config(matched_sparsity=0.25)
    assert (config.method, config.target_sparsity, config.seed, config.epochs, config.lr) == ("dpf", 0.25, 1, 2, 0.01)


def test_load_suite_errors(tmp_path: Path, suite_file: Path):
    with pytest.raises(BenchError, match="not found"):
        load_suite(tmp_path / "missing.py")
    with pytest.raises(BenchError, match="defines no QUICK"):
        load_suite(suite_file, quick=True)


def test_run_skip_resume_matched_and_report(tmp_path: Path, suite_file: Path):
    suite = load_suite(suite_file)
    layout = default_layout(suite, str(tmp_path / "results"), str(tmp_path / "work"))
    logs: list[str] = []
    counts = run_suite(suite, layout, jobs=1, threads=1, log=logs.append)
    assert counts == {"finished_before": 0, "ran": 8, "failed": 0, "skipped": 3, "running_elsewhere": 0}
    skips = [line for line in logs if "skipped" in line]  # the reason once per cell, not once per run
    assert skips == ["[bench] cifar10-resnet20: 3 run(s) skipped (the CIFAR-10 python batches were not found (no --data-dir, no $SNRPRUNE_CIFAR10_DIR))"]

    # committed files only, no checkpoints or models; the matched DPF hit SNR's sparsity
    for seed in (0, 1):
        run_dir = layout.results / f"digits-mlp/snr/seed{seed}"
        assert sorted(p.name for p in run_dir.iterdir()) == ["bench.json", "config.json", "curve.jsonl", "metrics.jsonl", "summary.json"]
        snr = json.loads((run_dir / "summary.json").read_text())
        dpf_dir = layout.results / f"digits-mlp/dpf-matched/seed{seed}"
        dpf_config = json.loads((dpf_dir / "config.json").read_text())
        assert dpf_config["target_sparsity"] == snr["sparsity"]
        assert json.loads((dpf_dir / "summary.json").read_text())["sparsity"] == pytest.approx(snr["sparsity"], abs=1 / 2000)

    # a second call has nothing to do
    assert run_suite(suite, layout, log=logs.append)["ran"] == 0

    # an interrupted run (checkpoint, no results) is refused without --resume, continued with it
    victim = "digits-mlp/snr-ema-0.5/seed1"
    shutil.rmtree(layout.results / victim)
    (layout.work / victim / "summary.json").unlink()
    assert plan(suite, layout)["interrupted"][0].key == victim
    with pytest.raises(BenchError, match="--resume"):
        run_suite(suite, layout, log=logs.append)
    assert run_suite(suite, layout, resume=True, log=logs.append)["ran"] == 1
    assert (layout.results / victim / "summary.json").is_file()

    # a run whose work folder finished but whose files were never copied is just copied
    shutil.rmtree(layout.results / "digits-mlp/dense/seed1")
    assert plan(suite, layout)["uncopied"][0].key == "digits-mlp/dense/seed1"
    assert run_suite(suite, layout, log=logs.append)["ran"] == 0
    assert (layout.results / "digits-mlp/dense/seed1/summary.json").is_file()
    # with how the process that trained it ran it (written beside the run), not an unknown
    copied = json.loads((layout.results / "digits-mlp/dense/seed1/bench.json").read_text())
    assert copied["jobs"] == 1 and copied["threads"] == 1 and copied["cpus"] == os.cpu_count()

    # the report: pending cells listed, never invented; plots written
    shutil.rmtree(layout.results / "digits-mlp/snr-ema-0.5/seed0")
    report = write_report(suite, layout, tmp_path / "RESULTS.md", "snrprune bench tiny.py")
    text = report.read_text()
    assert "**7 of 11 runs finished**" in text
    assert "- `digits-mlp`: 1 of 8: snr-ema-0.5/seed0" in text and "cifar10-resnet20`: skipped" in text
    assert "| cifar10-resnet20 | dense | 0/1 | pending |" in text
    assert "| digits-mlp | snr-ema-0.5 | 1/2 |" in text
    for png in ("accuracy_vs_sparsity.png", "sparsity_curves.png", "snr_distribution_digits-mlp.png"):
        assert (layout.results / "plots" / png).read_bytes()[:4] == b"\x89PNG"


def test_cli_bench_list_and_errors(tmp_path: Path, suite_file: Path, capsys):
    argv = ["bench", str(suite_file), "--results", str(tmp_path / "r"), "--work", str(tmp_path / "w")]
    assert main(argv + ["--list", "--only", "digits-mlp/*/seed0"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out == [f"new          digits-mlp/{m}/seed0" for m in ("dense", "snr", "dpf-matched", "snr-ema-0.5")]
    assert main(["bench", str(tmp_path / "nope.py")]) == 2
    assert "suite file" in capsys.readouterr().err


def test_noise_snr_matches_the_f_distribution():
    """With ema 0 the 'average' is the last per-step SNR: F(1, B-1), mean (B-1)/(B-3), P(>1) about 0.32."""
    values = noise_snr_average(batch_size=128, ema=0.0, steps=5, n=200_000)
    assert values.mean() == pytest.approx(127 / 125, rel=0.02)
    assert np.mean(values > 1) == pytest.approx(scipy_stats.f.sf(1, 1, 127), abs=0.005)
    averaged = noise_snr_average(batch_size=128, ema=0.9, steps=400, n=50_000)
    assert averaged.mean() == pytest.approx(127 / 125, rel=0.02)  # averaging keeps the mean ...
    assert averaged.std() < 0.35 * values.std()  # ... and shrinks the spread


def test_cifar_cells_are_available_once_the_batches_are_there(tmp_path, monkeypatch):
    """Presence is checked from the file names alone: the check reads no batch."""
    from snrprune.bench import cell_unavailable
    from snrprune.data import CIFAR10_TEST_FILE, CIFAR10_TRAIN_FILES

    monkeypatch.delenv("SNRPRUNE_CIFAR10_DIR", raising=False)
    monkeypatch.delenv("SNRPRUNE_DATA_DIR", raising=False)
    cell = Cell("cifar10", "resnet20", epochs=1, seeds=1)
    assert "CIFAR-10 python batches were not found" in cell_unavailable(cell, str(tmp_path))
    for name in (*CIFAR10_TRAIN_FILES, CIFAR10_TEST_FILE):
        (tmp_path / name).write_bytes(b"")  # empty: reading them would fail
    assert cell_unavailable(cell, str(tmp_path)) is None
    assert cell_unavailable(Cell("digits", "mlp", epochs=1)) is None


def test_claims_count_both_readings_of_on_par_with_dpf():
    """The larger of the two spreads (the table's test) and DPF's own spread (the stricter reading) differ."""
    from snrprune.bench import Cell
    from snrprune.bench_report import Headline, _claims

    errors = {  # per cell: method -> errors of the seeds
        "a": {"dense": [0.0172, 0.0170, 0.0174], "m": [0.0160, 0.0172, 0.0184], "dpf": [0.0169, 0.0169, 0.0169]},
        "b": {"dense": [0.10, 0.11, 0.12], "m": [0.10, 0.10, 0.10], "dpf": [0.11, 0.12, 0.13]},
    }

    class Stub:
        def error(self, cell, method):
            return errors[cell.dataset][method]

        def headline(self, cell):
            return Headline()  # the test accuracy, compared as an error in %

        def values(self, cell, method, key):
            return [0.5, 0.5, 0.5]

    cells = [Cell("a", "mlp", epochs=1), Cell("b", "mlp", epochs=1)]
    text = "\n".join(_claims(Stub(), cells, "m", "dpf"))
    # a: +0.03 points, within m's own spread (0.12) but not within DPF's (0.00); b: lower than DPF
    assert "with DPF at the same sparsity in 2 (1 within DPF's own standard deviation, or lower)" in text
    assert "| a-mlp | 1.72 ± 0.02 | 1.72 ± 0.12 | +0.00 (within 1 std) | 1.69 ± 0.00 | +0.03 (within 1 std) | 50.0, 50.0, 50.0 |" in text
