"""A4's autograder: only the form is auto-graded (the study's results file has every field, it
is not the --quick size, the write-up answers every question and quotes its own numbers); the
content is graded by hand with INSTRUCTORS.md's rubric."""
from __future__ import annotations

import json
import re
from pathlib import Path

from ..cases import check

QUESTIONS = ("Q1 Setup", "Q2 What the bounds say", "Q3 Which layer j", "Q4 Which λ",
             "Q5 What would change your conclusion")
TASKS = ("Count", "Relation", "Depth", "Distance", "all")


def _study(impl) -> dict:
    path = Path(impl.study)
    if not path.exists():
        raise NotImplementedError(f"no results file {path}")
    return json.loads(path.read_text())


def _sections(impl) -> dict[str, str]:
    path = Path(impl.folder) / "writeup.md"
    if not path.exists():
        raise NotImplementedError(f"no write-up {path}")
    parts = re.split(r"^## +(.+?)\s*$", path.read_text(), flags=re.M)
    return {title: body.strip() for title, body in zip(parts[1::2], parts[2::2])}


@check(2)
def study_json_has_every_field(impl, cases):
    d = _study(impl)
    s, stats = d.get("settings", {}), d.get("stats", {})
    assert {"llava", "jarvis"} <= set(s.get("methods", [])), "settings.methods must include llava and jarvis"
    assert {"size", "seconds", "seeds"} <= set(s), "settings needs size, seeds and seconds"
    for method in ("llava", "jarvis"):
        for task in TASKS:
            cell = stats.get("table", {}).get(method, {}).get(task, {})
            assert {"mean", "half", "n", "values"} <= set(cell), f"stats.table.{method}.{task} is incomplete"
    assert {"mean", "half", "n"} <= set(stats.get("paired", {}).get("jarvis", {}).get("all", {})), \
        "stats.paired.jarvis.all is missing"
    for run in d.get("runs", []) or [{}]:
        assert {"method", "seed", "per_task", "all", "probe"} <= set(run), "a run lacks method/seed/per_task/all/probe"


@check(1)
def study_is_a_real_size_with_two_seeds_and_probes(impl, cases):
    from minijarvis.toyworld import study as S
    import dataclasses
    d = _study(impl)
    assert d["settings"]["seeds"] >= 2, "run at least 2 seeds (--seeds 2)"
    quick = json.loads(json.dumps(dataclasses.asdict(S.QUICK)))  # as study.json holds it (tuples are lists)
    assert d["settings"]["size"] != quick, "this is the --quick size: its numbers mean nothing"
    assert all(run.get("probe") for run in d["runs"]), "every run needs its per-layer probes"


@check(3)
def writeup_answers_every_question(impl, cases):
    sections = _sections(impl)
    for q in QUESTIONS:
        body = sections.get(q)
        assert body is not None, f"the write-up has no '## {q}' heading"
        if "TODO" in body:
            raise NotImplementedError(f"'{q}' still says TODO")
        assert len(body.split()) >= 40, f"'{q}' has {len(body.split())} words; answer in at least 40"


@check(1)
def writeup_quotes_its_own_result(impl, cases):
    mean = _study(impl)["stats"]["paired"]["jarvis"]["all"]["mean"] * 100
    body = _sections(impl).get(QUESTIONS[1], "")
    if "TODO" in body:
        raise NotImplementedError("Q2 still says TODO")
    quoted = {f"{mean:.1f}", f"{mean:.1f}".replace("-", "−")}
    assert any(q in body for q in quoted), f"Q2 must quote the jarvis − llava difference on all: {mean:.1f} points"
