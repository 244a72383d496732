"""Pipelines: the DAG formed by steps whose arguments name other steps.

A pipeline is loaded from a Python file or an importable module. Every ``@step`` in its
namespace is part of it (or, when the module defines ``pipeline``, the steps listed
there). An argument named after another step receives that step's output; every other
argument is a parameter.

Examples
--------
>>> from loopline.pipeline.step import step
>>> @step
... def numbers(n: int = 3) -> list[int]:
...     return list(range(n))
>>> @step
... def total(numbers: list[int]) -> int:
...     return sum(numbers)
>>> p = Pipeline.from_steps([total, numbers], name="demo")
>>> p.order, p.upstream["total"]
(['numbers', 'total'], ('numbers',))
>>> p.resolve_params(cli={"n": "5"})["numbers"]
{'n': 5}
"""

from __future__ import annotations

import difflib
import graphlib
import hashlib
import importlib
import importlib.util
import inspect
import os
import sys
import threading
import traceback
import types
import typing
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from loopline.data.files import Files
from loopline.errors import PipelineDefinitionError, PipelineLoadError
from loopline.pipeline.step import Step
from loopline.types import Fingerprinted

__all__ = ["Pipeline", "import_source", "load_pipeline", "register_pipeline"]

_LOADED: dict[str, Pipeline] = {}
_LOAD_LOCK = threading.Lock()


@dataclass(frozen=True, eq=False)
class Pipeline:
    """Steps in dependency order, with each step's upstream steps and parameters."""

    name: str
    source: str
    """What ``load_pipeline`` was given: a file path or ``package.module[:attr]``."""
    steps: dict[str, Step]
    upstream: dict[str, tuple[str, ...]]
    order: list[str] = field(default_factory=list)

    @classmethod
    def from_steps(
        cls, steps: Iterable[Step], *, name: str = "pipeline", source: str | None = None
    ) -> Pipeline:
        """Build and check the DAG; raise ``PipelineDefinitionError`` on a cycle or clash.

        ``source`` defaults to a unique ``<memory:...>`` tag: such a pipeline runs in
        this process only (threads), since no other process can load it.
        """
        if source is None:
            source = f"<memory:{name}:{uuid.uuid4().hex[:8]}>"
        by_name: dict[str, Step] = {}
        for s in steps:
            if not isinstance(s, Step):
                raise PipelineDefinitionError(
                    f"Pipeline {name!r} lists {s!r}, which is not a step. Decorate the "
                    f"function with @loopline.step.",
                    path=source,
                )
            other = by_name.get(s.name)
            if other is not None and other is not s:
                raise PipelineDefinitionError(
                    f"Two steps of pipeline {name!r} are named {s.name!r}. Rename one, or "
                    f"pass name=... to @step.",
                    step=s.name,
                    path=source,
                )
            by_name[s.name] = s
        if not by_name:
            raise PipelineDefinitionError(
                f"Pipeline {name!r} ({source}) has no steps. Decorate functions with "
                f"@loopline.step.",
                path=source,
            )
        upstream = {
            n: tuple(arg for arg in s.arguments if arg in by_name) for n, s in by_name.items()
        }
        # Among steps ready together, keep the order they were declared in.
        position = {n: i for i, n in enumerate(by_name)}
        try:
            order = _stable_topological(upstream, position)
        except graphlib.CycleError as exc:
            cycle = list(exc.args[1])
            # graphlib reports the cycle backwards (each node depends on the next).
            path = " -> ".join(reversed(cycle))
            raise PipelineDefinitionError(
                f"Pipeline {name!r} has a cycle: {path}. A step's output cannot feed back "
                f"into a step it depends on; rename the argument or split the step.",
                step=cycle[0],
                path=source,
            ) from None
        return cls(
            name=name,
            source=source,
            steps={n: by_name[n] for n in order},
            upstream=upstream,
            order=order,
        )

    def parameters(self, name: str) -> dict[str, inspect.Parameter]:
        """The arguments of step ``name`` that are parameters, not upstream outputs."""
        upstream = set(self.upstream[name])
        return {
            arg: p
            for arg, p in self.steps[name].signature.parameters.items()
            if arg not in upstream
        }

    def downstream(self, names: Iterable[str]) -> set[str]:
        """Every step that depends, directly or not, on any of ``names``."""
        found: set[str] = set()
        frontier = set(names)
        while frontier:
            nxt = {n for n, ups in self.upstream.items() if frontier & set(ups)} - found
            found |= nxt
            frontier = nxt
        return found

    def resolve_params(
        self,
        *,
        config: Mapping[str, Any] | None = None,
        cli: Mapping[str, Any] | None = None,
    ) -> dict[str, dict[str, Any]]:
        """Every step's parameter values: CLI over config over the function's default.

        Keys are ``param`` (every step with that parameter) or ``step.param``. An unknown
        command-line key is an error; unknown config keys are ignored, since one
        ``loopline.toml`` may serve several pipelines.
        """
        config = dict(config or {})
        cli = dict(cli or {})
        self._check_cli_keys(cli)
        resolved: dict[str, dict[str, Any]] = {}
        for name in self.order:
            hints = _type_hints(self.steps[name])
            values: dict[str, Any] = {}
            for arg, param in self.parameters(name).items():
                if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
                    continue
                for source in (cli, config):
                    if f"{name}.{arg}" in source:
                        raw = source[f"{name}.{arg}"]
                        break
                    if arg in source:
                        raw = source[arg]
                        break
                else:
                    if param.default is inspect.Parameter.empty:
                        raise self._missing_argument(name, arg)
                    values[arg] = param.default
                    continue
                values[arg] = coerce(raw, hints.get(arg), step=name, param=arg)
            resolved[name] = values
        return resolved

    def _check_cli_keys(self, cli: Mapping[str, Any]) -> None:
        known: set[str] = set()
        for name in self.order:
            for arg in self.parameters(name):
                known |= {arg, f"{name}.{arg}"}
        for key in cli:
            if key not in known:
                hint = _did_you_mean(key, known)
                raise PipelineDefinitionError(
                    f"No step of pipeline {self.name!r} has a parameter {key!r}.{hint} "
                    f"Parameters: {', '.join(sorted(k for k in known if '.' in k)) or 'none'}.",
                    path=self.source,
                )

    def _missing_argument(self, name: str, arg: str) -> PipelineDefinitionError:
        hint = _did_you_mean(arg, self.steps)
        return PipelineDefinitionError(
            f"Step {name!r} takes an argument {arg!r} that is neither a step of pipeline "
            f"{self.name!r} nor a parameter with a value.{hint} Give it a default, set it "
            f"in loopline.toml [params], or pass '-p {name}.{arg}=VALUE'.",
            step=name,
            path=self.source,
        )


