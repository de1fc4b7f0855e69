"""A PyTorch Lightning callback that prunes the LightningModule while ``lightning.Trainer.fit`` trains it.

Usage::

    from snrprune.integrations.lightning import PruningCallback
    trainer = lightning.Trainer(max_epochs=10, callbacks=[PruningCallback("snr", combine="agree")])
    trainer.fit(module, data)

``method`` is any registered pruning method (``snrprune.PRUNING_METHODS``) and the options are its
constructor's arguments but the model. What the trainer knows is filled in when not given:
``total_steps`` (DPF) from ``trainer.estimated_stepping_batches``, ``burn_in_steps`` (SNR) as one
epoch of optimizer steps and ``window_steps`` (snr-auto) as ``snrprune train``'s default, one
epoch. The callback wraps the module's optimizer, so gradient accumulation
(``accumulate_grad_batches``), mixed precision (a step GradScaler skips leaves the statistics and
masks alone) and the DDP strategy (SNR's statistics summed over the processes; snr-auto reads the
gradients DDP has already averaged) work as in a plain loop.
Its state (dense weights, masks, SNR averages) is saved in Lightning checkpoints and restored on resume.
Requires the ``lightning`` package (``pip install snrprune[lightning]``).
"""

from __future__ import annotations

from typing import Any

import lightning

from ..pruners import Pruning
from ._options import check_options, fill_options

__all__ = ["PruningCallback"]


class PruningCallback(lightning.pytorch.Callback):
    """Prunes ``pl_module`` during fit with the registered method ``method`` and its ``options``."""

    def __init__(self, method: str, **options: Any) -> None:
        self.method_class = check_options(method, options)
        self.method = method
        self.options = options
        self.pruning: Pruning | None = None
        self._pending_state: dict[str, Any] | None = None
        self._logged_step = -1

    @property
    def state_key(self) -> str:
        return f"PruningCallback[{self.method}]"

    def _filled_options(self, trainer: lightning.Trainer) -> dict[str, Any]:
        return fill_options(
            self.method, self.options, total_steps=lambda: trainer.estimated_stepping_batches,
            epoch_batches=lambda: trainer.num_training_batches, accumulation=trainer.accumulate_grad_batches,
        )  # fmt: skip

    def on_train_start(self, trainer: lightning.Trainer, pl_module: lightning.LightningModule) -> None:
        # Here the data (for the step counts), the optimizer and any restored weights all exist.
        if self.pruning is None:
            self.pruning = self.method_class(pl_module, **self._filled_options(trainer))
        if self._pending_state is not None:
            self.pruning.load_state_dict(self._pending_state)
            self._pending_state = None
        if len(trainer.optimizers) != 1:
            raise ValueError(f"PruningCallback supports one optimizer, the module configures {len(trainer.optimizers)}")
        self.pruning.wrap(trainer.optimizers[0])

    def on_train_batch_end(self, trainer: lightning.Trainer, pl_module: lightning.LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:
        pruning = self.pruning
        step = pruning.step_count
        last = batch_idx + 1 == trainer.num_training_batches
        if step == self._logged_step or not (step % trainer.log_every_n_steps == 0 or last):
            return  # sparsity costs a pass over the weights: only when the logger takes it
        self._logged_step = step
        values = {"pruning/sparsity": pruning.sparsity()}
        values.update({f"pruning/sparsity/{name}": s for name, s in pruning.layer_sparsity().items()})
        pl_module.log_dict(values, on_step=True, on_epoch=False)

    def on_fit_end(self, trainer: lightning.Trainer, pl_module: lightning.LightningModule) -> None:
        if self.pruning is not None:
            if trainer.is_global_zero:  # every rank decided the same; one warning
                self.pruning.warn_if_idle()  # a method that ended dense says why
            self.pruning.zero_removed()  # unit granularity: removed units zero in their own entries too
            self.pruning.unwrap()

    def state_dict(self) -> dict[str, Any]:
        if self.pruning is not None:
            return self.pruning.state_dict()
        return dict(self._pending_state or {})

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        # Lightning restores callbacks before the training starts: keep it until the pruning exists.
        if not state_dict:
            return
        if self.pruning is not None:
            self.pruning.load_state_dict(state_dict)
        else:
            self._pending_state = state_dict
