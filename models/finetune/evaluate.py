"""Validation: sliding-window inference over whole preprocessed cases, Dice per organ.

Why on the preprocessed grid: it is what the training loop already holds (cached, foreground-cropped,
at the training spacing), so validating every few hundred steps costs inference only. The figures
are the usual "validation Dice" of the Swin UNETR recipe; a final evaluation on each scan's own grid
is inference's job.
"""

from __future__ import annotations

import math
from contextlib import nullcontext
from typing import Any

import numpy as np
import torch
from monai.inferers import sliding_window_inference
from monai.metrics import DiceMetric
from torch import nn

from models.data.transforms import THIN_SCAN_PADDING
from models.finetune.config import FinetuneConfig
from models.finetune.data import PairStore


def _nanmean(values: np.ndarray) -> float:
    finite = values[np.isfinite(values)]
    return float(finite.mean()) if finite.size else math.nan


@torch.no_grad()
def evaluate(
    net: nn.Module,
    store: PairStore,
    cfg: FinetuneConfig,
    organ_names: dict[int, str],
    device: torch.device,
) -> dict[str, Any]:
    """Dice of every organ on every case of ``store``.

    Returns ``mean_dice`` (mean over cases of the mean over the organs present in that case's ground
    truth), ``dice`` (organ name -> mean over the cases that contain it; None when none does) and
    ``per_case`` (one list per case, None for organs absent from its ground truth).
    """
    n_labels = len(organ_names) + 1
    metric = DiceMetric(include_background=False, reduction="none", ignore_empty=True, num_classes=n_labels)
    autocast = (
        torch.autocast(device_type=device.type, dtype=torch.bfloat16) if cfg.precision == "bf16" else nullcontext()
    )
    was_training = net.training
    net.eval()
    rows = []
    try:
        for i in range(len(store)):
            image = store.image(i)[None].to(device)
            label = store.label(i)[None].to(device)
            with autocast:
                logits = sliding_window_inference(
                    image,
                    roi_size=(cfg.data.roi,) * 3,
                    sw_batch_size=cfg.eval.sw_batch_size,
                    predictor=net,
                    overlap=cfg.eval.overlap,
                    mode=cfg.eval.mode,
                    padding_mode=THIN_SCAN_PADDING,
                )
            pred = torch.as_tensor(logits).float().argmax(dim=1, keepdim=True)
            rows.append(metric(y_pred=pred, y=label.long()).cpu().numpy()[0])
    finally:
        net.train(was_training)
    table = np.asarray(rows, dtype=np.float64).reshape(len(rows), n_labels - 1)
    per_case_mean = np.array([_nanmean(r) for r in table]) if len(rows) else np.array([])
    names = [organ_names[i] for i in sorted(organ_names)]
    return {
        "mean_dice": _nanmean(per_case_mean),
        "dice": {name: _none_if_nan(_nanmean(table[:, j])) for j, name in enumerate(names)},
        "per_case": [[_none_if_nan(v) for v in row] for row in table.tolist()],
        "cases": len(rows),
    }


def _none_if_nan(value: float) -> float | None:
    return None if not math.isfinite(value) else float(value)
