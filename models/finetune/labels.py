"""Which labels a finetuned model predicts, and how a dataset's label ids are mapped onto them.

Why here and not in the dataset readers: the same scans can be finetuned for different label sets
(TotalSegmentator's 117 classes reduced to the 13 BTCV organs, say). A label map is a JSON or YAML
file ``{source_id: target_id}``; source ids it does not list become background (0). Keys starting
with ``_`` are comments. The model's label set is, in order of precedence: the map's targets (named
by the map's optional ``_names`` entry, else BTCV names where the id is a BTCV organ), the dataset's
own ``labels`` (dataset.json), else the 13 BTCV organs.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from models.data.datasets import Dataset
from models.data.labels import BTCV_LABELS
from models.modeldir import LabelInfo, btcv_labels, labels_from_names

MAPS_DIR = Path(__file__).resolve().parents[1] / "data" / "maps"
"""Label maps shipped with the package (``totalseg_to_btcv.json``)."""


def _int_id(raw: Any, path: Path, what: str) -> int:
    try:
        value = int(raw)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{path}: {what} {raw!r} is not an integer label id") from exc
    if value < 0 or str(value) != str(raw).strip():
        raise ValueError(f"{path}: {what} {raw!r} is not a non-negative integer label id")
    return value


def resolve_label_map_path(path: Path | str) -> Path:
    """A path as given, or the name of a shipped map (``totalseg_to_btcv``)."""
    p = Path(path)
    if p.exists():
        return p
    for candidate in (MAPS_DIR / p.name, MAPS_DIR / f"{p.name}.json"):
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(f"--label-map {path}: no such file (shipped maps: {shipped_maps()})")


def shipped_maps() -> list[str]:
    return sorted(p.stem for p in MAPS_DIR.glob("*.json"))


def load_label_map(path: Path | str) -> tuple[dict[int, int], dict[int, str]]:
    """``{source_id: target_id}`` and the target names the file gives (``_names``; may be empty)."""
    p = resolve_label_map_path(path)
    try:
        raw = json.loads(p.read_text()) if p.suffix.lower() == ".json" else yaml.safe_load(p.read_text())
    except (ValueError, yaml.YAMLError) as exc:
        raise ValueError(f"{p}: not valid JSON/YAML ({exc})") from exc
    if not isinstance(raw, dict):
        raise ValueError(f"{p}: a label map is a mapping {{source_id: target_id}}, got {type(raw).__name__}")
    mapping = {
        _int_id(k, p, "source id"): _int_id(v, p, f"target of {k}")
        for k, v in raw.items()
        if not str(k).startswith("_")
    }
    if not mapping:
        raise ValueError(f"{p}: the label map lists no ids")
    names = raw.get("_names") or {}
    if not isinstance(names, dict):
        raise ValueError(f"{p}: '_names' must map target ids to names")
    return mapping, {_int_id(k, p, "name id"): str(v) for k, v in names.items()}


def lookup_table(mapping: dict[int, int], max_source: int | None = None) -> np.ndarray:
    """A LUT with ``lut[source] = target`` (0 for unlisted ids) covering ids 0..max_source."""
    size = max(max(mapping), max_source or 0) + 1
    lut = np.zeros(size, dtype=np.int64)
    for src, dst in mapping.items():
        lut[src] = dst
    return lut


def apply_label_map(label: np.ndarray, mapping: dict[int, int]) -> np.ndarray:
    """Remap a label volume: listed ids to their targets, every other id to background."""
    arr = np.asarray(label)
    if arr.size and arr.min() < 0:
        raise ValueError(f"label volume has negative ids (min {arr.min()})")
    lut = lookup_table(mapping, int(arr.max()) if arr.size else 0)
    return lut[arr.astype(np.int64)]


def model_labels(dataset: Dataset, mapping: dict[int, int] | None, map_names: dict[int, str]) -> dict[int, LabelInfo]:
    """The label set of the finetuned model (background included, ids 0..N-1); ``ValueError`` if unusable."""
    if mapping is not None:
        n = max(mapping.values())
        names = {0: "background"}
        for i in range(1, n + 1):
            names[i] = map_names.get(i) or BTCV_LABELS.get(i) or f"label_{i}"
        return labels_from_names(names)
    if dataset.labels:
        ids = sorted(dataset.labels)
        if ids != list(range(1, len(ids) + 1)):
            raise ValueError(
                f"{dataset.name}: label ids {ids} are not 1..N without gaps; pass --label-map to renumber them"
            )
        return labels_from_names({0: "background", **dataset.labels})
    return btcv_labels()


def source_label_names(
    dataset_labels: dict[int, str], mapping: dict[int, int] | None, model_names: dict[int, str]
) -> dict[int, str]:
    """What the dataset's label ids are called, before any label map: what DICOM-SEG segments and RTSTRUCT ROIs are
    matched to.

    The dataset's own ``labels``; without a label map, the model's organ names (its ids are then the dataset's);
    else none are known, and a DICOM-SEG or RTSTRUCT label is refused with a message saying so.
    """
    if dataset_labels:
        return dict(dataset_labels)
    return dict(model_names) if mapping is None else {}


def check_labelled(dataset: Dataset) -> None:
    """Finetuning needs a label map for every case: say which cases lack one."""
    missing = [c.id for c in dataset.cases if c.label is None]
    if missing:
        shown = ", ".join(missing[:5]) + (f" (and {len(missing) - 5} more)" if len(missing) > 5 else "")
        raise ValueError(
            f"{dataset.name}: {len(missing)} of {len(dataset.cases)} cases have no label map ({shown}); "
            "finetuning needs labelled data (an MSD/nnU-Net dataset or a datalist with 'label' entries)"
        )
