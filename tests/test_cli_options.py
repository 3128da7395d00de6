"""One option name, one meaning and one default across the commands (issue 17).

The options of every command are collected by click introspection of the root app; an option
name used by several commands must have one default and one help text everywhere, unless it is
in ``PER_COMMAND`` with the written reason why its meaning or default belongs to the command.
The aliases of the train/test commands (``--data``/``--n``) are checked to do what their
primary names do.
"""

from __future__ import annotations

import json
from collections import defaultdict

import numpy as np
import pytest
import typer.main
from typer.testing import CliRunner

from widenet.cli import app

GROUP = typer.main.get_command(app)

# Option names whose default or help is the command's own, and why. Every entry must still be
# needed (test_the_whitelist_is_not_stale), so it cannot hide a later accidental difference.
PER_COMMAND = {
    "--out": "each command writes its own output (format and content named in its help)",
    "--seed": "each command's help names which random draws the seed drives",
    "--width": "the width of the command's network; commands that need one have a default "
    "suited to what they measure, kernel/du-bounds take it as optional",
    "--time": "solve/predict take a list of times, fit-predict one time of its estimator",
    "--tol": "a tolerance of each command's own solver or test (CG residual, |grad L|, "
    "distance to a phase boundary)",
    "--ridge": "solve's absolute ridge, fit-predict's grid relative to mean diag K, "
    "random-features' penalty: the wrapped library functions' definitions",
    "--depth": "signal studies propagation through depth (default 10, Schoenholz et al. 2017); "
    "fit-predict takes a repeatable grid",
    "--activation": "critical-init's subject is tanh's order-to-chaos transition (Poole et al. "
    "2016); relu has a single critical point",
    "--data": "du-bounds/du-train default to Du et al.'s setting, the unit sphere; embed and "
    "condense read optional inputs to check on",
    "--n": "regime and signal default to a subset (128, 256 points): their cost grows with n",
    "--n-train": "random-features defaults to 200 training points (its sweep goes to 20 n "
    "features)",
    "--train": "weighted-fit's training inputs are a required file paired with --labels",
    "--parameterization": "kernel builds an architecture (default ntk, wn.mlp's; standard needs "
    "--width); the weights-file commands read nn.Linear weights as stored (default standard)",
    "--scheduler": "kernel/ntk compute tiles on it, solve runs its mat-vecs on a Dask address",
    # Different meanings under one name: renaming would break scripts (issue 17 keeps every
    # option name), so each command's help states its meaning.
    "--kernel": "ntk/nngp in solve, predict, fit-predict; du-train's --kernel/--no-kernel "
    "switches the kernel predictions on",
    "--labels": "Du et al.'s label choice (du-bounds, du-train) vs weighted-fit's label file",
    "--model": "fit-predict's estimator, signal's weights file, weighted-fit's model family",
    "--test": "test inputs of the train/test commands; label-shift's two-sample test",
    "--target": "frequency's targets y; the shift commands' target-domain inputs",
    "--targets": "train targets (solve, predict) vs hessian's targets file",
    "--delta": "du-bounds' failure probability; frequency's filter variance",
    "--alpha": "embed's splitting share; phase-point's output scale",
    "--threshold": "condense's cosine threshold; signal's healthy ratio range",
    "--normalize": "h-infinity normalises inputs, covariate-weights rescales weights",
    "--classifier": "covariate-weights' domain classifier; label-shift's black-box predictor",
}

# Other names of options: alias -> the primary name it stands for (README, CLI conventions).
ALIASES = {"--data": "--train", "--n": "--n-train"}


def _options():
    """{name: [(command, default, help)]} over primary names, and the aliases seen."""
    ctx = typer.Context(GROUP)
    primary, aliases = defaultdict(list), defaultdict(set)
    for name in GROUP.list_commands(ctx):
        command = GROUP.get_command(ctx, name)
        for param in command.params:
            if param.param_type_name != "option":
                continue
            first, *others = param.opts
            primary[first].append((name, repr(param.default), param.help))
            for other in others:
                if other.startswith("--"):
                    aliases[other].add(first)
    return primary, aliases


