"""The training loop (semlic.train_loop.fit): resume = the uninterrupted run, budgets, refusals, the log.

The three trainings (DSSLIC, SMapNet, PSPNet) run tiny configs for 7 iterations with a log
row every 2 and a checkpoint every 3, so the stops below fall inside log windows and between
checkpoints. A toy task (a linear regression) checks the loop's own arithmetic: the log
averages, and that the state brings back Adam's moments and the torch random generator.
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import pytest
import torch

from semlic.errors import ConfigError
from semlic.imageio import save_png
from semlic.methods.dsslic.training import train_dsslic
from semlic.methods.edms.pairs import generate_pairs
from semlic.methods.edms.training import train_smapnet
from semlic.model_files import load_model, load_tensors, read_metadata, save_tensors, state_fingerprint
from semlic.segnet.train import train_segnet
from semlic.train_loop import LOG_FILE, STATE_FILE, TrainingTask, fit, load_state
from tests.conftest import make_image
from tests.test_edms_support import save_tiny_segnet, write_prepared
from tests.test_segnet_support import one_thread  # noqa: F401 (autouse fixture)
from tests.test_segnet_support import TINY_MODEL, prepare_synthetic

TOTAL = 7
LOOP = dict(iterations=TOTAL, log_every=2, checkpoint_every=3)
LOG_ITERATIONS = [2, 4, 6, 7]
TIMING = ["seconds", "images_per_s"]   # the only log columns that may differ between two runs

CONFIGS = {
    "dsslic": dict(preset="tiny", label_nc=5, batch_size=4, ndf=8, lr=1e-3, **LOOP),
    "smapnet": dict(preset="tiny", model={"recursions": 3}, batch_size=4, lr=2e-3, crop=24, **LOOP),
    "pspnet": dict(model=dict(TINY_MODEL), batch_size=2, crop_size=32, scale_range=[0.75, 1.25], base_lr=0.02,
                   **LOOP),
}
MODEL_FILES = {"dsslic": "dsslic.safetensors", "smapnet": "smapnet.safetensors", "pspnet": "segnet.safetensors"}
# a setting that changes the result, and its other value
CHANGED = {"dsslic": ("lambda_l1", 5.0), "smapnet": ("final_lr_multiplier", 0.5), "pspnet": ("momentum", 0.5)}
KINDS = sorted(CONFIGS)


# --- the three trainings, behind one call ----------------------------------------------------
@pytest.fixture(scope="module")
def data(tiny_model, tmp_path_factory) -> dict[str, tuple]:
    root = tmp_path_factory.mktemp("loop_data")
    for i in range(6):
        image, seg = make_image(32, 32, seed=i)
        save_png(root / "dsslic" / "images" / f"{i:03d}.png", image)
        save_png(root / "dsslic" / "segs" / f"{i:03d}.png", seg)
    segnet = load_model(save_tiny_segnet(root / "segnet.safetensors"), expect="pspnet")
    prepared, refs = write_prepared(root / "edms", count=6, size=32)
    generate_pairs(tiny_model, segnet, prepared, "train", refs, root / "pairs", progress=False)
    return {"dsslic": (root / "dsslic" / "images", root / "dsslic" / "segs"), "smapnet": (root / "pairs",),
            "pspnet": (prepare_synthetic(root / "synthetic", size=48, limit=6),)}


def train(kind: str, data: dict, out: Path, stop_after: int | None = None, time_limit_s: float | None = None,
          **changes) -> dict:
    """One call of a training; what it returned, in the same words for the three."""
    config = {**CONFIGS[kind], **changes}
    if kind == "pspnet":
        state = out / STATE_FILE
        start = int(read_metadata(state)["iteration"]) if state.is_file() else 0
        r = train_segnet(config, *data[kind], out, stop_at_step=None if stop_after is None else start + stop_after,
                         time_limit_s=time_limit_s, progress=False)
        return {"completed": r["completed"], "iteration": r["step"], "stopped_by": r["stopped_by"],
                "model_path": r["model_path"] and Path(r["model_path"])}
    run = train_dsslic if kind == "dsslic" else train_smapnet
    r = run(config, *data[kind], out, stop_after=stop_after, time_limit_s=time_limit_s, progress=False)
    return {"completed": r.completed, "iteration": r.iteration, "stopped_by": r.stopped_by, "model_path": r.model_path}


def fingerprint(path: Path) -> bytes:
    """The model file's recorded fingerprint, checked against its weights."""
    recorded = bytes.fromhex(read_metadata(path)["fingerprint"])
    assert recorded == state_fingerprint(load_tensors(path)[0]) == load_model(path).fingerprint
    return recorded


