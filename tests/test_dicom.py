"""DICOM series reading: ordering, geometry, rescale, compression, series choice and every failure path."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import pydicom
import pytest
from conftest import write_enhanced_ct
from pydicom.uid import JPEG2000Lossless, RLELossless

from models.io.reader import CTReadError, load_ct


def _assert_matches(ct, s) -> None:
    """Loaded image == synthetic truth, both in source space and in world coordinates."""
    np.testing.assert_allclose(ct.source.affine, s.affine, atol=1e-4)
    np.testing.assert_array_equal(ct.to_source(ct.array), s.hu)
    assert ct.meta["sop_instance_uids"] == s.sop_uids
    assert ct.source.slice_order == tuple(s.sop_uids)
    assert ct.orientation == "RAS"


def test_order_by_position_not_name_or_instance_number(dicom_series) -> None:
    s = dicom_series(shuffle_names=True, reverse_instance_numbers=True)
    ct = load_ct(s.folder)
    _assert_matches(ct, s)
    assert ct.array.dtype == np.float32
    assert ct.spacing == pytest.approx((0.7, 0.8, 2.5), abs=1e-5)
    assert ct.meta["format"] == "dicom"
    assert ct.meta["series_uid"] == s.series_uid
    assert ct.meta["modality"] == "CT"
    assert ct.meta["window_center"] == 40.0 and ct.meta["window_width"] == 400.0
    assert ct.warnings == []


def test_descending_stack_and_oblique_orientation(dicom_series) -> None:
    c, s_ = np.cos(np.radians(20)), np.sin(np.radians(20))
    iop = (c, s_, 0.0, 0.0, 0.0, -1.0)  # coronal-ish, rotated 20 degrees: LPS row dir (c, s, 0), col dir -S
    s = dicom_series(iop=iop, step=3.0)
    ct = load_ct(s.folder)
    _assert_matches(ct, s)
    assert ct.spacing == pytest.approx((0.7, 3.0, 0.8), abs=1e-4)  # canonical axes permuted vs source


def test_marker_world_position_preserved(dicom_series) -> None:
    s = dicom_series(n=6)
    truth = np.zeros_like(s.hu)
    truth[3, 20, 4] = 1
    world = s.affine @ np.array([3, 20, 4, 1.0])
    ct = load_ct(s.folder)
    marker = np.zeros(ct.array.shape, np.uint8)
    idx = np.round(np.linalg.solve(ct.affine, world)[:3]).astype(int)
    marker[tuple(idx)] = 1
    np.testing.assert_allclose(ct.affine @ np.r_[idx, 1.0], world, atol=1e-4)
    assert ct.array[tuple(idx)] == s.hu[3, 20, 4]
    np.testing.assert_array_equal(ct.to_source(marker), truth)


def test_rescale_applied_per_slice(dicom_series) -> None:
    s = dicom_series(n=4, slopes=[1, 2, 0.5, 1], intercepts=[-1024, -1000, 0, 10])
    ct = load_ct(s.folder)
    np.testing.assert_allclose(ct.to_source(ct.array), s.hu, atol=1e-3)


@pytest.mark.parametrize("syntax", [RLELossless, JPEG2000Lossless], ids=["rle", "jpeg2000"])
def test_compressed_transfer_syntaxes(dicom_series, syntax) -> None:
    s = dicom_series(n=3, rows=64, cols=64)  # openjpeg needs >= 2**5 pixels per side at default levels
    for ds, path in zip(s.datasets, s.files, strict=True):
        ds.compress(syntax)  # also gives a new SOPInstanceUID (lossless, but a new instance)
        ds.save_as(path, enforce_file_format=True)
        assert pydicom.dcmread(path).file_meta.TransferSyntaxUID == syntax
    s.sop_uids = [str(ds.SOPInstanceUID) for ds in s.datasets]
    ct = load_ct(s.folder)
    _assert_matches(ct, s)
    assert ct.meta["transfer_syntax"] == str(syntax)


def test_zip_list_and_nested_folder_inputs(dicom_series, tmp_path: Path) -> None:
    s = dicom_series(name="nested/deeper/series")
    for src in (tmp_path / "nested", s.files[::-1]):
        _assert_matches(load_ct(src), s)
    zpath = tmp_path / "series.zip"
    with zipfile.ZipFile(zpath, "w") as zf:
        for f in s.files:
            zf.write(f, f"sub/{f.name}")
    ct = load_ct(zpath)
    _assert_matches(ct, s)
    assert ct.meta["path"] == str(zpath)


def test_single_file_is_a_one_slice_volume_with_warning(dicom_series) -> None:
    s = dicom_series(n=3)
    ct = load_ct(s.files[0])
    assert ct.array.shape == (24, 32, 1)
    assert any("single-slice" in w for w in ct.warnings)


def test_several_ct_series_pick_largest_warn_and_select(dicom_series, tmp_path: Path) -> None:
    big = dicom_series(name="study/a", n=8, description="big")
    small = dicom_series(name="study/b", n=5, description="small")
    ct = load_ct(tmp_path / "study")
    assert ct.meta["series_uid"] == big.series_uid
    assert any(small.series_uid in w and "CT series" in w for w in ct.warnings)
    assert {s["uid"] for s in ct.meta["series"]} == {big.series_uid, small.series_uid}
    assert ct.meta["other_series"] == [{"uid": small.series_uid, "modality": "CT", "description": "small", "n": 5}]
    chosen = load_ct(tmp_path / "study", series_uid=small.series_uid)
    _assert_matches(chosen, small)
    with pytest.raises(CTReadError, match=r"series 1\.2\.3 not found"):
        load_ct(tmp_path / "study", series_uid="1.2.3")


def test_ct_chosen_next_to_other_modality(dicom_series, tmp_path: Path) -> None:
    ct_s = dicom_series(name="mixed/ct", n=4)
    dicom_series(name="mixed/mr", n=6, modality="MR")
    ct = load_ct(tmp_path / "mixed")
    assert ct.meta["series_uid"] == ct_s.series_uid
    assert [o["modality"] for o in ct.meta["other_series"]] == ["MR"]


def test_stray_non_dicom_file_in_folder_is_skipped_with_warning(dicom_series) -> None:
    s = dicom_series(n=3)
    (s.folder / "README.txt").write_text("not an image")
    ct = load_ct(s.folder)
    assert any("README.txt" in w for w in ct.warnings)


def test_uneven_spacing_warns_with_min_max(dicom_series) -> None:
    z = np.array([0, 2.0, 4.0, 6.2, 8.2, 10.0])
    s = dicom_series(n=6, positions=np.c_[np.zeros(6), np.zeros(6), z])
    ct = load_ct(s.folder)
    assert any("uneven slice spacing" in w and "1.800" in w and "2.200" in w for w in ct.warnings)


# ----------------------------------------------------------------------------------------- failures


def test_missing_slice_is_an_error_naming_where(dicom_series) -> None:
    s = dicom_series(n=8)
    s.files[4].unlink()
    with pytest.raises(CTReadError, match="missing slice") as exc:
        load_ct(s.folder)
    assert s.files[3].name in str(exc.value) and s.files[5].name in str(exc.value)


def test_duplicate_positions_error(dicom_series) -> None:
    pos = np.c_[np.zeros(5), np.zeros(5), [0, 2, 2, 4, 6.0]]
    s = dicom_series(n=5, positions=pos)
    with pytest.raises(CTReadError, match="duplicate slice position") as exc:
        load_ct(s.folder)
    assert s.files[1].name in str(exc.value)


def test_gantry_tilted_series_keeps_its_sheared_grid_with_a_warning(dicom_series) -> None:
    """Every voxel of the volume lies where its DICOM slice puts it: the affine's slice axis leans with the tilt."""
    tilt = np.radians(15)
    z = np.arange(6) * 2.0
    pos = np.c_[np.zeros(6), z * np.tan(tilt), z][::-1]  # origins slide along y as z grows; files in any order
    s = dicom_series(n=6, positions=pos, rows=10, cols=12, pixel_spacing=(0.8, 0.7))
    ct = load_ct(s.folder)
    assert any("gantry tilt of 15.00 degrees" in w for w in ct.warnings)
    np.testing.assert_allclose(ct.to_source(ct.array), s.hu[:, :, ::-1], atol=1e-3)  # slices bottom to top
    lps_to_ras = np.diag([-1.0, -1.0, 1.0])
    for k in range(6):
        for i, j in ((0, 0), (11, 0), (3, 9)):
            dicom = pos[::-1][k] + i * 0.7 * np.array([1.0, 0, 0]) + j * 0.8 * np.array([0, 1.0, 0])
            np.testing.assert_allclose((ct.source.affine @ [i, j, k, 1.0])[:3], lps_to_ras @ dicom, atol=1e-6)


