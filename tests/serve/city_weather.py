"""The serving tests' data: rows of a small late-or-not model, and an online store of city
temperatures materialized at 06:00."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import polars as pl

from loopline.features import Entity, FeatureView, OnDemand
from loopline.features.materialize import materialize
from loopline.store.online import OnlineStore, open_online_store

T0 = datetime(2026, 1, 1, tzinfo=UTC)
"""Midnight of the readings' day; the store holds their values as of 06:00."""


def city_weather(folder: Path) -> tuple[FeatureView, OnDemand, OnlineStore]:
    """The ``weather`` view (temperature by city; Oslo, Paris and Rome, never Lima), an
    on-demand ``hour`` from the request's ``hour_of_request``, and the SQLite store the
    view was materialized into as of 06:00."""
    readings = pl.DataFrame(
        {
            "city": ["Oslo", "Oslo", "Paris", "Rome"],
            "at": [T0, T0.replace(hour=5), T0.replace(hour=3), T0.replace(hour=1)],
            "temp": [-3.0, -1.0, 12.0, 15.5],
        }
    )
    weather = FeatureView(
        "weather",
        entity=Entity("city", keys=["city"]),
        source=readings,
        timestamp="at",
        features=["temp"],
    )
    clock = OnDemand(
        "clock", features={"hour": pl.col("hour_of_request")}, inputs=["hour_of_request"]
    )
    store = open_online_store(f"sqlite:///{folder}/online.db")
    materialize([weather], end=T0.replace(hour=6), store=store)
    return weather, clock, store


FEATURES = ["city", "temp", "hour"]
"""The features of the serving tests' model: a city (categorical) and two numbers."""
CITIES = ["Oslo", "Bergen", "Paris", "Rome"]


def city_rows(n: int = 400, seed: int = 1, *, ids: bool = False) -> pl.DataFrame:
    """Rows of the serving tests' model, labelled ``late``; with ``ids``, an ``id`` column first."""
    rng = np.random.default_rng(seed)
    city = rng.choice(CITIES, n)
    temp = rng.normal(10, 8, n)
    hour = rng.integers(0, 24, n)
    late = (temp < 5) ^ (city == "Paris") ^ (rng.random(n) < 0.1)
    rows = pl.DataFrame({"city": city, "temp": temp, "hour": hour, "late": late})
    return rows.insert_column(0, pl.Series("id", np.arange(n))) if ids else rows
