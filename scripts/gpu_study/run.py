"""The GPU study's step runner: ``python scripts/gpu_study/run.py STEP --workdir W --config CFG``.

Runs on the GPU machine with torch alone (no Ray, Prefect or DVC), and on a CPU for the dry
run. Every step is resumable and skips what is already done, so a device call is always the
same command (``call.sh``): ``auto`` runs the unfinished steps in order until the call's
deadline, each training step fitted to its time allocation; ``pack`` gathers the results.

What is coded comes from the method registry (:mod:`semlic.methods`): ``code.methods`` names
registered methods, each with its params section (qualities and options, as the pipeline's code
stage reads them: :meth:`semlic.code_stage.MethodPlan.from_section`); none given: every
registered method at its defaults. The models a method needs are its ``models`` (decoder) and
``encoder_models`` (its segmenter), found by registered name among the model files of the
study's models folders (``W/models`` and ``models_dirs``; :class:`semlic.model_files.ModelStore`).
A training step runs only when a chosen method needs the model it trains (directly, or to make
the training data of another) and no models folder holds it yet.

Steps (in order; ``auto`` runs them all):

=============  ==================================================================================
unpack         every data pack present (datapack.py) -> W/data/<dataset>/<split>/{images,labels}
segnet         PSPNet (model ``pspnet``): a short probe measures images/s, the run's steps are
               fitted to ``segnet.budget_s``, then ``semlic train-segnet --out W/models/segnet
               --minutes M`` (resumes by default)
segment-train  ``semlic segment`` of the train split (the maps DSSLIC learns from)
bench-train    DSSLIC training throughput in a few settings + kernel profile (workers.py);
               the fastest of amp / channels_last is used for training
dsslic         DSSLIC CompNet + FineNet (+ discriminators), model ``dsslic``: a probe chunk, the
               total iterations fitted to ``dsslic.budget_s`` (at most ``epochs``), chunks of
               ``semlic.methods.dsslic.training.train_dsslic(stop_after=...)`` sized to the time left
segment-test   ``semlic segment`` of every data set the code step codes (mIoU on CamVid test)
pairs          ``semlic smap-pairs`` on the train split (SMapNet's training data)
smapnet        SMapNet (model ``smapnet``), fitted to ``smapnet.budget_s`` like dsslic
               (``semlic.methods.edms.training.train_smapnet(stop_after=...)``)
code           every chosen method on every data set of ``code.datasets`` at its qualities
               (``semlic.code_stage.code_method``): ``code.workers`` processes, one part per
               (dataset, method, image)
speed          the clean timing pass: ``Method.encode`` / ``Method.decode`` per Kodak image on the
               GPU (network and entropy coding apart) and decode on the CPU
cpu-paper      (optional, ``cpu_paper_size.enabled``) CPU decode with every network a method's
               decoder runs at the paper's size, random weights: the cost of a trained model's
               decode on a machine without a GPU
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

STEPS = ("unpack", "segnet", "segment-train", "bench-train", "dsslic", "segment-test", "pairs", "smapnet", "code",
         "speed", "cpu-paper")
MARGIN_S = 20          # kept free at the end of a step's slot (saving state, process exit)
SPAWN_S = 25           # loading data and models before a training chunk starts its loop

#: The training steps: the registered model each one trains (into ``W/models/<step>/``) and the
#: models its training data is made with (DSSLIC learns from PSPNet's maps of the train split;
#: SMapNet from pairs made with DSSLIC's compact image and PSPNet).
TRAINING = {"segnet": ("pspnet", ()), "dsslic": ("dsslic", ("pspnet",)), "smapnet": ("smapnet", ("dsslic", "pspnet"))}


# --- methods ------------------------------------------------------------------------------------
def method_sections(section: dict | None) -> dict:
    """A config section's ``methods`` as ``{registered name: params section}``, every name checked.

    ``methods`` may be a mapping (name -> params section: ``qualities``, ``segmentation``, the
    method's options; null: its defaults), a list of names (their defaults) or absent (every
    registered method at its defaults).
    """
    from semlic.code_stage import MethodPlan
    from semlic.methods import method_names

    chosen = (section or {}).get("methods")
    if chosen is None:
        chosen = list(method_names())
    if isinstance(chosen, str):
        chosen = [chosen]
    sections = {str(n): {} for n in chosen} if isinstance(chosen, (list, tuple)) else \
        {str(n): dict(s or {}) for n, s in chosen.items()}
    for name, params in sections.items():
        MethodPlan.from_section(name, params)  # unknown methods, options and qualities are refused here
    return sections


def timed_quality(name: str, params: dict, quality):
    """The one quality a timing step uses for method ``name``: ``quality`` may map method names to
    qualities; a single value serves every method whose quality knob takes it (a QP for the
    layered methods), and a method it does not fit (SMIC's (factor, map QP)) times the first
    quality of its section, else its first default."""
    from semlic.errors import ConfigError
    from semlic.methods import get_method

    method = get_method(name)
    if isinstance(quality, dict):
        if name in quality:
            return quality[name]
    else:
        try:
            method.parse_quality(quality)
            return quality
        except ConfigError:
            pass
    return (params.get("qualities") or method.default_qualities)[0]


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

    def train_dir(self, step: str) -> Path:
        """Where a training step writes its model, state and log: under the study's models folder."""
        return self.w / "models" / step

    @property
    def models_dirs(self) -> list[Path]:
        """W/models (what the study trains) and the config's ``models_dirs`` (models brought along)."""
        extra = [Path(p) if Path(p).is_absolute() else REPO / p for p in self.cfg.get("models_dirs") or []]
        return [self.w / "models", *extra]

    def store(self):
        """The model files of the models folders, by registered name (metadata only: nothing loaded)."""
        return workers.model_store([str(d) for d in self.models_dirs], "cpu")

    def model_path(self, name: str) -> Path | None:
        return self.store().path(name)

    # methods and the models they need
    def sections(self, step: str) -> dict:
        """``{method: params section}`` of ``code``, ``speed`` or ``cpu_paper_size`` (the latter two
        default to the code step's methods; ``quality`` sets the one quality they time)."""
        section = self.cfg.get(step) or {}
        sections = method_sections(section if step == "code" or section.get("methods") is not None
                                   else self.cfg.get("code"))
        if step != "code" and section.get("quality") is not None:
            sections = {name: {**params, "qualities": [timed_quality(name, params, section["quality"])]}
                        for name, params in sections.items()}
        return sections

    def plans(self, step: str) -> list:
        return workers.method_plans(self.sections(step))

    def wanted(self) -> set[str]:
        """Registered models the chosen methods use, and those their training data is made with."""
        names = {n for step in ("code", "speed") for plan in self.plans(step)
                 for n in workers.plan_models(plan, from_image=step == "speed")}
        needs = dict(TRAINING.values())
        stack = list(names)
        while stack:
            for name in needs.get(stack.pop(), ()):
                if name not in names:
                    names.add(name)
                    stack.append(name)
        return names

    def pending(self, step: str) -> bool:
        """Whether a training step has work: a chosen method needs its model and no folder holds it."""
        model = TRAINING[step][0]
        return model in self.wanted() and self.model_path(model) is None

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
    from semlic.model_files import read_metadata

    return int(read_metadata(state).get("iteration", 0))


def _read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []


def _measured_ips(record: dict) -> float:
    """Steady images/s of a measured chunk, else its overall images/s."""
    ips = record.get("steady_images_per_s")
    return record["images_per_s"] if ips is None or (isinstance(ips, float) and math.isnan(ips)) else ips


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


def _segnet_config(path: Path, section: dict, iterations: int) -> Path:
    config = {**section["config"], "iterations": int(iterations), "epochs": None}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config, sort_keys=True))
    return path


