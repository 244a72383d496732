"""Pipeline engine: steps wired by argument name, cached by content, run by an executor."""

from loopline.pipeline.context import log_metrics
from loopline.pipeline.step import Step, step

__all__ = ["Step", "log_metrics", "step"]
