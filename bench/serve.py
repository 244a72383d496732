"""Online serving: single-row requests over loopback HTTP, beside MLflow and a ceiling.

The model is the flights example's (``examples/flights/pipeline.py``, run in a fresh
folder: a LightGBM binary classifier over 29 features, 3 of them categorical, registered
as ``flights-delay`` and made champion). The request rows are
``LOOPLINE_BENCH_SERVE_ROWS`` (default 1000) rows of the pipeline's ``test_set`` step
output (a seeded sample, nulls and all), cycled through. Four endpoints answer them,
each server one process with one worker, started on a free port of 127.0.0.1, waited for
until ready, and stopped after its cells:

- loopline ``POST /predict`` (``loopline serve``, no ``--features``): a JSON object with
  every feature of the row;
- loopline OIP v2 ``POST /v2/models/flights-delay/infer`` on the same server: one JSON
  tensor of shape [1] per feature, each of the datatype the model's metadata gives
  (FP64 for a null number, which JSON carries as ``null``);
- MLflow ``mlflow models serve --env-manager local`` of the same bundle exported with
  ``loopline.train.to_mlflow`` (its uvicorn server, one worker), ``POST /invocations``
  with ``{"dataframe_split": {"columns": [...], "data": [[...]]}}``;
- the ceiling: a minimal Starlette app on uvicorn (uvloop, httptools, one worker, this
  module's ``_ceiling_app``) whose endpoint reads the same body as ``/predict`` with
  orjson, codes the row as the bundle's preprocessor would (its vocabularies, looked up
  in dicts made beforehand) and calls ``booster.predict(row, num_threads=1)``: the
  least a Python server must do to answer, and so the most loopline can hope for.

Before measuring, each endpoint answers the first 20 rows once and its predictions are
checked against ``bundle.predict`` of the same rows. Then ``bench/loadgen.py``, a
separate process, loads it at concurrency 1 and then 16 (that many keep-alive
connections, each sending its next request when the answer to the last arrives), for a
warm-up of ``LOOPLINE_BENCH_SERVE_WARMUP`` seconds (default 3) and a measured window of
``LOOPLINE_BENCH_SERVE_SECONDS`` (default 30). The load generator shares the machine's
cores with the server it loads.

``LOOPLINE_BENCH_SERVE_HOME`` names the folder the pipeline runs in (a temporary one by
default); a second benchmark run there finds the pipeline's steps cached. Batch scoring
(``loopline predict`` against raw ``booster.predict``) is not measured: that command does
not exist yet. Run alone: ``python -m bench serve``.
"""

from __future__ import annotations

import contextlib
import http.client
import io
import json
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import orjson

REPO = Path(__file__).resolve().parent.parent
PIPELINE = REPO / "examples" / "flights" / "pipeline.py"
MODEL = "flights-delay"
SECONDS = 30.0
WARMUP = 3.0
ROWS = 1000
CONCURRENCY = (1, 16)
CHECKED_ROWS = 20
READY_TIMEOUT_S = 180.0
SEED = 2013

GOAL_VS_MLFLOW = 20.0
GOAL_VS_CEILING = 0.8
GOAL_P99_MS = 1.0

INFER = f"/v2/models/{MODEL}/infer"


@dataclass
class Endpoint:
    """One endpoint, and how to write a request to it and read its prediction."""

    server: str
    name: str
    path: str
    body: Callable[[dict[str, Any]], bytes]
    answer: Callable[[Any], float]


@dataclass
class Cell:
    endpoint: Endpoint
    concurrency: int
    figures: dict[str, Any] = field(default_factory=dict)
    note: str | None = None

    @property
    def rps(self) -> float:
        return float(self.figures["requests"]) / float(self.figures["seconds"])


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def _env_float(name: str, default: float) -> float:
    text = os.environ.get(name)
    return float(text) if text else default


