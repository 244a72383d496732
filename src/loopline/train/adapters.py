"""Model adapters: LightGBM, XGBoost and scikit-learn behind one small estimator contract.

An adapter keeps scikit-learn's contract: a keyword-only constructor that only stores its
parameters (checked when ``fit`` starts, or by ``check_params``), ``fit(x, y)`` on a float
matrix, ``predict(x)`` that returns the probability of the positive class for a binary
classifier and the value for a regressor, and learned state in attributes that end with
an underscore. ``to_bytes`` writes the fitted model in its library's own format
(LightGBM text, XGBoost JSON, skops for scikit-learn) and ``from_bytes`` reads it back;
a model read back predicts exactly what the fitted one did.

Every adapter is deterministic: the same data, parameters and seed give the same model
bytes (LightGBM runs with ``deterministic`` and ``force_col_wise`` on a fixed number of
threads; skops' archive is rewritten without object ids and timestamps).

Examples
--------
>>> import numpy as np
>>> rng = np.random.default_rng(0)
>>> x = rng.normal(size=(200, 3))
>>> y = (x[:, 0] > 0).astype(float)
>>> model = LightGBMModel(num_rounds=10, min_data_in_leaf=5).fit(x, y)
>>> again = LightGBMModel.from_bytes(model.to_bytes())
>>> bool(np.array_equal(again.predict(x), model.predict(x)))
True
>>> again.objective, again.n_features_in_
('binary', 3)
"""

from __future__ import annotations

import contextlib
import inspect
import io
import json
import threading
import weakref
import zipfile
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping, Sequence
from types import ModuleType
from typing import Any, ClassVar, Literal, Self, cast

import numpy as np
import numpy.typing as npt

from loopline.errors import ArtifactCorruptedError, LooplineError, TrainingError

__all__ = [
    "ADAPTERS",
    "OBJECTIVES",
    "LightGBMModel",
    "ModelAdapter",
    "Objective",
    "SklearnModel",
    "XGBoostModel",
    "adapter_class",
    "check_names",
    "check_target",
]

Objective = Literal["binary", "regression"]
OBJECTIVES: tuple[Objective, ...] = ("binary", "regression")
"""The objectives every adapter supports: binary classification and regression."""

FloatArray = npt.NDArray[np.float64]


# -- parameter checks ---------------------------------------------------------------------


def _bad(owner: str, name: str, expected: str, value: object) -> TrainingError:
    return TrainingError(
        f"The {name!r} parameter of {owner} must be {expected}. Got {value!r}.",
        parameter=name,
    )


