"""The serving tests' shared setup.

Importing Feast (the feature tests do, in the same process) sets
``PROMETHEUS_MULTIPROC_DIR``, which switches prometheus_client into its multi-process
mode: for metrics made after prometheus_client is imported with it set, and for some
calls whenever it is set. The root conftest imports prometheus_client first, and the
variable is removed for these tests.
"""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _single_process_metrics(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)
    monkeypatch.delenv("prometheus_multiproc_dir", raising=False)
