"""The GPU study's step runner: ``python scripts/gpu_study/run.py STEP --workdir W --config CFG``.

Runs on the GPU machine with torch alone (no Ray, Prefect or DVC), and on a CPU for the dry
run. Every step is resumable and skips what is already done, so a device call is always the
same command (``call.sh``): ``auto`` runs the unfinished steps in order until the call's
deadline, each training step fitted to its time allocation; ``pack`` gathers the results.

Steps (in order; ``auto`` runs them all):

=============  ==================================================================================
unpack         every data pack present (datapack.py) -> W/data/<dataset>/<split>/{images,labels}
segnet         PSPNet: a short probe measures images/s, the run's steps are fitted to
               ``segnet.budget_s``, then ``semlic train-segnet --resume --time-limit``
segment-train  ``semlic segment`` of the train split (the maps train-base learns from)
bench-train    base-model training throughput in a few settings + kernel profile (workers.py);
               the fastest of amp / channels_last is used for training
base           DSSLIC CompNet + FineNet (+ discriminators), paper size: a probe chunk, the total
               iterations fitted to ``base.budget_s`` (at most ``epochs``), chunks of
               ``semlic.training.train_base(stop_after=...)`` sized to the time left
segment-test   ``semlic segment`` of CamVid test and Kodak (mIoU on CamVid test)
pairs          ``semlic smap-pairs`` on the train split (EDMS)
smapnet        SMapNet, fitted to ``smapnet.budget_s`` like base (train_smapnet(stop_after=...))
code           DSSLIC, EDMS, EDMS without SMapNet on CamVid test and Kodak at the paper's
               residual QPs: ``code.workers`` processes, one part per (dataset, method, image)
speed          the clean timing pass: encode / decode per Kodak image on the GPU (network and
               entropy coding apart) and decode on the CPU
cpu-paper      (optional, ``cpu_paper_size.enabled``) CPU decode of the paper-size networks with
               random weights: the cost of a trained model's decode on a machine without a GPU
baselines      (in the background of ``auto``, niced, on the idle CPU cores) JPEG, JPEG 2000,
               WebP, AVIF, JPEG XL, HEVC 4:4:4 over their sweeps, shard by shard
pack           W/results (rows as a hive tree, logs, speed, provenance) -> OUT/study_results.tar.gz
=============  ==================================================================================
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(HERE))

import yaml  # noqa: E402

import datapack  # noqa: E402
import workers  # noqa: E402

STEPS = ("unpack", "segnet", "segment-train", "bench-train", "base", "segment-test", "pairs", "smapnet", "code", "speed",
         "cpu-paper")
MARGIN_S = 20          # kept free at the end of a step's slot (saving state, process exit)
SPAWN_S = 25           # loading data and models before a training chunk starts its loop


# --- context ------------------------------------------------------------------------------------
class Study:
    def __init__(self, workdir: str, config: str, deadline: float | None, packs: str | None):
        self.w = Path(workdir).resolve()
        self.config_path = Path(config).resolve()
        self.cfg = yaml.safe_load(self.config_path.read_text())
        self.deadline = deadline or time.time() + 10 * 24 * 3600
        self.packs = Path(packs).resolve() if packs else None
        self.device = self.cfg.get("device", "cuda")
        self.git_rev = os.environ.get("SEMLIC_GIT_REV") or _local_git_rev()
        (self.w / "logs").mkdir(parents=True, exist_ok=True)
        self.status_path = self.w / "status.json"
        self.status = json.loads(self.status_path.read_text()) if self.status_path.is_file() else {"steps": {}}

    # paths
    def data(self, dataset: str, split: str) -> Path:
        return self.w / "data" / dataset / split

    @property
    def segnet_path(self) -> Path:
        return self.w / "models" / "segnet.safetensors"

    @property
    def base_dir(self) -> Path:
        return self.w / "base"

    @property
    def smapnet_dir(self) -> Path:
        return self.w / "smapnet"

    def models(self) -> dict:
        return {"base": str(self.base_dir / "base.safetensors"), "segnet": str(self.segnet_path),
                "smapnet": str(self.smapnet_dir / "smapnet.safetensors")}

    # time
    def left(self) -> float:
        return self.deadline - time.time()

    # status
    def note(self, step: str, **values) -> None:
        entry = self.status["steps"].setdefault(step, {})
        for key, value in values.items():
            if key.endswith("_add"):
                entry[key[:-4]] = entry.get(key[:-4], 0.0) + value
            else:
                entry[key] = value
        workers.write_json(self.status_path, self.status)

    def spent(self, step: str) -> float:
        return float(self.status["steps"].get(step, {}).get("spent_s", 0.0))

    def log(self, message: str) -> None:
        line = f"[{time.strftime('%H:%M:%S')} {self.left():6.0f}s left] {message}"
        print(line, flush=True)
        with open(self.w / "logs" / "runner.log", "a") as fh:
            fh.write(line + "\n")

    # processes
    def env(self) -> dict:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([str(REPO), str(HERE)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
        env.setdefault("PYTHONUNBUFFERED", "1")
        return env

    def run(self, step: str, args: list[str], timeout: float, nice: int = 0) -> int:
        """Run a command, its output appended to logs/<step>.log; killed (process group) at ``timeout``."""
        log_path = self.w / "logs" / f"{step}.log"
        self.log(f"{step}: $ {' '.join(args)}  (timeout {timeout:.0f} s)")
        started = time.time()
        with open(log_path, "a") as log:
            log.write(f"\n$ {' '.join(args)}\n")
            log.flush()
            proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=self.env(), cwd=str(REPO),
                                    start_new_session=True, preexec_fn=(lambda: os.nice(nice)) if nice else None)
            try:
                code = proc.wait(timeout=max(1.0, timeout))
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                code = -9
        tail = log_path.read_text().splitlines()[-3:]
        self.log(f"{step}: exit {code} after {time.time() - started:.0f} s; " + " | ".join(t[-160:] for t in tail))
        return code

    def worker(self, step: str, function: str, kwargs: dict, timeout: float, nice: int = 0) -> int:
        spec = self.w / "logs" / f"{step}.job.json"
        workers.write_json(spec, {"function": function, "kwargs": kwargs})
        return self.run(step, [sys.executable, str(HERE / "run.py"), "worker", str(spec)], timeout, nice)

    def semlic(self, step: str, args: list[str], timeout: float) -> int:
        return self.run(step, [sys.executable, "-m", "semlic", *args], timeout)


def _local_git_rev() -> str:
    from semlic.results import git_revision

    rev = git_revision(REPO)
    if rev != "unknown":
        dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True).stdout.strip()
        rev += "+dirty" if dirty else ""
    return rev


def _train_images(st: Study) -> int:
    return len(list((st.data("camvid", "train") / "images").glob("*.png")))


def _iteration_of(state: Path) -> int:
    if not state.is_file():
        return 0
    from safetensors import safe_open

    with safe_open(str(state), framework="pt") as fh:
        return int((fh.metadata() or {}).get("iteration", 0))


# --- steps --------------------------------------------------------------------------------------
def step_unpack(st: Study) -> bool:
    if st.packs is None or not st.packs.is_dir():
        st.log("unpack: no pack folder")
        return True
    for tar in sorted(st.packs.glob("*.tar")):
        started = time.time()
        with tarfile.open(tar) as t:
            index = json.loads(t.extractfile(datapack.INDEX).read())
        datapack.unpack(tar, st.w / "data" / index["dataset"], workers=int(st.cfg.get("unpack_workers", 8)))
        st.log(f"unpack: {tar.name}: {len(index['images'])} images of {index['dataset']}/{index['split']} "
               f"({time.time() - started:.1f} s)")
    return True


def _segnet_config(st: Study, iterations: int) -> Path:
    scfg = st.cfg["segnet"]
    config = {**scfg["config"], "iterations": int(iterations), "epochs": None}
    path = st.w / "models" / "segnet.config.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config, sort_keys=True))
    return path


def step_segnet(st: Study) -> bool:
    if st.segnet_path.is_file():
        return True
    scfg = st.cfg["segnet"]
    prepared = st.w / "data" / "camvid"
    if not (prepared / "train" / "labels").is_dir():
        st.log("segnet: no CamVid train split (carry build/gpu-data/camvid-train.tar)")
        return False
    plan_path = st.w / "models" / "segnet.plan.json"
    if not plan_path.is_file():
        probe_steps = int(scfg.get("probe_steps", 30))
        probe = st.w / "probe" / "segnet.safetensors"
        shutil.rmtree(probe.parent, ignore_errors=True)
        started = time.time()
        config = _segnet_config(st, probe_steps)
        st.semlic("segnet", ["train-segnet", "--config", str(config), "--data", str(prepared), "--out", str(probe),
                             "--device", st.device, "--no-progress"], timeout=min(300, st.left()))
        import pandas as pd

        log = pd.read_parquet(probe.with_name("segnet.train_log.parquet"))
        ips = float(log["images_per_s"].iloc[1:].median() if len(log) > 1 else log["images_per_s"].iloc[-1])
        st.note("segnet", spent_s_add=time.time() - started, probe_images_per_s=ips)
        batch = int(scfg["config"].get("batch_size", 8))
        available = max(10.0, float(scfg["budget_s"]) - st.spent("segnet") - SPAWN_S)
        iterations = int(available * ips / batch)
        max_epochs = scfg.get("max_epochs")
        if max_epochs:
            iterations = min(iterations, int(max_epochs) * max(1, _train_images(st) // batch))
        iterations = max(iterations, int(scfg.get("min_steps", 50)))
        workers.write_json(plan_path, {"iterations": iterations, "probe_images_per_s": ips, "batch_size": batch,
                                       "epochs": iterations * batch / max(1, _train_images(st))})
        st.log(f"segnet: probe {ips:.1f} images/s -> {iterations} steps")
    plan = json.loads(plan_path.read_text())
    config = _segnet_config(st, plan["iterations"])
    limit = min(float(scfg["budget_s"]) - st.spent("segnet") + 30, st.left() - MARGIN_S - SPAWN_S)
    if limit < 20:
        return False
    started = time.time()
    st.semlic("segnet", ["train-segnet", "--config", str(config), "--data", str(st.w / "data" / "camvid"),
                         "--out", str(st.segnet_path), "--device", st.device, "--resume", "--time-limit",
                         f"{limit:.0f}", "--no-progress"], timeout=limit + SPAWN_S + 60)
    st.note("segnet", spent_s_add=time.time() - started)
    return st.segnet_path.is_file()


def _segment(st: Study, step: str, dataset: str, split: str) -> bool:
    out = st.w / "segs" / dataset / split
    if (out / "segments.parquet").is_file():
        return True
    if not (st.data(dataset, split) / "images").is_dir():
        st.log(f"{step}: no {dataset}/{split} data (carry its pack)")
        return False
    if st.left() < 60 or not st.segnet_path.is_file():
        return False
    scfg = st.cfg.get("segment", {})
    st.semlic(step, ["segment", "--model", str(st.segnet_path), "--data", str(st.w / "data" / dataset), "--split",
                     split, "--out", str(out), "--device", st.device, "--batch-size", str(scfg.get("batch_size", 8)),
                     "--num-workers", str(scfg.get("num_workers", 0))], timeout=st.left() - MARGIN_S)
    return (out / "segments.parquet").is_file()


def step_segment_train(st: Study) -> bool:
    return _segment(st, "segment-train", "camvid", "train")


def step_segment_test(st: Study) -> bool:
    done = True
    for dataset in ("camvid", "kodak"):
        done &= _segment(st, "segment-test", dataset, "test")
    return done


def _base_config(st: Study, total: int | None = None) -> dict:
    config = dict(st.cfg["base"]["config"])
    choice = st.w / "bench" / "train_bench.json"
    if st.cfg.get("bench_train", {}).get("apply", True) and choice.is_file():
        config.update(json.loads(choice.read_text())["best"])
    if total is not None:
        config["iterations"] = int(total)
    return config


def step_bench_train(st: Study) -> bool:
    bcfg = st.cfg.get("bench_train", {})
    out = st.w / "bench"
    if not bcfg.get("enabled", False) or (out / "train_bench.json").is_file():
        return True
    if (st.base_dir / "train_state.safetensors").is_file():
        return True  # training has begun with the settings it has
    if st.left() < float(bcfg.get("estimate_s", 60)) + 60:
        return False
    variants = bcfg.get("variants")
    started = time.time()
    st.worker("bench-train", "bench_train", {
        "config": dict(st.cfg["base"]["config"]), "images": str(st.data("camvid", "train") / "images"),
        "segs": str(st.w / "segs" / "camvid" / "train"), "device": st.device, "out": str(out),
        "iterations": int(bcfg.get("iterations", 10)), "warmup": int(bcfg.get("warmup", 3)),
        "variants": variants}, timeout=min(st.left() - MARGIN_S, float(bcfg.get("estimate_s", 60)) * 3))
    st.note("bench-train", spent_s_add=time.time() - started)
    return True


def _fit_chunks(st: Study, step: str, section: dict, out_dir: Path, function: str, kwargs_for, per_epoch: int) -> bool:
    """Probe, fit the total iterations to the step's budget, then train in chunks until time is up."""
    plan_path = out_dir / "plan.json"
    state = out_dir / "train_state.safetensors"
    batch = int(section["config"].get("batch_size", 8))
    epochs_total = int(section["config"].get("epochs", 150)) * per_epoch
    if section["config"].get("iterations"):
        epochs_total = int(section["config"]["iterations"])
    if not plan_path.is_file():
        probe = int(section.get("probe_iterations", 20))
        if st.left() < SPAWN_S + MARGIN_S + 30:
            return False
        started = time.time()
        code = st.worker(step, function, {**kwargs_for(epochs_total), "stop_after": probe}, timeout=st.left() - MARGIN_S)
        st.note(step, spent_s_add=time.time() - started)
        if code != 0 or not (out_dir / "chunks.jsonl").is_file():
            st.log(f"{step}: the probe failed (logs/{step}.log)")
            return False
        chunks = [json.loads(line) for line in (out_dir / "chunks.jsonl").read_text().splitlines()]
        ips = chunks[-1]["steady_images_per_s"]
        ips = chunks[-1]["images_per_s"] if not ips or math.isnan(ips) else ips
        available = max(0.0, float(section["budget_s"]) - st.spent(step))
        total = min(epochs_total, _iteration_of(state) + int(available * ips / batch))
        total = max(total, _iteration_of(state) + 1)
        workers.write_json(plan_path, {"total_iterations": total, "probe_images_per_s": ips, "batch_size": batch,
                                       "epochs": total / per_epoch, "epochs_wanted": epochs_total / per_epoch,
                                       "budget_s": section["budget_s"]})
        st.log(f"{step}: probe {ips:.1f} images/s -> {total} iterations ({total / per_epoch:.1f} epochs)")
    plan = json.loads(plan_path.read_text())
    total = int(plan["total_iterations"])
    while True:
        done = _iteration_of(state)
        if done >= total:
            break
        chunks = [json.loads(line) for line in (out_dir / "chunks.jsonl").read_text().splitlines()]
        ips = [c["images_per_s"] for c in chunks if c["iterations"] > 0][-1]
        slot = min(float(section["budget_s"]) - st.spent(step) + 60, st.left() - MARGIN_S - SPAWN_S)
        iterations = min(total - done, int(slot * ips / batch * 0.95))
        if iterations < int(section.get("min_chunk", 20)) and iterations < total - done:
            st.log(f"{step}: {total - done} iterations left, no time in this call")
            return False
        started = time.time()
        code = st.worker(step, function, {**kwargs_for(total), "stop_after": iterations},
                         timeout=min(st.left() - 5, iterations * batch / ips * 1.3 + SPAWN_S + 60))
        st.note(step, spent_s_add=time.time() - started)
        if code != 0:
            return False
    model = out_dir / ("base.safetensors" if step == "base" else "smapnet.safetensors")
    if not model.is_file():  # a run that ended exactly at its total writes the model itself
        st.worker(step, function, {**kwargs_for(total), "stop_after": 0}, timeout=st.left() - MARGIN_S)
    return model.is_file()


