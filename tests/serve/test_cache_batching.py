"""The prediction cache, adaptive micro-batching, and the one-row prediction path.

The cache is tested in process (LRU) and against the real Redis; a hit must be the
model's answer, keyed by version and the full feature vector, and a fallback's answer is
never stored. Micro-batching is driven with concurrent requests through the ASGI app:
concurrent requests share one model call and each gets its own rows' answers.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import polars as pl
import pytest
from city_weather import FEATURES, city_rows
from hypothesis import given, settings
from hypothesis import strategies as st
from starlette.testclient import TestClient

from loopline.data.workspace import Workspace
from loopline.errors import ServingError
from loopline.registry import Registry
from loopline.serve.app import create_app
from loopline.serve.batching import ALONE, DIRECT, Batching, MicroBatcher
from loopline.serve.cache import (
    PredictionCache,
    RedisPredictionCache,
    cache_key,
    open_cache,
)
from loopline.serve.repository import ModelRepository
from loopline.serve.rollout import Rollout
from loopline.train import LightGBMModel, ModelBundle, train_bundle


def _bundle(rounds: int) -> ModelBundle:
    model = LightGBMModel(num_rounds=rounds, min_data_in_leaf=5, num_threads=1)
    return train_bundle(city_rows(400, 1), features=FEATURES, label="late", model=model)


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Registry:
    home = tmp_path_factory.mktemp("cache")
    registry = Registry(Workspace(f"sqlite:///{home}/meta.db", str(home / "artifacts")))
    for rounds in (5, 20):
        version = registry.register_bundle("weather-late", _bundle(rounds))
        registry.promote("weather-late", version.version, why="test")
    return registry  # the champion is version 2


@pytest.fixture
def repository(registry: Registry) -> ModelRepository:
    repository = ModelRepository(registry, ["weather-late"])
    repository.load()
    return repository


def _row(i: int) -> dict[str, Any]:
    return city_rows(50, 7).select(FEATURES).row(i % 50, named=True)


class Calls:
    """Counts a model's calls (and their rows) while passing them through."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, model: Any) -> None:
        self.rows: list[int] = []
        encoded, row = model.predict_encoded, model.predict_row

        def predict_encoded(matrix: np.ndarray) -> np.ndarray:
            self.rows.append(len(matrix))
            return encoded(matrix)  # type: ignore[no-any-return]

        def predict_row(values: np.ndarray) -> float:
            self.rows.append(1)
            return row(values)  # type: ignore[no-any-return]

        monkeypatch.setattr(model, "predict_encoded", predict_encoded)
        monkeypatch.setattr(model, "predict_row", predict_row)


# -- the one-row path ---------------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(
    city=st.one_of(st.none(), st.sampled_from(["Oslo", "Rome", "Lima", "Nowhere", ""])),
    temp=st.one_of(st.none(), st.floats(allow_infinity=False), st.integers(-40, 50)),
    hour=st.one_of(st.none(), st.floats(0, 23), st.just(float("nan")), st.booleans()),
)
def test_one_row_encodes_and_predicts_as_the_general_path(
    city: str | None, temp: float | None, hour: float | None
) -> None:
    bundle = BUNDLE
    row = {"city": city, "temp": temp, "hour": hour, "extra": "ignored"}
    columns = {name: [row[name]] for name in FEATURES}
    expected = bundle.preprocessor.transform_columns(columns)
    encoded = bundle.preprocessor.transform_row(row)
    assert encoded.shape == (len(FEATURES),)
    assert np.array_equal(encoded, expected[0], equal_nan=True)
    # LightGBM's single-row C call gives exactly Booster.predict's answer
    assert bundle.model.predict_row(encoded) == bundle.model.predict_encoded(expected)[0]


BUNDLE = _bundle(20)


