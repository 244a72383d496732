"""Settings: ``loopline.toml`` (found from the working directory upward) + ``LOOPLINE_*``.

Precedence, highest first: an explicit override passed by the caller (the CLI), a
``LOOPLINE_*`` environment variable, the config file, the built-in default. With no
config at all, everything lives in ``.loopline/`` under the working directory.

Examples
--------
>>> s = Settings.load(start=".", env={"LOOPLINE_EXECUTOR": "processes"}, search=False)
>>> s.executor, s.metadata_url.startswith("sqlite:///")
('processes', True)
"""

from __future__ import annotations

import difflib
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from loopline.errors import ConfigError

__all__ = ["CONFIG_FILE", "Settings", "find_config", "render_default_config"]

CONFIG_FILE = "loopline.toml"

_EXECUTORS = ("threads", "processes")


@dataclass(frozen=True)
class Settings:
    """Where loopline keeps its state, and how it runs steps."""

    home: Path
    """Folder for embedded state (SQLite database, artifacts)."""
    metadata_url: str
    """SQLAlchemy URL of the metadata database (runs, steps, artifacts, lineage)."""
    artifact_url: str
    """fsspec URL or path of the content-addressed artifact store."""
    engine: str = "local"
    """Where steps run: ``local`` (this process, with ``executor``), ``ray`` (a Ray cluster
    started on this machine) or ``ray://host:port`` (a running Ray cluster, joined)."""
    executor: str = "threads"
    max_workers: int = 4
    """How many steps may run at once: the pool's size, or the CPUs of a local Ray cluster."""
    online_url: str | None = None
    """Online feature store URL (used by the features layer)."""
    stream_url: str | None = None
    """Stream log URL (used by the streaming layer)."""
    config_path: Path | None = None
    params: dict[str, Any] = field(default_factory=dict)
    """Pipeline parameters from the ``[params]`` table: ``name`` or ``step.name`` keys."""

    @classmethod
    def load(
        cls,
        *,
        start: str | os.PathLike[str] = ".",
        env: Mapping[str, str] | None = None,
        search: bool = True,
        **overrides: Any,
    ) -> Settings:
        """Read the config file (searching upward from ``start``) and the environment."""
        env = os.environ if env is None else env
        start_path = Path(start).resolve()
        explicit = env.get("LOOPLINE_CONFIG")
        if explicit:
            config_path: Path | None = Path(explicit).expanduser().resolve()
        else:
            config_path = find_config(start_path) if search else None
        data: dict[str, Any] = {}
        if config_path is not None:
            data = _read_toml(config_path)
        base = config_path.parent if config_path is not None else start_path
        for key in data:
            if key not in ("loopline", "params"):
                names = {f.name for f in fields(cls)} - {"config_path", "params"}
                hint = (
                    f"{key!r} is a setting: move it under [loopline]"
                    if key in names
                    else f"Settings go under [loopline]{_did_you_mean(key, names)}, "
                    f"pipeline parameters under [params]"
                )
                raise ConfigError(
                    f"Unknown table or key {key!r} at the top of {config_path}. {hint}.",
                    path=config_path,
                )
        section = data.get("loopline", {})
        if not isinstance(section, dict):
            raise ConfigError(f"[loopline] in {config_path} must be a table.", path=config_path)
        known = {f.name for f in fields(cls)} - {"config_path", "params"}
        for key in section:
            if key not in known:
                raise ConfigError(
                    f"Unknown setting {key!r} in [loopline] of {config_path}"
                    f"{_did_you_mean(key, known)}. Valid settings: {', '.join(sorted(known))}.",
                    path=config_path,
                )
            _check_type(key, section[key], config_path)
        raw: dict[str, Any] = dict(section)
        for name in known:
            value = env.get(f"LOOPLINE_{name.upper()}")
            if value is not None and value != "":
                raw[name] = value
        raw.update({k: v for k, v in overrides.items() if v is not None})

        home = _resolve(base, str(raw.get("home", ".loopline")))
        metadata_url = str(raw.get("metadata_url", f"sqlite:///{home / 'metadata.db'}"))
        if metadata_url.startswith("sqlite:///") and not metadata_url.startswith("sqlite:////"):
            rel = metadata_url.removeprefix("sqlite:///")
            if rel and rel != ":memory:":
                metadata_url = f"sqlite:///{_resolve(base, rel)}"
        artifact_url = str(raw.get("artifact_url", home / "artifacts"))
        if "://" not in artifact_url:
            artifact_url = str(_resolve(base, artifact_url))
        params = data.get("params", {})
        if not isinstance(params, dict):
            raise ConfigError(f"[params] in {config_path} must be a table.", path=config_path)
        settings = cls(
            home=home,
            metadata_url=metadata_url,
            artifact_url=artifact_url,
            engine=str(raw.get("engine", "local")),
            executor=str(raw.get("executor", "threads")),
            max_workers=_positive_int(raw.get("max_workers", 4), "max_workers"),
            online_url=raw.get("online_url"),
            stream_url=raw.get("stream_url"),
            config_path=config_path,
            params=_flatten(params),
        )
        settings.validate()
        return settings

    def validate(self) -> None:
        _check_engine(self.engine)
        if self.executor not in _EXECUTORS:
            raise ConfigError(
                f"The 'executor' setting must be one of {', '.join(_EXECUTORS)}. "
                f"Got {self.executor!r}."
            )

    def with_overrides(self, **changes: Any) -> Settings:
        settings = replace(self, **{k: v for k, v in changes.items() if v is not None})
        settings.validate()
        return settings


