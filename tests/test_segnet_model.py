"""PSPNet architecture: shapes, output stride, dilation, aux head, loss, config validation."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

from semlic.errors import ConfigError
from semlic.segnet import PSPNet, PSPNetConfig, pspnet_loss
from semlic.segnet.backbone import ResNetBackbone

from .test_segnet_support import one_thread  # noqa: F401 (autouse fixture)



def tiny_config(**changes) -> PSPNetConfig:
    values = dict(num_classes=5, backbone="resnet18", base_channels=8, ppm_channels=8, head_channels=16, aux_channels=8)
    return PSPNetConfig(**{**values, **changes})


@pytest.mark.parametrize("backbone", ["resnet18", "resnet34"])
@pytest.mark.parametrize("size", [(64, 64), (65, 47)])
def test_tiny_forward_shapes_and_output_stride(backbone, size):
    torch.manual_seed(0)
    model = PSPNet(tiny_config(backbone=backbone)).eval()
    images = torch.rand(2, 3, *size)
    with torch.no_grad():
        layer3, layer4 = model.features(images)
        logits = model(images)
    stride8 = (-(-size[0] // 8), -(-size[1] // 8))  # ceil division
    assert layer3.shape == (2, 32, *stride8)
    assert layer4.shape == (2, 64, *stride8)
    assert logits.shape == (2, 5, *size)
    assert model.ppm.out_channels == 64 + 4 * 8


def test_resnet50_forward_on_odd_size():
    torch.manual_seed(0)
    model = PSPNet(PSPNetConfig(num_classes=150, backbone="resnet50")).eval()
    images = torch.rand(1, 3, 65, 65)
    with torch.no_grad():
        layer3, layer4 = model.features(images)
        logits = model(images)
    assert layer3.shape == (1, 1024, 9, 9) and layer4.shape == (1, 2048, 9, 9)
    assert model.ppm.out_channels == 4096  # 2048 + 4 x 512, as in the paper
    assert logits.shape == (1, 150, 65, 65) and torch.isfinite(logits).all()


def test_resnet50_dilation_equals_torchvision_replace_stride_with_dilation():
    torch.manual_seed(0)
    reference = torchvision.models.resnet50(replace_stride_with_dilation=[False, True, True]).eval()
    backbone = ResNetBackbone("resnet50").eval()
    backbone.load_state_dict({k: v for k, v in reference.state_dict().items() if not k.startswith("fc.")})
    reference_convs = dict(reference.named_modules())
    convs = [(name, m) for name, m in backbone.named_modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 53
    for name, conv in convs:
        expected = reference_convs[name]
        geometry = (conv.stride, conv.dilation, conv.padding)
        assert geometry == (expected.stride, expected.dilation, expected.padding), name
    images = torch.randn(1, 3, 41, 41)
    with torch.no_grad():
        x = reference.maxpool(reference.relu(reference.bn1(reference.conv1(images))))
        expected_layer4 = reference.layer4(reference.layer3(reference.layer2(reference.layer1(x))))
        _, layer4 = backbone(images)
    torch.testing.assert_close(layer4, expected_layer4, rtol=0, atol=0)


def test_basic_block_dilation_and_hszhao_uniform_dilation():
    backbone = ResNetBackbone("resnet18", base_channels=8)
    assert backbone.layer3[0].conv1.stride == (1, 1) and backbone.layer3[0].conv1.dilation == (1, 1)
    assert backbone.layer3[0].conv2.dilation == (2, 2) and backbone.layer3[1].conv1.dilation == (2, 2)
    assert backbone.layer4[0].conv1.dilation == (2, 2) and backbone.layer4[1].conv2.dilation == (4, 4)
    assert backbone.layer3[0].downsample[0].stride == (1, 1)
    uniform = ResNetBackbone("resnet50", base_channels=8, uniform_dilation=True)
    assert uniform.layer3[0].conv2.dilation == (2, 2) and uniform.layer4[0].conv2.dilation == (4, 4)
    assert uniform.layer4[0].conv2.padding == (4, 4) and uniform.layer4[0].conv2.stride == (1, 1)


def test_output_stride_16_and_deep_stem():
    model = PSPNet(tiny_config(output_stride=16, deep_stem=True)).eval()
    assert model.backbone.conv3.out_channels == 16 and model.backbone.layer1[0].conv1.in_channels == 16
    with torch.no_grad():
        layer3, layer4 = model.features(torch.rand(1, 3, 64, 64))
    assert layer3.shape[-2:] == (4, 4) and layer4.shape[-2:] == (4, 4)


def test_aux_head_only_in_training_mode():
    torch.manual_seed(0)
    model = PSPNet(tiny_config())
    images = torch.rand(2, 3, 32, 32)
    model.train()
    logits, aux_logits = model(images)
    assert logits.shape == aux_logits.shape == (2, 5, 32, 32)
    assert not torch.equal(logits, aux_logits)
    model.eval()
    assert isinstance(model(images), torch.Tensor)
    without_aux = PSPNet(tiny_config(aux_weight=0.0)).train()
    assert without_aux.aux_head is None and isinstance(without_aux(images), torch.Tensor)


def test_head_parameters_are_ppm_head_and_aux():
    model = PSPNet(tiny_config())
    head_ids = {id(p) for p in model.head_parameters()}
    expected = {id(p) for m in (model.ppm, model.head, model.aux_head) for p in m.parameters()}
    assert head_ids == expected
    assert not head_ids & {id(p) for p in model.backbone.parameters()}


def test_loss_ignores_ignore_pixels_and_weights_aux():
    config = tiny_config(aux_weight=0.4)
    logits = torch.randn(1, 5, 2, 2)
    aux_logits = torch.randn(1, 5, 2, 2)
    labels = torch.tensor([[[0, 255], [3, 255]]])
    total, main, aux = pspnet_loss((logits, aux_logits), labels, config)
    expected_main = nn.functional.cross_entropy(logits[0, :, [0, 1], [0, 0]].T, torch.tensor([0, 3]))
    expected_aux = nn.functional.cross_entropy(aux_logits[0, :, [0, 1], [0, 0]].T, torch.tensor([0, 3]))
    torch.testing.assert_close(main, expected_main)
    torch.testing.assert_close(total, expected_main + 0.4 * expected_aux)
    all_ignored = torch.full((1, 2, 2), 255)
    assert pspnet_loss(logits, all_ignored, config)[0].item() == 0.0


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"backbone": "vgg16"}, "backbone"),
        ({"num_classes": 1}, "num_classes"),
        ({"ignore_index": 3}, "ignore_index"),
        ({"output_stride": 4}, "output_stride"),
    ],
)
def test_config_validation(changes, message):
    with pytest.raises(ConfigError, match=message):
        tiny_config(**changes)


def test_config_dict_roundtrip_and_unknown_key():
    config = tiny_config(ppm_bins=(1, 3))
    assert PSPNetConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ConfigError, match="ppm_bin"):
        PSPNetConfig.from_dict({"num_classes": 3, "ppm_bin": [1]})


def test_registered_as_pspnet_with_presets():
    from semlic.model_files import build_model, model_spec

    assert model_spec("pspnet").cls is PSPNet and model_spec("pspnet").config_cls is PSPNetConfig
    model = build_model("pspnet", "tiny", 5)
    assert isinstance(model, PSPNet) and model.config.num_classes == 5 and model.config.backbone == "resnet18"
    with pytest.raises(ConfigError, match="preset"):
        build_model("pspnet", "huge", 5)
