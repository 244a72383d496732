"""The model bundle: preprocessing fitted on training rows, exact predictions after loading,
deterministic bytes, tamper detection, the artifact codec, and clear errors for bad input.

Every adapter goes through the same bundle suite (``IMPLEMENTATIONS``).
"""

from __future__ import annotations

import hashlib
import io
import json
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.linear_model import LogisticRegression

from loopline.data.profile import NumericProfile, StringProfile
from loopline.errors import ArtifactCorruptedError, TrainingError
from loopline.store.artifacts import ArtifactStore
from loopline.train import (
    LightGBMModel,
    ModelAdapter,
    ModelBundle,
    Preprocessor,
    SklearnModel,
    XGBoostModel,
    train_bundle,
)

FEATURES = ["distance", "wind", "carrier", "origin", "seats", "night"]
LABEL = "delayed"

IMPLEMENTATIONS = [
    pytest.param(
        lambda: LightGBMModel(num_rounds=20, min_data_in_leaf=10, num_threads=1), id="lightgbm"
    ),
    pytest.param(lambda: XGBoostModel(num_rounds=20, max_depth=4, num_threads=1), id="xgboost"),
    pytest.param(
        lambda: SklearnModel(estimator=LogisticRegression(C=0.5, max_iter=500)), id="sklearn"
    ),
]


def flights(
    rows: int = 1500, seed: int = 3, carriers: tuple[str, ...] = ("AA", "DL", "UA")
) -> pl.DataFrame:
    """Raw training-set rows: numbers with nulls and NaN, text with nulls, ints, booleans."""
    rng = np.random.default_rng(seed)
    distance = rng.uniform(100, 2500, rows)
    wind = rng.normal(10, 5, rows)
    wind[rng.random(rows) < 0.05] = np.nan
    carrier = rng.choice(carriers, rows)
    origin = rng.choice(["EWR", "JFK", "LGA"], rows)
    seats = rng.integers(50, 300, rows)
    night = rng.random(rows) < 0.3
    score = (
        (distance > 1200) + 0.08 * np.nan_to_num(wind) + (carrier == carriers[0]) + night
    ) + rng.normal(0, 0.7, rows)
    frame = pl.DataFrame(
        {
            "distance": distance,
            "wind": wind,
            "carrier": carrier,
            "origin": origin,
            "seats": seats,
            "night": night,
            LABEL: score > np.median(score),
            "flight_id": np.arange(rows),  # not a feature: ignored
        }
    )
    return frame.with_columns(
        pl.when(pl.int_range(rows) % 17 == 0)
        .then(None)
        .otherwise(pl.col("distance"))
        .alias("distance"),
        pl.when(pl.int_range(rows) % 23 == 0)
        .then(None)
        .otherwise(pl.col("carrier"))
        .alias("carrier"),
    )


@pytest.fixture(scope="module")
def train_rows() -> pl.DataFrame:
    return flights()


@pytest.fixture(params=IMPLEMENTATIONS)
def make_model(request: pytest.FixtureRequest) -> Callable[[], ModelAdapter]:
    return request.param  # type: ignore[no-any-return]


def _bundle(rows: pl.DataFrame, model: ModelAdapter | None = None, **kwargs: object) -> ModelBundle:
    model = (
        LightGBMModel(num_rounds=10, min_data_in_leaf=10, num_threads=1) if model is None else model
    )
    return train_bundle(rows, features=FEATURES, label=LABEL, model=model, **kwargs)  # type: ignore[arg-type]


# -- the shared suite ---------------------------------------------------------------------


def test_loaded_bundle_predicts_exactly_what_training_saw(
    make_model: Callable[[], ModelAdapter], train_rows: pl.DataFrame
) -> None:
    bundle = _bundle(train_rows, make_model())
    # What the fitted model predicted on its own training matrix, in training.
    seen = bundle.model.predict(bundle.preprocessor.transform(train_rows))
    loaded = ModelBundle.from_bytes(bundle.to_bytes(), expected_hash=bundle.content_hash)
    assert np.array_equal(loaded.predict(train_rows), seen)
    assert np.array_equal(bundle.predict(train_rows), seen)
    assert loaded.features == tuple(FEATURES)
    assert loaded.label == LABEL
    assert loaded.schema == bundle.schema
    assert loaded.to_bytes() == bundle.to_bytes()  # reading and writing again changes nothing


