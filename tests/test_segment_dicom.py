"""DICOM input: the NIfTI mask follows the series' slice order and the DICOM-SEG lies on the same voxels.

Synthetic series (tests/conftest.py) have shuffled file names and reversed InstanceNumbers, so only
ordering by position along the slice normal gives the expected masks; the real TotalSegmentator series
(JPEG 2000, blank study/series UIDs) is checked slice by slice against pydicom's own pixels.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import highdicom as hd
import nibabel as nib
import numpy as np
import pydicom
import pytest
from conftest import write_enhanced_ct
from segment_helpers import ThresholdNet, dice, threshold_labels, threshold_spec

from models.inference import SegmentationResult, Segmenter, SegmentOptions, write_outputs
from models.io.reader import load_ct, load_label

THRESHOLDS = (0.5, 150.5)


def _segmenter(spacing, roi: int = 32, **options) -> Segmenter:
    spec = threshold_spec(["soft tissue", "dense"], spacing, roi=roi)
    return Segmenter(ThresholdNet(THRESHOLDS), spec, device="cpu", options=SegmentOptions(**options))


def _seg_by_source(path: Path, sop_uids: list[str]) -> dict[str, np.ndarray]:
    """Read a DICOM-SEG back: organ name -> (n slices, rows, columns) mask, in ``sop_uids`` order."""
    seg = hd.seg.segread(path)
    numbers = seg.get_segment_numbers()
    pixels = seg.get_pixels_by_source_instance(
        source_sop_instance_uids=sop_uids, segment_numbers=numbers, combine_segments=True, relabel=False,
        assert_missing_frames_are_empty=True,
    )
    return {seg.get_segment_description(n).segment_label: pixels == n for n in numbers}


def _seg_by_frame(path: Path, sop_uid: str, frames: list[int]) -> dict[str, np.ndarray]:
    """A DICOM-SEG on a multi-frame source, read back: organ name -> mask of each of its ``frames``, in order."""
    seg = hd.seg.segread(path)
    numbers = seg.get_segment_numbers()
    pixels = seg.get_pixels_by_source_frame(
        source_sop_instance_uid=sop_uid, source_frame_numbers=frames, segment_numbers=numbers,
        combine_segments=True, relabel=False, assert_missing_frames_are_empty=True,
    )
    return {seg.get_segment_description(n).segment_label: pixels == n for n in numbers}


def _check_seg_matches_nifti(result: SegmentationResult, out: Path) -> None:
    nifti = np.asarray(nib.load(str(out / "segmentation.nii.gz")).dataobj)
    meta = result.ct.meta
    if "frames" in meta:  # an enhanced image: one source instance, referenced frame by frame
        masks = _seg_by_frame(out / "segmentation.dcm", meta["sop_instance_uids"][0], meta["frames"])
    else:
        masks = _seg_by_source(out / "segmentation.dcm", meta["sop_instance_uids"])
    assert set(masks) == {o["name"] for o in result.stats["organs"] if o["voxels"]}
    for organ_id, name in result.organ_names.items():
        expected = (nifti == organ_id).transpose(2, 1, 0)  # (column, row, slice) -> frames (slice, row, column)
        np.testing.assert_array_equal(masks[name], expected)
    # and our own reader, which finetuning and evaluation use, puts the SEG back on the scan's voxels
    as_label = load_label(out / "segmentation.dcm", like=result.ct, names=result.organ_names)
    np.testing.assert_array_equal(as_label, result.canonical_labels())
    _check_measurements(result, out)


def _check_measurements(result: SegmentationResult, out: Path) -> None:
    """measurements.dcm: one TID 1500 group per organ found, on its SEG segment, with stats.json's figures."""
    seg = pydicom.dcmread(out / "segmentation.dcm", stop_before_pixels=True)
    labels = {s.SegmentNumber: s.SegmentLabel for s in seg.SegmentSequence}
    sr = hd.sr.srread(out / "measurements.dcm")
    assert sr.StudyInstanceUID == seg.StudyInstanceUID and sr.PatientID == seg.PatientID
    groups = sr.content.get_volumetric_roi_measurement_groups()
    stats = {o["name"]: o for o in json.loads((out / "stats.json").read_text())["organs"] if o["voxels"]}
    assert sorted(g.tracking_identifier for g in groups) == sorted(stats)
    for group in groups:
        organ = stats[group.tracking_identifier]
        ref = group.referenced_segment
        assert ref.referenced_sop_instance_uid == seg.SOPInstanceUID
        assert [labels[n] for n in ref.referenced_segment_numbers] == [organ["name"]]
        figures = {(m.name.meaning, m.derivation.meaning if m.derivation else None): (m.value, m.unit.value)
                   for m in group.get_measurements()}  # fmt: skip
        assert figures[("Volume", None)] == (pytest.approx(organ["volume_ml"], rel=1e-9), "mL")
        assert figures[("Attenuation Coefficient", "Mean")] == (pytest.approx(organ["hu_mean"], rel=1e-9), "[hnsf'U]")
        assert figures[("Attenuation Coefficient", "Standard Deviation")][0] == pytest.approx(organ["hu_std"], rel=1e-9)


