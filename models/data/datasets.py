"""Dataset readers: turn a folder or a JSON file into a list of cases (image and label paths).

Why one entry point: users point ``asa`` at whatever they have (a folder of scans, a Medical
Segmentation Decathlon task, an nnU-Net v2 raw dataset, the MONAI/Swin UNETR BTCV datalist) and should
not have to say which. :func:`load_dataset` recognises the layout, checks that every referenced file
exists and fails with a message naming the file and the problem. Readers only index files: volumes are
loaded later, by the CT reader.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

SCAN_SUFFIXES: tuple[str, ...] = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")
"""Single-file (or header) scan formats counted as one case each in a plain folder."""

_MAX_LISTED = 5  # files named in an error message
_MAX_PROBED = 64  # extensionless files probed for the DICOM preamble per folder


@dataclass
class Case:
    """One scan and, when annotated, its label map (a DICOM series is a folder path; multi-channel: a list)."""

    id: str
    image: Path | list[Path]
    label: Path | None = None


@dataclass
class Dataset:
    """The cases of one split of a dataset; ``labels`` maps label id -> name ({} when unlabelled)."""

    cases: list[Case]
    labels: dict[int, str]
    name: str
    root: Path
    format: str = "folder"  # folder | msd | nnunetv2 | monai-datalist

    def __len__(self) -> int:
        return len(self.cases)

    @property
    def labelled(self) -> bool:
        """Whether every case has a label map."""
        return bool(self.cases) and all(c.label is not None for c in self.cases)


# ----------------------------------------------------------------------------------------------------------
# file-type helpers


def scan_suffix(path: Path) -> str | None:
    """The scan suffix of ``path`` (``.nii.gz`` counts as one), or None when it is no scan file."""
    name = path.name.lower()
    return next((s for s in SCAN_SUFFIXES if name.endswith(s)), None)


def strip_suffix(name: str) -> str:
    """A file name without its (possibly double) scan/archive suffix: the case id."""
    low = name.lower()
    for s in (*SCAN_SUFFIXES, ".zip", ".dcm"):
        if low.endswith(s):
            return name[: -len(s)]
    return name


def is_dicom_file(path: Path) -> bool:
    """A ``.dcm`` file, or any file with the 'DICM' magic at byte 128 (DICOM files often lack a suffix)."""
    if path.suffix.lower() == ".dcm":
        return True
    try:
        with path.open("rb") as f:
            head = f.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:] == b"DICM"


def is_dicom_folder(folder: Path) -> bool:
    """Whether a folder (searched recursively) holds DICOM files; probes a bounded number of files."""
    probed = 0
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames.sort()
        for fn in sorted(filenames):
            p = Path(dirpath) / fn
            if p.suffix.lower() == ".dcm":
                return True
            if scan_suffix(p) or fn.startswith("."):
                continue
            if probed < _MAX_PROBED:
                probed += 1
                if is_dicom_file(p):
                    return True
    return False


def _missing_error(source: Path, missing: list[Path], total: int) -> ValueError:
    shown = ", ".join(str(p) for p in missing[:_MAX_LISTED])
    more = f" (and {len(missing) - _MAX_LISTED} more)" if len(missing) > _MAX_LISTED else ""
    return ValueError(f"{source}: {len(missing)} of {total} referenced files are missing: {shown}{more}")


def _check_exist(source: Path, cases: list[Case]) -> None:
    paths: list[Path] = []
    for c in cases:
        paths.extend(c.image if isinstance(c.image, list) else [c.image])
        if c.label is not None:
            paths.append(c.label)
    missing = [p for p in paths if not p.exists()]
    if missing:
        raise _missing_error(source, missing, len(paths))


def _nonempty(ds: Dataset, source: Path, what: str) -> Dataset:
    if not ds.cases:
        raise ValueError(f"{source}: no cases found ({what})")
    return ds


def _unique_ids(cases: list[Case]) -> list[Case]:
    """Make case ids unique (``a``, ``a_1``...) without reordering: two files may share a stem."""
    seen: dict[str, int] = {}
    out = []
    for c in cases:
        n = seen.get(c.id, 0)
        seen[c.id] = n + 1
        out.append(c if n == 0 else dataclasses.replace(c, id=f"{c.id}_{n}"))
    return out


# ----------------------------------------------------------------------------------------------------------
# readers


def read_scan_folder(folder: Path, split: str = "training") -> Dataset:
    """A plain folder of unlabelled scans: scan files, DICOM series folders and DICOM zips, one case each.

    Subfolders without DICOM are searched for scan files too (ids then carry the relative path), so a
    ``patient/scan.nii.gz`` tree works as well as a flat folder.
    """
    if split != "training":
        raise ValueError(f"{folder}: a plain folder of scans has no '{split}' split (only 'training')")
    cases: list[Case] = []

    def visit(d: Path, prefix: str) -> None:
        for p in sorted(d.iterdir()):
            if p.name.startswith("."):
                continue
            if p.is_dir():
                if is_dicom_folder(p):
                    cases.append(Case(prefix + p.name, p))
                else:
                    visit(p, f"{prefix}{p.name}_")
            elif scan_suffix(p) or p.suffix.lower() == ".zip":
                cases.append(Case(prefix + strip_suffix(p.name), p))

    visit(folder, "")
    ds = Dataset(_unique_ids(cases), {}, folder.name, folder, "folder")
    return _nonempty(ds, folder, f"looked for {', '.join(SCAN_SUFFIXES)}, .zip files and DICOM folders")


def _parse_msd_labels(source: Path, raw: Any) -> dict[int, str]:
    """MSD labels {"0": "background", "1": "spleen"} -> {1: "spleen"} (background dropped)."""
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ValueError(f"{source}: 'labels' must be an object of id -> name, got {type(raw).__name__}")
    try:
        labels = {int(k): str(v) for k, v in raw.items()}
    except (TypeError, ValueError) as e:
        raise ValueError(f"{source}: 'labels' keys must be integer ids (MSD style), got {list(raw)[:5]}") from e
    return {k: v for k, v in sorted(labels.items()) if k != 0}


def _resolve(base: Path, rel: str) -> Path:
    return Path(rel) if os.path.isabs(rel) else (base / rel).resolve()


def _datalist_cases(source: Path, entries: Any, base: Path, split: str) -> list[Case]:
    """Entries of an MSD/MONAI split: dicts with image (str or list) and optional label, or bare strings."""
    if not isinstance(entries, list):
        raise ValueError(f"{source}: split '{split}' must be a list, got {type(entries).__name__}")
    cases = []
    for i, e in enumerate(entries):
        if isinstance(e, str):
            e = {"image": e}
        if not isinstance(e, dict) or "image" not in e:
            raise ValueError(f"{source}: entry {i} of '{split}' has no 'image': {str(e)[:80]}")
        img = e["image"]
        image: Path | list[Path] = [_resolve(base, s) for s in img] if isinstance(img, list) else _resolve(base, img)
        if isinstance(image, list) and len(image) == 1:
            image = image[0]
        label = _resolve(base, e["label"]) if e.get("label") else None
        first = image[0] if isinstance(image, list) else image
        cases.append(Case(strip_suffix(first.name), image, label))
    return _unique_ids(cases)


def read_datalist(source: Path, spec: dict[str, Any], split: str = "training", base_dir: Path | None = None) -> Dataset:
    """An MSD ``dataset.json`` or a MONAI datalist (Swin UNETR's BTCV ``dataset_0.json``).

    Both list cases per split with paths relative to a base folder (the JSON's folder unless
    ``base_dir`` says otherwise, as MONAI's ``load_decathlon_datalist`` allows).
    """
    splits = [k for k, v in spec.items() if isinstance(v, list) and k in ("training", "validation", "test")]
    if split not in spec or not isinstance(spec[split], list):
        raise ValueError(f"{source}: unsupported split '{split}' (this file has: {', '.join(splits) or 'none'})")
    base = (base_dir or source.parent).resolve()
    cases = _datalist_cases(source, spec[split], base, split)
    is_msd = "modality" in spec and "labels" in spec
    ds = Dataset(
        cases,
        _parse_msd_labels(source, spec.get("labels")),
        str(spec.get("name") or base.name),
        base,
        "msd" if is_msd else "monai-datalist",
    )
    _nonempty(ds, source, f"split '{split}' is empty")
    _check_exist(source, ds.cases)
    return ds


def read_nnunet_v2(source: Path, spec: dict[str, Any], split: str = "training") -> Dataset:
    """An nnU-Net v2 raw dataset: ``imagesTr/CASE_XXXX<ending>`` channels, ``labelsTr/CASE<ending>``.

    ``split`` is ``training`` (imagesTr/labelsTr) or ``test`` (imagesTs, labelsTs when present). A
    ``dataset`` entry in the JSON (explicit case list) is honoured for the training split.
    """
    root = source.parent
    ending = spec.get("file_ending", ".nii.gz")
    channels = spec.get("channel_names", {})
    try:
        labels = {int(v): str(k) for k, v in spec.get("labels", {}).items() if not isinstance(v, list)}
    except (TypeError, ValueError) as e:
        raise ValueError(f"{source}: nnU-Net 'labels' must map names to integer ids") from e
    labels = {k: v for k, v in sorted(labels.items()) if k != 0}
    folders = {"training": ("imagesTr", "labelsTr"), "test": ("imagesTs", "labelsTs")}
    if split not in folders:
        raise ValueError(f"{source}: unsupported split '{split}' for an nnU-Net dataset (training, test)")
    img_dir, lab_dir = (root / f for f in folders[split])
    cases: list[Case] = []
    if split == "training" and isinstance(spec.get("dataset"), dict):
        for cid, e in sorted(spec["dataset"].items()):
            imgs = [_resolve(root, p) for p in e.get("images", [])]
            lab = _resolve(root, e["label"]) if e.get("label") else None
            cases.append(Case(cid, imgs[0] if len(imgs) == 1 else imgs, lab))
    else:
        if not img_dir.is_dir():
            raise ValueError(f"{source}: nnU-Net dataset has no {img_dir.name}/ folder at {img_dir}")
        pat = re.compile(r"^(.+)_(\d{4})" + re.escape(ending) + "$")
        by_case: dict[str, list[tuple[int, Path]]] = {}
        for p in sorted(img_dir.iterdir()):
            m = pat.match(p.name)
            if m:
                by_case.setdefault(m.group(1), []).append((int(m.group(2)), p))
        n_ch = max(len(channels), 1)
        for cid, chans in sorted(by_case.items()):
            chans.sort()
            if len(chans) != n_ch:
                raise ValueError(
                    f"{source}: case '{cid}' has {len(chans)} channel files in {img_dir.name}/, "
                    f"channel_names lists {n_ch}"
                )
            imgs = [p for _, p in chans]
            lab: Path | None = lab_dir / f"{cid}{ending}"
            if split == "test" and not lab_dir.is_dir():
                lab = None
            cases.append(Case(cid, imgs[0] if len(imgs) == 1 else imgs, lab))
    name = str(spec.get("name") or root.name)
    ds = Dataset(cases, labels, name, root, "nnunetv2")
    _nonempty(ds, source, f"no files matching CASE_XXXX{ending} in {img_dir}")
    _check_exist(source, ds.cases)
    return ds


def _read_json(path: Path) -> dict[str, Any]:
    try:
        spec = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from e
    except OSError as e:
        raise ValueError(f"{path}: cannot read ({e})") from e
    if not isinstance(spec, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(spec).__name__}")
    return spec


def json_kind(spec: dict[str, Any]) -> str | None:
    """'nnunetv2', 'datalist' (MSD or MONAI) or None for a JSON that describes no dataset."""
    if "channel_names" in spec or ("file_ending" in spec and "labels" in spec):
        return "nnunetv2"
    for key in ("training", "validation", "test"):
        v = spec.get(key)
        # one well-formed entry is enough: malformed ones are then reported by the reader
        if isinstance(v, list) and any(isinstance(e, dict) and "image" in e for e in v):
            return "datalist"
    if isinstance(spec.get("training"), list) and ("modality" in spec or "labels" in spec):
        return "datalist"  # an MSD file with an empty split: reported as empty later
    return None


def _read_json_dataset(path: Path, split: str, base_dir: Path | None) -> Dataset:
    spec = _read_json(path)
    kind = json_kind(spec)
    if kind == "nnunetv2":
        return read_nnunet_v2(path, spec, split)
    if kind == "datalist":
        return read_datalist(path, spec, split, base_dir)
    raise ValueError(
        f"{path}: not an MSD dataset.json, nnU-Net v2 dataset.json or MONAI datalist "
        f"(top-level keys: {', '.join(sorted(spec)) or 'none'})"
    )


def load_dataset(path: Path | str, split: str = "training", base_dir: Path | None = None) -> Dataset:
    """Index the dataset at ``path``, whatever its layout; raises ``ValueError`` naming what is wrong.

    ``path`` may be a dataset folder, its ``dataset.json``, a datalist JSON, a plain folder of scans or a
    single scan. In a folder, ``dataset.json`` wins; otherwise a single datalist JSON (e.g. BTCV's
    ``dataset_0.json``) is used; otherwise the folder is read as unlabelled scans (sidecar JSONs such as
    dcm2niix's are ignored).
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise ValueError(f"{path}: no such file or folder")
    if path.is_file():
        if path.suffix.lower() == ".json":
            return _read_json_dataset(path, split, base_dir)
        if scan_suffix(path) or path.suffix.lower() == ".zip" or is_dicom_file(path):
            if split != "training":
                raise ValueError(f"{path}: a single scan has no '{split}' split (only 'training')")
            return Dataset([Case(strip_suffix(path.name), path)], {}, strip_suffix(path.name), path.parent, "folder")
        raise ValueError(f"{path}: not a dataset (expected a folder, a .json file or a scan file)")
    if (path / "dataset.json").is_file():
        return _read_json_dataset(path / "dataset.json", split, base_dir)
    lists = [p for p in sorted(path.glob("*.json")) if json_kind(_safe_json(p)) == "datalist"]
    if len(lists) > 1:
        raise ValueError(f"{path}: several datalist JSON files ({', '.join(p.name for p in lists)}); pass one")
    if lists:
        return _read_json_dataset(lists[0], split, base_dir)
    return read_scan_folder(path, split)


def _safe_json(path: Path) -> dict[str, Any]:
    try:
        spec = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return spec if isinstance(spec, dict) else {}


def split_holdout(dataset: Dataset, n: int, seed: int) -> tuple[Dataset, Dataset]:
    """Split off ``n`` held-out cases, chosen by ``seed`` (same seed, same split); order is preserved."""
    total = len(dataset.cases)
    if n < 0 or n >= total:
        raise ValueError(f"{dataset.name}: cannot hold out {n} of {total} cases (need 0 <= n < {total})")
    chosen = set(np.random.default_rng(seed).permutation(total)[:n].tolist())
    train = [c for i, c in enumerate(dataset.cases) if i not in chosen]
    held = [c for i, c in enumerate(dataset.cases) if i in chosen]
    return dataclasses.replace(dataset, cases=train), dataclasses.replace(dataset, cases=held)


__all__ = [
    "SCAN_SUFFIXES",
    "Case",
    "Dataset",
    "is_dicom_file",
    "is_dicom_folder",
    "json_kind",
    "load_dataset",
    "read_datalist",
    "read_nnunet_v2",
    "read_scan_folder",
    "split_holdout",
    "strip_suffix",
]
