"""Hyperparameter search with Optuna, its study kept in the metadata database.

``search`` runs an objective over a ``SearchSpace`` with Optuna's TPE sampler and median
pruner, on a budget of trials, of time, or both. The study lives in the metadata database
(SQLite or PostgreSQL) beside loopline's own tables, so a search that was interrupted
resumes where it stopped, and several worker processes, on one machine or many, that run
the same ``search`` share one study. Every trial is kept in Optuna's tables (its
parameters, intermediate values, state, value and the worker that ran it); the call
returns them all, and the best, in a ``SearchResult`` for the caller to log.

The objective receives a ``SearchTrial``: the sampled ``params``, and ``report`` /
``should_prune`` / ``prune`` for pruning, so it needs no Optuna import.
``lightgbm_objective`` builds one that trains LightGBM with early stopping and reports
the validation metric every few boosting rounds.

Budget and resumption. ``n_trials`` is the total the study should reach, not the number
this call adds: a study that already holds 3 finished (complete or pruned) trials runs 3
more for ``n_trials=6``, and none once it has 6. Re-running a step that was interrupted
thus finishes the search it started instead of starting over, and re-running one that
finished costs nothing. Several workers stop when the study reaches the total; a trial
that was running in another worker then still finishes, so the study can end with up to
``workers - 1`` trials more. A failed trial (the objective raised, or the process was
interrupted) does not count and is tried again with new parameters; a trial whose process
was killed outright stays ``running`` in the study. ``timeout`` bounds this call's
wall time: no trial starts after it, and a running one finishes.

Reproducibility. The sampler is seeded per trial, from ``seed`` and the trial's number,
so a seeded search draws the same parameters every time, a resumed search draws what an
uninterrupted one would have, and two workers never repeat each other's draws. (With
several workers the order in which trials finish still varies, and so does what TPE
learns from them.)

One database, two schema owners: Optuna's tables (``studies``, ``trials``, ...) sit
beside loopline's, but ``alembic_version`` holds loopline's schema revision, so Optuna's
own revision check is skipped, and the metadata store is always opened (and migrated)
first, so that Optuna never stamps that table with its own revision.

Examples
--------
>>> space = SearchSpace({"x": FloatParam(-2.0, 2.0), "kind": CategoricalParam(["a", "b"])})
>>> def objective(trial: SearchTrial) -> float:
...     bonus = 1.0 if trial.params["kind"] == "b" else 0.0
...     return bonus - (trial.params["x"] - 0.5) ** 2
>>> result = search(objective, space, study="demo", storage="sqlite://", n_trials=20, seed=1)
>>> result.n_complete, result.best_params["kind"], round(result.best_params["x"], 1)
(20, 'b', 0.5)
"""

from __future__ import annotations

import fcntl
import json
import math
import os
import socket
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from decimal import Decimal
from typing import TYPE_CHECKING, Any, NoReturn, TypeAlias

import numpy as np
import polars as pl

from loopline.errors import MetadataStoreError, TrainingError
from loopline.train.bundle import Preprocessor

if TYPE_CHECKING:
    # Imported where used: Optuna takes about a second to import, LightGBM longer.
    import lightgbm as lgb
    import optuna
    from optuna.distributions import BaseDistribution
    from optuna.samplers import BaseSampler
    from optuna.trial import FrozenTrial, TrialState

__all__ = [
    "CategoricalParam",
    "FloatParam",
    "IntParam",
    "LightGBMObjective",
    "MedianPruning",
    "Parameter",
    "SearchResult",
    "SearchSpace",
    "SearchTrial",
    "TrialPruned",
    "TrialRecord",
    "lightgbm_objective",
    "search",
]

Choice: TypeAlias = bool | int | float | str | None
"""A value a categorical parameter can take (what Optuna can store)."""

DIRECTIONS = ("maximize", "minimize")
WORKER_ATTRIBUTE = "loopline.worker"
"""Trial attribute naming the worker (``host:pid``) that ran the trial."""
SPACE_ATTRIBUTE = "loopline.space"
"""Study attribute holding the space the study was created with."""
_SQLITE_BUSY_S = 60


# --------------------------------------------------------------------------- the space


@dataclass(frozen=True)
class IntParam:
    """An integer parameter in ``[low, high]`` (both included), every ``step``th value.

    ``log=True`` samples on a log scale (``low`` must then be positive, ``step`` 1).
    The values are checked by ``SearchSpace``, where the parameter gets its name.

    Examples
    --------
    >>> SearchSpace({"num_leaves": IntParam(15, 255, log=True)})["num_leaves"].high
    255
    """

    low: int
    high: int
    log: bool = False
    step: int = 1


@dataclass(frozen=True)
class FloatParam:
    """A real parameter in ``[low, high]``, continuous or every ``step`` (from ``low``).

    Examples
    --------
    >>> SearchSpace({"learning_rate": FloatParam(0.01, 0.3, log=True)}).to_config()
    {'learning_rate': {'type': 'float', 'low': 0.01, 'high': 0.3, 'log': True}}
    """

    low: float
    high: float
    log: bool = False
    step: float | None = None


@dataclass(frozen=True)
class CategoricalParam:
    """One of a list of ``choices`` (None, bool, int, float or str values).

    Examples
    --------
    >>> CategoricalParam(["gbdt", "dart"]).choices
    ('gbdt', 'dart')
    """

    choices: Sequence[Choice]

    def __post_init__(self) -> None:
        # A tuple keeps the parameter hashable and its choices from changing underneath.
        if isinstance(self.choices, Sequence) and not isinstance(self.choices, str):
            object.__setattr__(self, "choices", tuple(self.choices))


Parameter: TypeAlias = IntParam | FloatParam | CategoricalParam

_TYPES: dict[str, type[Parameter]] = {
    "int": IntParam,
    "float": FloatParam,
    "categorical": CategoricalParam,
}
_KEYS = {
    "int": ("type", "low", "high", "log", "step"),
    "float": ("type", "low", "high", "log", "step"),
    "categorical": ("type", "choices"),
}


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _problem(name: str, part: str, must: str, got: object) -> TrainingError:
    return TrainingError(
        f"The {part!r} of search parameter {name!r} must be {must}. Got {got!r}.",
        parameter=name,
    )


def _check_int(name: str, p: IntParam) -> IntParam:
    for part in ("low", "high"):
        value = getattr(p, part)
        if isinstance(value, bool) or not isinstance(value, int):
            raise _problem(name, part, "an integer such as 15", value)
    if not isinstance(p.log, bool):
        raise _problem(name, "log", "true or false", p.log)
    if isinstance(p.step, bool) or not isinstance(p.step, int) or p.step < 1:
        raise _problem(name, "step", "a positive integer such as 1", p.step)
    if p.low > p.high:
        raise _problem(name, "low", f"at most its 'high' ({p.high})", p.low)
    if p.log and p.low <= 0:
        raise _problem(
            name, "low", "positive when 'log' is true (a log scale starts above 0)", p.low
        )
    if p.log and p.step != 1:
        raise _problem(name, "step", "1 when 'log' is true", p.step)
    if (p.high - p.low) % p.step:
        raise _problem(
            name,
            "high",
            f"'low' ({p.low}) plus a multiple of 'step' ({p.step}), such as "
            f"{p.high - (p.high - p.low) % p.step}",
            p.high,
        )
    return p


