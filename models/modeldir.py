"""A finetuned segmentation model on disk: the contract between finetuning, inference and export.

A model directory is self-contained, so a worker, the viewer or a colleague can use it without
the run that made it::

    model.json   what the network is, its labels (names, colours), its preprocessing, provenance, metrics
    model.pt     the weights of ``SwinUNETR(in=1, out=len(labels))`` (a plain state dict)

Finetuning writes both (its run directory is a model directory; training state lives beside them
in ``checkpoint.pt``); inference and ``asa export-bundle`` only read them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

import torch
from monai.networks.nets import SwinUNETR
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from models.data.labels import BTCV_COLORS, BTCV_LABELS

FORMAT = "asa-ct-model/1"
SPEC_FILE = "model.json"
WEIGHTS_FILE = "model.pt"
FAST_SPACING_FACTOR = 2.0
"""``asa segment --fast`` (and ``--organs``' locating pass) resamples to this multiple of the model's spacing
(1.5x1.5x2 mm -> 3x3x4 mm): about 8x fewer voxels and windows, as with TotalSegmentator's ``--fast``."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class LabelInfo(_Strict):
    name: str
    color: tuple[int, int, int] = (255, 255, 0)


class SegNetwork(_Strict):
    """The Swin UNETR that maps a 1-channel CT to one logit per label."""

    feature_size: int = Field(48, ge=12)
    depths: tuple[int, int, int, int] = (2, 2, 2, 2)
    num_heads: tuple[int, int, int, int] = (3, 6, 12, 24)


class Preprocessing(_Strict):
    """How a scan becomes network input: RAS (the reader's canonical grid), spacing, HU window to [0, 1]."""

    spacing: tuple[float, float, float] = (1.5, 1.5, 2.0)
    hu_min: float = -175.0
    hu_max: float = 250.0
    roi: tuple[int, int, int] = (96, 96, 96)
    trained_fast: bool = Field(
        False,
        description="also trained at FAST_SPACING_FACTOR x spacing (finetune data.coarse_prob > 0), so --fast and "
        "--organs' locating pass run at a spacing the weights know; models without it run the fine pass instead",
    )

    @property
    def fast_spacing(self) -> tuple[float, float, float]:
        """The ``--fast`` spacing: :data:`FAST_SPACING_FACTOR` times :attr:`spacing`."""
        return (self.spacing[0] * FAST_SPACING_FACTOR, self.spacing[1] * FAST_SPACING_FACTOR,
                self.spacing[2] * FAST_SPACING_FACTOR)

    @model_validator(mode="after")
    def _check(self) -> Preprocessing:
        if any(r % 32 for r in self.roi):
            raise ValueError(f"roi must be a multiple of 32 on every axis, got {self.roi}")
        if self.hu_max <= self.hu_min:
            raise ValueError("hu_max must be greater than hu_min")
        return self


class ModelSpec(_Strict):
    format: Literal["asa-ct-model/1"] = FORMAT
    labels: dict[int, LabelInfo] = Field(description="label id -> name and colour, background (0) included")
    network: SegNetwork = SegNetwork()
    preprocessing: Preprocessing = Preprocessing()
    provenance: dict[str, Any] = Field(default_factory=dict, description="data, config, pretrained source, versions")
    metrics: dict[str, Any] = Field(default_factory=dict, description="validation figures of these weights")

    @field_validator("labels")
    @classmethod
    def _labels(cls, labels: dict[int, LabelInfo]) -> dict[int, LabelInfo]:
        if 0 not in labels:
            raise ValueError("labels must include the background, id 0")
        if sorted(labels) != list(range(len(labels))):
            raise ValueError(f"label ids must be 0..N-1 without gaps (one network output each), got {sorted(labels)}")
        return dict(sorted(labels.items()))

    @property
    def out_channels(self) -> int:
        return len(self.labels)

    @property
    def organ_names(self) -> dict[int, str]:
        """Label id -> name, background left out."""
        return {i: info.name for i, info in self.labels.items() if i != 0}


def btcv_labels() -> dict[int, LabelInfo]:
    """The 13 BTCV organs plus background, with the product's display colours."""
    return {0: LabelInfo(name="background", color=BTCV_COLORS[0])} | {
        i: LabelInfo(name=name, color=BTCV_COLORS[i]) for i, name in BTCV_LABELS.items()
    }


def labels_from_names(names: dict[int, str]) -> dict[int, LabelInfo]:
    """Label infos for any label set (e.g. a dataset.json's); BTCV colours where the id has one."""
    palette = list(BTCV_COLORS.values())
    out = {}
    for i, name in sorted(names.items()):
        color = BTCV_COLORS.get(i) if BTCV_LABELS.get(i) == name or i == 0 else None
        out[i] = LabelInfo(name=name, color=color or palette[1 + (i - 1) % (len(palette) - 1)])
    return out


def build_segmentation_network(spec: ModelSpec) -> SwinUNETR:
    """The bare ``SwinUNETR`` these weights belong to (no absolute position embedding: any roi loads)."""
    net = spec.network
    return SwinUNETR(
        in_channels=1,
        out_channels=spec.out_channels,
        feature_size=net.feature_size,
        depths=net.depths,
        num_heads=net.num_heads,
    )


def save_model(directory: Path, network: torch.nn.Module, spec: ModelSpec) -> Path:
    """Write ``model.pt`` then ``model.json`` (the spec last: a directory with a spec is complete)."""
    directory.mkdir(parents=True, exist_ok=True)
    tmp = directory / (WEIGHTS_FILE + ".tmp")
    torch.save({k: v.detach().cpu() for k, v in network.state_dict().items()}, tmp)
    tmp.replace(directory / WEIGHTS_FILE)
    spec_tmp = directory / (SPEC_FILE + ".tmp")
    spec_tmp.write_text(spec.model_dump_json(indent=2))
    spec_tmp.replace(directory / SPEC_FILE)
    return directory


def load_spec(directory: Path) -> ModelSpec:
    path = Path(directory) / SPEC_FILE
    if not path.exists():
        raise FileNotFoundError(f"{directory}: not a model directory (no {SPEC_FILE}; make one with `asa finetune`)")
    try:
        return ModelSpec.model_validate(json.loads(path.read_text()))
    except ValueError as exc:
        raise ValueError(f"{path}: invalid model description: {exc}") from exc


def load_model(directory: Path, map_location: str | torch.device = "cpu") -> tuple[SwinUNETR, ModelSpec]:
    """The network (eval mode, weights loaded strictly) and its spec."""
    spec = load_spec(directory)
    weights = Path(directory) / WEIGHTS_FILE
    if not weights.exists():
        raise FileNotFoundError(f"{directory}: {WEIGHTS_FILE} is missing")
    net = build_segmentation_network(spec)
    state = torch.load(weights, map_location=map_location, weights_only=True)
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ValueError(f"{weights}: weights do not match {SPEC_FILE} ({spec.network}): {exc}") from exc
    return net.eval(), spec