def _integer(owner: str, name: str, value: object, *, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < minimum:
        raise _bad(owner, name, f"an integer of at least {minimum}", value)


def _number(
    owner: str,
    name: str,
    value: object,
    *,
    low: float,
    high: float = float("inf"),
    low_open: bool = False,
) -> None:
    ok = (
        not isinstance(value, bool)
        and isinstance(value, int | float | np.integer | np.floating)
        and (value > low if low_open else value >= low)
        and value <= high
    )
    if not ok:
        bound = "(" if low_open else "["
        upper = "inf)" if high == float("inf") else f"{high:g}]"
        raise _bad(owner, name, f"a number in {bound}{low:g}, {upper}", value)


def _objective(owner: str, value: object) -> None:
    if value not in OBJECTIVES:
        raise _bad(owner, "objective", "one of 'binary' or 'regression'", value)


def _native_params(owner: str, value: object, reserved: Mapping[str, str]) -> None:
    """``params`` passes other native parameters; those with a parameter of their own,
    or that would undo determinism, are refused so that each has one way to be set."""
    if value is None:
        return
    if not isinstance(value, Mapping) or not all(isinstance(k, str) for k in value):
        raise _bad(owner, "params", "a dict of the library's parameters (str keys) or None", value)
    taken = sorted(set(value) & set(reserved))
    if taken:
        hints = "; ".join(f"{key!r}: {reserved[key]}" for key in taken)
        raise TrainingError(
            f"The 'params' parameter of {owner} must not set {', '.join(map(repr, taken))} "
            f"({hints}). Got params={dict(value)!r}.",
            parameter="params",
        )


def check_target(y: Any, *, objective: str, name: str = "y") -> FloatArray:
    """``y`` as float64, after checking that it suits ``objective``.

    A binary target holds 0 and 1 (or False and True), both of them; a regression target
    holds finite numbers. Missing values are refused rather than dropped, so that the
    rows a model learned from are the rows the caller gave.

    Examples
    --------
    >>> check_target([True, False, True], objective="binary")
    array([1., 0., 1.])
    >>> check_target([1, 1, 1], objective="binary", name="label 'delayed'")
    Traceback (most recent call last):
    ...
    loopline.errors.TrainingError: The label 'delayed' has one class (all 1) in its 3 rows; ...
    """
    try:
        values = np.asarray(y, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise TrainingError(
            f"The {name} must hold numbers (0 and 1 for a binary classifier): {exc}.",
        ) from exc
    if values.ndim != 1 or values.size == 0:
        raise TrainingError(
            f"The {name} must be one non-empty column of values; got shape {values.shape}.",
        )
    missing = int(np.count_nonzero(~np.isfinite(values)))
    if missing:
        raise TrainingError(
            f"The {name} has {missing} missing or infinite value(s) in {values.size} rows. "
            f"Drop those rows before training (a model cannot learn from a missing label).",
        )
    if objective == "binary":
        others = np.setdiff1d(np.unique(values), [0.0, 1.0])
        if others.size:
            shown = ", ".join(f"{v:g}" for v in others[:5])
            raise TrainingError(
                f"The {name} of a binary classifier must hold 0 and 1 (or False and True); "
                f"it also holds {shown}. Map it to 0/1 first, or train with "
                f"objective='regression'.",
            )
        if values.min() == values.max():
            raise TrainingError(
                f"The {name} has one class (all {values[0]:g}) in its {values.size} rows; a "
                f"binary classifier needs rows of both 0 and 1. Check how the label is "
                f"defined, or move the split so that the training rows hold both classes.",
            )
    return values


# -- the contract -------------------------------------------------------------------------


def check_names(
    owner: str, width: int, feature_names: Sequence[str] | None, categorical: Sequence[str]
) -> tuple[str, ...]:
    """The feature names of a ``width``-column matrix (``f0``, ``f1``, ... by default),
    checked distinct and one per column, with every ``categorical`` name among them."""
    names = tuple(f"f{i}" for i in range(width)) if feature_names is None else tuple(feature_names)
    if len(names) != width or len(set(names)) != len(names):
        raise TrainingError(
            f"The 'feature_names' parameter of {owner} must be {width} distinct names, one "
            f"per column of x. Got {list(names)!r}.",
        )
    unknown = [name for name in categorical if name not in names]
    if unknown:
        raise TrainingError(
            f"The 'categorical' parameter of {owner} names columns that are not features: "
            f"{', '.join(map(repr, unknown))}.",
        )
    return names


class ModelAdapter(ABC):
    """One model kind behind the estimator contract (see the module docstring).

    Subclasses implement ``_check``, ``_fit``, ``_predict``, ``_to_bytes``, ``_read`` and
    ``_adopt``; the public methods around them check parameters, inputs and fitted state,
    and turn the library's exceptions into ``TrainingError``.
    """

    kind: ClassVar[str]
    """The name a bundle's manifest records (``lightgbm``, ``xgboost``, ``sklearn``)."""
    file_name: ClassVar[str]
    """The model file's name inside a bundle (its extension says the format)."""
    handles_missing: ClassVar[bool]
    """Whether the model takes NaN as "missing" itself (so that nothing is imputed)."""

    objective: Objective
    n_features_in_: int
    feature_names_in_: tuple[str, ...]

    # -- parameters

    @classmethod
    def _param_names(cls) -> list[str]:
        return [
            p.name
            for p in inspect.signature(cls.__init__).parameters.values()
            if p.kind is inspect.Parameter.KEYWORD_ONLY
        ]

    def get_params(self) -> dict[str, Any]:
        """The constructor's parameters, as given."""
        return {name: getattr(self, name) for name in self._param_names()}

    def set_params(self, **params: Any) -> Self:
        """Change parameters (checked at the next ``fit``); unknown names are refused."""
        names = self._param_names()
        for name, value in params.items():
            if name not in names:
                raise TrainingError(
                    f"{type(self).__name__} has no parameter {name!r}. Its parameters are: "
                    f"{', '.join(names)}.",
                    parameter=name,
                )
            setattr(self, name, value)
        return self

    def clone(self) -> Self:
        """A new, unfitted adapter with the same parameters."""
        return type(self)(**self.get_params())

    def to_params(self) -> dict[str, Any]:
        """The JSON-able parameters that, with ``to_bytes``, rebuild this adapter:
        ``type(m).from_bytes(m.to_bytes(), **m.to_params())``."""
        return self.get_params()

    def check_params(self) -> None:
        """Raise ``TrainingError`` (saying which parameter and what it must be) if any
        parameter is invalid."""
        _objective(type(self).__name__, self.objective)
        self._check()

    @property
    def library_version(self) -> str:
        """The version of the library that fits and reads the native file."""
        return str(getattr(self._library(), "__version__", "unknown"))

    # -- fitting and predicting

    def fit(
        self,
        x: Any,
        y: Any,
        *,
        feature_names: Sequence[str] | None = None,
        categorical: Sequence[str] = (),
    ) -> Self:
        """Fit on the float matrix ``x`` (NaN where a value is missing) and target ``y``.

        Parameters
        ----------
        x
            Rows by features; anything ``numpy.asarray`` turns into float64.
        y
            0/1 for ``objective='binary'``, numbers for ``'regression'``.
        feature_names
            One name per column (``f0``, ``f1``, ... by default), kept in the model file.
        categorical
            Names of columns that hold category codes (0, 1, 2, ...): LightGBM and
            XGBoost split on them as categories; scikit-learn takes them as numbers.
        """
        self.check_params()
        matrix = self._matrix(x, fitted=False)
        target = check_target(y, objective=self.objective)
        if target.shape[0] != matrix.shape[0]:
            raise TrainingError(
                f"x has {matrix.shape[0]} rows but y has {target.shape[0]}; give one target "
                "value per row.",
            )
        names = check_names(
            f"{type(self).__name__}.fit", matrix.shape[1], feature_names, categorical
        )
        with self._translate("fit"):
            self._fit(matrix, target, names, tuple(categorical))
        self.n_features_in_ = matrix.shape[1]
        self.feature_names_in_ = names
        return self

    def predict(self, x: Any) -> FloatArray:
        """Positive-class probabilities (binary) or values (regression), as float64."""
        self._require_fitted()
        matrix = self._matrix(x, fitted=True)
        with self._translate("predict"):
            return np.asarray(self._predict(matrix), dtype=np.float64).reshape(-1)

    def predict_encoded(self, matrix: FloatArray) -> FloatArray:
        """``predict`` for a float64 matrix a fitted ``Preprocessor`` made: no re-checks.

        The serving path: the matrix has the right width and type by construction. Any
        failure is retried through ``predict``, which says what is wrong.
        """
        try:
            return np.asarray(self._predict(matrix), dtype=np.float64).reshape(-1)
        except Exception:  # the checked path raises the clear error
            return self.predict(matrix)

    def predict_row(self, row: FloatArray) -> float:
        """``predict_encoded`` of one encoded row (a 1-D float64 array): a served request.

        Adapters whose library has a cheaper call for one row use it (LightGBM's
        single-row C API); the prediction is the same.
        """
        return float(self.predict_encoded(row.reshape(1, -1))[0])

    def to_bytes(self) -> bytes:
        """The fitted model in its library's native format (see ``file_name``)."""
        self._require_fitted()
        with self._translate("save"):
            return self._to_bytes()

    @classmethod
    def from_bytes(cls, data: bytes, **params: Any) -> Self:
        """The adapter whose ``to_bytes`` gave ``data``.

        ``params`` are the constructor's parameters (``to_params()`` of the saved adapter);
        without ``objective``, it is read from the model file. Bytes the library cannot
        read raise ``ArtifactCorruptedError``.
        """
        data = bytes(data)
        try:
            native = cls._read(data, params)
        except LooplineError:
            raise
        except cls._native_errors() as exc:
            raise _corrupted(cls.kind, " ".join(str(exc).split())) from exc
        unknown = sorted(set(params) - set(cls._param_names()))
        if unknown:
            raise TrainingError(
                f"{cls.__name__} has no parameter(s) {', '.join(map(repr, unknown))}: the model "
                f"was saved by another loopline version. Its parameters are: "
                f"{', '.join(cls._param_names())}.",
            )
        model = cls(**params)
        model.check_params()
        model._adopt(native)
        return model

    # -- helpers

    def _matrix(self, x: Any, *, fitted: bool) -> FloatArray:
        try:
            matrix = np.asarray(x, dtype=np.float64)
        except (TypeError, ValueError) as exc:
            raise TrainingError(
                f"{type(self).__name__} takes a matrix of numbers (encode categories as codes "
                f"first, as ModelBundle does): {exc}.",
            ) from exc
        if matrix.ndim != 2 or (not fitted and matrix.shape[0] == 0):
            raise TrainingError(
                f"{type(self).__name__} takes a non-empty 2-D matrix (rows by features); "
                f"got shape {matrix.shape}.",
            )
        if fitted and matrix.shape[1] != self.n_features_in_:
            raise TrainingError(
                f"{type(self).__name__} was fitted on {self.n_features_in_} features but x has "
                f"{matrix.shape[1]} columns. Give the features in training order: "
                f"{', '.join(self.feature_names_in_)}.",
            )
        return matrix

    def _require_fitted(self) -> None:
        if not hasattr(self, "n_features_in_"):
            raise TrainingError(
                f"This {type(self).__name__} is not fitted yet: call fit(x, y) first, or read "
                f"a saved one with {type(self).__name__}.from_bytes(data).",
            )

    @contextlib.contextmanager
    def _translate(self, action: str) -> Iterator[None]:
        """The boundary where the library's own exceptions become ``TrainingError``."""
        try:
            yield
        except LooplineError:
            raise
        except self._native_errors() as exc:
            advice = {
                "fit": f"Check its parameters ({self._describe()}) and the training rows.",
                "predict": "Check the rows given to predict.",
            }.get(action, "Train the model again.")
            detail = " ".join(str(exc).split()).rstrip(" .") or type(exc).__name__
            raise TrainingError(
                f"{type(self).__name__} could not {action}: {detail}. {advice}",
                kind=self.kind,
            ) from exc

    def _describe(self) -> str:
        return ", ".join(f"{k}={v!r}" for k, v in self.to_params().items())

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._describe()})"

    # -- what each kind implements

    @classmethod
    @abstractmethod
    def _library(cls) -> ModuleType:
        """The library module (imported here, so that a missing extra is reported)."""

    @classmethod
    @abstractmethod
    def _native_errors(cls) -> tuple[type[Exception], ...]:
        """The library's exceptions that mean "this cannot be done with these inputs"."""

    @abstractmethod
    def _check(self) -> None:
        """Check every parameter but ``objective``."""

    @abstractmethod
    def _fit(
        self, x: FloatArray, y: FloatArray, names: tuple[str, ...], categorical: tuple[str, ...]
    ) -> None: ...

    @abstractmethod
    def _predict(self, x: FloatArray) -> Any: ...

    @abstractmethod
    def _to_bytes(self) -> bytes: ...

    @classmethod
    @abstractmethod
    def _read(cls, data: bytes, params: dict[str, Any]) -> Any:
        """Parse a native model file; fill in ``params`` the file holds (``objective``)
        when the caller left them out, and check the ones given against it."""

    @abstractmethod
    def _adopt(self, native: Any) -> None:
        """Take the parsed model as the learned state (``n_features_in_`` and
        ``feature_names_in_`` too)."""


