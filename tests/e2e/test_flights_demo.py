"""The demo as a new user runs it: the flights pipeline through the real CLI.

The first test is ``make demo`` run twice. The second is the registry's life: a first
champion, a better model that replaces it, a cached re-run that registers nothing, a
worse model that the gate refuses with its reasons printed, and a rollback.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from loopline.config import Settings
from loopline.data.workspace import Workspace
from loopline.registry import Registry
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
    roc_line = next(
        line for line in first.stdout.splitlines() if "test_roc_auc" in line and "│" in line
    )
    model_auc, baseline_auc = (float(x) for x in roc_line.split("│")[3:5])
    assert baseline_auc == pytest.approx(0.5)
    assert model_auc > 0.65  # a real signal: well above the constant predictor
    assert "11 succeeded" in first.stdout
    assert "flights-delay@1 is now the champion." in first.stdout

    served = subprocess.run(
        [sys.executable, str(PIPELINE.parent / "serve_demo.py")],
        cwd=tmp_path,
        env={k: v for k, v in os.environ.items() if not k.startswith("LOOPLINE_")},
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert served.returncode == 0, served.stderr
    assert "Scored " in served.stdout
    assert "with flights-delay@1:" in served.stdout
    assert "Latency over " in served.stdout

    second = loopline(tmp_path, "run", str(PIPELINE))
    assert second.returncode == 0, second.stderr
    assert "11 cached" in second.stdout
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


def _registry(home: Path) -> Registry:
    settings = Settings.load(start=home, search=False, env={})
    return Registry(Workspace(settings.metadata_url, settings.artifact_url))


@pytest.mark.slow
def test_the_gate_promotes_better_models_refuses_worse_ones_and_rollback_restores(
    tmp_path: Path,
) -> None:
    pipeline = str(PIPELINE)
    weak = loopline(tmp_path, "run", pipeline, "-p", "model.num_rounds=30")
    assert weak.returncode == 0, weak.stderr
    assert "Gate verdict for flights-delay@1 against no champion yet:" in weak.stdout
    assert "flights-delay@1 is now the champion." in weak.stdout

    better = loopline(tmp_path, "run", pipeline)
    assert better.returncode == 0, better.stderr
    assert "against champion flights-delay@1:" in better.stdout
    assert "flights-delay@2 is now the champion." in better.stdout

    again = loopline(tmp_path, "run", pipeline)
    assert again.returncode == 0, again.stderr
    assert "11 cached" in again.stdout
    assert "Gate verdict" not in again.stdout  # the cached gate step did not run
    assert len(_registry(tmp_path).versions("flights-delay")) == 2

    worse = loopline(
        tmp_path, "run", pipeline, "-p", "model.num_rounds=20", "-p", "model.num_leaves=4"
    )
    assert worse.returncode == 0, worse.stderr  # a refusal is a verdict, not a failure
    assert "primary test_roc_auc" in worse.stdout
    assert "does not beat the champion's" in worse.stdout
    assert "verdict: REFUSED" in worse.stdout
    assert "flights-delay@3 was refused; the champion stays flights-delay@2." in worse.stdout

    rolled = loopline(tmp_path, "rollback", "flights-delay", "--why", "alerts in production")
    assert rolled.returncode == 0, rolled.stderr
    assert "rolled back from version 2 to 1" in rolled.stdout

    registry = _registry(tmp_path)
    statuses = {v.version: v.status for v in registry.versions("flights-delay")}
    assert statuses == {1: "blessed", 2: "blessed", 3: "refused"}
    assert registry.aliases("flights-delay") == {"champion": 1}
    moves = [
        (e.action, e.from_version, e.to_version)
        for e in registry.audit("flights-delay")
        if e.action != "register"
    ]
    assert moves == [("promote", None, 1), ("promote", 1, 2), ("refuse", 2, 3), ("rollback", 2, 1)]
    refusal = next(e for e in registry.audit("flights-delay") if e.action == "refuse")
    assert refusal.verdict is not None
    assert not refusal.verdict["passed"]
    # Each version knows the data it was trained on and its evaluation report.
    champion = registry.get("flights-delay@champion")
    assert champion.datasets == ["flights@1", "planes@1", "weather@1"]
    assert "report" in champion.tags

    shown = loopline(tmp_path, "model", "flights-delay")
    assert shown.returncode == 0, shown.stderr
    for word in ("promote", "refuse", "rollback", "alerts in production"):
        assert word in shown.stdout
    report = tmp_path / "report.html"
    saved = loopline(tmp_path, "artifact", champion.tags["report"], "-o", str(report))
    assert saved.returncode == 0, saved.stderr
    assert report.read_text().startswith("<!DOCTYPE html>")
