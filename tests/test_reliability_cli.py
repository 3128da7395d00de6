"""Reliability and security of the command line (issue 16, CLI side).

* No code runs from a file: a pickle whose ``__reduce__`` writes a marker file is passed, in
  every container widenet might meet (a raw pickle, a ``torch.save`` zip, a ``.npy``/``.npz``
  object array), to **every** option of every command that reads a model, weights or an array;
  the marker must never appear and the command must stop with a one-line error (exit 2).
* A file named ``.safetensors`` that is not one: an error naming the option and the file.
* An existing ``.npy``/``.npz``/``.json`` output is refused unless ``--overwrite``.
* ``--n`` must be ``>= 1`` and at most the number of points.
"""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from widenet.cli import app

runner = CliRunner()


class Payload:
    """Unpickling this runs ``exec(code)``: the code writes the marker file."""

    def __init__(self, marker):
        self.code = f"open({str(marker)!r}, 'w').write('pwned')"

    def __reduce__(self):
        return (exec, (self.code,))


def _invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Good inputs (so that only the option under test is bad) and the malicious files."""
    d = tmp_path_factory.mktemp("reliability")
    rng = np.random.default_rng(0)
    f = {"dir": d, "marker": d / "PWNED"}
    np.save(d / "x.npy", rng.standard_normal((20, 3)))
    np.save(d / "xt.npy", rng.standard_normal((10, 3)))
    np.save(d / "labels.npy", np.arange(20) % 2)
    np.save(d / "labels_t.npy", np.arange(10) % 2)
    np.save(d / "y.npy", rng.standard_normal((20, 1)))
    np.save(d / "h.npy", rng.standard_normal((20, 1)))
    net = torch.nn.Sequential(torch.nn.Linear(3, 5), torch.nn.ReLU(), torch.nn.Linear(5, 1))
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(d / "m.safetensors"))
    (d / "lw.json").write_text('{"classes": [0, 1], "weights": [1.0, 2.0]}')
    # A small kernel store of x (for `solve`'s file options).
    r = _invoke(
        "kernel", "--data", d / "x.npy", "--depth", "1", "--tile", "8", "--out", d / "K.zarr"
    )
    assert r.exit_code == 0, r.output
    payload = Payload(f["marker"])
    raw = pickle.dumps(payload)
    evil = {}
    # raw pickle bytes under every suffix
    for suffix in (".npy", ".csv", ".json", ".pt", ".safetensors"):
        evil[f"raw{suffix}"] = d / f"raw_evil{suffix}"
        evil[f"raw{suffix}"].write_bytes(raw)
    # a torch.save zip, named as a weights file and as safetensors
    torch.save(payload, d / "zip_evil.pt")
    evil["zip.pt"] = d / "zip_evil.pt"
    torch.save(payload, d / "zip_evil.safetensors")
    evil["zip.safetensors"] = d / "zip_evil.safetensors"
    # numpy object arrays (np.save/np.savez pickle them)
    np.save(d / "obj_evil.npy", np.array([payload, payload], dtype=object), allow_pickle=True)
    evil["obj.npy"] = d / "obj_evil.npy"
    np.savez(d / "obj_evil.npz", weights=np.array([payload, payload], dtype=object))
    evil["obj.npz"] = d / "obj_evil.npz"
    assert not f["marker"].exists()  # building the files ran nothing
    f["evil"] = evil
    return f


# (command line with EVIL where the malicious file goes, the option named in the error, the
# kinds of file that option accepts). Good files are named by their key in `files`.
ARRAY = ("raw.npy", "obj.npy", "raw.csv")
MODEL = ("raw.pt", "zip.pt", "raw.safetensors", "zip.safetensors")
CASES = [
    (["kernel", "--data", "EVIL", "--depth", "1", "--out", "OUT.npz"], "--data", ARRAY),
    (["kernel", "--data", "x", "--x2", "EVIL", "--tile", "8", "--out", "OUT.zarr"], "--x2", ARRAY),
    (["ntk", "--data", "EVIL", "--width", "8", "--out", "OUT.npy"], "--data", ARRAY),
    (["h-infinity", "--data", "EVIL", "--out", "OUT.npy"], "--data", ARRAY),
    (
        ["predict", "--train", "EVIL", "--test", "xt", "--train-targets", "y", "--out", "OUT.npz"],
        "--train",
        ARRAY,
    ),
    (
        ["predict", "--train", "x", "--test", "EVIL", "--train-targets", "y", "--out", "OUT.npz"],
        "--test",
        ARRAY,
    ),
    (
        ["predict", "--train", "x", "--test", "xt", "--train-targets", "EVIL", "--out", "OUT.npz"],
        "--train-targets",
        ARRAY,
    ),
    (
        ["predict", "--train", "x", "--test", "xt", "--targets", "EVIL", "--out", "OUT.npz"],
        "--train-targets",
        ARRAY,
    ),
    (
        ["predict", "--train", "x", "--test", "xt", "--train-targets", "y"]
        + ["--test-targets", "EVIL", "--out", "OUT.npz"],
        "--test-targets",
        ARRAY,
    ),
    (["solve", "K", "--targets", "EVIL", "--out", "OUT.npz"], "--targets", ARRAY),
    (
        ["solve", "K", "--targets", "y", "--time", "1", "--test-kernel", "K"]
        + ["--test-diagonal", "EVIL", "--out", "OUT.npz"],
        "--test-diagonal",
        ("raw.npy", "obj.npy"),
    ),
    (
        ["covariate-weights", "--source", "EVIL", "--target", "xt", "--out", "OUT.npy"],
        "--source",
        ARRAY,
    ),
    (
        ["covariate-weights", "--source", "x", "--target", "EVIL", "--out", "OUT.npy"],
        "--target",
        ARRAY,
    ),
    (
        ["label-shift", "--source", "EVIL", "--target", "xt", "--source-labels", "labels"]
        + ["--out", "OUT.json"],
        "--source",
        ARRAY,
    ),
    (
        ["label-shift", "--source", "x", "--target", "EVIL", "--source-labels", "labels"]
        + ["--out", "OUT.json"],
        "--target",
        ARRAY,
    ),
    (
        ["label-shift", "--source", "x", "--target", "xt", "--source-labels", "EVIL"]
        + ["--out", "OUT.json"],
        "--source-labels",
        ARRAY,
    ),
    (
        ["label-shift", "--source-pred", "EVIL", "--target-pred", "labels_t"]
        + ["--source-labels", "labels", "--out", "OUT.json"],
        "--source-pred",
        ARRAY,
    ),
    (
        ["label-shift", "--source-pred", "labels", "--target-pred", "EVIL"]
        + ["--source-labels", "labels", "--out", "OUT.json"],
        "--target-pred",
        ARRAY,
    ),
    (
        ["weighted-fit", "--train", "EVIL", "--labels", "labels", "--predict", "xt"]
        + ["--out", "OUT.npy"],
        "--train",
        ARRAY,
    ),
    (
        ["weighted-fit", "--train", "x", "--labels", "EVIL", "--predict", "xt", "--out", "OUT.npy"],
        "--labels",
        ARRAY,
    ),
    (
        ["weighted-fit", "--train", "x", "--labels", "labels", "--predict", "EVIL"]
        + ["--out", "OUT.npy"],
        "--predict",
        ARRAY,
    ),
    (
        ["weighted-fit", "--train", "x", "--labels", "labels", "--predict", "xt"]
        + ["--weights", "EVIL", "--out", "OUT.npy"],
        "--weights",
        (*ARRAY, "obj.npz"),
    ),
    (
        ["weighted-fit", "--train", "x", "--labels", "labels", "--predict", "xt"]
        + ["--label-weights", "EVIL", "--out", "OUT.npy"],
        "--label-weights",
        ("raw.json",),
    ),
    (
        ["weighted-fit", "--train", "x", "--labels", "labels", "--predict", "xt"]
        + ["--test-labels", "EVIL", "--out", "OUT.npy"],
        "--test-labels",
        ARRAY,
    ),
    (["signal", "--model", "EVIL", "--data", "x"], "--model", MODEL),
    (["signal", "--data", "EVIL", "--depth", "2", "--width", "8"], "--data", ARRAY),
    (["embed", "EVIL", "--out", "OUTDIR", "--to-widths", "6"], "MODEL", MODEL),
    (["embed", "m", "--out", "OUTDIR", "--to-widths", "6", "--data", "EVIL"], "--data", ARRAY),
    (["hessian", "EVIL", "--out", "OUTDIR", "--data", "x", "--targets", "y"], "MODEL", MODEL),
    (["hessian", "m", "--out", "OUTDIR", "--data", "EVIL", "--targets", "y"], "--data", ARRAY),
    (["hessian", "m", "--out", "OUTDIR", "--data", "x", "--targets", "EVIL"], "--targets", ARRAY),
    (
        ["hessian", "m", "--out", "OUTDIR", "--data", "x", "--targets", "y", "--toward", "EVIL"],
        "--toward",
        MODEL,
    ),
    (["condense", "EVIL", "--out", "OUTDIR"], "MODEL", MODEL),
    (["condense", "m", "--out", "OUTDIR", "--data", "EVIL"], "--data", ARRAY),
    (["du-bounds", "--data", "EVIL"], "--data", ARRAY),
    (["du-bounds", "--data", "x", "--labels", "EVIL"], "--labels", ARRAY),
    (
        ["du-train", "--data", "EVIL", "--width", "8", "--epochs", "1", "--out", "OUT.npz"],
        "--data",
        ARRAY,
    ),
    (
        ["du-train", "--data", "x", "--labels", "EVIL", "--width", "8", "--epochs", "1"]
        + ["--out", "OUT.npz"],
        "--labels",
        ARRAY,
    ),
    (["regime", "--initial", "EVIL", "--trained", "m", "--data", "x"], "--initial", MODEL),
    (["regime", "--initial", "m", "--trained", "EVIL", "--data", "x"], "--trained", MODEL),
    (["regime", "--initial", "m", "--trained", "m", "--data", "EVIL"], "--data", ARRAY),
    (["frequency", "--target", "EVIL", "--outputs", "h"], "--target", ARRAY),
    (["frequency", "--target", "h", "--outputs", "EVIL"], "--outputs", ARRAY),
    (["frequency", "--target", "h", "--output", "EVIL"], "--outputs", ARRAY),  # the old name
    (["frequency", "--target", "h", "--outputs", "h", "--x", "EVIL", "--delta", "1"], "--x", ARRAY),
    (
        ["fit-predict", "--train", "EVIL", "--test", "xt", "--train-targets", "labels"]
        + ["--out", "OUT.npz"],
        "--train",
        ARRAY,
    ),
    (
        ["fit-predict", "--train", "x", "--test", "EVIL", "--train-targets", "labels"]
        + ["--out", "OUT.npz"],
        "--test",
        ARRAY,
    ),
    (
        ["fit-predict", "--train", "x", "--test", "xt", "--train-targets", "EVIL"]
        + ["--out", "OUT.npz"],
        "--train-targets",
        ARRAY,
    ),
    (
        ["fit-predict", "--train", "x", "--test", "xt", "--train-targets", "labels"]
        + ["--test-targets", "EVIL", "--out", "OUT.npz"],
        "--test-targets",
        ARRAY,
    ),
    (
        ["random-features", "--train", "EVIL", "--test", "xt", "--train-targets", "y"]
        + ["--test-targets", "h", "--out", "OUT.json"],
        "--train",
        ARRAY,
    ),
    (
        ["random-features", "--train", "x", "--test", "EVIL", "--train-targets", "y"]
        + ["--test-targets", "h", "--out", "OUT.json"],
        "--test",
        ARRAY,
    ),
    (
        ["random-features", "--train", "x", "--test", "xt", "--train-targets", "EVIL"]
        + ["--test-targets", "h", "--out", "OUT.json"],
        "--train-targets",
        ARRAY,
    ),
    (
        ["random-features", "--train", "x", "--test", "xt", "--train-targets", "y"]
        + ["--test-targets", "EVIL", "--out", "OUT.json"],
        "--test-targets",
        ARRAY[:2],  # .npy only: the test targets here are (10, 1) floats
    ),
]

GOOD = {
    "x": "x.npy",
    "xt": "xt.npy",
    "y": "y.npy",
    "h": "h.npy",
    "labels": "labels.npy",
    "labels_t": "labels_t.npy",
    "m": "m.safetensors",
    "K": "K.zarr",
}
PARAMS = [
    pytest.param(line, option, kind, id=f"{line[0]}-{option}-{kind}")
    for line, option, kind_list in CASES
    for kind in kind_list
]


@pytest.mark.parametrize("line, option, kind", PARAMS)
def test_no_code_runs_from_any_file_option(files, tmp_path, line, option, kind):
    evil = files["evil"][kind]
    args = []
    for a in line:
        if a == "EVIL":
            args.append(evil)
        elif a in GOOD:
            args.append(files["dir"] / GOOD[a])
        elif a.startswith("OUT"):
            args.append(tmp_path / a)
        else:
            args.append(a)
    result = _invoke(*args)
    assert not files["marker"].exists(), f"{line[0]} {option} ran the pickle's code"
    # A clear one-line refusal, naming the option (exit 2: a usage error, not a traceback).
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    assert option in result.output, result.output


def test_every_file_option_is_covered():
    """The cases above name every option whose help says it reads a file, for every command."""
    import typer.main

    group = typer.main.get_command(app)
    reads = set()
    for name, cmd in group.commands.items():
        for p in cmd.params:
            text = (getattr(p, "help", "") or "").lower()
            if p.param_type_name == "argument" and p.name == "model":
                reads.add((name, "MODEL"))
            elif getattr(p, "is_flag", False) or "output" in text or p.name == "out_":
                continue
            elif any(w in text for w in (".npy", "csv", ".safetensors", "state dict", ".json")):
                reads.add((name, p.opts[0]))
    covered = {(line[0], option) for line, option, _ in CASES}
    covered |= {(line[0], a) for line, _, _ in CASES for a in line if a.startswith("--")}
    missing = sorted(reads - covered)
    assert not missing, f"file-reading options without a malicious-file case: {missing}"


@pytest.mark.parametrize("kind", ["raw.safetensors", "zip.safetensors", "text"])
def test_not_a_safetensors_file_names_the_option_and_the_file(files, tmp_path, kind):
    path = files["evil"].get(kind)
    if path is None:
        path = tmp_path / "notes.safetensors"
        path.write_text("these are not tensors\n")
    result = _invoke("condense", path, "--out", tmp_path / "run")
    assert result.exit_code == 2
    assert "MODEL" in result.output and path.name in result.output
    assert "not a valid .safetensors file" in result.output
    assert "SafetensorError" not in result.output and "Traceback" not in result.output


def test_trust_pickle_is_explicit_and_explained():
    result = _invoke("signal", "--help")
    text = " ".join(result.output.replace("│", " ").split())
    assert "--trust-pickle" in text and "runs whatever code" in text


# ---- existing outputs are not overwritten ----------------------------------------------------

OUTPUTS = [
    (["kernel", "--data", "iris", "--n", "10", "--depth", "1", "--out", "OUT.npy"], ["OUT.npy"]),
    (["kernel", "--data", "iris", "--n", "10", "--depth", "1", "--out", "OUT.npz"], ["OUT.npz"]),
    (["h-infinity", "--data", "iris", "--n", "10", "--out", "OUT.npy"], ["OUT.npy"]),
    (
        ["predict", "--train", "iris", "--test", "iris", "--n-train", "20", "--n-test", "10"]
        + ["--time", "inf", "--depth", "1", "--out", "OUT.npz"],
        ["OUT.npz", "OUT.json"],
    ),
    (
        ["du-bounds", "--data", "sphere", "--n", "10", "--dim", "3", "--out", "OUT.json"],
        ["OUT.json"],
    ),
    (["phase-point", "--gamma", "0.5", "--gamma-prime", "0", "--out", "OUT.json"], ["OUT.json"]),
]


@pytest.mark.parametrize("line, written", OUTPUTS, ids=[c[0][0] + c[1][0][3:] for c in OUTPUTS])
def test_existing_output_refused_unless_overwrite(tmp_path, line, written):
    args = [tmp_path / a if a.startswith("OUT") else a for a in line]
    first = _invoke(*args)
    assert first.exit_code == 0, first.output
    paths = [tmp_path / w for w in written]
    for p in paths:  # mark the files: a rewrite would change them
        p.write_bytes(p.read_bytes() + b" ")
    marked = [p.read_bytes() for p in paths]
    again = _invoke(*args)
    assert again.exit_code == 2 and "--overwrite" in again.output, again.output
    assert [p.read_bytes() for p in paths] == marked  # untouched
    forced = _invoke(*args, "--overwrite")
    assert forced.exit_code == 0, forced.output
    for p, m in zip(paths, marked, strict=True):  # rewritten: the mark is gone
        assert p.read_bytes() != m and not p.read_bytes().endswith(b" ")


def test_two_part_output_refused_before_either_part_is_written(tmp_path):
    """predict writes OUT.npz and OUT.json: an existing .json alone stops both."""
    (tmp_path / "p.json").write_text("{}")
    args = ["predict", "--train", "iris", "--test", "iris", "--n-train", "20", "--n-test", "10"]
    result = _invoke(*args, "--time", "inf", "--depth", "1", "--out", tmp_path / "p.npz")
    assert result.exit_code == 2 and "p.json exists" in result.output
    assert not (tmp_path / "p.npz").exists()


# ---- --n: at least 1, at most the data ------------------------------------------------------


@pytest.mark.parametrize("n", ["-5", "0", "21"])
@pytest.mark.parametrize("command", ["kernel", "ntk", "h-infinity"])
def test_n_must_be_positive_and_fit_the_file(files, tmp_path, command, n):
    out = tmp_path / "k.npy"
    result = _invoke(command, "--data", files["dir"] / "x.npy", "--n", n, "--out", out)
    assert result.exit_code == 2, result.output
    assert "--n" in result.output and not out.exists()


@pytest.mark.parametrize("n", ["-5", "0", "151"])
def test_n_must_be_positive_and_fit_a_bundled_set(tmp_path, n):
    out = tmp_path / "k.npy"
    result = _invoke("kernel", "--data", "iris", "--n", n, "--out", out)  # iris: 150 points
    assert result.exit_code == 2, result.output
    assert "--n" in result.output and not out.exists()


def test_n_within_the_data_still_works(files, tmp_path):
    out = tmp_path / "k.npy"
    result = _invoke(
        "kernel", "--data", files["dir"] / "x.npy", "--n", "20", "--depth", "1", "--out", out
    )
    assert result.exit_code == 0, result.output
    assert np.load(out).shape == (20, 20)


def test_the_payload_does_run_when_unpickled(tmp_path):
    """Control: the malicious files above are live (plain pickle and torch's full unpickler run
    them), so the marker's absence in the tests above means widenet did not unpickle them."""
    marker = tmp_path / "ran"
    pickle.loads(pickle.dumps(Payload(marker)))
    assert marker.read_text() == "pwned"
    marker.unlink()
    torch.save(Payload(marker), tmp_path / "evil.pt")
    torch.load(tmp_path / "evil.pt", weights_only=False)
    assert marker.exists()


