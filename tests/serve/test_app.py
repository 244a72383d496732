"""The serving app, driven over HTTP in process (Starlette's TestClient runs its lifespan).

A small LightGBM model of a city (categorical) and two numbers is registered twice (two
versions) in a temporary workspace. The tests cover every route, the error answers (a
4xx JSON error for whatever a client sends, 503 with Retry-After while loading), the
online-store path of /predict (served features equal training features), following an
alias while requests keep coming, and the metrics.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import polars as pl
import pytest
from city_weather import FEATURES, T0, city_rows, city_weather
from starlette.testclient import TestClient

from loopline.data.workspace import Workspace
from loopline.errors import ServingError
from loopline.features import Entity, FeatureView
from loopline.features.materialize import materialize, online_features
from loopline.registry import Registry
from loopline.serve.app import create_app
from loopline.serve.predlog import PredictionLog, read_predictions
from loopline.serve.repository import ModelRepository, ModelSpec
from loopline.serve.rollout import Rollout, bucket
from loopline.serve.server import check_feature_versions
from loopline.store.online import open_online_store
from loopline.train import LightGBMModel, ModelBundle, train_bundle


def _rows(n: int = 400, seed: int = 1) -> pl.DataFrame:
    return city_rows(n, seed)


def _bundle(rounds: int) -> ModelBundle:
    model = LightGBMModel(num_rounds=rounds, min_data_in_leaf=5, num_threads=1)
    return train_bundle(_rows(), features=FEATURES, label="late", model=model)


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("serve")


@pytest.fixture(scope="module")
def registry(home: Path) -> Registry:
    registry = Registry(Workspace(f"sqlite:///{home}/meta.db", str(home / "artifacts")))
    for rounds in (5, 20):
        version = registry.register_bundle("weather-late", _bundle(rounds))
        registry.promote("weather-late", version.version, why="test")
    registry.promote("weather-late", 1, why="start on the first")
    return registry


@pytest.fixture
def client(registry: Registry) -> Iterator[TestClient]:
    registry.promote("weather-late", 1, why="each test starts on version 1")
    repository = ModelRepository(registry, ["weather-late"])
    app = create_app(repository, refresh_seconds=None, max_body_bytes=64 * 1024)
    with TestClient(app, raise_server_exceptions=False) as test_client:
        _wait_ready(test_client)
        yield test_client


def _wait_ready(client: TestClient) -> None:
    for _ in range(200):
        if client.get("/v2/health/ready").status_code == 200:
            return
        time.sleep(0.02)
    raise AssertionError("the server never became ready")


def _infer_body(rows: pl.DataFrame, **extra: Any) -> dict[str, Any]:
    return {
        "id": "r-1",
        "inputs": [
            {
                "name": "city",
                "shape": [rows.height],
                "datatype": "BYTES",
                "data": rows["city"].to_list(),
            },
            {
                "name": "temp",
                "shape": [rows.height],
                "datatype": "FP64",
                "data": rows["temp"].to_list(),
            },
            {
                "name": "hour",
                "shape": [rows.height, 1],
                "datatype": "INT64",
                "data": rows["hour"].to_list(),
            },
        ],
        **extra,
    }


# -- health and metadata ----------------------------------------------------------------------


def test_health_and_metadata(client: TestClient) -> None:
    assert client.get("/v2/health/live").json() == {"live": True}
    assert client.get("/v2/health/ready").json() == {"ready": True}
    server = client.get("/v2").json()
    assert server["name"] == "loopline"
    assert "binary_tensor_data" in server["extensions"]

    model = client.get("/v2/models/weather-late").json()
    assert model["name"] == "weather-late"
    assert model["versions"] == ["1"]
    assert model["inputs"] == [
        {"name": "city", "datatype": "BYTES", "shape": [-1]},
        {"name": "temp", "datatype": "FP64", "shape": [-1]},
        {"name": "hour", "datatype": "INT64", "shape": [-1]},
    ]
    assert model["outputs"] == [{"name": "probability", "datatype": "FP64", "shape": [-1]}]
    assert client.get("/v2/models/weather-late/ready").json()["ready"] is True
    assert client.get("/v2/models/weather-late/versions/1").json()["versions"] == ["1"]


# -- inference --------------------------------------------------------------------------------


def test_infer_gives_the_bundles_predictions(client: TestClient, registry: Registry) -> None:
    rows = _rows(7, seed=9)
    reply = client.post("/v2/models/weather-late/infer", json=_infer_body(rows))

    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert (body["model_name"], body["model_version"], body["id"]) == ("weather-late", "1", "r-1")
    [output] = body["outputs"]
    assert (output["name"], output["datatype"], output["shape"]) == ("probability", "FP64", [7])
    expected = registry.load_bundle("weather-late", 1).predict(rows)
    np.testing.assert_allclose(output["data"], expected, rtol=0, atol=0)


def test_a_version_not_loaded_answers_503_then_loads(client: TestClient) -> None:
    first = client.post("/v2/models/weather-late/versions/2/infer", json=_infer_body(_rows(2)))
    assert first.status_code == 503
    assert first.headers["retry-after"] == "1"
    assert "loading" in first.json()["error"]
    for _ in range(200):
        reply = client.post("/v2/models/weather-late/versions/2/infer", json=_infer_body(_rows(2)))
        if reply.status_code == 200:
            break
        time.sleep(0.02)
    assert reply.status_code == 200
    assert reply.json()["model_version"] == "2"


def test_a_model_still_loading_answers_503(registry: Registry) -> None:
    repository = ModelRepository(registry, ["weather-late"])
    app = create_app(repository, refresh_seconds=None, load=False)
    with TestClient(app) as client:
        for path in ("/v2/health/ready", "/v2/models/weather-late"):
            reply = client.get(path)
            assert reply.status_code == 503
            assert reply.headers["retry-after"] == "1"
            assert "error" in reply.json()
        assert client.get("/v2/health/live").status_code == 200


@pytest.mark.parametrize(
    ("change", "status", "words"),
    [
        (lambda b: b["inputs"].pop(), 400, "lacks the input(s) 'hour'"),
        (
            lambda b: b["inputs"].append(
                {"name": "x", "shape": [1], "datatype": "FP64", "data": [1]}
            ),
            400,
            "has no input 'x'",
        ),
        (
            lambda b: b["inputs"][1].update(datatype="BYTES", data=["a", "b"]),
            400,
            "numeric feature",
        ),
        (lambda b: b["inputs"][0].update(datatype="INT64", data=[1, 2]), 400, "send it as BYTES"),
        (lambda b: b["inputs"][1].update(shape=[1, 2]), 400, "shape"),
        (lambda b: b["inputs"][2].update(shape=[1, 1], data=[3]), 400, "row(s)"),
        (lambda b: b["inputs"][1].update(data=[1.0, "x"]), 400, "temp"),
        (lambda b: b.update(outputs=[{"name": "nope"}]), 400, "nope"),
    ],
)
def test_bad_infer_requests_get_a_4xx_json_error(
    client: TestClient, change: Any, status: int, words: str
) -> None:
    body = _infer_body(_rows(2))
    change(body)
    reply = client.post("/v2/models/weather-late/infer", json=body)

    assert reply.status_code == status, reply.text
    assert words in reply.json()["error"]


def test_transport_errors_are_json_too(client: TestClient) -> None:
    cases = [
        client.post("/v2/models/weather-late/infer", content=b"{not json"),
        client.post("/v2/models/weather-late/infer", content=b"[]"),
        client.post("/v2/models/nope/infer", json=_infer_body(_rows(1))),
        client.post("/v2/models/weather-late/versions/99/infer", json=_infer_body(_rows(1))),
        client.post("/v2/models/weather-late/versions/x/infer", json=_infer_body(_rows(1))),
        client.get("/v2/models/weather-late/versions/99999999999999999999999"),
        client.post("/v2/models/weather-late/infer", content=b"{" + b" " * 70_000 + b"}"),
        client.get("/v2/nowhere"),
        client.delete("/v2/models/weather-late"),
        client.post(
            "/v2/models/weather-late/infer",
            content=orjson.dumps(_infer_body(_rows(1))),
            headers={"Inference-Header-Content-Length": "abc"},
        ),
    ]
    assert [c.status_code for c in cases] == [400, 400, 404, 404, 404, 404, 413, 404, 405, 400]
    assert all(set(c.json()) == {"error"} for c in cases)
    assert "serves: weather-late" in cases[2].json()["error"]


def test_infinity_is_refused_and_nan_is_missing(client: TestClient) -> None:
    rows = _rows(2)
    body = _infer_body(rows)
    binary = np.array([np.inf, 1.0]).tobytes()
    header = orjson.dumps(
        {
            "inputs": [
                body["inputs"][0],
                {
                    "name": "temp",
                    "shape": [2],
                    "datatype": "FP64",
                    "parameters": {"binary_data_size": 16},
                },
                body["inputs"][2],
            ]
        }
    )
    reply = client.post(
        "/v2/models/weather-late/infer",
        content=header + binary,
        headers={"Inference-Header-Content-Length": str(len(header))},
    )
    assert reply.status_code == 400
    assert "infinity" in reply.json()["error"]

    nan = header.replace(b'"temp"', b'"temp"')
    reply = client.post(
        "/v2/models/weather-late/infer",
        content=nan + np.array([np.nan, 1.0]).tobytes(),
        headers={"Inference-Header-Content-Length": str(len(nan))},
    )
    assert reply.status_code == 200, reply.text


def test_the_real_tritonclient_encoding_round_trips(client: TestClient, registry: Registry) -> None:
    http = pytest.importorskip("tritonclient.http")
    rows = _rows(5, seed=4)
    inputs = []
    for name, datatype, values in (
        ("city", "BYTES", np.array(rows["city"].to_list(), dtype=np.object_)),
        ("temp", "FP64", rows["temp"].to_numpy()),
        ("hour", "INT64", rows["hour"].to_numpy().astype(np.int64)),
    ):
        tensor = http.InferInput(name, list(values.shape), datatype)
        tensor.set_data_from_numpy(values, binary_data=True)
        inputs.append(tensor)
    outputs = [http.InferRequestedOutput("probability", binary_data=True)]
    body, json_size = http.InferenceServerClient.generate_request_body(
        inputs, outputs=outputs, request_id="t-1"
    )
    headers = {} if json_size is None else {"Inference-Header-Content-Length": str(json_size)}
    reply = client.post("/v2/models/weather-late/infer", content=body, headers=headers)

    assert reply.status_code == 200, reply.text
    length = reply.headers.get("inference-header-content-length")
    result = http.InferResult.from_response_body(
        reply.content, header_length=None if length is None else int(length)
    )
    expected = registry.load_bundle("weather-late", 1).predict(rows)
    np.testing.assert_array_equal(result.as_numpy("probability"), expected)
    assert result.get_response()["id"] == "t-1"


# -- /predict ---------------------------------------------------------------------------------


def test_predict_takes_the_features_from_the_request(
    client: TestClient, registry: Registry
) -> None:
    rows = _rows(3, seed=5)
    reply = client.post("/predict", json=rows.drop("late").to_dicts())

    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert (body["model"], body["version"]) == ("weather-late", 1)
    assert len(body["request_id"]) == 32
    expected = registry.load_bundle("weather-late", 1).predict(rows)
    assert body["predictions"] == expected.tolist()
    one = client.post("/predict", json=rows.drop("late").to_dicts()[0]).json()
    assert one["predictions"] == expected[:1].tolist()


@pytest.mark.parametrize(
    ("body", "words"),
    [
        (b"{bad", "not valid JSON"),
        (b"[]", "non-empty list"),
        (b"3", "JSON object"),
        (b'[{"city": "Oslo"}, 4]', "JSON object"),
        (b'{"city": ["Oslo"], "temp": 1, "hour": 2}', "one value"),
        (b'{"city": "Oslo", "temp": 1}', "'hour'"),
        (b'{"city": "Oslo", "temp": "warm", "hour": 2}', "'temp'"),
        (b'{"city": "Oslo", "temp": NaN, "hour": 2}', "not valid JSON"),
        (b'{"city": "Oslo", "temp": Infinity, "hour": 2}', "not valid JSON"),
    ],
)
def test_bad_predict_requests_get_a_4xx_json_error(
    client: TestClient, body: bytes, words: str
) -> None:
    reply = client.post("/predict", content=body)

    assert reply.status_code == 400, reply.text
    assert words in reply.json()["error"]


def test_predict_parameters_are_checked(client: TestClient) -> None:
    row = _rows(1).drop("late").to_dicts()[0]
    assert client.post("/predict?model=nope", json=row).status_code == 404
    assert client.post("/predict?at=yesterday", json=row).status_code == 400


def test_served_features_are_the_training_features(tmp_path: Path, registry: Registry) -> None:
    """/predict with entity keys only: the online store gives what a training set gives."""
    weather, clock, store = city_weather(tmp_path)
    t0 = T0
    model = registry.load_bundle("weather-late", 1)
    repository = ModelRepository(registry, [ModelSpec("weather-late")])
    app = create_app(
        repository,
        views=[weather, clock],
        online_store=store,
        refresh_seconds=None,
        allow_unknown={"city"},
    )
    requests = [
        {"city": "Oslo", "hour_of_request": 7},
        {"city": "Paris", "hour_of_request": 8},
        {"city": "Lima", "hour_of_request": 9},  # never materialized: allowed, missing
    ]
    with TestClient(app) as client:
        _wait_ready(client)
        reply = client.post("/predict?at=2026-01-01T06:30:00Z", json=requests)
        missing_key = client.post("/predict", json={"hour_of_request": 7})

    assert reply.status_code == 200, reply.text
    served = online_features(
        [weather, clock], requests, at=t0.replace(hour=6, minute=30), store=store
    )
    assert served["temp"].to_list() == [-1.0, 12.0, None]
    assert reply.json()["predictions"] == model.predict(served).tolist()
    assert missing_key.status_code == 400
    assert "city" in missing_key.json()["error"]


def test_serving_refuses_other_feature_definitions(registry: Registry) -> None:
    served = ModelRepository(registry, ["weather-late"])
    served.load()
    [model] = served.loaded()
    view = FeatureView(
        "weather",
        entity=Entity("city", keys=["city"]),
        source=pl.DataFrame({"city": ["Oslo"], "at": [0], "temp": [1.0]}),
        timestamp="at",
        features=["temp"],
    )
    trained = type(model)(model.name, model.version, model.bundle, ("weather@" + "0" * 64,))
    with pytest.raises(ServingError, match="trained on feature view 'weather'"):
        check_feature_versions(trained, [view])
    check_feature_versions(model, [view])  # a model that names no version of it


# -- rollouts ---------------------------------------------------------------------------------


def test_following_the_champion_switches_without_failing_a_request(registry: Registry) -> None:
    registry.promote("weather-late", 1, why="start")
    repository = ModelRepository(registry, ["weather-late@champion"])
    app = create_app(repository, refresh_seconds=0.05)
    seen: list[tuple[int, str | None]] = []
    stop = threading.Event()
    body = _infer_body(_rows(1))
    with TestClient(app) as client:
        _wait_ready(client)

        def hammer() -> None:
            while not stop.is_set():
                reply = client.post("/v2/models/weather-late/infer", json=body)
                version = reply.json().get("model_version") if reply.status_code == 200 else None
                seen.append((reply.status_code, version))

        worker = threading.Thread(target=hammer)
        worker.start()
        time.sleep(0.3)
        registry.promote("weather-late", 2, why="the better one")
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and (not seen or seen[-1][1] != "2"):
            time.sleep(0.05)
        time.sleep(0.2)
        stop.set()
        worker.join()
        metrics = client.get("/metrics").text

    assert {status for status, _ in seen} == {200}
    versions = [v for _, v in seen]
    assert versions[0] == "1"
    assert versions[-1] == "2"
    switch = versions.index("2")
    assert set(versions[switch:]) == {"2"}  # once switched, never back
    assert 'loopline_model_switches_total{model="weather-late"} 1.0' in metrics
    assert 'loopline_model_loaded{current="true",model="weather-late",version="2"} 1.0' in metrics
    assert 'loopline_model_loaded{current="false",model="weather-late",version="1"} 1.0' in metrics


# -- metrics and the API description ----------------------------------------------------------


def test_metrics_count_predictions_errors_and_latency(client: TestClient) -> None:
    client.post("/v2/models/weather-late/infer", json=_infer_body(_rows(3)))
    client.post("/predict", content=b"{bad")
    text = client.get("/metrics").text

    assert 'loopline_predictions_total{model="weather-late",version="1"} 3.0' in text
    assert (
        'loopline_request_errors_total{kind="ProtocolError",route="predict",status="400"} 1.0'
        in text
    )
    assert (
        'loopline_request_seconds_count{model="weather-late",route="infer",version="1"} 1.0' in text
    )
    assert 'loopline_batch_rows_bucket{le="4.0",model="weather-late"} 1.0' in text


def test_openapi_describes_every_route(client: TestClient) -> None:
    document = client.get("/openapi.json").json()
    assert document["openapi"].startswith("3.")
    for path in (
        "/v2/health/live",
        "/v2/health/ready",
        "/v2",
        "/v2/models/{name}",
        "/v2/models/{name}/versions/{version}/infer",
        "/predict",
        "/metrics",
    ):
        assert path in document["paths"]


def test_model_specs_are_parsed_and_checked() -> None:
    assert ModelSpec.parse("m@challenger") == ModelSpec("m", alias="challenger")
    assert str(ModelSpec.parse("m@4")) == "m@4"
    with pytest.raises(ServingError, match="NAME, NAME@ALIAS or NAME@VERSION"):
        ModelSpec.parse("m@@x")


def test_an_unknown_entity_gets_404_unless_allowed(tmp_path: Path, registry: Registry) -> None:
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    weather = FeatureView(
        "weather",
        entity=Entity("city", keys=["city"]),
        source=pl.DataFrame({"city": ["Oslo"], "at": [t0], "temp": [-3.0]}),
        timestamp="at",
        features=["temp"],
        ttl="1h",
    )
    store = open_online_store(f"sqlite:///{tmp_path}/online.db")
    materialize([weather], end=t0, store=store)
    app = create_app(
        ModelRepository(registry, ["weather-late"]),
        views=[weather],
        online_store=store,
        refresh_seconds=None,
    )
    row = {"hour": 3}
    with TestClient(app) as client:
        _wait_ready(client)
        unknown = client.post("/predict?at=2026-01-01T00:30:00Z", json={**row, "city": "Lima"})
        expired = client.post("/predict?at=2026-01-01T05:00:00Z", json={**row, "city": "Oslo"})
        fresh = client.post("/predict?at=2026-01-01T00:30:00Z", json={**row, "city": "Oslo"})

    assert unknown.status_code == 404
    assert "Unknown city: city='Lima'" in unknown.json()["error"]
    assert "--allow-unknown city" in unknown.json()["error"]
    assert expired.status_code == 200, expired.text  # known, but too old: missing
    assert fresh.status_code == 200, fresh.text
    assert expired.json()["predictions"] != fresh.json()["predictions"]


# -- canary, shadow, fallback, keys, admin ----------------------------------------------------


@pytest.fixture
def rollout_registry(registry: Registry) -> Registry:
    """Version 1 is the champion, version 2 the challenger."""
    registry.promote("weather-late", 1, why="champion")
    registry.promote("weather-late", 2, alias="challenger", why="challenger")
    return registry


def _served(registry: Registry, **rollout: Any) -> Any:
    """An app over loaded models: the main one and the rollout's, if any."""
    repository = ModelRepository(registry, ["weather-late"])
    repository.load()
    rollouts = {}
    if rollout:
        rollouts["weather-late"] = Rollout.from_config(registry, "weather-late", rollout)
        for side in rollouts["weather-late"].repositories():
            side.load()
    return create_app(repository, refresh_seconds=None, load=False, rollouts=rollouts)


