"""``asa convert-label``: a DICOM-SEG or RTSTRUCT as a label NIfTI on the scan's own grid, names from any source."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from segment_helpers import ThresholdNet, threshold_spec
from typer.testing import CliRunner

from models.cli import app
from models.data.labels import BTCV_LABELS
from models.inference import Segmenter, write_outputs
from models.io.label_names import parse_label_names
from models.io.reader import load_ct

runner = CliRunner()


def test_label_names_from_every_usual_source(tmp_path: Path) -> None:
    assert parse_label_names(None) == BTCV_LABELS
    assert parse_label_names("liver, right kidney") == {1: "liver", 2: "right kidney"}
    msd = tmp_path / "msd.json"
    msd.write_text(json.dumps({"name": "x", "labels": {"0": "background", "1": "spleen", "3": "liver"}}))
    assert parse_label_names(str(msd)) == {1: "spleen", 3: "liver"}
    nnunet = tmp_path / "dataset.json"
    nnunet.write_text(json.dumps({"labels": {"background": 0, "liver": 1, "tumour": [1, 2]}, "file_ending": ".nii"}))
    assert parse_label_names(str(nnunet)) == {1: "liver"}
    plain = tmp_path / "names.yaml"
    plain.write_text("1: Liver\n2: Kidney_R\n")
    assert parse_label_names(str(plain)) == {1: "Liver", 2: "Kidney_R"}
    with pytest.raises(ValueError, match="no such file, and not a comma-separated list"):
        parse_label_names(str(tmp_path / "missing.json"))
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON/YAML"):
        parse_label_names(str(tmp_path / "bad.json"))
    (tmp_path / "neg.json").write_text(json.dumps({"-1": "x"}))
    with pytest.raises(ValueError, match="must not be negative"):
        parse_label_names(str(tmp_path / "neg.json"))


@pytest.fixture
def exports(dicom_series, tmp_path: Path):
    """A shuffled series, its segmentation (ROIs/segments 'Liver' and 'Kidney_R'), DICOM-SEG and RTSTRUCT."""
    series = dicom_series("ct", n=8, rows=32, cols=24, iop=(0, 1, 0, 0, 0, -1))
    spec = threshold_spec(["Liver", "Kidney_R"], load_ct(series.folder).spacing)
    result = Segmenter(ThresholdNet((0.5, 150.5)), spec, device="cpu").segment(series.folder)
    files = write_outputs(result, tmp_path / "out", rtstruct=True, preview=False)
    return series, result, files


@pytest.mark.parametrize("kind", ["dicom_seg", "rtstruct"])
def test_convert_label_writes_the_organs_on_the_scans_grid(exports, tmp_path: Path, kind: str) -> None:
    series, result, files = exports
    out = tmp_path / f"{kind}.nii.gz"
    res = runner.invoke(app, ["convert-label", str(series.folder), str(files[kind]), "--out", str(out),
                              "--names", "right kidney,liver"])  # fmt: skip
    assert res.exit_code == 0, res.output
    img = nib.load(str(out))
    assert img.shape == series.hu.shape  # the DICOM series' own (column, row, slice) grid
    np.testing.assert_allclose(img.affine, series.affine, atol=1e-4)
    np.testing.assert_array_equal(np.asarray(img.dataobj), np.array([0, 2, 1], np.uint8)[result.labels])
    legend = json.loads(img.header.extensions[0].get_content())
    assert legend["labels"]["1"]["name"] == "right kidney"
    summary = json.loads(res.output)
    counts = {"right kidney": int((result.labels == 2).sum()), "liver": int((result.labels == 1).sum())}
    assert summary["voxels"] == counts


def test_convert_label_errors_exit_2_and_name_the_problem(exports, tmp_path: Path) -> None:
    series, _, files = exports
    out = tmp_path / "x.nii.gz"
    res = runner.invoke(app, ["convert-label", str(series.folder), str(files["rtstruct"]), "--out", str(out),
                              "--names", "spleen,pancreas"])  # fmt: skip
    assert res.exit_code == 2 and "no ROI names a label" in res.output
    res = runner.invoke(app, ["convert-label", str(series.folder), str(files["dicom_seg"]), "--out", str(out),
                              "--names", "spleen,pancreas"])  # fmt: skip
    assert res.exit_code == 2 and "segment(s) 1 'Liver', 2 'Kidney_R' match no label name" in res.output
    res = runner.invoke(app, ["convert-label", str(series.folder), str(tmp_path / "none.dcm"), "--out", str(out)])
    assert res.exit_code == 2 and "no such label file" in res.output
    assert not out.exists()


def test_convert_label_defaults_to_the_btcv_ids(exports, tmp_path: Path) -> None:
    series, result, files = exports
    out = tmp_path / "btcv.nii.gz"
    res = runner.invoke(app, ["convert-label", str(series.folder), str(files["rtstruct"]), "--out", str(out)])
    assert res.exit_code == 0, res.output
    expected = np.zeros(16, np.uint8)
    expected[1], expected[2] = 6, 2  # liver, right kidney
    np.testing.assert_array_equal(np.asarray(nib.load(str(out)).dataobj), expected[result.labels])

