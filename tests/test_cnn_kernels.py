"""cnn-kernels: its kernel-regression pieces against brute force, and one quick run."""

from __future__ import annotations

import json

import pydantic
import pytest
import torch

from widenet import lab
from widenet.experiments import cnn_kernels as ck


def _rbf_problem(n=30, d=4, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=gen, dtype=torch.float64)
    xt = torch.randn(7, d, generator=gen, dtype=torch.float64)
    labels = (x[:, 0] > 0).long() + 2 * (x[:, 1] > 0).long()  # 4 classes of the 10
    k = torch.exp(-0.5 * torch.cdist(x, x) ** 2)
    kt = torch.exp(-0.5 * torch.cdist(xt, x) ** 2)
    return k, kt, labels


def test_leave_one_out_matches_refitting_without_each_point():
    k, _, labels = _rbf_problem()
    y = ck.centred_one_hot(labels)
    s, u = torch.linalg.eigh(k)
    for lam in (1e-3, 0.1, 2.0):
        loo = ck.leave_one_out_predictions(s, u, y, lam)
        for i in range(len(k)):
            keep = torch.arange(len(k)) != i
            alpha = torch.linalg.solve(
                k[keep][:, keep] + lam * torch.eye(len(k) - 1, dtype=k.dtype), y[keep]
            )
            # float64 solves of a condition number <= 1e4 (lam >= 1e-3, diag K = 1): 1e-9
            torch.testing.assert_close(loo[i], k[i, keep] @ alpha, rtol=1e-9, atol=1e-9)


def test_loo_kernel_regression_picks_the_best_ridge_and_solves_with_it():
    k, kt, labels = _rbf_problem()
    ridges = [1e-4, 1e-2, 1.0]
    pred, r, acc = ck.loo_kernel_regression(k, kt, labels, ridges)
    y = ck.centred_one_hot(labels)
    scale = float(k.diagonal().mean())
    s, u = torch.linalg.eigh(k)
    accs = {
        q: float(
            (ck.leave_one_out_predictions(s, u, y, q * scale).argmax(1) == labels).double().mean()
        )
        for q in ridges
    }
    assert acc == max(accs.values()) and accs[r] == acc
    assert r == max(q for q in ridges if accs[q] == acc)  # ties go to the larger ridge
    direct = kt @ torch.linalg.solve(k + r * scale * torch.eye(len(k), dtype=k.dtype), y)
    assert torch.equal(pred, direct.argmax(1))


def test_centred_one_hot_and_advantage_kept():
    y = ck.centred_one_hot(torch.tensor([0, 3]))
    assert y.shape == (2, 10) and torch.allclose(y.sum(1), torch.zeros(2, dtype=y.dtype))
    assert y[1, 3] == pytest.approx(0.9) and y[1, 0] == pytest.approx(-0.1)
    out = {
        "finite_accuracy": {"d": {"mlp": 0.70, "cnn-gap": 0.90, "cnn-vec": 0.65}},
        "ntk_accuracy": {"d": {"mlp": 0.60, "cnn-gap": 0.75, "cnn-vec": 0.62}},
    }
    # the finite CNN gains 20 points over the MLP, the kernel 15: it keeps 3/4
    assert ck.advantage_kept(out, "d", "cnn-gap", "ntk") == pytest.approx(0.75)
    assert ck.advantage_kept(out, "d", "cnn-vec", "ntk") is None  # no finite gain to keep


def test_config_validation():
    with pytest.raises(pydantic.ValidationError):
        ck.CNNKernelsConfig(datasets=["digits"])  # a flat set: no images
    with pytest.raises(pydantic.ValidationError):
        ck.CNNKernelsConfig(ridges=[0.0, 1.0])
    with pytest.raises(pydantic.ValidationError):
        ck.CNNKernelsConfig(lrs=[])
    with pytest.raises(pydantic.ValidationError):
        ck.CNNKernelsConfig(mnist1d_n_train=5000)  # the training part has 4000 points
    with pytest.raises(ValueError, match="exceeds the 1797 digits"):
        ck.split_data(
            ck.CNNKernelsConfig(digits_n_train=1500, digits_n_test=400), "digits-images", 0
        )


def test_split_data_is_disjoint_and_stratified():
    config = ck.CNNKernelsConfig.quick()
    x, y, xt, yt = ck.split_data(config, "digits-images", 5)
    assert x.shape == (50, 1, 8, 8) and xt.shape == (50, 1, 8, 8)
    assert torch.bincount(y, minlength=10).min() >= 4  # stratified: ~5 of each digit
    rows = {tuple(r) for r in x.reshape(50, -1).tolist()}
    assert not any(tuple(r) in rows for r in xt.reshape(50, -1).tolist())
    x, y, xt, yt = ck.split_data(config, "mnist1d", 5)
    assert x.shape == (100, 1, 40) and xt.shape == (100, 1, 40)


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("cnnk") / "run"
    return lab.run_experiment("cnn-kernels", quick=True, out=out, seed=0, threads=1)


