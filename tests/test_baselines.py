"""Baseline codecs: real files, honest byte counts, the `semlic baselines` command."""

import numpy as np
import pytest

from semlic import baselines, metrics, results
from semlic import image_codecs as codecs
from semlic.methods import method_names
from semlic.cli import main
from semlic.errors import ConfigError
from semlic.imageio import save_png


def _image(height=40, width=56, seed=0):
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    smooth = np.stack([x * 4, y * 5, (x + y) * 2], axis=-1).astype(np.float64)
    return np.clip(smooth + rng.normal(0, 6, smooth.shape), 0, 255).astype(np.uint8)


@pytest.fixture
def image_file(tmp_path):
    path = tmp_path / "toy.png"
    save_png(path, _image())
    return path


def test_baseline_codecs_are_method_ids():
    assert set(baselines.BASELINE_CODECS) <= set(codecs.CODECS)
    assert not set(baselines.BASELINE_CODECS) & set(method_names())  # rows name codecs and methods apart
    assert codecs.get_codec("hevc").default_sweep == tuple(range(47, 11, -5))


@pytest.mark.parametrize("codec_name", baselines.BASELINE_CODECS)
def test_every_codec_round_trips_and_counts_the_file_on_disk(codec_name, image_file, tmp_path):
    sweep = codecs.get_codec(codec_name).default_sweep
    quality = sweep[len(sweep) // 2]
    rows = baselines.run_baselines([image_file], [codec_name], out_dir=tmp_path / "coded", sweep=[quality],
                                   dataset="toy", progress=False)
    assert len(rows) == 1
    row = rows[0]
    coded = tmp_path / "coded" / codec_name / f"toy_{baselines.quality_label(quality)}.{baselines.FILE_EXTENSIONS[codec_name]}"
    assert row["bytes_total"] == coded.stat().st_size > 0
    assert row["bpp"] == row["bytes_total"] * 8 / (40 * 56)
    assert sum(row["layer_bits"].values()) == row["bits_total"] == 8 * row["bytes_total"]
    assert (row["method"], row["dataset"], row["image_id"], row["quality"]) == (codec_name, "toy", "toy", quality)
    reconstruction = codecs.get_codec(codec_name).decode(coded.read_bytes())
    assert row["psnr_rgb"] == pytest.approx(metrics.psnr_rgb(_image(), reconstruction))
    assert 20 < row["psnr_rgb"] < 60
    recon, nbytes, enc_s, dec_s = baselines.code_image_baseline(_image(), codec_name, quality)
    assert recon.shape == (40, 56, 3) and nbytes == row["bytes_total"] and enc_s > 0 and dec_s > 0


def test_hevc_follows_the_qp_and_splits_its_heif_file():
    image = _image(64, 64)
    coarse = baselines.code_image_bytes(image, "hevc", 47)
    fine = baselines.code_image_bytes(image, "hevc", 12)
    assert len(coarse.data) < len(fine.data)  # quality=-1 once made libheif lossless, ignoring the QP
    assert metrics.psnr_rgb(image, coarse.reconstruction) < metrics.psnr_rgb(image, fine.reconstruction) < np.inf
    layout = baselines.heif_layout(fine.data)
    assert layout.file_bytes == len(fine.data)
    assert 0 < layout.parameter_set_bytes < layout.container_bytes < 1000
    assert layout.mdat_payload_bytes + layout.container_bytes == layout.file_bytes
    chroma_420 = baselines.code_image_bytes(image, "hevc", 12, chroma="420")
    assert len(chroma_420.data) != len(fine.data)


@pytest.mark.parametrize("codec_name, quality", [("hevc", 52), ("hevc", -1), ("hevc", 32.5), ("jpeg2000", 1), ("webp", 101)])
def test_out_of_range_knobs_are_refused(codec_name, quality):
    with pytest.raises(ConfigError):
        baselines.code_image_baseline(_image(), codec_name, quality)


def test_unknown_codec_and_duplicate_image_ids_are_refused(image_file, tmp_path):
    with pytest.raises(ConfigError):
        baselines.run_baselines([image_file], ["png"], progress=False)
    other = tmp_path / "other"
    other.mkdir()
    save_png(other / "toy.png", _image(seed=1))
    with pytest.raises(ConfigError, match="distinct"):
        baselines.run_baselines([image_file, other / "toy.png"], ["jpeg"], progress=False)


def test_cli_writes_rows_and_files(tmp_path):
    for name, seed in (("first", 0), ("second", 1)):
        save_png(tmp_path / "in" / f"{name}.png", _image(seed=seed))
    out = tmp_path / "out"
    argv = ["baselines", str(tmp_path / "in" / "first.png"), str(tmp_path / "in" / "second.png"),
            "--codec", "jpeg", "--codec", "hevc", "--quality", "30", "--quality", "40",
            "--out", str(out), "--dataset", "toy", "--no-progress"]
    assert main(argv) == 0
    rows = results.read_rows(out / "rows.parquet")
    assert [(r["method"], r["image_id"], r["quality"]) for r in rows] == [
        (m, i, q) for m in ("hevc", "jpeg") for i in ("first", "second") for q in (30.0, 40.0)]
    for row in rows:
        path = out / row["method"] / f"{row['image_id']}_{baselines.quality_label(row['quality'])}.{baselines.FILE_EXTENSIONS[row['method']]}"
        assert path.stat().st_size == row["bytes_total"]
    # A folder stands for its images; the same command reproduces the same rate-distortion values.
    assert main(["baselines", str(tmp_path / "in"), "--codec", "jpeg", "--quality", "30",
                 "--out", str(tmp_path / "again"), "--dataset", "toy", "--no-progress"]) == 0
    again = results.read_rows(tmp_path / "again" / "rows.parquet")
    assert [(r["bytes_total"], r["psnr_rgb"]) for r in again] == [
        (r["bytes_total"], r["psnr_rgb"]) for r in rows if r["method"] == "jpeg" and r["quality"] == 30]


def test_cli_exit_codes(tmp_path, image_file):
    assert main(["baselines", str(tmp_path / "missing.png"), "--codec", "jpeg", "--out", str(tmp_path / "o")]) == 3
    assert main(["baselines", str(image_file), "--codec", "hevc", "--quality", "60",
                 "--out", str(tmp_path / "o"), "--no-progress"]) == 2


def test_two_workers_give_the_same_rows(tmp_path):
    paths = []
    for seed in range(2):
        paths.append(tmp_path / f"img{seed}.png")
        save_png(paths[-1], _image(seed=seed))
    serial = baselines.run_baselines(paths, ["jpeg"], sweep=[50], progress=False)
    parallel = baselines.run_baselines(paths, ["jpeg"], sweep=[50], workers=2, progress=False)
    strip = lambda rows: [(r["image_id"], r["bytes_total"], r["psnr_rgb"]) for r in rows]  # noqa: E731
    assert strip(serial) == strip(parallel)


def test_each_baseline_codec_is_one_declaration():
    """Extension, knob range, default options, label and colour come from the codec's entry in CODECS."""
    from semlic import reporting

    for name in baselines.BASELINE_CODECS:
        codec = codecs.CODECS[name]
        assert codec.extension and codec.label and codec.colour and codec.quality_range
        assert baselines.FILE_EXTENSIONS[name] == codec.extension
        assert baselines.QUALITY_RANGES[name] == codec.quality_range
        assert baselines.DEFAULT_OPTIONS.get(name, {}) == dict(codec.default_options)
        assert reporting.BASELINE_LABELS[name] == codec.label and reporting.BASELINE_COLOURS[name] == codec.colour
    assert baselines.DEFAULT_OPTIONS["hevc"] == {"chroma": "444"}   # the anchor is HEVC 4:4:4