def _check_float(name: str, p: FloatParam) -> FloatParam:
    for part in ("low", "high"):
        value = getattr(p, part)
        if not _is_number(value) or not math.isfinite(value):
            raise _problem(name, part, "a finite number such as 0.1", value)
    if not isinstance(p.log, bool):
        raise _problem(name, "log", "true or false", p.log)
    low, high = float(p.low), float(p.high)
    if low > high:
        raise _problem(name, "low", f"at most its 'high' ({p.high})", p.low)
    if p.log and low <= 0:
        raise _problem(
            name, "low", "positive when 'log' is true (a log scale starts above 0)", p.low
        )
    step: float | None = None
    if p.step is not None:
        if not _is_number(p.step) or not math.isfinite(p.step) or p.step <= 0:
            raise _problem(name, "step", "a positive number such as 0.05, or absent", p.step)
        if p.log:
            raise _problem(name, "step", "absent when 'log' is true", p.step)
        step = float(p.step)
        # Decimal, because (0.3 - 0.1) % 0.1 is not 0 in binary floating point.
        if (Decimal(str(high)) - Decimal(str(low))) % Decimal(str(step)):
            raise _problem(
                name, "high", f"'low' ({p.low}) plus a multiple of 'step' ({p.step})", p.high
            )
    return FloatParam(low, high, p.log, step)


def _check_categorical(name: str, p: CategoricalParam) -> CategoricalParam:
    choices = p.choices
    if not isinstance(choices, tuple) or not choices:
        raise _problem(name, "choices", "a non-empty list such as ['gbdt', 'dart']", choices)
    for choice in choices:
        if choice is not None and not isinstance(choice, bool | int | float | str):
            raise _problem(name, "choices", "a list of strings, numbers, booleans or nulls", choice)
        if isinstance(choice, float) and not math.isfinite(choice):
            raise _problem(name, "choices", "a list of finite values", choice)
    # (type, value) so that True and 1, equal in Python, count as two choices.
    if len({(type(c), c) for c in choices}) != len(choices):
        raise _problem(name, "choices", "a list without repeated values", list(choices))
    return p


class SearchSpace:
    """The parameters a search samples, by name; checked when the space is made.

    Parameters
    ----------
    parameters
        Name -> ``IntParam``, ``FloatParam`` or ``CategoricalParam``. Build one from
        configuration (a TOML table, a dict) with ``SearchSpace.from_config``.

    Raises
    ------
    TrainingError
        A range is impossible (``low`` above ``high``, a log scale that starts at or below
        zero, a range that is not a whole number of steps), the choices are empty or
        repeat, or a name or type is not known.

    Examples
    --------
    >>> space = SearchSpace.from_config({
    ...     "num_leaves": {"type": "int", "low": 15, "high": 255, "log": True},
    ...     "boosting": {"type": "categorical", "choices": ["gbdt", "dart"]},
    ... })
    >>> space.names
    ('num_leaves', 'boosting')
    >>> space["num_leaves"]
    IntParam(low=15, high=255, log=True, step=1)
    >>> SearchSpace.from_config(space.to_config()) == space
    True
    """

    def __init__(self, parameters: Mapping[str, Parameter]) -> None:
        if not isinstance(parameters, Mapping):
            raise TrainingError(
                f"A SearchSpace takes a mapping of parameter names to IntParam, FloatParam or "
                f"CategoricalParam. Got {type(parameters).__name__}."
            )
        checked: dict[str, Parameter] = {}
        for name, parameter in parameters.items():
            if not isinstance(name, str) or not name:
                raise TrainingError(
                    f"A search parameter's name must be a non-empty string such as "
                    f"'num_leaves'. Got {name!r}."
                )
            if isinstance(parameter, IntParam):
                checked[name] = _check_int(name, parameter)
            elif isinstance(parameter, FloatParam):
                checked[name] = _check_float(name, parameter)
            elif isinstance(parameter, CategoricalParam):
                checked[name] = _check_categorical(name, parameter)
            else:
                hint = (
                    " Build a space from configuration with SearchSpace.from_config."
                    if isinstance(parameter, Mapping)
                    else ""
                )
                raise TrainingError(
                    f"Search parameter {name!r} must be an IntParam, FloatParam or "
                    f"CategoricalParam. Got {parameter!r}.{hint}",
                    parameter=name,
                )
        self._parameters = checked

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> SearchSpace:
        """Build a space from ``{name: {"type": "int" | "float" | "categorical", ...}}``.

        ``int`` and ``float`` take ``low``, ``high`` and optionally ``log`` (default
        false) and ``step``; ``categorical`` takes ``choices``.
        """
        if not isinstance(config, Mapping):
            raise TrainingError(
                f"A search space configuration must be a table of parameter names to tables "
                f"such as {{'num_leaves': {{'type': 'int', 'low': 15, 'high': 255}}}}. "
                f"Got {type(config).__name__}."
            )
        parameters: dict[str, Parameter] = {}
        for name, entry in config.items():
            if not isinstance(entry, Mapping):
                raise TrainingError(
                    f"Search parameter {name!r} must be a table such as {{'type': 'int', "
                    f"'low': 15, 'high': 255}}. Got {entry!r}.",
                    parameter=name,
                )
            kind = entry.get("type")
            if kind not in _TYPES:
                valid = ", ".join(repr(k) for k in _TYPES)
                raise _problem(str(name), "type", f"one of {valid}", kind)
            unknown = sorted(str(key) for key in entry if key not in _KEYS[kind])
            if unknown:
                raise TrainingError(
                    f"Search parameter {name!r} of type {kind!r} has unknown key(s) "
                    f"{', '.join(repr(k) for k in unknown)}. Valid keys: "
                    f"{', '.join(_KEYS[kind])}.",
                    parameter=name,
                )
            required = ("choices",) if kind == "categorical" else ("low", "high")
            for key in required:
                if key not in entry:
                    raise TrainingError(
                        f"Search parameter {name!r} of type {kind!r} needs {key!r}.",
                        parameter=name,
                    )
            if kind == "categorical":
                choices = entry["choices"]
                if isinstance(choices, str) or not isinstance(choices, Sequence):
                    raise _problem(
                        str(name), "choices", "a non-empty list such as ['gbdt', 'dart']", choices
                    )
                parameters[name] = CategoricalParam(choices)
            elif kind == "int":
                parameters[name] = IntParam(
                    entry["low"], entry["high"], entry.get("log", False), entry.get("step", 1)
                )
            else:
                parameters[name] = FloatParam(
                    entry["low"], entry["high"], entry.get("log", False), entry.get("step")
                )
        return cls(parameters)

    def to_config(self) -> dict[str, dict[str, Any]]:
        """The space as configuration (plain dicts and lists), what ``from_config`` reads."""
        config: dict[str, dict[str, Any]] = {}
        for name, p in self._parameters.items():
            if isinstance(p, CategoricalParam):
                config[name] = {"type": "categorical", "choices": list(p.choices)}
                continue
            entry: dict[str, Any] = {
                "type": "int" if isinstance(p, IntParam) else "float",
                "low": p.low,
                "high": p.high,
                "log": p.log,
            }
            if isinstance(p, IntParam) and p.step != 1:
                entry["step"] = p.step
            if isinstance(p, FloatParam) and p.step is not None:
                entry["step"] = p.step
            config[name] = entry
        return config

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self._parameters)

    def __getitem__(self, name: str) -> Parameter:
        return self._parameters[name]

    def __contains__(self, name: object) -> bool:
        return name in self._parameters

    def __iter__(self) -> Iterator[str]:
        return iter(self._parameters)

    def __len__(self) -> int:
        return len(self._parameters)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, SearchSpace):
            return NotImplemented
        return self._parameters == other._parameters

    def __repr__(self) -> str:
        return f"SearchSpace({self._parameters!r})"

    def _suggest(self, trial: optuna.Trial) -> dict[str, Any]:
        """Sample every parameter for ``trial``, in the space's order."""
        params: dict[str, Any] = {}
        for name, p in self._parameters.items():
            if isinstance(p, IntParam):
                params[name] = trial.suggest_int(name, p.low, p.high, step=p.step, log=p.log)
            elif isinstance(p, FloatParam):
                params[name] = trial.suggest_float(name, p.low, p.high, step=p.step, log=p.log)
            else:
                params[name] = trial.suggest_categorical(name, p.choices)
        return params


