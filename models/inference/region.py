"""The box a few organs occupy, so ``--organs`` can run the fine pass on that box only.

Why: with ``--organs liver`` most of an abdominal CT is irrelevant. A coarse pass (the ``--fast`` spacing)
locates the organs, and the full-resolution pass then covers their bounding box plus a margin, the idea
behind TotalSegmentator's ``--roi_subset`` speed-up.
"""

from __future__ import annotations

import numpy as np


def organ_box(
    labels: np.ndarray, organ_ids: list[int], spacing: tuple[float, float, float], margin_mm: float
) -> tuple[slice, slice, slice] | None:
    """Slices of ``labels``' grid around every voxel labelled with one of ``organ_ids``; None if none is.

    ``margin_mm`` is added on each side (converted per axis with ``spacing``) and the box is clipped to
    the volume.
    """
    mask = np.isin(labels, np.asarray(organ_ids, dtype=labels.dtype))
    if not mask.any():
        return None
    box = []
    for axis in range(3):
        other = tuple(a for a in range(3) if a != axis)
        hit = np.flatnonzero(mask.any(axis=other))
        pad = int(np.ceil(margin_mm / spacing[axis]))
        box.append(slice(max(0, int(hit[0]) - pad), min(labels.shape[axis], int(hit[-1]) + 1 + pad)))
    return (box[0], box[1], box[2])