def test_same_inputs_code_and_seed_give_identical_bundle_bytes(
    make_model: Callable[[], ModelAdapter], train_rows: pl.DataFrame
) -> None:
    first = _bundle(train_rows, make_model(), metadata={"seed": 0}).to_bytes()
    second = _bundle(train_rows.clone(), make_model(), metadata={"seed": 0}).to_bytes()
    assert first == second
    other_seed = make_model().set_params(seed=5)
    if not isinstance(other_seed, SklearnModel):  # a logistic regression has no randomness
        assert _bundle(train_rows, other_seed).to_bytes() != first


def test_predictions_do_not_depend_on_column_order_or_extra_columns(
    make_model: Callable[[], ModelAdapter], train_rows: pl.DataFrame
) -> None:
    bundle = _bundle(train_rows, make_model())
    shuffled = train_rows.select(list(reversed(train_rows.columns))).with_columns(
        extra=pl.lit("ignored")
    )
    assert np.array_equal(bundle.predict(shuffled), bundle.predict(train_rows))
    assert np.array_equal(bundle.predict(train_rows.to_arrow()), bundle.predict(train_rows))
    assert np.array_equal(bundle.predict(train_rows.to_pandas()), bundle.predict(train_rows))


def test_unseen_category_is_treated_as_missing(
    make_model: Callable[[], ModelAdapter], train_rows: pl.DataFrame
) -> None:
    bundle = _bundle(train_rows, make_model())
    rows = train_rows.head(50)
    unseen = rows.with_columns(carrier=pl.lit("ZZ"), origin=pl.lit("SFO"))
    nulls = rows.with_columns(carrier=pl.lit(None, pl.String), origin=pl.lit(None, pl.String))
    assert np.array_equal(bundle.predict(unseen), bundle.predict(nulls))


def test_vocabulary_and_fill_values_come_from_the_training_rows_only(
    make_model: Callable[[], ModelAdapter],
) -> None:
    train = flights(carriers=("AA", "DL", "UA"))
    test = flights(seed=4, carriers=("B6", "WN", "AA"))
    bundle = _bundle(train, make_model())
    pre = bundle.preprocessor
    assert pre.vocabulary_ == {"carrier": ("AA", "DL", "UA"), "origin": ("EWR", "JFK", "LGA")}
    if isinstance(bundle.model, SklearnModel):
        assert pre.impute == "median"
        assert pre.fill_values_["wind"] == pytest.approx(
            float(np.nanmedian(train.get_column("wind").to_numpy()))
        )
    else:
        assert pre.impute == "none"
        assert pre.fill_values_ == {}
    # Test rows are encoded by the training vocabulary: B6 and WN are missing.
    matrix = pre.transform(test)
    codes = matrix[:, FEATURES.index("carrier")]
    carrier = test.get_column("carrier").to_numpy()
    missing = pre.missing_codes_["carrier"]
    for value, code in (("AA", 0.0), ("B6", missing), ("WN", missing)):
        chosen = codes[carrier == value]
        assert chosen.size
        assert np.array_equal(chosen, np.full(chosen.shape, code), equal_nan=True)


def test_bundle_keeps_profile_metrics_and_metadata(
    make_model: Callable[[], ModelAdapter], train_rows: pl.DataFrame
) -> None:
    bundle = _bundle(
        train_rows,
        make_model(),
        metrics={"train_rows": train_rows.height},
        metadata={"dataset": {"flights": 3}, "features": "v7", "seed": 0},
    )
    loaded = ModelBundle.from_bytes(bundle.to_bytes())
    assert loaded.profile == bundle.profile
    assert loaded.profile is not None
    assert loaded.profile.rows == train_rows.height
    assert set(loaded.profile.columns) == {*FEATURES, LABEL}
    distance = loaded.profile["distance"]
    assert isinstance(distance, NumericProfile)
    assert distance.nulls == train_rows.get_column("distance").null_count()
    assert isinstance(loaded.profile["carrier"], StringProfile)
    assert loaded.metrics == {"train_rows": float(train_rows.height)}
    assert loaded.metadata == {"dataset": {"flights": 3}, "features": "v7", "seed": 0}
    manifest = loaded.manifest()
    assert manifest["model"]["kind"] == bundle.model.kind
    assert manifest["schema"]["seats"] == "Int64"
    assert manifest["schema"]["night"] == "Boolean"
    assert manifest["categorical"] == ["carrier", "origin"]


