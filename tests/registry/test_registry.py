"""The model registry over every metadata backend (SQLite file, PostgreSQL schema).

Versions are numbered per model from 1, one per bundle content hash; aliases move only
with an audit entry; ``latest`` is computed and cannot be set; rollback walks back
through an alias's history; unknown names say what exists.
"""

from __future__ import annotations

import hashlib
import itertools
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from loopline.data.workspace import Workspace, forget_stores, register_stores, use_workspace
from loopline.errors import ModelNotFoundError, RegistryError
from loopline.registry import Gate, Registry, Verdict
from loopline.store.artifacts import ArtifactStore
from loopline.store.metadata import MetadataStore

DB_SETTINGS = settings(
    max_examples=15,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)


@pytest.fixture
def store(metadata_url: str, tmp_path: Path) -> Iterator[MetadataStore]:
    with MetadataStore(metadata_url) as opened:
        artifacts = ArtifactStore(tmp_path / "artifacts")
        register_stores(opened, artifacts)
        try:
            yield opened
        finally:
            forget_stores(opened, artifacts)


@pytest.fixture
def registry(store: MetadataStore, tmp_path: Path) -> Registry:
    return Registry(Workspace(store.url, str(tmp_path / "artifacts")))


_STORED: list[ArtifactStore] = []


@pytest.fixture(autouse=True)
def _artifacts(tmp_path: Path) -> Iterator[None]:
    """The artifact store the registry fixture uses, where ``_hash`` stores its bytes."""
    _STORED.append(ArtifactStore(tmp_path / "artifacts"))
    yield
    _STORED.pop()


def _hash(text: str) -> str:
    """Store ``text`` as a stand-in bundle (a version must point at stored bytes)."""
    stored = _STORED[-1].put_bytes(text.encode())
    assert stored.content_hash == hashlib.sha256(text.encode()).hexdigest()
    return stored.content_hash


def _register(registry: Registry, name: str, key: str, auc: float = 0.7, **kwargs: Any) -> int:
    version = registry.register(
        name,
        f"art-{key}",
        content_hash=_hash(key),
        metrics={"test_roc_auc": auc},
        actor="ci",
        **kwargs,
    )
    return version.version


# -- versions ---------------------------------------------------------------------------------


def test_versions_are_numbered_per_model_with_their_lineage(registry: Registry) -> None:
    first = registry.register(
        "flights",
        "art-1",
        content_hash=_hash("one"),
        metrics={"test_roc_auc": 0.75, "test_log_loss": 0.41, "rows": 1000},
        run_id="run-1",
        step_id="step-1",
        datasets=["flights@3", "weather@1"],
        features=["carrier_delays@" + "a" * 64],
        tags={"owner": "ops"},
        description="departure delays over 15 minutes",
        actor="alice",
    )
    second = _register(registry, "flights", "two")
    other = _register(registry, "churn", "one")  # the same bundle under another model

    assert (first.version, second, other) == (1, 2, 1)
    assert first.ref == "flights@1"
    assert first.artifact_id == "art-1"
    assert first.content_hash == _hash("one")
    assert (first.run_id, first.step_id, first.status) == ("run-1", "step-1", "registered")
    assert first.metrics == {"test_roc_auc": 0.75, "test_log_loss": 0.41, "rows": 1000.0}
    assert first.datasets == ["flights@3", "weather@1"]
    assert first.features == ["carrier_delays@" + "a" * 64]
    assert first.tags == {"owner": "ops"}
    assert registry.get("flights", 1) == first
    assert [v.version for v in registry.versions("flights")] == [1, 2]
    models = {m.name: m for m in registry.models()}
    assert sorted(models) == ["churn", "flights"]
    assert (models["flights"].versions, models["flights"].latest) == (2, 2)
    assert models["flights"].description == "departure delays over 15 minutes"
    assert models["flights"].aliases == {}
    [entry, _] = registry.audit("flights")
    assert (entry.action, entry.to_version, entry.actor, entry.alias) == (
        "register",
        1,
        "alice",
        None,
    )
    assert entry.metrics["test_roc_auc"] == 0.75


def test_the_same_bundle_registers_once(registry: Registry) -> None:
    first = _register(registry, "flights", "bundle", auc=0.7)
    again = registry.register(
        "flights", "another-id", content_hash=_hash("bundle"), metrics={"test_roc_auc": 0.9}
    )

    assert again.version == first
    assert again.artifact_id == "art-bundle"
    assert again.metrics == {"test_roc_auc": 0.7}
    assert len(registry.versions("flights")) == 1
    assert [e.action for e in registry.audit("flights")] == ["register"]


