"""The GPU study's run path (scripts/gpu_study): data packs, throughput from logs, the step runner's plumbing."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts" / "gpu_study"
sys.path.insert(0, str(SCRIPTS))

import datapack  # noqa: E402
import workers  # noqa: E402


def test_pack_unpack_is_pixel_exact(tmp_path):
    from semlic.imageio import load_image, load_label_map, save_png

    rng = np.random.default_rng(0)
    items = []
    for i in range(2):
        image = rng.integers(0, 256, (24, 40, 3), dtype=np.uint8)
        save_png(tmp_path / "src" / f"im{i}.png", image)
        label = None
        if i == 0:
            save_png(tmp_path / "src" / "lab0.png", rng.integers(0, 11, (24, 40), dtype=np.uint8))
            label = tmp_path / "src" / "lab0.png"
        items.append((f"im{i}", tmp_path / "src" / f"im{i}.png", label))
    index = datapack.pack(items, tmp_path / "p.tar", "camvid", "test", workers=1)
    assert [i["label"] for i in index["images"]] == [True, False]
    datapack.unpack(tmp_path / "p.tar", tmp_path / "data", workers=1)
    for image_id, source, label in items:
        out = tmp_path / "data" / "test" / "images" / f"{image_id}.png"
        assert np.array_equal(load_image(out), load_image(source))
    assert np.array_equal(load_label_map(tmp_path / "data" / "test" / "labels" / "im0.png"),
                          load_label_map(items[0][2]))
    # a second unpack is skipped (marker), a changed pack is refused when its pixels do not match
    (tmp_path / "data" / "test" / "images" / "im1.png").unlink()
    datapack.unpack(tmp_path / "p.tar", tmp_path / "data", workers=1)
    assert not (tmp_path / "data" / "test" / "images" / "im1.png").exists()


def test_unpack_refuses_wrong_pixels(tmp_path):
    import io
    import tarfile

    from semlic.imageio import save_png

    save_png(tmp_path / "a.png", np.zeros((8, 8, 3), np.uint8))
    datapack.pack([("a", tmp_path / "a.png", None)], tmp_path / "p.tar", "kodak", "test", workers=1)
    with tarfile.open(tmp_path / "p.tar") as tar:
        members = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}
    index = json.loads(members[datapack.INDEX])
    index["images"][0]["pixels_sha256"] = "0" * 64
    members[datapack.INDEX] = json.dumps(index).encode()
    with tarfile.open(tmp_path / "bad.tar", "w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    with pytest.raises(ValueError, match="differ"):
        datapack.unpack(tmp_path / "bad.tar", tmp_path / "data", workers=1)


def test_throughput_from_a_train_log():
    # 10 iterations of batch 8 in one call that resumed at 100: 5 s of warm-up, then 1 s per
    # iteration; ``seconds`` counts from the call's start, images_per_s is the log window's
    times = [5.0] + [5.0 + k for k in range(1, 10)]
    rows = [{"iteration": 100 + k + 1, "seconds": t, "images_per_s": 8 / (t - (times[k - 1] if k else 0.0))}
            for k, t in enumerate(times)]
    rows = [{"iteration": 50, "seconds": 999.0, "images_per_s": 1.0}] + rows  # an earlier call's row
    measured = workers._ips_from_log(rows, 8, 100)
    assert measured["iterations"] == 10
    assert measured["train_s"] == pytest.approx(14.0)
    assert measured["steady_images_per_s"] == pytest.approx(8.0)
    assert measured["images_per_s"] == pytest.approx(80 / 14)
    # a log every 2 iterations: the same figures from the iterations the rows name
    sparse = [r for r in rows[1:] if r["iteration"] % 2 == 0]
    measured = workers._ips_from_log(sparse, 8, 100)
    assert measured["iterations"] == 10 and measured["train_s"] == pytest.approx(14.0)
    assert measured["steady_images_per_s"] == pytest.approx(8.0)
    assert workers._ips_from_log(rows, 8, 110)["iterations"] == 0


def test_runner_config_and_help():
    import yaml

    import run
    from semlic.methods import get_method
    from semlic.methods.dsslic.training import DSSLICTrainConfig
    from semlic.methods.edms.training import SMapNetTrainConfig
    from semlic.methods.latent_seg.commands import (
        hyperprior_qualities,
        hyperprior_quality_config,
        latent_seg_parts,
    )
    from semlic.methods.latent_seg.training import (
        HyperpriorTrainConfig,
        StudentTrainConfig,
        TeacherTrainConfig,
    )
    from semlic.methods.smic.training import RecNetTrainConfig, SSNetTrainConfig
    from semlic.segnet.train_config import SegnetTrainConfig

    for name in ("study.yaml", "dryrun.yaml"):
        cfg = yaml.safe_load((SCRIPTS / name).read_text())
        SegnetTrainConfig.from_dict({**cfg["segnet"]["config"], "iterations": 10})
        DSSLICTrainConfig.from_dict(cfg["dsslic"]["config"])
        SMapNetTrainConfig.from_dict(cfg["smapnet"]["config"])
        SSNetTrainConfig.from_dict({**cfg["smic"]["config"]["ssnet"], "num_classes": 11})
        RecNetTrainConfig.from_dict(cfg["smic"]["config"]["recnet"])
        hyperprior = cfg["hyperprior"]["config"]
        for quality in hyperprior_qualities(hyperprior):
            HyperpriorTrainConfig.from_dict(hyperprior_quality_config(hyperprior, quality))
        latent = cfg["latent_seg"]["config"]
        qualities, variants = latent_seg_parts(latent, hyperprior_qualities(hyperprior))
        TeacherTrainConfig.from_dict({**latent["teacher"], "num_classes": 11})
        for variant in variants:
            StudentTrainConfig.from_dict({**latent["student"], **variant, "quality": qualities[0]})
        assert cfg["baselines"]["on_device"] is False  # coded here (run.py baselines), not in the device call
        scheduled = [step for lane in cfg.get("lanes") or run.LANES for step in lane] + list(cfg.get("final") or run.FINAL)
        assert sorted(scheduled) == sorted(run.STEPS[1:])  # every step once
        sections = run.method_sections(cfg["code"])  # every name and option checked against the registry
        assert sections and all(get_method(s.get("method") or m) for m, s in sections.items())
        for plan in workers.method_plans(sections):
            assert plan.qualities
    assert run.STEPS[0] == "unpack" and set(run.STEPS[1:]) == set(run.STEP_FUNCTIONS) - {"unpack"}
    assert set(run.TRAINING) <= set(run.STEPS)
    with pytest.raises(SystemExit):
        run.main(["--help"])


def test_methods_come_from_the_registry(tmp_path):
    import yaml

    import run
    from semlic.errors import ConfigError
    from semlic.methods import get_method, method_names

    assert set(run.method_sections({})) == set(method_names())
    assert run.method_sections({"methods": ["dsslic"]}) == {"dsslic": {}}
    with pytest.raises(ConfigError, match="unknown method"):
        run.method_sections({"methods": ["nonesuch"]})
    with pytest.raises(ConfigError, match="unknown option"):
        run.method_sections({"methods": {"dsslic": {"nonesuch": 1}}})

    def study(methods) -> "run.Study":
        cfg = yaml.safe_load((SCRIPTS / "dryrun.yaml").read_text())
        cfg["code"]["methods"] = methods
        cfg["speed"].pop("methods")          # the speed step times the code step's methods
        cfg["latent_seg"]["enabled"] = False  # no compressed-domain evaluation
        path = tmp_path / f"{len(list(tmp_path.glob('*.yaml')))}.yaml"
        path.write_text(yaml.safe_dump(cfg))
        return run.Study(str(tmp_path / "w"), str(path), None, None)

    # the models a method needs (decoder and encoder) and those their training data is made with
    for names in (["dsslic"], sorted(method_names())):
        st = study(names)
        used = {n for m in names for n in get_method(m).models + get_method(m).encoder_models}
        assert used <= st.wanted()
        assert {n for n in st.wanted() - used} <= {model for models, _ in run.TRAINING.values() for model in models}
        for step, (models, _) in run.TRAINING.items():
            assert st.pending(step) == bool(set(models) & st.wanted())  # nothing trained yet
    assert study(["dsslic"]).wanted() == {"dsslic", "pspnet"}
    assert study(["smic"]).wanted() == {"smic_ssnet", "smic_recnet"}
    assert "deeplabv3" in run.Study(str(tmp_path / "w"), str(SCRIPTS / "dryrun.yaml"), None, None).wanted()
    # one timed quality: a QP where the method takes one, else the method's first quality
    assert run.timed_quality("dsslic", {}, 32) == 32
    assert run.timed_quality("smic", {"qualities": [[4, 40]]}, 32) == [4, 40]
    assert run.timed_quality("smic", {}, 32) == get_method("smic").default_qualities[0]
    assert run.timed_quality("smic", {}, {"smic": "8/30", "dsslic": 32}) == "8/30"


def test_entropy_decoding_time_covers_every_image_layer(tiny_model):
    from semlic import format as fmt
    from semlic.image_codecs import CODECS_BY_ID
    from semlic.methods import get_method

    from .conftest import make_image

    image, seg = make_image(40, 56)
    method = get_method("dsslic")
    plan = workers.method_plans({"dsslic": {"qualities": [30]}})[0]
    encoded, enc = workers._encode_timed(image, plan, {"dsslic": tiny_model}, segmentation=seg)
    assert enc["enc_s"] > 0 and enc["enc_network_s"] > 0 and enc["enc_entropy_s"] > 0
    channels = [workers._layer_channels(CODECS_BY_ID[layer.codec], layer.payload)
                for layer in fmt.unpack(encoded.data).layers]
    assert sorted(channels) == [1, 3, 3]  # the map, the compact image, the residual
    decoded, dec = workers._decode_timed(encoded.data, method, {"dsslic": tiny_model})
    assert np.array_equal(decoded, encoded.reconstruction)
    assert dec["dec_entropy_s"] > 0 and dec["dec_s"] > 0  # timed apart: with a tiny model either may be larger
    assert dec["dec_network_s"] == pytest.approx(max(0.0, dec["dec_s"] - dec["dec_entropy_s"]))


def _dry_run_config(num_classes: int) -> dict:
    """dryrun.yaml, smaller still: 32-64 pixel crops, a few iterations, every kind of method, one baseline."""
    return {
        "device": "cpu", "unpack_workers": 1,
        "segnet": {"budget_s": 30, "probe_steps": 2, "max_epochs": 2, "min_steps": 2, "config": {
            "model": {"num_classes": num_classes, "backbone": "resnet18", "base_channels": 8, "head_channels": 16,
                      "aux_channels": 8, "ppm_channels": 4, "output_stride": 8},
            "batch_size": 2, "crop_size": 32, "scale_range": [1.0, 1.0], "num_workers": 0,
            "checkpoint_every": 1000000, "log_every": 1}},
        "segment": {"batch_size": 2, "num_workers": 0},
        "bench_train": {"enabled": True, "iterations": 1, "warmup": 1, "estimate_s": 5,
                        "variants": [{"amp": False, "channels_last": False}]},
        "dsslic": {"budget_s": 30, "probe_iterations": 1, "min_chunk": 1, "config": {
            "preset": "tiny", "label_nc": num_classes, "epochs": 2, "batch_size": 2, "crop": 32, "gan": False,
            "checkpoint_every": 1000000}},
        "smapnet": {"budget_s": 30, "probe_iterations": 1, "min_chunk": 1, "config": {
            "preset": "tiny", "epochs": 1, "batch_size": 2, "crop": 16, "checkpoint_every": 1000000}},
        "smic": {"budget_s": 60, "start_s": 1, "config": {
            "num_classes": num_classes,
            "ssnet": {"preset": "tiny", "iterations": 2, "batch_size": 2, "crop": 64, "checkpoint_every": 1000000,
                      "log_every": 1},
            "recnet": {"preset": "tiny", "iterations": 2, "batch_size": 2, "factors": [2, 4], "map_qps": [40],
                       "checkpoint_every": 1000000, "log_every": 1}}},
        "hyperprior": {"budget_s": 30, "start_s": 1, "config": {
            "qualities": [1, 3], "widths": [8, 12], "iterations": 2, "batch_size": 2, "crop": 64,
            "checkpoint_every": 1000000, "log_every": 1}},
        "latent_seg": {"enabled": True, "budget_s": 60, "start_s": 1, "config": {
            "num_classes": num_classes,
            "teacher": {"preset": "tiny", "iterations": 2, "batch_size": 2, "crop": 64, "checkpoint_every": 1000000,
                        "log_every": 1},
            "student": {"iterations": 2, "batch_size": 2, "crop": 64, "transform_width": 8,
                        "checkpoint_every": 1000000, "log_every": 1},
            "variants": [{"selection": "none"}, {"selection": "dynamic"}, {"selection": "static", "channels": 4}]}},
        "code": {"methods": {"dsslic": {"qualities": [40, 30]}, "edms": {"qualities": [40], "agreement_tau": 0.001},
                             "dsslic_444": {"method": "dsslic", "qualities": [40], "chroma": "444"},
                             "smic": {"qualities": [[2, 40]]}, "hyperprior": {"qualities": [1, 3]}},
                 "datasets": [{"dataset": "camvid", "split": "test"}, {"dataset": "kodak", "split": "test"}],
                 "workers": 2, "image_s": 10},
        "speed": {"methods": {"dsslic": {}, "smic": {}, "hyperprior": {}},
                  "quality": {"dsslic": 40, "smic": [2, 40], "hyperprior": 3}, "images": 1, "cpu_images": 0,
                  "estimate_s": 5},
        "baselines": {"codecs": ["jpeg", "hevc"], "sweep": {"jpeg": [50], "hevc": [40, 30]},
                      "datasets": [{"dataset": "kodak", "split": "test"}],
                      "workers": 1, "shard_size": 4, "shard_s": 10, "nice": 0},
        "cpu_paper_size": {"enabled": True, "images": 1, "threads": 1, "estimate_s": 5, "preset": "tiny",
                           "quality": 40},
    }


@pytest.mark.slow
def test_cpu_dry_run_of_the_study(tmp_path):
    """The whole study on CPU (tiny models, synthetic data): every step runs, the pack holds what the report reads."""
    import tarfile

    import pandas as pd
    import yaml

    import run
    from semlic import reporting, results, study
    from semlic.data.synthetic import NUM_CLASSES, make_sample
    from semlic.imageio import save_png

    src = tmp_path / "src"
    packs = tmp_path / "packs"
    for dataset, split, count, size in (("camvid", "train", 4, (96, 96)), ("camvid", "test", 1, (64, 80)),
                                        ("kodak", "test", 1, (64, 48))):
        items = []
        for i in range(count):
            image, label = make_sample(i + 10 * len(items), seed=hash((dataset, split)) % 1000, size=size)
            save_png(src / dataset / split / f"{dataset}{i}.png", image)
            label_path = None
            if dataset == "camvid":
                label_path = src / dataset / split / f"{dataset}{i}.label.png"
                save_png(label_path, label)
            items.append((f"{dataset}{i}", src / dataset / split / f"{dataset}{i}.png", label_path))
        datapack.pack(items, packs / f"{dataset}-{split}.tar", dataset, split, workers=1)
    config = tmp_path / "study.yaml"
    config.write_text(yaml.safe_dump(_dry_run_config(NUM_CLASSES)))
    work, out = tmp_path / "w", tmp_path / "out"
    args = ["--workdir", str(work), "--config", str(config), "--packs", str(packs), "--budget-s", "1200"]
    assert run.main(["auto", *args, "--out", str(out)]) == 0, (work / "logs" / "runner.log").read_text()[-6000:]
    log = (work / "logs" / "runner.log").read_text()
    assert all(f" lane{i}]" in log for i in range(3)) and " final]" in log  # the lanes ran, then the final steps
    status = json.loads((work / "status.json").read_text())["steps"]
    assert {s for s, entry in status.items() if entry.get("done")} >= set(run.STEPS[1:])
    with tarfile.open(out / "study_results.tar.gz") as tar:  # refreshed after every step, before any pack call
        assert "study_results/status.json" in tar.getnames()
    assert run.main(["pack", *args, "--out", str(out), "--models"]) == 0
    with tarfile.open(out / "study_results.tar.gz") as tar:
        tar.extractall(tmp_path / "results")
    res = tmp_path / "results" / "study_results"

    # the models each step trained, found by their registered names (the students by folder)
    models = {p.stem for p in (res / "models").glob("*.json")}
    assert {"pspnet", "dsslic", "smapnet", "smic_ssnet", "smic_recnet", "hyperprior", "deeplabv3"} <= models
    assert {m for m in models if m.startswith("latent_seg_")} == {f"latent_seg_latent-seg_q{q}_{s}" for q in (1, 3)
                                                                 for s in ("no_gate", "dynamic", "static4")}
    assert list(out.glob("models.fp16.tar.part*"))
    # rows: every chosen method (a variant under its own name) on every data set at its qualities
    rows = pd.DataFrame(results.read_rows(res / "rows"))
    coded = rows.groupby(["method", "dataset"]).size().to_dict()
    assert coded == {(m, d): n for m, n in (("dsslic", 2), ("edms", 1), ("dsslic_444", 1), ("smic", 1),
                                            ("hyperprior", 2)) for d in ("camvid", "kodak")}
    assert (rows["git_rev"] != "").all()
    # the training logs the report reads: probe-fitted chunks and minutes-bounded loops
    training = reporting.training_from_logs(res).set_index("step")
    assert {"dsslic", "smapnet", "segnet", "smic_ssnet", "smic_recnet", "hyperprior_q1", "latent-seg_teacher"} \
        <= set(training.index)
    assert training.loc["dsslic", "iterations"] == json.loads((res / "logs" / "dsslic_plan.json").read_text())[
        "total_iterations"]
    assert "iteration" in pd.read_parquet(res / "logs" / "segnet_train_log.parquet").columns
    # the clean timing pass and the paper-size decode
    speed = pd.read_parquet(res / "speed" / "speed.parquet")
    assert set(speed["method"]) == {"dsslic", "smic", "hyperprior"} and speed["matches_encoder"].all()
    assert len(reporting.speed_table(speed)) == 3
    paper = pd.read_parquet(res / "speed" / "cpu_paper_size.parquet").set_index("method")
    assert paper.loc["edms", "parameters"] > paper.loc["dsslic", "parameters"] > 0
    assert "smic" in paper.index and "hyperprior" not in paper.index  # no size presets: timed by speed alone
    assert (res / "speed" / "train_bench.json").is_file()
    assert (res / "segmentation" / "camvid_test.parquet").is_file()
    assert (res / "segmentation" / "pairs.parquet").is_file()
    latent = pd.read_parquet(res / "segmentation" / "latent_seg.parquet")
    assert {"pixel"} < set(latent["method"]) and set(latent["quality"]) == {1, 3}
    provenance = json.loads((res / "provenance.json").read_text())
    assert set(provenance["methods"]) == {"dsslic", "edms", "dsslic_444", "smic", "hyperprior"}
    # a second call finds everything done
    assert run.main(["auto", *args]) == 0

    # the baselines: here, on the CPU, over the same packs (their rows join the report as extra rows)
    local, local_out = tmp_path / "local", tmp_path / "local-out"
    assert run.main(["baselines", "--workdir", str(local), "--config", str(config), "--packs", str(packs),
                     "--out", str(local_out)]) == 0
    with tarfile.open(local_out / "study_results.tar.gz") as tar:
        tar.extractall(tmp_path / "local-results")
    base = pd.DataFrame(results.read_rows(tmp_path / "local-results" / "study_results" / "rows"))
    assert set(base["method"]) == {"jpeg", "hevc"} and set(base["dataset"]) == {"kodak"}
    summary = study.study_report(res, tmp_path / "report", extra_rows=[tmp_path / "local-results" / "study_results"
                                                                       / "rows"], dry_run=True)
    assert summary["rows"] == len(rows) + len(base)
