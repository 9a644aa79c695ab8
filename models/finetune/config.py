"""One configuration model for finetuning, built exactly like :class:`models.config.PretrainConfig`.

A run is fully described by a :class:`FinetuneConfig`: preset, then YAML file, then ``a.b=value``
overrides, then CLI flags. It is saved resolved in the run directory and inside ``checkpoint.pt``, so
a resumed run rebuilds the same network, data pipeline and schedules.

Presets: ``btcv`` is the Swin UNETR BTCV recipe (the de facto protocol finetuning results are compared
on); ``cpu-demo`` shrinks it to a few minutes on a laptop.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, model_validator

from models.config import _Strict, build_layered
from models.data.labels import PORTAL_VENOUS_HU


class SegNetworkConfig(_Strict):
    """The segmentation Swin UNETR (one output channel per label, background included)."""

    feature_size: int = Field(48, ge=12, description="Swin UNETR feature size (multiple of 12; must match pretraining)")
    depths: tuple[int, int, int, int] = (2, 2, 2, 2)
    num_heads: tuple[int, int, int, int] = (3, 6, 12, 24)
    drop_path: float = Field(0.0, ge=0.0, lt=1.0, description="stochastic depth (BTCV recipe: 0)")
    use_checkpoint: bool = Field(False, description="gradient checkpointing in the Swin stages")
    fused_attention: bool = Field(True, description="MONAI's SDPA attention where it applies (validation)")

    @model_validator(mode="after")
    def _check(self) -> SegNetworkConfig:
        if self.feature_size % 12:
            raise ValueError(f"feature_size must be a multiple of 12, got {self.feature_size}")
        return self


class FinetuneDataConfig(_Strict):
    """Preprocessing (cached once per case), augmentation (per step) and the validation split."""

    spacing: tuple[float, float, float] = (1.5, 1.5, 2.0)
    hu_min: float = -175.0
    hu_max: float = 250.0
    foreground_crop: bool = Field(True, description="crop each case to the body (HU above hu_min) once, in the cache")
    roi: int = Field(96, description="training crop and sliding-window edge, voxels (multiple of 32)")
    num_samples: int = Field(4, ge=1, description="random crops per volume and step")
    pos: float = Field(1.0, ge=0.0, description="weight of crops centred on an organ voxel")
    neg: float = Field(1.0, ge=0.0, description="weight of crops centred on a background voxel")
    flip_prob: float = Field(0.2, ge=0.0, le=1.0, description="probability of a flip, per axis")
    rot90_prob: float = Field(0.2, ge=0.0, le=1.0)
    intensity_scale: float = Field(0.1, ge=0.0, le=1.0, description="random intensity scale factor amplitude")
    intensity_shift: float = Field(0.1, ge=0.0, le=1.0, description="random intensity offset amplitude")
    intensity_prob: float = Field(0.5, ge=0.0, le=1.0)
    contrast_prob: float = Field(
        0.0, ge=0.0, le=1.0, description="probability a crop's organs get a simulated contrast phase (native scans)"
    )
    contrast_hu: dict[str, float] = Field(
        default_factory=lambda: dict(PORTAL_VENOUS_HU),
        description="largest simulated enhancement per organ name, HU (default: portal-venous phase)",
    )
    slab_prob: float = Field(
        0.0, ge=0.0, le=1.0, description="probability a crop keeps only a random slab of slices along z (thin scans)"
    )
    slab_min_slices: int = Field(4, ge=1, description="thinnest slab kept by slab_prob, in slices")
    coarse_prob: float = Field(
        0.0, ge=0.0, le=1.0,
        description="probability a volume's crops come from it preprocessed at the fast spacing (2x), so the model "
        "also serves `asa segment --fast` and locates organs for --organs",
    )
    val_count: int | None = Field(None, ge=0, description="cases held out for validation (overrides val_fraction)")
    val_fraction: float = Field(0.2, ge=0.0, lt=1.0, description="share of cases held out for validation")
    cache_dir: Path | None = Field(None, description="where preprocessed cases are cached (default: RUN/cache)")
    cache_ram_mb: float = Field(
        2048.0, ge=0.0, description="hold the preprocessed data set in RAM when it fits; else memory-map the cache"
    )
    num_workers: int = Field(0, ge=0, description="DataLoader worker processes")

    @model_validator(mode="after")
    def _check(self) -> FinetuneDataConfig:
        if self.roi % 32 or self.roi < 64:
            raise ValueError(
                f"roi must be a multiple of 32 (Swin UNETR's 5 down-samplings) and at least 64 (instance norm "
                f"needs more than one voxel at 1/32 resolution), got {self.roi}"
            )
        if self.hu_max <= self.hu_min:
            raise ValueError("hu_max must be greater than hu_min")
        if self.pos + self.neg <= 0:
            raise ValueError("pos + neg must be positive")
        return self


class FinetuneOptimConfig(_Strict):
    """AdamW with linear warm-up then cosine to ``min_lr``."""

    lr: float = Field(1e-4, gt=0.0)
    weight_decay: float = Field(1e-5, ge=0.0)
    warmup_steps: int = Field(500, ge=0)
    min_lr: float = Field(0.0, ge=0.0)
    grad_clip: float | None = Field(None, gt=0.0, description="clip the gradient norm to this value")


class FinetuneLossConfig(_Strict):
    """DiceCE: λ_dice · soft Dice + λ_ce · cross-entropy (MONAI ``DiceCELoss``)."""

    dice: float = Field(1.0, ge=0.0)
    ce: float = Field(1.0, ge=0.0)


class FinetuneEvalConfig(_Strict):
    """Sliding-window validation: Dice per organ on the held-out cases, best mean Dice kept."""

    every: int = Field(500, ge=0, description="steps between validations (0: at the end only)")
    overlap: float = Field(0.5, ge=0.0, lt=1.0)
    sw_batch_size: int = Field(4, ge=1)
    mode: Literal["gaussian", "constant"] = "gaussian"


class FinetuneConfig(_Strict):
    """Everything that defines a finetuning run."""

    preset: str = "btcv"
    pretrained: str = Field("none", description="ASA run directory or checkpoint, or 'none' (random init)")
    transfer: Literal["encoder", "full"] = Field(
        "full", description="encoder: Swin encoder only; full: also the CNN encoders and decoders (not `out`)"
    )
    label_map: Path | None = Field(None, description="JSON/YAML {source_id: target_id}; unlisted ids become 0")
    network: SegNetworkConfig = SegNetworkConfig()
    data: FinetuneDataConfig = FinetuneDataConfig()
    optim: FinetuneOptimConfig = FinetuneOptimConfig()
    loss: FinetuneLossConfig = FinetuneLossConfig()
    eval: FinetuneEvalConfig = FinetuneEvalConfig()
    batch_size: int = Field(1, ge=1, description="volumes per step, global (each gives data.num_samples crops)")
    steps: int = Field(30000, ge=1, description="optimiser steps")
    n_train: int | None = Field(None, ge=1, description="train on the first K training cases only (by seed)")
    precision: Literal["fp32", "bf16"] = "fp32"
    seed: int = 0
    deterministic: bool = Field(
        False, description="deterministic kernels: a resumed run then repeats an uninterrupted one bit for bit"
    )
    log_every: int = Field(1, ge=1)
    checkpoint_every: int = Field(500, ge=1, description="optimiser steps between checkpoints")


PRESETS: dict[str, dict[str, Any]] = {
    "btcv": {},
    "cpu-demo": {
        "network": {"feature_size": 12},
        "data": {"roi": 64, "spacing": (3.0, 3.0, 4.0), "num_samples": 2, "val_count": 2, "cache_ram_mb": 512.0},
        "optim": {"lr": 5e-4, "warmup_steps": 10, "grad_clip": 3.0},
        "eval": {"every": 40, "sw_batch_size": 2},
        "steps": 80,
        "checkpoint_every": 20,
    },
}


def build_finetune_config(
    preset: str = "btcv",
    yaml_path: str | Path | None = None,
    overrides: list[str] | None = None,
    **fields: Any,
) -> FinetuneConfig:
    """A :class:`FinetuneConfig` from a preset and its overrides (see :func:`models.config.build_layered`)."""
    return build_layered(FinetuneConfig, PRESETS, preset, yaml_path, overrides, fields)