# --------------------------------------------------------------------------- trials


class TrialPruned(Exception):  # noqa: N818  (named as Optuna names it: a signal, not a fault)
    """Raised by ``SearchTrial.prune`` to stop a trial the pruner gave up on.

    An objective may also raise it itself; the trial is then recorded as pruned.

    Examples
    --------
    >>> issubclass(TrialPruned, Exception)
    True
    """


class SearchTrial:
    """The handle an objective gets: the sampled parameters, and pruning.

    Examples
    --------
    >>> def objective(trial: SearchTrial) -> float:
    ...     for step in range(20):
    ...         trial.report(trial.params["x"] * step, step)
    ...         if trial.should_prune():
    ...             trial.prune()
    ...     return trial.params["x"]
    >>> space = SearchSpace({"x": FloatParam(0.0, 1.0)})
    >>> result = search(objective, space, study="handle", storage="sqlite://", n_trials=12)
    >>> result.n_complete + result.n_pruned
    12
    """

    def __init__(self, trial: optuna.Trial, params: Mapping[str, Any]) -> None:
        self._trial = trial
        self._params = dict(params)
        self._steps: set[int] = set()

    @property
    def number(self) -> int:
        """The trial's number in its study (0, 1, ...; unique across workers)."""
        return int(self._trial.number)

    @property
    def params(self) -> dict[str, Any]:
        """The sampled value of each parameter of the space."""
        return dict(self._params)

    def report(self, value: float, step: int) -> None:
        """Record the objective's intermediate ``value`` after ``step`` (0, 1, ...)."""
        if isinstance(step, bool) or not isinstance(step, int | np.integer) or step < 0:
            raise TrainingError(
                f"The 'step' of SearchTrial.report must be a non-negative integer such as 0. "
                f"Got {step!r}."
            )
        if not _is_number(value) and not isinstance(value, np.floating | np.integer):
            raise TrainingError(
                f"The 'value' of SearchTrial.report must be a number. Got {value!r}."
            )
        if int(step) in self._steps:
            raise TrainingError(
                f"Trial {self.number} reported step {int(step)} twice; report each step once "
                f"(Optuna would keep the first value and drop the second)."
            )
        self._steps.add(int(step))
        self._trial.report(float(value), int(step))

    def should_prune(self) -> bool:
        """Whether the pruner would stop this trial, given what it has reported."""
        return bool(self._trial.should_prune())

    def prune(self, message: str = "") -> NoReturn:
        """Stop the trial: it is recorded as pruned, and the search goes on."""
        raise TrialPruned(message or f"Trial {self.number} was pruned.")

    def set_attribute(self, key: str, value: Any) -> None:
        """Keep a JSON value with the trial (such as the best boosting round)."""
        if not isinstance(key, str) or not key or key.startswith("loopline."):
            raise TrainingError(
                f"A trial attribute's key must be a non-empty string not starting with "
                f"'loopline.'. Got {key!r}."
            )
        try:
            json.dumps(value)
        except (TypeError, ValueError) as exc:
            raise TrainingError(
                f"Trial attribute {key!r} must be a JSON value (number, string, list, dict). "
                f"Got {type(value).__name__}."
            ) from exc
        self._trial.set_user_attr(key, value)


@dataclass(frozen=True)
class MedianPruning:
    """Median pruning: stop a trial whose intermediate value is worse than the median.

    A trial is compared, at the same step, with the median of the trials before it;
    none is pruned until ``startup_trials`` trials have finished, nor before it reports
    step ``warmup_steps``, and it is checked every ``interval_steps`` steps. The default
    warm-up keeps early boosting rounds, where a slow learning rate looks bad, from
    deciding.

    Examples
    --------
    >>> MedianPruning(warmup_steps=0).startup_trials
    5
    """

    startup_trials: int = 5
    warmup_steps: int = 10
    interval_steps: int = 1


_STATES = {
    "COMPLETE": "complete",
    "PRUNED": "pruned",
    "FAIL": "failed",
    "RUNNING": "running",
    "WAITING": "waiting",
}


@dataclass(frozen=True)
class TrialRecord:
    """One trial of a study, as stored.

    Examples
    --------
    >>> record = TrialRecord(number=0, state="complete", value=0.8, params={"x": 1.0})
    >>> record.state, record.duration
    ('complete', None)
    """

    number: int
    state: str
    """``complete``, ``pruned``, ``failed``, ``running`` or ``waiting``."""
    value: float | None
    params: dict[str, Any]
    intermediate: dict[int, float] = field(default_factory=dict)
    """Step -> the value reported at that step."""
    attributes: dict[str, Any] = field(default_factory=dict)
    """What the objective kept with ``SearchTrial.set_attribute``."""
    worker: str | None = None
    """``host:pid`` of the process that ran it."""
    started_at: float | None = None
    ended_at: float | None = None

    @property
    def duration(self) -> float | None:
        if self.started_at is None or self.ended_at is None:
            return None
        return self.ended_at - self.started_at


@dataclass(frozen=True)
class SearchResult:
    """What a search found: the best trial, and every trial the study holds.

    Nothing is logged by ``search`` itself; a pipeline step logs ``params`` and
    ``metrics()`` (``log_metrics(result.metrics())``), and each trial's value with
    its number as the step if it wants the history.

    Examples
    --------
    >>> space = SearchSpace({"x": IntParam(0, 10)})
    >>> result = search(lambda t: -abs(t.params["x"] - 7), space, study="r",
    ...                 storage="sqlite://", n_trials=15, seed=0)
    >>> result.best_params, result.best_value
    ({'x': 7}, 0.0)
    >>> result.metrics()["search_trials_complete"]
    15.0
    """

    study: str
    storage: str
    """The study's database, password hidden (``memory`` for an in-process study)."""
    direction: str
    best_trial: int
    best_value: float
    best_params: dict[str, Any]
    trials: tuple[TrialRecord, ...]
    new_trials: int
    """How many trials this call ran (the rest were in the study already, or other workers')."""
    elapsed_s: float

    @property
    def best(self) -> TrialRecord:
        return next(t for t in self.trials if t.number == self.best_trial)

    @property
    def params(self) -> dict[str, Any]:
        """The best parameters (what a caller logs as the search's params)."""
        return dict(self.best_params)

    def _count(self, state: str) -> int:
        return sum(1 for t in self.trials if t.state == state)

    @property
    def n_complete(self) -> int:
        return self._count("complete")

    @property
    def n_pruned(self) -> int:
        return self._count("pruned")

    @property
    def n_failed(self) -> int:
        return self._count("failed")

    def metrics(self) -> dict[str, float]:
        """The search's outcome as metrics: best value and trial, and trial counts."""
        return {
            "search_best_value": self.best_value,
            "search_best_trial": float(self.best_trial),
            "search_trials_complete": float(self.n_complete),
            "search_trials_pruned": float(self.n_pruned),
            "search_trials_failed": float(self.n_failed),
        }


