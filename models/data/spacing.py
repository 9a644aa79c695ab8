"""Blur and resample a CT to a spacing as one small matrix per axis: MONAI ``Spacing`` after our blur, fast.

Why: on a 512 x 512 x 300 CT, the anti-aliasing blur at full resolution (scipy, one thread) followed by
MONAI ``Spacing`` took 2.0 s, the largest cost outside the network for a small model. Both steps are
separable when the two grids share their axes, as ``Spacing`` always makes them (it keeps the direction
cosines and changes only the voxel size): along one axis, the gaussian (scipy's kernel, edges repeated)
followed by linear interpolation (coordinates clamped to the border, as ``padding_mode="border"``) is one
(n_out x n_in) matrix. The volume then goes through three matrix products, each one reading the data in
memory order and shrinking it, 0.27 s for that CT on two threads (``bench/cpu_stages.py``), with the
same values to float rounding (tests compare against scipy + MONAI). The output grid is MONAI's own
(``zoom_affine`` and ``compute_shape_offset``, as ``Spacing`` computes it). Grids that do not share their
axes (a sheared affine) get ``None``, and the caller takes the scipy + MONAI route.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import torch
from monai.data.utils import AFFINE_TOL, compute_shape_offset, zoom_affine

AXIS_ALIGNED_TOL = 1e-6
GAUSSIAN_TRUNCATE = 4.0  # scipy.ndimage.gaussian_filter's default: the kernel's radius in sigmas

Box = tuple[slice, slice, slice]


def anti_alias_sigma(source: Sequence[float], target: Sequence[float]) -> tuple[float, ...]:
    """Gaussian sigma per axis, in source voxels, for resampling from ``source`` to ``target`` spacing.

    The rule of scikit-image's and MONAI ``Resize``'s anti-aliasing: ``(factor - 1) / 2`` where the grid
    gets ``factor`` times coarser, nothing where it gets finer. Why it matters: bilinear resampling of a
    1 mm scan to 3 mm reads 4 of every 27 voxels, so the 1 mm noise (std ~20 HU) reaches the network
    almost undamped, while a scan acquired at 3 mm arrives averaged. Blurring first makes the two look
    alike, as a model trained on either expects.
    """
    return tuple(max(0.0, (float(t) / float(s) - 1.0) / 2.0) for s, t in zip(source, target, strict=True))


def axis_aligned(linear: np.ndarray) -> bool:
    """A grid-to-grid map's 3x3 part moves each axis on its own (the grids share their axes)."""
    return bool(np.all(np.abs(linear - np.diag(np.diag(linear))) <= AXIS_ALIGNED_TOL * np.abs(linear).max()))


def voxel_size(affine: np.ndarray) -> np.ndarray:
    """The mm step along each array axis: the column norms of the affine's 3x3 part."""
    return np.sqrt((np.asarray(affine, dtype=np.float64)[:3, :3] ** 2).sum(axis=0))


def crop_affine(affine: np.ndarray, box: Box) -> np.ndarray:
    """Affine of ``array[box]``: the same axes, the origin moved to the box's first voxel."""
    out = np.array(affine, dtype=np.float64, copy=True)
    start = np.array([s.start or 0 for s in box], dtype=np.float64)
    out[:3, 3] = affine[:3, :3] @ start + affine[:3, 3]
    return out


def spacing_grid(
    shape: Sequence[int], affine: np.ndarray, spacing: Sequence[float]
) -> tuple[tuple[int, int, int], np.ndarray]:
    """The grid MONAI ``Spacing(pixdim=spacing)`` puts a (``shape``, ``affine``) volume on: shape and affine.

    As ``Spacing`` does, an axis whose spacing is within ``AFFINE_TOL`` of the target keeps its own.
    """
    affine = np.asarray(affine, dtype=np.float64)
    own = voxel_size(affine)
    target = np.asarray(spacing, dtype=np.float64)
    target = np.where(np.abs(own - target) <= AFFINE_TOL, own, target)
    out_affine = zoom_affine(affine, target, diagonal=False)
    out_shape, offset = compute_shape_offset(list(shape), affine, out_affine, False)
    out_affine[:3, 3] = offset[:3]
    return (int(out_shape[0]), int(out_shape[1]), int(out_shape[2])), out_affine


