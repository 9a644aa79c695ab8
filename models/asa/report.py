"""Loss curves of a pretraining run, drawn from its ``metrics.jsonl`` (no TensorBoard needed)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np


def read_metrics(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def smooth(values: np.ndarray, window: int) -> np.ndarray:
    """Trailing moving average, same length as the input."""
    if window <= 1 or len(values) == 0:
        return values
    csum = np.cumsum(np.insert(values, 0, 0.0))
    idx = np.arange(1, len(values) + 1)
    lo = np.maximum(idx - window, 0)
    return (csum[idx] - csum[lo]) / (idx - lo)


def plot_curves(metrics_path: Path, out: Path, window: int = 10) -> Path:
    """One panel per loss (phase 1: order, recovery, global; phase 2: global, local) + held-out order error."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = read_metrics(metrics_path)
    train = [r for r in records if "phase" in r]
    evals = [r for r in records if "eval/teacher_order_error_vox" in r]
    panels = [
        ("phase 1: order loss L_vop", 1, "loss_vop"),
        ("phase 1: recovery loss L_var", 1, "loss_var"),
        ("phase 1: global loss", 1, "loss_global"),
        ("phase 2: global loss", 2, "loss_global"),
        ("phase 2: local loss", 2, "loss_local"),
    ]
    fig, axes = plt.subplots(2, 3, figsize=(14, 7))
    for ax, (title, phase, key) in zip(axes.flat, panels, strict=False):
        pts = [(r["step"], r[key]) for r in train if r["phase"] == phase and key in r]
        if pts:
            steps, vals = map(np.asarray, zip(*pts, strict=True))
            ax.plot(steps, vals, alpha=0.3, color="tab:blue")
            ax.plot(steps, smooth(vals, window), color="tab:blue")
        ax.set_title(title)
        ax.set_xlabel("step")
    ax = axes.flat[5]
    if evals:
        steps = [r["step"] for r in evals]
        for name, color in (("teacher", "tab:green"), ("student", "tab:orange")):
            ax.plot(steps, [r[f"eval/{name}_order_error_vox"] for r in evals], "o-", color=color, label=name)
        base = evals[0]["eval/baseline_order_error_vox"]
        ax.axhline(base, color="gray", ls="--", label="predict mean position")
        ax.axhline(base / 2, color="red", ls=":", label="half of that")
        ax.legend()
    ax.set_title("held-out order error (voxels)")
    ax.set_xlabel("step")
    fig.tight_layout()
    fig.savefig(out, dpi=80)
    plt.close(fig)
    return out
