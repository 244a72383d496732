"""Cache keys: code, version, parameters (external data by content) and input hashes."""

from __future__ import annotations

import os
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from loopline import Files, step
from loopline.pipeline.cache import cache_key, fingerprint_params
from loopline.pipeline.step import Step


@step
def scale(x: int = 1, label: str = "a") -> int:
    return 2 * x


def _variant(body: str, *, version: str | None = None) -> Step:
    namespace: dict[str, object] = {}
    exec(f"def scale(x: int = 1):\n    return {body}\n", namespace)
    s = step(version=version)(namespace["scale"])  # type: ignore[call-overload]
    assert isinstance(s, Step)
    return s


def test_same_inputs_same_key() -> None:
    assert cache_key(scale, {"x": 1, "label": "a"}, {"up": "h1"}) == cache_key(
        scale, {"label": "a", "x": 1}, {"up": "h1"}
    )


def test_key_changes_with_each_ingredient() -> None:
    base = cache_key(scale, {"x": 1, "label": "a"}, {"up": "h1"})
    assert cache_key(scale, {"x": 2, "label": "a"}, {"up": "h1"}) != base
    assert cache_key(scale, {"x": 1, "label": "b"}, {"up": "h1"}) != base
    assert cache_key(scale, {"x": 1, "label": "a"}, {"up": "h2"}) != base
    assert cache_key(scale, {"x": 1, "label": "a"}, {"other": "h1"}) != base


def test_key_changes_with_code_and_version_only_when_they_change() -> None:
    # A function without source (defined by exec) is hashed by its bytecode and constants.
    a, same, other = _variant("2 * x"), _variant("2 * x"), _variant("3 * x")
    assert cache_key(a, {}, {}) == cache_key(same, {}, {})
    assert cache_key(a, {}, {}) != cache_key(other, {}, {})
    assert cache_key(_variant("2 * x", version="1"), {}, {}) != cache_key(a, {}, {})
    assert cache_key(_variant("2 * x", version="2"), {}, {}) != cache_key(
        _variant("2 * x", version="1"), {}, {}
    )


def test_files_parameter_is_keyed_by_content(tmp_path: Path) -> None:
    data = tmp_path / "data.csv"
    data.write_text("x\n1\n")
    files = Files(str(data))
    first = cache_key(scale, {"x": files}, {})
    assert cache_key(scale, {"x": Files(str(data))}, {}) == first

    # Touching the file (new mtime, same bytes) keeps the key.
    stat = data.stat()
    os.utime(data, ns=(stat.st_atime_ns, stat.st_mtime_ns + 5_000_000_000))
    assert cache_key(scale, {"x": files}, {}) == first

    # Same size, same mtime, different bytes: the key must still change.
    data.write_text("x\n2\n")
    os.utime(data, ns=(stat.st_atime_ns, stat.st_mtime_ns + 5_000_000_000))
    assert cache_key(scale, {"x": files}, {}) != first


def test_fingerprint_params_records_what_was_read(tmp_path: Path) -> None:
    data = tmp_path / "a.csv"
    data.write_text("x\n")
    shown = fingerprint_params({"source": Files(str(data)), "n": 3})
    assert shown["n"] == 3
    assert shown["source"]["of"] == [str(data)]
    assert len(shown["source"]["fingerprint"]) == 64


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner),
    max_leaves=8,
)


@given(params=st.dictionaries(st.text(min_size=1, max_size=6), json_values, max_size=4))
def test_key_is_a_stable_sha256_of_any_json_params(params: dict[str, object]) -> None:
    key = cache_key(scale, params, {})
    assert key == cache_key(scale, dict(reversed(list(params.items()))), {})
    assert len(key) == 64
    assert int(key, 16) >= 0
