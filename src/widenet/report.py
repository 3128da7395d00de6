"""Self-contained HTML reports of lab runs.

One file, readable offline: the CSS is inline, there is no JavaScript, and figures are embedded
as ``data:image/png;base64,...`` URIs. Every piece of text from a run (config values, metric
names, docstrings) is escaped with :func:`html.escape`.
"""

from __future__ import annotations

import base64
import html
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from widenet.lab import RunResult

__all__ = ["render_combined", "render_run"]

_CSS = """
:root { --fg: #1d2330; --muted: #5b6475; --line: #dde1e8; --accent: #2f5fb3; --bg: #fbfbfd; }
* { box-sizing: border-box; }
body { margin: 0; background: var(--bg); color: var(--fg);
  font: 15px/1.55 -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif; }
main { max-width: 1040px; margin: 0 auto; padding: 28px 24px 64px; }
h1 { font-size: 1.75em; margin: 0 0 4px; }
h2 { font-size: 1.35em; margin: 40px 0 8px; padding-top: 12px; border-top: 2px solid var(--line); }
h3 { font-size: 1.05em; margin: 22px 0 6px; color: var(--muted); text-transform: uppercase;
  letter-spacing: .04em; }
p.summary { font-size: 1.08em; margin: 4px 0 14px; }
p.meta, .muted { color: var(--muted); font-size: .9em; }
a { color: var(--accent); }
table { border-collapse: collapse; margin: 6px 0 10px; font-size: .92em; }
th, td { text-align: left; vertical-align: top; padding: 4px 12px 4px 0;
  border-bottom: 1px solid var(--line); }
th { font-weight: 600; white-space: nowrap; }
td.num { font-variant-numeric: tabular-nums; }
code, pre, td.val { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace;
  font-size: .9em; }
td.val { overflow-wrap: anywhere; max-width: 640px; min-width: 6em; }
pre.doc { background: #f1f3f7; padding: 12px 14px; border-radius: 6px; white-space: pre-wrap;
  overflow-x: auto; }
figure { margin: 14px 0 22px; }
figure img { max-width: 100%; height: auto; border: 1px solid var(--line); border-radius: 4px;
  background: #fff; }
figcaption { color: var(--muted); font-size: .88em; }
nav.toc { background: #f1f3f7; border-radius: 6px; padding: 10px 18px; margin: 14px 0; }
nav.toc ol { margin: 4px 0; padding-left: 20px; }
p.error { background: #fdecec; color: #8a1c1c; padding: 8px 12px; border-radius: 6px; }
.badge { display: inline-block; font-size: .75em; padding: 1px 7px; border-radius: 9px;
  background: #e4ebf7; color: var(--accent); margin-left: 6px; vertical-align: middle; }
"""

_MAX_LIST = 12  # list metrics longer than this are shown abbreviated


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _fmt_scalar(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return str(value).lower() if isinstance(value, bool) else "null"
    if isinstance(value, float):
        if value == 0 or (1e-3 <= abs(value) < 1e5):
            return f"{value:.4g}"
        return f"{value:.3e}"
    return str(value)


def _fmt_value(value: Any) -> str:
    """Compact text for a metric or config value (lists abbreviated, floats to 4 digits)."""
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{k}: {_fmt_value(v)}" for k, v in value.items()) + "}"
    if isinstance(value, (list, tuple)):
        items = list(value)
        if len(items) > _MAX_LIST:
            head = ", ".join(_fmt_value(v) for v in items[:5])
            tail = ", ".join(_fmt_value(v) for v in items[-3:])
            return f"[{head}, …, {tail}] ({len(items)} values)"
        return "[" + ", ".join(_fmt_value(v) for v in items) + "]"
    return _fmt_scalar(value)


def _is_scalar(value: Any) -> bool:
    return value is None or isinstance(value, (bool, int, float, str))


