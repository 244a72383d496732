"""The model registry: versions with lineage, aliases with an audit log, and the gate."""

from loopline.registry.gate import (
    GUARDS,
    Check,
    Gate,
    Verdict,
    greater_is_better,
    measure_latency_p99,
)
from loopline.registry.models import (
    LATEST,
    ModelAuditRecord,
    ModelVersion,
    RegisteredModel,
    Registry,
)

__all__ = [
    "GUARDS",
    "LATEST",
    "Check",
    "Gate",
    "ModelAuditRecord",
    "ModelVersion",
    "RegisteredModel",
    "Registry",
    "Verdict",
    "greater_is_better",
    "measure_latency_p99",
]
