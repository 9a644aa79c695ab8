"""One configuration model for ASA pretraining, shared by the CLI and (later) the REST API.

A run is fully described by a :class:`PretrainConfig`. It is built from a named preset, then a YAML
file, then individual ``field=value`` overrides, in that order, and saved resolved in the run
directory so that a checkpoint can always rebuild its model.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator

M = TypeVar("M", bound=BaseModel)
SUBVOLUME = 16  # edge of one ASA sub-volume (one 1/16-resolution Swin token), in voxels


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class NetworkConfig(_Strict):
    """The Swin UNETR backbone and the ASA heads."""

    feature_size: int = Field(48, ge=12, description="Swin UNETR feature size (multiple of 12)")
    depths: tuple[int, int, int, int] = (2, 2, 2, 2)
    num_heads: tuple[int, int, int, int] = (3, 6, 12, 24)
    drop_path: float = Field(0.1, ge=0.0, lt=1.0)
    projector_dim: int = Field(8192, ge=8, description="global projector output width")
    projector_hidden: int = Field(2048, ge=8, description="global projector hidden width")
    local_dim: int = Field(512, ge=8, description="local projector width")
    normalize_local: bool = Field(True, description="L2-normalise local embeddings (paper; ref code: no)")
    use_checkpoint: bool = Field(False, description="gradient checkpointing in the Swin stages")
    fused_attention: bool = Field(True, description="MONAI's SDPA attention where it applies (no grad)")

    @model_validator(mode="after")
    def _check(self) -> NetworkConfig:
        if self.feature_size % 12:
            raise ValueError(f"feature_size must be a multiple of 12, got {self.feature_size}")
        return self


class DataConfig(_Strict):
    """Preprocessing, as in the reference code unless changed (MONAI transforms, see models.data.transforms)."""

    spacing: tuple[float, float, float] = (1.5, 1.5, 2.0)
    hu_min: float = -175.0
    hu_max: float = 250.0
    roi: int = Field(128, description="phase-1 input and phase-2 crop edge, voxels (multiple of 32)")
    view: Literal["resize", "crop"] = Field(
        "resize", description="resize the whole scan to a cube (paper) or take random crops"
    )
    src_max_shift: int = Field(2, ge=0, description="phase-2 crop offsets: 0..N sub-volumes per axis")
    intensity_aug: float = Field(0.0, ge=0.0, le=0.5, description="random intensity scale/shift amplitude")
    cache_dir: Path | None = Field(None, description="where preprocessed scans are cached (default: RUN/cache)")
    num_workers: int = Field(0, ge=0, description="DataLoader worker processes (0 inside Celery tasks)")

    @model_validator(mode="after")
    def _check(self) -> DataConfig:
        if self.roi % 32:
            raise ValueError(f"roi must be a multiple of 32 (Swin UNETR's 5 down-samplings), got {self.roi}")
        if self.hu_max <= self.hu_min:
            raise ValueError("hu_max must be greater than hu_min")
        return self

    @property
    def grid(self) -> int:
        """Sub-volumes per axis of one network input."""
        return self.roi // SUBVOLUME

    @property
    def phase2_size(self) -> int:
        """Edge of the volume phase-2 crops are taken from (160 for roi 128 and shift 2)."""
        return self.roi + self.src_max_shift * SUBVOLUME


class LossConfig(_Strict):
    """The λ weights of the paper. Phase 2 = λ_global2·L_global + λ_local·L_local (ref code: (g + l) / 2)."""

    vop: float = Field(1.0, ge=0.0, description="λ_vop: sub-volume order prediction")
    var: float = Field(1.0, ge=0.0, description="λ_var: volume appearance recovery")
    global1: float = Field(1.0, ge=0.0, description="λ_global in phase 1")
    global2: float = Field(0.5, ge=0.0, description="λ_global in phase 2")
    local: float = Field(0.5, ge=0.0, description="λ_local in phase 2")


class OptimConfig(_Strict):
    """SGD (or AdamW) with linear warm-up then cosine to zero; EMA momentum on a cosine from ema_start to 1."""

    name: Literal["sgd", "adamw"] = Field("sgd", description="SGD (paper) or AdamW")
    lr: float = Field(1e-3, gt=0.0)
    momentum: float = Field(0.9, ge=0.0, lt=1.0)
    weight_decay: float = Field(0.0, ge=0.0)
    warmup_epochs: float = Field(5.0, ge=0.0)
    ema_start: float = Field(0.999, ge=0.0, le=1.0)
    grad_clip: float | None = Field(None, gt=0.0)


class PretrainConfig(_Strict):
    """Everything that defines an ASA pretraining run."""

    preset: str = "paper"
    network: NetworkConfig = NetworkConfig()
    data: DataConfig = DataConfig()
    loss: LossConfig = LossConfig()
    optim: OptimConfig = OptimConfig()
    batch_size: int = Field(12, ge=1, description="global batch size (split over processes)")
    epochs: int = Field(1000, ge=1, description="passes over the data, counting phase 1 and phase 2 separately")
    steps: int | None = Field(None, ge=1, description="stop after this many optimiser steps (overrides epochs)")
    alternate: Literal["epoch", "step"] = "epoch"
    teacher_input: Literal["original", "shuffled"] = Field(
        "original", description="phase-1 teacher input: original volume (paper) or shuffled (ref code)"
    )
    precision: Literal["fp32", "bf16"] = "fp32"
    seed: int = 0
    deterministic: bool = Field(
        False, description="deterministic kernels: a resumed run then repeats an uninterrupted one bit for bit"
    )
    log_every: int = Field(1, ge=1)
    checkpoint_every: int = Field(50, ge=1, description="optimiser steps between checkpoints")
    holdout: int = Field(0, ge=0, description="scans held out of training for the order-error evaluation")
    eval_every: int = Field(0, ge=0, description="steps between held-out evaluations (0: at the end only)")


PRESETS: dict[str, dict[str, Any]] = {
    "paper": {},
    "cpu-demo": {
        "network": {"feature_size": 12, "projector_dim": 256, "projector_hidden": 256, "local_dim": 64},
        "data": {"roi": 64, "spacing": (3.0, 3.0, 4.0), "intensity_aug": 0.0},
        "optim": {
            "name": "adamw",
            "lr": 5e-4,
            "weight_decay": 1e-5,
            "warmup_epochs": 2.0,
            "ema_start": 0.99,
            "grad_clip": 3.0,
        },
        "batch_size": 2,
        "epochs": 6,
        "checkpoint_every": 25,
        "holdout": 3,
        "eval_every": 40,
    },
}


def merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """Nested dicts merged key by key (``update`` wins); shared by every config built from layers."""
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def parse_override(item: str) -> dict[str, Any]:
    """``network.feature_size=24`` -> ``{"network": {"feature_size": 24}}`` (value parsed as YAML)."""
    if "=" not in item:
        raise ValueError(f"override {item!r} is not of the form field.path=value")
    path, raw = item.split("=", 1)
    value: Any = yaml.safe_load(raw)
    for key in reversed(path.strip().split(".")):
        value = {key: value}
    return value


_merge, _parse_override = merge, parse_override  # the names used before they were shared


def build_layered(
    model: type[M],
    presets: dict[str, dict[str, Any]],
    preset: str,
    yaml_path: str | Path | None = None,
    overrides: list[str] | None = None,
    fields: dict[str, Any] | None = None,
) -> M:
    """Preset, then YAML file, then ``a.b=value`` overrides, then keyword fields (CLI flags; None = unset).

    One layering for every config model (pretraining, finetuning), so their CLIs behave the same.
    """
    if preset not in presets:
        raise ValueError(f"unknown preset {preset!r}; choose one of {sorted(presets)}")
    data: dict[str, Any] = merge({"preset": preset}, presets[preset])
    if yaml_path is not None:
        loaded = yaml.safe_load(Path(yaml_path).read_text()) or {}
        if not isinstance(loaded, dict):
            raise ValueError(f"{yaml_path}: expected a mapping of config fields")
        data = merge(data, loaded)
    for item in overrides or []:
        data = merge(data, parse_override(item))
    data = merge(data, {k: v for k, v in (fields or {}).items() if v is not None})
    return model.model_validate(data)


def build_config(
    preset: str = "paper",
    yaml_path: str | Path | None = None,
    overrides: list[str] | None = None,
    **fields: Any,
) -> PretrainConfig:
    """A :class:`PretrainConfig` from a preset and its overrides (see :func:`build_layered`)."""
    return build_layered(PretrainConfig, PRESETS, preset, yaml_path, overrides, fields)


def save_config(config: BaseModel, path: Path) -> None:
    """Any run's resolved config as YAML (pretraining and finetuning alike)."""
    path.write_text(yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False))


def load_config(path: Path) -> PretrainConfig:
    return PretrainConfig.model_validate(yaml.safe_load(path.read_text()))
