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


def test_throughput_from_a_cumulative_log():
    # 10 iterations of batch 8: 5 s of warm-up, then 1 s per iteration; images_per_s is cumulative
    times = [5.0] + [5.0 + k for k in range(1, 10)]
    rows = [{"iteration": 100 + k + 1, "images_per_s": (k + 1) * 8 / t} for k, t in enumerate(times)]
    measured = workers._ips_from_log(rows, 8, 100)
    assert measured["iterations"] == 10
    assert measured["train_s"] == pytest.approx(14.0)
    assert measured["steady_images_per_s"] == pytest.approx(8.0)
    assert measured["images_per_s"] == pytest.approx(80 / 14)


def test_runner_config_and_help():
    import yaml

    import run

    for name in ("study.yaml", "dryrun.yaml"):
        cfg = yaml.safe_load((SCRIPTS / name).read_text())
        from semlic.segnet.train_config import SegnetTrainConfig
        from semlic.smapnet_training import SMapNetTrainConfig
        from semlic.training import BaseTrainConfig

        SegnetTrainConfig.from_dict({**cfg["segnet"]["config"], "iterations": 10})
        BaseTrainConfig.from_dict(cfg["base"]["config"])
        SMapNetTrainConfig.from_dict(cfg["smapnet"]["config"])
        assert set(cfg["code"]["methods"]) <= {"dsslic", "edms", "edms_noenh"}
    assert run.STEPS[0] == "unpack" and set(run.STEPS[1:]) == set(run.STEP_FUNCTIONS) - {"unpack"}
