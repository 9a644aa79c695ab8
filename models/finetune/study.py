"""Label-efficiency study: ASA-initialised against random-initialised finetuning (the paper's Fig. 4 in miniature).

For every seed, every training-set size K and both initialisations, one finetuning run with the same
configuration, steps and data: only the initial weights differ. Fairness rules:

* The held-out cases of a seed are the same for every K and both arms (:func:`split_cases` keeps the
  validation set independent of ``n_train``), and the training subsets are nested (K=2 ⊂ K=4 ⊂ ...).
* The figure is the Dice of the *final* weights on the held-out cases: validation runs once, at the
  end, so no checkpoint is selected on the cases it is reported on.
* Runs are ordered seed by seed, K by K, ASA then random, so a study stopped half-way still holds
  complete pairs; a rerun skips every run that left ``result.json``.
* Several processes may run the same command at once (one per GPU, or per core on a CPU machine):
  each claims a run with a lock file before starting it, and every report covers all finished runs.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
import socket
import statistics
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from models.data.datasets import Dataset
from models.finetune.config import FinetuneConfig, build_finetune_config
from models.finetune.data import split_cases
from models.modeldir import LabelInfo

log = logging.getLogger(__name__)
INITS = ("asa", "random")


@dataclass(frozen=True)
class StudyRun:
    """One cell of the study grid."""

    init: str  # "asa" | "random"
    n_train: int
    seed: int

    @property
    def name(self) -> str:
        return f"{self.init}-n{self.n_train}-s{self.seed}"


def parse_sizes(text: str) -> list[int]:
    """``"1,2,4,8"`` -> ``[1, 2, 4, 8]``; a clear error for anything else."""
    try:
        sizes = sorted({int(part) for part in text.split(",") if part.strip()})
    except ValueError:
        raise ValueError(f"--n-train must be a comma-separated list of integers, got {text!r}") from None
    if not sizes or sizes[0] < 1:
        raise ValueError(f"--n-train needs training-set sizes of at least 1, got {text!r}")
    return sizes


def study_grid(sizes: Sequence[int], seeds: int) -> list[StudyRun]:
    """Seed-major, then K, then ASA before random: interrupted studies keep whole pairs."""
    return [StudyRun(init, k, seed) for seed in range(seeds) for k in sizes for init in INITS]


def run_config(
    run: StudyRun, pretrained: Path, out: Path, preset: str, yaml_path: Path | None, overrides: Sequence[str],
    steps: int | None, label_map: Path | None,
) -> FinetuneConfig:  # fmt: skip
    """The run's config: the user's layers, then the study's rules (validate at the end only, shared cache)."""
    forced = ["eval.every=0", f"data.cache_dir={out / 'cache'}"]
    return build_finetune_config(
        preset, yaml_path, [*overrides, *forced],
        pretrained=str(pretrained) if run.init == "asa" else "none",
        n_train=run.n_train, seed=run.seed, steps=steps, label_map=label_map,
    )  # fmt: skip


def check_grid(dataset: Dataset, configs: Sequence[FinetuneConfig]) -> None:
    """Fail before the first run when any cell cannot be built (e.g. K larger than the training pool)."""
    for cfg in configs:
        _, val = split_cases(dataset, cfg)
        if not val.cases:
            raise ValueError(f"{dataset.name}: the study needs held-out cases to report on (data.val_count is 0)")