def _corrupted(kind: str, what: str) -> ArtifactCorruptedError:
    return ArtifactCorruptedError(
        f"The {kind} model file is damaged or not a loopline {kind} model: {what}. Train the "
        "model again.",
        kind=kind,
    )


def _settle_objective(kind: str, params: dict[str, Any], stored: Objective) -> None:
    given = params.setdefault("objective", stored)
    if given != stored:
        raise _corrupted(kind, f"the file holds a {stored} model, its parameters say {given!r}")


# -- LightGBM -----------------------------------------------------------------------------

_SEED_KEYS = ("seed", "random_seed", "random_state")
_THREAD_KEYS = ("num_threads", "num_thread", "nthread", "nthreads", "n_jobs")
_LGB_ROUND_KEYS = (
    "num_iterations",
    "num_iteration",
    "n_iter",
    "num_tree",
    "num_trees",
    "num_round",
    "num_rounds",
    "num_boost_round",
    "n_estimators",
    "max_iter",
)
_LGB_RESERVED: dict[str, str] = {
    **dict.fromkeys(
        ("objective", "objective_type", "app", "application", "loss"), "use 'objective'"
    ),
    **dict.fromkeys(_SEED_KEYS, "use 'seed'"),
    **dict.fromkeys(_THREAD_KEYS, "use 'num_threads'"),
    **dict.fromkeys(_LGB_ROUND_KEYS, "use 'num_rounds'"),
    **dict.fromkeys(("deterministic", "force_col_wise", "force_row_wise"), "fixed for determinism"),
    "num_leaves": "use 'num_leaves'",
    "learning_rate": "use 'learning_rate'",
    "min_data_in_leaf": "use 'min_data_in_leaf'",
}


