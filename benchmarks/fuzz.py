"""Fuzz every target of semlic.fuzz for a million inputs each and write reports/fuzz.md.

    .venv/bin/python benchmarks/fuzz.py [--runs 1000000] [--targets sem,image,labels,manifest] [--out reports/fuzz.md]

Each target runs as its own ``python -m semlic.fuzz`` process (libFuzzer's limits: 2 GiB RSS, 20 s
per input); the table gives the inputs run, the coverage libFuzzer reached (edges ``cov`` and
features ``ft``), the corpus it grew, the peak RSS, the wall time and what it found (a crash is
written under the work folder and listed; a found crash becomes a regression test in
tests/test_fuzz.py with its input under tests/fixtures/fuzz/).
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def run_target(target: str, runs: int, work: Path) -> dict:
    corpus, found = work / f"corpus-{target}", work / f"found-{target}"
    shutil.rmtree(found, ignore_errors=True)   # what this run finds, not an earlier run's (the corpus is kept)
    start = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "semlic.fuzz", target, "--runs", str(runs), "--corpus", str(corpus),
                          "--artifacts", str(found)], capture_output=True, text=True, cwd=REPO)
    wall = time.perf_counter() - start
    text = out.stderr
    stats = dict(re.findall(r"stat::(\w+):\s+(\d+)", text))
    last = re.findall(r"cov: (\d+) ft: (\d+) corp: (\d+)/", text)
    cov, ft, corp = last[-1] if last else ("", "", "")
    crashes = sorted(p.name for p in found.glob("*")) if found.is_dir() else []
    return {"target": target, "inputs": int(stats.get("number_of_executed_units", 0)), "cov": cov, "ft": ft,
            "corpus": corp, "peak_rss_mb": int(stats.get("peak_rss_mb", 0)), "wall_s": round(wall),
            "exit": out.returncode, "crashes": crashes, "tail": "\n".join(text.splitlines()[-30:]) if crashes else ""}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=1_000_000)
    parser.add_argument("--targets", default="sem,image,labels,manifest")
    parser.add_argument("--out", default=str(REPO / "reports" / "fuzz.md"))
    parser.add_argument("--work", default=None, help="corpora and crashes (default: a temporary folder)")
    args = parser.parse_args(argv)
    work = Path(args.work or tempfile.mkdtemp(prefix="semlic-fuzz-"))
    rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                         cwd=REPO).stdout.strip()
    for target in args.targets.split(","):
        row = {**run_target(target, args.runs, work), "git": rev}
        print(f"{target}: {row['inputs']} inputs, cov {row['cov']}, ft {row['ft']}, peak {row['peak_rss_mb']} MiB, "
              f"{row['wall_s']} s, crashes {row['crashes'] or 'none'}", flush=True)
        (work / f"result-{target}.json").write_text(json.dumps(row, indent=1))
    # the report: every target's latest run in this work folder (a target rerun after a fix replaces its row)
    rows = [json.loads(p.read_text()) for p in sorted(work.glob("result-*.json"))]
    lines = ["# Fuzzing what semlic reads from others", "",
             f"`.venv/bin/python benchmarks/fuzz.py --runs {args.runs} --targets <targets> --work <folder>` "
             "(atheris 3.0.0 / libFuzzer, one process per target, 2 CPU cores shared; each row gives the code it "
             "fuzzed: a target rerun after a fix replaces its row).", "",
             "The contract (semlic/fuzz.py): any input decodes or raises a `SemlicError` subclass; nothing else "
             "escapes; libFuzzer stops on more than 2048 MiB RSS (the process's own ~0.9 GiB: torch, the tiny "
             "models, the instrumentation; plus 1 GiB an input may cost) or 20 s for one input.", "",
             "| target | git | inputs | edges (cov) | features (ft) | corpus | peak RSS (MiB) | wall (s) | found |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['target']} | {r['git']} | {r['inputs']:,} | {r['cov']} | {r['ft']} | {r['corpus']} | "
                     f"{r['peak_rss_mb']} | {r['wall_s']} | {', '.join(r['crashes']) or 'nothing'} |")
    lines += ["", "## Found and fixed while building the harness (each a regression test in tests/test_fuzz.py)", "",
              "- `image`: a damaged AVIF header made Pillow's AVIF plugin raise `RuntimeError` out of `load_image` "
              "(it caught only the exception types Pillow's own formats raise): every exception of the decoders "
              "is now an `UnreadableImageError` (`tests/fixtures/fuzz/image-avif-runtimeerror.bin`).",
              "- `manifest`: an empty or damaged `manifest.parquet` raised pyarrow's `ArrowInvalid` out of "
              "`list_prepared`: now a `DatasetError` naming the file and the fix "
              "(`tests/fixtures/fuzz/manifest-empty-arrowinvalid.bin`); image ids that are not plain file names "
              "(`../x`, `a/b`, a NUL byte) are refused instead of being joined to a path.",
              "- `manifest`: a 647-byte manifest whose footer declared a row group of 14 billion rows made pyarrow "
              "allocate past the memory limit (libFuzzer's `oom-`): the footer's row counts are now checked "
              "before reading (`tests/fixtures/fuzz/manifest-rowgroup-14-billion-rows.bin`); a manifest with a "
              "missing id (pandas reads it as NaN) raised `TypeError`: refused as an id that is not a plain "
              "file name (`tests/fixtures/fuzz/manifest-missing-id.bin`).",
              "- `sem`: a damaged hyperprior string crashed the process (SIGSEGV): CompressAI's C++ rANS decoder "
              "reads 32-bit words past the end of its string without a bounds check. Strings are now bounded by "
              "their symbol count and zero-padded, and the declared hyper-latent size must match the image "
              "(without that check the same input asked for 2.1 GB) "
              "(`tests/fixtures/fuzz/sem-hyperprior-rans-overread.bin`, replayed under libFuzzer). Checksums are "
              "repaired on each input so that mutations reach the methods' sections and layers.",
              "- `sem`, seeded with every method registered after DSSLIC-RD (its three map modes, the 10-bit "
              "residual layers): a HEIF container with no image in an `hevc10` layer made pillow-heif raise "
              "`IndexError` from its size: now a `LayerError` "
              "(`tests/fixtures/fuzz/sem-hevc10-no-image-indexerror.bin`); a 177-byte DSSLIC-RD file declaring "
              "15177x13873 pixels had its compact layer (9.9 million symbols) entropy-decoded before its map "
              "layer's size was found wrong, 720 MiB for one input (libFuzzer's `oom-`): a method now refuses a "
              "file declaring more pixels than the limit (SEMLIC_MAX_PIXELS, 100 million; 4 million in the "
              "harness) when it opens it (`tests/fixtures/fuzz/sem-dsslic-rd-210-megapixels-oom.bin`)."]
    for r in rows:
        if r["tail"]:
            lines += ["", f"### {r['target']}: the fuzzer's last lines", "", "```", r["tail"], "```"]
    Path(args.out).write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out}")
    return 0 if all(not r["crashes"] and r["exit"] == 0 for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