def step_base(st: Study) -> bool:
    if (st.base_dir / "base.safetensors").is_file():
        return True
    segs = st.w / "segs" / "camvid" / "train"
    if not (segs / "segments.parquet").is_file():
        return False
    batch = int(st.cfg["base"]["config"].get("batch_size", 8))
    per_epoch = max(1, math.ceil(_train_images(st) / batch))

    def kwargs(total):
        return {"config": _base_config(st, total), "images": str(st.data("camvid", "train") / "images"),
                "segs": str(segs), "out": str(st.base_dir), "device": st.device}

    return _fit_chunks(st, "base", st.cfg["base"], st.base_dir, "base_chunk", kwargs, per_epoch)


def step_pairs(st: Study) -> bool:
    out = st.w / "pairs"
    if (out / "pairs.parquet").is_file():
        return True
    if not (st.base_dir / "base.safetensors").is_file() or st.left() < 60:
        return False
    st.semlic("pairs", ["smap-pairs", "--model", str(st.base_dir / "base.safetensors"), "--segnet", str(st.segnet_path),
                        "--data", str(st.w / "data" / "camvid"), "--split", "train", "--segs",
                        str(st.w / "segs" / "camvid" / "train"), "--out", str(out), "--device", st.device,
                        "--no-progress"], timeout=st.left() - MARGIN_S)
    return (out / "pairs.parquet").is_file()


