"""The environment recorded with each run: Python, packages and the pipeline's git commit."""

from __future__ import annotations

import platform
import shutil
import subprocess
from pathlib import Path

import pytest

from loopline.pipeline.environment import capture_environment


def test_python_platform_and_installed_packages_are_recorded(tmp_path: Path) -> None:
    env = capture_environment(str(tmp_path / "pipeline.py"))
    assert env["python"] == platform.python_version()
    assert {"loopline", "polars", "pyarrow", "lightgbm"} <= set(env)
    assert "git" not in env  # not in a checkout


@pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")
def test_the_commit_of_the_checkout_is_recorded_and_marked_dirty(tmp_path: Path) -> None:
    def git(*args: str) -> str:
        done = subprocess.run(
            ["git", "-C", str(tmp_path), *args], capture_output=True, text=True, check=True
        )
        return done.stdout.strip()

    git("init", "-q")
    pipeline = tmp_path / "pipeline.py"
    pipeline.write_text("X = 1\n")
    git("add", "pipeline.py")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "first")
    head = git("rev-parse", "HEAD")
    assert capture_environment(str(pipeline))["git"] == head
    pipeline.write_text("X = 2\n")
    assert capture_environment(f"{pipeline}:steps")["git"] == f"{head}-dirty"
