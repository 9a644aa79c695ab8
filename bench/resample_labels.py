"""Cost of interpolated labels (argmax of trilinear probabilities) against nearest labels, same run.

A 14-class probability field on a 120 x 120 x 75 model grid (3 x 3 x 4 mm, the cpu-demo spacing of a
512 x 512 x 300 CT) is brought to the scan's 512 x 512 x 300 grid (0.7 x 0.7 x 1 mm) both ways. Two fields:
"organs" (smooth random logits: about a quarter of the model cells straddle a boundary, more than a real
abdomen) and "specks" (rough logits: most cells do, the worst case). Prints JSON with medians over repeats.

    python bench/resample_labels.py --repeats 5 --out bench/results/resample_labels_cpu.json
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from jsonout import emit_json
from scipy import ndimage

from models.inference.resample import _plane_uniform, resample_labels, resample_labels_interpolated

MODEL_SHAPE, SCAN_SHAPE, CLASSES = (120, 120, 75), (512, 512, 300), 14
MODEL_AFFINE, SCAN_AFFINE = np.diag([3.0, 3.0, 4.0, 1.0]), np.diag([0.7, 0.7, 1.0, 1.0])


def field(smoothness: float, seed: int = 0) -> tuple[np.ndarray, torch.Tensor]:
    rng = np.random.default_rng(seed)
    logits = np.stack([ndimage.gaussian_filter(rng.standard_normal(MODEL_SHAPE), smoothness) for _ in range(CLASSES)])
    probs = torch.softmax(torch.from_numpy(logits * 30 / logits.std()).float(), dim=0)
    return probs.argmax(dim=0).numpy().astype(np.uint8), probs


def boundary_cell_share(labels: np.ndarray) -> float:
    """Share of model cells (a voxel and its 7 upper neighbours) that hold more than one label."""
    plane = _plane_uniform(labels)
    uniform = plane[:, :, :-1] & plane[:, :, 1:] & (labels[:, :, :-1] == labels[:, :, 1:])
    return float(1 - uniform.mean())


def main(repeats: int) -> dict:
    box = tuple(slice(0, n) for n in MODEL_SHAPE)
    out: dict = {"model_shape": MODEL_SHAPE, "scan_shape": SCAN_SHAPE, "classes": CLASSES, "repeats": repeats,
                 "torch_threads": torch.get_num_threads(), "fields": {}}  # fmt: skip
    for name, smoothness in (("organs", 6.0), ("specks", 1.5)):
        labels, probs = field(smoothness)
        times: dict[str, list[float]] = {"nearest": [], "interpolated": []}
        for _ in range(repeats):
            t0 = time.perf_counter()
            nearest = resample_labels(labels, MODEL_AFFINE, SCAN_SHAPE, SCAN_AFFINE)
            times["nearest"].append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            smooth = resample_labels_interpolated(labels, probs, box, MODEL_AFFINE, SCAN_SHAPE, SCAN_AFFINE)
            times["interpolated"].append(time.perf_counter() - t0)
        med = {k: statistics.median(v) for k, v in times.items()}
        out["fields"][name] = {
            "boundary_cell_share": boundary_cell_share(labels),
            "nearest_s": med["nearest"],
            "interpolated_s": med["interpolated"],
            "ratio": med["interpolated"] / med["nearest"],
            "voxels_that_differ": float((nearest != smooth).mean()),
            "times_s": {k: [round(t, 3) for t in v] for k, v in times.items()},
        }
    return out


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    emit_json(main(args.repeats), args.out)
