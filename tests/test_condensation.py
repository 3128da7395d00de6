"""Neuron grouping and effective width (widenet.condensation)."""

import itertools

import numpy as np
import pytest
import torch

from widenet import condensation


def _cos(a, b):
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def test_scaled_copies_share_a_group_and_opposite_directions_do_not():
    gen = torch.Generator().manual_seed(0)
    base = torch.randn(3, 5, generator=gen, dtype=torch.float64)
    # Neurons 0..5: base[0] twice (scaled), base[1], -base[1], base[2], base[0] again.
    w = torch.stack([base[0], 3.0 * base[0], base[1], -base[1], base[2], 0.5 * base[0]])
    labels = condensation.group_neurons(w, threshold=0.99)
    assert labels.tolist() == [0, 0, 1, 2, 3, 0]
    assert condensation.effective_width(w, threshold=0.99) == 4


def test_bias_is_part_of_the_direction():
    w = torch.tensor([[1.0, 0.0], [1.0, 0.0]], dtype=torch.float64)
    assert condensation.effective_width(w, threshold=0.99) == 1
    # Same input weights, opposite biases: cos((1, 0, 1), (1, 0, -1)) = 0.
    assert condensation.effective_width(w, torch.tensor([1.0, -1.0]), threshold=0.99) == 2


def test_every_pair_in_a_group_meets_the_threshold_brute_force():
    # Random directions in 3-D: many near-threshold pairs, so chaining would show up.
    gen = torch.Generator().manual_seed(1)
    w = torch.randn(200, 3, generator=gen, dtype=torch.float64)
    b = torch.randn(200, generator=gen, dtype=torch.float64)
    threshold = 0.8
    labels = condensation.group_neurons(w, b, threshold=threshold).numpy()
    u = torch.cat([w, b[:, None]], 1).numpy()
    for g in np.unique(labels):
        members = np.flatnonzero(labels == g)
        for j, k in itertools.combinations(members, 2):
            assert _cos(u[j], u[k]) >= threshold - 1e-12
    # Labels are numbered by first appearance.
    firsts = [int(np.flatnonzero(labels == g)[0]) for g in range(labels.max() + 1)]
    assert firsts == sorted(firsts)
    # A threshold of -1 puts everything together; of 1, only exact copies.
    assert condensation.effective_width(w, b, threshold=-1.0) == 1
    assert condensation.effective_width(w, b, threshold=1.0) == 200


def test_zero_neurons_form_their_own_group():
    w = torch.tensor([[0.0, 0.0], [1.0, 1.0], [0.0, 0.0], [2.0, 2.0]])
    assert condensation.group_neurons(w, threshold=0.9).tolist() == [0, 1, 0, 1]
    d, a = condensation.neuron_directions(w)
    assert torch.equal(d[0], torch.zeros(2))
    torch.testing.assert_close(a, torch.tensor([0.0, 2**0.5, 0.0, 8**0.5]))


def test_condensed_layer_has_small_effective_width():
    # 500 neurons scattered tightly (angle ~ 0.01 rad) around 4 directions.
    gen = torch.Generator().manual_seed(2)
    centres = torch.randn(4, 10, generator=gen, dtype=torch.float64)
    idx = torch.randint(0, 4, (500,), generator=gen)
    w = centres[idx] * torch.rand(500, 1, generator=gen, dtype=torch.float64)
    w = (
        w
        + 0.01
        * torch.randn(500, 10, generator=gen, dtype=torch.float64)
        * w.norm(dim=1, keepdim=True)
        / 10**0.5
    )
    assert condensation.effective_width(w, threshold=0.9) == 4


def test_bad_input():
    with pytest.raises(ValueError, match="weight must be"):
        condensation.group_neurons(torch.randn(5))
    with pytest.raises(ValueError, match="bias must have shape"):
        condensation.group_neurons(torch.randn(5, 2), torch.randn(4))
    with pytest.raises(ValueError, match="threshold"):
        condensation.group_neurons(torch.randn(5, 2), threshold=1.5)
    with pytest.raises(ValueError, match="NaN"):
        condensation.group_neurons(torch.tensor([[float("nan"), 1.0]]))
    with pytest.raises(ValueError, match="no neurons"):
        condensation.group_neurons(torch.zeros(0, 3))


