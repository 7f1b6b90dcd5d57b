"""DSSLIC-RD: the entropy-coded compact layer, the 10-bit residual, the three map modes, training."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from semlic import errors
from semlic import format as fmt
from semlic.cli import main
from semlic.image_codecs import get_codec
from semlic.imageio import save_png
from semlic.methods import get_method
from semlic.layered_codec import ROLE_COMPACT, ROLE_RESIDUAL
from semlic.methods.dsslic_rd import parse_quality
from semlic.methods.dsslic_rd.model import RDConfig, bank_from_nets, rd_config
from semlic.methods.dsslic_rd.training import RDTraining, merge_levels, subsampled_map, train_dsslic_rd
from semlic.model_files import build_model, load_model, read_metadata, save_model
from semlic.segnet.pspnet import PSPNet, pspnet_config
from tests.conftest import make_image

LABELS = 5
METHODS = ("dsslic_rd", "dsslic_rd_lossy", "dsslic_rd_derived")


def tiny_bank(mode: str, lambdas=(0.01,), seed: int = 0):
    torch.manual_seed(seed)
    bank = build_model(f"dsslic_rd{'' if mode == 'lossless' else '_' + mode}", "tiny", LABELS,
                       lambdas=lambdas).eval()
    bank.update_tables()
    return bank


@pytest.fixture(scope="module")
def segnet():
    torch.manual_seed(0)
    return PSPNet(pspnet_config("tiny", LABELS)).eval()


@pytest.fixture(scope="module")
def models(segnet):
    return {"dsslic_rd": tiny_bank("lossless", (0.01, 0.1)), "dsslic_rd_lossy": tiny_bank("lossy"),
            "dsslic_rd_derived": tiny_bank("derived"), "pspnet": segnet}


@pytest.mark.parametrize("name", METHODS)
@pytest.mark.parametrize("depth", [8, 10])
def test_every_layer_round_trips_from_the_file_alone(models, name, depth):
    method = get_method(name)
    image, seg = make_image(40, 56, seed=1)
    qualities = [(0, None), (0, 30), (0, 12)]
    results = method.encode_many(image, models, qualities, segmentation=seg, residual_depth=depth)
    for result, quality in zip(results, qualities):
        assert result.quality == quality
        sem = fmt.unpack(result.data)
        assert sum(result.layer_bits.values()) == 8 * len(result.data)
        # the file alone: a fresh parse, the models, nothing of the encoder's
        assert np.array_equal(method.decode(bytes(result.data), models), result.reconstruction)
        residual = sem.layer(ROLE_RESIDUAL)
        if quality[1] is None:
            assert residual is None and np.array_equal(result.reconstruction, result.extras["prediction"])
        else:
            assert residual.codec == get_codec("hevc10" if depth == 10 else "hevc").codec_id
    # a finer QP is closer to the image
    errors_ = [np.abs(r.reconstruction.astype(int) - image).mean() for r in results]
    assert errors_[2] < errors_[0]
    roles = {method.role_name(layer.role) for layer in fmt.unpack(results[0].data).layers}
    assert roles == ({"compact"} if name == "dsslic_rd_derived" else {"compact", "segmentation"})
    assert method.describe(fmt.unpack(results[0].data))["level"] == 0


def test_the_derived_map_is_guarded_by_a_correction_layer(models, monkeypatch):
    """dsslic_rd_derived: a decoder whose PSPNet scores differ in the last bits (another CPU) derives the
    encoder's map where the encoder sent its class (top-2 margin below agreement_tau), so it decodes
    the encoder's reconstruction; without the layer, the same score noise changes the image."""
    from semlic.methods.dsslic_rd import codec as rd_codec

    method = get_method("dsslic_rd_derived")
    image, _ = make_image(40, 56, seed=3)
    guarded = method.encode(image, models, (0, 30), agreement_tau=0.5)
    plain = method.encode(image, models, (0, 30), agreement_tau=0)
    assert "correction" in guarded.layer_bits and "correction" not in plain.layer_bits
    assert np.array_equal(method.decode(guarded.data, models), guarded.reconstruction)
    exact = rd_codec.derive_scores

    def noisy(generator, segnet, compact):   # another machine: every score off by less than tau / 2
        scores = exact(generator, segnet, compact)
        noise = torch.rand(scores.shape, generator=torch.Generator().manual_seed(1)) * 0.48 - 0.24
        return scores + noise

    monkeypatch.setattr(rd_codec, "derive_scores", noisy)
    assert np.array_equal(method.decode(guarded.data, models), guarded.reconstruction)
    assert not np.array_equal(method.decode(plain.data, models), plain.reconstruction)