# -- preprocessing ------------------------------------------------------------------------


@settings(max_examples=40, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["a", "b", "c", "é", "", None]), st.floats(-1e6, 1e6) | st.none()
        ),
        min_size=1,
        max_size=30,
    ),
    st.randoms(use_true_random=False),
    st.sampled_from(["none", "median", "mean"]),
)
def test_preprocessing_is_independent_of_row_order(
    pairs: list[tuple[str | None, float | None]], rng: object, impute: str
) -> None:
    rows = pl.DataFrame(
        {"cat": [p[0] for p in pairs], "num": [p[1] for p in pairs]},
        schema={"cat": pl.String, "num": pl.Float64},
    )
    order = list(range(len(pairs)))
    rng.shuffle(order)  # type: ignore[attr-defined]
    shuffled = rows[order]
    fitted = Preprocessor(features=["cat", "num"], impute=impute).fit(rows)  # type: ignore[arg-type]
    again = Preprocessor(features=["cat", "num"], impute=impute).fit(shuffled)  # type: ignore[arg-type]
    assert fitted.vocabulary_ == again.vocabulary_
    assert fitted.vocabulary_["cat"] == tuple(sorted({p[0] for p in pairs if p[0] is not None}))
    assert fitted.fill_values_ == pytest.approx(again.fill_values_)
    matrix = fitted.transform(rows)
    assert np.array_equal(fitted.transform(shuffled), matrix[order], equal_nan=True)
    codes = matrix[:, 0]
    known = ~np.isnan(codes)
    assert ((codes[known] >= 0) & (codes[known] <= len(fitted.vocabulary_["cat"]))).all()
    if impute != "none":
        assert not np.isnan(matrix).any()
    # The dict form rebuilds the same preprocessing.
    rebuilt = Preprocessor.from_dict(json.loads(json.dumps(fitted.to_dict())))
    assert np.array_equal(rebuilt.transform(rows), matrix, equal_nan=True)


@settings(max_examples=60, deadline=None)
@given(
    rows=st.lists(
        st.tuples(
            st.one_of(st.none(), st.sampled_from(["AA", "DL", "UA", "ZZ", ""])),
            st.one_of(
                st.none(), st.floats(allow_nan=True, allow_infinity=True), st.integers(-5, 5)
            ),
            st.one_of(st.none(), st.booleans()),
        ),
        min_size=1,
        max_size=8,
    ),
    impute=st.sampled_from(["none", "median", "mean"]),
)
def test_columns_of_a_few_rows_give_the_same_matrix_as_a_frame(
    rows: list[tuple[str | None, float | int | None, bool | None]], impute: str
) -> None:
    train = flights(200)
    fitted = Preprocessor(features=["carrier", "wind", "night"], impute=impute).fit(train)  # type: ignore[arg-type]
    columns = {
        "carrier": [r[0] for r in rows],
        "wind": [None if r[1] is None else float(r[1]) for r in rows],
        "night": [r[2] for r in rows],
    }
    frame = pl.DataFrame(
        columns, schema={"carrier": pl.String, "wind": pl.Float64, "night": pl.Boolean}
    )
    expected = fitted.transform(frame)
    assert np.array_equal(fitted.transform_columns(columns), expected, equal_nan=True)
    # numpy arrays, as a decoded request gives them, are read the same way
    arrays = {
        "carrier": np.array(columns["carrier"], dtype=object),
        "wind": np.array(columns["wind"], dtype=np.float64),
        "night": columns["night"],
    }
    assert np.array_equal(fitted.transform_columns(arrays), expected, equal_nan=True)


def test_columns_that_need_reading_go_the_frame_way(train_rows: pl.DataFrame) -> None:
    bundle = _bundle(train_rows)
    row = train_rows.head(3).to_dict(as_series=False)
    assert np.array_equal(bundle.predict_columns(row), bundle.predict(train_rows.head(3)))
    text = {**row, "distance": ["1200", "850.5", None]}  # numbers as text are read
    assert bundle.predict_columns(text).shape == (3,)
    with pytest.raises(TrainingError, match="'distance'"):
        bundle.predict_columns({**row, "distance": ["far", "near", None]})
    with pytest.raises(TrainingError, match="lack the feature column"):
        bundle.predict_columns({k: v for k, v in row.items() if k != "wind"})
    with pytest.raises(TrainingError, match="different lengths"):
        bundle.predict_columns({**row, "wind": [1.0]})


