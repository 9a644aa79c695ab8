"""Write an evaluation as JSON (everything), CSV (one row per case and organ) and a bar chart."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

from models.evaluation.evaluate import Evaluation
from models.evaluation.metrics import METRICS, VOLUMES


def _clean(value: Any) -> Any:
    """NaN is not JSON: write null (an organ absent from both maps, or an undefined distance)."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    return value


def write_report(evaluation: Evaluation, out: Path, meta: dict[str, Any]) -> dict[str, Any]:
    out.mkdir(parents=True, exist_ok=True)
    summary = evaluation.summary()
    doc = _clean(
        {
            **meta,
            "protocol": "per case: mean over the organs scored in it; then mean over cases (BTCV)",
            **summary,
            "per_case": evaluation.per_case,
            "errors": evaluation.errors,
            "seconds": evaluation.seconds,
        }
    )
    (out / "metrics.json").write_text(json.dumps(doc, indent=2))
    with (out / "metrics.csv").open("w", newline="") as fh:
        writer = csv.writer(fh)
        columns = (*METRICS, *VOLUMES)
        writer.writerow(["case", "organ", *columns])
        for cid, organs in evaluation.per_case.items():
            for organ, values in organs.items():
                writer.writerow([cid, organ, *("" if math.isnan(values[m]) else f"{values[m]:.6g}" for m in columns)])
    if evaluation.per_case:
        plot_dice(evaluation, out / "dice.png")
    return doc


def plot_dice(evaluation: Evaluation, path: Path) -> None:
    """Mean Dice per organ (bars) with every case's value (dots)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    organs = sorted({o for c in evaluation.per_case.values() for o in c})
    per_organ = evaluation.summary()["per_organ_mean"]
    fig, ax = plt.subplots(figsize=(max(6, 0.6 * len(organs) + 2), 4))
    means = [per_organ[o]["dice"] for o in organs]
    ax.bar(range(len(organs)), [0 if math.isnan(m) else m for m in means], color="#4c72b0", alpha=0.8)
    for i, organ in enumerate(organs):
        vals = [c[organ]["dice"] for c in evaluation.per_case.values() if organ in c]
        vals = [v for v in vals if not math.isnan(v)]
        ax.scatter([i] * len(vals), vals, color="black", s=10, zorder=3)
    overall = evaluation.summary()["mean"]["dice"]
    ax.axhline(overall, color="red", ls="--", lw=1, label=f"mean over organs then cases: {overall:.3f}")
    ax.set_xticks(range(len(organs)), organs, rotation=45, ha="right")
    ax.set_ylim(0, 1)
    ax.set_ylabel("Dice")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