def gaussian_kernel(sigma: float) -> np.ndarray:
    """scipy's normalised, truncated gaussian (radius ``int(4 sigma + 0.5)``); ``[1]`` for no blur."""
    if sigma <= 0.0:
        return np.ones(1)
    radius = int(GAUSSIAN_TRUNCATE * sigma + 0.5)
    kernel = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    return kernel / kernel.sum()


def axis_matrix(coords: np.ndarray, n_in: int, sigma: float) -> np.ndarray:
    """(len(coords), n_in) weights: the blur of a line, then its linear interpolation at ``coords``.

    ``coords`` are source indices, clamped to the line (``Spacing``'s border padding); the blur's taps
    repeat the line's edge voxels (scipy's ``mode="nearest"``). A tap that falls on an
    interpolation neighbour of weight ``f`` contributes ``f`` times the kernel at its offset.
    """
    coords = np.clip(np.asarray(coords, dtype=np.float64), 0, n_in - 1)
    lower = np.floor(coords).astype(np.intp)
    frac = coords - lower
    kernel = np.concatenate([[0.0], gaussian_kernel(sigma), [0.0]])  # zero-padded: taps beyond the radius
    radius = (len(kernel) - 3) // 2
    out = np.zeros((len(coords), n_in))
    rows = np.arange(len(coords))
    for offset in range(-radius, radius + 2):  # the lower neighbour's taps, then one more for the upper's
        weight = (1.0 - frac) * kernel[offset + radius + 1] + frac * kernel[offset + radius]
        np.add.at(out, (rows, np.clip(lower + offset, 0, n_in - 1)), weight)
    return out


def resample_anti_aliased(
    hu: np.ndarray, affine: np.ndarray, spacing: Sequence[float], blur: bool = True
) -> tuple[np.ndarray, np.ndarray] | None:
    """(X, Y, Z) float32 ``hu`` on ``affine``'s grid -> (values at ``spacing``, their affine), or None.

    Equal (to float rounding) to ``Spacing(spacing, bilinear, border)`` applied to ``hu`` after
    :func:`anti_alias_sigma`'s blur. ``blur=False``: interpolation only. None when the grids do not share
    their axes.
    """
    affine = np.asarray(affine, dtype=np.float64)
    out_shape, out_affine = spacing_grid(hu.shape, affine, spacing)
    to_source = np.linalg.solve(affine, out_affine)  # output voxel index -> source voxel index
    linear = to_source[:3, :3]
    if not axis_aligned(linear):
        return None
    sigma = anti_alias_sigma(voxel_size(affine), spacing) if blur else (0.0, 0.0, 0.0)
    matrices = [
        axis_matrix(linear[a, a] * np.arange(out_shape[a]) + to_source[a, 3], hu.shape[a], sigma[a]) for a in range(3)
    ]
    # only the voxels some output reads (the grid's edge rows may read none)
    reach = [np.flatnonzero(m.any(axis=0))[[0, -1]] for m in matrices]
    read = tuple(slice(int(lo), int(hi) + 1) for lo, hi in reach)
    matrices = [torch.from_numpy(m[:, s].astype(np.float32)) for m, s in zip(matrices, read, strict=True)]
    return _apply_separable(np.asarray(hu[read], dtype=np.float32), matrices), out_affine


