"""Self-contained HTML reports of lab runs, and the figure helpers they rely on.

One file, readable offline: the CSS is inline, there is no JavaScript, and figures are embedded
as ``data:image/png;base64,...`` URIs (an SVG copy of each sits beside the PNG in the run
folder and is linked). Every piece of text from a run (config values, metric names) is escaped
with :func:`html.escape`; the experiment's documentation is reStructuredText rendered by
docutils with raw HTML and file inclusion disabled.

Metrics are shown as tables, never as JSON: scalars in one table; lists of the same length that
follow each other (``widths``, then one value per width) as one table with a row per entry;
``{outer: {inner: value}}`` as an outer x inner table (data set x method); ``{key: [values]}``
as a key x position table; lists of records as a table with a column per field; long curves in
a collapsed ``<details>`` block. An experiment that reproduces a paper adds a
:class:`PaperComparison`: the paper's and this run's numbers side by side with the conditions
of each, a one-line verdict, and a warning when the run is not of the paper's size.
"""

from __future__ import annotations

import base64
import html
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from widenet.lab import RunResult

__all__ = [
    "PaperComparison",
    "annotate_heatmap",
    "format_value",
    "render_combined",
    "render_doc",
    "render_metrics",
    "render_run",
    "text_color_for",
]

_CSS = """
:root { --fg: #1d2330; --muted: #5b6475; --line: #dde1e8; --accent: #2f5fb3; --bg: #fbfbfd; }
* { box-sizing: border-box; }
html { scroll-padding-top: 56px; }
body { margin: 0; background: var(--bg); color: var(--fg);
  font: 15px/1.55 -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif; }
main { max-width: 1100px; margin: 0 auto; padding: 28px 24px 64px; }
h1 { font-size: 1.75em; margin: 0 0 4px; }
h2 { font-size: 1.35em; margin: 40px 0 8px; padding-top: 12px; border-top: 2px solid var(--line); }
h3 { font-size: 1.05em; margin: 22px 0 6px; color: var(--muted); text-transform: uppercase;
  letter-spacing: .04em; }
h4 { font-size: 1em; margin: 16px 0 4px; }
p.summary { font-size: 1.08em; margin: 4px 0 14px; }
p.meta, .muted { color: var(--muted); font-size: .9em; }
a { color: var(--accent); }
table { border-collapse: collapse; margin: 6px 0 10px; font-size: .92em; }
th, td { text-align: left; vertical-align: top; padding: 4px 12px 4px 0;
  border-bottom: 1px solid var(--line); }
th { font-weight: 600; white-space: nowrap; }
td.num, th.num { font-variant-numeric: tabular-nums; text-align: right; white-space: nowrap; }
code, pre, td.val { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace;
  font-size: .9em; }
td.val { overflow-wrap: anywhere; max-width: 640px; min-width: 6em; }
.scroll { overflow-x: auto; max-width: 100%; }
details { margin: 6px 0 12px; }
details > summary { cursor: pointer; color: var(--accent); }
details .scroll { max-height: 420px; overflow-y: auto; }
dl.meaning { margin: 0 0 12px; font-size: .85em; color: var(--muted); }
dl.meaning dt { display: inline; font-family: ui-monospace, Menlo, Consolas, monospace; }
dl.meaning dd { display: inline; margin: 0; }
dl.meaning dd::after { content: ""; display: block; }
div.doc { background: #f4f6f9; padding: 4px 16px 10px; border-radius: 6px; }
div.doc pre { background: #fff; padding: 8px 10px; border-radius: 4px; overflow-x: auto; }
pre.doc { background: #f1f3f7; padding: 12px 14px; border-radius: 6px; white-space: pre-wrap; }
figure { margin: 14px 0 22px; }
figure img { max-width: 100%; height: auto; border: 1px solid var(--line); border-radius: 4px;
  background: #fff; }
figcaption { color: var(--muted); font-size: .88em; }
nav.bar { position: sticky; top: 0; z-index: 10; background: rgba(251,251,253,.97);
  border-bottom: 1px solid var(--line); padding: 6px 24px; font-size: .85em;
  white-space: nowrap; overflow-x: auto; }
nav.bar a { margin-right: 12px; text-decoration: none; }
nav.bar strong { margin-right: 12px; }
p.top { text-align: right; font-size: .85em; margin: 8px 0 0; }
p.error { background: #fdecec; color: #8a1c1c; padding: 8px 12px; border-radius: 6px; }
p.caveat { background: #fff4d6; color: #6b4e00; padding: 8px 12px; border-radius: 6px; }
p.verdict { font-weight: 600; }
table.paper td, table.paper th { padding-right: 18px; }
.badge { display: inline-block; font-size: .75em; padding: 1px 7px; border-radius: 9px;
  background: #e4ebf7; color: var(--accent); margin-left: 6px; vertical-align: middle; }
.ok { color: #1d6b2f; } .bad { color: #8a1c1c; }
"""

