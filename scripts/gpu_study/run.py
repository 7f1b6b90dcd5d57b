"""The GPU study's step runner: ``python scripts/gpu_study/run.py STEP --workdir W --config CFG``.

Runs on the GPU machine with torch alone (no Ray, Prefect or DVC), and on a CPU for the dry
run. The whole study is ONE device call (``call.sh``): ``auto`` runs three lanes of steps at
once (threads, each step its own process on the one GPU) until the lanes' deadline (the call's
less ``final_reserve_s``), then the final steps one after the other; every training is bounded
by its ``budget_s`` and ends cleanly with its model written, and ``--out`` gets the results
archive refreshed after every step, so a call stopped at its limit still brings back what is
finished. Every step is resumable and skips what is done; status.json records each step's
outcome (done, wall time, why not).

What is coded comes from the method registry (:mod:`semlic.methods`): ``code.methods`` names
registered methods (or variants under names of their own), each with its params section
(qualities and options, as the pipeline's code stage reads them:
:meth:`semlic.code_stage.MethodPlan.from_section`); none given: every registered method at its
defaults. The models a method needs are its ``models`` (decoder) and ``encoder_models`` (its
segmenter), found by registered name among the model files of the study's models folders
(``W/models`` and ``models_dirs``; :class:`semlic.model_files.ModelStore`). A training step
runs only when a chosen method needs a model it trains (directly, or to make the training data
of another) and no models folder holds it yet; a method whose models are missing when the
code step runs is left out, and the results say so.

Steps (``LANES`` then ``FINAL``; ``lanes`` / ``final`` in the config override them):

=============  ==================================================================================
unpack         every data pack present (datapack.py) -> W/data/<dataset>/<split>/{images,labels}
*lane0*
segnet         PSPNet (model ``pspnet``): a short probe measures images/s, the steps are fitted to
               ``segnet.budget_s``, then ``semlic train-segnet --out W/models/segnet --pause-after M``
segment-train  ``semlic segment`` of the train split (the maps DSSLIC learns from)
segment-test   ``semlic segment`` of every data set the code step codes (mIoU on CamVid test)
dsslic         DSSLIC CompNet + FineNet (+ discriminators), model ``dsslic``: a probe chunk, the
               total iterations fitted to ``dsslic.budget_s`` (at most ``epochs``), then
               ``semlic.methods.dsslic.training.train_dsslic(stop_after=...)``
pairs          ``semlic smap-pairs`` on the train split (SMapNet's training data)
smapnet        SMapNet (model ``smapnet``), fitted to ``smapnet.budget_s`` like dsslic
*lane1*
smic           SMIC's SS-Net then Rec-Net (``semlic train-smic``), each loop bounded by minutes
               from ``smic.budget_s`` (``ssnet_share`` to SS-Net)
*lane2*
hyperprior     CompressAI's bmshj2018-hyperprior per quality (``semlic train-hyperprior``), minutes
               per quality from ``hyperprior.budget_s``, merged into one bank
latent-seg     (``latent_seg.enabled``) the DeepLabv3 teacher, then the compressed-domain students
               of each quality (``semlic train-latent-seg``), minutes from ``latent_seg.budget_s``
*final*
code           every chosen method on every data set of ``code.datasets`` at its qualities
               (``semlic.code_stage.code_method``): ``code.workers`` processes, one part per
               (dataset, method, image)
latent-eval    rate-mIoU of pixel-domain and compressed-domain segmentation (``semlic eval-latent-seg``)
speed          the clean timing pass: ``Method.encode`` / ``Method.decode`` per Kodak image on the
               GPU (network and entropy coding apart) and decode on the CPU
bench-train    DSSLIC's training step in a few settings, alone on the GPU, + kernel profile
cpu-paper      (optional, ``cpu_paper_size.enabled``) CPU decode with every network a method's
               decoder runs at the paper's size, random weights
pack           W/results (rows as a hive tree, logs, speed, provenance) -> OUT/study_results.tar.gz
baselines      HERE, not on the device (``baselines.on_device: false``): JPEG, JPEG 2000, WebP,
               AVIF, JPEG XL, HEVC 4:4:4 over their sweeps on the same carried test images, shard
               by shard, on this CPU (``run.py baselines``); their rows join the report as extra rows
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
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(HERE))

import yaml  # noqa: E402

import datapack  # noqa: E402
import workers  # noqa: E402

STEPS = ("unpack", "segnet", "segment-train", "segment-test", "dsslic", "pairs", "smapnet", "smic", "hyperprior",
         "latent-seg", "code", "latent-eval", "speed", "bench-train", "cpu-paper")
MARGIN_S = 20          # kept free at the end of a step's slot (saving state, process exit)
SPAWN_S = 25           # loading data and models before a training chunk starts its loop

#: The training steps: the registered models each one trains (into ``W/models/<step>/``) and the
#: models its training data is made with (DSSLIC learns from PSPNet's maps of the train split;
#: SMapNet from pairs made with DSSLIC's compact image and PSPNet; the compressed-domain
#: students from the hyperprior's latents).
TRAINING = {"segnet": (("pspnet",), ()), "dsslic": (("dsslic",), ("pspnet",)),
            "smapnet": (("smapnet",), ("dsslic", "pspnet")), "smic": (("smic_ssnet", "smic_recnet"), ()),
            "hyperprior": (("hyperprior",), ()), "latent-seg": (("deeplabv3", "latent_seg"), ("hyperprior",))}

#: The one call's schedule: lanes of steps that run at the same time (threads; each step is its
#: own process on the one GPU), every lane in order; then the final steps, one after the other,
#: once every lane has ended. ``lanes`` / ``final`` in the config override these.
LANES = (("segnet", "segment-train", "segment-test", "dsslic", "pairs", "smapnet"), ("smic",),
         ("hyperprior", "latent-seg"))
FINAL = ("code", "latent-eval", "speed", "bench-train", "cpu-paper")


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

    method = get_method(params.get("method") or name)  # a variant names its method
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
        self.has_deadline = deadline is not None
        self.deadline = deadline or time.time() + 10 * 24 * 3600
        self.packs = Path(packs).resolve() if packs else None
        self.device = self.cfg.get("device", "cuda")
        self.git_rev = os.environ.get("SEMLIC_GIT_REV") or _local_git_rev()
        (self.w / "logs").mkdir(parents=True, exist_ok=True)
        self.status_path = self.w / "status.json"
        self.status = json.loads(self.status_path.read_text()) if self.status_path.is_file() else {"steps": {}}
        self.out: Path | None = None     # where ``auto`` refreshes the results archive after every step
        self._lock = threading.RLock()   # status.json, the log and the archive are shared by the lanes
        self._lane = threading.local()   # a lane's own deadline (``left``)

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
        needs = {model: made_with for models, made_with in TRAINING.values() for model in models}
        if (self.cfg.get("latent_seg") or {}).get("enabled"):
            names |= {"deeplabv3", "latent_seg", "hyperprior"}
        stack = list(names)
        while stack:
            for name in needs.get(stack.pop(), ()):
                if name not in names:
                    names.add(name)
                    stack.append(name)
        return names

    def pending(self, step: str) -> bool:
        """Whether a training step has work: a chosen method needs one of its models and no folder holds it."""
        wanted, store = self.wanted(), self.store()
        return any(model in wanted and model not in store.names() for model in TRAINING[step][0])

    # time
    def left(self) -> float:
        """Seconds until the deadline of the calling lane (its own, when a lane set one), else the call's."""
        return min(self.deadline, getattr(self._lane, "deadline", self.deadline)) - time.time()

    # status
    def note(self, step: str, **values) -> None:
        with self._lock:
            entry = self.status["steps"].setdefault(step, {})
            for key, value in values.items():
                if key.endswith("_add"):
                    entry[key[:-4]] = entry.get(key[:-4], 0.0) + value
                else:
                    entry[key] = value
            workers.write_json(self.status_path, self.status)

    def refresh(self) -> None:
        """The results archive in ``out`` brought up to date (after every step: a call stopped at its
        limit still brings back what is finished)."""
        if self.out is None:
            return
        with self._lock:
            try:
                pack(self, self.out, quiet=True)
            except Exception as exc:  # the next refresh or the final pack tries again
                self.log(f"pack: failed ({exc!r})")

    def spent(self, step: str) -> float:
        return float(self.status["steps"].get(step, {}).get("spent_s", 0.0))

    def log(self, message: str) -> None:
        lane = getattr(self._lane, "name", "")
        left = f" {self.deadline - time.time():6.0f}s left" if self.has_deadline else ""
        line = f"[{time.strftime('%H:%M:%S')}{left}{lane}] {message}"
        print(line, flush=True)
        with self._lock, open(self.w / "logs" / "runner.log", "a") as fh:
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
                         "--device", st.device, "--pause-after", f"{limit / 60:.3f}", "--no-progress"],
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
    if total is not None:
        config["iterations"] = int(total)
    return config


