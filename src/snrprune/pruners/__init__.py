"""Dynamic pruning with feedback: the base class, SNR-guided pruning, DPF and the dense baseline.

All methods share one mechanism (DPF, Lin et al. 2020): the pruning object holds the dense weights
theta, the model holds the pruned weights theta_hat = m * theta between optimizer steps, so the forward
and backward run at theta_hat; right before the optimizer step theta is put back, so the update (with
the optimizer's momentum and weight decay) acts on the dense weights, and after it the model is
pruned again. A method only decides *which* entries to keep; it overrides a few steps:

- ``stats_due(step)``: collect gradient statistics on this step?
- ``observe(snr)``: take the step's per-weight SNR (after backward, before the update); a method
  that needs the raw sums S1, S2 and B instead overrides ``observe_stats(stats)``
- ``update_due(step)``: recompute the masks before this step?
- ``compute_masks()``: the new keep-masks

Under torch.distributed (initialised, more than one process) the gradient statistics are summed over
all processes before use, so every rank sees the SNR of the global batch and computes the same masks.

Usage in any training loop::

    pruning = SNRPruning(model, burn_in_steps=len(loader))
    optimizer = pruning.wrap(torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9))
    for x, y in loader:
        optimizer.zero_grad(); loss_fn(model(x), y).backward(); optimizer.step()
"""

from .base import PRUNING_METHODS, SNR_HISTOGRAM_EDGES, SNR_ROUNDOFF, NoPruning, Pruning, get_method, register_method
from .dpf import DPFPruning
from .snr import SNRPruning
from .snr_auto import SNRAutoPruning

__all__ = [
    "PRUNING_METHODS",
    "SNR_HISTOGRAM_EDGES",
    "SNR_ROUNDOFF",
    "Pruning",
    "NoPruning",
    "DPFPruning",
    "SNRPruning",
    "SNRAutoPruning",
    "get_method",
    "register_method",
]
