"""Label names given on the command line: a comma list, or a file that holds them (dataset.json and the like).

Why: a DICOM-SEG's segments and an RTSTRUCT's ROIs become label ids by name, so converting one needs the
label set, and users have it in whatever form their tools use: an MSD or nnU-Net ``dataset.json``, a
``{id: name}`` file, or just the names in order.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from models.data.labels import BTCV_LABELS

__all__ = ["parse_label_names"]


def _from_mapping(raw: dict[Any, Any], where: str) -> dict[int, str]:
    """``{"1": "liver"}`` (MSD, plain) or ``{"liver": 1}`` (nnU-Net); the background (id 0) is dropped."""
    try:
        if all(str(k).strip().lstrip("-").isdigit() for k in raw):
            names = {int(k): str(v) for k, v in raw.items()}
        else:
            names = {int(v): str(k) for k, v in raw.items() if not isinstance(v, list)}  # nnU-Net regions: lists
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{where}: labels must map integer ids to names (or names to ids), got {raw}") from exc
    if any(i < 0 for i in names):
        raise ValueError(f"{where}: label ids must not be negative, got {sorted(names)}")
    return {i: n for i, n in sorted(names.items()) if i != 0}


def parse_label_names(value: str | None) -> dict[int, str]:
    """Label id -> name from ``value``: a file (JSON/YAML; its ``labels`` entry when it has one), a comma list
    of names (ids 1, 2, ... in order), or None for the 13 BTCV organs."""
    if value is None:
        return dict(BTCV_LABELS)
    path = Path(value).expanduser()
    if path.is_file():
        try:
            raw = json.loads(path.read_text()) if path.suffix.lower() == ".json" else yaml.safe_load(path.read_text())
        except (ValueError, yaml.YAMLError) as exc:
            raise ValueError(f"{path}: not valid JSON/YAML ({exc})") from exc
        if isinstance(raw, dict) and isinstance(raw.get("labels"), dict):
            raw = raw["labels"]
        if not isinstance(raw, dict) or not raw:
            raise ValueError(f"{path}: no labels (expected {{id: name}}, or a dataset.json with 'labels')")
        return _from_mapping(raw, str(path))
    names = [n.strip() for n in value.split(",") if n.strip()]
    if not names or path.suffix.lower() in (".json", ".yaml", ".yml"):
        raise ValueError(f"--names {value}: no such file, and not a comma-separated list of names")
    return {i: n for i, n in enumerate(names, start=1)}
