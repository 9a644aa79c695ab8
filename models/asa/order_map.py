"""Order-prediction maps: where on a scan does a pretrained ASA model know where it is?

The scan is preprocessed and resized to the model's cube as in pretraining, its sub-volumes are
shuffled with a fixed seed (the pretext task) or left in place, and the order head predicts where
each sub-volume came from. Every figure is put back on the sub-volume's ORIGIN, then painted onto the
scan's own voxel grid, so the maps overlay the input in any viewer.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from models.asa import pretext
from models.asa.network import ASANetwork
from models.config import PretrainConfig
from models.data.transforms import make_view, preprocess
from models.io.reader import CTImage, save_nifti


@dataclass
class OrderMap:
    error_vox: np.ndarray  # (g, g, g) distance between predicted and true origin, voxels of the model input
    predicted: np.ndarray  # (g, g, g, 3) predicted origin of the content found at each cell, grid units
    grid: int
    baseline_vox: float  # error of always answering the grid centre

    @property
    def mean_error_vox(self) -> float:
        return float(self.error_vox.mean())


def load_network(checkpoint: dict[str, Any], which: str = "teacher") -> tuple[ASANetwork, PretrainConfig]:
    if which not in ("teacher", "student"):
        raise ValueError(f"network must be 'teacher' or 'student', got {which!r}")
    cfg = PretrainConfig.model_validate(checkpoint["config"])
    net = ASANetwork(cfg.network)
    net.load_state_dict(checkpoint[which])
    return net.eval(), cfg


@torch.no_grad()
def compute_order_map(
    ct: CTImage, net: ASANetwork, cfg: PretrainConfig, shuffle: bool = True, seed: int = 0
) -> OrderMap:
    roi, g = cfg.data.roi, cfg.data.grid
    x = make_view(preprocess(ct, cfg.data), roi, "resize", np.random.default_rng(seed))[None]
    n = g**3
    perm = pretext.random_permutations(1, n, torch.Generator().manual_seed(seed)) if shuffle else torch.arange(n)[None]
    tokens = net.encode(pretext.shuffle_subvolumes(x, perm)).tokens
    pred = pretext.target_to_coords(net.predict_order(tokens), (g, g, g))[0]  # (N, 3), position j holds perm[j]
    true = pretext.cell_coordinates((g, g, g)).float()[perm[0]]
    error = (pred - true).norm(dim=-1) * 16
    at_origin = torch.empty_like(error)
    at_origin[perm[0]] = error  # figures go back to where the content came from
    pred_at_origin = torch.empty_like(pred)
    pred_at_origin[perm[0]] = pred
    return OrderMap(
        error_vox=at_origin.reshape(g, g, g).numpy(),
        predicted=pred_at_origin.reshape(g, g, g, 3).numpy(),
        grid=g,
        baseline_vox=pretext.mean_position_error_voxels((g, g, g)),
    )


def paint(grid_values: np.ndarray, shape: tuple[int, int, int]) -> np.ndarray:
    """Block-upsample a (g, g, g[, C]) grid onto a scan grid: voxel i lies in cell floor(i·g / size)."""
    g = grid_values.shape[0]
    idx = [np.minimum((np.arange(n) * g) // n, g - 1) for n in shape]
    return grid_values[np.ix_(*idx)]


def write_order_map(ct: CTImage, result: OrderMap, out: Path) -> dict[str, Any]:
    """NIfTI error map and RGB position map in the input's own space, a PNG, and a JSON summary."""
    out.mkdir(parents=True, exist_ok=True)
    forms = ct.meta.get("nifti_forms")  # NIfTI input: the scan's own header forms, so the maps sit as it does
    error = ct.to_source(paint(result.error_vox, ct.array.shape).astype(np.float32))
    save_nifti(error, ct.source.affine, out / "order_error.nii.gz", dtype=np.float32, forms=forms)
    rgb = np.clip(result.predicted / max(result.grid - 1, 1), 0, 1) * 255
    rgb_canonical = paint(rgb.astype(np.uint8), ct.array.shape)
    rgb_source = np.stack([ct.to_source(rgb_canonical[..., c]) for c in range(3)], axis=-1)
    save_nifti(rgb_source, ct.source.affine, out / "order_positions_rgb.nii.gz", dtype=np.uint8, forms=forms)
    _write_png(ct, paint(result.error_vox, ct.array.shape), rgb_canonical, out / "order_map.png")
    summary = {
        "mean_error_vox": result.mean_error_vox,
        "baseline_error_vox": result.baseline_vox,
        "ratio_to_baseline": result.mean_error_vox / result.baseline_vox,
        "grid": result.grid,
        "files": ["order_error.nii.gz", "order_positions_rgb.nii.gz", "order_map.png"],
    }
    (out / "order_map.json").write_text(json.dumps(summary, indent=2))
    return summary


def display_slice(volume: np.ndarray, plane: str) -> np.ndarray:
    """Mid-slice of a canonical RAS array (3D, or 3D + channels) for radiological display.

    Rows run anterior/superior at the top; columns put the patient's right on the screen's left
    (axial, coronal) and anterior on the left (sagittal), as PACS viewers do.
    """
    centre = [n // 2 for n in volume.shape[:3]]
    axis = {"sagittal": 0, "coronal": 1, "axial": 2}[plane]
    plane_2d = np.take(volume, centre[axis], axis=axis)
    return np.swapaxes(plane_2d, 0, 1)[::-1, ::-1]


def _write_png(ct: CTImage, error: np.ndarray, rgb: np.ndarray, path: Path) -> None:
    """Axial, coronal and sagittal mid-slices: scan with the error overlay, and the RGB position map."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 3, figsize=(12, 8))
    vmax = float(error.max()) or 1.0
    aspect = {
        "axial": ct.spacing[1] / ct.spacing[0],
        "coronal": ct.spacing[2] / ct.spacing[0],
        "sagittal": ct.spacing[2] / ct.spacing[1],
    }
    for col, plane in enumerate(("axial", "coronal", "sagittal")):
        top, bottom = axes[0, col], axes[1, col]
        top.imshow(display_slice(ct.array, plane), cmap="gray", vmin=-175, vmax=250, aspect=aspect[plane])
        im = top.imshow(display_slice(error, plane), cmap="magma", alpha=0.45, vmin=0, vmax=vmax, aspect=aspect[plane])
        top.set_title(f"{plane}: order error (voxels)")
        bottom.imshow(display_slice(rgb, plane), aspect=aspect[plane])
        bottom.set_title(f"{plane}: predicted origin (RGB = i, j, k)")
        for ax in (top, bottom):
            ax.axis("off")
    fig.colorbar(im, ax=axes[0, :].tolist(), shrink=0.7)
    fig.savefig(path, dpi=80)
    plt.close(fig)