PARALLEL_PREDICT_ROWS = 1024
"""LightGBM predicts fewer rows than this on one thread (see ``LightGBMModel``)."""


class _FastRow:
    """LightGBM's single-row prediction (``LGBM_BoosterPredictForMatSingleRowFast``).

    ``Booster.predict`` spends about 25 us in Python on every call, parsing parameters
    and checking the input; the C API's fast single-row call is set up once per booster
    (its parameters, one thread, float64 rows) and then costs about what the trees do.
    It predicts what ``Booster.predict`` does for the same row: the same iterations (the
    best one when the booster has it), the same transform. One call at a time: LightGBM
    shares the prediction buffer between callers of one setup.
    """

    def __init__(self, booster: Any, handle: Any, width: int) -> None:
        import ctypes

        from lightgbm.basic import _LIB  # type: ignore[attr-defined]

        self._call = _LIB.LGBM_BoosterPredictForMatSingleRowFast
        self._handle = handle
        self._out = np.empty(1, dtype=np.float64)
        self._out_ptr = self._out.ctypes.data_as(ctypes.POINTER(ctypes.c_double))
        self._length = ctypes.c_int64()
        self._length_ref = ctypes.byref(self._length)
        self._void = ctypes.c_void_p
        self._width = width
        self._lock = threading.Lock()
        weakref.finalize(self, _LIB.LGBM_FastConfigFree, handle)

    @classmethod
    def of(cls, booster: Any, width: int) -> _FastRow | Literal[False]:
        """The fast call for ``booster``, or False where it does not apply (several
        outputs per row, a LightGBM without the call)."""
        import ctypes

        from lightgbm.basic import _LIB, _c_str  # type: ignore[attr-defined]

        try:
            if booster.num_model_per_iteration() != 1:
                return False
            best = booster.best_iteration
            handle = ctypes.c_void_p()
            status = _LIB.LGBM_BoosterPredictForMatSingleRowFastInit(
                booster._handle,
                ctypes.c_int(0),  # C_API_PREDICT_NORMAL: with the objective's transform
                ctypes.c_int(0),
                ctypes.c_int(best if best is not None and best > 0 else -1),
                ctypes.c_int(1),  # C_API_DTYPE_FLOAT64
                ctypes.c_int32(width),
                _c_str("num_threads=1"),
                ctypes.byref(handle),
            )
        except Exception:  # an older LightGBM, or a booster without a handle
            return False
        return cls(booster, handle, width) if status == 0 else False

    def __call__(self, row: FloatArray) -> float:
        if row.dtype != np.float64 or not row.flags.c_contiguous:
            row = np.ascontiguousarray(row, dtype=np.float64)
        with self._lock:
            status = self._call(
                self._handle, self._void(row.ctypes.data), self._length_ref, self._out_ptr
            )
            if status != 0 or self._length.value != 1:
                raise RuntimeError("LightGBM's single-row prediction failed")
            return float(self._out[0])


_fast_rows: weakref.WeakKeyDictionary[Any, _FastRow | Literal[False]] = weakref.WeakKeyDictionary()
"""Each booster's fast single-row call, made on its first served row (per process)."""