def _stable_topological(
    upstream: Mapping[str, Sequence[str]], position: Mapping[str, int]
) -> list[str]:
    sorter = graphlib.TopologicalSorter(upstream)
    sorter.prepare()
    order: list[str] = []
    while sorter.is_active():
        ready = sorted(sorter.get_ready(), key=position.__getitem__)
        order.extend(ready)
        sorter.done(*ready)
    return order


def _did_you_mean(word: str, choices: Iterable[str]) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1)
    return f" Did you mean {close[0]!r}?" if close else ""


def _type_hints(s: Step) -> dict[str, Any]:
    """Each parameter's annotation, resolved one by one: an annotation that names
    something imported only for type checking is skipped, not fatal."""
    hints: dict[str, Any] = {}
    namespace = getattr(s.fn, "__globals__", {})
    for name, param in s.signature.parameters.items():
        annotation = param.annotation
        if annotation is inspect.Parameter.empty:
            continue
        if isinstance(annotation, str):
            try:
                annotation = eval(annotation, dict(namespace))
            except Exception:
                continue
        hints[name] = annotation
    return hints


def coerce(value: Any, annotation: Any, *, step: str, param: str) -> Any:
    """Convert a parameter value (often a command-line string) to the annotated type.

    Examples
    --------
    >>> coerce("3", int, step="s", param="n"), coerce("0.5", float | None, step="s", param="x")
    (3, 0.5)
    >>> coerce("[1, 2]", list[int], step="s", param="xs")
    [1, 2]
    """
    target = _unwrap_optional(annotation)
    try:
        if value is None:
            return None
        if target is Files:
            if isinstance(value, Files):
                return value
            return Files(*(value if isinstance(value, list) else str(value).split(",")))
        if target is bool:
            return _to_bool(value)
        if target in (int, float, str, Path):
            if target is int and isinstance(value, float) and not value.is_integer():
                raise ValueError(value)
            return target(value)
        if isinstance(value, str):
            return _parse_json_or_text(value)
        return value
    except (TypeError, ValueError) as exc:
        name = getattr(target, "__name__", str(target))
        raise PipelineDefinitionError(
            f"The {param!r} parameter of step {step!r} must be {name}. Got {value!r}.",
            step=step,
        ) from exc


def _unwrap_optional(annotation: Any) -> Any:
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) == 1:
            return args[0]
        return None
    if isinstance(annotation, types.GenericAlias):
        return annotation.__origin__
    return annotation


def _to_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise ValueError(value)


def _parse_json_or_text(value: str) -> Any:
    try:
        return orjson.loads(value)
    except orjson.JSONDecodeError:
        return value


def param_value(value: Any) -> Any:
    """How a parameter is recorded and hashed: JSON, or a fingerprintable's description."""
    if isinstance(value, Fingerprinted):
        return value.to_param()
    if isinstance(value, Path):
        return str(value)
    try:
        return orjson.loads(orjson.dumps(value, option=orjson.OPT_SERIALIZE_NUMPY))
    except TypeError:
        return repr(value)


# -- loading --------------------------------------------------------------------------------