def step_bench_train(st: Study) -> bool:
    """DSSLIC's training step in a few settings, alone on the GPU once the trainings have ended
    (their own throughput is in their logs, measured while the lanes shared the GPU)."""
    bcfg = st.cfg.get("bench_train", {})
    out = st.w / "bench"
    if not bcfg.get("enabled", False) or (out / "train_bench.json").is_file():
        return True
    if not (st.w / "segs" / "camvid" / "train" / "segments.parquet").is_file():
        st.log("bench-train: no PSPNet maps of the train split")
        return False
    if st.left() < float(bcfg.get("estimate_s", 60)) + MARGIN_S:
        st.log("bench-train: no time left")
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
    model = TRAINING[step][0][0]
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



# --- trainings bounded by minutes (SMIC, the hyperprior, the compressed-domain students) ---------
def _budget_s(st: Study, step: str) -> float:
    """The seconds a training step may still take: its ``budget_s`` less what it spent, within its lane."""
    return min(float(st.cfg[step.replace("-", "_")]["budget_s"]) - st.spent(step), st.left() - MARGIN_S)


def _timeout(st: Study, seconds: float) -> float:
    """A minutes-bounded training's process: its budget plus its start and the model's writing, never
    past the lane's deadline (the loop ends itself before: its minutes leave that time)."""
    return max(30.0, min(seconds + 45, st.left()))


