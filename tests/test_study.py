"""study.py: the quick size completes in parallel and writes every output with the bounds marked,
a finished (method, seed) is never rerun, a failed run is one line, the bounds run with their
flags, bad flags are one-line usage errors, and the statistics are the documented ones (a
planted effect is found with its sign, a copy of llava is no difference)."""
from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

import eval as eval_script
import study
import train
from minijarvis.toyworld import study as S
from minijarvis.toyworld import study_report as R
from minijarvis.errors import run_main

TASKS = ("Count", "Relation", "Depth", "Distance")
CHANCE = {"Count": 0.25, "Relation": 0.5, "Depth": 0.5, "Distance": 0.5}


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # train.py's synthetic-data cache goes to a fresh folder


def test_quick_study_runs_in_parallel_marks_the_bounds_and_resume_skips_finished_runs(tmp_path, monkeypatch, capsys):
    args = ["--quick", "--workers", "2", "--methods", "llava", "llava-expert", "llava-blank",
            "--seeds", "2", "--output-dir", "out"]
    assert study.main(args) == 0
    out = tmp_path / "out"
    for name in ("study.json", "study.csv", "study.md", "study.png"):
        assert (out / name).stat().st_size > 0, name
    result = json.loads((out / "study.json").read_text())
    # one pool draws both seeds' data, then runs each seed's rows: every run, in the jobs' order
    assert [(r["method"], r["seed"]) for r in result["runs"]] == [
        (m, s) for s in (0, 1) for m in ("llava", "llava-expert", "llava-blank")]
    assert sorted(p.name for p in (out / "data").iterdir()) == [f"stage{k}-seed{s}" for k in (1, 2) for s in (0, 1)]
    assert list(result["stats"]["table"]) == ["llava-blank", "llava", "llava-expert"]  # bounds outside
    assert result["stats"]["bounds"] == {"llava-blank": "lower", "llava-expert": "upper"}
    assert set(result["stats"]["paired"]) == set(result["stats"]["mde"]) == {"llava-expert", "llava-blank"}
    assert set(result["stats"]["position"]) == {"llava"}
    assert result["stats"]["chance"]["Count"] == 0.25
    assert result["settings"]["workers"] == 2 and result["settings"]["seconds"] > 0
    assert all(r["seconds"] > 0 and not r["reused"] for r in result["settings"]["run_seconds"])
    assert (out / "logs" / "llava-expert-seed0.log").stat().st_size > 0  # a worker's output goes to its log
    printed = capsys.readouterr().out
    assert "llava-blank − llava" in printed and "llava-blank (lower bound)" in printed and "with 2 worker(s)" in printed
    assert "llava-expert (upper bound)" in (out / "study.md").read_text()

    monkeypatch.setattr(train, "main", lambda *a, **k: pytest.fail(f"a finished run was trained again: {a}"))
    assert study.main(args) == 0  # every run done: nothing trains, the same numbers come out
    again = json.loads((out / "study.json").read_text())
    assert again["stats"] == result["stats"] and all(r["reused"] for r in again["settings"]["run_seconds"])


def test_a_failed_run_is_one_line_and_the_others_are_kept(tmp_path, monkeypatch, capsys):
    def run_one(method, seed, *a):
        if method == "jarvis":
            raise RuntimeError("stage 1 of jarvis seed 0 failed")
        return dict(method=method, seed=seed, all=0.5, seconds=0.1)
    monkeypatch.setattr(S, "run_one", run_one)
    monkeypatch.setattr(S, "prepare_data", lambda *a: None)
    argv = ["--quick", "--workers", "1", "--methods", "llava", "jarvis", "nomask", "--seeds", "1", "--output-dir", "out"]
    assert run_main(study.main, "study.py", argv) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["study.py: error: 1 of 3 runs failed, first jarvis seed 0: RuntimeError: stage 1 of jarvis "
                   "seed 0 failed; the finished runs are kept: rerun the same command to retry the others"]


def test_a_worker_reports_a_failure_instead_of_raising(tmp_path, monkeypatch):
    monkeypatch.setattr(S, "run_one", lambda *a: 1 / 0)
    result = S.run_logged("jarvis", 1, S.QUICK, tmp_path)
    assert result["error"] == "ZeroDivisionError: division by zero" and result["seed"] == 1
    assert "Traceback" in (tmp_path / "logs" / "jarvis-seed1.log").read_text()


