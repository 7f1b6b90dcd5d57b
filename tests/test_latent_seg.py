"""Segmentation in the learned compressed domain: gate, selection, transforms, the scalable bitstream,
training and resume, the import of a CompressAI checkpoint, the evaluation rows and the commands."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from semlic import errors
from semlic import format as fmt
from semlic.cli import main
from semlic.methods import get_method
from semlic.methods.latent_seg import codec as lcodec
from semlic.methods.latent_seg import evaluate, hyperprior, networks, training
from semlic.methods.latent_seg.commands import train_hyperprior_bank, train_latent_seg
from semlic.model_files import load_model, read_metadata, save_model
from tests.conftest import make_image

METHOD = get_method("hyperprior")
WIDTHS = [16, 24]
HP = dict(widths=WIDTHS, batch_size=2, crop=64, log_every=1, checkpoint_every=4)
TEACHER = dict(preset="tiny", num_classes=8, batch_size=2, crop=64, log_every=1, checkpoint_every=4)
STUDENT = dict(batch_size=2, crop=64, transform_width=8, log_every=1, checkpoint_every=4)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    from semlic.data.prepare import prepare_dataset

    out = tmp_path_factory.mktemp("latent") / "prep"
    prepare_dataset("synthetic", None, out, train_size=(128, 128), limit=6, workers=1, show_progress=False)
    return out


@pytest.fixture(scope="module")
def bank(prepared, tmp_path_factory):
    out = tmp_path_factory.mktemp("hp")
    result = train_hyperprior_bank({"qualities": [1, 3], **HP, "iterations": 6}, prepared, out, progress=False)
    return load_model(result["bank"])


@pytest.fixture(scope="module")
def trained(prepared, bank, tmp_path_factory):
    out = tmp_path_factory.mktemp("ls")
    bank_path = out / "hyperprior.safetensors"
    save_model(bank_path, bank)
    config = {"num_classes": 8, "teacher": {**TEACHER, "iterations": 4}, "student": {**STUDENT, "iterations": 3},
              "variants": [{"selection": "none"}, {"selection": "none", "transform": "res"},
                           {"selection": "dynamic"}, {"selection": "static", "channels": 4}]}
    results = train_latent_seg(config, prepared, bank_path, out, progress=False)
    return out, results


def _image(h=70, w=90, seed=0) -> np.ndarray:
    return make_image(h, w, seed)[0]


# --- the networks ----------------------------------------------------------------------------------
def test_gate_mask_is_binary_and_differentiable_in_training():
    torch.manual_seed(0)
    gate = networks.Gate(24)
    y = torch.randn(4, 24, 5, 6)
    gate.train()
    mask = gate(y)
    assert mask.shape == (4, 24) and set(mask.unique().tolist()) <= {0.0, 1.0}
    (mask * torch.arange(24.0)).sum().backward()
    assert gate.logits.weight.grad is not None and gate.logits.weight.grad.abs().sum() > 0
    assert gate.squeeze[0].weight.grad.abs().sum() > 0
    gate.eval()
    first = gate(y)
    assert torch.equal(first, gate(y)) and set(first.unique().tolist()) <= {0.0, 1.0}   # deterministic at test


def test_static_selection_picks_the_most_frequent_channels():
    counts = torch.tensor([5, 9, 1, 9, 0, 7])
    assert training.most_selected(counts, 3) == (1, 3, 5)
    assert training.most_selected(counts, 4) == (0, 1, 3, 5)
    assert training.most_selected(torch.tensor([2, 2, 2]), 2) == (0, 1)   # ties: the lower index
    with pytest.raises(errors.ConfigError):
        training.most_selected(counts, 7)
    config = networks.StudentConfig(deeplab=networks.deeplab_config("tiny", 8).to_dict(), latent_channels=6,
                                    selection="dynamic", transform_width=8)
    student = networks.LatentSegNet(config)
    with torch.no_grad():   # the gate selects channels 1 and 4 whatever the input
        student.gate.logits.bias.view(6, 2)[:, 1] = torch.tensor([-5.0, 5, -5, -5, 5, -5])
    counts, probability = training.selection_counts(student, torch.randn(3, 6, 4, 4))
    assert counts.tolist() == [0, 3, 0, 0, 3, 0]
    assert training.most_selected(counts, 2, probability) == (1, 4)
    assert probability[1] > 2.9 and probability[0] < 0.1
    static = networks.LatentSegNet(networks.StudentConfig(   # the static student built from those counts
        deeplab=config.deeplab, latent_channels=6, selection="static",
        channels=training.most_selected(counts, 2, probability), transform_width=8))
    y = torch.randn(2, 6, 4, 4)
    assert torch.equal(static.select(y)[0], y[:, [1, 4]]) and static.channels_for(y[:1]) == [1, 4]
    assert training.most_selected(torch.tensor([1, 1, 1]), 1, torch.tensor([0.2, 0.9, 0.5])) == (1,)


@pytest.mark.parametrize("kind", ["deconv", "res"])
@pytest.mark.parametrize("selection, n_in", [("none", 24), ("static", 5)])
def test_transform_modules_map_latents_to_the_teachers_features(kind, selection, n_in):
    teacher = networks.DeepLabV3(networks.deeplab_config("tiny", 8))
    config = networks.StudentConfig(deeplab=teacher.config.to_dict(), latent_channels=24, selection=selection,
                                    channels=(0, 3, 7, 8, 20) if selection == "static" else (), transform=kind,
                                    transform_width=8)
    student = networks.LatentSegNet(config).eval()
    y = torch.randn(2, 24, 4, 6)
    selected, _ = student.select(y)
    assert selected.shape == (2, n_in, 4, 6)
    picked = [0, 3, 7, 8, 20] if selection == "static" else list(range(24))
    assert torch.equal(selected, y[:, picked])             # which channels, in order, not only how many
    assert list(student.channels_for(y[:1])) == picked     # what the encoder sends
    features, _ = student.features(y)
    with torch.no_grad():
        target = teacher.front(torch.randn(2, 3, 64, 96))
    assert features.shape == target.shape == (2, teacher.feature_channels, 16, 24)
    assert student(y).shape == (2, 8, 64, 96)
    macs = evaluate.transform_macs([student], 64, 96)
    assert macs["gmacs"].iloc[0] > 0 and macs["input_channels"].iloc[0] == n_in


def test_count_macs_counts_a_convolution_exactly():
    conv = torch.nn.Conv2d(3, 4, 3, padding=1)
    assert evaluate.count_macs(conv, torch.zeros(1, 3, 5, 6)) == 4 * 5 * 6 * 3 * 9
    deconv = torch.nn.ConvTranspose2d(3, 4, 5, stride=2, padding=2, output_padding=1)
    assert evaluate.count_macs(deconv, torch.zeros(1, 3, 5, 6)) == 3 * 5 * 6 * 4 * 25


# --- the bitstream -----------------------------------------------------------------------------------
def test_bank_file_round_trips_with_its_entropy_tables(bank, tmp_path):
    assert bank.ready() and bank.config.qualities == (1, 3)
    save_model(tmp_path / "b.safetensors", bank)
    again = load_model(tmp_path / "b.safetensors")
    from semlic.model_files import state_fingerprint

    assert again.fingerprint == state_fingerprint(bank.state_dict())
    for key, value in bank.state_dict().items():
        assert torch.equal(value, again.state_dict()[key]), key
    with pytest.raises(errors.ConfigError, match="qualities"):
        bank.codec(5)


@pytest.mark.parametrize("quality", [1, 3])
def test_hyperprior_file_decodes_to_the_encoders_reconstruction(bank, quality):
    models = {"hyperprior": bank}
    image = _image()
    result = METHOD.encode(image, models, quality)
    assert sum(result.layer_bits.values()) == 8 * len(result.data)
    assert set(result.layer_bits) == {"header", "hyper", "task"}
    np.testing.assert_array_equal(METHOD.decode(result.data, models), result.reconstruction)
    assert METHOD.describe(fmt.unpack(result.data))["quality"] == quality
    assert METHOD.parse_quality(str(quality)) == METHOD.parse_quality(float(quality)) == quality
    for bad in ("2.5", 0, 9, "q3", None):
        with pytest.raises(errors.ConfigError):
            METHOD.parse_quality(bad)


def test_compress_then_decompress_gives_the_same_latents(bank):
    codec = bank.codec(3)
    image = _image(96, 130, seed=3)
    latents = hyperprior.analyse(codec, lcodec.image_tensor(image))
    assert latents.y_hat.shape[-2:] == (8, 12)   # padded to 128 x 192, then / 16
    full = fmt.pack(lcodec.encode_latents(METHOD, bank, 3, latents, image.shape[:2]))
    y, sent = lcodec.read_latents(fmt.unpack(full), bank, need_all=True)
    assert torch.equal(y, latents.y_hat) and sent == list(range(codec.M))
    chosen = [0, 5, 11, 23]
    task = fmt.pack(lcodec.encode_latents(METHOD, bank, 3, latents, image.shape[:2], chosen, with_rest=False))
    y_task, sent = lcodec.read_latents(fmt.unpack(task), bank)
    assert sent == chosen and torch.equal(y_task[:, chosen], latents.y_hat[:, chosen])
    assert not y_task[:, [c for c in range(codec.M) if c not in chosen]].any()
    both = fmt.pack(lcodec.encode_latents(METHOD, bank, 3, latents, image.shape[:2], chosen, with_rest=True))
    assert len(task) < len(both)
    np.testing.assert_array_equal(METHOD.decode(both, {"hyperprior": bank}),
                                  METHOD.decode(full, {"hyperprior": bank}))
    with pytest.raises(errors.LayerError, match="only the 4 latent channels"):
        METHOD.decode(task, {"hyperprior": bank})
    section = lcodec.Section.unpack(fmt.unpack(task).section)
    # 7 bytes, the two symbol CRCs (8), the mask of 24 channels (3 bytes)
    assert section.selected == tuple(chosen) and len(fmt.unpack(task).section) == 7 + 8 + 3
    assert section.checked and section.crcs[0] == lcodec.symbols_crc(latents.y_hat, chosen)


def test_files_without_symbol_checks_decode_as_they_were_written(bank):
    """Files written before the integer hyper-decoder: float h_s, no CRCs; they decode with the float path."""
    codec = bank.codec(3)
    image = _image(64, 80, seed=5)
    old = hyperprior.analyse(codec, lcodec.image_tensor(image), integer=False)
    data = fmt.pack(lcodec.encode_latents(METHOD, bank, 3, old, image.shape[:2]))
    section = lcodec.Section.unpack(fmt.unpack(data).section)
    assert not section.checked and len(fmt.unpack(data).section) == 7
    y, _ = lcodec.read_latents(fmt.unpack(data), bank, need_all=True)
    assert torch.equal(y, old.y_hat)
    assert METHOD.describe(fmt.unpack(data))["entropy_parameters"].startswith("float")


def test_a_decoder_with_another_probability_model_raises_instead_of_returning_garbage(bank):
    import copy

    image = _image(96, 130, seed=6)
    data = METHOD.encode(image, {"hyperprior": bank}, 3).data
    perturbed = copy.deepcopy(bank)
    conditional = perturbed.codec(3).gaussian_conditional
    with torch.no_grad():   # the decoder's scale table off: other tables for many elements
        conditional.scale_table.mul_(0.25)
    sem = fmt.unpack(data)
    section = lcodec.Section.unpack(sem.section)
    hyper = sem.layer(lcodec.ROLE_HYPER).payload
    assert not torch.equal(hyperprior.hyper_decode(bank.codec(3), hyper, section.z_shape),
                           hyperprior.hyper_decode(perturbed.codec(3), hyper, section.z_shape))
    with pytest.raises(errors.EntropyModelMismatchError, match="another probability model"):
        METHOD.decode(data, {"hyperprior": perturbed})
    assert METHOD.decode(data, {"hyperprior": bank}).shape == (96, 130, 3)


def test_integer_hyper_decoder_is_exact_and_close_to_the_float_one(bank):
    from semlic.nn import integer

    codec = bank.codec(3)
    latents = hyperprior.analyse(codec, lcodec.image_tensor(_image(128, 192, seed=7)))
    decoder = hyperprior.integer_hyper_decoder(codec)
    assert decoder is hyperprior.integer_hyper_decoder(codec)   # built once per state of the weights
    z_hat = codec.entropy_bottleneck.decompress([latents.z_string], latents.z_shape)
    acc = decoder.scales_accumulator(z_hat)
    assert acc.dtype == torch.int64 and torch.equal(acc, decoder.scales_accumulator(z_hat.clone()))
    bounds = [layer.acc_bound for layer in decoder.chain.layers]
    assert all(int(b.max()) < integer.EXACT // 2 for b in bounds)
    with torch.no_grad():
        scales = codec.h_s(z_hat).double()
    approx = acc.double() * decoder.chain.unit.view(1, -1, 1, 1)
    assert torch.allclose(approx, scales, rtol=0.02, atol=0.02 * float(scales.abs().max()))
    float_indexes = codec.gaussian_conditional.build_indexes(codec.h_s(z_hat))
    assert (decoder.indexes(z_hat) - float_indexes).abs().max() <= 1


def test_a_model_file_without_integer_parameters_gets_the_same_ones_on_every_load(bank, tmp_path):
    """Model files hold the float weights only: the integer hyper-decoder is computed from them on load,
    from the weights alone (no data, no float network run), so every load on every machine gets it."""
    save_model(tmp_path / "b.safetensors", bank)
    again = load_model(tmp_path / "b.safetensors").codec(3)
    a, b = hyperprior.integer_hyper_decoder(bank.codec(3)), hyperprior.integer_hyper_decoder(again)
    assert torch.equal(a.thresholds, b.thresholds) and torch.equal(a.offsets, b.offsets)
    for x, y in zip(a.chain.layers, b.chain.layers):
        assert torch.equal(x.weight, y.weight) and torch.equal(x.bias, y.bias)
        assert (x.multiplier is None and y.multiplier is None) or torch.equal(x.multiplier, y.multiplier)


def test_bad_files_get_typed_errors(bank, tmp_path):
    models = {"hyperprior": bank}
    data = METHOD.encode(_image(), models, 1).data
    with pytest.raises(errors.FormatError):
        METHOD.decode(data[:-5], models)
    sem = fmt.unpack(data)
    for layers in ((sem.layers[0],), (sem.layers[0], fmt.Layer(7, fmt.RAW, b"x"))):   # no task layer; a stranger
        with pytest.raises(errors.LayerError):
            METHOD.decode(fmt.pack(fmt.SemFile(sem.method, sem.width, sem.height, sem.fingerprint, sem.section,
                                               layers)), models)
    bad_section = fmt.SemFile(sem.method, sem.width, sem.height, sem.fingerprint, b"\x09\x01\x00\x01\x00\x18\x00",
                              sem.layers)
    with pytest.raises(errors.FormatError, match="quality"):
        METHOD.decode(fmt.pack(bad_section), models)
    other = hyperprior.bank_from_codecs({1: hyperprior.compressai_models().ScaleHyperprior(*WIDTHS)})
    with pytest.raises(errors.FingerprintMismatchError):
        METHOD.decode(data, {"hyperprior": other})


def test_a_local_compressai_checkpoint_loads(bank, tmp_path):
    codec = bank.codec(3)
    path = tmp_path / "bmshj2018-hyperprior-3.pth.tar"
    torch.save({"state_dict": {f"module.{k}": v for k, v in codec.state_dict().items()}}, path)
    imported = hyperprior.import_compressai(path, 3, out_path=tmp_path / "imported.safetensors")
    image = _image(64, 64, seed=5)
    a = METHOD.encode(image, {"hyperprior": bank}, 3)
    b = METHOD.encode(image, {"hyperprior": load_model(tmp_path / "imported.safetensors")}, 3)
    assert fmt.unpack(a.data).layers == fmt.unpack(b.data).layers
    np.testing.assert_array_equal(a.reconstruction, b.reconstruction)
    assert imported.config.qualities == (3,)
    merged = hyperprior.import_compressai(path, 3, into=None)
    assert merged.config.qualities == (3,)
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(errors.CheckpointError):
        hyperprior.import_compressai(tmp_path / "junk.pth", 3)
    torch.save({"weight": torch.zeros(3)}, tmp_path / "other.pth")
    with pytest.raises(errors.CheckpointError, match="g_a"):
        hyperprior.import_compressai(tmp_path / "other.pth", 3)


# --- training ---------------------------------------------------------------------------------------
@pytest.mark.numeric
def test_hyperprior_training_lowers_the_rate_distortion_loss(prepared, tmp_path, seed, bound):
    result = training.train_hyperprior({**HP, "quality": 3, "iterations": 60, "lmbda": 0.05, "seed": seed}, prepared,
                                       tmp_path, progress=False)
    log = pd.read_parquet(result["log_path"])
    bound("loss, last 10 / first 10", log["loss"].iloc[-10:].mean() / log["loss"].iloc[:10].mean(), "<", 1.0)
    assert {"bpp", "mse", "aux", "psnr"} <= set(log.columns)


@pytest.mark.parametrize("part", ["hyperprior", "teacher", "student"])
def test_resume_equals_an_uninterrupted_run(prepared, bank, part, tmp_path):
    from semlic.segnet.prepared import load_labelled
    from semlic.train_loop import fit

    images, labels = load_labelled(prepared, progress=False)
    teacher = networks.DeepLabV3(networks.deeplab_config("tiny", 8))
    inputs = training.latent_inputs(bank.codec(1), teacher.eval(), images, labels, progress=False)

    def task():
        if part == "hyperprior":
            return training.HyperpriorTraining(training.HyperpriorTrainConfig(**{**HP, "iterations": 6}), images)
        if part == "teacher":
            return training.TeacherTraining(training.TeacherTrainConfig(**{**TEACHER, "iterations": 6}), images, labels)
        cfg = training.StudentTrainConfig(**{**STUDENT, "quality": 1, "selection": "dynamic", "iterations": 6})
        return training.StudentTraining(cfg, inputs, teacher, 24)

    straight = fit(task(), tmp_path / "a", checkpoint_every=4, log_every=1, progress=False)
    fit(task(), tmp_path / "b", stop_after=3, checkpoint_every=4, log_every=1, progress=False)
    resumed = fit(task(), tmp_path / "b", checkpoint_every=4, log_every=1, progress=False)
    a, b = load_model(straight.model_path), load_model(resumed.model_path)
    for key, value in a.state_dict().items():
        assert torch.equal(value, b.state_dict()[key]), key
    pd.testing.assert_frame_equal(pd.read_parquet(straight.log_path).drop(columns=["seconds", "images_per_s"]),
                                  pd.read_parquet(resumed.log_path).drop(columns=["seconds", "images_per_s"]))


def test_learning_rate_drops_for_the_last_quarter():
    assert [training.step_lr(1e-3, i, 8) for i in range(8)] == [1e-3] * 6 + [pytest.approx(1e-4)] * 2


def test_students_and_static_selection(trained, bank):
    out, results = trained
    assert set(results) == {"teacher", "q1", "q3"}
    assert set(results["q1"]) == {"no_gate", "no_gate_res", "dynamic", "static4"}
    counts = json.loads((out / "q1" / "selection_counts.json").read_text())
    static = load_model(results["q1"]["static4"]["model_path"])
    assert static.config.channels == training.most_selected(torch.tensor(counts["counts"]), 4,
                                                             torch.tensor(counts["probability"]))
    assert counts["images"] == 6
    teacher = load_model(out / "teacher" / "deeplabv3.safetensors")
    student = load_model(results["q3"]["no_gate"]["model_path"])
    assert read_metadata(results["q3"]["no_gate"]["model_path"])["iterations"] == "3"
    assert student.config.deeplab == teacher.config.to_dict()


def test_evaluation_rows_and_summary(trained, bank, prepared, tmp_path):
    from semlic.segnet.prepared import list_prepared

    out, _ = trained
    samples = list_prepared(prepared, "test")[:2]
    students = evaluate.load_students(out)
    rows = evaluate.evaluate(samples, bank, load_model(out / "teacher" / "deeplabv3.safetensors"), students,
                             dataset="synthetic", progress=False)
    assert list(rows.columns) == evaluate.COLUMNS
    assert len(rows) == 2 * 2 * (1 + 4)
    q1 = rows[rows.quality == 1].set_index(["method", "image_id"])
    for image_id in q1.xs("pixel").index:
        pixel, no_gate, static = (q1.loc[(m, image_id)] for m in ("pixel", "no_gate", "static4"))
        assert no_gate.bpp == pixel.bpp            # every channel: the same file
        mask_bpp = 8 * 3 / (128 * 128)   # the 24-channel mask in the header
        assert static.bpp <= no_gate.bpp + mask_bpp and static.channels == 4
        assert static.bpp_image > static.bpp       # the rest layer adds the image
        assert 0 <= pixel.miou <= 1 and np.isfinite(pixel.psnr_rgb)
    table = evaluate.summary(rows)
    confusion = np.sum([np.asarray(c) for c in rows[(rows.method == "pixel") & (rows.quality == 3)].confusion], axis=0)
    from semlic.segnet.metrics import scores_from_confusion

    expected = scores_from_confusion(confusion.reshape(8, 8)).miou
    assert table.set_index(["method", "quality"]).loc[("pixel", 3), "miou"] == pytest.approx(expected)
    metrics = evaluate.write_outputs(rows, tmp_path / "res", students, (128, 128))
    assert {"rows.parquet", "summary.csv", "macs.csv", "rate_miou.png", "metrics.json"} <= \
        {p.name for p in (tmp_path / "res").iterdir()}
    assert "static4_q1" in metrics
    assert json.loads((tmp_path / "res" / "metrics.json").read_text()) == {
        "miou": {name: figures["miou"] for name, figures in metrics.items()}}
    # the same rows as task rows of coding for machines (semlic.machines): bytes of the file, the
    # confusion with an empty void row and column, the same mIoU per (method, quality)
    from semlic import machines, reporting

    task = machines.read_rows([tmp_path / "res" / "task_rows.parquet"])
    assert len(task) == len(rows) and set(task["method"]) == {"hyperprior"}
    assert set(task["output"]) == {"decoded+teacher"} | {f"student:{m}" for m in set(rows.method) - {"pixel"}}
    assert np.allclose(task["bytes"] * 8 / task["pixels"], task["bpp"])
    merged = reporting.task_summary(task).set_index(["output", "quality"])
    assert merged.loc[("decoded+teacher", "3"), "miou"] == pytest.approx(expected)
    static = rows[(rows.method == "static4") & (rows.quality == 1)].sort_values("image_id")
    assert task[(task.output == "student:static4") & (task.quality == "1")]["bpp"].tolist() == \
        pytest.approx(static["bpp"].tolist())


def test_semlic_results_queries_the_latent_seg_rows(trained, tmp_path, capsys):
    pytest.importorskip("duckdb")
    rows = pd.DataFrame({"method": ["pixel", "static4"], "quality": [1, 1], "bpp": [0.5, 0.2], "miou": [0.3, 0.4]})
    (tmp_path / "latent_seg").mkdir()
    rows.to_parquet(tmp_path / "latent_seg" / "rows.parquet")
    (tmp_path / "results").mkdir()
    pd.DataFrame({"method": ["x"], "bpp": [1.0]}).to_parquet(tmp_path / "results" / "rd.parquet")
    assert main(["results", "--source", str(tmp_path / "results" / "rd.parquet"), "--format", "csv",
                 "select method, bpp from latent_seg order by bpp"]) == 0
    assert capsys.readouterr().out.splitlines()[1:] == ["static4,0.2", "pixel,0.5"]


def test_commands_train_and_evaluate(prepared, tmp_path, capsys):
    config = tmp_path / "cfg.yaml"
    config.write_text(json.dumps({
        "train_hyperprior": {"qualities": [2], **HP, "iterations": 2},
        "train_latent_seg": {"num_classes": 8, "teacher": {**TEACHER, "iterations": 2},
                             "student": {**STUDENT, "iterations": 2},
                             "variants": [{"selection": "dynamic"}, {"selection": "static", "channels": 8}]}}))
    assert main(["train-hyperprior", "--data", str(prepared), "--out", str(tmp_path / "hp"), "--config", str(config),
                 "--no-progress"]) == 0
    bank_path = tmp_path / "hp" / "hyperprior.safetensors"
    assert load_model(bank_path).config.qualities == (2,)
    assert main(["train-latent-seg", "--data", str(prepared), "--hyperprior", str(bank_path), "--out",
                 str(tmp_path / "ls"), "--config", str(config), "--no-progress"]) == 0
    capsys.readouterr()
    assert main(["eval-latent-seg", "--data", str(prepared), "--hyperprior", str(bank_path), "--models",
                 str(tmp_path / "ls"), "--out", str(tmp_path / "rows.parquet"), "--limit", "1", "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "static8" in printed and "pixel" in printed
    assert set(pd.read_parquet(tmp_path / "rows.parquet").method) == {"pixel", "dynamic", "static8"}
    bad = tmp_path / "bad.yaml"
    bad.write_text(json.dumps({"train_latent_seg": {"variants": [{"selection": "static", "channels": 4}]}}))
    assert main(["train-latent-seg", "--data", str(prepared), "--hyperprior", str(bank_path), "--out",
                 str(tmp_path / "x"), "--config", str(bad)]) == 2
    assert "dynamic one before them" in capsys.readouterr().err


def test_compressai_is_installed_beside_numpy_2():
    import compressai

    assert compressai.__version__.startswith("1.2") and int(np.__version__.split(".")[0]) >= 2
    from compressai.models import ScaleHyperprior

    assert ScaleHyperprior(8, 12).downsampling_factor == hyperprior.MULTIPLE