def step_smapnet(st: Study) -> bool:
    if (st.smapnet_dir / "smapnet.safetensors").is_file():
        return True
    if not (st.w / "pairs" / "pairs.parquet").is_file():
        return False
    batch = int(st.cfg["smapnet"]["config"].get("batch_size", 32))
    pairs = len(list((st.w / "pairs" / "logits").glob("*.safetensors")))
    per_epoch = max(1, math.ceil(pairs / batch))

    def kwargs(total):
        return {"config": {**st.cfg["smapnet"]["config"], "iterations": int(total)}, "pairs": str(st.w / "pairs"),
                "out": str(st.smapnet_dir), "device": st.device}

    return _fit_chunks(st, "smapnet", st.cfg["smapnet"], st.smapnet_dir, "smapnet_chunk", kwargs, per_epoch)


def _code_jobs(st: Study, section: dict) -> list[dict]:
    jobs = []
    for entry in section["datasets"]:
        images = sorted((st.data(entry["dataset"], entry.get("split", "test")) / "images").glob("*.png"))
        jobs += [{"dataset": entry["dataset"], "image": str(p)} for p in images[: entry.get("limit")]]
    return jobs


def _missing_parts(st: Study, jobs: list[dict], methods: list[str]) -> list[dict]:
    parts = st.w / "coded" / "parts"
    return [j for j in jobs if any(not (parts / j["dataset"] / m / f"{Path(j['image']).stem}.parquet").is_file()
                                   for m in methods)]


