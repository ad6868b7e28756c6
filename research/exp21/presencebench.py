"""Presence questions, "Is there a cube / a red object in the image?" (A) yes (B) no (round 9).

A question needs the named kind or colour looked up in the image, and nothing else: no count, no
position. Half the answers are yes; a kind 60% of the time, else a colour (as ShapesBench's Count).

    # 200 held-out items in CV-Bench's layout, scored by the letter as the study scores ShapesBench
    python research/exp21/presencebench.py bench OUT [--n 200]
    python eval.py --checkpoint RUN/finetune --bench cvbench --bench-dir OUT --score-target letter
    # N training records in LLaVA's format appended to a study's stage-2 data (its images saved beside)
    python research/exp21/presencebench.py train STUDY/data/stage2-seed0 [--n 2000]
    python train.py --stage finetune --init RUN/align --data STUDY/data/stage2-seed0/study.json ...

Score with --score-target letter: the default scores the option's text ("yes"), which a model trained
to answer by letter never learnt to say (it then answers (A) to every item).
"""
import argparse
import json
from pathlib import Path

import numpy as np

from minijarvis.data.shapes import COLORS, KINDS, render, sample_scene
from minijarvis.data.synthetic import save_image
from minijarvis.evaluation.shapesbench import format_prompt

IMAGE_SIZE = 96  # the tiny encoders' input, as the study stores its images


def items(n: int, seed, retry: bool):
    """(scene, question, yes) with answers alternating yes / no: n of them (``retry``: a scene
    that has no attribute for the wanted answer is replaced), or n draws less those skipped."""
    rng, out = np.random.default_rng(seed), []
    for i in range(10 * n):
        if len(out) == n or (not retry and i == n):
            break
        scene, by_kind, yes = sample_scene(rng), rng.random() < 0.6, (len(out) if retry else i) % 2 == 0
        have = {o.kind if by_kind else o.color for o in scene.objects}
        options = [a for a in (KINDS if by_kind else tuple(COLORS)) if (a in have) == yes]
        if options:
            a = options[rng.integers(len(options))]
            out.append((scene, f"Is there a {a} in the image?" if by_kind else f"Is there a {a} object in the image?", yes))
    return out


def main():
    p = argparse.ArgumentParser()
    p.add_argument("mode", choices=("bench", "train"))
    p.add_argument("out")
    p.add_argument("--n", type=int, default=None)
    args = p.parse_args()
    out = Path(args.out)
    if args.mode == "bench":
        (out / "img").mkdir(parents=True, exist_ok=True)
        rows = []
        for i, (scene, q, yes) in enumerate(items(args.n or 200, [123456, 7], retry=True)):
            save_image(render(scene), out / f"img/p{i:04d}.png", IMAGE_SIZE)
            rows.append(dict(idx=i, type="2D", task="Count", image=f"img/p{i:04d}.png", question=q, choices=["yes", "no"],
                             answer="(A)" if yes else "(B)", prompt=format_prompt(q, ["yes", "no"]), source="presence"))
        (out / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    else:
        path = out / "study.json"
        records = json.loads(path.read_text())
        (out / "images").mkdir(exist_ok=True)
        for i, (scene, q, yes) in enumerate(items(args.n or 2000, [5000, 99], retry=False)):
            rel = f"images/presence-{i:05d}.png"
            save_image(render(scene), out / rel, IMAGE_SIZE)
            records.append({"id": f"study-presence-{i:05d}", "image": rel, "conversations": [
                {"from": "human", "value": "<image>\n" + format_prompt(q, ["yes", "no"])},
                {"from": "gpt", "value": "A" if yes else "B"}]})
        path.write_text(json.dumps(records))


if __name__ == "__main__":
    main()
