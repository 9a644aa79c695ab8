"""Resampling of a label map between two grids, by their voxel-to-world affines: nearest, or interpolated.

Why not MONAI's inverse transforms: they resample float probabilities of every class at full
resolution (gigabytes for a 512 x 512 x 300 CT, and most of the run time in users' reports). A label map
is uint8 and nearest-neighbour resampling of it is exact bookkeeping: each target voxel takes the label
of the model voxel whose centre is nearest to its own centre.
"""

from __future__ import annotations

import itertools

import numpy as np
import torch
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


def _axis_weights(scale: float, offset: float, n_dst: int, n_src: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Lower corner, upper corner and upper weight of every target index along one axis (border clamped)."""
    coord = np.clip(scale * np.arange(n_dst) + offset, 0.0, n_src - 1.0)
    lower = np.minimum(np.floor(coord).astype(np.intp), n_src - 1)
    upper = np.minimum(lower + 1, n_src - 1)
    return lower, upper, (coord - lower).astype(np.float32)


def _uniform_cells(labels: np.ndarray) -> np.ndarray:
    """True where a voxel and its 7 upper neighbours (edge-repeated past the end) carry one label."""
    nx, ny, nz = labels.shape
    padded = np.pad(labels, [(0, 1)] * 3, mode="edge")
    uniform = np.ones(labels.shape, dtype=bool)
    for dx, dy, dz in itertools.product((0, 1), repeat=3):
        uniform &= padded[dx : dx + nx, dy : dy + ny, dz : dz + nz] == labels
    return uniform


def resample_labels_interpolated(
    labels: np.ndarray,
    probs: torch.Tensor,
    src_affine: np.ndarray,
    dst_shape: tuple[int, ...],
    dst_affine: np.ndarray,
    chunk: int = 1 << 18,
) -> np.ndarray:
    """The argmax of the trilinearly interpolated class probabilities on the target grid, as uint8.

    This is what MONAI's recipe gives (invert the transforms on the probabilities with bilinear
    interpolation, then argmax): smooth organ boundaries instead of the model grid's staircase. It is
    computed without ever holding probabilities on the target grid: a target voxel whose 8 surrounding
    model voxels all carry label k takes k (a convex combination of vectors that all peak at k peaks at
    k), so only the voxels of cells that straddle a boundary are interpolated, ``chunk`` at a time.
    ``probs`` is (C, X, Y, Z) on the grid of ``labels`` (its argmax). Rotated grids fall back to nearest.
    """
    labels = np.asarray(labels)
    src_to_dst = np.linalg.solve(np.asarray(src_affine, float), np.asarray(dst_affine, float))
    linear, offset = src_to_dst[:3, :3], src_to_dst[:3, 3]
    if not np.all(np.abs(linear - np.diag(np.diag(linear))) <= AXIS_ALIGNED_TOL * np.abs(linear).max()):
        return resample_labels(labels, src_affine, dst_shape, dst_affine)
    axes = [_axis_weights(np.diag(linear)[a], offset[a], dst_shape[a], labels.shape[a]) for a in range(3)]
    lower = [a[0] for a in axes]
    out = labels[np.ix_(*lower)]
    todo = np.nonzero(~_uniform_cells(labels)[np.ix_(*lower)])
    for start in range(0, len(todo[0]), chunk):
        index = [t[start : start + chunk] for t in todo]
        corners = [(a[0][i], a[1][i], torch.from_numpy(a[2][i])) for a, i in zip(axes, index, strict=True)]
        acc: torch.Tensor | None = None
        for bits in range(8):
            pick = [c[1] if bits >> k & 1 else c[0] for k, c in enumerate(corners)]
            weight = torch.ones(len(index[0]))
            for k, c in enumerate(corners):
                weight = weight * (c[2] if bits >> k & 1 else 1.0 - c[2])
            term = probs[:, pick[0], pick[1], pick[2]] * weight
            acc = term if acc is None else acc.add_(term)
        assert acc is not None
        out[tuple(index)] = acc.argmax(dim=0).numpy().astype(np.uint8)
    return out
