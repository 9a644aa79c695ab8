"""A small real CT sample (TotalSegmentator's reference files) fetched once and cached.

Why this source: the TotalSegmentator source package (Apache-2.0, on PyPI, so reachable from CI)
ships a real 20-slice JPEG 2000 DICOM series, real NIfTI CTs and the model's own segmentations of
them. We download the pinned sdist with pip, verify its sha256, and extract only those scans and
masks. Nothing here is ever committed: the cache lives outside the repository.
"""

from __future__ import annotations

import ast
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

__all__ = ["SAMPLE_FILES", "SAMPLE_SHA256", "fetch_sample_data", "sample_cache_dir"]

PACKAGE = "totalsegmentator"
VERSION = "2.18.0"
ARCHIVE_NAME = f"{PACKAGE}-{VERSION}.tar.gz"
SAMPLE_SHA256 = "5d4223ef93973bc36d710869d11e7742ead2c154c72f7f9edcaaadd5b6c4bd03"
_PREFIX = f"{PACKAGE}-{VERSION}/"
_REF = f"{_PREFIX}tests/reference_files/"

# path inside the archive (relative to tests/reference_files/) -> description for SAMPLE.md
SAMPLE_FILES: dict[str, str] = {
    "example_ct.nii.gz": "CT, NIfTI int32, 122x101x112 at 3 mm isotropic, RAS (abdomen/thorax).",
    "example_ct_sm.nii.gz": "CT, NIfTI int16, 122x101x30 at 3 mm: a smaller 30-slice crop of a similar scan.",
    "example_ct_dicom/": "CT DICOM series, 20 slices 512x512, 0.977x0.977 mm, 2 mm step, JPEG 2000 lossless; "
    "SeriesInstanceUID/StudyInstanceUID are blank (anonymised).",
    "example_seg_dicom.nii.gz": "TotalSegmentator 'total' (fast) multilabel output for example_ct_dicom, stored LAS "
    "(dcm2niix convention) on the DICOM grid.",
    "example_seg_fast_force_split.nii.gz": "TotalSegmentator 'total' (fast, force split) multilabel output for "
    "example_ct.nii.gz (same grid).",
    "example_seg.nii.gz": "TotalSegmentator 'total' multilabel output for example_ct_sm.nii.gz (same grid).",
    "example_seg_fast.nii.gz": "TotalSegmentator 'total' (fast) multilabel output for example_ct_sm.nii.gz.",
    "example_seg_roi_subset.nii.gz": "TotalSegmentator roi_subset (liver=5 only) for example_ct_sm.nii.gz.",
}
_EXTRA = {"LICENSE": "TotalSegmentator's license (Apache-2.0), which covers these files."}
_COMPLETE = ".complete"
DATALIST = "datalist.json"
# The real-data experiment of issue #3 §4: train on one patient, validate on the other (the DICOM series).
_DATALIST = {
    "description": "TotalSegmentator sample: masks are TotalSegmentator output with its 'total' ids "
    "(remap with --label-map totalseg_to_btcv)",
    "training": [{"image": "example_ct.nii.gz", "label": "example_seg_fast_force_split.nii.gz"}],
    "validation": [{"image": "example_ct_dicom", "label": "example_seg_dicom.nii.gz"}],
}


def sample_cache_dir() -> Path:
    """``$ASA_CACHE_DIR/sample`` if set, else ``~/.cache/asa-ct/sample``."""
    root = os.environ.get("ASA_CACHE_DIR")
    base = Path(root).expanduser() if root else Path.home() / ".cache" / "asa-ct"
    return base / "sample"


def fetch_sample_data(out: Path | None = None) -> Path:
    """Return a folder with the sample scans/masks, downloading and extracting them on first use.

    A second call with the same ``out`` finds the completion marker and does nothing.
    """
    dest = Path(out).expanduser() if out is not None else sample_cache_dir()
    if (dest / _COMPLETE).is_file():
        _write_datalist(dest)
        return dest
    with tempfile.TemporaryDirectory(prefix="asa-sample-") as tmp:
        archive = _download(Path(tmp))
        _verify(archive)
        staging = Path(tmp) / "staging"
        _extract(archive, staging)
        dest.mkdir(parents=True, exist_ok=True)
        for item in staging.iterdir():
            target = dest / item.name
            if target.is_dir():
                shutil.rmtree(target)
            elif target.exists():
                target.unlink()
            shutil.move(str(item), str(target))
    (dest / _COMPLETE).write_text(f"{ARCHIVE_NAME} sha256={SAMPLE_SHA256}\n")
    _write_datalist(dest)
    return dest


