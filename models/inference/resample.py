"""Nearest-neighbour resampling of a label map between two grids, by their voxel-to-world affines.

Why not MONAI's inverse transforms: they resample float probabilities of every class at full
resolution (gigabytes for a 512 x 512 x 300 CT, and most of the run time in users' reports). A label map
is uint8 and nearest-neighbour resampling of it is exact bookkeeping: each target voxel takes the label
of the model voxel whose centre is nearest to its own centre.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

AXIS_ALIGNED_TOL = 1e-6


def resample_labels(
    labels: np.ndarray, src_affine: np.ndarray, dst_shape: tuple[int, ...], dst_affine: np.ndarray
) -> np.ndarray:
    """``labels`` on the grid ``src_affine`` -> the grid (``dst_shape``, ``dst_affine``), nearest neighbour.

    Target voxels outside the source grid take the nearest edge voxel's label (MONAI's ``Spacing`` covers
    the scan's field of view, so this only happens within half a voxel of the border).
    When the grids share their axes (the usual case: ``Spacing`` keeps the direction cosines), the lookup
    is separable: one index vector per axis, no per-voxel coordinates (a 512 x 512 x 300 uint8 map takes
    78 MB and well under a second).
    """
    labels = np.asarray(labels)
    src_to_dst = np.linalg.solve(np.asarray(src_affine, float), np.asarray(dst_affine, float))  # dst idx -> src idx
    linear, offset = src_to_dst[:3, :3], src_to_dst[:3, 3]
    if np.all(np.abs(linear - np.diag(np.diag(linear))) <= AXIS_ALIGNED_TOL * np.abs(linear).max()):
        # floor(x + 0.5): ties (a target centre exactly between two source centres, e.g. a 2x spacing
        # factor) always go up, never alternate as round-half-to-even would
        index = [
            np.clip(np.floor(np.diag(linear)[a] * np.arange(dst_shape[a]) + offset[a] + 0.5), 0, labels.shape[a] - 1)
            .astype(np.intp)
            for a in range(3)
        ]
        return labels[np.ix_(*index)]
    # rotated grids (not produced by our pipeline, kept for callers with arbitrary grids)
    return ndimage.affine_transform(labels, linear, offset=offset, output_shape=tuple(dst_shape), order=0,
                                    mode="nearest")