def step_segnet(st: Study) -> bool:
    if st.model_path("pspnet") is not None:
        return True
    if not st.pending("segnet"):
        st.log("segnet: no chosen method needs a PSPNet")
        return True
    scfg = st.cfg["segnet"]
    prepared = st.w / "data" / "camvid"
    out = st.train_dir("segnet")
    if not (prepared / "train" / "labels").is_dir():
        st.log("segnet: no CamVid train split (carry build/gpu-data/camvid-train.tar)")
        return False
    plan_path = out / "plan.json"
    batch = int(scfg["config"].get("batch_size", 8))
    if not plan_path.is_file():
        probe_steps = int(scfg.get("probe_steps", 30))
        probe = st.w / "probe" / "segnet"
        shutil.rmtree(probe, ignore_errors=True)
        started = time.time()
        config = _segnet_config(st.w / "probe" / "segnet.config.yaml", scfg, probe_steps)
        st.semlic("segnet", ["train-segnet", "--config", str(config), "--data", str(prepared), "--out", str(probe),
                             "--device", st.device, "--no-progress"], timeout=min(300, st.left()))
        if not (probe / "train_log.parquet").is_file():
            st.log("segnet: the probe failed (logs/segnet.log)")
            return False
        import pandas as pd

        measured = workers._ips_from_log(pd.read_parquet(probe / "train_log.parquet").to_dict("records"), batch, 0)
        ips = _measured_ips(measured)
        st.note("segnet", spent_s_add=time.time() - started, probe_images_per_s=ips)
        available = max(10.0, float(scfg["budget_s"]) - st.spent("segnet") - SPAWN_S)
        iterations = int(available * ips / batch)
        max_epochs = scfg.get("max_epochs")
        if max_epochs:
            iterations = min(iterations, int(max_epochs) * max(1, _train_images(st) // batch))
        iterations = max(iterations, int(scfg.get("min_steps", 50)))
        workers.write_json(plan_path, {"iterations": iterations, "probe_images_per_s": ips, "batch_size": batch,
                                       "epochs": iterations * batch / max(1, _train_images(st)), "probe": measured})
        st.log(f"segnet: probe {ips:.1f} images/s -> {iterations} steps")
    plan = json.loads(plan_path.read_text())
    config = _segnet_config(out / "config.yaml", scfg, plan["iterations"])
    limit = min(float(scfg["budget_s"]) - st.spent("segnet") + 30, st.left() - MARGIN_S - SPAWN_S)
    if limit < 20:
        return False
    started = time.time()
    st.semlic("segnet", ["train-segnet", "--config", str(config), "--data", str(prepared), "--out", str(out),
                         "--device", st.device, "--minutes", f"{limit / 60:.3f}", "--no-progress"],
              timeout=limit + SPAWN_S + 60)
    st.note("segnet", spent_s_add=time.time() - started)
    return st.model_path("pspnet") is not None


def _segment(st: Study, step: str, dataset: str, split: str) -> bool:
    out = st.w / "segs" / dataset / split
    if (out / "segments.parquet").is_file():
        return True
    if not (st.data(dataset, split) / "images").is_dir():
        st.log(f"{step}: no {dataset}/{split} data (carry its pack)")
        return False
    segnet = st.model_path("pspnet")
    if st.left() < 60 or segnet is None:
        return False
    scfg = st.cfg.get("segment", {})
    st.semlic(step, ["segment", "--model", str(segnet), "--data", str(st.w / "data" / dataset), "--split",
                     split, "--out", str(out), "--device", st.device, "--batch-size", str(scfg.get("batch_size", 8)),
                     "--num-workers", str(scfg.get("num_workers", 0))], timeout=st.left() - MARGIN_S)
    return (out / "segments.parquet").is_file()


def step_segment_train(st: Study) -> bool:
    if not any(st.pending(step) and "pspnet" in needs for step, (_, needs) in TRAINING.items()):
        return True  # no training left that learns from PSPNet's maps of the train split
    return _segment(st, "segment-train", "camvid", "train")


def step_segment_test(st: Study) -> bool:
    if "pspnet" not in st.wanted() and st.model_path("pspnet") is None:
        return True
    done = True
    for entry in st.cfg["code"]["datasets"]:
        done &= _segment(st, "segment-test", entry["dataset"], entry.get("split", "test"))
    return done


def _dsslic_config(st: Study, total: int | None = None) -> dict:
    config = dict(st.cfg["dsslic"]["config"])
    choice = st.w / "bench" / "train_bench.json"
    if st.cfg.get("bench_train", {}).get("apply", True) and choice.is_file():
        config.update(json.loads(choice.read_text())["best"])
    if total is not None:
        config["iterations"] = int(total)
    return config


def step_bench_train(st: Study) -> bool:
    bcfg = st.cfg.get("bench_train", {})
    out = st.w / "bench"
    if not bcfg.get("enabled", False) or (out / "train_bench.json").is_file() or not st.pending("dsslic"):
        return True
    if (st.train_dir("dsslic") / "train_state.safetensors").is_file():
        return True  # training has begun with the settings it has
    if st.left() < float(bcfg.get("estimate_s", 60)) + 60:
        return False
    variants = bcfg.get("variants")
    started = time.time()
    st.worker("bench-train", "bench_train", {
        "config": dict(st.cfg["dsslic"]["config"]), "images": str(st.data("camvid", "train") / "images"),
        "segs": str(st.w / "segs" / "camvid" / "train"), "device": st.device, "out": str(out),
        "iterations": int(bcfg.get("iterations", 10)), "warmup": int(bcfg.get("warmup", 3)),
        "variants": variants}, timeout=min(st.left() - MARGIN_S, float(bcfg.get("estimate_s", 60)) * 3))
    st.note("bench-train", spent_s_add=time.time() - started)
    return True


def _fit_chunks(st: Study, step: str, kwargs_for, per_epoch: int) -> bool:
    """Probe, fit the total iterations to the step's budget, then train in chunks until time is up.

    The probe trains ``probe_iterations`` in a scratch folder (W/probe/<step>: a training state
    records its total, so the real run starts afresh with the fitted one); the chunks resume
    the state in ``W/models/<step>`` until it holds the model.
    """
    section = st.cfg[step]
    model = TRAINING[step][0]
    out_dir = st.train_dir(step)
    plan_path = out_dir / "plan.json"
    state = out_dir / "train_state.safetensors"
    function = f"{step}_chunk"
    batch = int(section["config"].get("batch_size", 8))
    epochs_total = int(section["config"].get("epochs", 150)) * per_epoch
    if section["config"].get("iterations"):
        epochs_total = int(section["config"]["iterations"])
    if not plan_path.is_file():
        probe_iterations = int(section.get("probe_iterations", 20))
        if st.left() < SPAWN_S + MARGIN_S + 30:
            return False
        probe = st.w / "probe" / step
        shutil.rmtree(probe, ignore_errors=True)
        started = time.time()
        code = st.worker(step, function, {**kwargs_for(epochs_total, probe), "stop_after": probe_iterations},
                         timeout=st.left() - MARGIN_S)
        st.note(step, spent_s_add=time.time() - started)
        chunks = _read_jsonl(probe / "chunks.jsonl")
        if code != 0 or not chunks:
            st.log(f"{step}: the probe failed (logs/{step}.log)")
            return False
        ips = _measured_ips(chunks[-1])
        available = max(0.0, float(section["budget_s"]) - st.spent(step))
        total = min(epochs_total, _iteration_of(state) + int(available * ips / batch))
        total = max(total, _iteration_of(state) + 1)
        workers.write_json(plan_path, {"total_iterations": total, "probe_images_per_s": ips, "batch_size": batch,
                                       "epochs": total / per_epoch, "epochs_wanted": epochs_total / per_epoch,
                                       "budget_s": section["budget_s"], "probe": chunks[-1]})
        shutil.rmtree(probe, ignore_errors=True)
        st.log(f"{step}: probe {ips:.1f} images/s -> {total} iterations ({total / per_epoch:.1f} epochs)")
    plan = json.loads(plan_path.read_text())
    total = int(plan["total_iterations"])
    while True:
        done = _iteration_of(state)
        if done >= total:
            break
        measured = [c["images_per_s"] for c in _read_jsonl(out_dir / "chunks.jsonl") if c["iterations"] > 0]
        ips = measured[-1] if measured else float(plan["probe_images_per_s"])
        slot = min(float(section["budget_s"]) - st.spent(step) + 60, st.left() - MARGIN_S - SPAWN_S)
        iterations = min(total - done, int(slot * ips / batch * 0.95))
        if iterations < int(section.get("min_chunk", 20)) and iterations < total - done:
            st.log(f"{step}: {total - done} iterations left, no time in this call")
            return False
        started = time.time()
        code = st.worker(step, function, {**kwargs_for(total, out_dir), "stop_after": iterations},
                         timeout=min(st.left() - 5, iterations * batch / ips * 1.3 + SPAWN_S + 60))
        st.note(step, spent_s_add=time.time() - started)
        if code != 0:
            return False
    if st.model_path(model) is None:  # the last chunk writes the model; a state at its total writes it here
        st.worker(step, function, {**kwargs_for(total, out_dir), "stop_after": 0}, timeout=st.left() - MARGIN_S)
    return st.model_path(model) is not None


def step_dsslic(st: Study) -> bool:
    if not st.pending("dsslic"):
        return True
    segs = st.w / "segs" / "camvid" / "train"
    if not (segs / "segments.parquet").is_file():
        return False
    batch = int(st.cfg["dsslic"]["config"].get("batch_size", 8))
    per_epoch = max(1, math.ceil(_train_images(st) / batch))

    def kwargs(total, out):
        return {"config": _dsslic_config(st, total), "images": str(st.data("camvid", "train") / "images"),
                "segs": str(segs), "out": str(out), "device": st.device}

    return _fit_chunks(st, "dsslic", kwargs, per_epoch)


def step_pairs(st: Study) -> bool:
    out = st.w / "pairs"
    if (out / "pairs.parquet").is_file() or not st.pending("smapnet"):
        return True
    dsslic, segnet = st.model_path("dsslic"), st.model_path("pspnet")
    if dsslic is None or segnet is None or st.left() < 60:
        return False
    st.semlic("pairs", ["smap-pairs", "--model", str(dsslic), "--segnet", str(segnet),
                        "--data", str(st.w / "data" / "camvid"), "--split", "train", "--segs",
                        str(st.w / "segs" / "camvid" / "train"), "--out", str(out), "--device", st.device,
                        "--no-progress"], timeout=st.left() - MARGIN_S)
    return (out / "pairs.parquet").is_file()


def step_smapnet(st: Study) -> bool:
    if not st.pending("smapnet"):
        return True
    pairs_dir = st.w / "pairs"
    if not (pairs_dir / "pairs.parquet").is_file():
        return False
    batch = int(st.cfg["smapnet"]["config"].get("batch_size", 32))
    pairs = len(list((pairs_dir / "logits").glob("*.safetensors")))
    per_epoch = max(1, math.ceil(pairs / batch))

    def kwargs(total, out):
        return {"config": {**st.cfg["smapnet"]["config"], "iterations": int(total)}, "pairs": str(pairs_dir),
                "out": str(out), "device": st.device}

    return _fit_chunks(st, "smapnet", kwargs, per_epoch)


def _code_jobs(st: Study, section: dict) -> list[dict]:
    jobs = []
    for entry in section["datasets"]:
        split = entry.get("split", "test")
        images = sorted((st.data(entry["dataset"], split) / "images").glob("*.png"))
        jobs += [{"dataset": entry["dataset"], "split": split, "image": str(p)} for p in images[: entry.get("limit")]]
    return jobs


def _missing_parts(st: Study, jobs: list[dict], methods: list[str]) -> list[dict]:
    parts = st.w / "coded" / "parts"
    return [j for j in jobs if any(not (parts / j["dataset"] / m / f"{Path(j['image']).stem}.parquet").is_file()
                                   for m in methods)]


def _missing_models(st: Study, step: str, plans: list, from_image: bool = False) -> list[str]:
    store = st.store()
    missing = sorted({n for plan in plans for n in workers.plan_models(plan, from_image) if n not in store})
    if missing:
        st.log(f"{step}: no model file of {', '.join(missing)} in {', '.join(map(str, st.models_dirs))}")
    return missing


def step_code(st: Study) -> bool:
    ccfg = st.cfg["code"]
    sections = st.sections("code")
    plans = workers.method_plans(sections)
    methods = [plan.method.name for plan in plans]
    if _missing_models(st, "code", plans):
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
    deadline = st.deadline - MARGIN_S - float(ccfg.get("image_s", 30))
    procs = []
    started = time.time()
    for index, shard in enumerate(shards):
        spec = st.w / "logs" / f"code-{index:02d}.job.json"
        workers.write_json(spec, {"function": "code", "kwargs": {
            "jobs": shard, "methods": sections, "models_dirs": [str(d) for d in st.models_dirs],
            "parts_dir": str(st.w / "coded" / "parts"),
            "files_dir": str(st.w / "coded" / "files") if ccfg.get("write_files", True) else None,
            "segs_dir": str(st.w / "segs"), "device": st.device, "deadline": deadline, "git_rev": st.git_rev}})
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
    sections = st.sections("speed")
    if _missing_models(st, "speed", workers.method_plans(sections), from_image=True):
        return False
    images = sorted((st.data(scfg.get("dataset", "kodak"), scfg.get("split", "test")) / "images").glob("*.png"))
    images = images[: scfg.get("images")]
    if not images or st.left() < float(scfg.get("estimate_s", 90)):
        return False
    started = time.time()
    st.worker("speed", "speed", {"images": [str(p) for p in images], "methods": sections,
                                 "models_dirs": [str(d) for d in st.models_dirs], "cfg": scfg,
                                 "device": st.device, "out": str(out)}, timeout=st.left() - MARGIN_S)
    st.note("speed", spent_s_add=time.time() - started)
    return (out / "speed.json").is_file()


def step_cpu_paper(st: Study) -> bool:
    """Optional (``cpu_paper_size.enabled``): CPU decode time of the paper-size networks, random weights."""
    ccfg = st.cfg.get("cpu_paper_size") or {}
    out = st.w / "speed"
    if not ccfg.get("enabled") or (out / "cpu_paper_size.parquet").is_file():
        return True
    images = sorted((st.data(ccfg.get("dataset", "kodak"), ccfg.get("split", "test")) / "images").glob("*.png"))
    images = images[: int(ccfg.get("images", 1))]
    if not images or st.left() < float(ccfg.get("estimate_s", 180)):
        return False
    started = time.time()
    num_classes = ccfg.get("num_classes") or st.cfg["segnet"]["config"]["model"]["num_classes"]
    st.worker("cpu-paper", "cpu_paper_size", {
        "images": [str(p) for p in images], "methods": st.sections("cpu_paper_size"), "num_classes": int(num_classes),
        "threads": int(ccfg.get("threads", 2)), "out": str(out), "preset": ccfg.get("preset", "paper"),
        "overrides": ccfg.get("overrides") or {}}, timeout=st.left() - MARGIN_S)
    st.note("cpu-paper", spent_s_add=time.time() - started)
    return (out / "cpu_paper_size.parquet").is_file()


STEP_FUNCTIONS = {"unpack": step_unpack, "segnet": step_segnet, "segment-train": step_segment_train,
                  "bench-train": step_bench_train, "dsslic": step_dsslic, "segment-test": step_segment_test,
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
        from semlic.methods import method_names

        info["registered_methods"] = list(method_names())
        info["methods"] = {plan.method.name: plan.settings() for plan in st.plans("code")}
    except Exception as exc:  # pragma: no cover
        info["methods"] = f"unavailable: {exc}"
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
    copies = {"probe/segnet/train_log.parquet": "logs/segnet_probe_log.parquet",
              "pairs/pairs.parquet": "segmentation/pairs.parquet", "pairs/pairs.json": "segmentation/pairs.json",
              "speed/speed.parquet": "speed/speed.parquet", "speed/speed.json": "speed/speed.json",
              "speed/cpu_paper_size.parquet": "speed/cpu_paper_size.parquet",
              "bench/train_bench.json": "speed/train_bench.json", "status.json": "status.json"}
    for step in TRAINING:  # logs/<step>_train_log.parquet, <step>_chunks.jsonl, <step>_plan.json
        for name, target in (("train_log.parquet", "train_log.parquet"), ("chunks.jsonl", "chunks.jsonl"),
                             ("plan.json", "plan.json")):
            copies[f"models/{step}/{name}"] = f"logs/{step}_{target}"
    for table in sorted((st.w / "segs").glob("*/*/segments.parquet")):  # segmentation/<dataset>_<split>.parquet
        copies[str(table.relative_to(st.w))] = f"segmentation/{table.parent.parent.name}_{table.parent.name}.parquet"
    for source, target in copies.items():
        if (st.w / source).is_file():
            (res / target).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(st.w / source, res / target)
    for name, path in _model_files(st).items():  # models/<name>.json: what each model file is
        from semlic.model_files import read_metadata

        meta = read_metadata(path)
        workers.write_json(res / "models" / f"{name}.json", {
            "model": name, "file": str(path.relative_to(st.w)) if path.is_relative_to(st.w) else str(path),
            "fingerprint": meta.get("fingerprint"), "config": json.loads(meta.get("config", "null")),
            **{k: json.loads(v) for k, v in meta.items() if k not in ("format", "model", "config", "fingerprint")
               and _is_json(v)}})
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


def _is_json(text: str) -> bool:
    try:
        json.loads(text)
        return True
    except (TypeError, ValueError):
        return False


def _model_files(st: Study) -> dict[str, Path]:
    """Every model file of the models folders, by registered name (one per name)."""
    from semlic.errors import CheckpointError

    store, found = st.store(), {}
    for name in store.names():
        try:
            found[name] = store.path(name)
        except CheckpointError as exc:  # two files of one name: neither is the study's
            st.log(f"pack: {exc}")
    return found


def _pack_models(st: Study, out: Path, part_mib: int) -> None:
    """Every model as fp16 safetensors in one tar, split into parts of ``part_mib`` MiB (cat to join)."""
    import io

    import torch
    from safetensors.torch import load_file, save

    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name, path in _model_files(st).items():
            from safetensors import safe_open

            with safe_open(str(path), framework="pt") as fh:
                meta = fh.metadata() or {}
            tensors = {k: (v.half() if v.is_floating_point() else v) for k, v in load_file(str(path)).items()}
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
