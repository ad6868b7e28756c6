"""Count accuracy of a run by the number of objects in the item's scene, and its confusion (round 8).

    python research/exp21/countbytotal.py RUN/eval/shapes_predictions.jsonl [...]   # seconds

Reads eval.py's per-item predictions (ShapesBench seed 0) and redraws each Count item's scene
(no rendering) to know how many objects it holds and whether it asks for a kind or a colour.
"""
import json
import sys
from collections import Counter, defaultdict

from minijarvis.evaluation.shapesbench import LETTERS, bench_item


def summary(path: str) -> tuple[dict, dict, dict]:
    by_total, by_question, confusion = defaultdict(Counter), defaultdict(Counter), Counter()
    for line in open(path):
        row = json.loads(line)
        if row["task"] != "Count":
            continue
        item = bench_item("Count", int(row["id"].rsplit("-", 1)[1]), 0, render_image=False)
        total, right = len(item["scene"].objects), item["answer_index"] + 1
        by_total[total][row["correct"]] += 1
        by_question["colour" if " objects " in item["question"] else "kind"][row["correct"]] += 1
        confusion[right, LETTERS.index(row["prediction"]) + 1] += 1
    frac = {k: f"{v[True]}/{v[True] + v[False]}" for k, v in sorted(by_total.items())}
    kinds = {k: f"{v[True]}/{v[True] + v[False]}" for k, v in sorted(by_question.items())}
    return frac, kinds, {c: [confusion[c, p] for p in range(1, 5)] for c in range(1, 5)}


if __name__ == "__main__":
    for path in sys.argv[1:]:
        frac, kinds, conf = summary(path)
        print(path)
        print("  right / items by objects in the scene:", frac)
        print("  by question:", kinds)
        print("  confusion, right count -> answers 1..4:", conf)
