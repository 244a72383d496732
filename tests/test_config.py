"""Settings: loopline.toml found upward from the working directory, LOOPLINE_* on top.

Every test runs with no LOOPLINE_* variable set (see ``clean_environment``) and in an
empty working directory under ``tmp_path``, so nothing from the machine leaks in.
"""

from __future__ import annotations

import os
import re
import textwrap
import tomllib
from dataclasses import fields, replace
from pathlib import Path
from typing import Any

import pytest

from loopline.config import CONFIG_FILE, Settings, find_config, render_default_config
from loopline.errors import ConfigError, LooplineError

SETTINGS = sorted(f.name for f in fields(Settings) if f.name not in {"config_path", "params"})


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("LOOPLINE_"):
            monkeypatch.delenv(name)


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty project folder that is also the working directory."""
    root = tmp_path.resolve() / "project"
    root.mkdir()
    monkeypatch.chdir(root)
    return root


def write_config(folder: Path, text: str) -> Path:
    path = folder / CONFIG_FILE
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


# -- defaults -----------------------------------------------------------------------------


def test_without_config_everything_lives_in_dot_loopline(project: Path) -> None:
    settings = Settings.load()

    home = project / ".loopline"
    assert settings == Settings(
        home=home,
        metadata_url=f"sqlite:///{home / 'metadata.db'}",
        artifact_url=str(home / "artifacts"),
        engine="local",
        executor="threads",
        max_workers=4,
        online_url=None,
        stream_url=None,
        config_path=None,
        params={},
    )


def test_loading_creates_no_files(project: Path) -> None:
    Settings.load()

    assert list(project.iterdir()) == []


def test_start_folder_replaces_the_working_directory(project: Path, tmp_path: Path) -> None:
    elsewhere = tmp_path.resolve() / "elsewhere"
    elsewhere.mkdir()

    settings = Settings.load(start=elsewhere)

    assert settings.home == elsewhere / ".loopline"


# -- finding the file ---------------------------------------------------------------------


def test_config_is_found_from_a_nested_working_directory(
    project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write_config(
        project,
        """
        [loopline]
        home = "state"
        executor = "processes"
        """,
    )
    nested = project / "src" / "pipelines" / "daily"
    nested.mkdir(parents=True)
    monkeypatch.chdir(nested)

    settings = Settings.load()

    assert settings.config_path == path
    assert settings.executor == "processes"
    # Relative paths are relative to the file, not to the working directory.
    assert settings.home == project / "state"
    assert settings.metadata_url == f"sqlite:///{project / 'state' / 'metadata.db'}"
    assert settings.artifact_url == str(project / "state" / "artifacts")


def test_nearest_config_wins(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_config(project, '[loopline]\nexecutor = "threads"\n')
    inner = project / "inner"
    inner.mkdir()
    inner_path = write_config(inner, '[loopline]\nexecutor = "processes"\n')
    (inner / "deeper").mkdir()
    monkeypatch.chdir(inner / "deeper")

    assert find_config(Path.cwd()) == inner_path
    assert Settings.load().executor == "processes"


def test_search_false_ignores_config_files(project: Path) -> None:
    write_config(project, '[loopline]\nexecutor = "processes"\n')

    settings = Settings.load(search=False)

    assert settings.config_path is None
    assert settings.executor == "threads"


def test_loopline_config_variable_names_the_file(
    project: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_config(project, '[loopline]\nexecutor = "threads"\n')
    other = tmp_path.resolve() / "other"
    other.mkdir()
    path = write_config(other, '[loopline]\nexecutor = "processes"\nhome = "state"\n')
    monkeypatch.setenv("LOOPLINE_CONFIG", str(path))

    settings = Settings.load()

    assert settings.config_path == path
    assert settings.executor == "processes"
    assert settings.home == other / "state"


def test_relative_loopline_config_gives_absolute_paths(
    project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (project / "conf").mkdir()
    path = write_config(project / "conf", '[loopline]\nhome = "state"\n')
    monkeypatch.setenv("LOOPLINE_CONFIG", f"conf/{CONFIG_FILE}")

    settings = Settings.load()

    assert settings.config_path == path
    assert settings.home == project / "conf" / "state"
    assert settings.metadata_url == f"sqlite:///{project / 'conf' / 'state' / 'metadata.db'}"


def test_missing_loopline_config_file_is_a_config_error(
    project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    missing = project / "nope.toml"
    monkeypatch.setenv("LOOPLINE_CONFIG", str(missing))

    with pytest.raises(ConfigError, match="Cannot read config file") as info:
        Settings.load()

    assert str(missing) in str(info.value)
    assert info.value.path == missing  # type: ignore[attr-defined]


# -- URLs and paths -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("written", "expected"),
    [
        pytest.param("sqlite:///meta/db.sqlite", "sqlite:///{root}/meta/db.sqlite", id="relative"),
        pytest.param("sqlite:////abs/db.sqlite", "sqlite:////abs/db.sqlite", id="absolute"),
        pytest.param("sqlite:///:memory:", "sqlite:///:memory:", id="in-memory"),
        pytest.param(
            "postgresql+psycopg://u:p@db:5432/ml", "postgresql+psycopg://u:p@db:5432/ml", id="pg"
        ),
    ],
)
def test_metadata_url_relative_sqlite_paths_follow_the_file(
    project: Path, written: str, expected: str
) -> None:
    write_config(project, f'[loopline]\nmetadata_url = "{written}"\n')

    assert Settings.load().metadata_url == expected.format(root=project)


@pytest.mark.parametrize(
    ("written", "expected"),
    [
        pytest.param("blobs", "{root}/blobs", id="relative"),
        pytest.param("/srv/blobs", "/srv/blobs", id="absolute"),
        pytest.param("s3://bucket/loopline", "s3://bucket/loopline", id="s3"),
        pytest.param("memory://blobs", "memory://blobs", id="memory"),
    ],
)
def test_artifact_url_relative_paths_follow_the_file(
    project: Path, written: str, expected: str
) -> None:
    write_config(project, f'[loopline]\nartifact_url = "{written}"\n')

    assert Settings.load().artifact_url == expected.format(root=project)


def test_params_table_is_flattened_to_step_dot_name_keys(project: Path) -> None:
    write_config(
        project,
        """
        [params]
        seed = 7
        "train.learning_rate" = 0.05

        [params.model]
        num_boost_round = 300
        features = ["a", "b"]
        """,
    )

    assert Settings.load().params == {
        "seed": 7,
        "train.learning_rate": 0.05,
        "model.num_boost_round": 300,
        "model.features": ["a", "b"],
    }


# -- environment --------------------------------------------------------------------------

FILE = """
[loopline]
metadata_url = "sqlite:///file.db"
artifact_url = "file-artifacts"
executor = "threads"
max_workers = 2
online_url = "sqlite:///online.db"
"""


@pytest.mark.parametrize(
    ("variable", "value", "attribute", "expected"),
    [
        ("LOOPLINE_METADATA_URL", "postgresql+psycopg://u@h/db", "metadata_url", None),
        ("LOOPLINE_ARTIFACT_URL", "s3://bucket/x", "artifact_url", None),
        ("LOOPLINE_EXECUTOR", "processes", "executor", None),
        ("LOOPLINE_MAX_WORKERS", "8", "max_workers", 8),
        ("LOOPLINE_ONLINE_URL", "redis://localhost:6379/0", "online_url", None),
        ("LOOPLINE_STREAM_URL", "nats://localhost:4222", "stream_url", None),
        ("LOOPLINE_ENGINE", "local", "engine", None),
        ("LOOPLINE_ENGINE", "ray://head:10001", "engine", None),
    ],
)
def test_environment_variable_overrides_the_file(
    project: Path,
    monkeypatch: pytest.MonkeyPatch,
    variable: str,
    value: str,
    attribute: str,
    expected: Any,
) -> None:
    write_config(project, FILE)
    from_file = Settings.load()
    monkeypatch.setenv(variable, value)

    settings = Settings.load()

    assert getattr(settings, attribute) == (value if expected is None else expected)
    # Everything else still comes from the file.
    assert replace(settings, **{attribute: getattr(from_file, attribute)}) == from_file


def test_loopline_home_variable_moves_the_default_state(
    project: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = tmp_path.resolve() / "state"
    monkeypatch.setenv("LOOPLINE_HOME", str(home))

    settings = Settings.load()

    assert settings.home == home
    assert settings.metadata_url == f"sqlite:///{home / 'metadata.db'}"
    assert settings.artifact_url == str(home / "artifacts")


def test_empty_environment_variable_is_ignored(
    project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_config(project, FILE)
    monkeypatch.setenv("LOOPLINE_EXECUTOR", "")
    monkeypatch.setenv("LOOPLINE_MAX_WORKERS", "")

    settings = Settings.load()

    assert (settings.executor, settings.max_workers) == ("threads", 2)


def test_env_argument_replaces_the_process_environment(
    project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LOOPLINE_EXECUTOR", "processes")

    assert Settings.load(env={}).executor == "threads"
    assert Settings.load(env={"LOOPLINE_MAX_WORKERS": "3"}).max_workers == 3


def test_explicit_overrides_beat_the_environment(
    project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_config(project, FILE)
    monkeypatch.setenv("LOOPLINE_EXECUTOR", "processes")
    monkeypatch.setenv("LOOPLINE_MAX_WORKERS", "8")

    settings = Settings.load(executor="threads", max_workers=None)

    assert settings.executor == "threads"
    assert settings.max_workers == 8  # None means "not given", so the variable stands


def test_unrelated_loopline_variables_are_ignored(
    project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LOOPLINE_REQUIRE_SERVICES", "1")
    monkeypatch.setenv("LOOPLINE_PARAMS", "not a setting")

    assert Settings.load() == Settings.load(env={})


# -- the init template --------------------------------------------------------------------


def test_init_template_parses_back_to_the_defaults(project: Path) -> None:
    path = write_config(project, render_default_config())

    from_template = Settings.load()

    assert from_template.config_path == path
    assert replace(from_template, config_path=None) == Settings.load(search=False)


def test_init_template_shows_every_setting(project: Path) -> None:
    text = render_default_config()
    data = tomllib.loads(text)

    assert set(data) == {"loopline", "params"}
    written = set(data["loopline"])
    commented = set(re.findall(r"^# (\w+) = ", text, flags=re.MULTILINE)) & set(SETTINGS)
    assert written | commented == set(SETTINGS)


@pytest.mark.parametrize(
    "backend",
    [
        "sqlite:///",
        "postgresql+psycopg://",
        "loopline[postgres]",
        "s3://",
        "gs://",
        "redis://",
        "nats://",
        "kafka://",
        "LOOPLINE_",
    ],
)
def test_init_template_shows_every_backend_url(backend: str) -> None:
    assert backend in render_default_config()


def test_init_template_explains_every_active_setting_with_a_comment() -> None:
    lines = [line for line in render_default_config().splitlines() if line.strip()]
    settings = [i for i, line in enumerate(lines) if re.match(r"^\w+ = ", line)]

    assert len(settings) >= 6
    for index in settings:
        assert lines[index - 1].startswith("#"), f"no comment above {lines[index]!r}"


def test_init_template_commented_backends_parse_when_uncommented(project: Path) -> None:
    text = re.sub(
        r"^# ((?:online|stream)_url = \S+).*$", r"\1", render_default_config(), flags=re.M
    )
    write_config(project, text)

    settings = Settings.load()

    assert settings.online_url == "sqlite:///.loopline/online.db"
    assert settings.stream_url == "file://.loopline/streams"


# -- errors -------------------------------------------------------------------------------


def test_invalid_toml_names_the_file_and_line(project: Path) -> None:
    path = write_config(project, '[loopline]\nexecutor = "threads"\nmax_workers = \n')

    with pytest.raises(ConfigError) as info:
        Settings.load()

    error = info.value
    assert isinstance(error, ValueError)
    assert isinstance(error, LooplineError)
    assert error.path == path  # type: ignore[attr-defined]
    assert f"{path} is not valid TOML" in str(error)
    assert "line 3" in str(error)


def test_unknown_setting_is_named_with_the_valid_ones(project: Path) -> None:
    path = write_config(project, '[loopline]\nexecuter = "processes"\n')

    with pytest.raises(ConfigError) as info:
        Settings.load()

    message = str(info.value)
    assert f"Unknown setting 'executer' in [loopline] of {path} (did you mean 'executor'?)" in (
        message
    )
    assert f"Valid settings: {', '.join(SETTINGS)}." in message
    assert info.value.path == path  # type: ignore[attr-defined]


def test_setting_outside_the_loopline_table_is_an_error(project: Path) -> None:
    path = write_config(project, 'metadata_url = "sqlite:///x.db"\n[loopline]\n')

    with pytest.raises(ConfigError) as info:
        Settings.load()

    message = str(info.value)
    assert f"Unknown table or key 'metadata_url' at the top of {path}" in message
    assert "'metadata_url' is a setting: move it under [loopline]." in message


def test_unknown_top_level_table_is_an_error(project: Path) -> None:
    write_config(project, "[paramz]\nn = 3\n")

    with pytest.raises(ConfigError, match=r"Unknown table or key 'paramz'.*under \[params\]"):
        Settings.load()


def test_overrides_are_validated(project: Path) -> None:
    settings = Settings.load()

    assert settings.with_overrides(executor="processes").executor == "processes"
    assert settings.with_overrides(engine="ray").engine == "ray"
    with pytest.raises(ConfigError, match="'engine' setting must be 'local', 'ray'"):
        settings.with_overrides(engine="dask")


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("max_workers = 2.5", "The 'max_workers' setting in {path} must be an integer"),
        ("max_workers = true", "The 'max_workers' setting in {path} must be an integer"),
        ('max_workers = "four"', "The 'max_workers' setting in {path} must be an integer"),
        ("max_workers = 0", "The 'max_workers' setting must be a positive integer. Got 0."),
        ("max_workers = -3", "The 'max_workers' setting must be a positive integer. Got -3."),
        (
            "metadata_url = 5",
            "The 'metadata_url' setting in {path} must be a string such as "
            '"sqlite:///.loopline/metadata.db". Got 5.',
        ),
        ("online_url = 5", "The 'online_url' setting in {path} must be a string"),
        ('home = ["a"]', "The 'home' setting in {path} must be a string"),
        ('executor = "fork"', "The 'executor' setting must be one of threads, processes."),
    ],
)
def test_wrong_value_is_a_config_error(project: Path, line: str, expected: str) -> None:
    path = write_config(project, f"[loopline]\n{line}\n")

    with pytest.raises(ConfigError) as info:
        Settings.load()

    assert expected.format(path=path) in str(info.value)
    assert "Got " in str(info.value)


def test_bad_number_from_the_environment_is_a_config_error(
    project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LOOPLINE_MAX_WORKERS", "many")

    with pytest.raises(ConfigError, match="'max_workers' setting must be a positive integer"):
        Settings.load()


@pytest.mark.parametrize(
    ("text", "table"),
    [("loopline = 3\n", "[loopline]"), ("params = 3\n", "[params]")],
)
def test_section_that_is_not_a_table_is_a_config_error(
    project: Path, text: str, table: str
) -> None:
    path = write_config(project, text)

    with pytest.raises(ConfigError, match=re.escape(f"{table} in {path} must be a table")):
        Settings.load()


ENGINE_ERROR = (
    "The 'engine' setting must be 'local', 'ray' (a Ray cluster started on this machine) "
    "or 'ray://host:port' (join a running cluster, such as 'ray://head:10001'). Got {!r}."
)


@pytest.mark.parametrize("engine", ["local", "ray", "ray://head:10001", "ray://10.0.0.7:6379"])
def test_engine_is_local_ray_or_a_ray_address(project: Path, engine: str) -> None:
    write_config(project, f'[loopline]\nengine = "{engine}"\n')

    assert Settings.load().engine == engine


@pytest.mark.parametrize(
    "engine",
    [
        "ray:/x",
        "ray://",
        "ray://head",
        "ray://head:port",
        "ray://:10001",
        "ray://h:0",
        "ray://h:10001/x",
        "Ray",
        "dask",
        "",
    ],
)
def test_any_other_engine_is_a_config_error(project: Path, engine: str) -> None:
    write_config(project, f'[loopline]\nengine = "{engine}"\n')

    with pytest.raises(ConfigError) as info:
        Settings.load()

    assert str(info.value) == ENGINE_ERROR.format(engine)


def test_engine_from_the_environment_is_checked_too(
    project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LOOPLINE_ENGINE", "ray:/x")

    with pytest.raises(ConfigError, match=re.escape("Got 'ray:/x'")):
        Settings.load()