# --------------------------------------------------------------------------- the search


def _trial_seed(seed: int, number: int) -> int:
    """A sampler seed for trial ``number``: a function of the search seed and the number."""
    return int(np.random.SeedSequence([seed, number]).generate_state(1)[0])


def _sampler(seed: int) -> BaseSampler:
    """TPE, reseeded before each trial from ``seed`` and the trial's number.

    One seed for the whole run would make a resumed search (or a second worker) start
    its random draws over, repeating the first trials' parameters.
    """
    from optuna.samplers import BaseSampler, TPESampler

    class TrialSeededTPESampler(BaseSampler):
        def __init__(self) -> None:
            self._tpe = TPESampler(seed=seed)

        def before_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
            self._tpe = TPESampler(seed=_trial_seed(seed, trial.number))
            self._tpe.before_trial(study, trial)

        def infer_relative_search_space(
            self, study: optuna.Study, trial: FrozenTrial
        ) -> dict[str, BaseDistribution]:
            return self._tpe.infer_relative_search_space(study, trial)

        def sample_relative(
            self,
            study: optuna.Study,
            trial: FrozenTrial,
            search_space: dict[str, BaseDistribution],
        ) -> dict[str, Any]:
            return self._tpe.sample_relative(study, trial, search_space)

        def sample_independent(
            self,
            study: optuna.Study,
            trial: FrozenTrial,
            param_name: str,
            param_distribution: BaseDistribution,
        ) -> Any:
            return self._tpe.sample_independent(study, trial, param_name, param_distribution)

        def after_trial(
            self,
            study: optuna.Study,
            trial: FrozenTrial,
            state: TrialState,
            values: Sequence[float] | None,
        ) -> None:
            self._tpe.after_trial(study, trial, state, values)

        def reseed_rng(self) -> None:
            # The seeds come from the trial numbers; there is nothing to reseed.
            pass

    return TrialSeededTPESampler()


def _safe_url(url: str) -> str:
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return url


def _in_memory(url: str) -> bool:
    return url in ("sqlite://", "sqlite:///:memory:")


@contextmanager
def _storage_errors(url: str, escaped: Sequence[BaseException] = ()) -> Iterator[None]:
    """Translate the study database's errors into ``MetadataStoreError``, once, here.

    ``escaped`` holds what the objective raised: that passes through untouched, whatever
    its type (an objective may well use SQLAlchemy itself).
    """
    from optuna.exceptions import StorageInternalError
    from sqlalchemy.exc import SQLAlchemyError

    try:
        yield
    except (StorageInternalError, SQLAlchemyError) as exc:
        if any(exc is e for e in escaped):
            raise
        cause = exc.__cause__ if isinstance(exc, StorageInternalError) else exc
        detail = str(getattr(cause, "orig", None) or cause or exc).strip().splitlines()
        raise MetadataStoreError(
            f"The search study database at {_safe_url(url)} failed: "
            f"{detail[0] if detail else type(exc).__name__}. Check that it is reachable and "
            f"that 'metadata_url' in loopline.toml (or LOOPLINE_METADATA_URL, or the "
            f"'storage' argument) points to it; an interrupted search resumes when run again.",
            url=_safe_url(url),
        ) from exc


def _tune_sqlite(engine: Any) -> None:
    """Give Optuna's SQLite connections loopline's locking: a busy timeout, BEGIN IMMEDIATE.

    Python's sqlite3 begins transactions lazily, so two processes that read and then
    write can deadlock, and one of them fails at once with "database is locked"; taking
    the write lock up front makes the other wait instead (see store/metadata.py).
    """
    from sqlalchemy import event

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None
        cursor = dbapi_conn.cursor()
        cursor.execute(f"PRAGMA busy_timeout = {_SQLITE_BUSY_S * 1000}")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE")

    engine.dispose()  # connections opened while creating the tables predate the listeners


_CREATION_LOCK = 774412
"""PostgreSQL advisory lock key that serializes creating Optuna's tables (the
metadata store's migrations take 774411)."""


@contextmanager
def _creation_lock(url: str) -> Iterator[None]:
    """Hold a lock, across processes, while Optuna creates its tables if they are missing.

    Optuna checks for each table and then creates it; two workers starting at once both
    find it missing, and the second CREATE fails (on PostgreSQL, with a duplicate key in
    ``pg_type``).
    """
    import sqlalchemy as sa
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        with open(f"{parsed.database}.search-lock", "a+") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)
        return
    engine = sa.create_engine(
        parsed, poolclass=sa.pool.NullPool, connect_args={"connect_timeout": 10}
    )
    try:
        with engine.connect() as conn:
            conn.execute(sa.text("SELECT pg_advisory_lock(:key)"), {"key": _CREATION_LOCK})
            conn.commit()
            try:
                yield
            finally:
                conn.execute(sa.text("SELECT pg_advisory_unlock(:key)"), {"key": _CREATION_LOCK})
                conn.commit()
    finally:
        engine.dispose()


def _open_storage(url: str) -> tuple[optuna.storages.BaseStorage, str]:
    """Optuna storage in the metadata database at ``url``, and its URL with no password."""
    import optuna

    if _in_memory(url):
        # An in-memory SQLite database is private to one connection; Optuna's own
        # in-memory storage is the same thing without the SQL.
        return optuna.storages.InMemoryStorage(), "memory"
    from loopline.data.workspace import metadata_store

    # Opening the metadata store migrates it first: Optuna, finding no alembic_version,
    # would otherwise stamp that table with its own revision, and loopline would no
    # longer recognize its database.
    normalized = metadata_store(url).url
    sqlite = normalized.startswith("sqlite")
    engine_kwargs: dict[str, Any] = (
        {"connect_args": {"timeout": _SQLITE_BUSY_S}}
        if sqlite
        else {"pool_pre_ping": True, "connect_args": {"connect_timeout": 10}}
    )
    with _storage_errors(normalized), _creation_lock(normalized):
        storage = optuna.storages.RDBStorage(
            normalized, engine_kwargs=engine_kwargs, skip_compatibility_check=True
        )
    if sqlite:
        _tune_sqlite(storage.engine)
    return storage, _safe_url(normalized)


def _close_storage(storage: optuna.storages.BaseStorage) -> None:
    import optuna

    if isinstance(storage, optuna.storages.RDBStorage):
        storage.remove_session()
        storage.engine.dispose()