def training_log(out: Path) -> pd.DataFrame:
    return pd.read_parquet(out / LOG_FILE)


@pytest.fixture(scope="module")
def straight(data, tmp_path_factory) -> dict[str, Path]:
    """Each training run without interruption (computed once, on first use)."""
    done: dict[str, Path] = {}

    def get(kind: str) -> Path:
        if kind not in done:
            out = tmp_path_factory.mktemp(f"straight_{kind}")
            result = train(kind, data, out)
            assert result["completed"] and result["iteration"] == TOTAL and result["stopped_by"] is None
            assert result["model_path"] == out / MODEL_FILES[kind]
            assert list(training_log(out)["iteration"]) == LOG_ITERATIONS
            done[kind] = out
        return done[kind]

    return get


def assert_same_run(out: Path, reference: Path, kind: str) -> None:
    assert fingerprint(out / MODEL_FILES[kind]) == fingerprint(reference / MODEL_FILES[kind])
    log, expected = training_log(out), training_log(reference)
    assert list(log["iteration"]) == list(expected["iteration"]) == LOG_ITERATIONS
    pd.testing.assert_frame_equal(log.drop(columns=TIMING), expected.drop(columns=TIMING))


# --- (a) stopped and resumed = uninterrupted ---------------------------------------------------
@pytest.mark.parametrize("kind", KINDS)
def test_stopped_and_resumed_run_is_the_uninterrupted_run(kind, data, straight, tmp_path):
    reference = straight(kind)
    first = train(kind, data, tmp_path, stop_after=3)   # at a checkpoint, inside a log window
    assert first == {"completed": False, "iteration": 3, "stopped_by": "steps", "model_path": None}
    assert read_metadata(tmp_path / STATE_FILE)["iteration"] == "3"
    assert not (tmp_path / MODEL_FILES[kind]).exists()
    second = train(kind, data, tmp_path, stop_after=2)  # between checkpoints
    assert not second["completed"] and second["iteration"] == 5
    last = train(kind, data, tmp_path)
    assert last["completed"] and last["iteration"] == TOTAL and last["model_path"] == tmp_path / MODEL_FILES[kind]
    assert_same_run(tmp_path, reference, kind)


# --- (b) a time budget stops cleanly ----------------------------------------------------------
@pytest.mark.parametrize("kind", KINDS)
def test_time_limit_stops_cleanly_and_a_rerun_completes(kind, data, straight, tmp_path):
    reference = straight(kind)
    first = train(kind, data, tmp_path, time_limit_s=1e-6)   # over budget after the first iteration
    assert first == {"completed": False, "iteration": 1, "stopped_by": "time", "model_path": None}
    assert read_metadata(tmp_path / STATE_FILE)["iteration"] == "1"
    assert not (tmp_path / MODEL_FILES[kind]).exists()
    last = train(kind, data, tmp_path, time_limit_s=600)
    assert last["completed"] and last["stopped_by"] is None and (tmp_path / MODEL_FILES[kind]).is_file()
    assert_same_run(tmp_path, reference, kind)


# --- (c) other settings are refused by name ---------------------------------------------------
@pytest.mark.parametrize("kind", KINDS)
def test_resume_with_a_changed_setting_is_refused_by_name(kind, data, straight, tmp_path):
    reference = straight(kind)
    train(kind, data, tmp_path, stop_after=1)
    state = (tmp_path / STATE_FILE).read_bytes()
    key, value = CHANGED[kind]
    with pytest.raises(ConfigError, match=f"cannot resume, the saved run has {key} = "):
        train(kind, data, tmp_path, **{key: value})
    assert (tmp_path / STATE_FILE).read_bytes() == state and not (tmp_path / MODEL_FILES[kind]).exists()
    # checkpoint_every does not change the result: it may differ
    assert train(kind, data, tmp_path, checkpoint_every=2)["completed"]
    assert fingerprint(tmp_path / MODEL_FILES[kind]) == fingerprint(reference / MODEL_FILES[kind])


