"""Issue 23: files read back, concurrent runs, crash leftovers, hostile records. Each bad input
ends in one line and its exit status, and loses nothing; scripts/fuzz.py runs them all."""
from __future__ import annotations

import errno
import importlib.util
import os
import re
import shutil
import signal
import socket
import subprocess
from pathlib import Path

import pytest
from PIL import Image

import eval as eval_script
import probe
import study
from minijarvis.data.llava import LlavaDataset
from minijarvis.data.images import load_image
from minijarvis.errors import BadRecord
from minijarvis.errors import InputError, run_main
from minijarvis.training import runtime

ROOT = Path(__file__).resolve().parents[1]


def test_fuzz_script_every_case_passes(tmp_path, monkeypatch, capsys):
    spec = importlib.util.spec_from_file_location("fuzz", ROOT / "scripts" / "fuzz.py")
    fuzz = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(fuzz)
    monkeypatch.chdir(tmp_path)
    code = fuzz.main([])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "FAIL" not in out and out.count(" OK") >= 20, out


# ---------------------------------------------------------------- item 2: records
def _record(human: str, gpt: str) -> dict:
    return {"id": "r", "image": "a.png", "conversations": [{"from": "human", "value": human},
                                                           {"from": "gpt", "value": gpt}]}


@pytest.mark.parametrize("stage, record, reason", [
    ("align", _record("Describe.", "a <image> cat"), "caption holds <image>"),
    ("finetune", _record("What is it?", "<image> a cat"), "<image> in assistant turn 1"),
])
def test_an_image_token_where_no_image_goes_is_skipped_at_load(stage, record, reason, tokenizer, tmp_path):
    ds = LlavaDataset([record], str(tmp_path), tokenizer, stage=stage, image_size=32,
                      image_mean=(0.5, 0.5, 0.5), max_length=64, num_visual=4)
    assert len(ds) == 0 and ds.problems and reason in ds.problems[0][1], ds.problems


# ---------------------------------------------------------------- item 6: images
@pytest.mark.parametrize("size, aspect, words", [((1, 50_000), "crop", "aspect ratio 50000:1"),
                                                 ((9_000, 1_000), "pad", "81,000,000"),
                                                 ((1_000, 20_000), "pad", "400,000,000")])
def test_an_image_too_costly_to_fit_is_refused_before_any_work(size, aspect, words, tmp_path, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 50_000_000)
    Image.new("L", size).save(tmp_path / "x.png")
    with pytest.raises(BadRecord, match=words.replace("(", r"\(")):
        load_image(tmp_path / "x.png", 192, (0.5, 0.5, 0.5), aspect)


def test_a_long_but_fittable_image_still_loads(tmp_path):
    Image.new("RGB", (40, 800)).save(tmp_path / "x.png")
    assert load_image(tmp_path / "x.png", 32, (0.5, 0.5, 0.5), "crop").shape == (3, 32, 32)


# ---------------------------------------------------------------- item 3: one writer per folder
def test_a_live_holder_is_refused_and_a_dead_ones_lock_taken_over(tmp_path):
    from minijarvis.training.lock import output_lock
    holder = subprocess.Popen(["sleep", "30"])
    try:
        (tmp_path / ".lock").write_text(f"{holder.pid} {socket.gethostname()}\n")
        with pytest.raises(InputError, match=f"pid {holder.pid}"):
            with output_lock(tmp_path):
                pass
    finally:
        holder.kill()
        holder.wait()
    with output_lock(tmp_path) as lock:  # its process is gone now
        assert lock.read_text().split()[0] == str(os.getpid())
    assert not lock.exists(), "the lock outlived its run"


@pytest.mark.parametrize("main, argv", [
    (eval_script.main, ["--checkpoint", "ckpt", "--output-dir", "out"]),
    (probe.main, ["--checkpoint", "ckpt", "--target", "tiny-dinov2", "--output-dir", "out"]),
    (study.main, ["--quick", "--output-dir", "out"]),
])
def test_eval_probe_and_study_refuse_a_folder_another_run_writes(main, argv, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    for name in ("config.json", "model.safetensors", "tokenizer"):
        (tmp_path / "ckpt" / name).parent.mkdir(exist_ok=True)
        (tmp_path / "ckpt" / name).mkdir() if name == "tokenizer" else (tmp_path / "ckpt" / name).write_text("{}")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / ".lock").write_text(f"{os.getpid()} {socket.gethostname()}\n")  # a live pid: ours
    assert run_main(main, "x.py", argv) == 1
    err = capsys.readouterr().err
    assert "another run is writing here" in err and "Traceback" not in err, err


