"""Engine overhead: a 200-step DAG of no-op steps, cold and fully cached, vs Prefect.

Both sides run the same DAG: step ``s{i}`` takes the outputs of ``s{i-1}`` and
``s{i-10}`` (so it is a chain with skip links, not a trivial fan-out) and returns
``1``. Both record every step in a SQLite database and persist every result, so that a
second run can be answered from the cache. Each side runs in its own fresh process and
state folder; start-up (imports, database creation) is measured separately from the
run itself, and per-step overhead = run time / steps.

Run alone: ``python -m bench.engine``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any

STEPS = 200
SKIP = 10
REPEATS = 3


def _loopline_source() -> str:
    lines = ["from loopline import step", ""]
    for i in range(STEPS):
        ups = [f"s{j}" for j in (i - 1, i - SKIP) if j >= 0]
        lines += ["@step", f"def s{i}({', '.join(f'{u}: int' for u in ups)}) -> int:"]
        lines += ["    return 1", ""]
    return "\n".join(lines)


def _measure_loopline(home: str) -> dict[str, Any]:
    t0 = time.perf_counter()
    from loopline.config import Settings
    from loopline.pipeline.dag import load_pipeline
    from loopline.pipeline.runner import Runner

    pipeline_file = Path(home) / "noop.py"
    pipeline_file.write_text(_loopline_source())
    runner = Runner(Settings.load(start=home, search=False, env={}))
    pipeline = load_pipeline(pipeline_file)
    startup = time.perf_counter() - t0
    t1 = time.perf_counter()
    cold = runner.run(pipeline)
    cold_s = time.perf_counter() - t1
    if not cold.ok:
        raise RuntimeError(cold.error)
    cached_times = []
    for _ in range(REPEATS):
        t2 = time.perf_counter()
        warm = runner.run(pipeline)
        cached_times.append(time.perf_counter() - t2)
        assert all(s.status == "cached" for s in warm.steps.values())
    runner.close()
    return {"startup_s": startup, "cold_s": cold_s, "cached_s": min(cached_times)}


def _measure_prefect(home: str) -> dict[str, Any]:
    os.environ["PREFECT_HOME"] = home
    os.environ["PREFECT_LOGGING_LEVEL"] = "CRITICAL"
    os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
    os.environ["PREFECT_RESULTS_PERSIST_BY_DEFAULT"] = "true"
    os.environ["PREFECT_LOCAL_STORAGE_PATH"] = str(Path(home) / "results")
    t0 = time.perf_counter()
    from prefect import flow, task
    from prefect.cache_policies import INPUTS, TASK_SOURCE

    # Same contract as loopline: a result is reused when code and inputs are the same.
    tasks = [
        task(name=f"s{i}", cache_policy=TASK_SOURCE + INPUTS, persist_result=True)(lambda *ups: 1)
        for i in range(STEPS)
    ]

    @flow(name="noop")
    def noop() -> None:
        outputs: list[Any] = []
        for i, t in enumerate(tasks):
            ups = [outputs[j] for j in (i - 1, i - SKIP) if j >= 0]
            outputs.append(t(*ups))

    # The first flow run starts Prefect's embedded API server and creates its database.
    @flow(name="warmup")
    def warmup() -> None:
        pass

    warmup()
    startup = time.perf_counter() - t0
    t1 = time.perf_counter()
    noop()
    cold_s = time.perf_counter() - t1
    cached_times = []
    for _ in range(REPEATS):
        t2 = time.perf_counter()
        noop()
        cached_times.append(time.perf_counter() - t2)
    return {"startup_s": startup, "cold_s": cold_s, "cached_s": min(cached_times)}


def _in_subprocess(side: str) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix=f"bench-{side}-") as home:
        proc = subprocess.run(
            [sys.executable, "-m", "bench.engine", "--side", side, "--home", home],
            capture_output=True,
            text=True,
            check=False,
            cwd=Path(__file__).resolve().parent.parent,
        )
        if proc.returncode != 0:
            raise RuntimeError(f"{side} benchmark failed:\n{proc.stdout}\n{proc.stderr}")
        result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
        return result


def run() -> str:
    import prefect

    import loopline

    ours = _in_subprocess("loopline")
    peer = _in_subprocess("prefect")

    def ms(seconds: float) -> str:
        return f"{seconds * 1000 / STEPS:.2f}"

    rows = []
    for label, key in (("cold (every step runs)", "cold_s"), ("fully cached", "cached_s")):
        ratio = peer[key] / ours[key]
        rows.append(
            f"| {label} | {ms(ours[key])} | {ms(peer[key])} | {ratio:.1f}x | "
            f"{ours[key]:.2f} s | {peer[key]:.2f} s |"
        )
    table_head = (
        f"| run | loopline {loopline.__version__} ms/step | Prefect ms/step "
        f"| Prefect / loopline | loopline total | Prefect total |"
    )
    return textwrap.dedent(
        f"""\
        ## Engine overhead: 200 no-op steps, cold and cached

        A chain of {STEPS} steps, each also taking the output of the step {SKIP} back,
        each returning ``1``. Both engines record every step in SQLite and persist every
        result (loopline's artifact store; Prefect {prefect.__version__} with
        ``persist_result`` and the ``TASK_SOURCE + INPUTS`` cache policy, its embedded API
        server). Best of {REPEATS} for the cached runs. Goal: under 5 ms a step cold,
        under 1 ms cached.

        {table_head}
        |---|---:|---:|---:|---:|---:|
        {rows[0]}
        {rows[1]}

        Start-up before the first step (imports, database, Prefect's server):
        loopline {ours["startup_s"]:.2f} s, Prefect {peer["startup_s"]:.2f} s.
        """
    )


def main() -> None:
    if "--side" in sys.argv:
        side = sys.argv[sys.argv.index("--side") + 1]
        home = sys.argv[sys.argv.index("--home") + 1]
        measure = _measure_loopline if side == "loopline" else _measure_prefect
        print(json.dumps(measure(home)))
        return
    print(run())


if __name__ == "__main__":
    main()
