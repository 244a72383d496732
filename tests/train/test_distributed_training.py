"""Data-parallel training on Ray workers: the same bundle, metrics close to one node's.

Each library is trained distributed once (a module fixture: the first fit starts the
workers' processes, seconds on a busy two-core machine) on the session's local Ray
cluster (``ray_cluster``, two CPUs), with two workers of one CPU each.
"""

from __future__ import annotations

import sys

import numpy as np
import polars as pl
import pytest
from sklearn.metrics import roc_auc_score

from loopline.errors import ConfigError, TrainingError
from loopline.train.adapters import LightGBMModel, ModelAdapter, SklearnModel, XGBoostModel
from loopline.train.bundle import ModelBundle, train_bundle
from loopline.train.distributed import Distributed, fit_distributed

AUC_TOLERANCE = 0.01
"""How far a distributed model's test ROC AUC may be from the single-node model's
(docs/training.md, "Distributed training")."""

FEATURES = ["a", "b", "c", "d", "carrier"]
LABEL = "late"
TWO_WORKERS = Distributed(workers=2, cpus_per_worker=1)


def _rows(n: int, seed: int) -> pl.DataFrame:
    rng = np.random.default_rng(seed)
    a, b, c, d = rng.normal(size=(4, n))
    carriers = np.array(["AA", "DL", "UA", "WN", "B6"])
    carrier = rng.integers(0, len(carriers), size=n)
    effect = np.array([-0.8, 0.0, 0.4, 0.9, -0.3])[carrier]
    logit = 1.2 * a - 0.7 * b + 0.5 * c * d + effect + 0.3 * np.sin(3 * d)
    late = rng.random(n) < 1 / (1 + np.exp(-logit))
    return pl.DataFrame({"a": a, "b": b, "c": c, "d": d, "carrier": carriers[carrier], LABEL: late})


@pytest.fixture(scope="module")
def train_rows() -> pl.DataFrame:
    return _rows(16_000, seed=1)


@pytest.fixture(scope="module")
def test_rows() -> pl.DataFrame:
    return _rows(4_000, seed=2)


def _auc(bundle: ModelBundle, rows: pl.DataFrame) -> float:
    return float(roc_auc_score(rows.get_column(LABEL).to_numpy(), bundle.predict(rows)))


def _train(rows: pl.DataFrame, model: ModelAdapter, distributed: Distributed | None) -> ModelBundle:
    return train_bundle(
        rows, features=FEATURES, label=LABEL, model=model, distributed=distributed, profile=False
    )


LIGHTGBM = LightGBMModel(num_rounds=60, num_threads=1)
XGBOOST = XGBoostModel(num_rounds=60, max_depth=5, learning_rate=0.2, num_threads=1)


@pytest.fixture(scope="module")
def lightgbm_distributed(ray_cluster: None, train_rows: pl.DataFrame) -> ModelBundle:
    return _train(train_rows, LIGHTGBM, TWO_WORKERS)


@pytest.fixture(scope="module")
def xgboost_distributed(ray_cluster: None, train_rows: pl.DataFrame) -> ModelBundle:
    pytest.importorskip("xgboost")
    return _train(train_rows, XGBOOST, TWO_WORKERS)


@pytest.mark.parametrize(
    ("fixture", "model"),
    [("lightgbm_distributed", LIGHTGBM), ("xgboost_distributed", XGBOOST)],
    ids=["lightgbm", "xgboost"],
)
def test_distributed_bundle_round_trips_and_scores_like_one_node(
    request: pytest.FixtureRequest,
    fixture: str,
    model: ModelAdapter,
    train_rows: pl.DataFrame,
    test_rows: pl.DataFrame,
) -> None:
    bundle: ModelBundle = request.getfixturevalue(fixture)
    again = ModelBundle.from_bytes(bundle.to_bytes(), expected_hash=bundle.content_hash)
    assert type(again.model) is type(model)
    assert again.model.to_params() == model.to_params()
    assert again.features == tuple(FEATURES)
    assert again.preprocessor.vocabulary_["carrier"] == ("AA", "B6", "DL", "UA", "WN")
    predicted = again.predict(test_rows)
    assert predicted.shape == (test_rows.height,)
    assert np.array_equal(predicted, bundle.predict(test_rows))
    assert ((predicted > 0) & (predicted < 1)).all()

    single = _auc(_train(train_rows, model, None), test_rows)
    distributed = _auc(bundle, test_rows)
    assert distributed > 0.7  # it learned something
    assert abs(distributed - single) <= AUC_TOLERANCE, (distributed, single)


