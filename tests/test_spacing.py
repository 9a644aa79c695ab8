"""The separable blur + resample equals scipy's blur followed by MONAI ``Spacing`` (what it replaces)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from monai.transforms import Spacing
from scipy import ndimage

from models.config import DataConfig
from models.data.spacing import anti_alias_sigma, resample_anti_aliased, spacing_grid
from models.data.transforms import preprocess
from models.io.reader import CTImage, SourceSpace


def _reference(hu: np.ndarray, affine: np.ndarray, spacing: tuple[float, ...], blur: bool = True) -> MetaTensor:
    """The route this replaces: blur the volume (scipy, edges repeated), then MONAI Spacing."""
    own = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))
    blurred = ndimage.gaussian_filter(hu, anti_alias_sigma(own, spacing), mode="nearest") if blur else hu
    image = MetaTensor(torch.from_numpy(np.ascontiguousarray(blurred))[None], affine=torch.from_numpy(affine))
    return Spacing(pixdim=spacing, mode="bilinear", padding_mode="border")(image)


def _rotation(degrees: float) -> np.ndarray:
    t = np.deg2rad(degrees)
    return np.array([[np.cos(t), -np.sin(t), 0.0], [np.sin(t), np.cos(t), 0.0], [0.0, 0.0, 1.0]])


def _affine(zooms: tuple[float, float, float], rotation: np.ndarray | None = None) -> np.ndarray:
    out = np.eye(4)
    out[:3, :3] = (np.eye(3) if rotation is None else rotation) @ np.diag(zooms)
    out[:3, 3] = (-120.5, 33.0, 7.25)
    return out


@pytest.mark.parametrize(
    ("shape", "zooms", "spacing", "order"),
    [
        ((70, 64, 40), (0.7, 0.72, 1.1), (3.0, 3.0, 4.0), "F"),  # a clinical scan to the cpu-demo spacing
        ((70, 64, 40), (0.7, 0.72, 1.1), (1.5, 1.5, 2.0), "C"),  # the BTCV spacing, C-ordered input
        ((30, 33, 12), (3.0, 3.0, 5.0), (1.5, 1.5, 4.0), "F"),  # finer in-plane, coarser slices: mixed
        ((40, 41, 20), (1.5, 1.5, 2.0), (1.5, 1.5, 2.0), "F"),  # the model's own spacing: identity
        ((40, 41, 20), (1.5004, 1.5, 2.0), (1.5, 1.5, 2.0005), "F"),  # within MONAI's tolerance: kept
    ],
)
def test_equals_scipy_blur_then_monai_spacing(shape, zooms, spacing, order) -> None:
    rng = np.random.default_rng(0)
    hu = np.asarray(rng.normal(40.0, 300.0, shape).astype(np.float32), order=order)
    affine = _affine(zooms)
    values, out_affine = resample_anti_aliased(hu, affine, spacing)
    reference = _reference(hu, affine, spacing)
    assert values.shape == tuple(reference.shape[1:])
    np.testing.assert_allclose(out_affine, reference.affine.numpy(), atol=1e-9)
    np.testing.assert_allclose(values, reference[0].numpy(), atol=2e-3, rtol=0)  # HU: float32 rounding only


def test_rotated_grids_share_their_axes_with_their_resampled_grid() -> None:
    """An oblique scan's direction cosines survive Spacing, so the separable route still applies."""
    rng = np.random.default_rng(1)
    hu = rng.normal(0.0, 200.0, (50, 45, 20)).astype(np.float32)
    affine = _affine((0.8, 0.8, 2.5), _rotation(17.0))
    values, _ = resample_anti_aliased(hu, affine, (2.0, 2.0, 3.0))
    np.testing.assert_allclose(values, _reference(hu, affine, (2.0, 2.0, 3.0))[0].numpy(), atol=2e-3, rtol=0)


def test_interpolation_alone_matches_spacing_without_the_blur() -> None:
    rng = np.random.default_rng(2)
    hu = np.asarray(rng.normal(40.0, 300.0, (80, 70, 40)).astype(np.float32), order="F")
    affine, spacing = _affine((0.7, 0.7, 1.2)), (3.0, 3.0, 4.0)
    values, out_affine = resample_anti_aliased(hu, affine, spacing, blur=False)
    reference = _reference(hu, affine, spacing, blur=False)
    np.testing.assert_allclose(out_affine, reference.affine.numpy(), atol=1e-9)
    np.testing.assert_allclose(values, reference[0].numpy(), atol=2e-3, rtol=0)


