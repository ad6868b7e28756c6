"""The front door of train.py, eval.py and bench.py: a bad flag value is one line naming the flag
(exit status 2), an unusable file one line naming the file (exit status 1), never a traceback
unless --debug. Most cases run in-process through errors.run_main, as the scripts do; a few run
as real subprocesses to check the exit status and stderr a user sees."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import bench
import eval as evalpy
import train
from minijarvis.training import cli
from minijarvis.config import MaskConfig, TrainConfig, preset
from minijarvis.errors import InputError, run_main
from minijarvis.training.resume import RESUME_FREE, _run_flags, resume_conflicts

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = {"train.py": train.main, "eval.py": evalpy.main, "bench.py": bench.main}


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)


def one_line(err: str) -> str:
    assert err.count("\n") == 1 and "Traceback" not in err, f"not one line:\n{err}"
    return err


BAD_FLAGS = [("train.py", flag, value) for flag, value in [
    ("--batch-size", "0"), ("--grad-accum", "0"), ("--lr", "0"), ("--lr", "nan"), ("--lr", "inf"),
    ("--epochs", "0"), ("--max-steps", "0"), ("--max-steps", "-2"), ("--warmup-ratio", "1"),
    ("--warmup-ratio", "-0.1"), ("--jepa-lambda", "1.5"), ("--jepa-layer", "0"), ("--save-every", "-1"),
    ("--synthetic-size", "0"), ("--max-length", "7"), ("--threads", "-1"), ("--num-workers", "-1"),
    ("--log-every", "0"), ("--weight-decay", "-0.1"), ("--max-grad-norm", "0"), ("--seed", "-1"),
    ("--batch-size", "two"), ("--context-encoder", "no_such_vit"), ("--target-encoder", "x"),
    ("--method", "jepa"), ("--stage", "pretrain"), ("--jepa-distance", "l2"), ("--plain-style", "x"),
    ("--image-folder", "imgs"), ("--synthetic-size", "64 --data d.json")]
] + [("eval.py", flag, value) for flag, value in [
    ("--n-per-task", "0"), ("--limit", "0"), ("--max-new-tokens", "0"), ("--batch-size", "0"),
    ("--seed", "-1"), ("--device", "tpu9"), ("--answer-mode", "vote"), ("--bench", "mmlu")]
] + [("bench.py", flag, value) for flag, value in [
    ("--steps", "0"), ("--batch-size", "0"), ("--stage2-batch-size", "0"), ("--max-batch", "0"),
    ("--warmup", "-1"), ("--caption-len", "0"), ("--chat-len", "10"), ("--peak-tflops", "0"),
    ("--threads", "-1"), ("--llm-layers", "0"), ("--llm-layers", "99"), ("--device", "gpu"),
    ("--methods", "jarvis,foo"), ("--seed", "-1"), ("--preset", "gpt2")]]


@pytest.mark.parametrize("script, flag, value", BAD_FLAGS)
def test_a_bad_flag_value_is_one_line_naming_the_flag_and_exit_2(script, flag, value, capsys):
    argv = [flag, *value.split()] + (["--checkpoint", "ckpt"] if script == "eval.py" else [])
    assert run_main(SCRIPTS[script], script, argv) == 2
    err = one_line(capsys.readouterr().err)
    assert err.startswith(f"{script}: error: ") and flag in err, err


@pytest.mark.parametrize("flag, value", [("--batch-size", "0"), ("--grad-accum", "0"), ("--lr", "0")])
def test_zero_is_refused_not_replaced_by_the_default(flag, value):
    with pytest.raises(SystemExit):
        cli.parse_args([flag, value])


def test_explicit_values_reach_the_train_config_even_at_the_edges():
    args = cli.parse_args(["--batch-size", "1", "--grad-accum", "1", "--lr", "1e-9", "--max-steps", "-1",
                           "--warmup-ratio", "0", "--jepa-lambda", "1"])
    tcfg = cli.new_train_config(args, real=True, world=1, output=Path("x"))
    assert (tcfg.batch_size, tcfg.grad_accum, tcfg.lr, tcfg.warmup_ratio) == (1, 1, 1e-9, 0.0)


def _checkpoint_dir(root: Path, config: str = "{}") -> Path:
    root.mkdir(parents=True)
    (root / "config.json").write_text(config)
    (root / "model.safetensors").write_bytes(b"")
    (root / "tokenizer").mkdir()
    return root


def _bad_files(tmp: Path) -> dict:
    (tmp / "broken.json").write_text("[{ not json")
    (tmp / "object.json").write_text('{"id": 1}')
    (tmp / "plain_folder").mkdir()
    (tmp / "a_file").write_text("x")
    _checkpoint_dir(tmp / "corrupt_ckpt", config="{ nope")
    return {
        "missing data": ("train.py", ["--data", "nope.json"], "nope.json"),
        "invalid JSON": ("train.py", ["--data", "broken.json"], "broken.json"),
        "JSON not a list": ("train.py", ["--data", "object.json"], "object.json"),
        "missing image folder": ("train.py", ["--data", "object.json", "--image-folder", "no_images"], "no_images"),
        "init not a checkpoint": ("train.py", ["--stage", "finetune", "--init", "plain_folder"], "plain_folder"),
        "init corrupt config": ("train.py", ["--stage", "finetune", "--init", "corrupt_ckpt"], "config.json"),
        "resume without checkpoint": ("train.py", ["--resume", "--output-dir", "fresh"], "fresh/checkpoint"),
        "missing weights file": ("train.py", ["--context-weights", "w.safetensors"], "w.safetensors"),
        "output-dir is a file": ("train.py", ["--output-dir", "a_file"], "a_file"),
        "llm folder without config": ("train.py", ["--llm", "./plain_folder"], "plain_folder"),
        "eval: not a checkpoint": ("eval.py", ["--checkpoint", "plain_folder"], "plain_folder"),
        "eval: corrupt config": ("eval.py", ["--checkpoint", "corrupt_ckpt", "--limit", "4"], "config.json"),
        "eval: missing bench dir": ("eval.py", ["--checkpoint", "corrupt_ckpt", "--bench", "mmvp",
                                                "--bench-dir", "no_bench"], "no_bench"),
        "bench: output is a folder": ("bench.py", ["--output", "plain_folder"], "plain_folder"),
    }


CASES = [
    "missing data", "invalid JSON", "JSON not a list", "missing image folder", "init not a checkpoint",
    "init corrupt config", "resume without checkpoint", "missing weights file", "output-dir is a file",
    "llm folder without config", "eval: not a checkpoint", "eval: corrupt config", "eval: missing bench dir",
    "bench: output is a folder"]


@pytest.mark.parametrize("case", CASES)
def test_an_unusable_file_is_one_line_naming_it_and_exit_1(case, tmp_path, capsys):
    script, argv, name = _bad_files(tmp_path)[case]
    assert run_main(SCRIPTS[script], script, argv) == 1
    err = one_line(capsys.readouterr().err)
    assert err.startswith(f"{script}: error: ") and name in err, err


@pytest.mark.parametrize("argv, needle", [
    (["--max-length", "30"], "--max-length 30"),  # the tiny model's image alone takes 36 slots
    (["--jepa-layer", "9"], "--jepa-layer"),  # the tiny LLM has 4 layers
    (["--synthetic-size", "2"], "--batch-size"),  # 2 records cannot fill a batch of 8
    (["--llm", "./plain_folder", "--random-init"], "--random-init"),
])
def test_flags_this_model_or_data_cannot_take_are_one_line_and_exit_2(argv, needle, tmp_path, capsys):
    (tmp_path / "plain_folder").mkdir()
    (tmp_path / "plain_folder" / "config.json").write_text("{}")
    assert run_main(train.main, "train.py", argv) == 2
    err = capsys.readouterr().err  # may hold progress bars (the synthetic data) before the error
    lines = [line for line in err.splitlines() if "error:" in line]
    assert len(lines) == 1 and "Traceback" not in err and needle in lines[0], err


def test_debug_shows_the_traceback_instead(tmp_path):
    with pytest.raises(InputError, match="nope.json"):
        run_main(train.main, "train.py", ["--data", "nope.json", "--debug"])


def _run(script, *argv):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, str(ROOT / script), *argv], capture_output=True, text=True,
                          env=env, timeout=300)


@pytest.mark.parametrize("script, argv, code, needle", [
    ("train.py", ["--batch-size", "0"], 2, "argument --batch-size: must be an integer >= 1"),
    ("eval.py", ["--checkpoint", "no_ckpt"], 1, "no_ckpt: no such checkpoint folder"),
])
def test_scripts_exit_with_the_status_and_one_line(script, argv, code, needle):
    done = _run(script, *argv)
    assert done.returncode == code, done.stderr
    assert needle in done.stderr and "Traceback" not in done.stderr, done.stderr
    assert len([line for line in done.stderr.splitlines() if line.strip()]) == 1, done.stderr


# ---------------------------------------------------------------- --resume: which flags may differ
def _saved(**train):
    return {"train": TrainConfig(max_steps=3, batch_size=4, **train), "model": preset("tiny"), "mask": MaskConfig()}


@pytest.mark.parametrize("argv, shown", [
    (["--max-steps", "6"], "--max-steps 3 -> 6"), (["--epochs", "2"], "--epochs 1.0 -> 2.0"),
    (["--batch-size", "2"], "--batch-size 4 -> 2"), (["--grad-accum", "2"], "--grad-accum 1 -> 2"),
    (["--lr", "1e-4"], "--lr 0.001 -> 0.0001"), (["--warmup-ratio", "0.1"], "--warmup-ratio 0.03 -> 0.1"),
    (["--seed", "1"], "--seed 0 -> 1"), (["--jepa-lambda", "0.5"], "--jepa-lambda 0.2 -> 0.5"),
    (["--method", "llava"], "--method jarvis -> llava"), (["--bf16"], "--bf16 off -> on"),
    (["--mask-clean"], "--mask-clean off -> on"), (["--data", "x.json"], "--data not set -> x.json"),
    (["--preset", "gemma2-2b"], "--preset tiny -> gemma2-2b"),
    (["--bidirectional-visual", "off"], "--bidirectional-visual on -> off"),
    (["--context-encoder", "clip-l-336"], "--context-encoder vit_base_patch16_clip_224 -> clip-l-336"),
])
def test_resume_names_each_flag_that_differs_from_the_saved_run(argv, shown):
    assert resume_conflicts(cli.parse_args(["--resume", *argv]), _saved()) == [shown]


@pytest.mark.parametrize("argv", [[], ["--max-steps", "3", "--batch-size", "4", "--lr", "1e-3"],
                                  ["--save-every", "5", "--log-every", "3", "--threads", "2", "--num-workers", "1"],
                                  ["--preset", "tiny", "--method", "jarvis", "--context-encoder", "tiny-clip",
                                   "--output-dir", "x", "--debug", "--bidirectional-visual", "on"]])
def test_resume_accepts_unset_identical_and_plan_free_flags(argv):
    assert resume_conflicts(cli.parse_args(["--resume", *argv]), _saved()) == []


def test_every_train_flag_is_compared_on_resume_or_declared_plan_free():
    """A new flag must map to a config field of the same name (or be spelled out in
    resume._run_flags), or be declared plan-free in RESUME_FREE."""
    dests = set(vars(cli.parse_args([]))) - {"given"}
    unclassified = dests - set(_run_flags(_saved())) - set(RESUME_FREE) - {"resume", "output_dir", "debug"}
    assert not unclassified, f"flags --resume neither compares nor allows: {sorted(unclassified)}"


def test_given_flags_tell_explicit_values_from_defaults():
    assert cli.parse_args(["--max-steps", "-1", "--bf16", "--lr=1e-3"]).given == {"max_steps", "bf16", "lr"}
    assert cli.parse_args([]).given == frozenset()


def test_a_record_that_is_not_an_object_is_skipped_counted_and_named(tmp_path):
    from minijarvis.data.llava import LlavaDataset, read_llava_json
    from minijarvis.errors import BadRecord
    from minijarvis.llm import build_tokenizer
    path = tmp_path / "d.json"
    good = {"id": "ok", "image": "a.png", "conversations": [{"from": "human", "value": "<image>"},
                                                           {"from": "gpt", "value": "a cat"}]}
    path.write_text(json.dumps([good, 5, "text", [1]]))
    assert [type(r) for r in read_llava_json(path)] == [dict, int, str, list]
    kw = dict(stage="align", image_size=32, image_mean=(0.5,) * 3, max_length=64, num_visual=4)
    ds = LlavaDataset(path, tmp_path, build_tokenizer(), **kw)
    assert len(ds) == 1 and ds.num_invalid == 3
    assert [p[0] for p in ds.problems] == ["#1", "#2", "#3"]
    assert "JSON int, not an object" in ds.problems[0][1]
    with pytest.raises(BadRecord, match=r"d\.json: record '#1': record is a JSON int"):
        LlavaDataset(path, tmp_path, build_tokenizer(), strict=True, **kw)
