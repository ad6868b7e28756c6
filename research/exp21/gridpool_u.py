"""gridpool.py with every colour at most once per scene in Relation/Depth/Distance scenes (Count unchanged).
    PYTHONPATH=<branch> python research/exp21/gridpool_u.py N_PER_TASK OUT.json [START] [MIN]"""
import sys, json
import numpy as np
from minijarvis.data import shapes as S
from minijarvis.evaluation import shapesbench as SB
sys.path.insert(0, __file__.rsplit("/", 1)[0])
from gridpool import grid_words
from minijarvis.toyworld.world import WORLD_SEED

orig = S._assign_attributes
def unique_colours(rng, attrs):
    if all(a == (None, None) for a in attrs):
        cols = list(S.COLORS); picks = rng.permutation(len(cols))[:len(attrs)]
        return [(S.KINDS[rng.integers(len(S.KINDS))], cols[k]) for k in picks]
    return orig(rng, attrs)
S._assign_attributes = unique_colours

if __name__ == "__main__":
    n, out = int(sys.argv[1]), sys.argv[2]
    start = int(sys.argv[3]) if len(sys.argv) > 3 else 100_000
    least = float(sys.argv[4]) if len(sys.argv) > 4 else 0.25
    rows = []
    for task in SB.TASKS:
        for i in range(start, start + n):
            item = SB.bench_item(task, i, WORLD_SEED, render_image=False)
            rows.append(dict(task=task, prompt="Image:" + grid_words(item["scene"], least=least) + "\n" + SB.format_prompt(item["question"], item["choices"]),
                             choices=item["choices"], answer_index=item["answer_index"]))
    json.dump(rows, open(out, "w"))