def test_one_name_one_default_and_one_help():
    primary, _ = _options()
    assert len(primary) > 40  # the introspection found the options (it cannot pass on nothing)
    problems = []
    for name, uses in sorted(primary.items()):
        if len(uses) < 2 or name in PER_COMMAND:
            continue
        defaults = {default for _, default, _ in uses}
        helps = {text for _, _, text in uses}
        if len(defaults) > 1 or len(helps) > 1:
            problems.append(f"{name}: {uses}")
    assert not problems, "\n".join(problems)


def test_the_shared_defaults_are_the_documented_ones():
    primary, _ = _options()
    expected = {"--w-std": repr(2**0.5), "--b-std": "0.0", "--dtype": "'float64'"}
    for name, default in expected.items():
        assert {d for _, d, _ in primary[name]} == {default}, name
    # The commands named in the issue have them (a regression would drop a command silently).
    users = {name: {c for c, _, _ in primary[name]} for name in expected}
    assert {"kernel", "ntk", "fit-predict", "random-features", "embed"} <= users["--w-std"]
    assert {"kernel", "ntk", "du-train", "signal", "h-infinity"} <= users["--dtype"]


def test_the_whitelist_is_not_stale():
    primary, _ = _options()
    for name, reason in PER_COMMAND.items():
        assert reason.strip(), name
        uses = primary[name]
        differs = len({d for _, d, _ in uses}) > 1 or len({h for _, _, h in uses}) > 1
        assert differs, f"{name} is the same everywhere now: remove it from PER_COMMAND"


def test_aliases_stand_for_one_option_each():
    _, aliases = _options()
    for alias, firsts in aliases.items():
        if alias in ALIASES:
            assert firsts == {ALIASES[alias]}, (alias, firsts)
    assert set(ALIASES) <= set(aliases)


def _invoke(*args):
    result = CliRunner().invoke(app, [str(a) for a in args])
    assert "Traceback" not in result.output
    return result


@pytest.mark.parametrize("primary, alias", [("--train", "--data"), ("--n-train", "--n")])
def test_train_test_aliases_give_the_same_result(tmp_path, primary, alias):
    # fit-predict on iris: the alias must select the same split and so the same predictions.
    # Bit-identical: the two runs are the same computation (same seed, same options).
    base = {"--train": "iris", "--test": "iris", "--n-train": 40, "--n-test": 30}
    outputs = []
    for i, name in enumerate((primary, alias)):
        args = []
        for option, value in base.items():
            args += [name if option == primary else option, value]
        out = tmp_path / f"p{i}.npz"
        result = _invoke("fit-predict", *args, "--model", "regressor", "--out", out)
        assert result.exit_code == 0, result.output
        outputs.append(np.load(out)["predictions"])
    np.testing.assert_array_equal(outputs[0], outputs[1])
    assert outputs[0].shape[0] == 30


def test_n_alias_counts_training_points(tmp_path):
    # --data iris --n 40: 40 training points (the rest of the 150 minus --n-test are unused).
    out = tmp_path / "p.json"
    args = ["random-features", "--data", "iris", "--test", "iris", "--n", 40, "--n-test", 30]
    result = _invoke(*args, "-N", 20, "-N", 40, "--out", out)
    assert result.exit_code == 0, result.output
    assert json.loads(out.read_text())["threshold"] == 40  # N = n: the training set's size


@pytest.mark.parametrize(
    "args, message",
    [
        (["--tile", 8], "--tile is for a .zarr --out"),
        (["--scheduler", "processes"], "--scheduler and --workers are for a .zarr"),
    ],
)
def test_ntk_refuses_store_options_without_a_store(tmp_path, args, message):
    # --tile, --scheduler mean the store's tile and scheduler: not silently ignored in memory.
    out = tmp_path / "T.npy"
    result = _invoke("ntk", "--width", 8, "--data", "iris", "--n", 4, *args, "--out", out)
    assert result.exit_code == 2 and message in result.output, result.output
    assert not out.exists()