def load_pipeline(source: str | os.PathLike[str], *, reload: bool = False) -> Pipeline:
    """Load the pipeline in a Python file or module (``pkg.mod`` or ``pkg.mod:attr``).

    Loaded pipelines are remembered per process by their normalized source (a file's
    absolute path), so executors in this process run the very step objects the runner
    planned with, and workers elsewhere load the same file.
    """
    key = normalize_source(os.fspath(source))
    with _LOAD_LOCK:
        if not reload and key in _LOADED:
            return _LOADED[key]
        pipeline = _load(key)
        _LOADED[key] = pipeline
        return pipeline


def register_pipeline(pipeline: Pipeline) -> None:
    """Make ``pipeline`` what ``load_pipeline(pipeline.source)`` returns in this process."""
    with _LOAD_LOCK:
        _LOADED[pipeline.source] = pipeline


def normalize_source(source: str) -> str:
    """A file's absolute path (keeping any ``:attr``); a module reference unchanged."""
    module_ref, sep, attr = source.rpartition(":") if _has_attr(source) else (source, "", "")
    if _is_file_ref(module_ref):
        return str(Path(module_ref).resolve()) + sep + attr
    return source


def _has_attr(source: str) -> bool:
    tail = source.rpartition(":")[2]
    return ":" in source and tail.isidentifier()


def _is_file_ref(ref: str) -> bool:
    return ref.endswith(".py") or os.sep in ref or Path(ref).exists()


def import_source(source: str | os.PathLike[str]) -> types.ModuleType:
    """Import a Python file (``path/to/file.py``) or module (``pkg.mod``), as ``run`` does."""
    ref = os.fspath(source)
    if _is_file_ref(ref):
        return _import_file(Path(ref), ref)
    return _import_module(ref, ref)


def _load(source: str) -> Pipeline:
    module_ref, _, attr = source.rpartition(":") if _has_attr(source) else (source, "", "")
    path = Path(module_ref)
    if _is_file_ref(module_ref):
        module = _import_file(path, source)
        name = path.stem if path.stem != "pipeline" else path.resolve().parent.name
    else:
        module = _import_module(module_ref, source)
        name = module_ref.rsplit(".", 1)[-1]
    target: Any = module
    if attr:
        if not hasattr(module, attr):
            raise PipelineLoadError(
                f"{module_ref} has no attribute {attr!r}.{_did_you_mean(attr, vars(module))}",
                path=source,
            )
        target = getattr(module, attr)
    elif isinstance(getattr(module, "pipeline", None), Pipeline | list | tuple):
        target = module.pipeline
    if isinstance(target, Pipeline):
        return target
    if isinstance(target, list | tuple):
        return Pipeline.from_steps(target, name=name, source=source)
    if isinstance(target, types.ModuleType):
        found = {id(v): v for v in vars(target).values() if isinstance(v, Step)}
        return Pipeline.from_steps(found.values(), name=name, source=source)
    raise PipelineLoadError(
        f"{source} is neither a pipeline nor a list of steps (it is {type(target).__name__}).",
        path=source,
    )


def _import_file(path: Path, source: str) -> types.ModuleType:
    if not path.is_file():
        raise PipelineLoadError(
            f"No pipeline file {str(path)!r}. Give a path to a .py file or a module name "
            f"such as 'mypackage.pipeline'.",
            path=str(path),
        )
    resolved = path.resolve()
    digest = hashlib.sha256(str(resolved).encode()).hexdigest()[:12]
    module_name = f"loopline_pipeline_{resolved.stem}_{digest}"
    spec = importlib.util.spec_from_file_location(module_name, resolved)
    if spec is None or spec.loader is None:
        raise PipelineLoadError(f"Cannot load {path} as Python.", path=str(path))
    module = importlib.util.module_from_spec(spec)
    # As when Python runs a script: modules beside the file can be imported by name.
    if str(resolved.parent) not in sys.path:
        sys.path.insert(0, str(resolved.parent))
    # Registered so that dataclasses, pickling and typing can find the module by name.
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        del sys.modules[module_name]
        raise _import_error(exc, source, str(resolved)) from exc
    return module


def _import_module(module_ref: str, source: str) -> types.ModuleType:
    try:
        return importlib.import_module(module_ref)
    except ModuleNotFoundError as exc:
        if exc.name is not None and module_ref.startswith(exc.name):
            raise PipelineLoadError(
                f"No pipeline file or module {module_ref!r}. Give a path to a .py file, or "
                f"a module importable from the current environment.",
                path=source,
            ) from exc
        raise _import_error(exc, source, None) from exc
    except Exception as exc:
        raise _import_error(exc, source, None) from exc


def _import_error(exc: BaseException, source: str, filename: str | None) -> PipelineLoadError:
    """Say where the import failed: the deepest frame in the pipeline's own file."""
    where = ""
    if isinstance(exc, SyntaxError):
        where = f" (line {exc.lineno})"
    else:
        frames = traceback.extract_tb(exc.__traceback__)
        own = [f for f in frames if filename is None or f.filename == filename]
        if own:
            where = f" (line {own[-1].lineno})"
    return PipelineLoadError(
        f"Pipeline {source} failed to import{where}: {type(exc).__name__}: {exc}. Fix it "
        f"and run again; --verbose shows the traceback.",
        path=source,
    )