def _write_config(path: Path, section: str, config: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump({section: config}, sort_keys=True))
    return path


def _prepared_train(st: Study, step: str) -> Path | None:
    prepared = st.w / "data" / "camvid"
    if not (prepared / "train" / "labels").is_dir():
        st.log(f"{step}: no CamVid train split (carry build/gpu-data/camvid-train.tar)")
        return None
    return prepared


def _loop_minutes(seconds: float, loops: int, start_s: float) -> float:
    """Minutes for each of ``loops`` training loops run one after the other in ``seconds``, each
    loop's start (reading the data, building the networks) taking about ``start_s``."""
    return max(0.05, (seconds - SPAWN_S - loops * start_s) / loops / 60.0)


def _bounded_start(st: Study, step: str) -> tuple[Path, float, dict] | None:
    """(the prepared CamVid, the seconds it may take, its config section) for a training bounded by
    minutes, or None (logged) when it cannot start: no train split, or less than ``min_s`` left."""
    prepared = _prepared_train(st, step)
    if prepared is None:
        return None
    seconds, section = _budget_s(st, step), st.cfg[step.replace("-", "_")]
    if seconds < float(section.get("min_s", 30)):
        st.log(f"{step}: {seconds:.0f} s left for it")
        return None
    return prepared, seconds, section


def _train_bounded(st: Study, step: str, command: str, section: str, config: dict, out: Path, args: list[str],
                   seconds: float, **note) -> int:
    """Write ``config`` as ``out/config.yaml`` (its ``section``), run ``semlic COMMAND --out OUT --config ...
    ARGS --device D``, and note the seconds it spent and ``note``; the command's exit code."""
    path = _write_config(out / "config.yaml", section, config)
    started = time.time()
    code = st.semlic(step, [command, "--out", str(out), "--config", str(path), *args, "--device", st.device,
                            "--no-progress"], timeout=_timeout(st, seconds))
    st.note(step, spent_s_add=time.time() - started, **note)
    return code


