"""What a run shows: the live table in a terminal, log lines and JSON lines otherwise."""

from __future__ import annotations

import io
import logging
import sys
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
from rich.console import Console

from loopline import step
from loopline.config import Settings
from loopline.pipeline.dag import Pipeline
from loopline.pipeline.progress import (
    JSONFormatter,
    LiveReporter,
    LogReporter,
    configure_logging,
)
from loopline.pipeline.runner import Runner


@pytest.fixture
def captured_logs() -> Iterator[io.StringIO]:
    """The ``loopline`` logger's output as JSON lines, restored afterwards."""
    logger = logging.getLogger("loopline")
    saved = (logger.handlers[:], logger.level, logger.propagate)
    stream = io.StringIO()
    configure_logging(json=True)
    logger.handlers[0].setStream(stream)  # type: ignore[attr-defined]
    try:
        yield stream
    finally:
        logger.handlers[:], logger.level, logger.propagate = saved


def pipeline() -> Pipeline:
    @step
    def first() -> int:
        return 1

    @step
    def second(first: int) -> int:
        raise ValueError(f"second cannot use {first}")

    @step
    def third(second: int) -> int:
        return second

    return Pipeline.from_steps([first, second, third], name="shown")


def run_with(reporter: object, home: Path) -> str:
    settings = Settings.load(start=home, search=False, env={})
    with Runner(settings, reporter=reporter) as runner:  # type: ignore[arg-type]
        return runner.run(pipeline()).run_id


def test_live_reporter_draws_every_step_with_its_status_and_error(tmp_path: Path) -> None:
    screen = io.StringIO()
    console = Console(file=screen, force_terminal=True, width=120, color_system=None)

    run_id = run_with(LiveReporter(console=console), tmp_path)

    final = screen.getvalue().rsplit(f"shown · run {run_id}", 1)[-1]
    lines = {line.split()[1]: line for line in final.splitlines() if len(line.split()) > 2}
    assert "✓" in lines["first"]
    assert "succeeded" in lines["first"]
    assert "✗" in lines["second"]
    assert "failed" in lines["second"]
    assert "ValueError: second cannot use 1" in lines["second"]
    assert "skipped" in lines["third"]


def test_log_reporter_writes_one_structured_record_per_event(
    tmp_path: Path, captured_logs: io.StringIO
) -> None:
    run_id = run_with(LogReporter(), tmp_path)

    records = [orjson.loads(line) for line in captured_logs.getvalue().splitlines()]
    events = [(r["event"], r.get("step"), r.get("status")) for r in records]
    assert events == [
        ("run_started", None, None),
        ("step_started", "first", None),
        ("step_finished", "first", "succeeded"),
        ("step_started", "second", None),
        ("step_finished", "second", "failed"),
        ("step_finished", "third", "skipped"),
        ("run_finished", None, "failed"),
    ]
    assert {r["run_id"] for r in records} == {run_id}
    failed = records[4]
    assert failed["level"] == "error"
    assert "second cannot use 1" in failed["message"]
    assert isinstance(failed["duration"], float)
    assert failed["logger"] == "loopline.run"


def test_json_formatter_keeps_extras_and_exceptions() -> None:
    try:
        raise KeyError("missing")
    except KeyError:
        error = sys.exc_info()
    record = logging.LogRecord("loopline.run", logging.ERROR, "", 0, "boom %s", ("now",), error)
    record.step = "train"
    record.payload = {"when": Path("/tmp")}

    document = orjson.loads(JSONFormatter().format(record))

    assert document["message"] == "boom now"
    assert document["level"] == "error"
    assert document["step"] == "train"
    assert document["payload"] == {"when": "/tmp"}
    assert "KeyError: 'missing'" in document["exception"]
    assert "msg" not in document
    assert "args" not in document


def test_configure_logging_levels_and_plain_format(captured_logs: io.StringIO) -> None:
    logger = logging.getLogger("loopline")
    configure_logging(verbose=True)
    stream = io.StringIO()
    logger.handlers[0].setStream(stream)  # type: ignore[attr-defined]

    logging.getLogger("loopline.run").debug("detail %d", 7)

    assert logger.level == logging.DEBUG
    assert logger.propagate is False
    assert stream.getvalue().rstrip().endswith("DEBUG detail 7")
