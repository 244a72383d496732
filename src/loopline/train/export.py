"""Interchange: a model bundle as an ONNX model, or as an MLflow model.

``to_onnx`` exports LightGBM and XGBoost models (through onnxmltools) and scikit-learn
models whose estimator skl2onnx converts. The preprocessing is part of the graph, so the
ONNX model
takes raw columns as the bundle does: one input per feature, named after it, of shape
``[rows, 1]``; ``double`` for numeric features (NaN for missing, booleans as 0 and 1) and
``string`` for categorical ones (a value not in the vocabulary, such as ``""``, for
missing; ``onnx_inputs`` builds the inputs from a frame). Its one output, ``prediction``,
is the bundle's ``predict``: the positive-class probability or the value, as float32
(the tree and linear operators of ONNX compute in float32, so the results agree with
the bundle's to about 1e-6, not bit for bit).

``to_mlflow`` writes an MLflow model directory (pyfunc flavor) whose ``python_model``
is a short code file that reads the bundle archive kept in the model's artifacts,
checking its hash: MLflow loads it as a model from code, so nothing is unpickled.
``mlflow.pyfunc.load_model(path).predict(pandas_frame)`` gives ``bundle.predict``.

Examples
--------
>>> import polars as pl
>>> import onnxruntime
>>> from loopline.train import LightGBMModel, train_bundle
>>> rows = pl.DataFrame({"distance": [200.0, 1500.0, 300.0, 2500.0] * 10,
...                      "carrier": ["UA", "AA", "UA", "DL"] * 10,
...                      "delayed": [False, True, False, True] * 10})
>>> bundle = train_bundle(rows, features=["distance", "carrier"], label="delayed",
...                       model=LightGBMModel(num_rounds=5, min_data_in_leaf=2))
>>> session = onnxruntime.InferenceSession(to_onnx(bundle))
>>> [i.name for i in session.get_inputs()], [o.name for o in session.get_outputs()]
(['distance', 'carrier'], ['prediction'])
>>> (predicted,) = session.run(None, onnx_inputs(bundle, rows))
>>> bool(abs(predicted - bundle.predict(rows)).max() < 1e-5)
True
"""

from __future__ import annotations

import contextlib
import json
import logging
import tempfile
import warnings
from collections.abc import Iterator, Sequence
from os import PathLike
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import numpy.typing as npt
import polars as pl

from loopline.errors import LooplineError, TrainingError
from loopline.train.adapters import LightGBMModel, ModelAdapter, SklearnModel, XGBoostModel
from loopline.train.bundle import Frame, ModelBundle, _as_frame, _require_columns, _version

__all__ = ["ONNX_OUTPUT", "ONNX_TYPES", "onnx_inputs", "to_mlflow", "to_onnx"]

ONNX_OUTPUT = "prediction"
"""The name of the exported ONNX model's one output."""
ONNX_TYPES: tuple[type[ModelAdapter], ...] = (LightGBMModel, XGBoostModel, SklearnModel)
"""The adapters ``to_onnx`` exports (scikit-learn: the estimators skl2onnx converts)."""

_OPSET = 15  # the highest opset onnxmltools' LightGBM converter supports
_MODEL = "loopline_model/"  # prefixed to the converted model's names, so features cannot clash
_PRE = "loopline_pre/"
_INPUT = "loopline_features"


def _onnx() -> ModuleType:
    try:
        import onnx
        import onnx.compose
    except ImportError as exc:
        raise TrainingError(
            "ONNX export needs the onnx packages, which are not installed. Install them with: "
            "pip install 'loopline[onnx]'",
        ) from exc
    return onnx


@contextlib.contextmanager
def _conversion(model: ModelAdapter, converter: str) -> Iterator[None]:
    """The converters' failures (an estimator they do not know, say) as ``TrainingError``."""
    try:
        yield
    except ImportError as exc:
        raise TrainingError(
            f"ONNX export of {type(model).__name__} needs {converter}, which is not installed. "
            "Install it with: pip install 'loopline[onnx]'",
        ) from exc
    except LooplineError:
        raise
    except (RuntimeError, ValueError, TypeError, KeyError, AttributeError) as exc:
        first = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
        raise TrainingError(
            f"{converter} cannot convert {model!r} to ONNX: {first}. ONNX export covers "
            "LightGBMModel, XGBoostModel and SklearnModel with estimators skl2onnx supports; "
            "export this model with to_mlflow instead.",
            kind=model.kind,
        ) from exc


