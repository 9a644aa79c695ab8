"""CLI: ``asa export-bundle``."""

from __future__ import annotations

from pathlib import Path

import typer

from models.cli_errors import fail


def export_bundle(
    run: Path = typer.Argument(..., help="a model directory (asa finetune's run)"),
    out: Path = typer.Argument(..., help="the bundle directory to write"),
    overlap: float = typer.Option(0.5, "--overlap", help="sliding-window overlap written into the bundle"),
) -> None:
    """Export a finetuned model as a MONAI Bundle (`python -m monai.bundle run` executes it)."""
    from models.export.bundle import export_bundle as export

    try:
        path = export(run, out, overlap)
    except (FileNotFoundError, ValueError) as exc:
        fail(str(exc))
        return
    typer.echo(f"bundle written to {path}")
