"""Scaling out: one pipeline on the local executor and on Ray with 1 and 2 workers.

A generated event table (``ROWS`` rows: 100,000 users, a year of timestamps, an amount)
goes through a four-step pipeline: ``events`` (generate), ``labels`` (every tenth event,
one minute later, labelled by its amount), ``features`` (a training set: nine windowed
aggregations and a latest value per user, point in time; on Ray its entity partitions
are Ray tasks) and ``model`` (LightGBM, 50 rounds; on Ray data-parallel over the
workers, ``Distributed(workers=N)``: one LightGBM rank per worker).

Each configuration runs in a fresh process with a fresh cluster: ``local`` (the thread
executor; Polars and LightGBM use both cores), ``ray-1`` (a Ray cluster of one CPU) and
``ray-2`` (two CPUs). A Ray cluster is started, and its warm-up waited for, before the
clock: the run finds it up and warm, as a joined cluster is after its first run (the
start is reported on its own). A partition task or a fit's rank holds one CPU and Polars one
thread in it (``ONE_THREAD``), so ``ray-1`` is one worker's speed and ``ray-2 / ray-1``
the speedup of a second worker; a step's own process runs Polars on the cluster's CPUs
for the work around its partitions. The driver's peak memory (the process
that runs the pipeline; its steps run in Ray's workers) is measured at ``ROWS`` and half
of it. Last, the machine's own ceiling for two workers: one worker's share of the
features step (half the users) in a plain process with one Polars thread, alone and then
beside a second copy.

Each figure is the median of ``REPEATS`` rounds (``LOOPLINE_BENCH_RAY_REPEATS``): on a
small shared machine one run's step times vary by a fifth or more.

Run alone: ``python -m bench ray_scaling`` (``LOOPLINE_BENCH_RAY_ROWS`` for another size).
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any

from bench.common import child_figures, env_int, version

ROWS = 20_000_000

PIPELINE = textwrap.dedent(
    """
    from datetime import datetime

    import numpy as np
    import polars as pl

    from loopline import step
    from loopline.features import Aggregate, Entity, FeatureView, WindowView, training_set
    from loopline.train import Distributed, LightGBMModel, train_bundle

    USER = Entity("user", keys=["user"])
    WINDOWS = ("1h", "1d", "7d")


    @step
    def events(rows: int = 1_000) -> pl.DataFrame:
        rng = np.random.default_rng(7)
        offsets = np.sort(rng.integers(0, 365 * 86_400 * 10**6, rows))
        return pl.DataFrame(
            {
                "user": rng.integers(0, 100_000, rows),
                "ts": np.datetime64("2025-01-01T00:00:00", "us") + offsets.astype("m8[us]"),
                "amount": rng.gamma(2.0, 30.0, rows),
            }
        ).with_columns(pl.col("ts").dt.replace_time_zone("UTC"))


    @step
    def labels(events: pl.DataFrame) -> pl.DataFrame:
        return events.gather_every(10).select(
            "user", pl.col("ts").dt.offset_by("1m").alias("t"), (pl.col("amount") > 70).alias("big")
        )


    @step
    def features(events: pl.DataFrame, labels: pl.DataFrame) -> pl.DataFrame:
        views = [
            WindowView(
                "spend",
                entity=USER,
                source=events,
                timestamp="ts",
                aggregations=[
                    Aggregate("amount", f, w) for f in ("sum", "mean", "count") for w in WINDOWS
                ],
            ),
            FeatureView(
                "last", entity=USER, source=events, timestamp="ts", ttl="7d",
                features=["amount"], prefix="last_",
            ),
        ]
        return training_set(labels, views, timestamp="t").frame


    @step
    def model(features: pl.DataFrame, workers: int = 0, threads: int = 2) -> bytes:
        names = [c for c in features.columns if c not in ("user", "t", "big")]
        bundle = train_bundle(
            features, features=names, label="big",
            model=LightGBMModel(num_rounds=50, num_threads=threads), profile=False,
            distributed=Distributed(workers=workers) if workers else None,
        )
        return bundle.to_bytes()
    """
)

CONFIGS = ("local", "ray-1", "ray-2")
REPEATS = 3
STEPS = ("events", "labels", "features", "model")


def _child(config: str, rows: int, out: str) -> None:
    """One configuration in this process: run the pipeline, write figures to ``out``."""
    from loopline.config import Settings
    from loopline.pipeline.dag import load_pipeline
    from loopline.pipeline.runner import Runner

    with tempfile.TemporaryDirectory(prefix="bench-scale-") as home:
        path = Path(home) / "scaling.py"
        path.write_text(PIPELINE)
        engine, workers = ("local", 2) if config == "local" else ("ray", int(config[4:]))
        settings = Settings.load(start=home, search=False, env={}, engine=engine)
        params = {"events.rows": rows}
        if engine == "ray":
            params |= {"model.workers": workers, "model.threads": 1}
        start = 0.0
        if engine == "ray":
            import ray

            from loopline.pipeline.ray_executor import _connect

            # A cluster that is up and warm, as a joined one is after its first run: the
            # cluster the engine starts, its warm-up waited for before the clock (on 2
            # cores its processes' imports take half a minute, which the first steps
            # would share). The run then uses it as a joined cluster.
            started = time.perf_counter()
            ray.get(_connect(ray, None, workers))
            start = time.perf_counter() - started
        started = time.perf_counter()
        result = Runner(settings).run(
            load_pipeline(path), params=params, no_cache=True, max_workers=workers
        )
        wall = time.perf_counter() - started
        if not result.ok:
            raise RuntimeError(f"{config}: {result.error}")
        figures: dict[str, Any] = {
            "wall": wall,
            "start": start,
            "steps": {name: result.steps[name].duration for name in STEPS},
            "driver_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        }
        Path(out).write_text(json.dumps(figures))
        if engine == "ray":
            ray.shutdown()


def _ceiling_child(rows: int, out: str) -> None:
    """Half the features step's work (the users of one entity partition), in this
    process with one Polars thread and no Ray: what one worker's share costs alone."""
    import polars as pl

    from loopline.pipeline.dag import load_pipeline

    with tempfile.TemporaryDirectory(prefix="bench-ceiling-") as home:
        path = Path(home) / "scaling.py"
        path.write_text(PIPELINE)
        steps = load_pipeline(path).steps
        half = steps["events"](rows).filter(pl.col("user") % 2 == 0)
        labels = steps["labels"](half)
        started = time.perf_counter()
        steps["features"](half, labels)
        Path(out).write_text(json.dumps({"seconds": time.perf_counter() - started}))


