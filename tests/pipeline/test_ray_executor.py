"""The Ray engine: the same outputs, failures and cache as the local executor.

One local Ray cluster (two CPUs, ``ray_cluster``) serves the session: starting one takes seconds.
The runner finds Ray already connected and leaves the connection open after each run.
"""

from __future__ import annotations

import os
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import ray

from loopline.config import Settings
from loopline.errors import PipelineDefinitionError
from loopline.pipeline import ray_executor
from loopline.pipeline.dag import Pipeline
from loopline.pipeline.executor import make_executor
from loopline.pipeline.ray_executor import RayExecutor
from loopline.pipeline.runner import Runner, RunResult
from loopline.pipeline.step import step

PIPELINE = """
import os
from pathlib import Path

import polars as pl

from loopline import log_metrics, step


@step
def source(n: int = 4) -> pl.DataFrame:
    return pl.DataFrame({"x": list(range(n))})


@step
def left(source: pl.DataFrame) -> pl.DataFrame:
    return source.with_columns(y=pl.col("x") * 2)


@step
def right(source: pl.DataFrame, max_rows: int = 10) -> dict[str, int]:
    if source.height > max_rows:
        raise ValueError(f"{source.height} rows is more than {max_rows}")
    log_metrics({"rows": source.height})
    return {"rows": source.height}


@step
def joined(left: pl.DataFrame, right: dict[str, int]) -> pl.DataFrame:
    return left.with_columns(rows=pl.lit(right["rows"]))


@step(retries=2, retry_on=(ConnectionError,), backoff=0.01)
def flaky(marker: str = "") -> str:
    # Fails its first attempt: the attempts are loopline's, inside one Ray task.
    if marker and not Path(marker).exists():
        Path(marker).touch()
        raise ConnectionError("broker unavailable")
    return "ok"


@step(cache=False)
def where() -> int:
    return os.getpid()
"""


@pytest.fixture(scope="module")
def pipeline_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("ray-pipeline") / "small.py"
    path.write_text(PIPELINE)
    return path


def make_runner(home: Path, engine: str) -> Runner:
    return Runner(Settings.load(start=home, search=False, env={}, engine=engine))


def hashes(runner: Runner, result: RunResult) -> dict[str, str]:
    """Each step's output content hash (``where`` returns a process id, so not it)."""
    found = {}
    for name, record in result.steps.items():
        if name != "where" and record.output_artifact_id is not None:
            found[name] = runner.metadata.get_artifact(record.output_artifact_id).content_hash
    return found


def run_both(
    tmp_path: Path, pipeline_file: Path, params: dict[str, Any]
) -> tuple[tuple[Runner, RunResult], tuple[Runner, RunResult]]:
    runs = []
    for engine in ("local", "ray"):
        home = tmp_path / engine
        params = {**params, "marker": str(home / "flaky-failed-once")}
        runner = make_runner(home, engine)
        runs.append((runner, runner.run(pipeline_file, params=params)))
    return runs[0], runs[1]


@pytest.mark.usefixtures("ray_cluster")
def test_ray_stores_the_same_outputs_as_the_local_executor(
    tmp_path: Path, pipeline_file: Path
) -> None:
    (local, on_local), (remote, on_ray) = run_both(tmp_path, pipeline_file, {})
    with local, remote:
        assert on_local.ok, on_local.error
        assert on_ray.ok, on_ray.error
        assert hashes(remote, on_ray) == hashes(local, on_local)
        assert len(hashes(remote, on_ray)) == 5
        # The steps ran in Ray's worker processes, not in this one.
        assert remote.output(on_ray.run_id, "where") != os.getpid()
        assert remote.metadata.get_run(on_ray.run_id).options["engine"] == "ray"
        metrics = remote.metadata.get_metrics(on_ray.run_id)
        assert [(m.step_name, m.key, m.value) for m in metrics] == [("right", "rows", 4.0)]
        # loopline's own retries ran inside the task, and were recorded.
        attempts = remote.metadata.get_attempts(on_ray.steps["flaky"].id)
        assert [(a.number, a.status) for a in attempts] == [(1, "failed"), (2, "succeeded")]