@pytest.mark.parametrize(
    "iop", [(1, 0, 0, 0, 1, 0), (0, 1, 0, 0, 0, -1)], ids=["axial", "sagittal"]
)
def test_dicom_masks_follow_the_slice_order(dicom_series, tmp_path: Path, iop) -> None:
    series = dicom_series("ct", n=8, rows=32, cols=24, iop=iop)
    ct = load_ct(series.folder)
    result = _segmenter(ct.spacing).segment(ct)  # the scan's own spacing: the answer is exact
    np.testing.assert_array_equal(result.labels, threshold_labels(series.hu, THRESHOLDS))
    out = tmp_path / "out"
    files = write_outputs(result, out, preview=False)
    img = nib.load(str(files["segmentation"]))
    assert img.shape == series.hu.shape
    np.testing.assert_allclose(img.affine, series.affine, atol=1e-4)
    ds = pydicom.dcmread(files["dicom_seg"])
    assert ds.Modality == "SEG" and ds.StudyInstanceUID == series.datasets[0].StudyInstanceUID
    assert ds.ReferencedSeriesSequence[0].SeriesInstanceUID == series.series_uid
    assert ds.FrameOfReferenceUID == series.datasets[0].FrameOfReferenceUID
    _check_seg_matches_nifti(result, out)
    stats = json.loads((out / "stats.json").read_text())
    assert stats["coordinate_system"] == "LPS"
    assert not [w for w in result.warnings if "DICOM-SEG" in w]


def test_enhanced_image_masks_and_dicom_seg_follow_its_frames(dicom_series, tmp_path: Path) -> None:
    """Frames stored out of order: the mask is in the volume's order, the SEG references each frame it lies on."""
    series = dicom_series("ct", n=7, rows=32, cols=24)
    path = tmp_path / "enhanced.dcm"
    image = write_enhanced_ct(series.datasets, path, frame_order=[4, 0, 6, 2, 1, 5, 3])
    result = _segmenter(load_ct(path).spacing).segment(path)
    np.testing.assert_array_equal(result.labels, threshold_labels(series.hu, THRESHOLDS))
    files = write_outputs(result, tmp_path / "out", preview=False)
    ds = pydicom.dcmread(files["dicom_seg"])
    assert ds.ReferencedSeriesSequence[0].SeriesInstanceUID == image.SeriesInstanceUID
    assert result.ct.meta["sop_instance_uids"] == [image.SOPInstanceUID] * 7
    _check_seg_matches_nifti(result, tmp_path / "out")
    assert not [w for w in result.warnings if "DICOM-SEG" in w]