_LONG = 12  # tables with more rows than this are collapsed into a <details> block
_MAX_INLINE = 8  # lists up to this length are written inline in a table cell


# --------------------------------------------------------------------------------------------
# The paper-vs-widenet comparison


@dataclass(frozen=True)
class PaperComparison:
    """A paper's numbers beside this run's, with the conditions of each side.

    Parameters
    ----------
    reference : the paper and the figure or table, e.g. ``"Du et al. (2018), Fig. 1"``.
    paper_conditions : the paper's set-up (n, d, epochs, sizes), one line.
    run_conditions : this run's set-up in the same terms, one line.
    rows : ``(quantity, paper's value, this run's value)`` triples, already formatted.
    verdict : one line: does this run reproduce the paper's finding?
    same_size : whether this run has the paper's size; if not the report says plainly that the
        numbers are not like-for-like.
    key_row : the row the combined report's summary table shows.
    """

    reference: str
    paper_conditions: str
    run_conditions: str
    rows: Sequence[tuple[str, str, str]] = field(default_factory=tuple)
    verdict: str = ""
    same_size: bool = False
    key_row: int = 0

    @property
    def key(self) -> tuple[str, str, str] | None:
        """Row ``key_row`` (default the first): the number the combined report's summary shows."""
        if not self.rows:
            return None
        return tuple(
            self.rows[self.key_row if -len(self.rows) <= self.key_row < len(self.rows) else 0]
        )


def render_comparison(comparison: PaperComparison) -> str:
    """The "paper vs widenet" table of one run."""
    parts = []
    if not comparison.same_size:
        parts.append(
            '<p class="caveat"><strong>Not the paper\'s size.</strong> This run is smaller than '
            "the paper's experiment (conditions below), so its numbers illustrate the finding "
            "but are not like-for-like; run the full size (without <code>--quick</code>) to "
            "compare.</p>"
        )
    head = (
        "<thead><tr><th></th>"
        f"<th>paper: {_e(comparison.reference)}</th><th>widenet (this run)</th></tr></thead>"
    )
    rows = [
        f"<tr><th>conditions</th><td>{_e(comparison.paper_conditions)}</td>"
        f"<td>{_e(comparison.run_conditions)}</td></tr>"
    ]
    for quantity, paper, ours in comparison.rows:
        rows.append(f"<tr><th>{_e(quantity)}</th><td>{_e(paper)}</td><td>{_e(ours)}</td></tr>")
    parts.append(
        f'<div class="scroll"><table class="paper">{head}<tbody>{"".join(rows)}</tbody></table>'
        "</div>"
    )
    if comparison.verdict:
        parts.append(f'<p class="verdict">Verdict: {_e(comparison.verdict)}</p>')
    return "\n".join(parts)


def comparison_for(result: RunResult) -> PaperComparison | None:
    """The experiment's paper comparison for ``result`` (None without one or on failure)."""
    exp = result.experiment
    fn = getattr(exp, "paper", None) if exp is not None else None
    if fn is None or result.error:
        return None
    try:
        return fn(result.config, result.metrics)
    except (KeyError, IndexError, TypeError, ValueError, ZeroDivisionError):
        # A run made with an older config (missing keys) still gets its report.
        return None