def test_run_and_step_default_to_the_running_step(store: MetadataStore, tmp_path: Path) -> None:
    registry = Registry()  # the current workspace, when called
    workspace = Workspace(store.url, str(tmp_path / "artifacts"), run_id="r-1", step_id="s-1")
    with use_workspace(workspace):
        version = registry.register("m", "a", content_hash=_hash("m"), metrics={})
        pinned = registry.register(
            "m", "b", content_hash=_hash("n"), metrics={}, run_id="r-2", step_id="s-2"
        )

    assert (version.run_id, version.step_id) == ("r-1", "s-1")
    assert (pinned.run_id, pinned.step_id) == ("r-2", "s-2")


def test_get_by_reference(registry: Registry) -> None:
    for key in ("a", "b", "c"):
        _register(registry, "flights", key)
    registry.promote("flights", 2, why="best so far")

    assert registry.get("flights@3").version == 3
    assert registry.get("flights@champion").version == 2
    assert registry.get("flights@latest").version == 3
    assert registry.get("flights").version == 3
    assert registry.get("flights", 1).version == 1
    assert registry.get("flights", "1").version == 1
    assert registry.get("flights", "champion").aliases == ("champion",)
    assert registry.champion("flights").version == 2  # type: ignore[union-attr]
    assert registry.champion("flights", alias="challenger") is None
    assert registry.champion("nosuch") is None


def test_tags_are_added_to_a_version(registry: Registry) -> None:
    _register(registry, "flights", "a", tags={"owner": "ops", "stage": "dev"})

    tagged = registry.tag("flights", 1, {"stage": "prod", "ticket": 42})  # type: ignore[dict-item]

    assert tagged.tags == {"owner": "ops", "stage": "prod", "ticket": "42"}
    assert registry.get("flights@1").tags == tagged.tags


# -- latest is reserved -----------------------------------------------------------------------


def test_latest_is_computed_and_cannot_be_set(registry: Registry) -> None:
    _register(registry, "flights", "a")
    assert registry.get("flights@latest").version == 1

    with pytest.raises(RegistryError, match="'latest' is reserved") as info:
        registry.set_alias("flights", "latest", 1, why="try")
    assert "Choose another alias" in str(info.value)
    with pytest.raises(RegistryError, match="'latest' is reserved"):
        registry.promote("flights", 1, alias="latest", why="try")
    with pytest.raises(RegistryError, match="'latest' is reserved"):
        registry.rollback("flights", alias="latest", why="try")

    _register(registry, "flights", "b")
    assert registry.get("flights@latest").version == 2
    assert registry.aliases("flights") == {}
    assert [e.action for e in registry.audit("flights")] == ["register", "register"]


# -- promote, rollback, audit -----------------------------------------------------------------


def test_promote_rollback_and_the_audit_log(registry: Registry) -> None:
    for n, key in enumerate(("a", "b", "c")):
        _register(registry, "flights", key, auc=0.70 + n / 100)

    registry.promote("flights", 1, why="first model", actor="alice")
    registry.promote("flights", 2, why="better AUC", actor="bob")
    registry.promote("flights", 3, why="even better")
    back = registry.rollback("flights", why="bad predictions", actor="carol")
    assert back.version == 2
    assert registry.rollback("flights", why="still bad", actor="carol").version == 1
    with pytest.raises(RegistryError) as info:
        registry.rollback("flights", why="once more")
    message = str(info.value)
    assert "Nothing to roll back" in message
    assert "'loopline promote flights VERSION --alias champion'" in message
    assert not isinstance(info.value, ModelNotFoundError)

    moves = [
        (e.action, e.alias, e.from_version, e.to_version, e.actor, e.why)
        for e in registry.audit("flights")
    ]
    assert moves[:3] == [("register", None, None, v, "ci", None) for v in (1, 2, 3)]
    assert moves[3:5] == [
        ("promote", "champion", None, 1, "alice", "first model"),
        ("promote", "champion", 1, 2, "bob", "better AUC"),
    ]
    assert moves[5][:4] == ("promote", "champion", 2, 3)
    assert moves[5][4]  # the logged-in user when no actor is given
    assert moves[6:] == [
        ("rollback", "champion", 3, 2, "carol", "bad predictions"),
        ("rollback", "champion", 2, 1, "carol", "still bad"),
    ]
    entries = registry.audit("flights")
    assert [e.metrics["test_roc_auc"] for e in entries[3:]] == [0.70, 0.71, 0.72, 0.71, 0.70]
    assert [e.id for e in entries] == sorted(e.id for e in entries)
    assert all(a.created_at <= b.created_at for a, b in itertools.pairwise(entries))
    assert registry.aliases("flights") == {"champion": 1}
    assert len(registry.audit("flights", alias="champion")) == 5


