"""What the trainer integrations share: a method's options checked up front, and the step counts a
trainer knows filled in. Imports no framework; each integration passes what its trainer reports."""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Mapping
from typing import Any

from ..pruners import Pruning, get_method
from ..pruners.snr_auto import epoch_window_steps

__all__ = ["check_options", "fill_options", "option_names"]


def option_names(method_class: type[Pruning]) -> list[str]:
    """The constructor arguments of a method but the model, in order."""
    return [name for name in inspect.signature(method_class.__init__).parameters if name not in ("self", "model")]


def check_options(method: str, options: Mapping[str, Any]) -> type[Pruning]:
    """The class of the registered ``method``; ValueError for an unknown method or option, before any training."""
    method_class = get_method(method)
    valid = option_names(method_class)
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise ValueError(f"method {method!r} has no option(s) {', '.join(unknown)}; valid options: {', '.join(valid)}")
    return method_class


def fill_options(
    method: str,
    options: Mapping[str, Any],
    *,
    total_steps: Callable[[], float | None],
    epoch_batches: Callable[[], float | None],
    accumulation: int,
) -> dict[str, Any]:
    """``options`` with what the trainer knows filled in where the method takes it and it is not given.

    ``total_steps`` (DPF): the run's optimizer steps; ``burn_in_steps`` (SNR): one epoch of them;
    ``window_steps`` (snr-auto): ``epoch_window_steps`` of an epoch (one epoch, as ``snrprune
    train``'s). An epoch is ``ceil(epoch_batches() / accumulation)`` optimizer steps, at least one.
    The callables are asked only when needed; None or an infinite count (an iterable data set without
    a length) is a ValueError that names the option to pass.
    """
    parameters = option_names(get_method(method))
    filled = dict(options)
    if "total_steps" in parameters and "total_steps" not in filled:
        total = total_steps()
        if total is None or not math.isfinite(total):
            raise ValueError(f"{method}: the trainer cannot estimate its number of steps; pass total_steps= to PruningCallback")
        filled["total_steps"] = int(total)
    epoch_options = {"burn_in_steps": lambda steps: steps, "window_steps": epoch_window_steps}
    for name, from_epoch in epoch_options.items():
        if name in parameters and name not in filled:
            batches = epoch_batches()
            if batches is None or not math.isfinite(batches):
                raise ValueError(
                    f"{method}: the trainer cannot tell how many batches an epoch has (a data set without a length); "
                    f"pass {name}= to PruningCallback"
                )
            filled[name] = from_epoch(max(1, math.ceil(batches / accumulation)))
    return filled