def _apply_separable(hu: np.ndarray, matrices: list[torch.Tensor]) -> np.ndarray:
    """``hu`` multiplied by ``matrices[a]`` along each axis ``a``, every product on contiguous memory.

    The volume is viewed in C order (a Fortran-ordered NIfTI array through its transpose, no copy) as
    (P, Q, R); P is reduced by banded products over flattened slabs, each slab reduced along R at once by
    banded products over its rows, and Q last by a batched dense one (the smallest by then). Reducing
    each slab along R straight away means the P-reduced volume (~90 MB for a 512 x 512 x 300 scan) never
    exists whole: only a slab of a few MB does, reused from one chunk of rows to the next.
    """
    if hu.flags.f_contiguous and not hu.flags.c_contiguous:
        data, axes = torch.from_numpy(hu.T), (2, 1, 0)
    else:
        data, axes = torch.from_numpy(np.ascontiguousarray(hu)), (0, 1, 2)
    p, q, r = data.shape
    w_p, w_q, w_r = (matrices[a] for a in axes)
    out = data.new_empty((w_p.shape[0], q, w_r.shape[0]))
    column_chunks = _row_chunks(w_r, rows=16)
    for out_rows, slab in _banded_row_slabs(w_p, data.reshape(p, q * r), rows=8):
        if slab is None:
            out[out_rows].zero_()
        else:
            _banded_columns_product(slab.reshape(-1, r), w_r, column_chunks, out=out[out_rows].view(-1, w_r.shape[0]))
    out = w_q @ out
    return out.numpy().transpose(np.argsort(axes))


# Why banded: each output voxel reads only its blur's reach (about 14 source voxels on a 0.7 -> 3 mm axis),
# so a dense product does twenty times the arithmetic it needs. Output rows go in chunks, each multiplying
# only the source range its rows read; chunk sizes measured on a 512 x 512 x 300 CT at one thread (0.47 s
# dense -> 0.21 s), small enough to skip most zeros, large enough for BLAS to stay efficient.


def _row_chunks(weights: torch.Tensor, rows: int) -> list[tuple[slice, slice]]:
    """(output rows, source columns they read) for chunks of ``rows`` rows of ``weights``; all-zero rows read none."""
    nonzero = (weights != 0).numpy()
    any_ = nonzero.any(axis=1)
    first = np.where(any_, nonzero.argmax(axis=1), weights.shape[1])
    last = np.where(any_, weights.shape[1] - 1 - nonzero[:, ::-1].argmax(axis=1), -1)
    chunks = []
    for start in range(0, weights.shape[0], rows):
        stop = min(start + rows, weights.shape[0])
        lo, hi = int(first[start:stop].min()), int(last[start:stop].max()) + 1
        chunks.append((slice(start, stop), slice(lo, max(lo, hi))))
    return chunks


def _banded_row_slabs(
    weights: torch.Tensor, x: torch.Tensor, rows: int
) -> Iterator[tuple[slice, torch.Tensor | None]]:
    """``weights @ x`` for a 2-D ``x``, as (output rows, their slab) for chunks of ``rows`` rows of ``weights``.

    Each slab multiplies only the source range its rows read; None for rows that read nothing (all zero).
    """
    for out_rows, cols in _row_chunks(weights, rows):
        yield out_rows, (weights[out_rows, cols] @ x[cols] if cols.stop > cols.start else None)


def _banded_columns_product(
    x: torch.Tensor, weights: torch.Tensor, chunks: list[tuple[slice, slice]], out: torch.Tensor | None = None
) -> torch.Tensor:
    """``x @ weights.T`` for a 2-D ``x``, skipping the zeros outside each chunk's band (each column written once).

    ``chunks``: :func:`_row_chunks` of ``weights``; ``out``: where to write (a new tensor by default).
    """
    out = x.new_empty((x.shape[0], weights.shape[0])) if out is None else out
    for out_cols, cols in chunks:
        if cols.stop > cols.start:
            out[:, out_cols] = x[:, cols] @ weights[out_cols, cols].T
        else:
            out[:, out_cols] = 0.0
    return out