def summarise(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean and standard deviation of the held-out mean Dice per (init, K), plus the paired ASA − random gap."""
    table: list[dict[str, Any]] = []
    for k in sorted({r["n_train"] for r in rows}):
        entry: dict[str, Any] = {"n_train": k}
        by_seed = {init: {r["seed"]: r["mean_dice"] for r in rows if r["n_train"] == k and r["init"] == init}
                   for init in INITS}  # fmt: skip
        for init in INITS:
            values = list(by_seed[init].values())
            entry[f"{init}_mean"] = statistics.fmean(values) if values else math.nan
            entry[f"{init}_std"] = statistics.stdev(values) if len(values) > 1 else 0.0
            entry[f"{init}_runs"] = len(values)
        pairs = [by_seed["asa"][s] - by_seed["random"][s] for s in by_seed["asa"] if s in by_seed["random"]]
        entry["gap_mean"] = statistics.fmean(pairs) if pairs else math.nan
        entry["asa_wins"] = sum(d > 0 for d in pairs)
        entry["pairs"] = len(pairs)
        table.append(entry)
    return table


def write_report(out: Path, rows: Sequence[dict[str, Any]], meta: dict[str, Any]) -> dict[str, Any]:
    """``runs.csv`` (one row per run), ``summary.json``, ``summary.md`` and ``dice_vs_labels.png``."""
    table = summarise(rows)
    with (out / "runs.csv").open("w", newline="") as fh:
        organs = sorted({name for r in rows for name in r["dice"]})
        writer = csv.writer(fh)
        writer.writerow(["init", "n_train", "seed", "mean_dice", *organs])
        for r in rows:
            writer.writerow([r["init"], r["n_train"], r["seed"], f"{r['mean_dice']:.4f}",
                             *("" if r["dice"].get(o) is None else f"{r['dice'][o]:.4f}" for o in organs)])  # fmt: skip
    summary = {**meta, "table": table, "runs": list(rows)}
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    lines = [
        "| labelled cases | ASA init (mean ± sd) | random init (mean ± sd) | ASA − random (paired) | ASA better |",
        "|---:|---:|---:|---:|---:|",
    ]
    for e in table:
        lines.append(
            f"| {e['n_train']} | {e['asa_mean']:.3f} ± {e['asa_std']:.3f} | {e['random_mean']:.3f} ± "
            f"{e['random_std']:.3f} | {e['gap_mean']:+.3f} | {e['asa_wins']}/{e['pairs']} |"
        )
    (out / "summary.md").write_text("\n".join(lines) + "\n")
    _plot(out / "dice_vs_labels.png", table)
    return summary


def _plot(path: Path, table: Sequence[dict[str, Any]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.6), dpi=120)
    ks = [e["n_train"] for e in table]
    for init, colour, label in (("asa", "tab:red", "ASA init"), ("random", "tab:blue", "random init")):
        ax.errorbar(ks, [e[f"{init}_mean"] for e in table], yerr=[e[f"{init}_std"] for e in table],
                    marker="o", capsize=3, color=colour, label=label)  # fmt: skip
    ax.set_xscale("log", base=2)
    ax.set_xticks(ks, [str(k) for k in ks])
    ax.set_xlabel("labelled training scans")
    ax.set_ylabel("held-out mean Dice")
    ax.set_title("Label efficiency (mean ± sd over seeds)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def label_efficiency(
    *,
    pretrained: Path,
    dataset: Dataset,
    out: Path,
    sizes: Sequence[int],
    seeds: int,
    labels: dict[int, LabelInfo],
    mapping: dict[int, int] | None = None,
    label_map: Path | None = None,
    preset: str = "cpu-demo",
    yaml_path: Path | None = None,
    overrides: Sequence[str] = (),
    steps: int | None = None,
    progress: bool = True,
    device: str | None = None,
) -> dict[str, Any]:
    """Run (or finish) the study into ``out`` and write its report; returns the summary."""
    from models.finetune.trainer import CHECKPOINT, finetune

    grid = study_grid(sizes, seeds)
    configs = [run_config(r, pretrained, out, preset, yaml_path, overrides, steps, label_map) for r in grid]
    check_grid(dataset, configs)
    out.mkdir(parents=True, exist_ok=True)
    meta = {
        "pretrained": str(pretrained),
        "data": dataset.name,
        "preset": preset,
        "steps": configs[0].steps,
        "sizes": list(sizes),
        "seeds": seeds,
        "figure": "mean Dice of the final weights on the seed's held-out cases (BTCV protocol: organs, then cases)",
    }
    for i, (run, cfg) in enumerate(zip(grid, configs, strict=True)):
        run_dir = out / "runs" / run.name
        done = run_dir / "result.json"
        if done.exists() or not claim(run_dir):
            continue
        try:
            log.info("study run %d/%d: %s", i + 1, len(grid), run.name)
            train, val = split_cases(dataset, cfg)
            result = finetune(cfg, train.cases, val.cases, run_dir, labels=labels, mapping=mapping,
                              dataset_labels=dataset.labels, provenance={"study": str(out), **asdict(run)},
                              progress=progress, device=device, resume=(run_dir / CHECKPOINT).exists())  # fmt: skip
            if not result["completed"]:  # interrupted: keep what is done, let a rerun continue
                log.warning("study interrupted during %s; rerun the same command to continue", run.name)
                break
            best = result["best"]
            row = {**asdict(run), "mean_dice": best["mean_dice"], "dice": best["dice"], "steps": result["step"],
                   "train_cases": [c.id for c in train.cases], "val_cases": [c.id for c in val.cases]}  # fmt: skip
            done.write_text(json.dumps(row, indent=2))
        finally:
            release(run_dir)
        write_report(out, finished(out, grid), meta)  # a partial report after every run
    return write_report(out, finished(out, grid), meta)


def finished(out: Path, grid: Sequence[StudyRun]) -> list[dict[str, Any]]:
    """Every run of the grid that has finished, whichever process ran it, in grid order."""
    files = (out / "runs" / r.name / "result.json" for r in grid)
    return [json.loads(f.read_text()) for f in files if f.exists()]


def _lock(run_dir: Path) -> Path:
    return run_dir.parent / f"{run_dir.name}.lock"


def claim(run_dir: Path) -> bool:
    """Take a run for this process, so several study processes (same command) share the grid.

    The lock file holds host and pid; a lock left by a dead process on this host is taken over.
    """
    lock = _lock(run_dir)
    lock.parent.mkdir(parents=True, exist_ok=True)
    me = f"{socket.gethostname()} {os.getpid()}"
    for _ in range(2):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            host, _, pid = lock.read_text().partition(" ")
            if host != socket.gethostname() or _alive(int(pid or 0)):
                return False
            lock.unlink(missing_ok=True)  # stale: its process is gone
            continue
        with os.fdopen(fd, "w") as fh:
            fh.write(me)
        return True
    return False


def release(run_dir: Path) -> None:
    _lock(run_dir).unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
