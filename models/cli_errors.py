"""How every ``asa`` command reports a user error: one line on stderr and exit code 2 (nothing written)."""

from __future__ import annotations

from typing import NoReturn

import typer


def fail(message: str) -> NoReturn:
    """Print ``error: message`` to stderr and exit with status 2 (the usage-error code typer uses too)."""
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code=2)