def step_code(st: Study) -> bool:
    ccfg = st.cfg["code"]
    models = st.models()
    methods = list(ccfg["methods"])
    needed = [models["base"], models["segnet"]] + ([models["smapnet"]] if "edms" in methods else [])
    if not all(Path(p).is_file() for p in needed):
        return False
    jobs = _code_jobs(st, ccfg)
    if {j["dataset"] for j in jobs} != {e["dataset"] for e in ccfg["datasets"]}:
        st.log("code: a test set is missing (carry camvid-test.tar and kodak.tar)")
        return False
    missing = _missing_parts(st, jobs, methods)
    if not missing:
        return True
    if st.left() < 90:
        return False
    n = max(1, min(int(ccfg.get("workers", 1)), len(missing)))
    # biggest images first, dealt round robin, so the workers finish together
    missing.sort(key=lambda j: (-Path(j["image"]).stat().st_size, j["image"]))
    shards = [missing[i::n] for i in range(n)]
    from semlic.results import params_hash

    run_hash = params_hash({k: ccfg[k] for k in ("methods", "residual_qps", "chroma", "lossless") if k in ccfg})
    deadline = st.deadline - MARGIN_S - float(ccfg.get("image_s", 30))
    procs = []
    started = time.time()
    for index, shard in enumerate(shards):
        spec = st.w / "logs" / f"code-{index:02d}.job.json"
        workers.write_json(spec, {"function": "code", "kwargs": {
            "jobs": shard, "models_paths": models, "cfg": ccfg, "parts_dir": str(st.w / "coded" / "parts"),
            "files_dir": str(st.w / "coded" / "files") if ccfg.get("write_files", True) else None,
            "device": st.device, "deadline": deadline, "git_rev": st.git_rev, "params_hash": run_hash}})
        log = open(st.w / "logs" / f"code-{index:02d}.log", "a")
        env = st.env()
        env["OMP_NUM_THREADS"] = "1"
        procs.append((subprocess.Popen([sys.executable, str(HERE / "run.py"), "worker", str(spec)], stdout=log,
                                       stderr=subprocess.STDOUT, env=env, cwd=str(REPO), start_new_session=True), log))
    st.log(f"code: {len(missing)} images to code with {methods} in {n} processes")
    failed = 0
    for proc, log in procs:
        try:
            failed += proc.wait(timeout=max(1.0, st.left() - MARGIN_S / 2)) != 0
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            failed += 1
        log.close()
    left = _missing_parts(st, jobs, methods)
    st.note("code", spent_s_add=time.time() - started, images_left=len(left), failed_workers=failed)
    st.log(f"code: {len(jobs) - len(left)} of {len(jobs)} images coded ({failed} workers failed; "
           f"see logs/code-*.log)")
    return not left