def test_slice_origins_off_one_line_or_leaning_too_far_are_refused(dicom_series) -> None:
    z = np.arange(6) * 2.0
    wobble = np.c_[np.zeros(6), [0, 0.5, 0.5, 1.5, 1.5, 2.0], z]
    s = dicom_series("wobble", n=6, positions=wobble)
    with pytest.raises(CTReadError, match=r"drift sideways but not along one line") as exc:
        load_ct(s.folder)
    assert "IM" in str(exc.value)
    steep = np.c_[np.zeros(6), z * np.tan(np.radians(50)), z]
    s = dicom_series("steep", n=6, positions=steep)
    with pytest.raises(CTReadError, match=r"lean 50\.00 degrees"):
        load_ct(s.folder)


def test_mixed_image_sizes_error(dicom_series) -> None:
    s = dicom_series(n=4, rows=32, cols=32)
    odd = build_one_off(s, rows=16)
    with pytest.raises(CTReadError, match="mixed image sizes") as exc:
        load_ct(s.folder)
    assert odd.name in str(exc.value)


def build_one_off(s, rows: int) -> Path:
    """Rewrite the last slice with a different matrix size."""
    ds = s.datasets[-1]
    ds.Rows = rows
    ds.PixelData = np.zeros((rows, int(ds.Columns)), "<i2").tobytes()
    ds.save_as(s.files[-1], enforce_file_format=True)
    return s.files[-1]