class LightGBMModel(ModelAdapter):
    """A LightGBM model (the default), saved in LightGBM's text format.

    Parameters
    ----------
    objective
        ``'binary'`` (log loss; ``predict`` gives probabilities) or ``'regression'`` (L2).
    num_rounds, learning_rate, num_leaves, min_data_in_leaf
        Boosting rounds, shrinkage, leaves per tree and smallest leaf.
    feature_fraction, bagging_fraction, bagging_freq, lambda_l2
        Column and row subsampling (every ``bagging_freq`` rounds; 0 = never) and L2
        regularization.
    seed
        Seeds every random choice LightGBM makes.
    num_threads
        Threads for training and prediction. Part of what makes the model: LightGBM is
        deterministic for a fixed thread count.
    params
        Other LightGBM parameters (``max_bin``, ``min_gain_to_split``, ...).

    Examples
    --------
    >>> import numpy as np
    >>> x = np.arange(40.0).reshape(20, 2)
    >>> y = np.arange(20.0)
    >>> model = LightGBMModel(objective="regression", num_rounds=5, min_data_in_leaf=2)
    >>> model.fit(x, y).predict(x[:2]).shape
    (2,)
    >>> LightGBMModel(num_leaves=1).fit(x, y > 9)
    Traceback (most recent call last):
    ...
    loopline.errors.TrainingError: The 'num_leaves' parameter of LightGBMModel must be an
    integer of at least 2. Got 1.
    """

    kind = "lightgbm"
    file_name = "model.txt"
    handles_missing = True

    booster_: Any

    def __init__(
        self,
        *,
        objective: Objective = "binary",
        num_rounds: int = 100,
        learning_rate: float = 0.1,
        num_leaves: int = 31,
        min_data_in_leaf: int = 20,
        feature_fraction: float = 1.0,
        bagging_fraction: float = 1.0,
        bagging_freq: int = 0,
        lambda_l2: float = 0.0,
        seed: int = 0,
        num_threads: int = 2,
        params: Mapping[str, Any] | None = None,
    ) -> None:
        self.objective = objective
        self.num_rounds = num_rounds
        self.learning_rate = learning_rate
        self.num_leaves = num_leaves
        self.min_data_in_leaf = min_data_in_leaf
        self.feature_fraction = feature_fraction
        self.bagging_fraction = bagging_fraction
        self.bagging_freq = bagging_freq
        self.lambda_l2 = lambda_l2
        self.seed = seed
        self.num_threads = num_threads
        self.params = params

    @classmethod
    def _library(cls) -> ModuleType:
        import lightgbm

        return lightgbm

    @classmethod
    def _native_errors(cls) -> tuple[type[Exception], ...]:
        import lightgbm

        return (lightgbm.basic.LightGBMError,)

    def _check(self) -> None:
        owner = type(self).__name__
        _integer(owner, "num_rounds", self.num_rounds, minimum=1)
        _number(owner, "learning_rate", self.learning_rate, low=0.0, high=1.0, low_open=True)
        _integer(owner, "num_leaves", self.num_leaves, minimum=2)
        _integer(owner, "min_data_in_leaf", self.min_data_in_leaf, minimum=1)
        _number(owner, "feature_fraction", self.feature_fraction, low=0.0, high=1.0, low_open=True)
        _number(owner, "bagging_fraction", self.bagging_fraction, low=0.0, high=1.0, low_open=True)
        _integer(owner, "bagging_freq", self.bagging_freq, minimum=0)
        _number(owner, "lambda_l2", self.lambda_l2, low=0.0)
        _integer(owner, "seed", self.seed, minimum=0)
        _integer(owner, "num_threads", self.num_threads, minimum=1)
        _native_params(owner, self.params, _LGB_RESERVED)

    def training_params(self) -> dict[str, Any]:
        """The parameters given to ``lightgbm.train``."""
        return {
            "objective": self.objective,
            "num_leaves": int(self.num_leaves),
            "learning_rate": float(self.learning_rate),
            "min_data_in_leaf": int(self.min_data_in_leaf),
            "feature_fraction": float(self.feature_fraction),
            "bagging_fraction": float(self.bagging_fraction),
            "bagging_freq": int(self.bagging_freq),
            "lambda_l2": float(self.lambda_l2),
            "seed": int(self.seed),
            # Same data, same bytes: no thread-count or histogram-layout dependent choices.
            "deterministic": True,
            "force_col_wise": True,
            "num_threads": int(self.num_threads),
            "verbosity": -1,
            **(self.params or {}),
        }

    def _fit(
        self, x: FloatArray, y: FloatArray, names: tuple[str, ...], categorical: tuple[str, ...]
    ) -> None:
        import lightgbm as lgb

        params = self.training_params()
        dataset = lgb.Dataset(
            x,
            label=y,
            feature_name=list(names),
            categorical_feature=list(categorical),
            params=params,
        )
        self.booster_ = lgb.train(params, dataset, num_boost_round=int(self.num_rounds))

    def predict_row(self, row: FloatArray) -> float:
        fast = _fast_rows.get(self.booster_)
        if fast is None:
            fast = _fast_rows[self.booster_] = _FastRow.of(self.booster_, self.n_features_in_)
        if fast is not False and row.shape == (self.n_features_in_,):
            try:
                return fast(row)
            except Exception:  # the general path says what is wrong
                pass
        return super().predict_row(row)

    def _predict(self, x: FloatArray) -> Any:
        # Starting OpenMP threads costs milliseconds; a few rows (a served request) are
        # faster on one. Each row's prediction is the same on any number of threads.
        threads = 1 if x.shape[0] < PARALLEL_PREDICT_ROWS else int(self.num_threads)
        return self.booster_.predict(x, num_threads=threads)

    def _to_bytes(self) -> bytes:
        return str(self.booster_.model_to_string()).encode()

    @classmethod
    def _read(cls, data: bytes, params: dict[str, Any]) -> Any:
        import lightgbm as lgb

        try:
            text = data.decode()
        except UnicodeDecodeError as exc:
            raise _corrupted(cls.kind, "it is not text") from exc
        # LightGBM aborts the whole process on some damaged model texts rather than
        # raising, so a text that is not whole never reaches it.
        lines = text.rstrip("\n").rsplit("\n", 1)
        if (
            not text.startswith("tree\n")
            or "\nend of trees\n" not in text
            or not lines[-1].startswith("pandas_categorical:")
        ):
            raise _corrupted(cls.kind, "it is not a whole LightGBM model text")
        _settle_objective(cls.kind, params, cls._stored_objective(text))
        return lgb.Booster(model_str=text)

    def _adopt(self, native: Any) -> None:
        self.booster_ = native
        self.n_features_in_ = int(native.num_feature())
        self.feature_names_in_ = tuple(native.feature_name())

    @classmethod
    def _stored_objective(cls, text: str) -> Objective:
        for line in text[:4096].splitlines():
            if line.startswith("objective="):
                name = line.removeprefix("objective=").split(" ", 1)[0]
                if name == "binary":
                    return "binary"
                if name == "regression":
                    return "regression"
                raise TrainingError(
                    f"The LightGBM model's objective is {name!r}; loopline reads binary "
                    "classifiers and L2 regressors only.",
                )
        raise _corrupted(cls.kind, "it has no 'objective=' line")


