"""Paired differences to llava, and their MDE, from the study's runs scored at 200 and at 1,000
items per task (issue 21, round 11).

    for r in STUDY/*-seed*/; do r=$(basename $r)
        python eval.py --checkpoint STUDY/$r/finetune --bench shapes --score-target letter \\
            --n-per-task 1000 --output-dir BIG/$r; done
    python research/exp21/mde_items.py STUDY BIG
"""
import json
import sys
from pathlib import Path

from minijarvis.toyworld.study_report import t_interval

study, big = Path(sys.argv[1]), Path(sys.argv[2])
runs = {(r["method"], r["seed"]): r for r in json.loads((study / "study.json").read_text())["runs"]}
seeds = sorted({s for _, s in runs})


def small_acc(m, s, task):
    r = runs[(m, s)]
    return r["all"] if task == "all" else r["per_task"][task]


def big_acc(m, s, task):
    d = json.loads((big / f"{m}-seed{s}" / "shapes.json").read_text())["checkpoints"][0]["summary"]
    return d["all"]["accuracy"] if task == "all" else d["per_task"][task]["accuracy"]


print("row, task: paired difference to llava ± its 95% half-width (the MDE), in points")
for m in sorted({m for m, _ in runs} - {"llava"}):
    for task in ("all", "Count"):
        cells = []
        for acc in (small_acc, big_acc):
            t = t_interval([acc(m, s, task) - acc("llava", s, task) for s in seeds])
            cells.append(f"{100 * t['mean']:+.1f} ± {100 * t['half']:.1f}")
        print(f"{m:13s} {task:5s}  200 items a task: {cells[0]:>12s}   1,000 items a task: {cells[1]:>12s}")
for task in ("Count", "Relation", "Depth", "Distance", "all"):
    print(f"llava {task:8s} at 1,000 items a task, seeds {seeds}: "
          + ", ".join(f"{100 * big_acc('llava', s, task):.1f}" for s in seeds))