def test_distributed_lightgbm_file_names_no_hosts(lightgbm_distributed: ModelBundle) -> None:
    text = lightgbm_distributed.model.to_bytes().decode()
    assert "[tree_learner: data]" in text
    assert "[machines: " not in text
    assert "[local_listen_port: " not in text


def test_below_min_rows_trains_on_one_node(train_rows: pl.DataFrame) -> None:
    # No Ray at all: the same bytes as training without `distributed`.
    small = train_rows.head(500)
    model = LightGBMModel(num_rounds=5)
    local = _train(small, model, Distributed(workers=2, min_rows=501))
    assert local.to_bytes() == _train(small, model, None).to_bytes()


def test_scikit_learn_models_are_refused(train_rows: pl.DataFrame) -> None:
    from sklearn.linear_model import LogisticRegression

    model = SklearnModel(estimator=LogisticRegression())
    with pytest.raises(TrainingError, match="SklearnModel cannot train distributed"):
        _train(train_rows.head(100), model, TWO_WORKERS)
    # Refused whatever the size of the rows, not only once they reach min_rows.
    with pytest.raises(TrainingError, match="SklearnModel cannot train distributed"):
        _train(train_rows.head(100), model, Distributed(min_rows=10**9))


@pytest.mark.parametrize(
    ("params", "match"),
    [
        ({"workers": 0}, "'workers' parameter of Distributed must be an integer of at least 1"),
        ({"workers": 1.5}, "'workers' parameter"),
        ({"cpus_per_worker": 0}, "'cpus_per_worker' parameter"),
        ({"min_rows": -1}, "'min_rows' parameter"),
        ({"address": ""}, "'address' parameter"),
    ],
)
def test_bad_settings_are_refused(params: dict[str, object], match: str) -> None:
    with pytest.raises(TrainingError, match=match):
        Distributed(**params)  # type: ignore[arg-type]


def test_a_non_data_parallel_learner_is_refused() -> None:
    x = np.arange(20.0).reshape(10, 2)
    model = LightGBMModel(params={"tree_learner": "feature"})
    with pytest.raises(TrainingError, match="cannot train on row shards"):
        fit_distributed(model, x, x[:, 0] > 4, distributed=TWO_WORKERS)


def test_fewer_rows_than_workers_are_refused() -> None:
    x = np.array([[0.0], [1.0]])
    with pytest.raises(TrainingError, match="2 training rows cannot be split over 3 workers"):
        fit_distributed(LightGBMModel(), x, [0, 1], distributed=Distributed(workers=3))


def test_missing_ray_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now fails
    x = np.arange(20.0).reshape(10, 2)
    with pytest.raises(ConfigError, match=r"pip install 'loopline\[ray\]'"):
        fit_distributed(LightGBMModel(), x, x[:, 0] > 4, distributed=TWO_WORKERS)


@pytest.mark.usefixtures("ray_cluster")
def test_more_cpus_than_the_cluster_has_are_refused() -> None:
    x = np.arange(20.0).reshape(10, 2)
    with pytest.raises(TrainingError, match="needs 3 CPUs, but the Ray cluster has 2"):
        fit_distributed(LightGBMModel(), x, x[:, 0] > 4, distributed=Distributed(workers=3))


@pytest.mark.usefixtures("ray_cluster")
@pytest.mark.parametrize(
    ("model", "says"),
    [
        (LightGBMModel(num_rounds=5, params={"max_bin": 1}), r"max_bin\) > \(1\)"),
        (XGBoostModel(num_rounds=5, params={"max_bin": 1}), "max_bin should be greater"),
    ],
    ids=["lightgbm", "xgboost"],
)
def test_a_worker_failing_mid_fit_fails_the_fit_with_its_error(
    model: ModelAdapter, says: str
) -> None:
    """The workers' own error, not a hang: the other worker waits on the network for the
    failed one, so it is cancelled."""
    if isinstance(model, XGBoostModel):
        pytest.importorskip("xgboost")
    x = np.random.default_rng(0).normal(size=(400, 3))
    with pytest.raises(TrainingError, match=f"training on 2 Ray workers failed.*{says}"):
        fit_distributed(model, x, x[:, 0] > 0, distributed=TWO_WORKERS)
