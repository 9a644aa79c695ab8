"""Inference core: orientation, resampling, TTA, --organs, stats, outputs. Models with known answers.

ThresholdNet labels a voxel by how many HU thresholds it exceeds, so a correct pipeline must return
exactly ``threshold_labels(input)`` in the input's own voxel order, whatever that order is.
"""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
import torch
from scipy import ndimage
from segment_helpers import (
    ThresholdNet,
    dice,
    reoriented,
    small_phantom,
    threshold_labels,
    threshold_spec,
    write_nifti,
)

from models.inference import Segmenter, SegmentOptions, write_outputs
from models.inference.memory import CPU_MAX_BATCH, choose_batch, window_bytes
from models.inference.options import resolve_organs
from models.inference.preview import _centre, _planes, save_preview
from models.inference.resample import resample_labels, resample_labels_interpolated
from models.inference.stats import label_boxes, organ_stats, stats_csv
from models.io.reader import load_ct
from models.modeldir import LabelInfo

THRESHOLDS = (0.5, 150.5)  # between integer HU values: no ties
SPACING = (5.4, 5.4, 6.0)  # the phantom's own spacing: Spacing is the identity, so the answer is exact


@pytest.fixture(scope="module")
def phantom() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return small_phantom()


def _segmenter(spacing=SPACING, trained_fast: bool = False, **options) -> Segmenter:
    spec = threshold_spec(["soft tissue", "dense"], spacing)
    spec.preprocessing.trained_fast = trained_fast
    return Segmenter(ThresholdNet(THRESHOLDS), spec, device="cpu", options=SegmentOptions(**options))


# axis orders of the same physical volume: RAS, LPS, LAS, and two permuted + flipped ones
ORIENTATIONS = {
    "RAS": ((0, 1, 2), (False, False, False)),
    "LPS": ((0, 1, 2), (True, True, False)),
    "LAS": ((0, 1, 2), (True, False, False)),
    "SLP-like": ((2, 0, 1), (True, True, False)),
    "ASR-like": ((1, 2, 0), (False, True, True)),
}


@pytest.mark.parametrize("name", list(ORIENTATIONS))
def test_output_is_on_the_input_grid_voxel_for_voxel(name: str, phantom, tmp_path: Path) -> None:
    hu, _, affine = phantom
    data, aff = reoriented(hu, affine, *ORIENTATIONS[name])
    path = write_nifti(tmp_path / f"{name}.nii.gz", data, aff)
    result = _segmenter().segment(path)
    assert result.labels.shape == data.shape and result.labels.dtype == np.uint8
    np.testing.assert_allclose(result.affine, aff)
    expected = threshold_labels(data, THRESHOLDS)
    assert set(np.unique(expected)) == {0, 1, 2}
    np.testing.assert_array_equal(result.labels, expected)
    files = write_outputs(result, tmp_path / "out", preview=False)
    img = nib.load(str(files["segmentation"]))
    assert img.shape == data.shape and img.get_data_dtype() == np.uint8
    np.testing.assert_allclose(img.affine, aff, atol=1e-5)
    np.testing.assert_array_equal(np.asarray(img.dataobj), expected)


def test_a_scan_without_orientation_gets_masks_every_viewer_places_on_it(phantom, tmp_path: Path) -> None:
    """Both NIfTI codes 0: nibabel reads LAS, ITK LPS. Masks written with the scan's own header (codes 0, its
    pixdim) sit on the scan in both; masks written with nibabel's affine as code 1 would be mirrored in ITK."""
    hu, _, _ = phantom
    img = nib.Nifti1Image(hu.astype(np.int16), None)
    img.header.set_zooms(SPACING)
    img.header.set_qform(None, code=0)
    img.header.set_sform(None, code=0)
    path = tmp_path / "bare.nii.gz"
    nib.save(img, str(path))
    result = _segmenter().segment(path)
    np.testing.assert_array_equal(result.labels, threshold_labels(hu, THRESHOLDS))
    assert any("no orientation in the header" in w for w in result.warnings)
    files = write_outputs(result, tmp_path / "out", split=True, preview=False)
    scan = sitk.ReadImage(str(path))
    for name in ("segmentation", "organ:dense"):
        mask = sitk.ReadImage(str(files[name]))
        for get in ("GetOrigin", "GetDirection", "GetSpacing"):
            np.testing.assert_allclose(getattr(mask, get)(), getattr(scan, get)(), atol=1e-4)
        header = nib.load(str(files[name])).header
        assert (int(header["qform_code"]), int(header["sform_code"])) == (0, 0)
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert any("no orientation in the header" in w for w in report["warnings"])


