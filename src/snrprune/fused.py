"""Fused CPU kernels for the per-step pruning arithmetic, built on first use, with an eager fallback.

The SNR, moving-average and mask arithmetic of one pruning step is a dozen eager passes over every
weight, as costly as the whole plain training step of a small MLP (issue: speed). ``csrc/fused.cpp``
does it in three passes. It is compiled with ``torch.utils.cpp_extension.load`` the first time it is
needed (about 20 s, cached under ``TORCH_EXTENSIONS_DIR``, by default ``~/.cache/torch_extensions``)
and used for float32 CPU tensors; everything else (GPUs, float64, a machine without a C++ compiler)
runs the eager code, which computes the same values. ``SNRPRUNE_FUSED=0`` in the environment turns
the kernels off.
"""

from __future__ import annotations

import os
import sys
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

_SOURCE = Path(__file__).parent / "csrc" / "fused.cpp"
_module: Any = None
_tried = False


def kernels() -> Any:
    """The compiled module, or None where it cannot be built (then the eager code runs)."""
    global _module, _tried
    if _tried:
        return _module
    _tried = True
    if os.environ.get("SNRPRUNE_FUSED", "1").strip().lower() in ("0", "false", "no", "off"):
        return None
    try:
        from torch.utils import cpp_extension

        # AVX2 + FMA where ATen itself runs AVX2 kernels (a build per instruction set, by name);
        # no fp contraction: only the explicit fma() calls fuse, as in ATen, so the values match
        wide = torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512")
        name = "snrprune_fused_avx2" if wide else "snrprune_fused"
        build = Path(cpp_extension._get_build_directory(name, verbose=False))  # where load() builds and caches it
        if not (build / f"{name}.so").is_file():  # a build takes half a minute: say so, once
            print(f"snrprune: building the fused CPU kernels in {build} (once, about 30 s; scripts/setup.sh builds them ahead)", file=sys.stderr, flush=True)
        _module = cpp_extension.load(
            name=name,
            sources=[str(_SOURCE)],
            extra_cflags=["-O3", "-ffp-contract=off"] + (["-mavx2", "-mfma"] if wide else []),
            verbose=False,
        )
    except Exception as error:  # no compiler, no ninja, read-only cache, ...
        warnings.warn(
            f"snrprune: the fused CPU kernels could not be built ({type(error).__name__}: {error}); "
            "using the slower eager code. Install a C++ compiler and ninja (pip install ninja) to get them, "
            "or set SNRPRUNE_FUSED=0 to silence this.",
            RuntimeWarning,
            stacklevel=2,
        )
        _module = None
    return _module


def usable(*tensors: Tensor) -> bool:
    """Whether the fused kernels can take these tensors (float32 values and bool masks, contiguous, CPU) and are built."""
    ok = all(t.device.type == "cpu" and t.dtype in (torch.float32, torch.bool) and t.is_contiguous() for t in tensors)
    return ok and kernels() is not None
