"""The ``loopline`` command, as its users meet it.

Most tests call ``loopline.cli.main`` in this process, exactly as the console script
does, so that its error mapping (one line and exit code 2 for a user error, exit code 1
for a failed step) is what is tested. A few start the real command in a subprocess.
Every test works in its own folder, with ``LOOPLINE_HOME`` pointing inside it.
"""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from dataclasses import dataclass, fields
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

import loopline
from loopline import cli
from loopline.config import CONFIG_FILE, Settings, render_default_config
from loopline.store.metadata import MetadataStore, StepRecord

SETTINGS_ENV = ["LOOPLINE_CONFIG", *(f"LOOPLINE_{f.name.upper()}" for f in fields(Settings))]
"""Environment variables that would point a test at someone else's state."""

UNREACHABLE_URL = "postgresql+psycopg://root@127.0.0.1:1/test"

PIPELINE = """\
import polars as pl

import loopline


@loopline.step
def raw(n: int = 5) -> pl.DataFrame:
    return pl.DataFrame({"x": list(range(n))})


@loopline.step
def features(raw: pl.DataFrame) -> pl.DataFrame:
    return raw.with_columns((pl.col("x") * 2).alias("x2"))


@loopline.step
def model(features: pl.DataFrame, scale: float = 1.0) -> dict[str, float]:
    total = float(features["x2"].sum()) * scale
    loopline.log_metrics({"test_total": total, "baseline_total": 1.5})
    return {"total": total}
"""
"""Three steps; with the defaults ``model`` logs test_total=20 beside baseline_total=1.5."""

FAILING = """\
import loopline


@loopline.step
def numbers() -> list[int]:
    return [1, 2, 3]


@loopline.step
def divide(numbers: list[int]) -> float:
    raise ZeroDivisionError("no denominator")
"""

BAD_PIPELINES = {
    "raises_on_import": (
        """\
        import loopline

        SETTING = 1
        raise RuntimeError("no such setting")
        """,
        ["raises_on_import.py", "line 4", "RuntimeError: no such setting"],
    ),
    "cycle": (
        """\
        import loopline


        @loopline.step
        def a(b: int) -> int:
            return b


        @loopline.step
        def b(a: int) -> int:
            return a
        """,
        ["cycle", "a -> b -> a"],
    ),
    "missing_upstream": (
        """\
        import loopline


        @loopline.step
        def features() -> list[int]:
            return [1]


        @loopline.step
        def model(featurs: list[int]) -> int:
            return len(featurs)
        """,
        ["'featurs'", "Did you mean 'features'?", "-p model.featurs=VALUE"],
    ),
}


@dataclass(frozen=True)
class Result:
    code: int
    out: str
    err: str


Invoke = Callable[..., Result]


