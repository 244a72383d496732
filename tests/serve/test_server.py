"""``loopline serve`` as a real process on a real socket: one worker and two forked ones."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import polars as pl
import pytest

from loopline.config import Settings
from loopline.data.workspace import Workspace
from loopline.registry import Registry
from loopline.train import LightGBMModel, train_bundle


def _environment(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LOOPLINE_")}
    env["LOOPLINE_HOME"] = str(home)
    return env


@pytest.fixture
def home(tmp_path: Path) -> Path:
    home = tmp_path / "home"
    settings = Settings.load(start=tmp_path, search=False, env={"LOOPLINE_HOME": str(home)})
    registry = Registry(Workspace(settings.metadata_url, settings.artifact_url))
    rng = np.random.default_rng(0)
    rows = pl.DataFrame({"x": rng.normal(size=300), "city": rng.choice(["a", "b"], 300)})
    rows = rows.with_columns(y=(pl.col("x") > 0) ^ (pl.col("city") == "a"))
    bundle = train_bundle(
        rows,
        features=["x", "city"],
        label="y",
        model=LightGBMModel(num_rounds=5, min_data_in_leaf=5),
    )
    registry.promote("toy", registry.register_bundle("toy", bundle).version, why="test")
    return home


def _start(home: Path, tmp_path: Path, *args: str) -> tuple[subprocess.Popen[str], str]:
    ready = tmp_path / f"ready-{len(args)}"
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "loopline",
            "serve",
            "--port",
            "0",
            "--ready-file",
            str(ready),
            *args,
        ],
        cwd=tmp_path,
        env=_environment(home),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 60
    while not ready.exists() or not ready.read_text().strip():
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            out, err = process.communicate()
            raise AssertionError(f"the server did not start:\n{out}\n{err}")
        time.sleep(0.05)
    return process, f"http://{ready.read_text().strip()}"


def _loopline(home: Path, cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """``loopline ARGS`` run to its end in ``cwd``, on the workspace ``home``."""
    return subprocess.run(
        [sys.executable, "-m", "loopline", *args],
        cwd=cwd,
        env=_environment(home),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def _stop(process: subprocess.Popen[str]) -> str:
    process.send_signal(signal.SIGTERM)
    out, _ = process.communicate(timeout=30)
    return out


@pytest.mark.parametrize("workers", [1, 2])
def test_the_server_answers_on_a_socket(home: Path, tmp_path: Path, workers: int) -> None:
    process, url = _start(home, tmp_path, "--workers", str(workers))
    try:
        with httpx.Client(base_url=url, timeout=10) as client:
            for _ in range(50):
                if client.get("/v2/health/ready").status_code == 200:
                    break
                time.sleep(0.1)
            answers = [
                client.post("/predict", json={"x": float(i) / 10, "city": "ab"[i % 2]})
                for i in range(40)
            ]
            bad = client.post("/predict", content=b"{")
    finally:
        out = _stop(process)
    assert {a.status_code for a in answers} == {200}
    assert {a.json()["model"] for a in answers} == {"toy"}
    assert bad.status_code == 400
    assert f"Serving toy@1 on {url} ({workers} worker(s))" in out


def test_metrics_add_up_every_worker(home: Path, tmp_path: Path) -> None:
    """With two workers, each scrape reaches one of them; it shows the sum of both."""
    process, url = _start(home, tmp_path, "--workers", "2")
    try:
        for i in range(30):  # a new connection each: the kernel spreads them over the workers
            row = {"x": float(i) / 10, "city": "ab"[i % 2]}
            assert httpx.post(f"{url}/predict", json=row, timeout=10).status_code == 200
        scrapes = [httpx.get(f"{url}/metrics", timeout=10).text for _ in range(6)]
    finally:
        _stop(process)
    for text in scrapes:
        assert 'loopline_predictions_total{model="toy",version="1"} 30.0' in text
        assert 'loopline_prediction_cache_lookups_total{result="miss"} 30.0' in text
        assert 'loopline_model_loaded{current="true",model="toy",version="1"} 1.0' in text
    assert re.search(
        r'loopline_request_seconds_count\{model="toy",route="predict",version="1"\} 30.0',
        scrapes[0],
    )


@pytest.mark.services("redis")
def test_workers_share_a_redis_cache_and_batch(home: Path, tmp_path: Path, redis_url: str) -> None:
    process, url = _start(
        home, tmp_path, "--workers", "2", "--cache-url", redis_url, "--batch-max", "8"
    )
    try:
        with httpx.Client(base_url=url, timeout=10) as client:
            answers = [client.post("/predict", json={"x": 0.25, "city": "a"}) for _ in range(30)]
            metrics = client.get("/metrics").text
    finally:
        _stop(process)
    assert {a.status_code for a in answers} == {200}
    assert len({a.json()["predictions"][0] for a in answers}) == 1
    hits = re.search(r'loopline_prediction_cache_lookups_total\{result="hit"\} (\d+)', metrics)
    assert hits is not None
    assert int(hits.group(1)) > 0


def test_bad_cache_and_batch_settings_stop_the_server_before_it_listens(
    home: Path, tmp_path: Path
) -> None:
    for args, message in (
        (["--cache-url", "http://localhost:6379"], "redis:// URL"),
        (["--cache-ttl", "0"], "cache-ttl"),
        (["--batch-wait-ms", "5000"], "batch-wait-ms"),
    ):
        done = _loopline(home, tmp_path, "serve", "--port", "0", *args)
        assert done.returncode == 2, done.stderr
        assert message in done.stderr


def test_serve_without_a_champion_says_what_to_do(tmp_path: Path) -> None:
    done = _loopline(tmp_path / "empty", tmp_path, "serve", "--port", "0")
    assert done.returncode == 2
    assert "No model to serve" in done.stderr


def test_loopline_predict_scores_a_file(home: Path, tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    rows = pl.DataFrame({"x": rng.normal(size=500), "city": rng.choice(["a", "b", "c"], 500)})
    rows.write_parquet(tmp_path / "rows.parquet")
    out = tmp_path / "scored.parquet"
    rows_file = str(tmp_path / "rows.parquet")
    done = _loopline(
        home,
        tmp_path,
        "predict",
        "-m",
        "toy",
        "-i",
        rows_file,
        "-o",
        str(out),
        "--batch-rows",
        "64",
    )
    never = str(tmp_path / "never.parquet")
    again = _loopline(home, tmp_path, "predict", "-m", "toy@9", "-i", rows_file, "-o", never)

    assert done.returncode == 0, done.stderr
    assert "Scored 500 rows with toy@1" in done.stdout
    settings = Settings.load(start=tmp_path, search=False, env={"LOOPLINE_HOME": str(home)})
    bundle = Registry(Workspace(settings.metadata_url, settings.artifact_url)).load_bundle("toy@1")
    scored = pl.read_parquet(out)
    assert scored.columns == ["x", "city", "prediction"]
    np.testing.assert_array_equal(scored["prediction"].to_numpy(), bundle.predict(rows))
    assert again.returncode == 2
    assert "has no version 9" in again.stderr
    assert not (tmp_path / "never.parquet").exists()


@pytest.mark.usefixtures("ray_cluster")
def test_loopline_predict_on_the_ray_engine_scores_in_ray_tasks(
    home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """In-process, on the session's Ray cluster: the command finds Ray connected and
    fans the batches out as tasks; the output is the local engine's."""
    from typer.testing import CliRunner

    from loopline.cli import app

    rng = np.random.default_rng(2)
    rows = pl.DataFrame({"x": rng.normal(size=2_000), "city": rng.choice(["a", "b"], 2_000)})
    rows.write_parquet(tmp_path / "rows.parquet", row_group_size=300)
    monkeypatch.chdir(tmp_path)
    outputs = {}
    for engine in ("local", "ray"):
        for key, value in {**_environment(home), "LOOPLINE_ENGINE": engine}.items():
            monkeypatch.setenv(key, value)
        out = tmp_path / f"{engine}.parquet"
        done = CliRunner().invoke(
            app,
            ["predict", "-m", "toy", "-i", "rows.parquet", "-o", str(out), "--batch-rows", "250"],
        )
        assert done.exit_code == 0, done.output
        outputs[engine] = out.read_bytes()
    assert outputs["ray"] == outputs["local"]
    assert pl.read_parquet(tmp_path / "ray.parquet").height == 2_000
