"""Registering the bundle a pipeline step returned: lineage to the data, loading it back.

A version registered from a step's bundle points at that step's artifact, its run and
step, and the dataset versions upstream of it, also when the steps in between were
answered from the cache; the lineage table holds the same edges. A version never points
at bytes the artifact store does not hold, and loading checks them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest

from loopline import Column, Contract, Files, FileSource, ingest, read_dataset, step
from loopline.config import Settings
from loopline.data.workspace import Workspace
from loopline.errors import ArtifactCorruptedError, RegistryError
from loopline.pipeline.dag import Pipeline
from loopline.pipeline.runner import Runner
from loopline.registry import Registry
from loopline.train import LightGBMModel, ModelBundle, train_bundle

CONTRACT = Contract("toy", {"x": Column("float64"), "y": Column("int64")})


def _pipeline(csv: Path) -> Pipeline:
    @step
    def rows(source: Files = Files(csv)) -> pl.DataFrame:
        result = ingest(FileSource(source.patterns), contract=CONTRACT)
        frame = pl.from_arrow(read_dataset(result.dataset))
        assert isinstance(frame, pl.DataFrame)
        return frame

    @step
    def model(rows: pl.DataFrame) -> ModelBundle:
        adapter = LightGBMModel(num_rounds=3, min_data_in_leaf=2)
        return train_bundle(rows, features=["x"], label="y", model=adapter)

    @step(cache=False)  # registers on every run, to show that the same bundle is one version
    def registered(model: ModelBundle) -> int:
        return Registry().register_bundle("toy", model, features=["view@abc"]).version

    return Pipeline.from_steps([rows, model, registered], name="toy")


@pytest.fixture
def csv(tmp_path: Path) -> Path:
    path = tmp_path / "toy.csv"
    path.write_text("x,y\n" + "".join(f"{i / 4},{i % 2}\n" for i in range(40)))
    return path


def test_a_step_bundle_is_registered_with_its_lineage(tmp_path: Path, csv: Path) -> None:
    settings = Settings.load(start=tmp_path, search=False, env={})
    with Runner(settings) as runner:
        first = runner.run(_pipeline(csv))
        second = runner.run(_pipeline(csv))  # rows and model cached, registered runs again
        assert runner.output(first.run_id, "registered") == 1
        assert runner.output(second.run_id, "registered") == 1
        model_step = first.steps["model"]
        dataset = runner.metadata.get_dataset("toy@1")
        registry = Registry(Workspace(settings.metadata_url, settings.artifact_url))
        version = registry.get("toy", 1)
        lineage = runner.metadata.version_lineage("toy", 1)

    assert len(registry.versions("toy")) == 1
    assert version.artifact_id == model_step.output_artifact_id
    assert (version.run_id, version.step_id) == (first.run_id, model_step.id)
    assert version.datasets == ["toy@1"]
    assert version.features == ["view@abc"]
    assert lineage == [
        ("bundle", "artifact", model_step.output_artifact_id),
        ("trained", "run", first.run_id),
        ("trained_on", "dataset", dataset.id),
    ]


def test_a_bundle_from_outside_a_pipeline_is_stored_and_loads_back(tmp_path: Path) -> None:
    registry = Registry(Workspace(f"sqlite:///{tmp_path}/meta.db", str(tmp_path / "art")))
    rows = pl.DataFrame({"x": [i / 4 for i in range(40)], "y": [i % 2 for i in range(40)]})
    bundle = train_bundle(
        rows, features=["x"], label="y", model=LightGBMModel(num_rounds=3, min_data_in_leaf=2)
    )
    version = registry.register_bundle("toy", bundle, metrics={"auc": 0.5})

    assert (version.artifact_id, version.content_hash) == (bundle.content_hash,) * 2
    assert (version.run_id, version.step_id, version.datasets) == (None, None, [])
    assert version.metrics == {"auc": 0.5}
    loaded = registry.load_bundle("toy@latest")
    np.testing.assert_array_equal(loaded.predict(rows), bundle.predict(rows))
    assert registry.register_bundle("toy", bundle).version == 1  # the same bytes: no new one

    # Tampered bytes are found on load, not served.
    assert registry.workspace is not None
    path = Path(registry.workspace.artifacts.path(bundle.content_hash))
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ArtifactCorruptedError):
        registry.load_bundle("toy", 1)


def test_a_version_must_point_at_stored_bytes(tmp_path: Path) -> None:
    registry = Registry(Workspace(f"sqlite:///{tmp_path}/meta.db", str(tmp_path / "art")))
    with pytest.raises(RegistryError, match="No bundle with content hash 0000"):
        registry.register("toy", "artifact", content_hash="0" * 64, metrics={})
    assert registry.models() == []