@pytest.mark.parametrize("row, method, stage1, stage2, bench", [
    ("llava-blank", "llava", ["--blank-images"], ["--blank-images"], ["--blank-images"]),
    ("llava-expert", "llava", ["--context-encoder", "tiny-dinov2", "--context-layer", "last",
                               "--context-norm", "on"], [], []),
    ("jarvis", "jarvis", [], [], []),
])
def test_each_row_trains_and_answers_with_its_flags(tmp_path, monkeypatch, row, method, stage1, stage2, bench):
    calls = []
    monkeypatch.setattr(train, "main", lambda argv: calls.append(argv) or 0)
    summary = {"per_task": {t: {"accuracy": 0.5, "chance": CHANCE[t]} for t in TASKS}, "all": {"accuracy": 0.5, "n": 4}}
    monkeypatch.setattr(eval_script, "main", lambda argv: calls.append(argv) or {"checkpoints": [{"summary": summary}]})
    monkeypatch.setattr(S, "run_probe", lambda *a: None)
    assert S.run_one(row, 0, S.QUICK, tmp_path)["method"] == row
    first, second, evaluated = calls

    def extra(argv, known):  # the flags beyond the ones every row gets
        return [a for i, a in enumerate(argv) if a.startswith("--") and a not in known
                or i and argv[i - 1] in ("--context-encoder", "--context-layer", "--context-norm")]
    assert first[first.index("--method") + 1] == method
    assert extra(first, {"--stage", "--method", "--data", "--image-folder", "--max-steps", "--output-dir",
                         "--seed", "--batch-size"}) == stage1
    assert extra(second, {"--stage", "--init", "--data", "--image-folder", "--max-steps", "--output-dir",
                          "--seed", "--batch-size", "--lr"}) == stage2
    assert float(second[second.index("--lr") + 1]) == S.QUICK.finetune_lr
    assert extra(evaluated, {"--checkpoint", "--bench", "--n-per-task", "--output-dir", "--score-target"}) == bench
    assert evaluated[evaluated.index("--score-target") + 1] == "letter"  # stage 2 answered by letter


def test_blank_images_replace_every_image_after_it_is_loaded(tmp_path):
    from PIL import Image
    from minijarvis.data.llava import LlavaDataset, Skip
    from minijarvis.data.images import blank_image
    from minijarvis.llm import build_tokenizer
    from minijarvis.training.cli import new_train_config, parse_args

    Image.new("RGB", (16, 16), (255, 0, 0)).save(tmp_path / "red.png")
    records = [{"id": rid, "image": image, "conversations": [{"from": "human", "value": "<image>\nWhat?"},
                                                             {"from": "gpt", "value": "A cube."}]}
               for rid, image in (("red", "red.png"), ("gone", "missing.png"))]
    mean = (0.48145466, 0.4578275, 0.40821073)
    ds = LlavaDataset(records, tmp_path, build_tokenizer(), stage="finetune", image_size=16, image_mean=mean,
                      max_length=64, num_visual=4, blank_images=True)
    assert torch.equal(ds[0]["image"], blank_image(16, mean))
    assert torch.allclose(ds[0]["image"][:, 0, 0], torch.tensor([122, 116, 104]) / 255)  # the pad colour
    assert isinstance(ds[1], Skip)  # the same records fail as without the flag
    args = parse_args(["--blank-images"])
    assert new_train_config(args, False, 1, tmp_path).blank_images
    assert not new_train_config(parse_args([]), False, 1, tmp_path).blank_images


def test_eval_blank_images_gives_the_model_only_blank_images(monkeypatch):
    from minijarvis.data.images import blank_image
    from minijarvis.evaluation import benchmarks as B

    seen = []
    monkeypatch.setattr(eval_script, "answer", lambda model, images, items, args: seen.append(images) or [
        dict(prediction="A", correct=True, reply="x", method="likelihood")] * len(items))
    model = SimpleNamespace(image_size=16, image_mean=(0.5, 0.5, 0.5), image_aspect="pad")
    items, _ = B.load_shapes(1, 0)
    for blank in (False, True):
        args = eval_script.parse_args(["--checkpoint", "x", "--n-per-task", "1"] + ["--blank-images"] * blank)
        eval_script.evaluate(model, items, args, "x")
    plain, blanked = seen
    assert not torch.equal(plain[0], blanked[0])
    assert all(torch.equal(image, blank_image(16, (0.5, 0.5, 0.5))) for image in blanked)


