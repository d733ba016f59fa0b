"""Rich progress bars shared by the sweep and the data commands."""

from __future__ import annotations

from typing import Any, Callable, Iterable, Iterator

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

__all__ = ["make_progress", "tracker"]

Track = Callable[..., Iterator[Any]]


def make_progress(console: Console, quiet: bool, transient: bool = False) -> Progress | None:
    """A progress display on ``console``, or None when quiet."""
    if quiet:
        return None
    return Progress(
        SpinnerColumn(), TextColumn("[progress.description]{task.description}"), BarColumn(), MofNCompleteColumn(),
        TimeElapsedColumn(), console=console, transient=transient,
    )


def tracker(progress: Progress | None) -> Track:
    """``track(iterable, description, total)``: iterate while a bar of ``progress`` advances."""

    def track(iterable: Iterable[Any], description: str, total: int | None = None) -> Iterator[Any]:
        if progress is None:
            yield from iterable
            return
        if total is None and hasattr(iterable, "__len__"):
            total = len(iterable)  # type: ignore[arg-type]
        task = progress.add_task(description, total=total)
        try:
            for item in iterable:
                yield item
                progress.advance(task)
        finally:
            progress.remove_task(task)

    return track
