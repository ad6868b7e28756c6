"""Bad inputs and faults, as a new user would meet them (issue 23): each must end in one line
and the right exit status, never a traceback, and must lose nothing.

    python scripts/fuzz.py              # every case, a table, exit status 1 if any fails (~1 min)
    python scripts/fuzz.py --only lock  # the cases whose name contains "lock"

Cases run in-process through ``errors.run_main``, as the scripts do (a traceback there is an
exception escaping run_main). "Nothing lost" cases resume the tiny run from what a crash or a
failed write left and compare its losses with an uninterrupted run of the same steps. Killing a
real process at each point of the checkpoint write: tests/test_hardening.py.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("OMP_NUM_THREADS", "1")

import eval as eval_script  # noqa: E402
import train  # noqa: E402
from PIL import Image  # noqa: E402

from minijarvis.errors import run_main  # noqa: E402
from minijarvis.export.llava import main as export_main  # noqa: E402
from minijarvis.training import runtime  # noqa: E402

TRAIN = ["--synthetic-size", "16", "--batch-size", "4", "--save-every", "1"]
PROGS = {"train": (train.main, "train.py"), "eval": (eval_script.main, "eval.py"),
         "export": (export_main, "python -m minijarvis.export")}


def losses(folder) -> list:
    return [(r["step"], r["loss"]) for r in runtime.read_log(Path(folder) / "log.jsonl")]


def copy_with(src: str, dst: str, name: str = "", edit=None) -> str:
    """A copy of run folder ``src`` with file ``name`` rewritten by ``edit(text) -> text`` (bytes
    for a binary file)."""
    shutil.rmtree(dst, ignore_errors=True)
    shutil.copytree(src, dst)
    if name:
        path = Path(dst) / name
        if name.endswith(".safetensors"):
            path.write_bytes(edit(path.read_bytes()))
        else:
            path.write_text(edit(path.read_text()))
    return dst


def set_json(*keys, value):
    def edit(text):
        data, node = json.loads(text), None
        node = data
        for k in keys[:-1]:
            node = node[k]
        node[keys[-1]] = value
        return json.dumps(data)
    return edit


def dead_pid() -> int:
    p = subprocess.Popen(["true"])
    p.wait()
    return p.pid


def data_with(records: list, name: str) -> list[str]:
    """--data/--image-folder args: the built-in captions plus ``records`` (images under images/)."""
    base = json.loads(Path("runs/data/shapes-caption-16-seed0/caption.json").read_text())
    Path(f"runs/data/shapes-caption-16-seed0/{name}.json").write_text(json.dumps(base + records))
    return ["--data", f"runs/data/shapes-caption-16-seed0/{name}.json",
            "--image-folder", "runs/data/shapes-caption-16-seed0"]


def cases() -> list[tuple]:
    """(name, prog, argv or a function making it, exit status, words the output must hold,
    check after the run or None). Built lazily: some need the base runs."""
    cap = lambda text, img="images/000000.png", rid="bad": {  # noqa: E731
        "id": rid, "image": img, "conversations": [{"from": "human", "value": "Describe."},
                                                   {"from": "gpt", "value": text}]}
    same_as_full = lambda out: losses(out) == losses("full") or f"losses {losses(out)} != {losses('full')}"  # noqa: E731

    def between_renames():  # killed after checkpoint -> checkpoint.old, before .tmp -> checkpoint
        copy_with("crashed", "c1")
        os.rename("c1/checkpoint", "c1/checkpoint.old")
        shutil.copytree("c1/checkpoint.old", "c1/checkpoint.tmp")
        (Path("c1/checkpoint.tmp") / "trainer.json").write_text("{")
        return ["--resume", "--output-dir", "c1"]

    def removing_old():  # killed while checkpoint.old was being removed (issue 23, item 4)
        copy_with("crashed", "c2")
        shutil.copytree("c2/checkpoint", "c2/checkpoint.old")
        (Path("c2/checkpoint.old") / "model.safetensors").unlink()
        return ["--resume", "--output-dir", "c2"]

    def failed_save():  # the disk fills during a checkpoint write: one line, then resume
        from safetensors import SafetensorError
        real = runtime.save_file
        calls = []

        def full(*a, **k):
            calls.append(1)
            if len(calls) == 5:  # step 3's checkpoint (2 files per checkpoint)
                raise SafetensorError("Error while serializing: IoError(No space left on device)")
            return real(*a, **k)
        runtime.save_file = full
        shutil.rmtree("c3", ignore_errors=True)
        return ["--stage", "align", *TRAIN, "--max-steps", "4", "--output-dir", "c3"]

    def after_failed_save(out):
        runtime.save_file = runtime.__dict__["_real_save_file"]
        if json.loads(Path("c3/checkpoint/trainer.json").read_text())["progress"]["step"] != 2:
            return "the last good checkpoint (step 2) is gone"
        code = run_main(train.main, "train.py", ["--resume", "--output-dir", "c3"])
        return code == 0 and same_as_full("c3")

    def lock_held(pid):
        def make():
            shutil.rmtree("locked", ignore_errors=True)
            Path("locked").mkdir()
            Path("locked/.lock").write_text(f"{pid} {os.uname().nodename}\n")
            return ["--stage", "align", *TRAIN, "--max-steps", "1", "--output-dir", "locked"]
        return make

    return [
        ("config: method frobnicate (--init)", "train", lambda: ["--stage", "finetune", "--init", copy_with(
            "s1", "m1", "config.json", set_json("model", "method", value="frobnicate")), "--output-dir", "o1"],
         1, ["m1/config.json", "frobnicate"], None),
        ("config: stage bogus (eval)", "eval", lambda: ["--checkpoint", copy_with(
            "s1", "m2", "config.json", set_json("stage", value="bogus")), "--limit", "4", "--output-dir", "e2"],
         1, ["m2/config.json", "bogus"], None),
        ("config: wrong type (eval)", "eval", lambda: ["--checkpoint", copy_with(
            "s1", "m3", "config.json", set_json("model", "jepa_lambda", value="x")), "--output-dir", "e3"],
         1, ["m3/config.json", "jepa_lambda"], None),
        ("config: {} (export)", "export", lambda: ["--checkpoint", copy_with(
            "s1", "m4", "config.json", lambda t: "{}"), "--out", "x4"], 1, ["m4/config.json"], None),
        ("config: truncated (resume)", "train", lambda: ["--resume", "--output-dir", copy_with(
            "s1", "m5", "checkpoint/config.json", lambda t: t[:40])], 1, ["config.json"], None),
        ("trainer.json truncated (resume)", "train", lambda: ["--resume", "--output-dir", copy_with(
            "s1", "m6", "checkpoint/trainer.json", lambda t: t[:50])], 1, ["trainer.json"], None),
        ("trainer.json bad positions (resume)", "train", lambda: ["--resume", "--output-dir", copy_with(
            "s1", "m7", "checkpoint/trainer.json", set_json("progress", "positions", value="x"))],
         1, ["trainer.json", "positions"], None),
        ("trainer.safetensors damaged (resume)", "train", lambda: ["--resume", "--output-dir", copy_with(
            "s1", "m8", "checkpoint/trainer.safetensors", lambda b: b[:200])], 1, ["trainer.safetensors"], None),
        ("tokenizer damaged (eval)", "eval", lambda: ["--checkpoint", copy_with(
            "s1", "m9", "tokenizer/tokenizer.json", lambda t: t[:100]), "--output-dir", "e9"],
         1, ["m9/tokenizer"], None),
        ("log.jsonl damaged: a warning (resume)", "train", lambda: ["--resume", "--output-dir", copy_with(
            "s1", "m10", "log.jsonl", lambda t: t + '{"step": 3, "lo')], 0, ["warning", "log.jsonl"], None),
        ("caption holds <image>: skipped at load", "train", lambda: [
            "--stage", "align", *data_with([cap("a <image> cat")], "d1"), "--batch-size", "4",
            "--max-steps", "1", "--output-dir", "d1"], 0, ["'bad'", "caption holds <image>"], None),
        ("image 1x50000: skipped", "train", lambda: (
            Image.new("L", (1, 50000)).save("runs/data/shapes-caption-16-seed0/images/thin.png"),
            ["--stage", "align", *data_with([cap("thin", "images/thin.png")], "d2"), "--batch-size", "17",
             "--max-steps", "1", "--output-dir", "d2"])[1], 0, ["'bad'", "aspect ratio 50000:1"], None),
        ("lock held by a live process", "train", lock_held(os.getpid()), 1, ["another run", "locked"], None),
        ("lock left by a dead process: taken over", "train", lock_held(dead_pid()), 0, ["taking over"],
         lambda out: not Path("locked/.lock").exists() or "lock not released"),
        ("output-dir is a file", "train", lambda: (Path("afile").write_text("x"), ["--output-dir", "afile"])[1],
         1, ["afile"], None),
        ("killed between the renames: resume = full run", "train", between_renames, 0, ["resumed at step 2"],
         lambda out: same_as_full("c1")),
        ("checkpoint.old left over: resume = full run", "train", removing_old, 0, ["resumed at step 2"],
         lambda out: same_as_full("c2") and not Path("c2/checkpoint.old").exists()),
        ("disk full during a save: resume = full run", "train", failed_save, 1, ["c3/checkpoint", "No space"],
         after_failed_save),
        ("export into a non-empty folder", "export", lambda: (Path("x5").mkdir(exist_ok=True),
                                                              Path("x5/config.json").write_text("mine"),
                                                              ["--checkpoint", "s1", "--out", "x5"])[2],
         1, ["x5", "--overwrite"], lambda out: Path("x5/config.json").read_text() == "mine" or "overwritten"),
        ("--help: each default once", "train", ["--help"], 0, [],
         lambda out: not re.search(r"\(default: [^()]*\) \(default:", " ".join(out.split())) or "doubled"),
    ]


def prepare() -> None:
    """The runs the cases start from: s1 (2 steps), full (4 steps), crashed (killed at step 3)."""
    quiet = contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO())
    with quiet[0], quiet[1]:
        for out, steps in (("s1", 2), ("full", 4)):
            assert train.main(["--stage", "align", *TRAIN, "--max-steps", str(steps), "--output-dir", out]) == 0

        def crash(trainer, row):
            if row["step"] == 3:
                raise RuntimeError("simulated crash")
        try:
            train.main(["--stage", "align", *TRAIN, "--max-steps", "4", "--output-dir", "crashed"], on_step=crash)
        except RuntimeError:
            pass


def run_case(case) -> tuple[int | str, bool, str]:
    """(exit status, passed, why not)."""
    name, prog, argv, code, words, check = case
    main, label = PROGS[prog]
    out, err = io.StringIO(), io.StringIO()
    try:
        argv = argv() if callable(argv) else argv
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            got = run_main(main, label, argv)
    except BaseException as e:  # noqa: BLE001  a traceback: the failure this script looks for
        return "exc", False, f"{type(e).__name__}: {str(e)[:200]}"
    text = out.getvalue() + err.getvalue()
    errors = [line for line in err.getvalue().splitlines() if ": error: " in line]
    why = []
    if got != code:
        why.append(f"exit {got}, expected {code}: {errors[-1:] or text[-300:]}")
    if code == 1 and len(errors) != 1:
        why.append(f"{len(errors)} error lines")
    if "Traceback" in text:
        why.append("a traceback")
    why += [f"no {w!r} in the output" for w in words if w not in text]
    if check is not None and not why:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            verdict = check(text)
        if verdict is not True:
            why.append(verdict if isinstance(verdict, str) else "check failed")
    return got, not why, "; ".join(why)


def main(argv=None, only: str = "") -> int:
    p = argparse.ArgumentParser(prog="scripts/fuzz.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--only", default=only, help="run the cases whose name contains this text")
    args = p.parse_args(argv)
    runtime.__dict__.setdefault("_real_save_file", runtime.save_file)
    start, failed = time.perf_counter(), 0
    with tempfile.TemporaryDirectory() as tmp:
        cwd = os.getcwd()
        os.chdir(tmp)
        try:
            prepare()
            selected = [c for c in cases() if args.only in c[0]]
            width = max(len(c[0]) for c in selected)
            print(f"{'case'.ljust(width)}  exit  result")
            for case in selected:
                got, ok, why = run_case(case)
                failed += not ok
                print(f"{case[0].ljust(width)}  {str(got).rjust(4)}  {'OK' if ok else 'FAIL: ' + why}", flush=True)
        finally:
            runtime.save_file = runtime.__dict__["_real_save_file"]
            os.chdir(cwd)
    print(f"{len(selected) - failed}/{len(selected)} cases passed in {time.perf_counter() - start:.0f} s")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
