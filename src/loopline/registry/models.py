"""Registered models: versions with lineage, aliases, and an audit log of every move.

A model has versions numbered from 1, one per bundle content hash: registering a bundle
the model already has returns the existing version, so a cached re-run of a pipeline
registers nothing new. An alias (``champion``, ``challenger``, any name) points at one
version; ``latest`` is reserved and always means the newest version. Moving an alias
(promote, rollback) writes an audit entry with who, when, why and the metrics, and so
does every registration and every refusal by the gate.

Examples
--------
>>> import tempfile
>>> from loopline.data.workspace import Workspace
>>> folder = tempfile.mkdtemp()
>>> registry = Registry(Workspace(f"sqlite:///{folder}/meta.db", f"{folder}/artifacts"))
>>> one, two = (registry.workspace.artifacts.put_bytes(b) for b in (b"model 1", b"model 2"))
>>> v1 = registry.register("flights", "a1", content_hash=one.content_hash, metrics={"auc": 0.75})
>>> v2 = registry.register("flights", "a2", content_hash=two.content_hash, metrics={"auc": 0.76})
>>> registry.promote("flights", 1, why="first model").aliases
('champion',)
>>> registry.promote("flights", 2, why="better AUC").version
2
>>> registry.rollback("flights", why="bad predictions in production").ref
'flights@1'
>>> [e.action for e in registry.audit("flights")]
['register', 'register', 'promote', 'promote', 'rollback']
"""

from __future__ import annotations

import difflib
import getpass
import os
import re
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, SupportsFloat

from loopline.data.workspace import Workspace, current_workspace
from loopline.errors import ModelNotFoundError, RegistryError, RunNotFoundError
from loopline.registry.gate import Verdict
from loopline.store.metadata import (
    MetadataStore,
    ModelAuditRecord,
    ModelVersionRecord,
    RegisteredModelRecord,
)

if TYPE_CHECKING:
    from loopline.train import ModelBundle

__all__ = [
    "LATEST",
    "ModelAuditRecord",
    "ModelVersion",
    "RegisteredModel",
    "Registry",
]

ModelVersion = ModelVersionRecord
"""A version of a registered model (``loopline.store.metadata.ModelVersionRecord``)."""

RegisteredModel = RegisteredModelRecord
"""A registered model with its version count and aliases."""

LATEST = "latest"
"""The reserved alias: always the newest version, computed, never stored."""

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,199}")
_ALIAS = re.compile(r"[A-Za-z][A-Za-z0-9_.\-]{0,99}")


