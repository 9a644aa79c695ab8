"""Synthetic CT phantoms: determinism, RAS anatomy, label/HU consistency, the MSD writer and the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from typer.testing import CliRunner

from models.data import labels as L
from models.data.datasets import load_dataset
from models.data.phantom import DEFAULT_SHAPE, Phantom, generate_phantom, write_phantom_dataset

SMALL = (64, 64, 32)
SMALL_SPACING = (5.4, 5.4, 7.5)  # same field of view as the default, 27x fewer voxels


@pytest.fixture(scope="module")
def phantom() -> Phantom:
    return generate_phantom(3)


def world_centroid(ph: Phantom, mask: np.ndarray) -> np.ndarray:
    """Centroid of a voxel mask in world (RAS mm) coordinates, through the affine."""
    idx = np.argwhere(mask).mean(0)
    return (ph.affine @ np.r_[idx, 1.0])[:3]


def test_arrays_and_affine(phantom: Phantom) -> None:
    assert phantom.ct.shape == phantom.labels.shape == DEFAULT_SHAPE
    assert phantom.ct.dtype == np.int16 and phantom.labels.dtype == np.uint8
    assert nib.aff2axcodes(phantom.affine) == ("R", "A", "S")
    assert phantom.spacing == pytest.approx((1.8, 1.8, 2.5))
    assert set(np.unique(phantom.labels)) == set(range(14))
    assert phantom.meta["phase"] in ("native", "arterial", "portal_venous")


def test_deterministic() -> None:
    a, b = generate_phantom(7, SMALL, SMALL_SPACING), generate_phantom(7, SMALL, SMALL_SPACING)
    np.testing.assert_array_equal(a.ct, b.ct)
    np.testing.assert_array_equal(a.labels, b.labels)
    np.testing.assert_array_equal(a.affine, b.affine)
    c = generate_phantom(8, SMALL, SMALL_SPACING)
    assert not np.array_equal(a.ct, c.ct)


def test_patient_left_right_and_posterior(phantom: Phantom) -> None:
    """RAS+: +x is the patient's right, +y anterior, +z superior."""
    c = {k: world_centroid(phantom, phantom.labels == k) for k in range(1, 14)}
    for right in (L.LIVER, L.RIGHT_KIDNEY, L.IVC, L.RIGHT_ADRENAL, L.GALLBLADDER):
        assert c[right][0] > 0, L.BTCV_LABELS[right]
    for left in (L.SPLEEN, L.LEFT_KIDNEY, L.STOMACH, L.AORTA, L.LEFT_ADRENAL):
        assert c[left][0] < 0, L.BTCV_LABELS[left]
    assert c[L.IVC][0] > c[L.AORTA][0]
    # the liver and spleen are above the kidneys, the adrenals above their kidney
    assert c[L.LIVER][2] > c[L.RIGHT_KIDNEY][2] and c[L.SPLEEN][2] > c[L.LEFT_KIDNEY][2]
    assert c[L.RIGHT_ADRENAL][2] > c[L.RIGHT_KIDNEY][2] and c[L.LEFT_ADRENAL][2] > c[L.LEFT_KIDNEY][2]
    # the spine (bone near the midline) is posterior to the aorta, which is posterior to the pancreas
    ijk = np.indices(phantom.ct.shape[:2])
    x_world = phantom.affine[0, 0] * ijk[0] + phantom.affine[0, 3]
    bone = (phantom.ct > 300) & (np.abs(x_world)[:, :, None] < 20)
    assert world_centroid(phantom, bone)[1] < c[L.AORTA][1] < c[L.PANCREAS][1]
    # kidneys are posterior (retroperitoneal), the gallbladder anterior
    assert c[L.RIGHT_KIDNEY][1] < c[L.LIVER][1] < c[L.GALLBLADDER][1]


def test_many_seeds_generate() -> None:
    """Random anatomy must never break generation (e.g. degenerate bowel curves), whatever the seed."""
    for seed in range(20):
        ph = generate_phantom(seed, SMALL, SMALL_SPACING)
        assert {L.LIVER, L.SPLEEN, L.AORTA, L.RIGHT_KIDNEY, L.LEFT_KIDNEY} <= set(np.unique(ph.labels))


