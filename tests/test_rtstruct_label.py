"""RTSTRUCT files as label maps: ROIs matched by name (TG-263 too), the rest left out, contours placed by position.

The structure sets are written by `asa segment`'s own writer (whose contours tests/test_rtstruct.py checks against
the slices' DICOM geometry) and then edited the ways real ones differ: other names, extra ROIs, open contours,
overlaps, contours between slices or beyond the scan.
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path

import numpy as np
import pydicom
import pytest
from segment_helpers import ThresholdNet, threshold_spec

from models.data.datasets import Case
from models.data.labels import match_labels, organ_key
from models.finetune.config import build_finetune_config
from models.finetune.data import cached_pair
from models.inference import SegmentationResult, Segmenter, write_outputs
from models.io.reader import CTReadError, load_ct, load_label, save_nifti
from models.io.rtstruct_label import fill_even_odd

THRESHOLDS = (0.5, 150.5)


def test_organ_names_match_across_conventions() -> None:
    assert organ_key("Kidney_R") == organ_key("right kidney") == organ_key("kidney right") == organ_key("RIGHT-KIDNEY")
    assert organ_key("A_Aorta") == organ_key("aorta") and organ_key("Glnd_Adrenal_L") == organ_key("left adrenal gland")
    assert organ_key("Kidney_L") != organ_key("right kidney")
    names = {0: "background", 1: "liver", 2: "right kidney"}
    assert match_labels({7: ["BODY"], 8: ["Segment_1", "Kidney R"], 9: ["Liver"]}, names) == {7: None, 8: 2, 9: 1}


def test_fill_even_odd_keeps_to_the_grid() -> None:
    square = np.array([[-3.5, -3.5], [-3.5, 2.5], [2.5, 2.5], [2.5, -3.5]])  # half off the grid
    expected = np.zeros((6, 5), bool)
    expected[:3, :3] = True
    np.testing.assert_array_equal(fill_even_odd([square], (6, 5)), expected)
    assert not fill_even_odd([square - 20], (6, 5)).any()


def test_scanline_fill_matches_point_in_polygon_on_random_polygons() -> None:
    """Star-shaped polygons with random radii (concave, any edge direction), nested and crossing the grid's
    edge: the scanline fill gives what matplotlib's point-in-polygon test gives, contour by contour, XORed."""
    from matplotlib.path import Path as Polygon

    rng = np.random.default_rng(0)
    shape = (40, 33)
    centres = np.stack(np.meshgrid(np.arange(shape[0]), np.arange(shape[1]), indexing="ij"), -1).reshape(-1, 2)
    for _ in range(30):
        contours = []
        for _ in range(int(rng.integers(1, 4))):
            n = int(rng.integers(3, 40))
            angles = np.sort(rng.uniform(0, 2 * np.pi, n))
            radii = rng.uniform(2, 18, n)
            centre = rng.uniform(-5, 45, 2)
            contours.append(centre + np.column_stack([radii * np.cos(angles), radii * np.sin(angles)]))
        expected = np.zeros(len(centres), bool)
        for points in contours:
            expected ^= Polygon(points).contains_points(centres)
        np.testing.assert_array_equal(fill_even_odd(contours, shape), expected.reshape(shape))


@pytest.fixture
def structure_set(dicom_series, tmp_path: Path) -> tuple[SegmentationResult, Path]:
    """A segmentation of a shuffled series and its RTSTRUCT, ROIs named in TG-263 style ('Kidney_R')."""
    series = dicom_series("ct", n=8, rows=32, cols=24)
    spec = threshold_spec(["Liver", "Kidney_R"], load_ct(series.folder).spacing)
    result = Segmenter(ThresholdNet(THRESHOLDS), spec, device="cpu").segment(series.folder)
    files = write_outputs(result, tmp_path / "out", rtstruct=True, preview=False)
    return result, files["rtstruct"]


def _edit(path: Path, out: Path, change) -> Path:
    ds = pydicom.dcmread(path)
    change(ds)
    ds.save_as(out)
    return out


def _add_body(ds: pydicom.Dataset) -> None:
    """A BODY ROI (number 9) with the liver's contours: what every planning structure set has beside organs."""
    roi = copy.deepcopy(ds.StructureSetROISequence[0])
    roi.ROINumber, roi.ROIName = 9, "BODY"
    ds.StructureSetROISequence.append(roi)
    contours = copy.deepcopy(ds.ROIContourSequence[0])
    contours.ReferencedROINumber = 9
    ds.ROIContourSequence.append(contours)


