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


def widen_box(box: tuple[slice, slice, slice], min_size: tuple[int, int, int], shape: tuple[int, ...]
              ) -> tuple[slice, slice, slice]:  # fmt: skip
    """``box`` grown about its centre to at least ``min_size`` voxels per axis, kept inside ``shape``.

    Why: a box thinner than one window is padded with its own edge slices at the window's edges, so the
    network would see a slab of repeated slices where the full pass sees the real anatomy around the
    organ. Measured on the 512 x 512 x 300 CT: the liver's box was 132 slices (37 at the model's 4 mm, the
    window is 64), and the cropped pass's liver agreed with the full pass's at Dice 0.74.
    """
    out = []
    for s, need, n in zip(box, min_size, shape[:3], strict=True):
        size = min(max(s.stop - s.start, need), n)
        start = min(max(0, (s.start + s.stop - size) // 2), n - size)
        out.append(slice(start, start + size))
    return (out[0], out[1], out[2])
