"""Loading pipelines, checking the DAG, and resolving parameters."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import pytest

from loopline import Files, step
from loopline.errors import PipelineDefinitionError, PipelineLoadError
from loopline.pipeline.dag import Pipeline, coerce, load_pipeline


def write(path: Path, source: str) -> Path:
    path.write_text(textwrap.dedent(source), encoding="utf-8")
    return path


@step
def raw(n: int = 3) -> list[int]:
    return list(range(n))


@step
def doubled(raw: list[int], factor: int = 2) -> list[int]:
    return [factor * x for x in raw]


@step
def total(doubled: list[int], raw: list[int]) -> int:
    return sum(doubled) + sum(raw)


def test_order_follows_dependencies_and_keeps_declaration_order() -> None:
    pipeline = Pipeline.from_steps([total, doubled, raw])
    assert pipeline.order == ["raw", "doubled", "total"]
    assert pipeline.upstream == {"raw": (), "doubled": ("raw",), "total": ("doubled", "raw")}
    assert pipeline.downstream(["raw"]) == {"doubled", "total"}
    assert list(pipeline.parameters("doubled")) == ["factor"]


def test_cycle_is_reported_with_its_path() -> None:
    @step
    def a(b: int) -> int:
        return b

    @step
    def b(a: int) -> int:
        return a

    with pytest.raises(PipelineDefinitionError, match=r"has a cycle: (a -> b -> a|b -> a -> b)"):
        Pipeline.from_steps([a, b])


def test_a_step_that_takes_its_own_output_is_a_cycle() -> None:
    @step
    def itself(itself: int) -> int:
        return itself

    with pytest.raises(PipelineDefinitionError, match="cycle"):
        Pipeline.from_steps([itself])


def test_missing_upstream_name_suggests_the_closest_step() -> None:
    @step
    def summary(doubld: list[int]) -> int:
        return len(doubld)

    pipeline = Pipeline.from_steps([raw, doubled, summary], name="p")
    with pytest.raises(PipelineDefinitionError) as info:
        pipeline.resolve_params()
    message = str(info.value)
    assert "Step 'summary' takes an argument 'doubld'" in message
    assert "Did you mean 'doubled'?" in message
    assert "-p summary.doubld=VALUE" in message
    assert info.value.step == "summary"


def test_duplicate_names_and_empty_pipelines_are_errors() -> None:
    other = step(name="raw")(lambda: 1)
    with pytest.raises(PipelineDefinitionError, match=r"Two steps .* named 'raw'"):
        Pipeline.from_steps([raw, other])
    with pytest.raises(PipelineDefinitionError, match="has no steps"):
        Pipeline.from_steps([])
    with pytest.raises(PipelineDefinitionError, match="not a step"):
        Pipeline.from_steps([raw, len])  # type: ignore[list-item]


def test_parameter_precedence_cli_over_config_over_default() -> None:
    pipeline = Pipeline.from_steps([raw, doubled, total])
    assert pipeline.resolve_params()["doubled"] == {"factor": 2}
    assert pipeline.resolve_params(config={"factor": 3})["doubled"] == {"factor": 3}
    assert pipeline.resolve_params(config={"factor": 3, "doubled.factor": 4})["doubled"] == {
        "factor": 4
    }
    resolved = pipeline.resolve_params(config={"doubled.factor": 4}, cli={"factor": "5"})
    assert resolved["doubled"] == {"factor": 5}
    resolved = pipeline.resolve_params(cli={"factor": "5", "doubled.factor": "6"})
    assert resolved["doubled"] == {"factor": 6}
    # Unknown config keys are someone else's pipeline's; unknown CLI keys are mistakes.
    assert pipeline.resolve_params(config={"unrelated": 1})["raw"] == {"n": 3}


def test_unknown_cli_parameter_suggests_the_closest() -> None:
    pipeline = Pipeline.from_steps([raw, doubled])
    with pytest.raises(PipelineDefinitionError, match=r"Did you mean 'doubled\.factor'"):
        pipeline.resolve_params(cli={"doubled.facter": "2"})


def test_bad_parameter_value_names_step_and_type() -> None:
    pipeline = Pipeline.from_steps([raw])
    with pytest.raises(PipelineDefinitionError, match="'n' parameter of step 'raw' must be int"):
        pipeline.resolve_params(cli={"n": "three"})


@pytest.mark.parametrize(
    ("value", "annotation", "expected"),
    [
        ("3", int, 3),
        (3.0, int, 3),
        ("0.25", float, 0.25),
        ("true", bool, True),
        ("off", bool, False),
        ("x", str, "x"),
        ("[1, 2]", list[int], [1, 2]),
        ('{"a": 1}', dict[str, int], {"a": 1}),
        ("7", int | None, 7),
        (None, int | None, None),
        ("plain", None, "plain"),
        ("12", None, 12),
    ],
)
def test_coerce(value: object, annotation: object, expected: object) -> None:
    assert coerce(value, annotation, step="s", param="p") == expected


def test_coerce_files_from_text_and_list(tmp_path: Path) -> None:
    assert coerce("a.csv,b.csv", Files, step="s", param="p") == Files("a.csv", "b.csv")
    assert coerce(["a.csv"], Files | None, step="s", param="p") == Files("a.csv")
    with pytest.raises(PipelineDefinitionError):
        coerce("1.5", int, step="s", param="p")
    with pytest.raises(PipelineDefinitionError):
        coerce("maybe", bool, step="s", param="p")


def test_load_from_file_collects_every_step(tmp_path: Path) -> None:
    path = write(
        tmp_path / "pipe.py",
        """
        from loopline import step

        @step
        def first() -> int:
            return 1

        @step
        def second(first: int) -> int:
            return first + 1

        alias = second  # the same step twice in the namespace counts once
        """,
    )
    pipeline = load_pipeline(path, reload=True)
    assert pipeline.name == "pipe"
    assert pipeline.order == ["first", "second"]
    assert pipeline.source == str(path.resolve())
    # Loaded once per process: the runner and the executor share the step objects.
    assert load_pipeline(str(path)) is pipeline


def test_load_module_reference_and_attribute(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    package = tmp_path / "dagpkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    write(
        package / "flows.py",
        """
        from loopline import step

        @step
        def one() -> int:
            return 1

        @step
        def two() -> int:
            return 2

        only_one = [one]
        """,
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        assert load_pipeline("dagpkg.flows", reload=True).order == ["one", "two"]
        assert load_pipeline("dagpkg.flows:only_one", reload=True).order == ["one"]
        with pytest.raises(PipelineLoadError, match="has no attribute 'only_on'"):
            load_pipeline("dagpkg.flows:only_on", reload=True)
    finally:
        for name in [m for m in sys.modules if m.startswith("dagpkg")]:
            del sys.modules[name]


def test_missing_file_and_module(tmp_path: Path) -> None:
    with pytest.raises(PipelineLoadError, match="No pipeline file"):
        load_pipeline(tmp_path / "nope.py", reload=True)
    with pytest.raises(PipelineLoadError, match="No pipeline file or module 'no_such_module_x'"):
        load_pipeline("no_such_module_x", reload=True)


def test_import_failure_names_file_line_and_error(tmp_path: Path) -> None:
    path = write(
        tmp_path / "broken.py",
        """
        from loopline import step

        VALUE = 1

        @step
        def first() -> int:
            return 1

        raise RuntimeError("no database configured")
        """,
    )
    with pytest.raises(PipelineLoadError) as info:
        load_pipeline(path, reload=True)
    message = str(info.value)
    assert "broken.py failed to import (line 10)" in message
    assert "RuntimeError: no database configured" in message
    assert isinstance(info.value, ImportError)


def test_syntax_error_names_the_line(tmp_path: Path) -> None:
    path = write(tmp_path / "syntax.py", "x = 1\ndef f(:\n    pass\n")
    with pytest.raises(PipelineLoadError, match=r"failed to import \(line 2\): SyntaxError"):
        load_pipeline(path, reload=True)


def test_file_without_steps(tmp_path: Path) -> None:
    path = write(tmp_path / "empty.py", "x = 1\n")
    with pytest.raises(PipelineDefinitionError, match="has no steps"):
        load_pipeline(path, reload=True)


def test_annotations_imported_only_for_type_checking_do_not_break_coercion(
    tmp_path: Path,
) -> None:
    path = write(
        tmp_path / "hinted.py",
        """
        from __future__ import annotations
        from typing import TYPE_CHECKING
        from loopline import step

        if TYPE_CHECKING:
            from decimal import Decimal

        @step
        def value(n: int = 1, d: Decimal | None = None) -> int:
            return n
        """,
    )
    pipeline = load_pipeline(path, reload=True)
    assert pipeline.resolve_params(cli={"n": "4"})["value"] == {"n": 4, "d": None}