def test_one_row_with_odd_values_takes_the_general_path_and_its_errors() -> None:
    pre = BUNDLE.preprocessor
    good = _row(0)
    as_text = {**good, "temp": str(good["temp"])}  # a number as text is read
    assert np.array_equal(pre.transform_row(as_text), pre.transform_row(good))
    with pytest.raises(Exception, match="lack the feature column"):
        pre.transform_row({k: v for k, v in good.items() if k != "temp"})
    with pytest.raises(Exception, match="'temp'"):
        pre.transform_row({**good, "temp": "warm"})


@settings(max_examples=40, deadline=None)
@given(
    city=st.one_of(st.sampled_from(["Oslo", "Rome", "Lima", ""]), st.none(), st.integers(0, 3)),
    temp=st.one_of(st.none(), st.floats(-50, 50), st.integers(-40, 50), st.text(max_size=2)),
    hour=st.one_of(st.integers(-3, 300), st.floats(0, 23), st.booleans(), st.none()),
    types=st.tuples(
        st.sampled_from(["BYTES", "FP64"]),
        st.sampled_from(["FP64", "FP32", "INT64", "BYTES"]),
        st.sampled_from(["INT64", "INT8", "UINT8", "FP64", "BOOL"]),
    ),
)
def test_one_value_per_input_is_answered_as_the_general_parser_would(
    infer_client: TestClient, city: Any, temp: Any, hour: Any, types: tuple[str, str, str]
) -> None:
    """A JSON infer request of shape [1] tensors (read without building tensors) gets the
    answer, or the error status, that the same values as [1, 1] tensors (the general
    parser) get."""
    values = {"city": city, "temp": temp, "hour": hour}

    def body(nested: bool) -> dict[str, Any]:
        return {
            "id": "r1",
            "inputs": [
                {
                    "name": name,
                    "datatype": datatype,
                    "shape": [1, 1] if nested else [1],
                    "data": [[values[name]]] if nested else [values[name]],
                }
                for name, datatype in zip(FEATURES, types, strict=True)
            ],
        }

    fast, general = (infer_client.post(INFER_PATH, json=body(n)) for n in (False, True))
    assert fast.status_code == general.status_code
    if fast.status_code == 200:
        one, other = fast.json(), general.json()
        assert one["id"] == "r1"
        assert one["outputs"][0]["data"] == other["outputs"][0]["data"]
        assert one["outputs"][0]["shape"] == [1]


INFER_PATH = "/v2/models/weather-late/infer"


@pytest.fixture(scope="module")
def infer_client(registry: Registry) -> Iterator[TestClient]:
    repository = ModelRepository(registry, ["weather-late"])
    repository.load()
    with TestClient(create_app(repository, refresh_seconds=None, load=False)) as client:
        yield client


def test_a_plain_one_row_infer_request_builds_no_tensors(
    monkeypatch: pytest.MonkeyPatch, infer_client: TestClient
) -> None:
    import loopline.serve.app as served

    parsed: list[bytes] = []
    general = served.parse_infer_request

    def counting(body: bytes, **kwargs: Any) -> Any:
        parsed.append(body)
        return general(body, **kwargs)

    monkeypatch.setattr(served, "parse_infer_request", counting)
    row = _row(3)
    inputs = [
        {"name": "city", "datatype": "BYTES", "shape": [1], "data": [row["city"]]},
        {"name": "temp", "datatype": "FP64", "shape": [1], "data": [row["temp"]]},
        {"name": "hour", "datatype": "INT64", "shape": [1], "data": [row["hour"]]},
    ]
    plain = infer_client.post(INFER_PATH, json={"inputs": inputs})
    asked = infer_client.post(INFER_PATH, json={"inputs": inputs, "outputs": [{"name": "x"}]})
    assert plain.status_code == 200
    assert plain.json()["outputs"][0]["data"] == pytest.approx(
        BUNDLE.predict(pl.DataFrame([row])).tolist()
    )
    assert "id" not in plain.json()
    assert asked.status_code == 400  # the general parser, and its error for an unknown output
    assert len(parsed) == 1


# -- the cache ----------------------------------------------------------------------------


