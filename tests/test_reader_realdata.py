"""Real CT (TotalSegmentator reference files): DICOM JPEG 2000 series and int32 NIfTI with model masks.

Label ids: TotalSegmentator v2 task 'total' (totalsegmentator/map_to_binary.py): 5 = liver.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest

from models.io.info import describe
from models.io.reader import CTImage, load_ct, load_label, save_nifti

pytestmark = pytest.mark.realdata
LIVER = 5


@pytest.fixture(scope="module")
def dicom_ct(ct_sample_dir: Path) -> CTImage:
    return load_ct(ct_sample_dir / "example_ct_dicom")


def test_label_ids_from_package(ct_sample_dir: Path) -> None:
    labels = json.loads((ct_sample_dir / "labels_total.json").read_text())
    assert labels[str(LIVER)] == "liver" and labels["1"] == "spleen"


def test_dicom_jpeg2000_series_geometry_and_hu(dicom_ct: CTImage) -> None:
    ct = dicom_ct
    assert ct.array.shape == (512, 512, 20)
    assert ct.spacing == pytest.approx((0.9766, 0.9766, 2.0), abs=1e-3)
    assert ct.source.axcodes == "LPS" and ct.orientation == "RAS"
    assert ct.meta["transfer_syntax"] == pydicom.uid.JPEG2000Lossless
    assert -1025 <= ct.array.min() <= -1000 and 1800 <= ct.array.max() <= 1850
    assert len(ct.meta["sop_instance_uids"]) == 20 and ct.meta["modality"] == "CT"
    assert ct.meta["frame_of_reference_uid"]
    d = describe(ct)
    assert d["series"]["n"] == 20 and d["hu"]["p1"] == pytest.approx(-1024, abs=1)


def test_dicom_segmentation_lines_up_voxel_for_voxel(dicom_ct: CTImage, ct_sample_dir: Path) -> None:
    seg = load_label(ct_sample_dir / "example_seg_dicom.nii.gz", like=dicom_ct)
    liver = seg == LIVER
    assert liver.sum() > 100_000
    assert 60 <= float(dicom_ct.array[liver].mean()) <= 120
    # misaligned by a flip, the same mask falls on air and fat: proves the alignment test has teeth
    assert float(dicom_ct.array[liver[:, ::-1]].mean()) < 0


def test_dicom_roundtrip_to_source_overlays_stored_slices(dicom_ct: CTImage, ct_sample_dir: Path,
                                                          tmp_path: Path) -> None:
    seg = load_label(ct_sample_dir / "example_seg_dicom.nii.gz", like=dicom_ct)
    out = tmp_path / "seg_source.nii.gz"
    save_nifti(dicom_ct.to_source(seg), dicom_ct.source.affine, out, dtype=np.uint8)
    written = nib.load(str(out))
    src = np.asarray(written.dataobj)
    by_uid = {}
    for f in (ct_sample_dir / "example_ct_dicom").iterdir():
        ds = pydicom.dcmread(f)
        by_uid[str(ds.SOPInstanceUID or ds.file_meta.MediaStorageSOPInstanceUID)] = ds  # anonymised: blank
    assert len(by_uid) == 20
    for k, uid in enumerate(dicom_ct.meta["sop_instance_uids"]):
        ds = by_uid[uid]
        hu = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
        mask = src[:, :, k].T == LIVER  # source axes (column, row): transpose to the slice's (row, column)
        if mask.any():
            assert 40 <= hu[mask].mean() <= 140
        # the written voxel (col, row, k) sits where DICOM puts pixel (row, col) of this slice
        ipp = np.asarray(ds.ImagePositionPatient, float)
        iop = np.asarray(ds.ImageOrientationPatient, float)
        ps = np.asarray(ds.PixelSpacing, float)
        r, c = 100, 300
        lps = ipp + iop[:3] * ps[1] * c + iop[3:] * ps[0] * r
        ras = written.affine @ np.array([c, r, k, 1.0])
        np.testing.assert_allclose(ras[:3], lps * [-1, -1, 1], atol=1e-3)


def test_dicom_from_zip_equals_folder(dicom_ct: CTImage, ct_sample_dir: Path, tmp_path: Path) -> None:
    zpath = tmp_path / "series.zip"
    with zipfile.ZipFile(zpath, "w") as zf:
        for f in sorted((ct_sample_dir / "example_ct_dicom").iterdir())[:5]:
            zf.write(f, f"dicom/{f.name}")
    part = load_ct(zpath)
    assert part.array.shape == (512, 512, 5)
    world0 = part.affine @ np.array([0, 0, 0, 1.0])
    idx = np.round(np.linalg.solve(dicom_ct.affine, world0)[:3]).astype(int)
    np.testing.assert_array_equal(part.array, dicom_ct.array[:, :, idx[2]:idx[2] + 5])


def test_int32_nifti_and_its_mask(ct_sample_dir: Path) -> None:
    ct = load_ct(ct_sample_dir / "example_ct.nii.gz")
    assert ct.meta["dtype"] == "int32"
    assert ct.array.shape == (122, 101, 112) and ct.spacing == pytest.approx((3.0, 3.0, 3.0))
    assert -1300 < ct.array.min() < -1000 and ct.array.max() > 1000
    seg = load_label(ct_sample_dir / "example_seg_fast_force_split.nii.gz", like=ct)
    liver = seg == LIVER
    assert liver.sum() > 10_000
    assert 30 <= float(ct.array[liver].mean()) <= 120  # measured ~44 HU (unenhanced-looking liver)
    sm = load_ct(ct_sample_dir / "example_ct_sm.nii.gz")
    roi = load_label(ct_sample_dir / "example_seg_roi_subset.nii.gz", like=sm)
    assert 30 <= float(sm.array[roi == LIVER].mean()) <= 120
