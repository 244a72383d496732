"""Run every benchmark and write docs/benchmarks.md: ``python -m bench`` (``make bench``).

Each benchmark module has ``run() -> str`` returning a Markdown section that measures
loopline and its named peer in the same run. ``python -m bench engine`` runs one.
"""

from __future__ import annotations

import datetime as dt
import importlib
import os
import platform
import sqlite3
import sys
from importlib import metadata
from pathlib import Path

MODULES = (
    "engine",
    "metadata_write",
    "ingest",
    "online_read",
    "pit_join",
    "train",
    "serve",
    "batch_predict",
    "ray_overhead",
    "ray_scaling",
    "ray_ingest",
    "serve_replicas",
)
OUTPUT = Path(__file__).resolve().parent.parent / "docs" / "benchmarks.md"


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def _postgres_version() -> str:
    try:
        import psycopg

        from bench.metadata_write import DEFAULT_POSTGRES_URL, POSTGRES_ENV

        url = os.environ.get(POSTGRES_ENV) or DEFAULT_POSTGRES_URL
        with psycopg.connect(url, connect_timeout=2) as conn:
            row = conn.execute("SHOW server_version").fetchone()
        return str(row[0]) if row else "unknown"
    except Exception as exc:  # the header only reports what it finds
        return f"unavailable ({type(exc).__name__})"


def _cpu() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def header() -> str:
    return "\n".join(
        [
            "# Benchmarks",
            "",
            "Written by `make bench` (`python -m bench`); every figure below comes from one",
            "run on the machine described here. Each benchmark measures loopline and its",
            "named peer in the same run. The test suite makes no timing assertions.",
            "",
            f"- Date: {dt.datetime.now().strftime('%Y-%m-%d %H:%M')}",
            f"- Machine: {_cpu()}, {os.cpu_count()} cores, {platform.system()} "
            f"{platform.release()}",
            f"- Python {platform.python_version()}, SQLite {sqlite3.sqlite_version}, "
            f"PostgreSQL {_postgres_version()}",
            f"- loopline {_version('loopline')}, SQLAlchemy {_version('sqlalchemy')}, "
            f"Prefect {_version('prefect')}",
            "",
        ]
    )


def main(argv: list[str]) -> None:
    names = argv or list(MODULES)
    sections = []
    for name in names:
        print(f"running bench.{name} ...", file=sys.stderr, flush=True)
        module = importlib.import_module(f"bench.{name}")
        sections.append(module.run())
    text = header() + "\n" + "\n".join(sections)
    if argv:
        print(text)
        return
    OUTPUT.parent.mkdir(parents=True, exist_ok=True)
    OUTPUT.write_text(text, encoding="utf-8")
    print(text)
    print(f"Wrote {OUTPUT}", file=sys.stderr)


if __name__ == "__main__":
    main(sys.argv[1:])
