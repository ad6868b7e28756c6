"""A pool of ShapesBench questions after a TEXT GRID of the scene: 36 words in raster order, one per
patch of the 6x6 grid, the colour of the object that covers most of the patch (share >= MIN), else
"back". The same layout the image tokens have.
    PYTHONPATH=<branch> python research/exp21/gridpool.py N_PER_TASK OUT.json [START] [MIN]"""
import sys, json, numpy as np
from minijarvis.toyworld.world import WORLD_SEED, depth_grid
from minijarvis.evaluation.shapesbench import TASKS, bench_item, format_prompt


def grid_words(scene, grid=6, least=0.25) -> str:
    share = depth_grid(scene, grid)[2]
    k = share.argmax(0)
    return "".join(f" {scene.objects[k[p]].color}" if share[k[p], p] >= least else " back" for p in range(grid * grid))


if __name__ == "__main__":
    n, out = int(sys.argv[1]), sys.argv[2]
    start = int(sys.argv[3]) if len(sys.argv) > 3 else 100_000
    least = float(sys.argv[4]) if len(sys.argv) > 4 else 0.25
    rows = []
    for task in TASKS:
        for i in range(start, start + n):
            item = bench_item(task, i, WORLD_SEED, render_image=False)
            rows.append(dict(task=task, prompt="Image:" + grid_words(item["scene"], least=least) + "\n" + format_prompt(item["question"], item["choices"]),
                             choices=item["choices"], answer_index=item["answer_index"]))
    json.dump(rows, open(out, "w"))
