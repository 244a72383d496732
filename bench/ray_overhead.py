"""Ray's overhead per step: a pipeline of no-op steps on the local executor and on Ray.

The pipeline has ``STEPS`` independent no-op steps (each returns ``1``), so both engines
can run two at once on this machine's two cores. Each engine runs it with the cache off
(``no_cache``), so every step runs and is recorded: once cold (Ray's workers start and
import loopline and the pipeline) and ``REPEATS`` times warm. The peer is Ray itself:
``ray.get`` of ``TASKS`` no-op tasks on the same cluster, the least a task costs. The
per-step figure is the run's wall time divided by its steps; it includes loopline's
records (run, step and attempt rows in SQLite, the output artifact) on both engines.

Run alone: ``python -m bench ray_overhead``.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

from bench.common import env_int, version

STEPS = 40
REPEATS = 3
TASKS = 1000


def _source(steps: int) -> str:
    lines = ["from loopline import step", ""]
    for i in range(steps):
        lines += ["@step", f"def s{i}() -> int:", "    return 1", ""]
    return "\n".join(lines)


def _noop() -> int:
    return 1


def run() -> str:
    import ray

    from loopline.config import Settings
    from loopline.pipeline.dag import load_pipeline
    from loopline.pipeline.runner import Runner

    steps = env_int("LOOPLINE_BENCH_RAY_STEPS", STEPS, owner="bench.ray_overhead")
    figures: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-ray-") as home:
        path = Path(home) / "noop.py"
        path.write_text(_source(steps))
        pipeline = load_pipeline(path)
        started = time.perf_counter()
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
        cluster_s = time.perf_counter() - started
        try:
            for engine in ("local", "ray"):
                settings = Settings.load(start=home, search=False, env={}, engine=engine)
                runner = Runner(settings)
                times = []
                for _ in range(REPEATS + 1):
                    t0 = time.perf_counter()
                    result = runner.run(pipeline, no_cache=True, max_workers=2)
                    times.append(time.perf_counter() - t0)
                    if not result.ok:
                        raise RuntimeError(result.error)
                figures[engine] = {"cold": times[0], "warm": statistics.median(times[1:])}
            task = ray.remote(num_cpus=1)(_noop)
            ray.get([task.remote() for _ in range(50)])  # workers up
            t0 = time.perf_counter()
            ray.get([task.remote() for _ in range(TASKS)])
            raw_s = time.perf_counter() - t0
        finally:
            ray.shutdown()

    local, on_ray = figures["local"], figures["ray"]
    per = {e: f["warm"] / steps * 1000 for e, f in figures.items()}
    return "\n".join(
        [
            "## Ray: overhead per step",
            "",
            f"A pipeline of {steps} independent no-op steps, run with the cache off (every "
            f"step runs and is recorded in SQLite, its output stored) on the local thread "
            f"executor and on a local Ray cluster, both with 2 workers; {REPEATS} warm runs "
            f"after a cold one, median. The peer: {TASKS:,} no-op Ray tasks on the same "
            f"cluster. Issue 7 asks for Ray's overhead per task.",
            "",
            "| | local executor | Ray | Ray / local |",
            "|---|---:|---:|---:|",
            f"| first run ({steps} steps, s) | {local['cold']:.2f} | {on_ray['cold']:.2f} "
            f"| {on_ray['cold'] / local['cold']:.1f}x |",
            f"| warm run ({steps} steps, s) | {local['warm']:.2f} | {on_ray['warm']:.2f} "
            f"| {on_ray['warm'] / local['warm']:.1f}x |",
            f"| per step, warm (ms) | {per['local']:.1f} | {per['ray']:.1f} "
            f"| +{per['ray'] - per['local']:.1f} ms |",
            "",
            f"- Starting the local Ray cluster: {cluster_s:.1f} s.",
            f"- A no-op Ray task, {TASKS:,} in flight: {raw_s / TASKS * 1000:.2f} ms each "
            f"({TASKS / raw_s:,.0f} tasks/s); the rest of Ray's per-step cost is loopline's "
            f"task (loading the pipeline in the worker, its records, its output) and the "
            f"round trip of one task at a time per ready step.",
            f"- Versions: Ray {version('ray')}, loopline {version('loopline')}.",
            "",
        ]
    )


def main() -> None:
    print(run())


if __name__ == "__main__":
    main()
