"""Interchange: ONNX export with its preprocessing (parity with the bundle on raw rows,
1e-5 on probabilities, through onnxruntime) and MLflow export (loaded with mlflow itself).
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime
import polars as pl
import pytest
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.semi_supervised import LabelSpreading

from loopline.errors import ArtifactCorruptedError, TrainingError
from loopline.train import (
    LightGBMModel,
    ModelAdapter,
    ModelBundle,
    SklearnModel,
    XGBoostModel,
    onnx_inputs,
    to_mlflow,
    to_onnx,
    train_bundle,
)
from loopline.train.export import ONNX_OUTPUT

FEATURES = ["distance", "wind", "carrier", "origin", "seats", "night"]
LABEL = "delayed"


def rows(count: int, seed: int, carriers: tuple[str, ...] = ("AA", "DL", "UA")) -> pl.DataFrame:
    rng = np.random.default_rng(seed)
    distance = rng.uniform(100, 2500, count)
    wind = rng.normal(10, 5, count)
    wind[rng.random(count) < 0.1] = np.nan
    carrier = rng.choice(carriers, count)
    night = rng.random(count) < 0.3
    score = (distance > 1200) + 0.1 * np.nan_to_num(wind) + (carrier == carriers[0]) + night
    frame = pl.DataFrame(
        {
            "distance": distance,
            "wind": wind,
            "carrier": carrier,
            "origin": rng.choice(["EWR", "JFK", "LGA"], count),
            "seats": rng.integers(50, 300, count),
            "night": night,
            LABEL: score + rng.normal(0, 0.7, count) > 1.5,
            "amount": score * 100 + rng.normal(0, 10, count),
        }
    )
    every = pl.int_range(count)
    return frame.with_columns(
        pl.when(every % 13 == 0).then(None).otherwise("carrier").alias("carrier"),
        pl.when(every % 11 == 0).then(None).otherwise("distance").alias("distance"),
    )


TRAIN = rows(1500, seed=1)
# Later rows: carriers never seen in training, nulls and NaN.
SCORED = pl.concat([rows(300, seed=2, carriers=("AA", "B6", "WN")), TRAIN.head(300)])

EXPORTABLE = [
    pytest.param(
        lambda: LightGBMModel(num_rounds=30, min_data_in_leaf=10, num_threads=1),
        LABEL,
        id="lightgbm",
    ),
    pytest.param(
        lambda: LightGBMModel(
            objective="regression", num_rounds=30, min_data_in_leaf=10, num_threads=1
        ),
        "amount",
        id="lightgbm-regression",
    ),
    pytest.param(
        lambda: XGBoostModel(num_rounds=30, max_depth=4, num_threads=1), LABEL, id="xgboost"
    ),
    pytest.param(
        lambda: XGBoostModel(objective="regression", num_rounds=30, max_depth=4, num_threads=1),
        "amount",
        id="xgboost-regression",
    ),
    pytest.param(
        lambda: SklearnModel(estimator=make_pipeline(StandardScaler(), LogisticRegression())),
        LABEL,
        id="sklearn",
    ),
    pytest.param(
        lambda: SklearnModel(
            estimator=make_pipeline(StandardScaler(), Ridge()), objective="regression"
        ),
        "amount",
        id="sklearn-regression",
    ),
]


def _train(model: ModelAdapter, label: str = LABEL) -> ModelBundle:
    features = FEATURES if label == LABEL else [f for f in FEATURES if f != "night"]
    return train_bundle(
        TRAIN.drop(LABEL if label != LABEL else "amount"),
        features=features,
        label=label,
        model=model,
    )


def _session(model: bytes) -> onnxruntime.InferenceSession:
    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3  # onnxruntime's notes on shapes are not ours to fix
    return onnxruntime.InferenceSession(model, options, providers=["CPUExecutionProvider"])


# -- ONNX ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("make", "label"), EXPORTABLE)
def test_onnx_export_predicts_like_the_bundle_on_raw_rows(
    make: Callable[[], ModelAdapter], label: str
) -> None:
    bundle = _train(make(), label)
    session = _session(to_onnx(bundle))
    assert [i.name for i in session.get_inputs()] == list(bundle.features)
    assert [o.name for o in session.get_outputs()] == [ONNX_OUTPUT]
    (predicted,) = session.run(None, onnx_inputs(bundle, SCORED))
    expected = bundle.predict(SCORED)
    assert predicted.shape == expected.shape
    if bundle.objective == "binary":
        np.testing.assert_allclose(predicted, expected, rtol=0, atol=1e-5)
    else:  # values in the hundreds, computed in float32
        np.testing.assert_allclose(predicted, expected, rtol=1e-5, atol=1e-3)


def test_onnx_graph_holds_the_preprocessing() -> None:
    bundle = _train(LightGBMModel(num_rounds=5, num_threads=1))
    model = onnx.load_from_string(to_onnx(bundle))
    encoders = [n for n in model.graph.node if n.op_type == "LabelEncoder"]
    assert [n.input[0] for n in encoders] == ["carrier", "origin"]
    carrier = next(a for a in encoders[0].attribute if a.name == "keys_strings")
    assert [s.decode() for s in carrier.strings] == list(bundle.preprocessor.vocabulary_["carrier"])
    types = {i.name: i.type.tensor_type.elem_type for i in model.graph.input}
    assert types["carrier"] == onnx.TensorProto.STRING
    assert types["distance"] == onnx.TensorProto.DOUBLE
    props = {p.key: p.value for p in model.metadata_props}
    assert props["loopline.bundle_sha256"] == bundle.content_hash
    onnx.checker.check_model(model)


def test_onnx_with_imputation_fills_like_the_bundle() -> None:
    imputed = train_bundle(
        TRAIN,
        features=FEATURES,
        label=LABEL,
        model=LightGBMModel(num_rounds=20, num_threads=1),
        impute="mean",
    )
    assert imputed.preprocessor.fill_values_["wind"] == pytest.approx(
        float(np.nanmean(TRAIN.get_column("wind").to_numpy()))
    )
    (predicted,) = _session(to_onnx(imputed)).run(None, onnx_inputs(imputed, SCORED))
    np.testing.assert_allclose(predicted, imputed.predict(SCORED), rtol=0, atol=1e-5)


class MeanModel(ModelAdapter):
    """A model kind of a user's own: predicts the training mean. ONNX does not know it."""

    kind = "mean"
    file_name = "mean.json"
    handles_missing = True

    def __init__(self, *, objective: str = "binary") -> None:
        self.objective = objective  # type: ignore[assignment]

    @classmethod
    def _library(cls) -> Any:
        return np

    @classmethod
    def _native_errors(cls) -> tuple[type[Exception], ...]:
        return (ValueError,)

    def _check(self) -> None:
        pass

    def _fit(self, x: Any, y: Any, names: Any, categorical: Any) -> None:
        self.mean_ = float(y.mean())

    def _predict(self, x: Any) -> Any:
        return np.full(len(x), self.mean_)

    def _to_bytes(self) -> bytes:
        return json.dumps({"mean": self.mean_, "width": self.n_features_in_}).encode()

    @classmethod
    def _read(cls, data: bytes, params: dict[str, Any]) -> Any:
        params.setdefault("objective", "binary")
        return json.loads(data)

    def _adopt(self, native: Any) -> None:
        self.mean_ = native["mean"]
        self.n_features_in_ = native["width"]
        self.feature_names_in_ = tuple(f"f{i}" for i in range(self.n_features_in_))


