"""The runner: plans a pipeline run, answers steps from the cache, records everything.

A step runs when all its upstream steps have an output. Before it runs, its cache key
(code, version, parameters with external data fingerprinted, input content hashes) is
looked up; a hit reuses the stored output. Independent steps run at the same time on
the executor. A failed step skips what depends on it while independent branches
finish, and ``resume`` later re-runs only what did not succeed, matching by cache key.

Examples
--------
>>> import tempfile
>>> from loopline.config import Settings
>>> from loopline.pipeline.step import step
>>> from loopline.pipeline.dag import Pipeline
>>> @step
... def numbers(n: int = 3) -> list[int]:
...     return list(range(n))
>>> @step
... def total(numbers: list[int]) -> int:
...     return sum(numbers)
>>> home = tempfile.mkdtemp()
>>> runner = Runner(Settings.load(start=home, search=False, env={}))
>>> pipeline = Pipeline.from_steps([numbers, total], name="demo")
>>> first = runner.run(pipeline, params={"n": 4})
>>> first.status, runner.output(first.run_id, "total")
('succeeded', 6)
>>> second = runner.run(pipeline, params={"n": 4})
>>> [s.status for s in second.steps.values()]
['cached', 'cached']
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Mapping
from concurrent.futures import FIRST_COMPLETED, Future, wait
from dataclasses import dataclass
from typing import Any

from loopline.config import Settings
from loopline.data.workspace import Workspace, forget_stores, register_stores, use_workspace
from loopline.errors import (
    ArtifactCorruptedError,
    ArtifactError,
    LooplineError,
    PipelineDefinitionError,
    PipelineError,
)
from loopline.pipeline.cache import cache_key
from loopline.pipeline.dag import Pipeline, load_pipeline, param_value, register_pipeline
from loopline.pipeline.environment import capture_environment
from loopline.pipeline.executor import InputRef, StepResult, StepTask, make_executor
from loopline.pipeline.progress import NullReporter, Reporter
from loopline.store.artifacts import ArtifactStore
from loopline.store.metadata import (
    ArtifactRecord,
    AttemptRecord,
    MetadataStore,
    StepOutcome,
    StepRecord,
    new_id,
)

__all__ = ["RunResult", "Runner"]

log = logging.getLogger("loopline.run")


@dataclass(frozen=True)
class RunResult:
    run_id: str
    pipeline: str
    status: str
    steps: dict[str, StepRecord]
    """The run's step records by name, in execution order."""
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.status == "succeeded"


@dataclass
class _Running:
    name: str
    step_id: str
    key: str
    inputs: dict[str, str]
    started: float


