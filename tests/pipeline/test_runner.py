"""The runner end to end, on every metadata backend: runs, cache, failures, resume."""

from __future__ import annotations

import os
import tempfile
import textwrap
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from loopline import Files, log_metrics, step
from loopline.config import Settings
from loopline.errors import PipelineDefinitionError, PipelineError, StepTimeoutError
from loopline.pipeline.dag import Pipeline, load_pipeline
from loopline.pipeline.runner import Runner


@pytest.fixture
def runner(tmp_path: Path, metadata_url: str) -> Iterator[Runner]:
    settings = Settings.load(
        start=tmp_path,
        search=False,
        env={},
        metadata_url=metadata_url,
        artifact_url=str(tmp_path / "artifacts"),
    )
    with Runner(settings) as runner:
        yield runner


@pytest.fixture
def local_runner(tmp_path: Path) -> Iterator[Runner]:
    """SQLite only: for behaviour that does not depend on the metadata backend."""
    with Runner(Settings.load(start=tmp_path, search=False, env={})) as runner:
        yield runner


def statuses(result: Any) -> dict[str, str]:
    return {name: record.status for name, record in result.steps.items()}


class Calls:
    """Counts how often each step body ran (steps are closures over one of these)."""

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}
        self.lock = threading.Lock()

    def hit(self, name: str) -> None:
        with self.lock:
            self.counts[name] = self.counts.get(name, 0) + 1


def diamond(calls: Calls, *, fail_right: list[bool] | None = None) -> Pipeline:
    """source -> (left, right) -> joined, plus an independent side step."""

    @step
    def source(n: int = 4) -> pl.DataFrame:
        calls.hit("source")
        return pl.DataFrame({"x": list(range(n))})

    @step
    def left(source: pl.DataFrame) -> pl.DataFrame:
        calls.hit("left")
        return source.with_columns(y=pl.col("x") * 2)

    @step
    def right(source: pl.DataFrame) -> dict[str, int]:
        calls.hit("right")
        if fail_right and fail_right[0]:
            raise ValueError("right is broken")
        log_metrics({"rows": source.height})
        return {"rows": source.height}

    @step
    def joined(left: pl.DataFrame, right: dict[str, int]) -> pl.DataFrame:
        calls.hit("joined")
        return left.with_columns(rows=pl.lit(right["rows"]))

    @step
    def side() -> str:
        calls.hit("side")
        return "independent"

    return Pipeline.from_steps([source, left, right, joined, side], name="diamond")


def test_run_records_everything_and_a_second_run_is_all_cached(runner: Runner) -> None:
    calls = Calls()
    pipeline = diamond(calls)
    first = runner.run(pipeline)
    assert first.ok, first.error
    assert set(statuses(first).values()) == {"succeeded"}
    assert runner.output(first.run_id, "joined")["rows"].to_list() == [4, 4, 4, 4]

    run = runner.metadata.get_run(first.run_id)
    assert (run.status, run.pipeline) == ("succeeded", "diamond")
    assert runner.metadata.run_params(first.run_id)["source"] == {"n": 4}
    joined = first.steps["joined"]
    assert runner.metadata.step_inputs(joined.id).keys() == {"left", "right"}
    attempts = runner.metadata.get_attempts(joined.id)
    assert [(a.number, a.status) for a in attempts] == [(1, "succeeded")]
    metrics = runner.metadata.get_metrics(first.run_id)
    assert [(m.step_name, m.key, m.value) for m in metrics] == [("right", "rows", 4.0)]

    second = runner.run(pipeline)
    assert set(statuses(second).values()) == {"cached"}
    assert all(record.cache_hit for record in second.steps.values())
    assert calls.counts == dict.fromkeys(pipeline.order, 1)
    # Metrics of cached steps are carried over, so every run shows its results.
    assert [m.key for m in runner.metadata.get_metrics(second.run_id)] == ["rows"]
    # The same artifacts are reused, not copied.
    for name in pipeline.order:
        assert second.steps[name].output_artifact_id == first.steps[name].output_artifact_id