# --------------------------------------------------------------------------------------------
# Merging: built by hand here, independently of widenet.embedding's splitting functions.

F64 = torch.float64


def _narrow(widths, d=3, k=2, seed=0, output_bias=True):
    gen = torch.Generator().manual_seed(seed)
    sizes = [d, *widths, k]
    weights = [torch.randn(o, i, generator=gen, dtype=F64) for i, o in itertools.pairwise(sizes)]
    biases = [torch.randn(o, generator=gen, dtype=F64) for o in sizes[1:]]
    if not output_bias:
        biases[-1] = None
    return weights, biases


def _split(weights, biases, layer, neuron, alpha, scale=1.0, sign=1.0):
    """Append a copy of ``neuron`` of hidden ``layer``; outgoing weights split alpha/(1-alpha).

    The copy's input weights are ``sign * scale`` times the original's, its output weights are
    ``sign * (1 - alpha) / scale`` times the original's: the same function when σ is positively
    homogeneous (scale > 0) and, for sign = -1, odd.
    """
    w, b = [t.clone() for t in weights], [None if t is None else t.clone() for t in biases]
    f = sign * scale
    w[layer] = torch.cat([w[layer], f * w[layer][neuron : neuron + 1]])
    b[layer] = torch.cat([b[layer], f * b[layer][neuron : neuron + 1]])
    col = w[layer + 1][:, neuron : neuron + 1]
    w[layer + 1] = torch.cat([w[layer + 1], sign * (1 - alpha) / scale * col], dim=1)
    w[layer + 1][:, neuron] *= alpha
    return w, b


def _forward(weights, biases, act, x):
    for i, (w, b) in enumerate(zip(weights, biases, strict=True)):
        x = x @ w.T + (0 if b is None else b)
        if i < len(weights) - 1:
            x = act(x)
    return x


def _fcnet(weights, biases, act):
    from widenet.embedding import FCNet

    return FCNet(weights, biases, act)


def _assert_same_params(merged, weights, biases):
    # Float64 rounding of a few sums and one division: 1e-13 relative to the O(1) weights.
    for got, want in zip(merged.weights, weights, strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-13)
    for got, want in zip(merged.biases, biases, strict=True):
        if want is None:
            assert got is None
        else:
            torch.testing.assert_close(got, want, rtol=0, atol=1e-13)


@pytest.mark.parametrize("act", [torch.tanh, torch.sigmoid, torch.relu])
def test_split_network_merges_back_to_the_original_exactly(act):
    weights, biases = _narrow([4, 3])
    wide = (weights, biases)
    # Layer 0: neuron 1 split twice (alpha outside [0, 1] too), neuron 3 once; layer 1: neuron 0.
    for layer, neuron, alpha in [(0, 1, 0.3), (0, 3, 1.7), (0, 1, -0.4), (1, 0, 0.6)]:
        wide = _split(*wide, layer, neuron, alpha)
    net = _fcnet(*wide, act)
    assert net.widths == [7, 4]
    x = torch.randn(50, 3, generator=torch.Generator().manual_seed(5), dtype=F64)
    out = condensation.condense(net, x, threshold=0.999)
    assert out.widths == (7, 4) and out.effective_widths == (4, 3)
    assert out.labels[0].tolist() == [0, 1, 2, 3, 1, 3, 1]
    _assert_same_params(out.model, weights, biases)
    assert out.agreement.max_abs_difference < 1e-13
    assert out.agreement.prediction_agreement == 1.0


