"""F-Principle measures (widenet.frequency) against direct NumPy computations."""

import numpy as np
import pytest
import torch

from widenet import frequency as fq


def _grid():
    x = np.linspace(-np.pi, np.pi, 201)
    return x, np.sin(x) + np.sin(3 * x) + np.sin(5 * x)


def _dft(v):
    # The O(n^2) definition: v_k = sum_j v_j exp(-2 pi i j k / n).
    n = len(v)
    j = np.arange(n)
    return np.array([np.sum(v * np.exp(-2j * np.pi * j * k / n)) for k in range(n)])


def test_peaks_of_the_three_sines():
    _, y = _grid()
    assert fq.dft_peaks(torch.from_numpy(y)).tolist() == [1, 3, 5]
    amp = np.abs(_dft(y))[: 201 // 2 + 1]
    # Independent local-maximum search on the brute-force spectrum.
    brute = [
        k
        for k in range(1, 101)
        if amp[k] > amp[k - 1]
        and amp[k] >= (amp[k + 1] if k < 100 else 0)
        and amp[k] >= 0.1 * amp[1:].max()
    ]
    assert brute == [1, 3, 5]
    # A tiny fourth component is below the default relative height but found at 0.001 (on a
    # periodic grid, where each sine is exactly one DFT bin and nothing leaks).
    x = -np.pi + 2 * np.pi * np.arange(200) / 200
    y2 = np.sin(x) + np.sin(3 * x) + np.sin(5 * x) + 0.01 * np.sin(9 * x)
    assert fq.dft_peaks(y2).tolist() == [1, 3, 5]
    assert fq.dft_peaks(y2, rel_height=0.001).tolist() == [1, 3, 5, 9]


def test_peak_relative_error_against_direct_dft():
    x, y = _grid()
    rng = np.random.default_rng(0)
    h = np.stack([np.sin(x) + 0.3 * np.sin(3 * x) + rng.normal(0, 0.05, 201) for _ in range(3)])
    got = fq.peak_relative_error(y, h).numpy()
    yk = _dft(y)
    expected = [[abs(_dft(row)[k] - yk[k]) / abs(yk[k]) for k in (1, 3, 5)] for row in h]
    np.testing.assert_allclose(got, expected, rtol=1e-9)  # FFT vs O(n^2) sum: ~1e-13
    # h = the sine of frequency 1 only: error ~0 at k=1 and ~1 at k=3, 5 (up to leakage,
    # the 201 points do not hold a whole number of periods: measured < 1e-2).
    e = fq.peak_relative_error(y, np.sin(x)).numpy()
    assert e[0] < 1e-2 and abs(e[1] - 1) < 1e-2 and abs(e[2] - 1) < 1e-2
    assert fq.peak_relative_error(y, h, peaks=[3]).shape == (3, 1)


def test_principal_direction_and_projection_spectrum_against_loops():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(40, 3)) * np.array([3.0, 1.0, 0.5])
    y = rng.normal(size=(40, 2))
    p = fq.principal_direction(x).numpy()
    evals, evecs = np.linalg.eigh(np.cov(x.T))
    top = evecs[:, -1]
    assert abs(abs(p @ top) - 1) < 1e-10  # same axis (sign convention differs)
    freqs = [0.0, 0.1, 0.25, 0.7]
    got = fq.projection_spectrum(x, y, freqs).numpy()
    brute = np.array(
        [
            [
                sum(y[j, c] * np.exp(-2j * np.pi * k * (x[j] @ p)) for j in range(40)) / 40
                for c in range(2)
            ]
            for k in freqs
        ]
    )
    np.testing.assert_allclose(got, brute, rtol=1e-10, atol=1e-14)
    h = y + 0.1 * rng.normal(size=y.shape)
    rel = fq.projection_relative_error(x, y, h, freqs, direction=p).numpy()
    expected = np.linalg.norm(
        brute
        - np.array(
            [
                [
                    sum(h[j, c] * np.exp(-2j * np.pi * k * (x[j] @ p)) for j in range(40)) / 40
                    for c in range(2)
                ]
                for k in freqs
            ]
        ),
        axis=1,
    ) / np.linalg.norm(brute, axis=1)
    np.testing.assert_allclose(rel, expected, rtol=1e-9)


def _brute_filter(x, y, delta):
    n = len(x)
    out = np.zeros_like(y)
    for i in range(n):
        num, den = np.zeros(y.shape[1]), 0.0
        for j in range(n):
            g = np.exp(-np.sum((x[i] - x[j]) ** 2) / (2 * delta))
            num += y[j] * g
            den += g
        out[i] = num / den
    return out


@pytest.mark.parametrize("delta, block", [(0.5, 1024), (2.0, 7), (50.0, 16)])
def test_gaussian_filter_against_brute_force(delta, block):
    rng = np.random.default_rng(2)
    x = rng.normal(size=(60, 3))
    y = rng.normal(size=(60, 2))
    got = fq.gaussian_filter(torch.from_numpy(x), torch.from_numpy(y), delta, block=block).numpy()
    np.testing.assert_allclose(got, _brute_filter(x, y, delta), rtol=1e-10, atol=1e-13)