def test_parameters_change_the_key_of_that_step_and_everything_downstream(
    runner: Runner,
) -> None:
    calls = Calls()
    pipeline = diamond(calls)
    runner.run(pipeline)
    result = runner.run(pipeline, params={"source.n": "6"})
    assert statuses(result) == {
        "source": "succeeded",
        "left": "succeeded",
        "right": "succeeded",
        "joined": "succeeded",
        "side": "cached",
    }
    # Back to the old value: everything is in the cache again.
    assert set(statuses(runner.run(pipeline)).values()) == {"cached"}


def test_an_unchanged_output_stops_invalidation(local_runner: Runner) -> None:
    """Keys hash input *content*: a changed step whose output is the same bytes does not
    re-run what is downstream."""
    calls = Calls()

    @step
    def parity(n: int = 2) -> int:
        return n % 2

    @step
    def label(parity: int) -> str:
        calls.hit("label")
        return "even" if parity == 0 else "odd"

    pipeline = Pipeline.from_steps([parity, label])
    local_runner.run(pipeline, params={"n": "2"})
    result = local_runner.run(pipeline, params={"n": "4"})
    assert statuses(result) == {"parity": "succeeded", "label": "cached"}
    assert calls.counts == {"label": 1}


def test_no_cache_and_cache_false(local_runner: Runner) -> None:
    calls = Calls()

    @step
    def stable() -> int:
        calls.hit("stable")
        return 1

    @step(cache=False)
    def volatile(stable: int) -> int:
        calls.hit("volatile")
        return stable + 1

    pipeline = Pipeline.from_steps([stable, volatile])
    local_runner.run(pipeline)
    assert statuses(local_runner.run(pipeline)) == {"stable": "cached", "volatile": "succeeded"}
    assert statuses(local_runner.run(pipeline, no_cache=True)) == {
        "stable": "succeeded",
        "volatile": "succeeded",
    }
    assert calls.counts == {"stable": 2, "volatile": 3}


def test_fresh_external_data_is_never_answered_from_the_cache(
    local_runner: Runner, tmp_path: Path
) -> None:
    data = tmp_path / "events.csv"
    data.write_text("x\n1\n2\n")

    @step
    def events(source: Files = Files(str(data))) -> pl.DataFrame:
        return pl.read_csv(source.paths()[0])

    @step
    def total(events: pl.DataFrame) -> int:
        return int(events["x"].sum())

    pipeline = Pipeline.from_steps([events, total])
    assert local_runner.output(local_runner.run(pipeline).run_id, "total") == 3
    assert set(statuses(local_runner.run(pipeline)).values()) == {"cached"}

    data.write_text("x\n1\n5\n")  # same size: only the content hash tells
    result = local_runner.run(pipeline)
    assert statuses(result) == {"events": "succeeded", "total": "succeeded"}
    assert local_runner.output(result.run_id, "total") == 6

    # The file can also be swapped from the command line.
    other = tmp_path / "other.csv"
    other.write_text("x\n10\n")
    result = local_runner.run(pipeline, params={"events.source": str(other)})
    assert local_runner.output(result.run_id, "total") == 10


def test_unreadable_external_data_fails_that_step_with_its_message(
    local_runner: Runner, tmp_path: Path
) -> None:
    @step
    def events(source: Files = Files(str(tmp_path / "missing-*.csv"))) -> int:
        return 1

    result = local_runner.run(Pipeline.from_steps([events]))
    assert statuses(result) == {"events": "failed"}
    assert "No file matches" in (result.steps["events"].error or "")


