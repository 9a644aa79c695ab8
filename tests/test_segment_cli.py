"""``asa segment``: a real model directory (SwinUNETR, feature size 12), errors, several inputs at once."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from segment_helpers import reoriented, small_phantom, swin_model_dir, write_nifti
from typer.testing import CliRunner

from models.cli import app
from models.inference import Segmenter
from models.inference.commands import SCAN_FILE_SUFFIXES
from models.inference.segmenter import ModelDirError
from models.io.reader import ITK_SUFFIXES, NIFTI_SUFFIXES

runner = CliRunner()
SPACING = (5.4, 5.4, 6.0)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return swin_model_dir(tmp_path_factory.mktemp("model"), names=("liver", "spleen", "right kidney"), roi=64,
                          spacing=SPACING)


def _run(*args: str):
    return runner.invoke(app, ["segment", *map(str, args)])


def test_missing_model_dir_exits_2(tmp_path: Path) -> None:
    scan = write_nifti(tmp_path / "ct.nii.gz", np.zeros((8, 8, 8), np.int16), np.eye(4))
    res = _run(scan, "--model", tmp_path / "nope", "--out", tmp_path / "out")
    assert res.exit_code == 2 and "model directory not found" in res.output and "nope" in res.output
    assert not (tmp_path / "out").exists()


def test_invalid_model_dirs_exit_2(tmp_path: Path, model_dir: Path) -> None:
    scan = write_nifti(tmp_path / "ct.nii.gz", np.zeros((8, 8, 8), np.int16), np.eye(4))
    empty = tmp_path / "empty"
    empty.mkdir()
    res = _run(scan, "--model", empty, "--out", tmp_path / "out")
    assert res.exit_code == 2 and "not a model directory" in res.output
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "model.json").write_text('{"labels": {"1": {"name": "liver"}}}')
    res = _run(scan, "--model", bad, "--out", tmp_path / "out")
    assert res.exit_code == 2 and "invalid model description" in res.output and "background" in res.output
    (bad / "model.json").write_text((model_dir / "model.json").read_text())
    res = _run(scan, "--model", bad, "--out", tmp_path / "out")
    assert res.exit_code == 2 and "model.pt is missing" in res.output
    (bad / "model.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ModelDirError, match="cannot load the weights"):
        Segmenter.from_model_dir(bad)


def test_unknown_organ_and_bad_options_exit_2(tmp_path: Path, model_dir: Path) -> None:
    scan = write_nifti(tmp_path / "ct.nii.gz", np.zeros((8, 8, 8), np.int16), np.eye(4))
    res = _run(scan, "--model", model_dir, "--out", tmp_path / "out", "--organs", "liver,pancreas")
    assert res.exit_code == 2 and "'pancreas'" in res.output and "liver, spleen, right kidney" in res.output
    res = _run(scan, "--model", model_dir, "--out", tmp_path / "out", "--overlap", "1.5")
    assert res.exit_code == 2 and "overlap" in res.output
    (tmp_path / "taken").write_text("a file the user keeps")
    res = _run(scan, "--model", model_dir, "--out", tmp_path / "taken")
    assert res.exit_code == 2 and "--out" in res.output and "is a file" in res.output
    assert (tmp_path / "taken").read_text() == "a file the user keeps"


@pytest.mark.slow
def test_several_inputs_one_bad_keeps_the_others(tmp_path: Path, model_dir: Path, dicom_series) -> None:
    hu, _, affine = small_phantom()
    ras = write_nifti(tmp_path / "a.nii.gz", hu, affine)
    lps_data, lps_aff = reoriented(hu, affine, (0, 1, 2), (True, True, False))
    lps = write_nifti(tmp_path / "b.nii.gz", lps_data, lps_aff)
    broken = tmp_path / "broken.nii.gz"
    broken.write_bytes(b"\x1f\x8b garbage")
    series = dicom_series("dcm", n=12, rows=40, cols=36, pixel_spacing=(5.0, 5.0), step=6.0)
    out = tmp_path / "out"
    res = _run(ras, broken, lps, series.folder, "--model", model_dir, "--out", out, "--split", "--fp32",
               "--organs", "liver,spleen", "--rtstruct", "--compress-dicom-seg")
    assert res.exit_code == 2, res.output
    assert "broken.nii.gz" in res.output and "1 of 4 input(s) failed" in res.output
    summary = json.loads((out / "summary.json").read_text())
    assert [s["status"] for s in summary] == ["ok", "error", "ok", "ok"]
    a = nib.load(str(out / "a" / "segmentation.nii.gz"))
    b = nib.load(str(out / "b" / "segmentation.nii.gz"))
    assert b.shape == lps_data.shape
    np.testing.assert_allclose(b.affine, lps_aff, atol=1e-5)
    # the same physical scan stored two ways gets the same mask on the same physical voxels
    np.testing.assert_array_equal(np.asarray(b.dataobj), np.asarray(a.dataobj)[::-1, ::-1])
    assert set(np.unique(np.asarray(a.dataobj))) <= {0, 1, 2}
    for name in ("a", "b", "dcm"):
        files = {p.name for p in (out / name).iterdir()}
        assert {"segmentation.nii.gz", "segmentation.json", "stats.json", "stats.csv", "preview.png",
                "report.json", "organs"} <= files
        assert sorted(p.name for p in (out / name / "organs").iterdir()) == ["liver.nii.gz", "spleen.nii.gz"]
        report = json.loads((out / name / "report.json").read_text())
        assert report["options"]["organs"] == ["liver", "spleen"] and report["options"]["fast_path"] is False
        assert report["model"]["source"] == str(model_dir.resolve())
        # read ahead (models.io.read_ahead): "load" is the wait, read_s the whole read
        assert 0 <= report["timings_s"]["load"] <= report["read_s"] + 0.01
    assert (out / "dcm" / "segmentation.dcm").exists() and not (out / "a" / "segmentation.dcm").exists()
    syntax = pydicom.dcmread(out / "dcm" / "segmentation.dcm", stop_before_pixels=True).file_meta.TransferSyntaxUID
    assert syntax == pydicom.uid.JPEG2000Lossless  # --compress-dicom-seg
    # --rtstruct: contours for the DICOM input (the seeded random model finds organs there), a warning for NIfTI
    assert json.loads((out / "dcm" / "report.json").read_text())["organs_found"]
    assert (out / "dcm" / "rtstruct.dcm").exists()
    assert any("no RTSTRUCT" in w for w in json.loads((out / "a" / "report.json").read_text())["warnings"])
    dcm = nib.load(str(out / "dcm" / "segmentation.nii.gz"))
    assert dcm.shape == series.hu.shape
    np.testing.assert_allclose(dcm.affine, series.affine, atol=1e-4)


def test_a_folder_of_scans_is_its_scans(tmp_path: Path, model_dir: Path) -> None:
    """``asa segment scans/`` segments each NIfTI/NRRD/MetaImage file in it (not its subfolders)."""
    hu, _, affine = small_phantom()
    scans = tmp_path / "scans"
    scans.mkdir()
    write_nifti(scans / "b.nii.gz", hu, affine)
    write_nifti(scans / "a.nii", *reoriented(hu, affine, (0, 1, 2), (True, False, False)))  # the same scan, LAS
    (scans / "notes.txt").write_text("not a scan")
    (scans / "older").mkdir()
    write_nifti(scans / "older" / "c.nii.gz", hu, affine)
    out = tmp_path / "out"
    res = _run(scans, "--model", model_dir, "--out", out, "--no-preview")
    assert res.exit_code == 0, res.output
    assert [s["input"] for s in json.loads((out / "summary.json").read_text())] == [
        str(scans / "a.nii"), str(scans / "b.nii.gz")]
    a = np.asarray(nib.load(str(out / "a" / "segmentation.nii.gz")).dataobj)
    b = np.asarray(nib.load(str(out / "b" / "segmentation.nii.gz")).dataobj)
    assert b.shape == hu.shape
    np.testing.assert_array_equal(a, b[::-1])  # the same mask, each on its own file's voxels


def test_a_folder_of_scans_and_dicom_is_refused(tmp_path: Path, model_dir: Path, dicom_series) -> None:
    series = dicom_series("mixed/series", n=4, rows=16, cols=16)
    hu, _, affine = small_phantom()
    write_nifti(series.folder.parent / "ct.nii.gz", hu, affine)
    res = _run(series.folder.parent, "--model", model_dir, "--out", tmp_path / "out")
    assert res.exit_code == 2 and "holds scan files (ct.nii.gz...) and DICOM files" in res.output, res.output
    assert not (tmp_path / "out").exists()
    assert set(SCAN_FILE_SUFFIXES) == set(NIFTI_SUFFIXES + ITK_SUFFIXES)  # the CLI knows what the reader reads
