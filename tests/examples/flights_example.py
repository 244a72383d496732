"""The flights example's pipeline module, loaded from its file as ``loopline run`` does.

Test modules import ``pipeline`` from here (pytest puts this folder on ``sys.path``), so
the example is loaded once, with the folder beside it importable (its ``features.py``).
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

PIPELINE_FILE = Path(__file__).resolve().parents[2] / "examples" / "flights" / "pipeline.py"


def _load_pipeline() -> ModuleType:
    if str(PIPELINE_FILE.parent) not in sys.path:
        sys.path.insert(0, str(PIPELINE_FILE.parent))
    spec = importlib.util.spec_from_file_location("flights_pipeline", PIPELINE_FILE)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


pipeline = _load_pipeline()