def test_fast_runs_at_twice_the_spacing_on_the_input_grid_and_says_so(phantom, tmp_path: Path) -> None:
    hu, _, affine = phantom
    data, aff = reoriented(hu, affine, *ORIENTATIONS["LPS"])
    result = _segmenter(fast=True).segment(write_nifti(tmp_path / "ct.nii.gz", data, aff))
    assert result.labels.shape == data.shape
    np.testing.assert_allclose(result.affine, aff)
    assert result.info["passes"][0]["spacing"] == [2 * s for s in SPACING]
    expected = threshold_labels(data, THRESHOLDS)
    assert (result.labels == expected).mean() > 0.8  # coarser, but in place (a flipped axis would not be)
    assert any("--fast" in w and "10.8 x 10.8 x 12 mm" in w for w in result.warnings), result.warnings
    # a model trained at the fast spacing too (finetune data.coarse_prob > 0) runs there without the warning
    trained = _segmenter(fast=True, trained_fast=True).segment(write_nifti(tmp_path / "ct.nii.gz", data, aff))
    np.testing.assert_array_equal(trained.labels, result.labels)
    assert not any("--fast" in w for w in trained.warnings), trained.warnings


def test_coarser_model_spacing_keeps_a_box_in_place(tmp_path: Path) -> None:
    """Model at 1.75x the scan's spacing: the mask of a box must come back where the box is.

    A model voxel spans 1.75 scan voxels, so each face of the box may move by one scan voxel (measured:
    Dice 0.83 for this thin box); a flipped or shifted resampling would move it by many.
    """
    shape, spacing = (60, 50, 36), (1.2, 1.4, 2.0)
    hu = np.full(shape, -100, dtype=np.int16)
    box = (slice(7, 27), slice(30, 44), slice(4, 16))  # off-centre on every axis: a flip would move it
    hu[box] = 401  # threshold 150.5 is the midpoint: interpolated edges split evenly
    affine = np.diag([*spacing, 1.0])
    affine[:3, 3] = (-40.0, 12.0, 300.0)
    data, aff = reoriented(hu, affine, (2, 0, 1), (True, True, False))  # stored permuted + flipped
    path = write_nifti(tmp_path / "box.nii.gz", data, aff)
    result = _segmenter(spacing=tuple(1.75 * s for s in spacing)).segment(path)
    assert result.info["passes"][0]["model_shape"] == [35, 29, 21]
    truth = threshold_labels(data, THRESHOLDS) == 2
    got = result.labels == 2
    assert dice(got, truth) > 0.8
    for axis in range(3):
        other = tuple(a for a in range(3) if a != axis)
        g, t = np.flatnonzero(got.any(axis=other)), np.flatnonzero(truth.any(axis=other))
        assert abs(g[0] - t[0]) <= 1 and abs(g[-1] - t[-1]) <= 1, (axis, g[[0, -1]], t[[0, -1]])


def test_tta_agrees_with_a_mirror_equivariant_model(phantom, tmp_path: Path) -> None:
    hu, _, affine = phantom
    data, aff = reoriented(hu, affine, *ORIENTATIONS["LPS"])
    path = write_nifti(tmp_path / "lps.nii.gz", data, aff)
    result = _segmenter(tta=True).segment(path)
    np.testing.assert_array_equal(result.labels, threshold_labels(data, THRESHOLDS))
    assert result.info["passes"][0]["passes_per_window"] == 4


