"""CLI: ``asa evaluate``. Thin: parse, load the model and the cases, call the evaluation, write the report."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import typer

from models.cli_errors import fail


def evaluate(
    model: Path = typer.Option(..., "--model", help="a model directory (asa finetune's run)"),
    data: Path = typer.Option(..., "--data", help="labelled cases: MSD/nnU-Net dataset or MONAI datalist"),
    out: Path = typer.Option(..., "--out", help="where metrics.json, metrics.csv and dice.png go"),
    split: str = typer.Option("training", "--split", help="which split of the data set (training | test ...)"),
    cases: str | None = typer.Option(None, "--cases", help="only these case ids, comma-separated"),
    label_map: str | None = typer.Option(None, "--label-map", help="remap the reference ids (file or shipped name)"),
    tolerance_mm: float = typer.Option(2.0, "--tolerance-mm", help="surface Dice (NSD) tolerance"),
    device: str | None = typer.Option(None, "--device"),
    overlap: float = typer.Option(0.5, "--overlap"),
    progress: bool = typer.Option(True, "--progress/--no-progress"),
) -> None:
    """Dice, HD95 and surface Dice per case and organ; means over organs then cases (the BTCV protocol)."""
    from models.data.datasets import load_dataset
    from models.evaluation.evaluate import check_labelled, evaluate_cases
    from models.evaluation.report import write_report
    from models.inference import SegmentOptions
    from models.inference.segmenter import ModelDirError, Segmenter

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    try:
        segmenter = Segmenter.from_model_dir(model, device=device, options=SegmentOptions(overlap=overlap))
        dataset = load_dataset(data, split=split)
        chosen = dataset.cases
        if cases:
            wanted = [c.strip() for c in cases.split(",") if c.strip()]
            unknown = sorted(set(wanted) - {c.id for c in chosen})
            if unknown:
                raise ValueError(f"unknown case id(s) {', '.join(unknown)} in {data} ({split})")
            chosen = [c for c in chosen if c.id in wanted]
        check_labelled(chosen)
        mapping = None
        if label_map:
            from models.finetune.labels import load_label_map

            mapping, _ = load_label_map(label_map)
    except (ModelDirError, ValueError, FileNotFoundError) as exc:
        fail(str(exc))
        return
    evaluation = evaluate_cases(segmenter, chosen, mapping=mapping, dataset_labels=dataset.labels,
                                tolerance_mm=tolerance_mm, progress=progress)
    doc = write_report(
        evaluation,
        out,
        {"model": str(model.resolve()), "data": str(data.resolve()), "split": split, "tolerance_mm": tolerance_mm,
         "label_map": label_map, "overlap": overlap},
    )  # fmt: skip
    typer.echo(json.dumps({"mean": doc["mean"], "cases": len(evaluation.per_case), "errors": evaluation.errors}))
    if evaluation.errors:
        raise typer.Exit(code=1)
