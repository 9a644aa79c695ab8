"""Shared test fixtures: synthetic DICOM series builder and the real (cached) CT sample.

Keep fixtures generic; other test modules may add theirs below.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


@dataclass
class SyntheticSeries:
    """What a synthetic DICOM series should load as (source grid: column, row, slice by position)."""

    folder: Path
    files: list[Path]  # in slice-position order (index k of `hu`)
    hu: np.ndarray  # (columns, rows, n) expected HU in source order
    affine: np.ndarray  # expected source affine (RAS)
    series_uid: str
    sop_uids: list[str]
    datasets: list[Dataset] = field(default_factory=list)


def _dicom_dataset(
    *,
    rows: int,
    cols: int,
    pixels: np.ndarray,
    position: np.ndarray,
    iop: Sequence[float],
    pixel_spacing: Sequence[float],
    series_uid: str,
    study_uid: str,
    for_uid: str,
    modality: str,
    instance: int,
    slope: float,
    intercept: float,
    description: str,
) -> Dataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    sop = generate_uid()
    meta.MediaStorageSOPInstanceUID = sop
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = sop
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.FrameOfReferenceUID = for_uid
    ds.Modality = modality
    ds.SeriesDescription = description
    ds.PatientName = "Synthetic^Phantom"
    ds.PatientID = "SYN0001"
    ds.InstanceNumber = instance
    ds.ImagePositionPatient = [f"{v:.6f}" for v in position]
    ds.ImageOrientationPatient = [f"{v:.8f}" for v in iop]
    ds.PixelSpacing = [f"{v:.6f}" for v in pixel_spacing]
    ds.SliceThickness = "2.0"
    ds.Rows, ds.Columns = rows, cols
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1
    ds.RescaleSlope = f"{slope:g}"
    ds.RescaleIntercept = f"{intercept:g}"
    ds.WindowCenter = "40"
    ds.WindowWidth = "400"
    ds.PixelData = np.ascontiguousarray(pixels.astype("<i2")).tobytes()
    return ds


def build_dicom_series(
    folder: Path,
    *,
    n: int = 8,
    rows: int = 32,
    cols: int = 24,
    pixel_spacing: Sequence[float] = (0.8, 0.7),
    step: float = 2.5,
    iop: Sequence[float] = (1, 0, 0, 0, 1, 0),
    origin: Sequence[float] = (-12.0, 30.0, -100.0),
    modality: str = "CT",
    series_uid: str | None = None,
    study_uid: str | None = None,
    description: str = "synthetic",
    slopes: Sequence[float] | None = None,
    intercepts: Sequence[float] | None = None,
    shuffle_names: bool = True,
    reverse_instance_numbers: bool = True,
    positions: np.ndarray | None = None,
    seed: int = 0,
    write: bool = True,
    transfer_syntax: str | None = None,
) -> SyntheticSeries:
    """Write ``n`` slices of ``rows`` x ``cols`` with a known LPS geometry (IOP/IPP) and known HU.

    File names are shuffled and InstanceNumbers reversed by default, so a reader that orders by
    either gets it wrong. ``positions`` (n x 3, LPS) overrides the regular stack (to break it).
    ``transfer_syntax``: compress the pixels (pydicom's encoders: JPEG 2000 lossless, RLE lossless).
    """
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    iop_a = np.asarray(iop, dtype=float)
    row_dir, col_dir = iop_a[:3], iop_a[3:]
    normal = np.cross(row_dir, col_dir)
    if positions is None:
        positions = np.asarray(origin, float)[None] + np.arange(n)[:, None] * step * normal[None]
    series_uid = series_uid or generate_uid()
    study_uid = study_uid or generate_uid()
    for_uid = generate_uid()
    slopes = list(slopes) if slopes is not None else [1.0] * n
    intercepts = list(intercepts) if intercepts is not None else [-1024.0] * n
    raw = rng.integers(0, 2000, size=(n, rows, cols)).astype(np.int16)  # stored values, [slice, row, col]
    names = [f"IM{i:04d}.dcm" for i in range(n)]
    if shuffle_names:
        names = list(np.asarray(names)[rng.permutation(n)])
    datasets, files = [], []
    for k in range(n):
        inst = n - k if reverse_instance_numbers else k + 1
        ds = _dicom_dataset(rows=rows, cols=cols, pixels=raw[k], position=positions[k], iop=iop_a,
                            pixel_spacing=pixel_spacing, series_uid=series_uid, study_uid=study_uid,
                            for_uid=for_uid, modality=modality, instance=inst, slope=slopes[k],
                            intercept=intercepts[k], description=description)
        if transfer_syntax is not None:
            ds.compress(transfer_syntax)
        path = folder / names[k]
        if write:
            ds.save_as(path, enforce_file_format=True)
        datasets.append(ds)
        files.append(path)
    hu = np.stack([raw[k].astype(np.float64) * slopes[k] + intercepts[k] for k in range(n)], axis=-1)
    hu = hu.transpose(1, 0, 2)  # (col, row, slice)
    lps = np.eye(4)
    lps[:3, 0] = row_dir * pixel_spacing[1]
    lps[:3, 1] = col_dir * pixel_spacing[0]
    lps[:3, 2] = (positions[-1] - positions[0]) / max(n - 1, 1)
    lps[:3, 3] = positions[0]
    return SyntheticSeries(folder=folder, files=files, hu=hu.astype(np.float32), affine=LPS_TO_RAS @ lps,
                           series_uid=series_uid, sop_uids=[str(d.SOPInstanceUID) for d in datasets],
                           datasets=datasets)


def write_enhanced_ct(datasets: Sequence[Dataset], path: Path, frame_order: Sequence[int] | None = None) -> Dataset:
    """The slices of a classic CT series as one enhanced (multi-frame) image; ``frame_order`` permutes its frames.

    highdicom's legacy conversion (Legacy Converted Enhanced CT, the same functional groups as Enhanced CT):
    positions per frame, orientation and spacing shared, rescale shared or per frame where slices differ.
    It stores the frames sorted; ``frame_order`` then reorders them (functional groups and pixels together).
    """
    from highdicom import UID
    from highdicom.legacy import LegacyConvertedEnhancedCTImage

    image = LegacyConvertedEnhancedCTImage(list(datasets), series_instance_uid=UID(), series_number=2,
                                           sop_instance_uid=UID(), instance_number=1)
    if frame_order is not None:
        order = list(frame_order)
        pixels = image.pixel_array
        items = list(image.PerFrameFunctionalGroupsSequence)
        image.PerFrameFunctionalGroupsSequence = [items[i] for i in order]
        image.PixelData = np.ascontiguousarray(pixels[order]).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save_as(path)
    return image


@pytest.fixture
def dicom_series(tmp_path: Path) -> Callable[..., SyntheticSeries]:
    """Factory: ``dicom_series(name="ct", **build_dicom_series kwargs)`` writes under tmp_path/name."""
    counter = {"i": 0}

    def make(name: str | None = None, **kwargs: Any) -> SyntheticSeries:
        counter["i"] += 1
        return build_dicom_series(tmp_path / (name or f"series{counter['i']}"), **kwargs)

    return make


@pytest.fixture(scope="session")
def ct_sample_dir() -> Path:
    """The real TotalSegmentator sample, downloaded once into the user cache (reused by CI)."""
    from models.data.sample import fetch_sample_data

    return fetch_sample_data()


# -- finetuning fixtures (shared by the finetuning, study and segmentation tests) ------------------
TINY_PHANTOM_SHAPE = (64, 64, 32)
TINY_PHANTOM_SPACING = (5.4, 5.4, 7.5)
TINY_ASA = ["network.projector_dim=32", "network.projector_hidden=32", "network.local_dim=16"]


@pytest.fixture(scope="session")
def asa_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An ASA run directory with a checkpoint (built directly: no pretraining step needed)."""
    import torch

    from models.asa.model import ASA
    from models.asa.trainer import build_optimizer, save_checkpoint
    from models.config import build_config

    out = tmp_path_factory.mktemp("asa")
    torch.manual_seed(0)
    cfg = build_config("cpu-demo", overrides=TINY_ASA)
    model = ASA(cfg)
    with torch.no_grad():  # make the teacher differ from any fresh initialisation
        for p in model.teacher.parameters():
            p.add_(0.01)
    save_checkpoint(out / "checkpoint.pt", model, build_optimizer(model, cfg), 1, 1, cfg)
    return out


@pytest.fixture(scope="session")
def phantom_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Four labelled 64 x 64 x 32 phantoms (an MSD-style dataset)."""
    from models.data.phantom import write_phantom_dataset

    return write_phantom_dataset(
        tmp_path_factory.mktemp("ph"), n=4, seed=0, shape=TINY_PHANTOM_SHAPE, spacing=TINY_PHANTOM_SPACING
    )
