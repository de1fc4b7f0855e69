"""Integrity of `snrprune bench` and of run folders (issue 17): the run-folder lock against a second
process, broken summaries never counted as finished, clear one-line errors (exit 2) for bad suites,
folders and patterns, a closed pipe, a full disk.

Concurrency is tested with real processes that hold a run folder's lock (or run a whole bench), never
by mocking the lock.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from snrprune import checkpoint as checkpoint_module
from snrprune.bench import BenchError, copy_results, default_layout, load_suite, plan, run_suite, summary_problem
from snrprune.checkpoint import NoSpaceError, RunFolderLockedError, atomic_torch_save, run_folder_busy, run_folder_lock
from snrprune.cli import main
from snrprune.training import TrainConfig, TrainingError, train

SUITE_FILE = '''
from snrprune.bench import Cell, Group, Method, Suite
CELL = Cell("digits", "mlp", epochs=2, seeds=1, options={"model_options": {"widths": [16]}, "batch_size": 128, "lr": 0.01})
SUITE = Suite(
    name="tiny",
    groups=[
        Group("Main grid", [CELL, Cell("cifar10", "resnet20", epochs=1, seeds=1)], [
            Method("dense", {"method": "dense"}),
            Method("snr", {"method": "snr", "burn_in_epochs": 0.5}),
            Method("dpf-matched", {"method": "dpf"}, matched_to="snr"),
        ]),
    ],
)
'''
DENSE, SNR, MATCHED = "digits-mlp/dense/seed0", "digits-mlp/snr/seed0", "digits-mlp/dpf-matched/seed0"
TINY_RUN = TrainConfig(dataset="digits", model="mlp", method="dense", epochs=2, batch_size=128, lr=0.01, model_options={"widths": [16]})

HOLDER = """
import sys
from snrprune.checkpoint import run_folder_lock
with run_folder_lock(sys.argv[1], create=True):
    print("locked", flush=True)
    sys.stdin.read()  # until the test closes stdin or kills this process
"""


@contextlib.contextmanager
def held_by_another_process(folder: Path) -> Iterator[subprocess.Popen]:
    """A second Python process that holds ``folder``'s run-folder lock until the block ends (or it is killed)."""
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(folder)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline().strip()
        assert line == "locked", f"the lock holder did not start: {proc.stderr.read() if proc.poll() is not None else line}"
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