# -- XGBoost ------------------------------------------------------------------------------

_XGB_OBJECTIVES: dict[str, str] = {"binary": "binary:logistic", "regression": "reg:squarederror"}
_XGB_RESERVED: dict[str, str] = {
    "objective": "use 'objective'",
    **dict.fromkeys((*_SEED_KEYS, "random_state"), "use 'seed'"),
    **dict.fromkeys(_THREAD_KEYS, "use 'num_threads'"),
    **dict.fromkeys(("eta", "learning_rate"), "use 'learning_rate'"),
    **dict.fromkeys(("lambda", "reg_lambda"), "use 'reg_lambda'"),
    "max_depth": "use 'max_depth'",
    "min_child_weight": "use 'min_child_weight'",
    "subsample": "use 'subsample'",
    "colsample_bytree": "use 'colsample_bytree'",
    "num_boost_round": "use 'num_rounds'",
    "n_estimators": "use 'num_rounds'",
    "tree_method": "fixed to 'hist'",
}


def _xgboost() -> ModuleType:
    try:
        import xgboost
    except ImportError as exc:
        raise TrainingError(
            "XGBoostModel needs the xgboost package, which is not installed. Install it with: "
            "pip install 'loopline[xgboost]'",
        ) from exc
    return xgboost


class XGBoostModel(ModelAdapter):
    """An XGBoost model (extra ``xgboost``), saved in XGBoost's JSON format.

    Trees are grown with the ``hist`` method; category codes named in ``fit``'s
    ``categorical`` are split on as categories.

    Parameters
    ----------
    objective
        ``'binary'`` (``binary:logistic``) or ``'regression'`` (``reg:squarederror``).
    num_rounds, learning_rate, max_depth, min_child_weight
        Boosting rounds, shrinkage (``eta``), depth of a tree, and smallest hessian sum
        in a child.
    subsample, colsample_bytree, reg_lambda
        Row and column subsampling, and L2 regularization.
    seed, num_threads
        Seed and threads (fixed, so that the model is the same on every run).
    params
        Other XGBoost parameters (``max_bin``, ``gamma``, ...).

    Examples
    --------
    >>> import numpy as np
    >>> x = np.arange(40.0).reshape(20, 2)
    >>> model = XGBoostModel(num_rounds=5).fit(x, x[:, 0] > 19)
    >>> float(model.predict(x[:1])[0]) < 0.5 < float(model.predict(x[-1:])[0])
    True
    """

    kind = "xgboost"
    file_name = "model.json"
    handles_missing = True

    booster_: Any
    feature_types_: tuple[str, ...]

    def __init__(
        self,
        *,
        objective: Objective = "binary",
        num_rounds: int = 100,
        learning_rate: float = 0.3,
        max_depth: int = 6,
        min_child_weight: float = 1.0,
        subsample: float = 1.0,
        colsample_bytree: float = 1.0,
        reg_lambda: float = 1.0,
        seed: int = 0,
        num_threads: int = 2,
        params: Mapping[str, Any] | None = None,
    ) -> None:
        self.objective = objective
        self.num_rounds = num_rounds
        self.learning_rate = learning_rate
        self.max_depth = max_depth
        self.min_child_weight = min_child_weight
        self.subsample = subsample
        self.colsample_bytree = colsample_bytree
        self.reg_lambda = reg_lambda
        self.seed = seed
        self.num_threads = num_threads
        self.params = params

    @classmethod
    def _library(cls) -> ModuleType:
        return _xgboost()

    @classmethod
    def _native_errors(cls) -> tuple[type[Exception], ...]:
        return (_xgboost().core.XGBoostError,)

    def _check(self) -> None:
        owner = type(self).__name__
        _integer(owner, "num_rounds", self.num_rounds, minimum=1)
        _number(owner, "learning_rate", self.learning_rate, low=0.0, high=1.0, low_open=True)
        _integer(owner, "max_depth", self.max_depth, minimum=1)
        _number(owner, "min_child_weight", self.min_child_weight, low=0.0)
        _number(owner, "subsample", self.subsample, low=0.0, high=1.0, low_open=True)
        _number(owner, "colsample_bytree", self.colsample_bytree, low=0.0, high=1.0, low_open=True)
        _number(owner, "reg_lambda", self.reg_lambda, low=0.0)
        _integer(owner, "seed", self.seed, minimum=0)
        _integer(owner, "num_threads", self.num_threads, minimum=1)
        _native_params(owner, self.params, _XGB_RESERVED)

    def training_params(self) -> dict[str, Any]:
        """The parameters given to ``xgboost.train``."""
        return {
            "objective": _XGB_OBJECTIVES[self.objective],
            "eta": float(self.learning_rate),
            "max_depth": int(self.max_depth),
            "min_child_weight": float(self.min_child_weight),
            "subsample": float(self.subsample),
            "colsample_bytree": float(self.colsample_bytree),
            "lambda": float(self.reg_lambda),
            "seed": int(self.seed),
            "nthread": int(self.num_threads),
            "tree_method": "hist",
            "verbosity": 0,
            **(self.params or {}),
        }

    def _matrix_for(self, x: FloatArray, y: FloatArray | None = None) -> Any:
        xgb = _xgboost()
        return xgb.DMatrix(
            x,
            label=y,
            feature_names=list(self.feature_names_in_),
            feature_types=list(self.feature_types_),
            enable_categorical="c" in self.feature_types_,
            nthread=int(self.num_threads),
        )

    def _fit(
        self, x: FloatArray, y: FloatArray, names: tuple[str, ...], categorical: tuple[str, ...]
    ) -> None:
        xgb = _xgboost()
        self.feature_names_in_ = names
        self.feature_types_ = tuple("c" if name in categorical else "q" for name in names)
        self.booster_ = xgb.train(
            self.training_params(), self._matrix_for(x, y), num_boost_round=int(self.num_rounds)
        )

    def _predict(self, x: FloatArray) -> Any:
        return self.booster_.predict(self._matrix_for(x))

    def _to_bytes(self) -> bytes:
        return bytes(self.booster_.save_raw("json"))

    @classmethod
    def _read(cls, data: bytes, params: dict[str, Any]) -> Any:
        xgb = _xgboost()
        _settle_objective(cls.kind, params, cls._stored_objective(data))
        booster = xgb.Booster()
        booster.load_model(bytearray(data))
        return booster

    def _adopt(self, native: Any) -> None:
        native.set_param({"nthread": int(self.num_threads)})
        self.booster_ = native
        self.n_features_in_ = int(native.num_features())
        names = tuple(native.feature_names or ())
        self.feature_names_in_ = (
            names
            if len(names) == self.n_features_in_
            else tuple(f"f{i}" for i in range(self.n_features_in_))
        )
        types = tuple(native.feature_types or ())
        self.feature_types_ = (
            types if len(types) == self.n_features_in_ else ("q",) * self.n_features_in_
        )

    @classmethod
    def _stored_objective(cls, data: bytes) -> Objective:
        try:
            name = json.loads(data)["learner"]["objective"]["name"]
        except (ValueError, KeyError, TypeError) as exc:
            raise _corrupted(cls.kind, f"no objective could be read ({exc})") from exc
        if name == _XGB_OBJECTIVES["binary"]:
            return "binary"
        if name == _XGB_OBJECTIVES["regression"]:
            return "regression"
        raise TrainingError(
            f"The XGBoost model's objective is {name!r}; loopline reads "
            f"{' and '.join(_XGB_OBJECTIVES.values())} models only.",
        )