def step_smic(st: Study) -> bool:
    """SMIC's SS-Net then Rec-Net (``semlic train-smic``), each loop bounded by its share of ``smic.budget_s``."""
    if not st.pending("smic"):
        return True
    start = _bounded_start(st, "smic")
    if start is None:
        return False
    prepared, seconds, section = start
    config = json.loads(json.dumps(section["config"]))
    share = float(section.get("ssnet_share", 0.4))
    each = _loop_minutes(seconds, 2, float(section.get("start_s", 10)))
    config["ssnet"]["minutes"] = round(2 * each * share, 3)
    config["recnet"]["minutes"] = round(2 * each * (1 - share), 3)
    part = "recnet" if "smic_ssnet" in st.store().names() else "both"
    _train_bounded(st, "smic", "train-smic", "train_smic", config, st.train_dir("smic"),
                   ["--data", str(prepared), "--part", part], seconds,
                   minutes={k: config[k]["minutes"] for k in ("ssnet", "recnet")})
    return not st.pending("smic")


def step_hyperprior(st: Study) -> bool:
    """CompressAI's bmshj2018-hyperprior at each quality (``semlic train-hyperprior``), merged into one bank."""
    from semlic.methods.latent_seg.commands import hyperprior_qualities
    from semlic.methods.latent_seg.hyperprior import HYPERPRIOR_FILE

    if not st.pending("hyperprior"):
        return True
    start = _bounded_start(st, "hyperprior")
    if start is None:
        return False
    prepared, seconds, section = start
    config = dict(section["config"])
    qualities = hyperprior_qualities(config)
    config["minutes"] = round(_loop_minutes(seconds, len(qualities), float(section.get("start_s", 5))), 3)
    out = st.train_dir("hyperprior")
    code = _train_bounded(st, "hyperprior", "train-hyperprior", "train_hyperprior", config, out,
                          ["--data", str(prepared)], seconds, minutes_per_quality=config["minutes"])
    if code == 0 and (out / HYPERPRIOR_FILE).is_file():
        for q in qualities:  # one hyperprior model file in the models folders: the bank
            (out / f"q{q}" / HYPERPRIOR_FILE).unlink(missing_ok=True)
    return not st.pending("hyperprior")


def step_latent_seg(st: Study) -> bool:
    """The DeepLabv3 teacher, then each quality's compressed-domain students (``semlic train-latent-seg``)."""
    from semlic.methods.latent_seg.commands import latent_seg_parts
    from semlic.model_files import config_of

    section = st.cfg.get("latent_seg") or {}
    out = st.train_dir("latent-seg")
    if not section.get("enabled") or (out / "done.json").is_file():
        return True
    bank = st.model_path("hyperprior")
    if bank is None:
        st.log("latent-seg: no hyperprior model")
        return False
    start = _bounded_start(st, "latent-seg")
    if start is None:
        return False
    prepared, seconds, section = start
    config = json.loads(json.dumps(section["config"]))
    qualities, variants = latent_seg_parts(config, config_of(bank)[1].qualities)
    students = len(qualities) * len(variants)
    start_s = float(section.get("start_s", 10))
    teacher = _loop_minutes(seconds * float(section.get("teacher_share", 0.4)), 1, start_s)
    config.setdefault("teacher", {})["minutes"] = round(teacher, 3)
    left = seconds - teacher * 60 - SPAWN_S - start_s
    config.setdefault("student", {})["minutes"] = round(
        max(0.05, (left - len(qualities) * start_s) / students / 60), 3)  # latents computed once per quality
    code = _train_bounded(st, "latent-seg", "train-latent-seg", "train_latent_seg", config, out,
                          ["--data", str(prepared), "--hyperprior", str(bank), "--keep-trained"], seconds,
                          minutes={"teacher": config["teacher"]["minutes"], "student": config["student"]["minutes"]})
    if code == 0:
        workers.write_json(out / "done.json", {"qualities": qualities, "students": students})
    return code == 0


