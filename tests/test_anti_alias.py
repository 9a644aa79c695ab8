"""Anti-aliasing before resampling: a 1 mm scan must reach a 3 mm model looking like a scan taken at 3 mm.

Why it matters: the real sample's DICOM patient (0.98 mm in-plane) reached the 3 mm model with its 1 mm
noise almost undamped, and the liver was under-segmented (issue #3 §4).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from models.config import DataConfig
from models.data.transforms import anti_alias_array, anti_alias_sigma, preprocess
from models.finetune.config import FinetuneDataConfig
from models.finetune.data import preprocess_pipeline
from models.inference.preprocess import network_input
from models.io.reader import load_ct, save_nifti
from models.modeldir import Preprocessing

HU_WINDOW = {"hu_min": -175.0, "hu_max": 250.0}


def test_sigma_follows_the_skimage_rule_and_never_blurs_when_upsampling() -> None:
    assert anti_alias_sigma((1.0, 1.0, 2.0), (3.0, 3.0, 4.0)) == (1.0, 1.0, 0.5)
    assert anti_alias_sigma((3.0, 3.0, 4.0), (1.5, 1.5, 4.0)) == (0.0, 0.0, 0.0)
    volume = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    assert anti_alias_array(volume, (2.0, 2.0, 2.0), (1.0, 2.0, 2.0)) is volume  # nothing to do: untouched


def _interior_std(volume: np.ndarray) -> float:
    return float(np.asarray(volume)[0, 3:-3, 3:-3, 3:-3].std())


def test_a_1mm_scan_resampled_to_3mm_has_the_noise_of_a_scan_taken_at_3mm(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    fine = (40.0 + 20.0 * rng.standard_normal((96, 96, 48))).astype(np.float32)  # liver-like tissue, 1 mm noise
    coarse = fine.reshape(32, 3, 32, 3, 16, 3).mean(axis=(1, 3, 5))  # a 3 mm detector averages 27 voxels
    save_nifti(fine, np.diag([1.0, 1.0, 1.0, 1.0]), tmp_path / "fine.nii.gz")
    save_nifti(coarse, np.diag([3.0, 3.0, 3.0, 1.0]), tmp_path / "coarse.nii.gz")
    cfg = DataConfig(spacing=(3.0, 3.0, 3.0), **HU_WINDOW)

    reference = _interior_std(preprocess(load_ct(tmp_path / "coarse.nii.gz"), cfg))
    ours = _interior_std(preprocess(load_ct(tmp_path / "fine.nii.gz"), cfg))
    aliased = _interior_std(preprocess(load_ct(tmp_path / "fine.nii.gz"), cfg, anti_aliased=True))  # no blur

    assert 0.6 < ours / reference < 1.5, (ours, reference)
    assert aliased / reference > 3.0, (aliased, reference)  # what bilinear resampling alone passes on


def test_a_thin_series_keeps_its_edge_slices(tmp_path: Path) -> None:
    """The blur repeats edge voxels: a uniform 20-slice slab stays uniform, first and last slice included."""
    save_nifti(np.full((64, 64, 20), 60.0, np.float32), np.diag([1.0, 1.0, 2.0, 1.0]), tmp_path / "slab.nii.gz")
    out = preprocess(load_ct(tmp_path / "slab.nii.gz"), DataConfig(spacing=(3.0, 3.0, 4.0), **HU_WINDOW))
    np.testing.assert_allclose(np.asarray(out), (60.0 + 175.0) / 425.0, atol=1e-5)


@pytest.mark.parametrize("spacing", [(3.0, 3.0, 4.0), (1.0, 1.0, 1.0)])
def test_finetuning_and_inference_see_the_same_input(tmp_path: Path, spacing: tuple[float, float, float]) -> None:
    """Training crops come from the finetuning cache, inference from the segmenter: one blur for both."""
    rng = np.random.default_rng(1)
    hu = (40.0 + 30.0 * rng.standard_normal((60, 50, 30))).astype(np.float32)
    affine = np.diag([0.9, 0.9, 2.0, 1.0])
    save_nifti(hu, affine, tmp_path / "ct.nii.gz")
    save_nifti(np.zeros(hu.shape, np.uint8), affine, tmp_path / "seg.nii.gz")
    data_cfg = FinetuneDataConfig(spacing=spacing, foreground_crop=False, **HU_WINDOW)

    case = {"image": tmp_path / "ct.nii.gz", "label": tmp_path / "seg.nii.gz"}
    trained_on = preprocess_pipeline(data_cfg, None)(case)
    ct = load_ct(tmp_path / "ct.nii.gz")
    segmented = network_input(ct.array, ct.affine, ct.source, Preprocessing(spacing=spacing, **HU_WINDOW), spacing)

    np.testing.assert_allclose(np.asarray(trained_on["image"]), np.asarray(segmented), atol=1e-5)
