"""Honest evaluation on time-ordered data: splits, metrics, slices, group gaps and a baseline.

A model trained on the past is used on the future, so it is scored the same way: the
rows it is tested on all come after the rows it was trained on.

``time_holdout``
    One split at ``test_start``: the rows before it train, the rows at or after it test.
``rolling_origin``
    Several such splits, one per forecast origin (Tashman, 2000). For an origin ``o`` the
    model trains on every row with time ``<= o`` and is tested on the next ``horizon``
    (``o < time <= o + horizon``). The last window ends at the newest row, the windows
    follow each other without overlap, and the training set grows from fold to fold.
``evaluate``
    Scores predictions: the overall metrics, the same metrics per value of each slice
    column, the spread of each metric across the groups of a sensitive column, and the
    metrics of a baseline (by default a constant predictor at the base rate). The result,
    an ``Evaluation``, flattens to named numbers for the metadata store
    (``Evaluation.metrics()``) and round-trips through JSON; ``loopline.train.report``
    renders it as an HTML page.

Metrics come from scikit-learn wherever it has them. A metric that a set of rows cannot
define (a ROC AUC on a slice with one class, an R² on one row) is null rather than an
error, and is left out of the flat metrics.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any, Literal, TypeAlias, cast

import numpy as np
import numpy.typing as npt
import orjson
import polars as pl
import pyarrow as pa

from loopline.errors import FeatureError, TrainingError

__all__ = [
    "METRICS",
    "NULL_LABEL",
    "CalibrationBin",
    "Evaluation",
    "Gap",
    "Metric",
    "SliceMetrics",
    "Task",
    "evaluate",
    "get_metric",
    "rolling_origin",
    "score",
    "summarize_folds",
    "time_holdout",
]

Task: TypeAlias = Literal["binary", "regression"]
Vector: TypeAlias = "npt.ArrayLike | pl.Series"
Frame: TypeAlias = "pl.DataFrame | pa.Table"
TimeValue: TypeAlias = "datetime | date | int | float | str"
Scores: TypeAlias = dict[str, "float | None"]
Array: TypeAlias = npt.NDArray[np.float64]

TASKS: tuple[Task, ...] = ("binary", "regression")
NULL_LABEL = "(null)"
"""How a null slice or group value is named in flat metrics and in the report."""
MAX_CURVE_POINTS = 200
"""ROC and precision-recall curves keep at most this many points (enough to draw them)."""
_GAP_RATES = frozenset({"positive_prediction_rate"})  # gapped though neither score nor loss
_FORMAT = 1  # version of the JSON document written by Evaluation.to_json


# --------------------------------------------------------------------------- metrics


@dataclass(frozen=True)
class Metric:
    """A metric ``evaluate`` computes: its name, task, direction and meaning.

    Parameters
    ----------
    name
        The name used in ``Evaluation`` and, prefixed, in the flat metrics.
    task
        ``"binary"`` or ``"regression"``.
    greater_is_better
        True for a score, False for a loss, None for a figure that is neither (a
        threshold, a rate of positive predictions, a count).
    description
        One line for people.

    Examples
    --------
    >>> METRICS["log_loss"].greater_is_better
    False
    >>> sorted(name for name, m in METRICS.items() if m.task == "regression")
    ['mae', 'mape', 'mape_excluded_rows', 'r2', 'rmse']
    """

    name: str
    task: Task
    greater_is_better: bool | None
    description: str


METRICS: Mapping[str, Metric] = {
    m.name: m
    for m in (
        Metric("roc_auc", "binary", True, "area under the ROC curve"),
        Metric(
            "pr_auc", "binary", True, "area under the precision-recall curve (average precision)"
        ),
        Metric("log_loss", "binary", False, "mean negative log-likelihood of the labels"),
        Metric("brier", "binary", False, "mean squared error of the probabilities (Brier score)"),
        Metric("precision", "binary", True, "precision at the threshold (0 with no positive call)"),
        Metric("recall", "binary", True, "recall at the threshold"),
        Metric("f1", "binary", True, "F1 score at the threshold"),
        Metric("best_f1", "binary", True, "the highest F1 over all thresholds, on these rows"),
        Metric("best_f1_threshold", "binary", None, "the threshold that gives best_f1"),
        Metric("positive_prediction_rate", "binary", None, "share of rows called positive"),
        Metric("calibration_error", "binary", False, "expected calibration error over the bins"),
        Metric("rmse", "regression", False, "root mean squared error"),
        Metric("mae", "regression", False, "mean absolute error"),
        Metric("r2", "regression", True, "coefficient of determination (R²)"),
        Metric(
            "mape", "regression", False, "mean absolute percentage error, zero targets left out"
        ),
        Metric("mape_excluded_rows", "regression", None, "rows left out of MAPE (zero target)"),
    )
}
"""Every metric by name, in the order ``evaluate`` reports them."""


def _check_task(task: object, owner: str) -> Task:
    if task not in TASKS:
        raise TrainingError(
            f"The 'task' parameter of {owner} must be one of {', '.join(map(repr, TASKS))}. "
            f"Got {task!r}."
        )
    return task


def get_metric(name: str, *, task: Task | None = None) -> Metric:
    """Return the metric called ``name``, optionally checking that it belongs to ``task``.

    Raises
    ------
    TrainingError
        When no metric (of that task) has this name; the message lists the valid names.

    Examples
    --------
    >>> get_metric("roc_auc").description
    'area under the ROC curve'
    >>> get_metric("roc_acu")
    Traceback (most recent call last):
    ...
    loopline.errors.TrainingError: There is no metric named 'roc_acu'. Did you mean 'roc_auc'? ...
    """
    if task is not None:
        _check_task(task, "get_metric")
    valid = [m for m in METRICS.values() if task is None or m.task == task]
    metric = METRICS.get(name) if isinstance(name, str) else None
    if metric is None or metric not in valid:
        names = [m.name for m in valid]
        close = difflib.get_close_matches(str(name), names, n=1, cutoff=0.5)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        kind = f"{task} " if task else ""
        raise TrainingError(
            f"There is no {kind}metric named {name!r}.{hint} Valid names: {', '.join(names)}.",
            metric=name,
        )
    return metric


def score(
    name: str, y: Vector, p: Vector, *, task: Task = "binary", threshold: float = 0.5
) -> float | None:
    """Compute one metric by name; None where the rows cannot define it.

    Parameters
    ----------
    name
        A metric of ``METRICS`` for ``task``.
    y, p
        Labels (0 and 1 for ``"binary"``) and predictions (probabilities of class 1).
    task
        ``"binary"`` or ``"regression"``.
    threshold
        The probability at or above which a row is called positive.

    Examples
    --------
    >>> score("roc_auc", [0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8])
    0.75
    >>> score("mape", [0.0, 2.0, 4.0], [1.0, 1.0, 5.0], task="regression")
    0.375
    """
    task = _check_task(task, "score")
    metric = get_metric(name, task=task)
    threshold = _check_threshold(threshold, task)
    y_, p_ = _inputs(y, p, task)
    if task == "binary":
        _check_two_classes(y_, "y")
        return _binary_scores(y_, p_, threshold, bins=10)[metric.name]
    return _regression_scores(y_, p_)[metric.name]


def _binary_scores(y: Array, p: Array, threshold: float, *, bins: int) -> Scores:
    """Every binary metric of one set of rows; labels may hold one class (a slice)."""
    from sklearn import metrics as skm

    positives = int(y.sum())
    both = 0 < positives < y.size
    called = (p >= threshold).astype(np.float64)
    precision, recall, f1, _ = skm.precision_recall_fscore_support(
        y, called, average="binary", pos_label=1.0, zero_division=0.0
    )
    best_f1, best_threshold = _best_f1(y, p) if both else (None, None)
    calibration = _calibration(y, p, _uniform_edges(bins))
    return {
        "roc_auc": float(skm.roc_auc_score(y, p)) if both else None,
        "pr_auc": float(skm.average_precision_score(y, p)) if both else None,
        "log_loss": float(skm.log_loss(y, p, labels=[0.0, 1.0])),
        "brier": float(skm.brier_score_loss(y, p, labels=[0.0, 1.0])),
        "precision": float(precision),
        # Without a positive row, recall (and so F1) has no meaning; 0 would read as a failure.
        "recall": float(recall) if positives else None,
        "f1": float(f1) if positives else None,
        "best_f1": best_f1,
        "best_f1_threshold": best_threshold,
        "positive_prediction_rate": float(called.mean()),
        "calibration_error": float(
            sum(b.count * abs(b.mean_predicted - b.observed) for b in calibration) / y.size
        ),
    }


def _best_f1(y: Array, p: Array) -> tuple[float, float]:
    """The highest F1 over the thresholds of the precision-recall curve, and its threshold."""
    from sklearn.metrics import precision_recall_curve

    precision, recall, thresholds = precision_recall_curve(y, p)
    f1 = np.divide(
        2 * precision * recall,
        precision + recall,
        out=np.zeros_like(precision),
        where=(precision + recall) > 0,
    )
    # The curve's last point (precision 1, recall 0) has no threshold.
    best = int(np.argmax(f1[:-1]))
    return float(f1[best]), float(thresholds[best])


def _regression_scores(y: Array, p: Array) -> Scores:
    from sklearn import metrics as skm

    nonzero = y != 0
    # R² compares with the variance of the target, which one row or a constant lacks.
    defined_r2 = y.size >= 2 and bool(np.ptp(y) > 0)
    return {
        "rmse": float(skm.root_mean_squared_error(y, p)),
        "mae": float(skm.mean_absolute_error(y, p)),
        "r2": float(skm.r2_score(y, p)) if defined_r2 else None,
        "mape": (
            float(skm.mean_absolute_percentage_error(y[nonzero], p[nonzero]))
            if nonzero.any()
            else None
        ),
        "mape_excluded_rows": float(y.size - int(nonzero.sum())),
    }


def _scores(task: Task, y: Array, p: Array, threshold: float, bins: int) -> Scores:
    if task == "binary":
        return _binary_scores(y, p, threshold, bins=bins)
    return _regression_scores(y, p)


# --------------------------------------------------------------------------- results


@dataclass(frozen=True)
class CalibrationBin:
    """One bin of predictions: how many rows, their mean prediction and the observed mean.

    For a binary model the bins split [0, 1] evenly and ``observed`` is the rate of
    positives; for a regression model they hold equal numbers of predictions and
    ``observed`` is the mean target. A calibrated model has ``observed`` close to
    ``mean_predicted`` in every bin.

    Examples
    --------
    >>> CalibrationBin(lower=0.0, upper=0.1, count=40, mean_predicted=0.06, observed=0.05).count
    40
    """

    lower: float
    upper: float
    count: int
    mean_predicted: float
    observed: float


@dataclass(frozen=True)
class SliceMetrics:
    """The metrics of the rows where ``column`` equals ``value``.

    ``value`` is the slice value as text, None for the rows where the column is null;
    ``positives`` is None for a regression.

    Examples
    --------
    >>> s = SliceMetrics(column="origin", value="JFK", rows=3, positives=1,
    ...                  metrics={"roc_auc": 1.0})
    >>> s.label
    'JFK'
    """

    column: str
    value: str | None
    rows: int
    positives: int | None
    metrics: Mapping[str, float | None]

    @property
    def label(self) -> str:
        """The value as shown and as used in flat metric names (``NULL_LABEL`` for null)."""
        return NULL_LABEL if self.value is None else self.value


@dataclass(frozen=True)
class Gap:
    """The spread of one metric across the groups of the sensitive column.

    ``gap`` is ``highest - lowest`` over the groups where the metric is defined.

    Examples
    --------
    >>> Gap(metric="recall", gap=0.25, highest_group="F", highest=0.75,
    ...     lowest_group="M", lowest=0.5).gap
    0.25
    """

    metric: str
    gap: float
    highest_group: str | None
    highest: float
    lowest_group: str | None
    lowest: float


@dataclass(frozen=True)
class Evaluation:
    """The scores of one model on one set of rows, beside a baseline.

    Built by ``evaluate``. ``metrics()`` flattens it for the metadata store, ``to_json``
    and ``from_json`` store it, and ``loopline.train.report.render_report`` draws it.

    Attributes
    ----------
    task, threshold
        As given to ``evaluate``.
    rows, positives
        How many rows were scored and how many are positive (None for a regression).
    overall
        Every metric of ``task`` (``METRICS``) by name; None where undefined.
    baseline, baseline_description
        The same metrics for the baseline predictions, and what the baseline was.
    calibration
        The calibration table (bins with at least one row).
    roc_curve, pr_curve
        Points (false positive rate, true positive rate) and (recall, precision), at most
        ``MAX_CURVE_POINTS`` of each; empty for a regression.
    slices
        One entry per value of each slice column, columns in the order given, values sorted
        (null last).
    sensitive, groups, gaps
        The sensitive column, the metrics of each of its groups and the gap of each metric.

    Examples
    --------
    >>> e = evaluate([0, 0, 1, 1], [0.2, 0.6, 0.4, 0.9])
    >>> e.overall["roc_auc"], e.baseline["roc_auc"]
    (0.75, 0.5)
    >>> e.metrics()["test_f1"]
    0.5
    >>> Evaluation.from_json(e.to_json()) == e
    True
    """

    task: Task
    threshold: float
    rows: int
    positives: int | None
    overall: Mapping[str, float | None]
    baseline: Mapping[str, float | None]
    baseline_description: str
    calibration: tuple[CalibrationBin, ...] = ()
    roc_curve: tuple[tuple[float, float], ...] = ()
    pr_curve: tuple[tuple[float, float], ...] = ()
    slices: tuple[SliceMetrics, ...] = ()
    sensitive: str | None = None
    groups: tuple[SliceMetrics, ...] = ()
    gaps: tuple[Gap, ...] = ()

    def _flat(self) -> dict[str, float | None]:
        flat: dict[str, float | None] = {"test_rows": float(self.rows)}
        if self.positives is not None:
            flat["test_positives"] = float(self.positives)
        flat |= {f"test_{name}": value for name, value in self.overall.items()}
        flat |= {f"baseline_{name}": value for name, value in self.baseline.items()}
        for s in self.slices:
            prefix = f"slice.{s.column}={s.label}."
            flat[prefix + "rows"] = float(s.rows)
            if s.positives is not None:
                flat[prefix + "positives"] = float(s.positives)
            flat |= {prefix + name: value for name, value in s.metrics.items()}
        flat |= {f"gap.{g.metric}": g.gap for g in self.gaps}
        return flat

    def metrics(self) -> dict[str, float]:
        """Every defined number under a flat name, for ``log_metrics`` and the gate.

        ``test_<metric>`` and ``test_rows`` / ``test_positives`` for the whole set,
        ``baseline_<metric>``, ``slice.<column>=<value>.<metric>`` (and ``.rows``,
        ``.positives``) and ``gap.<metric>``. Undefined (null) metrics are left out.
        """
        return {name: value for name, value in self._flat().items() if value is not None}

    def metric(self, name: str) -> float:
        """Return one flat metric, such as ``"test_roc_auc"`` or ``"gap.recall"``.

        Raises
        ------
        TrainingError
            When the name is unknown (the message suggests the closest names), or the
            metric is undefined on these rows (a slice with one class has no AUC).
        """
        flat = self._flat()
        if name not in flat:
            close = difflib.get_close_matches(name, list(flat), n=3, cutoff=0.6)
            hint = f" Did you mean {' or '.join(map(repr, close))}?" if close else ""
            raise TrainingError(
                f"The evaluation has no metric named {name!r}.{hint} Its metrics are "
                f"test_<name> and baseline_<name> for {', '.join(self.overall)}, plus "
                f"slice.<column>=<value>.<name> and gap.<name>; Evaluation.metrics() "
                f"lists them all.",
                metric=name,
            )
        value = flat[name]
        if value is None:
            raise TrainingError(
                f"The metric {name!r} is undefined on the evaluated rows (for example an AUC "
                f"on rows of a single class); choose another metric or a larger slice.",
                metric=name,
            )
        return value

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict holding everything; ``from_dict`` rebuilds the evaluation."""

        def slice_dict(s: SliceMetrics) -> dict[str, Any]:
            return {
                "column": s.column,
                "value": s.value,
                "rows": s.rows,
                "positives": s.positives,
                "metrics": dict(s.metrics),
            }

        return {
            "format": _FORMAT,
            "task": self.task,
            "threshold": self.threshold,
            "rows": self.rows,
            "positives": self.positives,
            "overall": dict(self.overall),
            "baseline": dict(self.baseline),
            "baseline_description": self.baseline_description,
            "calibration": [
                {
                    "lower": b.lower,
                    "upper": b.upper,
                    "count": b.count,
                    "mean_predicted": b.mean_predicted,
                    "observed": b.observed,
                }
                for b in self.calibration
            ],
            "roc_curve": [list(point) for point in self.roc_curve],
            "pr_curve": [list(point) for point in self.pr_curve],
            "slices": [slice_dict(s) for s in self.slices],
            "sensitive": self.sensitive,
            "groups": [slice_dict(s) for s in self.groups],
            "gaps": [
                {
                    "metric": g.metric,
                    "gap": g.gap,
                    "highest_group": g.highest_group,
                    "highest": g.highest,
                    "lowest_group": g.lowest_group,
                    "lowest": g.lowest,
                }
                for g in self.gaps
            ],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Evaluation:
        """Rebuild an evaluation from ``to_dict``'s output.

        Raises
        ------
        TrainingError
            When ``data`` is not such a document.
        """
        try:
            if data["format"] != _FORMAT:
                raise TrainingError(
                    f"The evaluation document has format {data['format']!r}; this version of "
                    f"loopline reads format {_FORMAT}. Evaluate the model again."
                )

            def slice_of(d: Mapping[str, Any]) -> SliceMetrics:
                return SliceMetrics(
                    column=str(d["column"]),
                    value=None if d["value"] is None else str(d["value"]),
                    rows=int(d["rows"]),
                    positives=None if d["positives"] is None else int(d["positives"]),
                    metrics=_scores_of(d["metrics"]),
                )

            return cls(
                task=_check_task(data["task"], "Evaluation"),
                threshold=float(data["threshold"]),
                rows=int(data["rows"]),
                positives=None if data["positives"] is None else int(data["positives"]),
                overall=_scores_of(data["overall"]),
                baseline=_scores_of(data["baseline"]),
                baseline_description=str(data["baseline_description"]),
                calibration=tuple(
                    CalibrationBin(
                        lower=float(b["lower"]),
                        upper=float(b["upper"]),
                        count=int(b["count"]),
                        mean_predicted=float(b["mean_predicted"]),
                        observed=float(b["observed"]),
                    )
                    for b in data["calibration"]
                ),
                roc_curve=tuple((float(x), float(y)) for x, y in data["roc_curve"]),
                pr_curve=tuple((float(x), float(y)) for x, y in data["pr_curve"]),
                slices=tuple(slice_of(s) for s in data["slices"]),
                sensitive=None if data["sensitive"] is None else str(data["sensitive"]),
                groups=tuple(slice_of(s) for s in data["groups"]),
                gaps=tuple(
                    Gap(
                        metric=str(g["metric"]),
                        gap=float(g["gap"]),
                        highest_group=g["highest_group"],
                        highest=float(g["highest"]),
                        lowest_group=g["lowest_group"],
                        lowest=float(g["lowest"]),
                    )
                    for g in data["gaps"]
                ),
            )
        except (KeyError, TypeError, ValueError) as exc:
            if isinstance(exc, TrainingError):
                raise
            raise TrainingError(
                f"This is not an evaluation document written by Evaluation.to_json "
                f"({type(exc).__name__}: {exc}). Evaluate the model again to rebuild it."
            ) from exc

    def to_json(self) -> str:
        """The evaluation as JSON text, keys sorted: equal evaluations give equal text."""
        return orjson.dumps(self.to_dict(), option=orjson.OPT_SORT_KEYS).decode()

    @classmethod
    def from_json(cls, text: str | bytes) -> Evaluation:
        """Rebuild an evaluation from ``to_json``'s text.

        Raises
        ------
        TrainingError
            When the text is not JSON or not an evaluation document.
        """
        try:
            data = orjson.loads(text)
        except orjson.JSONDecodeError as exc:
            raise TrainingError(
                f"The evaluation document is not valid JSON ({exc}). Evaluate the model again."
            ) from exc
        if not isinstance(data, dict):
            raise TrainingError(
                "The evaluation document must be a JSON object written by Evaluation.to_json. "
                f"Got a JSON {type(data).__name__}."
            )
        return cls.from_dict(data)


def _scores_of(data: Mapping[str, Any]) -> Scores:
    # The JSON keys are sorted; the metrics go back into METRICS order (the report's order).
    order = {name: i for i, name in enumerate(METRICS)}
    keys = sorted(data, key=lambda k: (order.get(k, len(order)), k))
    return {str(k): None if data[k] is None else float(data[k]) for k in keys}


# --------------------------------------------------------------------------- evaluate


def evaluate(
    y: Vector,
    p: Vector,
    *,
    task: Task = "binary",
    threshold: float = 0.5,
    frame: Frame | None = None,
    slices: Sequence[str] = ("origin",),
    sensitive: str | None = None,
    baseline: float | Vector | None = None,
    bins: int = 10,
) -> Evaluation:
    """Score predictions ``p`` of labels ``y``: overall, per slice, across groups, vs a baseline.

    Parameters
    ----------
    y
        The labels: 0 and 1 (or booleans) for ``"binary"``, numbers for ``"regression"``.
        A binary label must hold both classes.
    p
        The predictions, one per label: the probability of class 1 for ``"binary"``.
    task
        ``"binary"`` or ``"regression"``.
    threshold
        A row with ``p >= threshold`` is called positive (precision, recall, F1 and the
        positive-prediction rate); in (0, 1).
    frame
        The evaluated rows (a Polars DataFrame or an Arrow table, in the order of ``y``),
        holding the slice and sensitive columns. Without it there are no slices.
    slices
        Columns to slice by: one ``SliceMetrics`` per distinct value of each.
    sensitive
        A column (of ``frame``) whose groups are compared: for each metric, and for the
        positive-prediction rate, the gap between the highest and the lowest group.
    baseline
        The predictions to compare with: None for a constant at the mean label of the
        evaluated rows (the base rate), a number for another constant (say the training
        set's positive rate), or one prediction per row (another model).
    bins
        Bins of the calibration table.

    Returns
    -------
    Evaluation

    Raises
    ------
    TrainingError
        On a binary label with one class or values other than 0 and 1, predictions that
        are NaN (or outside [0, 1] for a binary task), lengths that do not match, a slice
        or sensitive column that the frame lacks, or an invalid parameter.

    Examples
    --------
    >>> import polars as pl
    >>> rows = pl.DataFrame({"origin": ["JFK", "JFK", "LGA", "LGA", "LGA"]})
    >>> e = evaluate([0, 1, 0, 1, 1], [0.3, 0.7, 0.6, 0.4, 0.9], frame=rows)
    >>> e.metrics()["slice.origin=JFK.roc_auc"], e.metrics()["slice.origin=LGA.roc_auc"]
    (1.0, 0.5)
    """
    task = _check_task(task, "evaluate")
    threshold = _check_threshold(threshold, task)
    if isinstance(bins, bool) or not isinstance(bins, int) or bins < 1:
        raise TrainingError(
            f"The 'bins' parameter of evaluate must be a positive integer. Got {bins!r}."
        )
    y_, p_ = _inputs(y, p, task)
    if task == "binary":
        _check_two_classes(y_, "y")
    columns = _check_columns(slices, frame, sensitive)
    table = None if frame is None else _frame_of(frame, y_.size)
    base, description = _baseline(baseline, y_, task)

    # Each column is sliced once, even when it is both a slice and the sensitive column.
    by_column: dict[str, tuple[SliceMetrics, ...]] = {}
    if table is not None:
        for name in dict.fromkeys([*columns, *([sensitive] if sensitive else [])]):
            by_column[name] = tuple(_slice(table, name, y_, p_, task, threshold, bins))
    groups = by_column.get(sensitive, ()) if sensitive else ()
    edges = _uniform_edges(bins) if task == "binary" else _quantile_edges(p_, bins)
    return Evaluation(
        task=task,
        threshold=threshold,
        rows=int(y_.size),
        positives=int(y_.sum()) if task == "binary" else None,
        overall=_scores(task, y_, p_, threshold, bins),
        baseline=_scores(task, y_, base, threshold, bins),
        baseline_description=description,
        calibration=_calibration(y_, p_, edges),
        roc_curve=_roc_points(y_, p_) if task == "binary" else (),
        pr_curve=_pr_points(y_, p_) if task == "binary" else (),
        slices=tuple(s for name in columns for s in by_column.get(name, ())),
        sensitive=sensitive,
        groups=groups,
        gaps=_gaps(groups, task),
    )


def _check_threshold(threshold: object, task: Task) -> float:
    if (
        isinstance(threshold, bool)
        or not isinstance(threshold, int | float)
        or (task == "binary" and not 0 < threshold < 1)
        or not math.isfinite(threshold)
    ):
        raise TrainingError(
            f"The 'threshold' parameter must be a probability strictly between 0 and 1, "
            f"such as 0.5. Got {threshold!r}."
        )
    return float(threshold)


def _vector(values: object, name: str) -> Array:
    if isinstance(values, pl.Series):
        values = values.cast(pl.Float64, strict=False).to_numpy()
    try:
        array = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise TrainingError(
            f"{name} must be numbers, one per row. Could not read it as numbers: {exc}."
        ) from exc
    if array.ndim != 1:
        raise TrainingError(
            f"{name} must be one-dimensional (one number per row); got shape {array.shape}. "
            f"For a classifier's predict_proba output pass the positive class, p[:, 1]."
        )
    return array


def _inputs(
    y: Vector, p: Vector, task: Task, *, what: str = "predictions p"
) -> tuple[Array, Array]:
    y_, p_ = _vector(y, "The labels y"), _vector(p, f"The {what}")
    if y_.size != p_.size:
        raise TrainingError(
            f"The labels y and the {what} must have the same length; y has {y_.size} "
            f"row(s), the {what} {p_.size}. Predict exactly the rows that are labelled."
        )
    if y_.size == 0:
        raise TrainingError("There are no rows to evaluate: y and p are empty.")
    for name, values in (("labels y", y_), (what, p_)):
        bad = int(np.count_nonzero(~np.isfinite(values)))
        if bad:
            raise TrainingError(
                f"The {name} hold {bad} NaN, null or infinite value(s) out of {values.size}. "
                f"Drop or fill those rows before evaluating."
            )
    if task == "binary":
        labels = np.unique(y_)
        if not np.isin(labels, (0.0, 1.0)).all():
            shown = ", ".join(f"{v:g}" for v in labels[:5])
            raise TrainingError(
                f"A binary label must hold only 0 and 1 (or False and True); y holds {shown}"
                f"{', ...' if labels.size > 5 else ''}. Encode the positive class as 1."
            )
        outside = int(np.count_nonzero((p_ < 0) | (p_ > 1)))
        if outside:
            raise TrainingError(
                f"Binary predictions must be probabilities in [0, 1]; {outside} of {p_.size} "
                f"are outside (min {p_.min():g}, max {p_.max():g}). Pass the probability of "
                f"class 1 (predict_proba), not a raw score."
            )
    return y_, p_


def _check_two_classes(y: Array, name: str) -> None:
    positives = int(y.sum())
    if positives in (0, y.size):
        only = "positive (1)" if positives else "negative (0)"
        raise TrainingError(
            f"The label {name} has one class: all {y.size} row(s) are {only}. ROC AUC and the "
            f"other binary metrics need both classes; evaluate on more rows or another period."
        )


def _check_columns(
    slices: Sequence[str], frame: Frame | None, sensitive: str | None
) -> tuple[str, ...]:
    if isinstance(slices, str) or not all(isinstance(s, str) for s in slices):
        raise TrainingError(
            f"The 'slices' parameter of evaluate must be a list of column names, such as "
            f"('origin',). Got {slices!r}."
        )
    if sensitive is not None and not isinstance(sensitive, str):
        raise TrainingError(
            f"The 'sensitive' parameter of evaluate must be a column name. Got {sensitive!r}."
        )
    if frame is None:
        if sensitive is not None:
            raise TrainingError(
                f"The sensitive column {sensitive!r} needs the evaluated rows: pass them as "
                f"frame=..."
            )
        return ()
    names = frame.column_names if isinstance(frame, pa.Table) else frame.columns
    for column in (*slices, *([sensitive] if sensitive else [])):
        if column not in names:
            raise TrainingError(
                f"The frame has no column {column!r} to slice by; its columns are "
                f"{', '.join(names)}. Pass slices=(...) naming existing columns "
                f"(slices=() for none).",
                column=column,
            )
    return tuple(dict.fromkeys(slices))


def _frame_of(frame: Frame, rows: int) -> pl.DataFrame:
    if isinstance(frame, pa.Table):
        frame = cast(pl.DataFrame, pl.from_arrow(frame))  # a Table converts to a DataFrame
    elif not isinstance(frame, pl.DataFrame):
        raise TrainingError(
            f"The 'frame' parameter of evaluate must be a Polars DataFrame or an Arrow table. "
            f"Got {type(frame).__name__}."
        )
    if frame.height != rows:
        raise TrainingError(
            f"The frame has {frame.height} row(s) but y has {rows}; pass the evaluated rows "
            f"themselves, in the order of y."
        )
    return frame


def _baseline(baseline: float | Vector | None, y: Array, task: Task) -> tuple[Array, str]:
    if baseline is None:
        constant = float(y.mean())
        what = "the positive rate" if task == "binary" else "the mean target"
        return np.full(y.shape, constant), f"a constant at {what} of the evaluated rows"
    if isinstance(baseline, int | float) and not isinstance(baseline, bool):
        if not math.isfinite(baseline) or (task == "binary" and not 0 <= baseline <= 1):
            raise TrainingError(
                f"A constant baseline must be a finite number (a probability in [0, 1] for a "
                f"binary task). Got {baseline!r}."
            )
        return np.full(y.shape, float(baseline)), f"a constant at {float(baseline):.6g}"
    _, predicted = _inputs(y, cast(Vector, baseline), task, what="baseline predictions")
    return predicted, "the given baseline predictions"


def _uniform_edges(bins: int) -> Array:
    return np.linspace(0.0, 1.0, bins + 1)


def _quantile_edges(p: Array, bins: int) -> Array:
    # Ties (many equal predictions) would make empty bins; one edge per distinct quantile.
    return np.unique(np.percentile(p, np.linspace(0, 100, bins + 1)))


def _calibration(y: Array, p: Array, edges: Array) -> tuple[CalibrationBin, ...]:
    """Bin the predictions at ``edges`` as scikit-learn's ``calibration_curve`` does."""
    if edges.size < 2:  # every prediction is equal: one bin of zero width
        edges = np.array([edges[0], edges[0]])
    count = edges.size - 1
    ids = np.searchsorted(edges[1:-1], p)
    totals = np.bincount(ids, minlength=count)
    predicted = np.bincount(ids, weights=p, minlength=count)
    observed = np.bincount(ids, weights=y, minlength=count)
    return tuple(
        CalibrationBin(
            lower=float(edges[i]),
            upper=float(edges[i + 1]),
            count=int(totals[i]),
            mean_predicted=float(predicted[i] / totals[i]),
            observed=float(observed[i] / totals[i]),
        )
        for i in range(count)
        if totals[i]
    )


def _thin(xs: Array, ys: Array) -> tuple[tuple[float, float], ...]:
    """At most ``MAX_CURVE_POINTS`` points, evenly by index, both ends kept."""
    keep = np.unique(np.linspace(0, xs.size - 1, min(xs.size, MAX_CURVE_POINTS)).round())
    return tuple((round(float(xs[i]), 6), round(float(ys[i]), 6)) for i in keep.astype(int))


def _roc_points(y: Array, p: Array) -> tuple[tuple[float, float], ...]:
    from sklearn.metrics import roc_curve

    fpr, tpr, _ = roc_curve(y, p)
    return _thin(fpr, tpr)


def _pr_points(y: Array, p: Array) -> tuple[tuple[float, float], ...]:
    from sklearn.metrics import precision_recall_curve

    precision, recall, _ = precision_recall_curve(y, p)
    return _thin(recall[::-1], precision[::-1])


def _slice(
    frame: pl.DataFrame, column: str, y: Array, p: Array, task: Task, threshold: float, bins: int
) -> Iterator[SliceMetrics]:
    series = frame.get_column(column)
    if series.dtype.is_nested() or series.dtype == pl.Object:
        raise TrainingError(
            f"The slice column {column!r} must hold plain values; it is {series.dtype}.",
            column=column,
        )
    if isinstance(series.dtype, pl.Categorical | pl.Enum):
        series = series.cast(pl.String)
    indexed = pl.DataFrame({"value": series, "index": np.arange(series.len())})
    grouped = indexed.group_by("value").agg(pl.col("index")).sort("value", nulls_last=True)
    for value, index in grouped.iter_rows():
        rows = np.asarray(index, dtype=np.int64)
        y_, p_ = y[rows], p[rows]
        yield SliceMetrics(
            column=column,
            value=None if value is None else str(value),
            rows=int(rows.size),
            positives=int(y_.sum()) if task == "binary" else None,
            metrics=_scores(task, y_, p_, threshold, bins),
        )


def _gaps(groups: Sequence[SliceMetrics], task: Task) -> tuple[Gap, ...]:
    names = [
        m.name
        for m in METRICS.values()
        if m.task == task and (m.greater_is_better is not None or m.name in _GAP_RATES)
    ]
    gaps = []
    for name in names:
        values = [(value, g.value) for g in groups if (value := g.metrics.get(name)) is not None]
        if not values:
            continue
        # max/min keep the first of equal values: groups are sorted, so the choice is stable.
        high_value, high_group = max(values, key=lambda v: v[0])
        low_value, low_group = min(values, key=lambda v: v[0])
        gaps.append(
            Gap(
                metric=name,
                gap=high_value - low_value,
                highest_group=high_group,
                highest=high_value,
                lowest_group=low_group,
                lowest=low_value,
            )
        )
    return tuple(gaps)


def summarize_folds(evaluations: Iterable[Evaluation]) -> dict[str, float]:
    """The mean and the standard deviation of each overall metric across folds.

    For the evaluations of ``rolling_origin``'s folds: ``cv_mean_<metric>`` and
    ``cv_std_<metric>`` (population standard deviation) for every metric defined in all
    folds, and ``cv_folds``.

    Examples
    --------
    >>> folds = [evaluate([0, 1, 1], [0.2, 0.7, 0.9]), evaluate([0, 1, 0], [0.6, 0.7, 0.1])]
    >>> summary = summarize_folds(folds)
    >>> summary["cv_folds"], summary["cv_mean_roc_auc"], summary["cv_std_roc_auc"]
    (2.0, 1.0, 0.0)
    """
    folds = list(evaluations)
    if not folds:
        raise TrainingError("summarize_folds needs at least one evaluation; got none.")
    tasks = {e.task for e in folds}
    if len(tasks) > 1:
        raise TrainingError(
            f"summarize_folds needs evaluations of one task; got {', '.join(sorted(tasks))}."
        )
    summary = {"cv_folds": float(len(folds))}
    for name in folds[0].overall:
        values = [e.overall.get(name) for e in folds]
        if all(v is not None for v in values):
            numbers = np.asarray(values, dtype=np.float64)
            summary[f"cv_mean_{name}"] = float(numbers.mean())
            summary[f"cv_std_{name}"] = float(numbers.std())
    return summary


# --------------------------------------------------------------------------- splits


def _time_kind(frame: object, time: str, owner: str) -> tuple[pl.DataFrame, pl.DataType]:
    if isinstance(frame, pa.Table):
        frame = cast(pl.DataFrame, pl.from_arrow(frame))  # a Table converts to a DataFrame
    if not isinstance(frame, pl.DataFrame):
        raise TrainingError(
            f"{owner} needs a Polars DataFrame or an Arrow table. Got {type(frame).__name__}."
        )
    if time not in frame.columns:
        raise TrainingError(
            f"The 'time' parameter of {owner} must name a column of the frame; there is no "
            f"{time!r} among {', '.join(frame.columns)}.",
            column=time,
        )
    dtype = frame.schema[time]
    if not (dtype.is_temporal() and dtype != pl.Duration and dtype != pl.Time) and not (
        dtype.is_numeric()
    ):
        raise TrainingError(
            f"The time column {time!r} must hold dates, datetimes or numbers; it is {dtype}. "
            f"Parse it first (for example with pl.col({time!r}).str.to_datetime()).",
            column=time,
        )
    nulls = frame.get_column(time).null_count()
    if nulls:
        raise TrainingError(
            f"The time column {time!r} has {nulls} null value(s); such rows belong to neither "
            f"side of a time split. Drop or fill them first.",
            column=time,
        )
    if frame.height == 0:
        raise TrainingError(f"{owner} got an empty frame: there are no rows to split.")
    return frame, dtype


def _time_point(value: object, dtype: pl.DataType, time: str, parameter: str) -> Any:
    """Check that ``value`` can be compared with the column, parsing an ISO string."""
    if dtype.is_numeric():
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise TrainingError(
                f"The {parameter!r} parameter must be a number, as the time column {time!r} is "
                f"{dtype}. Got {value!r}.",
                column=time,
            )
        return value
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value)
        except ValueError as exc:
            raise TrainingError(
                f"The {parameter!r} parameter must be a date or a time such as '2013-10-01'. "
                f"Got {value!r}.",
                column=time,
            ) from exc
    if not isinstance(value, date):
        raise TrainingError(
            f"The {parameter!r} parameter must be a date or datetime, as the time column "
            f"{time!r} is {dtype}. Got {value!r}.",
            column=time,
        )
    if isinstance(dtype, pl.Datetime) and isinstance(value, datetime):
        aware = value.tzinfo is not None
        if aware != (dtype.time_zone is not None):
            zone = f"in time zone {dtype.time_zone}" if dtype.time_zone else "without a time zone"
            raise TrainingError(
                f"The time column {time!r} holds times {zone}, but {parameter}={value!r} is "
                f"{'aware' if aware else 'naive'}; give a time of the same kind.",
                column=time,
            )
    return value