def step_latent_eval(st: Study) -> bool:
    """Rate-mIoU of pixel-domain (DeepLabv3 on the decoded image) and compressed-domain segmentation
    on the CamVid test images (``semlic eval-latent-seg``)."""
    section = st.cfg.get("latent_seg") or {}
    out = st.w / "latent_eval" / "rows.parquet"
    if not section.get("enabled") or out.is_file():
        return True
    bank, models = st.model_path("hyperprior"), st.train_dir("latent-seg")
    if bank is None or not (models / "done.json").is_file():
        st.log("latent-eval: the compressed-domain models are not trained")
        return False
    if not (st.data("camvid", "test") / "labels").is_dir() or st.left() < 30:
        return False
    args = ["eval-latent-seg", "--data", str(st.w / "data" / "camvid"), "--hyperprior", str(bank), "--models",
            str(models), "--out", str(out), "--split", "test", "--device", st.device, "--no-progress"]
    if section.get("eval_limit"):
        args += ["--limit", str(int(section["eval_limit"]))]
    started = time.time()
    st.semlic("latent-eval", args, timeout=st.left() - MARGIN_S)
    st.note("latent-eval", spent_s_add=time.time() - started)
    return out.is_file()

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


def _with_models(st: Study, step: str, sections: dict, from_image: bool = False) -> tuple[dict, list[str]]:
    """The methods of ``sections`` whose models are all in the models folders, and the names of
    those left out (a training that did not finish): the step does what it can and says what not."""
    store = st.store()
    kept, skipped = {}, []
    for (name, section), plan in zip(sections.items(), workers.method_plans(sections)):
        missing = [n for n in workers.plan_models(plan, from_image) if n not in store]
        if missing:
            skipped.append(name)
            st.log(f"{step}: {name} left out: no model file of {', '.join(missing)}")
        else:
            kept[name] = section
    if skipped:
        st.note(step, methods_left_out=skipped)
    return kept, skipped


def step_code(st: Study) -> bool:
    ccfg = st.cfg["code"]
    sections, skipped = _with_models(st, "code", st.sections("code"))
    if not sections:
        return False
    methods = list(sections)
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
    return not left and not skipped


def step_speed(st: Study) -> bool:
    out = st.w / "speed"
    if (out / "speed.json").is_file():
        return True
    scfg = st.cfg["speed"]
    sections, skipped = _with_models(st, "speed", st.sections("speed"), from_image=True)
    if not sections:
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
    return (out / "speed.json").is_file() and not skipped


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
                  "segment-test": step_segment_test, "dsslic": step_dsslic, "pairs": step_pairs,
                  "smapnet": step_smapnet, "smic": step_smic, "hyperprior": step_hyperprior,
                  "latent-seg": step_latent_seg, "code": step_code, "latent-eval": step_latent_eval,
                  "speed": step_speed, "bench-train": step_bench_train, "cpu-paper": step_cpu_paper}


# --- background baselines -----------------------------------------------------------------------
def _baseline_jobs(st: Study) -> list[dict]:
    bcfg = st.cfg.get("baselines") or {}
    jobs = []
    for entry in bcfg.get("datasets", []):
        images = sorted((st.data(entry["dataset"], entry.get("split", "test")) / "images").glob("*.png"))
        jobs += [{"dataset": entry["dataset"], "image": str(p)} for p in images[: entry.get("limit")]]
    return jobs


def _baselines_done(st: Study, here: bool = False) -> bool:
    bcfg = st.cfg.get("baselines") or {}
    if not here and not bcfg.get("on_device"):
        return True  # coded on the CPU here (``run.py baselines``), not part of the device call
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
    if not bcfg.get("on_device") or not jobs or _baselines_done(st):
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