def _ceiling(rows: int, repeats: int = 2) -> tuple[float, float]:
    """Seconds of one worker's share alone, and (the mean of the pair) with two running
    at once: the best of ``repeats`` each, as this shared machine is noisy."""

    root = str(Path(__file__).resolve().parents[1])

    def start(out: str) -> subprocess.Popen[bytes]:
        # In a scratch folder: the training set outside a run opens the folder's workspace.
        return subprocess.Popen(
            [sys.executable, "-m", "bench.ray_scaling", "ceiling", str(rows), out],
            env={**os.environ, "POLARS_MAX_THREADS": "1", "PYTHONPATH": root},
            cwd=str(Path(out).parent),
        )

    def seconds(out: str) -> float:
        return float(json.loads(Path(out).read_text())["seconds"])

    alone, together = [], []
    with tempfile.TemporaryDirectory(prefix="bench-ceiling-") as folder:
        outs = [str(Path(folder) / f"{i}.json") for i in range(3)]
        for _ in range(repeats):
            if start(outs[0]).wait() != 0:
                raise RuntimeError("the ceiling measurement failed")
            alone.append(seconds(outs[0]))
            pair = [start(outs[1]), start(outs[2])]
            if any(proc.wait() != 0 for proc in pair):
                raise RuntimeError("the ceiling measurement failed")
            together.append((seconds(outs[1]) + seconds(outs[2])) / 2)
    return min(alone), min(together)


def _measure(config: str, rows: int) -> dict[str, Any]:
    return child_figures("bench.ray_scaling", config, str(rows))