def test_numbers_given_as_text_are_read_and_bad_text_is_refused(train_rows: pl.DataFrame) -> None:
    bundle = _bundle(train_rows)
    rows = train_rows.head(20)
    as_text = rows.with_columns(pl.col("wind").cast(pl.String), pl.col("seats").cast(pl.String))
    assert np.array_equal(bundle.predict(as_text), bundle.predict(rows))
    broken = as_text.with_columns(
        pl.when(pl.int_range(20) == 3).then(pl.lit("calm")).otherwise("wind").alias("wind")
    )
    with pytest.raises(
        TrainingError, match=r"The column 'wind' \(String\) cannot be read as the model's Float64"
    ) as caught:
        bundle.predict(broken)
    assert caught.value.column == "wind"  # type: ignore[attr-defined]
    dated = rows.with_columns(seats=pl.lit(None, pl.Datetime("us")))
    with pytest.raises(TrainingError, match=r"The column 'seats' is Datetime.*trained on Int64"):
        bundle.predict(dated)


def test_missing_feature_at_prediction_time_is_named(train_rows: pl.DataFrame) -> None:
    bundle = _bundle(train_rows)
    with pytest.raises(
        TrainingError, match=r"lack the feature column\(s\) 'wind', 'night'"
    ) as caught:
        bundle.predict(train_rows.drop("wind", "night"))
    assert caught.value.columns == ["wind", "night"]  # type: ignore[attr-defined]


def test_feature_types_are_checked_when_fitting(train_rows: pl.DataFrame) -> None:
    with pytest.raises(
        TrainingError, match=r"'carrier' is a String column.*list it in 'categorical'"
    ):
        train_bundle(train_rows, features=FEATURES, label=LABEL, categorical=["origin"])
    timed = train_rows.with_columns(when=pl.lit(0).cast(pl.Datetime("us")))
    with pytest.raises(TrainingError, match=r"'when' is a Datetime.*derive a numeric feature"):
        train_bundle(timed, features=[*FEATURES, "when"], label=LABEL)
    with pytest.raises(TrainingError, match=r"names 'speed', which are not among the features"):
        train_bundle(train_rows, features=FEATURES, label=LABEL, categorical=["speed"])
    with pytest.raises(TrainingError, match=r"lack the feature column\(s\) 'speed'"):
        train_bundle(train_rows, features=[*FEATURES, "speed"], label=LABEL)
    with pytest.raises(TrainingError, match=r"names 'wind' more than once"):
        train_bundle(train_rows, features=[*FEATURES, "wind"], label=LABEL)
    with pytest.raises(TrainingError, match=r"'impute' parameter of train_bundle must be one of"):
        train_bundle(train_rows, features=FEATURES, label=LABEL, impute="zero")  # type: ignore[arg-type]


def test_integer_column_can_be_categorical(train_rows: pl.DataFrame) -> None:
    bundle = _bundle(train_rows, categorical=["carrier", "origin", "seats"])
    assert "seats" in bundle.preprocessor.vocabulary_
    loaded = ModelBundle.from_bytes(bundle.to_bytes())
    assert np.array_equal(loaded.predict(train_rows), bundle.predict(train_rows))


# -- labels -------------------------------------------------------------------------------


def test_label_with_one_class_is_refused_clearly(train_rows: pl.DataFrame) -> None:
    one_class = train_rows.with_columns(pl.lit(False).alias(LABEL))
    with pytest.raises(
        TrainingError,
        match=r"^The label column 'delayed' has one class \(all 0\) in its 1500 rows; a binary "
        r"classifier needs rows of both 0 and 1\. Check how the label is defined",
    ):
        _bundle(one_class)


def test_bad_labels_are_refused(train_rows: pl.DataFrame) -> None:
    with pytest.raises(TrainingError, match=r"no label column 'late'"):
        train_bundle(train_rows, features=FEATURES, label="late")
    with pytest.raises(TrainingError, match=r"label column 'delayed' has 1 null"):
        _bundle(
            train_rows.with_columns(
                pl.when(pl.int_range(1500) == 0).then(None).otherwise(LABEL).alias(LABEL)
            )
        )
    with pytest.raises(TrainingError, match=r"label column 'delayed' is String"):
        _bundle(train_rows.with_columns(pl.col(LABEL).cast(pl.String)))
    with pytest.raises(TrainingError, match=r"also listed as a feature"):
        train_bundle(train_rows, features=[*FEATURES, LABEL], label=LABEL)
    with pytest.raises(TrainingError, match=r"training rows are empty"):
        _bundle(train_rows.head(0))