def baselines_here(st: Study) -> bool:
    """The classical baselines over the same test images as the device call, on this CPU, with the
    same code (:func:`semlic.baselines.run_baselines`): unpack the packs, code every shard not yet
    coded (resumable), in the foreground."""
    step_unpack(st)
    bcfg = st.cfg.get("baselines") or {}
    jobs = _baseline_jobs(st)
    if not jobs:
        st.log("baselines: no images (the packs of baselines.datasets)")
        return False
    st.log(f"baselines: {len(jobs)} images, {', '.join(bcfg['codecs'])}, {bcfg.get('workers', 1)} processes")
    result = workers.baselines(jobs, bcfg, str(st.w / "baselines"), st.deadline, st.git_rev)
    st.log(f"baselines: {result}")
    return _baselines_done(st, here=True)


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
#: Steps whose failure does not stop their lane (nothing later in it reads what they make).
NON_BLOCKING = {"segment-test", "code", "latent-eval", "speed", "bench-train", "cpu-paper"}


def run_step(st: Study, name: str) -> bool:
    """One step unless done; its outcome in status.json; the results archive refreshed."""
    if st.status["steps"].get(name, {}).get("done"):
        return True
    started = time.time()
    try:
        ok = STEP_FUNCTIONS[name](st)
    except Exception:  # what is done is kept; the results say where it stopped
        import traceback

        st.log(f"{name}: failed\n{traceback.format_exc()}")
        ok = False
    st.note(name, done=bool(ok), wall_s_add=time.time() - started,
            **({} if ok else {"stopped": f"not finished with {max(0.0, st.left()):.0f} s left in its lane"}))
    st.refresh()
    return ok


def run_lane(st: Study, name: str, steps, deadline: float, only: list[str] | None, outcome: dict) -> None:
    """The steps of one lane in order, none past ``deadline``; a step that fails stops the lane
    unless it is :data:`NON_BLOCKING`."""
    st._lane.deadline, st._lane.name = deadline, f" {name}"
    ok = True
    for step in steps:
        if only and step not in only:
            continue
        if not run_step(st, step):
            ok = False
            if step not in NON_BLOCKING:
                rest = steps[steps.index(step) + 1:]
                st.log(f"{name}: stopped at {step}" + (f"; not run: {', '.join(rest)}" if rest else ""))
                break
    outcome[name] = ok


def auto(st: Study, only: list[str] | None = None) -> bool:
    """Every step in one call: the lanes at once (threads; the training lanes end by the deadline
    less ``final_reserve_s``), then the final steps one after the other."""
    st.log(f"auto: workdir {st.w}, config {st.config_path.name}, device {st.device}, git {st.git_rev}")
    try:
        step_unpack(st)
    except Exception as exc:
        st.log(f"unpack: failed ({exc})")
    background = start_baselines(st)
    from semlic.methods import method_names

    method_names()  # the registry, loaded once here, before the lanes' threads ask it
    lanes = [tuple(lane) for lane in st.cfg.get("lanes") or LANES]
    final = tuple(st.cfg.get("final") or FINAL)
    scheduled = [step for lane in lanes for step in lane] + list(final)
    unknown = sorted(set(scheduled) - set(STEP_FUNCTIONS))
    if unknown or len(set(scheduled)) != len(scheduled):
        raise SystemExit(f"lanes/final: unknown or repeated steps {unknown or scheduled}; "
                         f"steps: {', '.join(STEPS[1:])}")
    lanes_end = st.deadline - float(st.cfg.get("final_reserve_s", 0))
    outcome: dict = {}
    threads = [threading.Thread(target=run_lane, args=(st, f"lane{i}", lane, lanes_end, only, outcome), daemon=True)
               for i, lane in enumerate(lanes)]
    with workers.GpuSampler(st.device, period=1.0) as sampler:  # the GPU's busy share over the whole call
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        lanes_ended = time.perf_counter()
        run_lane(st, "final", final, st.deadline, only, outcome)
    st._lane.__dict__.clear()
    if sampler.samples:
        import pandas as pd

        table = pd.DataFrame(sampler.samples, columns=["t", "utilisation_pct"])
        table["phase"] = ["lanes" if t <= lanes_ended else "final" for t in table["t"]]
        table["t"] -= table["t"].iloc[0]
        (st.w / "speed").mkdir(exist_ok=True)
        table.to_parquet(st.w / "speed" / "gpu_utilisation.parquet", index=False)
        st.note("auto", gpu_busy_share={phase: float(g["utilisation_pct"].mean()) / 100
                                        for phase, g in table.groupby("phase")})
    finish_baselines(st, background)
    steps = [s for s in scheduled if not only or s in only]
    complete = all(st.status["steps"].get(s, {}).get("done") for s in steps) and _baselines_done(st)
    st.note("auto", complete=bool(complete and not only), lanes=outcome)
    st.log("STUDY COMPLETE" if complete and not only else f"steps {only} run" if only else
           "study not complete: " + ", ".join(s for s in steps if not st.status["steps"].get(s, {}).get("done"))
           + " not done (status.json says why)")
    return complete