def test_gaussian_filter_limits():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(30, 2))
    y = rng.normal(size=(30, 1))
    # δ -> 0: each point keeps its own value (no 0/0 although every weight underflows).
    np.testing.assert_allclose(fq.gaussian_filter(x, y, 1e-8).numpy(), y, atol=1e-12)
    # δ -> inf: the mean everywhere.
    np.testing.assert_allclose(fq.gaussian_filter(x, y, 1e8).numpy(), y.mean() + 0 * y, atol=1e-6)


def test_filter_errors_against_brute_force():
    rng = np.random.default_rng(4)
    x = rng.normal(size=(50, 4))
    y = rng.normal(size=(50, 3))
    h = y + rng.normal(scale=0.3, size=y.shape)
    fe = fq.filter_errors(x, y, h, [1.0, 4.0])
    for j, delta in enumerate([1.0, 4.0]):
        y_low, h_low = _brute_filter(x, y, delta), _brute_filter(x, h, delta)
        e_low = np.linalg.norm(y_low - h_low) / np.linalg.norm(y_low)
        e_high = np.linalg.norm((y - y_low) - (h - h_low)) / np.linalg.norm(y - y_low)
        assert fe.e_low[j] == pytest.approx(e_low, rel=1e-10)
        assert fe.e_high[j] == pytest.approx(e_high, rel=1e-10)
        low2 = np.linalg.norm(y_low) ** 2
        assert fe.low_fraction[j] == pytest.approx(low2 / (low2 + np.linalg.norm(y - y_low) ** 2))
    assert fq.filter_errors(x, y, y, 1.0).e_low == (0.0,)
    zero = fq.filter_errors(x, y, 0 * y, 2.0)
    assert zero.e_low[0] == pytest.approx(1.0) and zero.e_high[0] == pytest.approx(1.0)


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: fq.dft_peaks(np.zeros(50)), "no spectral peak"),
        (lambda: fq.dft_peaks(np.ones((3, 5))), "1-D"),
        (lambda: fq.dft_peaks([1.0, 2.0]), "at least 3"),
        (lambda: fq.peak_relative_error(np.sin(np.arange(20.0)), np.zeros(19)), "h"),
        (
            lambda: fq.peak_relative_error(np.sin(np.arange(20.0)), np.zeros(20), peaks=[25]),
            "peaks",
        ),
        (lambda: fq.gaussian_filter(np.zeros((5, 2)), np.zeros(5), 0.0), "delta"),
        (lambda: fq.gaussian_filter(np.zeros((5, 2)), np.zeros(4), 1.0), "y must"),
        (lambda: fq.gaussian_filter([[np.nan, 0.0], [0.0, 0.0]], [0.0, 1.0], 1.0), "NaN"),
        (lambda: fq.filter_errors(np.eye(3), np.eye(3), np.eye(3)[:, :2], 1.0), "shape"),
        (lambda: fq.filter_errors(np.eye(3), np.eye(3), np.eye(3), []), "empty"),
        (
            lambda: fq.projection_spectrum(np.eye(3), np.ones(3), [1.0], direction=[1.0, 0]),
            "3 entries",
        ),
    ],
)
def test_bad_inputs(call, match):
    with pytest.raises((ValueError, TypeError), match=match):
        call()


def test_cli_frequency(tmp_path):
    import json

    from typer.testing import CliRunner

    from widenet.cli import app

    x, y = _grid()
    np.save(tmp_path / "y.npy", y)
    np.save(tmp_path / "h.npy", np.stack([np.sin(x), y]))
    res = CliRunner().invoke(
        app,
        [
            "frequency",
            "--target",
            str(tmp_path / "y.npy"),
            "--output",
            str(tmp_path / "h.npy"),
            "-o",
            str(tmp_path / "f.json"),
        ],
    )
    assert res.exit_code == 0, res.output
    got = json.loads((tmp_path / "f.json").read_text())["dft_peaks"]
    assert got["peaks"] == [1, 3, 5]
    np.testing.assert_allclose(
        got["relative_error"], fq.peak_relative_error(y, np.stack([np.sin(x), y])).numpy()
    )
    rng = np.random.default_rng(5)
    np.save(tmp_path / "X.npy", rng.normal(size=(40, 3)))
    np.save(tmp_path / "Y.npy", rng.normal(size=(40, 2)))
    args = [
        "frequency",
        "--target",
        tmp_path / "Y.npy",
        "--output",
        tmp_path / "Y.npy",
        "--x",
        tmp_path / "X.npy",
        "--delta",
        "2",
        "--frequency",
        "0.2",
    ]
    res = CliRunner().invoke(app, [str(a) for a in args])
    assert res.exit_code == 0 and "e_low" in res.output
    bad = CliRunner().invoke(app, [str(a) for a in args[:5] + ["--delta", "2"]])
    assert bad.exit_code == 2 and "--x" in bad.output
