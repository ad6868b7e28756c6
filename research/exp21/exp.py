"""Issue-21 experiment: stage 1 -> stage 2 (instructions + VQA, some on easy scenes) -> ShapesBench. One thread."""
import argparse, json, sys, time, shutil
from pathlib import Path
import numpy as np
import torch
torch.set_num_threads(1)
import minijarvis
from minijarvis.evaluation import shapesbench as SB
from minijarvis.data import shapes as S
from minijarvis.data.synthetic import write_llava_folder
p = argparse.ArgumentParser()
p.add_argument("--method", default="llava"); p.add_argument("--seed", type=int, default=0)
p.add_argument("--syn", type=int, default=1000); p.add_argument("--instr", type=int, default=500)
p.add_argument("--vqa", type=int, default=1000); p.add_argument("--easy", type=float, default=0.5)
p.add_argument("--easy-max", type=int, default=3)
p.add_argument("--s1", type=int, default=300); p.add_argument("--s2", type=int, default=1000)
p.add_argument("--bs1", type=int, default=16); p.add_argument("--bs", type=int, default=16)
p.add_argument("--lr2", type=float, default=None); p.add_argument("--n", type=int, default=100)
p.add_argument("--out", required=True); p.add_argument("--extra1", default=""); p.add_argument("--extra2", default="")
p.add_argument("--extra-eval", default="")
p.add_argument("--ground", type=int, default=0); p.add_argument("--ground-turns", type=int, default=2)
p.add_argument("--a-kind", default="bench"); p.add_argument("--a-n", type=int, default=3000)
p.add_argument("--mix-side", type=int, default=0); p.add_argument("--side-bench", type=int, default=0)
p.add_argument("--s2a", type=int, default=0); p.add_argument("--a-max", type=int, default=2)
p.add_argument("--a-instr", type=int, default=0); p.add_argument("--lr2a", type=float, default=1e-3)
a = p.parse_args()
T = {}
import os
root = Path("/work/p21/data"); root.mkdir(exist_ok=True, parents=True)
if os.environ.get("UNIQUE"):  # every colour at most once per scene (scenes with no fixed attribute)
    sys.path.insert(0, os.path.dirname(__file__)); import gridpool_u  # noqa: F401
    root = Path("/work/p21/data_u"); root.mkdir(exist_ok=True, parents=True)
if os.environ.get("ROOT"):  # a data folder of its own (e.g. after the benchmark's wording changed)
    root = Path(os.environ["ROOT"]); root.mkdir(exist_ok=True, parents=True)
if os.environ.get("DISTANCE_RATIO"):
    SB.DISTANCE_RATIO = float(os.environ["DISTANCE_RATIO"])
t = time.time()
d1 = root / f"s1-{a.syn}-s{a.seed}"
j1 = write_llava_folder(d1, "caption", a.syn, seed=a.seed)
def make(instr, easy_share, easy_max, ground=0):
  tm = os.environ.get("TASK_MULT", "")
  mult = {k: float(v) for k, v in (kv.split(":") for kv in tm.split(","))} if tm else {}
  d2 = root / f"s2-i{instr}-v{a.vqa}-e{easy_share}-m{easy_max}-g{ground}x{a.ground_turns}-s{a.seed}{tm.replace(':', '').replace(',', '')}"
  j2 = d2 / "study.json"
  if not j2.exists():
    recs = json.loads(write_llava_folder(d2, "instruct", instr, seed=a.seed).read_text()) if instr else []
    d2.mkdir(parents=True, exist_ok=True); (d2 / "images").mkdir(exist_ok=True)
    orig = SB.sample_scene
    for task in SB.TASKS:
        for i in range(int(a.vqa * mult.get(task, 1))):
            easy = (i % 1000) < easy_share * 1000
            def capped(rng=None, n_objects=None, attrs=None, min_visible=0.5, _easy=easy):
                if _easy and attrs is None:
                    lo = 3 if n_objects is not None and n_objects >= 3 else 2
                    n_objects = int(np.random.default_rng(rng.integers(1 << 30)).integers(lo, max(lo, easy_max) + 1))
                return orig(rng, n_objects=n_objects, attrs=attrs, min_visible=min_visible)
            SB.sample_scene = capped
            item = SB.bench_item(task, i, 5000 + a.seed)
            SB.sample_scene = orig
            rel = f"images/vqa-{task.lower()}-{i:05d}.png"
            item["image"].save(d2 / rel, compress_level=1)
            recs.append({"id": f"vqa-{task}-{i}", "image": rel, "conversations": [
                {"from": "human", "value": "<image>\n" + item["prompt"]},
                {"from": "gpt", "value": item["choices"][item["answer_index"]]}]})
    for i in range(ground):
        rng = np.random.default_rng([999, a.seed, i])
        sc = S.sample_scene(rng)
        objs = [sc.objects[k] for k in rng.permutation(len(sc.objects))][:a.ground_turns]
        rel = f"images/ground-{i:05d}.png"
        S.render(sc).save(d2 / rel, compress_level=1)
        conv = []
        for k, o in enumerate(objs):
            q = f"Please provide the bounding box coordinate of the region this sentence describes: the {o.name}."
            conv += [{"from": "human", "value": ("<image>\n" if k == 0 else "") + q},
                     {"from": "gpt", "value": "[" + ", ".join(f"{v:.2f}" for v in o.bbox) + "]"}]
        recs.append({"id": f"ground-{i}", "image": rel, "conversations": conv})
    j2.write_text(json.dumps(recs))
  return j2, d2
