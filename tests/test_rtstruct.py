"""RTSTRUCT output: filled back, the contours give exactly the mask of every source slice they reference.

The check knows nothing of our affines: it maps each contour point into the pixel grid of the slice the contour
references, from that slice's own DICOM header (position, orientation, spacing), and fills the contours with
matplotlib's point-in-polygon test, a contour inside another being a hole (even-odd, as planning systems read
them). Series are synthetic (shuffled files, reversed instance numbers, sagittal, tilted, enhanced) and real.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pydicom
import pytest
from conftest import build_dicom_series, write_enhanced_ct
from matplotlib.path import Path as Polygon
from pydicom.dataset import Dataset
from segment_helpers import ThresholdNet, threshold_labels, threshold_spec

from models.inference import Segmenter, SegmentOptions, write_outputs
from models.inference.rtstruct import slice_contours
from models.io.reader import load_ct, load_label

THRESHOLDS = (0.5, 150.5)


def fill(contours: list[np.ndarray], shape: tuple[int, int]) -> np.ndarray:
    """Pixel centres inside an odd number of contours (points in (axis 0, axis 1) pixel coordinates)."""
    inside = np.zeros(shape, bool)
    for points in contours:  # only the centres in the contour's bounding box can be inside it
        lo = np.maximum(np.floor(points.min(0)).astype(int), 0)
        hi = np.minimum(np.ceil(points.max(0)).astype(int) + 1, shape)
        grid = np.stack(np.meshgrid(np.arange(lo[0], hi[0]), np.arange(lo[1], hi[1]), indexing="ij"), -1)
        inside[lo[0] : hi[0], lo[1] : hi[1]] ^= Polygon(points).contains_points(grid.reshape(-1, 2)).reshape(
            grid.shape[:2]
        )
    return inside


# -- contours of one slice ------------------------------------------------------------------------
def test_contours_of_shapes_with_holes_edges_and_corners_fill_back_exactly() -> None:
    ring = np.zeros((12, 12), bool)
    ring[2:10, 2:10] = True
    ring[4:7, 5:8] = False  # a hole
    ring[5, 6] = True  # an island in the hole
    edge = np.zeros((8, 9), bool)
    edge[:3, 4:] = True  # touching two image borders
    diagonal = np.zeros((6, 6), bool)
    diagonal[1, 1] = diagonal[2, 2] = diagonal[3, 4] = True  # pixels touching at a corner only
    for mask in (ring, edge, diagonal):
        np.testing.assert_array_equal(fill(slice_contours(mask), mask.shape), mask)
    assert len(slice_contours(ring)) == 3
    assert slice_contours(np.zeros((5, 5), bool)) == []


def test_contours_of_random_blobs_fill_back_exactly_with_few_points() -> None:
    from scipy import ndimage

    rng = np.random.default_rng(0)
    for _ in range(20):
        mask = ndimage.gaussian_filter(rng.random((48, 40)), 2.0) > 0.5
        contours = slice_contours(mask)
        np.testing.assert_array_equal(fill(contours, mask.shape), mask)
    square = np.zeros((30, 30), bool)
    square[5:25, 5:25] = True
    assert [len(c) for c in slice_contours(square)] == [8]  # the corners cut at 45 degrees, nothing in between


# -- whole structure sets ---------------------------------------------------------------------------
def _segment(source: Path | str, spacing, roi: int = 32):
    spec = threshold_spec(["soft tissue", "dense"], spacing, roi=roi)
    return Segmenter(ThresholdNet(THRESHOLDS), spec, device="cpu", options=SegmentOptions(overlap=0.25)).segment(source)


def _plane(header: Dataset) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """A slice's origin, row and column directions (LPS) and (row, column) spacing, from its own header."""
    iop = np.asarray(header.ImageOrientationPatient, float)
    return (np.asarray(header.ImagePositionPatient, float), iop[:3], iop[3:],
            np.asarray(header.PixelSpacing, float))  # fmt: skip