# --- (d) the loop itself, on a toy task -------------------------------------------------------
class LinearRegression(TrainingTask):
    """y = x A + noise with a linear layer and Adam; every batch is drawn from the global torch RNG."""

    name = "toy"
    images_per_iteration = 8

    def __init__(self, total: int = 10, lr: float = 0.05, seed: int = 0, fail_at: int | None = None):
        self.total_iterations, self.lr, self.fail_at = total, lr, fail_at
        torch.manual_seed(seed)
        self.layer = torch.nn.Linear(4, 2)
        self.target = torch.randn(4, 2, generator=torch.Generator().manual_seed(99))   # the data, not the seed
        self.opt = torch.optim.Adam(self.layer.parameters(), lr=lr)
        self.losses: list[float] = []
        self.starts: list[int] = []

    def modules(self):
        return {"linear": self.layer}

    def optimizers(self):
        return {"adam": self.opt}

    def resume_key(self) -> dict:
        return {"lr": self.lr, "total": self.total_iterations}

    def begin(self, start: int) -> None:
        self.starts.append(start)

    def step(self, iteration: int) -> dict:
        if iteration == self.fail_at:
            raise RuntimeError(f"killed at iteration {iteration}")
        x = torch.randn(8, 4)
        y = x @ self.target + 0.1 * torch.randn(8, 2)
        loss = torch.nn.functional.mse_loss(self.layer(x), y)
        self.opt.zero_grad()
        loss.backward()
        self.opt.step()
        self.losses.append(float(loss.detach()))
        return {"loss": loss.detach(), "half": 0.5 * loss.detach(), "lr": self.lr, "step_index": iteration}

    def save_model(self, out_dir: Path) -> Path:
        path = Path(out_dir) / "toy.safetensors"
        save_tensors(path, self.layer.state_dict(), {"model": "toy"})
        return path


def toy_weights(path: Path) -> dict[str, torch.Tensor]:
    return load_tensors(path)[0]


def test_log_rows_average_the_losses_of_each_window(tmp_path):
    task = LinearRegression(total=8)
    result = fit(task, tmp_path, log_every=3, checkpoint_every=100, progress=False)
    assert result.completed and result.iteration == 8 and result.model_path == tmp_path / "toy.safetensors"
    log = training_log(tmp_path)
    assert list(log["iteration"]) == [3, 6, 8]
    windows = [task.losses[0:3], task.losses[3:6], task.losses[6:8]]
    assert log["loss"].tolist() == pytest.approx([sum(w) / len(w) for w in windows], rel=1e-6)
    assert log["half"].tolist() == pytest.approx([0.5 * sum(w) / len(w) for w in windows], rel=1e-6)
    assert log["step_index"].tolist() == [2, 5, 7]   # other figures: their last value in the window
    assert (log["lr"] == 0.05).all() and (log["images_per_s"] > 0).all() and log["seconds"].is_monotonic_increasing
    assert result.last["loss"] == pytest.approx(log["loss"].iloc[-1]) and result.last["iteration"] == 8
    assert task.losses[-1] < task.losses[0]
    assert result.images_per_s > 0 and not math.isnan(result.images_per_s)


def test_state_restores_the_adam_moments_and_the_torch_rng(tmp_path):
    first = LinearRegression()
    fit(first, tmp_path, stop_after=4, progress=False)
    moments = {i: {k: v.clone() for k, v in s.items()} for i, s in first.opt.state_dict()["state"].items()}
    rng = torch.get_rng_state()
    assert moments and all(float(s["exp_avg_sq"].abs().sum()) > 0 for s in moments.values())

    fresh = LinearRegression(seed=1)   # other weights, no moments, another generator position
    torch.randn(100)
    assert load_state(tmp_path / STATE_FILE, fresh) == 4
    assert torch.equal(torch.get_rng_state(), rng)
    restored = fresh.opt.state_dict()["state"]
    assert restored.keys() == moments.keys()
    for index, state in moments.items():
        for key in ("exp_avg", "exp_avg_sq", "step"):
            assert torch.equal(restored[index][key], state[key]), (index, key)
    for name, value in first.layer.state_dict().items():
        assert torch.equal(fresh.layer.state_dict()[name], value), name