def test_relu_scaled_copies_merge_exactly_by_homogeneity():
    weights, biases = _narrow([5], output_bias=False)
    wide = (weights, biases)
    # alpha outside [0, 1]: copies with output weights of opposite signs, where the merge falls
    # back on the amplitude-weighted mean (with outputs of one sign the output-weighted mean is
    # exact for any positively homogeneous σ even without the homogeneous rule).
    for neuron, alpha, scale in [(0, 1.6, 3.0), (2, -0.5, 0.25), (0, 1.9, 7.0)]:
        wide = _split(*wide, 0, neuron, alpha, scale=scale)
    x = torch.randn(100, 3, generator=torch.Generator().manual_seed(6), dtype=F64)
    out = condensation.condense(_fcnet(*wide, torch.relu), x, threshold=0.999)
    assert out.homogeneous and not out.odd and out.effective_widths == (5,)
    # Same function as the narrow net to float64 rounding (outputs are O(1)).
    torch.testing.assert_close(
        out.model(x), _forward(weights, biases, torch.relu, x), rtol=0, atol=1e-12
    )
    # Each merged neuron points along the original one (its scale is the weighted mean).
    theta = torch.cat([out.model.weights[0], out.model.biases[0][:, None]], 1)
    theta0 = torch.cat([weights[0], biases[0][:, None]], 1)
    cos = (theta * theta0).sum(1) / (theta.norm(dim=1) * theta0.norm(dim=1))
    torch.testing.assert_close(cos, torch.ones(5, dtype=F64), rtol=0, atol=1e-14)
    # Without the homogeneous rule these scaled copies are not merged exactly.
    plain = condensation.condense(_fcnet(*wide, torch.relu), x, threshold=0.999, homogeneous=False)
    assert plain.agreement.relative_difference > 0.01


def test_tanh_sign_flipped_copies_merge_exactly_by_oddness():
    weights, biases = _narrow([3])
    wide = _split(weights, biases, 0, 1, 0.3, sign=-1.0)
    wide = _split(*wide, 0, 2, 0.5, sign=-1.0)
    net = _fcnet(*wide, torch.tanh)
    out = condensation.condense(net, threshold=0.99)
    assert out.odd and out.effective_widths == (3,)
    assert out.signs[0].tolist() == [1, 1, 1, -1, -1]
    _assert_same_params(out.model, weights, biases)
    # Grouping by signed direction keeps the flipped copies apart.
    assert condensation.condense(net, threshold=0.99, odd=False).effective_widths == (5,)


def test_activation_symmetries():
    from widenet import activations

    cases = {
        torch.relu: (True, False),
        activations.leaky_relu(0.1).fn: (True, False),
        (lambda z: z): (True, True),
        torch.tanh: (False, True),
        torch.erf: (False, True),
        torch.sigmoid: (False, False),
        torch.nn.functional.softplus: (False, False),
        torch.nn.GELU(): (False, False),
    }
    for fn, expected in cases.items():
        assert condensation.activation_symmetries(fn) == expected, fn


def _merge_brute_force(w, b, a, labels, homogeneous):
    """The formulas of merge_neurons' docstring, group by group with Python loops."""
    groups = []
    for g in range(int(labels.max()) + 1):
        members = [k for k in range(len(labels)) if labels[k] == g]
        thetas = [torch.cat([w[k], b[k : k + 1]]) for k in members]
        total = sum(a[:, k] for k in members)
        c = [float(a[:, k] @ total / (total @ total)) for k in members]
        if min(c) < 0:  # outputs of mixed sign: amplitude weights
            rho = [float(a[:, k].norm() * t.norm()) for k, t in zip(members, thetas, strict=True)]
            c = [r / sum(rho) for r in rho]
        mean = sum(ck * t for ck, t in zip(c, thetas, strict=True))
        if homogeneous:
            out = sum(a[:, k] * t.norm() for k, t in zip(members, thetas, strict=True))
            out = out / mean.norm()
        else:
            out = total
        groups.append((mean, out))
    return groups


