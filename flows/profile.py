"""Named configurations of the pipeline: ``profiles/<name>.yaml`` run as a DVC experiment.

A profile holds the params.yaml keys it changes, nested as in params.yaml (a mapping is merged
key by key; a list, a value, or a mapping where params.yaml has none replaces what is there).
``python -m flows.profile NAME`` runs ``dvc exp run -n NAME-<time> -S key=value ...`` with them,
so the run is an experiment of its own (``dvc exp show``) and params.yaml in the workspace holds
the profile afterwards, as after any ``dvc exp run -S`` (``git checkout params.yaml`` returns to
the offline default). ``--set key=value`` adds overrides after the profile's (DVC's syntax),
``--force`` reruns every stage, ``--print`` only prints the command. ``make repro-camvid`` is
``python -m flows.profile camvid_cpu``.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from flows import REPO

PROFILES = REPO / "profiles"


def load_profile(name: str, directory: Path = PROFILES) -> dict:
    """The mapping of ``profiles/<name>.yaml`` (a path to a YAML file works too)."""
    path = Path(name) if name.endswith((".yaml", ".yml")) else directory / f"{name}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in directory.glob("*.yaml"))
        raise SystemExit(f"no profile {name!r}: {path} does not exist (known: {', '.join(known) or 'none'})")
    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, dict):
        raise SystemExit(f"{path}: a profile is a mapping of params.yaml keys")
    return data


def hydra_value(value: Any) -> str:
    """``value`` in the override grammar ``dvc exp run -S`` reads (Hydra's)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return json.dumps(value)
    if isinstance(value, str):
        return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(hydra_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {hydra_value(v)}" for k, v in value.items()) + "}"
    raise TypeError(f"cannot write {value!r} as a parameter override")


def overrides(profile: dict, params: dict, prefix: str = "") -> list[str]:
    """``key=value`` overrides that turn ``params`` into ``params`` merged with ``profile``;
    ``+key=value`` for keys params.yaml does not have."""
    out = []
    for key, value in profile.items():
        path = f"{prefix}{key}"
        present = isinstance(params, dict) and key in params
        current = params.get(key) if present else None
        if isinstance(value, dict) and value and isinstance(current, dict):
            out += overrides(value, current, path + ".")
        else:
            out.append(f"{'' if present else '+'}{path}={hydra_value(value)}")
    return out


def command(name: str, extra: list[str] | None = None, params_file: Path | None = None) -> list[str]:
    """The ``dvc exp run`` command of profile ``name``."""
    params = yaml.safe_load((params_file or REPO / "params.yaml").read_text())
    args = ["dvc", "exp", "run", "-n", f"{Path(name).stem.replace('_', '-')}-{time.strftime('%Y%m%d-%H%M%S')}"]
    for item in overrides(load_profile(name), params) + list(extra or []):
        args += ["-S", item]
    return args


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m flows.profile", description=__doc__.split("\n\n")[0])
    parser.add_argument("name", help="profiles/<name>.yaml (e.g. camvid_cpu)")
    parser.add_argument("--set", "-S", action="append", default=[], metavar="KEY=VALUE",
                        help="an override after the profile's, e.g. base.data_root=../shared/data")
    parser.add_argument("--force", "-f", action="store_true",
                        help="rerun every stage (dvc exp run --force)")
    parser.add_argument("--print", action="store_true", help="print the command, run nothing")
    args = parser.parse_args(argv)
    cmd = command(args.name, args.set) + (["--force"] if args.force else [])
    print(shlex.join(cmd), file=sys.stderr, flush=True)
    if args.print:
        return 0
    branch = current_branch()
    if branch is None:
        print("flows.profile: HEAD is detached (an interrupted `dvc exp run` leaves it on a commit): "
              "`git checkout <your branch>` first, so that the experiment is based on it and HEAD is restored "
              "to it afterwards", file=sys.stderr)
        return 2
    code = subprocess.run(cmd, cwd=REPO, env=os.environ).returncode
    if current_branch() != branch:
        print(f"flows.profile: HEAD is no longer on {branch} (the run was interrupted?): `git checkout {branch}` "
              f"restores it", file=sys.stderr)
    return code


def current_branch() -> str | None:
    """The branch HEAD is on; None when HEAD is detached (or this is no git checkout)."""
    out = subprocess.run(["git", "symbolic-ref", "-q", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True)
    return out.stdout.strip() or None if out.returncode == 0 else None


if __name__ == "__main__":
    sys.exit(main())
