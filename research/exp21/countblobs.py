"""Do llava's Count answers follow the named objects' blobs rather than their number? (round 9)

For each Count item, the cells of the 6 x 6 token grid that the named objects (the kind or colour
asked) cover by at least ``THRESHOLD`` of their area, and the number of 4-connected blobs those
cells form. Objects that touch or overlap on the grid make one blob. For each right count c, the
mean predicted count when the blobs number c (every counted object apart) and when they number
fewer (some merged); pooled over the runs given.

    python research/exp21/countblobs.py RUN/eval/shapes_predictions.jsonl [...]   # a minute
"""
import json
import sys
from collections import defaultdict

import numpy as np

from countoracle import named_share  # this folder's script: the named objects' share of each cell
from minijarvis.evaluation.shapesbench import LETTERS, bench_item

G, THRESHOLD = 6, 0.25


def blobs(cells: np.ndarray) -> int:
    seen, n = np.zeros_like(cells), 0
    for start in zip(*np.nonzero(cells)):
        if seen[start]:
            continue
        n, stack = n + 1, [start]
        seen[start] = True
        while stack:
            a, b = stack.pop()
            for da, db in ((1, 0), (-1, 0), (0, 1), (0, -1)):
                x, y = a + da, b + db
                if 0 <= x < G and 0 <= y < G and cells[x, y] and not seen[x, y]:
                    seen[x, y] = True
                    stack.append((x, y))
    return n


if __name__ == "__main__":
    pred = defaultdict(list)
    cache = {}
    for path in sys.argv[1:]:
        for line in open(path):
            r = json.loads(line)
            if r["task"] != "Count":
                continue
            i = int(r["id"].rsplit("-", 1)[1])
            if i not in cache:
                item = bench_item("Count", i, 0, render_image=False)
                cache[i] = (item["answer_index"] + 1, blobs(named_share(item, G) >= THRESHOLD))
            c, b = cache[i]
            pred[c, "apart" if b >= c else "merged"].append(LETTERS.index(r["prediction"]) + 1)
    for c in range(1, 5):
        row = [f"{how} {np.mean(pred[c, how]):.2f} (n {len(pred[c, how])})" for how in ("apart", "merged") if pred[c, how]]
        print(f"c = {c}: mean predicted count, blobs " + ", blobs ".join(row))