class ContextNet(ThresholdNet):
    """ThresholdNet shifted by its window's mean: like a real network, each window sees the voxels near a
    boundary a little differently, so which windows are blended there changes the labels."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x + 0.5 * (x.mean(dim=(2, 3, 4), keepdim=True) - 0.45))


@pytest.mark.parametrize("tta", [False, True])
def test_organs_run_only_the_windows_near_them_and_match_the_full_pass(tta: bool, phantom, tmp_path: Path) -> None:
    hu, _, affine = phantom
    hu = hu.copy()
    hu = np.minimum(hu, 100)
    hu[:12] = -1000  # air: the body box, where the windows go, starts further in
    # one dense organ at x >= 40 (the windows on the far side can be skipped), so near the dense threshold
    # that how much of it comes out dense depends on which windows are blended
    hu[40:52, 24:40, 12:28] = 175
    path = write_nifti(tmp_path / "ct.nii.gz", hu, affine)
    spec = threshold_spec(["soft tissue", "dense"], tuple(s / 2 for s in SPACING))  # 32³ windows, 127 x 127 x 79 grid
    spec.preprocessing.trained_fast = True

    def segment(**options) -> Segmenter:
        return Segmenter(ContextNet(THRESHOLDS), spec, device="cpu", options=SegmentOptions(tta=tta, **options))

    full = segment().segment(path)
    assert 0 < (full.labels == 2).sum() < 0.98 * 12 * 16 * 16
    only = segment(organs=("Dense",)).segment(path)
    assert set(only.label_info) == {0, 2}
    np.testing.assert_array_equal(only.labels, np.where(full.labels == 2, 2, 0))
    assert [o["name"] for o in only.stats["organs"]] == ["dense"]
    crop = only.info["crop"]
    assert crop["stop"][0] < hu.shape[0]  # the region is not the whole scan
    coarse, fine = only.info["passes"]  # the coarse locating pass, then the fine pass on the region
    assert coarse["spacing"] == list(SPACING)
    assert fine["windows_placed"] == full.info["passes"][0]["windows_placed"]
    assert 0 < fine["windows_run"] < fine["windows_placed"]


def test_nan_voxels_do_not_empty_the_mask(phantom, tmp_path: Path) -> None:
    """A NaN in a window turns all of that window's output NaN (ContextNet mixes the window, as a network does):
    the scan is read with its non-finite voxels at its lowest value, and the report says so."""
    hu, _, affine = phantom
    hu = hu.astype(np.float32)
    filled = hu.copy()
    filled[:6] = hu.min()
    hu[:6] = np.nan
    hu[0, 0, 0] = np.inf
    spec = threshold_spec(["soft tissue", "dense"], SPACING)
    segmenter = Segmenter(ContextNet(THRESHOLDS), spec, device="cpu", options=SegmentOptions())
    result = segmenter.segment(write_nifti(tmp_path / "nan.nii.gz", hu, affine))
    expected = segmenter.segment(write_nifti(tmp_path / "filled.nii.gz", filled, affine)).labels
    assert set(np.unique(expected)) == {0, 1, 2}
    np.testing.assert_array_equal(result.labels, expected)
    write_outputs(result, tmp_path / "out", preview=False)
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert any("NaN or infinite" in w and f"{6 * 64 * 40} voxel(s)" in w for w in report["warnings"]), report


def test_a_scan_that_is_not_in_hu_is_segmented_with_a_warning(phantom, tmp_path: Path) -> None:
    """Stored values without the rescale intercept (air at +24, not -1000) read fine and give wrong masks."""
    hu, _, affine = phantom
    assert not any("Hounsfield" in w for w in _segmenter().segment(write_nifti(tmp_path / "hu.nii.gz", hu,
                                                                              affine)).warnings)
    result = _segmenter().segment(write_nifti(tmp_path / "raw.nii.gz", hu + 1024, affine))
    assert any(w.startswith(f"no voxel below -100 HU (lowest {hu.min() + 1024:g}): the values may not be Hounsfield")
               for w in result.warnings), result.warnings


def test_a_model_box_covers_the_scan_box_it_is_mapped_from() -> None:
    from models.inference.region import box_within, map_box

    scan = np.diag([0.8, 0.8, 2.5, 1.0])
    scan[:3, 3] = (-100.0, 20.0, 5.0)
    model = np.diag([1.5, 1.5, 2.0, 1.0])
    model[:3, 3] = scan[:3, 3] + (0.2, -0.3, 0.1)
    box = (slice(30, 90), slice(0, 41), slice(7, 8))
    mapped = map_box(box, scan, model, (60, 50, 40))
    padded = map_box(box, scan, model, (60, 50, 40), pad=1)
    for axis in range(3):
        ends = np.array([box[axis].start, box[axis].stop - 1])
        index = (ends * scan[axis, axis] + scan[axis, 3] - model[axis, 3]) / model[axis, axis]  # scan centres
        # padded: both model voxels that interpolate at any scan centre of the box are inside
        assert padded[axis].start <= np.floor(index.min()) and np.floor(index.max()) + 1 < padded[axis].stop
        # unpadded: the model voxels whose centres lie within the box's extent (half a scan voxel beyond)
        extent = (ends + np.array([-0.5, 0.5])) * scan[axis, axis] + scan[axis, 3] - model[axis, 3]
        first, last = mapped[axis].start, mapped[axis].stop - 1
        assert extent[0] <= first * model[axis, axis] and last * model[axis, axis] <= extent[1]
        assert first == 0 or (first - 1) * model[axis, axis] < extent[0]
        assert (last + 1) * model[axis, axis] > extent[1]
    # an LPS scan grid (x and y flipped) maps to the same model voxels as its RAS twin
    lps = scan.copy()
    lps[:2, :2] *= -1
    lps[:2, 3] = scan[:2, 3] + 99 * np.diag(scan)[:2]  # 100 voxels per axis: voxel i is the RAS twin's 99 - i
    flipped = (slice(100 - box[0].stop, 100 - box[0].start), slice(100 - box[1].stop, 100 - box[1].start), box[2])
    assert map_box(flipped, lps, model, (60, 50, 40)) == mapped
    assert box_within((slice(5, 30), slice(0, 4), slice(9, 20)), (slice(10, 20), slice(5, 9), slice(0, 40))) == (
        slice(0, 10), slice(0, 0), slice(9, 20))  # fmt: skip


def test_windows_are_kept_by_the_region_in_their_own_frame() -> None:
    from models.inference.predict import WindowTally, touches, window_region, windows_in

    # a mirrored pass (TTA) sees the region mirrored; an axis shorter than the window is padded evenly
    assert window_region((slice(2, 5), slice(0, 10), slice(1, 3)), (10, 10, 20), (8, 8, 32), (2,)) == (
        slice(5, 8), slice(0, 10), slice(7, 9))  # fmt: skip
    assert touches((slice(0, 8), slice(4, 12), slice(0, 8)), (slice(7, 9), slice(0, 5), slice(3, 4)))
    assert not touches((slice(0, 8), slice(4, 12), slice(0, 8)), (slice(8, 9), slice(0, 5), slice(3, 4)))
    tally, seen = WindowTally(), []

    def run(x: torch.Tensor) -> torch.Tensor:
        seen.append(len(x))
        return torch.ones(len(x), 3, *x.shape[2:])

    predictor = windows_in(run, (slice(0, 4), slice(0, 4), slice(0, 4)), 3, tally)
    coords = [[slice(0, 1), slice(None), slice(a, a + 4), slice(0, 4), slice(0, 4)] for a in (0, 4, 2)]
    out = predictor(torch.zeros(3, 1, 4, 4, 4), coords)
    assert seen == [2] and (tally.run, tally.total) == (2, 3)
    assert out[0].eq(1).all() and out[1].eq(0).all() and out[2].eq(1).all()


def test_organs_of_a_model_not_trained_at_the_fast_spacing_are_not_cropped(phantom, tmp_path: Path) -> None:
    """Its locating pass could miss part of an organ and the box would cut it off: one fine pass instead."""
    hu, _, affine = phantom
    path = write_nifti(tmp_path / "ct.nii.gz", hu, affine)
    full = _segmenter().segment(path)
    only = _segmenter(organs=("dense",)).segment(path)
    np.testing.assert_array_equal(only.labels, np.where(full.labels == 2, 2, 0))
    assert len(only.info["passes"]) == 1 and only.info["passes"][0]["input_shape"] == list(hu.shape)
    assert "not trained at the fast spacing" in only.info["crop"]


def test_unknown_organ_is_named() -> None:
    spec = threshold_spec(["liver", "right kidney"], SPACING)
    assert resolve_organs(spec, ("Right_Kidney", "1")) == [1, 2]
    with pytest.raises(ValueError, match=r"'livr'.*liver, right kidney"):
        resolve_organs(spec, ("livr",))
    with pytest.raises(ValueError, match="livr"):
        Segmenter(ThresholdNet(THRESHOLDS), spec, options=SegmentOptions(organs=("livr",)))


@pytest.mark.parametrize("workers", [1, 2, 3, 40])
@pytest.mark.parametrize("order", ["C", "F"])
def test_label_boxes_are_find_objects_in_either_memory_layout(order: str, workers: int) -> None:
    """In slabs too: a box that spans slabs is their union, one in a single slab keeps its own extent."""
    rng = np.random.default_rng(0)
    labels = np.zeros((30, 20, 10), dtype=np.uint8)
    labels[3:17, 5:9, 2:8] = rng.integers(0, 4, (14, 4, 6))
    labels[20, 1, 9] = 6  # label 5 absent, 6 a single voxel
    labels[0, 19, 0] = labels[29, 0, 9] = 7  # label 7 at opposite corners: the first and the last slab
    want = ndimage.find_objects(np.ascontiguousarray(labels))
    got = label_boxes(np.asarray(labels, order=order), workers=workers)
    assert got == want and got[4] is None and got[5] == (slice(20, 21), slice(1, 2), slice(9, 10))
    assert got[6] == (slice(0, 30), slice(0, 20), slice(0, 10))


@pytest.mark.parametrize("workers", [1, 2, 5])
def test_label_boxes_are_find_objects_on_any_view(workers: int) -> None:
    """Flipped, transposed, strided and empty maps: the boxes are ``find_objects``' on the view as given."""
    rng = np.random.default_rng(1)
    for _ in range(60):
        shape = tuple(int(n) for n in rng.integers(1, 9, 3))
        labels = np.zeros(shape, dtype=np.uint8)
        for _ in range(rng.integers(0, 6)):
            labels[tuple(rng.integers(0, n) for n in shape)] = rng.integers(1, 7)
        views = (labels, np.asfortranarray(labels), labels[::-1], labels[:, ::-1, ::-1], labels.T[:, ::-1],
                 np.asfortranarray(labels)[::-1].transpose(2, 0, 1), labels[::2])  # fmt: skip
        for view in views:
            assert label_boxes(view, workers=workers) == ndimage.find_objects(view)
    assert label_boxes(np.zeros((0, 4, 4), dtype=np.uint8)) == []