def test_regression_bundle(train_rows: pl.DataFrame) -> None:
    rows = train_rows.with_columns(pl.col("seats").cast(pl.Float64).alias(LABEL))
    features = [f for f in FEATURES if f != "seats"]
    bundle = train_bundle(
        rows,
        features=features,
        label=LABEL,
        model=LightGBMModel(objective="regression", num_rounds=10, num_threads=1),
    )
    assert bundle.objective == "regression"
    predicted = ModelBundle.from_bytes(bundle.to_bytes()).predict(rows)
    assert np.array_equal(predicted, bundle.predict(rows))
    assert predicted.min() > 40
    assert predicted.max() < 310


# -- tampering ----------------------------------------------------------------------------


def _members(data: bytes) -> dict[str, bytes]:
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        return {name: archive.read(name) for name in archive.namelist()}


def _zip(members: dict[str, bytes]) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, content in members.items():
            archive.writestr(name, content)
    return out.getvalue()


def _flip(content: bytes, at: int) -> bytes:
    changed = bytearray(content)
    changed[at] ^= 0x01
    return bytes(changed)


@pytest.fixture(scope="module")
def saved(train_rows: pl.DataFrame) -> bytes:
    return _bundle(
        train_rows, LightGBMModel(num_rounds=5, num_threads=1), metrics={"auc": 0.7}
    ).to_bytes()


def test_bundle_archive_lists_every_file_with_its_hash(saved: bytes) -> None:
    members = _members(saved)
    assert list(members) == [
        "manifest.json",
        "manifest.sha256",
        "model.txt",
        "preprocessing.json",
        "profile.json",
    ]
    manifest = json.loads(members["manifest.json"])
    assert (
        members["manifest.sha256"].decode().strip()
        == hashlib.sha256(members["manifest.json"]).hexdigest()
    )
    for name, entry in manifest["files"].items():
        assert entry == {
            "sha256": hashlib.sha256(members[name]).hexdigest(),
            "size": len(members[name]),
        }
    with zipfile.ZipFile(io.BytesIO(saved)) as archive:
        assert {info.date_time for info in archive.infolist()} == {(1980, 1, 1, 0, 0, 0)}


def test_changed_model_file_is_detected_and_named(saved: bytes) -> None:
    members = _members(saved)
    members["model.txt"] = members["model.txt"].replace(b"leaf_value=", b"leaf_value=1", 1)
    with pytest.raises(
        ArtifactCorruptedError, match=r"The model bundle's model\.txt was changed"
    ) as caught:
        ModelBundle.from_bytes(_zip(members))
    assert caught.value.member == "model.txt"  # type: ignore[attr-defined]


