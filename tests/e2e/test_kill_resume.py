"""A run killed with SIGKILL mid-pipeline, then resumed with the real command.

The third of four steps, when ``SLOW_STEP_MARKER`` is set, writes that marker file and
sleeps: by then the steps before it have finished and been recorded. The test kills
the ``loopline run`` process there, resumes the run without the variable and checks
that the finished steps are reused, that the killed run reads as interrupted, and that
the outputs are byte for byte those of a run that was never interrupted.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from dataclasses import fields
from pathlib import Path

import pytest

from loopline.config import Settings
from loopline.store.metadata import MetadataStore, RunRecord, StepRecord

pytestmark = pytest.mark.slow

SETTINGS_ENV = ["LOOPLINE_CONFIG", *(f"LOOPLINE_{f.name.upper()}" for f in fields(Settings))]
MARKER_ENV = "SLOW_STEP_MARKER"
DEADLINE_S = 60.0
"""Generous: a cold start imports polars and pyarrow; a healthy run takes a few seconds."""

PIPELINE = """\
import os
import time
from pathlib import Path

import polars as pl

import loopline


@loopline.step
def source(n: int = 40) -> pl.DataFrame:
    return pl.DataFrame({"id": list(range(n)), "value": [i * 0.25 for i in range(n)]})


@loopline.step
def features(source: pl.DataFrame) -> pl.DataFrame:
    return source.with_columns((pl.col("value") ** 2).alias("value_sq"))


@loopline.step
def train(features: pl.DataFrame) -> dict[str, float]:
    marker = os.environ.get("SLOW_STEP_MARKER")
    if marker:
        Path(marker).write_text("train started", encoding="utf-8")
        time.sleep(600)
    return {"mean": float(features["value_sq"].mean()), "rows": float(features.height)}


@loopline.step
def report(train: dict[str, float], features: pl.DataFrame) -> dict[str, float]:
    return {"score": train["mean"] / train["rows"], "columns": float(len(features.columns))}
"""

BEFORE_KILL = ("source", "features")
AFTER_KILL = ("train", "report")


def environment(home: Path, marker: Path | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in (*SETTINGS_ENV, MARKER_ENV)}
    env["LOOPLINE_HOME"] = str(home)
    env["COLUMNS"] = "200"
    if marker is not None:
        env[MARKER_ENV] = str(marker)
    return env


def run_loopline(folder: Path, home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "loopline", *args],
        cwd=folder,
        env=environment(home),
        capture_output=True,
        text=True,
        timeout=DEADLINE_S,
        check=False,
    )


def store(home: Path) -> MetadataStore:
    return MetadataStore(f"sqlite:///{home / 'metadata.db'}")


def runs_and_steps(home: Path) -> dict[str, tuple[RunRecord, dict[str, StepRecord]]]:
    """Every run in ``home``, by id, with its steps by name."""
    with store(home) as metadata:
        return {
            run.id: (run, {s.name: s for s in metadata.get_steps(run.id)})
            for run in metadata.list_runs()
        }


def output_hashes(home: Path, steps: dict[str, StepRecord]) -> dict[str, str]:
    with store(home) as metadata:
        hashes = {}
        for name, step in steps.items():
            assert step.output_artifact_id is not None, f"{name} has no output"
            hashes[name] = metadata.get_artifact(step.output_artifact_id).content_hash
        return hashes


def run_until_marker(folder: Path, home: Path, pipeline: Path, marker: Path) -> None:
    """Start ``loopline run``, wait until the slow step has begun, then SIGKILL it."""
    log = folder / "killed-run.log"
    with log.open("w", encoding="utf-8") as output:
        process = subprocess.Popen(
            [sys.executable, "-m", "loopline", "--log-json", "run", str(pipeline)],
            cwd=folder,
            env=environment(home, marker),
            stdout=output,
            stderr=subprocess.STDOUT,
        )
        try:
            deadline = time.monotonic() + DEADLINE_S
            while not marker.exists():
                if process.poll() is not None:
                    pytest.fail(
                        f"loopline run ended (exit {process.returncode}) before the slow "
                        f"step started:\n{log.read_text(encoding='utf-8')}"
                    )
                if time.monotonic() > deadline:
                    pytest.fail(f"the slow step did not start in {DEADLINE_S:g} s")
                time.sleep(0.05)
            os.kill(process.pid, signal.SIGKILL)
        finally:
            if process.poll() is None:
                process.kill()
            process.wait(timeout=DEADLINE_S)
    assert process.returncode == -signal.SIGKILL


def test_killed_run_resumes_from_the_steps_it_finished(tmp_path: Path) -> None:
    pipeline = tmp_path / "pipeline.py"
    pipeline.write_text(textwrap.dedent(PIPELINE), encoding="utf-8")
    home = tmp_path / "home"

    run_until_marker(tmp_path, home, pipeline, tmp_path / "marker")

    [(killed, killed_steps)] = runs_and_steps(home).values()
    assert killed.status == "running"  # nobody has looked at it since its process died
    assert {n: s.status for n, s in killed_steps.items()} == {
        "source": "succeeded",
        "features": "succeeded",
        "train": "running",
    }

    resumed_process = run_loopline(tmp_path, home, "resume", killed.id[:8])

    assert resumed_process.returncode == 0, resumed_process.stdout + resumed_process.stderr
    runs = runs_and_steps(home)
    killed, killed_steps = runs[killed.id]
    [resumed_id] = set(runs) - {killed.id}
    resumed, resumed_steps = runs[resumed_id]
    assert killed.status == "interrupted"
    assert killed_steps["train"].status == "failed"
    assert resumed.status == "succeeded"
    assert resumed.parent_run_id == killed.id
    for name in BEFORE_KILL:
        step = resumed_steps[name]
        assert (step.status, step.cache_hit) == ("cached", True), name
        assert step.source_step_id == killed_steps[name].id
        assert step.output_artifact_id == killed_steps[name].output_artifact_id
    for name in AFTER_KILL:
        assert resumed_steps[name].status == "succeeded", name

    shown = run_loopline(tmp_path, home, "show", killed.id)
    assert shown.returncode == 0, shown.stderr
    assert "status   interrupted" in shown.stdout

    fresh_home = tmp_path / "fresh"
    fresh_process = run_loopline(tmp_path, fresh_home, "run", str(pipeline))
    assert fresh_process.returncode == 0, fresh_process.stdout + fresh_process.stderr
    [(fresh, fresh_steps)] = runs_and_steps(fresh_home).values()
    assert fresh.status == "succeeded"
    assert {s.status for s in fresh_steps.values()} == {"succeeded"}
    assert output_hashes(home, resumed_steps) == output_hashes(fresh_home, fresh_steps)
