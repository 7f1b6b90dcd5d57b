"""A method registered here, in the test file only, goes through every part of semlic that reads the registry.

``ToyMethod`` downsamples the image by its quality factor, stores it with zlib in a RAW layer
(bytes only the method parses) and upsamples it back: no networks, a method section of its
own. The CLI (encode / decode / info / methods), the code stage's library function, the
``code`` flow (its Ray workers import this module through ``SEMLIC_METHODS``) and aggregate
handle it without any other module naming it.
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import zlib

import numpy as np
import pandas as pd
import pytest

from semlic import format as fmt
from semlic import results
from semlic.errors import ConfigError, LayerError
from semlic.methods import EncodeResult, Method, Option, get_method, register_method, unregister_method
from tests.conftest import REPO, make_image

ROLE_PIXELS = 9
_SECTION = struct.Struct("<BB")


class ToyMethod(Method):
    """Nearest-neighbour downsampling by an integer factor, zlib-coded."""

    name = "toy"
    format_id = 201
    label = "Toy (test only)"
    models = ()
    quality_name = "factor"
    default_qualities = (4, 2, 1)
    options = {"level": Option(9, int, "zlib level")}
    layer_roles = {ROLE_PIXELS: "pixels"}

    def parse_quality(self, value):
        factor = int(value)
        if factor not in (1, 2, 4, 8):
            raise ConfigError(f"toy: factor must be 1, 2, 4 or 8, got {value!r}")
        return factor

    def encode(self, image, models, quality, *, segmentation=None, **options):
        options = self.encode_options(options)
        factor = self.parse_quality(quality)
        small = np.ascontiguousarray(image[::factor, ::factor])
        payload = zlib.compress(small.tobytes(), options["level"])
        sem = fmt.SemFile(self.name, image.shape[1], image.shape[0], self.fingerprint(models),
                          _SECTION.pack(factor, options["level"]), (fmt.Layer(ROLE_PIXELS, fmt.RAW, payload),))
        data = fmt.pack(sem)
        return EncodeResult(data, self._upsample(small, factor, image.shape[:2]), self.layer_bits(sem), factor)

    @staticmethod
    def _upsample(small, factor, shape):
        return np.repeat(np.repeat(small, factor, 0), factor, 1)[: shape[0], : shape[1]]

    def decode_file(self, sem, models):
        factor, _ = _SECTION.unpack(sem.section)
        self.check_roles(sem, (ROLE_PIXELS,), (ROLE_PIXELS,))
        h, w = -(-sem.height // factor), -(-sem.width // factor)
        raw = zlib.decompress(sem.layer(ROLE_PIXELS).payload)
        if len(raw) != h * w * 3:
            raise LayerError(f"toy layer holds {len(raw)} bytes, the header implies {h * w * 3}")
        return self._upsample(np.frombuffer(raw, np.uint8).reshape(h, w, 3), factor, (sem.height, sem.width))

    def describe(self, sem):
        factor, level = _SECTION.unpack(sem.section)
        return {"factor": factor, "zlib_level": level}


# Registered while this file's tests run (other tests see the built-in methods only), and on
# import in the pipeline's processes, which name this module in SEMLIC_METHODS.
if __name__ in os.environ.get("SEMLIC_METHODS", "").split(","):
    register_method(ToyMethod)


@pytest.fixture(autouse=True, scope="module")
def toy_registered():
    register_method(ToyMethod)
    yield
    unregister_method("toy")


def test_encode_decode_info_and_methods_through_the_cli(tmp_path, capsys):
    from semlic.cli import main
    from semlic.imageio import load_image, save_png

    image, _ = make_image(30, 45, seed=2)
    src, sem, out = tmp_path / "in.png", tmp_path / "x.sem", tmp_path / "out.png"
    save_png(src, image)
    assert main(["encode", str(src), str(sem), "--method", "toy", "--quality", "2", "-o", "level=6"]) == 0
    assert main(["decode", str(sem), str(out)]) == 0
    np.testing.assert_array_equal(load_image(out), ToyMethod._upsample(image[::2, ::2], 2, (30, 45)))
    capsys.readouterr()
    assert main(["info", str(sem), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["method"] == "toy" and info["factor"] == 2 and info["zlib_level"] == 6
    assert [lay["role"] for lay in info["layers"]] == ["header", "pixels"] and info["layers"][1]["codec"] == "raw"
    assert sum(lay["bits"] for lay in info["layers"]) == 8 * sem.stat().st_size
    assert main(["methods"]) == 0
    assert "toy" in capsys.readouterr().out
    assert main(["encode", str(src), str(sem), "--method", "toy", "--quality", "3"]) == 2
    assert "factor must be" in capsys.readouterr().err


def test_a_foreign_file_is_refused_by_the_method():
    image, _ = make_image(8, 8)
    data = get_method("toy").encode(image, {}, 1).data
    with pytest.raises(LayerError, match="not a dsslic file"):
        get_method("dsslic").decode(data, {})


def test_code_stage_rows_for_the_toy_method(tmp_path):
    from semlic.code_stage import code_shard
    from semlic.imageio import save_png

    paths = []
    for i in range(2):
        path = tmp_path / "images" / f"im{i}.png"
        save_png(path, make_image(24, 32, seed=i)[0])
        paths.append(path)
    (tmp_path / "models").mkdir()
    rows = code_shard(paths, "toy", {"qualities": [1, 4]}, models_dir=tmp_path / "models", dataset="unit",
                      out_dir=tmp_path / "coded")
    assert [(r["image_id"], r["quality"], r["quality_name"]) for r in rows] == [
        ("im0", 1.0, "factor"), ("im0", 4.0, "factor"), ("im1", 1.0, "factor"), ("im1", 4.0, "factor")]
    assert all(r["layer_bits"].keys() == {"header", "pixels"} for r in rows)
    assert rows[0]["bytes_total"] == (tmp_path / "coded" / "toy" / "im0_1.sem").stat().st_size
    assert rows[0]["psnr_rgb"] == float("inf") or rows[0]["psnr_rgb"] > rows[1]["psnr_rgb"]


@pytest.mark.slow
def test_code_flow_and_aggregate_handle_the_toy_method(tmp_path):
    """The code stage as the pipeline runs it (Prefect flow, Ray workers), then aggregate."""
    from tests.test_flows_support import make_project, prepare_synthetic, run_stage, stage_env

    project = make_project(tmp_path, {"code": {
        "limit": 2, "shard_size": 2, "methods": {"toy": {"qualities": [1, 2]}, "dsslic": None, "edms": None,
                                                  "edms_noenh": None, "smic": None, "hyperprior": None,
                                                  "dsslic_rd": None, "sgfilter": None, "sgfilter_nomap": None,
                                                  "sgfilter_sent": None},
        "baselines": {"codecs": ["hevc"], "sweep": {"hevc": [40, 30, 20, 12]}}}})
    prepare_synthetic(project, limit=2)
    env = stage_env(project, SEMLIC_METHODS="tests.test_method_interface")
    run_stage("code", project, env)
    rows = results.read_rows(project / "data" / "coded" / "rows")
    assert {r["method"] for r in rows} == {"toy", "hevc"}
    assert sorted({r["quality"] for r in rows if r["method"] == "toy"}) == [1.0, 2.0]
    assert len(list((project / "data" / "coded" / "files" / "synthetic" / "toy").glob("*.sem"))) == 4
    run_stage("aggregate", project, env)
    rd = pd.read_parquet(project / "data" / "results" / "rd.parquet")
    assert set(rd["method"]) == {"toy", "hevc"}
    assert (project / "data" / "results" / "plots" / "toy.csv").is_file()


def test_the_library_imports_with_the_core_dependencies_only():
    """semlic and its methods import, and the CLI builds, with the orchestration stack unimportable;
    a command that needs an extra says which one to install."""
    blocked = ["prefect", "prefect_ray", "ray", "dvc", "duckdb", "matplotlib"]
    script = (
        "import sys, importlib.abc\n"
        f"BLOCKED = {blocked!r}\n"
        "class Block(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in BLOCKED:\n"
        "            raise ImportError(f'{name} is blocked in this test')\n"
        "sys.meta_path.insert(0, Block())\n"
        "import semlic, semlic.methods, semlic.code_stage, semlic.model_files, semlic.train_loop\n"
        "from semlic.methods import all_methods\n"
        "from semlic.cli import build_parser, main\n"
        "build_parser()\n"
        "print(','.join(m.name for m in all_methods()))\n"
        "loaded = [m for m in sys.modules if m.split('.')[0] in BLOCKED]\n"
        "assert not loaded, loaded\n"
        "sys.exit(main(['results', 'select 1']))\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert out.returncode == 2, out.stderr
    assert {"dsslic", "edms", "edms_noenh"} <= set(out.stdout.strip().split(","))
    assert "pip install 'semlic[pipeline]'" in out.stderr


def test_the_registry_is_complete_for_every_thread_that_asks_first():
    """Threads asking the registry at once, before it is loaded, all find every method, while others
    import a method package themselves (which registers its method): no thread sees a half-loaded
    registry and none deadlocks (a fresh process, killed if it hangs)."""
    import subprocess
    import sys

    script = ("import threading\nfrom semlic.methods import get_method\nerrors = []\n"
              "def ask():\n    try:\n        get_method('dsslic'); get_method('smic')\n"
              "    except Exception as exc:\n        errors.append(repr(exc))\n"
              "def imports():\n    try:\n        from semlic.methods.latent_seg import commands  # noqa: F401\n"
              "        get_method('hyperprior')\n    except Exception as exc:\n        errors.append(repr(exc))\n"
              "threads = [threading.Thread(target=f) for f in (ask, imports) * 3]\n"
              "[t.start() for t in threads]; [t.join() for t in threads]\nprint(errors)\n")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr
