"""The gate: whether a challenger may replace the champion, as a list of checks.

A challenger passes when every check passes (DESIGN.md, "Gate"):

- **primary**: on the same newest holdout, its primary metric beats the champion's by
  at least ``min_improvement`` (and strictly: a tie never replaces a champion);
- **threshold**: each value threshold holds (``test_roc_auc >= 0.7``);
- **regression**: no metric named in ``max_regression`` is worse than the champion's by
  more than its tolerance;
- **guard**: single-row p99 latency, bundle size and fairness gap stay within budget.

A metric or measurement that is missing (absent, None or NaN) fails its check: a gate
never waves through what it could not see. With no champion yet, the primary and
regression checks have nothing to compare with, so the first model is judged on the
thresholds and guards alone (docs/decisions/0015-gate.md); its primary metric must still
be present.

Examples
--------
>>> gate = Gate(primary="test_roc_auc", min_improvement=0.005,
...             thresholds={"test_roc_auc": (">=", 0.7)})
>>> verdict = gate.evaluate({"test_roc_auc": 0.76}, {"test_roc_auc": 0.75})
>>> verdict.passed
True
>>> refused = gate.evaluate({"test_roc_auc": 0.752}, {"test_roc_auc": 0.75})
>>> print(refused.failures[0].reason)
beats the champion's 0.7500 by only 0.0020, less than the margin 0.0050
"""

from __future__ import annotations

import inspect
import math
import operator
import time
from collections.abc import Callable, Collection, Mapping
from dataclasses import asdict, dataclass
from typing import Any, SupportsFloat

import orjson

from loopline.errors import RegistryError

__all__ = [
    "GUARDS",
    "Check",
    "Gate",
    "Verdict",
    "greater_is_better",
    "measure_latency_p99",
]

_OPS: dict[str, Callable[[float, float], bool]] = {
    ">=": operator.ge,
    ">": operator.gt,
    "<=": operator.le,
    "<": operator.lt,
}

GUARDS = {
    "latency_p99_ms": "latency_p99_ms",
    "max_bundle_bytes": "bundle_bytes",
    "max_fairness_gap": "fairness_gap",
}
"""Each guard parameter of ``Gate`` and the measurement it reads by default (the fairness
guard reads ``Gate.fairness_metric``, such as ``gap.recall`` from the evaluation)."""

_LOWER_IS_BETTER = frozenset(
    {"loss", "logloss", "brier", "rmse", "mse", "mae", "mape", "error", "ece", "gap"}
    | {"latency", "ms", "seconds", "bytes", "size"}
)
"""Name parts of metrics where smaller is better (``test_log_loss``, ``holdout_rmse``)."""


def greater_is_better(metric: str, *, lower_is_better: Collection[str] = ()) -> bool:
    """Whether a larger value of ``metric`` is better, judged by its name.

    A metric is lower-is-better when it is listed in ``lower_is_better``, when it is a
    gap between groups (``gap.<metric>``), or when one of the words of its last dotted
    part (split on ``_``) is a loss, an error or a cost, such as ``log_loss``, ``brier``,
    ``rmse``, ``mae``, ``mape``, ``error``, ``gap`` or ``latency``. This matches the
    names ``loopline.train.evaluate`` gives: ``test_<metric>``, ``baseline_<metric>``,
    ``slice.<column>=<value>.<metric>`` and ``gap.<metric>``.

    Examples
    --------
    >>> greater_is_better("test_roc_auc"), greater_is_better("test_log_loss")
    (True, False)
    >>> greater_is_better("slice.origin=JFK.rmse"), greater_is_better("gap.recall")
    (False, False)
    """
    if metric in lower_is_better:
        return False
    parts = metric.lower().split(".")
    if parts[0] == "gap":
        return False
    return not (set(parts[-1].split("_")) & _LOWER_IS_BETTER)


