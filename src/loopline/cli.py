"""The ``loopline`` command: thin wrappers over the runner and the stores.

Exit codes: 0 success; 1 a run finished with a failed step; 2 a usage or user error
(bad arguments, config, pipeline file, unknown run), printed as one line without a
traceback unless ``--verbose``; 130 interrupted.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import sys
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer
from rich import box
from rich.console import Console
from rich.table import Column, Table
from rich.text import Text
from rich.tree import Tree

from loopline import __version__
from loopline.config import CONFIG_FILE, Settings, render_default_config
from loopline.data.workspace import Workspace, forget_stores, register_stores
from loopline.errors import ConfigError, FeatureError, LooplineError, RunNotFoundError
from loopline.pipeline.dag import import_source
from loopline.pipeline.progress import LiveReporter, LogReporter, Reporter, configure_logging
from loopline.pipeline.runner import Runner, RunResult
from loopline.registry import Registry, Verdict
from loopline.store.metadata import MetadataStore, RunRecord, StepRecord

__all__ = ["app", "main"]

app = typer.Typer(
    name="loopline",
    help="Machine-learning pipelines: run, cache, resume and trace them.",
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
out = Console(highlight=False)
err = Console(stderr=True, highlight=False)
_state: dict[str, bool] = {"verbose": False, "json": False}


def _version(value: bool) -> None:
    if value:
        out.print(f"loopline {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    verbose: Annotated[
        bool, typer.Option("--verbose", "-v", help="Debug logs, and tracebacks on errors.")
    ] = False,
    log_json: Annotated[
        bool, typer.Option("--log-json", help="Log one JSON object a line, no live display.")
    ] = False,
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="Print the version."),
    ] = False,
) -> None:
    _state["verbose"] = verbose
    _state["json"] = log_json
    configure_logging(json=log_json, verbose=verbose)


# -- commands -------------------------------------------------------------------------------


@app.command()
def init(
    force: Annotated[bool, typer.Option("--force", help="Overwrite an existing file.")] = False,
) -> None:
    """Write a commented loopline.toml in this folder, showing every backend URL."""
    path = Path.cwd() / CONFIG_FILE
    if path.exists() and not force:
        raise ConfigError(f"{path} exists already. Edit it, or pass --force to overwrite it.")
    path.write_text(render_default_config(), encoding="utf-8")
    out.print(f"Wrote {path}. With no changes loopline keeps everything in .loopline/.")


@app.command()
def run(
    pipeline: Annotated[str, typer.Argument(help="A pipeline .py file or a module path.")],
    param: Annotated[
        list[str] | None,
        typer.Option(
            "--param", "-p", help="A parameter as STEP.NAME=VALUE or NAME=VALUE; repeatable."
        ),
    ] = None,
    no_cache: Annotated[
        bool, typer.Option("--no-cache", help="Run every step, ignoring cached outputs.")
    ] = False,
    executor: Annotated[
        str | None,
        typer.Option(help="Where steps run: threads (default) or processes."),
    ] = None,
    max_workers: Annotated[
        int | None, typer.Option(min=1, help="How many steps may run at once.")
    ] = None,
) -> None:
    """Run a pipeline: every step whose inputs changed, the rest from the cache."""
    with _runner() as runner:
        result = runner.run(
            pipeline,
            params=_parse_params(param or []),
            no_cache=no_cache,
            executor=executor,
            max_workers=max_workers,
        )
        _finish(runner, result)


@app.command()
def resume(
    run_id: Annotated[str, typer.Argument(metavar="RUN", help="The run id (or a prefix).")],
    executor: Annotated[str | None, typer.Option(help="threads or processes.")] = None,
    max_workers: Annotated[int | None, typer.Option(min=1)] = None,
) -> None:
    """Re-run only what failed in RUN and what depends on it, reusing the rest."""
    with _runner() as runner:
        result = runner.resume(run_id, executor=executor, max_workers=max_workers)
        _finish(runner, result)


@app.command()
def runs(
    limit: Annotated[int, typer.Option(min=1, help="How many runs, newest first.")] = 20,
    pipeline: Annotated[str | None, typer.Option(help="Only runs of this pipeline.")] = None,
    compare: Annotated[
        tuple[str, str] | None,
        typer.Option(metavar="A B", help="Show what differs between two runs."),
    ] = None,
) -> None:
    """List recent runs, or compare two (--compare A B)."""
    if compare is not None:
        _compare_runs(*compare)
        return
    table = Table(
        _id_column("run"),
        "pipeline",
        Column("status", no_wrap=True),
        Column("started", no_wrap=True),
        Column("duration", no_wrap=True),
        Column("resumes", no_wrap=True),
    )
    with _runner() as runner:
        records = runner.metadata.list_runs(limit=limit, pipeline=pipeline)
        for record in records:
            record = runner.settle(record.id) if record.status == "running" else record
            table.add_row(
                record.id,
                record.pipeline,
                _status(record.status),
                _when(record.created_at, seconds=False),
                _seconds(record.duration),
                record.parent_run_id or "",
            )
    out.print(table if records else "No runs yet. Start one with 'loopline run PIPELINE'.")


@app.command()
def show(
    run_id: Annotated[str, typer.Argument(metavar="RUN", help="The run id (or a prefix).")],
) -> None:
    """Show a run: its steps, timings, cache hits, attempts, artifacts and metrics."""
    with _runner() as runner:
        record = runner.settle(runner.metadata.get_run(run_id).id)
        _print_run(runner.metadata, record)
        steps = runner.metadata.get_steps(record.id)
        out.print(_steps_table(runner.metadata, steps))
        _print_metrics(runner.metadata, record.id)
    if record.error:
        err.print(Text(record.error, "red"), soft_wrap=True)


@app.command()
def lineage(
    artifact: Annotated[
        str, typer.Argument(metavar="ID", help="An artifact id (or prefix) or content hash.")
    ],
) -> None:
    """Show where an artifact came from: the step that made it, its inputs, and theirs."""
    with _runner() as runner:
        metadata = runner.metadata
        record = metadata.get_artifact(artifact)
        tree = Tree(_artifact_label(record.id, metadata))
        _grow(tree, record.producer_step_id, metadata, depth=0)
    out.print(tree)


@app.command()
def artifact(
    artifact_id: Annotated[
        str, typer.Argument(metavar="ID", help="An artifact id (or prefix) or content hash.")
    ],
    output: Annotated[
        Path | None,
        typer.Option("--output", "-o", help="Write the stored bytes to this file."),
    ] = None,
) -> None:
    """Describe an artifact, or save its stored bytes (an HTML report, a bundle) to a file."""
    with _runner() as runner:
        record = runner.metadata.get_artifact(artifact_id)
        if output is None:
            out.print(_artifact_label(record.id, runner.metadata))
            out.print(f"  uri  {record.uri}")
            out.print("Save its bytes with: loopline artifact ID --output FILE")
            return
        data = runner.artifacts.read_bytes(record.content_hash)
    try:
        output.write_bytes(data)
    except OSError as exc:
        raise LooplineError(f"Could not write {output}: {exc.strerror or exc}.") from exc
    out.print(f"Wrote {_size(len(data))} ({record.kind}) to {output}")


@app.command()
def datasets(
    name: Annotated[str | None, typer.Argument(help="Only versions of this dataset.")] = None,
    limit: Annotated[int, typer.Option(min=1, help="How many versions to list.")] = 20,
) -> None:
    """List dataset versions: rows passed and quarantined, source, contract."""
    table = Table(
        Column("dataset", no_wrap=True),
        _id_column("id"),
        "rows",
        "quarantined",
        Column("created", no_wrap=True),
        "source",
        "contract",
        _id_column("run"),
    )
    with _runner() as runner:
        records = runner.metadata.list_datasets(name=name, limit=limit)
    for record in records:
        table.add_row(
            record.ref,
            record.id,
            f"{record.rows:,}",
            _quarantined(record.rows_quarantined, record.rows_read),
            _when(record.created_at, seconds=False),
            record.source,
            record.contract or "",
            record.run_id or "",
        )
    if records:
        out.print(table)
    else:
        out.print("No datasets yet. A pipeline step creates one with loopline.ingest(...).")


@app.command()
def profile(
    dataset: Annotated[
        str, typer.Argument(metavar="DATASET", help="NAME, NAME@VERSION or a version id.")
    ],
) -> None:
    """Show a dataset version's column statistics."""
    from loopline.data.profile import Profile, render_profile

    with _runner() as runner:
        record = runner.metadata.get_dataset(dataset)
        data = runner.artifacts.read_bytes(record.profile_hash) if record.profile_hash else None
    out.print(
        f"Dataset {record.ref} ({record.id}): {record.rows:,} rows, "
        f"{len(record.columns)} columns, from {record.source}"
    )
    if data is None:
        out.print("It has no rows, so no statistics.")
        return
    out.print(render_profile(Profile.from_json(data)))