@pytest.mark.parametrize("positive_outputs", [True, False])
@pytest.mark.parametrize("homogeneous", [True, False])
def test_merge_formulas_brute_force(positive_outputs, homogeneous):
    gen = torch.Generator().manual_seed(3)
    w = torch.randn(6, 4, generator=gen, dtype=F64)
    b = torch.randn(6, generator=gen, dtype=F64)
    a = torch.randn(1, 6, generator=gen, dtype=F64)
    if positive_outputs:  # one output, all positive: the output-weighted mean
        a = a.abs()
    else:  # two outputs of mixed signs: the amplitude-weighted mean in some groups
        a = torch.cat([a, torch.randn(1, 6, generator=gen, dtype=F64)])
    labels = torch.tensor([0, 1, 0, 2, 1, 0])
    wg, bg, ag = condensation.merge_neurons(w, b, a, labels, homogeneous=homogeneous)
    for g, (mean, out) in enumerate(_merge_brute_force(w, b, a, labels, homogeneous)):
        torch.testing.assert_close(torch.cat([wg[g], bg[g : g + 1]]), mean)
        torch.testing.assert_close(ag[:, g], out)


def test_output_weighted_mean_is_first_order_exact():
    # A tanh group spread by eps around one direction, outputs of one sign: the merged neuron's
    # error is O(eps^2) (halving eps quarters it), not O(eps).
    gen = torch.Generator().manual_seed(10)
    theta0 = torch.randn(1, 3, generator=gen, dtype=F64)
    spread = torch.randn(8, 3, generator=gen, dtype=F64)
    a = torch.rand(1, 8, generator=gen, dtype=F64) + 0.5
    x = torch.randn(100, 2, generator=gen, dtype=F64)
    errors = []
    for eps in (1e-2, 5e-3):
        theta = theta0 + eps * spread
        labels = torch.zeros(8, dtype=torch.int64)
        wg, bg, ag = condensation.merge_neurons(theta[:, :2], theta[:, 2], a, labels)
        wide = torch.tanh(x @ theta[:, :2].T + theta[:, 2]) @ a.T
        narrow = torch.tanh(x @ wg.T + bg) @ ag.T
        errors.append(float((wide - narrow).abs().max()))
    assert 3.5 < errors[0] / errors[1] < 4.5


def test_near_copies_merge_with_second_order_error():
    # Copies (outputs of one sign) perturbed by eps: the output-weighted mean cancels the
    # first-order term, so the merged relu net is off by O(eps^2): errors at eps and eps/10
    # differ ~100x (measured 100.2; kinks crossing data points could only make it smaller).
    weights, biases = _narrow([4], output_bias=False)
    wide = (weights, biases)
    for neuron in range(4):
        wide = _split(*wide, 0, neuron, 0.4, scale=2.0)
    gen = torch.Generator().manual_seed(4)
    noise = torch.randn_like(wide[0][0], dtype=F64), torch.randn_like(wide[1][0], dtype=F64)
    x = torch.randn(200, 3, generator=gen, dtype=F64)
    errors = []
    for eps in (1e-3, 1e-4):
        w0, b0 = wide[0][0] + eps * noise[0], wide[1][0] + eps * noise[1]
        net = _fcnet([w0, wide[0][1]], [b0, wide[1][1]], torch.relu)
        out = condensation.condense(net, x, threshold=0.99)
        assert out.effective_widths == (4,)
        errors.append(out.agreement.relative_difference)
    assert 0 < errors[0] < 1e-5
    assert 50 < errors[0] / errors[1] < 200


def test_grouping_up_to_sign_brute_force():
    gen = torch.Generator().manual_seed(7)
    w = torch.randn(150, 3, generator=gen, dtype=F64)
    threshold = 0.8
    labels, signs = condensation.group_neurons_up_to_sign(w, threshold=threshold)
    u = w.numpy() * signs.numpy()[:, None]
    for g in np.unique(labels.numpy()):
        members = np.flatnonzero(labels.numpy() == g)
        assert signs[members[0]] == 1
        for j, k in itertools.combinations(members, 2):
            assert _cos(u[j], u[k]) >= threshold - 1e-12
    # Fewer groups than by signed direction: a neuron and its negation now share one.
    assert labels.max() < condensation.group_neurons(w, threshold=threshold).max()