def step_speed(st: Study) -> bool:
    out = st.w / "speed"
    if (out / "speed.json").is_file():
        return True
    scfg = st.cfg["speed"]
    models = st.models()
    if not all(Path(p).is_file() for p in models.values()):
        return False
    images = sorted((st.data("kodak", "test") / "images").glob("*.png"))[: scfg.get("images")]
    if not images or st.left() < float(scfg.get("estimate_s", 90)):
        return False
    started = time.time()
    st.worker("speed", "speed", {"images": [str(p) for p in images], "models_paths": models, "cfg": scfg,
                                 "device": st.device, "out": str(out)}, timeout=st.left() - MARGIN_S)
    st.note("speed", spent_s_add=time.time() - started)
    return (out / "speed.json").is_file()


def step_cpu_paper(st: Study) -> bool:
    """Optional (``cpu_paper_size.enabled``): CPU decode time of the paper-size networks, random weights."""
    ccfg = st.cfg.get("cpu_paper_size") or {}
    out = st.w / "speed"
    if not ccfg.get("enabled") or (out / "cpu_paper_size.parquet").is_file():
        return True
    images = sorted((st.data("kodak", "test") / "images").glob("*.png"))[: int(ccfg.get("images", 1))]
    if not images or st.left() < float(ccfg.get("estimate_s", 180)):
        return False
    started = time.time()
    st.worker("cpu-paper", "cpu_paper_size", {
        "images": [str(p) for p in images], "segnet_model": ccfg.get("segnet_model") or st.cfg["segnet"]["config"]["model"],
        "label_nc": int(st.cfg["base"]["config"]["label_nc"]), "threads": int(ccfg.get("threads", 2)),
        "out": str(out)}, timeout=st.left() - MARGIN_S)
    st.note("cpu-paper", spent_s_add=time.time() - started)
    return (out / "cpu_paper_size.parquet").is_file()


