"""A Hugging Face ``transformers.Trainer`` callback that prunes the model while the trainer trains it.

Usage::

    from snrprune.integrations.transformers import PruningCallback
    trainer = transformers.Trainer(model, args, train_dataset=data, callbacks=[PruningCallback("snr", combine="agree")])
    trainer.train()

``method`` is any registered pruning method (``snrprune.PRUNING_METHODS``) and the options are its
constructor's arguments but the model, checked when the callback is built. What the trainer knows
is filled in when not given: ``total_steps`` (DPF) from ``state.max_steps``, ``burn_in_steps`` (SNR)
as one epoch of optimizer steps and ``window_steps`` (snr-auto) as ``snrprune train``'s default,
one epoch (an epoch is ``ceil(batches / gradient_accumulation_steps)`` steps, as the trainer counts).
At ``granularity="unit"`` (``dpf``, ``snr-auto``), ``example_inputs`` is the first two samples of the
trainer's first training batch (the keyword arguments the trainer calls the model with), on the
model's device: the model is traced on them once to find its units (GPT-2's and BERT's heads and MLP
units).

The callback hooks the torch optimizer inside the trainer's (accelerate's ``AcceleratedOptimizer``
wraps it): the pruning runs inside ``optimizer.step()``, so it reads the gradients after gradient
accumulation and after the trainer clipped them (``max_grad_norm``), and a step that mixed precision
skips never reaches it. ``pruning/sparsity`` is added to every log of the trainer (the console and
the callbacks after this one), and ``state.log_history`` (``trainer_state.json``) also gets
``pruning/sparsity/<weight>``. Integrations that ``report_to`` adds run before user callbacks and do
not see these keys: to send them there, put that integration's callback after this one.

The trainer keeps callback state as JSON only, so the pruning state (dense weights, masks, SNR
averages) is written with every checkpoint as ``checkpoint-<step>/snrprune_pruning.pt`` and read back
on ``trainer.train(resume_from_checkpoint=...)``. The trainer does not tell callbacks which folder it
resumes from: the callback reads ``TrainingArguments.resume_from_checkpoint`` if set, else
``<output_dir>/checkpoint-<step>`` (what ``resume_from_checkpoint=True`` resumes), and checks that the
state matches the step and the weights the trainer restored; a missing or foreign state is an error.
Requires ``transformers`` and ``accelerate`` (``pip install snrprune[transformers]``).
"""

from __future__ import annotations

import os
import warnings
from typing import Any

import torch
import transformers
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from ..checkpoint import atomic_torch_save
from ..pruners import Pruning
from ._options import check_options, fill_options

__all__ = ["PruningCallback", "STATE_FILE"]

#: The file of a checkpoint folder that holds the pruning state.
STATE_FILE = "snrprune_pruning.pt"


def torch_optimizer(optimizer: Any) -> torch.optim.Optimizer:
    """The torch optimizer inside the trainer's (``AcceleratedOptimizer`` and the like keep it as ``.optimizer``)."""
    while isinstance(getattr(optimizer, "optimizer", None), torch.optim.Optimizer):
        optimizer = optimizer.optimizer
    return optimizer


