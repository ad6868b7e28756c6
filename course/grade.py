"""The autograder: ``python -m course.grade A1 [--impl PATH] [--solution] [--seed N] [--pictures DIR]``.

    python -m course.grade A1                          # the untouched starter: 0 points
    python -m course.grade A1 --impl my_a1_masks.py    # your file
    python -m course.grade --solution                  # the package itself, all four: full marks
    python -m course.grade all --submissions subs/ --csv scores.csv   # a class (INSTRUCTORS.md)

Prints one row per test (points earned / possible, and why a test failed), then the total.
Failed mask tests save expected-vs-yours pictures under --pictures (default grade-pictures/).
"""
from __future__ import annotations

import argparse
import csv
import importlib
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from . import adapters
from .cases import DEFAULT_SEED, Cases


@dataclass
class Result:
    name: str
    points: int
    earned: int
    message: str = ""


def checks_of(assignment: str) -> list:
    module = importlib.import_module(f"course.{adapters.FOLDERS[assignment]}.checks")
    return [fn for fn in vars(module).values() if callable(fn) and hasattr(fn, "points")]


def grade(assignment: str, impl=None, use_solution: bool = False, seed: int = DEFAULT_SEED,
          pictures=None) -> list[Result]:
    """Run every test of ``assignment`` on one implementation; in-process, seeded."""
    cases = Cases(seed, Path(pictures) / assignment if pictures else None)
    try:
        target = adapters.load(assignment, impl, use_solution)
    except Exception as e:  # a file that does not even import scores 0 on every test
        return [Result(fn.__name__, fn.points, 0, f"could not load: {type(e).__name__}: {e}")
                for fn in checks_of(assignment)]
    results = []
    for fn in checks_of(assignment):
        torch.manual_seed(0)  # nothing may depend on the global RNG, but keep it fixed anyway
        try:
            fn(target, cases)
            results.append(Result(fn.__name__, fn.points, fn.points))
        except NotImplementedError:
            results.append(Result(fn.__name__, fn.points, 0, "not implemented"))
        except AssertionError as e:
            results.append(Result(fn.__name__, fn.points, 0, str(e) or "assertion failed"))
        except Exception as e:  # a crash in the student's code is a failed test, not a crashed grader
            results.append(Result(fn.__name__, fn.points, 0, f"{type(e).__name__}: {e}"))
    return results


def table(assignment: str, results: list[Result]) -> str:
    width = max(len(r.name) for r in results)
    lines = [f"{assignment}  {'test'.ljust(width)}  points"]
    for r in results:
        why = f"  {r.message.splitlines()[0][:160]}" if r.message else ""
        lines.append(f"    {r.name.ljust(width)}  {r.earned:>2}/{r.points:<2}{why}")
    lines.append(f"    {'total'.ljust(width)}  {total(results)}/{sum(r.points for r in results)}")
    return "\n".join(lines)


def total(results: list[Result]) -> int:
    return sum(r.earned for r in results)


def grade_folder(assignments, folder: Path, seed: int, out_csv: Path) -> Path:
    """Grade every student folder under ``folder``: A1-A3 read STUDENT/<a1_masks|...>.py, A4 reads
    STUDENT/a4_experiment/. One CSV row per (student, assignment): every test's points and the total."""
    rows = []
    for student in sorted(p for p in folder.iterdir() if p.is_dir()):
        for a in assignments:
            name = adapters.FOLDERS[a]
            path = student / (name if a == "A4" else f"{name}.py")
            results = grade(a, impl=path, seed=seed) if path.exists() else \
                [Result(fn.__name__, fn.points, 0, "no submission") for fn in checks_of(a)]
            rows.append({"student": student.name, "assignment": a, "total": total(results),
                         "possible": sum(r.points for r in results), **{r.name: r.earned for r in results}})
            print(f"{student.name} {a}: {rows[-1]['total']}/{rows[-1]['possible']}", flush=True)
    fields = list(dict.fromkeys(k for row in rows for k in row))
    with open(out_csv, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields, restval="")
        writer.writeheader()
        writer.writerows(rows)
    return out_csv


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m course.grade", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("assignment", nargs="?", default="all", choices=[*adapters.ASSIGNMENTS, "all"])
    who = p.add_mutually_exclusive_group()
    who.add_argument("--impl", help="your file (A1-A3) or folder with writeup.md + study.json (A4); default: the starter")
    who.add_argument("--solution", action="store_true", help="grade minijarvis itself (must give full marks)")
    who.add_argument("--submissions", type=Path, help="a folder of student folders: write one CSV of scores")
    p.add_argument("--csv", type=Path, default=Path("scores.csv"), help="with --submissions (default scores.csv)")
    p.add_argument("--seed", type=int, default=DEFAULT_SEED, help=f"hidden cases' variant (default {DEFAULT_SEED})")
    p.add_argument("--pictures", default="grade-pictures", help="where failed mask tests save pictures")
    args = p.parse_args(argv)
    if args.impl and args.assignment == "all":
        p.error("--impl grades one assignment: name it (A1, A2, A3 or A4)")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(1)
    assignments = adapters.ASSIGNMENTS if args.assignment == "all" else (args.assignment,)
    if args.submissions:
        print(f"wrote {grade_folder(assignments, args.submissions, args.seed, args.csv)}")
        return 0
    for a in assignments:
        print(table(a, grade(a, args.impl, args.solution, args.seed, args.pictures)) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
