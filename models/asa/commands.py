"""CLI: ``asa pretrain`` and ``asa order-map``. Thin: parse, build the config, call the trainer."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import typer

from models.cli_errors import fail, fail_if_run_exists, is_first_rank


def pretrain(
    data: Path | None = typer.Option(None, "--data", help="scans: a folder, MSD/nnU-Net dataset or MONAI datalist"),
    out: Path | None = typer.Option(None, "--out", help="run directory (checkpoints, metrics, TensorBoard)"),
    preset: str = typer.Option("paper", "--preset", help="paper | cpu-demo"),
    config: Path | None = typer.Option(None, "--config", help="YAML file overriding preset fields"),
    set_: list[str] = typer.Option([], "--set", help="override one field, e.g. --set network.feature_size=24"),
    steps: int | None = typer.Option(None, "--steps", help="stop after N optimiser steps"),
    epochs: int | None = typer.Option(None, "--epochs"),
    batch_size: int | None = typer.Option(None, "--batch-size"),
    seed: int | None = typer.Option(None, "--seed"),
    resume: Path | None = typer.Option(None, "--resume", help="continue this run exactly where it stopped"),
    device: str | None = typer.Option(None, "--device", help="cpu | cuda (default: cuda when available)"),
    progress: bool = typer.Option(True, "--progress/--no-progress"),
) -> None:
    """ASA self-supervised pretraining of a Swin UNETR (phase 1 / phase 2 alternating, EMA teacher)."""
    from models.asa.trainer import CHECKPOINT, load_checkpoint
    from models.asa.trainer import pretrain as run_pretrain
    from models.config import PretrainConfig, build_config
    from models.data.datasets import load_dataset, split_holdout

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    try:
        if resume is not None:
            if not (resume / CHECKPOINT).exists():
                fail(f"--resume {resume}: no {CHECKPOINT} there")
            saved = PretrainConfig.model_validate(load_checkpoint(resume)["config"])
            cfg = saved.model_copy(update={"steps": steps or saved.steps})
            out = resume
            data = data or Path(json.loads((resume / "run.json").read_text())["data"])
        else:
            if data is None or out is None:
                fail("--data and --out are required (or --resume RUN)")
            fail_if_run_exists(out)
            cfg = build_config(preset, config, set_, steps=steps, epochs=epochs, batch_size=batch_size, seed=seed)
        dataset = load_dataset(data)
        train_set, held = split_holdout(dataset, cfg.holdout, cfg.seed) if cfg.holdout else (dataset, None)
    except (ValueError, FileNotFoundError) as exc:
        fail(str(exc))
        return
    assert out is not None and data is not None
    out.mkdir(parents=True, exist_ok=True)
    if is_first_rank():  # torchrun: one writer (and rank 0's check of --out must not see another rank's file)
        (out / "run.json").write_text(
            json.dumps(
                {
                    "data": str(data.resolve()),
                    "train_cases": [c.id for c in train_set.cases],
                    "holdout_cases": [c.id for c in held.cases] if held else [],
                    "command": sys.argv,
                },
                indent=2,
            )
        )
    result = run_pretrain(
        cfg,
        train_set.cases,
        out,
        holdout_cases=held.cases if held else None,
        resume=resume is not None,
        progress=progress,
        device=device,
    )
    typer.echo(json.dumps(result, indent=2))


def order_map(
    input: Path = typer.Argument(..., help="a scan: NIfTI, DICOM folder/zip, NRRD, MetaImage"),
    checkpoint: Path = typer.Option(..., "--checkpoint", help="pretraining run directory or checkpoint.pt"),
    out: Path = typer.Option(..., "--out"),
    network: str = typer.Option("teacher", "--network", help="teacher | student"),
    shuffle: bool = typer.Option(True, "--shuffle/--no-shuffle", help="shuffle sub-volumes first (the pretext task)"),
    seed: int = typer.Option(0, "--seed"),
) -> None:
    """Per-sub-volume order-prediction error (NIfTI + PNG) and predicted positions (RGB NIfTI) of a scan."""
    from models.asa.order_map import compute_order_map, load_network, write_order_map
    from models.asa.trainer import load_checkpoint
    from models.io.reader import CTReadError, load_ct

    try:
        net, cfg = load_network(load_checkpoint(checkpoint), network)
        ct = load_ct(input)
    except (CTReadError, FileNotFoundError, ValueError) as exc:
        fail(str(exc))
        return
    summary = write_order_map(ct, compute_order_map(ct, net, cfg, shuffle=shuffle, seed=seed), out)
    typer.echo(json.dumps(summary, indent=2))


def pretrain_eval(
    run: Path = typer.Argument(..., help="a pretraining run directory"),
) -> None:
    """Order error (overall and per axis) and recovery MSE of a run's teacher and student on its held-out scans."""
    from models.asa.data import PretrainViews
    from models.asa.model import ASA
    from models.asa.trainer import CHECKPOINT, evaluate_order, load_checkpoint
    from models.config import PretrainConfig
    from models.data.cache import cached_volume
    from models.data.datasets import load_dataset

    if not (run / CHECKPOINT).exists() or not (run / "run.json").exists():
        fail(f"{run}: not a pretraining run (needs {CHECKPOINT} and run.json)")
    state = load_checkpoint(run)
    cfg = PretrainConfig.model_validate(state["config"])
    info = json.loads((run / "run.json").read_text())
    try:
        cases = [c for c in load_dataset(Path(info["data"])).cases if c.id in set(info["holdout_cases"])]
    except (ValueError, FileNotFoundError) as exc:
        fail(f"{run}: its data can no longer be read: {exc}")
        return
    if not cases:
        fail(f"{run}: no held-out scans (the run was made with holdout=0)")
    cache = cfg.data.cache_dir or run / "cache"
    views = PretrainViews([cached_volume(c.image, cfg.data, cache) for c in cases], cfg)
    model = ASA(cfg)
    model.student.load_state_dict(state["student"])
    model.teacher.load_state_dict(state["teacher"])
    figures = evaluate_order(model, [views[(i, 0, 1)] for i in range(len(cases))], cfg)
    typer.echo(json.dumps({"step": state["step"], "held_out": [c.id for c in cases], **figures}, indent=2))