def test_failure_skips_dependents_lets_independent_steps_finish_and_resume_reruns_the_rest(
    runner: Runner,
) -> None:
    calls = Calls()
    broken = [True]
    pipeline = diamond(calls, fail_right=broken)
    failed = runner.run(pipeline)
    assert failed.status == "failed"
    assert statuses(failed) == {
        "source": "succeeded",
        "left": "succeeded",
        "right": "failed",
        "joined": "skipped",
        "side": "succeeded",
    }
    assert failed.error is not None
    assert "Step 'right' failed: ValueError: right is broken" in failed.error
    assert f"loopline resume {failed.run_id}" in failed.error
    attempt = runner.metadata.get_attempts(failed.steps["right"].id)[0]
    assert attempt.traceback is not None
    assert "right is broken" in attempt.traceback
    assert runner.metadata.get_run(failed.run_id).status == "failed"

    broken[0] = False  # the outside cause is fixed (same code, same key)
    resumed = runner.resume(failed.run_id[:8])
    assert resumed.ok, resumed.error
    assert statuses(resumed) == {
        "source": "cached",
        "left": "cached",
        "right": "succeeded",
        "joined": "succeeded",
        "side": "cached",
    }
    assert runner.metadata.get_run(resumed.run_id).parent_run_id == failed.run_id
    assert calls.counts == {"source": 1, "left": 1, "right": 2, "joined": 1, "side": 1}


def test_resume_decides_by_cache_key_not_by_name(local_runner: Runner, tmp_path: Path) -> None:
    """A step that succeeded but whose input file changed since is re-run on resume."""
    flag = tmp_path / "flag"
    data = tmp_path / "data.txt"
    data.write_text("a")
    path = tmp_path / "resumable.py"
    path.write_text(
        textwrap.dedent(
            f"""
            from pathlib import Path
            from loopline import Files, step

            @step
            def read(source: Files = Files({str(data)!r})) -> str:
                return Path(source.paths()[0]).read_text()

            @step
            def shout(read: str) -> str:
                if Path({str(flag)!r}).exists():
                    raise RuntimeError("flag is set")
                return read.upper()
            """
        )
    )
    flag.write_text("")
    failed = local_runner.run(path)
    assert statuses(failed) == {"read": "succeeded", "shout": "failed"}

    flag.unlink()
    data.write_text("b")
    resumed = local_runner.resume(failed.run_id)
    assert statuses(resumed) == {"read": "succeeded", "shout": "succeeded"}
    assert local_runner.output(resumed.run_id, "shout") == "B"


def test_resume_uses_the_whole_chain_of_runs(local_runner: Runner) -> None:
    calls = Calls()
    broken = [True]
    pipeline = diamond(calls, fail_right=broken)
    first = local_runner.run(pipeline)
    second = local_runner.resume(first.run_id)  # still broken
    assert statuses(second)["right"] == "failed"
    broken[0] = False
    third = local_runner.resume(second.run_id)
    assert third.ok
    assert statuses(third)["left"] == "cached"
    assert calls.counts["left"] == 1


def test_resume_of_unknown_or_running_runs(local_runner: Runner) -> None:
    from loopline.errors import RunNotFoundError

    with pytest.raises(RunNotFoundError, match="loopline runs"):
        local_runner.resume("feedbeef")
    run_id = local_runner.metadata.create_run(pipeline="p", source="<memory:p>")
    with pytest.raises(PipelineError, match="still running"):
        local_runner.resume(run_id)


def test_a_dead_process_run_is_settled_as_interrupted(local_runner: Runner) -> None:
    import subprocess
    import sys

    child = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        check=True,
        capture_output=True,
        text=True,
    )
    dead_pid = int(child.stdout)
    run_id = local_runner.metadata.create_run(pipeline="p", source="<memory:p>")
    step_id = local_runner.metadata.start_step(run_id, "s", cache_key=None)
    from loopline.store import schema

    with local_runner.metadata._write() as conn:
        conn.execute(schema.runs.update().where(schema.runs.c.id == run_id).values(pid=dead_pid))
    run = local_runner.settle(run_id)
    assert run.status == "interrupted"
    assert "ended before the run finished" in (run.error or "")
    assert local_runner.metadata.get_step(step_id).status == "failed"


