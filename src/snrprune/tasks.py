"""What a run learns: the task's batches, predictions, evaluation and headline metric, in one place.

:func:`snrprune.training.train` runs any task the same way; a :class:`Task` says

- how one epoch's batches are drawn (:meth:`Task.batches`) and how many steps an epoch has
  (:meth:`Task.steps_per_epoch`), with the run's generator, so that a resumed run is bit-identical;
- what a prediction is (:meth:`Task.predictions`: the model's outputs and the targets as one row of
  logits per prediction), so that the loss (mean cross-entropy over predictions,
  :func:`snrprune.training.compute_loss`) and the count of correct predictions are the same code
  for every task;
- how a split is evaluated (:meth:`Task.evaluate`: a dict of metrics) and which of them is the
  headline (``metric``, ``metric_name``, ``higher_is_better``), recorded in ``summary.json`` so that
  the table, the plots and the suite's report read it from there.

Two tasks, chosen by the data set (``register_dataset(name, task=...)``) and matched by the model
(``register_model(name, task=...)``):

- ``classification`` (every image and tabular data set): shuffled batches without replacement,
  the last incomplete batch dropped; metrics ``loss`` (mean cross-entropy, nats) and ``accuracy``;
  the headline is the test accuracy (higher is better). This is exactly what training did before
  tasks existed: same batches, same loss, same numbers.
- ``language-modelling`` (text data sets, model ``gpt``): next-token prediction at every position of
  windows of the model's ``block_size`` tokens. An epoch is ``len(train stream) // (batch x
  block_size)`` steps, each a batch of windows starting at positions drawn uniformly (with
  replacement) from the training stream with the run's generator. Evaluation reads a split's stream
  in consecutive, non-overlapping windows (every character predicted once, from the context since
  its window's start). Metrics ``loss`` (nats per character), ``accuracy`` (next-character
  accuracy) and ``bpc`` (bits per character, loss / ln 2); the headline is the test ``bpc`` (lower
  is better).

A new task is a subclass and one entry in :data:`TASKS`.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .data import Dataset, iterate_batches

__all__ = ["Task", "Classification", "LanguageModelling", "TASKS", "make_task", "evaluate", "headline_of"]


class Task:
    """One kind of learning problem; see the module docstring. Subclasses set the class attributes."""

    name: ClassVar[str]
    #: the key of :meth:`evaluate`'s result that is the headline (recorded as ``test_<metric>``)
    metric: ClassVar[str]
    metric_name: ClassVar[str]
    higher_is_better: ClassVar[bool]
    #: the metrics also recorded for the dense weights (``dense_test_<k>``) and the validation split (``val_<k>``)
    tracked: ClassVar[tuple[str, ...]]

    #: predictions per sample of a batch (a classifier predicts once per sample)
    predictions_per_sample: int = 1

    @classmethod
    def for_model(cls, model: nn.Module) -> Task:
        """The task for ``model``; ValueError when the model cannot do it."""
        return cls()

    def steps_per_epoch(self, data: Dataset, batch_size: int) -> int:
        raise NotImplementedError

    def batches(self, data: Dataset, x: Tensor, y: Tensor, batch_size: int, generator: torch.Generator) -> Iterator[tuple[Tensor, Tensor]]:
        """One epoch of training batches ``(inputs, targets)`` drawn with ``generator``."""
        raise NotImplementedError

    def predictions(self, outputs: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
        """``(logits, labels)``: one row of logits and one label per prediction."""
        return outputs, targets

    def evaluate(self, model: nn.Module, x: Tensor, y: Tensor, batch_size: int) -> dict[str, float]:
        raise NotImplementedError

    def too_small(self, data: Dataset, batch_size: int) -> str:
        """Why the training split holds no batch of ``batch_size`` (for the error message)."""
        return f"batch_size {batch_size} is larger than the {len(data.x_train)} training samples of {data.name}"

    def describe(self, data: Dataset) -> str:
        """The ``data:`` line of a run's header."""
        return (
            f"{data.name}: {len(data.x_train):,} train / {len(data.x_test):,} test, input {tuple(data.input_shape)}, "
            f"{data.num_classes} classes"
        )

    def summary(self) -> dict[str, Any]:
        """What ``summary.json`` records about the headline metric."""
        return {"metric": f"test_{self.metric}", "metric_name": self.metric_name, "higher_is_better": self.higher_is_better}

    def record(self, test: dict[str, float], dense: dict[str, float], val: dict[str, float] | None) -> dict[str, float]:
        """The evaluation's entries of an epoch's line in ``metrics.jsonl``."""
        out = {f"test_{k}": v for k, v in test.items()}
        out.update({f"dense_test_{k}": dense[k] for k in self.tracked})
        if val is not None:
            out.update({f"val_{k}": val[k] for k in self.tracked})
        return out

    def summary_keys(self) -> list[str]:
        """The entries of the last epoch's record copied into ``summary.json`` (None where absent)."""
        return [key for k in self.tracked for key in (f"test_{k}", f"dense_test_{k}", f"val_{k}")]


