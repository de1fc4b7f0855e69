"""Sparsity schedules for the schedule-driven baseline (DPF)."""

from __future__ import annotations


def polynomial_sparsity(
    step: int,
    final: float,
    end_step: int,
    initial: float = 0.0,
    start_step: int = 0,
    power: float = 3.0,
) -> float:
    """Zhu & Gupta (2017): s_t = s_f + (s_i - s_f) * (1 - (t - t_0) / (t_end - t_0)) ** 3.

    Clamped to s_i before t_0 and to s_f from t_end on.
    """
    if step <= start_step:
        return initial
    if step >= end_step:
        return final
    progress = (step - start_step) / (end_step - start_step)
    return final + (initial - final) * (1.0 - progress) ** power
