"""CLI: ``asa phantom`` writes the synthetic abdominal CT dataset (the embedded default data)."""

from __future__ import annotations

import time
from pathlib import Path

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn


def phantom(
    n: int = typer.Option(20, "--n", min=1, help="number of phantoms to write"),
    out: Path = typer.Option(..., "--out", help="output folder (MSD layout: imagesTr, labelsTr, dataset.json)"),
    seed: int = typer.Option(0, "--seed", help="dataset seed: same seed, same phantoms"),
) -> None:
    """Write synthetic abdominal CT phantoms with the 13 BTCV organ labels."""
    from models.data.phantom import DEFAULT_SHAPE, DEFAULT_SPACING, write_phantom_dataset  # scipy: not for --help

    console = Console(stderr=True)
    shape = "x".join(map(str, DEFAULT_SHAPE))
    spacing = "x".join(map(str, DEFAULT_SPACING))
    console.print(f"writing {n} phantoms of {shape} voxels at {spacing} mm to {out}")
    t0 = time.perf_counter()
    with Progress(
        TextColumn("phantoms"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=False,
    ) as bar:
        task = bar.add_task("phantoms", total=n)
        root = write_phantom_dataset(out, n, seed, progress=lambda done, _total: bar.update(task, completed=done))
    console.print(f"done in {time.perf_counter() - t0:.1f} s")
    typer.echo(str(root / "dataset.json"))
