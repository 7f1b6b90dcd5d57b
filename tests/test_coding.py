"""The code stage's library function: files on disk and rows that count every byte."""

from __future__ import annotations

import pyarrow.parquet as pq
import pytest

from semlic import format as fmt
from semlic import results
from semlic.code_stage import CodingSample, MethodPlan, code_method, code_shard
from semlic.errors import ConfigError, MissingModelError
from semlic.imageio import save_png
from semlic.layered_codec import Section
from tests.conftest import make_image


def plan(name="dsslic", **section):
    return MethodPlan.from_section(name, section)


@pytest.fixture()
def samples(tmp_path):
    out = []
    for i, size in enumerate([(24, 40), (33, 17)]):
        image, seg = make_image(*size, seed=i)
        save_png(tmp_path / "img" / f"im{i}.png", image)
        save_png(tmp_path / "seg" / f"im{i}.png", seg)
        out.append(CodingSample(f"im{i}", tmp_path / "img" / f"im{i}.png", tmp_path / "seg" / f"im{i}.png"))
    return out


def test_rows_match_the_files(samples, tiny_model, tmp_path):
    rows = code_method(samples, plan(qualities=[40, 20], segmentation="precomputed"), {"dsslic": tiny_model},
                       dataset="unit", out_dir=tmp_path / "coded", progress=False, params_hash="abc")
    assert [(r["image_id"], r["quality"]) for r in rows] == [("im0", 20), ("im0", 40), ("im1", 20), ("im1", 40)]
    for row in rows:
        path = tmp_path / "coded" / "dsslic" / f"{row['image_id']}_{int(row['quality'])}.sem"
        assert row["bytes_total"] == path.stat().st_size
        assert row["bpp"] == pytest.approx(8 * path.stat().st_size / (row["height"] * row["width"]))
        assert sum(row["layer_bits"].values()) == row["bits_total"]
        assert Section.unpack(fmt.unpack(path.read_bytes()).section).residual_qp == int(row["quality"])
        assert row["device"] == "cpu+precomputed-seg"
    by_qp = {(r["image_id"], r["quality"]): r for r in rows}
    assert by_qp[("im0", 20)]["psnr_rgb"] > by_qp[("im0", 40)]["psnr_rgb"]
    results.write_rows(rows, tmp_path / "rows.parquet")
    assert pq.read_table(tmp_path / "rows.parquet").num_rows == 4


def test_needs_a_segmentation(samples, tiny_model):
    bare = [CodingSample(s.image_id, s.image_path) for s in samples]
    with pytest.raises(ConfigError, match="no precomputed map"):
        code_method(bare, plan(qualities=[30], segmentation="precomputed"), {"dsslic": tiny_model}, dataset="unit",
                    progress=False)
    with pytest.raises(ConfigError, match="segmentation map"):  # no map and no PSPNet to compute one
        code_method(bare, plan(qualities=[30]), {"dsslic": tiny_model}, dataset="unit", progress=False)
    with pytest.raises(ConfigError, match="unknown method 'nonesuch'"):
        plan("nonesuch")
    with pytest.raises(ConfigError, match="no qualities"):
        plan(qualities=[])
    with pytest.raises(ConfigError, match="unknown option"):
        plan(residual_qps=[30])


def test_edms_rows_carry_no_segmentation_bits(samples, tiny_model, tmp_path):
    from semlic.model_files import load_model
    from tests.test_edms_support import save_tiny_segnet, save_tiny_smapnet

    segnet = load_model(save_tiny_segnet(tmp_path / "segnet.safetensors"))
    smapnet = load_model(save_tiny_smapnet(tmp_path / "smapnet.safetensors"))
    models = {"dsslic": tiny_model, "pspnet": segnet, "smapnet": smapnet}
    for method in ("edms", "edms_noenh"):
        rows = code_method(samples[:1], plan(method, qualities=[30]), models, dataset="unit",
                           out_dir=tmp_path / "coded", progress=False)
        assert "segmentation" not in rows[0]["layer_bits"] and rows[0]["device"] == "cpu"
        assert rows[0]["bytes_total"] == (tmp_path / "coded" / method / "im0_30.sem").stat().st_size
    with pytest.raises(MissingModelError, match="smapnet"):
        code_method(samples, plan("edms"), {"dsslic": tiny_model, "pspnet": segnet}, dataset="unit", progress=False)


def test_code_shard_finds_its_models_in_a_directory(samples, tiny_model_path, tmp_path):
    import shutil

    models_dir = tmp_path / "models"
    (models_dir / "dsslic").mkdir(parents=True)
    shutil.copy(tiny_model_path, models_dir / "dsslic" / "dsslic.safetensors")
    section = {"qualities": [35], "segmentation": "precomputed", "lossless": "png"}
    paths = [s.image_path for s in samples]
    rows = code_shard(paths, "dsslic", section, models_dir=models_dir, dataset="unit", seg_dir=samples[0].seg_path.parent)
    again = code_shard(paths, "dsslic", section, models_dir=models_dir, dataset="unit", seg_dir=samples[0].seg_path.parent)
    strip = lambda rows: [{k: v for k, v in r.items() if k not in ("enc_s", "dec_s")} for r in rows]  # noqa: E731
    assert strip(rows) == strip(again) and len(rows) == 2 and rows[0]["params_hash"]
    other = code_shard(paths, "dsslic", {**section, "qualities": [34]}, models_dir=models_dir, dataset="unit",
                       seg_dir=samples[0].seg_path.parent)
    assert other[0]["params_hash"] != rows[0]["params_hash"]
