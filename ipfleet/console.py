"""How the `ipfleet` commands end when something goes wrong: one red line, an exit code."""

from __future__ import annotations

from typing import NoReturn

import typer


def fail(message: str, code: int = 1) -> NoReturn:
    """Exit `code`: 1 for a failure to act on, 2 for bad input (the message says which)."""
    typer.secho(f"ipfleet: {message}", err=True, fg=typer.colors.RED)
    raise typer.Exit(code)
