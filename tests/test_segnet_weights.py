"""Weights: torchvision backbones, CSAILVision and hszhao/semseg PSPNets, semlic checkpoints."""

from __future__ import annotations

import json

import pytest
import torch
import torchvision
from safetensors.torch import save_file

from semlic.errors import CheckpointError
from semlic.model_files import config_of, load_model, read_metadata, save_model
from semlic.segnet import PSPNet, PSPNetConfig
from semlic.segnet.pretrained import load_csail_pspnet, load_hszhao_pspnet, load_torchvision_backbone

from .test_segnet_support import one_thread  # noqa: F401 (autouse fixture)



# --- state dicts written in the published layouts, from the architectures' definitions ---------
def _conv(state, name, out_channels, in_channels, kernel, bias=False):
    fan_in = in_channels * kernel * kernel  # He-scaled, so 50 random layers keep finite activations
    state[f"{name}.weight"] = torch.randn(out_channels, in_channels, kernel, kernel) * (2 / fan_in) ** 0.5
    if bias:
        state[f"{name}.bias"] = torch.randn(out_channels)


def _bn(state, name, channels):
    state[f"{name}.weight"] = torch.rand(channels) + 0.5
    state[f"{name}.bias"] = torch.randn(channels)
    state[f"{name}.running_mean"] = torch.randn(channels)
    state[f"{name}.running_var"] = torch.rand(channels) + 0.5


def deep_stem_resnet_state(blocks, bottleneck):
    """ResNet with the 3-conv deep stem (CSAILVision / hszhao), no fc; old-PyTorch BN (no counters)."""
    state = {}
    _conv(state, "conv1", 64, 3, 3), _bn(state, "bn1", 64)
    _conv(state, "conv2", 64, 64, 3), _bn(state, "bn2", 64)
    _conv(state, "conv3", 128, 64, 3), _bn(state, "bn3", 128)
    in_channels = 128
    for stage, (planes, count) in enumerate(zip((64, 128, 256, 512), blocks), start=1):
        out_channels = planes * 4 if bottleneck else planes
        for index in range(count):
            prefix = f"layer{stage}.{index}"
            if bottleneck:
                _conv(state, f"{prefix}.conv1", planes, in_channels, 1), _bn(state, f"{prefix}.bn1", planes)
                _conv(state, f"{prefix}.conv2", planes, planes, 3), _bn(state, f"{prefix}.bn2", planes)
                _conv(state, f"{prefix}.conv3", out_channels, planes, 1), _bn(state, f"{prefix}.bn3", out_channels)
            else:
                _conv(state, f"{prefix}.conv1", planes, in_channels, 3), _bn(state, f"{prefix}.bn1", planes)
                _conv(state, f"{prefix}.conv2", planes, planes, 3), _bn(state, f"{prefix}.bn2", planes)
            if index == 0 and (stage > 1 or in_channels != out_channels):
                _conv(state, f"{prefix}.downsample.0", out_channels, in_channels, 1)
                _bn(state, f"{prefix}.downsample.1", out_channels)
            in_channels = out_channels
    return state


