"""The study's work that no ``semlic`` command does in one piece, each run as its own process.

* ``base_chunk``: :func:`semlic.training.train_base` for ``stop_after`` iterations (the
  library has no time limit; the runner sizes chunks from the measured throughput);
* ``smapnet_chunk``: :func:`semlic.smapnet_training.train_smapnet` likewise;
* ``code``: DSSLIC / EDMS coding of a list of images, one Parquet part per (dataset, method,
  image), resumable, with a deadline;
* ``baselines``: :func:`semlic.baselines.run_baselines` shard by shard, resumable, with a deadline;
* ``speed``: the clean timing pass (encode and decode per Kodak image, network and
  entropy-coding time apart, on the GPU and on the CPU);
* ``bench_train``: training throughput of the base model in a few settings and a kernel profile.

Each samples the GPU's utilisation (NVML, through ``torch.cuda.utilization``) while it trains,
so the study reports the share of time the GPU was busy.
"""

from __future__ import annotations

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


def _ips_from_log(rows, batch_size: int, start_iteration: int) -> dict:
    """Steady training throughput from a train log whose ``images_per_s`` is cumulative in a call."""
    mine = [r for r in rows if r["iteration"] > start_iteration]
    if not mine:
        return {"iterations": 0, "train_s": 0.0, "images_per_s": math.nan, "steady_images_per_s": math.nan}
    times = [(r["iteration"] - start_iteration) * batch_size / r["images_per_s"] for r in mine]
    iterations = mine[-1]["iteration"] - start_iteration
    steady = math.nan
    skip = min(len(mine) - 1, max(1, len(mine) // 5))  # the first fifth holds the warm-up
    if len(mine) > skip + 1 and times[-1] > times[skip]:
        steady = (len(mine) - 1 - skip) * batch_size / (times[-1] - times[skip])
    return {"iterations": iterations, "train_s": times[-1], "images_per_s": iterations * batch_size / times[-1],
            "steady_images_per_s": steady}


# --- training chunks ----------------------------------------------------------------------------
def _training_chunk(step: str, train, batch_size: int, out: str, device: str) -> dict:
    """Run ``train()`` (a resumable trainer writing ``out/train_state`` and ``out/train_log``),
    measure it, append the record to ``out/chunks.jsonl`` and return it."""
    import pandas as pd
    from safetensors import safe_open

    state = Path(out) / "train_state.safetensors"
    start = 0
    if state.is_file():
        with safe_open(str(state), framework="pt") as fh:
            start = int((fh.metadata() or {}).get("iteration", 0))
    started = time.perf_counter()
    with GpuSampler(device) as sampler:
        train()
    wall = time.perf_counter() - started
    rows = pd.read_parquet(Path(out) / "train_log.parquet").to_dict("records")
    record = {"step": step, "start_iteration": start, "wall_s": wall, "gpu_busy_share": sampler.busy_share(),
              "batch_size": batch_size, **_ips_from_log(rows, batch_size, start)}
    record["end_iteration"] = start + record["iterations"]
    append_jsonl(Path(out) / "chunks.jsonl", record)
    return record


def base_chunk(config: dict, images: str, segs: str, out: str, device: str, stop_after: int) -> dict:
    """Train the DSSLIC base model for ``stop_after`` more iterations; return what was measured."""
    from semlic.training import BaseTrainConfig, train_base

    cfg = BaseTrainConfig.from_dict(config)
    return _training_chunk("base", lambda: train_base(cfg, images, segs, out, device=device, resume=True,
                                                      stop_after=stop_after), cfg.batch_size, out, device)


def smapnet_chunk(config: dict, pairs: str, out: str, device: str, stop_after: int) -> dict:
    """Train SMapNet for ``stop_after`` more iterations; return what was measured."""
    from semlic.smapnet_training import SMapNetTrainConfig, train_smapnet

    cfg = SMapNetTrainConfig.from_dict(config)
    return _training_chunk("smapnet", lambda: train_smapnet(cfg, pairs, out, device=device, resume=True,
                                                            stop_after=stop_after), cfg.batch_size, out, device)


# --- coding -------------------------------------------------------------------------------------
def load_models(base: str, segnet: str | None, smapnet: str | None, device: str):
    from semlic.segnet.checkpoint import load_segnet
    from semlic.training import load_dsslic

    models = {"base": load_dsslic(base, device)}
    models["segnet"] = load_segnet(segnet, device) if segnet else None
    if smapnet:
        from semlic.smapnet_training import load_smapnet

        models["smapnet"] = load_smapnet(smapnet, device)
    else:
        models["smapnet"] = None
    return models


def code_rows(sample, models: dict, *, dataset: str, method: str, residual_qps, chroma: str, lossless: str,
              out_dir: str | None, params_hash: str, git_rev: str) -> list[dict]:
    """The rows of one image coded with ``method`` at every QP (semlic.coding.code_semantic)."""
    from semlic import coding

    semantic = coding.SemanticModels(models["base"], models["segnet"], models.get("smapnet"))
    return coding.code_semantic([sample], semantic, dataset=dataset, method=method, residual_qps=residual_qps,
                                chroma=chroma, lossless=lossless, out_dir=out_dir, params_hash=params_hash,
                                git_rev=git_rev, progress=False)


def code(jobs: list[dict], models_paths: dict, cfg: dict, parts_dir: str, files_dir: str | None, device: str,
         deadline: float, git_rev: str, params_hash: str) -> dict:
    """Code each job {dataset, image} with every method of ``cfg``; one part per (dataset, method, image)."""
    import torch

    from semlic import results
    from semlic.coding import CodingSample

    torch.set_num_threads(1)
    methods = list(cfg["methods"])
    needs_smapnet = "edms" in methods
    models = load_models(models_paths["base"], models_paths["segnet"],
                         models_paths["smapnet"] if needs_smapnet else None, device)
    done = skipped = 0
    for job in jobs:
        image = Path(job["image"])
        sample = CodingSample(image.stem, image)
        for method in methods:
            part = Path(parts_dir) / job["dataset"] / method / f"{image.stem}.parquet"
            if part.is_file():
                continue
            if time.time() > deadline:
                skipped += 1
                continue
            rows = code_rows(sample, models, dataset=job["dataset"], method=method,
                             residual_qps=cfg["residual_qps"], chroma=str(cfg.get("chroma", "420")),
                             lossless=cfg.get("lossless", "jxl_lossless"),
                             out_dir=None if files_dir is None else str(Path(files_dir) / job["dataset"]),
                             params_hash=params_hash, git_rev=git_rev)
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
def _encode_timed(image, models, method: str, qp: int, chroma: str, lossless: str):
    from semlic import codec, coding

    start = time.perf_counter()
    seg = coding.segment_image(models["segnet"], image)
    seg_s = time.perf_counter() - start
    encoded = codec.encode(image, seg, models["base"], qp, chroma=chroma, lossless=lossless, method=method,
                           segnet=models["segnet"], smapnet=models["smapnet"] if method == "edms" else None)
    total = time.perf_counter() - start
    t = encoded.timings
    network = seg_s + t.get("compnet_s", 0.0) + t.get("segmentation_s", 0.0) + t.get("recnet_s", 0.0)
    entropy = t.get("lossless_s", 0.0) + t.get("residual_s", 0.0)
    return encoded, {"enc_s": total, "enc_network_s": network, "enc_entropy_s": entropy, "enc_seg_x_s": seg_s,
                     **{f"enc_{k}": v for k, v in t.items()}}


def _decode_timed(data: bytes, models, method: str):
    from semlic import codec
    from semlic import format as fmt
    from semlic.codecs import CODECS_BY_ID

    start = time.perf_counter()
    image = codec.decode(data, models["base"], segnet=models["segnet"],
                         smapnet=models["smapnet"] if method == "edms" else None)
    total = time.perf_counter() - start
    start = time.perf_counter()
    sem = fmt.unpack(data)
    for layer in sem.layers:  # the entropy decoding alone, timed apart on the same file
        CODECS_BY_ID[layer.codec].decode(layer.payload, 3 if layer.role_name in ("compact", "residual") else 1)
    entropy = time.perf_counter() - start
    return image, {"dec_s": total, "dec_entropy_s": entropy, "dec_network_s": max(0.0, total - entropy)}


def speed(images: list[str], models_paths: dict, cfg: dict, device: str, out: str) -> dict:
    """Encode and decode seconds per image, per method, on ``device``; then decode on the CPU."""
    import pandas as pd
    import torch

    from semlic.imageio import load_image

    methods, qp = list(cfg["methods"]), int(cfg.get("qp", 32))
    chroma, lossless = str(cfg.get("chroma", "420")), cfg.get("lossless", "jxl_lossless")
    models = load_models(models_paths["base"], models_paths["segnet"],
                         models_paths["smapnet"] if "edms" in methods else None, device)
    loaded = [(Path(p).stem, load_image(p)) for p in images]
    for method in methods:  # warm-up: kernels, allocator, codec libraries
        encoded, _ = _encode_timed(loaded[0][1], models, method, qp, chroma, lossless)
        _decode_timed(encoded.data, models, method)
    rows, files = [], {}
    for method in methods:
        for image_id, image in loaded:
            encoded, enc = _encode_timed(image, models, method, qp, chroma, lossless)
            decoded, dec = _decode_timed(encoded.data, models, method)
            files[(method, image_id)] = (encoded.data, encoded.reconstruction)
            rows.append({"method": method, "image_id": image_id, "device": device, "qp": qp,
                         "height": image.shape[0], "width": image.shape[1], "bytes": len(encoded.data),
                         "matches_encoder": bool(np.array_equal(decoded, encoded.reconstruction)), **enc, **dec})
    cpu_images, cpu_threads = int(cfg.get("cpu_images", 1)), int(cfg.get("cpu_threads", os.cpu_count() or 1))
    if cpu_images and device != "cpu":
        torch.set_num_threads(cpu_threads)
        cpu_models = {k: (v.to("cpu") if v is not None else None) for k, v in models.items()}  # in place
        for method in methods:
            for image_id, _ in loaded[:cpu_images]:
                data, reconstruction = files[(method, image_id)]
                decoded, dec = _decode_timed(data, cpu_models, method)
                rows.append({"method": method, "image_id": image_id, "device": f"cpu ({cpu_threads} threads)",
                             "qp": qp, "bytes": len(data), "matches_encoder": bool(np.array_equal(decoded, reconstruction)),
                             **dec})
    table = pd.DataFrame(rows)
    Path(out).mkdir(parents=True, exist_ok=True)
    table.to_parquet(Path(out) / "speed.parquet", index=False)
    info = {"gpu": torch.cuda.get_device_name(0) if device.startswith("cuda") else None,
            "cpu_threads": cpu_threads, "qp": qp, "images": len(loaded), "torch": torch.__version__}
    write_json(Path(out) / "speed.json", info)
    return info


# --- training throughput benchmark --------------------------------------------------------------
def bench_train(config: dict, images: str, segs: str, device: str, out: str, iterations: int = 10,
                warmup: int = 3, variants: list[dict] | None = None, profile: bool = True) -> dict:
    """Images/s of the base model's training step in several settings, and a kernel profile.

    Uses semlic.training's own step (``_Trainer.step``) on real batches of the training set.
    """
    import torch

    from semlic import training

    cfg0 = training.BaseTrainConfig.from_dict(config)
    x_all, s_all = training.load_training_set(Path(images), Path(segs), cfg0.label_nc, cfg0.limit)
    b = cfg0.batch_size
    x_all, s_all = x_all[: max(b, 8 * b)].to(device), s_all[: max(b, 8 * b)].to(device)
    variants = variants or [{"amp": True, "channels_last": True}, {"amp": True, "channels_last": False},
                            {"amp": False, "channels_last": True}]
    results_ = []
    for variant in variants:
        cfg = training.BaseTrainConfig.from_dict({**config, **variant})
        trainer = training._Trainer(cfg, device)
        crop = cfg.crop or min(x_all.shape[-2:])

        def batch(i):
            idx = torch.arange(i * b, (i + 1) * b) % len(x_all)
            x, s = x_all[idx.to(device)], s_all[idx.to(device)]
            return x[..., :crop, :crop].float() / 127.5 - 1, s[..., :crop, :crop]

        compile_started = time.perf_counter()
        for i in range(warmup):
            trainer.step(*batch(i), cfg.lr, True)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        warm_s = time.perf_counter() - compile_started
        with GpuSampler(device, period=0.1) as sampler:
            start = time.perf_counter()
            for i in range(iterations):
                trainer.step(*batch(i), cfg.lr, True)
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            elapsed = time.perf_counter() - start
        record = {**variant, "images_per_s": iterations * b / elapsed, "s_per_iteration": elapsed / iterations,
                  "warmup_s": warm_s, "gpu_busy_share_nvml": sampler.busy_share()}
        if profile and variant is variants[0] and device.startswith("cuda"):
            try:
                record.update(_profile_steps(trainer, batch, cfg, 3))
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


def _profile_steps(trainer, batch, cfg, steps: int) -> dict:
    """Kernel time of ``steps`` training steps over their wall time, and the operators that take it."""
    import torch
    from torch.profiler import ProfilerActivity, profile as torch_profile

    with torch_profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        start = time.perf_counter()
        for i in range(steps):
            trainer.step(*batch(i), cfg.lr, True)
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
def cpu_paper_size(images: list[str], segnet_model: dict, label_nc: int, threads: int, out: str,
                   methods: tuple = ("dsslic", "edms_noenh", "edms"), qp: int = 32) -> dict:
    """Decode seconds per image on this CPU with the *paper-size* networks, randomly initialised.

    The time of a forward pass does not depend on the weights' values, so this measures what a
    trained model costs (the reconstruction itself is meaningless). Answers "CPU decode seconds
    per Kodak image" (DSSLIC paper: 44 s) on a machine without a GPU.
    """
    import pandas as pd
    import torch

    from semlic import codec, coding
    from semlic.checkpoint import state_fingerprint
    from semlic.imageio import load_image
    from semlic.models import DSSLIC, SMapNet, dsslic_config, smapnet_config
    from semlic.segnet.pspnet import PSPNet, PSPNetConfig

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    base = DSSLIC(dsslic_config("paper", label_nc=label_nc)).eval()
    base.fingerprint = state_fingerprint(base.state_dict())
    segnet = PSPNet(PSPNetConfig.from_dict(segnet_model)).eval()
    smapnet = SMapNet(smapnet_config("paper", num_classes=segnet.config.num_classes)).eval()
    models = {"base": base, "segnet": segnet, "smapnet": smapnet}
    rows = []
    for path in images:
        image = load_image(path)
        seg = coding.segment_image(segnet, image)
        for method in methods:
            encoded = codec.encode(image, seg, base, qp, method=method, segnet=segnet,
                                   smapnet=smapnet if method == "edms" else None)
            _, dec = _decode_timed(encoded.data, models, method)
            rows.append({"method": method, "image_id": Path(path).stem, "device": f"cpu ({threads} threads)",
                         "height": image.shape[0], "width": image.shape[1], "qp": qp,
                         "params_base": sum(p.numel() for p in base.parameters()),
                         "params_segnet": sum(p.numel() for p in segnet.parameters()),
                         "params_smapnet": sum(p.numel() for p in smapnet.parameters()), **dec})
    table = pd.DataFrame(rows)
    Path(out).mkdir(parents=True, exist_ok=True)
    table.to_parquet(Path(out) / "cpu_paper_size.parquet", index=False)
    return {"rows": len(rows), "threads": threads}
