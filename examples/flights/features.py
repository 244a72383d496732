"""The flights example's features, defined once for training and for serving.

A prediction is made at a flight's scheduled departure time t (UTC). What it may know:

``weather``
    The origin's latest hourly observation at or before t, if at most 3 hours old.
``planes``
    The aircraft's build year (a plane is in the register from January 1 of the year it
    was built), and from it the on-demand ``plane_age``.
``carrier_delays``, ``origin_delays``, ``route_delays``
    The mean departure delay of the carrier's, the origin airport's and the route's
    (origin, destination) flights over the hour, the day and the week before t, and how
    many flights that day. A flight's delay becomes known when it actually leaves, and
    never before its scheduled time (an early departure is counted from its schedule),
    so the flight being predicted never sees its own delay.
``calendar``
    Scheduled hour, weekday and month, computed from the request itself.

The views read the datasets that the pipeline's ingest steps create (``flights``,
``weather``, ``planes``); inside the pipeline the step passes the frames it was given,
so the definitions (and their versions) are the same ones that ``loopline materialize``
writes to the online store::

    loopline materialize examples/flights/features.py --end 2013-12-31T23:59:59
    loopline features examples/flights/features.py
"""

from __future__ import annotations

import polars as pl

from loopline.features import Aggregate, Entity, FeatureView, OnDemand, WindowView

WEATHER: tuple[str, ...] = (
    "temp",
    "dewp",
    "humid",
    "wind_dir",
    "wind_speed",
    "wind_gust",
    "precip",
    "pressure",
    "visib",
)
WINDOWS: tuple[str, ...] = ("1h", "24h", "7d")

SCHEDULED = "sched_dep"
"""The prediction time of a flight: its scheduled departure, in UTC."""
# time_hour is the scheduled hour in UTC; sched_dep_time is the local hhmm, whose minutes
# are the same in every time zone NYC uses.
SCHEDULED_DEPARTURE = (
    pl.col("time_hour") + pl.duration(minutes=pl.col("sched_dep_time") % 100)
).alias(SCHEDULED)

carrier = Entity("carrier", keys=["carrier"])
origin = Entity("origin", keys=["origin"])
route = Entity("route", keys=["origin", "dest"])
plane = Entity("plane", keys=["tailnum"])

weather = FeatureView(
    "weather",
    entity=origin,
    source="weather",
    timestamp="time_hour",
    ttl="3h",
    transform=[pl.col("time_hour").alias("weather_time")],
    features=[*WEATHER, "weather_time"],
)

planes = FeatureView(
    "planes",
    entity=plane,
    source="planes",
    timestamp="registered",
    transform=[
        pl.datetime(pl.col("year"), 1, 1, time_zone="UTC").alias("registered"),
        pl.col("year").alias("plane_year"),
    ],
    features=["plane_year"],
)


def _delays(name: str, entity: Entity, prefix: str) -> WindowView:
    """Departure-delay aggregates of ``entity`` over the hour, the day and the week."""
    return WindowView(
        name,
        entity=entity,
        source="flights",
        timestamp="known_at",
        where=pl.col("dep_delay").is_not_null(),
        transform=[
            SCHEDULED_DEPARTURE,
            # Known at the actual departure, and never before the schedule.
            (
                pl.col("time_hour")
                + pl.duration(minutes=pl.col("sched_dep_time") % 100)
                + pl.duration(minutes=pl.col("dep_delay").clip(lower_bound=0))
            ).alias("known_at"),
        ],
        aggregations=[
            *(Aggregate("dep_delay", "mean", w, name=f"{prefix}_delay_mean_{w}") for w in WINDOWS),
            Aggregate("dep_delay", "count", "24h", name=f"{prefix}_flights_24h"),
        ],
    )


carrier_delays = _delays("carrier_delays", carrier, "carrier")
origin_delays = _delays("origin_delays", origin, "origin")
route_delays = _delays("route_delays", route, "route")

calendar = OnDemand(
    "calendar",
    features={
        # sched_dep_time is hhmm as an integer: 1745 is 17:45 local time.
        "sched_hour": pl.col("sched_dep_time") // 100,
        "weekday": pl.date("year", "month", "day").dt.weekday(),  # 1 = Monday
    },
    inputs=["sched_dep_time", "year", "month", "day"],
)

plane_age = OnDemand(
    "plane_age",
    features={"plane_age": pl.col("year") - pl.col("plane_year")},
    inputs=["year", "plane_year"],
)

VIEWS = [weather, planes, carrier_delays, origin_delays, route_delays, calendar, plane_age]
"""Every definition, in the order a training set joins them."""