def test_retries_with_backoff_for_declared_transient_errors(local_runner: Runner) -> None:
    attempts: list[int] = []

    @step(retries=3, retry_on=(ConnectionError,), backoff=0.01)
    def flaky() -> str:
        attempts.append(1)
        if len(attempts) < 3:
            raise ConnectionError("broker unavailable")
        return "ok"

    result = local_runner.run(Pipeline.from_steps([flaky]))
    assert result.ok
    recorded = local_runner.metadata.get_attempts(result.steps["flaky"].id)
    assert [(a.number, a.status) for a in recorded] == [
        (1, "failed"),
        (2, "failed"),
        (3, "succeeded"),
    ]
    assert recorded[0].error == "ConnectionError: broker unavailable"
    # Exponential backoff: the second wait is twice the first.
    assert flaky.delay(1) == pytest.approx(0.01)
    assert flaky.delay(2) == pytest.approx(0.02)
    assert step(retries=9, backoff=1, max_backoff=5)(lambda: 1).delay(9) == 5


def test_undeclared_errors_are_not_retried_and_retries_run_out(local_runner: Runner) -> None:
    @step(retries=3, retry_on=(ConnectionError,), backoff=0.001)
    def wrong() -> int:
        raise KeyError("not transient")

    @step(retries=2, retry_on=(ConnectionError,), backoff=0.001)
    def down() -> int:
        raise ConnectionError("still down")

    result = local_runner.run(Pipeline.from_steps([wrong, down]))
    assert len(local_runner.metadata.get_attempts(result.steps["wrong"].id)) == 1
    assert len(local_runner.metadata.get_attempts(result.steps["down"].id)) == 3
    assert result.status == "failed"


def test_timeout_fails_the_attempt_and_can_be_retried(local_runner: Runner) -> None:
    release = threading.Event()
    tries: list[int] = []

    @step(timeout=0.2, retries=1, retry_on=(TimeoutError,), backoff=0.001)
    def slow() -> str:
        tries.append(1)
        if len(tries) == 1:
            release.wait(10)
        return "done"

    @step(timeout=0.2)
    def stuck() -> str:
        release.wait(10)
        return "never"

    try:
        result = local_runner.run(Pipeline.from_steps([slow, stuck]))
    finally:
        release.set()
    assert statuses(result) == {"slow": "succeeded", "stuck": "failed"}
    attempts = local_runner.metadata.get_attempts(result.steps["slow"].id)
    assert [a.status for a in attempts] == ["failed", "succeeded"]
    assert "ran past its timeout of 0.2 s" in (attempts[0].error or "")
    assert issubclass(StepTimeoutError, TimeoutError)


def test_independent_steps_run_in_parallel(local_runner: Runner) -> None:
    # Each step waits for the other: this finishes only if both run at the same time.
    barrier = threading.Barrier(2, timeout=10)

    @step
    def one() -> int:
        barrier.wait()
        return 1

    @step
    def two() -> int:
        barrier.wait()
        return 2

    @step
    def both(one: int, two: int) -> int:
        return one + two

    result = local_runner.run(Pipeline.from_steps([one, two, both]), max_workers=2)
    assert result.ok, result.error
    assert local_runner.output(result.run_id, "both") == 3


def test_processes_executor_runs_steps_in_other_processes(
    local_runner: Runner, tmp_path: Path
) -> None:
    path = tmp_path / "procs.py"
    path.write_text(
        textwrap.dedent(
            """
            import os
            from loopline import step

            @step
            def where() -> int:
                return os.getpid()

            @step
            def echo(where: int, offset: int = 0) -> int:
                return where + offset
            """
        )
    )
    result = local_runner.run(path, executor="processes", max_workers=1, params={"offset": "0"})
    assert result.ok, result.error
    pid = local_runner.output(result.run_id, "where")
    assert pid != os.getpid()
    assert local_runner.output(result.run_id, "echo") == pid


def test_processes_executor_needs_a_file(local_runner: Runner) -> None:
    with pytest.raises(PipelineDefinitionError, match="needs a pipeline file"):
        local_runner.run(diamond(Calls()), executor="processes")


