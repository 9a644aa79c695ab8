"""DICOM-SEG files as label maps: segments matched by name, frames placed by position, every refusal named.

The SEGs are written by highdicom on synthetic series (tests/conftest.py) whose files are shuffled and whose
slices are not axial, so only placing each frame by its position gives the expected label map. Our own
writer's SEGs are read back the same way in tests/test_segment_dicom.py (synthetic and the real series).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from conftest import SyntheticSeries, build_dicom_series
from pydicom.sr.codedict import codes
from segment_helpers import ThresholdNet, threshold_labels, threshold_spec
from typer.testing import CliRunner

from models.cli import app
from models.data.datasets import Case, load_dataset
from models.evaluation.evaluate import evaluate_cases
from models.finetune.config import build_finetune_config
from models.finetune.data import cached_pair
from models.inference import Segmenter
from models.io.reader import CTReadError, canonicalise, load_ct, load_label, save_nifti

LIVER, KIDNEY, NEOPLASM = codes.SCT.Liver, codes.SCT.Kidney, codes.SCT.Neoplasm
RIGHT = hd.sr.CodedConcept("24028007", "SCT", "Right")
TYPE2 = ("PatientBirthDate", "PatientSex", "AccessionNumber", "StudyID", "StudyDate", "StudyTime",
         "ReferringPhysicianName")  # fmt: skip


def _series(tmp_path: Path, name: str = "ct", **kwargs) -> SyntheticSeries:
    """A sagittal series by default: rows run down the patient, columns towards posterior."""
    kwargs = {"n": 8, "rows": 32, "cols": 24, "iop": (0, 1, 0, 0, 0, -1), **kwargs}
    series = build_dicom_series(tmp_path / name, **kwargs)
    for ds in series.datasets:  # type-2 attributes highdicom copies from the source
        for attr in TYPE2:
            setattr(ds, attr, "")
    return series


def _segment(number: int, label: str, prop: object = LIVER) -> hd.seg.SegmentDescription:
    return hd.seg.SegmentDescription(
        segment_number=number, segment_label=label, segmented_property_category=codes.SCT.AnatomicalStructure,
        segmented_property_type=prop, algorithm_type=hd.seg.SegmentAlgorithmTypeValues.MANUAL,
    )  # fmt: skip


def write_seg(
    series: SyntheticSeries, pixels: np.ndarray, segments: Sequence[hd.seg.SegmentDescription], path: Path,
    kind: str = "BINARY", **kwargs,
) -> hd.seg.Segmentation:  # fmt: skip
    """``pixels``: (slice, row, column[, segment]) in the series' slice order; segment numbers or fractions."""
    seg = hd.seg.Segmentation(
        source_images=series.datasets, pixel_array=pixels, segmentation_type=hd.seg.SegmentationTypeValues[kind],
        segment_descriptions=list(segments), series_instance_uid=hd.UID(), series_number=3,
        sop_instance_uid=hd.UID(), instance_number=1, manufacturer="test", manufacturer_model_name="test",
        software_versions="0", device_serial_number="0", **kwargs,
    )  # fmt: skip
    seg.save_as(path)
    return seg


def _source_labels(shape: tuple[int, int, int]) -> np.ndarray:
    """Two overlapping-free boxes, (column, row, slice) like ``SyntheticSeries.hu``; slice 0 left empty."""
    lab = np.zeros(shape, np.uint8)
    lab[3:10, 5:20, 1:6] = 1
    lab[12:20, 8:30, 3:8] = 2
    return lab


def _canonical(series: SyntheticSeries, source: np.ndarray) -> np.ndarray:
    return canonicalise(source.astype(np.float32), series.affine, {}).array.astype(np.int16)


