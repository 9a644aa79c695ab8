"""Move the ASA teacher's weights into a segmentation Swin UNETR, and say exactly what moved.

Why a report: a transfer that silently loads nothing (another feature size, a renamed module) looks
like a working run and trains a random network. Every tensor of the target ends up in one bucket:

* ``transferred``: copied from the teacher's ``backbone.`` (its MONAI SwinUNETR);
* ``random``: left at its random initialisation (``out``, the label head, always; the CNN encoders and
  decoders with ``transfer="encoder"``; anything whose shape does not match);

and every teacher tensor that was not copied is named with the reason: ``heads`` (order head,
projectors: pretraining only), ``excluded`` (not part of this transfer mode, or the 1-channel ``out``),
``shape_mismatch`` (target has another shape) or ``unknown`` (no such key in the target).
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

log = logging.getLogger(__name__)

BACKBONE = "backbone."
ENCODER = "swinViT."
PATCH_EMBED = "swinViT.patch_embed.proj.weight"
HEAD = "out."  # the output conv: 1 channel in pretraining, one per label here
TransferMode = Literal["encoder", "full"]


@dataclass
class TransferReport:
    """What a transfer copied, skipped and left random (tensor names; counts in :meth:`summary`)."""

    source: str
    mode: str
    transferred: list[str] = field(default_factory=list)
    random: list[str] = field(default_factory=list)
    skipped_heads: list[str] = field(default_factory=list)
    skipped_excluded: list[str] = field(default_factory=list)
    skipped_shape: dict[str, dict[str, list[int]]] = field(default_factory=dict)
    skipped_unknown: list[str] = field(default_factory=list)
    transferred_params: int = 0
    random_params: int = 0

    def summary(self) -> dict[str, Any]:
        """Counts only: what logs, ``model.json`` and the CLI show."""
        return {
            "source": self.source,
            "mode": self.mode,
            "transferred": len(self.transferred),
            "transferred_params": self.transferred_params,
            "random": len(self.random),
            "random_params": self.random_params,
            "skipped_heads": len(self.skipped_heads),
            "skipped_excluded": len(self.skipped_excluded),
            "skipped_shape_mismatch": len(self.skipped_shape),
            "skipped_unknown": len(self.skipped_unknown),
        }

    def to_dict(self) -> dict[str, Any]:
        return {"summary": self.summary(), **asdict(self)}

    def write(self, path: Path) -> None:
        path.write_text(json.dumps(self.to_dict(), indent=2))


def find_checkpoint(source: Path) -> Path:
    """``source`` itself when a file, else ``source/checkpoint.pt``; ``FileNotFoundError`` naming what is missing."""
    source = Path(source)
    if not source.exists():
        raise FileNotFoundError(f"--pretrained {source}: no such run directory or checkpoint file")
    path = source / "checkpoint.pt" if source.is_dir() else source
    if not path.is_file():
        raise FileNotFoundError(f"--pretrained {source}: no checkpoint.pt in this directory (an ASA run?)")
    return path


def load_teacher_state(source: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The teacher state dict of an ASA run or checkpoint, and the pretraining config saved with it."""
    path = find_checkpoint(source)
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # a truncated or foreign file: say which
        raise ValueError(f"--pretrained {path}: cannot read the checkpoint ({exc})") from exc
    if not isinstance(ckpt, dict) or "teacher" not in ckpt:
        keys = list(ckpt)[:8] if isinstance(ckpt, dict) else type(ckpt).__name__
        raise ValueError(f"--pretrained {path}: not an ASA checkpoint (no 'teacher' weights; has {keys})")
    teacher = ckpt["teacher"]
    if not any(k.startswith(BACKBONE) for k in teacher):
        raise ValueError(f"--pretrained {path}: the teacher has no '{BACKBONE}' (SwinUNETR) weights")
    return teacher, dict(ckpt.get("config") or {})


def transfer_weights(
    net: nn.Module, teacher: dict[str, torch.Tensor], mode: TransferMode, source: str
) -> TransferReport:
    """Copy the teacher's backbone into ``net`` (a MONAI SwinUNETR) in place; report every tensor's fate.

    ``mode="encoder"`` copies ``swinViT.*`` only; ``"full"`` copies every backbone tensor except ``out.*``.
    """
    if mode not in ("encoder", "full"):
        raise ValueError(f"unknown transfer mode {mode!r}: use 'encoder' or 'full'")
    report = TransferReport(source=source, mode=mode)
    target = net.state_dict()
    load: dict[str, torch.Tensor] = {}
    for key, value in teacher.items():
        if not key.startswith(BACKBONE):
            report.skipped_heads.append(key)
            continue
        name = key[len(BACKBONE) :]
        if name.startswith(HEAD) or (mode == "encoder" and not name.startswith(ENCODER)):
            report.skipped_excluded.append(name)
        elif name not in target:
            report.skipped_unknown.append(name)
        elif tuple(target[name].shape) != tuple(value.shape):
            report.skipped_shape[name] = {"source": list(value.shape), "target": list(target[name].shape)}
        else:
            load[name] = value
    with torch.no_grad():
        for name, value in load.items():
            target[name].copy_(value.to(target[name].dtype))
    numel = {name: t.numel() for name, t in target.items()}
    report.transferred = sorted(load)
    report.random = sorted(set(target) - set(load))
    report.transferred_params = sum(numel[n] for n in report.transferred)
    report.random_params = sum(numel[n] for n in report.random)
    if PATCH_EMBED not in load:  # its shape follows the feature size: nothing else would fit either
        raise ValueError(
            f"--pretrained {source}: the Swin encoder does not fit this network ({len(report.skipped_shape)} shape "
            "mismatches): set network.feature_size (and depths/num_heads) to the pretraining run's"
        )
    s = report.summary()
    log.info(
        "transfer (%s) from %s: %d tensors (%d weights) transferred, %d left random (%d weights), skipped: "
        "%d heads, %d excluded, %d shape mismatch, %d unknown",
        mode, source, s["transferred"], s["transferred_params"], s["random"], s["random_params"],
        s["skipped_heads"], s["skipped_excluded"], s["skipped_shape_mismatch"], s["skipped_unknown"],
    )  # fmt: skip
    return report


def random_init_report(net: nn.Module) -> TransferReport:
    """The report of the random-init baseline (``--pretrained none``): everything random."""
    target = net.state_dict()
    report = TransferReport(source="none", mode="none", random=sorted(target))
    report.random_params = sum(t.numel() for t in target.values())
    log.info("no pretrained weights: %d tensors (%d weights) random", len(report.random), report.random_params)
    return report