def _env() -> dict[str, str]:
    """The servers' environment: this one without LOOPLINE_ settings, the venv on PATH
    (``mlflow models serve`` runs ``uvicorn`` from it)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LOOPLINE_")}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return env


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# -- the model and the rows -------------------------------------------------------------------


def _prepare(home: Path, count: int) -> tuple[Any, Any]:
    """Run the flights pipeline in ``home``; its champion bundle and test rows."""
    from loopline.config import Settings
    from loopline.data.workspace import Workspace
    from loopline.registry import Registry
    from loopline.store.artifacts import ArtifactStore
    from loopline.store.metadata import MetadataStore

    done = subprocess.run(
        [sys.executable, "-m", "loopline", "run", str(PIPELINE)],
        cwd=home,
        env=_env(),
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(
            f"The flights pipeline failed in {home} (exit {done.returncode}):\n"
            f"{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
        )
    settings = Settings.load(start=home, search=False, env={})
    bundle = Registry(Workspace(settings.metadata_url, settings.artifact_url)).load_bundle(
        f"{MODEL}@champion"
    )
    with MetadataStore(settings.metadata_url) as store:
        run = store.list_runs(limit=1)[0]
        step = next(s for s in store.get_steps(run.id) if s.name == "test_set")
        assert step.output_artifact_id is not None
        artifact = store.get_artifact(step.output_artifact_id)
    frame = ArtifactStore(settings.artifact_url).get(artifact.content_hash, artifact.kind)
    rows = frame.select(bundle.features)
    return bundle, rows.sample(min(count, rows.height), seed=SEED)


def _endpoints(bundle: Any, datatypes: dict[str, str]) -> list[Endpoint]:
    features = list(bundle.features)

    def tensor(name: str, value: Any) -> dict[str, Any]:
        datatype = datatypes[name]
        if value is None and datatype != "BYTES":
            datatype = "FP64"  # JSON's null is NaN in a floating-point tensor only
        return {"name": name, "datatype": datatype, "shape": [1], "data": [value]}

    return [
        Endpoint(
            "loopline",
            "loopline /predict",
            "/predict",
            orjson.dumps,
            lambda answer: answer["predictions"][0],
        ),
        Endpoint(
            "loopline",
            "loopline OIP infer",
            INFER,
            lambda row: orjson.dumps({"inputs": [tensor(n, row[n]) for n in features]}),
            lambda answer: answer["outputs"][0]["data"][0],
        ),
        Endpoint(
            "loopline-batched",
            "loopline /predict, micro-batched (--batch-max 32)",
            "/predict",
            orjson.dumps,
            lambda answer: answer["predictions"][0],
        ),
        Endpoint(
            "loopline-cached",
            "loopline /predict, cache hits (the default cache; 1,000 rows cycled)",
            "/predict",
            orjson.dumps,
            lambda answer: answer["predictions"][0],
        ),
        Endpoint(
            "mlflow",
            f"MLflow {_mlflow_version()} /invocations",
            "/invocations",
            lambda row: orjson.dumps(
                {"dataframe_split": {"columns": features, "data": [[row[n] for n in features]]}}
            ),
            lambda answer: answer["predictions"][0],
        ),
        Endpoint(
            "ceiling",
            "ceiling (Starlette + booster.predict)",
            "/predict",
            orjson.dumps,
            lambda answer: answer["predictions"][0],
        ),
    ]


def _mlflow_version() -> str:
    for package in ("mlflow", "mlflow-skinny"):
        version = _version(package)
        if version != "not installed":
            return version
    return "not installed"


# -- the ceiling ------------------------------------------------------------------------------


def _ceiling_app(bundle: Any) -> Any:
    """The least a Python server does to answer ``/predict``: parse, code, predict."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.routing import Route

    booster, pre = bundle.model.booster_, bundle.preprocessor
    missing = pre.missing_codes_
    codes = {n: {v: float(i) for i, v in enumerate(vs)} for n, vs in pre.vocabulary_.items()}
    fills = {n: pre.fill_values_.get(n, math.nan) for n in bundle.features if n not in codes}
    features = list(bundle.features)

    async def predict(request: Request) -> Response:
        data = orjson.loads(await request.body())
        row = np.empty((1, len(features)))
        for j, name in enumerate(features):
            value = data.get(name)
            if name in codes:
                row[0, j] = codes[name].get(value, missing[name])
            else:
                row[0, j] = fills[name] if value is None else value
        predicted = booster.predict(row, num_threads=1)
        return Response(
            orjson.dumps({"predictions": predicted.tolist()}), media_type="application/json"
        )

    async def ping(request: Request) -> Response:
        return Response(b"{}", media_type="application/json")

    return Starlette(routes=[Route("/predict", predict, methods=["POST"]), Route("/ping", ping)])


