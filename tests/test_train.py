"""train.py end to end on the tiny preset: both stages, resume after a crash or Ctrl-C,
bad records, a non-finite loss, and a 2-process torchrun on CPU (DDP and FSDP2)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

import train
from minijarvis.training.runtime import read_log

ROOT = Path(__file__).resolve().parents[1]
FAST = ["--synthetic-size", "48", "--batch-size", "4"]


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # runs/ and the synthetic-data cache go to a fresh folder


def losses(path):
    return [(r["step"], r["loss"], r["ntp_loss"], r.get("jepa_loss"), r["jepa_ran"])
            for r in read_log(path)]


def test_align_then_finetune_write_model_log_and_plot():
    assert train.main(["--stage", "align", *FAST, "--max-steps", "4"]) == 0
    out = Path("runs/tiny-jarvis-align")
    for name in ("config.json", "model.safetensors", "tokenizer", "log.jsonl", "loss.png",
                 "checkpoint/trainer.json"):
        assert (out / name).exists(), f"stage 1 did not write {name}"
    rows = read_log(out / "log.jsonl")
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    assert {"loss", "ntp_loss", "lr", "samples_per_s", "tokens_per_s", "peak_mem_mb"} <= rows[0].keys()
    saved = json.loads((out / "config.json").read_text())
    assert saved["train"]["max_steps"] == 4 and saved["model"]["method"] == "jarvis"
    assert train.main(["--stage", "finetune", "--init", str(out), *FAST, "--max-steps", "2"]) == 0
    s2 = Path("runs/tiny-jarvis-finetune")
    assert json.loads((s2 / "config.json").read_text())["stage"] == "finetune"


def _crash_at(step):
    def on_step(trainer, row):
        if row["step"] == step:
            raise RuntimeError("simulated crash")
    return on_step


def test_killed_run_resumes_with_the_same_losses():
    args = ["--stage", "align", *FAST, "--max-steps", "6", "--save-every", "2"]
    assert train.main([*args, "--output-dir", "full"]) == 0
    with pytest.raises(RuntimeError, match="simulated crash"):
        train.main([*args, "--output-dir", "crashed"], on_step=_crash_at(5))
    assert json.loads(Path("crashed/checkpoint/trainer.json").read_text())["progress"]["step"] == 4
    assert train.main([*args, "--output-dir", "crashed", "--resume"]) == 0
    assert losses("crashed/log.jsonl") == losses("full/log.jsonl"), "resume must replay exactly"


def test_ctrl_c_checkpoints_the_step_and_resume_continues():
    args = ["--stage", "align", *FAST, "--max-steps", "5"]
    assert train.main([*args, "--output-dir", "full"]) == 0

    def interrupt(trainer, row):
        if row["step"] == 2:
            os.kill(os.getpid(), signal.SIGINT)
    previous = signal.getsignal(signal.SIGINT)
    try:
        assert train.main([*args, "--output-dir", "cut"], on_step=interrupt) == 130
    finally:
        signal.signal(signal.SIGINT, previous)
    assert json.loads(Path("cut/checkpoint/trainer.json").read_text())["progress"]["step"] == 2
    assert train.main([*args, "--output-dir", "cut", "--resume"]) == 0
    assert losses("cut/log.jsonl") == losses("full/log.jsonl")


def test_resume_refuses_a_changed_plan_and_accepts_the_same_one(capsys):
    from minijarvis.errors import run_main
    args = ["--stage", "align", *FAST, "--max-steps", "4", "--save-every", "2", "--output-dir", "cut"]
    with pytest.raises(RuntimeError, match="simulated crash"):
        train.main(args, on_step=_crash_at(3))
    capsys.readouterr()
    assert run_main(train.main, "train.py", [*args, "--resume", "--max-steps", "6", "--lr", "5e-4"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--max-steps 4 -> 6" in err and "--lr 0.001 -> 0.0005" in err, err
    progress = json.loads(Path("cut/checkpoint/trainer.json").read_text())["progress"]
    assert progress["step"] == 2, "a refused resume leaves the checkpoint as it was"
    # The same plan, with the flags that change no result altered: accepted, and they apply.
    assert train.main([*args, "--resume", "--save-every", "1", "--log-every", "1", "--threads", "1"]) == 0
    assert [r["step"] for r in read_log("cut/log.jsonl")] == [1, 2, 3, 4]
    assert json.loads(Path("cut/config.json").read_text())["train"]["save_every"] == 1


def test_resume_refuses_another_process_count_or_planned_total(capsys):
    from minijarvis.errors import InputError, UsageError
    args = ["--stage", "align", *FAST, "--max-steps", "2", "--output-dir", "run"]
    assert train.main(args) == 0
    state = Path("run/checkpoint/trainer.json")
    saved = json.loads(state.read_text())
    assert train.main([*args, "--resume"]) == 0, "a finished run resumes to nothing"
    assert "nothing left to train" in capsys.readouterr().out
    for change, error, needle in (
            ({"positions": saved["progress"]["positions"] * 2}, UsageError, "written by 2 processes"),
            ({"total": 7}, InputError, "plan 2 optimizer steps, but run/checkpoint planned 7")):
        state.write_text(json.dumps({**saved, "progress": {**saved["progress"], **change}}))
        with pytest.raises(error, match=needle):
            train.main([*args, "--resume"])


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(monkeypatch, capsys):
    from minijarvis.model import JarvisModel
    forward = JarvisModel.forward
    calls = {"n": 0}

    def poisoned(self, batch, **kwargs):
        out = forward(self, batch, **kwargs)
        calls["n"] += 1
        if calls["n"] == 4:
            out["loss"] = out["loss"] * float("nan")
        return out
    monkeypatch.setattr(JarvisModel, "forward", poisoned)
    code = train.main(["--stage", "align", *FAST, "--max-steps", "6", "--save-every", "2",
                       "--output-dir", "nan"])
    assert code == 1
    assert "non-finite loss" in capsys.readouterr().out
    progress = json.loads(Path("nan/checkpoint/trainer.json").read_text())["progress"]
    assert progress["step"] == 2, "the checkpoint from before the bad step is kept"
    assert not Path("nan/model.safetensors").exists(), "no final model from a failed run"


def _llava_folder(root: Path) -> Path:
    """A LLaVA-558k-style file with good records and one of each bad kind."""
    (root / "img").mkdir(parents=True)
    Image.new("RGB", (40, 30), "red").save(root / "img" / "ok.png")
    Image.new("L", (30, 40), 128).save(root / "img" / "gray.png")
    Image.new("RGBA", (30, 30), (0, 0, 255, 100)).save(root / "img" / "rgba.png")
    Image.new("P", (30, 30)).save(root / "img" / "pal.png")
    (root / "img" / "corrupt.png").write_bytes(b"not a png at all")

    def rec(i, image, caption="a red square"):
        return {"id": i, "image": image, "conversations": [
            {"from": "human", "value": "<image>\nDescribe."}, {"from": "gpt", "value": caption}]}
    records = [rec(i, f"img/{n}.png") for i, n in enumerate(["ok", "gray", "rgba", "pal"] * 3)]
    records += [rec("missing", "img/nope.png"), rec("corrupt", "img/corrupt.png"),
                rec("empty", "img/ok.png", caption=""), {"id": "noconv", "image": "img/ok.png"},
                rec("escape", "../outside.png")]
    path = root / "data.json"
    path.write_text(json.dumps(records))
    return path


def test_bad_records_are_skipped_counted_and_named(tmp_path, capsys):
    data = _llava_folder(tmp_path / "llava")
    # 14 records pass the structural checks (12 good, 'missing', 'corrupt'); batch 2 uses all.
    code = train.main(["--stage", "align", "--data", str(data), "--image-folder",
                       str(tmp_path / "llava"), "--batch-size", "2", "--epochs", "1",
                       "--output-dir", "bad"])
    assert code == 0
    out = capsys.readouterr()
    text = out.out + out.err
    for rid in ("'empty'", "'noconv'", "'escape'", "'missing'", "'corrupt'"):
        assert rid in text, f"bad record {rid} must be reported by id"
    rows = read_log("bad/log.jsonl")
    assert rows[-1]["skipped"] == 2, "image failures are counted in the log"
    assert len(rows) == 7, "every micro-batch trains, none crashes"


def test_strict_stops_on_the_first_bad_record(tmp_path):
    from minijarvis.errors import BadRecord
    data = _llava_folder(tmp_path / "llava")
    with pytest.raises(BadRecord, match="empty"):
        train.main(["--stage", "align", "--data", str(data), "--image-folder",
                    str(tmp_path / "llava"), "--strict", "--output-dir", "strict"])


def test_a_llava_file_that_is_not_json_is_named(tmp_path):
    bad = tmp_path / "broken.json"
    bad.write_text("{ this is not json")
    from minijarvis.errors import InputError
    with pytest.raises(InputError, match="broken.json"):
        train.main(["--stage", "align", "--data", str(bad), "--output-dir", "x"])


def _torchrun(args, cwd):
    env = {**os.environ, "PYTHONPATH": f"{ROOT}:{ROOT / 'tests'}", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
           "--master_port", str(29500 + os.getpid() % 1000), str(ROOT / "tests" / "dist_worker.py"),
           *args]
    done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return [json.loads(Path(cwd, f"rank{r}.json").read_text()) for r in (0, 1)]


def test_torchrun_two_cpu_processes_agree_on_weights_and_jepa_draws(tmp_path):
    r0, r1 = _torchrun(["--stage", "align", *FAST, "--max-steps", "4", "--output-dir", "s1"], tmp_path)
    assert r0["jepa_ran"] == r1["jepa_ran"], "ranks took different JEPA/skip branches"
    assert 0 < len(r0["jepa_ran"]) == 4
    assert r0["checksum"] == r1["checksum"], "DDP ranks hold different weights"
    assert r0["global_batch"] == 8
    r0, r1 = _torchrun(["--stage", "finetune", "--init", "s1", *FAST, "--max-steps", "2",
                        "--output-dir", "s2"], tmp_path)
    assert r0["checksum"] == r1["checksum"], "FSDP2 ranks hold different (gathered) weights"
    assert r0["fsdp"] and (tmp_path / "s2" / "model.safetensors").exists()


def test_method_flags_reach_the_model_config():
    from minijarvis.training.cli import _model_overrides, parse_args
    assert "skip_dropped" not in _model_overrides(parse_args([])), "the default stays the config's"
    got = _model_overrides(parse_args(["--keep-dropped-slots", "--pos-embed", "--bidirectional-visual", "off"]))
    assert (got["skip_dropped"], got["pos_embed"], got["bidirectional_visual"]) == (False, True, False)


def test_image_and_context_flags_reach_the_model_config():
    from minijarvis.training.cli import new_model_config, parse_args
    cfg, _ = new_model_config(parse_args([]))
    assert (cfg.image_aspect, cfg.ctx_layer, cfg.ctx_norm) == (None, None, None), \
        "unset flags leave the release's defaults (per stage, per encoder family)"
    assert (cfg.resolved_image_aspect("align"), cfg.resolved_image_aspect("finetune")) == ("crop", "pad")
    cfg, _ = new_model_config(parse_args(["--image-aspect", "pad", "--context-layer", "last",
                                          "--context-norm", "on"]))
    assert (cfg.resolved_image_aspect("align"), cfg.context_features()) == ("pad", (-1, True))
    assert new_model_config(parse_args(["--context-layer", "-3"]))[0].ctx_layer == -3


@pytest.mark.parametrize("argv, words", [
    (["--context-layer", "middle"], "--context-layer"), (["--image-aspect", "fit"], "--image-aspect"),
    (["--stage", "finetune", "--init", "x", "--context-layer", "last"], "--context-layer")])
def test_bad_image_and_context_flags_exit_2_naming_the_flag(argv, words, capsys):
    from minijarvis.training.cli import parse_args
    with pytest.raises(SystemExit) as e:
        parse_args(argv)
    assert e.value.code == 2 and words in capsys.readouterr().err


def test_mask_min_keep_flag_reaches_the_sampler_and_a_grid_too_small_for_it_is_a_usage_error():
    from minijarvis.errors import UsageError
    assert train.main(["--random-init", "--mask-min-keep", "3", "--max-steps", "1", *FAST, "--output-dir", "o"]) == 0
    assert json.loads(Path("o/config.json").read_text())["mask"]["mask_min_keep"] == 3
    with pytest.raises(UsageError, match=r"min_keep=40.*Use min_keep <= 3"):
        train.main(["--random-init", "--mask-min-keep", "40", "--max-steps", "1", *FAST, "--output-dir", "p"])
