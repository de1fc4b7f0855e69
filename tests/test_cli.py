"""Tests for the command line: argparse errors before any work, runs, resume, export, fault messages."""

from __future__ import annotations

import json
import os

import pytest

from snrprune.cli import main

TINY = ["--dataset", "digits", "--model", "mlp", "--model-option", "widths=[16]", "--batch-size", "64", "--lr", "0.01", "--quiet"]


def usage_error(argv, capsys) -> str:
    """Runs ``snrprune argv``, expects argparse's exit status 2, returns stderr."""
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "usage: snrprune" in err and "Traceback" not in err
    return err


@pytest.mark.parametrize(
    "argv, expected",
    [
        (["--dataset", "imagenet"], ["unknown dataset 'imagenet'", "digits", "mnist", "csv:PATH"]),
        (["--model", "gpt2"], ["invalid choice", "lenet300", "resnet20", "wrn28-2"]),
        (["--method", "lottery"], ["invalid choice", "dense", "dpf", "snr"]),
        (["--epochs", "-3"], ["--epochs", "must be a positive integer"]),
        (["--epochs", "0"], ["--epochs", "must be a positive integer"]),
        (["--method", "dpf", "--target-sparsity", "1.0"], ["--target-sparsity", "must be in [0, 1)"]),
        (["--method", "dpf", "--target-sparsity", "-0.1"], ["--target-sparsity", "must be in [0, 1)"]),
        (["--method", "dpf"], ["--method dpf needs --target-sparsity"]),
        (["--batch-size", "1"], ["--batch-size 1", "--method snr", "at least 2 samples"]),
        (["--method", "dense", "--combine", "either"], ["--combine only applies to --method snr"]),
        (["--target-sparsity", "0.5"], ["--target-sparsity only applies to --method dpf"]),
        (["--method", "dpf", "--target-sparsity", "0.5", "--window-epochs", "2"], ["--window-epochs only applies to --method snr-auto"]),
        (["--auto-step", "0.3"], ["--auto-step only applies to --method snr-auto (this run uses --method snr)"]),
        (["--method", "snr-auto", "--auto-step", "1"], ["--auto-step", "must be in (0, 1)"]),
        (["--method", "dense", "--threshold", "2"], ["--threshold only applies to --method snr or snr-auto"]),
        (["--method", "snr-auto", "--ema", "0.5"], ["--ema only applies to --method snr"]),
        (["--no-auto-lr-scale"], ["--auto-lr-scale only applies to --method snr-auto (this run uses --method snr)"]),
        (["--method", "dpf", "--target-sparsity", "0.5", "--auto-hysteresis"], ["--auto-hysteresis only applies to --method snr-auto"]),
        (["--lr", "0"], ["--lr", "must be in (0, inf)"]),
        (["--combine", "maybe"], ["invalid choice", "agree", "either", "magnitude"]),
        (["--device", "tpu"], ["unknown device 'tpu'", "cpu, cuda"]),
        (["--model-option", "widths"], ["expected KEY=VALUE"]),
        (["--target", "label"], ["--target COLUMN only applies to --dataset csv:PATH"]),
        (["--optimizer", "adam", "--nesterov"], ["nesterov needs optimizer 'sgd'"]),
        (["--resume", "somewhere", "--epochs", "3"], ["--resume continues a run", "--epochs"]),
    ],
)
def test_bad_arguments_exit_2_before_any_work(argv, expected, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    err = usage_error(["train", *argv], capsys)
    for text in expected:
        assert text in err
    assert list(tmp_path.iterdir()) == []  # no run folder was created


def test_cuda_without_gpu(capsys, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    err = usage_error(["train", *TINY, "--device", "cuda"], capsys)
    assert "CUDA is not available" in err and "--device cpu" in err


def test_no_subcommand(capsys):
    usage_error([], capsys)


def test_train_resume_and_export(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", *TINY, "--epochs", "3", "--out", str(out), "--stop-after-epochs", "2"]) == 0
    printed = capsys.readouterr().out
    assert "stopped after epoch 2 of 3" in printed and f"--resume {out}" in printed

    assert main(["train", "--resume", str(out), "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "test accuracy" in printed and "sparsity (prunable)" in printed and "weights regrown" in printed
    summary = json.loads((out / "summary.json").read_text())
    assert summary["epochs"] == 3 and summary["dataset"] == "digits" and summary["method"] == "snr"
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 3

    assert main(["train", "--resume", str(out)]) == 0
    assert "already finished" in capsys.readouterr().out

    assert main(["export", str(out), "--format", "sparse"]) == 0
    assert "ratio:" in capsys.readouterr().out and (out / "model_sparse.pt").is_file()


def test_existing_out_dir_is_refused_unless_overwrite(tmp_path, capsys):
    (tmp_path / "keep.txt").write_text("x")
    err = usage_error(["train", *TINY, "--epochs", "1", "--out", str(tmp_path)], capsys)
    assert "not empty" in err and "--overwrite" in err and "--resume" in err
    assert main(["train", *TINY, "--epochs", "1", "--out", str(tmp_path), "--overwrite"]) == 0
    assert (tmp_path / "summary.json").is_file() and (tmp_path / "keep.txt").is_file()


def test_default_out_dir(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["train", *TINY, "--epochs", "1", "--method", "dense"]) == 0
    (run,) = (tmp_path / "runs").iterdir()
    assert run.name.startswith("digits-mlp-dense-")
    assert f"output: runs/{run.name}" in capsys.readouterr().out
    for name in ("config.json", "metrics.jsonl", "summary.json", "model.pt", "checkpoint.pt", "sparsity.png", "layers.png"):
        assert (run / name).is_file()


def test_missing_data_is_a_message_not_a_traceback(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("SNRPRUNE_CIFAR10_DIR", raising=False)
    monkeypatch.delenv("SNRPRUNE_DATA_DIR", raising=False)
    empty = tmp_path / "empty"
    empty.mkdir()
    code = main(["train", "--dataset", "cifar10", "--model", "resnet20", "--data-dir", str(empty), "--out", str(tmp_path / "run"), "--quiet"])
    err = capsys.readouterr().err
    assert code == 1
    assert "CIFAR-10 not found" in err and "--data-dir" in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()


def test_diverging_run_exits_non_zero(tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["train", *TINY, "--optimizer", "sgd", "--lr", "1e6", "--epochs", "2", "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 1 and "training diverged" in err and "smaller learning rate" in err and "Traceback" not in err


def test_csv_dataset_with_target_column(tmp_path, capsys):
    rows = ["colour,size,label,weight"]
    for i in range(200):
        rows.append(f"{['red', 'blue'][i % 2]},{i % 7},{'yes' if i % 3 else 'no'},{(i * 37) % 11 if i % 10 else ''}")
    data = tmp_path / "toy.csv"
    data.write_text("\n".join(rows) + "\n")
    out = tmp_path / "run"
    argv = ["train", "--dataset", f"csv:{data}", "--target", "label", "--model", "mlp", "--model-option", "widths=8,8", "--epochs", "2", "--batch-size", "16", "--out", str(out), "--quiet"]
    assert main(argv) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["num_classes"] == 2 and summary["model"] == "mlp"
    config = json.loads((out / "config.json").read_text())
    assert config["target"] == "label" and config["model_options"] == {"widths": [8, 8]}
    capsys.readouterr()

    err_code = main(["train", "--dataset", f"csv:{data}", "--target", "nope", "--model", "mlp", "--out", str(tmp_path / "r2"), "--quiet"])
    assert err_code == 2 and "target column 'nope' not found" in capsys.readouterr().err


def test_bad_model_option_value(tmp_path, capsys):
    code = main(["train", *TINY, "--model-option", "depth=3", "--out", str(tmp_path / "run")])
    assert code == 2 and "unknown option(s) 'depth'" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


# ---------------------------------------------------------------- paths, exit codes and abbreviations


@pytest.mark.parametrize("out", ["/proc/snrprune-run", "/sys/snrprune-run", "FILE/run"])
def test_unwritable_out_is_a_usage_error(out, tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    out = out.replace("FILE", str(blocker))
    err = usage_error(["train", *TINY, "--out", out], capsys)
    assert f"cannot write the run folder {out}" in err and "choose another --out" in err


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root may write into a read-only folder")
def test_out_in_a_read_only_folder_is_a_usage_error(tmp_path, capsys):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    err = usage_error(["train", *TINY, "--out", str(locked / "run")], capsys)
    assert "cannot create anything in" in err


def test_out_expands_the_home_folder(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    assert main(["train", *TINY, "--epochs", "1", "--method", "dense", "--out", "~/run"]) == 0
    assert (tmp_path / "home" / "run" / "summary.json").is_file() and not (tmp_path / "~").exists()
    assert f"output: {tmp_path / 'home' / 'run'}" in capsys.readouterr().out


@pytest.mark.parametrize(
    "argv",
    [
        ["train", "--epoch", "2"],  # abbreviation of --epochs
        ["train", "--over"],  # of --overwrite
        ["export", "somewhere", "--out", "x.pt"],  # of --output
    ],
)
def test_abbreviated_options_are_refused(argv, capsys):
    assert "unrecognized arguments" in usage_error(argv, capsys)


def test_bad_input_found_while_loading_exits_2(tmp_path, capsys):
    cases = [
        (["--dataset", f"csv:{tmp_path / 'missing.csv'}"], "CSV file not found"),
        (["--batch-size", "5000"], "batch_size 5000 is larger than the 1438 training samples"),
        (["--data-dir", str(tmp_path / "nowhere")], "nowhere does not exist"),
    ]
    for i, (extra, expected) in enumerate(cases):
        argv = ["train", *TINY, "--method", "dense", *extra, "--out", str(tmp_path / f"run{i}")]
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert expected in err and "Traceback" not in err


def test_resume_removes_stale_temporary_files(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", *TINY, "--epochs", "2", "--out", str(out), "--stop-after-epochs", "1"]) == 0
    stale = [out / ".checkpoint.pt.0badf00d.tmp", out / ".metrics.jsonl.tmp"]
    for path in stale:
        path.write_bytes(b"half a checkpoint")  # a write killed mid-way
    assert main(["train", "--resume", str(out), "--quiet"]) == 0
    assert not any(path.exists() for path in stale)
    assert (out / "summary.json").is_file()


def test_data_warnings_are_one_line(tmp_path, capsys):
    data = tmp_path / "toy.csv"
    rows = ["size,empty,label"] + [f"{i % 9},,{'ab'[i % 2]}" for i in range(80)]
    rows[5] = "oops,,a"
    data.write_text("\n".join(rows) + "\n")
    argv = ["train", "--dataset", f"csv:{data}", "--model", "mlp", "--model-option", "widths=[4]", "--method", "dense", "--epochs", "1", "--batch-size", "16", "--out", str(tmp_path / "run"), "--quiet"]
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert "snrprune: warning: " in err and "column 'size'" in err and "'oops' (row 6)" in err
    assert "column(s) 'empty' are empty in every row and were dropped" in err
    assert "warnings.warn" not in err
