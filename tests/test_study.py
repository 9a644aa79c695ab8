"""``asa study label-efficiency``: the grid, its fairness rules, the report, resuming, and bad input.

The integration run is tiny (four 64 x 64 x 32 phantoms at 6 x 6 x 8 mm, one held-out case, two steps per
run, K = 1, 2, one seed: four finetuning runs); what it checks is the bookkeeping, not the Dice.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from typer.testing import CliRunner

from models.cli import app
from models.finetune.study import INITS, StudyRun, parse_sizes, study_grid, summarise

runner = CliRunner()
SMALL = ["--set", "data.spacing=[6,6,8]", "--set", "data.num_samples=1", "--set", "data.val_count=1",
         "--set", "eval.sw_batch_size=1"]  # fmt: skip


def test_parse_sizes() -> None:
    assert parse_sizes("8, 1,2,4,2") == [1, 2, 4, 8]
    for bad in ("", "0,1", "a,b", "1.5"):
        with pytest.raises(ValueError, match="--n-train"):
            parse_sizes(bad)


def test_grid_keeps_pairs_together() -> None:
    grid = study_grid([1, 4], seeds=2)
    assert len(grid) == 2 * 2 * 2
    assert [r.init for r in grid[:2]] == list(INITS)  # each (seed, K) pair runs back to back
    assert grid[0] == StudyRun("asa", 1, 0) and grid[-1] == StudyRun("random", 4, 1)
    assert len({r.name for r in grid}) == len(grid)


def test_summarise_pairs_by_seed() -> None:
    rows = [
        {"init": "asa", "n_train": 2, "seed": 0, "mean_dice": 0.6},
        {"init": "random", "n_train": 2, "seed": 0, "mean_dice": 0.4},
        {"init": "asa", "n_train": 2, "seed": 1, "mean_dice": 0.3},
        {"init": "random", "n_train": 2, "seed": 1, "mean_dice": 0.5},
        {"init": "asa", "n_train": 2, "seed": 2, "mean_dice": 0.9},  # its random partner has not run yet
    ]
    (entry,) = summarise(rows)
    assert entry["asa_runs"] == 3 and entry["random_runs"] == 2 and entry["pairs"] == 2
    assert entry["asa_mean"] == pytest.approx(0.6) and entry["random_mean"] == pytest.approx(0.45)
    assert entry["gap_mean"] == pytest.approx(0.0)  # (+0.2 - 0.2) / 2: only complete pairs count
    assert entry["asa_wins"] == 1
    assert entry["random_std"] == pytest.approx(math.sqrt(0.005))  # sample sd of 0.4, 0.5


@pytest.mark.slow
def test_study_runs_fairly_and_resumes(asa_run: Path, phantom_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "study"
    args = ["study", "label-efficiency", "--pretrained", str(asa_run), "--data", str(phantom_dir), "--out", str(out),
            "--n-train", "1,2", "--seeds", "1", "--steps", "2", "--no-progress", *SMALL]  # fmt: skip
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    summary = json.loads((out / "summary.json").read_text())
    runs = {(r["init"], r["n_train"]): r for r in summary["runs"]}
    assert set(runs) == {(i, k) for i in INITS for k in (1, 2)}
    for k in (1, 2):
        asa, rnd = runs["asa", k], runs["random", k]
        assert asa["train_cases"] == rnd["train_cases"] and len(asa["train_cases"]) == k  # same data, both arms
        assert asa["val_cases"] == rnd["val_cases"] == runs["asa", 1]["val_cases"]  # same held-out case, every K
        assert 0.0 <= asa["mean_dice"] <= 1.0 and 0.0 <= rnd["mean_dice"] <= 1.0
    assert set(runs["asa", 1]["train_cases"]) <= set(runs["asa", 2]["train_cases"])  # nested subsets
    transfer = {i: json.loads((out / "runs" / f"{i}-n1-s0" / "transfer.json").read_text()) for i in INITS}
    assert transfer["asa"]["summary"]["transferred"] > 0 and transfer["random"]["summary"]["transferred"] == 0
    for init in INITS:  # validation once, at the end: no checkpoint chosen on the reported cases
        lines = (out / "runs" / f"{init}-n2-s0" / "metrics.jsonl").read_text().splitlines()
        evals = [json.loads(line) for line in lines if "eval/mean_dice" in line]
        assert [e["step"] for e in evals] == [2]
    assert (out / "dice_vs_labels.png").stat().st_size > 1000
    assert "| 2 |" in (out / "summary.md").read_text() and (out / "runs.csv").read_text().count("\n") == 5

    # a rerun finds every run done and only rewrites the report
    stamps = {p: p.stat().st_mtime_ns for p in (out / "runs").glob("*/model.pt")}
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    assert {p: p.stat().st_mtime_ns for p in (out / "runs").glob("*/model.pt")} == stamps


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--n-train", "1,4"], "--n-train 4"),  # 4 phantoms, 1 held out: only 3 to train on
        (["--n-train", "x"], "comma-separated"),
        (["--set", "data.val_count=0"], "held-out"),
    ],
)
def test_bad_study_input_fails_before_any_run(
    asa_run: Path, phantom_dir: Path, tmp_path: Path, extra: list[str], message: str
) -> None:
    out = tmp_path / "study"
    args = ["study", "label-efficiency", "--pretrained", str(asa_run), "--data", str(phantom_dir), "--out", str(out),
            "--seeds", "1", *SMALL, *extra]  # fmt: skip
    res = runner.invoke(app, args)
    assert res.exit_code == 2
    assert message in res.output
    assert not out.exists()


def test_study_needs_a_pretrained_run(phantom_dir: Path, tmp_path: Path) -> None:
    res = runner.invoke(app, ["study", "label-efficiency", "--pretrained", str(tmp_path / "nope"),
                              "--data", str(phantom_dir), "--out", str(tmp_path / "s")])  # fmt: skip
    assert res.exit_code == 2 and "nope" in res.output
    assert not (tmp_path / "s").exists()


def test_claim_lets_one_process_take_a_run(tmp_path: Path) -> None:
    import os
    import socket
    import subprocess

    from models.finetune.study import claim, release

    run = tmp_path / "runs" / "asa-n1-s0"
    assert claim(run)
    assert not claim(run)  # held by a live process (this one)
    release(run)
    assert claim(run)
    release(run)
    dead = subprocess.Popen(["true"])
    dead.wait()
    (run.parent / "asa-n1-s0.lock").write_text(f"{socket.gethostname()} {dead.pid}")
    assert claim(run)  # a lock left by a process that is gone is taken over
    assert (run.parent / "asa-n1-s0.lock").read_text() == f"{socket.gethostname()} {os.getpid()}"
