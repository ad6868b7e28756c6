"""Teach the shipped toy LLM to answer ShapesBench from a TEXT GRID of the scene (unique colours),
keeping its language: a mix of grid chats (bench questions; side questions first), grid captions
(the stage-1 plain format with the grid in place of <image>) and its own corpus. Saves an LLM dir.
    PYTHONPATH=<branch> python research/exp21/gridllm.py OUT STEPS [LR]"""
import sys, os, json, time, numpy as np, torch
torch.set_num_threads(1)
sys.path.insert(0, __file__.rsplit("/", 1)[0])
from textstep import option_accuracy, text_step  # noqa: E402
sys.path.insert(0, os.path.dirname(__file__))
import gridpool_u  # noqa: F401  unique colours
from gridpool import grid_words
from transformers import AutoModelForCausalLM
from minijarvis.config import TOY_LLM
from minijarvis.llm import build_tokenizer
from minijarvis.data.text import encode_reply
from minijarvis.toyworld.world import text_corpus, caption_text, WORLD_SEED
from minijarvis.training.runtime import cosine_lr
out, steps = sys.argv[1], int(sys.argv[2]); lr = float(sys.argv[3]) if len(sys.argv) > 3 else 1e-3
SIDE_STEPS = int(os.environ.get("SIDE_STEPS", 600))
tok = build_tokenizer()
model = AutoModelForCausalLM.from_pretrained(str(TOY_LLM))
strip = lambda p: p[len("Image:"):] if p.startswith("Image:") else p  # noqa: E731
def chats(path):
    return [encode_reply(tok, strip(r["prompt"]), r["choices"][r["answer_index"]], has_image=False)
            for r in json.load(open(path))]
t0 = time.time()
bench = chats("/work/p21/gridu_a.json"); side = chats("/work/p21/side_u.json")
caps = []
for i in range(3000):
    scene, cap = caption_text(i, WORLD_SEED + 7)
    g = tok(grid_words(scene, least=0.15), add_special_tokens=False)["input_ids"]
    c = tok(cap, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    caps.append((g + c, [-100] * len(g) + c))
corpus = [(ids, ids) for ids in (tok(t, add_special_tokens=False)["input_ids"][:256]
                                for t in text_corpus(tok, 1500, 1500, 0, 3))]
print("data", round(time.time() - t0), len(bench), len(side), len(caps), len(corpus), flush=True)
ev = json.load(open("/work/p21/gridu_eval.json"))
def evaluate():
    return option_accuracy(model, tok, ev, prompt=lambda r: strip(r["prompt"]), reduce="mean")
print("EVAL 0", evaluate(), flush=True)
rng = np.random.default_rng(0)
opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
model.train(); losses = []
for step in range(steps):
    for grp in opt.param_groups: grp["lr"] = cosine_lr(step, steps, lr)
    rows = []
    for _ in range(16):
        u = rng.random()
        src = side if step < SIDE_STEPS else (bench if u < .5 else side if u < .65 else caps if u < .8 else corpus)
        rows.append(src[rng.integers(len(src))])
    losses.append(text_step(model, opt, tok.pad_token_id, rows))
    if step % 500 == 0: print(step, round(np.mean(losses[-100:]), 3), round(time.time() - t0), flush=True)
    if step and step % 1000 == 0: print("EVAL", step, evaluate(), flush=True)
print("RESULT", steps, lr, evaluate(), round(time.time() - t0), flush=True)
model.save_pretrained(out); tok.save_pretrained(out)
