"""Ray: one large CSV file ingested in pieces (``FileSource(split_bytes=...)``).

The generated orders CSV of ``bench.ingest`` (12 columns, unquoted, about 0.1% of rows
out of range) through the same 10-rule contract, as one pipeline step with the cache
off, each configuration in a fresh process and cluster:

- the local executor with the file whole (one partition) and in pieces;
- Ray with 2 workers and the file whole: one task reads it all, as before pieces;
- Ray with 1 and 2 workers and the file in pieces of ``SPLIT_MB``;
- the peer: Ray Data on a 2-CPU cluster, ``read_csv`` then ``write_parquet`` of the same
  file (it parses and writes, with no contract, no line numbers and no profile).

Listing the pieces (the pass over the file that finds where records start and
fingerprints each piece) is timed on its own, in a fresh process: it is the serial part.

Run alone: ``python -m bench ray_ingest``; ``LOOPLINE_BENCH_RAY_INGEST_MB`` sets the
file's size (default 1000).
"""

from __future__ import annotations

import json
import statistics
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any

from bench.common import child_figures, env_int, version
from bench.ingest import CONTRACT, generate

SIZE_ENV = "LOOPLINE_BENCH_RAY_INGEST_MB"
SIZE_MB = 1000
SPLIT_MB = 128
REPEATS = 3
CONFIGS = ("local", "local, in pieces", "ray-2, whole", "ray-1", "ray-2", "ray data-2")

PIPELINE = (
    CONTRACT
    + """
from loopline import FileSource, ingest, step


@step
def orders(path: str = "", split: int = 0) -> str:
    source = FileSource(path, split_bytes=split or None)
    return ingest(source, contract=CONTRACT).dataset.ref
"""
)


def _child(config: str, path: str, out: str) -> None:
    """One configuration in this process: ingest the file, write figures to ``out``."""
    started = time.perf_counter()
    if config.startswith("ray data"):
        import pyarrow.parquet as pq
        import ray

        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
        with tempfile.TemporaryDirectory(prefix="bench-ray-data-") as folder:
            ray.data.range(100).map_batches(lambda batch: batch).materialize()  # warm
            started = time.perf_counter()
            dataset = ray.data.read_csv(path)
            dataset.write_parquet(folder)
            seconds = time.perf_counter() - started
            written = Path(folder).glob("*.parquet")
            rows = sum(pq.read_metadata(part).num_rows for part in written)
        ray.shutdown()
        Path(out).write_text(json.dumps({"seconds": seconds, "rows": rows}))
        return
    if config == "plan":
        from loopline import FileSource

        started = time.perf_counter()
        parts = FileSource(path, split_bytes=SPLIT_MB << 20).partitions()
        seconds = time.perf_counter() - started
        Path(out).write_text(json.dumps({"seconds": seconds, "pieces": len(parts)}))
        return
    from loopline.config import Settings
    from loopline.pipeline.dag import load_pipeline
    from loopline.pipeline.runner import Runner

    with tempfile.TemporaryDirectory(prefix="bench-ray-ingest-") as home:
        (Path(home) / "orders.py").write_text(PIPELINE)
        engine = "ray" if config.startswith("ray") else "local"
        workers = int(config[4]) if engine == "ray" else 2
        if engine == "ray":
            import ray

            from loopline.pipeline.ray_executor import _connect

            # The cluster the engine starts, warmed up before the clock (on 2 cores its
            # processes' imports take half a minute, which the first step would share).
            ray.get(_connect(ray, None, workers))
        split = 0 if config in ("local", "ray-2, whole") else SPLIT_MB << 20
        settings = Settings.load(start=home, search=False, env={}, engine=engine)
        result = Runner(settings).run(
            load_pipeline(Path(home) / "orders.py"),
            params={"orders.path": path, "orders.split": split},
            no_cache=True,
            max_workers=workers,
        )
        if not result.ok:
            raise RuntimeError(f"{config}: {result.error}")
        Path(out).write_text(json.dumps({"seconds": result.steps["orders"].duration}))
        if engine == "ray":
            ray.shutdown()


def _measure(config: str, path: Path) -> dict[str, Any]:
    return child_figures("bench.ray_ingest", config, str(path))


def run() -> str:
    size = env_int(SIZE_ENV, SIZE_MB, owner="bench.ray_ingest")
    seconds: dict[str, list[float]] = {config: [] for config in CONFIGS}
    with tempfile.TemporaryDirectory(prefix="bench-ray-ingest-") as folder:
        path = Path(folder) / "orders.csv"
        rows = generate(path, size)
        mb = path.stat().st_size / 1_000_000
        plans = []
        for _ in range(REPEATS):
            for config in CONFIGS:
                seconds[config].append(float(_measure(config, path)["seconds"]))
            plans.append(_measure("plan", path))
    median = {config: statistics.median(values) for config, values in seconds.items()}
    plan = statistics.median(float(p["seconds"]) for p in plans)
    pieces = int(plans[0]["pieces"])
    base = median["local"]

    def row(config: str, label: str) -> str:
        taken = median[config]
        return (
            f"| {label} | {taken:.1f} | {mb / taken:,.0f} | {base / taken:.2f}x | "
            f"{', '.join(f'{s:.1f}' for s in seconds[config])} |"
        )

    one, two = median["ray-1"], median["ray-2"]
    lines = [
        "## Ray: one large file in pieces",
        "",
        textwrap.dedent(
            f"""\
            The generated orders CSV of "Ingestion" above ({mb:,.0f} MB, {rows:,} rows,
            unquoted) through the same 10-rule contract, as one pipeline step with the
            cache off; each configuration in a fresh process and cluster, in turn, {REPEATS}
            rounds (the median, then every round's figure). "In pieces" is
            `FileSource(path, split_bytes={SPLIT_MB} << 20)`: {pieces} pieces cut at record
            starts, read as Ray tasks of one CPU each. Ray Data, the peer, runs
            `read_csv` and `write_parquet` on a 2-CPU cluster: it parses and writes, and
            checks nothing, numbers no line and profiles no column.
            """
        ),
        "| configuration | seconds | MB/s | vs local, whole | rounds (s) |",
        "|---|---:|---:|---:|---|",
        row("local", "local executor, file whole"),
        row("local, in pieces", "local executor, in pieces"),
        row("ray-2, whole", "Ray, 2 workers, file whole"),
        row("ray-1", "Ray, 1 worker, in pieces"),
        row("ray-2", "Ray, 2 workers, in pieces"),
        row("ray data-2", "Ray Data read_csv + write_parquet, 2 CPUs"),
        "",
        f"- Speedup of the pieces on 2 workers over 1: {one / two:.2f}x "
        f"(efficiency {one / two / 2:.0%}).",
        f"- Listing the {pieces} pieces (one pass over the file, in a fresh process): "
        f"{plan:.1f} s, the serial part of every configuration in pieces "
        f"({mb / plan:,.0f} MB/s).",
        f"- Versions: Ray {version('ray')}, pyarrow {version('pyarrow')}, "
        f"Polars {version('polars')}, loopline {version('loopline')}.",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "child":
        _child(sys.argv[2], sys.argv[3], sys.argv[4])
    else:
        print(run())


if __name__ == "__main__":
    main()
