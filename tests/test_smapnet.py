"""SMapNet (EDMS): shapes, DRRN weight sharing, the identity-like start, its configuration."""

from __future__ import annotations

import pytest
import torch

from semlic.errors import ConfigError
from semlic.methods.edms import SMapNet, smapnet_config
from semlic.model_files import build_model, model_names, model_spec


def test_maps_probabilities_to_scores_of_the_same_shape():
    net = SMapNet(smapnet_config("tiny", num_classes=6)).eval()
    probs = torch.softmax(torch.randn(2, 6, 20, 28), 1)
    assert net(probs).shape == (2, 6, 20, 28)
    with pytest.raises(ValueError, match=r"\(N, 6, H, W\)"):
        net(probs[:, :5])
    assert model_spec("smapnet").cls is SMapNet and "smapnet" in model_names()
    assert isinstance(build_model("smapnet", "tiny", 6), SMapNet)


def test_recursion_shares_one_pair_of_convolutions():
    """DRRN: the 9 residual units reuse conv_a / conv_b, so depth adds no parameters."""
    shallow = SMapNet(smapnet_config("paper", num_classes=151, recursions=1))
    deep = SMapNet(smapnet_config("paper", num_classes=151))
    count = lambda net: sum(p.numel() for p in net.parameters())  # noqa: E731
    k, c = 151, 64
    assert count(shallow) == count(deep) == 2 * (9 * k * c) + 2 * (9 * c * c) + 2 * c + c + k
    assert deep.config.recursions == 9 and deep.final_layer_parameters() == list(deep.conv_out.parameters())


def test_recursions_change_the_output():
    torch.manual_seed(0)
    one = SMapNet(smapnet_config("tiny", num_classes=4, recursions=1, output_init_std=0.1))
    nine = SMapNet(smapnet_config("tiny", num_classes=4, recursions=9, output_init_std=0.1))
    nine.load_state_dict(one.state_dict())
    probs = torch.softmax(torch.randn(1, 4, 12, 12), 1)
    assert not torch.allclose(one(probs), nine(probs))


@pytest.mark.numeric
def test_untrained_net_keeps_pspnet_map_where_it_is_clear(bound):
    torch.manual_seed(0)
    net = SMapNet(smapnet_config("tiny", num_classes=5)).eval()
    probs = torch.softmax(3 * torch.randn(1, 5, 32, 32), 1)
    with torch.no_grad():
        scores = net(probs)
    log_p = probs.clamp_min(1e-4).log()
    top2 = log_p.topk(2, 1).values
    clear = (top2[:, 0] - top2[:, 1]) > 0.5
    assert clear.float().mean() > 0.5
    bound("clear pixels whose class changed", (scores.argmax(1)[clear] != probs.argmax(1)[clear]).sum().item(), "<=", 0)


def test_bad_configs_are_refused():
    with pytest.raises(ConfigError, match="preset"):
        smapnet_config("huge", num_classes=5)
    with pytest.raises(ConfigError, match="num_classes"):
        smapnet_config("tiny", num_classes=1)
    with pytest.raises(ConfigError, match="prior_floor"):
        smapnet_config("tiny", num_classes=5, prior_floor=0)
