"""The study's work that no ``semlic`` command does in one piece, each run as its own process.

* ``dsslic_chunk``: :func:`semlic.methods.dsslic.training.train_dsslic` for ``stop_after``
  iterations (the runner sizes chunks from the measured throughput);
* ``smapnet_chunk``: :func:`semlic.methods.edms.training.train_smapnet` likewise;
* ``code``: every chosen method (the registry's: :mod:`semlic.methods`) over a list of images
  through :func:`semlic.code_stage.code_method`, one Parquet part per (dataset, method, image),
  resumable, with a deadline; the models each method needs are found by their registered names
  (:class:`semlic.model_files.ModelStore` over the study's models folders);
* ``baselines``: :func:`semlic.baselines.run_baselines` shard by shard, resumable, with a deadline;
* ``speed``: the clean timing pass (``Method.encode`` / ``Method.decode`` per Kodak image,
  network and entropy-coding time apart, on the GPU and on the CPU);
* ``cpu_paper_size``: CPU decode of every network a method's decoder runs, at the paper's size
  with random weights (:func:`semlic.model_files.build_model`);
* ``bench_train``: training throughput of the DSSLIC model in a few settings and a kernel profile.

Each samples the GPU's utilisation (NVML, through ``torch.cuda.utilization``) while it trains,
so the study reports the share of time the GPU was busy.
"""

from __future__ import annotations

import io
import json
import math
import os
import threading
import time
from pathlib import Path

import numpy as np


# --- small helpers ------------------------------------------------------------------------------
def write_json(path: Path, data) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True, default=float) + "\n")
    os.replace(tmp, path)


def append_jsonl(path: Path, record: dict) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as fh:
        fh.write(json.dumps(record, sort_keys=True, default=float) + "\n")


class GpuSampler:
    """Samples GPU utilisation (% of time a kernel ran, NVML) every ``period`` seconds in a thread."""

    def __init__(self, device: str, period: float = 0.5):
        self.samples: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._thread = None
        self.available = False
        if device.startswith("cuda"):
            try:
                import torch

                torch.cuda.utilization()
                self.available = True
            except Exception:  # no NVML (pynvml) or no GPU: nothing to sample
                self.available = False
        self.period = period

    def __enter__(self):
        if self.available:
            self._thread = threading.Thread(target=self._run, daemon=True)
            self._thread.start()
        return self

    def _run(self):
        import torch

        while not self._stop.is_set():
            try:
                self.samples.append((time.perf_counter(), int(torch.cuda.utilization())))
            except Exception:
                return
            self._stop.wait(self.period)

    def __exit__(self, *exc):
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2)

    def busy_share(self) -> float | None:
        """Mean utilisation (0..1) between the first and the last busy sample (loading excluded)."""
        busy = [i for i, (_, u) in enumerate(self.samples) if u > 0]
        if not busy:
            return None if not self.samples else 0.0
        window = [u for _, u in self.samples[busy[0]: busy[-1] + 1]]
        return float(np.mean(window)) / 100.0


# --- methods and models -------------------------------------------------------------------------
def method_plans(sections: dict) -> list:
    """``{method: params section}`` -> :class:`semlic.code_stage.MethodPlan` per method (names checked)."""
    from semlic.code_stage import MethodPlan

    return [MethodPlan.from_section(name, section) for name, section in sections.items()]


def plan_models(plan, from_image: bool = False) -> tuple[str, ...]:
    """Registered model names a plan's encoder and decoder use: the method's ``models`` and its
    ``encoder_models`` (its segmenter), these unless the plan reads precomputed maps and the
    encoder does not start ``from_image`` (the timing passes do)."""
    method = plan.method
    extra = method.encoder_models if from_image or plan.segmentation != "precomputed" else ()
    return tuple(dict.fromkeys(method.models + extra))


def model_store(models_dirs: list[str], device: str):
    from semlic.model_files import ModelStore

    return ModelStore(dirs=[d for d in models_dirs if Path(d).is_dir()], device=device)


def run_hash(plan, models: dict) -> str:
    """What decides a method's rows: its settings and the fingerprints of the models (as code_shard)."""
    from semlic.methods.base import module_fingerprint
    from semlic.results import params_hash

    prints = {name: module_fingerprint(model).hex() for name, model in sorted(models.items())}
    return params_hash({**plan.settings(), "models": prints})


