"""The evaluation report: one self-contained HTML page with its plots drawn as inline SVG.

``render_report`` turns an ``Evaluation`` into a page a person can open anywhere, with
no network, no JavaScript and no plotting library: the ROC and precision-recall curves,
the calibration plot, the metrics beside the baseline's, the calibration table, one table
per slice column and the group gaps of the sensitive column.

The page is a pure function of its inputs (same evaluation, same bytes), so it can be
stored as a content-addressed artifact and compared between runs. Every string from the
data (model names, slice values, column names) is HTML-escaped.
"""

from __future__ import annotations

import html
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import orjson

from loopline.train.evaluate import METRICS, NULL_LABEL, Evaluation, SliceMetrics

__all__ = ["render_report"]

# Size of each plot in SVG user units, and the margins that hold the axes' labels.
_WIDTH, _HEIGHT = 360, 300
_LEFT, _RIGHT, _TOP, _BOTTOM = 52, 14, 14, 44
_TICKS = 5
_COUNTS = frozenset({"mape_excluded_rows"})  # metrics that are numbers of rows

# The metrics shown in the slice and group tables, per task (the full set is in the
# metrics table; a slice table with a dozen columns would not fit a page).
_SLICE_METRICS = {
    "binary": ("roc_auc", "pr_auc", "log_loss", "brier", "precision", "recall", "f1"),
    "regression": ("rmse", "mae", "r2", "mape"),
}

_STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2rem auto;
       max-width: 72rem; padding: 0 1rem; color: #1b1f24; }
