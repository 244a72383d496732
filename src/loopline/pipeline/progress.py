"""What a run shows while it goes: a live table in a terminal, log lines otherwise.

Every event is also a structured log record on the ``loopline.run`` logger, with
``run_id``, ``step``, ``status`` and ``duration`` attributes; ``JSONFormatter`` writes
them as one JSON object a line for log collectors.

Examples
--------
>>> import logging
>>> record = logging.LogRecord("loopline.run", logging.INFO, "", 0, "step done", None, None)
>>> record.step = "train"
>>> JSONFormatter().format(record)[:60]
'{"level":"info","logger":"loopline.run","message":"step done'
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any, Protocol

import orjson
from rich.console import Console, Group
from rich.live import Live
from rich.spinner import Spinner
from rich.table import Table
from rich.text import Text

__all__ = [
    "JSONFormatter",
    "LiveReporter",
    "LogReporter",
    "NullReporter",
    "Reporter",
    "configure_logging",
]

log = logging.getLogger("loopline.run")

_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}


class Reporter(Protocol):
    """Hooks the runner calls; every argument is keyword-only."""

    def run_started(self, *, run_id: str, pipeline: str, steps: list[str]) -> None: ...

    def step_started(self, *, run_id: str, step: str) -> None: ...

    def step_finished(
        self, *, run_id: str, step: str, status: str, duration: float, error: str | None
    ) -> None: ...

    def run_finished(self, *, run_id: str, status: str, duration: float) -> None: ...


class NullReporter:
    def run_started(self, *, run_id: str, pipeline: str, steps: list[str]) -> None:
        pass

    def step_started(self, *, run_id: str, step: str) -> None:
        pass

    def step_finished(
        self, *, run_id: str, step: str, status: str, duration: float, error: str | None
    ) -> None:
        pass

    def run_finished(self, *, run_id: str, status: str, duration: float) -> None:
        pass


class LogReporter:
    """One log line an event on ``loopline.run``: for files, CI and log collectors."""

    def run_started(self, *, run_id: str, pipeline: str, steps: list[str]) -> None:
        log.info(
            "run %s of %s started: %d steps",
            run_id,
            pipeline,
            len(steps),
            extra={"run_id": run_id, "pipeline": pipeline, "event": "run_started"},
        )

    def step_started(self, *, run_id: str, step: str) -> None:
        log.info(
            "step %s started",
            step,
            extra={"run_id": run_id, "step": step, "event": "step_started"},
        )

    def step_finished(
        self, *, run_id: str, step: str, status: str, duration: float, error: str | None
    ) -> None:
        level = logging.ERROR if status == "failed" else logging.INFO
        detail = f": {error}" if error else ""
        log.log(
            level,
            "step %s %s in %.2fs%s",
            step,
            status,
            duration,
            detail,
            extra={
                "run_id": run_id,
                "step": step,
                "status": status,
                "duration": round(duration, 6),
                "event": "step_finished",
            },
        )

    def run_finished(self, *, run_id: str, status: str, duration: float) -> None:
        log.log(
            logging.INFO if status == "succeeded" else logging.ERROR,
            "run %s %s in %.2fs",
            run_id,
            status,
            duration,
            extra={
                "run_id": run_id,
                "status": status,
                "duration": round(duration, 6),
                "event": "run_finished",
            },
        )


_STYLES = {
    "pending": ("·", "dim"),
    "succeeded": ("✓", "green"),
    "cached": ("↺", "cyan"),
    "failed": ("✗", "red"),
    "skipped": ("-", "yellow"),
}


@dataclass
class _Row:
    status: str = "pending"
    started: float | None = None
    duration: float | None = None
    error: str | None = None


@dataclass
class LiveReporter:
    """A live table of steps, redrawn in place, for an interactive terminal."""

    console: Console = field(default_factory=lambda: Console(stderr=True))
    _rows: dict[str, _Row] = field(default_factory=dict)
    _live: Live | None = None
    _title: str = ""

    def run_started(self, *, run_id: str, pipeline: str, steps: list[str]) -> None:
        self._rows = {s: _Row() for s in steps}
        self._title = f"{pipeline} · run {run_id}"
        self._live = Live(
            get_renderable=self._render,
            console=self.console,
            refresh_per_second=8,
            transient=False,
        )
        self._live.start()

    def step_started(self, *, run_id: str, step: str) -> None:
        self._rows[step] = _Row("running", started=time.monotonic())

    def step_finished(
        self, *, run_id: str, step: str, status: str, duration: float, error: str | None
    ) -> None:
        self._rows[step] = _Row(status, duration=duration, error=error)

    def run_finished(self, *, run_id: str, status: str, duration: float) -> None:
        if self._live is not None:
            self._live.refresh()
            self._live.stop()
            self._live = None

    def _render(self) -> Group:
        table = Table(title=self._title, title_justify="left", box=None, padding=(0, 1))
        table.add_column("", width=1)
        table.add_column("step")
        table.add_column("status")
        table.add_column("time", justify="right")
        for name, row in self._rows.items():
            if row.status == "running":
                icon: Any = Spinner("dots", style="blue")
                elapsed = time.monotonic() - (row.started or time.monotonic())
                table.add_row(icon, name, Text("running", "blue"), f"{elapsed:.1f}s")
                continue
            mark, style = _STYLES.get(row.status, ("?", ""))
            shown = Text(row.status, style)
            if row.error:
                shown.append(f"  {row.error.splitlines()[0][:100]}", "red")
            when = "" if row.duration is None else f"{row.duration:.2f}s"
            table.add_row(Text(mark, style), name, shown, when)
        return Group(table)


class JSONFormatter(logging.Formatter):
    """A log record as one JSON object: level, logger, message, time and any extras."""

    def format(self, record: logging.LogRecord) -> str:
        document: dict[str, Any] = {
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
            "time": record.created,
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                document[key] = value
        if record.exc_info:
            document["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(document, default=str).decode()


def configure_logging(*, json: bool = False, verbose: bool = False) -> None:
    """Send loopline's logs to stderr: plain lines, or JSON objects with ``json=True``."""
    handler = logging.StreamHandler()
    if json:
        handler.setFormatter(JSONFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-5s %(message)s", "%X"))
    root = logging.getLogger("loopline")
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    root.propagate = False
