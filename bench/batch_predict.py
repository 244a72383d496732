"""Batch scoring through loopline vs LightGBM's own predict on the encoded matrix.

The input is ``BATCH_ROWS`` rows of ``bench.train.generate``'s shape (16 float features,
two with 2% missing values, 4 string features of 8 to 300 categories), written in
chunks to one Parquet file (one row group per 1,000,000 rows). The model is a
``train_bundle`` LightGBM model of ``bench.train.MODEL``'s parameters (100 rounds, 63
leaves, 2 threads) trained on 100,000 other generated rows.

- loopline: ``predict_batch(bundle, input, output_folder)`` with its default batch of
  200,000 rows: read the Parquet file in batches, encode each with the bundle's
  preprocessing, predict, write the predictions as Parquet parts. Once with
  ``keep_columns=[]`` (only the prediction is written), once keeping every input
  column.
- the ceiling: ``booster.predict(matrix, num_threads=2)`` on the whole input, already
  encoded as the float64 matrix the model takes (built before the clock starts): no
  reading, no encoding, no writing.

Each is run ``REPEAT`` times in rotating order; the best run counts (the least disturbed
by other work on the machine). Goal: loopline at least 80% of the ceiling's rows/s.
Both paths' predictions are compared on the first 100,000 rows.

Environment, for a quick smoke run: ``LOOPLINE_BENCH_BATCH_ROWS`` (default 10000000),
``LOOPLINE_BENCH_BATCH_REPEAT`` (3). Run alone: ``python -m bench batch_predict``.
"""

from __future__ import annotations

import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pyarrow.parquet as pq

from bench.common import env_int, version
from bench.train import FEATURES, LABEL, MODEL, generate

BATCH_ROWS = 10_000_000
REPEAT = 3
TRAIN_ROWS = 100_000
CHUNK_ROWS = 1_000_000
GOAL_PCT = 80.0


def write_input(path: Path, rows: int) -> None:
    """``rows`` generated rows (no label) in one Parquet file, written chunk by chunk."""
    writer: pq.ParquetWriter | None = None
    try:
        for index, start in enumerate(range(0, rows, CHUNK_ROWS)):
            chunk = generate(min(CHUNK_ROWS, rows - start), seed=10_000 + index)
            table = chunk.drop(LABEL).to_arrow()
            if writer is None:
                writer = pq.ParquetWriter(path, table.schema, compression="zstd")
            writer.write_table(table)
    finally:
        if writer is not None:
            writer.close()


def encoded_matrix(bundle: Any, path: Path, rows: int) -> np.ndarray:
    """The whole input as the model's float64 matrix, encoded row group by row group."""
    matrix = np.empty((rows, len(bundle.features)), dtype=np.float64)
    done = 0
    parquet = pq.ParquetFile(path)
    for group in range(parquet.num_row_groups):
        frame = pl.DataFrame(pl.from_arrow(parquet.read_row_group(group)))
        matrix[done : done + frame.height] = bundle.preprocessor.transform(frame)
        done += frame.height
    return matrix


def _best(seconds: list[float]) -> float:
    return min(seconds)


def run() -> str:
    import lightgbm  # noqa: F401  (imported before the clock starts)

    from loopline.serve.batch import predict_batch
    from loopline.train.adapters import LightGBMModel
    from loopline.train.bundle import train_bundle

    rows = env_int("LOOPLINE_BENCH_BATCH_ROWS", BATCH_ROWS, owner="bench.batch_predict")
    repeat = env_int("LOOPLINE_BENCH_BATCH_REPEAT", REPEAT, owner="bench.batch_predict")
    bundle = train_bundle(
        generate(TRAIN_ROWS, seed=1), features=FEATURES, label=LABEL, model=LightGBMModel(**MODEL)
    )
    booster = bundle.model.booster_
    threads = int(MODEL["num_threads"])
    with tempfile.TemporaryDirectory(prefix="loopline-bench-batch-") as folder:
        source = Path(folder) / "input.parquet"
        write_input(source, rows)
        size = source.stat().st_size
        matrix = encoded_matrix(bundle, source, rows)

        def ceiling() -> Any:
            return booster.predict(matrix, num_threads=threads)

        def ours(keep: list[str] | None) -> Callable[[], Any]:
            def call() -> Any:
                out = Path(folder) / "scored"
                shutil.rmtree(out, ignore_errors=True)
                return predict_batch(bundle, source, out, keep_columns=keep)

            return call

        runs: dict[str, Callable[[], Any]] = {
            "LightGBM booster.predict on the encoded matrix": ceiling,
            "loopline predict_batch, prediction only": ours([]),
            "loopline predict_batch, every input column kept": ours(None),
        }
        seconds: dict[str, list[float]] = {name: [] for name in runs}
        for i in range(repeat):
            names = list(runs)
            for name in names[i % len(names) :] + names[: i % len(names)]:
                start = time.perf_counter()
                runs[name]()
                seconds[name].append(time.perf_counter() - start)
        ours([])()
        scored = pl.read_parquet(Path(folder) / "scored").get_column("prediction")
        head = min(rows, 100_000)
        difference = float(
            np.max(np.abs(scored.head(head).to_numpy() - ceiling()[:head])) if head else 0.0
        )

    ceiling_name = "LightGBM booster.predict on the encoded matrix"
    top = rows / _best(seconds[ceiling_name])
    table = []
    for name, times in seconds.items():
        rate = rows / _best(times)
        ratio = "-" if name == ceiling_name else f"{rate / top * 100:.0f}%"
        runs_text = ", ".join(f"{s:.2f}" for s in times)
        table.append(
            f"| {name} | {_best(times):.2f} s | {statistics.median(times):.2f} s | {runs_text} "
            f"| {rate:,.0f} | {ratio} |"
        )
    ours_rate = rows / _best(seconds["loopline predict_batch, prediction only"])
    verdict = "meets" if ours_rate / top * 100 >= GOAL_PCT else "misses"
    text = (
        f"{rows:,} generated rows (16 float features, 4 string features of 8 to 300 "
        f"categories; {size / 1e6:,.0f} MB of Parquet), a LightGBM {version('lightgbm')} "
        f"model of {MODEL['num_rounds']} rounds and {MODEL['num_leaves']} leaves, "
        f"{threads} threads. loopline reads the Parquet file in batches of 200,000 rows, "
        f"encodes them with the bundle's preprocessing, predicts and writes Parquet parts; "
        f"the ceiling is `booster.predict` on the input already encoded in memory. {repeat} "
        f"runs each, in rotating order; rows/s and the ratio use the best run. The "
        f"predictions differ by at most {difference:.3g}. Goal: at least {GOAL_PCT:.0f}% of "
        f"the ceiling's rows/s; loopline {verdict} it."
    )
    lines = [
        "## Batch scoring",
        "",
        text,
        "",
        "| path | best | median | runs (s) | rows/s (best) | of the ceiling |",
        "|---|---:|---:|---|---:|---:|",
        *table,
    ]
    notes = []
    if (rows, repeat) != (BATCH_ROWS, REPEAT):
        notes.append(
            f"Scaled down by environment variables (published: {BATCH_ROWS:,} rows x {REPEAT})."
        )
    return "\n".join(lines) + "\n" + "".join(f"\n{n}\n" for n in notes)


def main() -> None:
    print(run())


if __name__ == "__main__":
    main()
