"""How every ``asa`` command reports a user error: one line on stderr and exit code 2 (nothing written)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import NoReturn

import typer


def fail(message: str) -> NoReturn:
    """Print ``error: message`` to stderr and exit with status 2 (the usage-error code typer uses too)."""
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code=2)


RUN_FILES = ("run.json", "checkpoint.pt", "model.pt", "metrics.jsonl")
"""Files that mark a folder as a training run's (pretraining or finetuning)."""


def is_first_rank() -> bool:
    """True outside torchrun and in its rank 0: the one process that checks and writes a run's own files."""
    return os.environ.get("RANK", "0") == "0"


def fail_if_run_exists(out: Path) -> None:
    """Refuse to start a new run in a folder that holds one: it would overwrite its weights and its log.

    Why: the same command typed twice, or a copied one with the old ``--out``, would silently replace a
    model that took hours to train. ``--resume`` continues a run; starting over is a deliberate ``rm``.
    Only torchrun's rank 0 checks, and only it writes ``run.json``: the ranks start together, so one rank
    would otherwise find the file another had just written.
    """
    if not is_first_rank():
        return
    found = [name for name in RUN_FILES if (out / name).exists()]
    if found:
        fail(f"--out {out} already holds a run ({', '.join(found)}): --resume {out} continues it; to start "
             "over, remove that folder or give another")
