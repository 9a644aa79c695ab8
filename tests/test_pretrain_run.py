"""Integration tests of ASA pretraining runs: exact resume, checkpoints and logs, signals, torchrun,
CLI errors, order maps, non-finite losses.

Everything runs a tiny network (feature size 12, 32-wide projectors) on three small phantoms, and every
run is a handful of optimiser steps: one step costs 5-15 s on two CPU cores.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import models
from models.asa.order_map import paint
from models.asa.trainer import CHECKPOINT, load_checkpoint, pretrain
from models.cli import app
from models.config import PretrainConfig, build_config, load_config
from models.data.datasets import load_dataset
from models.data.phantom import generate_phantom, write_phantom_dataset

REPO = Path(__file__).resolve().parents[1]
TINY = [
    "network.projector_dim=32",
    "network.projector_hidden=32",
    "network.local_dim=16",
    "holdout=0",
    "eval_every=0",
]
PHANTOM_SHAPE = (96, 96, 48)
PHANTOM_SPACING = (3.6, 3.6, 5.0)
STEPS = 3  # phases 1, 2, 1 with alternate="step"; the resumed run stops after step STOP_AT
STOP_AT = 2
LOSS_KEYS = (
    "phase",
    "loss",
    "loss_vop",
    "loss_var",
    "loss_global",
    "loss_local",
    "order_error_vox",
    "lr",
    "ema_momentum",
)
runner = CliRunner()

pytestmark = pytest.mark.slow


# -- helpers ---------------------------------------------------------------------------------------
def tiny_config(cache_dir: Path, **fields: Any) -> PretrainConfig:
    return build_config("cpu-demo", overrides=[*TINY, f"data.cache_dir={cache_dir}"], batch_size=2, **fields)


def read_metrics(run: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line]


def child_env(threads: int = 2) -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    return env


def cli_args(data: Path, run: Path, steps: int, cache: Path) -> list[str]:
    args = [
        "pretrain",
        "--preset",
        "cpu-demo",
        "--data",
        str(data),
        "--out",
        str(run),
        "--steps",
        str(steps),
        "--batch-size",
        "2",
        "--no-progress",
    ]
    for item in [*TINY, f"data.cache_dir={cache}"]:
        args += ["--set", item]
    return args


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stderr_of(result: Any) -> str:
    """CliRunner output, stderr included whatever the runner's stream mixing."""
    text = result.output or ""
    try:
        text += result.stderr or ""
    except ValueError:  # stderr mixed into output
        pass
    return text


