"""Per-step schedules, precomputed as arrays indexed by the global step (as DINO does)."""

from __future__ import annotations

import math

import numpy as np


def warmup_cosine(base: float, final: float, total_steps: int, warmup_steps: int = 0) -> np.ndarray:
    """Linear warm-up towards ``base`` over ``warmup_steps``, then a cosine from ``base`` to ``final``.

    Exactly ``total_steps`` values: step ``total_steps - 1`` is the last one used and equals ``final``
    (the reference code indexed one step past its schedule's end on the last iteration).
    """
    if total_steps < 1:
        raise ValueError("total_steps must be at least 1")
    warmup_steps = min(max(warmup_steps, 0), total_steps)
    warm = base * (np.arange(warmup_steps) + 1) / (warmup_steps + 1)  # never 0: step 0 already learns
    n = total_steps - warmup_steps
    if n == 1:
        cos = np.array([base])
    else:
        t = np.arange(n) / (n - 1)
        cos = final + 0.5 * (base - final) * (1 + np.cos(math.pi * t))
    out = np.concatenate([warm, cos])
    assert len(out) == total_steps
    return out


def ema_momentum(start: float, total_steps: int) -> np.ndarray:
    """Teacher momentum: cosine from ``start`` to 1.0 over the run."""
    return warmup_cosine(start, 1.0, total_steps)
