"""CLI: ``asa finetune``. Thin: check the inputs, build the config, call the trainer.

Every input is checked before the run directory is created, so a typo costs a message and exit code
2, never a half-made run.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import typer

from models.cli_errors import fail, fail_if_run_exists, is_first_rank


def finetune(
    pretrained: str | None = typer.Option(
        None, "--pretrained", help="ASA run directory or checkpoint.pt; 'none' for the random-init baseline"
    ),
    data: Path | None = typer.Option(None, "--data", help="labelled data: MSD/nnU-Net dataset or MONAI datalist"),
    out: Path | None = typer.Option(None, "--out", help="run directory; becomes a model directory"),
    preset: str = typer.Option("btcv", "--preset", help="btcv | cpu-demo"),
    n_train: int | None = typer.Option(None, "--n-train", help="train on K cases only (label-efficiency studies)"),
    steps: int | None = typer.Option(None, "--steps", help="optimiser steps"),
    seed: int | None = typer.Option(None, "--seed"),
    transfer: str | None = typer.Option(None, "--transfer", help="encoder | full (default: full)"),
    label_map: Path | None = typer.Option(
        None, "--label-map", help="JSON/YAML {source_id: target_id}, or a shipped map name (totalseg_to_btcv)"
    ),
    config: Path | None = typer.Option(None, "--config", help="YAML file overriding preset fields"),
    set_: list[str] = typer.Option([], "--set", help="override one field, e.g. --set data.roi=64"),
    resume: Path | None = typer.Option(None, "--resume", help="continue this run exactly where it stopped"),
    progress: bool = typer.Option(True, "--progress/--no-progress"),
    device: str | None = typer.Option(None, "--device", help="cpu | cuda (default: cuda when available)"),
) -> None:
    """Finetune a Swin UNETR for multi-organ segmentation from an ASA pretraining run (or from scratch)."""
    from models.data.datasets import load_dataset
    from models.finetune.config import FinetuneConfig, build_finetune_config
    from models.finetune.data import DataError, split_cases
    from models.finetune.labels import check_labelled, load_label_map, model_labels, resolve_label_map_path
    from models.finetune.trainer import CHECKPOINT, load_finetune_checkpoint
    from models.finetune.trainer import finetune as run_finetune
    from models.finetune.transfer import load_teacher_state
    from models.io.reader import CTReadError
    from models.modeldir import btcv_labels

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    try:
        if resume is not None:
            if not (resume / CHECKPOINT).exists():
                fail(f"--resume {resume}: no {CHECKPOINT} there")
            state = load_finetune_checkpoint(resume)
            saved = FinetuneConfig.model_validate(state["config"])
            cfg = saved.model_copy(update={"steps": steps or saved.steps})
            out = resume
            data = data or Path(json.loads((resume / "run.json").read_text())["data"])
            dataset = load_dataset(data)
            labels, mapping = btcv_labels(), None  # the trainer takes both from the checkpoint
        else:
            if pretrained is None or data is None or out is None:
                fail("--pretrained, --data and --out are required (or --resume RUN); use --pretrained none for "
                      "the random-init baseline")  # fmt: skip
            assert pretrained is not None and data is not None
            fail_if_run_exists(out)
            if pretrained.lower() != "none":
                load_teacher_state(Path(pretrained))  # fails here, before anything is written
                pretrained = str(Path(pretrained).resolve())
            else:
                pretrained = "none"
            map_path = resolve_label_map_path(label_map).resolve() if label_map is not None else None
            cfg = build_finetune_config(
                preset, config, set_, pretrained=pretrained, transfer=transfer, label_map=map_path,
                n_train=n_train, steps=steps, seed=seed,
            )  # fmt: skip
            dataset = load_dataset(data)
            check_labelled(dataset)
            mapping, names = load_label_map(cfg.label_map) if cfg.label_map else (None, {})
            labels = model_labels(dataset, mapping, names)
        train_set, val_set = split_cases(dataset, cfg)
    except (ValueError, FileNotFoundError, CTReadError) as exc:
        fail(str(exc))
        return
    assert out is not None and data is not None
    out.mkdir(parents=True, exist_ok=True)
    run_info = {
        "data": str(data.resolve()),
        "train_cases": [c.id for c in train_set.cases],
        "val_cases": [c.id for c in val_set.cases],
        "pretrained": cfg.pretrained,
        "command": sys.argv,
    }
    if resume is None and is_first_rank():
        (out / "run.json").write_text(json.dumps(run_info, indent=2))
    try:
        result = run_finetune(
            cfg,
            train_set.cases,
            val_set.cases,
            out,
            labels=labels,
            mapping=mapping,
            dataset_labels=dataset.labels,
            provenance={"data": run_info["data"], "dataset": dataset.name, "command": sys.argv},
            resume=resume is not None,
            progress=progress,
            device=device,
        )
    except (DataError, CTReadError) as exc:  # e.g. a label id outside the model's labels, found on reading
        fail(str(exc))
        return
    typer.echo(json.dumps(result, indent=2))


def study_label_efficiency(
    pretrained: Path = typer.Option(..., "--pretrained", help="ASA run directory or checkpoint.pt"),
    data: Path = typer.Option(..., "--data", help="labelled data: MSD/nnU-Net dataset or MONAI datalist"),
    out: Path = typer.Option(..., "--out", help="study directory (runs/, runs.csv, summary.*, dice_vs_labels.png)"),
    n_train: str = typer.Option("1,2,4,8", "--n-train", help="training-set sizes, comma-separated"),
    seeds: int = typer.Option(3, "--seeds", min=1, help="repeats per size (seed s: its own held-out split)"),
    preset: str = typer.Option("cpu-demo", "--preset", help="btcv | cpu-demo"),
    steps: int | None = typer.Option(None, "--steps", help="optimiser steps per run (equal for both arms)"),
    label_map: Path | None = typer.Option(None, "--label-map", help="JSON/YAML {source_id: target_id} or a map name"),
    config: Path | None = typer.Option(None, "--config", help="YAML file overriding preset fields"),
    set_: list[str] = typer.Option([], "--set", help="override one field, e.g. --set data.val_count=4"),
    progress: bool = typer.Option(True, "--progress/--no-progress"),
    device: str | None = typer.Option(None, "--device", help="cpu | cuda (default: cuda when available)"),
) -> None:
    """Finetune ASA-initialised and random-initialised models side by side on 1, 2, 4, 8 labelled scans.

    Both arms get the same preset, steps, seeds and held-out cases; the figure is the final weights'
    held-out mean Dice. Rerunning the same command continues an interrupted study.
    """
    from models.data.datasets import load_dataset
    from models.finetune.labels import check_labelled, load_label_map, model_labels, resolve_label_map_path
    from models.finetune.study import label_efficiency, parse_sizes
    from models.finetune.transfer import load_teacher_state
    from models.io.reader import CTReadError

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    try:
        sizes = parse_sizes(n_train)
        load_teacher_state(pretrained)
        dataset = load_dataset(data)
        check_labelled(dataset)
        map_path = resolve_label_map_path(label_map).resolve() if label_map is not None else None
        mapping, names = load_label_map(map_path) if map_path else (None, {})
        labels = model_labels(dataset, mapping, names)
        summary = label_efficiency(
            pretrained=pretrained.resolve(), dataset=dataset, out=out, sizes=sizes, seeds=seeds, labels=labels,
            mapping=mapping, label_map=map_path, preset=preset, yaml_path=config, overrides=set_, steps=steps,
            progress=progress, device=device,
        )  # fmt: skip
    except (ValueError, FileNotFoundError, CTReadError) as exc:
        fail(str(exc))
    typer.echo((out / "summary.md").read_text() if (out / "summary.md").exists() else "no run finished")
    typer.echo(f"{len(summary['runs'])} runs; report in {out}")
