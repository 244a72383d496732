"""A search whose trials run in several workers at once: forked processes or Ray tasks.

Each worker holds its first trial until the other has started one, so the tests show two
workers running trials together, not one finishing the study before the other starts.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from loopline.errors import TrainingError
from loopline.train.search import FloatParam, SearchSpace, SearchTrial, search

SPACE = SearchSpace({"x": FloatParam(-2.0, 2.0)})


def together(folder: Path, trials: int) -> object:
    """An objective that waits, on each worker's first trial, for a second worker."""

    def objective(trial: SearchTrial) -> float:
        mark = folder / f"started-{os.getpid()}"
        if not mark.exists():
            mark.touch()
            deadline = time.monotonic() + 120
            while len(list(folder.glob("started-*"))) < 2:
                if time.monotonic() > deadline:
                    raise AssertionError("the second worker never started a trial")
                time.sleep(0.05)
        return -((trial.params["x"] - 0.5) ** 2)

    return objective


def check(result: object, trials: int) -> None:
    assert result.n_complete >= trials  # type: ignore[attr-defined]
    workers = {t.worker for t in result.trials}  # type: ignore[attr-defined]
    assert len(workers) >= 2  # (a worker Ray had to replace would add one)
    assert result.new_trials == len(result.trials)  # type: ignore[attr-defined]
    assert abs(result.best_params["x"] - 0.5) < 1.0  # type: ignore[attr-defined]


@pytest.mark.parametrize("engine", ["local", "ray"])
def test_workers_share_one_study(
    engine: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """Forked processes (local) or Ray tasks run the trials beside this process."""
    if engine == "ray":
        request.getfixturevalue("ray_cluster")
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    result = search(together(tmp_path, 12), SPACE, study=engine, storage=storage, n_trials=12,
                    workers=2, engine=engine, seed=3)  # fmt: skip
    check(result, 12)


def test_several_workers_need_a_shared_study_database() -> None:
    with pytest.raises(TrainingError, match="in-memory 'sqlite://'"):
        search(lambda t: 0.0, SPACE, study="s", storage="sqlite://", n_trials=2, workers=2)
    with pytest.raises(TrainingError, match="positive number of trial loops"):
        search(lambda t: 0.0, SPACE, study="s", storage="sqlite://", n_trials=2, workers=0)