def _row(city: str) -> dict[str, Any]:
    return {"city": city, "temp": 3.0, "hour": 7}


def test_a_canary_takes_its_share_and_each_key_stays_on_its_side(
    rollout_registry: Registry,
) -> None:
    keys = [f"city-{i}" for i in range(60)]
    with TestClient(_served(rollout_registry, canary="challenger", percent=50, key="city")) as c:
        first = {k: c.post("/predict", json=_row(k)).json() for k in keys}
        again = {k: c.post("/predict", json=_row(k)).json()["version"] for k in keys}
        metrics = c.get("/metrics").text

    versions = {k: answer["version"] for k, answer in first.items()}
    assert versions == again  # sticky
    assert set(versions.values()) == {1, 2}
    assert all(first[k].get("route") == "canary" for k in keys if versions[k] == 2)
    assert all(bucket(k) < 5000 for k in keys if versions[k] == 2)
    assert (
        'loopline_routed_requests_total{model="weather-late",role="canary",version="2"}' in metrics
    )

    with TestClient(_served(rollout_registry, canary="challenger", percent=0, key="city")) as c:
        assert {c.post("/predict", json=_row(k)).json()["version"] for k in keys[:10]} == {1}
    with TestClient(_served(rollout_registry, canary="challenger", percent=100)) as c:
        body = _infer_body(_rows(2))
        assert c.post("/v2/models/weather-late/infer", json=body).json()["model_version"] == "2"
        # an explicit version is never re-routed
        pinned = c.post("/v2/models/weather-late/versions/1/infer", json=body)
        assert pinned.json()["model_version"] == "1"


