"""greedy_coreset (torch loop for now): the contract and its bad inputs."""

import pytest
import torch

from pyanom.ops import greedy_coreset, reference


def test_selects_farthest_points_in_order_and_is_deterministic():
    x = torch.tensor([[0.0], [1.0], [10.0], [4.0]])
    assert greedy_coreset(x, 3, start=0).tolist() == [0, 2, 3]
    y = torch.randn(300, 200)
    assert torch.equal(greedy_coreset(y, 20, seed=3), greedy_coreset(y, 20, seed=3))
    assert not torch.equal(greedy_coreset(y, 20, seed=3), greedy_coreset(y, 20, seed=4))


def test_k_at_least_n_returns_all_and_duplicates_tie_to_lowest_index():
    assert greedy_coreset(torch.randn(5, 3), 9).tolist() == [0, 1, 2, 3, 4]
    x = torch.tensor([[0.0], [2.0], [2.0], [1.0]])
    assert greedy_coreset(x, 2, start=0).tolist() == [0, 1]


def test_matches_reference_on_projected_features():
    x = torch.randn(400, 300, dtype=torch.float64)
    assert torch.equal(greedy_coreset(x, 30, seed=1), reference.greedy_coreset(x, 30, seed=1))


@pytest.mark.parametrize("args, kwargs, error, match", [
    ((torch.tensor([[float("nan")]]), 1), {}, ValueError, "features contains NaN"),
    ((torch.ones(3), 1), {}, ValueError, "features must have 2"),
    ((torch.ones(3, 2, dtype=torch.int64), 1), {}, TypeError, "features must have dtype"),
    ((torch.ones(3, 2), 0), {}, ValueError, "k must be >= 1"),
    ((torch.ones(3, 2), 1), {"start": 3}, ValueError, "start must be <= 2"),
    (([[1.0]], 1), {}, TypeError, "features must be a torch.Tensor"),
    ((torch.ones(3, 2), 1), {"backend": "native"}, RuntimeError, "not available yet"),
])
def test_bad_input(args, kwargs, error, match):
    with pytest.raises(error, match=match):
        greedy_coreset(*args, **kwargs)