def filled_rois(path: Path, planes: dict[tuple[str, int | None], Dataset]) -> dict[str, dict]:
    """ROI name -> {(SOP instance UID, frame): filled (row, column) mask}, from the contours alone.

    ``planes`` gives the header (position, orientation, spacing, rows, columns) of every referenced image (frame).
    """
    ds = pydicom.dcmread(path)
    names = {r.ROINumber: r.ROIName for r in ds.StructureSetROISequence}
    out: dict[str, dict] = {}
    for roi in ds.ROIContourSequence:
        by_image: dict[tuple[str, int | None], list[np.ndarray]] = {}
        for contour in roi.ContourSequence:
            assert contour.ContourGeometricType == "CLOSED_PLANAR"
            ref = contour.ContourImageSequence[0]
            key = (str(ref.ReferencedSOPInstanceUID), ref.get("ReferencedFrameNumber"))
            origin, along_row, along_col, (dr, dc) = _plane(planes[key])
            points = np.asarray(contour.ContourData, float).reshape(-1, 3) - origin
            assert len(points) == contour.NumberOfContourPoints
            np.testing.assert_allclose(points @ np.cross(along_row, along_col), 0, atol=0.01)  # on the slice
            by_image.setdefault(key, []).append(np.column_stack([points @ along_col / dr, points @ along_row / dc]))
        out[names[roi.ReferencedROINumber]] = {
            key: fill(contours, (int(planes[key].Rows), int(planes[key].Columns))) for key, contours in by_image.items()
        }
    return out


def _check_against_slices(path: Path, planes: dict, expected: dict[tuple[str, int | None], np.ndarray]) -> None:
    """Every ROI, filled, is the expected (row, column) labels of every slice; slices it skips have none of it."""
    rois = filled_rois(path, planes)
    assert set(rois) == {"soft tissue", "dense"}
    for organ_id, name in ((1, "soft tissue"), (2, "dense")):
        for key, labels in expected.items():
            got = rois[name].get(key, np.zeros(labels.shape, bool))
            np.testing.assert_array_equal(got, labels == organ_id, err_msg=f"{name} on {key}")


@pytest.mark.parametrize("iop", [(1, 0, 0, 0, 1, 0), (0, 1, 0, 0, 0, -1)], ids=["axial", "sagittal"])
def test_rtstruct_contours_fill_back_to_every_slice_mask(dicom_series, tmp_path: Path, iop) -> None:
    series = dicom_series("ct", n=8, rows=32, cols=24, iop=iop)
    result = _segment(series.folder, load_ct(series.folder).spacing)
    files = write_outputs(result, tmp_path / "out", rtstruct=True, preview=False)
    ds = pydicom.dcmread(files["rtstruct"])
    first = series.datasets[0]
    assert ds.Modality == "RTSTRUCT" and ds.ApprovalStatus == "UNAPPROVED"
    assert ds.StudyInstanceUID == first.StudyInstanceUID and ds.PatientID == first.PatientID
    frame = ds.ReferencedFrameOfReferenceSequence[0]
    assert frame.FrameOfReferenceUID == first.FrameOfReferenceUID
    series_ref = frame.RTReferencedStudySequence[0].RTReferencedSeriesSequence[0]
    assert series_ref.SeriesInstanceUID == series.series_uid
    assert {i.ReferencedSOPInstanceUID for i in series_ref.ContourImageSequence} == set(series.sop_uids)
    assert [list(r.ROIDisplayColor) for r in ds.ROIContourSequence] == [
        list(result.label_info[i].color) for i in (1, 2)
    ]
    labels = threshold_labels(series.hu, THRESHOLDS)  # (column, row, slice k = series.sop_uids[k])
    planes = {(uid, None): d for uid, d in zip(series.sop_uids, series.datasets, strict=True)}
    expected = {(uid, None): labels[:, :, k].T for k, uid in enumerate(series.sop_uids)}
    _check_against_slices(files["rtstruct"], planes, expected)
    assert not [w for w in result.warnings if "RTSTRUCT" in w]
    _reads_back(result, files["rtstruct"])


def _reads_back(result, path: Path) -> None:
    """Our own label reader (finetuning, evaluation) fills the structure set back onto the scan's voxels."""
    np.testing.assert_array_equal(load_label(path, like=result.ct, names=result.organ_names),
                                  result.canonical_labels())  # fmt: skip


