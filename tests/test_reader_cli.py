"""``asa info`` / ``describe`` and the MONAI ``LoadCTd`` transform."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from monai.transforms import Compose, Orientationd, Spacingd
from typer.testing import CliRunner

from models.cli import app
from models.io.info import describe
from models.io.monai_load import LoadCTd
from models.io.reader import load_ct

runner = CliRunner()


def _nifti(tmp_path: Path) -> Path:
    vol = np.linspace(-1000, 1000, 6 * 8 * 10, dtype=np.float32).reshape(6, 8, 10)
    aff = np.diag([-1.5, -1.5, 3.0, 1.0])
    path = tmp_path / "ct.nii.gz"
    nib.save(nib.Nifti1Image(vol, aff), str(path))
    return path


def test_describe_is_plain_json(tmp_path: Path) -> None:
    d = describe(load_ct(_nifti(tmp_path)))
    json.dumps(d)
    assert d["shape"] == [6, 8, 10] and d["spacing"] == [1.5, 1.5, 3.0]
    assert d["orientation"] == "RAS" and d["source_orientation"] == "LPS"
    assert d["hu"]["min"] == pytest.approx(-1000) and d["hu"]["max"] == pytest.approx(1000)
    assert d["hu"]["p1"] < d["hu"]["p99"]
    assert d["format"] == "nifti" and "series" not in d


def test_info_text_and_json(tmp_path: Path) -> None:
    path = _nifti(tmp_path)
    res = runner.invoke(app, ["info", str(path)])
    assert res.exit_code == 0, res.output
    assert "6 x 8 x 10" in res.output and "RAS (source LPS)" in res.output and "HU:" in res.output
    res = runner.invoke(app, ["info", str(path), "--json"])
    assert res.exit_code == 0
    assert json.loads(res.stdout)["spacing"] == [1.5, 1.5, 3.0]


def test_info_dicom_series_option_and_other_series(dicom_series, tmp_path: Path) -> None:
    a = dicom_series(name="study/a", n=5, description="axial")
    b = dicom_series(name="study/b", n=3, description="scout")
    res = runner.invoke(app, ["info", str(tmp_path / "study"), "--json"])
    d = json.loads(res.stdout)
    assert d["series"]["uid"] == a.series_uid and d["series"]["n"] == 5
    assert d["other_series"][0]["uid"] == b.series_uid and d["warnings"]
    res = runner.invoke(app, ["info", str(tmp_path / "study"), "--series", b.series_uid])
    assert res.exit_code == 0 and b.series_uid in res.output and "scout" in res.output


def test_info_bad_input_exit_2_message_no_traceback(tmp_path: Path) -> None:
    junk = tmp_path / "junk.bin"
    junk.write_text("nothing to see")
    res = runner.invoke(app, ["info", str(junk)])
    assert res.exit_code == 2
    assert "not a DICOM file" in res.stderr and "junk.bin" in res.stderr
    assert "Traceback" not in res.output
    res = runner.invoke(app, ["info", str(tmp_path / "missing.nii.gz")])
    assert res.exit_code == 2 and "no such file" in res.stderr


def test_loadctd_metatensor_and_spacingd(tmp_path: Path, dicom_series) -> None:
    path = _nifti(tmp_path)
    lab = np.zeros((6, 8, 10), np.uint8)
    lab[1:3, 2:5, 4:8] = 5
    nib.save(nib.Nifti1Image(lab, np.diag([-1.5, -1.5, 3.0, 1.0])), str(tmp_path / "lab.nii.gz"))
    pipe = Compose([
        LoadCTd(keys="image", label_keys="label"),
        Orientationd(keys=["image", "label"], axcodes="RAS", labels=None),
        Spacingd(keys=["image", "label"], pixdim=(1.0, 1.0, 1.5), mode=("bilinear", "nearest")),
    ])
    out = pipe({"image": str(path), "label": str(tmp_path / "lab.nii.gz")})
    img, seg = out["image"], out["label"]
    assert isinstance(img, MetaTensor) and img.shape[0] == 1 and seg.shape == img.shape
    spacing = torch.linalg.norm(img.affine[:3, :3], dim=0)
    np.testing.assert_allclose(spacing.numpy(), [1.0, 1.0, 1.5], atol=1e-5)
    assert set(torch.unique(seg).tolist()) <= {0.0, 5.0} and (seg == 5).any()
    loaded = LoadCTd(keys="image")({"image": str(path)})["image"]
    ct = load_ct(path)
    np.testing.assert_allclose(loaded.affine.numpy(), ct.affine)
    np.testing.assert_array_equal(loaded[0].numpy(), ct.array)
    s = dicom_series(n=4)
    dcm = LoadCTd(keys="image")({"image": str(s.folder)})["image"]
    assert tuple(dcm.shape) == (1, 24, 32, 4)