def _search_in_parallel(
    one: Callable[[], SearchResult], url: str, workers: int, engine: str | None
) -> SearchResult:
    """Run ``one`` (a search with one worker) in ``workers`` places at once on one study,
    and return the study as it ends, with every worker's new trials counted."""
    if url == "sqlite://" or url.startswith("sqlite:///:memory:"):
        raise TrainingError(
            "A search with several workers needs a study database they all reach; an "
            "in-memory 'sqlite://' is this process's alone. Give a file or PostgreSQL "
            "storage (the workspace's metadata database by default)."
        )
    if engine is None:
        from loopline.config import Settings

        engine = Settings.load().engine
    started = time.monotonic()
    others = workers - 1
    if engine == "ray" or engine.startswith("ray://") or _ray_connected():
        results = _on_ray(one, others, None if engine in ("ray", "local") else engine)
    else:
        results = _forked(one, others)
    # The worker that finished last saw every trial in its final state.
    last = max(results, key=lambda r: len(r.trials))
    return replace(
        last,
        new_trials=sum(r.new_trials for r in results),
        elapsed_s=time.monotonic() - started,
    )


def _ray_connected() -> bool:
    try:
        import ray
    except ImportError:
        return False
    return bool(ray.is_initialized())


def _on_ray(
    one: Callable[[], SearchResult], others: int, address: str | None
) -> list[SearchResult]:
    """``one`` here and as ``others`` Ray tasks (joining ``address``, or a cluster this
    process is connected to, or a new local one)."""
    try:
        import ray
    except ImportError as exc:
        raise TrainingError(
            "A search on the 'ray' engine needs Ray: pip install 'loopline[ray]'."
        ) from exc
    started_here = not ray.is_initialized()
    if started_here:
        ray.init(address=address or "local", include_dashboard=False, log_to_driver=False)
    try:
        remote = ray.remote(num_cpus=1, max_retries=2)(one)
        refs = [remote.remote() for _ in range(others)]
        results = [one()]
        results += ray.get(refs)
    finally:
        if started_here:
            ray.shutdown()
    return results


def _forked(one: Callable[[], SearchResult], others: int) -> list[SearchResult]:
    """``one`` here and in ``others`` forked processes, which leave their results in files
    (a pipe would fill and block a worker whose result is large)."""
    import multiprocessing
    import pickle
    import tempfile
    from pathlib import Path

    context = multiprocessing.get_context("fork")
    with tempfile.TemporaryDirectory(prefix="loopline-search-") as folder:
        files = [Path(folder) / f"worker-{n}.pickle" for n in range(others)]

        def worker(path: Path) -> None:
            path.write_bytes(pickle.dumps(one()))

        processes = [context.Process(target=worker, args=(path,)) for path in files]
        for process in processes:
            process.start()
        try:
            results = [one()]
        finally:
            for process in processes:
                process.join()
        failed = [p.exitcode for p in processes if p.exitcode != 0]
        if failed:
            raise TrainingError(
                f"{len(failed)} of the search's {others + 1} workers failed (exit codes "
                f"{failed}); the trials that finished are in the study, and running the "
                f"search again goes on from there."
            )
        return results + [pickle.loads(path.read_bytes()) for path in files]


def _check_arguments(
    objective: object,
    space: object,
    study: object,
    direction: object,
    n_trials: object,
    timeout: object,
    seed: object,
    pruning: object,
) -> str:
    """Check ``search``'s arguments where they enter; return the direction to use."""
    if not callable(objective):
        raise TrainingError(
            f"The 'objective' of search must be a function of a SearchTrial that returns a "
            f"number. Got {objective!r}."
        )
    if not isinstance(space, SearchSpace):
        raise TrainingError(
            f"The 'space' of search must be a SearchSpace (SearchSpace.from_config builds one "
            f"from a table). Got {type(space).__name__}."
        )
    if not isinstance(study, str) or not study.strip() or len(study) > 512:
        raise TrainingError(
            f"The 'study' of search must be a non-empty name of at most 512 characters such "
            f"as 'flights-lightgbm'. Got {study!r}."
        )
    declared = getattr(objective, "direction", None)
    if direction is None:
        direction = declared if declared in DIRECTIONS else "maximize"
    if direction not in DIRECTIONS:
        raise TrainingError(
            f"The 'direction' of search must be 'maximize' or 'minimize'. Got {direction!r}."
        )
    if declared in DIRECTIONS and declared != direction:
        raise TrainingError(
            f"The objective's metric is to {declared}, but search was asked to {direction}. "
            f"Drop the 'direction' argument or pass direction={declared!r}."
        )
    if n_trials is not None and (
        isinstance(n_trials, bool) or not isinstance(n_trials, int) or n_trials < 1
    ):
        raise TrainingError(
            f"The 'n_trials' of search must be a positive integer such as 20 (the total the "
            f"study should reach), or None. Got {n_trials!r}."
        )
    if timeout is not None and (
        isinstance(timeout, bool)
        or not isinstance(timeout, int | float)
        or not math.isfinite(timeout)
        or timeout <= 0
    ):
        raise TrainingError(
            f"The 'timeout' of search must be a positive number of seconds such as 600, or "
            f"None. Got {timeout!r}."
        )
    if n_trials is None and timeout is None:
        raise TrainingError(
            "search needs a budget: pass n_trials (the total number of trials), timeout "
            "(seconds), or both."
        )
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise TrainingError(
            f"The 'seed' of search must be a non-negative integer such as 0. Got {seed!r}."
        )
    if isinstance(pruning, MedianPruning):
        for part in ("startup_trials", "warmup_steps", "interval_steps"):
            value = getattr(pruning, part)
            least = 1 if part == "interval_steps" else 0
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                raise TrainingError(
                    f"The {part!r} of MedianPruning must be an integer of at least {least}. "
                    f"Got {value!r}."
                )
    elif not isinstance(pruning, bool):
        raise TrainingError(
            f"The 'pruning' of search must be true, false or a MedianPruning. Got {pruning!r}."
        )
    return str(direction)


def _pruner(pruning: bool | MedianPruning) -> optuna.pruners.BasePruner:
    from optuna.pruners import MedianPruner, NopPruner

    if pruning is False:
        return NopPruner()
    settings = MedianPruning() if pruning is True else pruning
    return MedianPruner(
        n_startup_trials=settings.startup_trials,
        n_warmup_steps=settings.warmup_steps,
        interval_steps=settings.interval_steps,
    )


def _record(trial: FrozenTrial) -> TrialRecord:
    attributes = {k: v for k, v in trial.user_attrs.items() if not k.startswith("loopline.")}
    worker = trial.user_attrs.get(WORKER_ATTRIBUTE)
    return TrialRecord(
        number=int(trial.number),
        state=_STATES.get(trial.state.name, trial.state.name.lower()),
        value=None if trial.value is None else float(trial.value),
        params=dict(trial.params),
        intermediate={int(k): float(v) for k, v in sorted(trial.intermediate_values.items())},
        attributes=attributes,
        worker=None if worker is None else str(worker),
        started_at=None if trial.datetime_start is None else trial.datetime_start.timestamp(),
        ended_at=None if trial.datetime_complete is None else trial.datetime_complete.timestamp(),
    )