def _state(pid: int) -> tuple[str, int, bytes]:
    """(state, parent pid, command line) of a process from /proc; ("", 0, b"") once it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return fields[0], int(fields[1]), Path(f"/proc/{pid}/cmdline").read_bytes()
    except (OSError, IndexError):
        return "", 0, b""


def _live(pid: int) -> bool:
    return _state(pid)[0] not in ("", "Z")


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc")
def test_sigterm_to_the_study_ends_its_workers_too(tmp_path):
    """SIGTERM reaches study.py alone, not its worker processes (Ctrl-C reaches the whole group):
    the study must end them, or they run on, orphaned, into the folders of a rerun."""
    import os
    import signal
    import subprocess
    import sys
    import time
    root = Path(study.__file__).parent
    proc = subprocess.Popen([sys.executable, str(root / "study.py"), "--quick", "--workers", "2", "--methods",
                             "llava", "jarvis", "--output-dir", str(tmp_path / "out")], cwd=tmp_path,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while len(workers := [pid for pid in (int(d.name) for d in Path("/proc").glob("[0-9]*"))
                          if _state(pid)[1] == proc.pid and b"spawn_main" in _state(pid)[2]]) < 2:
        assert proc.poll() is None and time.time() < deadline, "the study ended before its workers started"
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    try:
        assert proc.wait(timeout=60) == 128 + signal.SIGTERM
        deadline = time.time() + 10
        while (alive := [w for w in workers if _live(w)]) and time.time() < deadline:
            time.sleep(0.2)
        assert not alive, "the workers outlived the study"
    finally:
        for w in workers:
            if _live(w):
                os.kill(w, signal.SIGKILL)  # leave no orphan behind, whatever failed


def test_an_unfinished_run_starts_again_from_scratch(tmp_path, monkeypatch):
    run = tmp_path / "jarvis-seed1"
    (run / "align").mkdir(parents=True)
    (run / "align" / "stale.txt").write_text("left by an interrupted run")
    calls = []
    monkeypatch.setattr(train, "main", lambda argv=None, on_step=None: calls.append(argv) or 1)
    with pytest.raises(RuntimeError, match="stage 1 of jarvis seed 1 failed"):
        S.run_one("jarvis", 1, S.QUICK, tmp_path)
    assert len(calls) == 1 and not (run / "align" / "stale.txt").exists()


def test_run_one_returns_the_done_marker_without_training(tmp_path, monkeypatch):
    run = tmp_path / "llava-seed0"
    run.mkdir()
    (run / S.DONE).write_text(json.dumps({"method": "llava", "seed": 0, "all": 0.5}))
    monkeypatch.setattr(train, "main", lambda *a, **k: pytest.fail("a finished run was trained again"))
    assert S.run_one("llava", 0, S.QUICK, tmp_path)["all"] == 0.5


@pytest.mark.parametrize("argv, words", [
    (["--methods", "llava", "ijepa"], "invalid choice: 'ijepa'"),
    (["--seeds", "0"], "must be an integer >= 1"),
    (["--align-steps", "-3"], "must be an integer >= 1"),
    (["--quick", "--synthetic-size", "2"], "must be >= --batch-size"),
    (["--quick", "--instructions", "0", "--vqa-per-task", "0"], "fewer than --batch-size"),
    (["--quick", "--instructions", "0", "--vqa-mix", "1", "0", "0", "0"], "fewer than --batch-size"),
    (["--vqa-mix", "1", "-1", "1", "1"], "must be a number >= 0"),
])
def test_bad_flags_are_one_line_usage_errors(argv, words, capsys):
    try:
        code = run_main(study.main, "study.py", argv)
    except SystemExit as e:  # argparse's own exit
        code = e.code
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and err.splitlines()[-1].startswith("study.py: error:"), err
    assert words in err.splitlines()[-1], err


def test_other_sizes_in_the_same_output_dir_are_refused(tmp_path, capsys):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "settings.json").write_text(json.dumps(
        {"size": {"synthetic_size": 1}, "random_init": False}))
    assert run_main(study.main, "study.py", ["--quick", "--output-dir", "out"]) == 2
    assert "other sizes" in capsys.readouterr().err


def test_a_study_folder_from_before_per_task_shares_resumes_when_its_one_share_matches(tmp_path, monkeypatch, capsys):
    class Resumed(Exception):
        pass

    def stop(*a):
        raise Resumed
    monkeypatch.setattr(study, "run_all", stop)
    size = dataclasses.asdict(S.QUICK)
    (tmp_path / "out").mkdir()
    for share, resumes in ((0.5, True), (0.25, False)):  # QUICK's four shares are 0.5
        (tmp_path / "out" / "settings.json").write_text(json.dumps(
            {"size": dict(size, small_scenes=share), "random_init": False}))
        if resumes:
            with pytest.raises(Resumed):
                study.main(["--quick", "--output-dir", "out"])
        else:
            assert run_main(study.main, "study.py", ["--quick", "--output-dir", "out"]) == 2
            assert "other sizes" in capsys.readouterr().err
    before_extras = {k: v for k, v in size.items() if k not in ("count_extras", "count_all")}  # before both flags
    (tmp_path / "out" / "settings.json").write_text(json.dumps({"size": before_extras, "random_init": False}))
    with pytest.raises(Resumed):  # such a folder had no number-of-objects questions: --count-all 0
        study.main(["--quick", "--count-all", "0", "--output-dir", "out"])
    assert run_main(study.main, "study.py", ["--quick", "--output-dir", "out"]) == 2  # QUICK asks 1
    assert run_main(study.main, "study.py", ["--quick", "--count-all", "0", "--count-extras", "2", "--output-dir", "out"]) == 2


def test_t_interval_is_students_at_95_percent():
    s = R.t_interval([0.5, 0.6, 0.7])
    assert s["mean"] == pytest.approx(0.6) and s["half"] == pytest.approx(4.303 * 0.1 / math.sqrt(3), rel=1e-4)
    assert R.t_interval([0.4])["half"] is None


def test_paired_differences_are_taken_seed_by_seed():
    def run(method, seed, acc):
        per = {t: acc for t in ("Count", "Relation", "Depth", "Distance")}
        return dict(method=method, seed=seed, per_task=per, all=acc,
                    chance={"Count": 0.25, "Relation": 0.5, "Depth": 0.5, "Distance": 0.5})
    # jarvis beats llava by 0.10-0.12 on every seed although seeds differ by far more
    results = [run("llava", 0, 0.3), run("llava", 1, 0.7), run("llava", 2, 0.5),
               run("jarvis", 0, 0.4), run("jarvis", 1, 0.81), run("jarvis", 2, 0.62)]
    stats = R.aggregate(results, ["llava", "jarvis"])
    assert stats["paired"]["jarvis"]["Depth"]["mean"] == pytest.approx(0.11)
    assert stats["paired"]["jarvis"]["Depth"]["half"] == pytest.approx(4.303 * 0.01 / 3 ** 0.5)
    assert stats["table"]["jarvis"]["Depth"]["half"] > 0.4  # unpaired: the seeds' spread swamps it
    assert any("better than llava" in line for line in R.verdicts(stats))
    assert stats["chance"]["all"] == pytest.approx(0.4375)


def _result(method, seed, per, chance=CHANCE):
    return dict(method=method, seed=seed, per_task=dict(per), all=sum(per.values()) / 4, chance=chance)


LLAVA = [{"Count": 0.30, "Relation": 0.55, "Depth": 0.50, "Distance": 0.60},
         {"Count": 0.40, "Relation": 0.45, "Depth": 0.65, "Distance": 0.50},
         {"Count": 0.25, "Relation": 0.60, "Depth": 0.40, "Distance": 0.55},
         {"Count": 0.35, "Relation": 0.50, "Depth": 0.55, "Distance": 0.45}]


def test_a_planted_effect_is_found_with_its_sign_and_a_copy_of_llava_is_no_difference():
    gain = (0.10, 0.14, 0.08, 0.12)  # better on Depth only, by a different amount each seed
    results = [_result("llava", k, per) for k, per in enumerate(LLAVA)]
    results += [_result("jarvis", k, {**per, "Depth": per["Depth"] + g}) for k, (per, g) in enumerate(zip(LLAVA, gain))]
    results += [_result("visper", k, {**per, "Count": per["Count"] - g}) for k, (per, g) in enumerate(zip(LLAVA, gain))]
    results += [_result("nomask", k, per) for k, per in enumerate(LLAVA)]  # a copy of llava
    stats = R.aggregate(results, ["llava", "jarvis", "visper", "nomask"])
    better, worse, copy = (stats["paired"][m] for m in ("jarvis", "visper", "nomask"))
    assert better["Depth"]["mean"] == pytest.approx(0.11) and 0 < better["Depth"]["half"] < 0.11
    assert better["all"]["mean"] == pytest.approx(0.11 / 4) and better["all"]["mean"] - better["all"]["half"] > 0
    assert worse["Count"]["mean"] == pytest.approx(-0.11) and worse["Count"]["mean"] + worse["Count"]["half"] < 0
    for t in ("Count", "Relation", "Distance"):
        assert better[t] == dict(mean=pytest.approx(0.0), half=pytest.approx(0.0), n=4), t
    for t in R.COLUMNS:
        assert copy[t]["mean"] == pytest.approx(0.0, abs=1e-12) and copy[t]["half"] == pytest.approx(0.0, abs=1e-12)
    assert stats["mde"]["jarvis"]["Depth"] == better["Depth"]["half"]
    words = {line.split(":")[0]: line for line in R.verdicts(stats)}
    assert "(better than llava)" in words["jarvis - llava, Depth"]
    assert "(worse than llava)" in words["visper - llava, Count"]
    assert "(better than llava)" in words["jarvis - llava, all"]
    assert all("(no difference shown)" in words[f"nomask - llava, {t}"] for t in R.COLUMNS)
    assert "(no difference shown)" in words["jarvis - llava, Relation"]
    assert "Minimum detectable effect" in R.markdown_table(stats)


def test_the_same_difference_on_every_seed_is_not_claimed_as_an_effect():
    """Accuracies come in steps of 1/n: two seeds can differ from llava by the same -2.5 points,
    a 0-wide t-interval that 'excludes 0' without any evidence."""
    results = [_result("llava", k, per) for k, per in enumerate(LLAVA[:2])]
    results += [_result("jarvis", k, {**per, "Depth": per["Depth"] - 0.025}) for k, per in enumerate(LLAVA[:2])]
    stats = R.aggregate(results, ["llava", "jarvis"])
    assert stats["paired"]["jarvis"]["Depth"]["half"] == 0.0
    line = next(v for v in R.verdicts(stats) if v.startswith("jarvis - llava, Depth"))
    assert "worse than llava" not in line and "no effect claimed" in line, line


def test_methods_are_placed_between_the_bounds_and_the_outputs_mark_them(tmp_path):
    def flat(method, seed, acc):
        return _result(method, seed, {t: acc for t in TASKS})
    results = [flat(m, k, acc + 0.01 * k) for k in range(2)
               for m, acc in (("llava", 0.5), ("llava-expert", 0.8), ("jarvis", 0.65), ("llava-blank", 0.4))]
    stats = R.aggregate(results, ["llava-expert", "llava", "jarvis", "llava-blank"])
    assert list(stats["table"]) == ["llava-blank", "llava", "jarvis", "llava-expert"]
    assert stats["position"]["llava"]["all"] == pytest.approx(0.25)
    assert stats["position"]["jarvis"]["Depth"] == pytest.approx(0.625)
    assert set(stats["position"]) == {"llava", "jarvis"}  # bounds are not placed between themselves
    assert stats["bound_gap"]["all"]["mean"] == pytest.approx(0.4)
    noisy = [dict(r, all=r["all"] + (0.3 if r["method"] == "llava-expert" and r["seed"] else 0)) for r in results]
    assert R.aggregate(noisy, ["llava", "llava-blank", "llava-expert"])["position"]["llava"]["all"] is None
    paths = R.write_outputs(tmp_path, stats, results, dict(methods=[], seeds=2))
    md = paths["md"].read_text()
    assert "| llava-blank (lower bound) |" in md and "| llava-expert (upper bound) |" in md
    assert "jarvis: Count 0.62" in md  # 0.625 to two places
    kinds = {row.split(",")[0]: row.rsplit(",", 1)[1] for row in paths["csv"].read_text().splitlines()[1:]}
    assert kinds["llava-blank"] == "lower bound" and kinds["llava-expert"] == "upper bound"
    assert kinds["jarvis"] == "method" and kinds["jarvis - llava"] == "paired"
    without = R.aggregate([r for r in results if r["method"] != "llava-expert"], ["llava", "jarvis", "llava-blank"])
    assert without["position"] == {} and any("run llava-blank and llava-expert" in v for v in R.verdicts(without))


def test_stage2_data_holds_its_instructions_and_each_tasks_share_of_questions_answered_by_letter(tmp_path):
    import dataclasses
    from minijarvis.evaluation.shapesbench import bench_item
    size = dataclasses.replace(S.QUICK, instructions=3, vqa_per_task=4, vqa_mix=(2, 0.5, 1, 0),
                               small_scenes=(0, 0.5, 1, 0.5), count_all=0)
    assert S.task_questions(size) == {"Count": 8, "Relation": 2, "Depth": 4, "Distance": 0}
    path, folder = S.stage2_data(tmp_path / "s2", size, seed=1)
    records = json.loads(Path(path).read_text())
    vqa = [r for r in records if r["id"].startswith("study-vqa-")]
    assert len(records) - len(vqa) == 3 and len(vqa) == 8 + 2 + 4
    for (task, n), small in zip(S.task_questions(size).items(), (0, 1, 4, 0)):  # the first `small` of each task
        for i in range(n):
            item = bench_item(task, i, S.VQA_SEED + 1, max_objects=3 if i < small else None, render_image=False)
            rec = next(r for r in vqa if r["id"] == f"study-vqa-{task.lower()}-{i:05d}")
            assert rec["conversations"][0]["value"] == "<image>\n" + item["prompt"]
            assert rec["conversations"][1]["value"] == "ABCD"[item["answer_index"]]  # the letter, as the prompt asks
            assert (Path(folder) / rec["image"]).is_file()


def test_count_extras_reaches_counts_questions_only(tmp_path):
    from minijarvis.evaluation.shapesbench import bench_item
    size = dataclasses.replace(S.QUICK, instructions=0, vqa_per_task=4, vqa_mix=(2, 1, 0, 0),
                               small_scenes=(0, 0, 0, 0), count_extras=3, count_all=0)
    records = json.loads(Path(S.stage2_data(tmp_path / "s2", size, seed=0)[0]).read_text())
    for r in records:
        task, i = r["id"].split("-")[2].capitalize(), int(r["id"].rsplit("-", 1)[1])
        want = bench_item(task, i, S.VQA_SEED, render_image=False, count_extras=3 if task == "Count" else None)
        assert r["conversations"][0]["value"] == "<image>\n" + want["prompt"]
    assert study.study_size(study.parse_args(["--quick", "--count-extras", "2"])).count_extras == 2
    with pytest.raises(SystemExit):
        study.parse_args(["--count-extras", "6"])


def test_count_all_adds_number_of_objects_questions_answered_by_letter(tmp_path):
    from minijarvis.evaluation.shapesbench import count_all_item
    size = dataclasses.replace(S.QUICK, instructions=0, vqa_per_task=1, vqa_mix=(1, 0, 0, 0), count_all=7)
    records = json.loads(Path(S.stage2_data(tmp_path / "s2", size, seed=2)[0]).read_text())
    extra = [r for r in records if "countall" in r["id"]]
    assert len(extra) == 7 and len(records) == 8
    for i, r in enumerate(extra):
        want = count_all_item(i, S.VQA_SEED + 2)
        assert r["conversations"][0]["value"] == "<image>\n" + want["prompt"]
        assert r["conversations"][1]["value"] == "ABCDEF"[len(want["scene"].objects) - 1]
    assert study.study_size(study.parse_args(["--quick", "--count-all", "5"])).count_all == 5


def test_the_small_scenes_flag_sets_each_tasks_share():
    size = study.study_size(study.parse_args(["--quick", "--small-scenes", "0", "0.25", "1", "0.5"]))
    assert size.small_scenes == (0, 0.25, 1, 0.5)
    with pytest.raises(SystemExit):
        study.parse_args(["--small-scenes", "0.5"])  # one share per task


def test_the_mix_flag_sets_each_tasks_share():
    size = study.study_size(study.parse_args(["--quick", "--vqa-mix", "2", "0.5", "1", "1.5"]))
    assert size.vqa_mix == (2, 0.5, 1, 1.5)
    assert S.task_questions(dataclasses.replace(size, vqa_per_task=10)) == {
        "Count": 20, "Relation": 5, "Depth": 10, "Distance": 15}