def test_a_shadow_scores_a_copy_and_is_never_returned(rollout_registry: Registry) -> None:
    with TestClient(_served(rollout_registry, shadow="challenger")) as client:
        answers = [client.post("/predict", json=[_row("Oslo"), _row("Rome")]) for _ in range(3)]
        metrics = client.get("/metrics").text

    assert {a.json()["version"] for a in answers} == {1}
    assert all("route" not in a.json() for a in answers)
    assert 'loopline_shadow_predictions_total{model="weather-late",version="2"} 6.0' in metrics


def test_a_failing_model_falls_back(
    rollout_registry: Registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(matrix: Any) -> Any:
        raise RuntimeError("the model is broken")

    def slow(matrix: Any) -> Any:
        time.sleep(0.3)
        return np.zeros(len(matrix))

    rollout_registry.promote("weather-late", 2, why="v2 serves, v1 is kept for fallback")
    try:
        repository = ModelRepository(rollout_registry, ["weather-late"])
        repository.load()
        rollout_registry.promote("weather-late", 1, why="back")
        repository.refresh()  # current 1, previous 2
        current = repository.get("weather-late")
        assert repository.previous("weather-late") is not None
        monkeypatch.setattr(current.bundle.model, "predict_encoded", broken)
        monkeypatch.setattr(current.bundle.model, "predict_row", broken)  # one row's call
        outcomes = {}
        for fallback in ("previous", 0.25, None):
            rollouts = {"weather-late": Rollout(fallback=fallback)}
            app = create_app(repository, refresh_seconds=None, load=False, rollouts=rollouts)
            with TestClient(app) as client:
                outcomes[fallback] = client.post("/predict", json=_row("Oslo"))
                metrics = client.get("/metrics").text
        monkeypatch.setattr(current.bundle.model, "predict_encoded", slow)
        rollouts = {"weather-late": Rollout(fallback=0.75, timeout_ms=20)}
        app = create_app(repository, refresh_seconds=None, load=False, rollouts=rollouts)
        with TestClient(app) as client:
            late = client.post("/predict", json=_row("Oslo"))
            late_metrics = client.get("/metrics").text
    finally:
        rollout_registry.promote("weather-late", 1, why="restore")

    previous = outcomes["previous"].json()
    assert (previous["version"], previous["route"]) == (2, "fallback")
    assert outcomes[0.25].json()["predictions"] == [0.25]
    assert outcomes[None].status_code == 503
    assert "no fallback" in outcomes[None].json()["error"]
    assert 'loopline_fallbacks_total{model="weather-late",reason="error"} 1.0' in metrics
    assert late.json()["predictions"] == [0.75]
    assert 'loopline_fallbacks_total{model="weather-late",reason="timeout"} 1.0' in late_metrics


def test_api_keys_guard_prediction_and_admin_routes(registry: Registry) -> None:
    repository = ModelRepository(registry, ["weather-late"])
    repository.load()
    app = create_app(repository, refresh_seconds=None, load=False, api_keys=["s3cret", "other"])
    row = _row("Oslo")
    with TestClient(app) as client:
        none = client.post("/predict", json=row)
        wrong = client.post("/predict", json=row, headers={"Authorization": "Bearer nope"})
        bearer = client.post("/predict", json=row, headers={"Authorization": "Bearer s3cret"})
        header = client.post("/predict", json=row, headers={"X-API-Key": "other"})
        infer = client.post("/v2/models/weather-late/infer", json=_infer_body(_rows(1)))
        admin = client.post("/admin/reload")
        open_routes = [
            client.get(p).status_code
            for p in ("/v2/health/ready", "/v2/models/weather-late", "/metrics")
        ]

    assert (none.status_code, wrong.status_code, infer.status_code, admin.status_code) == (401,) * 4
    assert none.headers["www-authenticate"] == "Bearer"
    assert "requires an API key" in none.json()["error"]
    assert (bearer.status_code, header.status_code) == (200, 200)
    assert open_routes == [200, 200, 200]


def test_admin_routes_set_and_clear_a_rollout(rollout_registry: Registry) -> None:
    with TestClient(_served(rollout_registry)) as client:
        before = client.post("/predict", json=_row("Oslo")).json()["version"]
        put = client.put(
            "/admin/models/weather-late/rollout", json={"canary": "challenger", "percent": 100}
        )
        during = client.post("/predict", json=_row("Oslo")).json()
        listed = client.get("/admin/rollouts").json()
        cleared = client.delete("/admin/models/weather-late/rollout")
        after = client.post("/predict", json=_row("Oslo")).json()["version"]
        bad_key = client.put(
            "/admin/models/weather-late/rollout", json={"canary": "challenger", "share": 5}
        )
        bad_alias = client.put("/admin/models/weather-late/rollout", json={"canary": "nope"})
        bad_model = client.put("/admin/models/nope/rollout", json={"canary": "challenger"})
        not_json = client.put("/admin/models/weather-late/rollout", content=b"[1")
        rollout_registry.promote("weather-late", 2, why="reload test")
        reloaded = client.post("/admin/reload").json()
    rollout_registry.promote("weather-late", 1, why="restore")

    assert (before, during["version"], during["route"], after) == (1, 2, "canary", 1)
    assert put.json()["canary"] == {"spec": "weather-late@challenger", "version": 2}
    assert listed["weather-late"]["percent"] == 100
    assert cleared.json() == {"model": "weather-late", "rollout": None}
    assert bad_key.status_code == 400
    assert "no setting 'share'" in bad_key.json()["error"]
    assert bad_alias.status_code == 404
    assert bad_model.status_code == 404
    assert not_json.status_code == 400
    assert reloaded == {"switched": [{"model": "weather-late", "from": 1, "to": 2}]}


def test_rollout_settings_are_checked() -> None:
    with pytest.raises(ServingError, match="percentage from 0 to 100"):
        Rollout(percent=120)
    with pytest.raises(ServingError, match="'previous'"):
        Rollout(fallback="yesterday")
    with pytest.raises(ServingError, match="positive number of milliseconds"):
        Rollout(timeout_ms=0)


def test_every_prediction_is_logged_off_the_request_path(
    tmp_path: Path, registry: Registry
) -> None:
    repository = ModelRepository(registry, ["weather-late"])
    repository.load()
    log = PredictionLog(tmp_path / "predictions", flush_seconds=0.05)
    app = create_app(repository, refresh_seconds=None, load=False, prediction_log=log)
    with TestClient(app) as client:
        one = client.post("/predict", json=_row("Oslo"), headers={"X-Request-ID": "req-1"})
        two = client.post("/predict", json=[_row("Rome"), _row("Paris")])
        infer = client.post("/v2/models/weather-late/infer", json=_infer_body(_rows(3)))
        metrics = client.get("/metrics").text
    # Leaving the app closed the log after a last flush.
    logged = read_predictions(tmp_path / "predictions")

    assert logged.height == 6
    assert set(logged["request_id"]) == {"req-1", two.json()["request_id"], "r-1"}
    oslo = logged.filter(pl.col("request_id") == "req-1")
    assert oslo["output"].to_list() == one.json()["predictions"]
    assert (oslo["city"].to_list(), oslo["version"].to_list()) == (["Oslo"], [1])
    assert (
        logged.filter(pl.col("request_id") == "r-1")["output"].to_list()
        == (infer.json()["outputs"][0]["data"])
    )
    assert "loopline_prediction_log_rows_total" in metrics