def test_function_agreement_brute_force():
    gen = torch.Generator().manual_seed(8)
    fw = torch.randn(40, 3, generator=gen, dtype=F64)
    fn = fw + 0.3 * torch.randn(40, 3, generator=gen, dtype=F64)
    ag = condensation.function_agreement(fw, fn)
    diffs = [abs(float(fw[i, j] - fn[i, j])) for i in range(40) for j in range(3)]
    assert ag.max_abs_difference == pytest.approx(max(diffs), rel=1e-15)
    num = sum(d * d for d in diffs) ** 0.5
    den = sum(float(v) ** 2 for v in fw.reshape(-1)) ** 0.5
    assert ag.relative_difference == pytest.approx(num / den, rel=1e-12)
    same = sum(int(np.argmax(fw[i].numpy()) == np.argmax(fn[i].numpy())) for i in range(40))
    assert ag.prediction_agreement == same / 40 and ag.n_points == 40
    signs = condensation.function_agreement(fw[:, 0], fn[:, 0]).prediction_agreement
    assert signs == sum(int((fw[i, 0] > 0) == (fn[i, 0] > 0)) for i in range(40)) / 40
    zero = torch.zeros(5, 1, dtype=F64)
    assert condensation.function_agreement(zero, zero).relative_difference == 0.0


def test_condense_accepts_widenet_and_torch_modules():
    import widenet as wn

    net = wn.mlp(depth=2, activation="relu", b_std=0.1).network(4, 16, seed=0, dtype=F64)
    x = torch.randn(30, 4, generator=torch.Generator().manual_seed(9), dtype=F64)
    # A random network has no two aligned neurons: nothing merges at threshold 0.999.
    out = condensation.condense(net, x, threshold=0.999)
    assert out.effective_widths == (16, 16)
    assert out.agreement.max_abs_difference < 1e-12
    seq = torch.nn.Sequential(
        torch.nn.Linear(4, 8, dtype=F64), torch.nn.Tanh(), torch.nn.Linear(8, 1, dtype=F64)
    )
    assert condensation.condense(seq, x, threshold=0.6).odd


def test_merge_and_condense_bad_input():
    w, a = torch.randn(4, 3), torch.randn(2, 4)
    with pytest.raises(ValueError, match="out_weight must be"):
        condensation.merge_neurons(w, None, torch.randn(2, 5), torch.zeros(4, dtype=torch.int64))
    with pytest.raises(ValueError, match="labels must be"):
        condensation.merge_neurons(w, None, a, torch.zeros(3, dtype=torch.int64))
    with pytest.raises(ValueError, match="labels must number"):
        condensation.merge_neurons(w, None, a, torch.tensor([0, 2, 2, 0]))
    with pytest.raises(ValueError, match="signs must be"):
        condensation.merge_neurons(w, None, a, torch.tensor([0, 1, 1, 0]), signs=torch.ones(4) * 2)
    with pytest.raises(ValueError, match="NaN"):
        condensation.merge_neurons(w, None, a * float("nan"), torch.tensor([0, 1, 1, 0]))
    net = _fcnet(*_narrow([4]), torch.tanh)
    with pytest.raises(ValueError, match="threshold must be > 0.5"):
        condensation.condense(net, threshold=0.3)
    with pytest.raises(ValueError, match="x must be"):
        condensation.condense(net, torch.randn(5, 2, dtype=F64))
    with pytest.raises(ValueError, match="x contains"):
        condensation.condense(net, torch.full((5, 3), float("nan"), dtype=F64))
    with pytest.raises(ValueError, match="same shape"):
        condensation.function_agreement(torch.randn(5, 2), torch.randn(5, 3))
    with pytest.raises(TypeError, match="activation must map"):
        condensation.activation_symmetries(lambda z: z.sum())