def test_tg263_names_match_and_other_rois_are_left_out(structure_set, tmp_path: Path, caplog) -> None:
    result, path = structure_set
    canonical = result.canonical_labels()
    body = _edit(path, tmp_path / "body.dcm", _add_body)
    with caplog.at_level(logging.WARNING):
        got = load_label(body, like=result.ct, names={1: "right kidney", 2: "spleen", 3: "liver"})
    np.testing.assert_array_equal(got, np.array([0, 3, 1], np.int16)[canonical])
    assert "left out: BODY" in caplog.text

    with pytest.raises(CTReadError, match=r"no ROI names a label \(ROIs: BODY, Kidney_R, Liver; labels: 1 spleen\)"):
        load_label(body, like=result.ct, names={1: "spleen"})
    with pytest.raises(CTReadError, match="no label names are known"):
        load_label(body, like=result.ct)


def test_open_contours_are_left_out_and_overlaps_keep_the_higher_id(structure_set, tmp_path: Path, caplog) -> None:
    result, path = structure_set
    canonical = result.canonical_labels()
    names = result.organ_names

    def open_liver(ds: pydicom.Dataset) -> None:
        for contour in ds.ROIContourSequence[0].ContourSequence:
            contour.ContourGeometricType = "OPEN_PLANAR"

    got = load_label(_edit(path, tmp_path / "open.dcm", open_liver), like=result.ct, names=names)
    np.testing.assert_array_equal(got, np.where(canonical == 2, 2, 0))

    def kidney_over_liver(ds: pydicom.Dataset) -> None:
        ds.ROIContourSequence[1].ContourSequence.extend(copy.deepcopy(ds.ROIContourSequence[0].ContourSequence))

    with caplog.at_level(logging.WARNING):
        got = load_label(_edit(path, tmp_path / "overlap.dcm", kidney_over_liver), like=result.ct, names=names)
    np.testing.assert_array_equal(got, np.where(canonical > 0, 2, 0))
    assert f"overlap in {int((canonical == 1).sum())} voxels" in caplog.text


def _shift(mm: float):
    def change(ds: pydicom.Dataset) -> None:
        for contour in ds.ROIContourSequence[0].ContourSequence:
            points = np.asarray(contour.ContourData, float).reshape(-1, 3)
            points[:, 2] += mm
            contour.ContourData = [f"{v:.3f}" for v in points.ravel()]

    return change


def test_contours_between_slices_or_beyond_the_scan_are_refused(structure_set, tmp_path: Path) -> None:
    result, path = structure_set
    step = result.ct.spacing[2]  # axial series: contours move along the slice axis
    with pytest.raises(CTReadError, match=r"ROI 'Liver', contour \d+ does not lie on a slice of the scan's grid"):
        load_label(_edit(path, tmp_path / "half.dcm", _shift(step / 2)), like=result.ct, names=result.organ_names)
    with pytest.raises(CTReadError, match=r"ROI 'Liver', contour \d+ lies on slice \d+ of axis 2, outside the scan"):
        load_label(_edit(path, tmp_path / "far.dcm", _shift(20 * step)), like=result.ct, names=result.organ_names)

    def no_data(ds: pydicom.Dataset) -> None:
        del ds.ROIContourSequence[1].ContourSequence[0].ContourData

    with pytest.raises(CTReadError, match=r"ROI 'Kidney_R', contour 1: no ContourData"):
        load_label(_edit(path, tmp_path / "nodata.dcm", no_data), like=result.ct, names=result.organ_names)


def test_finetune_cache_reads_an_rtstruct_label_like_its_nifti(structure_set, tmp_path: Path) -> None:
    result, path = structure_set
    folder = Path(result.ct.meta["files"][0]).parent
    body = _edit(path, tmp_path / "body.dcm", _add_body)  # with a BODY to leave out, as real ones have
    save_nifti(result.labels, result.affine, tmp_path / "label.nii.gz")
    cfg = build_finetune_config("cpu-demo", overrides=["data.spacing=[2,2,3]"], pretrained="none").data
    names = {1: "liver", 2: "right kidney"}
    from_rt = cached_pair(Case("ct", folder, body), cfg, None, 3, tmp_path / "cache", names)
    from_nifti = cached_pair(Case("ct", folder, tmp_path / "label.nii.gz"), cfg, None, 3, tmp_path / "cache", names)
    rt_label = np.load(from_rt[1])
    assert rt_label.max() == 2
    np.testing.assert_array_equal(rt_label, np.load(from_nifti[1]))