def _table(rows: Sequence[tuple[str, str, str]], headers: Sequence[str]) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in headers)
    body = []
    for row in rows:
        cells = "".join(
            f"<th>{_e(c)}</th>" if i == 0 else f'<td class="{"val" if i == 1 else ""}">{_e(c)}</td>'
            for i, c in enumerate(row)
        )
        body.append(f"<tr>{cells}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _metrics_html(metrics: Mapping[str, Any], doc: Mapping[str, str]) -> str:
    scalars = [(k, v) for k, v in metrics.items() if _is_scalar(v)]
    others = [(k, v) for k, v in metrics.items() if not _is_scalar(v)]
    parts = []
    if scalars:
        rows = [(k, _fmt_value(v), doc.get(k, "")) for k, v in scalars]
        parts.append(_table(rows, ("metric", "value", "meaning")))
    if others:
        rows = [(k, _fmt_value(v), doc.get(k, "")) for k, v in others]
        parts.append(_table(rows, ("metric", "values", "meaning")))
    if not parts:
        parts.append('<p class="muted">No metrics.</p>')
    return "\n".join(parts)


def _figure_html(path, index: int) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return (
        f'<figure><img alt="{_e(path.stem)}" src="data:image/png;base64,{data}">'
        f"<figcaption>Figure {index}: {_e(path.name)}</figcaption></figure>"
    )


def _anchor(name: str) -> str:
    return "exp-" + re.sub(r"[^a-z0-9-]+", "-", name.lower())


def _section(result: RunResult, *, level: int = 2, with_title: bool = True, figures=None) -> str:
    """The body of one run: summary, metrics, figures, config, versions, documentation."""
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
    else:
        parts.append(f"<{hs}>Metrics</{hs}>")
        parts.append(_metrics_html(result.metrics, metrics_doc))
    if figures is None:
        figures = [] if result.error else result.figures
    if figures:
        parts.append(f"<{hs}>Figures</{hs}>")
        parts.extend(_figure_html(p, i) for i, p in enumerate(figures, 1))
    parts.append(f"<{hs}>Config</{hs}>")
    rows = [(k, _fmt_value(v)) for k, v in result.config.items()]
    rows += [("seed", str(result.seed)), ("quick", _fmt_scalar(result.quick))]
    parts.append(_table(rows, ("key", "value")))
    parts.append(f"<{hs}>Environment</{hs}>")
    env = [(k, str(v)) for k, v in result.versions.items()]
    if result.command:
        env.append(("command", result.command))
    env.append(("started", result.started))
    parts.append(_table(env, ("item", "value")))
    if doc:
        parts.append(f"<{hs}>About this experiment</{hs}>")
        parts.append(f'<pre class="doc">{_e(doc)}</pre>')
    return "\n".join(parts)


def _page(title: str, body: str) -> str:
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{_e(title)}</title>\n<style>{_CSS}</style>\n</head>\n"
        f"<body>\n<main>\n{body}\n</main>\n</body>\n</html>\n"
    )


def render_run(result: RunResult, figures: Sequence[Path] | None = None) -> str:
    """The HTML report of one run; ``figures`` (PNG paths) default to ``result.figures``."""
    body = f"<h1>{_e(result.name)}</h1>\n" + _section(result, with_title=False, figures=figures)
    return _page(f"widenet · {result.name}", body)


def render_combined(results: Sequence[RunResult], title: str = "widenet demo") -> str:
    """One HTML page for several runs: a table of contents, then one section per run."""
    toc = "".join(
        f'<li><a href="#{_anchor(r.name)}">{_e(r.name)}</a>'
        f"{' — ' + _e(r.experiment.summary) if r.experiment else ''}</li>"
        for r in results
    )
    total = sum(float(r.wall_seconds) for r in results)
    seeds = sorted({r.seed for r in results})
    versions = results[0].versions if results else {}
    env = ", ".join(f"{k} {v}" for k, v in versions.items() if k != "platform")
    seed_text = ", ".join(map(str, seeds))
    header = (
        f"<h1>{_e(title)}</h1>\n"
        f'<p class="meta">{len(results)} experiment(s) · seed {_e(seed_text)} · '
        f"{_e(_fmt_scalar(total))} s of compute · {_e(env)}</p>\n"
        f'<nav class="toc"><strong>Contents</strong><ol>{toc}</ol></nav>'
    )
    sections = "\n".join(_section(r) for r in results)
    return _page(title, header + "\n" + sections)