def test_stats_match_numpy_on_a_known_mask(tmp_path: Path, monkeypatch) -> None:
    rng = np.random.default_rng(0)
    shape, spacing = (30, 26, 20), (0.8, 0.9, 2.5)
    hu_ras = rng.normal(40, 30, size=shape).astype(np.float32)
    labels_ras = np.zeros(shape, dtype=np.uint8)
    labels_ras[3:12, 5:20, 2:9] = 1
    labels_ras[15:28, 1:8, 10:19] = 2
    labels_ras[20, 20, 5] = 2  # a stray voxel widens organ 2's box
    affine = np.diag([*spacing, 1.0])
    affine[:3, 3] = (10.0, -20.0, 5.0)
    data, aff = reoriented(hu_ras, affine, (1, 2, 0), (True, False, True))
    ct = load_ct(write_nifti(tmp_path / "ct.nii.gz", data, aff))
    np.testing.assert_array_equal(ct.array, hu_ras)  # the reader undoes the reorientation
    stats = organ_stats(labels_ras, ct, {1: "a", 2: "b", 3: "absent"})
    assert stats["coordinate_system"] == "RAS"
    src_labels = ct.to_source(labels_ras)
    for organ in stats["organs"][:2]:
        mask = src_labels == organ["id"]
        vals = data[mask].astype(np.float64)
        assert organ["voxels"] == mask.sum()
        assert organ["volume_ml"] == pytest.approx(mask.sum() * np.prod(spacing) / 1000)
        assert organ["hu_mean"] == pytest.approx(vals.mean()) and organ["hu_std"] == pytest.approx(vals.std())
        idx = np.argwhere(mask)
        np.testing.assert_allclose(organ["centroid_voxel"], idx.mean(axis=0), atol=1e-3)
        world = aff[:3, :3] @ idx.mean(axis=0) + aff[:3, 3]
        np.testing.assert_allclose(organ["centroid_mm"], world, atol=1e-3)
        assert organ["bbox_voxel_min"] == idx.min(axis=0).tolist()
        assert organ["bbox_voxel_max"] == idx.max(axis=0).tolist()
    assert stats["organs"][2]["voxels"] == 0 and stats["organs"][2]["hu_mean"] is None
    rows = stats_csv(stats).strip().splitlines()
    assert len(rows) == 4 and rows[0].startswith("id,name,voxels,volume_ml")
    assert organ_stats(labels_ras, ct, {1: "a", 2: "b", 3: "absent"}, workers=3) == stats  # in threads, same order
    import models.inference.stats as stats_module

    monkeypatch.setattr(stats_module, "CHUNK_SLICES", 3)  # several pieces per organ box, shared by two threads
    pieces = organ_stats(labels_ras, ct, {1: "a", 2: "b", 3: "absent"}, workers=2)
    for got, want in zip(pieces["organs"], stats["organs"], strict=True):
        assert got.keys() == want.keys()
        for key, value in want.items():
            assert got[key] == (pytest.approx(value) if isinstance(value, float | list) else value), key