@app.command()
def quarantine(
    ref: Annotated[
        str, typer.Argument(metavar="RUN", help="A run id (or prefix), or a dataset version.")
    ],
    limit: Annotated[int, typer.Option(min=0, help="How many set-aside rows to show.")] = 20,
    rule: Annotated[str | None, typer.Option(help="Only rows that broke this rule.")] = None,
    output: Annotated[
        Path | None, typer.Option(help="Write every set-aside row to this .parquet or .csv.")
    ] = None,
) -> None:
    """Show the rows a run's ingests set aside, and why."""
    import polars as pl

    from loopline.data.ingest import read_quarantine
    from loopline.data.workspace import Workspace

    with _runner() as runner:
        workspace = Workspace(runner.metadata.url, runner.artifacts.url)
        try:
            records = runner.metadata.datasets_of_run(runner.metadata.get_run(ref).id)
        except RunNotFoundError:
            records = [runner.metadata.get_dataset(ref)]
        frames = [
            pl.from_arrow(read_quarantine(r, workspace=workspace)).with_columns(  # type: ignore[union-attr]
                pl.lit(r.ref).alias("dataset")
            )
            for r in records
        ]
    if not records:
        out.print(f"Run {ref} ingested no datasets.")
        return
    bad = pl.concat(frames) if frames else pl.DataFrame()
    if rule is not None:
        bad = bad.filter(pl.col("rule") == rule)
    for record in records:
        out.print(
            f"{record.ref}: {record.rows_read:,} rows read = {record.rows:,} passed + "
            f"{record.rows_quarantined:,} quarantined"
        )
    if bad.is_empty():
        out.print("Nothing was set aside." if rule is None else f"No row broke rule {rule!r}.")
        return
    counts = (
        bad.group_by("dataset", "rule", "column")
        .agg(pl.len().alias("rows"), pl.col("reason").first().alias("example"))
        .sort(["dataset", "rows"], descending=[False, True])
    )
    summary = Table("dataset", "rule", "column", "rows", "example reason", title="Why")
    for entry in counts.iter_rows(named=True):
        summary.add_row(
            entry["dataset"],
            entry["rule"],
            entry["column"] or "",
            f"{entry['rows']:,}",
            entry["example"],
        )
    out.print(summary)
    if limit:
        rows = Table("where", "rule", "reason", "row", title=f"First {min(limit, bad.height)} rows")
        for entry in bad.head(limit).iter_rows(named=True):
            rows.add_row(
                f"{entry['source']}:{entry['location']}",
                entry["rule"],
                entry["reason"],
                Text(str(entry["row"] or "")[:200]),
            )
        out.print(rows)
    if output is not None:
        if output.suffix == ".csv":
            bad.write_csv(output)
        else:
            bad.write_parquet(output)
        out.print(f"Wrote {bad.height:,} rows to {output}.")


