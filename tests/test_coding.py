"""The code stage's library function: files on disk and rows that count every byte."""

from __future__ import annotations

import pyarrow.parquet as pq
import pytest

from semlic import format as fmt
from semlic import results
from semlic.coding import CodingSample, SemanticModels, code_semantic
from semlic.errors import ConfigError
from semlic.imageio import save_png
from tests.conftest import make_image


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
    rows = code_semantic(samples, SemanticModels(tiny_model), dataset="unit", residual_qps=[40, 20],
                         out_dir=tmp_path / "coded", progress=False, params_hash="abc")
    assert [(r["image_id"], r["quality"]) for r in rows] == [("im0", 20), ("im0", 40), ("im1", 20), ("im1", 40)]
    for row in rows:
        path = tmp_path / "coded" / "dsslic" / f"{row['image_id']}_{int(row['quality'])}.sem"
        assert row["bytes_total"] == path.stat().st_size
        assert row["bpp"] == pytest.approx(8 * path.stat().st_size / (row["height"] * row["width"]))
        assert sum(row["layer_bits"].values()) == row["bits_total"]
        assert fmt.unpack(path.read_bytes()).residual_qp == int(row["quality"])
        assert row["device"] == "cpu+precomputed-seg"
    by_qp = {(r["image_id"], r["quality"]): r for r in rows}
    assert by_qp[("im0", 20)]["psnr_rgb"] > by_qp[("im0", 40)]["psnr_rgb"]
    results.write_rows(rows, tmp_path / "rows.parquet")
    assert pq.read_table(tmp_path / "rows.parquet").num_rows == 4


def test_needs_a_segmentation(samples, tiny_model):
    bare = [CodingSample(s.image_id, s.image_path) for s in samples]
    with pytest.raises(ConfigError, match="no segmentation"):
        code_semantic(bare, SemanticModels(tiny_model), dataset="unit", residual_qps=[30], progress=False)
    with pytest.raises(ConfigError, match="unknown semantic method"):
        code_semantic(samples, SemanticModels(tiny_model), dataset="unit", method="smic", progress=False)


def test_edms_rows_carry_no_segmentation_bits(samples, tiny_model, tmp_path):
    from semlic.segnet import load_segnet
    from semlic.smapnet_training import load_smapnet
    from tests.test_edms_support import save_tiny_segnet, save_tiny_smapnet

    segnet = load_segnet(save_tiny_segnet(tmp_path / "segnet.safetensors"))
    smapnet = load_smapnet(save_tiny_smapnet(tmp_path / "smapnet.safetensors"))
    models = SemanticModels(tiny_model, segnet, smapnet)
    for method in ("edms", "edms_noenh"):
        rows = code_semantic(samples[:1], models, dataset="unit", method=method, residual_qps=[30],
                             out_dir=tmp_path / "coded", progress=False)
        assert "segmentation" not in rows[0]["layer_bits"] and rows[0]["device"] == "cpu"
        assert rows[0]["bytes_total"] == (tmp_path / "coded" / method / "im0_30.sem").stat().st_size
    with pytest.raises(ConfigError, match="smapnet"):
        code_semantic(samples, SemanticModels(tiny_model, segnet), dataset="unit", method="edms", progress=False)