def test_the_compact_layer_is_the_entropy_coders_string_and_its_bits_are_in_the_file(models):
    method, bank = get_method("dsslic_rd"), models["dsslic_rd"]
    image, seg = make_image(32, 48, seed=2)
    for level in (0, 1):
        result = method.encode(image, models, (level, None), segmentation=seg)
        sem = fmt.unpack(result.data)
        layer = sem.layer(ROLE_COMPACT)
        assert layer.codec == fmt.RAW
        assert result.layer_bits["compact"] == 8 * (fmt.LAYER_HEADER_BYTES + len(layer.payload))
        net = bank.level(level)
        with torch.inference_mode():
            x = torch.from_numpy(image).permute(2, 0, 1)[None].float() / 127.5 - 1
            y = net.analyse(x, torch.from_numpy(seg)[None].long())
            assert bytes(layer.payload) == net.entropy_bottleneck.compress(y)[0]
        assert method.describe(sem)["level"] == level
    # the two levels are two networks: the same image gives two different files
    files = [method.encode(image, models, (level, 30), segmentation=seg).data for level in (0, 1)]
    assert files[0] != files[1]


def test_damaged_files_are_refused_with_semlic_errors(models):
    method = get_method("dsslic_rd")
    image, seg = make_image(32, 32, seed=3)
    data = method.encode(image, models, (1, 30), segmentation=seg).data
    sem = fmt.unpack(data)
    # a level the model does not have
    bad = fmt.SemFile(sem.method, sem.width, sem.height, sem.fingerprint, sem.section[:-1] + bytes([7]), sem.layers)
    with pytest.raises(errors.LayerError, match="levels 0..1"):
        method.decode(fmt.pack(bad), models)
    short = fmt.SemFile(sem.method, sem.width, sem.height, sem.fingerprint, sem.section[:-1], sem.layers)
    with pytest.raises(errors.LayerError, match="section"):
        method.decode(fmt.pack(short), models)
    # a truncated or overlong range-coder string decodes to something or is refused, never crashes
    layers = list(sem.layers)
    index = [layer.role for layer in layers].index(ROLE_COMPACT)
    for payload in (layers[index].payload[:3], bytes(5000)):
        layers[index] = fmt.Layer(ROLE_COMPACT, fmt.RAW, payload)
        damaged = fmt.pack(fmt.SemFile(sem.method, sem.width, sem.height, sem.fingerprint, sem.section, tuple(layers)))
        try:
            assert method.decode(damaged, models).shape == image.shape
        except errors.SemlicError:
            pass
    # another bank's file: the fingerprint names the weights
    other = {**models, "dsslic_rd": tiny_bank("lossless", (0.01, 0.1), seed=5)}
    with pytest.raises(errors.FingerprintMismatchError):
        method.decode(data, other)


def test_qualities_parse_and_name_files():
    method = get_method("dsslic_rd")
    assert parse_quality([1, None]) == (1, None) and parse_quality("l2q32") == (2, 32)
    assert parse_quality({"level": 0, "qp": "none"}) == (0, None) and parse_quality("1:27") == (1, 27)
    assert method.quality_value((1, 32)) == 132.0 and method.quality_value((0, None)) == 99.0
    assert method.quality_label((1, 32)) == "l1q32" and method.quality_label((0, None)) == "l0none"
    for bad in ([1], "x", [-1, 3], [0, 60], None):
        with pytest.raises(errors.ConfigError):
            parse_quality(bad)


def test_lossy_map_is_subsampled_at_both_ends():
    seg = torch.arange(6 * 7).reshape(1, 6, 7) % 5
    small = subsampled_map(seg, 3)
    assert small.shape == seg.shape
    assert torch.equal(small[0, :3, :3], seg[0, 0, 0].expand(3, 3))
    assert torch.equal(small[0, 3:, 6:], seg[0, 3, 6].expand(3, 1))


def test_bank_files_load_and_code_the_same(models, tmp_path):
    bank = models["dsslic_rd"]
    save_model(tmp_path / "dsslic_rd.safetensors", bank)
    loaded = load_model(tmp_path / "dsslic_rd.safetensors", expect="dsslic_rd")
    assert loaded.config.lambdas == (0.01, 0.1) and loaded.ready()
    image, seg = make_image(32, 40, seed=4)
    method = get_method("dsslic_rd")
    a = method.encode(image, models, (1, 27), segmentation=seg)
    b = method.encode(image, {"dsslic_rd": loaded}, (1, 27), segmentation=seg)
    assert a.data == b.data
    with pytest.raises(errors.ConfigError):
        RDConfig(lambdas=(0.1, 0.01))
    with pytest.raises(errors.ConfigError):
        rd_config(map="sideways")