def _ceiling(home: str, port: int) -> None:
    """Serve the ceiling app on ``port`` (``python -m bench.serve --ceiling``)."""
    import uvicorn

    from loopline.config import Settings
    from loopline.data.workspace import Workspace
    from loopline.registry import Registry

    settings = Settings.load(start=Path(home), search=False, env={})
    registry = Registry(Workspace(settings.metadata_url, settings.artifact_url))
    app = _ceiling_app(registry.load_bundle(f"{MODEL}@champion"))
    uvicorn.run(
        app,
        host="127.0.0.1",
        port=port,
        loop="uvloop",
        http="httptools",
        workers=1,
        access_log=False,
        log_level="warning",
    )


# -- servers ----------------------------------------------------------------------------------


LOOPLINE_VARIANTS = {
    # The rows are cycled, so the prediction cache would answer nearly every request:
    # the plain figures are without it, and a variant measures it on purpose.
    "loopline": ("--cache-size", "0"),
    "loopline-batched": ("--cache-size", "0", "--batch-max", "32"),
    "loopline-cached": (),
}
"""``loopline serve`` options of each loopline server measured."""


def loopline_serve(home: Path, port: int, name: str, *options: str) -> list[str]:
    """``loopline serve`` of the champion on 127.0.0.1:``port`` with ``options``."""
    return [
        sys.executable,
        *("-m", "loopline", "serve", "--model", f"{MODEL}@champion"),
        *("--host", "127.0.0.1", "--port", str(port)),
        *("--ready-file", str(home / f"{name}-ready")),
        *options,
    ]


def _command(server: str, home: Path, port: int) -> list[str]:
    if server in LOOPLINE_VARIANTS:
        return loopline_serve(home, port, server, "--workers", "1", *LOOPLINE_VARIANTS[server])
    if server == "mlflow":
        return [
            str(Path(sys.executable).parent / "mlflow"),
            *("models", "serve", "-m", str(home / "mlflow-model"), "--env-manager", "local"),
            *("--host", "127.0.0.1", "--port", str(port), "--workers", "1"),
        ]
    return [sys.executable, "-m", "bench.serve", "--ceiling", str(home), str(port)]


HEALTH = {
    **dict.fromkeys(LOOPLINE_VARIANTS, "/v2/health/ready"),
    "mlflow": "/ping",
    "ceiling": "/ping",
}


def _get(port: int, path: str) -> int:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        connection.request("GET", path)
        return connection.getresponse().status
    finally:
        connection.close()


