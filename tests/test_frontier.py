"""DPF's lossless frontier in the suite's report: the rule, pending ladders, the kept-weight ratio."""

import json

import pytest

from snrprune.bench import Cell, Group, Layout, Method, Suite
from snrprune.bench_report import Results, frontier_ladder, lossless_frontier, write_report

LADDER = [Method(f"dpf-{100 * t:g}", {"method": "dpf", "target_sparsity": t}) for t in (0.5, 0.8, 0.9, 0.95)]
CELL = Cell("digits", "mlp", epochs=2, seeds=3)
SUITE = Suite(
    "frontier-test",
    [
        Group("main", [CELL], [Method("dense", {"method": "dense"}), Method("snr-auto", {"method": "snr-auto"}), Method("dpf-m", {"method": "dpf"}, matched_to="snr-auto")]),
        Group("ladder", [CELL], LADDER),
    ],
)


def _summary(layout: Layout, method: str, seed: int, error: float, sparsity: float) -> None:
    folder = layout.results / f"{CELL.key}/{method}/seed{seed}"
    folder.mkdir(parents=True, exist_ok=True)
    summary = {
        "finished": True, "method": method, "seed": seed, "epochs": 2, "test_accuracy": 1 - error, "dense_test_accuracy": 1 - error,
        "sparsity": sparsity, "wall_seconds": 1.0, "params": 100, "nonzero_params": round(100 * (1 - sparsity)),
        "layer_sparsity": {"0.weight": sparsity}, "layer_params": {"0.weight": 100}, "regrown_distinct": 0,
    }
    (folder / "summary.json").write_text(json.dumps(summary))


@pytest.fixture
def layout(tmp_path):
    layout = Layout(tmp_path / "results", tmp_path / "work")
    for seed, error in enumerate((0.100, 0.102, 0.104)):  # dense: mean 10.2%, std 0.2 points
        _summary(layout, "dense", seed, error, 0.0)
        _summary(layout, "snr-auto", seed, error, 0.70)
    return layout


def test_the_ladder_is_plain_dpf_at_fixed_targets():
    assert frontier_ladder(SUITE) == {"dpf-50": 0.5, "dpf-80": 0.8, "dpf-90": 0.9, "dpf-95": 0.95}  # not the matched one


def test_frontier_is_the_largest_target_within_dense_std_or_a_tenth_of_a_point(layout):
    ladder = frontier_ladder(SUITE)
    # dense's std (0.2 points) is larger than 0.1: the bound is 10.4%
    for method, error in (("dpf-50", 0.101), ("dpf-80", 0.105), ("dpf-90", 0.1035), ("dpf-95", 0.120)):
        for seed in range(3):
            _summary(layout, method, seed, error, ladder[method])
    # 80% misses the bound, 90% meets it: the largest target that meets it counts (not the first to miss)
    assert lossless_frontier(Results(SUITE, layout), CELL, ladder) == (0.9, True)


def test_a_pending_target_above_makes_the_frontier_a_lower_bound(layout):
    ladder = frontier_ladder(SUITE)
    for method, error in (("dpf-50", 0.101), ("dpf-80", 0.102)):
        for seed in range(3):
            _summary(layout, method, seed, error, ladder[method])
    _summary(layout, "dpf-90", 0, 0.101, 0.9)  # one seed of three: not finished, not counted
    assert lossless_frontier(Results(SUITE, layout), CELL, ladder) == (0.8, False)
    for seed in range(3):
        _summary(layout, "dpf-95", seed, 0.2, 0.95)
    for seed in (1, 2):
        _summary(layout, "dpf-90", seed, 0.101, 0.9)
    assert lossless_frontier(Results(SUITE, layout), CELL, ladder) == (0.9, True)