def csail_decoder_state(fc_dim, num_classes):
    """CSAILVision ``PPMDeepsup(num_class, fc_dim)``: 512-channel PPM and head, fc_dim/4 deep-sup."""
    state = {}
    for index in range(4):
        _conv(state, f"ppm.{index}.1", 512, fc_dim, 1), _bn(state, f"ppm.{index}.2", 512)
    _conv(state, "cbr_deepsup.0", fc_dim // 4, fc_dim // 2, 3), _bn(state, "cbr_deepsup.1", fc_dim // 4)
    _conv(state, "conv_last.0", 512, fc_dim + 4 * 512, 3), _bn(state, "conv_last.1", 512)
    _conv(state, "conv_last.4", num_classes, 512, 1, bias=True)
    _conv(state, "conv_last_deepsup", num_classes, fc_dim // 4, 1, bias=True)
    return state


@pytest.fixture(scope="module")
def csail_resnet18_files(tmp_path_factory):
    torch.manual_seed(1)
    folder = tmp_path_factory.mktemp("csail")
    encoder, decoder = deep_stem_resnet_state((2, 2, 2, 2), bottleneck=False), csail_decoder_state(512, 150)
    torch.save(encoder, folder / "encoder_epoch_20.pth")
    torch.save(decoder, folder / "decoder_epoch_20.pth")
    return folder / "encoder_epoch_20.pth", folder / "decoder_epoch_20.pth", encoder, decoder


# --- torchvision -------------------------------------------------------------------------------
def test_torchvision_backbone_weights_load_exactly(tmp_path):
    torch.manual_seed(0)
    reference = torchvision.models.resnet18()
    torch.save(reference.state_dict(), tmp_path / "resnet18.pth")
    model = PSPNet(PSPNetConfig(num_classes=4, backbone="resnet18"))
    load_torchvision_backbone(model, tmp_path / "resnet18.pth")
    loaded = model.backbone.state_dict()
    expected = {k: v for k, v in reference.state_dict().items() if not k.startswith("fc.")}
    assert loaded.keys() == expected.keys()
    for key, value in expected.items():
        assert torch.equal(loaded[key], value), key


def test_torchvision_weights_of_other_depth_name_the_tensor(tmp_path):
    torch.save(torchvision.models.resnet34().state_dict(), tmp_path / "resnet34.pth")
    model = PSPNet(PSPNetConfig(num_classes=4, backbone="resnet18", base_channels=32))
    with pytest.raises(CheckpointError, match=r"'conv1.weight' has shape \(64, 3, 7, 7\), expected \(32, 3, 7, 7\)"):
        load_torchvision_backbone(model, tmp_path / "resnet34.pth")
    deep = PSPNet(PSPNetConfig(num_classes=4, backbone="resnet18", deep_stem=True))
    with pytest.raises(CheckpointError, match="deep_stem"):
        load_torchvision_backbone(deep, tmp_path / "resnet34.pth")


# --- CSAILVision -------------------------------------------------------------------------------
def test_csail_resnet50dilated_ppm_deepsup_converts(tmp_path):
    torch.manual_seed(0)
    encoder, decoder = deep_stem_resnet_state((3, 4, 6, 3), bottleneck=True), csail_decoder_state(2048, 150)
    torch.save(encoder, tmp_path / "encoder.pth")
    torch.save({f"module.{k}": v for k, v in decoder.items()}, tmp_path / "decoder.pth")  # DataParallel prefix
    model = load_csail_pspnet(tmp_path / "encoder.pth", tmp_path / "decoder.pth", num_classes=150)
    assert model.config.deep_stem and model.config.aux_channels == 512 and not model.training
    state = model.state_dict()
    for key, value in encoder.items():
        assert torch.equal(state[f"backbone.{key}"], value), key
    assert torch.equal(state["ppm.stages.3.1.weight"], decoder["ppm.3.1.weight"])
    assert torch.equal(state["ppm.stages.0.2.running_var"], decoder["ppm.0.2.running_var"])
    assert torch.equal(state["head.0.weight"], decoder["conv_last.0.weight"])
    assert torch.equal(state["head.4.bias"], decoder["conv_last.4.bias"])
    assert torch.equal(state["aux_head.0.weight"], decoder["cbr_deepsup.0.weight"])
    assert torch.equal(state["aux_head.4.weight"], decoder["conv_last_deepsup.weight"])
    with torch.no_grad():
        logits = model(torch.rand(1, 3, 65, 65))
    assert logits.shape == (1, 150, 65, 65) and torch.isfinite(logits).all()


def test_csail_every_source_tensor_is_used(csail_resnet18_files):
    encoder_path, decoder_path, encoder, decoder = csail_resnet18_files
    model = load_csail_pspnet(encoder_path, decoder_path, num_classes=150, encoder_arch="resnet18dilated")
    values = {tuple(v.flatten()[:4].tolist()) for v in model.state_dict().values() if v.is_floating_point()}
    for key, value in {**encoder, **decoder}.items():
        assert tuple(value.flatten()[:4].tolist()) in values, key


def test_csail_wrong_shape_names_the_source_key(csail_resnet18_files, tmp_path):
    encoder_path, _, _, decoder = csail_resnet18_files
    decoder = dict(decoder, **{"conv_last.4.weight": torch.randn(151, 512, 1, 1)})
    torch.save(decoder, tmp_path / "decoder.pth")
    with pytest.raises(CheckpointError) as error:
        load_csail_pspnet(encoder_path, tmp_path / "decoder.pth", 150, "resnet18dilated")
    message = str(error.value)
    assert "'conv_last.4.weight' (for 'head.4.weight')" in message
    assert "(151, 512, 1, 1), expected (150, 512, 1, 1)" in message


def test_csail_missing_and_unknown_keys_are_refused(csail_resnet18_files, tmp_path):
    encoder_path, decoder_path, encoder, _ = csail_resnet18_files
    del encoder["layer3.1.bn2.running_mean"]
    torch.save(encoder, tmp_path / "encoder.pth")
    with pytest.raises(CheckpointError, match=r"missing tensor 'layer3.1.bn2.running_mean'.*expected shape \(256,\)"):
        load_csail_pspnet(tmp_path / "encoder.pth", decoder_path, 150, "resnet18dilated")
    encoder["layer3.1.bn2.running_mean"] = torch.zeros(256)
    encoder["extra.weight"] = torch.zeros(3)
    torch.save(encoder, tmp_path / "encoder.pth")
    with pytest.raises(CheckpointError, match="unexpected tensor 'extra.weight'"):
        load_csail_pspnet(tmp_path / "encoder.pth", decoder_path, 150, "resnet18dilated")


# --- hszhao/semseg -----------------------------------------------------------------------------
def test_hszhao_checkpoint_converts(tmp_path):
    torch.manual_seed(0)
    stem = {"conv1": "layer0.0", "bn1": "layer0.1", "conv2": "layer0.3", "bn2": "layer0.4", "conv3": "layer0.6",
            "bn3": "layer0.7"}
    encoder = deep_stem_resnet_state((3, 4, 6, 3), bottleneck=True)
    state = {}
    for key, value in encoder.items():
        head, rest = key.split(".", 1)
        state[f"{stem.get(head, head)}.{rest}"] = value
    for index in range(4):
        _conv(state, f"ppm.features.{index}.1", 512, 2048, 1), _bn(state, f"ppm.features.{index}.2", 512)
    _conv(state, "cls.0", 512, 4096, 3), _bn(state, "cls.1", 512), _conv(state, "cls.4", 150, 512, 1, bias=True)
    _conv(state, "aux.0", 256, 1024, 3), _bn(state, "aux.1", 256), _conv(state, "aux.4", 150, 256, 1, bias=True)
    torch.save({"epoch": 100, "state_dict": {f"module.{k}": v for k, v in state.items()}}, tmp_path / "train.pth")
    model = load_hszhao_pspnet(tmp_path / "train.pth", num_classes=150)
    assert model.config.align_corners and model.config.uniform_dilation
    assert torch.equal(model.backbone.conv3.weight, state["layer0.6.weight"])
    assert torch.equal(model.ppm.stages[2][1].weight, state["ppm.features.2.1.weight"])
    assert torch.equal(model.head[4].weight, state["cls.4.weight"])
    assert torch.equal(model.aux_head[1].running_var, state["aux.1.running_var"])


# --- semlic checkpoints ------------------------------------------------------------------------
def tiny_model() -> PSPNet:
    torch.manual_seed(0)
    model = PSPNet(PSPNetConfig(num_classes=6, backbone="resnet18", base_channels=8, ppm_channels=8,
                                head_channels=16, aux_channels=8, ppm_bins=(1, 2, 4)))
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):  # buffers must survive the round trip too
                module.running_mean.normal_()
                module.running_var.uniform_(0.5, 2.0)
    return model.eval()


def test_checkpoint_roundtrip_is_exact(tmp_path):
    model = tiny_model()
    save_model(tmp_path / "segnet.safetensors", model)
    loaded = load_model(tmp_path / "segnet.safetensors", expect="pspnet")
    assert loaded.config == model.config and config_of(tmp_path / "segnet.safetensors") == ("pspnet", model.config)
    assert not (tmp_path / "segnet.json").exists()  # no sidecar: the config is in the file
    expected = model.state_dict()
    assert loaded.state_dict().keys() == expected.keys()
    for key, value in loaded.state_dict().items():
        assert torch.equal(value, expected[key]), key
    images = torch.rand(2, 3, 40, 56)
    with torch.no_grad():
        assert torch.equal(loaded(images), model(images))


def test_missing_corrupt_and_truncated_checkpoints(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_model(tmp_path / "absent.safetensors", expect="pspnet")
    (tmp_path / "garbage.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not json at all!")
    with pytest.raises(CheckpointError, match="not a readable safetensors"):
        load_model(tmp_path / "garbage.safetensors", expect="pspnet")
    save_model(tmp_path / "good.safetensors", tiny_model())
    data = (tmp_path / "good.safetensors").read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="not a readable safetensors"):
        load_model(tmp_path / "cut.safetensors", expect="pspnet")


def test_checkpoint_of_other_format_or_architecture(tmp_path):
    model = tiny_model()
    tensors = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(tensors, tmp_path / "plain.safetensors")
    with pytest.raises(CheckpointError, match=r"expected a semlic model file \(semlic/1\), found format None"):
        load_model(tmp_path / "plain.safetensors", expect="pspnet")
    metadata = {"format": "semlic-segnet", "format_version": "1", "architecture": "pspnet",
                "config": json.dumps(model.config.to_dict())}
    save_file(tensors, tmp_path / "legacy.safetensors", metadata=metadata)  # written before the shared format
    legacy = load_model(tmp_path / "legacy.safetensors", expect="pspnet")
    assert legacy.config == model.config and config_of(tmp_path / "legacy.safetensors")[0] == "pspnet"
    assert legacy.fingerprint == save_model(tmp_path / "current.safetensors", model)  # the same weights
    assert read_metadata(tmp_path / "current.safetensors")["model"] == "pspnet"
    with pytest.raises(CheckpointError, match="expected a 'smapnet' model, found 'pspnet'"):
        load_model(tmp_path / "legacy.safetensors", expect="smapnet")
    config = dict(model.config.to_dict(), num_classes=7)
    save_file(tensors, tmp_path / "mismatch.safetensors", metadata=dict(metadata, config=json.dumps(config)))
    with pytest.raises(CheckpointError, match=r"'head.4.weight' has shape \(6, 16, 1, 1\), expected \(7, 16, 1, 1\)"):
        load_model(tmp_path / "mismatch.safetensors", expect="pspnet")
