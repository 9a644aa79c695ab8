"""Label maps from the model's grid to the scan's grid, by their voxel-to-world affines.

Why not MONAI's inverse transforms: they resample float probabilities of every class at full
resolution (gigabytes for a 512 x 512 x 300 CT, and most of the run time in users' reports).
:func:`resample_labels_interpolated` gives the same labels (the argmax of trilinearly interpolated
probabilities) one target slice at a time, interpolating only where a model cell straddles a boundary;
:func:`resample_labels` is the plain nearest-neighbour lookup (rotated grids, and the cheap fallback).
"""

from __future__ import annotations

import itertools

import numpy as np
import torch
from scipy import ndimage

from models.data.spacing import axis_aligned
from models.inference.threads import torch_thread_pool


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
    linear, offset = _target_to_source(src_affine, dst_affine)
    if axis_aligned(linear):
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


def _target_to_source(src_affine: np.ndarray, dst_affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Linear part and offset of the map from target voxel indices to source voxel indices."""
    src_to_dst = np.linalg.solve(np.asarray(src_affine, float), np.asarray(dst_affine, float))
    return src_to_dst[:3, :3], src_to_dst[:3, 3]


def _axis_corners(scale: float, offset: float, n_dst: int, n_src: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Lower and upper source index and upper weight of every target index along one axis (border clamped)."""
    coord = np.clip(scale * np.arange(n_dst) + offset, 0.0, n_src - 1.0)
    lower = np.floor(coord).astype(np.intp)
    return lower, np.minimum(lower + 1, n_src - 1), (coord - lower).astype(np.float32)


def _padded_rows(probs: torch.Tensor) -> torch.Tensor:
    """(C, X, Y, Z) -> ((Z + 2) * (X + 2) * (Y + 2), C): each voxel's class vector as one row, with a zero border.

    Rows in model-slice order (z, then x, then y), so the corners a target slice reads lie close together;
    the border rows are zero vectors, which clamped indices outside the box read. Only the border is
    zeroed: the interior is written once, by torch's transposing copy, which uses every intra-op thread
    (numpy's uses one: 0.063 -> 0.030 s for the large CT's 54 MB of probabilities on 2 cores).
    """
    n_classes, nx, ny, nz = probs.shape
    rows = torch.empty((nz + 2, nx + 2, ny + 2, n_classes), dtype=torch.float32)
    for face in (rows[0], rows[-1], rows[:, 0], rows[:, -1], rows[:, :, 0], rows[:, :, -1]):
        face.zero_()
    rows[1:-1, 1:-1, 1:-1].copy_(probs.permute(3, 1, 2, 0))
    return rows.view(-1, n_classes)


def _plane_uniform(labels: np.ndarray) -> np.ndarray:
    """True where a voxel and its in-plane neighbours (+x, +y, +x+y; edges repeated) carry its label."""
    pad = np.pad(labels, [(0, 1), (0, 1), (0, 0)], mode="edge")
    return (pad[1:, :-1] == labels) & (pad[:-1, 1:] == labels) & (pad[1:, 1:] == labels)


def resample_labels_interpolated(
    labels: np.ndarray,
    probs: torch.Tensor,
    box: tuple[slice, slice, slice],
    src_affine: np.ndarray,
    dst_shape: tuple[int, ...],
    dst_affine: np.ndarray,
) -> np.ndarray:
    """The argmax of the trilinearly interpolated class probabilities on the target grid, as uint8.

    This is what MONAI's recipe gives (invert the transforms on the probabilities with bilinear
    interpolation, then argmax): smooth organ boundaries instead of the model grid's staircase, without
    ever holding probabilities on the target grid. ``labels`` is the argmax on the whole model grid;
    ``probs`` (C, ...) covers only ``box`` of it (the body; elsewhere no class has any probability, as
    MONAI's inverse crop pads zeros).

    Why it is cheap: a target voxel whose 8 surrounding model voxels all carry label k takes k (a convex
    combination of vectors that all peak at k peaks at k). So only the voxels of cells that straddle a
    boundary are interpolated, and the work grows with the organs' surface, not the scan's size: per run
    of target slices between the same two model slices, each of the two is blended along x and then y
    at those voxels only (from their four corners' class vectors), and each target slice of the run is
    then one blend along z and an argmax. Rotated grids fall back to nearest.
    """
    labels = np.asarray(labels)
    linear, offset = _target_to_source(src_affine, dst_affine)
    if not axis_aligned(linear):
        return resample_labels(labels, src_affine, dst_shape, dst_affine)
    (x0, x1, wx), (y0, y1, wy), (z0, z1, wz) = (
        _axis_corners(np.diag(linear)[a], offset[a], dst_shape[a], labels.shape[a]) for a in range(3)
    )
    # Every model voxel's class vector is one row, with a zero border: model indices outside the box read
    # a zero vector (index 0 or the last), inside the box they shift by one.
    rows = _padded_rows(probs)
    step_x = probs.shape[2] + 2  # rows from one padded x to the next; a padded slice holds (X + 2) of them
    step_z = (probs.shape[1] + 2) * step_x

    def in_box(index: np.ndarray, axis: int) -> np.ndarray:
        return np.clip(index - box[axis].start + 1, 0, box[axis].stop - box[axis].start + 1)

    # per target x and y: the padded row offsets of the lower and upper model neighbour, and the upper weight
    x_lo, x_hi = (torch.from_numpy(in_box(i, 0) * step_x) for i in (x0, x1))
    y_lo, y_hi = (torch.from_numpy(in_box(i, 1)) for i in (y0, y1))
    z_lo, z_hi = in_box(z0, 2) * step_z, in_box(z1, 2) * step_z
    ux, uy = torch.from_numpy(wx), torch.from_numpy(wy)

    def in_plane(xs: torch.Tensor, ys: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor]:
        """Target voxels (xs, ys): their four corners' row offsets within a padded slice, and the x and y weights."""
        corners = [x[xs] + y[ys] for y in (y_lo, y_hi) for x in (x_lo, x_hi)]
        return corners, ux[xs, None], uy[ys, None]

    def bilinear(plane: int, corners: list[torch.Tensor], wx_: torch.Tensor, wy_: torch.Tensor) -> torch.Tensor:
        """Class vectors of the model slice at padded row offset ``plane``, at the voxels of ``in_plane``: (n, C)."""
        c00, c10, c01, c11 = (rows.index_select(0, plane + offset) for offset in corners)
        return torch.lerp(torch.lerp(c00, c10, wx_), torch.lerp(c01, c11, wx_), wy_)

    # (Z, Y, X): one model slice contiguous, rows and columns as in a target slice of ``out``
    uniform = _plane_uniform(labels).transpose(2, 1, 0).copy()
    by_slice = labels.transpose(2, 1, 0).copy()

    def on_target(plane: np.ndarray) -> np.ndarray:
        """A model slice (Y, X) at every target (y, x)'s lower corner: (target Y, target X)."""
        return plane.take(y0, axis=0).take(x0, axis=1)

    # (Z, Y, X) in C order is (X, Y, Z) in Fortran order, the reader's layout for NIfTI scans: the label map
    # then walks memory like the HU volume (statistics) and the file it is saved to, with no transposing copy
    out = np.empty((dst_shape[2], dst_shape[1], dst_shape[0]), dtype=np.uint8)

    def fill(slices: range) -> None:
        """Target slices ``slices`` of ``out``; each worker thread takes one contiguous range.

        Target slices come in runs between the same two model slices a and b: per run, the voxels of
        cells that straddle a boundary are interpolated in a and in b (bilinear, from four corner rows
        each), and each target slice of the run is then one blend along z and an argmax there.
        """
        pair = (-1, -1)
        for k in slices:
            a, b = int(z0[k]), int(z1[k])
            if (a, b) != pair:  # a new run of target slices between model slices a and b
                pair = (a, b)
                nearest = on_target(by_slice[a])
                straddle = ~(uniform[a] & uniform[b] & (by_slice[b] == by_slice[a]))
                todo = np.flatnonzero(on_target(straddle)) if straddle.any() else np.empty(0, dtype=np.intp)
                if len(todo):
                    ys, xs = (torch.from_numpy(i) for i in np.divmod(todo, dst_shape[0]))
                    voxels = in_plane(xs, ys)  # the same in both model slices
                    at_a, at_b = bilinear(int(z_lo[k]), *voxels), bilinear(int(z_hi[k]), *voxels)
            out[k] = nearest
            if len(todo):
                value = torch.lerp(at_a, at_b, float(wz[k]))  # (voxels to do, C)
                out[k].reshape(-1)[todo] = value.max(dim=1).indices.numpy()  # first maximum, as argmax

    workers = max(1, min(torch.get_num_threads(), dst_shape[2]))
    bounds = np.linspace(0, dst_shape[2], workers + 1).astype(int)
    with torch_thread_pool(workers) as pool:
        list(pool.map(fill, [range(lo, hi) for lo, hi in itertools.pairwise(bounds)]))
    return out.transpose(2, 1, 0)