def test_the_10_bit_codec_round_trips_and_checks_what_it_reads():
    codec = get_codec("hevc10")
    rng = np.random.default_rng(0)
    samples = np.clip(512 + rng.normal(0, 20, (24, 40, 3)), 0, 1023).astype(np.uint16)
    data = codec.encode(samples, 4)
    back = codec.decode(data, 3, expect=(24, 40))
    assert back.dtype == np.uint16 and np.abs(back.astype(int) - samples).mean() < 3
    with pytest.raises(errors.LayerSizeError):
        codec.decode(data, 3, expect=(25, 40))
    with pytest.raises(errors.LayerError, match="10"):
        codec.decode(get_codec("hevc").encode(np.zeros((16, 16, 3), np.uint8), 30), 3)
    with pytest.raises(errors.ConfigError):
        codec.encode(np.full((8, 8, 3), 2000, np.uint16), 30)


def test_dsslic_takes_the_10_bit_residual_too():
    method = get_method("dsslic")
    torch.manual_seed(0)
    models = {"dsslic": build_model("dsslic", "tiny", LABELS).eval()}
    image, seg = make_image(32, 32, seed=6)
    eight, ten = (method.encode(image, models, 22, segmentation=seg, residual_depth=d) for d in (8, 10))
    for result in (eight, ten):
        assert np.array_equal(method.decode(result.data, models), result.reconstruction)
    assert fmt.unpack(ten.data).layer(ROLE_RESIDUAL).codec == get_codec("hevc10").codec_id
    with pytest.raises(errors.ConfigError, match="residual_depth"):
        method.encode(image, models, 22, segmentation=seg, residual_depth=12)


# --- training ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def train_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("rd-train")
    for i in range(6):
        image, seg = make_image(32, 32, seed=10 + i)
        save_png(root / "images" / f"{i:03d}.png", image)
        save_png(root / "segs" / f"{i:03d}.png", seg)
    return root / "images", root / "segs"


CFG = dict(preset="tiny", label_nc=LABELS, batch_size=4, checkpoint_every=5, lr=1e-3, lmbda=0.01)


def rd_cost(bank, dirs, lmbda: float) -> float:
    """lambda * 255^2 * MSE + bpp of the compact layer, measured on coded files of the training images."""
    from semlic.imageio import load_image, load_label_map

    method = get_method("dsslic_rd")
    costs = []
    for path in sorted(dirs[0].glob("*.png")):
        image, seg = load_image(path), load_label_map(dirs[1] / path.name)
        result = method.encode(image, {"dsslic_rd": bank}, (0, None), segmentation=seg)
        mse = np.mean(((result.reconstruction.astype(np.float64) - image) / 255.0) ** 2)
        costs.append(lmbda * 255 ** 2 * mse + result.layer_bits["compact"] / (image.shape[0] * image.shape[1]))
    return float(np.mean(costs))


@pytest.mark.numeric
def test_training_lowers_the_rate_distortion_cost_of_real_files(train_dirs, tmp_path, seed, bound):
    from semlic.methods.dsslic.training import load_training_set
    from semlic.methods.dsslic_rd.training import RDTrainConfig

    cfg = RDTrainConfig.from_dict({**CFG, "iterations": 40, "seed": seed})
    images, segs = load_training_set(*train_dirs, LABELS)
    start = RDTraining(cfg, images, segs, "cpu")   # the same seed: the run's starting weights
    before = bank_from_nets([start.net], RDConfig(net=start.model_cfg.to_dict(), lambdas=(0.01,)))
    result = train_dsslic_rd(cfg, *train_dirs, tmp_path, progress=False)
    assert result.completed and result.model_path == tmp_path / "dsslic_rd.safetensors"
    after = load_model(result.model_path, expect="dsslic_rd")
    cost_before, cost_after = rd_cost(before, train_dirs, 0.01), rd_cost(after, train_dirs, 0.01)
    bound("rate-distortion cost of real files, after / before", cost_after / cost_before, "<", 0.7)
    log = pd.read_parquet(tmp_path / "train_log.parquet")
    assert {"loss", "mse", "bpp", "aux", "psnr"} <= set(log.columns)
    bound("loss, last 5 / first 5", log["loss"].iloc[-5:].mean() / log["loss"].iloc[:5].mean(), "<", 1.0)
    assert json.loads(read_metadata(result.model_path)["lambdas"]) == [0.01]