def _provenance(st: Study) -> dict:
    import platform

    info = {"git_rev": st.git_rev, "config": st.cfg, "python": platform.python_version(),
            "platform": platform.platform(), "cpus": os.cpu_count(), "written": time.strftime("%Y-%m-%d %H:%M:%S %Z")}
    try:
        from semlic.methods import method_names

        info["registered_methods"] = list(method_names())
        info["methods"] = {plan.name: plan.settings() for plan in st.plans("code")}
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


def pack(st: Study, out: Path, models: bool = False, part_mib: int = 15, quiet: bool = False) -> Path:
    """W/results/ (rows, logs, measurements) -> OUT/study_results.tar.gz (replaced whole, never half
    written); optionally the models, fp16, split."""
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
              "bench/train_bench.json": "speed/train_bench.json", "status.json": "status.json",
              "latent_eval/rows.parquet": "segmentation/latent_seg.parquet",
              "speed/gpu_utilisation.parquet": "speed/gpu_utilisation.parquet"}
    for step in TRAINING:  # logs/<step>_chunks.jsonl, <step>_plan.json (the probe-fitted trainings)
        for name in ("chunks.jsonl", "plan.json"):
            copies[f"models/{step}/{name}"] = f"logs/{step}_{name}"
    for log in sorted((st.w / "models").rglob("train_log.parquet")):  # logs/<folder>_train_log.parquet
        folder = log.parent.relative_to(st.w / "models")           # e.g. segnet, smic/ssnet, hyperprior/q3
        copies[str(log.relative_to(st.w))] = f"logs/{'_'.join(folder.parts)}_train_log.parquet"
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
    partial = out / ".study_results.tar.gz.partial"
    with tarfile.open(partial, "w:gz") as tar:
        tar.add(res, arcname="study_results")
    os.replace(partial, tar_path)
    if not quiet:
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
        except CheckpointError:  # several files of one name (the compressed-domain students): by folder
            for path in store.paths(name):
                found[f"{name}_{'_'.join(path.parent.relative_to(st.w / 'models').parts)}"
                      if path.is_relative_to(st.w / "models") else f"{name}_{path.stem}"] = path
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
    parser.add_argument("step", choices=("auto", "pack", "worker", "baselines") + STEPS)
    parser.add_argument("job", nargs="?", help="worker: the job file")
    parser.add_argument("--workdir", default=str(REPO / "build" / "gpu-run"))
    parser.add_argument("--config", default=str(HERE / "study.yaml"))
    parser.add_argument("--packs", default=str(REPO / "build" / "gpu-data"), help="folder of data packs")
    parser.add_argument("--deadline", type=float, help="absolute time (epoch seconds) the call must end by")
    parser.add_argument("--budget-s", type=float, help="seconds from now the call must end by")
    parser.add_argument("--out", help="where the results archive goes (pack: default $OUT or build/gpu-out; "
                        "auto: refreshed there after every step when given)")
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
        st.out = Path(args.out) if args.out else None
        return 0 if auto(st, args.only) else 10
    if args.step == "pack":
        pack(st, Path(args.out or os.environ.get("OUT") or REPO / "build" / "gpu-out"), models=args.models)
        return 0
    if args.step == "unpack":
        return 0 if step_unpack(st) else 1
    if args.step == "baselines":
        ok = baselines_here(st)
        pack(st, Path(args.out or REPO / "build" / "gpu-local-out"))
        return 0 if ok else 1
    ok = STEP_FUNCTIONS[args.step](st)
    st.note(args.step, done=bool(ok))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