# -- fixtures --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def phantom_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("phantoms")
    return write_phantom_dataset(out, n=3, seed=0, shape=PHANTOM_SHAPE, spacing=PHANTOM_SPACING)


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One preprocessing cache for every run of this module (the cache key includes the data config)."""
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def cases(phantom_dir: Path) -> list[Any]:
    return load_dataset(phantom_dir).cases


@pytest.fixture(scope="module")
def resume_cfg(cache_dir: Path) -> PretrainConfig:
    """Bit-exact runs need deterministic kernels (``deterministic=True``): see ``deterministic_kernels``."""
    return tiny_config(cache_dir, steps=STEPS, alternate="step", checkpoint_every=1000, deterministic=True)


@pytest.fixture(scope="module")
def run_a(
    tmp_path_factory: pytest.TempPathFactory, resume_cfg: PretrainConfig, cases: list[Any]
) -> Path:
    """An uninterrupted run of STEPS steps (both phases); reused by the checkpoint and order-map tests."""
    out = tmp_path_factory.mktemp("run_a")
    assert not torch.are_deterministic_algorithms_enabled()
    result = pretrain(resume_cfg, cases, out, progress=False)
    assert result == {"step": STEPS, "total_steps": STEPS, "completed": True}
    assert not torch.are_deterministic_algorithms_enabled(), "the trainer must restore the global kernel setting"
    return out


# -- 1. exact resume -------------------------------------------------------------------------------
def test_resume_is_exact(
    tmp_path: Path, run_a: Path, resume_cfg: PretrainConfig, cases: list[Any]
) -> None:
    run_b = tmp_path / "run_b"
    first = pretrain(resume_cfg, cases, run_b, progress=False, stop_at=STOP_AT)
    assert first == {"step": STOP_AT, "total_steps": STEPS, "completed": False}
    assert load_checkpoint(run_b)["step"] == STOP_AT
    assert [r["step"] for r in read_metrics(run_b)] == list(range(1, STOP_AT + 1))
    second = pretrain(resume_cfg, cases, run_b, progress=False, resume=True)
    assert second == {"step": STEPS, "total_steps": STEPS, "completed": True}

    rec_a, rec_b = read_metrics(run_a), read_metrics(run_b)
    assert [r["step"] for r in rec_b] == list(range(1, STEPS + 1)), "one record per step, no duplicates"
    assert [r["step"] for r in rec_a] == list(range(1, STEPS + 1))
    assert {r["phase"] for r in rec_a} == {1, 2}
    for a, b in zip(rec_a, rec_b, strict=True):
        keys = [k for k in LOSS_KEYS if k in a]
        assert keys == [k for k in LOSS_KEYS if k in b]
        for k in keys:
            assert b[k] == a[k], f"step {a['step']}: {k} {a[k]} != {b[k]}"

    ck_a, ck_b = load_checkpoint(run_a), load_checkpoint(run_b)
    assert ck_a["step"] == ck_b["step"] == STEPS
    for net in ("student", "teacher"):
        assert ck_a[net].keys() == ck_b[net].keys()
        for name, tensor in ck_a[net].items():
            assert torch.equal(tensor, ck_b[net][name]), f"{net}.{name} differs after resume"
    opt_a, opt_b = ck_a["optimizer"]["state"], ck_b["optimizer"]["state"]
    assert opt_a.keys() == opt_b.keys()
    for idx, st in opt_a.items():
        for key, value in st.items():
            assert torch.equal(torch.as_tensor(value), torch.as_tensor(opt_b[idx][key])), (idx, key)


# -- 2. checkpoint, config, metrics and TensorBoard ------------------------------------------------
def test_checkpoint_and_logs(run_a: Path, resume_cfg: PretrainConfig) -> None:
    ckpt = load_checkpoint(run_a)
    assert {"student", "teacher", "optimizer", "step", "total_steps", "config", "version"} <= ckpt.keys()
    assert ckpt["step"] == ckpt["total_steps"] == STEPS
    assert ckpt["version"] == models.__version__
    assert PretrainConfig.model_validate(ckpt["config"]) == resume_cfg
    assert load_config(run_a / "config.yaml") == resume_cfg
    assert not list(run_a.glob("*.tmp")), "atomic save left a temporary file"

    events = list((run_a / "tensorboard").glob("events.out.tfevents.*"))
    assert events, "no TensorBoard events file"
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_a / "tensorboard"))
    acc.Reload()
    assert [e.step for e in acc.Scalars("train/loss")] == list(range(1, STEPS + 1))

    records = read_metrics(run_a)
    common = {"step", "phase", "loss", "lr", "ema_momentum", "samples_per_s", "time"}
    phase1 = common | {"loss_vop", "loss_var", "loss_global", "order_error_vox"}
    phase2 = common | {"loss_global", "loss_local"}
    for r in records:
        assert set(r) == (phase1 if r["phase"] == 1 else phase2), r
        assert all(np.isfinite(v) for v in r.values())
        assert r["loss"] >= 0 and r["samples_per_s"] > 0 and r["lr"] > 0
        assert resume_cfg.optim.ema_start <= r["ema_momentum"] <= 1.0
    assert [r["phase"] for r in records] == [1, 2, 1]
    w = resume_cfg.loss
    r1, r2 = records[0], records[1]
    assert r1["loss"] == pytest.approx(
        w.vop * r1["loss_vop"] + w.var * r1["loss_var"] + w.global1 * r1["loss_global"], rel=1e-5
    )
    assert r2["loss"] == pytest.approx(w.global2 * r2["loss_global"] + w.local * r2["loss_local"], rel=1e-5)
    lrs = [r["lr"] for r in records]
    assert lrs[0] < lrs[1], "linear warm-up"


# -- 3. SIGTERM / SIGINT: finish the step, checkpoint, exit 0; then resume ---------------------------
def _wait_for_metrics(proc: subprocess.Popen, metrics: Path, log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"pretraining exited early with {proc.returncode}:\n{log.read_text()[-3000:]}")
        if metrics.exists() and metrics.read_text().strip():
            return
        time.sleep(0.5)
    proc.kill()
    pytest.fail(f"no metrics record within {timeout:.0f} s")


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_checkpoints_and_resumes(
    signum: int, tmp_path: Path, phantom_dir: Path, cache_dir: Path, cases: list[Any]
) -> None:
    run = tmp_path / "run"
    log = tmp_path / "pretrain.log"
    with log.open("w") as sink:
        proc = subprocess.Popen(
            [sys.executable, "-m", "models.cli", *cli_args(phantom_dir, run, 50, cache_dir)],
            cwd=REPO,
            env=child_env(),
            stdout=sink,
            stderr=subprocess.STDOUT,
            text=True,
        )
        try:
            _wait_for_metrics(proc, run / "metrics.jsonl", log, timeout=180)
            proc.send_signal(signum)
            proc.wait(timeout=120)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    out = log.read_text()
    assert proc.returncode == 0, out[-3000:]
    assert "Traceback" not in out, out[-3000:]
    ckpt = load_checkpoint(run)
    step = ckpt["step"]
    assert 1 <= step < 50 and ckpt["total_steps"] == 50
    assert [r["step"] for r in read_metrics(run)] == list(range(1, step + 1))
    result = json.loads(out[out.rindex('{\n  "step"') :])  # the CLI prints the result last
    assert result == {"step": step, "total_steps": 50, "completed": False}
    if signum != signal.SIGTERM:
        return  # the resume below does not depend on which signal stopped the run

    cfg = PretrainConfig.model_validate(ckpt["config"])
    again = pretrain(cfg, cases, run, resume=True, stop_at=step + 1, progress=False)
    assert again == {"step": step + 1, "total_steps": 50, "completed": False}
    assert load_checkpoint(run)["step"] == step + 1
    assert [r["step"] for r in read_metrics(run)] == list(range(1, step + 2))


# -- 4. data parallel: torchrun with gloo, and the gradient all-reduce itself ----------------------
def test_torchrun_two_processes(tmp_path: Path, phantom_dir: Path, cache_dir: Path) -> None:
    run = tmp_path / "run"
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nnodes",
        "1",
        "--nproc_per_node",
        "2",
        "--master_addr",
        "127.0.0.1",
        "--master_port",
        str(free_port()),
        "-m",
        "models.cli",
        *cli_args(phantom_dir, run, 2, cache_dir),
    ]
    res = subprocess.run(cmd, cwd=REPO, env=child_env(1), capture_output=True, text=True, timeout=420)
    assert res.returncode == 0, (res.stdout + res.stderr)[-4000:]
    ranks = json.loads((run / "ranks.json").read_text())
    assert ranks["world_size"] == 2
    assert len(ranks["checksums"]) == 2 and ranks["checksums"][0] == ranks["checksums"][1]
    ckpt = load_checkpoint(run)
    assert ckpt["step"] == ckpt["total_steps"] == 2
    assert [r["step"] for r in read_metrics(run)] == [1, 2], "only rank 0 logs"


AVERAGE_SCRIPT = """
import json, sys
import torch
import torch.distributed as dist
from models.asa.trainer import average_gradients, init_distributed