def test_mixed_orientation_error(dicom_series) -> None:
    s = dicom_series(n=4)
    s.datasets[0].ImageOrientationPatient = [0, 1, 0, 0, 0, -1]
    s.datasets[0].save_as(s.files[0], enforce_file_format=True)
    with pytest.raises(CTReadError, match="mixed orientations"):
        load_ct(s.folder)


def test_a_scout_filed_in_the_series_is_skipped_with_a_warning(dicom_series, tmp_path: Path) -> None:
    """A localizer (another orientation and size) in the axial series: dropped, not a 'mixed' refusal."""
    s = dicom_series(n=5)
    expected = load_ct(s.folder).array
    scout = s.datasets[0].copy()
    scout.ImageType = ["ORIGINAL", "PRIMARY", "LOCALIZER"]
    scout.ImageOrientationPatient = [1, 0, 0, 0, 0, -1]
    scout.Rows, scout.SOPInstanceUID = 20, pydicom.uid.generate_uid()
    scout.PixelData = np.zeros((20, int(scout.Columns)), "<i2").tobytes()
    scout.save_as(s.folder / "scout.dcm", enforce_file_format=True)
    ct = load_ct(s.folder)
    np.testing.assert_array_equal(ct.array, expected)
    assert any("skipped 1 localizer (scout) image(s), e.g." in w and "scout.dcm" in w for w in ct.warnings)
    assert len(ct.meta["files"]) == 5
    with pytest.raises(CTReadError, match="holds only localizer"):
        load_ct([s.folder / "scout.dcm"])


def test_lone_non_ct_series_error_names_modality(dicom_series) -> None:
    s = dicom_series(n=3, modality="MR")
    with pytest.raises(CTReadError, match="modality MR, not CT"):
        load_ct(s.folder)


def test_no_pixel_data_error_names_file(dicom_series) -> None:
    s = dicom_series(n=4)
    del s.datasets[2].PixelData
    s.datasets[2].save_as(s.files[2], enforce_file_format=True)
    with pytest.raises(CTReadError, match="no pixel data") as exc:
        load_ct(s.folder)
    assert s.files[2].name in str(exc.value)


def test_missing_geometry_tag_error(dicom_series) -> None:
    s = dicom_series(n=3)
    del s.datasets[1].ImagePositionPatient
    s.datasets[1].save_as(s.files[1], enforce_file_format=True)
    with pytest.raises(CTReadError, match="lacks ImagePositionPatient") as exc:
        load_ct(s.folder)
    assert s.files[1].name in str(exc.value)