def test_a_cell_where_no_target_is_lossless_is_listed_below_the_ladder(layout, tmp_path):
    ladder = frontier_ladder(SUITE)
    for method in ladder:
        for seed in range(3):
            _summary(layout, method, seed, 0.2, ladder[method])
    assert lossless_frontier(Results(SUITE, layout), CELL, ladder) == (None, True)
    text = write_report(SUITE, layout, tmp_path / "R.md", "snrprune bench").read_text()
    # snr-auto chose 70%: the frontier is below 50%, so it kept less than (1 - 0.7) / (1 - 0.5) = 0.6 times what it needed
    assert "| digits-mlp | 10.20 ± 0.20 | < 50 (no target lossless) | 70.0 ± 0.0 / < 0.60 |" in text
    assert "`snr-auto`: kept ratio at most 1.5 on 1 of 1 cells with a complete ladder (1 of the 1 below the ladder)." in text


def test_dpf_at_a_fraction_of_units_and_other_cells_ladders_are_not_this_cells_rungs(layout, tmp_path):
    # the report used to take DPF at 50% of units for a rung of every cell's ladder; no cell ran it,
    # so no ladder was ever complete and the cells below the ladder were left out of the table
    other = Cell("optdigits", "mlp", epochs=2, seeds=1)
    suite = Suite(
        "frontier-test",
        [
            *SUITE.groups,
            Group("units", [CELL], [Method("dpf-unit-50", {"method": "dpf", "target_sparsity": 0.5, "granularity": "unit"})]),
            Group("other", [other], [Method("dpf-60", {"method": "dpf", "target_sparsity": 0.6})]),
        ],
    )
    assert frontier_ladder(suite) == {"dpf-50": 0.5, "dpf-80": 0.8, "dpf-90": 0.9, "dpf-95": 0.95, "dpf-60": 0.6}
    assert frontier_ladder(suite, CELL) == frontier_ladder(SUITE)
    for method, target in frontier_ladder(SUITE).items():
        for seed in range(3):
            _summary(layout, method, seed, 0.2, target)
    text = write_report(suite, layout, tmp_path / "R.md", "snrprune bench").read_text()
    assert "| digits-mlp | 10.20 ± 0.20 | < 50 (no target lossless) | 70.0 ± 0.0 / < 0.60 |" in text


def test_report_has_the_frontier_table_ratio_and_plot(layout, tmp_path):
    ladder = frontier_ladder(SUITE)
    for method, error in (("dpf-50", 0.101), ("dpf-80", 0.102), ("dpf-90", 0.103), ("dpf-95", 0.13)):
        for seed in range(3):
            _summary(layout, method, seed, error, ladder[method])
    report = write_report(SUITE, layout, tmp_path / "R.md", "snrprune bench")
    text = report.read_text()
    # snr-auto chose 70% where 90% was lossless: it kept (1 - 0.7) / (1 - 0.9) = 3 times the weights it needed
    assert "| digits-mlp | 10.20 ± 0.20 | 90 | 70.0 ± 0.0 / 3.00 |" in text
    assert "`snr-auto`: kept ratio at most 1.5 on 0 of 1 cells" in text
    assert (layout.results / "plots" / "frontier.png").stat().st_size > 0


def test_compact_size_counts_the_units_left_by_hand():
    pytest.importorskip("torch_pruning")
    from snrprune.bench_report import compact_size

    summary = {"model": "lenet300", "input_shape": [1, 28, 28], "num_classes": 10}
    # 784 -> 300 -> 100 -> 10 with 10 and 5 units left: weights and biases of 784x10, 10x5, 5x10
    assert compact_size({**summary, "units_kept": {"1.weight": 10, "3.weight": 5}}, {}) == (
        784 * 10 + 10 + 10 * 5 + 5 + 5 * 10 + 10,
        784 * 10 + 10 * 5 + 5 * 10,
    )
    assert compact_size(summary, {}) == (784 * 300 + 300 + 300 * 100 + 100 + 100 * 10 + 10, 784 * 300 + 300 * 100 + 100 * 10)