def test_resample_labels_between_grids() -> None:
    coarse = np.arange(4 * 3 * 2, dtype=np.uint8).reshape(4, 3, 2)
    src = np.diag([2.0, 2.0, 2.0, 1.0])
    dst = np.diag([1.0, 1.0, 1.0, 1.0])
    dst[:3, 3] = -0.5  # fine voxel centres at -0.5, 0.5, 1.5 ... -> coarse voxels 0, 0, 1, 1, ...
    fine = resample_labels(coarse, src, (8, 6, 4), dst)
    np.testing.assert_array_equal(fine, coarse.repeat(2, 0).repeat(2, 1).repeat(2, 2))
    # a rotated target grid takes the general path: compare with a direct per-voxel nearest lookup
    dst_rot = np.array([[0.0, -1.5, 0.0, 7.0], [1.5, 0.0, 0.0, -1.0], [0.0, 0.0, 1.0, 0.2], [0.0, 0.0, 0.0, 1.0]])
    dst_rot[:2, :2] = [[0.3, -1.5], [1.5, 0.3]]  # rotated by ~11 degrees: not axis-aligned
    got = resample_labels(coarse, src, (5, 6, 4), dst_rot)
    idx = np.indices((5, 6, 4)).reshape(3, -1)
    src_idx = np.linalg.solve(src, dst_rot)[:3] @ np.vstack([idx, np.ones(idx.shape[1])])
    src_idx = np.clip(np.floor(src_idx + 0.5), 0, np.array(coarse.shape)[:, None] - 1).astype(int)
    np.testing.assert_array_equal(got.ravel(), coarse[tuple(src_idx)])