@app.command()
def features(
    definitions: Annotated[
        str, typer.Argument(metavar="DEFINITIONS", help="A .py file or module of feature views.")
    ],
) -> None:
    """List the feature views a file defines: versions and online freshness."""
    from loopline.data.workspace import Workspace
    from loopline.features import definitions_in
    from loopline.features.materialize import freshness

    views = definitions_in(vars(import_source(definitions)), source=definitions)
    with _runner() as runner:
        report = {
            f.view: f
            for f in freshness(
                views, workspace=Workspace(runner.metadata.url, runner.artifacts.url)
            )
        }
    table = Table(
        Column("view", no_wrap=True),
        Column("kind", no_wrap=True),
        Column("keys", no_wrap=True),
        Column("version", no_wrap=True),
        Column("newest value", no_wrap=True),
        Column("age", no_wrap=True, min_width=6),
        box=box.SIMPLE_HEAD,
        pad_edge=False,
    )
    kinds = {"FeatureView": "latest", "WindowView": "window", "OnDemand": "request"}
    for view in views:
        keys = ", ".join(getattr(view, "keys", ()))
        fresh = report.get(view.name)
        newest = fresh.newest_event if fresh else None
        table.add_row(
            view.name,
            kinds[type(view).__name__],
            keys,
            view.version[:8],
            "" if newest is None else newest.strftime("%Y-%m-%d %H:%M"),
            "" if fresh is None or fresh.age is None else _age(fresh.age),
        )
    out.print(table)


@app.command()
def materialize(
    definitions: Annotated[
        str, typer.Argument(metavar="DEFINITIONS", help="A .py file or module of feature views.")
    ],
    end: Annotated[
        str | None,
        typer.Option(help="Values as of this time (ISO 8601; naive is UTC). Default: now."),
    ] = None,
    start: Annotated[
        str | None,
        typer.Option(help="Only entities whose values changed since this time. Default: all."),
    ] = None,
    view: Annotated[
        list[str] | None, typer.Option("--view", help="Only this view (repeatable).")
    ] = None,
) -> None:
    """Fill the online store with feature values as of --end, from the offline data."""
    from loopline.data.workspace import Workspace
    from loopline.features import definitions_in
    from loopline.features.materialize import materialize as fill

    views = definitions_in(vars(import_source(definitions)), source=definitions)
    if view:
        known = {v.name: v for v in views}
        unknown = [name for name in view if name not in known]
        if unknown:
            raise FeatureError(
                f"{definitions} defines no view {unknown[0]!r}; it defines {', '.join(known)}.",
            )
        views = [known[name] for name in view]
    until = _instant(end, "--end") if end else dt.datetime.now(dt.UTC)
    since = _instant(start, "--start") if start else None
    with _runner() as runner:
        done = fill(
            views,
            end=until,
            start=since,
            workspace=Workspace(runner.metadata.url, runner.artifacts.url),
        )
    table = Table("view", "entities written", Column("newest value", no_wrap=True))
    for entry in done:
        newest = entry.newest_event
        table.add_row(
            entry.view,
            f"{entry.rows:,}",
            "" if newest is None else newest.strftime("%Y-%m-%d %H:%M:%S"),
        )
    out.print(table)
    out.print(f"Materialized {len(done)} view(s) as of {until.isoformat()}.")