j2, d2 = make(a.instr, a.easy, a.easy_max, a.ground)
def make_side(n, max_obj, d=None, only_records=False):
    d = d or root / f"side-{n}-m{max_obj}-s{a.seed}"; j = d / "study.json"
    if j.exists() and not only_records: return j, d
    (d / "images").mkdir(parents=True, exist_ok=True)
    from minijarvis.data.synthetic import SHORT_ANSWER
    recs = []
    for i in range(n):
        rng = np.random.default_rng([4343, a.seed, i])
        sc = S.sample_scene(rng, n_objects=int(rng.integers(1, max_obj + 1)))
        objs = [sc.objects[k] for k in rng.permutation(len(sc.objects))]
        conv = []
        for o in [o for o in objs if abs(o.center[0] - 0.5) >= 0.1][:2]:
            if a.side_bench:
                ch = ["left", "right"] if rng.random() < 0.5 else ["right", "left"]
                q = SB.format_prompt(f"Considering the position of the {o.name} in the image provided, where is the {o.name} located in the image?", ch)
                ans = "left" if o.center[0] < 0.5 else "right"
            else:
                q, ans = f"Is the {o.name} on the left or the right side of the image?" + SHORT_ANSWER, ("Left." if o.center[0] < 0.5 else "Right.")
            conv += [{"from": "human", "value": ("<image>\n" if not conv else "") + q}, {"from": "gpt", "value": ans}]
        if not conv: continue
        rel = f"images/side-{i:05d}.png"
        S.render(sc).save(d / rel, compress_level=1)
        recs.append({"id": f"side-{i}", "image": rel, "conversations": conv})
    if only_records: return recs
    j.write_text(json.dumps(recs)); return j, d
if a.mix_side:
    dm = root / f"mix-side{a.mix_side}b{a.side_bench}-i{a.instr}-v{a.vqa}-e{a.easy}-m{a.easy_max}-s{a.seed}"
    jm = dm / "study.json"
    if not jm.exists():
        import shutil as _sh
        _sh.copytree(d2, dm, dirs_exist_ok=True)
        recs = json.loads(j2.read_text()) + make_side(a.mix_side, 2, dm, only_records=True)
        jm.write_text(json.dumps(recs))
    j2, d2 = jm, dm
if a.s2a:
    j2a, d2a = make_side(a.a_n, a.a_max) if a.a_kind == "side" else make(a.a_instr, 1.0, a.a_max)
T["data"] = time.time() - t
import train, eval as ev
out = Path(a.out); shutil.rmtree(out, ignore_errors=True); out.mkdir(parents=True)
t = time.time()
r = train.main(["--stage", "align", "--method", a.method, "--data", str(j1), "--image-folder", str(d1), "--max-steps", str(a.s1),
            "--output-dir", str(out / "align"), "--seed", str(a.seed), "--batch-size", str(a.bs1), "--threads", "1"] + a.extra1.split())
assert r == 0
T["stage1"] = time.time() - t; t = time.time()
init = out / "align"
if a.s2a:
    r = train.main(["--stage", "finetune", "--init", str(init), "--data", str(j2a), "--image-folder", str(d2a),
            "--max-steps", str(a.s2a), "--output-dir", str(out / "finetune-a"), "--seed", str(a.seed), "--batch-size", str(a.bs),
            "--threads", "1", "--lr", str(a.lr2a)] + a.extra2.split())
    assert r == 0
    init = out / "finetune-a"
    T["stage2a"] = time.time() - t; t = time.time()
r = train.main(["--stage", "finetune", "--init", str(init), "--data", str(j2), "--image-folder", str(d2),
            "--max-steps", str(a.s2), "--output-dir", str(out / "finetune"), "--seed", str(a.seed), "--batch-size", str(a.bs),
            "--threads", "1"] + (["--lr", str(a.lr2)] if a.lr2 else []) + a.extra2.split())
assert r == 0
T["stage2"] = time.time() - t; t = time.time()
b = ev.main(["--checkpoint", str(out / "finetune"), "--bench", "shapes", "--n-per-task", str(a.n), "--output-dir", str(out / "eval")] + a.extra_eval.split())
T["eval"] = time.time() - t
s = b["checkpoints"][0]["summary"]
print("RESULT", json.dumps(dict(args=vars(a), acc={k: round(v["accuracy"], 3) for k, v in s["per_task"].items()}, all=round(s["all"]["accuracy"], 3),
      secs={k: round(v, 1) for k, v in T.items()})), flush=True)
