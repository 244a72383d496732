"""The model bundle: everything needed to turn raw rows into predictions, in one file.

A ``ModelBundle`` holds the fitted preprocessing (``Preprocessor``: category codes from a
sorted vocabulary and, for models that need them, fill values, all learned from the
training rows only), the fitted model adapter, the ordered feature list, the input
schema, the training data's profile, metrics and free-form metadata. ``predict`` takes
raw rows with the training set's columns and applies the preprocessing itself, so the
rows a model is served are encoded exactly as the rows it learned from.

``to_bytes`` writes one deterministic zip archive (fixed timestamps and member order):

- ``manifest.json``: the format, every other file with its sha256 and size, the model's
  kind, parameters and library version, the label, features, schema, metrics, metadata;
- ``manifest.sha256``: the manifest's own hash;
- ``preprocessing.json``, ``profile.json`` and the native model file (``model.txt``,
  ``model.json`` or ``model.skops``).

``from_bytes`` checks the manifest against its hash, every file against the manifest,
and, when given, the whole archive against the hash the caller recorded (the artifact
store's content hash), and raises ``ArtifactCorruptedError`` naming what changed.

A bundle returned by a pipeline step is stored as an artifact of kind ``model_bundle``.

Examples
--------
>>> import polars as pl
>>> rows = pl.DataFrame({"distance": [200.0, 1500.0, 300.0, 2500.0] * 10,
...                      "carrier": ["UA", "AA", "UA", "DL"] * 10,
...                      "delayed": [False, True, False, True] * 10})
>>> bundle = train_bundle(rows, features=["distance", "carrier"], label="delayed",
...                       model=LightGBMModel(num_rounds=5, min_data_in_leaf=2))
>>> bundle.features, bundle.preprocessor.vocabulary_["carrier"]
(('distance', 'carrier'), ('AA', 'DL', 'UA'))
>>> again = ModelBundle.from_bytes(bundle.to_bytes())
>>> bool((again.predict(rows) == bundle.predict(rows)).all())
True
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import io
import json
import math
import zipfile
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import cached_property
from typing import IO, Any, Literal, Self, TypeAlias

import numpy as np
import numpy.typing as npt
import polars as pl
import pyarrow as pa

from loopline.data.profile import Profile, profile_table
from loopline.errors import ArtifactCorruptedError, ContractError, TrainingError
from loopline.store.artifacts import register_codec
from loopline.train.adapters import (
    LightGBMModel,
    ModelAdapter,
    adapter_class,
    check_target,
)
from loopline.train.distributed import Distributed, check_supported, fit_distributed

__all__ = [
    "FORMAT",
    "IMPUTE",
    "ModelBundle",
    "Preprocessor",
    "train_bundle",
]

FORMAT = "loopline.model_bundle/1"
IMPUTE = ("auto", "none", "median", "mean")
"""``impute`` choices: ``auto`` is ``none`` for models that take missing values natively
(LightGBM, XGBoost) and ``median`` for the others."""

Impute = Literal["auto", "none", "median", "mean"]
Frame: TypeAlias = pl.DataFrame | pa.Table
"""Rows: a polars DataFrame or a pyarrow Table (a pandas DataFrame is taken too)."""

MANIFEST = "manifest.json"
MANIFEST_HASH = "manifest.sha256"
PREPROCESSING = "preprocessing.json"
PROFILE = "profile.json"

_EPOCH = (1980, 1, 1, 0, 0, 0)


def _as_frame(frame: Any, what: str) -> pl.DataFrame:
    if isinstance(frame, pl.DataFrame):
        return frame
    if isinstance(frame, pa.Table):
        converted = pl.from_arrow(frame)
        assert isinstance(converted, pl.DataFrame)  # a Table always converts to a frame
        return converted
    if type(frame).__module__.startswith("pandas") and type(frame).__name__ == "DataFrame":
        return pl.DataFrame(pl.from_pandas(frame))
    raise TrainingError(
        f"The {what!r} parameter must be a polars DataFrame, a pyarrow Table or a pandas "
        f"DataFrame. Got {type(frame).__name__}.",
        parameter=what,
    )


def _is_text(dtype: pl.DataType) -> bool:
    return dtype == pl.String or isinstance(dtype, pl.Categorical | pl.Enum)


def _is_number(dtype: pl.DataType) -> bool:
    return dtype.is_numeric() or dtype == pl.Boolean or dtype == pl.Null


def _json(value: Any) -> bytes:
    """Deterministic JSON (sorted keys) that keeps NaN and infinities, as Python spells them."""
    return json.dumps(
        value, sort_keys=True, indent=1, allow_nan=True, default=_plain, ensure_ascii=False
    ).encode()


def _plain(value: Any) -> Any:
    if hasattr(value, "tolist"):  # numpy scalars and arrays
        return value.tolist()
    raise TypeError(f"a {type(value).__name__} is not JSON-able")


# -- preprocessing ------------------------------------------------------------------------


class Preprocessor:
    """Raw rows to the model's float matrix: category codes, numbers, fill values.

    A categorical feature's code is its value's position in the sorted list of the
    values seen in training (``vocabulary_``), so codes depend on the set of training
    values alone, not on their order. A value never seen in training, and a null, is
    missing: NaN with ``impute='none'``; otherwise the code ``len(vocabulary)``, one past
    the last. Numeric features (booleans as 0 and 1) are taken as float64; with
    ``impute='median'`` or ``'mean'`` their nulls and NaNs become the training rows'
    median or mean (``fill_values_``; 0.0 for a column with no value at all).

    Parameters
    ----------
    features
        The feature columns, in the order the model sees them.
    categorical
        The features to encode as categories; None takes every text (String,
        Categorical, Enum) feature.
    impute
        ``'none'``, ``'median'`` or ``'mean'``.

    Examples
    --------
    >>> rows = pl.DataFrame({"carrier": ["UA", "AA", None], "distance": [100, None, 300]})
    >>> pre = Preprocessor(features=["carrier", "distance"], impute="median").fit(rows)
    >>> pre.vocabulary_, pre.fill_values_
    ({'carrier': ('AA', 'UA')}, {'distance': 200.0})
    >>> pre.transform(pl.DataFrame({"carrier": ["UA", "ZZ"], "distance": [None, 5]}))
    array([[  1., 200.],
           [  2.,   5.]])
    """

    categorical_: tuple[str, ...]
    vocabulary_: dict[str, tuple[str, ...]]
    fill_values_: dict[str, float]
    schema_: dict[str, str]

    def __init__(
        self,
        *,
        features: Sequence[str],
        categorical: Sequence[str] | None = None,
        impute: Literal["none", "median", "mean"] = "none",
    ) -> None:
        self.features = features
        self.categorical = categorical
        self.impute = impute

    def _check_params(self) -> tuple[str, ...]:
        features = self.features
        if (
            isinstance(features, str)
            or not isinstance(features, Sequence)
            or not features
            or not all(isinstance(name, str) for name in features)
        ):
            raise TrainingError(
                "The 'features' parameter of Preprocessor must be a non-empty list of column "
                f"names. Got {features!r}.",
                parameter="features",
            )
        repeated = sorted({name for name in features if list(features).count(name) > 1})
        if repeated:
            raise TrainingError(
                f"The 'features' parameter of Preprocessor names {', '.join(map(repr, repeated))} "
                "more than once; give each feature once.",
                parameter="features",
            )
        if self.impute not in ("none", "median", "mean"):
            raise TrainingError(
                "The 'impute' parameter of Preprocessor must be one of 'none', 'median' or "
                f"'mean'. Got {self.impute!r}.",
                parameter="impute",
            )
        categorical = self.categorical
        if categorical is not None:
            if isinstance(categorical, str) or not all(isinstance(c, str) for c in categorical):
                raise TrainingError(
                    "The 'categorical' parameter of Preprocessor must be a list of feature "
                    f"names or None. Got {categorical!r}.",
                    parameter="categorical",
                )
            unknown = [name for name in categorical if name not in features]
            if unknown:
                raise TrainingError(
                    f"The 'categorical' parameter of Preprocessor names "
                    f"{', '.join(map(repr, unknown))}, which are not among the features "
                    f"({', '.join(features)}). List only features.",
                    parameter="categorical",
                )
        return tuple(features)

    @property
    def is_fitted(self) -> bool:
        return hasattr(self, "schema_")

    def fit(self, frame: Frame) -> Self:
        """Learn vocabularies, fill values and the input schema from the training rows."""
        features = self._check_params()
        rows = _as_frame(frame, "frame")
        _require_columns(rows, features, "The training rows")
        schema = {name: rows.schema[name] for name in features}
        if self.categorical is None:
            categorical = tuple(name for name in features if _is_text(schema[name]))
        else:
            categorical = tuple(name for name in features if name in self.categorical)
        for name in features:
            dtype = schema[name]
            if name in categorical:
                if not (_is_text(dtype) or _is_number(dtype)):
                    raise TrainingError(
                        f"The categorical feature {name!r} is a {dtype} column; a category "
                        "must be text, a number or a boolean. Derive a categorical column "
                        "from it, or leave it out of the features.",
                        column=name,
                    )
            elif not _is_number(dtype):
                hint = (
                    "list it in 'categorical' to encode it by its training vocabulary"
                    if _is_text(dtype)
                    else "derive a numeric feature from it (an hour, an age in days)"
                )
                raise TrainingError(
                    f"The feature {name!r} is a {dtype} column, which a model cannot take as "
                    f"a number: {hint}.",
                    column=name,
                )
        self.categorical_ = categorical
        self.vocabulary_ = {
            name: tuple(
                rows.get_column(name).cast(pl.String).drop_nulls().unique().sort().to_list()
            )
            for name in categorical
        }
        self.fill_values_ = {}
        if self.impute != "none":
            for name in features:
                if name in categorical:
                    continue
                values = rows.get_column(name).cast(pl.Float64).fill_nan(None).drop_nulls()
                stat = values.median() if self.impute == "median" else values.mean()
                fill = float(stat) if isinstance(stat, int | float) else math.nan
                self.fill_values_[name] = fill if math.isfinite(fill) else 0.0
        self.schema_ = {name: str(schema[name]) for name in features}
        self.__dict__.pop("_expressions", None)
        self.__dict__.pop("_codes", None)
        return self

    @property
    def missing_codes_(self) -> dict[str, float]:
        """The code a missing or unseen category gets: NaN, or one past the vocabulary."""
        return {
            name: math.nan if self.impute == "none" else float(len(vocabulary))
            for name, vocabulary in self.vocabulary_.items()
        }

    @cached_property
    def _expressions(self) -> list[pl.Expr]:
        missing = self.missing_codes_
        expressions = []
        for name in self.features:
            column = pl.col(name)
            if name in self.vocabulary_:
                vocabulary = self.vocabulary_[name]
                code = missing[name]
                expression = column.cast(pl.String).replace_strict(
                    pl.Series(vocabulary, dtype=pl.String),
                    pl.Series(np.arange(len(vocabulary), dtype=np.float64)),
                    default=None if math.isnan(code) else code,
                    return_dtype=pl.Float64,
                )
            else:
                expression = column.cast(pl.Float64, strict=True)
                if name in self.fill_values_:
                    fill = self.fill_values_[name]
                    expression = expression.fill_nan(fill).fill_null(fill)
            expressions.append(expression.alias(name))
        return expressions

    def transform(self, frame: Frame) -> npt.NDArray[np.float64]:
        """The model's input matrix for ``frame``'s rows (extra columns are ignored).

        A missing feature column, or a column whose values cannot be read as the
        feature's type, raises ``TrainingError`` naming the column.
        """
        if not self.is_fitted:
            raise TrainingError(
                "This Preprocessor is not fitted yet: call fit(frame) on the training rows."
            )
        rows = _as_frame(frame, "frame")
        _require_columns(rows, self.features, "The rows to predict")
        for name in self.features:
            dtype = rows.schema[name]
            # Text is read as numbers by a strict cast (a served JSON row may send "1.5").
            if not (_is_text(dtype) or _is_number(dtype)):
                raise TrainingError(
                    f"The column {name!r} is {dtype}, but the model was trained on "
                    f"{self.schema_[name]}; give it values of that type.",
                    column=name,
                )
        try:
            selected = rows.select(self._expressions)
        except pl.exceptions.PolarsError:
            selected = self._find_bad_column(rows)
        return selected.to_numpy().astype(np.float64, copy=False)

    @cached_property
    def _codes(self) -> dict[str, dict[str, float]]:
        return {
            name: {value: float(code) for code, value in enumerate(vocabulary)}
            for name, vocabulary in self.vocabulary_.items()
        }

    def transform_columns(
        self, columns: Mapping[str, Sequence[Any] | npt.NDArray[Any]]
    ) -> npt.NDArray[np.float64]:
        """``transform`` for a few rows given as columns, such as a served request.

        The same matrix as ``transform`` of the same rows, without building a DataFrame:
        text categories are looked up in the vocabulary, numbers (and None, as missing)
        are read directly. Values it cannot take directly (a category given as a number,
        text in a numeric feature) go the way of ``transform``, with its errors.

        Examples
        --------
        >>> pre = Preprocessor(features=["city", "age"]).fit(
        ...     pl.DataFrame({"city": ["Oslo", "Bergen"], "age": [30.0, None]}))
        >>> pre.transform_columns({"city": ["Oslo", "Paris"], "age": [41, None]})
        array([[ 1., 41.],
               [nan, nan]])
        """
        if not self.is_fitted:
            raise TrainingError(
                "This Preprocessor is not fitted yet: call fit(frame) on the training rows."
            )
        _require_columns_in(list(columns), self.features, "The rows to predict")
        lengths = {len(columns[name]) for name in self.features}
        if len(lengths) > 1:
            shown = ", ".join(map(str, sorted(lengths)))
            raise TrainingError(
                f"The feature columns have different lengths ({shown}); give one value per "
                f"row in every column."
            )
        rows = lengths.pop() if lengths else 0
        if rows <= _FEW_ROWS:
            return self._transform_few(columns, rows)
        out = np.empty((rows, len(self.features)), dtype=np.float64)
        missing = self.missing_codes_
        for j, name in enumerate(self.features):
            values = columns[name]
            if name in self._codes:
                coded = _category_codes(values, self._codes[name], missing[name])
                if coded is None:
                    return self._transform_frame(columns)
                out[:, j] = coded
                continue
            array = np.asarray(values)
            if array.dtype.kind not in "biuf":
                if array.dtype.kind != "O" or not all(
                    value is None or isinstance(value, int | float) for value in array.flat
                ):
                    return self._transform_frame(columns)
                array = np.array(values, dtype=np.float64)
            number = array.astype(np.float64, copy=False).reshape(-1)
            if name in self.fill_values_:
                number = np.where(np.isnan(number), self.fill_values_[name], number)
            out[:, j] = number
        return out

    def transform_row(self, row: Mapping[str, Any]) -> npt.NDArray[np.float64]:
        """``transform_columns`` for one row given as a mapping (a served request).

        The one row of ``transform_columns({name: [value]})`` as a 1-D array, read value
        by value with a plan made once per preprocessor; values it cannot take directly
        go the way of ``transform_columns``, with its errors.

        Examples
        --------
        >>> pre = Preprocessor(features=["city", "age"]).fit(
        ...     pl.DataFrame({"city": ["Oslo", "Bergen"], "age": [30.0, None]}))
        >>> pre.transform_row({"city": "Oslo", "age": 41, "ignored": "x"})
        array([ 1., 41.])
        """
        values: list[float] = []
        append = values.append
        try:
            for name, codes, default in self._row_plan:
                value = row[name]
                if value is None:
                    append(default)
                elif codes is not None:
                    if value.__class__ is not str:
                        break
                    append(codes.get(value, default))
                elif isinstance(value, _NUMBER):
                    number = float(value)
                    append(default if number != number else number)
                else:
                    break
            else:
                return np.array(values, dtype=np.float64)
        except KeyError:
            pass
        matrix = self.transform_columns({name: [value] for name, value in row.items()})
        first: npt.NDArray[np.float64] = matrix[0]
        return first

    @cached_property
    def _row_plan(self) -> tuple[tuple[str, dict[str, float] | None, float], ...]:
        """Per feature: its name, its category codes (None if numeric) and the value a
        missing one gets."""
        if not self.is_fitted:
            raise TrainingError(
                "This Preprocessor is not fitted yet: call fit(frame) on the training rows."
            )
        codes, missing, fills = self._codes, self.missing_codes_, self.fill_values_
        return tuple(
            (name, codes[name], missing[name])
            if name in codes
            else (name, None, fills.get(name, math.nan))
            for name in self.features
        )

    def _transform_few(
        self, columns: Mapping[str, Sequence[Any] | npt.NDArray[Any]], rows: int
    ) -> npt.NDArray[np.float64]:
        """``transform_columns`` for a few rows: plain Python per value, one array at the end
        (per-column numpy calls cost more than the values for a row or two)."""
        missing = self.missing_codes_
        fills = self.fill_values_
        if rows == 1:  # a served request: one value per feature, no per-column lists
            row = self._transform_one(columns, missing, fills)
            if row is not None:
                return np.array([row], dtype=np.float64)
            return self._transform_frame(columns)
        matrix: list[list[float]] = []
        for name in self.features:
            values = columns[name]
            if name in self._codes:
                coded = _category_codes(values, self._codes[name], missing[name])
                if coded is None:
                    return self._transform_frame(columns)
                matrix.append(coded)
                continue
            fill = fills.get(name, math.nan)
            numbers = []
            for value in values.tolist() if isinstance(values, np.ndarray) else values:
                if value is None:
                    numbers.append(fill)
                elif isinstance(value, _NUMBER):
                    number = float(value)
                    numbers.append(fill if number != number else number)
                else:
                    return self._transform_frame(columns)
            matrix.append(numbers)
        if rows == 0:
            return np.empty((0, len(self.features)), dtype=np.float64)
        return np.array(matrix, dtype=np.float64).T.copy()

    def _transform_one(
        self,
        columns: Mapping[str, Sequence[Any] | npt.NDArray[Any]],
        missing: Mapping[str, float],
        fills: Mapping[str, float],
    ) -> list[float] | None:
        """The one row's values, or None when one needs ``transform`` to be read."""
        codes = self._codes
        row: list[float] = []
        for name in self.features:
            value = columns[name][0]
            if value is None:
                row.append(missing[name] if name in codes else fills.get(name, math.nan))
            elif name in codes:
                if not isinstance(value, str):
                    return None
                row.append(codes[name].get(value, missing[name]))
            elif isinstance(value, _NUMBER):
                number = float(value)
                row.append(fills.get(name, math.nan) if number != number else number)
            else:
                return None
        return row

    def _transform_frame(
        self, columns: Mapping[str, Sequence[Any] | npt.NDArray[Any]]
    ) -> npt.NDArray[np.float64]:
        try:
            frame = pl.DataFrame(
                {name: pl.Series(name, list(columns[name]), strict=False) for name in self.features}
            )
        except (TypeError, ValueError, pl.exceptions.PolarsError) as exc:
            raise TrainingError(
                f"The rows to predict cannot be read as columns of one type each: {exc}."
            ) from exc
        return self.transform(frame)

    def _find_bad_column(self, rows: pl.DataFrame) -> pl.DataFrame:
        for name, expression in zip(self.features, self._expressions, strict=True):
            try:
                rows.select(expression)
            except pl.exceptions.PolarsError as exc:
                first = str(exc).strip().splitlines()[0]
                raise TrainingError(
                    f"The column {name!r} ({rows.schema[name]}) cannot be read as the model's "
                    f"{self.schema_[name]} feature: {first}. Give it values of that type.",
                    column=name,
                ) from exc
        return rows.select(self._expressions)  # pragma: no cover - one column failed above

    def to_dict(self) -> dict[str, Any]:
        return {
            "features": list(self.features),
            "categorical": list(self.categorical_),
            "impute": self.impute,
            "vocabulary": {name: list(values) for name, values in self.vocabulary_.items()},
            "fill_values": dict(self.fill_values_),
            "schema": dict(self.schema_),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Preprocessor:
        """The fitted preprocessor ``to_dict`` described."""
        pre = cls(
            features=tuple(data["features"]),
            categorical=tuple(data["categorical"]),
            impute=data["impute"],
        )
        pre._check_params()
        pre.categorical_ = tuple(data["categorical"])
        pre.vocabulary_ = {name: tuple(values) for name, values in data["vocabulary"].items()}
        pre.fill_values_ = {name: float(value) for name, value in data["fill_values"].items()}
        pre.schema_ = {name: str(dtype) for name, dtype in data["schema"].items()}
        return pre

    def __repr__(self) -> str:
        return (
            f"Preprocessor(features={list(self.features)!r}, categorical="
            f"{None if self.categorical is None else list(self.categorical)!r}, "
            f"impute={self.impute!r})"
        )


_FEW_ROWS = 16
"""Up to this many rows, ``transform_columns`` reads values one by one in Python."""
_NUMBER = (int, float, np.integer, np.floating, np.bool_)


def _category_codes(
    values: Sequence[Any] | npt.NDArray[Any], codes: Mapping[str, float], unknown: float
) -> list[float] | None:
    """Each text value's code (``unknown`` for None or unseen); None if one is not text."""
    coded = []
    for value in values:
        if value is None:
            coded.append(unknown)
        elif isinstance(value, str):
            coded.append(codes.get(value, unknown))
        else:
            return None
    return coded


def _require_columns(rows: pl.DataFrame, names: Sequence[str], what: str) -> None:
    _require_columns_in(rows.columns, names, what)


def _require_columns_in(have: Sequence[str], names: Sequence[str], what: str) -> None:
    missing = [name for name in names if name not in have]
    if missing:
        raise TrainingError(
            f"{what} lack the feature column(s) {', '.join(map(repr, missing))} that the model "
            f"needs. They have: {', '.join(have) or 'no columns'}. Give every feature "
            f"column (extra columns are ignored).",
            columns=missing,
        )


# -- the bundle ---------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class ModelBundle:
    """A trained model with its preprocessing, schema, profile, metrics and metadata.

    Build one with ``train_bundle``; read one with ``ModelBundle.from_bytes``.

    Examples
    --------
    >>> rows = pl.DataFrame({"x": [float(i) for i in range(40)], "y": [i % 2 for i in range(40)]})
    >>> bundle = train_bundle(rows, features=["x"], label="y",
    ...                       model=LightGBMModel(num_rounds=3, min_data_in_leaf=2))
    >>> scored = bundle.with_metrics({"test_roc_auc": 0.5})
    >>> scored.metrics, bundle.metrics
    ({'test_roc_auc': 0.5}, {})
    >>> ModelBundle.from_bytes(scored.to_bytes()).metrics
    {'test_roc_auc': 0.5}
    """

    preprocessor: Preprocessor
    model: ModelAdapter
    label: str
    profile: Profile | None = None
    metrics: Mapping[str, float] = field(default_factory=dict)
    metadata: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.preprocessor.is_fitted:
            raise TrainingError("A ModelBundle needs a fitted Preprocessor: call its fit first.")
        self.model._require_fitted()
        if self.model.n_features_in_ != len(self.features):
            raise TrainingError(
                f"The model takes {self.model.n_features_in_} features but the preprocessing "
                f"gives {len(self.features)}; fit the model on the preprocessor's output.",
            )
        metrics: dict[str, float] = {}
        for key, value in self.metrics.items():
            if (
                not isinstance(key, str)
                or isinstance(value, bool)
                or not isinstance(value, int | float | np.integer | np.floating)
            ):
                raise TrainingError(
                    "The 'metrics' of a ModelBundle must map names to numbers. Got "
                    f"{key!r}: {value!r}; put other values in 'metadata'.",
                    parameter="metrics",
                )
            metrics[key] = float(value)
        object.__setattr__(self, "metrics", metrics)
        try:
            metadata = json.loads(_json(dict(self.metadata)))
        except (TypeError, ValueError) as exc:
            raise TrainingError(
                f"The 'metadata' of a ModelBundle must be JSON-able (str keys; str, number, "
                f"bool, None, lists and dicts of them): {exc}.",
                parameter="metadata",
            ) from exc
        object.__setattr__(self, "metadata", metadata)

    @property
    def features(self) -> tuple[str, ...]:
        """The feature columns, in the order the model takes them."""
        return tuple(self.preprocessor.features)

    @property
    def schema(self) -> dict[str, str]:
        """Each feature column's Polars type in the training rows."""
        return dict(self.preprocessor.schema_)

    @property
    def objective(self) -> str:
        return self.model.objective

    def predict(self, frame: Frame) -> npt.NDArray[np.float64]:
        """Positive-class probabilities (binary) or values (regression) for raw rows.

        ``frame`` has the training set's feature columns (extra columns are ignored).
        """
        return self.model.predict(self.preprocessor.transform(frame))

    def predict_columns(
        self, columns: Mapping[str, Sequence[Any] | npt.NDArray[Any]]
    ) -> npt.NDArray[np.float64]:
        """``predict`` for a few rows given as columns (``Preprocessor.transform_columns``)."""
        return self.model.predict_encoded(self.preprocessor.transform_columns(columns))

    def with_metrics(self, metrics: Mapping[str, float]) -> ModelBundle:
        """A copy with ``metrics`` added to (and replacing the same names in) its metrics."""
        return replace(self, metrics={**self.metrics, **metrics})

    def with_metadata(self, metadata: Mapping[str, Any]) -> ModelBundle:
        """A copy with ``metadata`` added to (and replacing the same keys in) its metadata."""
        return replace(self, metadata={**self.metadata, **metadata})

    # -- bytes

    def manifest(self) -> dict[str, Any]:
        """What ``to_bytes`` writes to ``manifest.json``."""
        return json.loads(self._archive[1])  # type: ignore[no-any-return]

    @cached_property
    def _archive(self) -> tuple[bytes, bytes]:
        """The archive and its manifest, built once (a bundle never changes)."""
        files: dict[str, bytes] = {
            self.model.file_name: self.model.to_bytes(),
            PREPROCESSING: _json(self.preprocessor.to_dict()),
        }
        if self.profile is not None:
            files[PROFILE] = self.profile.to_json()
        try:
            params = json.loads(_json(self.model.to_params()))
        except (TypeError, ValueError) as exc:
            raise TrainingError(
                f"The parameters of {type(self.model).__name__} must be JSON-able to be saved "
                f"in a bundle: {exc}.",
            ) from exc
        manifest = {
            "format": FORMAT,
            "loopline_version": _version("loopline"),
            "files": {
                name: {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}
                for name, data in sorted(files.items())
            },
            "model": {
                "kind": self.model.kind,
                "class": type(self.model).__name__,
                "file": self.model.file_name,
                "params": params,
                "library_version": self.model.library_version,
            },
            "objective": self.objective,
            "label": self.label,
            "features": list(self.features),
            "schema": self.schema,
            "categorical": list(self.preprocessor.categorical_),
            "impute": self.preprocessor.impute,
            "metrics": dict(self.metrics),
            "metadata": dict(self.metadata),
        }
        manifest_bytes = _json(manifest)
        members = {
            MANIFEST: manifest_bytes,
            MANIFEST_HASH: (hashlib.sha256(manifest_bytes).hexdigest() + "\n").encode(),
            **dict(sorted(files.items())),
        }
        out = io.BytesIO()
        with zipfile.ZipFile(out, "w") as archive:
            for name, data in members.items():
                info = zipfile.ZipInfo(name, date_time=_EPOCH)
                info.compress_type = zipfile.ZIP_DEFLATED
                info.create_system = 3  # the same on every platform
                info.external_attr = 0o644 << 16
                archive.writestr(info, data, compresslevel=6)
        return out.getvalue(), manifest_bytes

    def to_bytes(self) -> bytes:
        """The bundle as one zip archive: the same bundle always gives the same bytes."""
        return self._archive[0]

    @property
    def size(self) -> int:
        """The archive's size in bytes (what the gate's bundle-size guard measures)."""
        return len(self.to_bytes())

    @property
    def content_hash(self) -> str:
        """The sha256 of ``to_bytes()``: record it to check the bytes when they are read."""
        return hashlib.sha256(self.to_bytes()).hexdigest()

    @classmethod
    def from_bytes(cls, data: bytes, *, expected_hash: str | None = None) -> ModelBundle:
        """Read a bundle, checking every file's hash (and ``expected_hash``, if given).

        Raises
        ------
        ArtifactCorruptedError
            The archive, its manifest or one of its files was changed or damaged; the
            message and ``.member`` say which.
        """
        data = bytes(data)
        if expected_hash is not None:
            actual = hashlib.sha256(data).hexdigest()
            if actual != expected_hash:
                raise ArtifactCorruptedError(
                    f"The model bundle's bytes hash to {actual[:12]}, not the {expected_hash[:12]} "
                    "recorded for it: the file was changed or damaged. Restore it from the "
                    "artifact store, or train the model again.",
                    member=None,
                    content_hash=expected_hash,
                )
        try:
            archive = zipfile.ZipFile(io.BytesIO(data))
        except zipfile.BadZipFile as exc:
            raise ArtifactCorruptedError(
                f"These bytes are not a loopline model bundle (not a readable zip archive: "
                f"{exc}). The file is damaged or is something else; train the model again.",
                member=None,
            ) from exc
        with archive:
            manifest_bytes = _member(archive, MANIFEST)
            recorded = _member(archive, MANIFEST_HASH).decode(errors="replace").strip()
            actual = hashlib.sha256(manifest_bytes).hexdigest()
            if actual != recorded:
                raise ArtifactCorruptedError(
                    f"The model bundle's {MANIFEST} was changed: it hashes to {actual[:12]}, "
                    f"but {MANIFEST_HASH} says {recorded[:12]}. Do not edit a bundle; train "
                    "the model again (or restore the file).",
                    member=MANIFEST,
                )
            try:
                manifest = json.loads(manifest_bytes)
                listed: dict[str, dict[str, Any]] = dict(manifest["files"])
                if manifest["format"] != FORMAT:
                    raise ValueError(f"format {manifest['format']!r}, expected {FORMAT!r}")
            except (ValueError, KeyError, TypeError) as exc:
                raise ArtifactCorruptedError(
                    f"The model bundle's {MANIFEST} cannot be read ({exc}). The bundle comes "
                    f"from another loopline version or is damaged; train the model again.",
                    member=MANIFEST,
                ) from exc
            present = set(archive.namelist()) - {MANIFEST, MANIFEST_HASH}
            extra, absent = sorted(present - set(listed)), sorted(set(listed) - present)
            if extra or absent:
                what = "; ".join(
                    part
                    for part in (
                        f"files not in its manifest: {', '.join(extra)}" if extra else "",
                        f"files its manifest lists are missing: {', '.join(absent)}"
                        if absent
                        else "",
                    )
                    if part
                )
                raise ArtifactCorruptedError(
                    f"The model bundle was changed ({what}). Train the model again.",
                    member=(extra or absent)[0],
                )
            files: dict[str, bytes] = {}
            for name, entry in listed.items():
                content = _member(archive, name)
                digest = hashlib.sha256(content).hexdigest()
                if digest != entry.get("sha256"):
                    raise ArtifactCorruptedError(
                        f"The model bundle's {name} was changed: it hashes to {digest[:12]}, "
                        f"but the manifest records {str(entry.get('sha256'))[:12]}. Do not "
                        "edit a bundle; train the model again (or restore the file).",
                        member=name,
                    )
                files[name] = content
        return cls._build(manifest, files)

    @classmethod
    def _build(cls, manifest: Mapping[str, Any], files: Mapping[str, bytes]) -> ModelBundle:
        try:
            spec = manifest["model"]
            adapter = adapter_class(spec["kind"])
            model_bytes = files[spec["file"]]
            preprocessor = Preprocessor.from_dict(json.loads(files[PREPROCESSING]))
            profile = Profile.from_json(files[PROFILE]) if PROFILE in files else None
            features, label = manifest["features"], manifest["label"]
        except (KeyError, TypeError, ValueError, ContractError) as exc:
            if isinstance(exc, TrainingError):
                raise
            raise ArtifactCorruptedError(
                f"The model bundle's contents do not fit its manifest ({exc}). Train the "
                "model again.",
                member=None,
            ) from exc
        model = adapter.from_bytes(model_bytes, **spec["params"])
        if list(preprocessor.features) != list(features):
            raise ArtifactCorruptedError(
                f"The model bundle's {PREPROCESSING} lists other features than its manifest. "
                "Train the model again.",
                member=PREPROCESSING,
            )
        return cls(
            preprocessor=preprocessor,
            model=model,
            label=label,
            profile=profile,
            metrics=manifest.get("metrics", {}),
            metadata=manifest.get("metadata", {}),
        )

    def __repr__(self) -> str:
        return (
            f"ModelBundle({type(self.model).__name__}, {self.objective}, label={self.label!r}, "
            f"features={list(self.features)!r})"
        )


def _member(archive: zipfile.ZipFile, name: str) -> bytes:
    """One member's bytes; a damaged or missing one is ``ArtifactCorruptedError``."""
    try:
        return archive.read(name)
    except KeyError as exc:
        raise ArtifactCorruptedError(
            f"The model bundle has no {name}: it is damaged or not a loopline bundle. Train "
            "the model again.",
            member=name,
        ) from exc
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError) as exc:
        raise ArtifactCorruptedError(
            f"The model bundle's {name} is damaged ({exc}). Train the model again.",
            member=name,
        ) from exc


