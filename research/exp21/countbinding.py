"""Does a run's Count answer use the named kind or colour, or only the number of objects? (round 9)

For each number of objects in the scene, the run's accuracy against the best constant answer for that
number, and its mean predicted count for each right count c. A model that counts the named objects
predicts more for a larger c at a fixed number of objects; one that reads only the number of objects
predicts the same. The slope sums it up per question type (kind / colour): the mean over numbers of
objects of (mean prediction at the largest c - at the smallest) / (their difference); 1 for a
perfect counter, 0 for the number of objects alone.

    python research/exp21/countbinding.py RUN/eval/shapes_predictions.jsonl [...]   # seconds
"""
import json
import sys
from collections import Counter, defaultdict

from minijarvis.evaluation.shapesbench import LETTERS, bench_item


def rows_of(path: str) -> list[tuple[str, int, int, int]]:
    """(question type, objects in the scene, right count, predicted count) of each Count item."""
    out = []
    for line in open(path):
        r = json.loads(line)
        if r["task"] != "Count":
            continue
        item = bench_item("Count", int(r["id"].rsplit("-", 1)[1]), 0, render_image=False)
        kind = "colour" if " objects " in item["question"] else "kind"
        out.append((kind, len(item["scene"].objects), item["answer_index"] + 1, LETTERS.index(r["prediction"]) + 1))
    return out


def mean_prediction(rows, total: int, c: int) -> float:
    preds = [p for _, t, cc, p in rows if t == total and cc == c]
    return sum(preds) / len(preds)


def slope(rows) -> float:
    steps = []
    for total in sorted({t for _, t, _, _ in rows}):
        cs = sorted({c for _, t, c, _ in rows if t == total})
        if len(cs) > 1:
            steps.append((mean_prediction(rows, total, cs[-1]) - mean_prediction(rows, total, cs[0])) / (cs[-1] - cs[0]))
    return sum(steps) / len(steps)


if __name__ == "__main__":
    for path in sys.argv[1:]:
        rows = rows_of(path)
        right = sum(c == p for _, _, c, p in rows)
        best = sum(Counter(c for _, t, c, _ in rows if t == total).most_common(1)[0][1] for total in {t for _, t, _, _ in rows})
        print(f"{path}: {right}/{len(rows)} right; the best constant per number of objects (fitted on these items) {best}/{len(rows)}")
        for total in sorted({t for _, t, _, _ in rows}):
            cs = sorted({c for _, t, c, _ in rows if t == total})
            print(f"  {total} objects: mean predicted count by right count", {c: round(mean_prediction(rows, total, c), 2) for c in cs})
        for kind in ("kind", "colour"):
            sub = [r for r in rows if r[0] == kind]
            print(f"  {kind} questions: {sum(c == p for _, _, c, p in sub)}/{len(sub)} right, slope {slope(sub):+.2f}")
