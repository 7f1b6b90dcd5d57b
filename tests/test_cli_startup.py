"""The command line lists its commands without importing them, and a command imports only its provider."""

from __future__ import annotations

import argparse
import importlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

from semlic import cli

REPO = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "torchvision", "compressai", "semlic.methods", "semlic.segnet", "pandas")


def _imported_after(argv: list[str]) -> tuple[list[str], str]:
    """The heavy modules a fresh process has imported after building the parser for ``argv``, and the
    help text of the parser (what ``semlic ... --help`` prints)."""
    script = ("import json, sys\nfrom semlic import cli\n"
              f"parser = cli.build_parser({argv!r})\n"
              f"heavy = sorted({{m.split('.')[0] if not m.startswith('semlic') else '.'.join(m.split('.')[:2]) "
              f"for m in sys.modules if m.startswith({HEAVY!r})}})\n"
              "print(json.dumps([heavy, parser.format_help()]))\n")
    out = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, check=True)
    heavy, text = json.loads(out.stdout)
    return heavy, text


def test_every_provider_declares_exactly_the_commands_it_registers():
    """COMMANDS (read from the source without importing it) equals what register_cli adds, help included."""
    table = cli.command_table()
    assert len(table) >= len(cli.COMMAND_MODULES)
    names = [name for _, commands in table for name in commands]
    assert len(names) == len(set(names)), "two providers declare the same command"
    for provider, commands in table:
        parser = argparse.ArgumentParser()
        sub = parser.add_subparsers()
        importlib.import_module(provider).register_cli(sub)
        registered = {action.dest: action.help for action in sub._choices_actions}
        assert registered == commands, provider


def test_help_lists_every_command_without_importing_torch_or_a_method():
    heavy, text = _imported_after(["--help"])
    assert heavy == []
    full = cli.build_parser()   # every provider imported: the commands with all their arguments
    commands = next(a for a in full._actions if isinstance(a, argparse._SubParsersAction)).choices
    assert set(commands) >= {"encode", "results", "train-dsslic", "train-sgfilter", "eval-latent-seg"}
    for name in commands:
        assert f"    {name}" in text, name


def test_a_command_imports_only_the_module_that_provides_it():
    heavy, text = _imported_after(["results", "select 1"])
    assert heavy == [] and "results" in text
    heavy, _ = _imported_after(["-v", "train-sgfilter", "--data", "D", "--out", "O"])
    assert "semlic.methods" in heavy   # the method package's own command brings its code