def _median_run(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """The median of each figure over the rounds of one configuration."""
    return {
        "wall": statistics.median(r["wall"] for r in rounds),
        "start": statistics.median(r["start"] for r in rounds),
        "steps": {s: statistics.median(r["steps"][s] for r in rounds) for s in STEPS},
        "driver_mb": max(r["driver_mb"] for r in rounds),
    }


def run() -> str:
    rows = env_int("LOOPLINE_BENCH_RAY_ROWS", ROWS, owner="bench.ray_scaling")
    repeats = env_int("LOOPLINE_BENCH_RAY_REPEATS", REPEATS, owner="bench.ray_scaling")
    # Rounds of every configuration in turn, so that the machine's drift over minutes
    # falls on all of them alike; medians in the table, each round's speedup below it.
    rounds = [{config: _measure(config, rows) for config in CONFIGS} for _ in range(repeats)]
    runs = {config: _median_run([r[config] for r in rounds]) for config in CONFIGS}
    half = _measure("ray-2", rows // 2)
    alone, together = _ceiling(rows)
    one, two = runs["ray-1"]["steps"], runs["ray-2"]["steps"]

    def row(name: str) -> str:
        local, r1, r2 = (runs[c]["steps"][name] for c in CONFIGS)
        speedup = r1 / r2
        return (
            f"| {name} | {local:.1f} | {r1:.1f} | {r2:.1f} | {speedup:.2f}x | {speedup / 2:.0%} |"
        )

    partitioned = ("features", "model")
    total1 = sum(one[s] for s in partitioned)
    total2 = sum(two[s] for s in partitioned)
    each = [
        sum(r["ray-1"]["steps"][s] for s in partitioned)
        / sum(r["ray-2"]["steps"][s] for s in partitioned)
        for r in rounds
    ]
    return "\n".join(
        [
            "## Ray: scaling out on 2 cores",
            "",
            f"A pipeline over {rows:,} generated events (100,000 users): generate, label "
            f"every tenth event, a point-in-time training set of nine windowed "
            f"aggregations and a latest value ({rows // 10:,} rows), LightGBM (50 rounds). "
            f"Seconds per step, the median of {repeats} rounds of the three "
            f"configurations in turn, each run in a fresh process and cluster, the "
            f"cache off. Each Ray cluster is started and warmed up before the clock (the "
            f"engine's own start, its warm-up tasks waited for), as a joined cluster is "
            f"warm after its first run; that start is the last row. On Ray a worker is "
            f"one CPU: the training set's entity partitions "
            f"and the model's data shards are Ray tasks of one CPU and one Polars thread, "
            f"and a step's own process runs Polars on the cluster's CPUs for the work "
            f"around them. Speedup = ray-1 / ray-2; efficiency = speedup / 2.",
            "",
            "| step | local (2 threads) | Ray, 1 worker | Ray, 2 workers | speedup | efficiency |",
            "|---|---:|---:|---:|---:|---:|",
            *(row(name) for name in STEPS),
            f"| partitioned steps (features + model) | "
            f"{sum(runs['local']['steps'][s] for s in partitioned):.1f} | {total1:.1f} | "
            f"{total2:.1f} | {total1 / total2:.2f}x | {total1 / total2 / 2:.0%} |",
            f"| whole run (wall) | {runs['local']['wall']:.1f} | {runs['ray-1']['wall']:.1f} "
            f"| {runs['ray-2']['wall']:.1f} | | |",
            f"| cluster start and warm-up (before the clock) | | "
            f"{runs['ray-1']['start']:.1f} | {runs['ray-2']['start']:.1f} | | |",
            "",
            f"- Speedup of the partitioned steps in each round: "
            f"{', '.join(f'{x:.2f}x' for x in each)}.",
            f"- Driver peak memory (RSS), Ray with 2 workers: {half['driver_mb']:,.0f} MB at "
            f"{rows // 2:,} rows, {runs['ray-2']['driver_mb']:,.0f} MB at {rows:,} "
            f"(the local executor's process, which holds the data: "
            f"{runs['local']['driver_mb']:,.0f} MB).",
            f"- This machine's ceiling, without Ray: one worker's share of the features "
            f"step (the users of one of two entity partitions, one Polars thread) took "
            f"{alone:.1f} s alone and {together:.1f} s with a second copy running beside "
            f"it (the best of two tries each), so two workers can give at most "
            f"{2 * alone / together:.2f}x on it, before Ray's own processes take a share "
            f"of the two cores.",
            f"- Versions: Ray {version('ray')}, Polars {version('polars')}, LightGBM "
            f"{version('lightgbm')}, loopline {version('loopline')}.",
            "",
        ]
    )


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "child":
        _child(sys.argv[2], int(sys.argv[3]), sys.argv[4])
    elif len(sys.argv) > 1 and sys.argv[1] == "ceiling":
        _ceiling_child(int(sys.argv[2]), sys.argv[3])
    else:
        print(run())


if __name__ == "__main__":
    main()
