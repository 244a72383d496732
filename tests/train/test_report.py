"""The HTML evaluation report: valid, self-contained, escaped, complete and deterministic."""

from __future__ import annotations

import re
from html.parser import HTMLParser

import numpy as np
import polars as pl
import pytest

from loopline.train.evaluate import NULL_LABEL, Evaluation, evaluate
from loopline.train.report import render_report

# Elements that have no end tag in HTML (and the SVG ones this report closes with "/>").
VOID = {"meta", "link", "br", "hr", "img", "input", "col", "wbr", "area", "base", "source"}
MALICIOUS = "<script>alert('x')</script>"


class _Checker(HTMLParser):
    """Collects the page's elements and checks that every one is closed, in order."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.stack: list[str] = []
        self.tags: list[str] = []
        self.attributes: list[tuple[str, str | None]] = []
        self.cells: list[str] = []
        self.problems: list[str] = []
        self._text: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        self.attributes += attrs
        if tag not in VOID:
            self.stack.append(tag)
        if tag == "td":
            self._text = []

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        self.attributes += attrs

    def handle_endtag(self, tag: str) -> None:
        if tag == "td" and self._text is not None:
            self.cells.append("".join(self._text))
            self._text = None
        if not self.stack or self.stack[-1] != tag:
            self.problems.append(f"</{tag}> closes {self.stack[-1:] or 'nothing'}")
        else:
            self.stack.pop()

    def handle_data(self, data: str) -> None:
        if self._text is not None:
            self._text.append(data)


def _parse(page: str) -> _Checker:
    checker = _Checker()
    checker.feed(page)
    checker.close()
    assert checker.problems == []
    assert checker.stack == []
    return checker


def _flights_like(n: int = 4_000, seed: int = 13) -> tuple[np.ndarray, np.ndarray, pl.DataFrame]:
    rng = np.random.default_rng(seed)
    origin = rng.choice(["EWR", "JFK", "LGA", MALICIOUS], n, p=[0.33, 0.33, 0.32, 0.02])
    carrier = rng.choice(["AA", "B6", "DL", "UA"], n)
    hour = rng.integers(5, 23, n)
    signal = 0.12 * (hour - 14) + (origin == "EWR") * 0.5 + rng.normal(size=n)
    y = (rng.random(n) < 1 / (1 + np.exp(-(signal - 1)))).astype(np.float64)
    p = 1 / (1 + np.exp(-(signal - 1 + rng.normal(scale=0.8, size=n))))
    origins = pl.Series("origin", origin).set(pl.Series(rng.random(n) < 0.01), None)
    return y, p, pl.DataFrame({"origin": origins, "carrier": carrier})


@pytest.fixture(scope="module")
def binary() -> Evaluation:
    y, p, frame = _flights_like()
    return evaluate(y, p, frame=frame, slices=("origin", "carrier"), sensitive="carrier")


def test_report_is_valid_self_contained_html(binary: Evaluation) -> None:
    page = render_report(binary, title="delays v1", model_info={"model": "delays"})
    checker = _parse(page)
    assert page.startswith("<!DOCTYPE html>")
    assert checker.tags[:1] == ["html"]
    assert "script" not in checker.tags
    # No external resource: nothing is loaded from anywhere, no handler runs.
    names = {name for name, _ in checker.attributes}
    assert not names & {"src", "href", "srcset"}
    assert not any(name.startswith("on") for name in names)
    assert "@import" not in page
    assert "url(" not in page


def test_report_draws_the_three_plots(binary: Evaluation) -> None:
    page = render_report(binary, title="delays", model_info={})
    checker = _parse(page)
    assert checker.tags.count("svg") == 3
    for label in ("ROC curve", "Precision-recall curve", "Calibration"):
        assert f'aria-label="{label}"' in page
    # The model's curves carry every stored point; the calibration plot one circle per bin.
    curves = re.findall(r'<polyline class="model" points="([^"]*)"', page)
    assert [len(c.split()) for c in curves[:2]] == [len(binary.roc_curve), len(binary.pr_curve)]
    assert len(curves[2].split()) == len(binary.calibration)
    assert page.count("<circle") == len(binary.calibration)
    # Every point lies inside the plot area.
    for curve in curves:
        for point in curve.split():
            x, y = map(float, point.split(","))
            assert 0 <= x <= 360
            assert 0 <= y <= 300


def test_report_lists_metrics_slices_and_gaps(binary: Evaluation) -> None:
    page = render_report(binary, title="delays", model_info={})
    cells = _parse(page).cells
    for s in binary.slices:
        assert s.label in cells
        assert f"{s.rows:,}" in cells
    assert NULL_LABEL in cells
    roc_auc = binary.overall["roc_auc"]
    assert roc_auc is not None
    assert f"{roc_auc:.4f}" in cells
    assert "roc_auc ↑" in cells
    assert "log_loss ↓" in cells
    for gap in binary.gaps:
        assert f"{gap.gap:.4f}" in cells
    assert f"{binary.rows:,}" in cells


def test_report_escapes_every_string(binary: Evaluation) -> None:
    page = render_report(
        binary,
        title=f"model {MALICIOUS}",
        model_info={f"key {MALICIOUS}": MALICIOUS, "params": {"note": MALICIOUS}},
    )
    checker = _parse(page)
    assert "script" not in checker.tags
    assert "<script" not in page
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in page
    # Once escaped, the text reads back exactly as given.
    assert MALICIOUS in checker.cells
    assert f"key {MALICIOUS}" in checker.cells


def test_report_is_deterministic(binary: Evaluation) -> None:
    info = {"model": "delays", "version": 3, "params": {"b": 1, "a": 0.5}}
    page = render_report(binary, title="delays", model_info=info)
    assert render_report(binary, title="delays", model_info=info) == page
    # The stored evaluation renders to the same bytes as the one computed.
    again = Evaluation.from_json(binary.to_json())
    assert render_report(again, title="delays", model_info=info) == page
    y, p, frame = _flights_like()
    fresh = evaluate(y, p, frame=frame, slices=("origin", "carrier"), sensitive="carrier")
    assert render_report(fresh, title="delays", model_info=info) == page
    assert '{"a":0.5,"b":1}' in _parse(page).cells  # containers: JSON with sorted keys


def test_report_of_a_regression() -> None:
    rng = np.random.default_rng(5)
    y = rng.normal(10, 3, 1_000)
    frame = pl.DataFrame({"origin": rng.choice(["EWR", "JFK"], 1_000)})
    e = evaluate(y, y + rng.normal(0, 1, 1_000), task="regression", frame=frame, sensitive="origin")
    page = render_report(e, title="minutes late", model_info={"model": "delay-minutes"})
    checker = _parse(page)
    assert checker.tags.count("svg") == 1
    assert 'aria-label="Predicted against observed"' in page
    assert "ROC curve" not in page
    rmse = e.overall["rmse"]
    assert rmse is not None
    assert f"{rmse:.4f}" in checker.cells
    assert {"EWR", "JFK"} <= set(checker.cells)


def test_report_without_slices_or_sensitive_column() -> None:
    e = evaluate([0, 1, 0, 1], [0.3, 0.6, 0.4, 0.9])
    page = render_report(e, title="tiny", model_info=None)
    _parse(page)
    assert "No slice columns were given." in page
    assert "No sensitive column was given." in page