@dataclass(frozen=True)
class Check:
    """One rule of the gate, applied: the values compared and whether it held.

    Examples
    --------
    >>> check = Check("threshold test_roc_auc >= 0.7", "threshold", "test_roc_auc",
    ...               value=0.76, threshold=0.7, champion=None, passed=True,
    ...               reason="0.7600 >= 0.7000")
    >>> check.passed
    True
    """

    name: str
    """What the rule says, such as ``threshold test_roc_auc >= 0.7`` or ``guard bundle_bytes``."""
    kind: str
    """``primary``, ``threshold``, ``regression`` or ``guard``."""
    metric: str
    value: float | None
    """The challenger's value (None when it is missing)."""
    threshold: float | None
    """The limit the value was held to: the threshold, the budget, or the value that the
    challenger had to beat (or not fall below) given the champion's."""
    champion: float | None
    passed: bool
    reason: str


@dataclass(frozen=True)
class Verdict:
    """The gate's answer: every check with its values, and whether all of them passed.

    Examples
    --------
    >>> verdict = Gate(primary="auc").evaluate({"auc": 0.8}, None)
    >>> verdict.passed, verdict.champion, [c.kind for c in verdict.checks]
    (True, False, ['primary'])
    >>> Verdict.from_json(verdict.to_json()) == verdict
    True
    """

    checks: tuple[Check, ...]
    champion: bool
    """Whether there was a champion to compare with."""

    @property
    def passed(self) -> bool:
        return bool(self.checks) and all(c.passed for c in self.checks)

    @property
    def failures(self) -> tuple[Check, ...]:
        return tuple(c for c in self.checks if not c.passed)

    def summary(self) -> str:
        """One line: ``passed N checks`` or ``refused:`` and why."""
        if self.passed:
            return f"passed {len(self.checks)} check(s)"
        if not self.checks:
            return "refused: the gate has no checks"
        return "refused: " + "; ".join(f"{c.name}: {c.reason}" for c in self.failures)

    def render(self) -> str:
        """The checks as a plain-text table, for the command line and logs."""
        header = ("check", "value", "threshold", "champion", "result", "reason")
        rows = [
            (
                c.name,
                _number(c.value),
                _number(c.threshold),
                _number(c.champion),
                "pass" if c.passed else "FAIL",
                c.reason,
            )
            for c in self.checks
        ]
        body = [header, *rows]
        widths = [max(len(r[i]) for r in body) for i in range(len(header))]
        lines = [
            "  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip()
            for r in body
        ]
        lines.insert(1, "  ".join("-" * w for w in widths))
        failed = len(self.failures)
        verdict = (
            f"verdict: PASSED, {len(self.checks)} check(s)"
            if self.passed
            else f"verdict: REFUSED, {failed} of {len(self.checks)} check(s) failed"
        )
        return "\n".join([*lines, verdict])

    def to_dict(self) -> dict[str, Any]:
        return {
            "passed": self.passed,
            "champion": self.champion,
            "checks": [asdict(c) for c in self.checks],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Verdict:
        return cls(
            checks=tuple(Check(**c) for c in data.get("checks", ())),
            champion=bool(data.get("champion")),
        )

    def to_json(self) -> bytes:
        """The verdict as JSON bytes (what the audit log stores)."""
        return orjson.dumps(self.to_dict(), option=orjson.OPT_SORT_KEYS)

    @classmethod
    def from_json(cls, data: bytes | str) -> Verdict:
        return cls.from_dict(orjson.loads(data))


class Gate:
    """The rules a challenger must pass to replace the champion (see the module docstring).

    Parameters
    ----------
    primary
        The metric that decides, such as ``test_roc_auc``.
    greater_is_better
        Whether a larger primary metric is better (False for a loss).
    min_improvement
        How much the primary metric must beat the champion's by (>= 0).
    thresholds
        Value thresholds: metric -> ``(op, value)`` with op one of ``>=``, ``>``, ``<=``,
        ``<``, or the same as a string such as ``">= 0.7"``.
    max_regression
        Metric -> how much worse than the champion's it may get (>= 0). The direction of
        each metric comes from its name (``greater_is_better``) or ``lower_is_better``.
    latency_p99_ms, max_bundle_bytes, max_fairness_gap
        Guards: budgets for the ``latency_p99_ms``, ``bundle_bytes`` and fairness gap
        measurements (the fairness gap is compared by its absolute value).
    fairness_metric
        The name of the fairness gap the guard reads: ``fairness_gap`` by default, or one
        of the evaluation's gaps between groups, such as ``gap.recall``.
    lower_is_better
        Metrics (besides those the name rule finds) where smaller is better.

    Examples
    --------
    >>> gate = Gate(primary="test_roc_auc", max_regression={"test_log_loss": 0.01},
    ...             max_bundle_bytes=1_000_000)
    >>> verdict = gate.evaluate(
    ...     {"test_roc_auc": 0.77, "test_log_loss": 0.45},
    ...     {"test_roc_auc": 0.76, "test_log_loss": 0.41},
    ...     measurements={"bundle_bytes": 52_000},
    ... )
    >>> verdict.passed, [c.name for c in verdict.failures]
    (False, ['regression test_log_loss'])
    """

    def __init__(
        self,
        *,
        primary: str,
        greater_is_better: bool = True,
        min_improvement: float = 0.0,
        thresholds: Mapping[str, tuple[str, float] | str] | None = None,
        max_regression: Mapping[str, float] | None = None,
        latency_p99_ms: float | None = None,
        max_bundle_bytes: int | None = None,
        max_fairness_gap: float | None = None,
        fairness_metric: str = "fairness_gap",
        lower_is_better: Collection[str] = (),
    ) -> None:
        if not isinstance(primary, str) or not primary:
            raise RegistryError(
                f"The 'primary' parameter of Gate must be a metric name such as "
                f"'test_roc_auc'. Got {primary!r}."
            )
        self.primary = primary
        self.greater_is_better = bool(greater_is_better)
        self.min_improvement = _non_negative("min_improvement", min_improvement)
        self.thresholds = {
            str(m): _threshold(str(m), rule) for m, rule in (thresholds or {}).items()
        }
        self.max_regression = {
            str(m): _non_negative(f"max_regression[{m!r}]", v)
            for m, v in (max_regression or {}).items()
        }
        self.latency_p99_ms = _budget("latency_p99_ms", latency_p99_ms)
        self.max_bundle_bytes = _budget("max_bundle_bytes", max_bundle_bytes)
        self.max_fairness_gap = _budget("max_fairness_gap", max_fairness_gap)
        if not isinstance(fairness_metric, str) or not fairness_metric:
            raise RegistryError(
                f"The 'fairness_metric' parameter of Gate must be a metric name such as "
                f"'gap.recall'. Got {fairness_metric!r}."
            )
        self.fairness_metric = fairness_metric
        self.lower_is_better = frozenset(lower_is_better)

    def __repr__(self) -> str:
        return f"Gate(primary={self.primary!r}, min_improvement={self.min_improvement!r})"

    @classmethod
    def from_dict(cls, config: Mapping[str, Any]) -> Gate:
        """A gate from a mapping with the constructor's keyword names (such as TOML).

        Examples
        --------
        >>> Gate.from_dict({"primary": "auc", "thresholds": {"auc": ">= 0.7"}}).thresholds
        {'auc': ('>=', 0.7)}
        """
        known = set(inspect.signature(cls).parameters)
        unknown = sorted(set(config) - known)
        if unknown:
            raise RegistryError(
                f"The gate configuration has no setting {unknown[0]!r}; the settings are "
                f"{', '.join(sorted(known))}."
            )
        return cls(**dict(config))

    def evaluate(
        self,
        challenger_metrics: Mapping[str, float | None],
        champion_metrics: Mapping[str, float | None] | None,
        *,
        measurements: Mapping[str, float | None] | None = None,
    ) -> Verdict:
        """Judge a challenger against the champion (None when there is none yet).

        Both sets of metrics must come from the same (newest) holdout. A guard reads its
        measurement from ``measurements`` or, failing that, from the challenger's metrics.
        """
        champion = champion_metrics is not None
        theirs = dict(champion_metrics or {})
        checks = [self._primary(challenger_metrics, theirs if champion else None)]
        for metric, (op, limit) in self.thresholds.items():
            checks.append(_threshold_check(metric, op, limit, challenger_metrics.get(metric)))
        if champion:
            for metric, tolerance in self.max_regression.items():
                checks.append(
                    self._regression(
                        metric, tolerance, challenger_metrics.get(metric), theirs.get(metric)
                    )
                )
        seen = {**challenger_metrics, **(measurements or {})}
        for parameter, measurement in GUARDS.items():
            budget = getattr(self, parameter)
            if parameter == "max_fairness_gap":
                measurement = self.fairness_metric
            if budget is not None:
                checks.append(
                    _guard(
                        measurement,
                        budget,
                        seen.get(measurement),
                        absolute=parameter == "max_fairness_gap",
                    )
                )
        return Verdict(checks=tuple(checks), champion=champion)

    # -- checks --------------------------------------------------------------------------

    def _primary(
        self, ours: Mapping[str, float | None], theirs: Mapping[str, float | None] | None
    ) -> Check:
        metric = self.primary
        name = f"primary {metric}"
        value = _value(ours.get(metric))
        if value is None:
            return _missing(name, "primary", metric, ours, "challenger")
        if theirs is None:
            return Check(
                name,
                "primary",
                metric,
                value,
                None,
                None,
                True,
                "no champion yet: judged on thresholds and guards alone",
            )
        champion = _value(theirs.get(metric))
        if champion is None:
            return _missing(name, "primary", metric, theirs, "champion", value=value)
        sign = 1.0 if self.greater_is_better else -1.0
        gain = sign * (value - champion)
        passed = gain > 0 and _at_least(gain, self.min_improvement)
        target = champion + sign * self.min_improvement
        margin = _number(self.min_improvement)
        if passed:
            reason = f"beats the champion's {_number(champion)} by {_number(gain)}"
        elif gain > 0:
            reason = (
                f"beats the champion's {_number(champion)} by only "
                f"{_number(gain)}, less than the margin {margin}"
            )
        else:
            reason = f"does not beat the champion's {_number(champion)}" + (
                f" by at least {margin}" if self.min_improvement else ""
            )
        return Check(name, "primary", metric, value, target, champion, passed, reason)

    def _regression(
        self, metric: str, tolerance: float, ours: float | None, theirs: float | None
    ) -> Check:
        name = f"regression {metric}"
        value = _value(ours)
        if value is None:
            return _missing(name, "regression", metric, {}, "challenger")
        champion = _value(theirs)
        if champion is None:
            return _missing(name, "regression", metric, {}, "champion", value=value)
        higher = (
            self.greater_is_better
            if metric == self.primary
            else greater_is_better(metric, lower_is_better=self.lower_is_better)
        )
        sign = 1.0 if higher else -1.0
        worse = sign * (champion - value)
        limit = champion - sign * tolerance
        passed = _at_least(tolerance, worse)
        if passed:
            reason = f"within {_number(tolerance)} of the champion's {_number(champion)}"
        else:
            reason = (
                f"{_number(value)} is worse than the champion's {_number(champion)} by "
                f"{_number(worse)}, more than the tolerance {_number(tolerance)}"
            )
        return Check(name, "regression", metric, value, limit, champion, passed, reason)


def measure_latency_p99(
    predict: Callable[[Any], object],
    row: Any,
    n: int = 200,
    *,
    warmup: int = 10,
    clock: Callable[[], float] = time.perf_counter,
) -> float:
    """The 99th percentile, in milliseconds, of ``n`` single-row calls of ``predict(row)``.

    The first ``warmup`` calls are not counted (they pay for lazy loading and caches);
    ``clock`` reads the time in seconds.
    The percentile is the nearest-rank one: the smallest time that at least 99% of the
    calls took no longer than.

    Examples
    --------
    >>> measure_latency_p99(lambda row: sum(row), [1, 2, 3], n=20) >= 0.0
    True
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise RegistryError(
            f"The 'n' parameter of measure_latency_p99 must be a positive number of calls "
            f"such as 200. Got {n!r}."
        )
    for _ in range(max(0, warmup)):
        predict(row)
    times = []
    for _ in range(n):
        start = clock()
        predict(row)
        times.append(clock() - start)
    times.sort()
    return times[math.ceil(0.99 * n) - 1] * 1000.0


# -- helpers --------------------------------------------------------------------------------


def _at_least(value: float, limit: float) -> bool:
    """``value >= limit``, forgiving the rounding of a difference of two metrics."""
    return value >= limit or math.isclose(value, limit, rel_tol=1e-9, abs_tol=1e-12)


def _value(value: object) -> float | None:
    """A metric as a float, or None when it is missing (None, NaN, not a number)."""
    if isinstance(value, bool) or not isinstance(value, SupportsFloat):
        return None
    number = float(value)
    return None if math.isnan(number) else number


def _missing(
    name: str,
    kind: str,
    metric: str,
    present: Mapping[str, object],
    whose: str,
    *,
    value: float | None = None,
) -> Check:
    if whose == "champion":
        reason = (
            f"the champion has no {metric!r} on this holdout: evaluate it on the same "
            f"holdout as the challenger"
        )
    else:
        known = sorted(k for k, v in present.items() if _value(v) is not None)
        reason = f"the challenger has no {metric!r}" + (
            f" (it has {', '.join(known[:8])}{', ...' if len(known) > 8 else ''})" if known else ""
        )
    return Check(name, kind, metric, value, None, None, False, reason)


def _threshold_check(metric: str, op: str, limit: float, raw: float | None) -> Check:
    name = f"threshold {metric} {op} {_number(limit)}"
    value = _value(raw)
    if value is None:
        return Check(
            name, "threshold", metric, None, limit, None, False, f"the challenger has no {metric!r}"
        )
    passed = _OPS[op](value, limit)
    reason = f"{_number(value)} {op if passed else 'is not ' + op} {_number(limit)}"
    return Check(name, "threshold", metric, value, limit, None, passed, reason)


def _guard(measurement: str, budget: float, raw: float | None, *, absolute: bool) -> Check:
    name = f"guard {measurement}"
    value = _value(raw)
    if value is None:
        return Check(
            name,
            "guard",
            measurement,
            None,
            budget,
            None,
            False,
            f"{measurement!r} was not measured: pass it in measurements",
        )
    size = abs(value) if absolute else value
    passed = size <= budget
    verb = "within" if passed else "over"
    reason = f"{_number(value)} is {verb} the budget {_number(budget)}"
    return Check(name, "guard", measurement, value, budget, None, passed, reason)


def _threshold(metric: str, rule: tuple[str, float] | str) -> tuple[str, float]:
    text = rule if isinstance(rule, str) else None
    op: object
    limit: object
    if text is not None:
        stripped = text.strip()
        op = next((o for o in (">=", "<=", ">", "<") if stripped.startswith(o)), None)
        limit = stripped[len(op) :].strip() if isinstance(op, str) else None
    elif isinstance(rule, (tuple, list)) and len(rule) == 2:
        op, limit = rule
    else:
        op = limit = None
    number = _value(limit)
    if isinstance(limit, str):
        try:
            number = float(limit)
        except ValueError:
            number = None
    if op not in _OPS or number is None or math.isnan(number):
        raise RegistryError(
            f"The threshold for {metric!r} of Gate must be (op, value) or 'op value' with op "
            f"one of >=, >, <=, <, such as ('>=', 0.7) or '>= 0.7'. Got {rule!r}."
        )
    return str(op), number


def _non_negative(name: str, value: object) -> float:
    number = _value(value)
    if number is None or number < 0 or math.isinf(number):
        raise RegistryError(
            f"The '{name}' parameter of Gate must be a number >= 0 such as 0.01. Got {value!r}."
        )
    return number


def _budget(name: str, value: object) -> float | None:
    if value is None:
        return None
    number = _value(value)
    if number is None or number < 0:
        raise RegistryError(
            f"The '{name}' parameter of Gate must be a number >= 0 (or None for no guard). "
            f"Got {value!r}."
        )
    return number


def _number(value: float | None) -> str:
    if value is None:
        return "-"
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    if float(value).is_integer() and abs(value) >= 1:
        return f"{int(value)}"
    return f"{value:.4f}" if abs(value) >= 1e-4 else f"{value:.3g}"