h1 { font-size: 1.6rem; margin-bottom: .2rem; }
h2 { font-size: 1.2rem; margin-top: 2rem; border-bottom: 1px solid #d0d7de; }
h3 { font-size: 1rem; }
p.note { color: #57606a; margin-top: .2rem; }
table { border-collapse: collapse; margin: .5rem 0 1rem; font-size: .9rem; }
th, td { border: 1px solid #d0d7de; padding: .25rem .6rem; text-align: right; }
th { background: #f6f8fa; }
td.name, th.name { text-align: left; }
td.better { background: #dafbe1; }
td.worse { background: #ffebe9; }
.plots { display: flex; flex-wrap: wrap; gap: 1rem; }
figure { margin: 0; }
figcaption { font-size: .9rem; text-align: center; color: #57606a; }
svg { background: #fff; border: 1px solid #d0d7de; }
svg text { font-size: 11px; fill: #1b1f24; }
svg .grid { stroke: #eaeef2; stroke-width: 1; }
svg .axis { stroke: #57606a; stroke-width: 1; }
svg .model { stroke: #0969da; stroke-width: 2; fill: none; }
svg .reference { stroke: #8c959f; stroke-width: 1.5; stroke-dasharray: 5 4; fill: none; }
svg .point { fill: #0969da; fill-opacity: .6; stroke: #0969da; }
""".strip()


def _e(value: object) -> str:
    """Escape any value for HTML text or a quoted attribute."""
    return html.escape(str(value), quote=True)


def _number(value: float | None, *, count: bool = False) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "—"
    if count:
        return f"{round(value):,}"
    return f"{value:.4f}"


def _difference(value: float | None, *, count: bool) -> str:
    if value is None:
        return "—"
    return f"{round(value):+,}" if count else f"{value:+.4f}"


def _info_value(value: object) -> str:
    """A model-info value as text: numbers compact, containers as sorted JSON."""
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, str | int | bool) or value is None:
        return str(value)
    try:
        return orjson.dumps(value, option=orjson.OPT_SORT_KEYS, default=str).decode()
    except TypeError:
        return str(value)


# --------------------------------------------------------------------------- plots


def _nice_ticks(low: float, high: float) -> tuple[float, ...]:
    """About ``_TICKS`` round tick values (steps of 1, 2, 2.5 or 5 times a power of ten)."""
    if not high > low:
        low, high = low - 1, high + 1
    raw = (high - low) / _TICKS
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw * (1 - 1e-9))
    first, last = math.floor(low / step + 1e-9), math.ceil(high / step - 1e-9)
    # Rounded so that 0.1 * 3 is drawn and labelled as 0.3.
    return tuple(round(i * step, 10) for i in range(first, last + 1))


@dataclass(frozen=True)
class _Frame:
    """Maps data coordinates to the plot area of one square SVG (one range, both axes)."""

    ticks: tuple[float, ...]

    @classmethod
    def fit(cls, low: float, high: float) -> _Frame:
        return cls(_nice_ticks(low, high))

    @property
    def low(self) -> float:
        return self.ticks[0]

    @property
    def high(self) -> float:
        return self.ticks[-1]

    def px(self, x: float) -> float:
        return _LEFT + (x - self.low) / (self.high - self.low) * (_WIDTH - _LEFT - _RIGHT)

    def py(self, y: float) -> float:
        return (
            _HEIGHT - _BOTTOM - (y - self.low) / (self.high - self.low) * (_HEIGHT - _TOP - _BOTTOM)
        )

    def path(self, points: Iterable[tuple[float, float]]) -> str:
        return " ".join(f"{self.px(x):.1f},{self.py(y):.1f}" for x, y in points)


def _tick(value: float) -> str:
    text = f"{value:.4g}"
    return "0" if text == "-0" else text


def _axes(frame: _Frame, x_label: str, y_label: str) -> list[str]:
    parts = []
    for value in frame.ticks:
        px, py = frame.px(value), frame.py(value)
        parts.append(
            f'<line class="grid" x1="{px:.1f}" y1="{_TOP}" x2="{px:.1f}" y2="{_HEIGHT - _BOTTOM}"/>'
        )
        parts.append(
            f'<line class="grid" x1="{_LEFT}" y1="{py:.1f}" x2="{_WIDTH - _RIGHT}" y2="{py:.1f}"/>'
        )
        parts.append(
            f'<text x="{px:.1f}" y="{_HEIGHT - _BOTTOM + 14}" text-anchor="middle">'
            f"{_e(_tick(value))}</text>"
        )
        parts.append(
            f'<text x="{_LEFT - 5}" y="{py + 4:.1f}" text-anchor="end">{_e(_tick(value))}</text>'
        )
    parts.append(
        f'<line class="axis" x1="{_LEFT}" y1="{_HEIGHT - _BOTTOM}" x2="{_WIDTH - _RIGHT}" '
        f'y2="{_HEIGHT - _BOTTOM}"/>'
    )
    parts.append(
        f'<line class="axis" x1="{_LEFT}" y1="{_TOP}" x2="{_LEFT}" y2="{_HEIGHT - _BOTTOM}"/>'
    )
    middle_x = (_LEFT + _WIDTH - _RIGHT) / 2
    middle_y = (_TOP + _HEIGHT - _BOTTOM) / 2
    parts.append(
        f'<text x="{middle_x:.1f}" y="{_HEIGHT - 8}" text-anchor="middle">{_e(x_label)}</text>'
    )
    parts.append(
        f'<text x="14" y="{middle_y:.1f}" text-anchor="middle" '
        f'transform="rotate(-90 14 {middle_y:.1f})">{_e(y_label)}</text>'
    )
    return parts


def _legend(entries: Sequence[tuple[str, str]], *, corner: str = "lower right") -> list[str]:
    """Legend lines (CSS class, label) in the lower right or the upper left corner."""
    parts = []
    for i, (css, label) in enumerate(entries):
        if corner == "lower right":
            x, y = _WIDTH - _RIGHT - 150, _HEIGHT - _BOTTOM - 10 - 15 * (len(entries) - 1 - i)
        else:
            x, y = _LEFT + 8, _TOP + 16 + 15 * i
        parts.append(f'<line class="{css}" x1="{x}" y1="{y - 4}" x2="{x + 20}" y2="{y - 4}"/>')
        parts.append(f'<text x="{x + 25}" y="{y}">{_e(label)}</text>')
    return parts


def _svg(label: str, parts: Sequence[str]) -> str:
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{_WIDTH}" height="{_HEIGHT}" '
        f'viewBox="0 0 {_WIDTH} {_HEIGHT}" role="img" aria-label="{_e(label)}">'
        f"<title>{_e(label)}</title>{''.join(parts)}</svg>"
    )


def _figure(svg: str, caption: str) -> str:
    return f"<figure>{svg}<figcaption>{_e(caption)}</figcaption></figure>"


def _roc_plot(evaluation: Evaluation) -> str:
    frame = _Frame.fit(0.0, 1.0)
    auc = evaluation.overall.get("roc_auc")
    parts = _axes(frame, "false positive rate", "true positive rate")
    parts.append(f'<polyline class="reference" points="{frame.path([(0, 0), (1, 1)])}"/>')
    parts.append(f'<polyline class="model" points="{frame.path(evaluation.roc_curve)}"/>')
    parts += _legend([("model", f"model (AUC {_number(auc)})"), ("reference", "chance")])
    return _figure(_svg("ROC curve", parts), "ROC curve")


def _pr_plot(evaluation: Evaluation) -> str:
    frame = _Frame.fit(0.0, 1.0)
    rate = (evaluation.positives or 0) / evaluation.rows
    auc = evaluation.overall.get("pr_auc")
    parts = _axes(frame, "recall", "precision")
    parts.append(f'<polyline class="reference" points="{frame.path([(0, rate), (1, rate)])}"/>')
    parts.append(f'<polyline class="model" points="{frame.path(evaluation.pr_curve)}"/>')
    parts += _legend(
        [("model", f"model (AP {_number(auc)})"), ("reference", f"positive rate {rate:.3f}")]
    )
    return _figure(_svg("Precision-recall curve", parts), "Precision-recall curve")


def _calibration_plot(evaluation: Evaluation) -> str:
    bins = evaluation.calibration
    if evaluation.task == "binary":
        frame = _Frame.fit(0.0, 1.0)
        x_label, y_label, caption = "mean predicted probability", "observed rate", "Calibration"
    else:
        values = [v for b in bins for v in (b.mean_predicted, b.observed)]
        frame = _Frame.fit(min(values), max(values))
        x_label, y_label, caption = "mean prediction", "mean target", "Predicted against observed"
    parts = _axes(frame, x_label, y_label)
    diagonal = [(frame.low, frame.low), (frame.high, frame.high)]
    parts.append(f'<polyline class="reference" points="{frame.path(diagonal)}"/>')
    points = [(b.mean_predicted, b.observed) for b in bins]
    parts.append(f'<polyline class="model" points="{frame.path(points)}"/>')
    largest = max((b.count for b in bins), default=1)
    for b in bins:
        # Area, not radius, in proportion to the rows, so that a bin of few rows looks small.
        radius = 2 + 6 * math.sqrt(b.count / largest)
        parts.append(
            f'<circle class="point" cx="{frame.px(b.mean_predicted):.1f}" '
            f'cy="{frame.py(b.observed):.1f}" r="{radius:.1f}"><title>{b.count:,} rows: '
            f"predicted {b.mean_predicted:.4f}, observed {b.observed:.4f}</title></circle>"
        )
    # Upper left: a calibration curve runs near the diagonal, far from that corner.
    parts += _legend(
        [("model", "model"), ("reference", "perfect calibration")], corner="upper left"
    )
    return _figure(_svg(caption, parts), f"{caption} (point area in proportion to rows)")


# --------------------------------------------------------------------------- tables


def _table(header: Sequence[str], rows: Iterable[Sequence[str]], *, names: int = 1) -> str:
    """A table whose cells are already HTML; the first ``names`` columns are left-aligned."""
    head = "".join(
        f'<th class="name">{h}</th>' if i < names else f"<th>{h}</th>" for i, h in enumerate(header)
    )
    body = "".join(f"<tr>{''.join(row)}</tr>" for row in rows)
    thead = f"<thead><tr>{head}</tr></thead>" if header else ""
    return f"<table>{thead}<tbody>{body}</tbody></table>"


def _td(text: str, css: str = "") -> str:
    return f'<td class="{css}">{text}</td>' if css else f"<td>{text}</td>"


def _info_table(evaluation: Evaluation, model_info: Mapping[str, object]) -> str:
    rows = [
        (_td(_e(key), "name"), _td(_e(_info_value(value)), "name"))
        for key, value in model_info.items()
    ]
    rows.append((_td("task", "name"), _td(_e(evaluation.task), "name")))
    rows.append((_td("rows evaluated", "name"), _td(_number(evaluation.rows, count=True), "name")))
    if evaluation.positives is not None:
        share = evaluation.positives / evaluation.rows
        rows.append(
            (
                _td("positives", "name"),
                _td(f"{evaluation.positives:,} ({share:.2%})", "name"),
            )
        )
        rows.append((_td("threshold", "name"), _td(f"{evaluation.threshold:g}", "name")))
    rows.append((_td("baseline", "name"), _td(_e(evaluation.baseline_description), "name")))
    return _table([], rows, names=2)


def _metrics_table(evaluation: Evaluation) -> str:
    rows = []
    for name, value in evaluation.overall.items():
        base = evaluation.baseline.get(name)
        metric = METRICS.get(name)
        direction = None if metric is None else metric.greater_is_better
        difference = None if value is None or base is None else value - base
        css = ""
        if difference is not None and direction is not None and difference != 0:
            css = "better" if (difference > 0) == direction else "worse"
        arrow = {True: " ↑", False: " ↓", None: ""}[direction]
        rows.append(
            (
                _td(f"{_e(name)}{arrow}", "name"),
                _td(_number(value, count=name in _COUNTS), css),
                _td(_number(base, count=name in _COUNTS)),
                _td(_difference(difference, count=name in _COUNTS), css),
            )
        )
    return _table(["metric", "model", "baseline", "model &minus; baseline"], rows)


def _calibration_table(evaluation: Evaluation) -> str:
    rows = [
        (
            _td(f"{_tick(b.lower)} &ndash; {_tick(b.upper)}", "name"),
            _td(f"{b.count:,}"),
            _td(_number(b.mean_predicted)),
            _td(_number(b.observed)),
        )
        for b in evaluation.calibration
    ]
    observed = "observed rate" if evaluation.task == "binary" else "mean target"
    return _table(["bin", "rows", "mean predicted", observed], rows)


def _slice_table(column: str, slices: Sequence[SliceMetrics], task: str) -> str:
    names = _SLICE_METRICS[task]
    header = [_e(column), "rows", *(["positives"] if task == "binary" else []), *map(_e, names)]
    rows = [
        (
            _td(_e(s.label), "name"),
            _td(f"{s.rows:,}"),
            *([_td(_number(s.positives, count=True))] if task == "binary" else []),
            *(_td(_number(s.metrics.get(name))) for name in names),
        )
        for s in slices
    ]
    return _table(header, rows)


def _slices_section(evaluation: Evaluation) -> str:
    if not evaluation.slices:
        return "<p class='note'>No slice columns were given.</p>"
    columns = list(dict.fromkeys(s.column for s in evaluation.slices))
    parts = []
    for column in columns:
        slices = [s for s in evaluation.slices if s.column == column]
        parts.append(f"<h3>By {_e(column)} ({len(slices)} value(s))</h3>")
        parts.append(_slice_table(column, slices, evaluation.task))
    return "".join(parts)


def _fairness_section(evaluation: Evaluation) -> str:
    if evaluation.sensitive is None:
        return "<p class='note'>No sensitive column was given.</p>"
    gap_rows = [
        (
            _td(_e(g.metric), "name"),
            _td(_number(g.gap)),
            _td(_e(NULL_LABEL if g.highest_group is None else g.highest_group), "name"),
            _td(_number(g.highest)),
            _td(_e(NULL_LABEL if g.lowest_group is None else g.lowest_group), "name"),
            _td(_number(g.lowest)),
        )
        for g in evaluation.gaps
    ]
    return (
        f"<p class='note'>Groups of the column {_e(evaluation.sensitive)}; a gap is the highest "
        f"group's value minus the lowest's.</p>"
        + _table(
            ["metric", "gap", "highest group", "value", "lowest group", "value"],
            gap_rows,
        )
        + f"<h3>Each group of {_e(evaluation.sensitive)}</h3>"
        + _slice_table(evaluation.sensitive, evaluation.groups, evaluation.task)
    )


# --------------------------------------------------------------------------- page


def render_report(
    evaluation: Evaluation, *, title: str, model_info: Mapping[str, object] | None = None
) -> str:
    """Render ``evaluation`` as one self-contained HTML page.

    Parameters
    ----------
    evaluation
        What ``loopline.train.evaluate.evaluate`` returned.
    title
        The page's title and heading, for example the model's name and version.
    model_info
        Facts shown at the top, in the given order (model name, version, run id,
        parameters, ...). Values that are not text or numbers are shown as JSON.

    Returns
    -------
    str
        The HTML page: inline CSS and SVG, no scripts, no external resources. The same
        arguments always give the same text.

    Examples
    --------
    >>> from loopline.train.evaluate import evaluate
    >>> page = render_report(evaluate([0, 0, 1, 1], [0.2, 0.6, 0.4, 0.9]),
    ...                      title="delays <v1>", model_info={"model": "lightgbm"})
    >>> page.startswith("<!DOCTYPE html>"), "<title>delays &lt;v1&gt;</title>" in page
    (True, True)
    >>> page.count("<svg")
    3
    """
    info = {} if model_info is None else model_info
    if evaluation.task == "binary":
        plots = [_roc_plot(evaluation), _pr_plot(evaluation), _calibration_plot(evaluation)]
    else:
        plots = [_calibration_plot(evaluation)]
    body = [
        f"<h1>{_e(title)}</h1>",
        "<p class='note'>Evaluation report written by loopline.</p>",
        _info_table(evaluation, info),
        "<h2>Metrics</h2>",
        "<p class='note'>↑ higher is better, ↓ lower is better; green where the model beats "
        "the baseline, red where it does not.</p>",
        _metrics_table(evaluation),
        "<h2>Plots</h2>",
        f"<div class='plots'>{''.join(plots)}</div>",
        "<h2>Calibration</h2>",
        _calibration_table(evaluation),
        "<h2>Slices</h2>",
        _slices_section(evaluation),
        "<h2>Group gaps</h2>",
        _fairness_section(evaluation),
    ]
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f'<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{_e(title)}</title>\n<style>\n{_STYLE}\n</style>\n</head>\n<body>\n"
        + "\n".join(body)
        + "\n</body>\n</html>\n"
    )