@contextlib.contextmanager
def _server(
    server: str,
    home: Path,
    command: Callable[[Path, int], list[str]] | None = None,
    health: str | None = None,
    cwd: Path | None = None,
) -> Iterator[int]:
    """The server started on a free port, once its health route answers 200 (by
    default the command and route of ``server`` here)."""
    port = _free_port()
    log = home / f"{server}.log"
    argv = command(home, port) if command is not None else _command(server, home, port)
    health = health or HEALTH[server]
    with log.open("wb") as out:
        process = subprocess.Popen(
            argv,
            cwd=cwd or (REPO if server == "ceiling" else home),
            env=_env(),
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: mlflow's uvicorn is a child
        )
    try:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while True:
            if process.poll() is not None:
                raise RuntimeError(
                    f"{server} exited ({process.returncode}) before it was ready:\n"
                    f"{log.read_text(errors='replace')[-3000:]}"
                )
            with contextlib.suppress(OSError):
                if _get(port, health) == 200:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError(f"{server} was not ready in {READY_TIMEOUT_S:.0f} s")
            time.sleep(0.2)
        yield port
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def _post(port: int, path: str, body: bytes) -> tuple[int, bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request("POST", path, body, {"Content-Type": "application/json"})
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def _check(endpoint: Endpoint, port: int, rows: list[dict[str, Any]], want: Any) -> float:
    """The largest difference from ``bundle.predict`` over the first rows' answers."""
    got = []
    for row in rows[:CHECKED_ROWS]:
        status, body = _post(port, endpoint.path, endpoint.body(row))
        if status != 200:
            raise RuntimeError(
                f"{endpoint.name} answered {status}: {body.decode(errors='replace')[:500]}"
            )
        got.append(endpoint.answer(orjson.loads(body)))
    return float(np.max(np.abs(np.asarray(got) - want[:CHECKED_ROWS])))


def _load(port: int, path: str, bodies: Path, concurrency: int) -> dict[str, Any]:
    seconds = _env_float("LOOPLINE_BENCH_SERVE_SECONDS", SECONDS)
    warmup = _env_float("LOOPLINE_BENCH_SERVE_WARMUP", WARMUP)
    done = subprocess.run(
        [
            sys.executable,
            *("-m", "bench.loadgen", "--port", str(port), "--path", path),
            *("--bodies", str(bodies), "--connections", str(concurrency)),
            *("--seconds", str(seconds), "--warmup", str(warmup)),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=seconds + warmup + 120,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"The load generator failed:\n{done.stdout}\n{done.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def _measure(
    server: str,
    endpoints: list[Endpoint],
    home: Path,
    rows: list[dict[str, Any]],
    want: Any,
    checks: dict[str, float | str],
) -> list[Cell]:
    cells = [Cell(e, c) for e in endpoints if e.server == server for c in CONCURRENCY]
    try:
        with _server(server, home) as port:
            for endpoint in [e for e in endpoints if e.server == server]:
                mine = [cell for cell in cells if cell.endpoint is endpoint]
                try:
                    checks[endpoint.name] = _check(endpoint, port, rows, want)
                except (RuntimeError, OSError) as exc:
                    checks[endpoint.name] = str(exc)
                    for cell in mine:
                        cell.note = "not measured: its answers failed the check"
                    continue
                bodies = home / f"bodies-{server}-{endpoint.path.strip('/').replace('/', '-')}"
                bodies.write_bytes(b"".join(endpoint.body(row) + b"\n" for row in rows))
                for cell in mine:
                    print(f"  {endpoint.name}, concurrency {cell.concurrency}", file=sys.stderr)
                    cell.figures = _load(port, endpoint.path, bodies, cell.concurrency)
    except RuntimeError as exc:
        for cell in cells:
            if not cell.figures and cell.note is None:
                cell.note = f"not measured: {str(exc).splitlines()[0]}"
        checks.setdefault(server, str(exc))
    return cells


# -- the report -------------------------------------------------------------------------------


def _ms(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.3f}" if value < 10 else f"{value:.1f}"


def _find(cells: list[Cell], name: str, concurrency: int) -> Cell | None:
    for cell in cells:
        if cell.endpoint.name.startswith(name) and cell.concurrency == concurrency:
            return cell if cell.figures and cell.note is None else None
    return None


def _row(cell: Cell, ceiling: Cell | None) -> str:
    if not cell.figures:
        return f"| {cell.endpoint.name} | {cell.concurrency} | {cell.note} | | | | | | |"
    f = cell.figures
    ratio = f"{cell.rps / ceiling.rps:.2f}" if ceiling is not None else "-"
    return (
        f"| {cell.endpoint.name} | {cell.concurrency} | {f['requests']:,} | {cell.rps:,.0f} "
        f"| {_ms(f['p50'])} | {_ms(f['p99'])} | {_ms(f['p99_9'])} | {f['errors']:,} | {ratio} |"
    )


def _verdict(ok: bool) -> str:
    return "met" if ok else "missed"


def _goals(cells: list[Cell]) -> list[str]:
    lines = []
    for name in ("loopline /predict", "loopline OIP infer"):
        ours16, mlflow16 = _find(cells, name, 16), _find(cells, "MLflow", 16)
        if ours16 is not None and mlflow16 is not None:
            times = ours16.rps / mlflow16.rps
            lines.append(
                f"- {name} / MLflow at concurrency 16: {times:.1f}x the requests per second "
                f"(goal at least {GOAL_VS_MLFLOW:.0f}x: {_verdict(times >= GOAL_VS_MLFLOW)})."
            )
        else:
            lines.append(f"- {name} / MLflow at concurrency 16: not measured.")
        parts, met = [], True
        for c in CONCURRENCY:
            ours, ceiling = _find(cells, name, c), _find(cells, "ceiling", c)
            if ours is None or ceiling is None:
                parts.append(f"concurrency {c} not measured")
                met = False
                continue
            share = ours.rps / ceiling.rps
            met = met and share >= GOAL_VS_CEILING
            parts.append(f"concurrency {c}: {share:.0%}")
        lines.append(
            f"- {name} / the ceiling: {', '.join(parts)} of its requests per second (goal at "
            f"least {GOAL_VS_CEILING:.0%} at each: {_verdict(met)})."
        )
        ours1 = _find(cells, name, 1)
        if ours1 is not None:
            p99 = float(ours1.figures["p99"])
            lines.append(
                f"- {name} p99 at concurrency 1: {_ms(p99)} ms (goal under {GOAL_P99_MS:g} ms: "
                f"{_verdict(p99 < GOAL_P99_MS)})."
            )
    for c in CONCURRENCY:
        plain, batched = (
            _find(cells, "loopline /predict", c),
            _find(cells, "loopline /predict, m", c),
        )
        if plain is not None and batched is not None:
            lines.append(
                f"- Micro-batching at concurrency {c}: {batched.rps / plain.rps:.2f}x the "
                f"requests per second, p99 {_ms(batched.figures['p99'])} ms against "
                f"{_ms(plain.figures['p99'])} ms without."
            )
    lines.append("- Batch scoring: see its own section (`bench.batch_predict`).")
    return lines


def _checks(checks: dict[str, float | str]) -> list[str]:
    lines = []
    for name, result in checks.items():
        if isinstance(result, float):
            lines.append(
                f"- {name}: the first {CHECKED_ROWS} rows' predictions differ from "
                f"`bundle.predict` by at most {result:.3g}."
            )
        else:
            lines.append(f"- {name}: FAILED: {result}")
    return lines


def run() -> str:
    seconds = _env_float("LOOPLINE_BENCH_SERVE_SECONDS", SECONDS)
    warmup = _env_float("LOOPLINE_BENCH_SERVE_WARMUP", WARMUP)
    given = os.environ.get("LOOPLINE_BENCH_SERVE_HOME")
    scratch = None if given else tempfile.mkdtemp(prefix="loopline-bench-serve-")
    home = Path(given or str(scratch)).resolve()
    home.mkdir(parents=True, exist_ok=True)
    try:
        return _run(home, seconds, warmup)
    finally:
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)


def _run(home: Path, seconds: float, warmup: float) -> str:
    from loopline.serve.repository import datatype_of_schema
    from loopline.train import to_mlflow

    print("  running the flights pipeline", file=sys.stderr)
    bundle, frame = _prepare(home, int(_env_float("LOOPLINE_BENCH_SERVE_ROWS", ROWS)))
    rows = frame.to_dicts()
    want = bundle.predict(frame)
    model = home / "mlflow-model"
    if model.exists():
        shutil.rmtree(model)
    mlflow = _mlflow_version() != "not installed"
    if mlflow:
        with contextlib.redirect_stderr(io.StringIO()):  # MLflow's copy progress bar
            to_mlflow(bundle, model)
    datatypes = {n: datatype_of_schema(t) for n, t in bundle.schema.items()}
    endpoints = _endpoints(bundle, datatypes)
    checks: dict[str, float | str] = {}
    cells: list[Cell] = []
    for server in (*LOOPLINE_VARIANTS, "mlflow", "ceiling"):
        if server == "mlflow" and not mlflow:
            cells += [
                Cell(e, c, note="not installed (pip install 'loopline[mlflow]')")
                for e in endpoints
                if e.server == "mlflow"
                for c in CONCURRENCY
            ]
            continue
        cells += _measure(server, endpoints, home, rows, want, checks)

    categorical = len(bundle.preprocessor.vocabulary_)
    text = (
        f"The flights example's LightGBM model ({bundle.model.booster_.num_trees()} trees, "
        f"{len(bundle.features)} features, {categorical} categorical), asked about one row a "
        f"request: {len(rows):,} rows of the pipeline's test months, nulls and all, cycled "
        f"through. Each server is one process with one worker, on 127.0.0.1: `loopline "
        f"serve` with its defaults (the prediction log on) but for the prediction cache, off "
        f"(`--cache-size 0`: the rows repeat, so it would answer nearly every request), with "
        f"`/predict` holding every feature in the JSON object, no online store, and OIP v2 "
        f"infer with one JSON tensor per feature; the same server with micro-batching "
        f"(`--batch-max 32`) and with the default cache (nearly every request a hit); "
        f"`mlflow models serve --env-manager local` of the same bundle exported with `to_mlflow` "
        f"(`dataframe_split`), and the ceiling, a hand-written Starlette endpoint on uvicorn "
        f"(uvloop, httptools) that parses the `/predict` body with orjson, codes the row with "
        f"the bundle's vocabularies and calls `booster.predict(row, num_threads=1)`. A load "
        f"generator in its own process (`bench/loadgen.py`: asyncio on uvloop, raw HTTP/1.1 "
        f"keep-alive, prepared requests) keeps 1 or 16 connections busy, each sending its "
        f"next request when the last is answered, for {warmup:g} s of warm-up and then "
        f"{seconds:g} s measured; every request is timed from its write to its answer's last "
        f"byte. It shares the machine's {os.cpu_count()} cores with the server, so "
        f"concurrency 16 measures a saturated server. Each endpoint's answers to the first "
        f"{CHECKED_ROWS} rows are checked against `bundle.predict` first. Goals (issue 6): at "
        f"concurrency 16 at least {GOAL_VS_MLFLOW:.0f}x MLflow's requests per second; at least "
        f"{GOAL_VS_CEILING:.0%} of the ceiling's; p99 under {GOAL_P99_MS:g} ms at concurrency 1."
    )
    ceilings = {c: _find(cells, "ceiling", c) for c in CONCURRENCY}
    lines = [
        "## Online serving: single-row requests over HTTP",
        "",
        textwrap.fill(text, 88, break_on_hyphens=False),
        "",
        "| endpoint | concurrency | requests | req/s | p50 (ms) | p99 (ms) | p99.9 (ms) "
        "| errors | req/s vs ceiling |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
        *(_row(cell, ceilings[cell.concurrency]) for cell in cells),
        "",
        *_goals(cells),
        *_checks(checks),
        f"- Versions: loopline {_version('loopline')}, LightGBM {_version('lightgbm')}, "
        f"MLflow {_mlflow_version()}, uvicorn {_version('uvicorn')}, Starlette "
        f"{_version('starlette')}, uvloop {_version('uvloop')}, httptools "
        f"{_version('httptools')}, orjson {_version('orjson')}, FastAPI (MLflow's server) "
        f"{_version('fastapi')}.",
    ]
    errors = [
        f"- {c.endpoint.name}, concurrency {c.concurrency}: {c.figures['statuses']}; first: "
        f"{c.figures['first_error']}"
        for c in cells
        if c.figures and c.figures["errors"]
    ]
    if errors:
        lines += ["- Errors:", *errors]
    if (seconds, warmup, len(rows)) != (SECONDS, WARMUP, ROWS):
        lines += [
            "",
            f"Scaled down by environment variables (published: {SECONDS:g} s a cell after "
            f"{WARMUP:g} s of warm-up, {ROWS:,} request rows).",
        ]
    return "\n".join(lines) + "\n"


def main() -> None:
    if len(sys.argv) == 4 and sys.argv[1] == "--ceiling":
        _ceiling(sys.argv[2], int(sys.argv[3]))
        return
    print(run())


if __name__ == "__main__":
    main()