def test_the_lru_keeps_the_most_recent_entries() -> None:
    async def run() -> None:
        cache = PredictionCache(max_entries=2)
        keys = [cache_key("m", 1, np.array([float(i)])) for i in range(3)]
        for i, key in enumerate(keys[:2]):
            await cache.put(key, np.array([i / 10]))
        assert (await cache.get(keys[0])) is not None  # 0 is now the most recent
        await cache.put(keys[2], np.array([0.2]))  # evicts 1
        assert (await cache.get(keys[1])) is None
        assert (await cache.get(keys[2])).tolist() == [0.2]  # type: ignore[union-attr]
        assert (cache.hits, cache.misses, len(cache)) == (2, 1, 2)

    asyncio.run(run())


def test_keys_differ_by_model_version_and_every_value() -> None:
    row = np.array([1.0, np.nan, 3.0])
    keys = {
        cache_key("m", 1, row),
        cache_key("m", 2, row),
        cache_key("n", 1, row),
        cache_key("m", 1, np.array([1.0, np.nan, 3.5])),
        cache_key("m", 1, np.array([[1.0, np.nan, 3.0], [1.0, np.nan, 3.0]])),
    }
    assert len(keys) == 5
    assert cache_key("m", 1, row) == cache_key("m", 1, row.copy())  # NaN keys match


def test_cache_settings_are_checked() -> None:
    assert open_cache(0) is None
    assert isinstance(open_cache(5), PredictionCache)
    with pytest.raises(ServingError, match="positive number of entries"):
        open_cache(-1)
    with pytest.raises(ServingError, match="redis:// URL"):
        open_cache(10, "http://localhost:6379")
    with pytest.raises(ServingError, match="time to live"):
        RedisPredictionCache("redis://127.0.0.1:6379/0", ttl_seconds=0)


def test_a_repeated_request_is_answered_from_the_cache(
    monkeypatch: pytest.MonkeyPatch, repository: ModelRepository
) -> None:
    served = repository.get("weather-late")
    calls = Calls(monkeypatch, served.bundle.model)
    app = create_app(repository, refresh_seconds=None, load=False, cache=PredictionCache(100))
    with TestClient(app) as client:
        first = client.post("/predict", json=_row(1)).json()
        again = client.post("/predict", json=_row(1)).json()
        other = client.post("/predict", json=_row(2)).json()
        pinned = _until_loaded(client, "/predict?version=1", _row(1))  # another version
        listed = client.post("/predict", json=[_row(1), _row(2)]).json()
        metrics = client.get("/metrics").text
    assert again["predictions"] == first["predictions"]
    assert again["request_id"] != first["request_id"]
    assert calls.rows == [1, 1, 2]  # row 1 once, row 2 once, the pair once; v1 is not counted
    assert pinned["version"] == 1
    assert listed["predictions"] == [first["predictions"][0], other["predictions"][0]]
    assert first["predictions"] == pytest.approx(BUNDLE.predict(pl.DataFrame([_row(1)])))
    assert 'loopline_prediction_cache_lookups_total{result="hit"} 1.0' in metrics
    assert 'loopline_prediction_cache_lookups_total{result="miss"} 4.0' in metrics
    assert "loopline_prediction_cache_hit_ratio 0.2" in metrics


def _until_loaded(client: TestClient, path: str, row: dict[str, Any]) -> dict[str, Any]:
    """The answer once the version asked for has loaded (503 until then)."""
    for _ in range(200):
        answer = client.post(path, json=row)
        if answer.status_code != 503:
            assert answer.status_code == 200, answer.text
            return answer.json()  # type: ignore[no-any-return]
        time.sleep(0.05)
    raise AssertionError(f"{path} did not load")