# -- scikit-learn -------------------------------------------------------------------------

_EPOCH = (1980, 1, 1, 0, 0, 0)


def _canonical_skops(data: bytes) -> bytes:
    """skops' archive with its object ids, file names and timestamps made stable.

    skops names array files after ``id()`` of the arrays, records those ids in its schema
    and stamps each member with the current time, so the same estimator saved twice gives
    different bytes. Renumbering ids and files in the order the schema lists them (a
    one-to-one renaming, so objects shared in memory stay shared) and fixing the
    timestamps gives the same bytes for the same estimator.
    """
    with zipfile.ZipFile(io.BytesIO(data)) as source:
        members = set(source.namelist())
        schema = json.loads(source.read("schema.json"))
        ids: dict[int, int] = {}
        files: dict[str, str] = {}

        def renumber(node: Any) -> None:
            if isinstance(node, dict):
                if isinstance(node.get("__id__"), int):
                    node["__id__"] = ids.setdefault(node["__id__"], len(ids) + 1)
                name = node.get("file")
                if isinstance(name, str) and name in members:
                    suffix = name[name.rfind(".") :] if "." in name else ""
                    node["file"] = files.setdefault(name, f"{len(files) + 1}{suffix}")
                for value in node.values():
                    renumber(value)
            elif isinstance(node, list):
                for value in node:
                    renumber(value)

        renumber(schema)
        out = io.BytesIO()
        with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_STORED) as target:
            for old, new in sorted(files.items(), key=lambda item: int(item[1].split(".")[0])):
                target.writestr(_zip_info(new), source.read(old))
            target.writestr(_zip_info("schema.json"), json.dumps(schema, indent=1))
    return out.getvalue()


def _zip_info(name: str, compress_type: int = zipfile.ZIP_STORED) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name, date_time=_EPOCH)
    info.compress_type = compress_type
    info.create_system = 3  # the same on every platform
    info.external_attr = 0o644 << 16
    return info