def _version(distribution: str) -> str:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


# -- training -----------------------------------------------------------------------------


def _labels(rows: pl.DataFrame, label: str, objective: str) -> npt.NDArray[np.float64]:
    if label not in rows.columns:
        raise TrainingError(
            f"The training rows have no label column {label!r}. They have: "
            f"{', '.join(rows.columns)}.",
            column=label,
        )
    column = rows.get_column(label)
    if not _is_number(column.dtype):
        raise TrainingError(
            f"The label column {label!r} is {column.dtype}; it must hold numbers (0 and 1, "
            f"or booleans, for a binary classifier). Map it to numbers first.",
            column=label,
        )
    nulls = column.null_count()
    if nulls:
        raise TrainingError(
            f"The label column {label!r} has {nulls} null(s) in {column.len()} rows. Drop "
            "those rows before training (a model cannot learn from a missing label).",
            column=label,
        )
    values = column.cast(pl.Float64).to_numpy()
    return check_target(values, objective=objective, name=f"label column {label!r}")


def train_bundle(
    frame: Frame,
    *,
    features: Sequence[str],
    label: str,
    model: ModelAdapter | None = None,
    categorical: Sequence[str] | None = None,
    impute: Impute = "auto",
    metrics: Mapping[str, float] | None = None,
    metadata: Mapping[str, Any] | None = None,
    profile: bool = True,
    distributed: Distributed | None = None,
) -> ModelBundle:
    """Fit the preprocessing and a clone of ``model`` on the training rows; bundle them.

    Parameters
    ----------
    frame
        The training split only: vocabularies and fill values are learned from it.
    features
        The feature columns, in order.
    label
        The target column: 0/1 or booleans for a binary classifier, numbers for a
        regressor (the model's ``objective`` says which).
    model
        The adapter to fit (``LightGBMModel()`` by default); it is cloned, not changed.
    categorical
        Features to encode as categories; None takes every text feature.
    impute
        How numeric missing values are filled: ``'auto'`` (nothing for LightGBM and
        XGBoost, which take NaN as missing; the median for scikit-learn models),
        ``'none'``, ``'median'`` or ``'mean'``.
    metrics, metadata
        Numbers (a model's scores) and JSON-able facts (dataset and feature versions,
        parameters, seed) kept in the bundle.
    profile
        Whether to keep the profile of the training rows' feature and label columns.
    distributed
        Train the model data-parallel on Ray workers (``Distributed(workers=4)``)
        when the training rows number at least its ``min_rows``; the preprocessing is
        still fitted here, on every row. LightGBM and XGBoost only; the bundle is the
        same kind of bundle. See ``loopline.train.distributed``.
    """
    template = LightGBMModel() if model is None else model
    if not isinstance(template, ModelAdapter):
        raise TrainingError(
            "The 'model' parameter of train_bundle must be a model adapter (LightGBMModel, "
            f"XGBoostModel or SklearnModel). Got {type(template).__name__}.",
            parameter="model",
        )
    adapter = template.clone()
    adapter.check_params()
    if impute not in IMPUTE:
        raise TrainingError(
            f"The 'impute' parameter of train_bundle must be one of {', '.join(IMPUTE)}. Got "
            f"{impute!r}.",
            parameter="impute",
        )
    rows = _as_frame(frame, "frame")
    if rows.height == 0:
        raise TrainingError("The training rows are empty; a model needs rows to learn from.")
    if isinstance(label, str) and not isinstance(features, str) and label in features:
        raise TrainingError(
            f"The label {label!r} is also listed as a feature; a model must not see its "
            "own target. Remove it from 'features'.",
            column=label,
        )
    target = _labels(rows, label, adapter.objective)
    resolved = ("none" if adapter.handles_missing else "median") if impute == "auto" else impute
    preprocessor = Preprocessor(features=features, categorical=categorical, impute=resolved)
    if distributed is not None and not isinstance(distributed, Distributed):
        raise TrainingError(
            "The 'distributed' parameter of train_bundle must be a Distributed(workers=...) "
            f"or None. Got {type(distributed).__name__}.",
            parameter="distributed",
        )
    if distributed is not None:
        check_supported(adapter)  # before any work, whatever the size of the rows
    matrix = preprocessor.fit(rows).transform(rows)
    if distributed is not None and distributed.applies(rows.height):
        adapter = fit_distributed(
            adapter,
            matrix,
            target,
            distributed=distributed,
            feature_names=tuple(preprocessor.features),
            categorical=preprocessor.categorical_,
        )
    else:
        adapter.fit(
            matrix,
            target,
            feature_names=tuple(preprocessor.features),
            categorical=preprocessor.categorical_,
        )
    profiled = profile_table(rows.select([*preprocessor.features, label])) if profile else None
    return ModelBundle(
        preprocessor=preprocessor,
        model=adapter,
        label=label,
        profile=profiled,
        metrics=dict(metrics or {}),
        metadata=dict(metadata or {}),
    )


# -- artifacts ----------------------------------------------------------------------------


class _BundleCodec:
    """Stores a ``ModelBundle`` a step returns as its archive (kind ``model_bundle``)."""

    kind = "model_bundle"

    def accepts(self, value: Any) -> bool:
        return isinstance(value, ModelBundle)

    def write(self, value: Any, handle: IO[bytes]) -> None:
        handle.write(value.to_bytes())

    def read(self, data: bytes) -> Any:
        return ModelBundle.from_bytes(data)


register_codec(_BundleCodec())