def _write_datalist(dest: Path) -> None:
    """A MONAI datalist (paths relative to ``dest``) for ``asa finetune`` / ``asa evaluate`` on the sample."""
    path = dest / DATALIST
    if not path.is_file():
        path.write_text(json.dumps(_DATALIST, indent=1))


def _download(tmp: Path) -> Path:
    """``pip download`` the pinned sdist (pip handles proxies/indexes configured for this machine)."""
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--no-binary=:all:",
        "--disable-pip-version-check",
        f"{PACKAGE}=={VERSION}",
        "-d",
        str(tmp),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    archive = tmp / ARCHIVE_NAME
    if proc.returncode != 0 or not archive.is_file():
        raise RuntimeError(f"downloading {ARCHIVE_NAME} failed (exit {proc.returncode}):\n{proc.stderr[-2000:]}")
    return archive


def _verify(archive: Path) -> None:
    digest = hashlib.sha256()
    with archive.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    if digest.hexdigest() != SAMPLE_SHA256:
        raise RuntimeError(f"sha256 mismatch for {archive}: got {digest.hexdigest()}, expected {SAMPLE_SHA256}")


def _wanted(name: str) -> str | None:
    """Destination (relative) for an archive member we keep, else None."""
    if name == f"{_PREFIX}LICENSE":
        return "LICENSE"
    if not name.startswith(_REF):
        return None
    rel = name[len(_REF) :]
    for key in SAMPLE_FILES:
        if rel == key or (key.endswith("/") and rel.startswith(key) and rel != key):
            return rel
    return None


def _extract(archive: Path, staging: Path) -> None:
    """Copy only the wanted members (regular files, no links, no path tricks) into ``staging``."""
    staging.mkdir(parents=True)
    class_map_src = None
    with tarfile.open(archive, "r:gz") as tar:
        for member in tar:
            if member.name == f"{_PREFIX}totalsegmentator/map_to_binary.py" and member.isfile():
                fh = tar.extractfile(member)
                class_map_src = fh.read().decode("utf-8") if fh else None
                continue
            rel = _wanted(member.name)
            if rel is None or not member.isfile() or ".." in Path(rel).parts:
                continue
            target = staging / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            fh = tar.extractfile(member)
            if fh is None:
                continue
            with target.open("wb") as out:
                shutil.copyfileobj(fh, out)
    if class_map_src is not None:
        labels = _total_class_map(class_map_src)
        (staging / "labels_total.json").write_text(json.dumps(labels, indent=1))
    (staging / "SAMPLE.md").write_text(_sample_md())


def _total_class_map(source: str) -> dict[str, str]:
    """``class_map['total']`` from TotalSegmentator's map_to_binary.py, parsed (never executed)."""
    tree = ast.parse(source)
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "class_map" for t in node.targets):
            value = node.value
            if isinstance(value, ast.Dict):
                for k, v in zip(value.keys, value.values, strict=True):
                    if isinstance(k, ast.Constant) and k.value == "total":
                        return {str(i): str(n) for i, n in ast.literal_eval(v).items()}
    return {}


def _sample_md() -> str:
    lines = [
        f"# ASA-CT real CT sample (from {ARCHIVE_NAME}, sha256 {SAMPLE_SHA256})",
        "",
        "Extracted from the TotalSegmentator source package on PyPI (tests/reference_files). License: Apache-2.0",
        "(see LICENSE). Medical image data: do not commit it to a repository.",
        "",
        "**All masks/segmentations are TotalSegmentator model output, not manual annotations.** Label ids follow",
        "TotalSegmentator v2 task 'total' (labels_total.json; e.g. 1 spleen, 2 kidney_right, 3 kidney_left,",
        "5 liver, 6 stomach, 52 aorta).",
        "",
        "| file | what it is |",
        "|---|---|",
    ]
    lines += [f"| `{name}` | {desc} |" for name, desc in {**SAMPLE_FILES, **_EXTRA}.items()]
    lines += [
        "| `labels_total.json` | id -> name of TotalSegmentator's 'total' task (from map_to_binary.py). |",
        f"| `{DATALIST}` | MONAI datalist: train on `example_ct.nii.gz`, validate on the DICOM series. |",
        "",
    ]
    return "\n".join(lines)
