"""Batch scoring: the same predictions as ``bundle.predict``, in bounded memory, or a clear
error and no output at all."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from city_weather import FEATURES, T0, city_rows, city_weather
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from loopline.errors import BatchPredictionError, SourceError, TrainingError
from loopline.features import OnDemand
from loopline.features.materialize import online_features
from loopline.serve.batch import BatchResult, predict_batch
from loopline.train import LightGBMModel, ModelBundle, train_bundle


def _rows(n: int = 400, seed: int = 1) -> pl.DataFrame:
    return city_rows(n, seed, ids=True)


@pytest.fixture(scope="module")
def bundle() -> ModelBundle:
    model = LightGBMModel(num_rounds=5, min_data_in_leaf=5, num_threads=1)
    return train_bundle(_rows(), features=FEATURES, label="late", model=model)


@pytest.fixture(scope="module")
def frame() -> pl.DataFrame:
    return _rows(300, seed=2).drop("late")


def _read(path: Path) -> pl.DataFrame:
    return pl.read_csv(path) if path.suffix == ".csv" else pl.read_parquet(path)


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


@settings(
    max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    batch_rows=st.integers(min_value=1, max_value=400),
    output=st.sampled_from(["scored", "scored.parquet", "scored.csv"]),
)
def test_batch_rows_do_not_change_the_predictions(
    tmp_path_factory: pytest.TempPathFactory,
    bundle: ModelBundle,
    frame: pl.DataFrame,
    batch_rows: int,
    output: str,
) -> None:
    folder = tmp_path_factory.mktemp("batch")
    frame.write_parquet(folder / "input.parquet", row_group_size=64)
    result = predict_batch(bundle, folder / "input.parquet", folder / output, batch_rows=batch_rows)
    scored = _read(folder / output)
    assert result.rows == scored.height == frame.height
    assert result.parts == -(-frame.height // batch_rows)
    assert scored.columns == [*frame.columns, "prediction"]
    assert scored.get_column("id").to_list() == frame.get_column("id").to_list()
    expected = bundle.predict(frame)
    np.testing.assert_allclose(scored.get_column("prediction").to_numpy(), expected, rtol=1e-12)
    if output != "scored.csv":  # CSV prints floats in decimal
        assert (scored.get_column("prediction").to_numpy() == expected).all()
    assert _leftovers(folder) == []


def test_csv_input(tmp_path: Path, bundle: ModelBundle, frame: pl.DataFrame) -> None:
    frame.write_csv(tmp_path / "input.csv")
    result = predict_batch(bundle, tmp_path / "input.csv", tmp_path / "out", batch_rows=70)
    scored = pl.read_parquet(tmp_path / "out")
    assert isinstance(result, BatchResult)
    assert result.parts == 5
    np.testing.assert_allclose(scored.get_column("prediction").to_numpy(), bundle.predict(frame))


def test_a_folder_of_parts_and_a_glob(
    tmp_path: Path, bundle: ModelBundle, frame: pl.DataFrame
) -> None:
    parts = tmp_path / "input"
    parts.mkdir()
    for i in range(3):
        frame.slice(i * 100, 100).write_parquet(parts / f"part-{i}.parquet")
    (parts / "_SUCCESS").write_text("")
    expected = bundle.predict(frame)
    for source, out in ((parts, "a"), (f"{parts}/*.parquet", "b")):
        result = predict_batch(bundle, source, tmp_path / out, batch_rows=128)
        scored = pl.read_parquet(tmp_path / out)
        assert result.rows == 300
        assert scored.get_column("id").to_list() == list(range(300))
        assert (scored.get_column("prediction").to_numpy() == expected).all()


def test_keep_columns_and_output_column(
    tmp_path: Path, bundle: ModelBundle, frame: pl.DataFrame
) -> None:
    frame.write_parquet(tmp_path / "in.parquet")
    predict_batch(bundle, tmp_path / "in.parquet", tmp_path / "a.parquet", keep_columns=[])
    predict_batch(
        bundle,
        tmp_path / "in.parquet",
        tmp_path / "b.parquet",
        keep_columns=["id"],
        output_column="p_late",
    )
    assert pl.read_parquet(tmp_path / "a.parquet").columns == ["prediction"]
    assert pl.read_parquet(tmp_path / "b.parquet").columns == ["id", "p_late"]


def test_features_from_the_online_store(tmp_path: Path, bundle: ModelBundle) -> None:
    """With views, a batch reads its features the way POST /predict does."""
    weather, clock, store = city_weather(tmp_path)
    t0 = T0
    requests = pl.DataFrame(
        {"city": ["Oslo", "Paris", "Lima", "Rome"] * 5, "hour_of_request": list(range(20))}
    )
    requests.write_parquet(tmp_path / "requests.parquet")
    at = t0.replace(hour=6, minute=30)
    predict_batch(
        bundle,
        tmp_path / "requests.parquet",
        tmp_path / "scored.parquet",
        views=[weather, clock],
        online_store=store,
        at=at,
        batch_rows=6,
        keep_columns=["city", "temp"],
    )
    scored = pl.read_parquet(tmp_path / "scored.parquet")
    served = online_features([weather, clock], requests, at=at, store=store)
    assert scored.get_column("temp").to_list() == served.get_column("temp").to_list()
    assert (scored.get_column("prediction").to_numpy() == bundle.predict(served)).all()
    with pytest.raises(BatchPredictionError, match="entity key column"):
        predict_batch(
            bundle,
            tmp_path / "requests.parquet",
            tmp_path / "again",
            views=[weather, OnDemand("c", features={"hour": pl.col("h")}, inputs=["h"])],
            online_store=store,
        )
    store.close()


def test_a_missing_feature_column_is_named_before_any_output(
    tmp_path: Path, bundle: ModelBundle, frame: pl.DataFrame
) -> None:
    frame.drop("temp").write_parquet(tmp_path / "in.parquet")
    with pytest.raises(
        BatchPredictionError, match=r"lacks the model's feature column.*'temp'"
    ) as info:
        predict_batch(bundle, tmp_path / "in.parquet", tmp_path / "out")
    assert info.value.column == "temp"
    assert not (tmp_path / "out").exists()
    assert _leftovers(tmp_path) == []


def test_missing_and_unreadable_inputs(tmp_path: Path, bundle: ModelBundle) -> None:
    with pytest.raises(SourceError, match="does not exist"):
        predict_batch(bundle, tmp_path / "nothing.parquet", tmp_path / "out")
    with pytest.raises(SourceError, match="holds no files"):
        predict_batch(bundle, f"{tmp_path}/*.parquet", tmp_path / "out")
    (tmp_path / "broken.parquet").write_bytes(b"this is not parquet")
    with pytest.raises(SourceError, match="cannot be read") as info:
        predict_batch(bundle, tmp_path / "broken.parquet", tmp_path / "out")
    assert info.value.path == str(tmp_path / "broken.parquet")
    (tmp_path / "rows.txt").write_text("a,b\n1,2\n")
    with pytest.raises(SourceError, match="format='parquet' or format='csv'"):
        predict_batch(bundle, tmp_path / "rows.txt", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_wrong_types(tmp_path: Path, bundle: ModelBundle, frame: pl.DataFrame) -> None:
    frame.with_columns(pl.col("temp").cast(pl.String) + "°").write_parquet(
        tmp_path / "text.parquet"
    )
    with pytest.raises(TrainingError, match="'temp'"):
        predict_batch(bundle, tmp_path / "text.parquet", tmp_path / "out")
    frame.with_columns(
        pl.col("temp").map_elements(lambda t: [t], return_dtype=pl.List(pl.Float64))
    ).write_parquet(tmp_path / "list.parquet")
    with pytest.raises(BatchPredictionError, match=r"'temp' is .*list"):
        predict_batch(bundle, tmp_path / "list.parquet", tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert _leftovers(tmp_path) == []


def test_a_bad_value_late_in_a_csv_leaves_no_output(
    tmp_path: Path, bundle: ModelBundle, frame: pl.DataFrame
) -> None:
    text = frame.write_csv()
    lines = text.splitlines()
    lines[-1] = lines[-1].replace(lines[-1].split(",")[2], "warm")  # temp of the last row
    (tmp_path / "in.csv").write_text("\n".join(lines) + "\n")
    with pytest.raises(SourceError, match=r"cannot be read.*warm"):
        predict_batch(bundle, tmp_path / "in.csv", tmp_path / "out", batch_rows=50)
    assert not (tmp_path / "out").exists()
    assert _leftovers(tmp_path) == []


def test_an_existing_output_is_kept_unless_overwrite(
    tmp_path: Path, bundle: ModelBundle, frame: pl.DataFrame
) -> None:
    frame.write_parquet(tmp_path / "in.parquet")
    (tmp_path / "out.parquet").write_text("old")
    with pytest.raises(BatchPredictionError, match="exists already"):
        predict_batch(bundle, tmp_path / "in.parquet", tmp_path / "out.parquet")
    assert (tmp_path / "out.parquet").read_text() == "old"
    predict_batch(bundle, tmp_path / "in.parquet", tmp_path / "out.parquet", overwrite=True)
    assert pl.read_parquet(tmp_path / "out.parquet").height == 300
    assert _leftovers(tmp_path) == []


@pytest.mark.parametrize(
    ("parameters", "words"),
    [
        ({"batch_rows": 0}, "'batch_rows' parameter"),
        ({"output_column": ""}, "'output_column' parameter"),
        ({"format": "json"}, "'format' parameter"),
        ({"keep_columns": ["nope"]}, "keep_columns names 'nope'"),
        ({"keep_columns": ["id", "prediction"]}, "is also a column to keep"),
    ],
)
def test_bad_parameters(
    tmp_path: Path,
    bundle: ModelBundle,
    frame: pl.DataFrame,
    parameters: dict[str, object],
    words: str,
) -> None:
    frame.write_parquet(tmp_path / "in.parquet")
    with pytest.raises(BatchPredictionError, match=words):
        predict_batch(bundle, tmp_path / "in.parquet", tmp_path / "out", **parameters)  # type: ignore[arg-type]


MEMORY_SCRIPT = textwrap.dedent(
    """
    import json, resource, sys
    from pathlib import Path
    import numpy as np, polars as pl, pyarrow as pa, pyarrow.parquet as pq
    from loopline.serve.batch import predict_batch
    from loopline.train import LightGBMModel, train_bundle

    folder, rows, chunk = Path(sys.argv[1]), int(sys.argv[2]), 250_000
    names = [f"x{i}" for i in range(8)]
    rng = np.random.default_rng(0)
    train = pl.DataFrame({n: rng.normal(size=2000) for n in names}).with_columns(
        y=(pl.col("x0") > 0).cast(pl.Int8))
    bundle = train_bundle(train, features=names, label="y", profile=False,
                          model=LightGBMModel(num_rounds=5, num_threads=1))
    writer = None
    for start in range(0, rows, chunk):
        table = pa.table({n: rng.normal(size=chunk) for n in names})
        writer = writer or pq.ParquetWriter(folder / "in.parquet", table.schema)
        writer.write_table(table)
    writer.close()
    bundle.predict(train.head(10))  # imports and first-call costs before the baseline
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    pool_before = pa.default_memory_pool().max_memory()
    result = predict_batch(bundle, folder / "in.parquet", folder / "out", batch_rows=50_000)
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    arrow_peak = pa.default_memory_pool().max_memory()
    print(json.dumps({"rows": result.rows, "input_bytes": rows * len(names) * 8,
                      "peak_growth": after - before, "arrow_peak": arrow_peak,
                      "arrow_before": pool_before}))
    """
)


def test_memory_stays_bounded_by_the_batch(tmp_path: Path) -> None:
    """4M rows x 8 float64 columns (256 MB in memory) scored in batches of 50,000 rows:
    the process's peak memory (and pyarrow's) grows by a small part of the input's size."""
    rows = 4_000_000
    done = subprocess.run(
        [sys.executable, "-c", MEMORY_SCRIPT, str(tmp_path), str(rows)],
        capture_output=True,
        text=True,
        timeout=240,
        check=True,
    )
    facts = json.loads(done.stdout.strip().splitlines()[-1])
    assert facts["rows"] == rows
    assert facts["peak_growth"] < facts["input_bytes"] / 4, facts
    assert facts["arrow_peak"] - facts["arrow_before"] < facts["input_bytes"] / 4, facts


def test_an_output_url_is_refused_before_anything_is_read(
    tmp_path: Path, bundle: ModelBundle, frame: pl.DataFrame
) -> None:
    frame.write_parquet(tmp_path / "input.parquet")
    with pytest.raises(BatchPredictionError, match="is a URL") as caught:
        predict_batch(bundle, tmp_path / "input.parquet", "s3://bucket/scored.parquet")
    assert caught.value.context["path"] == "s3://bucket/scored.parquet"