def test_a_mistyped_command_lists_every_command(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["encdoe"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "invalid choice: 'encdoe'" in err and "'train-smic'" in err and "'results'" in err


def test_a_provider_without_commands_declared_is_refused(tmp_path):
    (tmp_path / "m.py").write_text("def register_cli(sub):\n    sub.add_parser('x')\n")
    with pytest.raises(LookupError, match="declares COMMANDS"):
        cli.declared_commands(tmp_path / "m.py")
    (tmp_path / "n.py").write_text("COMMANDS = {'x': 1}\n")
    with pytest.raises(TypeError, match="strings"):
        cli.declared_commands(tmp_path / "n.py")


# --- commands that read metadata run without torch ------------------------------------------------
BLOCKED = ("torch", "torchvision", "compressai")
WITHOUT_TORCH = ("import sys\n"
                 "class Block:\n"
                 "    def find_spec(self, name, path=None, target=None):\n"
                 f"        if name.split('.')[0] in {BLOCKED!r}:\n"
                 "            raise ImportError('imported ' + name)\n"
                 "sys.meta_path.insert(0, Block())\n")


def _run(argv: list[str], block: bool) -> subprocess.CompletedProcess:
    script = (WITHOUT_TORCH if block else "import sys\n") + "from semlic import cli\nsys.exit(cli.main(sys.argv[1:]))\n"
    return subprocess.run([sys.executable, "-c", script, *argv], cwd=REPO, capture_output=True, text=True)


@pytest.fixture(scope="module")
def coded(tmp_path_factory):
    """A DSSLIC model file (tiny, random weights) and a .sem file it coded."""
    import numpy as np

    from semlic.methods import get_method
    from semlic.model_files import build_model, save_model

    folder = tmp_path_factory.mktemp("coded")
    model = build_model("dsslic", "tiny", 12)
    save_model(folder / "dsslic.safetensors", model)
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (64, 96, 3), dtype=np.uint8)
    labels = ((np.arange(64)[:, None] // 16 + np.arange(96)[None] // 32) % 12).astype(np.uint8)
    method = get_method("dsslic")
    result = method.encode(image, {"dsslic": model}, method.parse_quality(30), segmentation=labels)
    (folder / "image.sem").write_bytes(result.data)
    return folder


@pytest.mark.parametrize("command", ["methods", "info", "model-info"])
def test_metadata_commands_run_without_torch_and_print_what_they_print_with_it(command, coded):
    """With torch, torchvision and CompressAI made unimportable, `semlic methods`, `info FILE` and
    `model-info FILE` give the same output as with them: every method package, the segmenter and the
    model registry import their networks only when a network is used."""
    argv = {"methods": ["methods", "--json"], "info": ["info", "--json", str(coded / "image.sem")],
            "model-info": ["model-info", str(coded / "dsslic.safetensors")]}[command]
    blocked, plain = _run(argv, block=True), _run(argv, block=False)
    assert blocked.returncode == 0, blocked.stderr[-3000:]
    assert plain.returncode == 0 and blocked.stdout == plain.stdout
    if command == "methods":
        names = {row["name"] for row in json.loads(blocked.stdout)}
        assert {"dsslic", "edms", "smic", "hyperprior", "dsslic_rd", "sgfilter"} <= names
    if command == "info":
        roles = [layer["role"] for layer in json.loads(blocked.stdout)["layers"]]
        assert roles == ["header", "segmentation", "compact", "residual"]


def test_model_info_check_builds_the_config_and_refuses_a_wrong_one(coded, tmp_path):
    from semlic.model_files import read_metadata, save_tensors

    checked = _run(["model-info", "--check", str(coded / "dsslic.safetensors")], block=False)
    assert checked.returncode == 0 and json.loads(checked.stdout)["config"]["n_blocks"] == 2
    metadata = read_metadata(coded / "dsslic.safetensors")
    for config, exit_code in (("[1, 2]", 5), ('{"n_blocks": "many", "bogus": 1}', 0)):
        bad = tmp_path / "bad.safetensors"
        save_tensors(bad, {}, {k: v for k, v in metadata.items() if k != "format"} | {"config": config})
        shown = _run(["model-info", str(bad)], block=True)    # what the file says, read without torch
        assert shown.returncode == exit_code, shown.stderr
        if exit_code == 0:   # a JSON object is shown as stored; --check builds it and refuses it
            assert json.loads(shown.stdout)["config"] == json.loads(config)
            refused = _run(["model-info", "--check", str(bad)], block=False)
            assert refused.returncode == 5 and "config is missing or invalid" in refused.stderr
    unknown = tmp_path / "unknown.safetensors"   # a name no package declares: refused by name, without torch
    save_tensors(unknown, {}, {k: v for k, v in metadata.items() if k != "format"} | {"model": "nosuchnet"})
    shown = _run(["model-info", str(unknown)], block=True)
    assert shown.returncode == 5 and "unknown model 'nosuchnet'" in shown.stderr and "dsslic" in shown.stderr


def test_every_registered_network_is_declared_by_its_package():
    """A package declares each network it registers (model name -> module), so that the model registry
    finds it without importing it: importing every declared module registers exactly the declared names
    (in a fresh process: other tests register toy networks)."""
    script = ("import importlib, json\n"
              "from semlic import model_files\n"
              "from semlic.registry import load_builtin\n"
              "load_builtin()\n"
              "declared = model_files.declared_models()\n"
              "before = sorted(model_files._MODELS)\n"
              "for module in sorted(set(declared.values())):\n"
              "    importlib.import_module(module)\n"
              "print(json.dumps([declared, before, {n: s.cls.__module__ for n, s in model_files._MODELS.items()}]))\n")
    out = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, check=True)
    declared, before, registered = json.loads(out.stdout)
    assert before == []            # loading the registry imported no network
    assert registered == declared  # each declared network registered by the module that declares it, no other


def test_a_reader_that_stops_early_gets_no_traceback():
    """`semlic methods | head -1` where head has gone before the output is written: the command ends
    quietly with exit status 141 (128 + SIGPIPE, what a shell reports), no traceback."""
    script = ("import os, sys\n"
              "r, w = os.pipe()\nos.close(r)\nos.dup2(w, 1)\n"   # stdout: a pipe whose reader is gone
              "from semlic import cli\nsys.exit(cli.main(['methods']))\n")
    proc = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 141, proc.stderr
    assert "Traceback" not in proc.stderr and "BrokenPipeError" not in proc.stderr, proc.stderr


def test_results_prints_its_rows_without_pandas(tmp_path):
    """``semlic results`` prints the query's rows in every format without importing pandas, numpy or torch
    (the command answers in a fraction of a second: benchmarks/cli_startup.py)."""
    pytest.importorskip("duckdb")
    import pandas as pd

    rows = pd.DataFrame({"method": ["b", "a", "a"], "bpp": [0.5, 0.25, None], "psnr": [30.0, 31.5, 29.0]})
    rows.to_parquet(tmp_path / "rd.parquet")
    script = ("import json, sys\nfrom semlic import cli\nfrom contextlib import redirect_stdout\nimport io\n"
              "out = {}\n"
              "for fmt in ('table', 'csv', 'json', 'markdown'):\n"
              "    buf = io.StringIO()\n"
              "    with redirect_stdout(buf):\n"
              f"        cli.main(['results', '--source', {str(tmp_path / 'rd.parquet')!r}, '--format', fmt,\n"
              "                  'select method, bpp, psnr from rd order by method, psnr'])\n"
              "    out[fmt] = buf.getvalue()\n"
              "heavy = sorted(m for m in ('pandas', 'numpy', 'torch') if m in sys.modules)\n"
              "print(json.dumps([heavy, out]))\n")
    done = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, check=True)
    heavy, out = json.loads(done.stdout.splitlines()[-1])
    assert heavy == []
    assert out["csv"].splitlines() == ["method,bpp,psnr", "a,,29.0", "a,0.25,31.5", "b,0.5,30.0"]
    assert json.loads(out["json"]) == [{"method": "a", "bpp": None, "psnr": 29.0},
                                       {"method": "a", "bpp": 0.25, "psnr": 31.5},
                                       {"method": "b", "bpp": 0.5, "psnr": 30.0}]
    assert out["table"].splitlines() == ["method  bpp psnr", "     a NULL   29", "     a 0.25 31.5", "     b  0.5   30"]
    assert out["markdown"].splitlines()[:3] == ["| method | bpp | psnr |", "|---|---|---|", "| a | NULL | 29.0 |"]