def test_an_infer_request_uses_the_cache_too(
    monkeypatch: pytest.MonkeyPatch, repository: ModelRepository
) -> None:
    served = repository.get("weather-late")
    calls = Calls(monkeypatch, served.bundle.model)
    row = _row(3)
    body = {
        "inputs": [
            {"name": "city", "datatype": "BYTES", "shape": [1], "data": [row["city"]]},
            {"name": "temp", "datatype": "FP64", "shape": [1], "data": [row["temp"]]},
            {"name": "hour", "datatype": "INT64", "shape": [1], "data": [row["hour"]]},
        ]
    }
    app = create_app(repository, refresh_seconds=None, load=False, cache=PredictionCache(100))
    with TestClient(app) as client:
        answers = [client.post("/v2/models/weather-late/infer", json=body) for _ in range(3)]
    assert all(a.status_code == 200 for a in answers)
    assert len({str(a.json()["outputs"][0]["data"]) for a in answers}) == 1
    assert calls.rows == [1]


def test_a_fallback_answer_is_not_cached(
    monkeypatch: pytest.MonkeyPatch, repository: ModelRepository
) -> None:
    model = repository.get("weather-late").bundle.model

    def broken(matrix: Any) -> Any:
        raise RuntimeError("the model is broken")

    monkeypatch.setattr(model, "predict_row", broken)
    cache = PredictionCache(100)
    rollouts = {"weather-late": Rollout(fallback=0.5)}
    app = create_app(repository, refresh_seconds=None, load=False, rollouts=rollouts, cache=cache)
    with TestClient(app) as client:
        answer = client.post("/predict", json=_row(4)).json()
        monkeypatch.undo()  # the model works again: its own answer, not the stored fallback
        again = client.post("/predict", json=_row(4)).json()
    assert (answer["route"], answer["predictions"]) == ("fallback", [0.5])
    assert "route" not in again
    assert again["predictions"] != [0.5]
    assert len(cache) == 1


@pytest.mark.services("redis")
def test_a_redis_cache_is_shared_between_servers(
    monkeypatch: pytest.MonkeyPatch, repository: ModelRepository, redis_url: str
) -> None:
    served = repository.get("weather-late")
    calls = Calls(monkeypatch, served.bundle.model)
    answers = []
    for _ in range(2):  # two servers, one after the other, on one Redis
        cache = open_cache(0, redis_url, ttl_seconds=60)
        app = create_app(repository, refresh_seconds=None, load=False, cache=cache)
        with TestClient(app) as client:
            answers.append(client.post("/predict", json=_row(5)).json()["predictions"])
            metrics = client.get("/metrics").text
    assert answers[0] == answers[1]
    assert calls.rows == [1]  # the second server found the first one's entry
    assert 'loopline_prediction_cache_lookups_total{result="hit"} 1.0' in metrics
    import redis

    base, prefix = redis_url.split("?prefix=")
    keys = redis.Redis.from_url(base).keys(f"{prefix}prediction:weather-late:2:*")
    assert len(keys) == 1
    assert 0 < redis.Redis.from_url(base).pttl(keys[0]) <= 60_000


def test_an_unreachable_redis_cache_never_fails_a_request(repository: ModelRepository) -> None:
    cache = open_cache(0, "redis://127.0.0.1:1/0", ttl_seconds=60)
    assert cache is not None
    app = create_app(repository, refresh_seconds=None, load=False, cache=cache)
    with TestClient(app) as client:
        answer = client.post("/predict", json=_row(6))
        metrics = client.get("/metrics").text
    assert answer.status_code == 200
    assert cache.errors == 2  # the lookup and the store
    assert 'loopline_prediction_cache_lookups_total{result="error"} 2.0' in metrics


# -- micro-batching -----------------------------------------------------------------------


def test_concurrent_requests_share_one_model_call() -> None:
    calls: list[int] = []

    def predict(matrix: np.ndarray) -> np.ndarray:
        calls.append(len(matrix))
        return matrix.sum(axis=1)

    def predict_row(row: np.ndarray) -> float:
        calls.append(1)
        return float(row.sum())

    async def run() -> list[list[float]]:
        batcher = MicroBatcher(predict, predict_row, Batching(max_batch=4))
        rows = [np.array([[float(i), 1.0]]) for i in range(6)]
        answers = await asyncio.gather(*(batcher.predict(r) for r in rows))
        lone = await batcher.predict(np.array([[10.0, 1.0]]))  # alone: not delayed, one row
        big = await batcher.predict(np.ones((5, 2)))  # more than a batch: its own call
        return [a.tolist() for a in [*answers, lone, big]]

    answers = asyncio.run(run())
    assert answers == [[1.0], [2.0], [3.0], [4.0], [5.0], [6.0], [11.0], [2.0] * 5]
    assert calls == [4, 2, 1, 5]