def test_rtstruct_of_a_tilted_series_lies_on_its_slices(tmp_path: Path) -> None:
    """Gantry tilt 15 degrees: each slice's origin drifts along the table, the contours with it."""
    n, step, tilt = 8, 3.0, np.radians(15)
    positions = np.array([[-12.0, 30.0 + k * step * np.tan(tilt), -100.0 + k * step] for k in range(n)])
    series = build_dicom_series(tmp_path / "ct", n=n, rows=32, cols=24, positions=positions)
    result = _segment(series.folder, (0.7, 0.8, 3.0))
    files = write_outputs(result, tmp_path / "out", rtstruct=True, preview=False)
    planes = {(uid, None): d for uid, d in zip(series.sop_uids, series.datasets, strict=True)}
    expected = {(uid, None): result.labels[:, :, k].T for k, uid in enumerate(series.sop_uids)}
    _check_against_slices(files["rtstruct"], planes, expected)
    _reads_back(result, files["rtstruct"])


def test_rtstruct_of_an_enhanced_image_references_its_frames(dicom_series, tmp_path: Path) -> None:
    series = dicom_series("ct", n=6, rows=32, cols=24)
    image = write_enhanced_ct(series.datasets, tmp_path / "enhanced.dcm", frame_order=[3, 0, 5, 1, 4, 2])
    result = _segment(tmp_path / "enhanced.dcm", load_ct(tmp_path / "enhanced.dcm").spacing)
    files = write_outputs(result, tmp_path / "out", rtstruct=True, preview=False)
    from models.io.dicom import frame_headers

    headers = frame_headers("enhanced", image)
    uid = str(image.SOPInstanceUID)
    planes = {(uid, f + 1): h for f, h in enumerate(headers)}
    labels = threshold_labels(series.hu, THRESHOLDS)
    expected = {(uid, frame): labels[:, :, k].T for k, frame in enumerate(result.ct.meta["frames"])}
    _check_against_slices(files["rtstruct"], planes, expected)
    _reads_back(result, files["rtstruct"])


def test_no_rtstruct_for_nifti_input_or_without_organs(dicom_series, tmp_path: Path) -> None:
    series = dicom_series("ct", n=4, rows=16, cols=16)
    ct = load_ct(series.folder)
    result = _segment(series.folder, ct.spacing)
    result.labels[:] = 0
    result.stats["organs"] = [{**o, "voxels": 0} for o in result.stats["organs"]]
    files = write_outputs(result, tmp_path / "none", rtstruct=True, preview=False)
    assert "rtstruct" not in files and any("no RTSTRUCT written" in w for w in result.warnings)

    write_outputs(_segment(series.folder, ct.spacing), tmp_path / "dcm", preview=False)
    assert not (tmp_path / "dcm" / "rtstruct.dcm").exists()  # only when asked

    from models.io.reader import save_nifti

    save_nifti(ct.array, ct.affine, tmp_path / "ct.nii.gz")
    nifti = _segment(tmp_path / "ct.nii.gz", ct.spacing)
    files = write_outputs(nifti, tmp_path / "nii", rtstruct=True, preview=False)
    assert "rtstruct" not in files and "segmentation" in files
    report = json.loads((tmp_path / "nii" / "report.json").read_text())
    assert any("no RTSTRUCT" in w and "not DICOM" in w for w in report["warnings"])


@pytest.mark.realdata
@pytest.mark.slow
def test_real_series_rtstruct_fills_back_to_the_nifti_mask(ct_sample_dir: Path, tmp_path: Path) -> None:
    """The real 512 x 512 x 20 JPEG 2000 series (blank UIDs): every slice's contours give its mask exactly."""
    folder = ct_sample_dir / "example_ct_dicom"
    ct = load_ct(folder)
    result = _segment(ct, ct.spacing, roi=64)
    files = write_outputs(result, tmp_path / "out", rtstruct=True, preview=False)
    headers = {}
    for f in folder.iterdir():
        ds = pydicom.dcmread(f, stop_before_pixels=True)
        headers[str(ds.SOPInstanceUID or ds.file_meta.MediaStorageSOPInstanceUID)] = ds
    planes = {(uid, None): headers[uid] for uid in ct.meta["sop_instance_uids"]}
    expected = {(uid, None): result.labels[:, :, k].T for k, uid in enumerate(ct.meta["sop_instance_uids"])}
    _check_against_slices(files["rtstruct"], planes, expected)
    _reads_back(result, files["rtstruct"])
    assert any("RTSTRUCT references substitute UIDs" in w for w in result.warnings)
    assert files["rtstruct"].stat().st_size < 20e6
