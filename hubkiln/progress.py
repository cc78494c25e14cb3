"""Progress display for long work: one line per stage with its elapsed time.

`Progress.stage(name)` is a context manager. On a terminal it shows a live
spinner with the stage, its elapsed time and the latest detail line (for
example Packer's current step); elsewhere (CI, a log file) it prints plain
lines. Each stage's duration is kept for the manifest.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.status import Status


def format_seconds(seconds: float) -> str:
    """`75.3` → `1m15s`; under a minute, `9.8s`."""
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(round(seconds)), 60)
    return f"{minutes}m{secs:02d}s"


class Progress:
    """Announce stages, time them, and show detail lines while they run."""

    def __init__(self, console: Console | None = None):
        self.console = console or Console(stderr=True, highlight=False)
        self.timings: dict[str, float] = {}
        self._status: Status | None = None
        self._label = ""
        self._started = 0.0

    @contextmanager
    def stage(self, name: str, what: str) -> Iterator[None]:
        """Run one stage: announce it, time it, report how it ended."""
        self._label, self._started = f"{name}: {what}", time.monotonic()
        interactive = self.console.is_terminal
        if interactive:
            self._status = self.console.status(self._label)
            self._status.start()
        else:
            self.console.print(f"==> {self._label}")
        try:
            yield
        except BaseException:
            elapsed = time.monotonic() - self._started
            self.console.print(f"[red]✗[/red] {name} failed after {format_seconds(elapsed)}")
            raise
        finally:
            if self._status:
                self._status.stop()
                self._status = None
        elapsed = time.monotonic() - self._started
        self.timings[name] = round(elapsed, 1)
        self.console.print(f"[green]✓[/green] {name} ({format_seconds(elapsed)}) {what}")

    def skip(self, name: str, why: str) -> None:
        """Report a stage that did not need to run (for example, a cache hit)."""
        self.timings.setdefault(name, 0.0)
        self.console.print(f"[green]✓[/green] {name} (cached) {why}")

    def detail(self, text: str) -> None:
        """Show the latest detail of the running stage."""
        elapsed = format_seconds(time.monotonic() - self._started)
        line = f"{self._label} [{elapsed}] {text.strip()[:100]}"
        if self._status:
            self._status.update(line)
        else:
            self.console.print(f"    {text.strip()}")