def test_interpolated_labels_are_the_argmax_of_trilinear_probabilities() -> None:
    """Only boundary cells are interpolated, yet the result is the full interpolation's argmax, voxel for voxel."""
    rng = np.random.default_rng(3)
    logits = ndimage.gaussian_filter(rng.standard_normal((4, 12, 10, 7)), (0, 1.5, 1.5, 1.0)) * 20.0
    probs = torch.softmax(torch.from_numpy(logits).float(), dim=0)
    labels = probs.argmax(dim=0).numpy().astype(np.uint8)
    src = np.diag([3.0, 3.0, 4.0, 1.0])
    src[:3, 3] = (10.0, -4.0, 2.0)
    dst = np.diag([0.9, 1.1, 2.0, 1.0])
    dst[:3, 3] = (8.0, -5.5, 0.5)  # starts before the model grid (border clamped) and ends past it
    shape = (45, 32, 16)

    everywhere = (slice(0, 12), slice(0, 10), slice(0, 7))
    got = resample_labels_interpolated(labels, probs, everywhere, src, shape, dst)

    coords = np.linalg.solve(src, dst)[:3] @ np.vstack([np.indices(shape).reshape(3, -1), np.ones(np.prod(shape))])
    coords = np.clip(coords, 0, np.array(labels.shape)[:, None] - 1)
    full = np.stack([ndimage.map_coordinates(p, coords, order=1) for p in probs.numpy()])
    expected = full.argmax(axis=0).reshape(shape)
    np.testing.assert_array_equal(got, expected)
    assert got.flags.f_contiguous  # the reader's NIfTI layout: statistics and saving walk it in order
    nearest = resample_labels(labels, src, shape, dst)
    assert (nearest != expected).mean() > 0.01  # the test can tell the two apart

    # probabilities known on a box only: outside it every class has probability 0 (MONAI's inverse crop)
    box = (slice(2, 9), slice(1, 10), slice(0, 5))
    boxed = torch.zeros_like(probs)
    boxed[(slice(None), *box)] = probs[(slice(None), *box)]
    boxed_labels = np.where(boxed.sum(0).numpy() > 0, labels, 0).astype(np.uint8)
    full = np.stack([ndimage.map_coordinates(p, coords, order=1) for p in boxed.numpy()])
    got = resample_labels_interpolated(boxed_labels, probs[(slice(None), *box)], box, src, shape, dst)
    np.testing.assert_array_equal(got, full.argmax(axis=0).reshape(shape))


