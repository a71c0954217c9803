"""Progress while waiting: a spinner on a terminal, a line now and then otherwise."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager

LOG_EVERY = 15.0  # seconds between lines when stderr is not a terminal


@contextmanager
def waiting(what: str, quiet: bool = False) -> Iterator[Callable[[float], None]]:
    """Yields `tick(elapsed_seconds)`, to call on every poll."""
    if quiet:
        yield lambda elapsed: None
        return
    if sys.stderr.isatty():
        from rich.console import Console

        with Console(stderr=True).status(what) as status:
            yield lambda elapsed: status.update(f"{what} ({elapsed:.0f} s)")
        return
    last = [-LOG_EVERY]

    def tick(elapsed: float) -> None:
        if elapsed - last[0] >= LOG_EVERY:
            last[0] = elapsed
            print(f"ipfleet: {what} ({elapsed:.0f} s)", file=sys.stderr, flush=True)

    yield tick
