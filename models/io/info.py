"""What ``asa info`` reports about a scan, as a plain JSON-able dict (no printing here, easy to test)."""

from __future__ import annotations

from typing import Any

import numpy as np

from models.io.reader import CTImage

__all__ = ["describe"]


def _round(values: Any, nd: int = 4) -> list[float]:
    return [round(float(v), nd) for v in values]


def describe(ct: CTImage) -> dict[str, Any]:
    """Summarise geometry, HU statistics, provenance and warnings of a loaded scan."""
    arr = ct.array
    finite = arr[np.isfinite(arr)]
    if finite.size:
        p1, p99 = np.percentile(finite, [1, 99])
        hu = {"min": float(finite.min()), "max": float(finite.max()), "p1": float(p1), "p99": float(p99),
              "mean": float(finite.mean())}
    else:
        hu = {"min": None, "max": None, "p1": None, "p99": None, "mean": None}
    meta = ct.meta
    out: dict[str, Any] = {
        "path": meta.get("path"),
        "format": meta.get("format"),
        "shape": list(arr.shape),
        "spacing": _round(ct.spacing),
        "orientation": ct.orientation,
        "source_orientation": ct.source.axcodes,
        "source_shape": list(ct.source.shape),
        "affine": [_round(row) for row in ct.affine],
        "source_affine": [_round(row) for row in ct.source.affine],
        "hu": hu,
        "warnings": list(ct.warnings),
    }
    if meta.get("format") == "dicom":
        out["series"] = {
            "uid": meta.get("series_uid"),
            "study_uid": meta.get("study_uid"),
            "frame_of_reference_uid": meta.get("frame_of_reference_uid"),
            "modality": meta.get("modality"),
            "description": meta.get("series_description"),
            "n": len(meta.get("sop_instance_uids", [])),
            "transfer_syntax": meta.get("transfer_syntax"),
            "window_center": meta.get("window_center"),
            "window_width": meta.get("window_width"),
        }
        out["other_series"] = list(meta.get("other_series", []))
    return out
