"""Held-out order error of a pretraining run's checkpoint, averaged over several shuffles.

The trainer's own evaluation (``eval/`` in ``metrics.jsonl``) draws one shuffle per held-out scan, so a
figure from 3 scans moves by a voxel from shuffle to shuffle. This script reloads the checkpoint,
preprocesses the held-out scans with the current code (its own cache folder) and averages the trainer's
``evaluate_order`` over ``--shuffles`` permutations. Prints JSON; ``--out`` also writes it.
``--no-blur`` preprocesses without the anti-aliasing blur, as runs trained before it saw their scans.

    python bench/order_eval.py runs/learn --shuffles 16 --out bench/results/order_eval_cpu.json
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np
from jsonout import emit_json

from models.asa.data import PretrainViews
from models.asa.model import ASA
from models.asa.trainer import evaluate_order, load_checkpoint
from models.config import PretrainConfig
from models.data import spacing, transforms
from models.data.cache import cached_volume
from models.data.datasets import load_dataset


def main(run: Path, shuffles: int, blur: bool = True) -> dict:
    if not blur:  # the separable route reads spacing's sigma, the scipy fallback transforms'
        spacing.anti_alias_sigma = transforms.anti_alias_sigma = lambda source, target: (0.0,) * len(source)
    state = load_checkpoint(run)
    cfg = PretrainConfig.model_validate(state["config"])
    info = json.loads((run / "run.json").read_text())
    cases = {c.id: c for c in load_dataset(Path(info["data"])).cases}
    model = ASA(cfg)
    model.student.load_state_dict(state["student"])
    model.teacher.load_state_dict(state["teacher"])
    with tempfile.TemporaryDirectory() as cache:
        paths = [cached_volume(cases[cid].image, cfg.data, Path(cache)) for cid in info["holdout_cases"]]
        views = PretrainViews(paths, cfg)
        volumes = [views[(i, 0, 1)] for i in range(len(paths))]
        runs = [evaluate_order(model, volumes, cfg, seed=1234 + k) for k in range(shuffles)]
    mean = {k: float(np.mean([r[k] for r in runs])) for k in runs[0]}
    spread = {k: float(np.std([r[k] for r in runs])) for k in runs[0] if k.endswith("order_error_vox")}
    return {
        "run": str(run),
        "step": int(state["step"]),
        "held_out": info["holdout_cases"],
        "shuffles": shuffles,
        "anti_alias_blur": blur,
        "mean": mean,
        "std_over_shuffles": spread,
        "student_error_over_baseline": mean["student_order_error_vox"] / mean["baseline_order_error_vox"],
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("--shuffles", type=int, default=16)
    parser.add_argument("--no-blur", action="store_true", help="preprocess without the anti-aliasing blur")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    result = main(args.run, args.shuffles, blur=not args.no_blur)
    emit_json(result, args.out)
