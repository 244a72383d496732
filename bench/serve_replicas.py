"""Serving replicas: ``loopline serve --workers N`` beside Ray Serve with N replicas.

Issue 7 asks for ``loopline serve --replicas N`` on Ray Serve behind one endpoint, or
multi-worker uvicorn if a benchmark shows it is faster. This is that benchmark, on the
flights champion and the rows of ``bench/serve.py`` (one row a request, closed loop,
``bench/loadgen.py``):

- ``loopline serve --workers 1`` and ``--workers 2`` (uvicorn's workers share the port;
  the kernel spreads connections over them), the prediction cache off;
- Ray Serve with 1 and 2 replicas of the least a Python deployment does for
  ``/predict`` (the ``bench/serve.py`` ceiling's code: parse JSON, code the row, call the
  booster), behind Ray Serve's HTTP proxy on a local two-CPU cluster. Anything loopline
  would add inside a replica (online features, rollouts, metrics, the prediction log)
  comes on top, so this is the fastest Ray Serve could serve the model.

Run alone: ``python -m bench serve_replicas``.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import serve as serving
from bench.common import version

CONCURRENCY = (1, 16)
SECONDS = 10.0


def _ray_serve(home: str, port: int, replicas: int) -> None:
    """Serve the ceiling code on Ray Serve (``python -m bench.serve_replicas --ray ...``)."""
    import ray
    from ray import serve
    from starlette.requests import Request
    from starlette.responses import Response

    from loopline.config import Settings
    from loopline.data.workspace import Workspace
    from loopline.registry import Registry

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    serve.start(http_options={"host": "127.0.0.1", "port": port})

    @serve.deployment(num_replicas=replicas, ray_actor_options={"num_cpus": 1})
    class Predictor:
        def __init__(self) -> None:
            settings = Settings.load(start=Path(home), search=False, env={})
            registry = Registry(Workspace(settings.metadata_url, settings.artifact_url))
            app = serving._ceiling_app(registry.load_bundle(f"{serving.MODEL}@champion"))
            self.routes = {route.path: route.endpoint for route in app.routes}

        async def __call__(self, request: Request) -> Response:
            answer: Response = await self.routes[request.url.path](request)
            return answer

    serve.run(Predictor.bind(), route_prefix="/")
    while True:
        time.sleep(3600)


def _command(replicas: int) -> Any:
    def command(home: Path, port: int) -> list[str]:
        return [sys.executable, "-m", "bench.serve_replicas", "--ray", str(home), str(port),
                str(replicas)]  # fmt: skip

    return command


def run() -> str:
    home = Path(tempfile.mkdtemp(prefix="loopline-bench-replicas-")).resolve()
    try:
        return _run(home)
    finally:
        shutil.rmtree(home, ignore_errors=True)


def _run(home: Path) -> str:
    print("  running the flights pipeline", file=sys.stderr)
    bundle, frame = serving._prepare(home, serving.ROWS)
    rows = frame.to_dicts()
    want = bundle.predict(frame)
    bodies = home / "bodies"
    bodies.write_bytes(b"".join(serving.orjson.dumps(row) + b"\n" for row in rows))
    endpoint = serving.Endpoint(
        "", "", "/predict", serving.orjson.dumps, lambda answer: answer["predictions"][0]
    )
    servers: dict[str, tuple[Any, str]] = {
        **{
            f"loopline serve --workers {n}": (
                lambda h, p, n=n: serving.loopline_serve(
                    h, p, f"w{n}", "--workers", str(n), "--cache-size", "0"
                ),
                "/v2/health/ready",
            )
            for n in (1, 2)
        },
        **{f"Ray Serve, {n} replica{'s' * (n > 1)}": (_command(n), "/ping") for n in (1, 2)},
    }
    figures: dict[str, dict[int, dict[str, Any]]] = {}
    errors: dict[str, float] = {}
    for name, (command, health) in servers.items():
        print(f"  {name}", file=sys.stderr)
        label = name.replace(" ", "-").replace(",", "")
        cwd = serving.REPO if name.startswith("Ray") else home  # bench/ importable, or home's
        with serving._server(label, home, command, health, cwd=cwd) as port:
            errors[name] = serving._check(endpoint, port, rows, want)
            figures[name] = {}
            for concurrency in CONCURRENCY:
                figures[name][concurrency] = _load(port, bodies, concurrency)
    base = figures["loopline serve --workers 1"][16]["requests"]
    lines = [
        "## Serving replicas: uvicorn workers or Ray Serve",
        "",
        f"The flights champion, one row a request ({len(rows):,} test rows cycled), "
        f"{SECONDS:.0f} s per cell after a 3 s warm-up, on 127.0.0.1; this machine's 2 "
        f"cores serve and generate the load. `loopline serve` runs with the prediction "
        f"cache off; the Ray Serve deployment runs only the ceiling's code of "
        f"`bench/serve.py` (parse, code, `booster.predict`), so it is the fastest Ray "
        f"Serve could be.",
        "",
        "| server | req/s, c=1 | p99 ms, c=1 | req/s, c=16 | p50 ms, c=16 | p99 ms, c=16 | "
        "c=16 vs 1 worker |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, cells in figures.items():
        one, many = cells[1], cells[16]
        lines.append(
            f"| {name} | {_rate(one):,.0f} | {one['p99']:.2f} | {_rate(many):,.0f} | "
            f"{many['p50']:.2f} | {many['p99']:.2f} | {many['requests'] / base:.2f}x |"
        )
    lines += [
        "",
        f"- Largest difference from `bundle.predict` over the first "
        f"{serving.CHECKED_ROWS} answers: "
        + ", ".join(f"{name} {error:.1e}" for name, error in errors.items())
        + ".",
        f"- Versions: Ray {version('ray')}, uvicorn {version('uvicorn')}, loopline "
        f"{version('loopline')}.",
        "",
    ]
    return "\n".join(lines)


def _load(port: int, bodies: Path, concurrency: int) -> dict[str, Any]:
    import os

    os.environ.setdefault("LOOPLINE_BENCH_SERVE_SECONDS", str(SECONDS))
    return serving._load(port, "/predict", bodies, concurrency)


def _rate(cell: dict[str, Any]) -> float:
    return float(cell["requests"]) / float(cell["seconds"])


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--ray":
        _ray_serve(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
    else:
        print(run())


if __name__ == "__main__":
    main()