def test_resume_equals_the_uninterrupted_run(train_dirs, tmp_path):
    cfg = {**CFG, "iterations": 8, "map": "lossy", "map_factor": 2}
    train_dsslic_rd(cfg, *train_dirs, tmp_path / "straight", progress=False)
    first = train_dsslic_rd(cfg, *train_dirs, tmp_path / "resumed", stop_after=3, progress=False)
    assert not first.completed and first.iteration == 3
    train_dsslic_rd(cfg, *train_dirs, tmp_path / "resumed", progress=False)
    a = load_model(tmp_path / "straight" / "dsslic_rd_lossy.safetensors", expect="dsslic_rd_lossy")
    b = load_model(tmp_path / "resumed" / "dsslic_rd_lossy.safetensors", expect="dsslic_rd_lossy")
    assert a.fingerprint == b.fingerprint


def test_derived_map_training_runs_pspnet_in_the_loop_and_init_starts_from_dsslic(train_dirs, segnet, tmp_path):
    save_model(tmp_path / "segnet.safetensors", segnet)
    torch.manual_seed(1)
    dsslic = build_model("dsslic", "tiny", LABELS)
    save_model(tmp_path / "dsslic.safetensors", dsslic)
    cfg = {**CFG, "iterations": 3, "map": "derived", "segnet": str(tmp_path / "segnet.safetensors"),
           "init": str(tmp_path / "dsslic.safetensors")}
    with pytest.raises(errors.ConfigError, match="segnet"):
        train_dsslic_rd({**cfg, "segnet": None}, *train_dirs, tmp_path / "no-segnet", progress=False)
    result = train_dsslic_rd(cfg, *train_dirs, tmp_path / "derived", progress=False)
    bank = load_model(result.model_path, expect="dsslic_rd_derived")
    image, seg = make_image(32, 32, seed=20)
    method = get_method("dsslic_rd_derived")
    models = {"dsslic_rd_derived": bank, "pspnet": load_model(tmp_path / "segnet.safetensors")}
    coded = method.encode(image, models, (0, 30), segmentation=seg)
    assert np.array_equal(method.decode(coded.data, models), coded.reconstruction)
    # init: the run started from the DSSLIC file's weights (one step of lr 1e-3 moves them only a little)
    initial, trained = dsslic.state_dict(), bank.levels[0].generator.state_dict()
    weights = [k for k in initial if k.endswith("weight") and initial[k].dim() == 4]
    assert all(torch.allclose(initial[k], trained[k], atol=0.05) for k in weights)
    fresh = build_model("dsslic", "tiny", LABELS).state_dict()   # another seed: far from the init file
    assert not all(torch.allclose(fresh[k], trained[k], atol=0.05) for k in weights)


def test_merge_levels_orders_the_lambdas_and_refuses_mixed_banks(tmp_path):
    files = []
    for lmbda, seed in ((0.1, 1), (0.01, 2)):
        bank = tiny_bank("lossless", (lmbda,), seed=seed)
        files.append(tmp_path / f"{lmbda}.safetensors")
        save_model(files[-1], bank)
    merged = merge_levels(files, tmp_path / "dsslic_rd.safetensors")
    assert merged.config.lambdas == (0.01, 0.1)
    source = load_model(files[1])   # lambda 0.01 -> level 0
    ours, theirs = merged.levels[0].state_dict(), source.levels[0].state_dict()
    assert all(torch.equal(ours[k], theirs[k]) for k in ours if k.startswith("generator."))
    save_model(tmp_path / "lossy.safetensors", tiny_bank("lossy", (0.5,)))
    with pytest.raises(errors.ConfigError, match="differ"):
        merge_levels([files[0], tmp_path / "lossy.safetensors"], tmp_path / "x.safetensors")
    with pytest.raises(errors.ConfigError, match="more than one"):
        merge_levels([files[0], files[0]], tmp_path / "x.safetensors")


def test_cli_trains_and_merges(train_dirs, tmp_path, capsys):
    args = ["train-dsslic-rd", "--images", str(train_dirs[0]), "--segs", str(train_dirs[1]), "--preset", "tiny",
            "--label-nc", str(LABELS), "--iterations", "2", "--batch-size", "2", "--no-progress"]
    for lmbda in ("0.01", "0.05"):
        assert main([*args, "--lmbda", lmbda, "--out", str(tmp_path / lmbda)]) == 0
    capsys.readouterr()
    parts = [str(tmp_path / lmbda / "dsslic_rd.safetensors") for lmbda in ("0.05", "0.01")]
    assert main(["train-dsslic-rd", "--out", str(tmp_path / "bank.safetensors"), "--merge", *parts]) == 0
    assert json.loads(capsys.readouterr().out)["lambdas"] == [0.01, 0.05]
    with pytest.raises(SystemExit, match="--images"):
        main(["train-dsslic-rd", "--out", str(tmp_path / "x")])
