"""Helpers for the inference tests: models whose answer is known, tiny model directories, scans.

``ThresholdNet`` is a per-voxel model (label = how many HU thresholds a voxel exceeds), so every test
that uses it knows the exact mask a correct pipeline must produce, in any orientation. SwinUNETR model
directories (feature size 12) cover the real network, the model-directory contract and the CLI.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from torch import nn

from models.data.phantom import generate_phantom
from models.modeldir import (
    ModelSpec,
    Preprocessing,
    SegNetwork,
    build_segmentation_network,
    labels_from_names,
    save_model,
)

HU_MIN, HU_MAX = -175.0, 250.0


class ThresholdNet(nn.Module):
    """Logit of class c = sum over i < c of k * (x - t_i): the argmax is the number of thresholds below x.

    ``thresholds_hu`` are in HU (increasing); the input is the [0, 1] HU window of the model spec.
    """

    def __init__(self, thresholds_hu: Sequence[float], k: float = 200.0) -> None:
        super().__init__()
        t = (torch.tensor(thresholds_hu, dtype=torch.float32) - HU_MIN) / (HU_MAX - HU_MIN)
        self.register_buffer("t", t)
        self.k = k
        self.dummy = nn.Parameter(torch.zeros(()))  # so .parameters() is not empty

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        steps = self.k * (x - self.t.view(1, -1, 1, 1, 1).to(x.dtype))  # (B, n_thresholds, X, Y, Z)
        zero = torch.zeros_like(x)
        return torch.cat([zero, torch.cumsum(steps, dim=1)], dim=1)


def threshold_labels(hu: np.ndarray, thresholds_hu: Sequence[float]) -> np.ndarray:
    """What ThresholdNet must produce on ``hu`` (voxels clipped to the HU window, as the model sees them)."""
    return np.searchsorted(np.asarray(thresholds_hu), np.clip(hu, HU_MIN, HU_MAX), side="right").astype(np.uint8)


def threshold_spec(names: Sequence[str], spacing: Sequence[float], roi: int = 32) -> ModelSpec:
    labels = labels_from_names({0: "background", **{i + 1: n for i, n in enumerate(names)}})
    return ModelSpec(
        labels=labels,
        network=SegNetwork(feature_size=12),
        preprocessing=Preprocessing(spacing=tuple(spacing), hu_min=HU_MIN, hu_max=HU_MAX, roi=(roi, roi, roi)),
    )


def swin_model_dir(
    directory: Path, names: Sequence[str] = ("liver", "spleen", "bone"), roi: int = 32,
    spacing: Sequence[float] = (1.5, 1.5, 2.0), seed: int = 0, balance_on: np.ndarray | None = None,
) -> Path:
    """A feature-size-12 SwinUNETR model directory with random weights.

    ``balance_on`` (a (1, 1, X, Y, Z) input in [0, 1]): the output bias is set so that every class wins
    on part of that input (each class's logits are centred on their median there), so the argmax
    depends on the image instead of one class winning everywhere: non-trivial masks.
    """
    spec = threshold_spec(names, spacing, roi=roi)
    torch.manual_seed(seed)
    net = build_segmentation_network(spec).eval()
    if balance_on is not None:
        with torch.no_grad():
            logits = net(torch.as_tensor(balance_on, dtype=torch.float32))
            med = logits.flatten(2).median(dim=2).values[0]
            net.out.conv.conv.bias -= med  # type: ignore[operator]
    return save_model(directory, net, spec)


def write_nifti(path: Path, data: np.ndarray, affine: np.ndarray) -> Path:
    img = nib.Nifti1Image(np.asarray(data), affine)
    img.set_sform(affine, code=1)
    img.set_qform(affine, code=1)
    nib.save(img, str(path))
    return path


def reoriented(data: np.ndarray, affine: np.ndarray, perm: Sequence[int], flips: Sequence[bool]) -> tuple[
    np.ndarray, np.ndarray
]:
    """The same physical volume stored with permuted and flipped voxel axes (new data, new affine).

    New axis a is old axis ``perm[a]``, reversed where ``flips[a]``.
    """
    out = np.transpose(data, perm)
    new_aff = np.zeros((4, 4))
    new_aff[3, 3] = 1.0
    new_aff[:3, 3] = affine[:3, 3]
    for a, (p, f) in enumerate(zip(perm, flips, strict=True)):
        col = affine[:3, p].copy()
        if f:
            out = np.flip(out, axis=a)
            new_aff[:3, 3] += col * (data.shape[p] - 1)
            col = -col
        new_aff[:3, a] = col
    return np.ascontiguousarray(out), new_aff


def small_phantom(seed: int = 3) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A coarse abdominal phantom (64 x 64 x 40 at 5.4 x 5.4 x 6 mm): HU, labels, RAS affine."""
    ph = generate_phantom(seed, shape=(64, 64, 40), spacing=(5.4, 5.4, 6.0))
    return ph.ct, ph.labels, ph.affine


def dice(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(bool), b.astype(bool)
    denom = a.sum() + b.sum()
    return 1.0 if denom == 0 else float(2 * (a & b).sum() / denom)
