"""What a run ran on: Python, the platform, package versions and the pipeline's git commit.

Recorded with every run (as ``env.*`` tags), so that two runs can be compared
(``loopline runs --compare A B``) and a model traced to the code and libraries that made
it. Seeds are step parameters (``model.seed``) and are recorded with the parameters.

Examples
--------
>>> env = capture_environment(None)
>>> sorted(k for k in env if k in ("python", "loopline"))
['loopline', 'python']
"""

from __future__ import annotations

import platform
import subprocess
from importlib import metadata
from pathlib import Path

__all__ = ["PACKAGES", "capture_environment"]

PACKAGES = (
    "loopline",
    "polars",
    "pyarrow",
    "numpy",
    "pandas",
    "lightgbm",
    "xgboost-cpu",
    "xgboost",
    "scikit-learn",
    "optuna",
    "sqlalchemy",
)
"""The packages whose versions change results; each is recorded when installed."""

_GIT_TIMEOUT_S = 2


def capture_environment(source: str | None) -> dict[str, str]:
    """Python, platform, package versions and, for a file in a git checkout, its commit.

    ``git`` is the commit of the checkout holding ``source``, with ``-dirty`` appended
    when tracked files have uncommitted changes; it is absent outside a checkout or when
    git is not installed.
    """
    env = {
        "python": platform.python_version(),
        "platform": f"{platform.system()} {platform.release()} {platform.machine()}",
    }
    for package in PACKAGES:
        try:
            env[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            continue
    commit = _git_commit(source)
    if commit:
        env["git"] = commit
    return env


def _git_commit(source: str | None) -> str | None:
    if source is None:
        return None
    folder = Path(source.partition(":")[0]).resolve().parent
    if not folder.is_dir():
        return None
    try:
        head = subprocess.run(
            ["git", "-C", str(folder), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=_GIT_TIMEOUT_S,
            check=False,
        )
        if head.returncode != 0:
            return None
        dirty = subprocess.run(
            ["git", "-C", str(folder), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=_GIT_TIMEOUT_S,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    commit = head.stdout.strip()
    return f"{commit}-dirty" if dirty.returncode == 0 and dirty.stdout.strip() else commit