@pytest.mark.usefixtures("ray_cluster")
def test_a_failing_step_fails_as_it_does_locally(tmp_path: Path, pipeline_file: Path) -> None:
    (local, on_local), (remote, on_ray) = run_both(tmp_path, pipeline_file, {"n": "20"})
    with local, remote:
        statuses = {name: record.status for name, record in on_ray.steps.items()}
        assert statuses == {name: record.status for name, record in on_local.steps.items()}
        assert (statuses["right"], statuses["joined"]) == ("failed", "skipped")
        assert on_ray.steps["right"].error == "ValueError: 20 rows is more than 10"
        assert on_ray.error == on_local.error.replace(on_local.run_id, on_ray.run_id)
        assert "ValueError: 20 rows is more than 10" in (on_ray.error or "")
        assert hashes(remote, on_ray) == hashes(local, on_local)


@pytest.mark.usefixtures("ray_cluster")
def test_a_second_run_on_ray_is_answered_from_the_cache(
    tmp_path: Path, pipeline_file: Path
) -> None:
    with make_runner(tmp_path, "ray") as runner:
        first = runner.run(pipeline_file, params={"n": "6"})
        assert first.ok, first.error
        second = runner.run(pipeline_file, params={"n": "6"})
        statuses = {name: record.status for name, record in second.steps.items()}
        assert statuses == {**dict.fromkeys(first.steps, "cached"), "where": "succeeded"}
        assert hashes(runner, second) == hashes(runner, first)
    # Cache keys do not depend on where a step ran.
    with make_runner(tmp_path, "local") as runner:
        again = runner.run(pipeline_file, params={"n": "6"})
        assert {r.status for n, r in again.steps.items() if n != "where"} == {"cached"}


@pytest.mark.usefixtures("ray_cluster")
def test_a_crashed_worker_is_replaced_and_the_step_run_again(tmp_path: Path) -> None:
    path = tmp_path / "crash.py"
    path.write_text(
        textwrap.dedent(
            f"""
            import os
            from pathlib import Path
            from loopline import step

            @step
            def crashes_once() -> str:
                marker = Path({str(tmp_path / "crashed")!r})
                if not marker.exists():
                    marker.touch()
                    os._exit(1)
                return "survived"
            """
        )
    )
    with make_runner(tmp_path, "ray") as runner:
        result = runner.run(path)
        assert result.ok, result.error
        assert runner.output(result.run_id, "crashes_once") == "survived"


@pytest.mark.usefixtures("ray_cluster")
def test_an_executor_made_while_ray_is_connected_leaves_it_connected() -> None:
    executor = make_executor("threads", 2, engine="ray")
    assert isinstance(executor, RayExecutor)
    executor.shutdown()
    assert ray.is_initialized()


def test_a_pipeline_built_in_memory_cannot_run_on_ray(tmp_path: Path) -> None:
    @step
    def one() -> int:
        return 1

    with (
        make_runner(tmp_path, "ray") as runner,
        pytest.raises(PipelineDefinitionError, match="'ray' engine loads the pipeline"),
    ):
        runner.run(Pipeline.from_steps([one]))


def test_a_step_process_imports_lightgbm_beside_its_first_step_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """On a cluster started here, the process that takes the first step (which the
    warm-up never reaches) imports LightGBM in one background thread."""
    monkeypatch.setattr(ray_executor, "_IMPORTING", [])
    ray_executor._import_in_background()
    ray_executor._import_in_background()
    (thread,) = ray_executor._IMPORTING
    thread.join(timeout=60)
    assert not thread.is_alive()
    assert "lightgbm" in sys.modules


THREADS = """
import os

import polars as pl
import pyarrow as pa

from loopline import step


@step(cache=False)
def threads() -> list[str]:
    return [os.environ.get("OMP_NUM_THREADS", ""), str(pa.cpu_count()), str(pl.thread_pool_size())]
"""


@pytest.mark.usefixtures("ray_cluster")
def test_a_step_on_ray_reads_and_writes_arrow_on_as_many_threads_as_polars(
    tmp_path: Path,
) -> None:
    """Ray gives a one-CPU task one OpenMP thread, and Arrow took that for its pool."""
    path = tmp_path / "threads.py"
    path.write_text(THREADS)
    with make_runner(tmp_path, "ray") as runner:
        result = runner.run(path)
        assert result.ok, result.error
        omp, arrow, polars = runner.output(result.run_id, "threads")
    assert omp == "1"
    assert arrow == polars