def test_lps_voxel_order_same_world() -> None:
    ras = generate_phantom(5, SMALL, SMALL_SPACING)
    lps = generate_phantom(5, SMALL, SMALL_SPACING, voxel_order="LPS")
    assert nib.aff2axcodes(lps.affine) == ("L", "P", "S")
    for k in (L.LIVER, L.SPLEEN):
        np.testing.assert_allclose(world_centroid(ras, ras.labels == k), world_centroid(lps, lps.labels == k))


def test_labels_carry_their_organ_hu(phantom: Phantom) -> None:
    hu, ct, lab = phantom.meta["hu"], phantom.ct, phantom.labels
    expected = {
        L.LIVER: hu["liver"],
        L.SPLEEN: hu["spleen"],
        L.AORTA: hu["artery"],
        L.IVC: hu["ivc"],
        L.PORTAL_SPLENIC_VEINS: hu["portal"],
        L.PANCREAS: hu["pancreas"],
        L.GALLBLADDER: hu["gallbladder"],
        L.ESOPHAGUS: hu["esophagus"],
    }
    for k, v in expected.items():
        assert abs(float(np.median(ct[lab == k])) - v) < 30, L.BTCV_LABELS[k]
    lo, hi = sorted((hu["kidney_cortex"], hu["kidney_medulla"]))
    for k in (L.RIGHT_KIDNEY, L.LEFT_KIDNEY):
        assert lo - 30 < float(np.median(ct[lab == k])) < hi + 30
    for k in range(1, 14):  # no organ is bone or air on the whole
        assert -300 < float(np.median(ct[lab == k])) < 400, L.BTCV_LABELS[k]
    assert float(np.median(ct[:, :3, :])) < -900  # air in front of the body
    assert (ct > 500).any() and (ct < -900).any()


def test_write_dataset_msd_layout(tmp_path: Path) -> None:
    seen: list[int] = []
    root = write_phantom_dataset(
        tmp_path / "ph", 2, seed=1, shape=SMALL, spacing=SMALL_SPACING, progress=lambda done, n: seen.append(done)
    )
    assert seen == [1, 2]
    spec = json.loads((root / "dataset.json").read_text())
    assert spec["modality"] == {"0": "CT"} and spec["numTraining"] == 2
    assert spec["labels"]["0"] == "background" and spec["labels"]["1"] == "spleen" and len(spec["labels"]) == 14
    assert spec["training"][0] == {"image": "./imagesTr/phantom_000.nii.gz", "label": "./labelsTr/phantom_000.nii.gz"}
    img = nib.load(root / "imagesTr" / "phantom_001.nii.gz")
    seg = nib.load(root / "labelsTr" / "phantom_001.nii.gz")
    assert img.get_data_dtype() == np.int16 and seg.get_data_dtype() == np.uint8
    assert img.shape == SMALL and np.allclose(img.affine, seg.affine)
    assert nib.aff2axcodes(img.affine) == ("R", "A", "S")
    ds = load_dataset(root)
    assert ds.format == "msd" and [c.id for c in ds.cases] == ["phantom_000", "phantom_001"]
    assert ds.labels == L.BTCV_LABELS


def test_cli_phantom(tmp_path: Path) -> None:
    from models.cli import app

    out = tmp_path / "cli"
    result = CliRunner().invoke(app, ["phantom", "--n", "1", "--out", str(out), "--seed", "2"])
    assert result.exit_code == 0, result.output
    assert str(out / "dataset.json") in result.output
    assert (out / "imagesTr" / "phantom_000.nii.gz").is_file()
    assert (out / "labelsTr" / "phantom_000.nii.gz").is_file()


def test_colors_distinct() -> None:
    assert set(L.BTCV_LABELS) == set(range(1, 14))
    assert set(L.BTCV_COLORS) == set(range(14))
    assert len(set(L.BTCV_COLORS.values())) == 14