def _check_study(study: optuna.Study, name: str, direction: str, space: SearchSpace) -> None:
    """A resumed study must be the same search: same direction, same space."""
    existing = study.direction.name.lower()
    if existing != direction:
        raise TrainingError(
            f"Study {name!r} was created to {existing}, not to {direction}. Use another study "
            f"name for a different search.",
            study=name,
        )
    config = json.loads(json.dumps(space.to_config()))
    stored = study.user_attrs.get(SPACE_ATTRIBUTE)
    if stored is None:
        study.set_user_attr(SPACE_ATTRIBUTE, config)
    elif stored != config:
        raise TrainingError(
            f"Study {name!r} was created with another search space ({stored}); this search "
            f"has {config}. Resume it with the same space, or use another study name.",
            study=name,
        )


def search(
    objective: Callable[[SearchTrial], float],
    space: SearchSpace,
    *,
    study: str,
    storage: str | None = None,
    direction: str | None = None,
    n_trials: int | None = None,
    timeout: float | None = None,
    seed: int = 0,
    pruning: bool | MedianPruning = True,
    workers: int = 1,
    engine: str | None = None,
) -> SearchResult:
    """Search ``space`` for the parameters that optimize ``objective``.

    Parameters
    ----------
    objective
        Called once per trial with a ``SearchTrial``; returns the value to optimize. It
        may ``report`` intermediate values and stop early when ``should_prune()``.
    space
        The parameters to sample.
    study
        The study's name: the same name (and database) resumes it, or joins the workers
        already running it.
    storage
        SQLAlchemy URL of the database that holds the study; default, the current
        workspace's metadata database (the running step's, or loopline.toml's).
        ``sqlite://`` keeps it in this process only.
    direction
        ``maximize`` or ``minimize``; default, what the objective says (a
        ``LightGBMObjective`` knows its metric's), else ``maximize``.
    n_trials
        The total number of finished (complete or pruned) trials the study should hold
        when this call returns; the trials already there count (see the module notes).
    timeout
        Seconds after which this call starts no new trial.
    seed
        Seeds the sampler (per trial, with the trial's number).
    pruning
        True for median pruning with its defaults, a ``MedianPruning`` to tune it,
        False for none.
    workers
        How many trial loops share the study at once: this call runs one, and the
        others run as Ray tasks (``engine`` ``ray`` or ``ray://host:port``, or when this
        process is connected to Ray already) or as forked processes (``local``). Each
        draws its own trials (seeded by trial number) and stops when the study holds
        ``n_trials``; the storage must be a database they all reach (not ``sqlite://``).
    engine
        Where the other workers run; default, the ``engine`` setting.

    Returns
    -------
    SearchResult
        The best trial and every trial of the study.

    Raises
    ------
    TrainingError
        An argument is invalid, the study exists with another direction or space, or no
        trial completed.
    MetadataStoreError
        The study database cannot be reached or written.
    """
    direction = _check_arguments(
        objective, space, study, direction, n_trials, timeout, seed, pruning
    )
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise TrainingError(
            f"The 'workers' of search must be a positive number of trial loops. Got {workers!r}."
        )
    if workers > 1:
        return _search_in_parallel(
            lambda: search(
                objective,
                space,
                study=study,
                storage=url,
                direction=direction,
                n_trials=n_trials,
                timeout=timeout,
                seed=seed,
                pruning=pruning,
            ),
            url := storage if storage is not None else _workspace_metadata_url(),
            workers,
            engine,
        )
    import optuna
    from optuna.trial import TrialState

    url = storage if storage is not None else _workspace_metadata_url()
    started = time.monotonic()
    backend, where = _open_storage(url)
    worker = f"{socket.gethostname()}:{os.getpid()}"
    # What the objective raised that ends the search. Pruning signals are not kept: each
    # would hold its trial's frames (and model) alive.
    escaped: list[BaseException] = []
    ran = 0

    def run_trial(trial: optuna.Trial) -> float:
        nonlocal ran
        ran += 1
        trial.set_user_attr(WORKER_ATTRIBUTE, worker)
        params = space._suggest(trial)
        try:
            value = objective(SearchTrial(trial, params))
        except TrialPruned as exc:
            raise optuna.TrialPruned(str(exc)) from exc
        except optuna.TrialPruned:
            raise
        except BaseException as exc:
            escaped.append(exc)
            raise
        if not _is_number(value) and not isinstance(value, np.floating | np.integer):
            error = TrainingError(
                f"The objective of search {study!r} must return a number; trial "
                f"{trial.number} returned {value!r}."
            )
            escaped.append(error)
            raise error
        return float(value)

    finished = (TrialState.COMPLETE, TrialState.PRUNED)
    verbosity = optuna.logging.get_verbosity()
    # Optuna logs a line per trial; the trials are in the result, and in the database.
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        with _storage_errors(where, escaped):
            handle = optuna.create_study(
                study_name=study,
                storage=backend,
                sampler=_sampler(seed),
                pruner=_pruner(pruning),
                direction="maximize" if direction == "maximize" else "minimize",
                load_if_exists=True,
            )
            _check_study(handle, study, direction, space)
            remaining: int | None = None
            callbacks: list[Callable[[optuna.Study, FrozenTrial], None]] = []
            if n_trials is not None:
                done = len(handle.get_trials(deepcopy=False, states=finished))
                remaining = max(n_trials - done, 0)
                # Other workers add trials too: stop as soon as the study has the total.
                callbacks.append(optuna.study.MaxTrialsCallback(n_trials, states=finished))
            if remaining is None or remaining > 0:
                handle.optimize(run_trial, n_trials=remaining, timeout=timeout, callbacks=callbacks)
            trials = tuple(_record(t) for t in handle.get_trials(deepcopy=False))
    finally:
        optuna.logging.set_verbosity(verbosity)
        _close_storage(backend)
    complete = [t for t in trials if t.state == "complete" and t.value is not None]
    if not complete:
        counts = ", ".join(
            f"{sum(1 for t in trials if t.state == s)} {s}" for s in ("pruned", "failed", "running")
        )
        raise TrainingError(
            f"No trial of study {study!r} completed ({counts}). Check the objective (does it "
            f"return a finite number?), loosen the pruning (MedianPruning(warmup_steps=...)), "
            f"or give the search more trials or time.",
            study=study,
        )
    sign = -1.0 if direction == "maximize" else 1.0
    # Ties go to the earliest trial, as in Optuna.
    best = min(complete, key=lambda t: (sign * float(t.value or 0.0), t.number))
    return SearchResult(
        study=study,
        storage=where,
        direction=direction,
        best_trial=best.number,
        best_value=float(best.value or 0.0),
        best_params=dict(best.params),
        trials=trials,
        new_trials=ran,
        elapsed_s=time.monotonic() - started,
    )


def _workspace_metadata_url() -> str:
    from loopline.data.workspace import current_workspace

    return current_workspace().metadata_url


# --------------------------------------------------------------------------- LightGBM


@dataclass(frozen=True)
class _Metric:
    lightgbm: str
    direction: str
    task: str


_METRICS = {
    "roc_auc": _Metric("auc", "maximize", "classification"),
    "pr_auc": _Metric("average_precision", "maximize", "classification"),
    "log_loss": _Metric("binary_logloss", "minimize", "classification"),
    # LightGBM's l2 on a binary objective is computed on probabilities: the Brier score.
    "brier": _Metric("l2", "minimize", "classification"),
    "rmse": _Metric("rmse", "minimize", "regression"),
    "mae": _Metric("l1", "minimize", "regression"),
    "mape": _Metric("mape", "minimize", "regression"),
}
"""Our metric names -> LightGBM's, which it computes on the valid split every round."""