# ---------------------------------------------------------------- item 4: killed mid-write
POINTS = ("start", "mid-body", "first-rename", "between-renames", "removing-old", "mid-removing-old")


def _write_and_die(final: Path, point: str) -> None:
    """In a forked child: write_dir_atomically over ``final``, SIGKILLed at ``point``."""
    def die():
        os.kill(os.getpid(), signal.SIGKILL)
    rename, rmtree, renamed = os.rename, shutil.rmtree, []

    def killing_rename(a, b):
        if (point, len(renamed)) in (("first-rename", 0), ("between-renames", 1)):
            die()
        renamed.append(b)
        rename(a, b)

    def killing_rmtree(path, *args, **kwargs):
        if str(path).endswith(".old") and point in ("removing-old", "mid-removing-old"):
            if point == "mid-removing-old":
                os.unlink(Path(path) / "a")
            die()
        rmtree(path, *args, **kwargs)
    os.rename, shutil.rmtree = killing_rename, killing_rmtree
    if point == "start":
        die()
    with runtime.write_dir_atomically(final) as tmp:
        (tmp / "a").write_text("new")
        if point == "mid-body":
            die()
        (tmp / "b").write_text("new")
    os._exit(0)


@pytest.mark.parametrize("point", POINTS)
def test_a_writer_killed_at_any_point_leaves_a_whole_checkpoint_that_recovery_cleans(point, tmp_path):
    final = tmp_path / "checkpoint"
    with runtime.write_dir_atomically(final) as tmp:
        (tmp / "a").write_text("old")
        (tmp / "b").write_text("old")
    pid = os.fork()
    if pid == 0:
        try:
            _write_and_die(final, point)
        finally:
            os._exit(1)
    _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL, f"not killed at {point}"
    runtime.recover_checkpoint(final)
    contents = {(final / n).read_text() for n in ("a", "b")}
    assert contents in ({"old"}, {"new"}), f"killed at {point}: half a checkpoint {contents}"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint"], f"leftovers after {point}"
    with runtime.write_dir_atomically(final) as tmp:  # the next save works
        (tmp / "a").write_text("next")
    assert (final / "a").read_text() == "next"


def test_a_leftover_old_checkpoint_does_not_block_the_next_save(tmp_path):
    final = tmp_path / "checkpoint"
    for folder in (final, tmp_path / "checkpoint.old"):
        folder.mkdir()
        (folder / "a").write_text("x")
    with runtime.write_dir_atomically(final) as tmp:
        (tmp / "a").write_text("new")
    assert (final / "a").read_text() == "new" and not (tmp_path / "checkpoint.old").exists()


# ---------------------------------------------------------------- item 7: operating-system errors
@pytest.mark.parametrize("code, text", [(errno.EROFS, "Read-only file system"),
                                        (errno.ENOTEMPTY, "Directory not empty"),
                                        (errno.ENOSPC, "No space left on device")])
def test_an_os_error_is_one_line_naming_the_path(code, text, capsys):
    def main(argv):
        raise OSError(code, os.strerror(code), "runs/x/checkpoint")
    assert run_main(main, "train.py", []) == 1
    assert capsys.readouterr().err == f"train.py: error: runs/x/checkpoint: {text}\n"


# ---------------------------------------------------------------- item 8: --help
def _parsers():
    import bench
    from minijarvis.export import llava as export
    from minijarvis.training import cli
    for name, fn in (("train.py", cli.parse_args), ("bench.py", bench.parse_args),
                     ("export", export.main)):
        yield name, fn


@pytest.mark.parametrize("name, parse", list(_parsers()))
def test_help_shows_each_default_once(name, parse, capsys):
    with pytest.raises(SystemExit):
        parse(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "(default: None)" not in text, name
    assert not re.search(r"\(default: [^()]*\) \(default:", text), name
