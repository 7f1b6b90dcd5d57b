"""`semlic encode | decode | info` from a shell user's point of view, input modes included."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from semlic.cli import main
from semlic.imageio import load_image, save_png
from tests.conftest import make_image


@pytest.fixture()
def seg_path(tmp_path):
    _, seg = make_image(21, 34)
    path = tmp_path / "seg.png"
    save_png(path, seg)
    return path


def _modes(image: np.ndarray):
    """The same picture saved in the modes a user may hand in."""
    rgb = Image.fromarray(image, "RGB")
    grey16 = (np.asarray(rgb.convert("L")).astype(np.uint16) * 257)
    return {
        "rgb": rgb,
        "grey": rgb.convert("L"),
        "rgba": rgb.convert("RGBA"),
        "palette": rgb.convert("P", palette=Image.Palette.ADAPTIVE, colors=64),
        "grey16": Image.fromarray(grey16),
    }


@pytest.mark.parametrize("mode", ["rgb", "grey", "rgba", "palette", "grey16"])
@pytest.mark.numeric
def test_encode_decode_info_every_input_mode(tmp_path, tiny_model_path, seg_path, mode, capsys, bound):
    image, _ = make_image(21, 34, seed=5)
    src = tmp_path / f"in_{mode}.png"
    _modes(image)[mode].save(src)
    expected_input = load_image(src)
    assert expected_input.shape == (21, 34, 3)
    if mode in ("grey", "grey16"):
        assert (expected_input[..., 0] == expected_input[..., 1]).all()
    sem, out = tmp_path / "x.sem", tmp_path / "out.png"
    assert main(["encode", str(src), str(sem), "--model", str(tiny_model_path), "--seg", str(seg_path),
                 "--qp", "12", "-o", "chroma=444"]) == 0
    assert main(["decode", str(sem), str(out), "--model", str(tiny_model_path)]) == 0
    decoded = load_image(out)
    assert decoded.shape == expected_input.shape
    bound("mean |decoded - input|", np.abs(decoded.astype(int) - expected_input).mean(), "<", 6)
    capsys.readouterr()
    assert main(["info", str(sem), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert [lay["role"] for lay in info["layers"]] == ["header", "segmentation", "compact", "residual"]
    assert sum(lay["bits"] for lay in info["layers"]) == 8 * sem.stat().st_size
    assert info["bpp"] == pytest.approx(8 * sem.stat().st_size / (21 * 34))


def test_grey16_is_rounded_not_truncated(tmp_path):
    values = np.array([[0, 128, 129, 65535, 32896 + 128]], dtype=np.uint16)
    path = tmp_path / "g16.png"
    Image.fromarray(values).save(path)
    np.testing.assert_array_equal(load_image(path)[..., 0], [[0, 0, 1, 255, 128]])


def test_cmyk_and_unreadable_files_are_refused(tmp_path, tiny_model_path, seg_path, capsys):
    cmyk = tmp_path / "cmyk.jpg"
    Image.new("CMYK", (34, 21), (10, 20, 30, 40)).save(cmyk)
    assert main(["encode", str(cmyk), str(tmp_path / "a.sem"), "--model", str(tiny_model_path),
                 "--seg", str(seg_path)]) == 3
    assert "CMYK" in capsys.readouterr().err
    broken = tmp_path / "broken.png"
    good = tmp_path / "good.png"
    save_png(good, make_image(21, 34)[0])
    broken.write_bytes(good.read_bytes()[:60])
    assert main(["encode", str(broken), str(tmp_path / "b.sem"), "--model", str(tiny_model_path),
                 "--seg", str(seg_path)]) == 3
    assert "not a readable image" in capsys.readouterr().err
    assert not (tmp_path / "a.sem").exists() and not (tmp_path / "b.sem").exists()


def test_corrupt_file_and_wrong_model_exit_codes(tmp_path, tiny_model_path, seg_path, capsys):
    src = tmp_path / "in.png"
    save_png(src, make_image(21, 34)[0])
    sem = tmp_path / "x.sem"
    assert main(["encode", str(src), str(sem), "--model", str(tiny_model_path), "--seg", str(seg_path)]) == 0
    truncated = tmp_path / "t.sem"
    truncated.write_bytes(sem.read_bytes()[:-7])
    assert main(["decode", str(truncated), str(tmp_path / "o.png"), "--model", str(tiny_model_path)]) == 4
    assert "remain" in capsys.readouterr().err
    assert not (tmp_path / "o.png").exists()
    assert main(["info", str(tmp_path / "missing.sem")]) == 3
    assert main(["encode", str(src), str(sem), "--model", str(tmp_path / "nope.safetensors"),
                 "--seg", str(seg_path)]) == 5
    assert main(["encode", str(src), str(tmp_path / "c.sem"), "--model", str(tiny_model_path)]) == 2
    assert "--seg" in capsys.readouterr().err


def test_encode_reports_bpp_and_with_metrics_psnr_and_ms_ssim(tmp_path, tiny_model_path, capsys):
    from semlic import metrics
    from semlic.methods import get_method
    from semlic.model_files import load_model

    image, seg = make_image(176, 192, seed=3)   # MS-SSIM needs 161 px
    src, seg_png, sem = tmp_path / "in.png", tmp_path / "seg.png", tmp_path / "x.sem"
    save_png(src, image)
    save_png(seg_png, seg)
    capsys.readouterr()
    assert main(["encode", str(src), str(sem), "--model", str(tiny_model_path), "--seg", str(seg_png), "--qp", "30",
                 "--metrics"]) == 0
    line = capsys.readouterr().out.strip()
    decoded = get_method("dsslic").decode(sem.read_bytes(), {"dsslic": load_model(tiny_model_path)})
    bpp = 8 * sem.stat().st_size / (176 * 192)
    assert f"{bpp:.4f} bpp" in line
    assert f"PSNR-RGB {metrics.psnr_rgb(image, decoded):.2f} dB" in line
    assert f"MS-SSIM {metrics.ms_ssim_rgb(image, decoded):.4f}" in line


def test_compare_picks_the_file_nearest_the_target_for_each_method(tmp_path, tiny_model_path, capsys):
    from semlic import metrics
    from semlic.baselines import code_image_bytes
    from semlic.image_codecs import get_codec

    image, seg = make_image(48, 64, seed=4)
    src, seg_png, out = tmp_path / "in.png", tmp_path / "seg.png", tmp_path / "compare.png"
    save_png(src, image)
    save_png(seg_png, seg)
    capsys.readouterr()
    assert main(["compare", str(src), "--methods", "dsslic,jpeg,hevc", "--bpp", "1.0", "--out", str(out),
                 "--seg", str(seg_png), "--model", str(tiny_model_path)]) == 0
    printed = capsys.readouterr().out.splitlines()
    rows = {line.split()[0]: line.split() for line in printed[1:4]}
    assert set(rows) == {"dsslic", "jpeg", "hevc"}
    # JPEG: the sweep's file nearest 1 bpp (by rate ratio), its bpp as printed
    sweep = [(q, metrics.bpp(len(code_image_bytes(image, "jpeg", q).data), 48, 64))
             for q in get_codec("jpeg").default_sweep]
    import math

    quality, bpp = min(sweep, key=lambda qb: abs(math.log(qb[1] / 1.0)))
    assert float(rows["jpeg"][3]) == pytest.approx(bpp, abs=1e-4) and float(rows["jpeg"][1]) == quality
    # the sheet: the original and three decoded images, captions above, four to a row
    sheet = load_image(out)
    assert sheet.shape == (48 + 16, 4 * 64, 3)
    assert np.array_equal(sheet[16:, :64], image)
    assert main(["compare", str(src), "--methods", "nonesuch", "--bpp", "1", "--out", str(out)]) == 2
    assert main(["compare", str(src), "--methods", "jpeg", "--bpp", "0", "--out", str(out)]) == 2
    assert "target bpp must be positive" in capsys.readouterr().err


def test_every_method_encodes_at_its_own_default_quality(tmp_path, every_models_dir, capsys):
    from semlic.methods import all_methods

    image, _ = make_image(48, 64, seed=3)
    src = tmp_path / "in.png"
    Image.fromarray(image).save(src)
    methods = all_methods()
    assert methods
    for method in methods:
        assert method.default_quality is not None, method.name
        out = tmp_path / f"{method.name}.sem"
        assert main(["encode", str(src), str(out), "--method", method.name,
                     "--models-dir", str(every_models_dir)]) == 0, method.name
        assert f"{method.name}, " in capsys.readouterr().out
        assert main(["info", str(out), "--json"]) == 0
        info = json.loads(capsys.readouterr().out)
        assert info["method"] == method.name
        assert main(["decode", str(out), str(tmp_path / f"{method.name}.png"),
                     "--models-dir", str(every_models_dir)]) == 0, method.name
    listed = {row["name"]: row["default_quality"] for row in _methods_json(capsys)}
    assert all(listed[m.name] == m.quality_label(m.parse_quality(m.default_quality)) for m in methods)


def _methods_json(capsys):
    capsys.readouterr()
    assert main(["methods", "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_compare_without_a_target_uses_the_first_methods_default_quality(tmp_path, every_models_dir, capsys):
    image, _ = make_image(48, 64, seed=4)
    src = tmp_path / "in.png"
    Image.fromarray(image).save(src)
    assert main(["compare", str(src), "--methods", "hyperprior,jpeg", "--out", str(tmp_path / "c.png"),
                 "--models-dir", str(every_models_dir)]) == 0
    printed = capsys.readouterr().out
    assert "hyperprior at its default quality" in printed and (tmp_path / "c.png").is_file()
    assert main(["compare", str(src), "--methods", "jpeg,hyperprior", "--out", str(tmp_path / "d.png"),
                 "--models-dir", str(every_models_dir)]) == 2


def test_compare_shows_the_decoder_side_maps(tmp_path, every_models_dir, capsys):
    """--maps: after DSSLIC's and SMIC's images, the maps their decoders hold, captioned with the bits read."""
    image, _ = make_image(48, 64, seed=5)
    src = tmp_path / "in.png"
    Image.fromarray(image).save(src)
    out = tmp_path / "maps.png"
    assert main(["compare", str(src), "--methods", "dsslic,smic,jpeg", "--bpp", "2", "--out", str(out), "--maps",
                 "--models-dir", str(every_models_dir)]) == 0
    printed = capsys.readouterr().out
    assert "decoder-side map of dsslic map:" in printed and "decoder-side map of smic map:" in printed
    assert "jpeg" not in printed.split("decoder-side")[-1]
    sheet = np.asarray(Image.open(out))
    assert sheet.shape[1] == 4 * 64 and sheet.shape[0] == 2 * (48 + 16)   # original, 3 images, 2 maps: 6 tiles
