"""The one progress bar of long work (simulator runs, figures, perplexity windows, zero-shot requests,
quantized layers): description, bar, done / total, elapsed, the rate in the work's own unit and the time left.
It draws on stderr and only on a terminal, so piped output and logs stay clean."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rich.console import Console
    from rich.progress import Progress


def progress_bar(
    unit: str,
    console: Console | None = None,
    transient: bool = False,
    rate_text: Callable[[float, float | None], str] | None = None,
) -> Progress:
    """A rich Progress with a `<speed> <unit>/s` column (or `rate_text(speed, total)`) and the time left."""
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        ProgressColumn,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )
    from rich.text import Text

    class RateColumn(ProgressColumn):
        def render(self, task) -> Text:
            if not task.speed:
                return Text("")
            return Text(rate_text(task.speed, task.total) if rate_text else f"{task.speed:,.1f} {unit}/s")

    console = console or Console(stderr=True)
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        RateColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        console=console,
        transient=transient,
        disable=not console.is_terminal,  # no stray newline on stderr without a terminal
    )
