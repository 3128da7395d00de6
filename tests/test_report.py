"""HTML reports: metric tables, paper comparisons, docs as HTML, the combined page, figures."""

from __future__ import annotations

import re
import struct
import zlib
from html.parser import HTMLParser
from typing import ClassVar

import numpy as np
import pytest

from widenet import lab, report

# --------------------------------------------------------------------------------------------
# A tiny HTML table reader (cell texts per row), to assert on structure, not on substrings.


class _Tables(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tables: list[list[list[str]]] = []
        self._row: list[str] | None = None
        self._cell: list[str] | None = None
        self.tags: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        if tag == "table":
            self.tables.append([])
        elif tag == "tr":
            self._row = []
        elif tag in ("td", "th"):
            self._cell = []

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None and self._row is not None:
            self._row.append("".join(self._cell).strip())
            self._cell = None
        elif tag == "tr" and self._row is not None:
            self.tables[-1].append(self._row)
            self._row = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)


def tables(html: str) -> list[list[list[str]]]:
    parser = _Tables()
    parser.feed(html)
    return parser.tables


# --------------------------------------------------------------------------------------------
# Metrics


def test_dataset_by_method_is_a_two_way_table():
    metrics = {
        "accuracy": {
            "iris": {"ntk": 0.95, "rf": 0.9},
            "wine": {"ntk": 0.98, "rf": 0.97},
        }
    }
    html = report.render_metrics(metrics, {"accuracy": "data set -> method -> accuracy"})
    (table,) = tables(html)
    assert table[0] == ["", "ntk", "rf"]
    assert table[1] == ["iris", "0.95", "0.9"]
    assert table[2] == ["wine", "0.98", "0.97"]
    assert "{" not in html and "data set -&gt; method" in html


def test_per_width_lists_share_one_table_with_the_width_axis():
    metrics = {"widths": [10, 100, 1000], "error": [0.5, 0.1, 0.01], "drift": [3.0, 1.0, 0.3]}
    (table,) = tables(report.render_metrics(metrics))
    assert table[0] == ["widths", "error", "drift"]
    assert [row[0] for row in table[1:]] == ["10", "100", "1000"]
    assert table[3] == ["1000", "0.01", "0.3"]


def test_long_curves_are_collapsed_and_key_by_list_uses_the_axis():
    metrics = {
        "depths": [2, 4],
        "ratio": {"tanh/xavier": [1.0, 2.0], "relu/he": [0.5, 0.25]},
        "curves": [list(np.linspace(0, 1, 40)), list(np.linspace(1, 2, 40))],
    }
    html = report.render_metrics(metrics)
    _, ratio, curves = tables(html)  # depths alone, then the two nested metrics
    assert ratio[0] == ["key \\ depths", "2", "4"]
    assert ratio[1] == ["tanh/xavier", "1", "2"]
    # 2 curves of 40 points: one row per point, one column per curve, inside <details>.
    assert len(curves) == 41 and len(curves[0]) == 3
    assert html.count("<details>") == 1 and "40 rows" in html


def test_numeric_keys_do_not_borrow_an_axis():
    # {width: [log error, flips, drift]}: the positions are quantities, not the widths.
    metrics = {"widths": [1, 2, 3], "paper": {"500": [-1.6, 0.02, 2.8]}}
    html = report.render_metrics(metrics)
    table = tables(html)[-1]
    assert table[0] == ["key \\ position", "0", "1", "2"]


def test_records_become_rows():
    metrics = {"points": [{"gamma": 0.5, "slope": -0.5, "rd": [1.0, 0.5]}, {"gamma": 1.0}]}
    (table,) = tables(report.render_metrics(metrics))
    assert table[0] == ["gamma", "slope", "rd"]
    assert table[1] == ["0.5", "-0.5", "1, 0.5"]
    assert table[2] == ["1", "—", "—"]


# --------------------------------------------------------------------------------------------
# Documentation


DOC = """toy: one line.

What it measures
----------------
A :class:`widenet.Kernel` and ``code``; the numbers:

    m      error
    100    0.5

* a bullet

.. raw:: html

   <script>alert(1)</script>
"""


def test_doc_is_rendered_html_not_raw_rest():
    html = report.render_doc(DOC)
    assert html.startswith('<div class="doc">')
    assert re.search(r"<h\d[^>]*>What it measures</h\d>", html)
    assert "----" not in html and ":class:" not in html
    assert "widenet.Kernel" in html
    assert re.search(r"<pre[^>]*>\s*m +error\n100 +0.5", html)  # the indented table, verbatim
    assert "<li>" in html
    assert "<script>" not in html  # raw HTML is disabled


def test_every_builtin_doc_renders_without_docutils_errors():
    for name, exp in lab.experiments().items():
        html = report.render_doc(exp.doc)
        assert html.startswith('<div class="doc">'), name
        assert "system-message" not in html and "problematic" not in html, name


# --------------------------------------------------------------------------------------------
# Paper comparison and the combined report