def test_rollback_after_promoting_again(registry: Registry) -> None:
    for key in ("a", "b", "c"):
        _register(registry, "flights", key)
    registry.promote("flights", 1, why="1")
    registry.promote("flights", 2, why="2")
    registry.rollback("flights", why="back to 1")
    registry.promote("flights", 3, why="3")

    # 3 replaced 1, so rolling back gives 1 again (2 was rolled back already).
    assert registry.rollback("flights", why="undo 3").version == 1


def test_aliases_are_independent(registry: Registry) -> None:
    for key in ("a", "b"):
        _register(registry, "flights", key)
    registry.promote("flights", 1, why="champion")
    registry.set_alias("flights", "challenger", 2, why="shadow traffic")
    registry.set_alias("flights", "challenger", "champion", why="by alias")

    assert registry.aliases("flights") == {"challenger": 1, "champion": 1}
    assert registry.get("flights@1").aliases == ("challenger", "champion")
    assert registry.rollback("flights", alias="challenger", why="x").version == 2
    assert registry.aliases("flights") == {"challenger": 2, "champion": 1}


def test_pointing_an_alias_where_it_points_writes_nothing(registry: Registry) -> None:
    _register(registry, "flights", "a")
    registry.promote("flights", 1, why="first")
    registry.promote("flights", 1, why="again")

    assert [e.action for e in registry.audit("flights")] == ["register", "promote"]


def test_audit_metrics_can_be_given(registry: Registry) -> None:
    _register(registry, "flights", "a", auc=0.7)

    registry.set_alias("flights", "champion", 1, why="re-evaluated", metrics={"test_roc_auc": 0.69})

    assert registry.audit("flights")[-1].metrics == {"test_roc_auc": 0.69}


# -- the gate's verdict -----------------------------------------------------------------------


def test_record_verdict_promotes_or_refuses(registry: Registry) -> None:
    gate = Gate(primary="test_roc_auc", min_improvement=0.01)
    _register(registry, "flights", "a", auc=0.75)
    first = gate.evaluate(registry.get("flights@1").metrics, None)
    blessed = registry.record_verdict("flights", 1, first)

    _register(registry, "flights", "b", auc=0.755)
    champion = registry.champion("flights")
    assert champion is not None
    worse = gate.evaluate(registry.get("flights@2").metrics, champion.metrics)
    refused = registry.record_verdict("flights", 2, worse)

    assert (blessed.status, blessed.aliases) == ("blessed", ("champion",))
    assert (refused.status, refused.aliases) == ("refused", ())
    assert registry.aliases("flights") == {"champion": 1}
    assert [e.action for e in registry.audit("flights")] == [
        "register",
        "promote",
        "register",
        "refuse",
    ]
    _, promote, _, refuse = registry.audit("flights")
    assert (promote.action, promote.to_version, promote.why) == (
        "promote",
        1,
        "gate passed 1 check(s)",
    )
    assert (refuse.action, refuse.alias, refuse.from_version, refuse.to_version) == (
        "refuse",
        "champion",
        1,
        2,
    )
    assert refuse.why == "gate refused: primary test_roc_auc"  # the verdict has the reasons
    assert refuse.metrics == {"test_roc_auc": 0.755}
    assert refuse.verdict is not None
    assert Verdict.from_dict(refuse.verdict) == worse
    # A refusal is not a move: there is still nothing to roll back.
    with pytest.raises(RegistryError, match="Nothing to roll back"):
        registry.rollback("flights", why="x")


# -- what does not exist ----------------------------------------------------------------------


def test_unknown_model_version_and_alias(registry: Registry) -> None:
    for key in ("a", "b"):
        _register(registry, "flights", key)
    registry.promote("flights", 1, why="first")

    with pytest.raises(ModelNotFoundError) as model:
        registry.get("flihgts@1")
    with pytest.raises(ModelNotFoundError) as version:
        registry.promote("flights", 7, why="no such version")
    with pytest.raises(ModelNotFoundError) as alias:
        registry.get("flights@champoin")
    with pytest.raises(ModelNotFoundError) as rollback:
        registry.rollback("flights", alias="challenger", why="x")

    assert str(model.value) == (
        "No registered model is named 'flihgts' (did you mean 'flights'?). "
        "'loopline models' lists the registered models."
    )
    assert str(version.value) == (
        "Model 'flights' has no version 7; it has versions 1 to 2. "
        "'loopline model flights' lists them."
    )
    assert "no alias 'champoin' (did you mean 'champion'?)" in str(alias.value)
    assert "its aliases are: champion" in str(alias.value)
    assert "nothing to roll back" in str(rollback.value)
    assert isinstance(version.value, KeyError)
    assert registry.aliases("flights") == {"champion": 1}
    assert [e.action for e in registry.audit("flights")][-1] == "promote"


