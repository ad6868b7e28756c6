"""Held-out "How many objects are in the image?" items (round 10), in CV-Bench's layout, to score how
well a run reads the scene's number of objects (choices 1 to 6, answer by letter):

    python research/exp21/countallbench.py DIR [--n 300]
    python eval.py --checkpoint RUN/finetune --bench cvbench --bench-dir DIR --score-target letter
"""
import argparse
import json
from pathlib import Path

from minijarvis.data.synthetic import save_image
from minijarvis.evaluation.shapesbench import count_all_item

p = argparse.ArgumentParser()
p.add_argument("out")
p.add_argument("--n", type=int, default=300)
p.add_argument("--seed", type=int, default=0)  # the benchmark's user seed; training uses 5000 + seed
a = p.parse_args()
out = Path(a.out)
rows = []
for i in range(a.n):
    item = count_all_item(i, a.seed)  # rendered at 224 px and saved at 96, as study.py's stage 2
    rel = f"img/2D/countall/{item['id']}.png"
    (out / rel).parent.mkdir(parents=True, exist_ok=True)
    save_image(item["image"], out / rel, 96)
    rows.append({"idx": i, "type": "2D", "task": "CountAll", "image": rel, "filename": rel, "question": item["question"],
                 "choices": item["choices"], "answer": item["answer"], "prompt": item["prompt"], "source": "ShapesBench"})
(out / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
print(f"wrote {len(rows)} items to {out}/test.jsonl")
