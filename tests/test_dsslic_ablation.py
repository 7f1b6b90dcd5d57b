"""DSSLIC's ablations as codecs (noSeg, upComp), decode_many, method variants, training budgets
in minutes and the noSeg training, and the CPU bf16 decision."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from semlic import format as fmt
from semlic.code_stage import CodingSample, MethodPlan, code_method
from semlic.errors import ConfigError, FingerprintMismatchError, LayerError, MissingModelError
from semlic.imageio import save_png
from semlic.methods import get_method
from semlic.layered_codec import ROLE_COMPACT, ROLE_RESIDUAL, ROLE_SEGMENTATION
from semlic.methods.dsslic.model import DSSLIC, DSSLICNoSeg, dsslic_config
from semlic.model_files import ModelStore, load_model, read_metadata, save_model
from tests.conftest import make_image

NOSEG, UPCOMP, DSSLIC_METHOD = get_method("dsslic_noseg"), get_method("dsslic_upcomp"), get_method("dsslic")


@pytest.fixture(scope="module")
def noseg_model():
    torch.manual_seed(1)
    return DSSLICNoSeg(dsslic_config("tiny", label_nc=1)).eval()


@pytest.mark.parametrize("qp", [None, 30])
def test_noseg_files_hold_no_map_and_decode_from_the_file_alone(noseg_model, qp):
    image, _ = make_image(40, 56)
    result = NOSEG.encode(image, {"dsslic_noseg": noseg_model}, qp)
    sem = fmt.unpack(result.data)
    assert [layer.role for layer in sem.layers] == [ROLE_COMPACT] + ([ROLE_RESIDUAL] if qp else [])
    assert sum(result.layer_bits.values()) == 8 * len(result.data)
    np.testing.assert_array_equal(NOSEG.decode(result.data, {"dsslic_noseg": noseg_model}), result.reconstruction)
    with pytest.raises(MissingModelError):
        NOSEG.decode(result.data, {"dsslic": noseg_model})


def test_upcomp_is_the_upsampled_compact_image_of_the_dsslic_model(tiny_model):
    image, seg = make_image(40, 56, seed=2)
    models = {"dsslic": tiny_model}
    up, full = (m.encode(image, models, None, segmentation=seg) for m in (UPCOMP, DSSLIC_METHOD))
    assert fmt.unpack(up.data).layer(ROLE_SEGMENTATION) is None
    assert fmt.unpack(up.data).layer(ROLE_COMPACT).payload == fmt.unpack(full.data).layer(ROLE_COMPACT).payload
    assert len(up.data) < len(full.data)
    from semlic.layers import decode_layer, image_to_tensor, tensor_to_uint8

    compact = fmt.unpack(up.data).layer(ROLE_COMPACT)
    side = tiny_model.config.multiple
    padded = (-(-40 // side) * side // tiny_model.config.alpha, -(-56 // side) * side // tiny_model.config.alpha)
    c_hat = decode_layer(compact, 3, padded, "compact")
    expected = tensor_to_uint8(torch.nn.functional.interpolate(
        image_to_tensor(c_hat, "cpu"), scale_factor=tiny_model.config.alpha, mode="bilinear",
        align_corners=tiny_model.config.align_corners)[..., :40, :56])
    np.testing.assert_array_equal(up.reconstruction, expected)   # x' = up(c^): no RecNet
    assert not np.array_equal(up.reconstruction, full.reconstruction)
    np.testing.assert_array_equal(UPCOMP.decode(up.data, models), up.reconstruction)
    torch.manual_seed(9)
    other = {"dsslic": DSSLIC(dsslic_config("tiny", label_nc=5))}
    with pytest.raises(FingerprintMismatchError):
        UPCOMP.decode(up.data, other)


def test_a_dsslic_file_is_not_an_ablation_file(tiny_model):
    image, seg = make_image(24, 40)
    data = DSSLIC_METHOD.encode(image, {"dsslic": tiny_model}, 30, segmentation=seg).data
    with pytest.raises(LayerError, match="dsslic file, not a dsslic_upcomp"):
        UPCOMP.decode(data, {"dsslic": tiny_model})


@pytest.mark.parametrize("name", ["dsslic", "edms_noenh", "dsslic_upcomp"])
def test_decode_many_equals_one_decode_per_file(name, tiny_model):
    from semlic.segnet.pspnet import PSPNet, PSPNetConfig

    torch.manual_seed(0)
    segnet = PSPNet(PSPNetConfig(num_classes=5, backbone="resnet18", base_channels=8, head_channels=16,
                                 aux_channels=8, ppm_channels=4)).eval()
    models = {"dsslic": tiny_model, "pspnet": segnet}
    method = get_method(name)
    image, seg = make_image(40, 56, seed=3)
    files = [r.data for r in method.encode_many(image, models, [None, 40, 20], segmentation=seg)]
    other, _ = make_image(40, 56, seed=5)   # another image's file in the same call shares nothing
    files.append(method.encode(other, models, 30, segmentation=seg).data)
    decoded = method.decode_many(files, models)
    for data, (image_out, seconds) in zip(files, decoded):
        np.testing.assert_array_equal(image_out, method.decode(data, models))
        assert seconds > 0


def test_a_variant_is_named_by_its_key_and_codes_with_its_options(tmp_path, tiny_model):
    image, seg = make_image(24, 40)
    save_png(tmp_path / "im0.png", image)
    save_png(tmp_path / "seg.png", seg)
    sample = CodingSample("im0", tmp_path / "im0.png", tmp_path / "seg.png")
    variant = MethodPlan.from_section("dsslic_444", {"method": "dsslic", "chroma": "444", "qualities": [30],
                                                    "segmentation": "precomputed"})
    assert (variant.name, variant.method.name, variant.options["chroma"]) == ("dsslic_444", "dsslic", "444")
    assert variant.settings()["name"] == "dsslic_444"
    rows = code_method([sample], variant, {"dsslic": tiny_model}, dataset="unit", out_dir=tmp_path / "coded",
                       progress=False)
    assert [r["method"] for r in rows] == ["dsslic_444"]
    data = (tmp_path / "coded" / "dsslic_444" / "im0_30.sem").read_bytes()
    assert fmt.unpack(data).method == "dsslic" and rows[0]["bytes_total"] == len(data)
    with pytest.raises(ConfigError, match="cannot take the name of the registered method edms"):
        MethodPlan.from_section("edms", {"method": "dsslic"})
    with pytest.raises(ConfigError):
        MethodPlan.from_section("a/b", {"method": "dsslic"})


def test_noseg_training_and_a_minutes_budget(tmp_path):
    from semlic.methods.dsslic.training import train_dsslic

    images, segs = tmp_path / "img", tmp_path / "seg"
    for i in range(3):
        image, seg = make_image(32, 32, seed=i)
        save_png(images / f"{i}.png", image)
        save_png(segs / f"{i}.png", seg)
    cfg = {"preset": "tiny", "label_nc": 5, "iterations": 1000, "batch_size": 2, "crop": 32, "gan": False,
           "segmentation": False, "minutes": 0.02, "checkpoint_every": 1000}
    result = train_dsslic(cfg, images, segs, tmp_path / "out", progress=False)
    assert result.stopped_by == "budget" and 0 < result.iteration < 1000 and not result.completed
    meta = read_metadata(result.model_path)
    assert result.model_path.name == "dsslic_noseg.safetensors" and meta["model"] == "dsslic_noseg"
    assert int(meta["iterations"]) == result.iteration and int(meta["planned_iterations"]) == 1000
    model = load_model(result.model_path)
    assert isinstance(model, DSSLICNoSeg) and model.config.label_nc == 1
    save_model(tmp_path / "out" / "withseg.safetensors", DSSLIC(dsslic_config("tiny", label_nc=5)))
    assert ModelStore(dirs=[tmp_path / "out"]).names() == ("dsslic", "dsslic_noseg")   # side by side


def test_budgets_reach_pspnet_and_smapnet_configs():
    from semlic.methods.edms.training import SMapNetTrainConfig
    from semlic.segnet.train_config import SegnetTrainConfig

    assert SegnetTrainConfig.from_dict({"model": {"num_classes": 3}, "iterations": 2, "minutes": 1.5}).minutes == 1.5
    with pytest.raises(ConfigError, match="minutes"):
        SegnetTrainConfig.from_dict({"model": {"num_classes": 3}, "iterations": 2, "minutes": 0})
    assert SMapNetTrainConfig.from_dict({"iterations": 2, "minutes": 2}).minutes == 2


def test_cpu_bf16_is_measured_and_can_be_forced(monkeypatch):
    from semlic import train_loop

    probe = train_loop.cpu_bf16_probe(repeats=1)
    assert probe["float32"] > 0 and probe["bfloat16"] > 0
    assert probe["speedup"] == pytest.approx(probe["float32"] / probe["bfloat16"])
    monkeypatch.setenv(train_loop.CPU_BF16_ENV, "0")
    assert not train_loop.cpu_bf16() and train_loop.autocast_dtype("cpu") is None
    assert train_loop.autocast_dtype("cuda") is torch.bfloat16   # CUDA always, where it is enabled
    assert train_loop.autocast_dtype("cuda", enabled=False) is None
    monkeypatch.setenv(train_loop.CPU_BF16_ENV, "1")
    native = torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
    assert train_loop.cpu_bf16() == native
    with train_loop.autocast("cpu"):
        y = torch.nn.functional.linear(torch.randn(2, 4), torch.randn(3, 4))
    assert y.dtype == (torch.bfloat16 if native else torch.float32)
    monkeypatch.delenv(train_loop.CPU_BF16_ENV)
    monkeypatch.setattr(train_loop, "_CPU_BF16", {})
    monkeypatch.setattr(train_loop, "cpu_bf16_probe", lambda: {"speedup": 0.8})
    assert not train_loop.cpu_bf16()   # the instructions alone do not decide
    monkeypatch.setattr(train_loop, "_CPU_BF16", {})
    monkeypatch.setattr(train_loop, "cpu_bf16_probe", lambda: {"speedup": 1.9})
    assert train_loop.cpu_bf16() == native


@pytest.mark.numeric
def test_ssim_is_computed_in_float32_under_bf16_autocast(bound):
    from semlic.nn.losses import ssim

    torch.manual_seed(0)
    x = torch.rand(2, 3, 64, 64) * 2 - 1
    y = (x + 0.05 * torch.randn_like(x)).clamp(-1, 1)
    reference = ssim(x, y)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        inside = ssim(x.bfloat16(), y.bfloat16())
    assert inside.dtype == torch.float32 and torch.isfinite(inside)
    bound("|SSIM under bf16 autocast - float32|", abs(inside.item() - reference.item()), "<=", 2e-3)