def _frames(source: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(source.transpose(2, 1, 0))  # (column, row, slice) -> (slice, row, column)


def test_segments_are_matched_by_name_and_frames_placed_by_position(tmp_path: Path) -> None:
    series = _series(tmp_path)
    ct = load_ct(series.folder)
    source = _source_labels(series.hu.shape)
    # segment 1 is the liver, 2 the right kidney; the label set numbers them the other way round
    seg = write_seg(series, _frames(source), [_segment(1, "Liver"), _segment(2, "Kidney_Right", KIDNEY)],
                    tmp_path / "seg.dcm")  # fmt: skip
    assert seg.NumberOfFrames < 2 * len(series.files)  # empty frames are left out
    got = load_label(tmp_path / "seg.dcm", like=ct, names={0: "background", 1: "right kidney", 2: "liver"})
    assert got.dtype == np.int16
    np.testing.assert_array_equal(got, _canonical(series, np.array([0, 2, 1])[source]))


def test_property_type_with_laterality_names_a_segment_without_a_usable_label(tmp_path: Path) -> None:
    series = _series(tmp_path)
    ct = load_ct(series.folder)
    source = _source_labels(series.hu.shape)
    segments = [_segment(1, "Segment_1", KIDNEY), _segment(2, "Segment_2", LIVER)]
    segments[0].SegmentedPropertyTypeCodeSequence[0].SegmentedPropertyTypeModifierCodeSequence = [RIGHT]
    write_seg(series, _frames(source), segments, tmp_path / "seg.dcm")
    got = load_label(tmp_path / "seg.dcm", like=ct, names={1: "liver", 2: "kidney right"})
    np.testing.assert_array_equal(got, _canonical(series, np.array([0, 2, 1])[source]))


def test_unknown_segment_or_no_names_is_refused_naming_them(tmp_path: Path) -> None:
    series = _series(tmp_path)
    ct = load_ct(series.folder)
    write_seg(series, _frames(_source_labels(series.hu.shape)), [_segment(1, "Liver"), _segment(2, "Tumour", NEOPLASM)],
              tmp_path / "seg.dcm")  # fmt: skip
    with pytest.raises(CTReadError, match=r"segment\(s\) 2 'Tumour' match no label name.*1 liver, 2 spleen"):
        load_label(tmp_path / "seg.dcm", like=ct, names={1: "liver", 2: "spleen"})
    with pytest.raises(CTReadError, match="no label names are known"):
        load_label(tmp_path / "seg.dcm", like=ct)


def test_overlapping_segments_keep_the_higher_label_id(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    series = _series(tmp_path)
    ct = load_ct(series.folder)
    organ = np.zeros(series.hu.shape, bool)
    organ[2:20, 4:28, 1:7] = True
    tumour = np.zeros_like(organ)
    tumour[8:12, 10:14, 3:5] = True
    stacked = np.stack([_frames(tumour), _frames(organ)], axis=-1).astype(np.uint8)  # segment 1: the tumour
    write_seg(series, stacked, [_segment(1, "liver tumour"), _segment(2, "liver")], tmp_path / "seg.dcm")
    with caplog.at_level(logging.WARNING):
        got = load_label(tmp_path / "seg.dcm", like=ct, names={1: "liver", 2: "liver tumour"})
    np.testing.assert_array_equal(got, _canonical(series, np.where(tumour, 2, organ.astype(np.uint8))))
    assert f"overlap in {int(tumour.sum())} voxels" in caplog.text


def test_fractional_and_labelmap_segmentations(tmp_path: Path) -> None:
    series = _series(tmp_path)
    ct = load_ct(series.folder)
    source = _source_labels(series.hu.shape)
    fraction = np.where(source == 1, 0.7, np.where(source == 2, 0.3, 0.0)).astype(np.float32)  # 0.3: outside
    write_seg(series, _frames(fraction), [_segment(1, "liver")], tmp_path / "frac.dcm", kind="FRACTIONAL",
              max_fractional_value=255)  # fmt: skip
    got = load_label(tmp_path / "frac.dcm", like=ct, names={1: "liver"})
    np.testing.assert_array_equal(got, _canonical(series, (source == 1).astype(np.uint8)))

    names = {1: "right kidney", 2: "liver"}
    segments = [_segment(1, "liver"), _segment(2, "right kidney", KIDNEY)]
    write_seg(series, _frames(source), segments, tmp_path / "labelmap.dcm", kind="LABELMAP",
              transfer_syntax_uid=pydicom.uid.RLELossless)  # fmt: skip
    ds = pydicom.dcmread(tmp_path / "labelmap.dcm")
    assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.66.7" and ds.file_meta.TransferSyntaxUID.is_compressed
    got = load_label(tmp_path / "labelmap.dcm", like=ct, names=names)
    np.testing.assert_array_equal(got, _canonical(series, np.array([0, 2, 1])[source]))

    ds.PixelData = ds.PixelData[: len(ds.PixelData) // 2]  # a compressed stream cut short
    ds.save_as(tmp_path / "cut.dcm")
    with pytest.raises(CTReadError, match="cannot decode the frames of DICOM-SEG"):
        load_label(tmp_path / "cut.dcm", like=ct, names=names)


def test_frames_stored_in_any_order(tmp_path: Path) -> None:
    series = _series(tmp_path)
    ct = load_ct(series.folder)
    source = _source_labels(series.hu.shape)
    path = tmp_path / "seg.dcm"
    write_seg(series, _frames(source == 1).astype(np.float32), [_segment(1, "liver")], path, kind="FRACTIONAL")
    ds = pydicom.dcmread(path)
    order = np.random.default_rng(0).permutation(int(ds.NumberOfFrames))
    ds.PerFrameFunctionalGroupsSequence = [ds.PerFrameFunctionalGroupsSequence[i] for i in order]
    ds.PixelData = np.ascontiguousarray(ds.pixel_array[order]).tobytes()
    ds.save_as(path)
    np.testing.assert_array_equal(load_label(path, like=ct, names={1: "liver"}),
                                  _canonical(series, (source == 1).astype(np.uint8)))  # fmt: skip


def test_seg_of_another_grid_or_a_longer_series_is_refused(tmp_path: Path) -> None:
    series = _series(tmp_path)
    ct = load_ct(series.folder)
    source = _source_labels(series.hu.shape)
    shifted = _series(tmp_path, "shifted", origin=(-12.0, 30.35, -100.0))  # half a column off
    write_seg(shifted, _frames(source), [_segment(1, "liver"), _segment(2, "spleen")], tmp_path / "shifted.dcm")
    with pytest.raises(CTReadError, match=r"frame \d+ does not lie on a plane of the scan's grid"):
        load_label(tmp_path / "shifted.dcm", like=ct, names={1: "liver", 2: "spleen"})

    longer = _series(tmp_path, "longer", n=10)  # the same grid, two slices more, labelled there too
    lab = np.zeros(longer.hu.shape, np.uint8)
    lab[3:10, 5:20, 6:10] = 1
    write_seg(longer, _frames(lab), [_segment(1, "liver")], tmp_path / "longer.dcm")
    with pytest.raises(CTReadError, match=r"lies \(partly\) outside the scan"):
        load_label(tmp_path / "longer.dcm", like=ct, names={1: "liver"})


def test_broken_segs_images_as_labels_and_segs_as_scans_are_refused(tmp_path: Path) -> None:
    series = _series(tmp_path)
    ct = load_ct(series.folder)
    names = {1: "liver", 2: "spleen"}
    with pytest.raises(CTReadError, match=r"is a DICOM CT image, not a segmentation \(DICOM-SEG, RTSTRUCT\)"):
        load_label(series.files[0], like=ct, names=names)

    path = tmp_path / "seg.dcm"
    write_seg(series, _frames(_source_labels(series.hu.shape)), [_segment(1, "liver"), _segment(2, "spleen")], path)
    with pytest.raises(CTReadError, match=r"modality SEG, not CT .*a label: give it as a dataset's 'label'"):
        load_ct(path)  # a SEG given as a scan

    ds = pydicom.dcmread(path)
    ds.PerFrameFunctionalGroupsSequence[0].SegmentIdentificationSequence[0].ReferencedSegmentNumber = 7
    ds.save_as(tmp_path / "undescribed.dcm")
    with pytest.raises(CTReadError, match="frame 1: segment 7 is not described"):
        load_label(tmp_path / "undescribed.dcm", like=ct, names=names)

    ds = pydicom.dcmread(path)
    ds.PixelData = ds.PixelData[: len(ds.PixelData) // 3]
    ds.save_as(tmp_path / "truncated.dcm")
    with pytest.raises(CTReadError, match=r"the pixel data ends early \(320 of 960 bytes"):
        load_label(tmp_path / "truncated.dcm", like=ct, names=names)

    ds = pydicom.dcmread(path)
    del ds.PerFrameFunctionalGroupsSequence[2].PlanePositionSequence
    ds.save_as(tmp_path / "unplaced.dcm")
    with pytest.raises(CTReadError, match="frame 3: no plane position"):
        load_label(tmp_path / "unplaced.dcm", like=ct, names=names)


# -- finetuning and evaluation read SEG labels through the dataset's label names ------------------------
def _seg_dataset(tmp_path: Path, n_cases: int = 2) -> tuple[Path, list[SyntheticSeries]]:
    """An MSD dataset of DICOM series labelled by SEGs whose segment numbers differ from the label ids."""
    names = ["soft tissue", "dense"]
    entries, all_series = [], []
    for i in range(n_cases):
        series = _series(tmp_path, f"case{i}", n=12, rows=40, cols=36, seed=i)
        labels = threshold_labels(series.hu, (0.5, 150.5))
        write_seg(series, _frames(np.array([0, 2, 1], np.uint8)[labels]),
                  [_segment(1, names[1]), _segment(2, names[0])], tmp_path / f"case{i}_seg.dcm")  # fmt: skip
        entries.append({"image": f"./case{i}", "label": f"./case{i}_seg.dcm"})
        all_series.append(series)
    spec = {"name": "seg", "modality": {"0": "CT"}, "labels": {"0": "background", "1": names[0], "2": names[1]},
            "training": entries}  # fmt: skip
    (tmp_path / "dataset.json").write_text(json.dumps(spec))
    return tmp_path / "dataset.json", all_series


def test_finetune_cache_reads_a_seg_label_like_its_nifti(tmp_path: Path) -> None:
    path, series = _seg_dataset(tmp_path, n_cases=1)
    dataset = load_dataset(path)
    case = dataset.cases[0]
    labels = threshold_labels(series[0].hu, (0.5, 150.5))
    save_nifti(labels, series[0].affine, tmp_path / "case0_seg.nii.gz")
    cfg = build_finetune_config("cpu-demo", overrides=["data.spacing=[2,2,3]"], pretrained="none").data
    seg_pair = cached_pair(case, cfg, None, 3, tmp_path / "cache", dataset.labels)
    nifti_case = Case(case.id, case.image, tmp_path / "case0_seg.nii.gz")
    nifti_pair = cached_pair(nifti_case, cfg, None, 3, tmp_path / "cache", dataset.labels)
    seg_label, nifti_label = np.load(seg_pair[1]), np.load(nifti_pair[1])
    assert seg_label.max() == 2
    np.testing.assert_array_equal(seg_label, nifti_label)


def test_evaluate_against_seg_references(tmp_path: Path) -> None:
    path, series = _seg_dataset(tmp_path)
    dataset = load_dataset(path)
    ct = load_ct(series[0].folder)
    spec = threshold_spec(["soft tissue", "dense"], ct.spacing)
    evaluation = evaluate_cases(Segmenter(ThresholdNet((0.5, 150.5)), spec, device="cpu"), dataset.cases,
                                dataset_labels=dataset.labels)  # fmt: skip
    assert not evaluation.errors and len(evaluation.per_case) == 2
    assert evaluation.summary()["mean"]["dice"] == 1.0


@pytest.mark.slow
def test_finetune_cli_trains_on_seg_labels(tmp_path: Path) -> None:
    """`asa finetune` on a dataset labelled only by SEGs: one step, one validation case."""
    path, _ = _seg_dataset(tmp_path / "data")
    res = CliRunner().invoke(app, [
        "finetune", "--pretrained", "none", "--data", str(path), "--out", str(tmp_path / "run"), "--preset",
        "cpu-demo", "--steps", "1", "--no-progress", "--set", "data.spacing=[2,2,3]", "--set", "data.val_count=1",
        "--set", "data.num_samples=1", "--set", "eval.sw_batch_size=1",
    ])  # fmt: skip
    assert res.exit_code == 0, res.output
    spec = json.loads((tmp_path / "run" / "model.json").read_text())
    assert [v["name"] for v in spec["labels"].values()] == ["background", "soft tissue", "dense"]


@pytest.mark.realdata
def test_totalsegmentator_names_match_the_btcv_organs_they_map_to(ct_sample_dir: Path) -> None:
    """A TotalSegmentator DICOM-SEG names its segments by its own classes: each one the shipped map sends to a
    BTCV organ must match that organ by name, so such a SEG trains a BTCV model without a map."""
    from models.data.labels import BTCV_LABELS, organ_key
    from models.finetune.labels import load_label_map

    total = {int(k): v for k, v in json.loads((ct_sample_dir / "labels_total.json").read_text()).items()}
    mapping, _ = load_label_map("totalseg_to_btcv")
    assert len(mapping) == 13
    for source, target in mapping.items():
        assert organ_key(total[source]) == organ_key(BTCV_LABELS[target]), (total[source], BTCV_LABELS[target])
