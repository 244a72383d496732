"""What the benchmark modules share: package versions and scaled-down sizes from the
environment."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from importlib import metadata
from pathlib import Path
from typing import Any

__all__ = ["child_figures", "env_int", "version"]


def version(package: str) -> str:
    """The installed version of ``package``, or ``not installed``."""
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def env_int(name: str, default: int, *, owner: str) -> int:
    """A positive integer from the environment variable ``name`` (``1_000`` allowed), or
    ``default`` when it is unset; ``owner`` names the benchmark in the error."""
    text = os.environ.get(name, "").replace("_", "").strip()
    if not text:
        return default
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise ValueError(
            f"The {name} environment variable of {owner} must be a positive integer such as "
            f"{default}. Got {os.environ[name]!r}."
        )
    return value


def child_figures(module: str, *args: str) -> dict[str, Any]:
    """Run ``python -m MODULE child ARGS... OUT`` in a fresh process (and so a fresh Ray
    cluster) and return the JSON figures it wrote to OUT."""
    with tempfile.NamedTemporaryFile(suffix=".json") as out:
        subprocess.run(
            [sys.executable, "-m", module, "child", *args, out.name],
            check=True,
            env={**os.environ, "RAY_DEDUP_LOGS": "0"},
        )
        figures: dict[str, Any] = json.loads(Path(out.name).read_text())
        return figures