def _convert(model: ModelAdapter, width: int) -> tuple[Any, str, int | None]:
    """The model alone as ONNX, on a float input of ``width`` columns named ``_INPUT``;
    with the output holding its predictions and, for a classifier, the column of the
    positive class."""
    if isinstance(model, LightGBMModel):
        with _conversion(model, "onnxmltools"):
            from onnxmltools import convert_lightgbm
            from onnxmltools.convert.common.data_types import FloatTensorType

            converted = convert_lightgbm(
                model.booster_,
                initial_types=[(_INPUT, FloatTensorType([None, width]))],
                target_opset=_OPSET,
                zipmap=False,
            )
        positive = 1 if model.objective == "binary" else None
    elif isinstance(model, XGBoostModel):
        with _conversion(model, "onnxmltools"):
            from onnxmltools import convert_xgboost
            from onnxmltools.convert.common.data_types import FloatTensorType

            # The converter reads features by position, named f0, f1, ...: a copy of
            # the booster is renamed so (the bundle's own keeps the real names).
            booster = model.booster_.copy()
            booster.feature_names = [f"f{i}" for i in range(width)]
            converted = convert_xgboost(
                booster,
                initial_types=[(_INPUT, FloatTensorType([None, width]))],
                target_opset=_OPSET,
            )
        positive = 1 if model.objective == "binary" else None
    elif isinstance(model, SklearnModel):
        with _conversion(model, "skl2onnx"):
            from skl2onnx import convert_sklearn
            from skl2onnx.common.data_types import FloatTensorType

            estimator = model.estimator_
            final = estimator.steps[-1][1] if hasattr(estimator, "steps") else estimator
            converted = convert_sklearn(
                estimator,
                initial_types=[(_INPUT, FloatTensorType([None, width]))],
                target_opset=_OPSET,
                options={id(final): {"zipmap": False}} if model.objective == "binary" else None,
            )
        positive = model.positive_index_ if model.objective == "binary" else None
    else:
        supported = ", ".join(t.__name__ for t in ONNX_TYPES)
        raise TrainingError(
            f"ONNX export supports {supported} (scikit-learn estimators that skl2onnx "
            f"converts); this bundle holds a {type(model).__name__}. Export it with "
            "to_mlflow instead, or train one of the supported types.",
            kind=model.kind,
        )
    outputs = [o.name for o in converted.graph.output]
    if positive is None:
        return converted, outputs[0], None
    named = [name for name in outputs if "probabilit" in name]
    return converted, (named or outputs[1:2] or outputs)[0], positive


