"""Model adapters: one suite over every implementation (LightGBM, XGBoost, scikit-learn).

What every adapter must do, for both objectives:

- keep the estimator contract: a constructor that only stores its parameters (checked at
  ``fit``), learned state in attributes that end with ``_``, ``clone`` unfitted;
- predict float64 probabilities in [0, 1] (binary) or values (regression);
- write the same bytes for the same data, parameters and seed, and read them back into a
  model that predicts exactly the same numbers and writes the same bytes again;
- refuse bad parameters, bad targets, bad inputs and damaged files with loopline errors.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from loopline.errors import ArtifactCorruptedError, TrainingError
from loopline.train import (
    ADAPTERS,
    LightGBMModel,
    ModelAdapter,
    SklearnModel,
    XGBoostModel,
    check_target,
)

Factory = Callable[[str], ModelAdapter]


def _lightgbm(objective: str) -> ModelAdapter:
    return LightGBMModel(objective=objective, num_rounds=15, min_data_in_leaf=5, num_threads=1)  # type: ignore[arg-type]


def _xgboost(objective: str) -> ModelAdapter:
    return XGBoostModel(objective=objective, num_rounds=15, max_depth=4, num_threads=1)  # type: ignore[arg-type]


def _sklearn(objective: str) -> ModelAdapter:
    estimator = (
        make_pipeline(StandardScaler(), LogisticRegression())
        if objective == "binary"
        else make_pipeline(StandardScaler(), Ridge(alpha=0.5))
    )
    return SklearnModel(estimator=estimator, objective=objective)  # type: ignore[arg-type]


def _forest(objective: str) -> ModelAdapter:
    # random_state left at None: the adapter's seed must make it deterministic.
    return SklearnModel(
        estimator=RandomForestClassifier(n_estimators=5, max_depth=4),
        objective="binary",
        trusted=["sklearn.tree._tree.Tree"],
    )


IMPLEMENTATIONS = [
    pytest.param(_lightgbm, id="lightgbm"),
    pytest.param(_xgboost, id="xgboost"),
    pytest.param(_sklearn, id="sklearn"),
]
OBJECTIVES = ["binary", "regression"]


def _data(objective: str, rows: int = 600, seed: int = 7) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(rows, 4))
    x[:, 3] = rng.integers(0, 4, rows)  # a category code
    signal = x[:, 0] - 0.5 * x[:, 1] + (x[:, 3] == 2) + rng.normal(scale=0.5, size=rows)
    return x, (signal > 0).astype(np.float64) if objective == "binary" else signal


@pytest.fixture(params=IMPLEMENTATIONS)
def factory(request: pytest.FixtureRequest) -> Factory:
    return request.param  # type: ignore[no-any-return]


@pytest.fixture(params=OBJECTIVES)
def objective(request: pytest.FixtureRequest) -> str:
    return request.param  # type: ignore[no-any-return]


def _fit(factory: Factory, objective: str) -> tuple[ModelAdapter, np.ndarray]:
    x, y = _data(objective)
    names = ("a", "b", "c", "code")
    model = factory(objective).fit(x, y, feature_names=names, categorical=["code"])
    return model, x


# -- the shared suite ---------------------------------------------------------------------


def test_predictions_are_float64_probabilities_or_values(factory: Factory, objective: str) -> None:
    model, x = _fit(factory, objective)
    predicted = model.predict(x)
    assert predicted.dtype == np.float64
    assert predicted.shape == (x.shape[0],)
    assert np.isfinite(predicted).all()
    if objective == "binary":
        assert ((predicted >= 0) & (predicted <= 1)).all()
        # Learned something: the positive rows score higher on average.
        y = _data(objective)[1]
        assert predicted[y == 1].mean() > predicted[y == 0].mean() + 0.2
    else:
        assert np.corrcoef(predicted, _data(objective)[1])[0, 1] > 0.5


def test_read_back_model_predicts_exactly_the_same(factory: Factory, objective: str) -> None:
    model, x = _fit(factory, objective)
    data = model.to_bytes()
    again = type(model).from_bytes(data, **model.to_params())
    assert np.array_equal(again.predict(x), model.predict(x))
    assert again.objective == objective
    assert again.n_features_in_ == 4
    assert again.to_bytes() == data
    # Without parameters the objective is read from the file.
    assert type(model).from_bytes(data).objective == objective


def test_same_data_parameters_and_seed_give_the_same_bytes(
    factory: Factory, objective: str
) -> None:
    first, _ = _fit(factory, objective)
    second, _ = _fit(factory, objective)
    assert first.to_bytes() == second.to_bytes()


def test_another_seed_or_other_data_give_other_bytes(factory: Factory) -> None:
    x, y = _data("binary")
    model = factory("binary").fit(x, y)
    other = factory("binary").fit(*_data("binary", seed=8))
    assert other.to_bytes() != model.to_bytes()


def test_estimator_contract(factory: Factory, objective: str) -> None:
    template = factory(objective)
    params = template.get_params()
    assert not [name for name in vars(template) if name.endswith("_")]  # nothing learned yet
    with pytest.raises(TrainingError, match="not fitted yet"):
        template.predict(np.zeros((1, 4)))
    fitted, _ = _fit(factory, objective)
    learned = {name for name in vars(fitted) if name.endswith("_")}
    assert {"n_features_in_", "feature_names_in_"} <= learned
    assert fitted.feature_names_in_ == ("a", "b", "c", "code")
    clone = fitted.clone()
    assert not hasattr(clone, "n_features_in_")
    assert set(clone.get_params()) == set(params)
    assert clone.set_params(objective=objective) is clone


def test_wrong_number_of_columns_is_refused(factory: Factory) -> None:
    model, x = _fit(factory, "binary")
    with pytest.raises(TrainingError, match=r"fitted on 4 features but x has 3 columns"):
        model.predict(x[:, :3])


def test_target_with_one_class_is_refused(factory: Factory) -> None:
    x, _ = _data("binary")
    with pytest.raises(TrainingError, match=r"has one class \(all 1\).*needs rows of both 0 and 1"):
        factory("binary").fit(x, np.ones(len(x)))


def test_target_that_is_not_binary_is_refused(factory: Factory) -> None:
    x, _ = _data("binary")
    with pytest.raises(TrainingError, match=r"must hold 0 and 1.*also holds 2"):
        factory("binary").fit(x, np.arange(len(x)) % 3)


def test_missing_target_values_are_refused(factory: Factory, objective: str) -> None:
    x, y = _data(objective)
    y[5] = np.nan
    with pytest.raises(TrainingError, match=r"1 missing or infinite value"):
        factory(objective).fit(x, y)


def test_damaged_model_bytes_are_reported_as_corrupted(factory: Factory) -> None:
    model, _ = _fit(factory, "binary")
    data = bytearray(model.to_bytes())
    with pytest.raises(ArtifactCorruptedError):
        type(model).from_bytes(bytes(data[: len(data) // 2]), objective="binary")
    with pytest.raises(ArtifactCorruptedError):
        type(model).from_bytes(b"not a model", objective="binary")


def test_objective_that_contradicts_the_file_is_refused(factory: Factory) -> None:
    model, _ = _fit(factory, "binary")
    with pytest.raises(ArtifactCorruptedError, match=r"holds a binary model.*'regression'"):
        type(model).from_bytes(model.to_bytes(), objective="regression")


def test_unknown_parameter_when_reading_is_refused(factory: Factory) -> None:
    model, _ = _fit(factory, "binary")
    with pytest.raises(TrainingError, match=r"has no parameter\(s\) 'colour': the model was saved"):
        type(model).from_bytes(model.to_bytes(), colour="red")


def test_unknown_parameter_in_set_params_is_refused(factory: Factory) -> None:
    with pytest.raises(TrainingError, match=r"has no parameter 'colour'\. Its parameters are"):
        factory("binary").set_params(colour="red")


def test_registry_knows_every_kind() -> None:
    assert {"lightgbm": LightGBMModel, "xgboost": XGBoostModel, "sklearn": SklearnModel} == ADAPTERS


# -- parameters ---------------------------------------------------------------------------

SHAPE = re.compile(r"^The '(\w+)' parameter of (\w+) must be .+\. Got .+\.$", re.DOTALL)

BAD_PARAMETERS = [
    (LightGBMModel, "num_leaves", 1),
    (LightGBMModel, "num_rounds", 0),
    (LightGBMModel, "learning_rate", 0.0),
    (LightGBMModel, "learning_rate", 1.5),
    (LightGBMModel, "feature_fraction", 0),
    (LightGBMModel, "lambda_l2", -1.0),
    (LightGBMModel, "seed", -1),
    (LightGBMModel, "num_threads", 0),
    (LightGBMModel, "num_rounds", True),
    (LightGBMModel, "objective", "multiclass"),
    (XGBoostModel, "max_depth", 0),
    (XGBoostModel, "subsample", 2.0),
    (XGBoostModel, "learning_rate", "fast"),
    (XGBoostModel, "objective", "rank"),
]


@pytest.mark.parametrize(("cls", "name", "value"), BAD_PARAMETERS)
def test_bad_parameter_is_refused_with_the_house_message(
    cls: type[ModelAdapter], name: str, value: Any
) -> None:
    model = cls(**{name: value})  # the constructor only stores
    assert getattr(model, name) == value
    x, y = _data("binary", rows=50)
    with pytest.raises(TrainingError) as caught:
        model.fit(x, y)
    match = SHAPE.match(str(caught.value))
    assert match, str(caught.value)
    assert match.groups() == (name, cls.__name__)
    assert f"Got {value!r}." in str(caught.value)
    assert caught.value.parameter == name  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("model", "key"),
    [
        (LightGBMModel(params={"seed": 3}), "seed"),
        (LightGBMModel(params={"n_estimators": 3}), "n_estimators"),
        (LightGBMModel(params={"deterministic": False}), "deterministic"),
        (XGBoostModel(params={"nthread": 8}), "nthread"),
    ],
)
def test_native_params_cannot_override_dedicated_or_determinism_ones(
    model: ModelAdapter, key: str
) -> None:
    with pytest.raises(TrainingError, match=rf"must not set '{key}'"):
        model.check_params()


def test_native_params_reach_the_library() -> None:
    x, y = _data("binary")
    coarse = LightGBMModel(num_rounds=5, params={"max_bin": 3}).fit(x, y)
    fine = LightGBMModel(num_rounds=5).fit(x, y)
    assert "[max_bin: 3]" in coarse.to_bytes().decode()
    assert not np.array_equal(coarse.predict(x), fine.predict(x))


def test_library_errors_become_training_errors() -> None:
    x, y = _data("binary")
    with pytest.raises(TrainingError, match=r"LightGBMModel could not fit: .*Check its parameters"):
        LightGBMModel(params={"max_bin": -5}).fit(x, y)
    bad = SklearnModel(estimator=LogisticRegression(C=-1.0))
    with pytest.raises(TrainingError, match=r"SklearnModel could not fit: .*'C' parameter"):
        bad.fit(x, y)


def test_sklearn_estimator_must_suit_the_objective() -> None:
    x, y = _data("binary")
    with pytest.raises(
        TrainingError, match=r"'estimator' parameter of SklearnModel.*predict_proba"
    ):
        SklearnModel(estimator=Ridge()).fit(x, y)
    with pytest.raises(TrainingError, match=r"a regressor for objective='regression'"):
        SklearnModel(estimator=LogisticRegression(), objective="regression").fit(x, y)
    with pytest.raises(TrainingError, match=r"a scikit-learn estimator or Pipeline"):
        SklearnModel(estimator="LogisticRegression").fit(x, y)


# -- scikit-learn: skops and trusted types ------------------------------------------------


def test_untrusted_types_are_refused_when_saving_and_loading() -> None:
    x, y = _data("binary")
    untrusted = SklearnModel(estimator=RandomForestClassifier(n_estimators=3)).fit(x, y)
    with pytest.raises(
        TrainingError, match=r"does not trust: sklearn\.tree\._tree\.Tree.*trusted="
    ):
        untrusted.to_bytes()
    trusted = _forest("binary").fit(x, y)
    data = trusted.to_bytes()
    with pytest.raises(TrainingError, match=r"skops does not trust") as caught:
        SklearnModel.from_bytes(data)  # the reader did not say it trusts the type
    assert caught.value.untrusted == ["sklearn.tree._tree.Tree"]  # type: ignore[attr-defined]
    again = SklearnModel.from_bytes(data, trusted=["sklearn.tree._tree.Tree"])
    assert np.array_equal(again.predict(x), trusted.predict(x))


def test_sklearn_seed_fills_unset_random_states() -> None:
    x, y = _data("binary")
    first, second = _forest("binary").fit(x, y), _forest("binary").fit(x, y)
    assert first.to_bytes() == second.to_bytes()
    assert first.estimator_.random_state == 0
    reseeded = _forest("binary").set_params(seed=1).fit(x, y)
    assert reseeded.to_bytes() != first.to_bytes()
    assert first.estimator.random_state is None  # the template is left alone


def test_skops_file_holds_no_pickle() -> None:
    x, y = _data("binary")
    data = _sklearn("binary").fit(x, y).to_bytes()
    assert b"pickle" not in data.lower()
    assert data[:2] == b"PK"  # a skops zip archive


# -- XGBoost extra ------------------------------------------------------------------------


def test_missing_xgboost_says_which_extra_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "xgboost", None)  # makes `import xgboost` fail
    x, y = _data("binary", rows=50)
    with pytest.raises(TrainingError, match=re.escape("pip install 'loopline[xgboost]'")):
        XGBoostModel().fit(x, y)


# -- targets ------------------------------------------------------------------------------


@settings(max_examples=50, deadline=None)
@given(st.lists(st.booleans(), min_size=1, max_size=50))
def test_check_target_takes_both_classes_and_refuses_one(values: list[bool]) -> None:
    if len(set(values)) == 2:
        assert check_target(values, objective="binary").tolist() == [float(v) for v in values]
    else:
        with pytest.raises(TrainingError, match="one class"):
            check_target(values, objective="binary")
    assert check_target(values, objective="regression").tolist() == [float(v) for v in values]


def test_check_target_refuses_empty_and_text() -> None:
    with pytest.raises(TrainingError, match="non-empty"):
        check_target([], objective="regression")
    with pytest.raises(TrainingError, match="must hold numbers"):
        check_target(["yes", "no"], objective="binary")