STEP_FUNCTIONS = {"unpack": step_unpack, "segnet": step_segnet, "segment-train": step_segment_train,
                  "bench-train": step_bench_train, "base": step_base, "segment-test": step_segment_test,
                  "pairs": step_pairs, "smapnet": step_smapnet, "code": step_code, "speed": step_speed,
                  "cpu-paper": step_cpu_paper}


# --- background baselines -----------------------------------------------------------------------
def _baseline_jobs(st: Study) -> list[dict]:
    bcfg = st.cfg.get("baselines") or {}
    jobs = []
    for entry in bcfg.get("datasets", []):
        images = sorted((st.data(entry["dataset"], entry.get("split", "test")) / "images").glob("*.png"))
        jobs += [{"dataset": entry["dataset"], "image": str(p)} for p in images[: entry.get("limit")]]
    return jobs


def _baselines_done(st: Study) -> bool:
    bcfg = st.cfg.get("baselines") or {}
    size = int(bcfg.get("shard_size", 24))
    for entry in bcfg.get("datasets", []):
        images = sorted((st.data(entry["dataset"], entry.get("split", "test")) / "images").glob("*.png"))
        images = images[: entry.get("limit")]
        shards = math.ceil(len(images) / size) if images else 1
        if not all((st.w / "baselines" / entry["dataset"] / f"shard-{i:04d}.parquet").is_file() for i in range(shards)):
            return False
    return True


def start_baselines(st: Study):
    bcfg = st.cfg.get("baselines") or {}
    jobs = _baseline_jobs(st)
    if not jobs or _baselines_done(st):
        return None
    spec = st.w / "logs" / "baselines.job.json"
    workers.write_json(spec, {"function": "baselines", "kwargs": {
        "jobs": jobs, "cfg": bcfg, "parts_dir": str(st.w / "baselines"),
        "deadline": st.deadline - MARGIN_S - float(bcfg.get("shard_s", 60)), "git_rev": st.git_rev}})
    log = open(st.w / "logs" / "baselines.log", "a")
    env = st.env()
    env["OMP_NUM_THREADS"] = "1"
    nice = int(bcfg.get("nice", 10))
    proc = subprocess.Popen([sys.executable, str(HERE / "run.py"), "worker", str(spec)], stdout=log,
                            stderr=subprocess.STDOUT, env=env, cwd=str(REPO), start_new_session=True,
                            preexec_fn=(lambda: os.nice(nice)) if nice else None)
    st.log(f"baselines: {len(jobs)} images in the background ({bcfg.get('workers', 1)} processes, nice {nice})")
    return proc, log


