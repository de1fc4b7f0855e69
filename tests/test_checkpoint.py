"""Tests for checkpoints: atomic writes, weights_only loading, clear errors on bad files."""

from __future__ import annotations

import os
import pickle
import stat

import pytest
import torch

from snrprune.checkpoint import CheckpointError, atomic_torch_save, load_checkpoint, save_checkpoint
from snrprune.training import TrainConfig, train


def minimal_state(epoch: int = 1) -> dict:
    return {
        "config": {"epochs": 3},
        "epoch": epoch,
        "model": {"w": torch.arange(6.0).view(2, 3)},
        "optimizer": {"state": {}, "param_groups": [{"lr": 0.1, "betas": (0.9, 0.999), "params": [0]}]},
        "scheduler": {"last_epoch": 5, "lr_lambdas": [None]},
        "pruning": {"method": "snr", "masks": {"w": torch.ones(2, 3, dtype=torch.bool)}},
        "rng": {"generator": torch.Generator().manual_seed(3).get_state(), "torch": torch.get_rng_state()},
    }


def test_round_trip(tmp_path):
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(minimal_state(), path)
    state = load_checkpoint(path)
    assert state["epoch"] == 1 and torch.equal(state["model"]["w"], torch.arange(6.0).view(2, 3))
    assert state["optimizer"]["param_groups"][0]["betas"] == (0.9, 0.999)
    generator = torch.Generator()
    generator.set_state(state["rng"]["generator"])
    assert torch.equal(torch.rand(3, generator=generator), torch.rand(3, generator=torch.Generator().manual_seed(3)))
    assert list(tmp_path.iterdir()) == [path]  # no temporary file left
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~_umask()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_failed_save_keeps_the_old_file(tmp_path):
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(minimal_state(epoch=1), path)
    before = path.read_bytes()
    with pytest.raises(Exception):
        atomic_torch_save({"bad": lambda: None}, path)  # lambdas cannot be pickled: fails mid-write
    assert path.read_bytes() == before
    assert list(tmp_path.iterdir()) == [path]


@pytest.mark.parametrize(
    "content, message",
    [
        (b"", "not a readable checkpoint"),
        (b"garbage" * 100, "not a readable checkpoint"),
    ],
)
def test_corrupt_files(tmp_path, content, message):
    path = tmp_path / "checkpoint.pt"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match=message):
        load_checkpoint(path)


def test_truncated_checkpoint(tmp_path):
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(minimal_state(), path)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="corrupt, truncated"):
        load_checkpoint(path)


def test_foreign_files(tmp_path):
    plain = tmp_path / "state_dict.pt"
    torch.save({"weight": torch.zeros(2)}, plain)
    with pytest.raises(CheckpointError, match="not a snrprune checkpoint"):
        load_checkpoint(plain)

    class Evil:  # a pickled class instance: weights_only refuses to execute it
        def __reduce__(self):
            return (print, ("should never run",))

    evil = tmp_path / "evil.pt"
    evil.write_bytes(pickle.dumps(Evil(), protocol=2))
    with pytest.raises(CheckpointError, match="not a readable checkpoint"):
        load_checkpoint(evil)

    newer = tmp_path / "newer.pt"
    torch.save({"format": "snrprune-checkpoint", "version": 99}, newer)
    with pytest.raises(CheckpointError, match="version 99"):
        load_checkpoint(newer)

    incomplete = tmp_path / "incomplete.pt"
    torch.save({"format": "snrprune-checkpoint", "version": 1, "epoch": 1}, incomplete)
    with pytest.raises(CheckpointError, match="lacks config"):
        load_checkpoint(incomplete)

    with pytest.raises(CheckpointError, match="no checkpoint at"):
        load_checkpoint(tmp_path / "missing.pt")


def test_resume_from_corrupt_checkpoint_overwrites_nothing(tmp_path):
    config = TrainConfig(dataset="digits", model="mlp", model_options={"widths": [16]}, epochs=2, batch_size=64)
    train(config, tmp_path, progress=False, stop_after_epochs=1)
    (tmp_path / "checkpoint.pt").write_bytes(b"\x00" * 1000)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    with pytest.raises(CheckpointError, match="checkpoint.pt is not a readable checkpoint"):
        train(None, tmp_path, resume=True, progress=False)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


def test_checkpoint_of_another_model_is_rejected(tmp_path):
    small = TrainConfig(dataset="digits", model="mlp", model_options={"widths": [16]}, epochs=2, batch_size=64)
    train(small, tmp_path / "a", progress=False, stop_after_epochs=1)
    state = load_checkpoint(tmp_path / "a" / "checkpoint.pt")
    state["model"]["1.weight"] = torch.zeros(3, 3)  # a checkpoint whose tensors do not fit the model
    save_checkpoint({k: v for k, v in state.items() if k not in ("format", "version")}, tmp_path / "a" / "checkpoint.pt")
    with pytest.raises(CheckpointError, match="does not fit"):
        train(None, tmp_path / "a", resume=True, progress=False)