class TinyConfig(lab.Config):
    n: int = 100
    QUICK: ClassVar[dict] = {"n": 10}


def tiny_run(config: TinyConfig, ctx: lab.RunContext) -> dict:
    fig = ctx.figure(figsize=(2, 2))
    fig.add_subplot().plot([0, 1], [0, config.n])
    ctx.save_figure(fig, "line")
    return {"n": config.n, "error": 1.0 / config.n, "widths": [1, 2], "per_width": [0.1, 0.2]}


def tiny_paper(config: dict, metrics: dict) -> report.PaperComparison:
    return report.PaperComparison(
        reference="Someone (2020), Fig. 1",
        paper_conditions="n = 100",
        run_conditions=f"n = {config['n']}",
        rows=[("error", "0.01", report.format_value(metrics["error"]))],
        verdict="Reproduced." if config["n"] >= 100 else "Not at this size.",
        same_size=config["n"] >= 100,
    )


@pytest.fixture
def tiny():
    metrics = {"n": "size", "error": "1/n", "widths": "w", "per_width": "v"}
    lab.register("tiny", summary="Tiny.", config=TinyConfig, metrics=metrics, paper=tiny_paper)(
        tiny_run
    )
    lab.register(
        "tiny-b",
        summary="Tiny b.",
        config=TinyConfig,
        metrics=metrics,
        key="error",
        reference="0.01 (theory)",
    )(tiny_run)
    yield
    lab.unregister("tiny")
    lab.unregister("tiny-b")


def test_register_checks_key_and_paper():
    with pytest.raises(ValueError, match="key 'nope'"):
        lab.register("tiny-c", summary="x", config=TinyConfig, metrics={"a": "b"}, key="nope")
    with pytest.raises(TypeError, match="paper must be a function"):
        lab.register("tiny-c", summary="x", config=TinyConfig, metrics={}, paper="Du 2018")


def test_paper_table_with_conditions_verdict_and_size_caveat(tiny, tmp_path):
    quick = lab.run_experiment("tiny", quick=True, out=tmp_path / "q")
    html = quick.report.read_text()
    paper = next(t for t in tables(html) if t[0][1].startswith("paper:"))
    assert paper[0] == ["", "paper: Someone (2020), Fig. 1", "widenet (this run)"]
    assert paper[1] == ["conditions", "n = 100", "n = 10"]
    assert paper[2] == ["error", "0.01", "0.1"]
    assert "Not the paper's size" in html and "Verdict: Not at this size." in html
    full = lab.run_experiment("tiny", out=tmp_path / "f")
    html = full.report.read_text()
    assert "Not the paper" not in html and "Verdict: Reproduced." in html


def test_combined_report_structure(tiny, tmp_path):
    path, results = lab.run_demo(tmp_path / "demo", only=["tiny", "tiny-b"])
    html = path.read_text()
    assert html.count('<h2 id="environment">') == 1
    assert html.count(">torch_threads<") == 1  # the environment once, not per experiment
    assert re.search(r'<nav class="bar"[^>]*>', html) and "position: sticky" in html
    assert html.count('href="#top"') >= 1 + len(results)  # bar + one back-to-top per section
    summary = next(t for t in tables(html) if t[0][:2] == ["experiment", "status"])
    assert [row[0] for row in summary[1:]] == ["tiny", "tiny-b"]
    assert summary[1][2] == "error: 0.1" and "Someone (2020)" in summary[1][3]
    assert "not the paper's size" in summary[1][3]
    assert summary[2][2] == "error: 0.1" and summary[2][3] == "0.01 (theory)"
    # Figures inline, with a link to the SVG copy beside the run.
    assert html.count("data:image/png;base64,") == 2
    assert 'href="tiny/figures/line.svg"' in html and "<script" not in html


# --------------------------------------------------------------------------------------------
# Figures


def _png_dpi(path) -> float:
    data = path.read_bytes()
    pos = 8
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos : pos + 8])
        if kind == b"pHYs":
            ppm_x, _, unit = struct.unpack(">IIB", data[pos + 8 : pos + 17])
            assert unit == 1  # metres
            return ppm_x * 0.0254
        pos += 12 + length
        zlib.crc32(b"")  # (chunks are walked, not validated)
    raise AssertionError("no pHYs chunk")


def test_figures_are_150_dpi_png_with_svg_copy(tiny, tmp_path):
    result = lab.run_experiment("tiny", quick=True, out=tmp_path / "r")
    (png,) = result.figures
    assert _png_dpi(png) == pytest.approx(lab.FIGURE_DPI, abs=0.5)
    assert lab.FIGURE_DPI >= 150
    svg = png.with_suffix(".svg")
    assert svg.read_text().lstrip().startswith("<?xml") and "<svg" in svg.read_text()
    # Deterministic: the same run gives the same bytes.
    again = lab.run_experiment("tiny", quick=True, out=tmp_path / "r2")
    assert again.figures[0].with_suffix(".svg").read_bytes() == svg.read_bytes()


