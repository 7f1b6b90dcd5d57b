"""Start-up of the ``semlic`` command line: wall seconds and peak memory of each command that needs
metadata, not networks, with the command modules imported lazily (the command line as it is),
eagerly (every provider imported before parsing, as ``semlic.cli.build_parser()`` without argv
does, and as the command line did before it read the commands from the source) and with every
network imported first (as the method packages did before they declared their networks and
imported them on first use), side by side.

    .venv/bin/python benchmarks/cli_startup.py [--repeat 5] [--out reports/pipeline/cli_startup.csv]

The .sem file, model file and results folder default to the offline default's outputs (``dvc repro``).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
from pathlib import Path

import pandas as pd

REPO = Path(__file__).resolve().parents[1]
RUN = "import sys\nfrom semlic import cli\n{prelude}sys.exit(cli.main(sys.argv[1:]))\n"
MODES = {"lazy": "", "eager": "cli.build_parser()\n",
         # every network imported before the command runs, as the method packages did before they declared
         # their networks (semlic.model_files.declare_models) and imported them on first use
         "networks": ("import importlib\nfrom semlic import model_files\n"
                      "[importlib.import_module(m) for m in sorted(set(model_files.declared_models().values()))]\n")}
# A forked child starts with its parent's peak memory, kept across exec: a bare interpreter (~11 MiB)
# starts the command and reports its wait4 figures, so the peak is the command's own.
LAUNCH = ("import os, sys, time\nt = time.perf_counter()\npid = os.fork()\n"
          "if pid == 0:\n    os.execv(sys.executable, [sys.executable, *sys.argv[1:]])\n"
          "_, status, usage = os.wait4(pid, 0)\n"
          "print(time.perf_counter() - t, usage.ru_maxrss / 1024, os.waitstatus_to_exitcode(status))\n")


def first(pattern: str) -> str:
    found = sorted(REPO.glob(pattern))
    if not found:
        raise SystemExit(f"no {pattern} under {REPO}: run dvc repro (the offline default) first, or give the paths")
    return str(found[0])


def measure(argv: list[str], mode: str) -> tuple[float, float, int]:
    """Wall seconds, peak resident MiB and exit code of one fresh process."""
    out = subprocess.run([sys.executable, "-c", LAUNCH, "-c", RUN.format(prelude=MODES[mode]), *argv], cwd=REPO,
                         stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, check=True)
    wall, peak, code = out.stdout.split()[-3:]
    return float(wall), float(peak), int(code)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--file", help="a .sem file (semlic info)")
    parser.add_argument("--model", help="a model file (semlic model-info)")
    parser.add_argument("--results", default="data/results", help="a results folder (semlic results)")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--out", help="CSV of the medians")
    args = parser.parse_args(argv)
    commands = {"--help": ["--help"], "methods": ["methods"],
                "info": ["info", args.file or first("data/coded/files/*/dsslic/*.sem")],
                "model-info": ["model-info", args.model or first("data/models/dsslic/*.safetensors")],
                "results": ["results", "--source", args.results, "select count(*) from rd"]}
    rows = []
    for name, command in commands.items():
        for mode in MODES:
            runs = [measure(command, mode) for _ in range(args.repeat)]
            codes = {code for *_, code in runs}
            rows.append({"command": name, "mode": mode, "wall_s": statistics.median(r[0] for r in runs),
                         "peak_mib": statistics.median(r[1] for r in runs), "exit": ",".join(map(str, sorted(codes)))})
    table = pd.DataFrame(rows).pivot(index="command", columns="mode", values=["wall_s", "peak_mib"])
    table.columns = [f"{a}_{b}" for a, b in table.columns]
    table = table.reindex(list(commands)).reset_index()
    table["exit"] = [next(r["exit"] for r in rows if r["command"] == c and r["mode"] == "lazy") for c in table["command"]]
    print(table.to_string(index=False, float_format=lambda v: f"{v:.2f}"))
    print(f"(medians of {args.repeat} fresh processes each; {os.cpu_count()} CPUs; python {sys.version.split()[0]})")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        table.to_csv(args.out, index=False, float_format="%.3f")
    return 0


if __name__ == "__main__":
    sys.exit(main())
