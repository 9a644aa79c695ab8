"""Integration tests of finetuning runs: the model directory a run leaves, exact resume (from a RAM and
a disk cache alike), SIGTERM, torchrun with two processes (multi-scale).

A feature-size-12 network, 64³ crops (one per step), four 64 x 64 x 32 phantoms resampled to 6 x 6 x 8 mm
(one validation case), three steps: each step costs a few seconds on two CPU cores.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import models
from models.data.datasets import load_dataset
from models.data.labels import BTCV_LABELS
from models.finetune.config import FinetuneConfig, build_finetune_config
from models.finetune.data import split_cases
from models.finetune.trainer import finetune, load_finetune_checkpoint
from models.modeldir import btcv_labels, load_model

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
STEPS, STOP_AT = 3, 2
SMALL = ["data.spacing=[6,6,8]", "data.num_samples=1", "data.val_count=1", "eval.every=2", "eval.sw_batch_size=1"]


# -- helpers and fixtures --------------------------------------------------------------------------
def read_metrics(run: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line]


def child_env(threads: int = 2) -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    return env


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cache")


def run_config(asa_run: Path, cache_dir: Path, *overrides: str, **fields: Any) -> FinetuneConfig:
    return build_finetune_config(
        "cpu-demo",
        overrides=[*SMALL, f"data.cache_dir={cache_dir}", *overrides],
        pretrained=str(asa_run),
        steps=STEPS,
        deterministic=True,
        checkpoint_every=1000,
        **fields,
    )


def start(cfg: FinetuneConfig, data: Path, out: Path, **kw: Any) -> dict[str, Any]:
    train, val = split_cases(load_dataset(data), cfg)
    return finetune(cfg, train.cases, val.cases, out, labels=btcv_labels(), progress=False, **kw)


@pytest.fixture(scope="module")
def run_a(tmp_path_factory: pytest.TempPathFactory, asa_run: Path, phantom_dir: Path, cache_dir: Path) -> Path:
    """An uninterrupted run reading its cache memory-mapped from disk (RAM budget 0)."""
    out = tmp_path_factory.mktemp("run_a")
    cfg = run_config(asa_run, cache_dir, "data.cache_ram_mb=0")
    assert not torch.are_deterministic_algorithms_enabled()
    result = start(cfg, phantom_dir, out, provenance={"data": str(phantom_dir)})
    assert not torch.are_deterministic_algorithms_enabled(), "the trainer must restore the global kernel setting"
    assert result["step"] == STEPS and result["completed"]
    return out


# -- 1. the run directory is a model directory -------------------------------------------------------
def test_run_writes_a_loadable_model_dir(run_a: Path, asa_run: Path, phantom_dir: Path) -> None:
    net, spec = load_model(run_a)
    assert spec.labels == btcv_labels() and spec.network.feature_size == 12
    assert spec.preprocessing.spacing == (6.0, 6.0, 8.0) and spec.preprocessing.roi == (64, 64, 64)
    m = spec.metrics
    assert m["step"] in (STOP_AT, STEPS) and m["val_cases"] == 1
    assert 0.0 <= m["best_mean_dice"] == m["mean_dice"] <= 1.0
    assert set(m["dice"]) == set(BTCV_LABELS.values())
    records = read_metrics(run_a)
    evals = {r["step"]: r["eval/mean_dice"] for r in records if "eval/mean_dice" in r}
    assert set(evals) == {STOP_AT, STEPS} and m["best_mean_dice"] == max(evals.values())
    assert m["step"] == max(evals, key=evals.get)

    p = spec.provenance
    assert p["pretrained"] == str(asa_run) and p["data"] == str(phantom_dir) and p["version"] == models.__version__
    assert p["config"]["network"]["feature_size"] == 12 and len(p["val_cases"]) == 1 and len(p["train_cases"]) == 3
    transfer = json.loads((run_a / "transfer.json").read_text())
    assert p["transfer"] == transfer["summary"]
    teacher = torch.load(asa_run / "checkpoint.pt", weights_only=False)["teacher"]
    n_backbone = sum(k.startswith("backbone.") for k in teacher)
    assert transfer["summary"]["transferred"] == n_backbone - 2  # all but the 1-channel out conv
    assert transfer["summary"]["skipped_heads"] == len(teacher) - n_backbone
    assert transfer["random"] == ["out.conv.conv.bias", "out.conv.conv.weight"]

    with torch.no_grad():
        assert net(torch.zeros(1, 1, 64, 64, 64)).shape == (1, 14, 64, 64, 64)
    steps = [r["step"] for r in records if "loss" in r]
    assert steps == list(range(1, STEPS + 1))
    for r in records:
        assert all(v is None or np.isfinite(v) for v in r.values() if isinstance(v, float))
    assert all(r["lr"] > 0 and r["samples_per_s"] > 0 for r in records if "loss" in r)
    assert list((run_a / "tensorboard").glob("events.out.tfevents.*"))
    assert (run_a / "eval.json").is_file() and (run_a / "config.yaml").is_file()
    assert not list(run_a.glob("*.tmp")), "atomic saves left a temporary file"
    ckpt = load_finetune_checkpoint(run_a)
    assert ckpt["step"] == ckpt["total_steps"] == STEPS and ckpt["best"]["mean_dice"] == m["best_mean_dice"]


# -- 2. exact resume (and the RAM cache gives what the disk cache gives) -------------------------------
def test_resume_is_exact(tmp_path: Path, run_a: Path, asa_run: Path, phantom_dir: Path, cache_dir: Path) -> None:
    cfg = run_config(asa_run, cache_dir)  # default budget: the data set is held in RAM
    run_b = tmp_path / "run_b"
    first = start(cfg, phantom_dir, run_b, stop_at=STOP_AT)
    assert first["step"] == STOP_AT and not first["completed"]
    assert load_finetune_checkpoint(run_b)["step"] == STOP_AT
    second = start(cfg, phantom_dir, run_b, resume=True)
    assert second["step"] == STEPS and second["completed"]

    rec_a, rec_b = read_metrics(run_a), read_metrics(run_b)
    assert [r["step"] for r in rec_b] == [r["step"] for r in rec_a], "one record per step and evaluation"
    for a, b in zip(rec_a, rec_b, strict=True):
        for key in ("loss", "lr", "grad_norm", "eval/mean_dice"):
            assert a.get(key) == b.get(key), f"step {a['step']}: {key} {a.get(key)} != {b.get(key)}"
    ck_a, ck_b = load_finetune_checkpoint(run_a), load_finetune_checkpoint(run_b)
    for name, tensor in ck_a["model"].items():
        assert torch.equal(tensor, ck_b["model"][name]), f"{name} differs after resume"
    for idx, st in ck_a["optimizer"]["state"].items():
        for key, value in st.items():
            assert torch.equal(torch.as_tensor(value), torch.as_tensor(ck_b["optimizer"]["state"][idx][key]))
    net_a, _ = load_model(run_a)
    net_b, _ = load_model(run_b)
    for (name, ta), tb in zip(net_a.state_dict().items(), net_b.state_dict().values(), strict=True):
        assert torch.equal(ta, tb), name


# -- 3. SIGTERM: finish the step, checkpoint, exit 0; then resume ----------------------------------------
def cli_args(data: Path, run: Path, pretrained: str, steps: int, cache: Path, *extra: str) -> list[str]:
    args = ["finetune", "--pretrained", pretrained, "--data", str(data), "--out", str(run), "--preset", "cpu-demo"]
    args += ["--steps", str(steps), "--no-progress", *extra]
    for item in [*SMALL, f"data.cache_dir={cache}"]:
        args += ["--set", item]
    return args


def test_sigterm_checkpoints_and_resumes(tmp_path: Path, asa_run: Path, phantom_dir: Path, cache_dir: Path) -> None:
    run, log = tmp_path / "run", tmp_path / "finetune.log"
    args = cli_args(phantom_dir, run, str(asa_run), 50, cache_dir, "--transfer", "encoder")
    with log.open("w") as sink:
        cmd = [sys.executable, "-m", "models.cli", *args]
        proc = subprocess.Popen(cmd, cwd=REPO, env=child_env(), stdout=sink, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 300
            while not ((run / "metrics.jsonl").exists() and (run / "metrics.jsonl").read_text().strip()):
                if proc.poll() is not None:
                    pytest.fail(f"finetuning exited early with {proc.returncode}:\n{log.read_text()[-3000:]}")
                if time.monotonic() > deadline:
                    pytest.fail("no metrics record within 300 s")
                time.sleep(0.5)
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=180)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    out = log.read_text()
    assert proc.returncode == 0, out[-3000:]
    assert "Traceback" not in out, out[-3000:]
    ckpt = load_finetune_checkpoint(run)
    step = ckpt["step"]
    assert 1 <= step < 50 and ckpt["total_steps"] == 50
    assert [r["step"] for r in read_metrics(run) if "loss" in r] == list(range(1, step + 1))
    result = json.loads(out[out.rindex('{\n  "step"') :])
    assert result["step"] == step and not result["completed"]
    transfer = json.loads((run / "transfer.json").read_text())
    assert transfer["mode"] == "encoder" and all(k.startswith("swinViT.") for k in transfer["transferred"])

    cfg = FinetuneConfig.model_validate(ckpt["config"])
    train, val = split_cases(load_dataset(phantom_dir), cfg)
    again = finetune(cfg, train.cases, val.cases, run, labels={}, resume=True, stop_at=step + 1, progress=False)
    assert again["step"] == step + 1 and not again["completed"]
    assert [r["step"] for r in read_metrics(run) if "loss" in r] == list(range(1, step + 2))


# -- 4. torchrun, two processes, gloo; random-init baseline and --n-train ----------------------------------
def test_torchrun_two_processes(tmp_path: Path, phantom_dir: Path, cache_dir: Path) -> None:
    run = tmp_path / "run"
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", "2",
        "--master_addr", "127.0.0.1", "--master_port", str(free_port()), "-m", "models.cli",
        *cli_args(phantom_dir, run, "none", 2, cache_dir, "--n-train", "2", "--set", "batch_size=2",
                  "--set", "data.coarse_prob=0.5"),
    ]  # fmt: skip
    res = subprocess.run(cmd, cwd=REPO, env=child_env(1), capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, (res.stdout + res.stderr)[-4000:]
    ranks = json.loads((run / "ranks.json").read_text())
    assert ranks["world_size"] == 2 and ranks["checksums"][0] == ranks["checksums"][1]
    assert load_finetune_checkpoint(run)["step"] == 2
    assert [r["step"] for r in read_metrics(run) if "loss" in r] == [1, 2], "only rank 0 logs"
    info = json.loads((run / "run.json").read_text())
    assert len(info["train_cases"]) == 2 and len(info["val_cases"]) == 1
    assert json.loads((run / "transfer.json").read_text())["summary"]["transferred"] == 0
    _, spec = load_model(run)
    assert spec.provenance["pretrained"] == "none" and spec.metrics["step"] == 2
    # multi-scale: the model says it knows the fast spacing (and the ranks agreed on the weights, above)
    assert spec.preprocessing.trained_fast and spec.preprocessing.fast_spacing == (12.0, 12.0, 16.0)
    assert "multi-scale: 50% of the volumes cropped at the fast spacing, 12 x 12 x 16 mm" in res.stderr
