"""study.py: the quick size completes and writes every output, a finished (method, seed) is
never rerun, bad flags are one-line usage errors, and the statistics are the documented ones."""
from __future__ import annotations

import json
import math

import pytest

import study
import train
from minijarvis.toyworld import study as S
from minijarvis.errors import run_main


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # train.py's synthetic-data cache goes to a fresh folder


def test_quick_study_completes_and_resume_skips_finished_runs(tmp_path, monkeypatch, capsys):
    args = ["--quick", "--methods", "llava", "jarvis", "--seeds", "2", "--output-dir", "out"]
    assert study.main(args) == 0
    out = tmp_path / "out"
    for name in ("study.json", "study.csv", "study.md", "study.png"):
        assert (out / name).stat().st_size > 0, name
    result = json.loads((out / "study.json").read_text())
    assert [r["method"] for r in result["runs"]] == ["llava", "jarvis", "llava", "jarvis"]
    assert set(result["stats"]["table"]) == {"llava", "jarvis"} and set(result["stats"]["paired"]) == {"jarvis"}
    assert result["stats"]["table"]["jarvis"]["Count"]["n"] == 2
    assert result["stats"]["chance"]["Count"] == 0.25
    assert "jarvis − llava" in capsys.readouterr().out

    monkeypatch.setattr(train, "main", lambda *a, **k: pytest.fail(f"a finished run was trained again: {a}"))
    assert study.main(args) == 0  # every run done: nothing trains, the same numbers come out
    assert json.loads((out / "study.json").read_text())["stats"] == result["stats"]


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


def test_t_interval_is_students_at_95_percent():
    s = S.t_interval([0.5, 0.6, 0.7])
    assert s["mean"] == pytest.approx(0.6) and s["half"] == pytest.approx(4.303 * 0.1 / math.sqrt(3), rel=1e-4)
    assert S.t_interval([0.4])["half"] is None


def test_paired_differences_are_taken_seed_by_seed():
    def run(method, seed, acc):
        per = {t: acc for t in ("Count", "Relation", "Depth", "Distance")}
        return dict(method=method, seed=seed, per_task=per, all=acc,
                    chance={"Count": 0.25, "Relation": 0.5, "Depth": 0.5, "Distance": 0.5})
    # jarvis beats llava by exactly 0.1 on every seed although seeds differ by far more
    results = [run("llava", 0, 0.3), run("llava", 1, 0.7), run("jarvis", 0, 0.4), run("jarvis", 1, 0.8)]
    stats = S.aggregate(results, ["llava", "jarvis"])
    assert stats["paired"]["jarvis"]["Depth"]["mean"] == pytest.approx(0.1)
    assert stats["paired"]["jarvis"]["Depth"]["half"] == pytest.approx(0.0, abs=1e-12)
    assert stats["table"]["jarvis"]["Depth"]["half"] > 1  # unpaired: the seeds' spread swamps it
    assert any("better than llava" in line for line in S.verdicts(stats))
    assert stats["chance"]["all"] == pytest.approx(0.4375)
