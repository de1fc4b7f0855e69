"""snrprune: train a network while pruning it dynamically, guided by per-weight gradient SNR.

Public API: :class:`GradientStats` (exact per-weight gradient moments and SNR), the pruning methods
:class:`SNRPruning`, :class:`SNRAutoPruning`, :class:`DPFPruning`, :class:`NoPruning` (registered as
``snr``, ``snr-auto``, ``dpf``, ``dense``), :func:`get_method` to look one up by name, and
:func:`load_sparse` to read the compressed model that ``snrprune export`` writes back into a state_dict.
"""

from .export import load_sparse
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
    "get_method",
    "load_sparse",
    "register_method",
    "snr_from_moments",
]
