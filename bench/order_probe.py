"""How much position information the phase-1 views of a pretraining run's scans carry, without any network.

A nearest-neighbour probe: every 16³ sub-volume of a held-out view (summarised as 4³ block means) takes the
grid position of its most similar sub-volume among the training views. If this trivial probe finds a
sub-volume's position along an axis, the content there does tell the position, and an order head that does
not is under-trained rather than asked the impossible. Prints JSON (per held-out scan and the mean).

    python bench/order_probe.py runs/learn
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from models.asa.data import PretrainViews
from models.asa.trainer import load_checkpoint
from models.config import PretrainConfig
from models.data.cache import cached_volume
from models.data.datasets import load_dataset


def summaries(view: np.ndarray, grid: int, size: int = 16, block: int = 4) -> np.ndarray:
    """(grid³, (size/block)³) block means of every sub-volume, raster order."""
    x = view.reshape(grid, size, grid, size, grid, size).transpose(0, 2, 4, 1, 3, 5)
    b = size // block
    return x.reshape(grid, grid, grid, b, block, b, block, b, block).mean(axis=(4, 6, 8)).reshape(grid**3, -1)


def main(run: Path) -> dict:
    cfg = PretrainConfig.model_validate(load_checkpoint(run)["config"])
    info = json.loads((run / "run.json").read_text())
    cases = {c.id: c for c in load_dataset(Path(info["data"])).cases}
    cache = cfg.data.cache_dir or run / "cache"
    grid = cfg.data.grid

    def view(case_id: str) -> np.ndarray:
        return PretrainViews([cached_volume(cases[case_id].image, cfg.data, cache)], cfg)[(0, 0, 1)][0].numpy()

    pos = np.stack(np.meshgrid(*[np.arange(grid)] * 3, indexing="ij"), -1).reshape(-1, 3)
    train = np.concatenate([summaries(view(c), grid) for c in info["train_cases"]])
    train_pos = np.tile(pos, (len(info["train_cases"]), 1))
    out: dict = {"run": str(run), "grid": grid, "held_out": {}}
    for cid in info["holdout_cases"]:
        test = summaries(view(cid), grid)
        nearest = train_pos[((test[:, None, :] - train[None]) ** 2).sum(-1).argmin(1)]
        out["held_out"][cid] = {
            "accuracy_xyz": (nearest == pos).mean(0).round(3).tolist(),
            "abs_error_xyz_vox": (np.abs(nearest - pos) * 16).mean(0).round(2).tolist(),
            "error_vox": float(np.linalg.norm((nearest - pos) * 16.0, axis=1).mean().round(2)),
        }
    per = list(out["held_out"].values())
    out["mean"] = {k: np.mean([p[k] for p in per], axis=0).round(3).tolist() for k in per[0]}
    return out


if __name__ == "__main__":
    print(json.dumps(main(Path(sys.argv[1])), indent=2))
