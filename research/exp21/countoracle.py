"""What can a model that reads patches, not objects, get on Count? (round 9)

For each Count item, the named objects' (kind or colour the question asks) share of each cell of a
g x g grid, from the renderer's silhouettes (``world.depth_grid``: nearer objects painted last). The
best answer for each value of a feature, fitted on N items of bench seed 1 and scored on the 800
first items of seed 0: the scene's number of objects; the number of cells the named objects cover
(at three thresholds), alone and with the number of objects; the named objects' area in cells.

    python research/exp21/countoracle.py [N]      # N fitting items (default 2400), a few minutes
"""
import sys
from collections import Counter, defaultdict

import numpy as np

from minijarvis.evaluation.shapesbench import bench_item
from minijarvis.toyworld.world import depth_grid


def named(item) -> list[int]:
    """Indices of the objects a Count item's question names ("How many cubes" / "How many red objects")."""
    what = item["question"].split()[2]
    return [i for i, o in enumerate(item["scene"].objects) if f"{o.kind}s" == what or o.color == what]


def named_share(item, grid: int) -> np.ndarray:
    """[grid, grid]: the share of each cell the named objects cover (visible pixels only)."""
    return depth_grid(item["scene"], grid)[2][named(item)].sum(0).reshape(grid, grid)


def best_answer_accuracy(train, test) -> float:
    """Accuracy on ``test`` of the most frequent answer for each feature value in ``train``."""
    table = defaultdict(Counter)
    for feature, c in train:
        table[feature][c] += 1
    prior = Counter(c for _, c in train).most_common(1)[0][0]
    return float(np.mean([(table[f].most_common(1)[0][0] if f in table else prior) == c for f, c in test]))


if __name__ == "__main__":
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 2400
    items = [bench_item("Count", i, seed=1, render_image=False) for i in range(n)] + \
            [bench_item("Count", i, seed=0, render_image=False) for i in range(800)]
    answers = [it["answer_index"] + 1 for it in items]
    totals = [len(it["scene"].objects) for it in items]
    for g in (4, 6, 8, 12):
        shares = [named_share(it, g) for it in items]
        features = {"total objects": [(t,) for t in totals]}
        for th in (0.1, 0.25, 0.5):
            cells = [int((s >= th).sum()) for s in shares]
            features[f"named cells>={th}"] = [(k,) for k in cells]
            features[f"named cells>={th} + total"] = list(zip(cells, totals))
        features["named area (0.5 cell bins)"] = [(round(s.sum() * 2),) for s in shares]
        for name, values in features.items():
            rows = list(zip(values, answers))
            print(f"g={g} {name:32s} {best_answer_accuracy(rows[:n], rows[n:]):.3f}", flush=True)
