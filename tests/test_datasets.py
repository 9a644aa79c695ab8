"""Dataset readers: plain scan folders, MSD, nnU-Net v2 and MONAI datalists, and their error messages."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from models.data.datasets import Case, Dataset, is_dicom_file, load_dataset, split_holdout


def nii(path: Path) -> Path:
    """A tiny real NIfTI (8^3), enough for readers that only index files."""
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.zeros((8, 8, 8), np.int16), np.eye(4)), str(path))
    return path


def touch(path: Path, data: bytes = b"") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def dicom_bytes() -> bytes:
    return b"\0" * 128 + b"DICM" + b"\0" * 16


def write_json(path: Path, obj: object) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj))
    return path


# ---------------------------------------------------------------------------------------------- plain folder


def test_scan_folder(tmp_path: Path) -> None:
    nii(tmp_path / "b.nii.gz")
    nii(tmp_path / "a.nii")
    touch(tmp_path / "c.nrrd")
    touch(tmp_path / "d.mha")
    touch(tmp_path / "e.mhd")
    touch(tmp_path / "e.raw")  # the .mhd's data file: not a case
    touch(tmp_path / "f.nhdr")
    touch(tmp_path / "series1" / "IM0001.dcm")
    touch(tmp_path / "series2" / "IM0001", dicom_bytes())  # no extension, DICM preamble
    touch(tmp_path / "notdicom" / "readme.txt", b"hello")
    nii(tmp_path / "patient9" / "ct.nii.gz")  # nested scan file
    touch(tmp_path / "zipped.zip")
    write_json(tmp_path / "b.json", {"Modality": "CT"})  # dcm2niix sidecar: ignored
    touch(tmp_path / "notes.txt")
    ds = load_dataset(tmp_path)
    assert ds.format == "folder" and ds.labels == {} and ds.root == tmp_path and not ds.labelled
    ids = [c.id for c in ds.cases]
    assert ids == ["a", "b", "c", "d", "e", "f", "patient9_ct", "series1", "series2", "zipped"]
    by_id = {c.id: c for c in ds.cases}
    assert by_id["series2"].image == tmp_path / "series2" and by_id["series2"].label is None
    assert by_id["b"].image == tmp_path / "b.nii.gz"


def test_single_scan_file(tmp_path: Path) -> None:
    ds = load_dataset(nii(tmp_path / "scan.nii.gz"))
    assert [c.id for c in ds.cases] == ["scan"]


def test_is_dicom_file(tmp_path: Path) -> None:
    assert is_dicom_file(touch(tmp_path / "x", dicom_bytes()))
    assert not is_dicom_file(touch(tmp_path / "y", b"x" * 200))
    assert not is_dicom_file(touch(tmp_path / "z", b"short"))


def test_missing_path(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no such file or folder"):
        load_dataset(tmp_path / "nope")


def test_empty_folder(tmp_path: Path) -> None:
    touch(tmp_path / "notes.txt")
    with pytest.raises(ValueError, match="no cases found"):
        load_dataset(tmp_path)


def test_folder_has_no_validation_split(tmp_path: Path) -> None:
    nii(tmp_path / "a.nii.gz")
    with pytest.raises(ValueError, match="no 'validation' split"):
        load_dataset(tmp_path, split="validation")


def test_not_a_dataset_file(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not a dataset"):
        load_dataset(touch(tmp_path / "notes.txt"))


# ----------------------------------------------------------------------------------------------------- MSD


def msd(root: Path, n: int = 3) -> Path:
    training = []
    for i in range(n):
        nii(root / "imagesTr" / f"liver_{i}.nii.gz")
        nii(root / "labelsTr" / f"liver_{i}.nii.gz")
        training.append({"image": f"./imagesTr/liver_{i}.nii.gz", "label": f"./labelsTr/liver_{i}.nii.gz"})
    nii(root / "imagesTs" / "liver_9.nii.gz")
    return write_json(
        root / "dataset.json",
        {
            "name": "Liver",
            "modality": {"0": "CT"},
            "labels": {"0": "background", "1": "liver", "2": "cancer"},
            "numTraining": n,
            "training": training,
            "test": ["./imagesTs/liver_9.nii.gz"],
        },
    )


def test_msd_folder_and_json(tmp_path: Path) -> None:
    js = msd(tmp_path / "Task03_Liver")
    for path in (js.parent, js):
        ds = load_dataset(path)
        assert ds.format == "msd" and ds.name == "Liver" and ds.labels == {1: "liver", 2: "cancer"}
        assert [c.id for c in ds.cases] == ["liver_0", "liver_1", "liver_2"]
        assert ds.cases[1].image == (js.parent / "imagesTr" / "liver_1.nii.gz").resolve()
        assert ds.cases[1].label == (js.parent / "labelsTr" / "liver_1.nii.gz").resolve()
        assert ds.labelled
    test = load_dataset(js, split="test")
    assert [c.id for c in test.cases] == ["liver_9"] and test.cases[0].label is None


def test_msd_missing_files(tmp_path: Path) -> None:
    js = msd(tmp_path, n=8)
    for i in range(7):
        (tmp_path / "labelsTr" / f"liver_{i}.nii.gz").unlink()
    with pytest.raises(ValueError, match=r"dataset.json: 7 of 16 referenced files are missing: .*liver_0.*and 2 more"):
        load_dataset(js)


def test_msd_unsupported_split(tmp_path: Path) -> None:
    js = msd(tmp_path)
    with pytest.raises(ValueError, match=r"unsupported split 'validation' \(this file has: training, test\)"):
        load_dataset(js, split="validation")


def test_msd_empty_training(tmp_path: Path) -> None:
    js = write_json(tmp_path / "dataset.json", {"modality": {"0": "CT"}, "labels": {"0": "bg"}, "training": []})
    with pytest.raises(ValueError, match="no cases found"):
        load_dataset(js)


# ----------------------------------------------------------------------------------------------- nnU-Net v2


def nnunet(root: Path, cases: tuple[str, ...] = ("abd_001", "abd_002"), channels: int = 1) -> Path:
    for cid in cases:
        for ch in range(channels):
            nii(root / "imagesTr" / f"{cid}_{ch:04d}.nii.gz")
        nii(root / "labelsTr" / f"{cid}.nii.gz")
    return write_json(
        root / "dataset.json",
        {
            "channel_names": {str(i): f"CT{i}" for i in range(channels)},
            "labels": {"background": 0, "spleen": 1, "liver": 6},
            "numTraining": len(cases),
            "file_ending": ".nii.gz",
        },
    )


def test_nnunet_v2(tmp_path: Path) -> None:
    root = tmp_path / "Dataset017_BTCV"
    nnunet(root)
    ds = load_dataset(root)
    assert ds.format == "nnunetv2" and ds.name == "Dataset017_BTCV" and ds.labels == {1: "spleen", 6: "liver"}
    assert [c.id for c in ds.cases] == ["abd_001", "abd_002"]
    assert ds.cases[0].image == root / "imagesTr" / "abd_001_0000.nii.gz"
    assert ds.cases[0].label == root / "labelsTr" / "abd_001.nii.gz"


def test_nnunet_v2_multichannel_and_test_split(tmp_path: Path) -> None:
    root = tmp_path / "Dataset002_Two"
    nnunet(root, channels=2)
    ds = load_dataset(root / "dataset.json")
    assert ds.cases[0].image == [root / "imagesTr" / "abd_001_0000.nii.gz", root / "imagesTr" / "abd_001_0001.nii.gz"]
    nii(root / "imagesTs" / "new_0000.nii.gz")
    nii(root / "imagesTs" / "new_0001.nii.gz")
    test = load_dataset(root, split="test")
    assert [c.id for c in test.cases] == ["new"] and test.cases[0].label is None
    with pytest.raises(ValueError, match="unsupported split 'validation'"):
        load_dataset(root, split="validation")


def test_nnunet_v2_errors(tmp_path: Path) -> None:
    root = tmp_path / "Dataset003_Bad"
    nnunet(root)
    (root / "labelsTr" / "abd_002.nii.gz").unlink()
    with pytest.raises(ValueError, match=r"1 of 4 referenced files are missing: .*abd_002.nii.gz"):
        load_dataset(root)
    nii(root / "labelsTr" / "abd_002.nii.gz")
    nii(root / "imagesTr" / "abd_002_0001.nii.gz")
    with pytest.raises(ValueError, match="'abd_002' has 2 channel files"):
        load_dataset(root)
    empty = tmp_path / "Dataset004_Empty"
    nnunet(empty, cases=())
    (empty / "imagesTr").mkdir()
    with pytest.raises(ValueError, match="no cases found"):
        load_dataset(empty)


# ------------------------------------------------------------------------------------------- MONAI datalist


def datalist(root: Path) -> Path:
    for i in (1, 2, 3):
        nii(root / "imagesTr" / f"img000{i}.nii.gz")
        nii(root / "labelsTr" / f"label000{i}.nii.gz")
    entry = lambda i: {"image": f"imagesTr/img000{i}.nii.gz", "label": f"labelsTr/label000{i}.nii.gz"}  # noqa: E731
    return write_json(root / "dataset_0.json", {"training": [entry(1), entry(2)], "validation": [entry(3)]})


def test_monai_datalist(tmp_path: Path) -> None:
    js = datalist(tmp_path / "BTCV")
    ds = load_dataset(js.parent)  # found in the folder without being named
    assert ds.format == "monai-datalist" and ds.labels == {}
    assert [c.id for c in ds.cases] == ["img0001", "img0002"]
    val = load_dataset(js, split="validation")
    assert [c.id for c in val.cases] == ["img0003"]
    assert val.cases[0].label == (js.parent / "labelsTr" / "label0003.nii.gz").resolve()
    with pytest.raises(ValueError, match="unsupported split 'test'"):
        load_dataset(js, split="test")


def test_monai_datalist_base_dir(tmp_path: Path) -> None:
    js = datalist(tmp_path / "data")
    moved = write_json(tmp_path / "lists" / "dl.json", json.loads(js.read_text()))
    with pytest.raises(ValueError, match="referenced files are missing"):
        load_dataset(moved)
    ds = load_dataset(moved, base_dir=tmp_path / "data")
    assert len(ds.cases) == 2 and ds.root == (tmp_path / "data").resolve()


def test_two_datalists_are_ambiguous(tmp_path: Path) -> None:
    js = datalist(tmp_path)
    write_json(tmp_path / "dataset_1.json", json.loads(js.read_text()))
    with pytest.raises(ValueError, match="several datalist JSON files"):
        load_dataset(tmp_path)


def test_unknown_and_invalid_json(tmp_path: Path) -> None:
    with pytest.raises(
        ValueError, match=r"other.json: not an MSD dataset.json, nnU-Net v2 .* \(top-level keys: a, b\)"
    ):
        load_dataset(write_json(tmp_path / "other.json", {"a": 1, "b": 2}))
    bad = tmp_path / "bad" / "dataset.json"
    bad.parent.mkdir()
    bad.write_text("{not json")
    with pytest.raises(ValueError, match=r"dataset\.json: not valid JSON"):
        load_dataset(bad.parent)
    with pytest.raises(ValueError, match="expected a JSON object"):
        load_dataset(write_json(tmp_path / "list.json", [1, 2]))


def test_entry_without_image(tmp_path: Path) -> None:
    js = write_json(tmp_path / "dl.json", {"training": [{"image": "a.nii.gz"}, {"label": "x.nii.gz"}]})
    with pytest.raises(ValueError, match="entry 1 of 'training' has no 'image'"):
        load_dataset(js)


# -------------------------------------------------------------------------------------------------- holdout


def make_ds(n: int) -> Dataset:
    return Dataset([Case(f"c{i}", Path(f"c{i}.nii.gz")) for i in range(n)], {1: "x"}, "d", Path("."))


def test_split_holdout() -> None:
    ds = make_ds(10)
    train, held = split_holdout(ds, 3, seed=0)
    again = split_holdout(ds, 3, seed=0)
    assert [c.id for c in held.cases] == [c.id for c in again[1].cases]
    assert len(train.cases) == 7 and len(held.cases) == 3
    assert {c.id for c in train.cases} | {c.id for c in held.cases} == {c.id for c in ds.cases}
    assert not {c.id for c in train.cases} & {c.id for c in held.cases}
    assert train.labels == held.labels == {1: "x"}
    assert [c.id for c in train.cases] == sorted((c.id for c in train.cases), key=lambda s: int(s[1:]))
    others = {tuple(c.id for c in split_holdout(ds, 3, seed=s)[1].cases) for s in range(10)}
    assert len(others) > 1
    assert len(split_holdout(ds, 0, seed=1)[1].cases) == 0
    for n in (-1, 10, 11):
        with pytest.raises(ValueError, match="cannot hold out"):
            split_holdout(ds, n, seed=0)