def _first(row: np.ndarray) -> float:
    return float(row[0])


def test_lone_requests_stop_waiting_for_a_batch_until_batches_form_again() -> None:
    calls: list[int] = []

    def predict(matrix: np.ndarray) -> np.ndarray:
        calls.append(len(matrix))
        return matrix[:, 0]

    async def run() -> MicroBatcher:
        batcher = MicroBatcher(predict, _first, Batching(max_batch=8))
        for i in range(ALONE + DIRECT):  # one at a time: batches of one
            await batcher.predict(np.array([[float(i)]]))
        assert batcher.direct_requests == DIRECT
        pair = [batcher.predict(np.array([[1.0]])), batcher.predict(np.array([[2.0]]))]
        assert [a.tolist() for a in await asyncio.gather(*pair)] == [[1.0], [2.0]]
        return batcher

    batcher = asyncio.run(run())
    assert calls[-1] == 2  # batching was tried again, and the pair shared a call
    assert batcher.direct_requests == DIRECT


def test_a_batch_waits_at_most_its_wait() -> None:
    calls: list[int] = []

    def predict(matrix: np.ndarray) -> np.ndarray:
        calls.append(len(matrix))
        return matrix[:, 0]

    async def run() -> None:
        batcher = MicroBatcher(predict, _first, Batching(max_batch=8, max_wait_ms=30))
        loop = asyncio.get_running_loop()
        start = loop.time()

        async def later(delay: float, value: float) -> np.ndarray:
            await asyncio.sleep(delay)
            return await batcher.predict(np.array([[value]]))

        answers = await asyncio.gather(later(0, 1.0), later(0.01, 2.0))
        assert [a.tolist() for a in answers] == [[1.0], [2.0]]
        assert loop.time() - start < 1.0

    asyncio.run(run())
    assert calls == [2]  # the second arrived within the first one's wait


def test_a_failing_batch_fails_each_request() -> None:
    def predict(matrix: np.ndarray) -> np.ndarray:
        raise RuntimeError("broken")

    async def run() -> list[Any]:
        batcher = MicroBatcher(predict, _first, Batching(max_batch=4))
        rows = [np.array([[1.0]]), np.array([[2.0]])]
        return await asyncio.gather(*(batcher.predict(r) for r in rows), return_exceptions=True)

    assert [str(e) for e in asyncio.run(run())] == ["broken", "broken"]


@pytest.mark.parametrize(
    ("settings_", "message"),
    [((1, 0.0), "at least 2 rows"), ((8, -1.0), "between 0 and 1000"), ((True, 0.0), "2 rows")],
)
def test_batching_settings_are_checked(settings_: tuple[Any, Any], message: str) -> None:
    with pytest.raises(ServingError, match=message):
        Batching(*settings_)


def test_the_server_batches_concurrent_requests(
    monkeypatch: pytest.MonkeyPatch, repository: ModelRepository
) -> None:
    served = repository.get("weather-late")
    rows = [_row(i) for i in range(12)]
    expected = served.bundle.predict(pl.DataFrame(rows)).tolist()
    calls = Calls(monkeypatch, served.bundle.model)
    app = create_app(repository, refresh_seconds=None, load=False, batching=Batching(8))

    async def run() -> list[Any]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            answers = await asyncio.gather(*(client.post("/predict", json=r) for r in rows))
            metrics = await client.get("/metrics")
        return [*answers, metrics]

    *answers, metrics = asyncio.run(run())
    got = [a.json()["predictions"][0] for a in answers]
    assert got == pytest.approx(expected, rel=1e-12)
    assert sum(calls.rows) == 12
    assert max(calls.rows) > 1  # some requests shared a call
    assert "loopline_batch_rows_count" in metrics.text
