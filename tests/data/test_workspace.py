"""Data code records into the running step's stores, in every executor, or the configured ones."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from loopline import step
from loopline.config import Settings
from loopline.data.workspace import Workspace, current_workspace, use_workspace
from loopline.pipeline.dag import Pipeline
from loopline.pipeline.runner import Runner


def test_outside_a_run_the_configured_stores_are_used(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    for name in ("LOOPLINE_CONFIG", "LOOPLINE_HOME", "LOOPLINE_METADATA_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("LOOPLINE_ARTIFACT_URL", str(tmp_path / "art"))

    workspace = current_workspace()

    assert workspace.artifact_url == str(tmp_path / "art")
    assert workspace.metadata_url.endswith(".loopline/metadata.db")
    assert (workspace.run_id, workspace.step_id) == (None, None)


def test_use_workspace_is_scoped(tmp_path: Path) -> None:
    inner = Workspace(f"sqlite:///{tmp_path}/m.db", str(tmp_path / "a"), run_id="r1")

    with use_workspace(inner):
        assert current_workspace() is inner
    assert current_workspace() is not inner


def _seen_by_steps() -> Pipeline:
    @step
    def where() -> dict[str, str | None]:
        ws = current_workspace()
        return {"run": ws.run_id, "step": ws.step_id, "artifacts": ws.artifact_url}

    @step(timeout=30)
    def where_with_timeout() -> dict[str, str | None]:
        ws = current_workspace()
        return {"run": ws.run_id, "step": ws.step_id, "artifacts": ws.artifact_url}

    return Pipeline.from_steps([where, where_with_timeout], name="where")


def test_steps_see_their_run_and_step(tmp_path: Path) -> None:
    settings = Settings.load(start=tmp_path, search=False, env={})
    with Runner(settings) as runner:
        result = runner.run(_seen_by_steps())
        for name in ("where", "where_with_timeout"):
            seen = runner.output(result.run_id, name)
            assert seen == {
                "run": result.run_id,
                "step": result.steps[name].id,
                "artifacts": runner.artifacts.url,
            }


def test_steps_in_worker_processes_see_their_run_and_step(tmp_path: Path) -> None:
    (tmp_path / "where.py").write_text(
        textwrap.dedent(
            """
            from loopline import step
            from loopline.data.workspace import current_workspace

            @step
            def where() -> dict[str, str | None]:
                ws = current_workspace()
                return {"run": ws.run_id, "step": ws.step_id, "metadata": ws.metadata_url}
            """
        )
    )
    settings = Settings.load(start=tmp_path, search=False, env={})
    with Runner(settings) as runner:
        result = runner.run(tmp_path / "where.py", executor="processes", max_workers=1)
        seen = runner.output(result.run_id, "where")
        assert seen == {
            "run": result.run_id,
            "step": result.steps["where"].id,
            "metadata": runner.metadata.url,
        }
