"""`asa export-bundle`: MONAI's own bundle runner on the exported bundle gives `asa segment`'s mask."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from segment_helpers import reoriented, small_phantom, swin_model_dir, write_nifti
from typer.testing import CliRunner

from models.cli import app
from models.inference import Segmenter

runner = CliRunner()
SPACING = (4.0, 4.0, 5.0)  # not the scan's (5.4 x 5.4 x 6): both pipelines must resample and come back


@pytest.mark.slow
def test_monai_bundle_run_gives_the_asa_segment_mask(tmp_path: Path) -> None:
    hu, _, affine = small_phantom()
    data, lps = reoriented(hu, affine, (0, 1, 2), (True, True, False))  # stored LPS, as from most DICOM tools
    scans = tmp_path / "scans"
    scans.mkdir()
    scan = write_nifti(scans / "ct.nii.gz", data, lps)
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    x = np.clip((data[None, None, :64, :64, :32].astype(np.float32) + 175) / 425, 0, 1)
    model = swin_model_dir(tmp_path / "model", names=("liver", "spleen"), roi=64, spacing=SPACING, balance_on=x)

    res = runner.invoke(app, ["export-bundle", str(model), str(tmp_path / "bundle")])
    assert res.exit_code == 0, res.output
    bundle = tmp_path / "bundle"
    assert json.loads((bundle / "configs" / "metadata.json").read_text())["network_data_format"]["outputs"]
    proc = subprocess.run(
        [sys.executable, "-m", "monai.bundle", "run", "--config_file", str(bundle / "configs" / "inference.json"),
         "--bundle_root", str(bundle), "--dataset_dir", str(scans), "--output_dir", str(tmp_path / "out")],
        capture_output=True, text=True, timeout=600, cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    monai_img = nib.load(str(tmp_path / "out" / "ct_seg.nii.gz"))
    ours = Segmenter.from_model_dir(model, device="cpu").segment(scan)

    np.testing.assert_allclose(monai_img.affine, lps, atol=1e-5)
    theirs = np.asarray(monai_img.dataobj).squeeze()
    assert theirs.shape == ours.labels.shape == data.shape
    counts = np.bincount(ours.labels.ravel(), minlength=3) / ours.labels.size
    assert counts.min() > 0.02, counts  # every class present: agreement is not trivial
    assert (theirs == ours.labels).mean() >= 0.999


def test_export_bundle_errors(tmp_path: Path) -> None:
    res = runner.invoke(app, ["export-bundle", str(tmp_path / "nothing"), str(tmp_path / "b")])
    assert res.exit_code == 2 and "not a model directory" in res.output
    assert not (tmp_path / "b").exists()