def finish_baselines(st: Study, handle) -> None:
    if handle is None:
        return
    proc, log = handle
    try:
        proc.wait(timeout=max(1.0, st.left() - MARGIN_S / 2))
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    log.close()
    st.log(f"baselines: {'complete' if _baselines_done(st) else 'not complete (continues in the next call)'}")


# --- auto and pack ------------------------------------------------------------------------------
def auto(st: Study, only: list[str] | None = None) -> bool:
    st.log(f"auto: workdir {st.w}, config {st.config_path.name}, device {st.device}, git {st.git_rev}")
    try:
        step_unpack(st)
    except Exception as exc:
        st.log(f"unpack: failed ({exc})")
    background = start_baselines(st)
    complete = True
    for name in STEPS[1:]:
        if only and name not in only:
            continue
        if st.status["steps"].get(name, {}).get("done"):
            continue
        try:
            ok = STEP_FUNCTIONS[name](st)
        except Exception:  # keep going to the pack: what is done is kept, the next call retries
            import traceback

            st.log(f"{name}: failed\n{traceback.format_exc()}")
            ok = False
        st.note(name, done=bool(ok))
        if not ok:
            complete = False
            if name not in ("segment-test",):  # later steps depend on this one
                st.log(f"auto: stopped at {name} (not finished; the next call resumes it)")
                break
    finish_baselines(st, background)
    complete = complete and _baselines_done(st) and not only
    st.log("STUDY COMPLETE" if complete else f"steps {only} run" if only else "study not complete: make the next call")
    return complete