def test_gantry_tilted_series_masks_lie_on_the_source_slices(dicom_series, tmp_path: Path) -> None:
    """A ball scanned with a 20 degree tilt: the mask of each stored slice covers the ball where that slice cut it.

    Where they cut the ball, the slices' origins have drifted about 15 mm sideways, so a mask placed as if the
    stack were orthogonal misses much of it; the model sees the scan resampled to an orthogonal grid, and its
    labels come back through the sheared affine.
    """
    n, rows, cols, spacing, step, tilt = 24, 48, 48, 2.0, 2.5, np.radians(20)
    z = np.arange(n) * step
    positions = np.c_[np.full(n, -48.0), -48.0 + z * np.tan(tilt), z - 30.0]  # LPS; origins slide along y
    series = dicom_series("tilt", n=n, rows=rows, cols=cols, pixel_spacing=(spacing, spacing), positions=positions)
    centre, radius = np.array([5.0, 10.0, 10.0]), 15.0
    i, j = np.meshgrid(np.arange(cols) * spacing, np.arange(rows) * spacing, indexing="ij")  # (column, row)

    def ball(origin_y_drift: bool) -> np.ndarray:
        out = np.zeros((cols, rows, n), dtype=bool)
        for k in range(n):
            origin = positions[k] if origin_y_drift else np.r_[positions[k][0], -48.0, positions[k][2]]
            out[:, :, k] = ((origin[0] + i - centre[0]) ** 2 + (origin[1] + j - centre[1]) ** 2
                            + (origin[2] - centre[2]) ** 2) < radius**2
        return out

    truth = ball(True)
    for k, (ds, path) in enumerate(zip(series.datasets, series.files, strict=True)):
        ds.PixelData = (truth[:, :, k].T * 200 + 1024).astype("<i2").tobytes()  # 200 HU in the ball, 0 outside
        ds.save_as(path, enforce_file_format=True)
    result = _segmenter((spacing, spacing, step)).segment(series.folder)
    assert any("gantry tilt of 20.00 degrees" in w for w in result.warnings)
    found = result.labels == 2
    assert dice(found, truth) > 0.9 and dice(found, ball(False)) < 0.6
    out = tmp_path / "out"
    write_outputs(result, out, preview=False)
    np.testing.assert_allclose(nib.load(str(out / "segmentation.nii.gz")).affine, result.affine, atol=1e-4)
    _check_seg_matches_nifti(result, out)


def test_dicom_zip_and_organs_and_no_dicom_seg(dicom_series, tmp_path: Path) -> None:
    series = dicom_series("ct", n=6, rows=20, cols=28)
    archive = tmp_path / "series.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for f in series.files:
            zf.write(f, f"study/{f.name}")
    ct = load_ct(archive)
    result = _segmenter(ct.spacing, organs=("dense",)).segment(archive)
    np.testing.assert_array_equal(result.labels, np.where(threshold_labels(series.hu, THRESHOLDS) == 2, 2, 0))
    out = tmp_path / "out"
    write_outputs(result, out, preview=False)
    masks = _seg_by_source(out / "segmentation.dcm", result.ct.meta["sop_instance_uids"])
    assert set(masks) == {"dense"}
    _check_seg_matches_nifti(result, out)
    files = write_outputs(result, tmp_path / "out2", dicom_seg=False, preview=False)
    assert "dicom_seg" not in files and not (tmp_path / "out2" / "segmentation.dcm").exists()
    assert "dicom_sr" not in files  # the measurement report references the SEG: none without it


