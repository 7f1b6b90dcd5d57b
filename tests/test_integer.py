"""semlic.nn.integer: convolutions in exact integer arithmetic (Balle, Johnston, Minnen 2019)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from semlic import errors
from semlic.nn import integer


def _chain():
    torch.manual_seed(0)
    net = nn.Sequential(nn.ConvTranspose2d(6, 8, 5, stride=2, padding=2, output_padding=1), nn.ReLU(),
                        nn.Conv2d(8, 5, 3, padding=1), nn.ReLU())
    return net, integer.integer_chain(net, 1 / 256, 40 * 256)


def test_the_integer_chain_follows_the_float_network():
    net, chain = _chain()
    symbols = torch.randint(-40, 41, (1, 6, 7, 9))
    acc = chain(symbols * 256)
    assert acc.dtype == torch.int64 and acc.shape == (1, 5, 14, 18) and (acc >= 0).all()
    with torch.no_grad():
        reference = net(symbols.float()).double()
    approx = acc.double() * chain.unit.view(1, -1, 1, 1)
    assert torch.allclose(approx, reference, rtol=1e-3, atol=1e-3 * float(reference.abs().max()))


def test_the_same_integers_under_any_thread_count_and_oneDNN_setting():
    _, chain = _chain()
    symbols = torch.randint(-40, 41, (1, 6, 11, 13)) * 256
    previous = torch.get_num_threads()
    try:
        results = []
        for threads in (1, 2):
            torch.set_num_threads(threads)
            for mkldnn in (True, False):
                with torch.backends.mkldnn.flags(enabled=mkldnn):
                    results.append(chain(symbols))
    finally:
        torch.set_num_threads(previous)
    assert all(torch.equal(results[0], r) for r in results[1:])


def test_inputs_are_clamped_to_their_bound_and_nothing_overflows():
    _, chain = _chain()
    huge = torch.full((1, 6, 3, 3), 10 ** 9, dtype=torch.int64)
    assert torch.equal(chain(huge), chain(torch.full_like(huge, chain.input_bound)))
    assert all(int(layer.acc_bound.max()) < integer.EXACT // 2 for layer in chain.layers)


def test_thresholds_reproduce_the_float_comparison_with_a_lower_bound():
    _, chain = _chain()
    table = torch.exp(torch.linspace(-2.2, 3.0, 12))
    thresholds = chain.thresholds(table, lower_bound=0.2)
    assert thresholds.shape == (5, 11) and (thresholds[:, 1:] >= thresholds[:, :-1]).all()
    acc = torch.arange(0, 2000, 7, dtype=torch.int64)
    for c in range(5):
        scales = torch.clamp(acc.double() * chain.unit[c], min=0.2)
        expected = (scales[:, None] > table[None, :-1].double()).sum(1)   # CompressAI's build_indexes
        assert torch.equal(torch.searchsorted(thresholds[c], acc, side="left"), expected)


def test_unsupported_layers_are_refused():
    with pytest.raises(errors.IntegerNetworkError, match="Conv2d"):
        integer.integer_chain(nn.Sequential(nn.Conv2d(2, 2, 3), nn.Sigmoid()), 1.0, 10)
    with pytest.raises(errors.IntegerNetworkError, match="input bound"):
        integer.integer_chain(nn.Sequential(nn.Conv2d(2, 2, 3)), 1.0, integer.A_MAX + 1)
