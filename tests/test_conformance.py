"""A file moving between machines: encoded in one process configuration, decoded in others.

semlic.conformance encodes real images (crops of two Kodak images where ../shared/data has them,
else the synthetic set) with every registered method (tiny random models, every model the registry names)
in one process, then decodes the files in processes started with 2 threads, oneDNN's SSE4.1
kernels, ATen's generic kernels and oneDNN off. For every file: the decoder's entropy parameters
are bit-identical to the encoder's (a float hyper-decoder's are not: its scales differ in the last
bits across kernels), decoding raises nothing, and the image is within the method's declared
tolerance of the encoder's reconstruction (a desynchronised file is garbage, far outside it).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from semlic import conformance
from semlic.imageio import save_png
from tests.conftest import REPO, SHARED_DATA

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1500)]


def _images(tmp_path) -> list[str]:
    """Two real pictures: 256x384 crops of Kodak's kodim02 and kodim08 (files of those two desynchronised
    under SSE4.1 kernels with the float hyper-decoder), or of the synthetic set offline."""
    kodak = [SHARED_DATA / "kodak" / f"kodim{i:02d}.png" for i in (2, 8)]
    if all(p.is_file() for p in kodak):
        from semlic.imageio import load_image

        paths = []
        for source in kodak:
            image = load_image(source)
            top, left = (image.shape[0] - 256) // 2, (image.shape[1] - 384) // 2
            save_png(tmp_path / source.name, image[top:top + 256, left:left + 384])
            paths.append(str(tmp_path / source.name))
        return paths
    from semlic.data.synthetic import make_sample   # the builtin set: machines without ../shared/data

    paths = []
    for i in range(2):
        image, _ = make_sample(i, size=(256, 384))
        save_png(tmp_path / f"synthetic{i}.png", image)
        paths.append(str(tmp_path / f"synthetic{i}.png"))
    return paths


def _run(args, extra_env):
    env = {**os.environ, "PYTHONPATH": str(REPO), **extra_env}
    env.pop("SEMLIC_TEST_THREADS", None)
    proc = subprocess.run([sys.executable, "-m", "semlic.conformance", *args], env=env, capture_output=True,
                          text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]


def test_every_method_decodes_the_same_on_other_cpus_and_thread_counts(tmp_path, every_models_dir):
    files = tmp_path / "files"
    _run(["encode", *_images(tmp_path), "--models", str(every_models_dir), "--out", str(files)],
         {"OMP_NUM_THREADS": "1"})
    encoded = json.loads((files / "files.json").read_text())
    from semlic.methods import all_methods

    assert {r["method"] for r in encoded} == {m.name for m in all_methods()}
    for name, (env, no_mkldnn) in conformance.CONFIGURATIONS.items():
        out = tmp_path / f"{name}.json"
        _run(["decode", "--models", str(every_models_dir), "--files", str(files), "--out", str(out)]
             + (["--no-mkldnn"] if no_mkldnn else []), env)
        for record in json.loads(out.read_text()):
            where = f"{record['file']} under {name}"
            assert record["error"] is None, f"{where}: {record['error']}"
            assert record["parameters_identical"], f"{where}: the decoder computed other entropy parameters"
            assert not conformance.desynchronised(record), f"{where}: {record['max_abs']} grey levels off"