@pytest.mark.realdata
@pytest.mark.slow
def test_real_dicom_series_masks_and_dicom_seg(ct_sample_dir: Path, tmp_path: Path) -> None:
    """512 x 512 x 20 JPEG 2000 series: the mask of each stored slice is that slice's pixels thresholded."""
    folder = ct_sample_dir / "example_ct_dicom"
    ct = load_ct(folder)
    result = _segmenter(ct.spacing, roi=64, overlap=0.25).segment(ct)
    out = tmp_path / "out"
    write_outputs(result, out)
    nifti = np.asarray(nib.load(str(out / "segmentation.nii.gz")).dataobj)
    assert nifti.shape == (512, 512, 20)
    by_uid = {}
    for f in folder.iterdir():
        ds = pydicom.dcmread(f)
        by_uid[str(ds.SOPInstanceUID or ds.file_meta.MediaStorageSOPInstanceUID)] = ds
    for k, uid in enumerate(ct.meta["sop_instance_uids"]):
        ds = by_uid[uid]
        hu = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
        np.testing.assert_array_equal(nifti[:, :, k].T, threshold_labels(hu, THRESHOLDS))
    assert any("substitute UIDs" in w for w in result.warnings)  # the sample's study/series UIDs are blank
    _check_seg_matches_nifti(result, out)
    assert (out / "preview.png").stat().st_size > 10_000

    # the same series as one enhanced (multi-frame) image, frames reversed: the same mask, a SEG on its frames
    datasets = [pydicom.dcmread(f) for f in sorted(folder.iterdir())]
    study, series_uid = hd.UID(), hd.UID()
    for ds in datasets:  # the sample is anonymised (blank UIDs) and JPEG 2000: what the conversion cannot take
        ds.decompress()
        ds.SOPClassUID = pydicom.uid.CTImageStorage
        ds.SOPInstanceUID = ds.SOPInstanceUID or hd.UID()
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series_uid
    write_enhanced_ct(datasets, tmp_path / "enhanced.dcm", frame_order=range(len(datasets) - 1, -1, -1))
    enhanced = _segmenter(ct.spacing, roi=64, overlap=0.25).segment(tmp_path / "enhanced.dcm")
    np.testing.assert_array_equal(enhanced.ct.array, ct.array)
    write_outputs(enhanced, tmp_path / "enhanced_out", preview=False)
    np.testing.assert_array_equal(np.asarray(nib.load(str(tmp_path / "enhanced_out" / "segmentation.nii.gz")).dataobj),
                                  nifti)
    _check_seg_matches_nifti(enhanced, tmp_path / "enhanced_out")


def test_dicom_file_list_input(dicom_series, tmp_path: Path) -> None:
    from models.inference.commands import resolve_input

    series = dicom_series("ct", n=5, rows=16, cols=12)
    listing = tmp_path / "files.txt"
    listing.write_text("\n".join(f"ct/{f.name}" for f in reversed(series.files)) + "\n")
    files = resolve_input(f"@{listing}")
    assert sorted(files) == sorted(series.files)
    ct = load_ct(series.folder)
    result = _segmenter(ct.spacing).segment(files)
    np.testing.assert_array_equal(result.labels, threshold_labels(series.hu, THRESHOLDS))
    assert result.ct.meta["sop_instance_uids"] == series.sop_uids


def test_a_failed_measurement_report_costs_nothing_else(dicom_series, tmp_path: Path, monkeypatch) -> None:
    import models.inference.dicom_sr as dicom_sr

    def broken(*args, **kwargs):
        raise RuntimeError("invalid content item")

    series = dicom_series("ct", n=6, rows=20, cols=28)
    result = _segmenter(load_ct(series.folder).spacing).segment(series.folder)
    assert "dicom_sr" in write_outputs(result, tmp_path / "out", preview=False)
    monkeypatch.setattr(dicom_sr, "write_measurement_report", broken)
    files = write_outputs(result, tmp_path / "out", preview=False)  # the same folder again: the old SR must go
    assert {"segmentation", "dicom_seg", "stats_json", "report"} <= set(files) and "dicom_sr" not in files
    assert not (tmp_path / "out" / "measurements.dcm").exists()
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert "measurement report (DICOM SR) not written: RuntimeError: invalid content item" in report["warnings"]


def test_a_compressed_dicom_seg_lies_on_the_same_voxels(dicom_series, tmp_path: Path) -> None:
    """JPEG 2000 frames (``--compress-dicom-seg``), read back: the same masks as the NIfTI (sizes: bench/)."""
    series = dicom_series("ct", n=12, rows=48, cols=40, iop=(0, 1, 0, 0, 0, -1))
    result = _segmenter(load_ct(series.folder).spacing).segment(series.folder)
    files = write_outputs(result, tmp_path / "out", preview=False, compress_dicom_seg=True)
    ds = pydicom.dcmread(files["dicom_seg"], stop_before_pixels=True)
    assert ds.file_meta.TransferSyntaxUID == pydicom.uid.JPEG2000Lossless
    _check_seg_matches_nifti(result, tmp_path / "out")