@pytest.fixture(autouse=True)
def _isolated_cli(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Undo what a command changes in this process: its flags and its log handler."""
    monkeypatch.setattr(cli, "_state", dict(cli._state))
    logger = logging.getLogger("loopline")
    handlers, level, propagate = list(logger.handlers), logger.level, logger.propagate
    yield
    logger.handlers[:] = handlers
    logger.setLevel(level)
    logger.propagate = propagate


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh folder as the working directory, whose ``home/`` holds loopline's state."""
    for name in SETTINGS_ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("LOOPLINE_HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    # As in a wide terminal: tables then show whole ids (a narrow one cuts cells to fit).
    monkeypatch.setattr(cli, "out", Console(highlight=False, width=200))
    return tmp_path


@pytest.fixture
def invoke(workdir: Path, capsys: pytest.CaptureFixture[str]) -> Invoke:
    """Call ``loopline ARGS...`` in this process; return its exit code and output."""

    def run(*args: str) -> Result:
        capsys.readouterr()
        with pytest.raises(SystemExit) as exit_info:
            cli.main(list(args))
        captured = capsys.readouterr()
        code = exit_info.value.code
        assert isinstance(code, int), f"exit code {code!r}"
        return Result(code, captured.out, captured.err)

    return run


def write(folder: Path, name: str, source: str) -> Path:
    path = folder / name
    path.write_text(textwrap.dedent(source), encoding="utf-8")
    return path


def run_id_of(result: Result) -> str:
    found = re.search(r"^Run ([0-9a-f]{16}) (?:succeeded|failed)", result.out, re.MULTILINE)
    assert found, result.out + result.err
    return found.group(1)


def cells(line: str) -> list[str]:
    """The stripped cells of one printed table row."""
    return [cell.strip() for cell in line.split("│")[1:-1]]


def one_line(err: str) -> str:
    """The single line a user error prints: no traceback, no wrapping."""
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    return lines[0]


def steps_of(home: Path, run_id: str) -> dict[str, StepRecord]:
    with MetadataStore(f"sqlite:///{home / 'metadata.db'}") as store:
        return {s.name: s for s in store.get_steps(run_id)}


def row(text: str, *cells: str) -> str:
    """The one line of a printed table that holds every one of ``cells``."""
    found = [line for line in text.splitlines() if all(c in line for c in cells)]
    assert len(found) == 1, f"{cells} in\n{text}"
    return found[0]


# -- help, version, init ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "command",
    [
        "",
        "init",
        "run",
        "resume",
        "runs",
        "show",
        "lineage",
        "artifact",
        "datasets",
        "profile",
        "quarantine",
    ],
)
def test_help_for_every_command(invoke: Invoke, command: str) -> None:
    result = invoke(*command.split(), "--help")

    assert result.code == 0, result.err
    assert f"Usage: loopline {command}".rstrip() in result.out


def test_version(invoke: Invoke) -> None:
    result = invoke("--version")

    assert result.code == 0
    assert result.out.strip() == f"loopline {loopline.__version__}"


def test_init_writes_config_once_unless_forced(invoke: Invoke, workdir: Path) -> None:
    config = workdir / CONFIG_FILE

    first = invoke("init")
    assert first.code == 0, first.err
    assert config.read_text(encoding="utf-8") == render_default_config()

    config.write_text("# edited by hand\n", encoding="utf-8")
    second = invoke("init")
    assert second.code == 2
    message = one_line(second.err)
    assert "exists already" in message
    assert "--force" in message
    assert config.read_text(encoding="utf-8") == "# edited by hand\n"

    forced = invoke("init", "--force")
    assert forced.code == 0, forced.err
    assert config.read_text(encoding="utf-8") == render_default_config()


# -- run --------------------------------------------------------------------------------------


def test_run_prints_results_then_answers_from_the_cache(invoke: Invoke, workdir: Path) -> None:
    write(workdir, "pipe.py", PIPELINE)

    first = invoke("run", "pipe.py")

    assert first.code == 0, first.err
    assert "Results" in first.out
    assert "3 succeeded" in first.out
    # The baseline is shown beside the metric it belongs to, not on a row of its own.
    assert cells(row(first.out, "test_total")) == ["model", "test_total", "20", "1.5000"]
    assert "baseline_total" not in first.out

    second = invoke("run", "pipe.py")

    assert second.code == 0, second.err
    assert f"Run {run_id_of(second)} succeeded: 3 cached." in second.out
    statuses = {s.status for s in steps_of(workdir / "home", run_id_of(second)).values()}
    assert statuses == {"cached"}


def test_param_changes_the_result_and_is_recorded(invoke: Invoke, workdir: Path) -> None:
    write(workdir, "pipe.py", PIPELINE)
    assert invoke("run", "pipe.py").code == 0

    changed = invoke("run", "pipe.py", "-p", "model.scale=2")

    assert changed.code == 0, changed.err
    assert "2 cached, 1 succeeded" in changed.out
    assert cells(row(changed.out, "test_total"))[2] == "40"
    shown = invoke("show", run_id_of(changed))
    assert "model.scale=2.0" in row(shown.out, "params")


@pytest.mark.parametrize("item", ["scale", "=2", " =2"])
def test_malformed_param_exits_2(invoke: Invoke, workdir: Path, item: str) -> None:
    write(workdir, "pipe.py", PIPELINE)

    result = invoke("run", "pipe.py", "-p", item)

    assert result.code == 2
    assert "Traceback" not in result.err
    assert "expected STEP.NAME=VALUE or NAME=VALUE" in result.err


def test_unknown_param_exits_2_with_a_suggestion(invoke: Invoke, workdir: Path) -> None:
    write(workdir, "pipe.py", PIPELINE)

    result = invoke("run", "pipe.py", "-p", "model.scal=2")

    assert result.code == 2
    message = one_line(result.err)
    assert "'model.scal'" in message
    assert "Did you mean 'model.scale'?" in message


def test_missing_pipeline_file_exits_2(invoke: Invoke) -> None:
    result = invoke("run", "nowhere.py")

    assert result.code == 2
    message = one_line(result.err)
    assert message.startswith("error: ")
    assert "nowhere.py" in message


@pytest.mark.parametrize("name", sorted(BAD_PIPELINES))
def test_bad_pipeline_exits_2_with_one_line(invoke: Invoke, workdir: Path, name: str) -> None:
    source, fragments = BAD_PIPELINES[name]
    write(workdir, f"{name}.py", source)

    result = invoke("run", f"{name}.py")

    assert result.code == 2
    message = one_line(result.err)
    assert message.startswith("error: ")
    for fragment in fragments:
        assert fragment in message


def test_verbose_adds_the_traceback(invoke: Invoke, workdir: Path) -> None:
    source, _ = BAD_PIPELINES["raises_on_import"]
    write(workdir, "raises_on_import.py", source)

    result = invoke("--verbose", "run", "raises_on_import.py")

    assert result.code == 2
    assert "Traceback (most recent call last)" in result.err
    assert 'raise RuntimeError("no such setting")' in result.err
    assert result.err.rstrip().splitlines()[-1].startswith("error: Pipeline ")


def test_failed_step_exits_1_and_says_how_to_resume(invoke: Invoke, workdir: Path) -> None:
    write(workdir, "failing.py", FAILING)

    result = invoke("run", "failing.py")

    assert result.code == 1
    run_id = run_id_of(result)
    assert f"Run {run_id} failed: 1 succeeded, 1 failed." in result.out
    message = row(result.err, "Step 'divide' failed")
    assert "ZeroDivisionError: no denominator" in message
    assert f"loopline resume {run_id}" in message
    steps = steps_of(workdir / "home", run_id)
    assert {name: s.status for name, s in steps.items()} == {
        "numbers": "succeeded",
        "divide": "failed",
    }


# -- runs, show, lineage ----------------------------------------------------------------------


def test_runs_lists_runs_newest_first(invoke: Invoke, workdir: Path) -> None:
    empty = invoke("runs")
    assert empty.code == 0, empty.err
    assert "No runs yet" in empty.out

    write(workdir, "pipe.py", PIPELINE)
    write(workdir, "failing.py", FAILING)
    first = run_id_of(invoke("run", "pipe.py"))
    second = run_id_of(invoke("run", "failing.py"))

    listed = invoke("runs")

    assert listed.code == 0, listed.err
    assert "succeeded" in row(listed.out, first, "pipe")
    assert "failed" in row(listed.out, second, "failing")
    assert listed.out.index(second) < listed.out.index(first)
    only = invoke("runs", "--pipeline", "pipe")
    assert first in only.out
    assert second not in only.out


def test_show_lists_steps_cache_hits_artifacts_and_metrics(invoke: Invoke, workdir: Path) -> None:
    write(workdir, "pipe.py", PIPELINE)
    invoke("run", "pipe.py")
    run_id = run_id_of(invoke("run", "pipe.py", "-p", "model.scale=3"))
    steps = steps_of(workdir / "home", run_id)

    result = invoke("show", run_id[:6])

    assert result.code == 0, result.err
    assert f"Run {run_id}" in result.out
    assert "status   succeeded" in result.out
    for name, cache in [("raw", "hit"), ("features", "hit"), ("model", "")]:
        artifact_id = steps[name].output_artifact_id
        assert artifact_id is not None
        line = row(result.out, f" {name} ", artifact_id)
        assert cells(line)[:3] == [name, "cached" if cache else "succeeded", cache]
    assert cells(row(result.out, "model", "test_total"))[2] == "60"


def test_show_unknown_run_exits_2(invoke: Invoke) -> None:
    invoke("runs")  # creates the (empty) database

    result = invoke("show", "feedface")

    assert result.code == 2
    message = one_line(result.err)
    assert "'feedface'" in message
    assert "loopline runs" in message


def test_lineage_goes_from_the_final_artifact_back_to_the_first_step(
    invoke: Invoke, workdir: Path
) -> None:
    write(workdir, "pipe.py", PIPELINE)
    run_id = run_id_of(invoke("run", "pipe.py"))
    steps = steps_of(workdir / "home", run_id)
    final, middle, first = (steps[n].output_artifact_id for n in ("model", "features", "raw"))
    assert final is not None
    assert middle is not None
    assert first is not None

    result = invoke("lineage", final[:8])

    assert result.code == 0, result.err
    lines = result.out.splitlines()
    assert lines[0].startswith(f"artifact {final} json")
    expected = [
        f"step model ({steps['model'].id}, run {run_id}, succeeded)",
        f"features: artifact {middle} polars",
        f"step features ({steps['features'].id}, run {run_id}, succeeded)",
        f"raw: artifact {first} polars",
        f"step raw ({steps['raw'].id}, run {run_id}, succeeded)",
    ]
    positions = [result.out.index(text) for text in expected]
    assert positions == sorted(positions)


def test_lineage_of_unknown_artifact_exits_2(invoke: Invoke) -> None:
    result = invoke("lineage", "feedface")

    assert result.code == 2
    assert "No artifact has the id 'feedface'" in one_line(result.err)


def test_artifact_describes_or_saves_the_stored_bytes(invoke: Invoke, workdir: Path) -> None:
    write(workdir, "pipe.py", PIPELINE)
    run_id = run_id_of(invoke("run", "pipe.py"))
    final = steps_of(workdir / "home", run_id)["model"].output_artifact_id
    assert final is not None

    described = invoke("artifact", final[:8])
    saved = invoke("artifact", final[:8], "-o", str(workdir / "out.json"))
    unknown = invoke("artifact", "feedface", "-o", str(workdir / "never.json"))
    unwritable = invoke("artifact", final, "-o", str(workdir / "no" / "such" / "dir.json"))

    assert described.code == 0, described.err
    assert described.out.startswith(f"artifact {final} json")
    assert saved.code == 0, saved.err
    assert json.loads((workdir / "out.json").read_bytes()) == {"total": 20.0}
    assert "Wrote" in saved.out
    assert unknown.code == 2
    assert "No artifact has the id 'feedface'" in one_line(unknown.err)
    assert not (workdir / "never.json").exists()
    assert unwritable.code == 2
    assert "Could not write" in one_line(unwritable.err)


def test_run_results_leave_slice_metrics_to_show(invoke: Invoke, workdir: Path) -> None:
    write(
        workdir,
        "sliced.py",
        """
        import loopline

        @loopline.step
        def scored() -> int:
            loopline.log_metrics({"test_auc": 0.7, "baseline_auc": 0.5,
                                  "slice.origin=JFK.auc": 0.6, "gap.auc": 0.1})
            return 1
        """,
    )
    ran = invoke("run", "sliced.py")
    shown = invoke("show", run_id_of(ran))

    assert ran.code == 0, ran.err
    assert cells(row(ran.out, "test_auc")) == ["scored", "test_auc", "0.7000", "0.5000"]
    assert "slice.origin=JFK.auc" not in ran.out
    assert f"and 2 metrics of slices and groups: loopline show {run_id_of(ran)}" in ran.out
    # A dotted name is never paired with a baseline by the part after its first '_'.
    assert cells(row(shown.out, "slice.origin=JFK.auc")) == [
        "scored",
        "slice.origin=JFK.auc",
        "0.6000",
        "",
    ]
    assert cells(row(shown.out, "gap.auc"))[2] == "0.1000"


# -- backends and logs ------------------------------------------------------------------------


def test_unreachable_metadata_database_exits_2(
    invoke: Invoke, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LOOPLINE_METADATA_URL", UNREACHABLE_URL)

    result = invoke("runs")

    assert result.code == 2
    message = one_line(result.err)
    assert "127.0.0.1:1" in message
    assert "LOOPLINE_METADATA_URL" in message


@pytest.mark.services("postgres")
def test_run_against_postgresql(
    invoke: Invoke, workdir: Path, monkeypatch: pytest.MonkeyPatch, postgres_url: str
) -> None:
    monkeypatch.setenv("LOOPLINE_METADATA_URL", postgres_url)
    write(workdir, "pipe.py", PIPELINE)

    first = invoke("run", "pipe.py")
    second = invoke("run", "pipe.py")

    assert first.code == 0, first.err
    assert second.code == 0, second.err
    assert "3 cached" in second.out
    assert not (workdir / "home" / "metadata.db").exists()
    listed = invoke("runs")
    assert run_id_of(first) in listed.out
    assert run_id_of(second) in listed.out
    shown = invoke("show", run_id_of(second))
    assert cells(row(shown.out, "model", "test_total"))[2] == "20"


def test_log_json_writes_one_object_per_line(invoke: Invoke, workdir: Path) -> None:
    write(workdir, "pipe.py", PIPELINE)

    result = invoke("--log-json", "run", "pipe.py")

    assert result.code == 0, result.err
    run_id = run_id_of(result)
    records: list[dict[str, Any]] = [json.loads(line) for line in result.err.splitlines()]
    assert records
    assert all(isinstance(r, dict) and r["run_id"] == run_id for r in records)
    finished = [(r["step"], r["status"]) for r in records if r["event"] == "step_finished"]
    assert finished == [("raw", "succeeded"), ("features", "succeeded"), ("model", "succeeded")]
    assert records[-1]["event"] == "run_finished"
    assert records[-1]["status"] == "succeeded"


# -- the real command, in a subprocess --------------------------------------------------------


def command_env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in SETTINGS_ENV}
    env["LOOPLINE_HOME"] = str(home)
    env["COLUMNS"] = "200"
    return env


def loopline_process(
    folder: Path, *args: str, command: tuple[str, ...] = (sys.executable, "-m", "loopline")
) -> subprocess.CompletedProcess[str]:
    """Run the loopline command in ``folder`` with its own home, as a user would."""
    return subprocess.run(
        [*command, *args],
        cwd=folder,
        env=command_env(folder / "home"),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_python_m_loopline_help(tmp_path: Path) -> None:
    result = loopline_process(tmp_path, "--help")

    assert result.returncode == 0, result.stderr
    assert "Usage: loopline" in result.stdout
    for command in ("init", "run", "resume", "runs", "show", "lineage"):
        assert command in result.stdout


def test_console_script_runs_a_pipeline(tmp_path: Path) -> None:
    script = Path(sys.executable).with_name("loopline")
    if not script.exists():
        pytest.skip(f"no console script next to {sys.executable} (is loopline installed?)")
    write(tmp_path, "pipe.py", PIPELINE)

    result = loopline_process(tmp_path, "run", "pipe.py", "-p", "n=3", command=(str(script),))

    assert result.returncode == 0, result.stderr
    assert cells(row(result.stdout, "model", "test_total"))[2] == "6"
    assert (tmp_path / "home" / "metadata.db").exists()


def test_subprocess_errors_are_one_line_without_traceback(tmp_path: Path) -> None:
    source, _ = BAD_PIPELINES["raises_on_import"]
    write(tmp_path, "raises_on_import.py", source)

    bad_import = loopline_process(tmp_path, "run", "raises_on_import.py")
    usage = loopline_process(tmp_path, "run", "raises_on_import.py", "-p", "oops")

    assert bad_import.returncode == 2
    assert "raises_on_import.py failed to import (line 4)" in one_line(bad_import.stderr)
    assert usage.returncode == 2
    assert "Traceback" not in usage.stderr
    assert "Error: Invalid value for '-p'" in usage.stderr


# -- datasets, profile, quarantine ----------------------------------------------------------

INGEST = """\
from loopline import Column, Contract, FileSource, Files, ingest, step

TRIPS = Contract(
    "trips",
    {
        "id": Column("int64", nullable=False),
        "city": Column("string", allowed=["Oslo", "Lima"]),
        "km": Column("float64", min=0),
    },
    max_bad_fraction=0.5,
)


@step
def trips(source: Files = Files("trips.csv")) -> str:
    return ingest(FileSource(source.patterns), contract=TRIPS).dataset.ref
"""


def test_datasets_profile_and_quarantine(workdir: Path, invoke: Invoke) -> None:
    write(workdir, "pipe.py", INGEST)
    write(workdir, "trips.csv", 'id,city,km\n1,Oslo,2.5\n2,Paris,3\n3,Lima,4\n4,"Lima,x\n')
    run_id = run_id_of(invoke("run", "pipe.py"))

    listed = invoke("datasets")
    profiled = invoke("profile", "trips@1")
    shown = invoke("quarantine", run_id)
    only_parse = invoke("quarantine", "trips", "--rule", "parse", "--output", "bad.csv")

    assert listed.code == 0, listed.err
    assert cells(row(listed.out, "trips@1"))[2:4] == ["2", "2 (50.0%)"]
    assert run_id in row(listed.out, "trips@1")
    assert profiled.code == 0, profiled.err
    assert "Dataset trips@1" in profiled.out
    assert "Lima 50%" in profiled.out
    assert shown.code == 0, shown.err
    assert "trips@1: 4 rows read = 2 passed + 2 quarantined" in shown.out
    assert cells(row(shown.out, "│ allowed │ city"))[3] == "1"
    assert "trips.csv:3" in shown.out
    assert "trips.csv:5" in shown.out
    assert only_parse.code == 0, only_parse.err
    assert "allowed" not in only_parse.out.split("Why", 1)[1]
    assert "Wrote 1 rows to bad.csv." in only_parse.out
    assert (workdir / "bad.csv").read_text().count("\n") == 2


def test_dataset_commands_with_unknown_names_exit_2(workdir: Path, invoke: Invoke) -> None:
    empty = invoke("datasets")
    unknown = invoke("profile", "nothing@2")
    neither = invoke("quarantine", "nothing")

    assert (empty.code, empty.out.strip()) == (
        0,
        "No datasets yet. A pipeline step creates one with loopline.ingest(...).",
    )
    assert unknown.code == 2
    assert "There is no version 2 of dataset 'nothing'" in one_line(unknown.err)
    assert neither.code == 2
    assert "There is no dataset 'nothing'" in one_line(neither.err)


RIDES = """\
from loopline import Column, Contract, FileSource, Files, ingest, step

RIDES = Contract(
    "rides",
    {
        "rider": Column("int64", nullable=False),
        "at": Column("datetime", nullable=False, formats=("%Y-%m-%dT%H:%M:%S",)),
        "km": Column("float64", min=0),
    },
)


@step
def rides(source: Files = Files("rides.csv")) -> str:
    return ingest(FileSource(source.patterns), contract=RIDES).dataset.ref
"""
RIDE_FEATURES = """\
from loopline.features import Aggregate, Entity, FeatureView, WindowView

rider = Entity("rider", keys=["rider"])
last_ride = FeatureView("last_ride", entity=rider, source="rides", timestamp="at",
                        ttl="1d", features=["km"])
ride_totals = WindowView("ride_totals", entity=rider, source="rides", timestamp="at",
                         aggregations=[Aggregate("km", "sum", "24h")])
"""


def test_materialize_and_features(workdir: Path, invoke: Invoke) -> None:
    write(workdir, "pipe.py", RIDES)
    write(workdir, "defs.py", RIDE_FEATURES)
    write(
        workdir,
        "rides.csv",
        "rider,at,km\n1,2024-05-01T08:00:00,3.5\n2,2024-05-01T09:00:00,10\n"
        "1,2024-05-01T18:00:00,1.5\n",
    )
    assert invoke("run", "pipe.py").code == 0

    before = invoke("features", "defs.py")
    filled = invoke("materialize", "defs.py", "--end", "2024-05-01T20:00:00")
    only = invoke(
        "materialize",
        "defs.py",
        "--view",
        "ride_totals",
        "--start",
        "2024-05-01T19:00:00",
        "--end",
        "2024-05-01T20:00:00",
    )
    after = invoke("features", "defs.py")

    assert before.code == 0, before.err
    assert "2024-05-01" not in before.out  # nothing materialized yet
    assert filled.code == 0, filled.err
    assert cells(row(filled.out, "last_ride"))[1:] == ["2", "2024-05-01 18:00:00"]
    assert cells(row(filled.out, "ride_totals"))[1:] == ["2", "2024-05-01 20:00:00"]
    assert "Materialized 2 view(s) as of 2024-05-01T20:00:00+00:00." in filled.out
    # From 19:00 only the riders with a ride in [19:00 - 24h, 20:00) are written.
    assert only.code == 0, only.err
    assert cells(row(only.out, "ride_totals"))[1] == "2"
    assert after.code == 0, after.err
    assert "2024-05-01 18:00" in row(after.out, "last_ride")
    assert "window" in row(after.out, "ride_totals")

    from loopline.features.materialize import online_features
    from loopline.store.online import open_online_store

    module: dict[str, Any] = {}
    exec(RIDE_FEATURES, module)
    with open_online_store(f"sqlite:///{workdir / 'home' / 'online.db'}") as store:
        served = online_features(
            [module["last_ride"], module["ride_totals"]],
            [{"rider": 1}, {"rider": 2}, {"rider": 3}],
            at=datetime(2024, 5, 1, 20, tzinfo=UTC),
            store=store,
        )
    assert served["km"].to_list() == [1.5, 10.0, None]
    assert served["km_sum_24h"].to_list() == [5.0, 10.0, 0.0]


def test_feature_commands_report_user_errors(workdir: Path, invoke: Invoke) -> None:
    write(workdir, "defs.py", RIDE_FEATURES)
    write(workdir, "empty.py", "X = 1\n")
    unknown_view = invoke("materialize", "defs.py", "--view", "rides_by_day")
    bad_time = invoke("materialize", "defs.py", "--end", "yesterday")
    nothing = invoke("features", "empty.py")
    no_data = invoke("materialize", "defs.py", "--end", "2024-05-01T20:00:00")

    assert unknown_view.code == 2
    assert "defines no view 'rides_by_day'; it defines last_ride, ride_totals" in one_line(
        unknown_view.err
    )
    assert bad_time.code == 2
    assert "--end must be an ISO 8601 time" in one_line(bad_time.err)
    assert nothing.code == 2
    assert "defines no FeatureView, WindowView or OnDemand" in one_line(nothing.err)
    assert no_data.code == 2
    assert "There is no dataset 'rides'" in one_line(no_data.err)


def test_runs_compare_shows_what_differs(workdir: Path, invoke: Invoke) -> None:
    write(workdir, "pipe.py", PIPELINE)
    first = run_id_of(invoke("run", "pipe.py"))
    second = run_id_of(invoke("run", "pipe.py", "-p", "model.scale=2"))
    same = invoke("runs", "--compare", first, first)
    compared = invoke("runs", "--compare", first[:8], second)
    unknown = invoke("runs", "--compare", first, "nosuchrun")

    assert compared.code == 0, compared.err
    assert cells(row(compared.out, "model.scale"))[1:] == ["model.scale", "1.0", "2.0"]
    assert cells(row(compared.out, "model.test_total"))[2:] == ["20", "40"]
    assert "raw.n" not in compared.out  # the same in both
    assert "│ env " not in compared.out  # same Python, packages and checkout
    assert same.code == 0, same.err
    assert "The two runs have the same parameters, metrics and environment." in same.out
    with MetadataStore(Settings.load().metadata_url) as store:
        assert store.get_tags("run", first)["env.python"]
    assert unknown.code == 2


# -- the model registry -----------------------------------------------------------------------


def _register_models(*metrics: float) -> None:
    """Register versions 1..n of model 'flights', one per test_roc_auc value given."""
    with MetadataStore(Settings.load().metadata_url) as store:
        for n, auc in enumerate(metrics, start=1):
            store.register_model_version(
                model="flights",
                artifact_id=f"bundle-{n}",
                content_hash=f"{n:064x}",
                actor="ci",
                metrics={"test_roc_auc": auc},
                run_id=f"{n:016x}",
                datasets=[f"flights@{n}"],
                features=["carrier_delays@" + "a" * 64],
            )


@pytest.mark.parametrize("command", ["models", "model", "promote", "rollback"])
def test_help_for_registry_commands(invoke: Invoke, command: str) -> None:
    result = invoke(command, "--help")

    assert result.code == 0, result.err
    assert f"Usage: loopline {command}" in result.out


def test_models_promote_rollback_and_the_audit_log(workdir: Path, invoke: Invoke) -> None:
    empty = invoke("models")
    _register_models(0.74, 0.76)

    listed = invoke("models")
    first = invoke("promote", "flights", "1", "--why", "first model")
    second = invoke("promote", "flights", "2")
    again = invoke("promote", "flights", "champion")
    challenger = invoke("promote", "flights", "1", "--alias", "challenger")
    back = invoke("rollback", "flights", "--why", "bad predictions")
    shown = invoke("model", "flights")

    assert empty.code == 0, empty.err
    assert "No models registered yet" in empty.out
    assert listed.code == 0, listed.err
    assert cells(row(listed.out, "flights"))[:4] == ["flights", "2", "2", ""]
    assert first.out.strip() == "Model flights: champion moved to version 1."
    assert second.out.strip() == "Model flights: champion moved from version 1 to version 2."
    assert again.out.strip() == "Model flights: champion is version 2 already; nothing changed."
    assert challenger.code == 0, challenger.err
    assert back.out.strip() == "Model flights: champion rolled back from version 2 to 1."
    assert shown.code == 0, shown.err
    assert "aliases  challenger=1, champion=1, latest=2" in shown.out
    assert cells(row(shown.out, "0000000000000002"))[:3] == ["2", "registered", ""]
    assert cells(row(shown.out, "bundle-1")) == [
        "1",
        "bundle-1",
        "flights@1",
        "carrier_delays@" + "a" * 64,
    ]
    assert cells(row(shown.out, "test_roc_auc")) == ["test_roc_auc", "0.7400", "0.7600"]
    audit = [c for c in map(cells, shown.out.splitlines()) if len(c) == 8]
    assert [(a[2], a[3], a[4], a[5], a[7]) for a in audit] == [
        ("register", "", "", "1", ""),
        ("register", "", "", "2", ""),
        ("promote", "champion", "", "1", "first model"),
        ("promote", "champion", "1", "2", "manual promote"),
        ("promote", "challenger", "", "1", "manual promote"),
        ("rollback", "champion", "2", "1", "bad predictions"),
    ]
    assert [a[6] for a in audit[:2]] == ["ci", "ci"]
    assert all(a[6] for a in audit[2:])  # the logged-in user


def test_model_shows_the_latest_gate_verdict(workdir: Path, invoke: Invoke) -> None:
    from loopline.data.workspace import Workspace, forget_stores, register_stores
    from loopline.registry import Gate, Registry
    from loopline.store.artifacts import ArtifactStore

    _register_models(0.75, 0.751)
    settings = Settings.load()
    gate = Gate(primary="test_roc_auc", min_improvement=0.01)
    with MetadataStore(settings.metadata_url) as store:
        artifacts = ArtifactStore(settings.artifact_url)
        register_stores(store, artifacts)  # so that the registry uses this connection
        try:
            registry = Registry(Workspace(store.url, artifacts.url))
            registry.record_verdict("flights", 1, gate.evaluate({"test_roc_auc": 0.75}, None))
            worse = gate.evaluate({"test_roc_auc": 0.751}, {"test_roc_auc": 0.75})
            registry.record_verdict("flights", 2, worse)
        finally:
            forget_stores(store, artifacts)

    shown = invoke("model", "flights")

    assert shown.code == 0, shown.err
    assert cells(row(shown.out, "0000000000000002"))[:2] == ["2", "refused"]
    assert cells(row(shown.out, "0000000000000001"))[:3] == ["1", "blessed", "champion"]
    assert "Latest gate verdict: version 2 for champion (refuse," in shown.out
    assert "verdict: REFUSED, 1 of 1 check(s) failed" in shown.out
    [check] = [line for line in shown.out.splitlines() if line.startswith("primary")]
    assert check.split()[2:6] == [
        "0.7510",
        "0.7600",
        "0.7500",
        "FAIL",
    ]


def test_registry_commands_report_user_errors(workdir: Path, invoke: Invoke) -> None:
    nothing = invoke("model", "flights")
    _register_models(0.74)
    typo = invoke("model", "flihgts")
    no_version = invoke("promote", "flights", "7")
    reserved = invoke("promote", "flights", "1", "--alias", "latest")
    no_alias = invoke("rollback", "flights")
    invoke("promote", "flights", "1")
    nothing_before = invoke("rollback", "flights")

    assert nothing.code == 2
    assert "No registered model is named 'flights'. No model is registered yet." in one_line(
        nothing.err
    )
    assert typo.code == 2
    assert "(did you mean 'flights'?). 'loopline models' lists" in one_line(typo.err)
    assert no_version.code == 2
    assert "Model 'flights' has no version 7; it has versions 1 to 1." in one_line(no_version.err)
    assert reserved.code == 2
    assert "The alias 'latest' is reserved" in one_line(reserved.err)
    assert no_alias.code == 2
    assert "has no alias 'champion'" in one_line(no_alias.err)
    assert nothing_before.code == 2
    assert "Nothing to roll back" in one_line(nothing_before.err)
