"""A rich progress bar for ``vmopt simulate`` (terminals only): rate and ETA."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import IO, Any

from vmopt.traces import Trace

__all__ = ["progress_bar"]


@contextmanager
def progress_bar(
    trace: Trace | None, source: dict[str, Any], file: IO[str]
) -> Iterator[Callable[[int], None]]:
    """Yield ``advance(n_accesses)``. With a sized trace the bar follows bytes read (so the
    ETA is real); with a workload it follows accesses against ``length`` when known."""
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TaskProgressColumn,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    by_bytes = trace is not None and trace.total_bytes is not None
    total: float | None
    if by_bytes:
        assert trace is not None
        total = float(trace.total_bytes or 0)
    else:
        length = source.get("params", {}).get("length")
        total = float(length) if isinstance(length, int) else None
    counted = [0]
    rate = TextColumn("{task.fields[rate]}")
    columns: list[Any] = [TextColumn("[bold]simulate"), BarColumn(), TaskProgressColumn()]
    if not by_bytes:
        columns.append(MofNCompleteColumn())
    columns += [rate, TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn()]
    with Progress(*columns, console=Console(file=file), transient=True) as bar:
        task = bar.add_task("simulate", total=total, rate="")

        def advance(n: int) -> None:
            counted[0] += n
            elapsed = bar.tasks[0].elapsed or 0.0
            shown = f"{counted[0] / elapsed:,.0f} acc/s" if elapsed > 0 else ""
            if by_bytes:
                assert trace is not None
                bar.update(task, completed=trace.bytes_read, rate=shown)
            else:
                bar.update(task, completed=counted[0], rate=shown)

        yield advance