@app.command()
def models() -> None:
    """List the registered models: versions, aliases, the latest version."""
    table = Table(
        Column("model", no_wrap=True),
        "versions",
        "latest",
        "aliases",
        Column("created", no_wrap=True),
        "description",
    )
    with _registry() as registry:
        found = registry.models()
    for entry in found:
        table.add_row(
            entry.name,
            str(entry.versions),
            "" if entry.latest is None else str(entry.latest),
            _aliases(entry.aliases),
            _when(entry.created_at, seconds=False),
            entry.description or "",
        )
    if found:
        out.print(table)
    else:
        out.print("No models registered yet. A pipeline step registers one with Registry.register.")


@app.command()
def model(
    name: Annotated[str, typer.Argument(metavar="NAME", help="A registered model's name.")],
    limit: Annotated[
        int, typer.Option(min=1, help="How many of the newest versions to show metrics of.")
    ] = 5,
    all_metrics: Annotated[
        bool,
        typer.Option(
            "--all-metrics", help="Show the metrics of slices and groups too (names with a dot)."
        ),
    ] = False,
) -> None:
    """Show a model: its versions with metrics and lineage, aliases, and the audit log."""
    with _registry() as registry:
        versions = registry.versions(name)
        aliases = registry.aliases(name)
        audit = registry.audit(name)
    latest = versions[-1].version if versions else None
    shown = ", ".join([*(f"{a}={v}" for a, v in aliases.items()), f"latest={latest}"])
    out.print(Text.assemble(("Model ", "bold"), (name, "bold"), f"  {len(versions)} version(s)"))
    out.print(f"  aliases  {shown}")
    table = Table(
        Column("version", no_wrap=True),
        Column("status", no_wrap=True),
        "aliases",
        Column("created", no_wrap=True),
        _id_column("run"),
        title="Versions",
        title_justify="left",
    )
    origins = Table(
        Column("version", no_wrap=True),
        _id_column("bundle"),
        "datasets",
        "features",
        title="Lineage",
        title_justify="left",
    )
    for v in versions:
        table.add_row(
            str(v.version),
            _status(v.status),
            ", ".join(v.aliases),
            _when(v.created_at, seconds=False),
            v.run_id or "",
        )
        origins.add_row(str(v.version), v.artifact_id, ", ".join(v.datasets), ", ".join(v.features))
    out.print(table)
    out.print(origins)
    recent = versions[-limit:]
    every = sorted({k for v in recent for k in v.metrics})
    keys = every if all_metrics else [k for k in every if "." not in k]
    if keys:
        metrics = Table(
            Column("metric", no_wrap=True),
            *(Column(str(v.version), no_wrap=True) for v in recent),
            title="Metrics",
            title_justify="left",
        )
        for key in keys:
            values = [v.metrics.get(key) for v in recent]
            metrics.add_row(key, *("" if x is None else _number(x) for x in values))
        out.print(metrics)
    if len(keys) < len(every):
        out.print(f"and {len(every) - len(keys)} metrics of slices and groups: --all-metrics")
    log = Table(
        "#",
        Column("when", no_wrap=True),
        "action",
        "alias",
        Column("from", no_wrap=True),
        Column("to", no_wrap=True),
        Column("who", no_wrap=True),
        "why",
        title="Audit log",
        title_justify="left",
    )
    for entry in audit:
        log.add_row(
            str(entry.id),
            _when(entry.created_at, seconds=False),
            entry.action,
            entry.alias or "",
            "" if entry.from_version is None else str(entry.from_version),
            "" if entry.to_version is None else str(entry.to_version),
            entry.actor,
            Text(entry.why or ""),
        )
    out.print(log)
    judged = next((e for e in reversed(audit) if e.verdict is not None), None)
    if judged is not None:
        out.print(
            f"Latest gate verdict: version {judged.to_version} for {judged.alias} "
            f"({judged.action}, {_when(judged.created_at)})"
        )
        out.print(Text(Verdict.from_dict(judged.verdict or {}).render()), soft_wrap=True)


@app.command()
def promote(
    name: Annotated[str, typer.Argument(metavar="NAME", help="A registered model's name.")],
    version: Annotated[
        str, typer.Argument(metavar="VERSION", help="A version number, or an alias.")
    ],
    alias: Annotated[str, typer.Option(help="The alias to move.")] = "champion",
    why: Annotated[str | None, typer.Option(help="Why, for the audit log.")] = None,
) -> None:
    """Point an alias (the champion by default) at VERSION; the move is audited."""
    with _registry() as registry:
        before = registry.aliases(name).get(alias)
        moved = registry.promote(name, version, alias=alias, why=why or "manual promote")
    if before == moved.version:
        out.print(f"Model {name}: {alias} is version {moved.version} already; nothing changed.")
        return
    start = "" if before is None else f"from version {before} "
    out.print(f"Model {name}: {alias} moved {start}to version {moved.version}.")