def test_onnx_export_refuses_unsupported_models() -> None:
    mean = _train(MeanModel())
    assert np.array_equal(mean.predict(SCORED), np.full(SCORED.height, TRAIN[LABEL].mean()))
    with pytest.raises(
        TrainingError,
        match=r"ONNX export supports LightGBMModel, XGBoostModel, SklearnModel .*this bundle "
        r"holds a MeanModel\. Export it with to_mlflow instead",
    ):
        to_onnx(mean)
    spreading = _train(SklearnModel(estimator=LabelSpreading(max_iter=50)))
    with pytest.raises(
        TrainingError, match=r"skl2onnx cannot convert .*LabelSpreading.*to_mlflow instead"
    ):
        to_onnx(spreading)


def test_onnx_export_refuses_features_named_like_graph_values() -> None:
    renamed = TRAIN.rename({"wind": "prediction"})
    bundle = train_bundle(
        renamed,
        features=["distance", "prediction"],
        label=LABEL,
        model=LightGBMModel(num_rounds=3, num_threads=1),
    )
    with pytest.raises(TrainingError, match=r"'prediction'.*cannot be ONNX input names"):
        to_onnx(bundle)


# -- MLflow -------------------------------------------------------------------------------


def _load_mlflow(path: Path) -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # MLflow's notes on type hints
        import mlflow.pyfunc

        return mlflow.pyfunc.load_model(str(path))


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(lambda: LightGBMModel(num_rounds=10, num_threads=1), id="lightgbm"),
        pytest.param(lambda: XGBoostModel(num_rounds=10, num_threads=1), id="xgboost"),
    ],
)
def test_mlflow_model_predicts_exactly_like_the_bundle(
    make: Callable[[], ModelAdapter], tmp_path: Path
) -> None:
    bundle = _train(make())
    target = to_mlflow(bundle, tmp_path / "model")
    files = {p.relative_to(target).as_posix() for p in target.rglob("*") if p.is_file()}
    assert {
        "MLmodel",
        "loopline_pyfunc.py",
        "artifacts/model.loopline",
        "requirements.txt",
    } <= files
    assert not [name for name in files if name.endswith((".pkl", ".pickle", ".cloudpickle"))]
    assert (target / "artifacts/model.loopline").read_bytes() == bundle.to_bytes()
    requirements = (target / "requirements.txt").read_text()
    assert "loopline" in requirements
    assert bundle.model.kind in requirements
    loaded = _load_mlflow(target)
    frame = SCORED.to_pandas()
    frame["unused"] = 1  # extra columns are ignored, as by the bundle
    assert np.array_equal(np.asarray(loaded.predict(frame)), bundle.predict(SCORED))


def test_mlflow_model_checks_the_bundle_hash_on_load(tmp_path: Path) -> None:
    bundle = _train(LightGBMModel(num_rounds=3, num_threads=1))
    target = to_mlflow(bundle, tmp_path / "model")
    archive = target / "artifacts/model.loopline"
    other = _train(LightGBMModel(num_rounds=4, num_threads=1))
    archive.write_bytes(other.to_bytes())  # a valid bundle, but not the exported one
    with pytest.raises(ArtifactCorruptedError, match=r"not the .* recorded for it"):
        _load_mlflow(target)


def test_mlflow_export_refuses_an_existing_directory(tmp_path: Path) -> None:
    (tmp_path / "model").mkdir()
    with pytest.raises(TrainingError, match=r"already exists; an MLflow model is written to a new"):
        to_mlflow(_train(LightGBMModel(num_rounds=3, num_threads=1)), tmp_path / "model")
