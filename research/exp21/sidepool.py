"""Side questions after a text grid (unique colours): "where is the red cube located in the image? (A) left (B) right".
    PYTHONPATH=<branch> python research/exp21/sidepool.py N OUT.json"""
import sys, json, numpy as np
sys.path.insert(0, __file__.rsplit("/", 1)[0])
import gridpool_u  # noqa: F401  (unique colours)
from gridpool import grid_words
from minijarvis.data import shapes as S
from minijarvis.evaluation.shapesbench import format_prompt
n, out = int(sys.argv[1]), sys.argv[2]
rows = []
for i in range(n):
    rng = np.random.default_rng([4343, i])
    sc = S.sample_scene(rng, n_objects=int(rng.integers(1, 6)))
    objs = [o for o in sc.objects if abs(o.center[0] - 0.5) >= 0.1]
    if not objs: continue
    o = objs[rng.integers(len(objs))]
    ch = ["left", "right"] if rng.random() < 0.5 else ["right", "left"]
    q = f"Considering the position of the {o.name} in the image provided, where is the {o.name} located in the image?"
    rows.append(dict(task="Side", prompt="Image:" + grid_words(sc, least=0.15) + "\n" + format_prompt(q, ch),
                     choices=ch, answer_index=ch.index("left" if o.center[0] < 0.5 else "right")))
json.dump(rows, open(out, "w"))