# ---- widenet verify STORE ---------------------------------------------------------------------


def test_verify_store_exit_status(files, tmp_path):
    store = tmp_path / "V.zarr"
    x = files["dir"] / "x.npy"
    r = _invoke("kernel", "--data", x, "--depth", "1", "--tile", "8", "--out", store)
    assert r.exit_code == 0, r.output
    good = _invoke("verify", store)
    assert good.exit_code == 0, good.output
    assert "0 bad" in good.output
    chunks = sorted(p for p in (store / "ntk").rglob("*") if p.is_file() and "c" in p.parts)
    assert chunks, "no chunk files found in the store"
    chunks[0].write_bytes(b"\x00garbage" * 16)  # a chunk overwritten after its done marker
    bad = _invoke("verify", store)
    assert bad.exit_code == 1, bad.output
    assert "1 bad" in bad.output
    missing = _invoke("verify", tmp_path / "nothing.zarr")
    assert missing.exit_code == 2


@pytest.mark.parametrize(
    "line",
    [
        ["du-bounds", "--data", "sphere", "--n", "-5"],
        ["du-bounds", "--data", "iris", "--n", "0"],
        ["signal", "--data", "iris", "--n", "-1"],
        ["predict", "--train", "iris", "--test", "iris", "--n-train", "-3", "--out", "OUT.npz"],
    ],
    ids=lambda line: " ".join(line[:2]),
)
def test_n_is_checked_in_every_command(tmp_path, line):
    args = [tmp_path / a if a.startswith("OUT") else a for a in line]
    result = _invoke(*args)
    assert result.exit_code == 2 and "--n" in result.output, result.output


def test_signal_reads_a_weights_file_as_the_same_network(files, tmp_path):
    """--model WEIGHTS builds the network from the file's shapes and --activation: its report
    equals the library's on the original network (the file round-trips exactly)."""
    import json

    import widenet as wn
    from widenet import io, networks

    path = files["dir"] / "m.safetensors"
    out = tmp_path / "s.json"
    result = _invoke("signal", "--model", path, "--data", files["dir"] / "x.npy", "--out", out)
    assert result.exit_code == 0, result.output
    net = networks.mlp_from_state_dict(io.load_state_dict(path), "relu")
    x = io.load_inputs(str(files["dir"] / "x.npy"), dtype=torch.float32)
    ref = wn.signal_propagation(net, x, seed=0, threshold=100.0)
    got = json.loads(out.read_text())
    np.testing.assert_allclose(got["forward_variance"], ref.forward_variance, rtol=1e-6)
    assert got["verdict"] == ref.verdict