# --------------------------------------------------------------------------------------------
# Formatting


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _fmt_scalar(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return str(value).lower() if isinstance(value, bool) else "—"
    if isinstance(value, float):
        if value == 0 or (1e-3 <= abs(value) < 1e5):
            return f"{value:.4g}"
        return f"{value:.3e}"
    return str(value)


def format_value(value: Any, digits: int = 3) -> str:
    """A number for a comparison table: ``digits`` significant digits; lists joined by " / ";
    None as "—" (e.g. a peak that never converged)."""
    if isinstance(value, (list, tuple)):
        return " / ".join(format_value(v, digits) for v in value)
    if value is None:
        return "—"
    if isinstance(value, float):
        if value != 0 and not (1e-3 <= abs(value) < 1e5):
            return f"{value:.{max(digits - 1, 0)}e}"
        return f"{value:.{digits}g}"
    return str(value)


def _is_scalar(value: Any) -> bool:
    return value is None or isinstance(value, (bool, int, float, str))


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _scalar_list(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(_is_scalar(v) for v in value)


def _matrix(value: Any) -> bool:
    """A non-empty list of equally long lists of scalars."""
    return (
        isinstance(value, list)
        and bool(value)
        and all(_scalar_list(r) for r in value)
        and len({len(r) for r in value}) == 1
    )


def _records(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(r, Mapping) for r in value)


def _inline(value: Any) -> str:
    """Short text for a table cell: scalars, short lists, small mappings (never JSON)."""
    if _is_scalar(value):
        return _fmt_scalar(value)
    if isinstance(value, Mapping):
        return "; ".join(f"{k}: {_inline(v)}" for k, v in value.items())
    if isinstance(value, list):
        if len(value) > _MAX_INLINE:
            head = ", ".join(_inline(v) for v in value[:4])
            tail = ", ".join(_inline(v) for v in value[-2:])
            return f"{head}, …, {tail} ({len(value)} values)"
        return ", ".join(_inline(v) for v in value) if value else "(none)"
    return str(value)


def _cell(value: Any, header: bool = False) -> str:
    tag = "th" if header else "td"
    cls = ' class="num"' if _is_number(value) else ""
    if not _is_scalar(value) and not header:
        cls = ' class="val"'
    return f"<{tag}{cls}>{_e(_inline(value))}</{tag}>"


def _grid(
    headers: Sequence[Any], rows: Sequence[Sequence[Any]], *, caption: str = "", row_header=True
) -> str:
    """A table; the first cell of each row is a header cell when ``row_header``."""
    head = "".join(f"<th>{_e(_inline(h))}</th>" for h in headers)
    body = []
    for row in rows:
        cells = [_cell(v, header=row_header and i == 0) for i, v in enumerate(row)]
        body.append(f"<tr>{''.join(cells)}</tr>")
    table = (
        f'<div class="scroll"><table><thead><tr>{head}</tr></thead>'
        f"<tbody>{''.join(body)}</tbody></table></div>"
    )
    if len(rows) > _LONG:
        summary = caption or "values"
        return (
            f"<details><summary>{_e(summary)} ({len(rows)} rows; click to show)</summary>"
            f"{table}</details>"
        )
    return table


def _meanings(keys: Sequence[str], doc: Mapping[str, str]) -> str:
    items = "".join(f"<dt>{_e(k)}</dt><dd>: {_e(doc[k])}</dd>" for k in keys if doc.get(k))
    return f'<dl class="meaning">{items}</dl>' if items else ""


# --------------------------------------------------------------------------------------------
# Metrics


def _is_axis(value: Any) -> bool:
    """An index-like list: strictly increasing integers, or distinct strings."""
    if not _scalar_list(value):
        return False
    if all(isinstance(v, str) for v in value):
        return len(set(value)) == len(value)
    if all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        return all(a < b for a, b in zip(value, value[1:], strict=False))
    return False


def _find_axis(axes: Mapping[str, list], n: int, exclude: str = "") -> tuple[str, list] | None:
    # The most recently seen axis of that length (metrics list their axis first).
    for key in reversed(list(axes)):
        if key != exclude and len(axes[key]) == n:
            return key, axes[key]
    return None


def _nested_block(key: str, value: Any, axes: Mapping[str, list]) -> str:
    """A table (or nested tables) for one non-scalar metric."""
    if _scalar_list(value):
        axis = _find_axis(axes, len(value), exclude=key)
        if axis is not None:
            rows = list(zip(axis[1], value, strict=True))
            return _grid([axis[0], key], rows, caption=key)
        if len(value) <= _MAX_INLINE:
            return _grid(["#", key], list(enumerate(value)), caption=key)
        return _grid(["index", key], list(enumerate(value)), caption=key)
    if _matrix(value):
        n_rows, n_cols = len(value), len(value[0])
        row_axis = _find_axis(axes, n_rows)
        col_axis = _find_axis(axes, n_cols, exclude=row_axis[0] if row_axis else "")
        if n_cols > _LONG and n_rows <= _LONG:
            # Curves stored one per row (e.g. per width, over epochs): one column per curve.
            labels = row_axis[1] if row_axis else list(range(n_rows))
            name = row_axis[0] if row_axis else "curve"
            index = col_axis[1] if col_axis else list(range(n_cols))
            headers = [col_axis[0] if col_axis else "index"] + [f"{name} {v}" for v in labels]
            rows = [[index[j]] + [r[j] for r in value] for j in range(n_cols)]
            return _grid(headers, rows, caption=f"{key}: {n_rows} curve(s) of {n_cols} points")
        labels = row_axis[1] if row_axis else list(range(n_rows))
        cols = col_axis[1] if col_axis else list(range(n_cols))
        corner = f"{row_axis[0] if row_axis else 'row'} \\ {col_axis[0] if col_axis else 'col'}"
        rows = [[labels[i], *value[i]] for i in range(n_rows)]
        return _grid([corner, *cols], rows, caption=key)
    if _records(value):
        columns: list[str] = []
        for record in value:
            columns += [c for c in record if c not in columns]
        rows = [[record.get(c) for c in columns] for record in value]
        return _grid(columns, rows, caption=key, row_header=False)
    if isinstance(value, Mapping) and value:
        items = list(value.values())
        if all(_is_scalar(v) for v in items):
            return _grid(["key", key], list(value.items()), caption=key)
        if all(isinstance(v, Mapping) and all(_is_scalar(x) for x in v.values()) for v in items):
            columns = []
            for v in items:
                columns += [c for c in v if c not in columns]
            rows = [[k, *(v.get(c) for c in columns)] for k, v in value.items()]
            return _grid(["", *columns], rows, caption=key)
        if all(_scalar_list(v) for v in items) and len({len(v) for v in items}) == 1:
            n = len(items[0])
            # Keys that are numbers (e.g. widths) are the rows' axis already: then the
            # positions are quantities, not an axis of the same length seen before.
            numeric_keys = all(re.fullmatch(r"-?[0-9.e+]+", str(k)) for k in value)
            axis = None if numeric_keys else _find_axis(axes, n)
            cols = axis[1] if axis else list(range(n))
            corner = f"key \\ {axis[0]}" if axis else "key \\ position"
            if n > _LONG and len(items) <= _LONG:  # curves: one column per key
                rows = [[cols[j]] + [v[j] for v in items] for j in range(n)]
                return _grid([axis[0] if axis else "index", *value], rows, caption=key)
            rows = [[k, *v] for k, v in value.items()]
            return _grid([corner, *cols], rows, caption=key)
        parts = []
        for k, v in value.items():
            if _is_scalar(v):
                parts.append(f"<p><strong>{_e(k)}</strong>: {_e(_fmt_scalar(v))}</p>")
            else:
                parts.append(f"<p><strong>{_e(k)}</strong></p>{_nested_block(k, v, axes)}")
        return "\n".join(parts)
    if isinstance(value, list):  # ragged or mixed lists
        rows = [[i, v] for i, v in enumerate(value)]
        return _grid(["#", key], rows, caption=key, row_header=True)
    return f"<p>{_e(_inline(value))}</p>"


def render_metrics(metrics: Mapping[str, Any], doc: Mapping[str, str] | None = None) -> str:
    """HTML tables of a run's metrics (see the module docstring for the layouts)."""
    doc = doc or {}
    scalars = [(k, v) for k, v in metrics.items() if _is_scalar(v)]
    parts = []
    if scalars:
        rows = "".join(
            f"<tr><th>{_e(k)}</th>{_cell(v)}<td>{_e(doc.get(k, ''))}</td></tr>" for k, v in scalars
        )
        parts.append(
            '<div class="scroll"><table><thead><tr><th>metric</th><th>value</th>'
            f"<th>meaning</th></tr></thead><tbody>{rows}</tbody></table></div>"
        )
    others = [(k, v) for k, v in metrics.items() if not _is_scalar(v)]
    axes: dict[str, list] = {}
    i = 0
    while i < len(others):
        key, value = others[i]
        if _scalar_list(value):
            # A run of lists of one length: one table, a column per metric.
            group = [(key, value)]
            j = i + 1
            while j < len(others) and _scalar_list(others[j][1]):
                if len(others[j][1]) != len(value):
                    break
                group.append(others[j])
                j += 1
            if _is_axis(value):
                axes[key] = value
            if len(group) > 1:
                first_is_axis = _is_axis(value)
                members = group[1:] if first_is_axis else group
                headers = [key if first_is_axis else "#"] + [k for k, _ in members]
                index = value if first_is_axis else list(range(len(value)))
                rows = [[index[r], *(v[r] for _, v in members)] for r in range(len(value))]
                names = ", ".join(k for k, _ in group)
                parts.append(f"<h4>{_e(names)}</h4>")
                parts.append(_grid(headers, rows, caption=names))
                parts.append(_meanings([k for k, _ in group], doc))
                for k, v in group[1:]:
                    if _is_axis(v):
                        axes[k] = v
                i = j
                continue
        parts.append(f"<h4>{_e(key)}</h4>")
        parts.append(_nested_block(key, value, axes))
        parts.append(_meanings([key], doc))
        i += 1
    if not parts:
        parts.append('<p class="muted">No metrics.</p>')
    return "\n".join(parts)


# --------------------------------------------------------------------------------------------
# Documentation (reStructuredText via docutils)

_ROLE = re.compile(r":[a-zA-Z]+(?::[a-zA-Z]+)?:`([^`]+)`")


def _prepare_rst(doc: str) -> str:
    """Docstring conventions -> plain reST: Sphinx roles to literals, ``text:`` + indented
    block to a literal block (the docstrings' tables of numbers)."""
    doc = _ROLE.sub(lambda m: f"``{m.group(1).lstrip('~')}``", doc)
    lines = doc.splitlines()
    out = []
    for i, line in enumerate(lines):
        stripped = line.rstrip()
        nxt = lines[i + 2] if i + 2 < len(lines) else ""
        if (
            stripped.endswith(":")
            and not stripped.endswith("::")
            and i + 1 < len(lines)
            and not lines[i + 1].strip()
            and nxt.startswith(" ")
            and not line.startswith(" ")
            and nxt.strip()
            and not nxt.lstrip().startswith(("*", "-", "+"))
        ):
            stripped += ":"
        out.append(stripped)
    return "\n".join(out)


def render_doc(doc: str) -> str:
    """An experiment's docstring (reStructuredText) as an HTML fragment.

    Rendered by docutils with raw HTML, file inclusion and system messages disabled; if
    docutils is missing or fails, the escaped text in a ``<pre>``.
    """
    if not doc.strip():
        return ""
    try:
        from docutils.core import publish_parts
        from docutils.writers import html5_polyglot

        parts = publish_parts(
            source=_prepare_rst(doc),
            writer=html5_polyglot.Writer(),
            settings_overrides={
                "report_level": 5,
                "halt_level": 5,
                "raw_enabled": False,
                "file_insertion_enabled": False,
                "doctitle_xform": False,
                "initial_header_level": 4,
                "syntax_highlight": "none",
                "input_encoding": "unicode",
                "_disable_config": True,
            },
        )
        body = parts["body"]
    except Exception:  # noqa: BLE001 - any docutils failure falls back to the plain text
        return f'<pre class="doc">{_e(doc)}</pre>'
    return f'<div class="doc">{body}</div>'


# --------------------------------------------------------------------------------------------
# Figure helpers


def text_color_for(rgba: Sequence[float]) -> str:
    """``"white"`` on dark colours, ``"black"`` on light ones (WCAG relative luminance)."""

    def lin(c: float) -> float:
        return c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4

    r, g, b = (lin(float(c)) for c in rgba[:3])
    luminance = 0.2126 * r + 0.7152 * g + 0.0722 * b
    # Black text has contrast (L + 0.05) / 0.05, white 1.05 / (L + 0.05): equal at L = 0.179.
    return "white" if luminance < 0.179 else "black"


def annotate_heatmap(ax, image, labels, values=None, **text_kwargs) -> None:
    """Write ``labels[i][j]`` at the centre of cell (i, j) of an ``imshow`` ``image``, in black
    or white by the darkness of the cell's colour (cells with a non-finite value: black)."""
    import numpy as np

    data = np.asarray(image.get_array() if values is None else values, dtype=float)
    text_kwargs = {"ha": "center", "va": "center", "fontsize": 7, **text_kwargs}
    for i in range(data.shape[0]):
        for j in range(data.shape[1]):
            v = data[i, j]
            color = text_color_for(image.cmap(image.norm(v))) if np.isfinite(v) else "black"
            ax.text(j, i, labels[i][j], color=color, **text_kwargs)


# --------------------------------------------------------------------------------------------
# Pages


def _figure_html(path: Path, index: int, link_prefix: str = "") -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    svg = path.with_suffix(".svg")
    link = ""
    if svg.is_file():
        href = f"{link_prefix}figures/{svg.name}"
        link = f' · <a href="{_e(href)}">SVG</a>'
    return (
        f'<figure><img alt="{_e(path.stem)}" src="data:image/png;base64,{data}">'
        f"<figcaption>Figure {index}: {_e(path.name)}{link}</figcaption></figure>"
    )


def _anchor(name: str) -> str:
    return "exp-" + re.sub(r"[^a-z0-9-]+", "-", name.lower())


def _env_rows(result: RunResult) -> list[tuple[str, str]]:
    return [(k, str(v)) for k, v in result.versions.items()]


def _combined_env(results: Sequence[RunResult]) -> list[tuple[str, str]]:
    """The environment of several runs: one value per item, or each value with its runs."""
    keys: list[str] = []
    for r in results:
        keys += [k for k in r.versions if k not in keys]
    rows = []
    for key in keys:
        by_value: dict[str, list[str]] = {}
        for r in results:
            by_value.setdefault(str(r.versions.get(key, "—")), []).append(r.name)
        if len(by_value) == 1:
            rows.append((key, next(iter(by_value))))
        else:
            rows.append((key, "; ".join(f"{v} ({', '.join(n)})" for v, n in by_value.items())))
    return rows


def _kv_table(rows: Sequence[tuple[str, str]], headers: Sequence[str]) -> str:
    body = "".join(f'<tr><th>{_e(k)}</th><td class="val">{_e(v)}</td></tr>' for k, v in rows)
    head = "".join(f"<th>{_e(h)}</th>" for h in headers)
    table = f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
    return f'<div class="scroll">{table}</div>'


def _section(
    result: RunResult,
    *,
    level: int = 2,
    with_title: bool = True,
    figures=None,
    with_env: bool = True,
    link_prefix: str = "",
) -> str:
    """The body of one run: summary, paper comparison, metrics, figures, config, docs."""
    exp = result.experiment
    summary = exp.summary if exp is not None else ""
    metrics_doc = exp.metrics if exp is not None else {}
    doc = exp.doc if exp is not None else ""
    h, hs = f"h{level}", f"h{level + 1}"
    size = "quick" if result.quick else "full"
    parts = []
    if with_title:
        parts.append(
            f'<{h} id="{_anchor(result.name)}">{_e(result.name)}'
            f'<span class="badge">{size}</span></{h}>'
        )
    if summary:
        parts.append(f'<p class="summary">{_e(summary)}</p>')
    reused = " · reused an existing run with the same config" if result.skipped else ""
    parts.append(
        f'<p class="meta">seed {_e(result.seed)} · {_e(size)} size · '
        f"{_e(_fmt_scalar(float(result.wall_seconds)))} s · finished {_e(result.finished)} · "
        f"folder <code>{_e(result.out)}</code>{_e(reused)}</p>"
    )
    if result.error:
        parts.append(f'<p class="error"><strong>Failed:</strong> {_e(result.error)}</p>')
    comparison = comparison_for(result)
    if comparison is not None:
        parts.append(f"<{hs}>Paper vs widenet</{hs}>")
        parts.append(render_comparison(comparison))
    if not result.error:
        parts.append(f"<{hs}>Metrics</{hs}>")
        parts.append(render_metrics(result.metrics, metrics_doc))
    if figures is None:
        figures = [] if result.error else result.figures
    if figures:
        parts.append(f"<{hs}>Figures</{hs}>")
        parts.extend(_figure_html(p, i, link_prefix) for i, p in enumerate(figures, 1))
    parts.append(f"<{hs}>Config</{hs}>")
    rows = [(k, _inline(v)) for k, v in result.config.items()]
    rows += [("seed", str(result.seed)), ("quick", _fmt_scalar(result.quick))]
    parts.append(_kv_table(rows, ("key", "value")))
    run_rows = []
    if result.command:
        run_rows.append(("command", result.command))
    run_rows.append(("started", result.started))
    if with_env:
        parts.append(f"<{hs}>Environment</{hs}>")
        parts.append(_kv_table(_env_rows(result) + run_rows, ("item", "value")))
    else:
        parts.append(_kv_table(run_rows, ("run", "value")))
    if doc:
        parts.append(f"<{hs}>About this experiment</{hs}>")
        parts.append(render_doc(doc))
    return "\n".join(parts)


def _page(title: str, body: str, nav: str = "") -> str:
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{_e(title)}</title>\n<style>{_CSS}</style>\n</head>\n"
        f'<body id="top">\n{nav}<main>\n{body}\n</main>\n</body>\n</html>\n'
    )


def render_run(result: RunResult, figures: Sequence[Path] | None = None) -> str:
    """The HTML report of one run; ``figures`` (PNG paths) default to ``result.figures``."""
    body = f"<h1>{_e(result.name)}</h1>\n" + _section(result, with_title=False, figures=figures)
    return _page(f"widenet · {result.name}", body)


def _key_number(result: RunResult, comparison: PaperComparison | None) -> tuple[str, str]:
    """(key number of this run, the reference it is compared with) for the summary table."""
    if result.error:
        return "—", ""
    if comparison is not None and comparison.key is not None:
        quantity, paper, ours = comparison.key
        return f"{quantity}: {ours}", f"{paper} ({comparison.reference})"
    exp = result.experiment
    key = getattr(exp, "key", None) if exp is not None else None
    if key and key in result.metrics:
        return f"{key}: {_inline(result.metrics[key])}", getattr(exp, "reference", None) or ""
    for k, v in result.metrics.items():
        if _is_number(v):
            return f"{k}: {_fmt_scalar(v)}", ""
    return "—", ""


def render_combined(results: Sequence[RunResult], title: str = "widenet demo") -> str:
    """One HTML page for several runs.

    A sticky contents bar, a summary table (experiment, status, key number vs reference,
    time), the environment once, then one section per run, each ending in a back-to-top link.
    Figure links point into ``<name>/figures/`` beside the page.
    """
    total = sum(float(r.wall_seconds) for r in results)
    seeds = sorted({r.seed for r in results})
    nav_links = "".join(f'<a href="#{_anchor(r.name)}">{_e(r.name)}</a>' for r in results)
    nav = (
        '<nav class="bar" aria-label="contents"><strong><a href="#top">'
        f"{_e(title)}</a></strong>"
        f'<a href="#summary">summary</a><a href="#environment">environment</a>{nav_links}</nav>\n'
    )
    rows = []
    for r in results:
        comparison = comparison_for(r)
        key, ref = _key_number(r, comparison)
        if r.error:
            status = '<span class="bad">failed</span>'
        elif r.skipped:
            status = '<span class="ok">ok</span> (reused)'
        else:
            status = '<span class="ok">ok</span>'
        if comparison is not None and not comparison.same_size:
            ref += " — not the paper's size" if ref else ""
        rows.append(
            f'<tr><th><a href="#{_anchor(r.name)}">{_e(r.name)}</a></th><td>{status}</td>'
            f"<td>{_e(key)}</td><td>{_e(ref)}</td>"
            f'<td class="num">{float(r.wall_seconds):.1f} s</td></tr>'
        )
    summary = (
        '<h2 id="summary">Summary</h2>\n<div class="scroll"><table><thead><tr><th>experiment</th>'
        "<th>status</th><th>key number (this run)</th><th>reference</th><th>time</th></tr>"
        f"</thead><tbody>{''.join(rows)}</tbody></table></div>"
    )
    env_rows = _combined_env(results)
    env = '<h2 id="environment">Environment</h2>\n' + _kv_table(env_rows, ("item", "value"))
    failed = sum(1 for r in results if r.error)
    header = (
        f"<h1>{_e(title)}</h1>\n"
        f'<p class="meta">{len(results)} experiment(s), {failed} failed · seed '
        f"{_e(', '.join(map(str, seeds)))} · {_e(_fmt_scalar(total))} s of compute</p>"
    )
    top = '<p class="top"><a href="#top">↑ back to top</a></p>'
    sections = "\n".join(
        _section(r, with_env=False, link_prefix=f"{r.name}/") + top for r in results
    )
    return _page(title, "\n".join([header, summary, env, sections]), nav=nav)