class Registry:
    """The model registry of a workspace (the running step's, or the configured one).

    Parameters
    ----------
    workspace
        Whose metadata store to use; by default ``current_workspace()`` when called, so
        that inside a pipeline step versions record the run and step they came from.

    Examples
    --------
    >>> import tempfile
    >>> folder = tempfile.mkdtemp()
    >>> registry = Registry(Workspace(f"sqlite:///{folder}/meta.db", f"{folder}/artifacts"))
    >>> stored = registry.workspace.artifacts.put_bytes(b"a model bundle")
    >>> registry.register("churn", "a1", content_hash=stored.content_hash, metrics={"auc": 0.8}).ref
    'churn@1'
    >>> registry.get("churn@latest").version
    1
    """

    def __init__(self, workspace: Workspace | None = None) -> None:
        self.workspace = workspace

    def __repr__(self) -> str:
        return f"Registry({self.workspace!r})"

    @property
    def _space(self) -> Workspace:
        return self.workspace if self.workspace is not None else current_workspace()

    @property
    def _store(self) -> MetadataStore:
        return self._space.metadata

    # -- versions ------------------------------------------------------------------------

    def register(
        self,
        name: str,
        bundle_artifact_id: str,
        *,
        content_hash: str,
        metrics: Mapping[str, float | None],
        run_id: str | None = None,
        step_id: str | None = None,
        datasets: Sequence[str] = (),
        features: Sequence[str] = (),
        tags: Mapping[str, str] | None = None,
        description: str | None = None,
        actor: str | None = None,
    ) -> ModelVersion:
        """Register a model bundle as the next version of ``name`` (created if new).

        ``bundle_artifact_id`` is the id (or content hash) under which the bundle is
        stored, and ``content_hash`` the sha256 of its bytes: a bundle with a content hash
        the model already has is not registered again, its version comes back. ``run_id``
        and ``step_id`` default to the running step's. ``datasets`` and ``features`` are the
        dataset versions (``name@version``) and feature versions (``view@sha256``) it was
        trained on.

        The bundle's bytes must be in the workspace's artifact store under
        ``content_hash``: a version never points at a bundle that cannot be loaded.
        ``register_bundle`` stores the bundle and finds the rest itself.
        """
        _check_name(name)
        for label, value in (
            ("bundle_artifact_id", bundle_artifact_id),
            ("content_hash", content_hash),
        ):
            if not isinstance(value, str) or not value or len(value) > 64:
                raise RegistryError(
                    f"The '{label}' parameter of Registry.register must be a non-empty string "
                    f"of at most 64 characters. Got {value!r}."
                )
        clean = _metrics(metrics)
        space = self._space
        if not space.artifacts.exists(content_hash):
            raise RegistryError(
                f"No bundle with content hash {content_hash} is in the artifact store "
                f"{space.artifact_url}; store the bundle first (Registry.register_bundle "
                f"does), so that the version can be loaded.",
                model=name,
            )
        record, _created = space.metadata.register_model_version(
            model=name,
            artifact_id=bundle_artifact_id,
            content_hash=content_hash,
            actor=actor or _who(),
            metrics=clean,
            run_id=run_id if run_id is not None else space.run_id,
            step_id=step_id if step_id is not None else space.step_id,
            datasets=[str(d) for d in datasets],
            features=[str(f) for f in features],
            tags={str(k): str(v) for k, v in (tags or {}).items()},
            description=description,
        )
        return record

    def register_bundle(
        self,
        name: str,
        bundle: ModelBundle,
        *,
        metrics: Mapping[str, float | None] | None = None,
        datasets: Sequence[str] | None = None,
        features: Sequence[str] = (),
        tags: Mapping[str, str] | None = None,
        description: str | None = None,
        actor: str | None = None,
    ) -> ModelVersion:
        """Register a ``ModelBundle``: store it if it is not stored yet, then ``register``.

        ``metrics`` default to the bundle's own. The version points at the artifact a
        pipeline step stored the bundle as, when one did (so ``loopline lineage`` walks
        from it to the data), and is made by the step that did. ``datasets`` default to
        the dataset versions that artifact depends on (``MetadataStore.upstream_datasets``).

        Examples
        --------
        >>> import tempfile, polars as pl
        >>> from loopline.train import LightGBMModel, train_bundle
        >>> folder = tempfile.mkdtemp()
        >>> registry = Registry(Workspace(f"sqlite:///{folder}/meta.db", f"{folder}/art"))
        >>> rows = pl.DataFrame({"x": [i / 4 for i in range(40)], "y": [i % 2 for i in range(40)]})
        >>> bundle = train_bundle(rows, features=["x"], label="y",
        ...                       model=LightGBMModel(num_rounds=2, min_data_in_leaf=2))
        >>> registry.register_bundle("toy", bundle).ref
        'toy@1'
        >>> registry.load_bundle("toy@latest").content_hash == bundle.content_hash
        True
        """
        space = self._space
        stored = space.artifacts.put(bundle)
        try:
            artifact = space.metadata.get_artifact(stored.content_hash)
        except RunNotFoundError:  # not a step's output: the bundle was trained elsewhere
            artifact_id, step_id, found = stored.content_hash, space.step_id, []
        else:
            artifact_id, step_id = artifact.id, artifact.producer_step_id or space.step_id
            found = [] if step_id is None else space.metadata.upstream_datasets(step_id)
        run_id = space.metadata.get_step(step_id).run_id if step_id else space.run_id
        return self.register(
            name,
            artifact_id,
            content_hash=stored.content_hash,
            metrics=bundle.metrics if metrics is None else metrics,
            run_id=run_id,
            step_id=step_id,
            datasets=[d.ref for d in found] if datasets is None else datasets,
            features=features,
            tags=tags,
            description=description,
            actor=actor,
        )

    def load_bundle(self, name: str, version_or_alias: int | str | None = None) -> ModelBundle:
        """Load the ``ModelBundle`` of a version (see ``get``), checking its content hash."""
        from loopline.train import ModelBundle

        found = self.get(name, version_or_alias)
        space = self._space
        if not space.artifacts.exists(found.content_hash):
            raise RegistryError(
                f"The bundle of {found.ref} (content hash {found.content_hash}) is missing "
                f"from the artifact store {space.artifact_url}.",
                model=name,
                version=found.version,
            )
        data = space.artifacts.read_bytes(found.content_hash)
        return ModelBundle.from_bytes(data, expected_hash=found.content_hash)

    def get(self, name: str, version_or_alias: int | str | None = None) -> ModelVersion:
        """A version by ``NAME@3``, ``NAME@champion``, ``NAME@latest`` or (NAME, 3 or alias).

        With no version, the newest. An unknown model, version or alias raises
        ``ModelNotFoundError`` saying what exists.
        """
        if version_or_alias is None and "@" in name:
            name, _, version_or_alias = name.partition("@")
        store = self._store
        model = self._model(store, name)
        which = LATEST if version_or_alias is None else version_or_alias
        if isinstance(which, str) and which.strip().isdigit():
            which = int(which)
        if isinstance(which, bool) or not isinstance(which, (int, str)):
            raise ModelNotFoundError(
                f"A model version is a number or an alias such as 'champion'. Got {which!r}.",
                model=name,
            )
        if isinstance(which, str) and which != LATEST:
            if which not in model.aliases:
                known = ", ".join(model.aliases) or "none yet"
                raise ModelNotFoundError(
                    f"Model {name!r} has no alias {which!r}{_close(which, model.aliases)}; "
                    f"its aliases are: {known}. 'loopline model {name}' lists them.",
                    model=name,
                    alias=which,
                )
            which = model.aliases[which]
        number = model.latest if which == LATEST else which
        # A number no version can have (the database's integers are 64-bit) is not found.
        found = (
            store.model_version(name, int(number))
            if number is not None and 0 < int(number) < 2**62
            else None
        )
        if found is None:
            span = f"versions 1 to {model.latest}" if model.latest else "no versions yet"
            raise ModelNotFoundError(
                f"Model {name!r} has no version {which}; it has {span}. "
                f"'loopline model {name}' lists them.",
                model=name,
                version=which,
            )
        return found

    def versions(self, name: str) -> list[ModelVersion]:
        """The versions of ``name``, oldest first."""
        store = self._store
        self._model(store, name)
        return store.model_versions(name)

    def models(self) -> list[RegisteredModel]:
        """Every registered model, by name."""
        return self._store.registered_models()

    def tag(self, name: str, version: int | str, tags: Mapping[str, str]) -> ModelVersion:
        """Add tags to a version (replacing the same keys); return the version."""
        found = self.get(name, version)
        self._store.set_model_version_tags(
            name, found.version, {str(k): str(v) for k, v in tags.items()}
        )
        return self.get(name, found.version)

    # -- aliases -------------------------------------------------------------------------

    def aliases(self, name: str) -> dict[str, int]:
        """Alias -> version of ``name`` (``latest`` is not listed: it is computed)."""
        return dict(self._model(self._store, name).aliases)

    def champion(self, name: str, *, alias: str = "champion") -> ModelVersion | None:
        """The version ``alias`` points at, or None when there is no such model or alias."""
        model = self._store.registered_model(name)
        if model is None or alias not in model.aliases:
            return None
        return self.get(name, model.aliases[alias])

    def set_alias(
        self,
        name: str,
        alias: str,
        version: int | str,
        *,
        why: str | None,
        actor: str | None = None,
        metrics: Mapping[str, float | None] | None = None,
    ) -> ModelVersion:
        """Point ``alias`` at ``version`` (a number or another alias) and log the move.

        The audit entry records who (``actor``, by default the logged-in user), when,
        ``why`` and ``metrics`` (by default the version's own). Pointing an alias where it
        points already changes nothing and logs nothing.
        """
        _check_alias(alias)
        target = self.get(name, version)
        self._store.move_model_alias(
            name,
            alias,
            target.version,
            actor=actor or _who(),
            why=why,
            metrics=None if metrics is None else _metrics(metrics),
        )
        return self.get(name, target.version)

    def promote(
        self,
        name: str,
        version: int | str,
        *,
        alias: str = "champion",
        why: str | None,
        actor: str | None = None,
    ) -> ModelVersion:
        """Make ``version`` the ``alias`` (the champion by default); see ``set_alias``."""
        return self.set_alias(name, alias, version, why=why, actor=actor)

    def rollback(
        self,
        name: str,
        *,
        alias: str = "champion",
        why: str | None,
        actor: str | None = None,
    ) -> ModelVersion:
        """Move ``alias`` back to the version it pointed at before its last promotion.

        Rollbacks walk back through the alias's history: after promoting 1, 2 and 3, one
        rollback gives 2 and the next gives 1. With no earlier version, ``RegistryError``.
        """
        _check_alias(alias)
        model = self._model(self._store, name)
        if alias not in model.aliases:
            known = ", ".join(model.aliases) or "none yet"
            raise ModelNotFoundError(
                f"Model {name!r} has no alias {alias!r}{_close(alias, model.aliases)}, so there "
                f"is nothing to roll back; its aliases are: {known}.",
                model=name,
                alias=alias,
            )
        entry = self._store.rollback_model_alias(name, alias, actor=actor or _who(), why=why)
        if entry is None:
            raise RegistryError(
                f"Nothing to roll back: alias {alias!r} of model {name!r} has pointed at no "
                f"version before {model.aliases[alias]}. Promote another version instead, "
                f"with 'loopline promote {name} VERSION --alias {alias}'.",
                model=name,
                alias=alias,
            )
        return self.get(name, entry.to_version)

    def record_verdict(
        self,
        name: str,
        version: int | str,
        verdict: Verdict,
        *,
        alias: str = "champion",
        why: str | None = None,
        actor: str | None = None,
    ) -> ModelVersion:
        """Act on the gate's verdict on ``version``: promote it to ``alias``, or refuse it.

        A version that passed becomes ``blessed`` and ``alias`` moves to it; one that
        failed becomes ``refused`` and ``alias`` stays. Either way the audit log keeps the
        verdict with every check and its values.
        """
        _check_alias(alias)
        target = self.get(name, version)
        store, by = self._store, actor or _who()
        if verdict.passed:
            store.move_model_alias(
                name,
                alias,
                target.version,
                actor=by,
                why=why or _why(verdict),
                verdict=verdict.to_dict(),
                status="blessed",
            )
        else:
            store.refuse_model_version(
                name,
                target.version,
                alias=alias,
                actor=by,
                why=why or _why(verdict),
                verdict=verdict.to_dict(),
            )
        return self.get(name, target.version)

    def audit(self, name: str, *, alias: str | None = None) -> list[ModelAuditRecord]:
        """The audit log of ``name`` (or of one of its aliases), oldest first."""
        store = self._store
        self._model(store, name)
        return store.model_audit(name, alias=alias)

    # -- helpers -------------------------------------------------------------------------

    def _model(self, store: MetadataStore, name: str) -> RegisteredModel:
        found = store.registered_model(name)
        if found is None:
            names = [m.name for m in store.registered_models()]
            listed = (
                "'loopline models' lists the registered models."
                if names
                else "No model is registered yet."
            )
            raise ModelNotFoundError(
                f"No registered model is named {name!r}{_close(name, names)}. {listed}",
                model=name,
            )
        return found


