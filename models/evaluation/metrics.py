"""Per-organ overlap and surface metrics of one predicted label map against a reference.

Pure functions on arrays with a voxel spacing in mm, so they serve ``asa evaluate``, the label-efficiency
study and the tests alike. Distances use MONAI's implementations (``compute_hausdorff_distance``,
``compute_surface_dice``) on a crop around the two masks, which keeps them fast on full-size CT.

Conventions (the BTCV / Medical Segmentation Decathlon ones): an organ absent from both maps is not
scored (NaN, left out of the means); an organ present in only one of them has Dice 0 and NSD 0, and no
HD95 (NaN: a distance to nothing is undefined).

Volumes too, because organ volumetry (spleen, liver) is what many clinical uses read off a mask, and a mask
can overlap well yet be systematically too large: both volumes (mL), the signed error relative to the
reference (%, the bias) and its absolute value (averaged like Dice). Relative to an empty reference the
error is undefined (NaN).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import numpy as np
import torch
from monai.metrics import compute_hausdorff_distance, compute_surface_dice

METRICS = ("dice", "hd95", "nsd", "abs_volume_error_pct")
"""What the BTCV means average (over the organs of a case, then over cases)."""
VOLUMES = ("volume_pred_ml", "volume_ref_ml", "volume_error_pct")
"""Reported per case and organ beside :data:`METRICS`."""


def _crop(pred: np.ndarray, ref: np.ndarray, margin: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """Both masks cut to the box around their union, plus a margin so surfaces stay surfaces."""
    union = pred | ref
    idx = [np.flatnonzero(union.any(axis=tuple(a for a in range(3) if a != axis))) for axis in range(3)]
    box = tuple(slice(max(int(i[0]) - margin, 0), int(i[-1]) + 1 + margin) for i in idx)
    return np.pad(pred[box], margin), np.pad(ref[box], margin)


def volumes(n_pred: int, n_ref: int, spacing: Sequence[float]) -> dict[str, float]:
    """Both volumes (mL) and the error relative to the reference (%, signed and absolute; NaN for no reference)."""
    voxel_ml = float(np.prod([float(s) for s in spacing])) / 1000.0
    error = 100.0 * (n_pred - n_ref) / n_ref if n_ref else math.nan
    return {"volume_pred_ml": n_pred * voxel_ml, "volume_ref_ml": n_ref * voxel_ml, "volume_error_pct": error,
            "abs_volume_error_pct": abs(error)}  # fmt: skip


def organ_metrics(pred: np.ndarray, ref: np.ndarray, spacing: Sequence[float], tolerance_mm: float) -> dict[str, float]:
    """Dice, HD95 (mm), NSD at ``tolerance_mm`` and volumes of one binary mask pair on the same grid."""
    pred, ref = np.asarray(pred, bool), np.asarray(ref, bool)
    if pred.shape != ref.shape:
        raise ValueError(f"prediction {pred.shape} and reference {ref.shape} are not on the same grid")
    n_pred, n_ref = int(pred.sum()), int(ref.sum())
    if n_pred == 0 and n_ref == 0:
        return {"dice": math.nan, "hd95": math.nan, "nsd": math.nan, "abs_volume_error_pct": math.nan,
                "volume_pred_ml": 0.0, "volume_ref_ml": 0.0, "volume_error_pct": math.nan}  # fmt: skip
    if n_pred == 0 or n_ref == 0:
        return {"dice": 0.0, "hd95": math.nan, "nsd": 0.0, **volumes(n_pred, n_ref, spacing)}
    dice = 2.0 * int((pred & ref).sum()) / (n_pred + n_ref)
    p, r = _crop(pred, ref)
    pt = torch.from_numpy(p)[None, None].float()
    rt = torch.from_numpy(r)[None, None].float()
    spacing = [float(s) for s in spacing]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        hd95 = compute_hausdorff_distance(pt, rt, include_background=True, percentile=95, spacing=spacing)
        nsd = compute_surface_dice(pt, rt, [float(tolerance_mm)], include_background=True, spacing=spacing)
    return {"dice": float(dice), "hd95": float(hd95.item()), "nsd": float(nsd.item()),
            **volumes(n_pred, n_ref, spacing)}  # fmt: skip


def case_metrics(
    pred: np.ndarray,
    ref: np.ndarray,
    organs: dict[int, str],
    spacing: Sequence[float],
    tolerance_mm: float = 2.0,
) -> dict[str, dict[str, float]]:
    """``{organ name: {dice, hd95, nsd, volumes}}`` for every organ id of ``organs`` (background excluded)."""
    if pred.shape != ref.shape:
        raise ValueError(f"prediction {pred.shape} and reference {ref.shape} are not on the same grid")
    return {name: organ_metrics(pred == i, ref == i, spacing, tolerance_mm) for i, name in organs.items() if i != 0}


def nanmean(values: Sequence[float]) -> float:
    kept = [v for v in values if not math.isnan(v)]
    return float(np.mean(kept)) if kept else math.nan


def summarise(per_case: dict[str, dict[str, dict[str, float]]]) -> dict[str, object]:
    """The BTCV protocol: each case's mean over its scored organs, then the mean over cases; plus per organ."""
    organs = sorted({o for case in per_case.values() for o in case})
    case_means = {
        cid: {m: nanmean([v.get(m, math.nan) for v in organs_.values()]) for m in METRICS}
        for cid, organs_ in per_case.items()
    }
    return {
        "mean": {m: nanmean([c[m] for c in case_means.values()]) for m in METRICS},
        "per_case_mean": case_means,
        "per_organ_mean": {
            o: {m: nanmean([c[o].get(m, math.nan) for c in per_case.values() if o in c]) for m in METRICS}
            for o in organs
        },
    }