def test_window_batch_from_memory(monkeypatch) -> None:
    import models.inference.memory as memory

    monkeypatch.setattr(memory, "free_memory", lambda device: 64 * 2**30)
    cpu = torch.device("cpu")
    assert choose_batch((96, 96, 96), 48, 14, (300, 300, 200), cpu).sw_batch_size == CPU_MAX_BATCH
    # two window streams take 2 windows each where they fit the CPU window budget, no more where they do not
    assert choose_batch((64, 64, 64), 12, 14, (300, 300, 200), cpu, streams=2).sw_batch_size == 2 * CPU_MAX_BATCH
    assert choose_batch((96, 96, 96), 12, 14, (300, 300, 200), cpu, streams=2).sw_batch_size == CPU_MAX_BATCH
    assert choose_batch((96, 96, 96), 48, 14, (300, 300, 200), cpu, streams=2).sw_batch_size == CPU_MAX_BATCH
    monkeypatch.setattr(memory, "free_memory", lambda device: 4 * 2**30)
    small = choose_batch((96, 96, 96), 48, 14, (300, 300, 200), cpu)
    assert small.sw_batch_size == 1 and small.window_bytes == window_bytes((96, 96, 96), 48)
    assert choose_batch((96, 96, 96), 48, 14, (300, 300, 200), cpu, requested=3).sw_batch_size == 3
    assert choose_batch((96,) * 3, 48, 14, (300, 300, 200), cpu, tta=True).output_bytes == 2 * small.output_bytes
    monkeypatch.setattr(memory, "free_memory", lambda device: 12 * 2**30)  # 2 windows fit, not beside 4 GiB more
    assert choose_batch((96,) * 3, 48, 14, (300, 300, 200), cpu).sw_batch_size == 2
    assert choose_batch((96,) * 3, 48, 14, (300, 300, 200), cpu, reserved=4 * 2**30).sw_batch_size == 1


def test_written_files(phantom, tmp_path: Path) -> None:
    hu, _, affine = phantom
    data, aff = reoriented(hu, affine, *ORIENTATIONS["LPS"])
    path = write_nifti(tmp_path / "scan.nii.gz", data, aff)
    result = _segmenter().segment(path)
    out = tmp_path / "out"
    files = write_outputs(result, out, split=True)
    assert {"segmentation", "labels", "stats_json", "stats_csv", "preview", "report"} <= set(files)
    assert "dicom_seg" not in files  # NIfTI input
    img = nib.load(str(out / "segmentation.nii.gz"))
    legend = json.loads(img.header.extensions[0].get_content())
    assert legend["labels"]["2"]["name"] == "dense"
    assert json.loads((out / "segmentation.json").read_text()) == legend
    assert img.header.get_intent()[0] == "label"
    for organ_id, name in ((1, "soft_tissue"), (2, "dense")):
        mask = nib.load(str(out / "organs" / f"{name}.nii.gz"))
        np.testing.assert_array_equal(np.asarray(mask.dataobj), (result.labels == organ_id).astype(np.uint8))
        np.testing.assert_allclose(mask.affine, aff, atol=1e-5)
    report = json.loads((out / "report.json").read_text())
    assert set(report["timings_s"]) == {"load", "preprocess", "network", "postprocess", "write"}
    assert report["device"] == "cpu" and report["versions"]["monai"] and report["input"]["orientation"] == "LPS"
    assert report["organs_found"] == ["soft tissue", "dense"]
    stats = json.loads((out / "stats.json").read_text())
    assert stats["organs"][1]["voxels"] == int((result.labels == 2).sum())
    assert (out / "preview.png").read_bytes()[:4] == b"\x89PNG"
    # the legend's organs come from the statistics: the same picture as finding them in the map again
    ct = result.ct
    view = result.canonical_labels(copy=False)  # what the writer draws from: no copy, and nothing can write it
    np.testing.assert_array_equal(view, result.canonical_labels())
    assert np.shares_memory(view, result.labels) and not view.flags.writeable and result.labels.flags.writeable
    save_preview(ct.array, result.canonical_labels(), ct.spacing, result.label_info, tmp_path / "again.png",
                 title=f"scan.nii.gz  (LPS {'x'.join(map(str, ct.source.shape))})")  # fmt: skip
    assert (tmp_path / "again.png").read_bytes() == (out / "preview.png").read_bytes()


def test_preview_centre_on_flipped_and_transposed_views() -> None:
    """The preview's centre (mean occupied slice per axis) is the same whatever strides the map is viewed with."""

    def occupied_mean(labels: np.ndarray) -> np.ndarray:
        centre = np.array([(s - 1) / 2 for s in labels.shape])
        for axis in range(3):
            occupied = np.flatnonzero(labels.any(axis=tuple(a for a in range(3) if a != axis)))
            if occupied.size == 0:
                return np.array([(s - 1) / 2 for s in labels.shape])
            centre[axis] = occupied.mean()
        return centre

    rng = np.random.default_rng(0)
    for n_voxels in (0, 1, 3, 8):
        labels = np.zeros((7, 9, 5), dtype=np.uint8)
        for _ in range(n_voxels):
            labels[tuple(rng.integers(0, s) for s in labels.shape)] = rng.integers(1, 5)
        views = (labels, labels[::-1], labels[:, ::-1, ::-1], np.asfortranarray(labels)[::-1].transpose(2, 0, 1),
                 labels.T[:, ::-1])  # fmt: skip
        for view in views:
            np.testing.assert_array_equal(_centre(view), occupied_mean(view))