class PruningCallback(transformers.TrainerCallback):
    """Prunes the trainer's model during ``train()`` with the registered method ``method`` and its ``options``."""

    # Not an ExportableState on purpose: the trainer would rebuild the callback from JSON on resume
    # (a new object the user holds no reference to, options such as an ``include`` predicate lost);
    # the state lives in a file of the checkpoint folder instead.

    def __init__(self, method: str, **options: Any) -> None:
        self.method_class = check_options(method, options)
        self.method = method
        self.options = options
        self.pruning: Pruning | None = None
        self._logged: tuple[int, dict[str, float]] = (-1, {})

    def _filled_options(
        self, args: transformers.TrainingArguments, state: transformers.TrainerState, train_dataloader: Any, model: torch.nn.Module
    ) -> dict[str, Any]:
        def epoch_batches() -> float | None:
            try:
                return len(train_dataloader)
            except TypeError:  # an iterable data set: the trainer runs max_steps, epochs unknown
                return None

        filled = fill_options(
            self.method, self.options, total_steps=lambda: state.max_steps if state.max_steps > 0 else None,
            epoch_batches=epoch_batches, accumulation=args.gradient_accumulation_steps,
        )  # fmt: skip
        if filled.get("granularity") == "unit" and filled.get("example_inputs") is None:
            filled["example_inputs"] = self._example_inputs(model, train_dataloader)
        return filled

    @staticmethod
    def _example_inputs(model: torch.nn.Module, train_dataloader: Any) -> dict[str, Any]:
        """The first two samples of the first training batch, on the model's device (unit granularity traces the model on them)."""
        try:
            with torch.random.fork_rng(devices=[]):  # the look at the first batch draws no number the training would
                batch = next(iter(train_dataloader))
        except (TypeError, StopIteration) as exc:
            raise ValueError("granularity 'unit' needs example inputs and the trainer has no training batch to take them from; pass example_inputs= to PruningCallback") from exc
        if not isinstance(batch, dict):
            raise ValueError(f"granularity 'unit': the training batches are {type(batch).__name__}, not the keyword arguments of the model; pass example_inputs= to PruningCallback")
        device = next(model.parameters()).device
        return {k: v[:2].to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}

    # -- training --------------------------------------------------------------------------------
    def on_train_begin(self, args, state, control, model=None, optimizer=None, train_dataloader=None, **kwargs):
        # Here the optimizer exists and a resumed run has its weights, optimizer state and step back.
        if self.pruning is None or self.pruning.model is not model:
            self.pruning = self.method_class(model, **self._filled_options(args, state, train_dataloader, model))
        if state.global_step > 0:
            self._resume(args, state)
        self.pruning.wrap(torch_optimizer(optimizer))

    def on_train_end(self, args, state, control, **kwargs):
        if self.pruning is not None:
            if state.is_world_process_zero:  # every rank decided the same; one warning
                self.pruning.warn_if_idle()  # a method that ended dense says why
            self.pruning.zero_removed()  # unit granularity: removed units zero in their own entries too
            self.pruning.unwrap()

    def on_log(self, args, state, control, logs=None, **kwargs):
        pruning = self.pruning
        if pruning is None or logs is None:
            return
        step, values = self._logged
        if step != pruning.step_count:  # sparsity costs a pass over the weights: once a step
            values = {"pruning/sparsity": pruning.sparsity()}
            values.update({f"pruning/sparsity/{name}": s for name, s in pruning.layer_sparsity().items()})
            self._logged = (pruning.step_count, values)
        # the trainer appended {**logs, "step": ...} to log_history before calling the callbacks
        history = state.log_history
        if history and history[-1] == {**logs, "step": state.global_step}:
            history[-1].update(values)
        logs["pruning/sparsity"] = values["pruning/sparsity"]

    # -- checkpoints -----------------------------------------------------------------------------
    def on_save(self, args, state, control, **kwargs):
        if self.pruning is None or not args.should_save:
            return
        folder = os.path.join(args.output_dir, f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}")
        if not os.path.isdir(folder):  # e.g. a hyperparameter search saves under output_dir/run-<id>/
            warnings.warn(f"PruningCallback: no checkpoint folder {folder}; the pruning state of step {state.global_step} is not saved")
            return
        atomic_torch_save({"global_step": state.global_step, "pruning": self.pruning.state_dict()}, os.path.join(folder, STATE_FILE))

    def _resume(self, args: transformers.TrainingArguments, state: transformers.TrainerState) -> None:
        folders = [args.resume_from_checkpoint] if isinstance(args.resume_from_checkpoint, str) else []
        folders.append(os.path.join(args.output_dir, f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}"))
        paths = [os.path.join(folder, STATE_FILE) for folder in dict.fromkeys(folders)]
        found = [path for path in paths if os.path.isfile(path)]
        if not found:
            raise ValueError(
                f"PruningCallback: the trainer resumes at step {state.global_step}, but there is no pruning state in "
                f"{' or '.join(paths)}: the checkpoint was written without PruningCallback, or it lies outside "
                "output_dir; set TrainingArguments(resume_from_checkpoint=<that folder>) as well"
            )
        saved = torch.load(found[0], map_location="cpu", weights_only=True)
        if saved.get("global_step") != state.global_step:
            raise ValueError(f"PruningCallback: {found[0]} holds the pruning state of step {saved.get('global_step')}, the trainer resumes at step {state.global_step}")
        mismatch = self._mismatch(saved["pruning"])
        if mismatch:
            raise ValueError(
                f"PruningCallback: {found[0]} does not belong to the checkpoint the trainer resumed from ({mismatch}); "
                "set TrainingArguments(resume_from_checkpoint=<the folder you resume from>)"
            )
        self.pruning.load_state_dict(saved["pruning"])

    def _mismatch(self, saved: dict[str, Any]) -> str | None:
        """Why the restored model's prunable weights are not the pruned weights of ``saved`` (None if they are)."""
        pruning = self.pruning
        pruning._check_method(saved)
        for name, w in pruning.weights.items():
            dense, mask = saved["dense"].get(name), saved["masks"].get(name)
            if dense is None or mask is None or dense.shape != w.shape:
                return f"it has no state of the same shape for {name}"
            expected = dense * mask.to(dense.dtype) if pruning.prunes else dense
            if not torch.equal(w.detach().to("cpu", expected.dtype), expected):
                return f"the restored {name} is not its pruned weight"
        return None