def test_flipped_byte_in_the_model_file_is_detected(saved: bytes) -> None:
    members = _members(saved)
    members["model.txt"] = _flip(members["model.txt"], len(members["model.txt"]) // 2)
    with pytest.raises(ArtifactCorruptedError, match=r"model\.txt was changed"):
        ModelBundle.from_bytes(_zip(members))
    # The same flip in the archive's own bytes: zip's checks or ours catch it, naming the file.
    with zipfile.ZipFile(io.BytesIO(saved)) as archive:
        info = archive.getinfo("model.txt")
    start = info.header_offset + 30 + len(info.filename) + len(info.extra)
    with pytest.raises(ArtifactCorruptedError, match=r"model\.txt") as caught:
        ModelBundle.from_bytes(_flip(saved, start + info.compress_size // 2))
    assert caught.value.member == "model.txt"  # type: ignore[attr-defined]


def test_changed_manifest_is_detected(saved: bytes) -> None:
    members = _members(saved)
    members["manifest.json"] = members["manifest.json"].replace(b'"auc": 0.7', b'"auc": 0.9')
    with pytest.raises(ArtifactCorruptedError, match=r"manifest\.json was changed") as caught:
        ModelBundle.from_bytes(_zip(members))
    assert caught.value.member == "manifest.json"  # type: ignore[attr-defined]
    members["manifest.json"] = _flip(_members(saved)["manifest.json"], 10)
    with pytest.raises(ArtifactCorruptedError, match=r"manifest\.json was changed"):
        ModelBundle.from_bytes(_zip(members))


def test_consistent_forgery_is_caught_by_the_recorded_hash(saved: bytes) -> None:
    members = _members(saved)
    members["manifest.json"] = members["manifest.json"].replace(b'"auc": 0.7', b'"auc": 0.9')
    members["manifest.sha256"] = hashlib.sha256(members["manifest.json"]).hexdigest().encode()
    forged = _zip(members)
    assert ModelBundle.from_bytes(forged).metrics == {"auc": 0.9}  # self-consistent...
    with pytest.raises(ArtifactCorruptedError, match=r"not the .* recorded for it"):
        ModelBundle.from_bytes(forged, expected_hash=hashlib.sha256(saved).hexdigest())


def test_added_or_removed_files_are_detected(saved: bytes) -> None:
    members = _members(saved)
    with pytest.raises(ArtifactCorruptedError, match=r"files not in its manifest: extra\.py"):
        ModelBundle.from_bytes(_zip({**members, "extra.py": b"import os"}))
    del members["profile.json"]
    with pytest.raises(
        ArtifactCorruptedError, match=r"files its manifest lists are missing: profile\.json"
    ):
        ModelBundle.from_bytes(_zip(members))
    with pytest.raises(ArtifactCorruptedError, match=r"not a loopline model bundle"):
        ModelBundle.from_bytes(b"tree\nversion=v4\n")
    with pytest.raises(ArtifactCorruptedError, match=r"has no manifest\.sha256"):
        ModelBundle.from_bytes(_zip({"manifest.json": b"{}"}))


# -- artifacts and values -----------------------------------------------------------------


def test_a_step_can_return_a_bundle_as_an_artifact(
    tmp_path: Path, train_rows: pl.DataFrame
) -> None:
    bundle = _bundle(train_rows, LightGBMModel(num_rounds=5, num_threads=1))
    store = ArtifactStore(tmp_path)
    stored = store.put(bundle)
    assert stored.kind == "model_bundle"
    assert stored.content_hash == bundle.content_hash
    assert stored.size == bundle.size
    loaded = store.get(stored.content_hash, stored.kind)
    assert isinstance(loaded, ModelBundle)
    assert np.array_equal(loaded.predict(train_rows), bundle.predict(train_rows))


def test_metrics_must_be_numbers_and_metadata_json(train_rows: pl.DataFrame) -> None:
    bundle = _bundle(train_rows, LightGBMModel(num_rounds=3, num_threads=1))
    scored = bundle.with_metrics({"auc": 0.75}).with_metrics({"brier": np.float64(0.2)})
    assert scored.metrics == {"auc": 0.75, "brier": 0.2}
    assert bundle.metrics == {}
    assert scored.to_bytes() != bundle.to_bytes()
    assert scored.with_metadata({"run": "r1"}).metadata == {"run": "r1"}
    with pytest.raises(TrainingError, match=r"must map names to numbers.*'calibration'"):
        bundle.with_metrics({"calibration": [0.1, 0.2]})  # type: ignore[dict-item]
    with pytest.raises(TrainingError, match=r"'metadata' of a ModelBundle must be JSON-able"):
        bundle.with_metadata({"when": object()})
    with pytest.raises(
        TrainingError, match=r"'model' parameter of train_bundle must be a model adapter"
    ):
        train_bundle(train_rows, features=FEATURES, label=LABEL, model=LogisticRegression())  # type: ignore[arg-type]


def test_bad_model_parameters_fail_before_any_work(train_rows: pl.DataFrame) -> None:
    with pytest.raises(
        TrainingError, match=r"^The 'num_leaves' parameter of LightGBMModel must be"
    ):
        _bundle(train_rows.drop(LABEL), LightGBMModel(num_leaves=0, num_threads=1))


def test_pandas_rows_are_taken_for_training_too(train_rows: pl.DataFrame) -> None:
    frame = train_rows.to_pandas()
    assert isinstance(frame, pd.DataFrame)
    from_pandas = train_bundle(
        frame, features=FEATURES, label=LABEL, model=LightGBMModel(num_rounds=5, num_threads=1)
    )
    direct = _bundle(train_rows, LightGBMModel(num_rounds=5, num_threads=1))
    # pandas has no null apart from NaN, so only the profile's NaN counts differ.
    assert from_pandas.model.to_bytes() == direct.model.to_bytes()
    assert np.array_equal(from_pandas.predict(frame), direct.predict(train_rows))
