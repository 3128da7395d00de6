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
