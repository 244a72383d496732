"""The demo as a new user runs it: the flights pipeline through the real CLI, twice."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from loopline.config import Settings
from loopline.store.metadata import MetadataStore

REPO = Path(__file__).resolve().parents[2]
PIPELINE = REPO / "examples" / "flights" / "pipeline.py"


def loopline(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LOOPLINE_")}
    env["COLUMNS"] = "120"
    return subprocess.run(
        [sys.executable, "-m", "loopline", *args],
        cwd=home,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )


@pytest.mark.slow
def test_flights_demo_prints_results_and_a_second_run_is_all_cached(tmp_path: Path) -> None:
    first = loopline(tmp_path, "run", str(PIPELINE))
    assert first.returncode == 0, first.stderr
    assert "Results" in first.stdout
    roc_line = next(line for line in first.stdout.splitlines() if "test_roc_auc" in line)
    model_auc, baseline_auc = (float(x) for x in roc_line.split("│")[3:5])
    assert baseline_auc == pytest.approx(0.5)
    assert model_auc > 0.65  # a real signal: well above the constant predictor
    assert "9 succeeded" in first.stdout

    second = loopline(tmp_path, "run", str(PIPELINE))
    assert second.returncode == 0, second.stderr
    assert "9 cached" in second.stdout
    assert "test_roc_auc" in second.stdout  # metrics of cached steps are shown too

    settings = Settings.load(start=tmp_path, search=False, env={})
    with MetadataStore(settings.metadata_url) as store:
        newest, oldest = store.list_runs(limit=2)
        fresh = {s.name: s for s in store.get_steps(oldest.id)}
        cached = {s.name: s for s in store.get_steps(newest.id)}
    assert all(s.cache_hit for s in cached.values())
    # The cached run points at the very artifacts the first run stored.
    assert {n: s.output_artifact_id for n, s in cached.items()} == {
        n: s.output_artifact_id for n, s in fresh.items()
    }
