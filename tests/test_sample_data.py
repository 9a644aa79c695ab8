"""``fetch_sample_data``: real download (once, cached), checksum, cache location, idempotence, CLI."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from typer.testing import CliRunner

from models.cli import app
from models.data import sample


@pytest.mark.realdata
def test_fetch_extracts_only_wanted_files(ct_sample_dir: Path) -> None:
    names = {p.relative_to(ct_sample_dir).as_posix() for p in ct_sample_dir.rglob("*") if p.is_file()}
    for want in ("example_ct.nii.gz", "example_seg_dicom.nii.gz", "example_seg.nii.gz", "SAMPLE.md",
                 "labels_total.json", "LICENSE", "example_seg_fast_force_split.nii.gz"):
        assert want in names
    assert len([n for n in names if n.startswith("example_ct_dicom/")]) == 20
    assert not any("aorta_report" in n or n.endswith(".py") for n in names)
    assert "not manual" in (ct_sample_dir / "SAMPLE.md").read_text()


@pytest.mark.realdata
def test_second_call_is_a_noop(ct_sample_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(*_a: object) -> Path:
        raise AssertionError("downloaded again")

    monkeypatch.setattr(sample, "_download", boom)
    assert sample.fetch_sample_data(ct_sample_dir) == ct_sample_dir
    res = CliRunner().invoke(app, ["sample-data", "--out", str(ct_sample_dir)])
    assert res.exit_code == 0 and res.stdout.strip() == str(ct_sample_dir)


def test_cache_dir_env_override(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ASA_CACHE_DIR", str(tmp_path / "cache"))
    assert sample.sample_cache_dir() == tmp_path / "cache" / "sample"
    monkeypatch.delenv("ASA_CACHE_DIR")
    assert sample.sample_cache_dir() == Path.home() / ".cache" / "asa-ct" / "sample"


def test_checksum_mismatch_is_refused(tmp_path: Path) -> None:
    fake = tmp_path / sample.ARCHIVE_NAME
    fake.write_bytes(b"tampered")
    assert hashlib.sha256(b"tampered").hexdigest() != sample.SAMPLE_SHA256
    with pytest.raises(RuntimeError, match="sha256 mismatch"):
        sample._verify(fake)


def test_class_map_parsed_without_executing() -> None:
    src = 'import os\nclass_map = {"total_v1": {1: "x"}, "total": {1: "spleen", 5: "liver"}}\nos.remove("/")\n'
    assert sample._total_class_map(src) == {"1": "spleen", "5": "liver"}


@pytest.mark.realdata
def test_datalist_trains_on_one_patient_and_validates_on_the_dicom_one(ct_sample_dir: Path) -> None:
    from models.data.datasets import load_dataset

    datalist = ct_sample_dir / sample.DATALIST
    train = load_dataset(datalist)
    validation = load_dataset(datalist, split="validation")
    assert [c.image.name for c in train.cases] == ["example_ct.nii.gz"]
    pairs = [(c.image.name, c.label.name) for c in validation.cases]
    assert pairs == [("example_ct_dicom", "example_seg_dicom.nii.gz")]
    assert all(c.image.exists() and c.label.exists() for c in train.cases + validation.cases)
