"""Write a pool of described-scene ShapesBench questions (text only) for textonly.py's fresh-data runs.
    PYTHONPATH=<branch> python research/exp21/textpool.py N_PER_TASK OUT.json [START]"""
import sys, json, numpy as np
from minijarvis.toyworld.world import WORLD_SEED
from minijarvis.evaluation.shapesbench import TASKS, bench_item, format_prompt


def describe(scene, rng) -> str:
    parts = []
    for k in rng.permutation(len(scene.objects)):
        o = scene.objects[k]
        u, v = o.center
        parts.append(f"the {o.name} is at column {min(6, int(u * 6) + 1)}, row {min(6, int(v * 6) + 1)}, depth {o.z:.0f}")
    return "In the image, " + "; ".join(parts) + "."


if __name__ == "__main__":
    n, out = int(sys.argv[1]), sys.argv[2]
    start = int(sys.argv[3]) if len(sys.argv) > 3 else 100_000
    rows = []
    for task in TASKS:
        for i in range(start, start + n):
            item = bench_item(task, i, WORLD_SEED, render_image=False)
            rng = np.random.default_rng([31, TASKS.index(task), i])
            rows.append(dict(task=task, prompt=describe(item["scene"], rng) + "\n" + format_prompt(item["question"], item["choices"]),
                             choices=item["choices"], answer_index=item["answer_index"]))
    json.dump(rows, open(out, "w"))