def to_onnx(bundle: ModelBundle) -> bytes:
    """The bundle, preprocessing included, as a serialized ONNX model (see the module).

    Raises
    ------
    TrainingError
        The bundle's model type cannot be exported (the message lists those that can),
        or a feature is named like the graph's own values (``prediction``, ``loopline_*``).
    """
    onnx = _onnx()
    from onnx import TensorProto, helper, numpy_helper

    features = bundle.features
    clashes = [name for name in features if name == ONNX_OUTPUT or name.startswith("loopline_")]
    if clashes:
        raise TrainingError(
            f"Feature(s) {', '.join(map(repr, clashes))} cannot be ONNX input names: "
            f"'{ONNX_OUTPUT}' and names starting with 'loopline_' are the graph's own. Rename "
            "them in the training set.",
            columns=clashes,
        )
    converted, output, positive = _convert(bundle.model, len(features))
    model = onnx.compose.add_prefix(converted, _MODEL)
    pre = bundle.preprocessor
    missing = pre.missing_codes_
    nodes: list[Any] = []
    initializers: list[Any] = []
    inputs: list[Any] = []
    columns: list[str] = []

    def constant(name: str, value: Any, dtype: Any) -> str:
        if not any(init.name == _PRE + name for init in initializers):
            array = np.asarray(value, dtype=dtype)
            initializers.append(numpy_helper.from_array(array, _PRE + name))
        return _PRE + name

    for i, name in enumerate(features):
        at = f"{_PRE}{i}/"
        if name in pre.vocabulary_:
            inputs.append(helper.make_tensor_value_info(name, TensorProto.STRING, [None, 1]))
            vocabulary = list(pre.vocabulary_[name])
            unseen = -1 if np.isnan(missing[name]) else len(vocabulary)
            # LabelEncoder needs one key at least: a column with no training value maps
            # every value to "missing".
            keys = vocabulary or ["\x00"]
            values = list(range(len(vocabulary))) or [unseen]
            nodes.append(
                helper.make_node(
                    "LabelEncoder",
                    [name],
                    [at + "code"],
                    domain="ai.onnx.ml",
                    keys_strings=keys,
                    values_int64s=values,
                    default_int64=unseen,
                )
            )
            nodes.append(helper.make_node("Cast", [at + "code"], [at + "float"], to=1))
            if unseen < 0:
                zero, nan = constant("zero", 0.0, np.float32), constant("nan", np.nan, np.float32)
                nodes.append(helper.make_node("Less", [at + "float", zero], [at + "unseen"]))
                nodes.append(helper.make_node("Where", [at + "unseen", nan, at + "float"], [at]))
            else:
                nodes.append(helper.make_node("Identity", [at + "float"], [at]))
        else:
            inputs.append(helper.make_tensor_value_info(name, TensorProto.DOUBLE, [None, 1]))
            nodes.append(helper.make_node("Cast", [name], [at + "float"], to=1))
            if name in pre.fill_values_:
                fill = constant(f"{i}/fill", pre.fill_values_[name], np.float32)
                nodes.append(helper.make_node("IsNaN", [at + "float"], [at + "nan"]))
                nodes.append(helper.make_node("Where", [at + "nan", fill, at + "float"], [at]))
            else:
                nodes.append(helper.make_node("Identity", [at + "float"], [at]))
        columns.append(at)
    nodes.append(helper.make_node("Concat", columns, [_MODEL + _INPUT], axis=1))
    tail: list[Any] = []
    if positive is None:
        shape = constant("shape", [-1], np.int64)
        tail.append(helper.make_node("Reshape", [_MODEL + output, shape], [ONNX_OUTPUT]))
    else:
        column = constant("positive", positive, np.int64)
        tail.append(helper.make_node("Gather", [_MODEL + output, column], [ONNX_OUTPUT], axis=1))

    graph = helper.make_graph(
        [*nodes, *model.graph.node, *tail],
        "loopline_bundle",
        inputs,
        [helper.make_tensor_value_info(ONNX_OUTPUT, TensorProto.FLOAT, [None])],
        initializer=[*model.graph.initializer, *initializers],
        value_info=list(model.graph.value_info),
    )
    versions: dict[str, int] = {"": 9}
    if pre.vocabulary_:
        versions["ai.onnx.ml"] = 2  # LabelEncoder from strings to int64
    for opset in model.opset_import:
        versions[opset.domain] = max(versions.get(opset.domain, 0), int(opset.version))
    exported = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid(d, v) for d, v in sorted(versions.items())],
        ir_version=model.ir_version,
        producer_name="loopline",
        producer_version=_version("loopline"),
        doc_string=f"loopline model bundle {bundle.content_hash} ({bundle!r})",
    )
    exported.functions.extend(model.functions)
    helper.set_model_props(
        exported,
        {
            "loopline.bundle_sha256": bundle.content_hash,
            "loopline.objective": bundle.objective,
            "loopline.label": bundle.label,
            "loopline.features": json.dumps(list(features)),
        },
    )
    try:
        onnx.checker.check_model(exported)
    except onnx.checker.ValidationError as exc:  # pragma: no cover - a bug of ours
        raise TrainingError(f"The exported ONNX graph is not valid: {exc}.") from exc
    return bytes(exported.SerializeToString())


def _missing_text(vocabulary: Sequence[str]) -> str:
    """A string that is in no vocabulary entry: how a null category reaches ONNX."""
    if "" not in vocabulary:
        return ""
    return "\x00" * (max(map(len, vocabulary)) + 1)


def onnx_inputs(bundle: ModelBundle, frame: Frame) -> dict[str, npt.NDArray[Any]]:
    """The inputs of ``to_onnx(bundle)`` for ``frame``'s rows (raw, as for ``predict``)."""
    rows = _as_frame(frame, "frame")
    features = bundle.features
    _require_columns(rows, features, "The rows to predict")
    pre = bundle.preprocessor
    feeds: dict[str, npt.NDArray[Any]] = {}
    for name in features:
        column = rows.get_column(name)
        if name in pre.vocabulary_:
            text = column.cast(pl.String).fill_null(_missing_text(pre.vocabulary_[name]))
            feeds[name] = np.array(text.to_list(), dtype=object).reshape(-1, 1)
        else:
            try:
                numbers = column.cast(pl.Float64, strict=True)
            except pl.exceptions.PolarsError as exc:
                raise TrainingError(
                    f"The column {name!r} ({column.dtype}) cannot be read as the model's "
                    f"{pre.schema_[name]} feature. Give it numbers.",
                    column=name,
                ) from exc
            feeds[name] = numbers.to_numpy().astype(np.float64).reshape(-1, 1)
    return feeds