_OWN_PARAMS = {
    "metric": "metric=",
    "num_iterations": "num_boost_round=",
    "num_iteration": "num_boost_round=",
    "n_iter": "num_boost_round=",
    "num_tree": "num_boost_round=",
    "num_trees": "num_boost_round=",
    "num_round": "num_boost_round=",
    "num_rounds": "num_boost_round=",
    "nrounds": "num_boost_round=",
    "num_boost_round": "num_boost_round=",
    "n_estimators": "num_boost_round=",
    "max_iter": "num_boost_round=",
    "early_stopping_round": "early_stopping_rounds=",
    "early_stopping_rounds": "early_stopping_rounds=",
    "early_stopping": "early_stopping_rounds=",
    "n_iter_no_change": "early_stopping_rounds=",
}
"""LightGBM parameters (and aliases) that lightgbm_objective sets from its own arguments."""


class LightGBMObjective:
    """A search objective that trains LightGBM and scores it on a validation split.

    Built by ``lightgbm_objective``, which checks and encodes the data once; each call
    trains one model with the trial's parameters and returns the validation metric at
    the best round.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> x = rng.normal(size=400)
    >>> table = pl.DataFrame({"x": x, "y": (x + rng.normal(size=400) > 0).astype(int)})
    >>> objective = lightgbm_objective(table[:300], table[300:], features=["x"], label="y",
    ...                                num_boost_round=20)
    >>> objective.direction
    'maximize'
    >>> result = search(objective, SearchSpace({"num_leaves": IntParam(2, 8)}),
    ...                 study="lgb", storage="sqlite://", n_trials=2)
    >>> 0.5 < result.best_value <= 1.0, "best_iteration" in result.best.attributes
    (True, True)
    """

    def __init__(
        self,
        *,
        metric: str,
        features: tuple[str, ...],
        categorical: tuple[str, ...],
        vocabulary: dict[str, list[Any]],
        train: tuple[np.ndarray, np.ndarray],
        valid: tuple[np.ndarray, np.ndarray],
        params: dict[str, Any],
        num_boost_round: int,
        early_stopping_rounds: int | None,
        report_every: int,
    ) -> None:
        self.metric = metric
        self.features = features
        self.categorical = categorical
        self.vocabulary = vocabulary
        self._train = train
        self._valid = valid
        self.params = params
        self.num_boost_round = num_boost_round
        self.early_stopping_rounds = early_stopping_rounds
        self.report_every = report_every

    @property
    def direction(self) -> str:
        """``maximize`` or ``minimize``: which way the metric improves."""
        return _METRICS[self.metric].direction

    def model_params(self, trial_params: Mapping[str, Any]) -> dict[str, Any]:
        """The LightGBM parameters a trial trains with: the fixed ones and ``trial_params``.

        Use it with ``SearchResult.best_params`` (and the best trial's
        ``best_iteration`` attribute as the number of rounds) to train the final model.
        """
        clash = sorted(set(trial_params) & set(self.params))
        if clash:
            raise TrainingError(
                f"Parameter(s) {', '.join(repr(c) for c in clash)} are both fixed in "
                f"lightgbm_objective(params=...) and searched; drop them from one of the two."
            )
        own = sorted(k for k in trial_params if k in _OWN_PARAMS)
        if own:
            raise TrainingError(
                f"Search parameter {own[0]!r} is set by lightgbm_objective; use its "
                f"{_OWN_PARAMS[own[0]]} argument instead."
            )
        return {**self.params, **trial_params, "metric": _METRICS[self.metric].lightgbm}

    def __call__(self, trial: SearchTrial) -> float:
        import lightgbm as lgb

        params = self.model_params(trial.params)
        categorical = [self.features.index(name) for name in self.categorical]
        x_train, y_train = self._train
        x_valid, y_valid = self._valid
        # A fresh Dataset per trial: its binning depends on parameters a trial may set
        # (max_bin, min_data_in_bin), and LightGBM refuses to change them once built.
        train_set = lgb.Dataset(
            x_train,
            label=y_train,
            feature_name=list(self.features),
            categorical_feature=categorical,
        )
        valid_set = lgb.Dataset(
            x_valid,
            label=y_valid,
            reference=train_set,
            feature_name=list(self.features),
            categorical_feature=categorical,
        )
        reporter = _Reporter(trial, _METRICS[self.metric].lightgbm, self.report_every)
        callbacks: list[Callable[..., None]] = [reporter]
        if self.early_stopping_rounds is not None:
            callbacks.append(
                lgb.early_stopping(
                    self.early_stopping_rounds, first_metric_only=True, verbose=False
                )
            )
        with _lightgbm_errors():
            booster = lgb.train(
                params,
                train_set,
                num_boost_round=self.num_boost_round,
                valid_sets=[valid_set],
                valid_names=["valid"],
                callbacks=callbacks,
            )
        if self.early_stopping_rounds is not None and booster.best_iteration > 0:
            best_iteration = int(booster.best_iteration)
            value = float(booster.best_score["valid"][reporter.metric])
        else:
            best_iteration, value = reporter.rounds, reporter.last
        trial.set_attribute("best_iteration", best_iteration)
        return value


class _Reporter:
    """A LightGBM callback: report the valid metric every ``every`` rounds; prune if told."""

    order = 20  # LightGBM runs callbacks by order: this one before early stopping (30)

    def __init__(self, trial: SearchTrial, metric: str, every: int) -> None:
        self.trial = trial
        self.metric = metric
        self.every = every
        self.rounds = 0
        self.last = math.nan

    def __call__(self, env: lgb.callback.CallbackEnv) -> None:
        # Entries are (data name, metric name, value, higher is better[, stdv]).
        found = [e[2] for e in env.evaluation_result_list or () if e[:2] == ("valid", self.metric)]
        if not found:
            return
        value = found[0]
        self.rounds, self.last = env.iteration + 1, float(value)
        if self.rounds % self.every:
            return
        self.trial.report(self.last, env.iteration)
        if self.trial.should_prune():
            self.trial.prune(
                f"Trial {self.trial.number} was pruned at round {self.rounds}: its "
                f"{self.metric} {self.last:.6g} is worse than the median of earlier trials."
            )


@contextmanager
def _lightgbm_errors() -> Iterator[None]:
    """LightGBM's own errors (a bad parameter value, say) become ``TrainingError``."""
    import lightgbm as lgb

    try:
        yield
    except lgb.basic.LightGBMError as exc:
        detail = str(exc).strip().splitlines()
        raise TrainingError(
            f"LightGBM refused to train: {detail[0] if detail else exc}. Check the fixed "
            f"parameters and the search space against LightGBM's parameter documentation."
        ) from exc


_CATEGORICAL_TYPES = (pl.String, pl.Categorical, pl.Enum)


