"""condensation: a width-1000 net condenses at small init and not at NTK scale."""

from __future__ import annotations

import pytest

from widenet import lab
from widenet.experiments.condensation import METRICS, CondensationConfig


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    # Two width-1000 networks to the loss tolerance (~1100 steps each): a few seconds idle.
    out = tmp_path_factory.mktemp("cd") / "run"
    return lab.run_experiment("condensation", quick=True, out=out, seed=0, threads=1)


def test_sizes():
    assert CondensationConfig().width == 1000 == CondensationConfig.quick().width


def test_metrics_and_figure(quick_run):
    m = quick_run.metrics
    assert set(m) == set(METRICS)
    assert m["times"][: len(CondensationConfig().times)] == [0, 100, 300, 600]
    assert [f.name for f in quick_run.figures] == ["scatter.png"]


def test_small_init_condenses_and_ntk_scale_does_not(quick_run):
    m = quick_run.metrics
    # Measured (seed 0): small init 38 directions at init -> 3 after 100 steps -> 4 at the
    # tolerance; NTK scale 42 -> 42. A few (<= 6) at the end vs essentially all at init.
    assert m["small_directions"][-1] <= 6 < 20 < m["small_directions"][0]
    assert abs(m["ntk_directions"][-1] - m["ntk_directions"][0]) <= 0.15 * m["ntk_directions"][0]
    # RD: the small-init weights grow far beyond their initial norm (15x measured); NTK-scale
    # ones barely move (0.03 measured; theory m^(γ-1) = 0.03 at m = 1000, γ = 1/2).
    assert m["small_rd"][-1] > 5 and m["ntk_rd"][-1] < 0.1
    assert m["small_regime"] == "condensed" and m["ntk_regime"] == "lazy"


def test_bad_config():
    with pytest.raises(lab.ConfigError, match="width"):
        lab.get("condensation").resolve(overrides=["width=999"])
    with pytest.raises(lab.ConfigError, match="times"):
        lab.get("condensation").resolve(overrides=["times=[100, 0]"])