# -- MLflow -------------------------------------------------------------------------------

_PYFUNC_FILE = "loopline_pyfunc.py"
_PYFUNC_CODE = '''"""An MLflow pyfunc model that predicts with a loopline model bundle.

Written by loopline.train.export.to_mlflow. MLflow loads it as a model from code, so
nothing in this model directory is unpickled; the bundle's hash is checked on load.
"""

from __future__ import annotations

from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
from mlflow.pyfunc import PythonModel


class LooplineBundleModel(PythonModel):
    def load_context(self, context):
        from loopline.train.bundle import ModelBundle

        data = Path(context.artifacts["bundle"]).read_bytes()
        expected = (context.model_config or {}).get("bundle_sha256")
        self.bundle = ModelBundle.from_bytes(data, expected_hash=expected)

    def predict(self, context, model_input: pd.DataFrame, params=None) -> np.ndarray:
        return self.bundle.predict(model_input)


mlflow.models.set_model(LooplineBundleModel())
'''


@contextlib.contextmanager
def _quiet_mlflow() -> Iterator[None]:
    """MLflow warns (with warnings and log lines) about signatures, input examples and
    type hints that a bundle does not need: it checks its own inputs."""
    logger = logging.getLogger("mlflow")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            warnings.simplefilter("ignore", FutureWarning)
            yield
    finally:
        logger.setLevel(level)


def _mlflow() -> ModuleType:
    try:
        with _quiet_mlflow():
            import mlflow
            import mlflow.pyfunc
    except ImportError as exc:
        raise TrainingError(
            "MLflow export needs mlflow, which is not installed. Install it with: "
            "pip install 'loopline[mlflow]'",
        ) from exc
    return mlflow


def _requirements(bundle: ModelBundle) -> list[str]:
    loopline = _version("loopline")
    pins = ["loopline" if loopline == "unknown" else f"loopline=={loopline}"]
    model = bundle.model
    if isinstance(model, LightGBMModel):
        pins.append(f"lightgbm=={model.library_version}")
    elif isinstance(model, SklearnModel):
        pins += [f"scikit-learn=={_version('scikit-learn')}", f"skops=={_version('skops')}"]
    else:
        pins.append(f"xgboost=={model.library_version}")
    return pins


def to_mlflow(bundle: ModelBundle, path: str | PathLike[str]) -> Path:
    """Write ``bundle`` as an MLflow model directory (pyfunc flavor) at ``path``.

    The directory holds MLflow's ``MLmodel``, the pinned requirements, the pyfunc code
    file and, in ``artifacts/``, the bundle archive. ``path`` must not exist yet.
    """
    target = Path(path)
    if target.exists():
        raise TrainingError(
            f"{target} already exists; an MLflow model is written to a new directory. Choose "
            "another path, or remove the old model first.",
            path=str(target),
        )
    mlflow = _mlflow()
    with tempfile.TemporaryDirectory(prefix="loopline-mlflow-") as scratch:
        archive = Path(scratch, "model.loopline")
        archive.write_bytes(bundle.to_bytes())
        code = Path(scratch, _PYFUNC_FILE)
        code.write_text(_PYFUNC_CODE)
        try:
            with _quiet_mlflow():
                mlflow.pyfunc.save_model(
                    str(target),
                    python_model=str(code),
                    artifacts={"bundle": str(archive)},
                    model_config={"bundle_sha256": bundle.content_hash},
                    pip_requirements=_requirements(bundle),
                    metadata={
                        "loopline_bundle_sha256": bundle.content_hash,
                        "loopline_objective": bundle.objective,
                        "loopline_label": bundle.label,
                        "loopline_features": list(bundle.features),
                    },
                )
        except mlflow.exceptions.MlflowException as exc:
            raise TrainingError(
                f"MLflow could not write the model to {target}: {exc}.", path=str(target)
            ) from exc
    return target