# --- training chunks ----------------------------------------------------------------------------
def _ips_from_log(rows, batch_size: int, start_iteration: int) -> dict:
    """Training throughput of one call from a train log (semlic.train_loop).

    The call's rows are those past ``start_iteration``; their ``seconds`` count from the call's
    first iteration (cumulative within the call). ``steady_images_per_s`` leaves out the first
    fifth of the rows (warm-up: kernel selection, allocator, data loader start).
    """
    mine = sorted((r for r in rows if r["iteration"] > start_iteration), key=lambda r: r["iteration"])
    if not mine:
        return {"iterations": 0, "train_s": 0.0, "images_per_s": math.nan, "steady_images_per_s": math.nan}
    iterations = int(mine[-1]["iteration"] - start_iteration)
    train_s = float(mine[-1]["seconds"])
    steady = math.nan
    skip = min(len(mine) - 1, max(1, len(mine) // 5))  # the first fifth holds the warm-up
    if len(mine) > skip + 1 and mine[-1]["seconds"] > mine[skip]["seconds"]:
        images = (mine[-1]["iteration"] - mine[skip]["iteration"]) * batch_size
        steady = images / (mine[-1]["seconds"] - mine[skip]["seconds"])
    return {"iterations": iterations, "train_s": train_s,
            "images_per_s": iterations * batch_size / train_s if train_s > 0 else math.nan,
            "steady_images_per_s": steady}


def _training_chunk(step: str, train, batch_size: int, out: str, device: str) -> dict:
    """Run ``train()`` (a resumable trainer writing ``out/train_state`` and ``out/train_log``),
    measure it, append the record to ``out/chunks.jsonl`` and return it."""
    import pandas as pd

    from semlic.model_files import read_metadata

    state = Path(out) / "train_state.safetensors"
    start = int(read_metadata(state).get("iteration", 0)) if state.is_file() else 0
    started = time.perf_counter()
    with GpuSampler(device) as sampler:
        result = train()
    wall = time.perf_counter() - started
    rows = pd.read_parquet(Path(out) / "train_log.parquet").to_dict("records")
    record = {"step": step, "start_iteration": start, "wall_s": wall, "gpu_busy_share": sampler.busy_share(),
              "batch_size": batch_size, "stopped_by": result.stopped_by, "completed": result.completed,
              **_ips_from_log(rows, batch_size, start)}
    record["end_iteration"] = start + record["iterations"]
    append_jsonl(Path(out) / "chunks.jsonl", record)
    return record


def dsslic_chunk(config: dict, images: str, segs: str, out: str, device: str, stop_after: int) -> dict:
    """Train the DSSLIC generator for ``stop_after`` more iterations; return what was measured."""
    from semlic.methods.dsslic.training import DSSLICTrainConfig, train_dsslic

    cfg = DSSLICTrainConfig.from_dict(config)
    return _training_chunk("dsslic", lambda: train_dsslic(cfg, images, segs, out, device=device, resume=True,
                                                          stop_after=stop_after, progress=False),
                           cfg.batch_size, out, device)


def smapnet_chunk(config: dict, pairs: str, out: str, device: str, stop_after: int) -> dict:
    """Train SMapNet for ``stop_after`` more iterations; return what was measured."""
    from semlic.methods.edms.training import SMapNetTrainConfig, train_smapnet

    cfg = SMapNetTrainConfig.from_dict(config)
    return _training_chunk("smapnet", lambda: train_smapnet(cfg, pairs, out, device=device, resume=True,
                                                            stop_after=stop_after, progress=False),
                           cfg.batch_size, out, device)


# --- coding -------------------------------------------------------------------------------------
def code(jobs: list[dict], methods: dict, models_dirs: list[str], parts_dir: str, files_dir: str | None,
         segs_dir: str | None, device: str, deadline: float, git_rev: str) -> dict:
    """Code each job {dataset, split, image} with every method of ``methods`` ({name: params section}).

    One part per (dataset, method, image), skipped when present. A method's models are loaded
    once (by registered name, from ``models_dirs``); precomputed maps, where a plan asks for
    them, are ``segs_dir/<dataset>/<split>/<id>.png`` (the segment steps' output).
    """
    import torch

    from semlic import results
    from semlic.code_stage import CodingSample, code_method

    torch.set_num_threads(1)
    plans = method_plans(methods)
    store = model_store(models_dirs, device)
    loaded = {}
    for plan in plans:
        models = store.models(plan_models(plan))
        plan.method.check_models(models)
        loaded[plan.name] = (models, run_hash(plan, models))
    done = skipped = 0
    for job in jobs:
        image = Path(job["image"])
        seg = Path(segs_dir) / job["dataset"] / job.get("split", "test") / f"{image.stem}.png" if segs_dir else None
        sample = CodingSample(image.stem, image, seg if seg is not None and seg.is_file() else None)
        for plan in plans:
            name = plan.name
            part = Path(parts_dir) / job["dataset"] / name / f"{image.stem}.parquet"
            if part.is_file():
                continue
            if time.time() > deadline:
                skipped += 1
                continue
            models, params_hash = loaded[name]
            rows = code_method([sample], plan, models, dataset=job["dataset"],
                               out_dir=None if files_dir is None else str(Path(files_dir) / job["dataset"]),
                               params_hash=params_hash, git_rev=git_rev, progress=False)
            results.write_rows(rows, part)
            done += 1
    return {"parts_written": done, "parts_deferred": skipped}


def baselines(jobs: list[dict], cfg: dict, parts_dir: str, deadline: float, git_rev: str) -> dict:
    """run_baselines shard by shard (``cfg['shard_size']`` images); a part per shard, skipped when present."""
    from semlic import results
    from semlic.baselines import run_baselines

    shard_size, written = int(cfg.get("shard_size", 24)), 0
    by_dataset: dict[str, list[str]] = {}
    for job in jobs:
        by_dataset.setdefault(job["dataset"], []).append(job["image"])
    for dataset, images in sorted(by_dataset.items()):
        images = sorted(images)
        for index in range(0, len(images), shard_size):
            part = Path(parts_dir) / dataset / f"shard-{index // shard_size:04d}.parquet"
            if part.is_file():
                continue
            if time.time() > deadline:
                return {"parts_written": written, "complete": False}
            rows = run_baselines(images[index:index + shard_size], list(cfg["codecs"]), out_dir=None,
                                 sweep=cfg.get("sweep"), dataset=dataset, workers=int(cfg.get("workers", 1)),
                                 options=cfg.get("options"), progress=False)
            for row in rows:  # no git checkout on the GPU machine: the runner passes the revision
                row["git_rev"] = git_rev if row["git_rev"] == "unknown" else row["git_rev"]
            results.write_rows(rows, part)
            written += 1
    return {"parts_written": written, "complete": True}


# --- the clean timing pass ----------------------------------------------------------------------
def _sync(models: dict) -> None:
    import torch

    if torch.cuda.is_available() and any(next(m.parameters()).is_cuda for m in models.values()):
        torch.cuda.synchronize()


def _encode_timed(image, plan, models: dict, segmentation=None):
    """``Method.encode`` at the plan's first quality, timed: network and entropy coding as the method reports."""
    method = plan.method
    _sync(models)
    start = time.perf_counter()
    result = method.encode(image, models, plan.qualities[0], segmentation=segmentation, **plan.options)
    _sync(models)
    total = time.perf_counter() - start
    t = result.timings
    parts = {f"enc_{k}": float(v) for k, v in t.items() if k not in ("network_s", "entropy_s")}
    return result, {"enc_s": total, "enc_network_s": float(t.get("network_s", math.nan)),
                    "enc_entropy_s": float(t.get("entropy_s", math.nan)), **parts}


def _layer_channels(codec, payload: bytes) -> int | None:
    """The channels of a layer's image (a grey map or an RGB image) from its own header; None: the
    codec's default (a codec outside Pillow decodes to what it holds)."""
    if not getattr(codec, "pil_format", None):
        return None
    from PIL import Image

    with Image.open(io.BytesIO(payload), formats=[codec.pil_format]) as im:
        return 1 if im.mode in ("1", "L", "I", "I;16", "P") else 3


def _decode_timed(data: bytes, method, models: dict):
    """``Method.decode`` timed; the entropy decoding alone: each image-codec layer of the file decoded
    by itself (layers of codec RAW are the method's own bytes: their parsing is in the network part)."""
    from semlic import format as fmt
    from semlic.image_codecs import CODECS_BY_ID

    _sync(models)
    start = time.perf_counter()
    image = method.decode(data, models)
    _sync(models)
    total = time.perf_counter() - start
    sem = fmt.unpack(data)
    layers = [(CODECS_BY_ID[layer.codec], layer.payload) for layer in sem.layers if layer.codec != fmt.RAW]
    channels = [_layer_channels(codec, payload) for codec, payload in layers]
    start = time.perf_counter()
    for (codec, payload), n in zip(layers, channels):
        codec.decode(payload) if n is None else codec.decode(payload, n)
    entropy = time.perf_counter() - start
    return image, {"dec_s": total, "dec_entropy_s": entropy, "dec_network_s": max(0.0, total - entropy)}


def speed(images: list[str], methods: dict, models_dirs: list[str], cfg: dict, device: str, out: str) -> dict:
    """Encode and decode seconds per image, per method, on ``device``; then decode on the CPU."""
    import pandas as pd
    import torch

    from semlic.imageio import load_image

    plans = method_plans(methods)
    store = model_store(models_dirs, device)
    every = store.models({name for plan in plans for name in plan_models(plan, from_image=True)})
    uses = {plan.name: {n: every[n] for n in plan_models(plan, from_image=True) if n in every}
            for plan in plans}
    for plan in plans:
        plan.method.check_models(uses[plan.name])
    loaded = [(Path(p).stem, load_image(p)) for p in images]
    for plan in plans:  # warm-up: kernels, allocator, codec libraries
        encoded, _ = _encode_timed(loaded[0][1], plan, uses[plan.name])
        _decode_timed(encoded.data, plan.method, uses[plan.name])
    rows, files = [], {}
    for plan in plans:
        method, models = plan.method, uses[plan.name]
        for image_id, image in loaded:
            encoded, enc = _encode_timed(image, plan, models)
            decoded, dec = _decode_timed(encoded.data, method, models)
            files[(plan.name, image_id)] = (encoded.data, encoded.reconstruction)
            rows.append({"method": plan.name, "image_id": image_id, "device": device,
                         "quality": method.quality_value(plan.qualities[0]), "quality_name": method.quality_name,
                         "height": image.shape[0], "width": image.shape[1], "bytes": len(encoded.data),
                         "matches_encoder": bool(np.array_equal(decoded, encoded.reconstruction)), **enc, **dec})
    cpu_images, cpu_threads = int(cfg.get("cpu_images", 1)), int(cfg.get("cpu_threads", os.cpu_count() or 1))
    if cpu_images and device != "cpu":
        torch.set_num_threads(cpu_threads)
        for model in every.values():  # in place: every plan's mapping holds the same modules
            model.to("cpu")
        for plan in plans:
            method, models = plan.method, uses[plan.name]
            for image_id, _ in loaded[:cpu_images]:
                data, reconstruction = files[(plan.name, image_id)]
                decoded, dec = _decode_timed(data, method, models)
                rows.append({"method": plan.name, "image_id": image_id, "device": f"cpu ({cpu_threads} threads)",
                             "quality": method.quality_value(plan.qualities[0]), "quality_name": method.quality_name,
                             "bytes": len(data), "matches_encoder": bool(np.array_equal(decoded, reconstruction)),
                             **dec})
    table = pd.DataFrame(rows)
    Path(out).mkdir(parents=True, exist_ok=True)
    table.to_parquet(Path(out) / "speed.parquet", index=False)
    info = {"gpu": torch.cuda.get_device_name(0) if device.startswith("cuda") else None,
            "cpu_threads": cpu_threads, "images": len(loaded), "torch": torch.__version__,
            "methods": {plan.name: plan.settings() for plan in plans},
            "models": {name: str(store.path(name)) for name in sorted(every)}}
    write_json(Path(out) / "speed.json", info)
    return info


# --- training throughput benchmark --------------------------------------------------------------
def bench_train(config: dict, images: str, segs: str, device: str, out: str, iterations: int = 10,
                warmup: int = 3, variants: list[dict] | None = None, profile: bool = True) -> dict:
    """Images/s of the DSSLIC training step in several settings, and a kernel profile.

    Uses the library's own step (:class:`semlic.methods.dsslic.training.DSSLICTraining`) on real
    batches of the training set.
    """
    import torch

    from semlic.methods.dsslic import training

    cfg0 = training.DSSLICTrainConfig.from_dict(config)
    x_all, s_all = training.load_training_set(Path(images), Path(segs), cfg0.label_nc, cfg0.limit)
    b = cfg0.batch_size
    x_all, s_all = x_all[: max(b, 8 * b)], s_all[: max(b, 8 * b)]
    variants = variants or [{"amp": True, "channels_last": True}, {"amp": True, "channels_last": False},
                            {"amp": False, "channels_last": True}]
    results_ = []
    for variant in variants:
        cfg = training.DSSLICTrainConfig.from_dict({**config, **variant})
        trainer = training.DSSLICTraining(cfg, x_all, s_all, device)
        compile_started = time.perf_counter()
        for i in range(warmup):
            trainer.step(i)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        warm_s = time.perf_counter() - compile_started
        with GpuSampler(device, period=0.1) as sampler:
            start = time.perf_counter()
            for i in range(iterations):
                trainer.step(warmup + i)
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            elapsed = time.perf_counter() - start
        record = {**variant, "images_per_s": iterations * b / elapsed, "s_per_iteration": elapsed / iterations,
                  "warmup_s": warm_s, "gpu_busy_share_nvml": sampler.busy_share()}
        if profile and variant is variants[0] and device.startswith("cuda"):
            try:
                record.update(_profile_steps(trainer, warmup + iterations, 3))
            except Exception as exc:  # the throughput figures stand without the profile
                record["profile_error"] = repr(exc)[:300]
        results_.append(record)
        del trainer
        if device.startswith("cuda"):
            torch.cuda.empty_cache()
    best = max(results_, key=lambda r: r["images_per_s"])
    doc = {"variants": results_, "best": {k: best[k] for k in ("amp", "channels_last", "compile") if k in best},
           "batch_size": b, "iterations": iterations, "device": device,
           "gpu": torch.cuda.get_device_name(0) if device.startswith("cuda") else None}
    write_json(Path(out) / "train_bench.json", doc)
    return doc


def _profile_steps(trainer, first: int, steps: int) -> dict:
    """Kernel time of ``steps`` training steps over their wall time, and the operators that take it."""
    import torch
    from torch.profiler import ProfilerActivity, profile as torch_profile

    with torch_profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        start = time.perf_counter()
        for i in range(steps):
            trainer.step(first + i)
        torch.cuda.synchronize()
        wall = time.perf_counter() - start
    events = prof.key_averages()
    kernel_us = sum(e.self_device_time_total for e in events if e.device_type.name == "CUDA")
    kernels = sum(e.count for e in events if e.device_type.name == "CUDA")
    ops = [e for e in events if e.device_type.name == "CPU" and e.self_device_time_total > 0]
    top = sorted(ops, key=lambda e: e.self_device_time_total, reverse=True)[:15]
    return {"gpu_busy_share_profiler": kernel_us / 1e6 / wall, "kernels_per_iteration": kernels / steps,
            "top_ops": [{"op": e.key[:80], "device_ms_per_iteration": e.self_device_time_total / 1e3 / steps,
                         "share_of_kernel_time": e.self_device_time_total / max(1.0, kernel_us),
                         "calls_per_iteration": e.count / steps} for e in top]}


# --- CPU decode of the paper-size networks, no training needed ----------------------------------
def cpu_paper_size(images: list[str], methods: dict, num_classes: int, threads: int, out: str,
                   preset: str = "paper", overrides: dict | None = None) -> dict:
    """Decode seconds per image on this CPU with every network each method runs at ``preset`` size,
    randomly initialised (:func:`semlic.model_files.build_model`).

    The time of a forward pass does not depend on the weights' values, so this measures what a
    trained model costs (the reconstruction itself is meaningless). ``parameters``: the
    parameters of the networks the method's decoder runs. ``overrides``: config keys per
    registered model name (e.g. the study's PSPNet backbone).
    """
    import pandas as pd
    import torch

    from semlic.imageio import load_image
    from semlic.model_files import build_model

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    from semlic.model_files import model_spec

    # methods whose networks all have size presets (the hyperprior's sizes are its quality's widths: it
    # is timed by the speed step alone)
    plans = [plan for plan in method_plans(methods)
             if all(model_spec(n).preset is not None for n in plan_models(plan, from_image=True))]
    names = sorted({name for plan in plans for name in plan_models(plan, from_image=True)})
    built = {name: build_model(name, preset, num_classes, **(overrides or {}).get(name, {})).eval() for name in names}
    rows = []
    for path in images:
        image = load_image(path)
        for plan in plans:
            method = plan.method
            models = {n: built[n] for n in plan_models(plan, from_image=True)}
            encoded = method.encode(image, models, plan.qualities[0], **plan.options)
            _, dec = _decode_timed(encoded.data, method, models)
            rows.append({"method": plan.name, "image_id": Path(path).stem, "device": f"cpu ({threads} threads)",
                         "height": image.shape[0], "width": image.shape[1], "preset": preset,
                         "quality": method.quality_value(plan.qualities[0]), "quality_name": method.quality_name,
                         "models": "+".join(method.models),
                         "parameters": int(sum(p.numel() for n in method.models for p in built[n].parameters())),
                         **dec})
    table = pd.DataFrame(rows)
    Path(out).mkdir(parents=True, exist_ok=True)
    table.to_parquet(Path(out) / "cpu_paper_size.parquet", index=False)
    return {"rows": len(rows), "threads": threads, "models": names}