def test_preview_is_radiological_with_the_organ_colour_blended(tmp_path: Path) -> None:
    """An organ at the patient's right, anterior and superior shows top-left in all three planes."""
    from PIL import Image


    hu = np.full((40, 30, 20), 40.0, dtype=np.float32)  # the window's level: mid grey
    labels = np.zeros(hu.shape, dtype=np.uint8)
    labels[30:, 20:, 14:] = 1  # RAS: high i = right, high j = anterior, high k = superior
    for name, img, lab, *_ in _planes(hu, labels, np.array([35, 25, 17])):
        rows, cols = np.nonzero(lab)
        assert img.shape == lab.shape
        assert rows.max() < lab.shape[0] / 2 and cols.max() < lab.shape[1] / 2, name
    info = {0: LabelInfo(name="background"), 1: LabelInfo(name="liver", color=(255, 0, 0))}
    path = save_preview(hu, labels, (1.0, 2.0, 3.0), info, tmp_path / "p.png", title="t", present={1})
    rgb = np.asarray(Image.open(path).convert("RGB")).astype(int)
    blended = np.round(128 * (1 - 0.45) + np.array([255, 0, 0]) * 0.45)  # grey 127.5 under 45 % red
    hit = np.all(np.abs(rgb - blended) <= 2, axis=-1)
    assert hit.sum() > 100  # three panels' worth of organ (plus the legend's swatch is pure red, not blended)
    grey = np.all(np.abs(rgb - 128) <= 1, axis=-1)
    assert grey.sum() > 10 * hit.sum()  # the rest of the slices: the window's level


def test_device_errors_are_named() -> None:
    from models.inference.segmenter import resolve_device

    assert resolve_device("cpu").type == "cpu"
    with pytest.raises(ValueError, match="unsupported device 'tpu'"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA device"):
            resolve_device("cuda")


class EverythingIsOrganNet(torch.nn.Module):
    """Says "organ" wherever it runs: the mask shows exactly which voxels the network was run on."""

    def __init__(self) -> None:
        super().__init__()
        self.dummy = torch.nn.Parameter(torch.zeros(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([torch.zeros_like(x), torch.ones_like(x)], dim=1)


def test_network_runs_on_the_body_box_only(tmp_path: Path) -> None:
    hu = np.full((40, 44, 30), -1000, dtype=np.int16)
    hu[10:25, 12:30, 5:20] = 40  # the body: everything else is air, below the HU window
    hu[11, 13, 6] = -1000  # a hole inside the body is still inside its box
    path = write_nifti(tmp_path / "ct.nii.gz", hu, np.diag([*SPACING, 1.0]))
    seg = Segmenter(EverythingIsOrganNet(), threshold_spec(["organ"], SPACING), device="cpu",
                    options=SegmentOptions(overlap=0.0))  # fmt: skip
    result = seg.segment(path)
    expected = np.zeros(hu.shape, dtype=np.uint8)
    expected[10:25, 12:30, 5:20] = 1
    np.testing.assert_array_equal(result.labels, expected)
    assert result.info["passes"][0]["body_box"] == [[10, 25], [12, 30], [5, 20]]


def test_body_box_of_an_all_air_scan_is_the_whole_grid() -> None:
    from monai.data import MetaTensor

    from models.inference.preprocess import body_box

    assert body_box(MetaTensor(torch.zeros(1, 5, 6, 7))) == (slice(0, 5), slice(0, 6), slice(0, 7))


class WindowMeanNet(torch.nn.Module):
    """Organ everywhere in a window whose mean input is above 0.5: what it sees depends on the padding."""

    def __init__(self) -> None:
        super().__init__()
        self.dummy = torch.nn.Parameter(torch.zeros(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = x.mean(dim=(2, 3, 4), keepdim=True).expand_as(x)
        return torch.cat([0.5 - mean, mean - 0.5], dim=1)


def test_a_scan_thinner_than_the_window_is_padded_with_its_own_edge_slices() -> None:
    from models.inference.predict import predict_labels

    thin = torch.ones(1, 64, 64, 8)  # 8 slices of "anatomy" in a 64-slice window
    labels = predict_labels(
        WindowMeanNet(), thin, (64, 64, 64), device=torch.device("cpu"), sw_batch_size=1, overlap=0.0,
        fast_path=False,
    )  # fmt: skip
    # blank (air) padding would make the window's mean 1/8 and the answer background everywhere
    assert labels.shape == (64, 64, 8) and bool((labels == 1).all())
