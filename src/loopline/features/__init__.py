"""Features: one definition for training and serving, point-in-time correct."""

from loopline.features.definition import (
    AGGREGATIONS,
    Aggregate,
    Entity,
    FeatureView,
    OnDemand,
    View,
    WindowView,
    definitions_in,
    definitions_version,
    parse_duration,
)
from loopline.features.training import TrainingSet, training_set

__all__ = [
    "AGGREGATIONS",
    "Aggregate",
    "Entity",
    "FeatureView",
    "OnDemand",
    "TrainingSet",
    "View",
    "WindowView",
    "definitions_in",
    "definitions_version",
    "parse_duration",
    "training_set",
]
