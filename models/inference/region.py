"""The region a few organs occupy, so ``--organs`` runs the network only where they are.

Why: with ``--organs liver`` most of an abdominal CT is irrelevant. A coarse pass (the ``--fast`` spacing)
locates the organs (the idea behind TotalSegmentator's ``--roi_subset``); the full-resolution pass then
runs only the sliding windows that touch their box plus a margin. The windows stay where a full pass puts
them and see the whole scan around the box, so inside the box the labels are the full pass's own.
"""

from __future__ import annotations

import itertools

import numpy as np

from models.data.spacing import Box


def organ_box(labels: np.ndarray, organ_ids: list[int], spacing: tuple[float, float, float], margin_mm: float
              ) -> Box | None:  # fmt: skip
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


def map_box(box: Box, src_affine: np.ndarray, dst_affine: np.ndarray, dst_shape: tuple[int, ...], pad: int = 0
            ) -> Box:  # fmt: skip
    """The box of the grid (``dst_shape``, ``dst_affine``) that covers ``box`` of the grid ``src_affine``.

    The source box's outer voxel faces (half a voxel beyond the first and last centres) are mapped through
    world space; every destination voxel whose centre lies within, plus ``pad`` voxels on each side, is
    in the result, clipped to the grid. Any affine works: the eight corners are mapped.
    """
    corners = np.array(list(itertools.product(*((s.start - 0.5, s.stop - 0.5) for s in box))), dtype=np.float64)
    to_dst = np.linalg.solve(np.asarray(dst_affine, np.float64), np.asarray(src_affine, np.float64))
    mapped = corners @ to_dst[:3, :3].T + to_dst[:3, 3]
    lo = np.ceil(mapped.min(axis=0) - 1e-6).astype(int) - pad
    hi = np.floor(mapped.max(axis=0) + 1e-6).astype(int) + 1 + pad
    out = [slice(int(np.clip(a, 0, n)), int(np.clip(b, 0, n))) for a, b, n in zip(lo, hi, dst_shape[:3], strict=True)]
    return (out[0], out[1], out[2])


def box_within(box: Box, outer: Box) -> Box:
    """``box`` intersected with ``outer``, in ``outer``'s own coordinates (an axis may come out empty)."""
    out = []
    for s, o in zip(box, outer, strict=True):
        start = min(max(s.start, o.start), o.stop) - o.start
        out.append(slice(start, max(start, min(s.stop, o.stop) - o.start)))
    return (out[0], out[1], out[2])