class SklearnModel(ModelAdapter):
    """Any scikit-learn estimator or Pipeline, saved with skops (never with pickle).

    Reading the file back checks every type in it against skops' list of trusted
    types and ``trusted``; a type on neither list is refused (skops would otherwise
    import and run it). The check is made when the model is saved too, so that a
    bundle that cannot be read again is never written.

    Parameters
    ----------
    estimator
        The unfitted estimator; ``fit`` fits a clone of it. A binary classifier needs
        ``predict_proba``.
    objective
        ``'binary'`` or ``'regression'``.
    seed
        Given to every ``random_state`` parameter (nested ones too) left at None.
    trusted
        Further types, by full name (``'sklearn.tree._tree.Tree'``), that skops may
        load; only for estimators from a source you trust.

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn.linear_model import LogisticRegression
    >>> x = np.arange(20.0).reshape(10, 2)
    >>> model = SklearnModel(estimator=LogisticRegression()).fit(x, x[:, 0] > 9)
    >>> again = SklearnModel.from_bytes(model.to_bytes())
    >>> bool(np.array_equal(again.predict(x), model.predict(x)))
    True
    """

    kind = "sklearn"
    file_name = "model.skops"
    handles_missing = False

    estimator_: Any
    positive_index_: int

    def __init__(
        self,
        *,
        estimator: Any,
        objective: Objective = "binary",
        seed: int = 0,
        trusted: Sequence[str] = (),
    ) -> None:
        self.estimator = estimator
        self.objective = objective
        self.seed = seed
        self.trusted = trusted

    @classmethod
    def _library(cls) -> ModuleType:
        import sklearn

        return cast(ModuleType, sklearn)

    @property
    def library_version(self) -> str:
        import skops

        return f"{super().library_version} (skops {skops.__version__})"

    @classmethod
    def _native_errors(cls) -> tuple[type[Exception], ...]:
        return (ValueError, TypeError)

    def to_params(self) -> dict[str, Any]:
        # The estimator itself travels in the skops file.
        return {"objective": self.objective, "seed": self.seed, "trusted": list(self.trusted)}

    def _describe(self) -> str:
        return f"estimator={self.estimator!r}, " + super()._describe()

    def _check(self) -> None:
        from sklearn.base import is_classifier, is_regressor

        owner = type(self).__name__
        estimator = self.estimator
        if not (hasattr(estimator, "fit") and hasattr(estimator, "get_params")):
            raise _bad(owner, "estimator", "a scikit-learn estimator or Pipeline", estimator)
        if self.objective == "binary" and (
            is_regressor(estimator) or not hasattr(estimator, "predict_proba")
        ):
            raise _bad(
                owner,
                "estimator",
                "a classifier with predict_proba for objective='binary' (or set "
                "objective='regression')",
                estimator,
            )
        if self.objective == "regression" and (
            is_classifier(estimator) or not hasattr(estimator, "predict")
        ):
            raise _bad(
                owner,
                "estimator",
                "a regressor for objective='regression' (or set objective='binary')",
                estimator,
            )
        _integer(owner, "seed", self.seed, minimum=0)
        if isinstance(self.trusted, str) or not all(isinstance(t, str) for t in self.trusted):
            raise _bad(owner, "trusted", "a list of type names", self.trusted)

    def _fit(
        self, x: FloatArray, y: FloatArray, names: tuple[str, ...], categorical: tuple[str, ...]
    ) -> None:
        from sklearn.base import clone

        estimator = clone(self.estimator)
        unseeded = {
            key: int(self.seed)
            for key, value in estimator.get_params(deep=True).items()
            if (key == "random_state" or key.endswith("__random_state")) and value is None
        }
        estimator.set_params(**unseeded)
        if self.objective == "binary":
            estimator.fit(x, y.astype(np.int64))
            self.positive_index_ = list(estimator.classes_).index(1)
        else:
            estimator.fit(x, y)
        self.estimator_ = estimator

    def _predict(self, x: FloatArray) -> Any:
        if self.objective == "binary":
            return self.estimator_.predict_proba(x)[:, self.positive_index_]
        return self.estimator_.predict(x)

    def _to_bytes(self) -> bytes:
        import skops.io

        data = _canonical_skops(skops.io.dumps(self.estimator_))
        _trusted_types(data, self.trusted)
        return data

    @classmethod
    def _read(cls, data: bytes, params: dict[str, Any]) -> Any:
        import skops.io
        from sklearn.base import clone, is_classifier

        trusted = params.get("trusted", ())
        if isinstance(trusted, str) or not all(isinstance(t, str) for t in trusted):
            raise _bad(cls.__name__, "trusted", "a list of type names", trusted)
        allowed = _trusted_types(data, trusted)
        try:
            estimator = skops.io.loads(data, trusted=allowed)
        except (zipfile.BadZipFile, KeyError, OSError) as exc:
            raise _corrupted(cls.kind, f"skops cannot read it ({exc})") from exc
        stored: Objective = "binary" if is_classifier(estimator) else "regression"
        _settle_objective(cls.kind, params, stored)
        params.setdefault("estimator", clone(estimator))
        return estimator

    def _adopt(self, native: Any) -> None:
        self.estimator_ = native
        self.n_features_in_ = int(native.n_features_in_)
        self.feature_names_in_ = tuple(f"f{i}" for i in range(self.n_features_in_))
        if self.objective == "binary":
            self.positive_index_ = list(native.classes_).index(1)


def _trusted_types(data: bytes, trusted: Sequence[str]) -> list[str]:
    """The types in a skops file beyond skops' own trusted list, all of which ``trusted``
    must name; ``TrainingError`` naming the others."""
    import skops.io

    try:
        untrusted = skops.io.get_untrusted_types(data=data)
    except (zipfile.BadZipFile, KeyError, ValueError, TypeError) as exc:
        raise _corrupted(SklearnModel.kind, f"skops cannot read it ({exc})") from exc
    refused = [name for name in untrusted if name not in set(trusted)]
    if refused:
        raise TrainingError(
            f"The scikit-learn model holds types that skops does not trust: "
            f"{', '.join(refused)}. Loading them could run their code, so loopline refuses. "
            f"If the estimator comes from a source you trust, pass "
            f"SklearnModel(..., trusted={refused!r}).",
            untrusted=refused,
        )
    return list(untrusted)


ADAPTERS: dict[str, type[ModelAdapter]] = {
    LightGBMModel.kind: LightGBMModel,
    XGBoostModel.kind: XGBoostModel,
    SklearnModel.kind: SklearnModel,
}
"""Adapter classes by ``kind``, the name a bundle's manifest records."""


def adapter_class(kind: str) -> type[ModelAdapter]:
    """The adapter class a manifest's ``kind`` names."""
    try:
        return ADAPTERS[kind]
    except KeyError:
        raise TrainingError(
            f"No model adapter is called {kind!r}; loopline knows {', '.join(ADAPTERS)}. A "
            "bundle from a newer loopline needs that version to be read.",
            kind=kind,
        ) from None