def _describe(value: object) -> str:
    return value.isoformat() if isinstance(value, date) else repr(value)


def time_holdout(
    frame: Frame, *, time: str, test_start: TimeValue
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Split ``frame`` at ``test_start``: rows before it train, rows at or after it test.

    Parameters
    ----------
    frame
        The rows, as a Polars DataFrame or an Arrow table.
    time
        The column that orders them in time: dates, datetimes or numbers, without nulls.
    test_start
        The first time of the test set: a date, a datetime (aware when the column has a
        time zone), an ISO string such as ``"2013-10-01"``, or a number.

    Returns
    -------
    tuple of polars.DataFrame
        ``(train, test)``, each in the frame's row order.

    Raises
    ------
    TrainingError
        When either side would be empty, the column is missing, null or not a time, or
        ``test_start`` cannot be compared with it.

    Examples
    --------
    >>> import polars as pl
    >>> rows = pl.DataFrame({"month": [1, 11, 3, 10, 12], "delayed": [0, 1, 0, 1, 1]})
    >>> train, test = time_holdout(rows, time="month", test_start=10)
    >>> train["month"].to_list(), test["month"].to_list()
    ([1, 3], [11, 10, 12])
    """
    table, dtype = _time_kind(frame, time, "time_holdout")
    start = _time_point(test_start, dtype, time, "test_start")
    before = pl.col(time) < start
    train, test = table.filter(before), table.filter(~before)
    if train.height == 0 or test.height == 0:
        column = table.get_column(time)
        side = "before" if train.height == 0 else "at or after"
        raise TrainingError(
            f"time_holdout at test_start={_describe(start)} leaves no row {side} it: the column "
            f"{time!r} runs from {_describe(column.min())} to {_describe(column.max())}. Choose "
            f"a test_start inside that range.",
            column=time,
        )
    return train, test


def _horizon(value: object, dtype: pl.DataType, time: str) -> Any:
    if dtype.is_numeric():
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not math.isfinite(value)
            or value <= 0
        ):
            raise TrainingError(
                f"The 'horizon' parameter of rolling_origin must be a positive number, as the "
                f"time column {time!r} is {dtype}. Got {value!r}.",
                column=time,
            )
        return value
    if isinstance(value, str):
        # Imported here: loopline.features is slow to import and only strings need it.
        from loopline.features.definition import parse_duration

        try:
            value = parse_duration(value, parameter="horizon", owner="rolling_origin")
        except FeatureError as exc:
            raise TrainingError(exc.message, column=time) from exc
    if not isinstance(value, timedelta) or value <= timedelta(0):
        raise TrainingError(
            f"The 'horizon' parameter of rolling_origin must be a positive duration such as "
            f"'7d' or timedelta(days=7), as the time column {time!r} is {dtype}. Got {value!r}.",
            column=time,
        )
    if dtype == pl.Date and value % timedelta(days=1):
        raise TrainingError(
            f"The time column {time!r} holds dates, so the 'horizon' of rolling_origin must be "
            f"a whole number of days. Got {value!r}.",
            column=time,
        )
    return value


def rolling_origin(
    frame: Frame,
    *,
    time: str,
    folds: int,
    horizon: timedelta | str | int | float,
    min_train: int | None = None,
) -> Iterator[tuple[pl.DataFrame, pl.DataFrame]]:
    """Yield ``folds`` time-ordered ``(train, test)`` splits with an expanding training set.

    With ``t_max`` the newest time, fold ``k`` (from 0) has the origin
    ``o_k = t_max - (folds - k) * horizon``; it trains on the rows with ``time <= o_k``
    and tests on those with ``o_k < time <= o_k + horizon``. The test windows are
    consecutive, never overlap, and the last one ends at ``t_max``; every training row is
    strictly older than every row of its test window.

    Parameters
    ----------
    frame
        The rows, as a Polars DataFrame or an Arrow table.
    time
        The column that orders them in time: dates, datetimes or numbers, without nulls.
    folds
        How many splits, at least 1.
    horizon
        The length of each test window: a ``timedelta`` or a string such as ``"7d"`` for a
        date or datetime column (whole days for dates), a positive number for a numeric one.
    min_train
        The fewest training rows the first fold may have (default 1).

    Raises
    ------
    TrainingError
        Checked before the first split is yielded: an invalid parameter, a first training
        set smaller than ``min_train``, or a test window without rows.

    Examples
    --------
    >>> import polars as pl
    >>> rows = pl.DataFrame({"month": list(range(1, 13))})
    >>> for train, test in rolling_origin(rows, time="month", folds=3, horizon=1):
    ...     print(train["month"].max(), test["month"].to_list())
    9 [10]
    10 [11]
    11 [12]
    """
    table, dtype = _time_kind(frame, time, "rolling_origin")
    if isinstance(folds, bool) or not isinstance(folds, int) or folds < 1:
        raise TrainingError(
            f"The 'folds' parameter of rolling_origin must be a positive integer. Got {folds!r}."
        )
    if min_train is None:
        min_train = 1
    if isinstance(min_train, bool) or not isinstance(min_train, int) or min_train < 1:
        raise TrainingError(
            f"The 'min_train' parameter of rolling_origin must be a positive number of rows. "
            f"Got {min_train!r}."
        )
    step = _horizon(horizon, dtype, time)
    newest = table.get_column(time).max()
    origins = [newest - (folds - k) * step for k in range(folds)]
    column = pl.col(time)
    counts = table.select(
        (column <= origins[0]).sum().alias("train"),
        *[
            ((column > o) & (column <= o + step)).sum().alias(f"test{k}")
            for k, o in enumerate(origins)
        ],
    ).row(0)
    if counts[0] < min_train:
        raise TrainingError(
            f"The first of {folds} fold(s) of rolling_origin would train on {counts[0]} row(s) "
            f"(time <= {_describe(origins[0])}), fewer than min_train={min_train}. Use fewer "
            f"folds or a shorter horizon.",
            column=time,
        )
    for k, rows in enumerate(counts[1:]):
        if rows == 0:
            raise TrainingError(
                f"Fold {k + 1} of {folds} of rolling_origin has no rows to test: none with "
                f"{_describe(origins[k])} < {time} <= {_describe(origins[k] + step)}. Choose a "
                f"horizon that covers the gaps in the data, or fewer folds.",
                column=time,
            )

    def splits() -> Iterator[tuple[pl.DataFrame, pl.DataFrame]]:
        for origin in origins:
            yield (
                table.filter(column <= origin),
                table.filter((column > origin) & (column <= origin + step)),
            )

    return splits()
