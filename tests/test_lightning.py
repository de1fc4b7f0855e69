"""The Lightning callback against the same pruning in a plain loop: steps, accumulation, resume, logging."""

from __future__ import annotations

import csv

import pytest
import torch
import torch.nn.functional as F

lightning = pytest.importorskip("lightning")

from snrprune import SNRPruning  # noqa: E402
from snrprune.integrations.lightning import PruningCallback  # noqa: E402
from test_pruners import make_batches, small_mlp  # noqa: E402

BATCHES = make_batches(6, batch=16)


class Module(lightning.LightningModule):
    def __init__(self, seed=0):
        super().__init__()
        self.model = small_mlp(seed)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return F.cross_entropy(self.model(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.2, momentum=0.9)


def loader():
    x = torch.cat([b[0] for b in BATCHES])
    y = torch.cat([b[1] for b in BATCHES])
    return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=16, shuffle=False)


def fit(module, callback, epochs, tmp_path, accumulate=1, ckpt_path=None, logger=False):
    trainer = lightning.Trainer(
        max_epochs=epochs, accelerator="cpu", devices=1, logger=logger, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, accumulate_grad_batches=accumulate,
        log_every_n_steps=1, default_root_dir=tmp_path, callbacks=[callback],
    )
    trainer.fit(module, loader(), ckpt_path=ckpt_path)
    return trainer


def plain_loop(epochs, accumulate=1):
    """The oracle: the library in a hand-written loop, the burn-in one epoch of optimizer steps."""
    model = small_mlp(0)
    pruning = SNRPruning(model, burn_in_steps=len(BATCHES) // accumulate)
    optimizer = pruning.wrap(torch.optim.SGD(model.parameters(), lr=0.2, momentum=0.9))
    for _ in range(epochs):
        for start in range(0, len(BATCHES), accumulate):
            optimizer.zero_grad()
            for x, y in BATCHES[start : start + accumulate]:
                (F.cross_entropy(model(x), y) / accumulate).backward()
            optimizer.step()
    return pruning


def assert_matches(callback, oracle):
    pruning = callback.pruning
    assert pruning.step_count == oracle.step_count
    assert oracle.sparsity() > 0
    for name in oracle.weights:
        ours = "model." + name
        assert torch.equal(pruning.masks[ours], oracle.masks[name]), name
        torch.testing.assert_close(pruning.dense[ours], oracle.dense[name], rtol=1e-6, atol=1e-7)
        torch.testing.assert_close(pruning.snr_ema[ours], oracle.snr_ema[name], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("accumulate", [1, 2])
def test_callback_matches_the_plain_loop(tmp_path, accumulate):
    callback = PruningCallback("snr")
    logger = lightning.pytorch.loggers.CSVLogger(tmp_path) if accumulate == 1 else False
    trainer = fit(Module(), callback, 3, tmp_path, accumulate, logger=logger)
    assert trainer.global_step == 3 * len(BATCHES) // accumulate
    assert_matches(callback, plain_loop(3, accumulate))
    if logger:
        with open(f"{logger.log_dir}/metrics.csv") as f:
            rows = [r for r in csv.DictReader(f) if r.get("pruning/sparsity")]
        assert float(rows[-1]["pruning/sparsity"]) == pytest.approx(callback.pruning.sparsity())
        assert "pruning/sparsity/model.0.weight" in rows[-1]


def test_callback_resumes_from_a_lightning_checkpoint(tmp_path):
    first = fit(Module(), PruningCallback("snr"), 1, tmp_path)
    first.save_checkpoint(tmp_path / "epoch1.ckpt")
    callback = PruningCallback("snr")
    fit(Module(seed=5), callback, 3, tmp_path, ckpt_path=tmp_path / "epoch1.ckpt")  # other init: all must come from the file
    assert_matches(callback, plain_loop(3))
    saved = torch.load(tmp_path / "epoch1.ckpt", weights_only=True)
    assert saved["callbacks"]["PruningCallback[snr]"]["step"] == len(BATCHES)


def test_callback_fills_dpf_and_snr_auto_steps_and_rejects_unknown_options(tmp_path):
    callback = PruningCallback("dpf", target_sparsity=0.5, update_every=2)
    fit(Module(), callback, 2, tmp_path)
    assert callback.pruning.total_steps == 12
    assert callback.pruning.sparsity() == pytest.approx(0.5, abs=0.01)
    auto = PruningCallback("snr-auto", update_every=2)  # its window: one epoch of optimizer steps, as snrprune train's
    fit(Module(), auto, 3, tmp_path)
    assert auto.pruning.window_steps == len(BATCHES) and auto.pruning.step_count == 3 * len(BATCHES)
    with pytest.raises(ValueError, match="method 'snr' has no option.*target_sparsity.*valid options: burn_in_steps"):
        PruningCallback("snr", target_sparsity=0.5)
    with pytest.raises(ValueError, match="unknown pruning method 'magic'"):
        PruningCallback("magic")


class SavingCallback(PruningCallback):
    """Writes each rank's final pruning state next to the run (ddp_spawn returns only rank 0's weights)."""

    def __init__(self, folder):
        super().__init__("snr", burn_in_steps=len(BATCHES))
        self.folder = folder

    def on_fit_end(self, trainer, pl_module):
        super().on_fit_end(trainer, pl_module)
        torch.save(self.pruning.state_dict(), f"{self.folder}/rank{trainer.global_rank}.pt")


class ShardedModule(Module):
    def train_dataloader(self):  # rank r takes samples r, r + 2, ...: the two halves of each 16-sample batch
        dataset = loader().dataset
        sampler = torch.utils.data.DistributedSampler(dataset, num_replicas=2, rank=self.global_rank, shuffle=False)
        return torch.utils.data.DataLoader(dataset, batch_size=8, sampler=sampler)


def test_callback_under_the_ddp_strategy(tmp_path):
    """Two gloo processes, 8 samples each per step: both ranks equal the plain loop on the 16-sample batch."""
    callback = SavingCallback(tmp_path)
    trainer = lightning.Trainer(
        max_epochs=3, accelerator="cpu", devices=2, strategy="ddp_spawn", logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, callbacks=[callback], default_root_dir=tmp_path,
        use_distributed_sampler=False,
    )
    trainer.fit(ShardedModule())
    oracle = plain_loop(3)
    states = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    for name in oracle.weights:
        ours = "model." + name
        assert torch.equal(states[0]["masks"][ours], states[1]["masks"][ours])
        assert torch.equal(states[0]["dense"][ours], states[1]["dense"][ours])
        assert torch.equal(states[0]["masks"][ours], oracle.masks[name])
        torch.testing.assert_close(states[0]["dense"][ours], oracle.dense[name], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(states[0]["snr_ema"][ours], oracle.snr_ema[name], rtol=1e-4, atol=1e-5)