def test_resume_from_state_matches_and_needs_moments_and_rng(tmp_path):
    straight = LinearRegression()
    fit(straight, tmp_path / "straight", log_every=2, checkpoint_every=100, progress=False)
    expected = toy_weights(tmp_path / "straight" / "toy.safetensors")

    def resumed(out: Path, task: LinearRegression) -> dict[str, torch.Tensor]:
        fit(LinearRegression(), out, log_every=2, stop_after=5, progress=False)
        torch.manual_seed(123)   # the resumed call starts from another generator position
        result = fit(task, out, log_every=2, progress=False)
        assert result.completed and task.starts == [5]
        return toy_weights(out / "toy.safetensors")

    same = resumed(tmp_path / "resumed", LinearRegression(seed=7))
    for name, value in expected.items():
        assert torch.equal(same[name], value), name
    assert list(training_log(tmp_path / "resumed")["iteration"]) == [2, 4, 6, 8, 10]
    pd.testing.assert_frame_equal(training_log(tmp_path / "resumed").drop(columns=TIMING),
                                  training_log(tmp_path / "straight").drop(columns=TIMING))

    # controls: without the saved moments, or with the generator reseeded, the run is another run
    class NoMoments(LinearRegression):
        def begin(self, start):
            super().begin(start)
            self.opt.state.clear()

    class Reseeded(LinearRegression):
        def begin(self, start):
            super().begin(start)
            torch.manual_seed(start)

    for index, control in enumerate((NoMoments(), Reseeded())):
        other = resumed(tmp_path / f"control{index}", control)
        assert not all(torch.equal(other[name], value) for name, value in expected.items())


def test_a_crash_resumes_from_the_last_checkpoint(tmp_path):
    straight = LinearRegression()
    fit(straight, tmp_path / "straight", log_every=2, checkpoint_every=3, progress=False)
    with pytest.raises(RuntimeError, match="killed at iteration 7"):
        fit(LinearRegression(fail_at=7), tmp_path / "crashed", log_every=2, checkpoint_every=3, progress=False)
    assert read_metadata(tmp_path / "crashed" / STATE_FILE)["iteration"] == "6"
    assert not (tmp_path / "crashed" / "toy.safetensors").exists()
    task = LinearRegression(seed=3)
    result = fit(task, tmp_path / "crashed", log_every=2, checkpoint_every=3, progress=False)
    assert result.completed and task.starts == [6] and len(task.losses) == 4
    expected = toy_weights(tmp_path / "straight" / "toy.safetensors")
    for name, value in toy_weights(tmp_path / "crashed" / "toy.safetensors").items():
        assert torch.equal(value, expected[name]), name
    pd.testing.assert_frame_equal(training_log(tmp_path / "crashed").drop(columns=TIMING),
                                  training_log(tmp_path / "straight").drop(columns=TIMING))


def test_toy_refusals_restart_and_a_finished_run(tmp_path):
    fit(LinearRegression(), tmp_path, stop_after=2, progress=False)
    with pytest.raises(ConfigError, match="cannot resume, the saved run has lr = 0.05 but this run has 0.1"):
        fit(LinearRegression(lr=0.1), tmp_path, progress=False)
    restarted = LinearRegression(lr=0.1)
    result = fit(restarted, tmp_path, resume=False, progress=False)   # a restart ignores the saved state
    assert result.completed and restarted.starts == [0] and len(restarted.losses) == 10
    again = LinearRegression(lr=0.1)
    rerun = fit(again, tmp_path, progress=False)   # nothing left to do: no step, the model is kept
    assert rerun.completed and rerun.iteration == 10 and again.losses == [] and again.starts == [10]
    assert list(training_log(tmp_path)["iteration"]) == list(range(1, 11))
    for bad in (dict(time_limit_s=0), dict(stop_after=-1), dict(log_every=0), dict(checkpoint_every=0)):
        with pytest.raises(ConfigError):
            fit(LinearRegression(), tmp_path / "bad", progress=False, **bad)


def test_a_pause_and_a_budget_are_two_names():
    """Minutes become seconds in one place; the training commands pause with --pause-after (a config's
    ``minutes`` is the budget), and --minutes is no longer one of their options."""
    from semlic.cli import build_parser
    from semlic.config_files import seconds

    assert seconds(None) is None and seconds(1.5) == 90.0 and seconds("2") == 120.0
    parser = build_parser()
    for argv in (["train-segnet", "--config", "C", "--data", "D", "--out", "O"], ["train-dsslic", "--images", "I", "--segs", "S", "--out", "O"],
                 ["train-smapnet", "--pairs", "P", "--out", "O"]):
        args = parser.parse_args(argv + ["--pause-after", "0.5"])
        assert seconds(args.pause_after) == 30.0
        with pytest.raises(SystemExit):
            parser.parse_args(argv + ["--minutes", "0.5"])