def test_unstorable_output_fails_the_step_clearly(local_runner: Runner) -> None:
    @step
    def opaque() -> object:
        return object()

    result = local_runner.run(Pipeline.from_steps([opaque]))
    assert result.status == "failed"
    assert "opaque" in (result.error or "")
    assert "object" in (result.steps["opaque"].error or "")


def test_corrupted_cached_artifact_is_rebuilt(local_runner: Runner) -> None:
    calls = Calls()
    pipeline = diamond(calls)
    first = local_runner.run(pipeline)
    record = local_runner.metadata.get_artifact(first.steps["left"].output_artifact_id or "")
    path = Path(local_runner.artifacts.path(record.content_hash))
    path.write_bytes(b"not parquet any more")

    second = local_runner.run(pipeline)
    assert second.ok, second.error
    assert statuses(second)["left"] == "succeeded"
    assert statuses(second)["source"] == "cached"
    assert calls.counts["left"] == 2
    assert local_runner.output(second.run_id, "left")["y"].to_list() == [0, 2, 4, 6]


def test_lineage_links_outputs_to_the_steps_and_inputs_that_made_them(runner: Runner) -> None:
    result = runner.run(diamond(Calls()))
    joined = result.steps["joined"]
    artifact = runner.metadata.get_artifact(joined.output_artifact_id or "")
    assert artifact.producer_step_id == joined.id
    inputs = runner.metadata.step_inputs(joined.id)
    assert inputs == {
        "left": result.steps["left"].output_artifact_id,
        "right": result.steps["right"].output_artifact_id,
    }
    upstream = runner.metadata.get_artifact(inputs["left"])
    assert runner.metadata.get_step(upstream.producer_step_id or "").name == "left"


def test_output_of_unknown_step(local_runner: Runner) -> None:
    result = local_runner.run(diamond(Calls()))
    with pytest.raises(PipelineDefinitionError, match="no output for step 'nope'"):
        local_runner.output(result.run_id, "nope")


def test_pipeline_loaded_by_path(local_runner: Runner, tmp_path: Path) -> None:
    path = tmp_path / "bypath.py"
    path.write_text("from loopline import step\n\n@step\ndef one() -> int:\n    return 1\n")
    result = local_runner.run(str(path))
    assert result.ok
    assert load_pipeline(path).name == "bypath"
    assert local_runner.metadata.get_run(result.run_id).source == str(path.resolve())


# -- invariant: a cached step returns the same bytes -----------------------------------------

_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=12,
)
_rows = st.lists(
    st.tuples(st.integers(-(2**63), 2**63 - 1), st.floats() | st.none(), st.text()),
    max_size=30,
)


def _stored_bytes(runner: Runner, result: Any) -> dict[str, tuple[str, bytes]]:
    out = {}
    for name, record in result.steps.items():
        artifact = runner.metadata.get_artifact(record.output_artifact_id)
        out[name] = (artifact.content_hash, runner.artifacts.read_bytes(artifact.content_hash))
    return out


@settings(max_examples=15, deadline=None)
@given(value=_json_values, rows=_rows)
def test_a_cached_step_returns_the_same_bytes(value: Any, rows: list[Any]) -> None:
    @step
    def table() -> pl.DataFrame:
        return pl.DataFrame(rows, schema=["id", "score", "label"], orient="row")

    @step
    def summary(table: pl.DataFrame) -> dict[str, Any]:
        return {"rows": table.height, "value": value}

    pipeline = Pipeline.from_steps([table, summary], name="bytes")
    with tempfile.TemporaryDirectory() as home:
        settings_ = Settings.load(start=home, search=False, env={})
        with Runner(settings_) as runner:
            cold = runner.run(pipeline)
            cached = runner.run(pipeline)
            rebuilt = runner.run(pipeline, no_cache=True)

            assert statuses(cached) == {"table": "cached", "summary": "cached"}
            assert _stored_bytes(runner, cached) == _stored_bytes(runner, cold)
            assert _stored_bytes(runner, rebuilt) == _stored_bytes(runner, cold)
            assert runner.output(cached.run_id, "table").equals(runner.output(cold.run_id, "table"))
