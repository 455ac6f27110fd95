"""pyanom.networks: seeded construction, and network tensors saved and loaded under a name."""

from __future__ import annotations

import pytest
import torch

from pyanom.networks import load_module, module_tensors, seeded


def test_seeded_builds_repeat_and_leave_the_global_rng_alone():
    torch.manual_seed(123)
    expected_next = torch.rand(3)
    torch.manual_seed(123)
    a = seeded(lambda: torch.nn.Linear(4, 3), seed=7)
    b = seeded(lambda: torch.nn.Linear(4, 3), seed=7)
    c = seeded(lambda: torch.nn.Linear(4, 3), seed=8)
    assert torch.equal(torch.rand(3), expected_next)
    assert torch.equal(a.weight, b.weight) and not torch.equal(a.weight, c.weight)


def test_tensors_round_trip_under_their_prefix():
    src, dst = torch.nn.Linear(4, 3), torch.nn.Linear(4, 3)
    tensors = {**module_tensors("net", src), "other.weight": torch.zeros(1)}
    assert set(tensors) == {"net.weight", "net.bias", "other.weight"}
    load_module("net", dst, tensors)
    assert torch.equal(dst.weight, src.weight) and torch.equal(dst.bias, src.bias)


def test_tensors_of_another_network_are_an_error_naming_the_prefix():
    with pytest.raises(ValueError, match="net: saved tensors do not fit"):
        load_module("net", torch.nn.Linear(4, 3), module_tensors("net", torch.nn.Linear(5, 3)))
    with pytest.raises(ValueError, match="net: saved tensors do not fit"):
        load_module("net", torch.nn.Linear(4, 3), {"net.weight": torch.zeros(3, 4)})
