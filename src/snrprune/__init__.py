"""snrprune: train a network while pruning it dynamically, guided by per-weight gradient SNR.

Public API: :class:`GradientStats` (exact per-weight gradient moments and SNR), the pruning methods
:class:`SNRPruning`, :class:`SNRAutoPruning`, :class:`DPFPruning`, :class:`NoPruning` (registered as
``snr``, ``snr-auto``, ``dpf``, ``dense``), :func:`get_method` to look one up by name,
:func:`load_sparse` to read the compressed model that ``snrprune export`` writes back into a state_dict,
and :func:`export_compact` / :func:`load_compact` to write and read a unit-pruned model with its zero
units cut out (``snrprune export --format compact``; see :mod:`snrprune.units`).
"""

from .export import export_compact, load_compact, load_sparse
from .layers import MOMENTS, LayerMoments, find_prunable_layers
from .pruners import PRUNING_METHODS, DPFPruning, NoPruning, Pruning, SNRAutoPruning, SNRPruning, get_method, register_method
from .statistics import SNR_CAP, GradientStats, Moments, snr_from_moments

__version__ = "0.1.0"

__all__ = [
    "MOMENTS",
    "PRUNING_METHODS",
    "SNR_CAP",
    "DPFPruning",
    "GradientStats",
    "LayerMoments",
    "Moments",
    "NoPruning",
    "Pruning",
    "SNRAutoPruning",
    "SNRPruning",
    "find_prunable_layers",
    "export_compact",
    "get_method",
    "load_compact",
    "load_sparse",
    "register_method",
    "snr_from_moments",
]