def test_quick_run_metrics(quick_run):
    m = quick_run.metrics
    assert set(m) == set(ck.METRICS)
    assert m["datasets"] == ["digits-images", "mnist1d"]
    assert m["architectures"] == ["mlp", "cnn-vec", "cnn-gap", "myrtle"]
    for key in ("nngp_accuracy", "ntk_accuracy", "finite_accuracy"):
        for d in m["datasets"]:
            assert list(m[key][d]) == m["architectures"]
            assert all(0.0 <= v <= 1.0 for v in m[key][d].values())
    assert m["published_accuracy"] == {"mnist1d": ck.PUBLISHED["mnist1d"]}
    assert set(m["baseline_accuracy"]["mnist1d"]) == {"rbf_svm"}
    assert json.loads((quick_run.out / "metrics.json").read_text()) == m
    assert [p.name for p in quick_run.figures] == ["accuracy.png"]
    assert all(
        m["finite_lr"][d][a] in (0.5, 2.0) for d in m["datasets"] for a in m["architectures"]
    )
    html = quick_run.report.read_text()
    assert "How much of the finite CNN" in html and "MNIST-1D README" in html
    paper = ck.paper_comparison(quick_run.config, m)
    # three MNIST-1D baseline rows, then the finite-minus-kernel gap on each data set
    assert [r[0].split(":")[0] for r in paper.rows] == ["MNIST-1D"] * 3 + m["datasets"]
    assert paper.rows[1][1] == "68 %" and not paper.same_size  # quick is not the paper's size


def test_quick_run_is_better_than_chance_and_the_gap_kernel_beats_the_mlp(quick_run):
    m = quick_run.metrics
    # 100 training digits: every method far above the 10 % of chance (seed 0 measured values in
    # the module docstring; 0.5 leaves a wide margin for other seeds and platforms)
    for key in ("nngp_accuracy", "ntk_accuracy", "finite_accuracy"):
        assert min(m[key]["digits-images"].values()) > 0.5, (key, m[key])
    assert m["baseline_accuracy"]["digits-images"]["rbf_svm"] > 0.5
    # MNIST-1D is translation-heavy: the pooling kernels must beat the fully-connected one
    for key in ("nngp_accuracy", "ntk_accuracy"):
        acc = m[key]["mnist1d"]
        assert acc["cnn-gap"] > acc["mlp"] and acc["myrtle"] > acc["mlp"], acc


@pytest.mark.cuda
def test_cuda_run_gives_the_cpu_kernel_accuracies(tmp_path):
    import numpy as np

    overrides = {
        "datasets": ["mnist1d"],
        "architectures": ["mlp", "cnn-gap"],
        "mnist1d_n_train": 40,
        "mnist1d_n_test": 40,
        "epochs": 2,
        "lrs": [0.5],
    }
    res = lab.run_experiment(
        "cnn-kernels", quick=True, out=tmp_path / "run", seed=3, overrides=overrides
    )
    config = ck.CNNKernelsConfig(**{**ck.CNNKernelsConfig.QUICK, **overrides})
    data_seed = int(np.random.default_rng(3).integers(2**31))  # the run's first draw
    x, y, xt, yt = ck.split_data(config, "mnist1d", data_seed)
    arch = ck.architecture("cnn-gap")
    k, kt = arch.kernel(x), arch.kernel(xt, x)
    for kern in ck.KERNELS:
        pred, _, _ = ck.loo_kernel_regression(getattr(k, kern), getattr(kt, kern), y, config.ridges)
        assert res.metrics[f"{kern}_accuracy"]["mnist1d"]["cnn-gap"] == pytest.approx(
            float((pred == yt).double().mean()),
            abs=0.05,  # at most 2 of 40 points may flip
        )


def test_fit_finite_keeps_the_lowest_training_loss_and_drops_diverged_runs(monkeypatch):
    losses = {0.5: 0.3, 2.0: 0.1, 8.0: None}  # 8.0 "diverges"

    def fake(arch, x, y, xt, yt, config, seed, device, lr):
        loss = losses[lr]
        return None if loss is None else {"test": lr / 10, "train": 1.0, "loss": loss}

    monkeypatch.setattr(ck, "train_finite", fake)
    config = ck.CNNKernelsConfig(lrs=[0.5, 2.0, 8.0])
    assert ck.fit_finite(None, None, None, None, None, config, 0, "cpu")["lr"] == 2.0
    losses[2.0] = None
    assert ck.fit_finite(None, None, None, None, None, config, 0, "cpu")["lr"] == 0.5
    losses[0.5] = None
    with pytest.raises(FloatingPointError, match="every learning rate"):
        ck.fit_finite(None, None, None, None, None, config, 0, "cpu")