def _label(table: pl.DataFrame, label: str, split: str, task: str, metric: str) -> np.ndarray:
    column = table.get_column(label)
    if column.null_count():
        raise TrainingError(
            f"The label {label!r} of the {split} split has {column.null_count()} null(s); drop "
            f"the unlabeled rows before training.",
            column=label,
        )
    if not column.dtype.is_numeric() and column.dtype != pl.Boolean:
        raise TrainingError(
            f"The label {label!r} must be numeric or boolean; it is {column.dtype}.",
            column=label,
        )
    y = column.cast(pl.Float64).to_numpy()
    if task == "classification":
        values = set(np.unique(y).tolist())
        if not values <= {0.0, 1.0}:
            raise TrainingError(
                f"Metric {metric!r} scores a binary classifier, so the label {label!r} must hold "
                f"0 and 1 (or false and true); the {split} split holds "
                f"{sorted(values)[:5]}. Use a regression metric ({', '.join(_regression())}) "
                f"for a numeric target.",
                column=label,
            )
        if len(values) < 2:
            only = int(next(iter(values))) if values else None
            raise TrainingError(
                f"The label {label!r} of the {split} split has one class only ({only!r} in all "
                f"{y.size} rows); a classifier needs both. Check the filter or the time split "
                f"that made it.",
                column=label,
            )
    elif not np.isfinite(y).all():
        raise TrainingError(
            f"The label {label!r} of the {split} split holds NaN or infinite values.",
            column=label,
        )
    return y


def _regression() -> list[str]:
    return [name for name, m in _METRICS.items() if m.task == "regression"]


def lightgbm_objective(
    train: pl.DataFrame,
    valid: pl.DataFrame,
    *,
    features: Sequence[str],
    label: str,
    metric: str = "roc_auc",
    params: Mapping[str, Any] | None = None,
    categorical: Sequence[str] | None = None,
    num_boost_round: int = 1000,
    early_stopping_rounds: int | None = 50,
    report_every: int = 10,
    seed: int = 0,
    num_threads: int = 1,
) -> LightGBMObjective:
    """An objective that trains LightGBM on ``train`` and scores it on ``valid``.

    Each trial trains with the fixed ``params`` and the trial's, stops early when the
    metric on ``valid`` has not improved for ``early_stopping_rounds`` rounds, reports
    the metric after every ``report_every`` rounds (so the pruner can stop a hopeless
    trial) and returns its value at the best round, which it keeps as the trial's
    ``best_iteration`` attribute. Training is deterministic (fixed seed and threads).
    Steps are round indexes (0 for the first round), whatever ``report_every`` is.

    Parameters
    ----------
    train, valid
        The training split and the validation split (the later rows, for time-ordered
        data).
    features
        The feature columns, in model order.
    label
        The label column: 0/1 (or boolean) for classification metrics, numeric for
        regression ones.
    metric
        ``roc_auc``, ``pr_auc``, ``log_loss``, ``brier`` (binary classification) or
        ``rmse``, ``mae``, ``mape`` (regression); also the search direction.
    params
        Fixed LightGBM parameters; default objective ``binary`` or ``regression``.
    categorical
        Columns coded by their position in the training split's sorted vocabulary;
        default, every string or categorical feature.
    num_boost_round, early_stopping_rounds
        The most boosting rounds, and the patience (None: no early stopping).
    report_every
        Rounds between reports to the pruner. Each report is a database write or two (a
        few milliseconds on PostgreSQL), which small, fast rounds would feel at every
        round; the pruner needs no finer grain.
    seed, num_threads
        LightGBM's seed and thread count.

    Raises
    ------
    TrainingError
        A metric that does not exist, a feature or label missing from a split, a label
        with one class, or an invalid argument.
    """
    if metric not in _METRICS:
        raise TrainingError(
            f"Unknown metric {metric!r} for lightgbm_objective. Valid metrics: "
            f"{', '.join(_METRICS)}.",
            metric=metric,
        )
    task = _METRICS[metric].task
    for split, table in (("train", train), ("valid", valid)):
        if not isinstance(table, pl.DataFrame):
            raise TrainingError(
                f"The {split!r} split of lightgbm_objective must be a Polars DataFrame. Got "
                f"{type(table).__name__}."
            )
    if isinstance(features, str) or not features:
        raise TrainingError(
            f"The 'features' of lightgbm_objective must be a non-empty list of column names. "
            f"Got {features!r}."
        )
    features = tuple(features)
    if len(set(features)) != len(features) or label in features:
        raise TrainingError(
            f"The 'features' of lightgbm_objective must be distinct columns other than the "
            f"label {label!r}. Got {list(features)!r}."
        )
    for split, table in (("train", train), ("valid", valid)):
        missing = [name for name in (*features, label) if name not in table.columns]
        if missing:
            raise TrainingError(
                f"The {split} split has no column(s) {', '.join(repr(m) for m in missing)}. "
                f"Its columns: {', '.join(table.columns)}.",
                column=missing[0],
            )
        if table.height == 0:
            raise TrainingError(f"The {split} split of lightgbm_objective has no rows.")
    for name, value, least in (
        ("num_boost_round", num_boost_round, 1),
        ("report_every", report_every, 1),
        ("num_threads", num_threads, 1),
        ("seed", seed, 0),
    ):
        if isinstance(value, bool) or not isinstance(value, int) or value < least:
            raise TrainingError(
                f"The {name!r} of lightgbm_objective must be an integer of at least {least}. "
                f"Got {value!r}."
            )
    if early_stopping_rounds is not None and (
        isinstance(early_stopping_rounds, bool)
        or not isinstance(early_stopping_rounds, int)
        or early_stopping_rounds < 1
    ):
        raise TrainingError(
            f"The 'early_stopping_rounds' of lightgbm_objective must be a positive integer "
            f"such as 50, or None. Got {early_stopping_rounds!r}."
        )
    fixed = dict(params or {})
    own = sorted(k for k in fixed if k in _OWN_PARAMS)
    if own:
        raise TrainingError(
            f"Parameter {own[0]!r} is set by lightgbm_objective; use its "
            f"{_OWN_PARAMS[own[0]]} argument instead."
        )
    if categorical is None:
        categorical = [
            name for name in features if isinstance(train.schema[name], _CATEGORICAL_TYPES)
        ]
    unknown = [name for name in categorical if name not in features]
    if unknown:
        raise TrainingError(
            f"Categorical column(s) {', '.join(repr(u) for u in unknown)} of "
            f"lightgbm_objective are not among its features.",
            column=unknown[0],
        )
    # The same encoding as a bundle: sorted training vocabularies, unseen values missing.
    preprocessor = Preprocessor(features=features, categorical=categorical, impute="none")
    preprocessor.fit(train)
    y_train = _label(train, label, "train", task, metric)
    y_valid = _label(valid, label, "valid", task, metric)
    defaults: dict[str, Any] = {
        "objective": "binary" if task == "classification" else "regression",
        # Same data, same model bytes: no thread-count or layout dependent choices.
        "deterministic": True,
        "force_col_wise": True,
        "seed": seed,
        "num_threads": num_threads,
        "verbosity": -1,
    }
    return LightGBMObjective(
        metric=metric,
        features=features,
        categorical=tuple(categorical),
        vocabulary={name: list(v) for name, v in preprocessor.vocabulary_.items()},
        train=(preprocessor.transform(train), y_train),
        valid=(preprocessor.transform(valid), y_valid),
        params={**defaults, **fixed},
        num_boost_round=num_boost_round,
        early_stopping_rounds=early_stopping_rounds,
        report_every=report_every,
    )