def test_not_dicom_file_and_folder(tmp_path: Path) -> None:
    junk = tmp_path / "notes.bin"
    junk.write_bytes(b"hello, this is not a scan" * 20)
    with pytest.raises(CTReadError, match="not a DICOM file") as exc:
        load_ct(junk)
    assert "notes.bin" in str(exc.value)
    folder = tmp_path / "docs"
    folder.mkdir()
    (folder / "a.txt").write_text("text")
    with pytest.raises(CTReadError, match="no DICOM files found"):
        load_ct(folder)


def test_empty_inputs(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(CTReadError, match="empty folder"):
        load_ct(tmp_path / "empty")
    with pytest.raises(CTReadError, match="no such file"):
        load_ct(tmp_path / "nope.nii.gz")
    with pytest.raises(CTReadError, match="empty list"):
        load_ct([])
    zpath = tmp_path / "empty.zip"
    zipfile.ZipFile(zpath, "w").close()
    with pytest.raises(CTReadError, match="empty zip"):
        load_ct(zpath)


def test_corrupt_file_error_names_it(dicom_series) -> None:
    s = dicom_series(n=4)
    data = s.files[1].read_bytes()
    s.files[1].write_bytes(data[:400])  # header cut mid-element
    with pytest.raises(CTReadError, match="corrupt") as exc:
        load_ct(s.folder)
    assert s.files[1].name in str(exc.value)


def test_truncated_pixel_data_error_names_file(dicom_series) -> None:
    s = dicom_series(n=4)
    data = s.files[2].read_bytes()
    s.files[2].write_bytes(data[:-500])
    with pytest.raises(CTReadError) as exc:
        load_ct(s.folder)
    assert s.files[2].name in str(exc.value)


def test_enhanced_multiframe_image_reads_as_its_classic_series(dicom_series, tmp_path: Path) -> None:
    """Frames stored in any order, rescale per frame: the same volume, affine and HU as the classic series."""
    s = dicom_series(n=6, slopes=[1, 2, 0.5, 1, 1, 1], intercepts=[-1024, -1000, 0, 10, -1024, -1024],
                     iop=(0, 1, 0, 0, 0, -1))
    order = [3, 0, 5, 1, 4, 2]
    image = write_enhanced_ct(s.datasets, tmp_path / "enhanced" / "ct.dcm", order)
    assert "PixelValueTransformationSequence" in image.PerFrameFunctionalGroupsSequence[0]  # per-frame rescale
    classic, enhanced = load_ct(s.folder), load_ct(tmp_path / "enhanced" / "ct.dcm")
    np.testing.assert_array_equal(enhanced.array, classic.array)
    np.testing.assert_allclose(enhanced.source.affine, classic.source.affine, atol=1e-6)
    np.testing.assert_allclose(enhanced.to_source(enhanced.array), s.hu, atol=1e-3)
    assert enhanced.warnings == []
    # the volume's slices, in order along the slice normal, are these frames of the file
    normal = np.cross([0, 1, 0], [0, 0, -1])
    along = [float(np.dot(item.PlanePositionSequence[0].ImagePositionPatient, normal))
             for item in image.PerFrameFunctionalGroupsSequence]
    assert enhanced.meta["frames"] == list(np.argsort(along) + 1) != sorted(enhanced.meta["frames"])
    assert load_ct(tmp_path / "enhanced").meta["frames"] == enhanced.meta["frames"]  # a folder holding it
    image.compress(RLELossless)  # compressed frames (encapsulated, one fragment each) decode the same
    image.save_as(tmp_path / "rle.dcm")
    np.testing.assert_array_equal(load_ct(tmp_path / "rle.dcm").array, classic.array)


def test_multiframe_file_that_does_not_describe_its_frames_is_refused(dicom_series, tmp_path: Path) -> None:
    s = dicom_series(n=3)
    image = write_enhanced_ct(s.datasets, tmp_path / "a.dcm")
    del image.PerFrameFunctionalGroupsSequence
    image.save_as(tmp_path / "a.dcm")
    with pytest.raises(CTReadError, match=r"a\.dcm has 3 frames and none per-frame functional groups"):
        load_ct(tmp_path / "a.dcm")
    image = write_enhanced_ct(s.datasets, tmp_path / "b.dcm")
    del image.PerFrameFunctionalGroupsSequence[1].PlanePositionSequence
    image.save_as(tmp_path / "b.dcm")
    with pytest.raises(CTReadError, match=r"b\.dcm \(frame 2\) .* lacks ImagePositionPatient"):
        load_ct(tmp_path / "b.dcm")
