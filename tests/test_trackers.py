"""--report-to: the tracker gets log.jsonl's scalars, the config and the run name; its package
is imported only when chosen; a missing one is a one-line install hint."""
from __future__ import annotations

import subprocess
import sys
import types
from pathlib import Path

import pytest

import train
from minijarvis.training import trackers
from minijarvis.errors import InputError
from minijarvis.training.runtime import read_log

ROOT = Path(__file__).resolve().parents[1]
FAST = ["--stage", "align", "--synthetic-size", "48", "--batch-size", "4", "--max-steps", "3"]


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)


def test_tensorboard_events_hold_the_log_scalars_config_and_run_name():
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    assert train.main([*FAST, "--report-to", "tensorboard", "--output-dir", "runs/tb-run"]) == 0
    rows = read_log("runs/tb-run/log.jsonl")
    logdir = Path("runs/tb-run/tensorboard/tb-run")  # the run name names the folder
    events = EventAccumulator(str(logdir), size_guidance={"scalars": 0, "tensors": 0})
    events.Reload()
    expected = {f"train/{k}" for k in trackers.scalars(rows[0])}
    assert expected == set(events.Tags()["scalars"]), "every numeric log field, nothing else"
    for key in ("loss", "ntp_loss", "lr", "grad_norm"):
        got = [(e.step, e.value) for e in events.Scalars(f"train/{key}")]
        want = [(r["step"], pytest.approx(r[key], rel=1e-6)) for r in rows]
        assert got == want, f"train/{key} differs from log.jsonl"
    hparams = events.PluginTagToContent("hparams")
    assert "_hparams_/session_start_info" in hparams
    info = hparams["_hparams_/session_start_info"].decode("latin-1")
    assert "model.method" in info and "jarvis" in info and "train.report_to" in info


def test_a_missing_tracker_package_is_a_one_line_install_hint(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "wandb", None)  # `import wandb` raises ImportError
    with pytest.raises(InputError, match=r"pip install wandb"):
        train.main([*FAST, "--report-to", "wandb"])
    assert not Path("runs").exists(), "it must fail before building a model or writing anything"
    from minijarvis.errors import run_main
    assert run_main(train.main, "train.py", [*FAST, "--report-to", "wandb"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("train.py: error: --report-to wandb needs")


def test_wandb_gets_the_run_name_config_and_scalars_offline(monkeypatch):
    calls = {"log": []}

    class Run:
        def log(self, values, step):
            calls["log"].append((step, values))

        def finish(self):
            calls["finished"] = True

    def init(**kwargs):
        calls["init"] = kwargs
        return Run()

    monkeypatch.setitem(sys.modules, "wandb", types.SimpleNamespace(init=init))
    monkeypatch.delenv("WANDB_MODE", raising=False)
    assert train.main([*FAST, "--report-to", "wandb", "--output-dir", "runs/wb"]) == 0
    init = calls["init"]
    assert init["mode"] == "offline" and init["name"] == "wb" and init["project"] == "minijarvis"
    assert init["config"]["model.method"] == "jarvis" and init["config"]["train.max_steps"] == 3
    rows = read_log("runs/wb/log.jsonl")
    assert [s for s, _ in calls["log"]] == [r["step"] for r in rows]
    assert calls["log"][0][1]["train/loss"] == pytest.approx(rows[0]["loss"])
    assert calls.get("finished"), "the run must be finished (offline files flushed)"


def test_none_imports_no_tracker_package(monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    trackers.require("none")
    assert trackers.open_tracker("none", Path("out"), {}) is None


def test_train_py_rejects_an_unknown_tracker(capsys):
    from minijarvis.training.cli import parse_args
    with pytest.raises(SystemExit) as e:
        parse_args(["--report-to", "mlflow"])
    assert e.value.code == 2 and "--report-to" in capsys.readouterr().err


def test_flat_hparams_keep_scalars_and_write_the_rest_as_json():
    from minijarvis.config import TrainConfig
    flat = trackers.flat_hparams({"train": TrainConfig(), "stage": "align", "grid": [12, 12]})
    assert flat["train.lr"] == 1e-3 and flat["train.bf16"] is False and flat["stage"] == "align"
    assert flat["grid"] == "[12, 12]"
    assert all(isinstance(v, (int, float, str, bool)) for v in flat.values())


def test_importing_train_loads_no_tracker_package():
    code = ("import sys, train, minijarvis.training.trackers; "
            "print(sorted(m for m in ('wandb', 'tensorboard', 'torch.utils.tensorboard') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", f"imported at start-up: {out.stdout.strip()}"


def test_a_resumed_tensorboard_run_replaces_the_events_after_its_step(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    first = trackers.open_tracker("tensorboard", tmp_path / "run", {})
    for step in (1, 2, 3, 4):
        first.log({"step": step, "loss": 1.0})
    first.close()
    resumed = trackers.open_tracker("tensorboard", tmp_path / "run", {}, done_steps=2)
    for step in (3, 4):
        resumed.log({"step": step, "loss": 2.0})
    resumed.close()
    events = EventAccumulator(str(tmp_path / "run" / "tensorboard" / "run"))
    events.Reload()
    assert [(e.step, e.value) for e in events.Scalars("train/loss")] == [(1, 1.0), (2, 1.0), (3, 2.0), (4, 2.0)]


def test_tensorboard_after_a_crash_and_resume_holds_each_step_once():
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    args = [*FAST[:-1], "4", "--save-every", "2", "--report-to", "tensorboard", "--output-dir", "runs/r"]

    def crash(trainer, row):
        if row["step"] == 3:  # logged, but after the step-2 checkpoint
            raise RuntimeError("simulated crash")
    with pytest.raises(RuntimeError, match="simulated crash"):
        train.main(args, on_step=crash)
    assert train.main([*args, "--resume"]) == 0
    events = EventAccumulator("runs/r/tensorboard/r")  # as TensorBoard reads it
    events.Reload()
    rows = read_log("runs/r/log.jsonl")
    got = [(e.step, e.value) for e in events.Scalars("train/loss")]
    assert got == [(r["step"], pytest.approx(r["loss"], rel=1e-6)) for r in rows]
    assert [s for s, _ in got] == [1, 2, 3, 4]
