"""Training: model adapters, hyperparameter search, evaluation and the model bundle."""

from loopline.train.adapters import (
    ADAPTERS,
    OBJECTIVES,
    LightGBMModel,
    ModelAdapter,
    Objective,
    SklearnModel,
    XGBoostModel,
    check_target,
)
from loopline.train.bundle import ModelBundle, Preprocessor, train_bundle
from loopline.train.distributed import Distributed
from loopline.train.evaluate import (
    METRICS,
    Evaluation,
    evaluate,
    get_metric,
    rolling_origin,
    summarize_folds,
    time_holdout,
)
from loopline.train.export import onnx_inputs, to_mlflow, to_onnx
from loopline.train.report import render_report
from loopline.train.search import (
    CategoricalParam,
    FloatParam,
    IntParam,
    SearchResult,
    SearchSpace,
    SearchTrial,
    lightgbm_objective,
    search,
)

__all__ = [
    "ADAPTERS",
    "METRICS",
    "OBJECTIVES",
    "CategoricalParam",
    "Distributed",
    "Evaluation",
    "FloatParam",
    "IntParam",
    "LightGBMModel",
    "ModelAdapter",
    "ModelBundle",
    "Objective",
    "Preprocessor",
    "SearchResult",
    "SearchSpace",
    "SearchTrial",
    "SklearnModel",
    "XGBoostModel",
    "check_target",
    "evaluate",
    "get_metric",
    "lightgbm_objective",
    "onnx_inputs",
    "render_report",
    "rolling_origin",
    "search",
    "summarize_folds",
    "time_holdout",
    "to_mlflow",
    "to_onnx",
    "train_bundle",
]