def _why(verdict: Verdict) -> str:
    """The audit log's short reason for a verdict; the entry keeps every check in full."""
    if verdict.passed:
        return f"gate passed {len(verdict.checks)} check(s)"
    names = ", ".join(c.name for c in verdict.failures) or "the gate has no checks"
    return f"gate refused: {names}"


def _who() -> str:
    """The user an audit entry is written for: the login name, else ``unknown``."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no passwd entry and no LOGNAME/USER (some containers)
        return os.environ.get("USER") or "unknown"


def _close(word: str, choices: Sequence[str] | Mapping[str, object]) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _check_name(name: str) -> None:
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise RegistryError(
            f"A model name is 1 to 200 letters, digits, '_', '.' or '-', starting with a "
            f"letter or digit, such as 'flights-delay'. Got {name!r}."
        )


def _check_alias(alias: str) -> None:
    if alias == LATEST:
        raise RegistryError(
            f"The alias {LATEST!r} is reserved: it always names the newest version and "
            f"cannot be set. Choose another alias, such as 'champion' or 'challenger'."
        )
    if not isinstance(alias, str) or not _ALIAS.fullmatch(alias):
        raise RegistryError(
            f"An alias is 1 to 100 letters, digits, '_', '.' or '-', starting with a "
            f"letter, such as 'champion'. Got {alias!r}."
        )


def _metrics(metrics: Mapping[str, float | None]) -> dict[str, float | None]:
    clean: dict[str, float | None] = {}
    for key, value in metrics.items():
        if value is not None and (isinstance(value, bool) or not isinstance(value, SupportsFloat)):
            raise RegistryError(
                f"Metric {key!r} of a model version must be a number. Got {value!r}."
            )
        clean[str(key)] = None if value is None else float(value)
    return clean
