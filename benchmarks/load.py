"""Load: the code stage over 10,000 generated images; driver and worker memory and time per image.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/load.py --images 10000 --out reports/load.md

In a work folder (``--work``, kept: a rerun reuses its images, models and prepared set), it
generates ``--images`` scenes of the synthetic generator at ``--size`` (PNG, a ``folder`` data
set), writes randomly initialised tiny models of every registered method (semlic.fuzz.tiny_models:
the compute of the tiny presets, not their quality), prepares the set with ``python -m
flows prepare`` and then runs ``python -m flows code`` as ``dvc repro`` would: every baseline of
params.yaml and every method of ``code.methods`` with its qualities, ``--shard-size`` images per
task, on a local Ray of ``base.workers`` CPUs under the stage's own Prefect API.

While the stage runs, a sampler reads every ``--interval`` seconds the RSS of the driver (the
``flows code`` process), of each Ray worker process, of Ray's own processes (GCS, raylet,
dashboard...) and of the Prefect API, and counts the shard parts written so far. The stage's
``--record`` gives each shard task's seconds and when it ended. The report gives, per thousand
images (in the order the stage submits them): the wall seconds per image (from the tasks' end
times), the task seconds per image, and the peak RSS of each kind of process; the curve of RSS
against images done is drawn in ``--plot``; the samples go to ``--samples`` (CSV).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
import subprocess
import sys
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
MiB = 2 ** 20


def _write_scene(job: tuple[int, int, int, str]) -> None:
    from PIL import Image

    from semlic.data.synthetic import make_sample

    index, seed, size, folder = job
    path = Path(folder) / f"img_{index:05d}.png"
    if not path.is_file():
        image, _ = make_sample(index, seed, (size, size))
        tmp = path.with_suffix(".tmp")
        Image.fromarray(image).save(tmp, format="PNG")
        os.replace(tmp, path)


def generate_images(folder: Path, count: int, size: int, seed: int, workers: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for stale in folder.glob("img_*.png"):
        if int(stale.stem[4:]) >= count:
            stale.unlink()
    jobs = [(i, seed, size, str(folder)) for i in range(count)]
    with ProcessPoolExecutor(workers) as pool:
        list(pool.map(_write_scene, jobs, chunksize=256))


def write_tiny_models(models: Path) -> list[str]:
    from semlic.fuzz import tiny_models
    from semlic.model_files import save_model

    names = []
    for name, module in sorted(tiny_models().items()):
        (models / name).mkdir(parents=True, exist_ok=True)
        save_model(models / name / f"{name}.safetensors", module)
        names.append(name)
    return names


def classify(process) -> str:
    """driver | worker | prefect | ray (Ray's own processes) | other."""
    try:
        cmdline = " ".join(process.cmdline())
        name = process.name()
    except Exception:  # noqa: BLE001 - the process ended
        return "other"
    if "default_worker.py" in cmdline or name.startswith("ray::"):
        return "worker"
    if "uvicorn" in cmdline or "prefect" in cmdline:
        return "prefect"
    if any(key in cmdline for key in ("raylet", "gcs_server", "ray/dashboard", "ray/_private", "log_monitor",
                                      "monitor.py", "runtime_env")):
        return "ray"
    return "other"


class Sampler(threading.Thread):
    """RSS of the stage's process tree every ``interval`` s, with the count of finished shard parts."""

    def __init__(self, pid: int, parts: Path, interval: float):
        super().__init__(daemon=True)
        self.pid, self.parts, self.interval = pid, parts, interval
        self.samples: list[dict] = []
        self.stop = threading.Event()
        self.start_time = time.time()

    def run(self) -> None:
        import psutil

        root = psutil.Process(self.pid)
        kinds: dict[int, str] = {}
        while not self.stop.is_set():
            try:
                tree = [root] + root.children(recursive=True)
            except psutil.NoSuchProcess:
                return
            sample = {"t": time.time() - self.start_time, "driver": 0, "prefect": 0, "ray": 0, "other": 0,
                      "workers": {}}
            for process in tree:
                try:
                    rss = process.memory_info().rss
                except psutil.Error:
                    continue
                if process.pid == self.pid:
                    sample["driver"] = rss
                    continue
                kind = kinds.get(process.pid) or kinds.setdefault(process.pid, classify(process))
                if kind == "worker":
                    sample["workers"][process.pid] = rss
                else:
                    sample[kind] += rss
            sample["parts"] = len(list(self.parts.glob("*.parquet"))) if self.parts.is_dir() else 0
            self.samples.append(sample)
            self.stop.wait(self.interval)


def stage_env(work: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("PREFECT_API_URL", "SEMLIC_RAY_ADDRESS", "RAY_ADDRESS")}
    env.update(PYTHONPATH=str(REPO), PREFECT_HOME=str(work / ".prefect"),
               OMP_NUM_THREADS=env.get("OMP_NUM_THREADS", "1"),
               PATH=f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}")
    return env


def run_code_stage(work: Path, sets: list[str], interval: float) -> tuple[dict, list[dict], float]:
    record = work / "record-code.json"
    record.unlink(missing_ok=True)
    start = time.time()
    log = (work / "code.log").open("w")
    process = subprocess.Popen([sys.executable, "-m", "flows", "code", "--params", str(REPO / "params.yaml"), *sets,
                                "--record", str(record)], cwd=work, env=stage_env(work), stdout=log,
                               stderr=subprocess.STDOUT)
    sampler = Sampler(process.pid, work / "data" / ".staging" / "data__coded" / "parts", interval)
    sampler.start_time = start
    sampler.start()
    rc = process.wait()
    sampler.stop.set()
    sampler.join()
    log.close()
    if rc != 0:
        raise SystemExit(f"the code stage failed (rc {rc}); see {work / 'code.log'}:\n"
                         + (work / "code.log").read_text()[-3000:])
    return json.loads(record.read_text()), sampler.samples, start


def shard_index(part: str) -> int:
    return int(re.search(r"-(\d+)\.parquet$", part).group(1))


def per_thousand(record: dict, samples: list[dict], start: float, images: int, shard_size: int,
                 window: int) -> list[dict]:
    """One row per ``window`` images: wall and task seconds per image, peak RSS of each kind of process."""
    shards: dict[int, dict] = {}
    for task in record["result"]["shards"]:
        entry = shards.setdefault(shard_index(task["part"]), {"images": task["images"], "seconds": 0.0, "ended": 0.0})
        entry["seconds"] += task["seconds"]
        entry["ended"] = max(entry["ended"], task["ended"] - start)
    first_start = min(task["ended"] - start - task["seconds"] for task in record["result"]["shards"])
    order = sorted(shards)
    rows = []
    for first in range(0, images, window):
        members = [shards[i] for i in order if first <= i * shard_size < first + window]
        if not members:
            continue
        # the window's wall time: from the last end among the shards before it (the first window: from the
        # start of the first task, after Ray's and Prefect's start-up) to its own last end
        before = [shards[i]["ended"] for i in order if i * shard_size < first]
        begin = max(before) if before else first_start
        end = max(m["ended"] for m in members)
        count = sum(m["images"] for m in members)
        during = [s for s in samples if begin <= s["t"] <= end] or samples[-1:]
        rows.append({
            "images": f"{first + 1}-{first + count}",
            "wall_s_per_image": (end - begin) / count,
            "task_s_per_image": sum(m["seconds"] for m in members) / count,
            "driver_mib": max(s["driver"] for s in during) / MiB,
            "worker_mib": max((max(s["workers"].values(), default=0) for s in during), default=0) / MiB,
            "workers": max(len(s["workers"]) for s in during),
            "prefect_mib": max(s["prefect"] for s in during) / MiB,
            "ray_mib": max(s["ray"] for s in during) / MiB,
        })
    return rows


def rebuild_parts(rows_dir: Path, parts_dir: Path, shard_size: int, baselines: list[str]) -> int:
    """The run's shard parts again (its stage deleted them once merged), from its rows: one part
    per (shard, baselines or method), as the tasks wrote them. Returns how many."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from semlic import results

    table = results.read_table(rows_dir)
    ids = pc.unique(table["image_id"]).sort()
    shard = pc.divide(pc.index_in(table["image_id"], value_set=ids), shard_size).to_numpy()
    methods = table["method"].to_numpy(zero_copy_only=False)
    group = np.where(np.isin(methods, baselines), "baselines", methods)
    order = np.lexsort((shard, group))
    table = table.take(pa.array(order))
    keys = list(zip(group[order], shard[order]))
    parts_dir.mkdir(parents=True, exist_ok=True)
    starts = [0] + [i for i in range(1, len(keys)) if keys[i] != keys[i - 1]] + [len(keys)]
    for begin, end in zip(starts, starts[1:]):
        name, index = keys[begin]
        part = table.slice(begin, end - begin).sort_by([(k, "ascending") for k in results.SORT_KEY])
        pq.write_table(part, parts_dir / f"{name}-{int(index):04d}.parquet", compression="zstd")
    return len(starts) - 1


MERGE_WAYS = {
    # the code stage before this benchmark: every row as a Python dict, then the hive tree
    "rows as dicts": (
        "rows = [r for p in parts for r in results.read_rows(p)]\n"
        "rows, timings = [{**r, 'enc_s': float('nan'), 'dec_s': float('nan')} for r in rows], "
        "[{k: r[k] for k in ('dataset', 'method', 'image_id', 'quality', 'enc_s', 'dec_s')} for r in rows]\n"
        "results.write_partitioned(rows, out / 'rows')\n"
        "write_parquet(pa.Table.from_pylist(sorted(timings, key=lambda r: (r['dataset'], r['method'], "
        "r['image_id'], r['quality']))), out / 'timings.parquet')"),
    # every part as one Arrow table
    "one Arrow table": (
        "table, timings = split_timings(results.merge_tables(parts))\n"
        "results.write_partitioned_table(table, out / 'rows')\n"
        "write_parquet(timings, out / 'timings.parquet')"),
    # the code stage now (semlic.pipeline.stages.code.merge_parts): partition by partition, in row groups as the parts are read
    "piece by piece": "merge_parts(parts, out / 'rows', out / 'timings.parquet')",
}


def merge_memory(parts_dir: Path, out_dir: Path, shard_size: int) -> list[dict]:
    """Peak RSS added and seconds of each way of merging the parts, each in a fresh process; the
    stage's way again on the first 1,000 images' parts (how its memory grows with the images)."""
    rows = []
    ways = [(name, code, None) for name, code in MERGE_WAYS.items()]
    ways.append(("piece by piece, first 1,000 images", MERGE_WAYS["piece by piece"], 1000 // shard_size))
    for name, code, shards in ways:
        out = out_dir / re.sub(r"\W+", "_", name)
        if shards is not None:
            code = f"parts = [p for p in parts if int(p.stem.rsplit('-', 1)[1]) < {shards}]\n" + code
        script = (
            "import resource, sys, time, json\nfrom pathlib import Path\nimport pyarrow as pa\n"
            "from semlic import results\nfrom semlic.fileio import write_parquet\n"
            "from semlic.pipeline.stages.code import merge_parts, split_timings\n"
            f"parts = sorted(Path({str(parts_dir)!r}).glob('*.parquet'))\nout = Path({str(out)!r})\n"
            "out.mkdir(parents=True, exist_ok=True)\n"
            "def rss():\n    return int(open('/proc/self/statm').read().split()[1]) * 4096\n"
            "before, start = rss(), time.perf_counter()\n"
            f"{code}\n"
            "peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024\n"
            "print(json.dumps({'before': before, 'peak': peak, 'seconds': time.perf_counter() - start}))\n")
        done = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True,
                              env={**os.environ, "PYTHONPATH": str(REPO)})
        if done.returncode != 0:
            raise SystemExit(f"merge {name!r} failed: {done.stderr[-2000:]}")
        result = json.loads(done.stdout.strip().splitlines()[-1])
        rows.append({"way": name, "added_mib": (result["peak"] - result["before"]) / MiB,
                     "seconds": result["seconds"]})
    return rows


def write_samples(samples: list[dict], path: Path) -> None:
    pids = sorted({pid for s in samples for pid in s["workers"]})
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["t_s", "parts_done", "driver_mib", "prefect_mib", "ray_mib", "other_mib",
                         *[f"worker_{pid}_mib" for pid in pids]])
        for s in samples:
            writer.writerow([f"{s['t']:.1f}", s["parts"], *(f"{s[k] / MiB:.1f}" for k in ("driver", "prefect", "ray",
                                                                                          "other")),
                             *(f"{s['workers'][pid] / MiB:.1f}" if pid in s["workers"] else "" for pid in pids)])


def plot(samples: list[dict], rows: list[dict], parts_total: int, images: int, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    done, most = [], 0   # the parts folder goes once merged: the count stays at its last value
    for s in samples:
        most = max(most, s["parts"])
        done.append(most / parts_total * images)
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.2))
    left.plot(done, [s["driver"] / MiB for s in samples], label="driver (flows code)", color="tab:blue")
    pids = sorted({pid for s in samples for pid in s["workers"]})
    for n, pid in enumerate(pids):
        points = [(d, s["workers"][pid] / MiB) for d, s in zip(done, samples) if pid in s["workers"]]
        left.plot(*zip(*points), lw=0.8, label="Ray workers (each)" if n == 0 else None, color="tab:orange")
    left.plot(done, [s["prefect"] / MiB for s in samples], label="Prefect API", color="tab:purple")
    left.plot(done, [s["ray"] / MiB for s in samples], label="Ray's own processes", color="tab:green")
    left.set(xlabel="images coded (shard parts written)", ylabel="RSS (MiB)", title="memory over the run")
    left.legend(fontsize=8)
    left.grid(alpha=0.3)
    centres = [int(r["images"].split("-")[0]) + 500 for r in rows]
    right.plot(centres, [r["wall_s_per_image"] for r in rows], "o-", label="wall s / image")
    right.plot(centres, [r["task_s_per_image"] for r in rows], "s-", label="task s / image (sum over tasks)")
    right.set(xlabel="images (by thousand)", ylabel="seconds per image", title="time per image", ylim=(0, None))
    right.legend(fontsize=8)
    right.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def read_back(samples_csv: Path, report: Path) -> tuple[list[dict], list[dict]]:
    """The samples and the per-thousand rows of an earlier run, from its CSV and its report's table."""
    samples = []
    with samples_csv.open() as handle:
        for row in csv.DictReader(handle):
            workers = {k: float(v) * MiB for k, v in row.items() if k.startswith("worker_") and v}
            samples.append({"t": float(row["t_s"]), "parts": int(row["parts_done"]), "workers": workers,
                            **{k: float(row[f"{k}_mib"]) * MiB for k in ("driver", "prefect", "ray", "other")}})
    rows = []
    for line in report.read_text().splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if len(cells) == 8 and re.fullmatch(r"\d+-\d+", cells[0]):
            rows.append({"images": cells[0], "wall_s_per_image": float(cells[1]), "task_s_per_image": float(cells[2])})
    return samples, rows


def markdown(rows: list[dict], meta: dict) -> str:
    first, last = rows[0], rows[-1]
    lines = [
        "# Load: the code stage over generated images",
        "",
        f"{meta['images']:,} generated {meta['size']}x{meta['size']} scenes (the synthetic generator, seed "
        f"{meta['seed']}) through the code stage (`python -m flows code`, as `dvc repro` runs it): baselines "
        f"{', '.join(meta['baselines'])} and the methods {', '.join(meta['methods'])} with params.yaml's "
        f"qualities, randomly initialised tiny models ({', '.join(meta['models'])}), {meta['shard_size']} images "
        f"per task, {meta['tasks']} tasks, a local Ray of {meta['workers']} CPUs on {meta['cpus']} cores. "
        f"{meta['rows']:,} result rows; the stage took {meta['stage_s']:.0f} s. git {meta['git']}.",
        "",
        "Command:",
        "",
        f"    {meta['command']}",
        "",
        "Per thousand images, in the order the stage submits them: wall seconds per image (between the tasks' end "
        "times), the tasks' own seconds per image (summed over the baselines task and each method's task), and "
        f"the peak RSS sampled every {meta['interval']} s of the driver, of the largest Ray worker, of Ray's own "
        "processes and of the stage's Prefect API.",
        "",
        "| images | wall s/image | task s/image | driver MiB | worker MiB (max) | workers | Ray MiB | Prefect MiB |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(f"| {r['images']} | {r['wall_s_per_image']:.3f} | {r['task_s_per_image']:.3f} | "
                     f"{r['driver_mib']:.0f} | {r['worker_mib']:.0f} | {r['workers']} | {r['ray_mib']:.0f} | "
                     f"{r['prefect_mib']:.0f} |")

    def change(key: str) -> str:
        return f"{last[key] / first[key]:.2f}x" if first[key] else "-"

    lines += [
        "",
        f"Last thousand against the first: wall time per image {change('wall_s_per_image')}, task time per image "
        f"{change('task_s_per_image')}, driver RSS {last['driver_mib'] - first['driver_mib']:+.0f} MiB, largest "
        f"worker RSS {last['worker_mib'] - first['worker_mib']:+.0f} MiB, Prefect API "
        f"{last['prefect_mib'] - first['prefect_mib']:+.0f} MiB.",
        f"After the first minute (Ray, Prefect and the models started): driver RSS {meta['driver_min']:.0f}-"
        f"{meta['driver_max']:.0f} MiB, the largest Ray worker {meta['worker_min']:.0f}-{meta['worker_max']:.0f} MiB.",
        "",
        f"![memory and time per image]({meta['plot']})",
        "",
        f"Samples: {meta['samples']}.",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=10000)
    parser.add_argument("--size", type=int, default=64, help="height and width of each image (default 64)")
    parser.add_argument("--seed", type=int, default=1, help="seed of the generated scenes")
    parser.add_argument("--shard-size", type=int, default=25, help="images per task (code.shard_size)")
    parser.add_argument("--workers", type=int, default=2, help="CPUs of the local Ray (base.workers)")
    parser.add_argument("--window", type=int, default=1000, help="images per row of the table")
    parser.add_argument("--interval", type=float, default=2.0, help="seconds between RSS samples")
    parser.add_argument("--work", default="/tmp/semlic-load", help="work folder (kept; a rerun reuses its inputs)")
    parser.add_argument("--set", "-S", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="more params overrides for the code stage")
    parser.add_argument("--out", default="reports/load.md")
    parser.add_argument("--plot", default="reports/load.png")
    parser.add_argument("--samples", default="reports/load_samples.csv")
    parser.add_argument("--replot", action="store_true", help="only draw --plot again from --samples and --out")
    parser.add_argument("--merge-only", action="store_true",
                        help="only the merge section: rebuild the parts from the work folder's coded rows and "
                             "measure each way of merging them (the report's other sections are kept)")
    args = parser.parse_args(argv)
    import yaml

    from semlic.results import git_revision

    work = Path(args.work).absolute()
    work.mkdir(parents=True, exist_ok=True)
    if args.merge_only:
        write_merge_section(work, args, Path(args.out))
        return 0
    if args.replot:
        samples, rows = read_back(Path(args.samples), Path(args.out))
        plot(samples, rows, max(s["parts"] for s in samples), args.images, Path(args.plot))
        return 0
    t0 = time.perf_counter()
    generate_images(work / "raw" / "folder", args.images, args.size, args.seed, args.workers)
    print(f"load: {args.images} images in {work / 'raw' / 'folder'} ({time.perf_counter() - t0:.0f} s)",
          file=sys.stderr)
    models = write_tiny_models(work / "data" / "models")
    common = ["-S", "base.dataset=folder", "-S", f"base.data_root={work / 'raw'}", "-S", f"base.workers={args.workers}"]
    out = subprocess.run([sys.executable, "-m", "flows", "prepare", "--params", str(REPO / "params.yaml"), *common],
                         cwd=work, env=stage_env(work), capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"prepare failed:\n{out.stderr[-3000:]}")
    sets = [*common, "-S", f"code.shard_size={args.shard_size}", *(x for s in args.set for x in ("-S", s))]
    print(f"load: prepared; running the code stage ({args.shard_size} images per task)", file=sys.stderr)
    record, samples, start = run_code_stage(work, sets, args.interval)
    params = yaml.safe_load((REPO / "params.yaml").read_text())["code"]
    methods = [m for m in record["result"]["methods"] if m not in params["baselines"]["codecs"]]   # what it coded
    tasks = len(record["result"]["shards"])
    rows = per_thousand(record, samples, start, args.images, args.shard_size, args.window)
    warm = [s for s in samples if s["t"] > 60]
    largest_worker = [max(s["workers"].values()) for s in warm if s["workers"]]
    meta = {
        "images": args.images, "size": args.size, "seed": args.seed, "shard_size": args.shard_size,
        "workers": args.workers, "cpus": os.cpu_count(), "methods": methods, "models": models,
        "baselines": params["baselines"]["codecs"], "tasks": tasks, "rows": record["result"]["rows"],
        "stage_s": record["seconds"], "git": git_revision(REPO), "interval": args.interval,
        "command": "OMP_NUM_THREADS=1 .venv/bin/python benchmarks/load.py " + " ".join(argv or sys.argv[1:]),
        "plot": Path(args.plot).name, "samples": Path(args.samples).name,
        "driver_min": min(s["driver"] for s in warm or samples) / MiB,
        "driver_max": max(s["driver"] for s in warm or samples) / MiB,
        "worker_min": min(largest_worker, default=0) / MiB, "worker_max": max(largest_worker, default=0) / MiB,
    }
    write_samples(samples, Path(args.samples))
    plot(samples, rows, tasks, args.images, Path(args.plot))
    text = markdown(rows, meta)
    Path(args.out).write_text(text)
    write_merge_section(work, args, Path(args.out))
    print(Path(args.out).read_text())
    return 0


MERGE_HEADING = "## The merge at the end"


def write_merge_section(work: Path, args, out: Path) -> None:
    """Rebuild the run's parts and measure each way of merging them; (re)write the report's merge section."""
    import shutil

    import yaml

    from semlic.results import git_revision

    baselines = yaml.safe_load((REPO / "params.yaml").read_text())["code"]["baselines"]["codecs"]
    parts = work / "merge" / "parts"
    shutil.rmtree(work / "merge", ignore_errors=True)
    count = rebuild_parts(work / "data" / "coded" / "rows", parts, args.shard_size, baselines)
    measured = merge_memory(parts, work / "merge" / "out", args.shard_size)
    lines = [MERGE_HEADING, "",
             f"The stage's last step merges its tasks' {count:,} parts into the hive tree of rows and timings.parquet. "
             "The parts of the run above, rebuilt from its rows, merged each way in a fresh process (RSS added over "
             f"the process after its imports; git {git_revision(REPO)}):",
             "", "| merge | RSS added (MiB) | seconds |", "|---|---|---|"]
    lines += [f"| {m['way']} | {m['added_mib']:.0f} | {m['seconds']:.1f} |" for m in measured]
    lines += ["", "The code stage merges partition by partition (method, data set), each written in row groups as its "
              "parts are read (semlic.pipeline.stages.code.merge_parts, semlic.results.merge_partitioned).", "",
              "    OMP_NUM_THREADS=1 .venv/bin/python "
              f"benchmarks/load.py --merge-only --work {args.work} --shard-size {args.shard_size}", ""]
    text = out.read_text() if out.is_file() else ""
    if MERGE_HEADING in text:
        text = text[:text.index(MERGE_HEADING)]
    out.write_text(text.rstrip("\n") + "\n\n" + "\n".join(lines))


if __name__ == "__main__":
    sys.exit(main())
