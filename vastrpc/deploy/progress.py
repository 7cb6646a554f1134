"""Deploy progress as the SDK and ``vastrpc deploy`` show it: live on a terminal, plain lines elsewhere, or none.

``ClientConfig.progress`` (``VASTRPC_PROGRESS``) picks it for the SDK: ``auto`` (live bars when
stderr is a terminal, otherwise a line per step), ``live``, ``plain`` or ``off``.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import IO, Any

from rich.console import Console
from rich.filesize import decimal
from rich.progress import BarColumn, Progress, SpinnerColumn, Task, TaskID, TextColumn
from rich.table import Column
from rich.text import Text

from vastrpc.deploy.flow import DeployProgress

__all__ = ["PlainProgress", "RichProgress", "deploy_progress", "wants_terminal"]

_BAR_WIDTH = 24
_STEP_LABELS = {
    "package": "package",
    "hash": "hash",
    "register": "register",
    "upload": "upload",
    "provision": "provision",
    "ready": "workers",
}


def wants_terminal(mode: str, stream: IO[str]) -> bool:
    """Whether to draw for a terminal: ``always``, ``never``, or ``auto`` (when ``stream`` is one)."""
    if mode != "auto":
        return mode == "always"
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())


class PlainProgress(DeployProgress):
    """Deploy progress as one log line per step on ``stream``: for CI logs, pipes and files.

    Args:
        stream: Where the lines go (stderr).
        prefix: Put before each line (the SDK's ``vastrpc: ``, among a program's own output).
    """

    def __init__(self, stream: IO[str], prefix: str = "") -> None:
        self.stream = stream
        self._prefix = prefix
        self._last_workers = ""

    def _line(self, text: str) -> None:
        self.stream.write(self._prefix + text + "\n")
        self.stream.flush()

    def step_done(self, step: str, summary: str) -> None:
        self._line(f"{step}: {summary}")

    def workers(self, ready: int, wanted: int, states: Sequence[tuple[str, str]]) -> None:
        text = f"workers: {ready}/{wanted} ready" + (f" ({_states(states)})" if states else "")
        if text != self._last_workers:  # a line per change, not per watch update
            self._last_workers = text
            self._line(text)


class _OptionalBar(BarColumn):
    """A bar only for the steps that have an amount (upload, workers)."""

    def render(self, task: Task) -> Any:
        return super().render(task) if task.fields.get("bar") else Text("")


class RichProgress(DeployProgress):
    """Deploy progress drawn live: a spinner per step, a bar for the upload (bytes) and the workers (ready n/m).

    Use it as a context manager around the deploy.

    Args:
        console: The (stderr) console to draw on.
    """

    def __init__(self, console: Console) -> None:
        self._progress = Progress(
            SpinnerColumn(finished_text="[green]✓[/]"),
            TextColumn("[bold]{task.description}", table_column=Column(min_width=9, no_wrap=True)),
            _OptionalBar(bar_width=_BAR_WIDTH, table_column=Column(width=_BAR_WIDTH)),
            TextColumn("{task.fields[detail]}", markup=False, table_column=Column(no_wrap=True)),
            console=console,
            refresh_per_second=10,
        )
        self._tasks: dict[str, TaskID] = {}
        self._console = console

    def _fit(self, text: str) -> str:
        # Cut here: squeezed by a long text, rich would shrink the spinner, label and bar columns instead.
        room = max(20, self._console.width - _BAR_WIDTH - 14)
        return text if len(text) <= room else text[: room - 1] + "…"

    def __enter__(self) -> RichProgress:
        self._progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._progress.stop()

    def _task(self, step: str, total: float | None = None) -> TaskID:
        if step not in self._tasks:
            bar = step in ("upload", "ready")
            label = _STEP_LABELS.get(step, step)
            self._tasks[step] = self._progress.add_task(label, total=total, detail="", bar=bar)
        return self._tasks[step]

    def step_started(self, step: str, total: int | None = None) -> None:
        self._task(step, total)

    def upload_progress(self, sent: int, total: int) -> None:
        task = self._task("upload", total)
        self._progress.update(
            task, total=total, completed=sent, detail=self._fit(f"{decimal(sent)} / {decimal(total)}")
        )

    def workers(self, ready: int, wanted: int, states: Sequence[tuple[str, str]]) -> None:
        detail = f"{ready}/{wanted} ready" + (f" · {_states(states)}" if states else "")
        task = self._task("ready")
        self._progress.update(task, total=max(wanted, 1), completed=ready, detail=self._fit(detail), refresh=True)

    def step_done(self, step: str, summary: str) -> None:
        task = self._task(step)
        total = self._progress.tasks[self._tasks[step]].total or 1
        self._progress.update(task, total=total, completed=total, detail=self._fit(summary), refresh=True)


def _states(states: Sequence[tuple[str, str]], limit: int = 4) -> str:
    shown = ", ".join(f"{worker_id} {state}" for worker_id, state in states[:limit])
    return shown + (f", +{len(states) - limit} more" if len(states) > limit else "")


@contextmanager
def deploy_progress(mode: str, label: str, stream: IO[str] | None = None) -> Iterator[DeployProgress | None]:
    """The progress a deploy of ``label`` (``name:tag``) shows on ``stream`` (stderr) in ``mode``; None for ``off``."""
    out = sys.stderr if stream is None else stream
    if mode == "off":
        yield None
        return
    if mode == "live" or (mode == "auto" and wants_terminal("auto", out)):
        console = Console(file=out, force_terminal=True, highlight=False)
        console.print(f"vastrpc: deploying [bold]{label}[/]")
        with RichProgress(console) as progress:
            yield progress
        return
    out.write(f"vastrpc: deploying {label}\n")
    yield PlainProgress(out, prefix="vastrpc: ")