def test_nothing_registered_yet(registry: Registry) -> None:
    with pytest.raises(ModelNotFoundError, match="No model is registered yet"):
        registry.versions("flights")
    with pytest.raises(ModelNotFoundError):
        registry.audit("flights")
    assert registry.models() == []


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda r: r.register("", "a", content_hash="h", metrics={}), "A model name is"),
        (lambda r: r.register("a@b", "a", content_hash="h", metrics={}), "Got 'a@b'"),
        (lambda r: r.register("m", "", content_hash="h", metrics={}), "'bundle_artifact_id'"),
        (lambda r: r.register("m", "a", content_hash="h" * 65, metrics={}), "'content_hash'"),
        (
            lambda r: r.register("m", "a", content_hash="h", metrics={"auc": "high"}),
            "Metric 'auc' of a model version must be a number. Got 'high'.",
        ),
        (lambda r: r.register("m", "a", content_hash="h", metrics={"ok": True}), "Got True"),
        (lambda r: r.set_alias("m", "", 1, why="x"), "An alias is"),
        (lambda r: r.set_alias("m", "3", 1, why="x"), "starting with a letter"),
    ],
)
def test_bad_input(tmp_path: Path, call: Any, message: str) -> None:
    # Checked before any database is opened, so one backend is enough.
    registry = Registry(Workspace(f"sqlite:///{tmp_path / 'unused.db'}", str(tmp_path)))
    with pytest.raises(RegistryError) as info:
        call(registry)
    assert not (tmp_path / "unused.db").exists()
    assert message in str(info.value)


# -- concurrency and invariants ---------------------------------------------------------------


def test_concurrent_registrations_and_promotions(metadata_url: str, tmp_path: Path) -> None:
    """Four writers with their own connections: numbers stay dense, moves stay chained."""
    MetadataStore(metadata_url).close()  # migrate once, before the writers race
    errors: list[BaseException] = []

    def writer(n: int) -> None:
        try:
            with MetadataStore(metadata_url) as own:
                for i in range(5):
                    record, _ = own.register_model_version(
                        model="shared",
                        artifact_id=f"a-{n}-{i}",
                        content_hash=_hash(f"{n}-{i}" if i else "common"),
                        actor=f"w{n}",
                    )
                    own.move_model_alias(
                        "shared", "champion", record.version, actor=f"w{n}", why=None
                    )
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors

    with MetadataStore(metadata_url) as store:
        versions = store.model_versions("shared")
        audit = store.model_audit("shared")
    # 4 x 4 distinct bundles and one that all four share.
    assert [v.version for v in versions] == list(range(1, 18))
    assert len({v.content_hash for v in versions}) == 17
    moves = [e for e in audit if e.action == "promote"]
    assert moves[0].from_version is None
    for before, after in itertools.pairwise(moves):
        assert after.from_version == before.to_version
    assert store_alias(metadata_url) == moves[-1].to_version


def store_alias(url: str) -> int:
    with MetadataStore(url) as store:
        return store.model_aliases("shared")["champion"]


@DB_SETTINGS
@given(
    moves=st.lists(
        st.one_of(st.integers(min_value=1, max_value=4), st.just("rollback")),
        min_size=1,
        max_size=12,
    )
)
def test_alias_history_is_a_stack(registry: Registry, moves: list[int | str]) -> None:
    """Promote pushes where the alias was, rollback pops: the registry agrees with a model."""
    name = f"m{abs(hash(tuple(moves))) % 10**12}-{len(registry.models())}"
    for key in "abcd":
        _register(registry, name, key)
    current: int | None = None
    stack: list[int | None] = []
    for move in moves:
        if move == "rollback":
            if current is None:
                with pytest.raises(ModelNotFoundError):
                    registry.rollback(name, why="x")
            elif not stack or stack[-1] is None:
                with pytest.raises(RegistryError, match="Nothing to roll back"):
                    registry.rollback(name, why="x")
            else:
                current = stack.pop()
                assert registry.rollback(name, why="x").version == current
        else:
            assert isinstance(move, int)
            if move != current:
                stack.append(current)
                current = move
            registry.promote(name, move, why="x")
        assert registry.aliases(name).get("champion") == current

    entries = [e for e in registry.audit(name) if e.action != "register"]
    for before, after in itertools.pairwise(entries):
        assert after.from_version == before.to_version


def test_a_version_number_beyond_any_database_integer_is_not_found(registry: Registry) -> None:
    _register(registry, "flights", "a")
    for version in (0, 2**64, 10**30):
        with pytest.raises(ModelNotFoundError, match="has no version"):
            registry.get("flights", version)