@app.command()
def rollback(
    name: Annotated[str, typer.Argument(metavar="NAME", help="A registered model's name.")],
    alias: Annotated[str, typer.Option(help="The alias to move back.")] = "champion",
    why: Annotated[str | None, typer.Option(help="Why, for the audit log.")] = None,
) -> None:
    """Move an alias (the champion by default) back to the version it had before."""
    with _registry() as registry:
        before = registry.aliases(name).get(alias)
        moved = registry.rollback(name, alias=alias, why=why or "manual rollback")
    out.print(f"Model {name}: {alias} rolled back from version {before} to {moved.version}.")


@app.command()
def serve(
    model: Annotated[
        list[str] | None,
        typer.Option(
            "--model",
            "-m",
            metavar="NAME[@ALIAS]",
            help="A model to serve: NAME (its champion), NAME@ALIAS (followed as it moves) "
            "or NAME@VERSION. Repeat for several. Default: every model with a champion.",
        ),
    ] = None,
    host: Annotated[str, typer.Option(help="The address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535, help="The port (0: any free one).")] = 8080,
    workers: Annotated[
        int, typer.Option(min=1, help="Worker processes, forked after the models load.")
    ] = 1,
    features: Annotated[
        str | None,
        typer.Option(
            metavar="DEFINITIONS",
            help="The feature definitions (.py file or module) that /predict reads from the "
            "online store.",
        ),
    ] = None,
    online_url: Annotated[
        str | None, typer.Option(help="The online store (default: the configured one).")
    ] = None,
    max_body_mb: Annotated[
        float, typer.Option(min=0.001, help="Larger request bodies get 413.")
    ] = 8.0,
    poll: Annotated[
        float, typer.Option(min=0.0, help="Seconds between checks for moved aliases (0: never).")
    ] = 2.0,
    ready_file: Annotated[
        Path | None, typer.Option(help="Write HOST:PORT here once listening (for scripts).")
    ] = None,
    allow_unknown: Annotated[
        list[str] | None,
        typer.Option(
            metavar="ENTITY",
            help="An entity /predict may be asked about although the online store never held "
            "it (its features are then missing); otherwise such a request gets 404. Repeat.",
        ),
    ] = None,
    api_key: Annotated[
        list[str] | None,
        typer.Option(
            envvar="LOOPLINE_API_KEYS",
            metavar="KEY",
            help="Require this key (Authorization: Bearer KEY) on the prediction and admin "
            "routes. Repeat for several; LOOPLINE_API_KEYS holds them space-separated.",
        ),
    ] = None,
    shadow: Annotated[
        str | None,
        typer.Option(
            metavar="ALIAS",
            help="An alias or version of the (first) model that "
            "scores a copy of every request, never returned.",
        ),
    ] = None,
    canary: Annotated[
        str | None,
        typer.Option(
            metavar="ALIAS",
            help="An alias or version that answers a share of the "
            "requests (--canary-percent), split by --canary-key.",
        ),
    ] = None,
    canary_percent: Annotated[float, typer.Option(min=0, max=100)] = 10.0,
    canary_key: Annotated[
        str | None,
        typer.Option(
            metavar="FIELD",
            help="The request field (or header) hashed to keep each "
            "entity on one side of the canary.",
        ),
    ] = None,
    fallback: Annotated[
        str | None,
        typer.Option(
            help="'previous' or a number: what answers when the model fails or "
            "exceeds --timeout-ms."
        ),
    ] = None,
    timeout_ms: Annotated[float | None, typer.Option(min=0.001)] = None,
    prediction_log: Annotated[
        str | None,
        typer.Option(
            metavar="URL",
            help="Where every prediction is logged as Parquet (default: "
            "<artifact_url>/predictions).",
        ),
    ] = None,
    no_prediction_log: Annotated[
        bool, typer.Option("--no-prediction-log", help="Log no predictions.")
    ] = False,
    cache_size: Annotated[
        int,
        typer.Option(
            min=0,
            help="Requests whose features were seen before are answered from an in-process "
            "cache of this many entries (0: no cache).",
        ),
    ] = 10_000,
    cache_url: Annotated[
        str | None,
        typer.Option(
            metavar="REDIS_URL",
            help="Share the prediction cache in Redis (redis://host:6379/0) instead.",
        ),
    ] = None,
    cache_ttl: Annotated[
        float, typer.Option(min=0.001, help="Seconds an entry lives in the Redis cache.")
    ] = 3600.0,
    batch_max: Annotated[
        int,
        typer.Option(
            min=1,
            help="Micro-batch concurrent requests into model calls of up to this many rows "
            "(1: no batching).",
        ),
    ] = 1,
    batch_wait_ms: Annotated[
        float,
        typer.Option(
            min=0.0,
            max=1000.0,
            help="How long a micro-batch waits for more requests (0: only those already received).",
        ),
    ] = 0.0,
) -> None:
    """Serve models over the Open Inference Protocol v2 (REST) and POST /predict."""
    from loopline.serve.server import serve as run_server

    with _registry() as registry:
        wanted = model or [m.name for m in registry.models() if "champion" in m.aliases]
    if not wanted:
        raise LooplineError(
            "No model to serve: no registered model has a champion yet. Run a pipeline that "
            "registers one, or name one with --model NAME@VERSION."
        )
    run_server(
        wanted,
        host=host,
        port=port,
        workers=workers,
        features=features,
        online_url=online_url,
        max_body_bytes=int(max_body_mb * 1024 * 1024),
        refresh_seconds=poll or None,
        ready_file=ready_file,
        allow_unknown=allow_unknown or (),
        prediction_log=None if no_prediction_log else (prediction_log or ""),
        cache_size=cache_size,
        cache_url=cache_url,
        cache_ttl=cache_ttl,
        batch_max=batch_max,
        batch_wait_ms=batch_wait_ms,
        api_keys=[k for item in api_key or () for k in item.split()],
        rollout={
            key: value
            for key, value in {
                "shadow": shadow,
                "canary": canary,
                "percent": canary_percent if canary else None,
                "key": canary_key,
                "fallback": fallback,
                "timeout_ms": timeout_ms,
            }.items()
            if value is not None
        },
    )


@app.command()
def predict(
    model: Annotated[
        str,
        typer.Option(
            "--model",
            "-m",
            metavar="NAME[@ALIAS]",
            help="The model: NAME (its champion), NAME@ALIAS or NAME@VERSION.",
        ),
    ],
    input: Annotated[
        str, typer.Option("--input", "-i", help="Parquet or CSV: a file, a folder or a glob.")
    ],
    output: Annotated[
        Path,
        typer.Option(
            "--output", "-o", help="A folder of Parquet parts, or one .parquet or .csv file."
        ),
    ],
    features: Annotated[
        str | None,
        typer.Option(
            metavar="DEFINITIONS",
            help="Feature definitions to read from the online store, as /predict does.",
        ),
    ] = None,
    online_url: Annotated[str | None, typer.Option(help="The online store.")] = None,
    at: Annotated[
        str | None, typer.Option(help="The time features are read as of (ISO 8601; now).")
    ] = None,
    batch_rows: Annotated[int, typer.Option(min=1, help="Rows scored at once.")] = 200_000,
    output_column: Annotated[str, typer.Option(help="The prediction's column.")] = "prediction",
    keep: Annotated[
        list[str] | None,
        typer.Option(metavar="COLUMN", help="An input column to keep (default: all). Repeat."),
    ] = None,
    only_prediction: Annotated[
        bool, typer.Option("--only-prediction", help="Write the prediction column alone.")
    ] = False,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing output.")] = False,
) -> None:
    """Score a file or folder of rows in batches, through the same feature path as serving."""
    from loopline.serve.batch import predict_batch
    from loopline.serve.repository import ModelSpec, ServedModel
    from loopline.serve.server import check_feature_versions, load_views
    from loopline.store.online import open_online_store

    spec = ModelSpec.parse(model)
    with _registry() as registry:
        record = registry.get(spec.name, spec.version if spec.version is not None else spec.alias)
        bundle = registry.load_bundle(spec.name, record.version)
        settings = Settings.load()
    views = url = None
    if features:
        views = load_views(features)
        served = ServedModel(spec.name, record.version, bundle, tuple(record.features))
        check_feature_versions(served, views)
        url = online_url or settings.online_url or f"sqlite:///{settings.home / 'online.db'}"
        open_online_store(url).close()  # a store that cannot be opened fails here, once
    with _engine(settings):
        result = predict_batch(
            bundle,
            input,
            output,
            batch_rows=batch_rows,
            views=views,
            online_url=url,
            at=None if at is None else _instant(at, "--at"),
            output_column=output_column,
            keep_columns=[] if only_prediction else keep,
            overwrite=overwrite,
        )
    out.print(
        f"Scored {result.rows:,} rows with {record.ref} in {result.seconds:.2f} s "
        f"({result.rows_per_second:,.0f} rows/s); wrote {result.output}."
    )


@contextlib.contextmanager
def _engine(settings: Settings) -> Iterator[None]:
    """Connected to Ray for the block when the ``engine`` setting says so, so that
    partitioned work (``loopline predict``) fans out on it."""
    if settings.engine == "local":
        yield
        return
    from loopline.pipeline.ray_executor import RayExecutor

    address = None if settings.engine == "ray" else settings.engine
    with RayExecutor(address=address, num_cpus=settings.max_workers):
        yield


def _aliases(aliases: dict[str, int]) -> str:
    return ", ".join(f"{alias}={version}" for alias, version in aliases.items())


def _instant(text: str, option: str) -> dt.datetime:
    try:
        value = dt.datetime.fromisoformat(text)
    except ValueError as exc:
        raise ConfigError(
            f"{option} must be an ISO 8601 time such as 2013-12-31T23:00:00. Got {text!r}."
        ) from exc
    return value.replace(tzinfo=dt.UTC) if value.tzinfo is None else value


def _age(age: dt.timedelta) -> str:
    seconds = age.total_seconds()
    for unit, size in (("d", 86_400), ("h", 3_600), ("m", 60)):
        if abs(seconds) >= size:
            return (
                f"{seconds / size:.0f}{unit}"
                if seconds >= 100 * size
                else f"{seconds / size:.1f}{unit}"
            )
    return f"{seconds:.0f}s"


def _compare_runs(first: str, second: str) -> None:
    """Print the parameters, metrics and environment that differ between two runs."""
    with _runner() as runner:
        meta = runner.metadata
        a, b = meta.get_run(first), meta.get_run(second)
        sides = [_run_facts(meta, a.id), _run_facts(meta, b.id)]
    out.print(f"Run A {a.id} ({a.pipeline}, {a.status}, {_when(a.created_at)})")
    out.print(f"Run B {b.id} ({b.pipeline}, {b.status}, {_when(b.created_at)})")
    table = Table("kind", "name", "A", "B", title="What differs")
    same = 0
    for kind in ("param", "metric", "env"):
        names = sorted(set(sides[0][kind]) | set(sides[1][kind]))
        for name in names:
            left, right = sides[0][kind].get(name), sides[1][kind].get(name)
            if left == right:
                same += 1
                continue
            table.add_row(kind, name, _fact(left, kind), _fact(right, kind))
    if table.row_count:
        out.print(table)
    else:
        out.print("The two runs have the same parameters, metrics and environment.")
    out.print(f"{same} parameter(s), metric(s) and environment entries are the same.")


def _run_facts(metadata: MetadataStore, run_id: str) -> dict[str, dict[str, Any]]:
    params = {
        f"{step}.{key}": value
        for step, values in metadata.run_params(run_id).items()
        for key, value in values.items()
    }
    # A metric's last value per step and key (a metric logged at several steps is a curve).
    metrics = {f"{m.step_name or 'run'}.{m.key}": m.value for m in metadata.get_metrics(run_id)}
    env = {
        key.removeprefix("env."): value
        for key, value in metadata.get_tags("run", run_id).items()
        if key.startswith("env.")
    }
    return {"param": params, "metric": metrics, "env": env}


def _fact(value: Any, kind: str) -> str:
    if value is None:
        return "-"
    if kind == "metric" and isinstance(value, float):
        return _number(value)
    return str(value)


def _quarantined(count: int, read: int) -> str:
    return f"{count:,} ({count / read:.1%})" if read else "0"


# -- helpers --------------------------------------------------------------------------------


@contextmanager
def _runner() -> Iterator[Runner]:
    """A runner on the configured stores; its database connections close with the command."""
    settings = Settings.load()
    reporter: Reporter = (
        LiveReporter(console=err) if err.is_terminal and not _state["json"] else LogReporter()
    )
    runner = Runner(settings, reporter=reporter)
    try:
        yield runner
    finally:
        runner.metadata.close()


@contextmanager
def _registry() -> Iterator[Registry]:
    """The registry of the configured stores, sharing the command's open connections."""
    with _runner() as runner:
        register_stores(runner.metadata, runner.artifacts)
        try:
            yield Registry(Workspace(runner.metadata.url, runner.artifacts.url))
        finally:
            forget_stores(runner.metadata, runner.artifacts)


def _parse_params(items: list[str]) -> dict[str, str]:
    params: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise typer.BadParameter(
                f"expected STEP.NAME=VALUE or NAME=VALUE, got {item!r}", param_hint="'-p'"
            )
        params[key.strip()] = value
    return params


def _finish(runner: Runner, result: RunResult) -> None:
    counts: dict[str, int] = {}
    for step in result.steps.values():
        counts[step.status] = counts.get(step.status, 0) + 1
    summary = ", ".join(f"{n} {status}" for status, n in counts.items())
    _print_metrics(runner.metadata, result.run_id, title="Results", brief=True)
    if result.ok:
        out.print(f"Run {result.run_id} succeeded: {summary}.")
        out.print(f"Details: loopline show {result.run_id}")
        return
    out.print(f"Run {result.run_id} failed: {summary}.")
    err.print(Text(result.error or "The run failed.", "red"), soft_wrap=True)
    raise typer.Exit(1)


def _print_run(metadata: MetadataStore, record: RunRecord) -> None:
    out.print(Text.assemble(("Run ", "bold"), (record.id, "bold"), f"  {record.pipeline}"))
    out.print(f"  status   {record.status}")
    out.print(f"  source   {record.source}")
    out.print(f"  started  {_when(record.created_at)}   duration {_seconds(record.duration)}")
    if record.parent_run_id:
        out.print(f"  resumes  {record.parent_run_id}")
    params = metadata.run_params(record.id)
    shown = [f"{s}.{k}={v}" for s, values in params.items() for k, v in values.items()]
    if shown:
        out.print(f"  params   {', '.join(shown)}")


def _steps_table(metadata: MetadataStore, steps: list[StepRecord]) -> Table:
    table = Table(
        Column("step", no_wrap=True),
        Column("status", no_wrap=True),
        "cache",
        "time",
        "tries",
        _id_column("output"),
        "kind",
        Column("size", no_wrap=True),
    )
    for step in steps:
        artifact = (
            metadata.get_artifact(step.output_artifact_id) if step.output_artifact_id else None
        )
        attempts = metadata.get_attempts(step.id)
        table.add_row(
            step.name,
            _status(step.status),
            "hit" if step.cache_hit else "",
            _seconds(step.duration),
            str(len(attempts)) if attempts else "",
            artifact.id if artifact else "",
            artifact.kind if artifact else "",
            _size(artifact.size) if artifact else "",
        )
        if step.error and step.status in ("failed", "skipped"):
            table.add_row("", Text(step.error.splitlines()[0][:160], "red"))
    return table


def _print_metrics(
    metadata: MetadataStore, run_id: str, *, title: str = "Metrics", brief: bool = False
) -> None:
    """Metrics by step; a ``baseline_X`` metric is shown beside ``PREFIX_X``.

    ``brief`` leaves out the metrics of slices and groups (names with a dot, such as
    ``slice.origin=JFK.roc_auc`` and ``gap.recall``) and says how many there are.
    """
    metrics = [m for m in metadata.get_metrics(run_id) if m.value is not None]
    if not metrics:
        return
    latest: dict[tuple[str | None, str], float] = {}
    for m in metrics:
        assert m.value is not None
        latest[(m.step_name, m.key)] = m.value
    hidden = sum(1 for _, key in latest if brief and "." in key)
    table = Table("step", "metric", "value", "baseline", title=title, title_justify="left")
    shown_baselines = set()
    for (step, key), value in latest.items():
        if key.startswith("baseline_") or (brief and "." in key):
            continue
        suffix = key.split("_", 1)[1] if "_" in key and "." not in key else None
        baseline = None if suffix is None else latest.get((step, f"baseline_{suffix}"))
        if baseline is not None:
            shown_baselines.add((step, f"baseline_{suffix}"))
        table.add_row(
            step or "", key, _number(value), "" if baseline is None else _number(baseline)
        )
    for (step, key), value in latest.items():
        if key.startswith("baseline_") and (step, key) not in shown_baselines:
            table.add_row(step or "", key, _number(value), "")
    out.print(table)
    if hidden:
        out.print(f"and {hidden} metrics of slices and groups: loopline show {run_id}")


def _grow(tree: Tree, step_id: str | None, metadata: MetadataStore, *, depth: int) -> None:
    if step_id is None:
        tree.add(Text("(not produced by a step)", "dim"))
        return
    step = metadata.get_step(step_id)
    branch = tree.add(f"← step {step.name} ({step.id}, run {step.run_id}, {step.status})")
    if depth > 50:
        branch.add("…")
        return
    for name, artifact_id in sorted(metadata.step_inputs(step.id).items()):
        child = branch.add(f"{name}: {_artifact_label(artifact_id, metadata)}")
        _grow(child, metadata.get_artifact(artifact_id).producer_step_id, metadata, depth=depth + 1)


def _artifact_label(artifact_id: str, metadata: MetadataStore) -> str:
    a = metadata.get_artifact(artifact_id)
    return f"artifact {a.id} {a.kind} {_size(a.size)} sha256:{a.content_hash[:12]}"


def _status(status: str) -> Text:
    style = {
        "succeeded": "green",
        "cached": "cyan",
        "failed": "red",
        "skipped": "yellow",
        "interrupted": "red",
        "running": "blue",
        "blessed": "green",
        "refused": "red",
    }.get(status, "")
    return Text(status, style)


def _id_column(header: str) -> Column:
    """A column of ids, never cut short: they are what the user copies into the next command."""
    return Column(header, no_wrap=True, min_width=16)


def _when(timestamp: float, *, seconds: bool = True) -> str:
    shape = "%Y-%m-%d %H:%M:%S" if seconds else "%Y-%m-%d %H:%M"
    return dt.datetime.fromtimestamp(timestamp).strftime(shape)


def _seconds(value: float | None) -> str:
    return "" if value is None else f"{value:.2f}s"


def _number(value: float) -> str:
    return f"{value:.4f}" if abs(value) < 1e6 and not float(value).is_integer() else f"{value:g}"


def _size(n: int) -> str:
    size = float(n)
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"  # pragma: no cover


def main(argv: list[str] | None = None) -> None:
    """Entry point: run the command, turn errors into one line and an exit code."""
    try:
        result: Any = app(args=argv, prog_name="loopline", standalone_mode=False)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except typer.TyperException as exc:
        # Usage errors: Typer vendors Click since 0.26, so they no longer derive from
        # click's classes (and click may not be installed); its ClickException can show().
        show = getattr(exc, "show", None)
        if callable(show):
            show()
        else:  # pragma: no cover
            err.print(f"error: {exc.format_message()}", soft_wrap=True)
        sys.exit(exc.exit_code)
    except (typer.Abort, KeyboardInterrupt):
        err.print("Interrupted.")
        sys.exit(130)
    except (LooplineError, RunNotFoundError) as exc:
        if _state["verbose"]:
            traceback.print_exc()
        err.print(Text.assemble(("error: ", "bold red"), str(exc)), soft_wrap=True)
        sys.exit(2)
    sys.exit(result if isinstance(result, int) else 0)