def _provenance(st: Study) -> dict:
    import platform

    info = {"git_rev": st.git_rev, "config": st.cfg, "python": platform.python_version(),
            "platform": platform.platform(), "cpus": os.cpu_count(), "written": time.strftime("%Y-%m-%d %H:%M:%S %Z")}
    try:
        import torch

        info["torch"] = torch.__version__
        info["gpu"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    except Exception as exc:  # pragma: no cover
        info["torch"] = f"unavailable: {exc}"
    try:
        import PIL
        import pillow_heif
        import pillow_jxl  # noqa: F401
        from importlib.metadata import version

        info["codecs"] = {"Pillow": PIL.__version__, "pillow-heif": pillow_heif.__version__,
                          "libheif": pillow_heif.libheif_version(), "pillow-jxl-plugin": version("pillow-jxl-plugin")}
    except Exception as exc:  # pragma: no cover
        info["codecs"] = f"unavailable: {exc}"
    return info


def pack(st: Study, out: Path, models: bool = False, part_mib: int = 15) -> Path:
    """W/results/ (rows, logs, measurements) -> OUT/study_results.tar.gz; optionally the models, fp16, split."""
    from semlic import results

    res = st.w / "results"
    shutil.rmtree(res, ignore_errors=True)
    res.mkdir(parents=True)
    rows = []
    for part in sorted((st.w / "coded" / "parts").glob("*/*/*.parquet")) + sorted((st.w / "baselines").glob("*/*.parquet")):
        rows += results.read_rows(part)
    if rows:
        results.write_partitioned(rows, res / "rows")
    copies = {"models/segnet.train_log.parquet": "logs/segnet_train_log.parquet", "models/segnet.plan.json": "logs/segnet_plan.json",
              "probe/segnet.train_log.parquet": "logs/segnet_probe_log.parquet",
              "base/train_log.parquet": "logs/base_train_log.parquet", "base/chunks.jsonl": "logs/base_chunks.jsonl",
              "base/plan.json": "logs/base_plan.json", "base/base.json": "models/base.json",
              "smapnet/train_log.parquet": "logs/smapnet_train_log.parquet", "smapnet/chunks.jsonl": "logs/smapnet_chunks.jsonl",
              "smapnet/plan.json": "logs/smapnet_plan.json", "smapnet/smapnet.json": "models/smapnet.json",
              "models/segnet.json": "models/segnet.json", "pairs/pairs.parquet": "segmentation/pairs.parquet",
              "pairs/pairs.json": "segmentation/pairs.json", "segs/camvid/test/segments.parquet": "segmentation/camvid_test.parquet",
              "segs/camvid/train/segments.parquet": "segmentation/camvid_train.parquet",
              "segs/kodak/test/segments.parquet": "segmentation/kodak_test.parquet",
              "speed/speed.parquet": "speed/speed.parquet", "speed/speed.json": "speed/speed.json",
              "speed/cpu_paper_size.parquet": "speed/cpu_paper_size.parquet",
              "bench/train_bench.json": "speed/train_bench.json", "status.json": "status.json"}
    for source, target in copies.items():
        if (st.w / source).is_file():
            (res / target).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(st.w / source, res / target)
    (res / "logs").mkdir(exist_ok=True)
    for log in sorted((st.w / "logs").glob("*.log")):
        text = log.read_text(errors="replace")
        (res / "logs" / log.name).write_text(text[-200_000:])
    workers.write_json(res / "provenance.json", _provenance(st))
    out.mkdir(parents=True, exist_ok=True)
    tar_path = out / "study_results.tar.gz"
    with tarfile.open(tar_path, "w:gz") as tar:
        tar.add(res, arcname="study_results")
    st.log(f"pack: {len(rows)} rows -> {tar_path} ({tar_path.stat().st_size / 2**20:.2f} MiB)")
    if models:
        _pack_models(st, out, part_mib)
    return tar_path


def _pack_models(st: Study, out: Path, part_mib: int) -> None:
    """The three models as fp16 safetensors in one tar, split into parts of ``part_mib`` MiB (cat to join)."""
    import io

    import torch
    from safetensors.torch import load_file, save

    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name, path in st.models().items():
            if not Path(path).is_file():
                continue
            from safetensors import safe_open

            with safe_open(path, framework="pt") as fh:
                meta = fh.metadata() or {}
            tensors = {k: (v.half() if v.is_floating_point() else v) for k, v in load_file(path).items()}
            data = save(tensors, metadata={**meta, "semlic_study_note": "float16 copy: fingerprints differ"})
            member = tarfile.TarInfo(f"{name}.fp16.safetensors")
            member.size = len(data)
            tar.addfile(member, io.BytesIO(data))
    data, size = buffer.getvalue(), part_mib << 20
    for index in range(0, len(data), size):
        (out / f"models.fp16.tar.part{index // size:02d}").write_bytes(data[index:index + size])
    st.log(f"pack: models {len(data) / 2**20:.1f} MiB in {math.ceil(len(data) / size)} parts")
    del torch


# --- command line -------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("step", choices=("auto", "pack", "worker") + STEPS)
    parser.add_argument("job", nargs="?", help="worker: the job file")
    parser.add_argument("--workdir", default=str(REPO / "build" / "gpu-run"))
    parser.add_argument("--config", default=str(HERE / "study.yaml"))
    parser.add_argument("--packs", default=str(REPO / "build" / "gpu-data"), help="folder of data packs")
    parser.add_argument("--deadline", type=float, help="absolute time (epoch seconds) the call must end by")
    parser.add_argument("--budget-s", type=float, help="seconds from now the call must end by")
    parser.add_argument("--out", default=os.environ.get("OUT", str(REPO / "build" / "gpu-out")))
    parser.add_argument("--models", action="store_true", help="pack: also the models, fp16, in parts")
    parser.add_argument("--only", action="append", help="auto: only these steps")
    args = parser.parse_args(argv)
    if args.step == "worker":
        job = json.loads(Path(args.job).read_text())
        result = getattr(workers, job["function"])(**job["kwargs"])
        print(json.dumps(result, default=str, indent=1)[:4000])
        return 0
    deadline = args.deadline or (time.time() + args.budget_s if args.budget_s else None)
    st = Study(args.workdir, args.config, deadline, args.packs)
    if args.step == "auto":
        return 0 if auto(st, args.only) else 10
    if args.step == "pack":
        pack(st, Path(args.out), models=args.models)
        return 0
    if args.step == "unpack":
        return 0 if step_unpack(st) else 1
    ok = STEP_FUNCTIONS[args.step](st)
    st.note(args.step, done=bool(ok))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