def test_a_sheared_grid_is_refused_and_preprocess_falls_back_to_monai() -> None:
    rng = np.random.default_rng(3)
    hu = rng.normal(40.0, 100.0, (30, 30, 12)).astype(np.float32)
    affine = _affine((1.0, 1.0, 2.0))
    affine[0, 2] = 0.6  # gantry tilt: the slice axis leans, the grid is not orthogonal
    assert resample_anti_aliased(hu, affine, (2.0, 2.0, 3.0)) is None
    source = SourceSpace(hu.shape, affine, np.array([[0, 1], [1, 1], [2, 1]]), "RAS")
    ct = CTImage(array=hu, affine=affine, source=source)
    cfg = DataConfig(spacing=(2.0, 2.0, 3.0), hu_min=-175.0, hu_max=250.0)
    out = preprocess(ct, cfg)
    expected = np.clip((_reference(hu, affine, (2.0, 2.0, 3.0))[0].numpy() + 175.0) / 425.0, 0.0, 1.0)
    np.testing.assert_allclose(out[0].numpy(), expected, atol=1e-5)


def test_the_grid_is_monai_spacing_s_grid() -> None:
    affine = _affine((0.7, 0.72, 1.1), _rotation(-30.0))
    shape, out_affine = spacing_grid((99, 87, 51), affine, (3.0, 3.0, 4.0))
    image = MetaTensor(torch.zeros((1, 99, 87, 51)), affine=torch.from_numpy(affine))
    reference = Spacing(pixdim=(3.0, 3.0, 4.0), lazy=True)(image)
    assert shape == tuple(int(s) for s in reference.peek_pending_shape())
    np.testing.assert_allclose(out_affine, reference.peek_pending_affine().numpy(), atol=1e-9)


def test_banded_products_equal_the_dense_ones_zero_rows_included() -> None:
    """Chunks of rows multiply only the source range they read; a row of zeros reads none and stays zero."""
    from models.data.spacing import _banded_columns_product, _banded_row_slabs, _row_chunks

    rng = np.random.default_rng(4)
    weights = np.zeros((21, 50), dtype=np.float32)
    for i in range(21):
        centre = int(i * 2.4)
        weights[i, max(0, centre - 3):centre + 4] = rng.random(len(range(max(0, centre - 3), min(50, centre + 4))))
    weights[5] = 0.0  # a chunk with a zero row
    weights[16:] = 0.0  # a chunk of zero rows only
    w = torch.from_numpy(weights)
    x = torch.from_numpy(rng.normal(size=(50, 33)).astype(np.float32))
    slabs = list(_banded_row_slabs(w, x, rows=4))
    assert [rows for rows, slab in slabs if slab is None] == [slice(16, 20), slice(20, 21)]
    dense = (w @ x).numpy()
    for rows, slab in slabs:
        np.testing.assert_allclose(np.zeros_like(dense[rows]) if slab is None else slab.numpy(), dense[rows], atol=1e-5)
    y = torch.from_numpy(rng.normal(size=(9, 50)).astype(np.float32))
    # the output is allocated uninitialised: leave NaN where it will land, so an unwritten column shows
    torch.full((9, 21), float("nan"))  # freed at once: the next allocation of this size reuses it
    got = _banded_columns_product(y, w, _row_chunks(w, rows=4))
    np.testing.assert_allclose(got.numpy(), (y @ w.T).numpy(), atol=1e-5)
    into = torch.full((9, 21), float("nan"))
    assert _banded_columns_product(y, w, _row_chunks(w, rows=4), out=into) is into
    np.testing.assert_allclose(into.numpy(), (y @ w.T).numpy(), atol=1e-5)


@pytest.mark.parametrize("order", ["C", "F"])
def test_separable_product_equals_the_dense_one_with_rows_that_read_nothing(order: str) -> None:
    """Slabs reduced along two axes at once give the three dense products, zero rows included."""
    from models.data.spacing import _apply_separable

    rng = np.random.default_rng(5)
    hu = np.asarray(rng.normal(size=(23, 19, 30)).astype(np.float32), order=order)
    matrices = [rng.random((n_out, n_in)).astype(np.float32) for n_out, n_in in ((7, 23), (6, 19), (9, 30))]
    for m in matrices:
        m[m < 0.6] = 0.0  # banded-ish
    matrices[0 if order == "C" else 2][2:] = 0.0  # the slabbed axis: chunks of rows that read nothing
    dense = np.einsum("ai,bj,ck,ijk->abc", *matrices, hu.astype(np.float64))
    torch.full((7 if order == "C" else 9, 19, 9 if order == "C" else 7), float("nan"))  # poison the output's memory
    got = _apply_separable(hu, [torch.from_numpy(m) for m in matrices])
    np.testing.assert_allclose(got, dense, rtol=1e-4, atol=1e-4)