def test_comparison_key_row():
    rows = [("a", "1", "2"), ("b", "3", "4")]
    base = dict(reference="r", paper_conditions="p", run_conditions="q", rows=rows)
    assert report.PaperComparison(**base).key == ("a", "1", "2")
    assert report.PaperComparison(**base, key_row=-1).key == ("b", "3", "4")
    assert report.PaperComparison(**{**base, "rows": []}).key is None


def test_text_colour_follows_cell_darkness():
    assert report.text_color_for((0.0, 0.0, 0.0, 1.0)) == "white"
    assert report.text_color_for((1.0, 1.0, 1.0, 1.0)) == "black"
    assert report.text_color_for((1.0, 1.0, 0.0, 1.0)) == "black"  # yellow is light
    assert report.text_color_for((0.0, 0.0, 0.6, 1.0)) == "white"  # dark blue


def test_annotate_heatmap_uses_both_colours_on_viridis():
    from matplotlib.figure import Figure

    fig = Figure()
    ax = fig.add_subplot()
    values = np.array([[0.0, 1.0], [np.nan, 0.5]])
    im = ax.imshow(values, cmap="viridis", vmin=0, vmax=1)
    report.annotate_heatmap(ax, im, [["lo", "hi"], ["nan", "mid"]])
    colours = {t.get_text(): t.get_color() for t in ax.texts}
    assert colours["lo"] == "white"  # viridis' dark purple end
    assert colours["hi"] == "black"  # its yellow end
    assert colours["nan"] == "black"


# --------------------------------------------------------------------------------------------
# Demo progress and selection


def test_demo_progress_lines_and_eta(tiny, tmp_path):
    seen: list[lab.DemoProgress] = []
    lab.run_demo(tmp_path / "demo", only=["tiny", "tiny-b"], on_progress=seen.append)
    assert [(p.index, p.total, p.done) for p in seen] == [
        (1, 2, False),
        (1, 2, True),
        (2, 2, False),
        (2, 2, True),
    ]
    assert seen[0].eta is None  # nothing known yet
    assert seen[2].eta is not None and seen[2].eta >= 0  # the mean of the runs so far
    assert seen[-1].eta == 0
    assert all(b.elapsed >= a.elapsed for a, b in zip(seen, seen[1:], strict=False))
    assert re.fullmatch(r"\[1/2\] tiny \.\.\. · elapsed 0:\d\d · ETA \?", seen[0].line())
    assert re.fullmatch(
        r"\[2/2\] tiny-b done \(\d+\.\d s\) · elapsed \d+:\d\d · ETA ~0:00", seen[-1].line()
    )
    # A second demo knows each experiment's previous time: an ETA from the start.
    again: list[lab.DemoProgress] = []
    lab.run_demo(tmp_path / "demo", only=["tiny", "tiny-b"], on_progress=again.append, force=True)
    assert again[0].eta is not None


def test_demo_only_validation(tiny, tmp_path):
    with pytest.raises(lab.UnknownExperimentError, match="nope"):
        lab.run_demo(tmp_path / "d", only=["tiny", "nope"])
    with pytest.raises(ValueError, match="more than once"):
        lab.run_demo(tmp_path / "d", only=["tiny", "tiny"])
    with pytest.raises(ValueError, match="not both"):
        lab.run_demo(tmp_path / "d", only=["tiny"], names=["tiny"])
    with pytest.raises(ValueError, match="at least one"):
        lab.run_demo(tmp_path / "d", only=[])
    assert not (tmp_path / "d").exists()  # nothing ran


def test_threads_limit_blas_pools_during_the_run_only(tiny, tmp_path):
    from threadpoolctl import threadpool_info

    def pools():
        return {p["filepath"]: p["num_threads"] for p in threadpool_info()}

    seen = {}

    def probe(config, ctx):
        seen["during"] = set(pools().values())
        return {}

    before = pools()
    lab.register("tiny-probe", summary="x", config=TinyConfig, metrics={})(probe)
    try:
        lab.run_experiment("tiny-probe", quick=True, out=tmp_path / "p", threads=1)
    finally:
        lab.unregister("tiny-probe")
    assert seen["during"] <= {1}
    after = pools()
    # Pools present before the run get their limits back (one a library loads during the run
    # keeps the limit: its default is unknown).
    assert {k: after[k] for k in before} == before


def test_combined_environment_shows_differences_once(tiny, tmp_path):
    _, results = lab.run_demo(tmp_path / "demo", only=["tiny", "tiny-b"])
    results[1].versions = {**results[1].versions, "torch": "0.0-other"}
    html = report.render_combined(results)
    env = next(t for t in tables(html) if t[0] == ["item", "value"])
    torch_row = next(row for row in env if row[0] == "torch")
    assert "0.0-other (tiny-b)" in torch_row[1] and "(tiny)" in torch_row[1]
    python_row = next(row for row in env if row[0] == "python")
    assert "(" not in python_row[1]  # the same for both: shown once, plainly