def find_config(start: Path) -> Path | None:
    """Return the nearest ``loopline.toml`` in ``start`` or a parent folder."""
    for folder in (start, *start.parents):
        candidate = folder / CONFIG_FILE
        if candidate.is_file():
            return candidate
    return None


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as handle:
            return tomllib.load(handle)
    except OSError as exc:
        raise ConfigError(f"Cannot read config file {path}: {exc}.", path=path) from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path} is not valid TOML: {exc}.", path=path) from exc


def _resolve(base: Path, value: str) -> Path:
    path = Path(value).expanduser()
    return path if path.is_absolute() else base / path


_EXAMPLES = {
    "home": '".loopline"',
    "metadata_url": '"sqlite:///.loopline/metadata.db"',
    "artifact_url": '".loopline/artifacts"',
    "engine": '"local"',
    "executor": '"threads"',
    "max_workers": "4",
    "online_url": '"redis://localhost:6379/0"',
    "stream_url": '"nats://localhost:4222"',
}


def _check_type(name: str, value: Any, path: Path | None) -> None:
    # TOML has real types; str() or int() on the wrong one would hide the mistake.
    expected = int if name == "max_workers" else str
    example = _EXAMPLES.get(name, '"..."')
    if isinstance(value, bool) or not isinstance(value, expected):
        kind = "an integer" if expected is int else "a string"
        raise ConfigError(
            f"The {name!r} setting in {path} must be {kind} such as {example}. Got {value!r}.",
            path=path,
        )


def _check_engine(engine: str) -> None:
    if engine in ("local", "ray"):
        return
    host, _, port = engine.removeprefix("ray://").rpartition(":")
    address = engine.startswith("ray://") and bool(host) and "/" not in host
    if address and port.isdigit() and 0 < int(port) < 65536:
        return
    raise ConfigError(
        f"The 'engine' setting must be 'local', 'ray' (a Ray cluster started on this "
        f"machine) or 'ray://host:port' (join a running cluster, such as "
        f"'ray://head:10001'). Got {engine!r}."
    )


def _did_you_mean(name: str, choices: set[str]) -> str:
    close = difflib.get_close_matches(name, sorted(choices), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _positive_int(value: Any, name: str) -> int:
    try:
        number = int(value)
    except (TypeError, ValueError):
        number = 0
    if number < 1:
        raise ConfigError(f"The {name!r} setting must be a positive integer. Got {value!r}.")
    return number


def _flatten(table: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in table.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(_flatten(value, prefix=f"{name}."))
        else:
            out[name] = value
    return out


def render_default_config() -> str:
    """The commented ``loopline.toml`` that ``loopline init`` writes."""
    return _DEFAULT_CONFIG


_DEFAULT_CONFIG = """\
# loopline configuration. Every setting can be overridden by a LOOPLINE_<NAME>
# environment variable (for example LOOPLINE_METADATA_URL). Relative paths are
# relative to this file.

[loopline]
# Folder for embedded state: the SQLite metadata database and the artifact folder.
home = ".loopline"

# Metadata database (runs, steps, artifacts, lineage, params, metrics, tags).
#   embedded:   sqlite:///.loopline/metadata.db
#   PostgreSQL: postgresql+psycopg://user:password@host:5432/dbname
#               (pip install 'loopline[postgres]')
metadata_url = "sqlite:///.loopline/metadata.db"

# Artifact store: a local folder or any fsspec URL, content-addressed by sha256.
#   local:  .loopline/artifacts
#   S3:     s3://bucket/loopline   (pip install s3fs)
#   GCS:    gs://bucket/loopline   (pip install gcsfs)
artifact_url = ".loopline/artifacts"

# Compute engine: where steps run.
#   "local":            this machine, with the executor below
#   "ray":              a Ray cluster started on this machine for the run
#                       (pip install 'loopline[ray]'; max_workers is its CPU count)
#   "ray://head:10001": join a running Ray cluster through its client server
engine = "local"

# Local executor: "threads" (default) or "processes" (for CPU-bound pure-Python steps).
executor = "threads"
# How many independent steps may run at once.
max_workers = 4

# Backends of later layers, shown here so that one file describes a deployment:
# online_url = "sqlite:///.loopline/online.db"    # or redis://localhost:6379/0
# stream_url = "file://.loopline/streams"         # or nats://localhost:4222,
#                                                 #    redis://localhost:6379/1,
#                                                 #    kafka://localhost:9092

# Pipeline parameters: "name = value" applies to every step with that parameter,
# "step.name = value" to one step. The command line (-p step.name=value) wins.
[params]
# model.num_rounds = 300
"""
