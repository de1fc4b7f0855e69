"""Tests for the compressed export: exact bit packing, exact reconstruction, same outputs, smaller files."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from torch import nn

from snrprune.cli import main
from snrprune.export import (
    ExportPathError,
    compress_state_dict,
    decompress_state_dict,
    export_sparse,
    load_run_model,
    load_sparse,
    pack_bits,
    unpack_bits,
)
from snrprune.training import TrainConfig, train


@pytest.mark.parametrize("n", [0, 1, 7, 8, 9, 64, 1001])
def test_pack_bits_round_trip(n):
    mask = torch.rand(n, generator=torch.Generator().manual_seed(n)) < 0.3
    packed = pack_bits(mask)
    assert packed.dtype == torch.uint8 and packed.numel() == (n + 7) // 8
    assert torch.equal(unpack_bits(packed, n), mask)


def test_pack_bits_matches_numpy():
    np = pytest.importorskip("numpy")
    mask = torch.rand(100, generator=torch.Generator().manual_seed(0)) < 0.5
    assert pack_bits(mask).tolist() == np.packbits(mask.numpy()).tolist()


def test_state_dict_round_trip_is_exact():
    g = torch.Generator().manual_seed(0)
    sparse = torch.randn(50, 40, generator=g) * (torch.rand(50, 40, generator=g) < 0.1)
    state = {
        "fc.weight": sparse,
        "fc.bias": torch.randn(50, generator=g),  # dense: stays as is
        "conv.weight": torch.zeros(4, 3, 3, 3),  # all pruned
        "bn.num_batches_tracked": torch.tensor(7),  # integer buffer
        "half": sparse.half(),
        "empty": torch.zeros(0),
    }
    blob = compress_state_dict(state)
    assert "bits" in blob["tensors"]["fc.weight"] and "dense" in blob["tensors"]["fc.bias"]
    assert "bits" in blob["tensors"]["conv.weight"] and "bits" in blob["tensors"]["half"]
    assert "dense" in blob["tensors"]["bn.num_batches_tracked"]
    back = decompress_state_dict(blob)
    assert back.keys() == state.keys()
    for name, t in state.items():
        assert back[name].dtype == t.dtype and back[name].shape == t.shape and torch.equal(back[name], t), name


@pytest.fixture(scope="module")
def sparse_run(tmp_path_factory):
    """A DPF run at 90% sparsity: the export must be several times smaller."""
    out = tmp_path_factory.mktemp("dpf")
    config = TrainConfig(dataset="digits", model="mlp", method="dpf", target_sparsity=0.9, model_options={"widths": [128]}, epochs=2, batch_size=64, lr=0.01)
    train(config, out, progress=False)
    return out


def test_export_gives_the_same_outputs_and_a_smaller_file(sparse_run):
    info = export_sparse(sparse_run)
    assert info["path"] == str(sparse_run / "model_sparse.pt")
    assert info["compressed_tensors"] == ["1.weight", "3.weight"]
    assert info["ratio"] > 4 and info["sparse_file_bytes"] < info["dense_file_bytes"] / 3

    # the file is tensors, lists and strings only
    torch.load(sparse_run / "model_sparse.pt", weights_only=True)
    dense_state = torch.load(sparse_run / "model.pt", weights_only=True)
    sparse_state = load_sparse(sparse_run / "model_sparse.pt")
    assert all(torch.equal(dense_state[k], sparse_state[k]) for k in dense_state)

    x = torch.randn(32, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(load_run_model(sparse_run)(x), load_run_model(sparse_run, sparse=True)(x))


def test_cli_export_prints_sizes(sparse_run, tmp_path, capsys):
    target = tmp_path / "small.pt"
    assert main(["export", str(sparse_run), "--format", "sparse", "--output", str(target)]) == 0
    out = capsys.readouterr().out
    assert "dense:" in out and "compressed:" in out and "ratio:" in out and "bytes" in out
    assert target.is_file()


def test_export_of_an_unfinished_run(tmp_path, capsys):
    train(TrainConfig(dataset="digits", model="mlp", model_options={"widths": [8]}, epochs=2, batch_size=64), tmp_path, progress=False, stop_after_epochs=1)
    with pytest.raises(FileNotFoundError, match="has not finished"):
        export_sparse(tmp_path)
    assert main(["export", str(tmp_path)]) == 1
    assert "--resume" in capsys.readouterr().err


def test_load_sparse_rejects_other_files(tmp_path):
    torch.save(nn.Linear(2, 2).state_dict(), tmp_path / "plain.pt")
    with pytest.raises(ValueError, match="not a snrprune sparse export"):
        load_sparse(tmp_path / "plain.pt")


# ---------------------------------------------------------------- the export never destroys data, and says why


@pytest.fixture
def run_copy(sparse_run, tmp_path):
    """A private copy of the finished run (tests here try to damage it)."""
    return Path(shutil.copytree(sparse_run, tmp_path / "run"))


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in folder.iterdir()}


@pytest.mark.parametrize("name", ["model.pt", "config.json", "checkpoint.pt", "summary.json", "metrics.jsonl"])
def test_export_never_replaces_a_file_of_the_run(run_copy, name, capsys):
    before = _files(run_copy)
    for extra in ([], ["--overwrite"]):
        assert main(["export", str(run_copy), "--output", str(run_copy / name), *extra]) == 2
        err = capsys.readouterr().err
        assert f"{run_copy / name} is a file of the run" in err and "never replaces" in err and "Traceback" not in err
    assert _files(run_copy) == before
    with pytest.raises(ExportPathError):
        export_sparse(run_copy, run_copy / name, overwrite=True)


def test_export_never_replaces_a_file_of_another_run(run_copy, sparse_run, capsys):
    before = _files(sparse_run)
    assert main(["export", str(run_copy), "--output", str(sparse_run / "model.pt"), "--overwrite"]) == 2
    assert "is a file of the run" in capsys.readouterr().err
    assert _files(sparse_run) == before


def test_a_second_export_works_and_reports_the_dense_file(run_copy, capsys):
    first = export_sparse(run_copy)
    second = export_sparse(run_copy)  # the run's own model_sparse.pt is rewritten: same model.pt, same file
    assert first == second and first["dense_file_bytes"] == (run_copy / "model.pt").stat().st_size
    assert main(["export", str(run_copy)]) == 0
    assert "ratio:" in capsys.readouterr().out


def test_an_existing_file_is_replaced_only_with_overwrite(run_copy, tmp_path, capsys):
    target = tmp_path / "notes.txt"
    target.write_text("keep me")
    assert main(["export", str(run_copy), "--output", str(target)]) == 2
    err = capsys.readouterr().err
    assert f"{target} exists" in err and "--overwrite" in err
    assert target.read_text() == "keep me"
    assert main(["export", str(run_copy), "--output", str(target), "--overwrite"]) == 0
    assert load_sparse(target).keys() == torch.load(run_copy / "model.pt", weights_only=True).keys()


def test_output_paths_that_cannot_be_written(run_copy, tmp_path, capsys):
    cases = [
        (tmp_path, f"--output {tmp_path} is a folder; give a file path"),
        (tmp_path / "missing" / "m.pt", f"the folder {tmp_path / 'missing'} does not exist"),
        (run_copy / "summary.json" / "m.pt", f"the folder {run_copy / 'summary.json'} is a file, not a folder"),
    ]
    for output, expected in cases:
        assert main(["export", str(run_copy), "--output", str(output)]) == 2
        err = capsys.readouterr().err
        assert expected in err and ".tmp" not in err and "Traceback" not in err
    assert main(["export", str(run_copy), "--output", "/proc/m.pt"]) == 2
    assert "cannot write /proc/m.pt: cannot create anything in /proc" in capsys.readouterr().err


def test_user_paths_expand_the_home_folder(run_copy, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HOME", str(tmp_path))
    assert main(["export", str(run_copy), "--output", "~/small.pt"]) == 0
    assert (tmp_path / "small.pt").is_file() and not Path("~").exists()


def test_model_files_that_are_not_a_state_dict(run_copy, capsys):
    model_pt = run_copy / "model.pt"
    blob = compress_state_dict(torch.load(model_pt, weights_only=True))
    cases = [
        (lambda: torch.save(blob, model_pt), "holds a sparse export, not a run's dense weights"),  # old export damage
        (lambda: torch.save([torch.zeros(2)], model_pt), "is not a state_dict"),
        (lambda: torch.save({"a": "text"}, model_pt), "is not a state_dict"),
        (lambda: model_pt.write_bytes(model_pt.read_bytes()[:300]), f"{model_pt} is not a readable model file"),
        (lambda: torch.save(nn.Linear(2, 2), model_pt), f"{model_pt} is not a readable model file"),
    ]
    for damage, expected in cases:
        damage()
        assert main(["export", str(run_copy)]) == 1
        err = capsys.readouterr().err
        assert expected in err and "Traceback" not in err
        assert "weights_only=False" not in err and "In PyTorch 2.6" not in err  # torch's advice is not ours