@torch.no_grad()
def evaluate(model: nn.Module, x: Tensor, y: Tensor, batch_size: int = 1000) -> tuple[float, float]:
    """(accuracy, mean cross-entropy) of a classifier in eval mode; restores the training mode after."""
    was_training = model.training
    model.eval()
    correct, loss = 0, 0.0
    for start in range(0, len(x), batch_size):
        logits = model(x[start : start + batch_size])
        target = y[start : start + batch_size]
        loss += float(F.cross_entropy(logits, target, reduction="sum"))
        correct += int((logits.argmax(1) == target).sum())
    model.train(was_training)
    return correct / len(x), loss / len(x)


class Classification(Task):
    name = "classification"
    metric = "accuracy"
    metric_name = "test accuracy"
    higher_is_better = True
    tracked = ("accuracy",)

    def steps_per_epoch(self, data: Dataset, batch_size: int) -> int:
        return len(data.x_train) // batch_size  # drop_last: SNR never sees a tiny batch

    def batches(self, data: Dataset, x: Tensor, y: Tensor, batch_size: int, generator: torch.Generator) -> Iterator[tuple[Tensor, Tensor]]:
        return iterate_batches(x, y, batch_size, shuffle=True, generator=generator, drop_last=True, augment=data.augment)

    def evaluate(self, model: nn.Module, x: Tensor, y: Tensor, batch_size: int) -> dict[str, float]:
        accuracy, loss = evaluate(model, x, y, batch_size)
        return {"loss": loss, "accuracy": accuracy}


class LanguageModelling(Task):
    name = "language-modelling"
    metric = "bpc"
    metric_name = "test bits per character"
    higher_is_better = False
    tracked = ("accuracy", "bpc")

    def __init__(self, block_size: int) -> None:
        self.block_size = int(block_size)
        self.predictions_per_sample = self.block_size

    @classmethod
    def for_model(cls, model: nn.Module) -> Task:
        """Windows of the model's context length, ``model.block_size``."""
        block = getattr(model, "block_size", None)
        if isinstance(block, bool) or not isinstance(block, int) or block < 1:
            raise ValueError(f"a language-modelling data set needs a language model with a block_size (e.g. model 'gpt'); got {type(model).__name__}")
        return cls(block)

    def steps_per_epoch(self, data: Dataset, batch_size: int) -> int:
        if len(data.x_train) < self.block_size:
            return 0
        return len(data.x_train) // (batch_size * self.block_size)

    def too_small(self, data: Dataset, batch_size: int) -> str:
        return (
            f"a batch of {batch_size} windows of {self.block_size} characters ({batch_size * self.block_size:,}) is more than "
            f"the {len(data.x_train):,} training characters of {data.name}: one epoch would have no step; use a smaller batch_size or block_size"
        )

    def batches(self, data: Dataset, x: Tensor, y: Tensor, batch_size: int, generator: torch.Generator) -> Iterator[tuple[Tensor, Tensor]]:
        steps, block = self.steps_per_epoch(data, batch_size), self.block_size
        offsets = torch.arange(block, device=x.device)
        for _ in range(steps):
            starts = torch.randint(0, len(x) - block + 1, (batch_size,), generator=generator, device=generator.device)
            index = starts.to(x.device)[:, None] + offsets
            yield x[index], y[index]

    def predictions(self, outputs: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
        return outputs.flatten(0, -2), targets.flatten()

    @torch.no_grad()
    def evaluate(self, model: nn.Module, x: Tensor, y: Tensor, batch_size: int) -> dict[str, float]:
        """Every character of the stream predicted once, in consecutive windows of ``block_size``."""
        was_training = model.training
        model.eval()
        block, n = self.block_size, len(x)
        full = n // block
        loss, correct = 0.0, 0
        parts: list[tuple[Tensor, Tensor]] = []
        for start in range(0, full, batch_size):
            rows = slice(start * block, min(full, start + batch_size) * block)
            parts.append((x[rows].view(-1, block), y[rows].view(-1, block)))
        if n > full * block:
            parts.append((x[full * block :].view(1, -1), y[full * block :].view(1, -1)))
        for xb, yb in parts:
            logits, target = self.predictions(model(xb), yb)
            loss += float(F.cross_entropy(logits, target, reduction="sum"))
            correct += int((logits.argmax(1) == target).sum())
        model.train(was_training)
        return {"loss": loss / n, "accuracy": correct / n, "bpc": loss / n / math.log(2)}

    def describe(self, data: Dataset) -> str:
        val = f" / {len(data.x_val) + 1:,} validation" if data.x_val is not None else ""
        return (
            f"{data.name}: {len(data.x_train) + 1:,} train{val} / {len(data.x_test) + 1:,} test characters, "
            f"vocabulary {data.num_classes}, windows of {self.block_size}"
        )


TASKS: dict[str, type[Task]] = {"classification": Classification, "language-modelling": LanguageModelling}


def make_task(name: str, model: nn.Module) -> Task:
    """The task ``name`` (a data set's task) for ``model`` (see :meth:`Task.for_model`; a language
    model says its context length as ``model.block_size``). ValueError when the model cannot do it."""
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; valid names: {', '.join(TASKS)}")
    return TASKS[name].for_model(model)


def headline_of(summary: dict[str, Any]) -> tuple[str, str, bool]:
    """(key, name, higher_is_better) of a run summary's headline metric; summaries written before
    the metric was recorded are classification runs (test accuracy)."""
    return (
        summary.get("metric", "test_accuracy"),
        summary.get("metric_name", "test accuracy"),
        bool(summary.get("higher_is_better", True)),
    )