ctx = init_distributed("cpu")
r = ctx.rank
params = [torch.nn.Parameter(torch.zeros(2, 3)), torch.nn.Parameter(torch.zeros(4)), torch.nn.Parameter(torch.zeros(1))]
params[0].grad = torch.full((2, 3), float(r + 1)) * torch.arange(6.0).view(2, 3)
params[1].grad = torch.tensor([1.0, -2.0, 3.0, 10.0 * r])
# params[2] has no gradient (e.g. the decoder in phase 2): skipped, stays None
average_gradients(params, ctx.world)
out = {"world": ctx.world, "g0": params[0].grad.tolist(), "g1": params[1].grad.tolist(), "g2": params[2].grad}
open(f"{sys.argv[1]}/rank{r}.json", "w").write(json.dumps(out))
dist.destroy_process_group()
"""


def test_average_gradients_is_the_mean(tmp_path: Path) -> None:
    script = tmp_path / "average.py"
    script.write_text(textwrap.dedent(AVERAGE_SCRIPT))
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nnodes",
        "1",
        "--nproc_per_node",
        "2",
        "--master_addr",
        "127.0.0.1",
        "--master_port",
        str(free_port()),
        str(script),
        str(tmp_path),
    ]
    res = subprocess.run(cmd, cwd=REPO, env=child_env(1), capture_output=True, text=True, timeout=180)
    assert res.returncode == 0, (res.stdout + res.stderr)[-4000:]
    expected0 = (np.arange(6.0).reshape(2, 3) * 1.5).tolist()  # mean of 1x and 2x
    expected1 = [1.0, -2.0, 3.0, 5.0]
    for r in (0, 1):
        got = json.loads((tmp_path / f"rank{r}.json").read_text())
        assert got["world"] == 2
        assert got["g0"] == expected0 and got["g1"] == expected1 and got["g2"] is None


def test_average_gradients_single_process_is_identity() -> None:
    from models.asa.trainer import average_gradients

    p = torch.nn.Parameter(torch.zeros(3))
    p.grad = torch.tensor([1.0, 2.0, 3.0])
    average_gradients([p], 1)
    assert p.grad.tolist() == [1.0, 2.0, 3.0]


# -- 5. CLI errors: exit code 2 and a message, never a traceback --------------------------------------
def test_cli_errors(tmp_path: Path, phantom_dir: Path) -> None:
    def fails(args: list[str], *needles: str) -> None:
        res = runner.invoke(app, args)
        text = stderr_of(res)
        assert res.exit_code == 2, (args, res.exit_code, text, res.exception)
        assert "Traceback" not in text
        for needle in needles:
            assert needle in text, (args, text)

    out = str(tmp_path / "run")
    fails(["pretrain"], "--data and --out are required")
    fails(["pretrain", "--data", str(phantom_dir)], "--data and --out are required")
    fails(["pretrain", "--resume", str(tmp_path)], str(tmp_path), "checkpoint.pt")
    missing = tmp_path / "no_such_data"
    fails(["pretrain", "--data", str(missing), "--out", out], str(missing))
    fails(["pretrain", "--preset", "nope", "--data", str(phantom_dir), "--out", out], "unknown preset 'nope'")
    fails(
        ["pretrain", "--preset", "cpu-demo", "--data", str(phantom_dir), "--out", out, "--set", "data.roi=50"],
        "roi must be a multiple of 32",
    )
    fails(
        ["pretrain", "--preset", "cpu-demo", "--data", str(phantom_dir), "--out", out, "--set", "batch_size"],
        "field.path=value",
    )
    fails(
        ["pretrain", "--preset", "cpu-demo", "--data", str(phantom_dir), "--out", out, "--set", "network.nope=1"],
        "nope",
    )
    assert not (tmp_path / "run").exists(), "a failed command must not create the run directory"


def test_cli_error_exit_code_of_the_real_script(tmp_path: Path, phantom_dir: Path) -> None:
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "models.cli",
            "pretrain",
            "--preset",
            "cpu-demo",
            "--data",
            str(phantom_dir),
            "--out",
            str(tmp_path / "run"),
            "--set",
            "data.roi=50",
        ],
        cwd=REPO,
        env=child_env(1),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 2, res.stderr
    assert "roi must be a multiple of 32" in res.stderr and "Traceback" not in res.stderr


# -- 6. order maps ---------------------------------------------------------------------------------
def _order_map(scan: Path, run: Path, out: Path) -> dict[str, Any]:
    res = runner.invoke(app, ["order-map", str(scan), "--checkpoint", str(run), "--out", str(out)])
    assert res.exit_code == 0, (stderr_of(res), res.exception)
    for name in ("order_error.nii.gz", "order_positions_rgb.nii.gz", "order_map.png", "order_map.json"):
        assert (out / name).is_file(), name
    return json.loads((out / "order_map.json").read_text())


def _check_blocks(volume: np.ndarray, grid: int) -> None:
    """Constant inside each sub-volume block: equal to the block grid painted back."""
    idx = [np.minimum((np.arange(n) * grid) // n, grid - 1) for n in volume.shape[:3]]
    firsts = [np.searchsorted(i, np.arange(grid)) for i in idx]
    cells = volume[np.ix_(*firsts)]
    np.testing.assert_array_equal(paint(cells, volume.shape[:3]), volume)


def test_order_map_on_a_phantom(tmp_path: Path, run_a: Path, phantom_dir: Path) -> None:
    scan = phantom_dir / "imagesTr" / "phantom_000.nii.gz"
    summary = _order_map(scan, run_a, tmp_path / "map")
    src = nib.load(scan)
    err = nib.load(tmp_path / "map" / "order_error.nii.gz")
    rgb = nib.load(tmp_path / "map" / "order_positions_rgb.nii.gz")
    assert err.shape == src.shape
    assert rgb.shape == (*src.shape, 3)
    np.testing.assert_allclose(err.affine, src.affine, atol=1e-5)
    np.testing.assert_allclose(rgb.affine, src.affine, atol=1e-5)
    e = np.asarray(err.dataobj)
    assert np.all(np.isfinite(e)) and e.min() >= 0 and e.max() > 0
    grid = summary["grid"]
    assert grid == 4 and summary["mean_error_vox"] >= 0 and summary["baseline_error_vox"] > 0
    _check_blocks(e, grid)
    _check_blocks(np.asarray(rgb.dataobj), grid)


def test_order_map_lps_matches_ras(tmp_path: Path, run_a: Path) -> None:
    paths = {}
    for order in ("RAS", "LPS"):
        ph = generate_phantom(7, PHANTOM_SHAPE, PHANTOM_SPACING, voxel_order=order)
        paths[order] = tmp_path / f"{order}.nii.gz"
        nib.save(nib.Nifti1Image(ph.ct, ph.affine), paths[order])
    maps = {order: _order_map(p, run_a, tmp_path / f"map_{order}") for order, p in paths.items()}
    assert maps["RAS"] == maps["LPS"]

    lps_src = nib.load(paths["LPS"])
    assert "".join(nib.aff2axcodes(lps_src.affine)) == "LPS"
    for name in ("order_error.nii.gz", "order_positions_rgb.nii.gz"):
        ras = nib.load(tmp_path / "map_RAS" / name)
        lps = nib.load(tmp_path / "map_LPS" / name)
        np.testing.assert_allclose(lps.affine, lps_src.affine, atol=1e-5)  # written in the input's own grid
        assert lps.shape[:3] == lps_src.shape
        canon = nib.as_closest_canonical(lps)
        np.testing.assert_allclose(canon.affine, ras.affine, atol=1e-4)
        np.testing.assert_array_equal(np.asarray(canon.dataobj), np.asarray(ras.dataobj))


# -- 7. a non-finite loss stops the run naming the step -----------------------------------------------
def test_non_finite_loss_stops_the_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cache_dir: Path, cases: list[Any]
) -> None:
    from models.asa import losses

    monkeypatch.setattr(losses, "order_loss", lambda pred, target: (pred * float("nan")).mean())
    cfg = tiny_config(cache_dir, steps=3, alternate="step")
    with pytest.raises(FloatingPointError, match=r"non-finite loss at step 1 \(phase 1\)"):
        pretrain(cfg, cases, tmp_path / "run", progress=False)
    assert not (tmp_path / "run" / CHECKPOINT).exists(), "no checkpoint of a diverged model"


# -- held-out evaluation ---------------------------------------------------------------------------
def test_held_out_eval_and_pretrain_eval_command(tmp_path: Path, phantom_dir: Path, cache_dir: Path) -> None:
    """The end-of-run evaluation lands in eval.json; `asa pretrain-eval` recomputes the same figures,
    per axis included (x, y, z errors each within [0, 24] voxels on a 4-cell axis)."""
    cfg = tiny_config(cache_dir, steps=1, alternate="step").model_copy(update={"holdout": 1})
    data = load_dataset(phantom_dir)
    from models.data.datasets import split_holdout

    train, held = split_holdout(data, 1, cfg.seed)
    out = tmp_path / "run"
    out.mkdir()
    (out / "run.json").write_text(
        json.dumps({"data": str(phantom_dir), "holdout_cases": [c.id for c in held.cases]})
    )
    result = pretrain(cfg, train.cases, out, holdout_cases=held.cases, progress=False)
    saved = json.loads((out / "eval.json").read_text())
    assert saved["student_order_error_vox"] == result["student_order_error_vox"] > 0
    res = runner.invoke(app, ["pretrain-eval", str(out)])
    assert res.exit_code == 0, stderr_of(res)
    again = json.loads(res.output)
    assert again["held_out"] == [c.id for c in held.cases]
    for key, value in saved.items():
        assert again[key] == pytest.approx(value, rel=1e-5), key
    for net in ("teacher", "student"):
        assert all(0 <= saved[f"{net}_order_error_{a}_vox"] <= 24 for a in "xyz")

    bad = runner.invoke(app, ["pretrain-eval", str(tmp_path)])
    assert bad.exit_code == 2 and "not a pretraining run" in stderr_of(bad)