def epochs_logged(folder: Path) -> list[int]:
    return [json.loads(line)["epoch"] for line in (folder / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture()
def suite_file(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.py"
    path.write_text(SUITE_FILE)
    return path


@pytest.fixture(scope="module")
def finished_suite(tmp_path_factory) -> Path:
    """The tiny suite run once (dense, snr, dpf matched to snr); tests copy it."""
    root = tmp_path_factory.mktemp("finished")
    (root / "tiny.py").write_text(SUITE_FILE)
    suite = load_suite(root / "tiny.py")
    counts = run_suite(suite, default_layout(suite, str(root / "results"), str(root / "work")), log=lambda line: None)
    assert counts["ran"] == 3 and counts["failed"] == 0
    return root


@pytest.fixture()
def finished(finished_suite: Path, tmp_path: Path):
    """A private copy of the finished tiny suite: (suite, layout, argv prefix for the CLI)."""
    root = tmp_path / "copy"
    shutil.copytree(finished_suite, root)
    suite = load_suite(root / "tiny.py")
    layout = default_layout(suite, str(root / "results"), str(root / "work"))
    argv = ["bench", str(root / "tiny.py"), "--results", str(layout.results), "--work", str(layout.work)]
    return suite, layout, argv


# -- 1. the run-folder lock ---------------------------------------------------------------------


def test_a_second_process_cannot_train_a_locked_folder_new_or_resumed(tmp_path: Path, capsys):
    run = tmp_path / "run"
    train(TINY_RUN, run, progress=False, stop_after_epochs=1)
    assert epochs_logged(run) == [1]
    with held_by_another_process(run) as holder:
        with pytest.raises(TrainingError, match="another process is training the run folder .*run") as exc:
            train(None, run, resume=True, progress=False)
        assert isinstance(exc.value, RunFolderLockedError)
        with pytest.raises(TrainingError, match="another process is training"):
            train(TINY_RUN, run, overwrite=True, progress=False)  # would clear the run's files
        # the CLI: one line, exit 1 (a conflict while running, not bad input)
        assert main(["train", "--resume", str(run), "--quiet"]) == 1
        err = capsys.readouterr().err
        assert f"another process is training the run folder {run}" in err and "Traceback" not in err
        assert epochs_logged(run) == [1] and (run / "checkpoint.pt").is_file()  # nothing cleared or cut
        holder.kill()  # kill -9: the kernel drops the lock with the process
        holder.wait()
    assert not run_folder_busy(run)
    summary = train(None, run, resume=True, progress=False)
    assert summary["finished"] and epochs_logged(run) == [1, 2]


def test_lock_is_reentrant_in_one_thread_and_exclusive_between_threads(tmp_path: Path):
    folder = tmp_path / "new" / "run"
    with run_folder_lock(folder, create=True) as held:
        assert held and folder.is_dir() and list(folder.iterdir()) == []  # no lock file: an empty folder stays empty
        with run_folder_lock(folder) as again:
            assert again
        assert not run_folder_busy(folder)  # held by this thread: not "another process"
        errors: list[BaseException] = []

        def other() -> None:
            try:
                with run_folder_lock(folder, wait=0.1):
                    pass
            except RunFolderLockedError as exc:
                errors.append(exc)

        thread = threading.Thread(target=other)
        thread.start()
        thread.join()
        assert len(errors) == 1 and "another thread of this process" in str(errors[0])
    assert not (tmp_path / "new").exists()  # made for the block and still empty: removed, parents too
    with run_folder_lock(folder, create=True, wait=0.1):  # released
        (folder / "config.json").write_text("{}")
    assert folder.is_dir()  # not empty: kept


def test_bench_skips_a_run_another_process_is_training(tmp_path: Path, suite_file: Path, capsys):
    """Neither "interrupted" (no --resume advice) nor started: "running in another process (skipped)"."""
    suite = load_suite(suite_file)
    layout = default_layout(suite, str(tmp_path / "results"), str(tmp_path / "work"))
    snr_dir = layout.work / SNR
    # the snr run is mid-way (a checkpoint after epoch 1) and another process holds its folder
    train(suite.runs()[1].config(), snr_dir, progress=False, stop_after_epochs=1)
    argv = ["bench", str(suite_file), "--results", str(layout.results), "--work", str(layout.work)]
    with held_by_another_process(snr_dir):
        assert plan(suite, layout)["running"] == [suite.runs()[1]]
        assert main([*argv, "--list", "--only", "digits-mlp/*"]) == 0
        listed = capsys.readouterr().out.splitlines()
        assert f"running      {SNR}" in listed and f"new          {DENSE}" in listed
        logs: list[str] = []
        counts = run_suite(suite, layout, log=logs.append)  # no --resume: not refused as "interrupted"
        assert counts["ran"] == 1 and counts["running_elsewhere"] == 1 and counts["failed"] == 0
        assert f"[bench] {SNR}: running in another process (skipped)" in logs
        assert f"[bench] {MATCHED}: not run, it needs the finished run {SNR} (running in another process: run this again when it has finished)" in logs
        assert not any("interrupted" in line or "--resume" in line for line in logs)
        assert epochs_logged(snr_dir) == [1]  # untouched
        assert run_suite(suite, layout, resume=True, log=logs.append)["running_elsewhere"] == 1  # --resume: skipped too
        assert epochs_logged(snr_dir) == [1]
        assert main(argv) == 0
        assert "1 running in another process" in capsys.readouterr().out
    assert plan(suite, layout)["interrupted"] == [suite.runs()[1]]  # the holder has ended: an ordinary interrupted run
    assert run_suite(suite, layout, resume=True, log=lambda line: None)["ran"] == 2
    assert epochs_logged(snr_dir) == [1, 2] and epochs_logged(layout.result_dir(suite.runs()[1])) == [1, 2]


def test_two_benches_on_one_suite_train_each_run_once(tmp_path: Path):
    """Two real `snrprune bench` processes at once: every run trained by one of them, logs intact."""
    path = tmp_path / "two.py"
    path.write_text(SUITE_FILE.replace(', Cell("cifar10", "resnet20", epochs=1, seeds=1)', "").replace("seeds=1", "seeds=2"))
    argv = [sys.executable, "-m", "snrprune", "bench", str(path), "--results", str(tmp_path / "r"), "--work", str(tmp_path / "w"), "--threads", "1"]
    procs = [subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outputs = [p.communicate(timeout=600) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    suite = load_suite(path)
    for run in suite.runs():
        trained_by = [out for out, _ in outputs if f"{run.key}: test accuracy" in out]
        assert len(trained_by) == 1, (run.key, outputs)
        for folder in (tmp_path / "r" / run.key, tmp_path / "w" / run.key):
            assert epochs_logged(folder) == [1, 2]
        assert summary_problem(tmp_path / "r" / run.key / "summary.json") is None
    assert not any("interrupted" in out or "Traceback" in err for out, err in outputs)


# -- 2. a broken summary.json is never "finished" --------------------------------------------------


BROKEN = {
    "truncated": (b'{"finished": true, "test_accuracy": 0.9', "is not valid JSON (truncated or corrupt"),
    "empty": (b"", "is empty"),
    "not utf-8": (b'{"finished": true, "method": "\xff\xfe"}', "is not UTF-8 text"),
    "empty object": (b"{}", "is an empty JSON object"),
    "a list": (b"[1, 2]", "is not a JSON object"),
    "unfinished": (b'{"finished": false}', "does not say finished: true"),
    "incomplete": (b'{"finished": true, "test_accuracy": 0.9}', "lacks method, seed, epochs, sparsity"),
    "wrong type": (None, "has sparsity = '0.5' (a str), where a finished run's summary has a int or float"),
}


@pytest.mark.parametrize("kind", BROKEN)
def test_summary_problem_names_what_is_wrong(kind: str, finished, tmp_path: Path):
    suite, layout, _ = finished
    good = layout.result_dir(suite.runs()[0]) / "summary.json"
    assert summary_problem(good) is None
    content, message = BROKEN[kind]
    if content is None:
        content = json.dumps({**json.loads(good.read_text()), "sparsity": "0.5"}).encode()
    path = tmp_path / "summary.json"
    path.write_bytes(content)
    assert message in summary_problem(path)


def test_a_truncated_work_summary_is_resumed_not_copied(finished):
    suite, layout, _ = finished
    run = suite.runs()[0]
    shutil.rmtree(layout.result_dir(run))
    work_summary = layout.work_dir(run) / "summary.json"
    work_summary.write_text(work_summary.read_text()[:40])
    assert layout.inspect(run)[0] == "interrupted" and str(work_summary) in layout.inspect(run)[1]
    with pytest.raises(BenchError, match="no result was copied|nothing was copied"):
        copy_results(layout.work_dir(run), layout.result_dir(run))
    assert not layout.result_dir(run).exists()
    with pytest.raises(BenchError, match=f"interrupted(.|\n)*{re.escape(str(work_summary))}(.|\n)*--resume"):
        run_suite(suite, layout, log=lambda line: None)
    logs: list[str] = []
    assert run_suite(suite, layout, resume=True, log=logs.append)["ran"] == 1
    assert any(line.startswith(f"[bench] {DENSE}: resumed") and str(work_summary) in line for line in logs)
    assert summary_problem(work_summary) is None and summary_problem(layout.result_dir(run) / "summary.json") is None
    assert epochs_logged(layout.result_dir(run)) == [1, 2]


def test_a_broken_committed_summary_is_recopied_or_refused(finished, capsys):
    suite, layout, argv = finished
    dense, snr = suite.runs()[0], suite.runs()[1]
    # the run folder still holds a valid summary: copied again, and said so
    committed = layout.result_dir(dense) / "summary.json"
    committed.write_bytes(b"")
    assert layout.inspect(dense)[0] == "uncopied"
    logs: list[str] = []
    assert run_suite(suite, layout, log=logs.append)["ran"] == 0
    assert any(f"{DENSE}: finished earlier, results copied ({committed} is empty; it is copied again" in line for line in logs)
    assert summary_problem(committed) is None
    # nothing to repair it from: refused before any run starts, the file named, exit 2
    shutil.rmtree(layout.work_dir(snr))
    broken = layout.result_dir(snr) / "summary.json"
    broken.write_text('{"finished": true')
    shutil.rmtree(layout.result_dir(suite.runs()[2]))  # a run that would start
    shutil.rmtree(layout.work_dir(suite.runs()[2]))
    assert plan(suite, layout)["broken"] == [snr]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert str(broken) in err and "nothing was started" in err and "Traceback" not in err
    assert not layout.result_dir(suite.runs()[2]).exists()


def test_a_matched_run_whose_dependency_summary_is_broken(finished, capsys):
    suite, layout, argv = finished
    shutil.rmtree(layout.result_dir(suite.runs()[2]))
    shutil.rmtree(layout.work_dir(suite.runs()[2]))
    shutil.rmtree(layout.work_dir(suite.runs()[1]))
    dependency = layout.result_dir(suite.runs()[1]) / "summary.json"
    dependency.write_text("{}")
    assert main([*argv, "--only", MATCHED]) == 2  # the dependency is outside --only
    err = capsys.readouterr().err
    assert f"{MATCHED} needs {SNR}" in err and str(dependency) in err and "Traceback" not in err
    assert not layout.work_dir(suite.runs()[2]).exists()


# -- 3. --report over broken files --------------------------------------------------------------


@pytest.mark.parametrize("kind", ["truncated", "empty", "not utf-8", "empty object"])
@pytest.mark.parametrize("which", [DENSE, SNR])  # snr: the dependency of the matched DPF run
def test_report_over_a_broken_summary_names_the_file(kind: str, which: str, finished, tmp_path: Path, capsys):
    suite, layout, argv = finished
    path = layout.results / which / "summary.json"
    path.write_bytes(BROKEN[kind][0])
    assert main([*argv, "--report", "--report-path", str(tmp_path / "RESULTS.md")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(path) in err and BROKEN[kind][1] in err and "Traceback" not in err
    assert not (tmp_path / "RESULTS.md").exists()


def test_report_over_a_broken_bench_json_names_the_file(finished, tmp_path: Path, capsys):
    suite, layout, argv = finished
    meta = layout.results / DENSE / "bench.json"
    meta.write_bytes(b'{"jobs": 1,')
    assert main([*argv, "--report", "--report-path", str(tmp_path / "RESULTS.md")]) == 2
    assert str(meta) in capsys.readouterr().err


# -- 4. suite files -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "source, expected",
    [
        ("from snrprune.bench import Suite\nSUITE = Suite(name='x', groups=[]\n", "SyntaxError"),
        ("from snrprune.bench import Suite\n\nSUITE = Suite(name=undefined_name, groups=[])\n", "line 3 (SUITE = Suite(name=undefined_name, groups=[])): NameError"),
        ("import os\nfrom snrprune.nothing_here import Suite\n", "line 2 (from snrprune.nothing_here import Suite): ModuleNotFoundError"),
    ],
)
def test_a_suite_file_with_a_python_error_is_named_with_its_line(source: str, expected: str, tmp_path: Path, capsys):
    path = tmp_path / "bad.py"
    path.write_text(source)
    assert main(["bench", str(path), "--list"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(path) in err and expected in err and "Traceback" not in err
    if expected == "SyntaxError":
        assert "line 2" in err or "line 3" in err


def test_a_suite_path_that_is_a_folder(tmp_path: Path, capsys):
    assert main(["bench", str(tmp_path), "--list"]) == 2
    assert f"{tmp_path} is a folder, not a suite file" in capsys.readouterr().err


@pytest.mark.parametrize(
    "method, expected",
    [
        ('Method("m", {"method": "snr", "bogus_option": 3})', "method 'm' in group 'G' has an unknown option 'bogus_option'; valid options: method, model_options"),
        ('Method("m", {"method": "snr", "emma": 0.5})', "unknown option 'emma' (did you mean 'ema'?)"),
        ('Method("m", {"method": "snr", "ema": 2.0})', "run digits-mlp/m/seed0 (cell 'digits-mlp', method 'm', options {'method': 'snr', 'ema': 2.0}) is not a valid configuration: ema must be in [0, 1)"),
        ('Method("m", {"method": "dpf"}, matched_to="nope")', "method 'm' is matched_to 'nope', which cell 'digits-mlp' does not run"),
        ('Method("m", {"method": "dense", "seed": 4})', "sets 'seed'"),
        (
            'Method("m", {"method": "dpf", "granularity": "unit"}, matched_to="dense")',
            "method 'm' (granularity 'unit') is matched_to 'dense' (granularity 'weight'): a target of units and a sparsity of weights do not match",
        ),
    ],
)
def test_a_suite_method_with_a_bad_option_is_refused_before_any_run(method: str, expected: str, tmp_path: Path, capsys):
    path = tmp_path / "opts.py"
    path.write_text(
        "from snrprune.bench import Cell, Group, Method, Suite\n"
        f"SUITE = Suite(name='opts', groups=[Group('G', [Cell('digits', 'mlp', epochs=1, seeds=1)], [Method('dense', {{'method': 'dense'}}), {method}])])\n"
    )
    with pytest.raises(BenchError) as exc:
        load_suite(path)
    assert expected in str(exc.value)
    work = tmp_path / "work"
    assert main(["bench", str(path), "--results", str(tmp_path / "results"), "--work", str(work)]) == 2
    assert expected in capsys.readouterr().err
    assert not work.exists()  # nothing started, not even the valid method


# -- 5. folders -----------------------------------------------------------------------------------


def test_results_that_is_a_file_and_report_paths_that_cannot_be_written(suite_file: Path, tmp_path: Path, capsys):
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    for mode in ([], ["--list"], ["--report"]):
        assert main(["bench", str(suite_file), "--results", str(a_file), "--work", str(tmp_path / "w"), *mode]) == 2
        assert f"--results {a_file} is a file, not a folder" in capsys.readouterr().err
    assert main(["bench", str(suite_file), "--results", str(tmp_path / "r"), "--work", str(a_file), "--list"]) == 2
    assert f"--work {a_file} is a file" in capsys.readouterr().err
    base = ["bench", str(suite_file), "--results", str(tmp_path / "r"), "--work", str(tmp_path / "w"), "--report", "--report-path"]
    cases = [
        (tmp_path / "missing" / "RESULTS.md", "its folder {} does not exist; create the folder"),
        (a_file / "RESULTS.md", "its folder {} is a file"),
        (tmp_path, "is a folder; give a file name"),
    ]
    if Path("/proc/self").is_dir():  # not writable even by root
        cases.append((Path("/proc/RESULTS.md"), "cannot be written: cannot create anything in /proc"))
    for report, message in cases:
        assert main([*base, str(report)]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and message.format(report.parent) in err, err
    assert not (tmp_path / "missing").exists()


# -- 6. --only matching nothing --------------------------------------------------------------------


def test_only_matching_nothing_lists_the_cells_and_methods(suite_file: Path, tmp_path: Path, capsys):
    argv = ["bench", str(suite_file), "--results", str(tmp_path / "r"), "--work", str(tmp_path / "w"), "--only", "mnist/*"]
    for extra in (["--list"], []):
        assert main(argv + extra) == 2
        err = capsys.readouterr().err
        assert "--only 'mnist/*' matches none of the 6 runs of suite 'tiny'" in err
        assert "Cells: digits-mlp, cifar10-resnet20. Methods: dense, snr, dpf-matched" in err
    assert not (tmp_path / "w").exists()


# -- 7. a closed pipe ---------------------------------------------------------------------------


def test_output_into_a_closed_pipe_ends_quietly(suite_file: Path, tmp_path: Path):
    """`snrprune bench --list | head -0`: the reader is gone before the first write."""
    read, write = os.pipe()
    os.close(read)
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "snrprune", "bench", str(suite_file), "--list", "--results", str(tmp_path / "r"), "--work", str(tmp_path / "w")],
            stdout=write, stderr=subprocess.PIPE, text=True, timeout=120,
        )
    finally:
        os.close(write)
    assert proc.stderr == "" and proc.returncode == 141


def test_list_into_head(suite_file: Path, tmp_path: Path):
    """The shell pipeline itself, with more lines than `head` reads."""
    many = tmp_path / "many.py"
    many.write_text(SUITE_FILE.replace("seeds=1,", "seeds=5000,", 1))  # ~500 kB: more than a pipe holds
    cmd = f"{sys.executable} -m snrprune bench {many} --list --results {tmp_path / 'r'} --work {tmp_path / 'w'} | head -5"
    proc = subprocess.run(["bash", "-c", cmd], capture_output=True, text=True, timeout=120)
    assert len(proc.stdout.splitlines()) == 5 and proc.stderr == ""


# -- 9. a full disk -----------------------------------------------------------------------------


def test_a_full_disk_keeps_the_previous_checkpoint(tmp_path: Path, monkeypatch):
    """The write goes to /dev/full: the kernel's own ENOSPC, through torch's zip writer."""
    if not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full")
    path = tmp_path / "checkpoint.pt"
    atomic_torch_save({"epoch": 1, "w": torch.ones(1000)}, path)
    before = path.read_bytes()
    real = checkpoint_module.open_temp_beside

    def temp_on_a_full_disk(target: Path) -> tuple[int, str]:
        fd, tmp = real(target)  # the temporary file exists, as on a real disk ...
        os.close(fd)
        return os.open("/dev/full", os.O_WRONLY), tmp  # ... and every write to it fails with ENOSPC

    monkeypatch.setattr(checkpoint_module, "open_temp_beside", temp_on_a_full_disk)
    with pytest.raises(NoSpaceError) as exc:
        atomic_torch_save({"epoch": 2, "w": torch.zeros(100_000)}, path)
    assert str(exc.value).startswith(f"no space left on the device of {tmp_path.resolve()} while writing {path}; the previous checkpoint.pt is kept")
    assert path.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pt"]
    with pytest.raises(NoSpaceError, match="no other.pt was written"):
        atomic_torch_save({"w": torch.zeros(10)}, tmp_path / "other.pt")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pt"]


def test_a_full_disk_mid_run_is_one_line_and_the_run_resumes(tmp_path: Path, monkeypatch, capsys):
    """The write raising OSError(ENOSPC) at the second epoch's checkpoint: exit 1, epoch 1 kept."""
    import errno

    real_save = torch.save
    calls = []

    def save(obj, f, *args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            f.write(b"PK\x03\x04partial")
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(checkpoint_module.torch, "save", save)
    run = tmp_path / "run"
    argv = ["train", "--dataset", "digits", "--model", "mlp", "--method", "dense", "--epochs", "2", "--quiet", "--out", str(run)]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert f"no space left on the device of {run.resolve()} while writing {run / 'checkpoint.pt'}; the previous checkpoint.pt is kept" in err
    assert "Traceback" not in err and not list(run.glob(".*.tmp"))
    assert torch.load(run / "checkpoint.pt", weights_only=True)["epoch"] == 1
    monkeypatch.setattr(checkpoint_module.torch, "save", real_save)
    assert main(["train", "--resume", str(run), "--quiet"]) == 0
    assert epochs_logged(run) == [1, 2]


def test_a_unit_run_takes_its_matched_target_from_the_unit_sparsity():
    from snrprune.bench import Cell, Method, Run, matched_target

    cell = Cell("digits", "mlp", epochs=1, seeds=1)
    unit = Run(cell, Method("u", {"method": "dpf", "granularity": "unit"}, matched_to="a"), 0)
    weight = Run(cell, Method("w", {"method": "dpf"}, matched_to="a"), 0)
    summary = {"sparsity": 0.83, "unit_sparsity": 0.41}
    assert matched_target(unit, summary) == 0.41
    assert matched_target(weight, summary) == 0.83
    with pytest.raises(BenchError, match="has no unit sparsity"):
        matched_target(unit, {"sparsity": 0.83})