# --------------------------------------------------------------------------------------------
# widenet condense


def _state_dict(weights, biases):
    state = {}
    for i, (w, b) in enumerate(zip(weights, biases, strict=True)):
        state[f"{2 * i}.weight"] = w
        if b is not None:
            state[f"{2 * i}.bias"] = b
    return state


def test_cli_condense_merges_a_split_network_back(tmp_path):
    import json

    from safetensors.torch import load_file, save_file
    from typer.testing import CliRunner

    from widenet.cli import app

    weights, biases = _narrow([3], d=2, k=1)
    wide = _split(weights, biases, 0, 0, 0.3, sign=-1.0)
    wide = _split(*wide, 0, 2, 0.6)
    x = torch.randn(30, 2, generator=torch.Generator().manual_seed(11), dtype=F64)
    np.save(tmp_path / "x.npy", x.numpy())
    save_file(_state_dict(*wide), str(tmp_path / "wide.safetensors"))
    torch.save(_state_dict(*wide), tmp_path / "wide.pt")
    runner = CliRunner()
    for name in ("wide.safetensors", "wide.pt"):
        out = tmp_path / f"run-{name}"
        args = ["condense", str(tmp_path / name), "--out", str(out), "--activation", "tanh"]
        args += ["--data", str(tmp_path / "x.npy"), "--threshold", "0.99"]
        result = runner.invoke(app, args)
        assert result.exit_code == 0, result.output
        assert "[5] -> effective widths [3]" in result.output
        report = json.loads((out / "condensation.json").read_text())
        assert report["odd"] and not report["homogeneous"]
        assert report["labels"] == [[0, 1, 2, 0, 2]] and report["signs"] == [[1, 1, 1, -1, 1]]
        assert report["max_abs_difference"] < 1e-13 and report["prediction_agreement"] == 1.0
        merged = load_file(str(out / "model.safetensors"))
        for key, value in _state_dict(weights, biases).items():
            torch.testing.assert_close(merged[key], value, rtol=0, atol=1e-13)


def test_cli_condense_bad_input(tmp_path):
    from typer.testing import CliRunner

    from widenet.cli import app

    runner = CliRunner()
    torch.save(_state_dict(*_narrow([3])), tmp_path / "m.pt")
    torch.save(torch.nn.Linear(2, 2), tmp_path / "module.pt")  # pickled code: refused
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "f").write_text("")
    cases = [
        (["condense", str(tmp_path / "nope.pt"), "-o", str(tmp_path / "a")], "does not exist"),
        (["condense", str(tmp_path / "module.pt"), "-o", str(tmp_path / "b")], "weights_only"),
        (["condense", str(tmp_path / "m.pt"), "-o", str(tmp_path / "full")], "not an empty"),
        (
            ["condense", str(tmp_path / "m.pt"), "-o", str(tmp_path / "c"), "--threshold", "2"],
            "threshold",
        ),
        (
            ["condense", str(tmp_path / "m.pt"), "-o", str(tmp_path / "d"), "--data", "iris"],
            "x must be",
        ),
    ]
    for args, message in cases:
        result = runner.invoke(app, args)
        assert result.exit_code == 2, (args, result.output)
        assert message in result.output and "Traceback" not in result.output


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_condense_on_cuda():
    weights, biases = _narrow([4])
    wide = _split(weights, biases, 0, 1, 0.3, sign=-1.0)
    dev = torch.device("cuda")
    net = _fcnet([w.to(dev) for w in wide[0]], [b.to(dev) for b in wide[1]], torch.tanh)
    x = torch.randn(20, 3, dtype=F64, device=dev)
    out = condensation.condense(net, x, threshold=0.99)
    assert out.model.weights[0].device.type == "cuda" and out.labels[0].device.type == "cuda"
    _assert_same_params(out.model.to("cpu"), weights, biases)
    assert out.agreement.max_abs_difference < 1e-13