class Runner:
    """Runs pipelines against the metadata and artifact stores named by ``settings``."""

    def __init__(
        self,
        settings: Settings,
        *,
        reporter: Reporter | None = None,
        metadata: MetadataStore | None = None,
        artifacts: ArtifactStore | None = None,
    ) -> None:
        self.settings = settings
        if metadata is None and settings.metadata_url.startswith("sqlite:///"):
            settings.home.mkdir(parents=True, exist_ok=True)
        self.metadata = metadata or MetadataStore(settings.metadata_url)
        self.artifacts = artifacts or ArtifactStore(settings.artifact_url)
        self.reporter: Reporter = reporter or NullReporter()
        register_stores(self.metadata, self.artifacts)  # steps in this process reuse them

    def close(self) -> None:
        """Release the metadata store's connections."""
        forget_stores(self.metadata, self.artifacts)
        self.metadata.close()

    def __enter__(self) -> Runner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- public API ----------------------------------------------------------------------

    def run(
        self,
        pipeline: Pipeline | str | os.PathLike[str],
        *,
        params: Mapping[str, Any] | None = None,
        no_cache: bool = False,
        executor: str | None = None,
        max_workers: int | None = None,
    ) -> RunResult:
        """Run every step of ``pipeline``; ``params`` are ``param``/``step.param`` overrides."""
        if not isinstance(pipeline, Pipeline):
            pipeline = load_pipeline(pipeline)
        register_pipeline(pipeline)
        cli = dict(params or {})
        resolved = pipeline.resolve_params(config=self.settings.params, cli=cli)
        options = {
            "params": {k: param_value(v) for k, v in cli.items()},
            "no_cache": no_cache,
            "engine": self.settings.engine,
            "executor": executor or self.settings.executor,
            "max_workers": max_workers or self.settings.max_workers,
        }
        run_id = self.metadata.create_run(
            pipeline=pipeline.name,
            source=pipeline.source,
            params={s: {k: param_value(v) for k, v in p.items()} for s, p in resolved.items()},
            options=options,
        )
        self._record_environment(run_id, pipeline)
        with use_workspace(self._workspace(run_id)):
            return self._execute(run_id, pipeline, resolved, options, reuse={})

    def resume(
        self, run_id: str, *, executor: str | None = None, max_workers: int | None = None
    ) -> RunResult:
        """Start a run that reuses every output of ``run_id`` (and its ancestors) whose
        cache key still matches, and runs the rest: what failed and what depends on it."""
        parent = self.metadata.get_run(run_id)
        parent = self.settle(parent.id)
        if parent.status == "running":
            raise PipelineError(
                f"Run {parent.id} is still running (process {parent.pid} on {parent.host}). "
                f"Wait for it to end, or stop it, then resume.",
                run_id=parent.id,
            )
        pipeline = load_pipeline(parent.source)
        register_pipeline(pipeline)
        options = dict(parent.options)
        # Where this run's steps run is this deployment's choice, not the parent's.
        options["engine"] = self.settings.engine
        options["executor"] = executor or options.get("executor") or self.settings.executor
        options["max_workers"] = (
            max_workers or options.get("max_workers") or self.settings.max_workers
        )
        resolved = pipeline.resolve_params(
            config=self.settings.params, cli=dict(options.get("params", {}))
        )
        reuse = self._reusable(parent.id)
        new_run = self.metadata.create_run(
            pipeline=pipeline.name,
            source=pipeline.source,
            params={s: {k: param_value(v) for k, v in p.items()} for s, p in resolved.items()},
            options=options,
            parent_run_id=parent.id,
        )
        self._record_environment(new_run, pipeline)
        with use_workspace(self._workspace(new_run)):
            return self._execute(new_run, pipeline, resolved, options, reuse=reuse)

    def _record_environment(self, run_id: str, pipeline: Pipeline) -> None:
        env = capture_environment(pipeline.source)
        self.metadata.set_tags("run", run_id, {f"env.{k}": v for k, v in env.items()})

    def output(self, run_id: str, step: str) -> Any:
        """Load the output of ``step`` in run ``run_id`` from the artifact store."""
        run = self.metadata.get_run(run_id)
        for record in self.metadata.get_steps(run.id):
            if record.name == step and record.output_artifact_id is not None:
                artifact = self.metadata.get_artifact(record.output_artifact_id)
                return self.artifacts.get(artifact.content_hash, artifact.kind)
        raise PipelineDefinitionError(
            f"Run {run.id} has no output for step {step!r}. 'loopline show {run.id}' lists "
            f"its steps.",
            step=step,
            run_id=run.id,
        )

    def settle(self, run_id: str) -> Any:
        """Mark a run whose process died (on this host) as interrupted; return its record."""
        run = self.metadata.get_run(run_id)
        if (
            run.status == "running"
            and run.host == socket.gethostname()
            and run.pid is not None
            and not _alive(run.pid)
        ):
            self.metadata.interrupt_run(
                run.id, error=f"The run's process ({run.pid}) ended before the run finished."
            )
            run = self.metadata.get_run(run.id)
        return run

    # -- execution -----------------------------------------------------------------------

    def _workspace(self, run_id: str) -> Workspace:
        """Where data code records for this run (cache keys read dataset versions there)."""
        return Workspace(self.metadata.url, self.artifacts.url, run_id)

    def _execute(
        self,
        run_id: str,
        pipeline: Pipeline,
        resolved: Mapping[str, Mapping[str, Any]],
        options: Mapping[str, Any],
        *,
        reuse: Mapping[str, tuple[ArtifactRecord, str]],
    ) -> RunResult:
        kind = str(options["executor"])
        engine = str(options.get("engine", "local"))
        if (kind == "processes" or engine != "local") and pipeline.source.startswith("<"):
            where = "processes executor" if engine == "local" else f"{engine!r} engine"
            raise PipelineDefinitionError(
                f"The {where} loads the pipeline again in each worker, so it "
                f"needs a pipeline file or module; {pipeline.name!r} was built in memory.",
            )
        started = time.time()
        self.reporter.run_started(run_id=run_id, pipeline=pipeline.name, steps=pipeline.order)
        outputs: dict[str, ArtifactRecord] = {}
        failed: dict[str, str] = {}
        skipped: set[str] = set()
        waiting = {name: len(ups) for name, ups in pipeline.upstream.items()}
        children: dict[str, list[str]] = {name: [] for name in pipeline.order}
        for name, ups in pipeline.upstream.items():
            for up in ups:
                children[up].append(name)
        ready = [name for name in pipeline.order if waiting[name] == 0]
        running: dict[Future[StepResult], _Running] = {}
        no_cache = bool(options.get("no_cache"))
        status = "failed"

        def finished(name: str) -> None:
            for child in children[name]:
                waiting[child] -= 1
                if waiting[child] == 0:
                    ready.append(child)

        def fail(name: str, error: str) -> None:
            failed[name] = error
            below = pipeline.downstream([name])
            for down in pipeline.order:
                if down in below and down not in skipped:
                    skipped.add(down)
                    reason = f"Upstream step {name!r} failed."
                    self.metadata.record_skipped_step(run_id, down, reason=reason)
                    self.reporter.step_finished(
                        run_id=run_id, step=down, status="skipped", duration=0.0, error=None
                    )

        try:
            pool = make_executor(kind, int(options["max_workers"]), engine=engine)
        except BaseException as exc:
            # A cluster that cannot start or be joined ends the run before any step.
            ended = "failed" if isinstance(exc, Exception) else "interrupted"
            self.metadata.finish_run(run_id, ended, error=str(exc) or type(exc).__name__)
            self.reporter.run_finished(run_id=run_id, status=ended, duration=time.time() - started)
            raise
        try:
            while ready or running:
                while ready:
                    name = ready.pop(0)
                    if name in skipped:
                        continue
                    try:
                        key, inputs = self._plan(pipeline, name, resolved[name], outputs)
                    except _PlanError as exc:
                        self._record_failure(run_id, name, str(exc))
                        fail(name, str(exc))
                        continue
                    hit = reuse.get(key) or (
                        None if no_cache or not pipeline.steps[name].cache else self._lookup(key)
                    )
                    if hit is not None and self._usable(hit[0]):
                        outputs[name] = self._record_hit(run_id, name, key, inputs, hit)
                        finished(name)
                        continue
                    step_id = self.metadata.start_step(run_id, name, cache_key=key)
                    self.reporter.step_started(run_id=run_id, step=name)
                    task = StepTask(
                        pipeline=pipeline.source,
                        step=name,
                        inputs={
                            up: InputRef(outputs[up].id, outputs[up].content_hash, outputs[up].kind)
                            for up in pipeline.upstream[name]
                        },
                        params=dict(resolved[name]),
                        artifact_url=self.artifacts.url,
                        metadata_url=self.metadata.url,
                        run_id=run_id,
                        step_id=step_id,
                        engine=engine,
                    )
                    future = pool.submit(task)
                    running[future] = _Running(name, step_id, key, inputs, time.time())
                if not running:
                    break
                done, _ = wait(running, return_when=FIRST_COMPLETED)
                for future in done:
                    job = running.pop(future)
                    result = _result(future)
                    artifact = self._finish(run_id, job, result)
                    if artifact is not None:
                        outputs[job.name] = artifact
                        finished(job.name)
                    else:
                        fail(job.name, result.error or "failed")
            status = "succeeded" if not failed and not skipped else "failed"
        except BaseException:
            pool.shutdown(cancel=True)
            for job in running.values():
                self.metadata.finish_step(
                    run_id,
                    job.step_id,
                    StepOutcome("failed", time.time(), error="Interrupted.", inputs=job.inputs),
                )
            self.metadata.finish_run(run_id, "interrupted", error="Interrupted.")
            self.reporter.run_finished(
                run_id=run_id, status="interrupted", duration=time.time() - started
            )
            raise
        pool.shutdown()
        error = None
        if failed:
            first, message = next(iter(failed.items()))
            more = f" ({len(failed) - 1} more step(s) failed)" if len(failed) > 1 else ""
            error = (
                f"Step {first!r} failed: {message.rstrip('.')}{more}. Fix it, then run "
                f"'loopline resume "
                f"{run_id}' to re-run only what failed and what depends on it."
            )
        self.metadata.finish_run(run_id, status, error=error)
        self.reporter.run_finished(run_id=run_id, status=status, duration=time.time() - started)
        records = {s.name: s for s in self.metadata.get_steps(run_id)}
        ordered = {n: records[n] for n in pipeline.order if n in records}
        return RunResult(run_id, pipeline.name, status, ordered, error)

    def _plan(
        self,
        pipeline: Pipeline,
        name: str,
        params: Mapping[str, Any],
        outputs: Mapping[str, ArtifactRecord],
    ) -> tuple[str, dict[str, str]]:
        """The step's cache key and input artifact ids, fingerprinting external data."""
        upstream = pipeline.upstream[name]
        try:
            key = cache_key(
                pipeline.steps[name], params, {up: outputs[up].content_hash for up in upstream}
            )
        except Exception as exc:
            message = str(exc) if isinstance(exc, LooplineError) else f"{type(exc).__name__}: {exc}"
            raise _PlanError(message) from exc
        return key, {up: outputs[up].id for up in upstream}

    def _record_failure(self, run_id: str, name: str, error: str) -> None:
        step_id = self.metadata.start_step(run_id, name, cache_key=None)
        now = time.time()
        attempt = AttemptRecord(1, "failed", now, now, error)
        self.metadata.finish_step(
            run_id, step_id, StepOutcome("failed", now, error=error, attempts=(attempt,))
        )
        self.reporter.step_finished(
            run_id=run_id, step=name, status="failed", duration=0.0, error=error
        )

    def _lookup(self, key: str) -> tuple[ArtifactRecord, str] | None:
        return self.metadata.lookup_cache(key)

    def _usable(self, artifact: ArtifactRecord) -> bool:
        """A cached output is used only if its bytes are still there and intact."""
        try:
            self.artifacts.verify(artifact.content_hash)
        except ArtifactCorruptedError as exc:
            log.warning("%s Running the step again to rebuild it.", exc)
            self.artifacts.discard(artifact.content_hash)
            return False
        except ArtifactError:
            return False
        return True

    def _record_hit(
        self,
        run_id: str,
        name: str,
        key: str,
        inputs: Mapping[str, str],
        hit: tuple[ArtifactRecord, str],
    ) -> ArtifactRecord:
        artifact, source_step = hit
        self.metadata.record_cached_step(
            run_id,
            name,
            cache_key=key,
            artifact_id=artifact.id,
            source_step_id=source_step,
            inputs=inputs,
        )
        self.reporter.step_finished(
            run_id=run_id, step=name, status="cached", duration=0.0, error=None
        )
        return artifact

    def _finish(self, run_id: str, job: _Running, result: StepResult) -> ArtifactRecord | None:
        ended = time.time()
        artifact = None
        if result.status == "succeeded" and result.output is not None:
            out = result.output
            artifact = ArtifactRecord(
                new_id(), out.content_hash, out.uri, out.size, out.kind, ended
            )
        self.metadata.finish_step(
            run_id,
            job.step_id,
            StepOutcome(
                status="succeeded" if artifact is not None else "failed",
                ended_at=ended,
                error=result.error,
                artifact=artifact,
                attempts=result.attempts,
                metrics=result.metrics,
                inputs=job.inputs,
                cache_key=job.key,
            ),
        )
        self.reporter.step_finished(
            run_id=run_id,
            step=job.name,
            status="succeeded" if artifact is not None else "failed",
            duration=ended - job.started,
            error=result.error,
        )
        return artifact

    def _reusable(self, run_id: str) -> dict[str, tuple[ArtifactRecord, str]]:
        """Cache key -> (output, producing step) for every output of the run and its
        ancestors (the newest run wins)."""
        found: dict[str, tuple[ArtifactRecord, str]] = {}
        current: str | None = run_id
        seen: set[str] = set()
        while current is not None and current not in seen:
            seen.add(current)
            run = self.metadata.get_run(current)
            for record in self.metadata.get_steps(run.id):
                if (
                    record.status in ("succeeded", "cached")
                    and record.cache_key is not None
                    and record.output_artifact_id is not None
                    and record.cache_key not in found
                ):
                    artifact = self.metadata.get_artifact(record.output_artifact_id)
                    found[record.cache_key] = (artifact, record.source_step_id or record.id)
            current = run.parent_run_id
        return found


class _PlanError(Exception):
    """The step's cache key could not be computed (its external data cannot be read)."""


def _result(future: Future[StepResult]) -> StepResult:
    """The task's result; an executor failure (a worker died) becomes a failed step."""
    try:
        return future.result()
    except Exception as exc:
        now = time.time()
        error = f"The executor lost the step: {type(exc).__name__}: {exc}"
        return StepResult(
            "failed", attempts=(AttemptRecord(1, "failed", now, now, error),), error=error
        )


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
