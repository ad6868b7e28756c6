"""Text-only ShapesBench with a large pool of fresh questions (no memorising):
    PYTHONPATH=<branch> python research/exp21/textfresh.py HIDDEN LAYERS STEPS LR POOL1[,POOL2] [EVAL_EVERY] [HEADS]"""
import sys, json, torch, numpy as np, time
torch.set_num_threads(1)
sys.path.insert(0, __file__.rsplit("/", 1)[0])
from textstep import option_accuracy, text_step  # noqa: E402
from minijarvis.config import preset
from minijarvis.llm import build_llm, build_tokenizer
from minijarvis.data.text import encode_reply
from minijarvis.training.runtime import cosine_lr
hidden, layers, steps, lr = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
pool = sum((json.load(open(p)) for p in sys.argv[5].split(",")), [])
every = int(sys.argv[6]) if len(sys.argv) > 6 else 1000
heads = int(sys.argv[7]) if len(sys.argv) > 7 else None
import os
ev = json.load(open(os.environ.get("EVAL_POOL", "/work/p21/pool_eval.json")))
tok = build_tokenizer()
cfg = preset("tiny", pretrained=False)
arch = dict(cfg.llm_arch, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers)
if heads: arch.update(num_attention_heads=heads, num_key_value_heads=heads)
cfg.llm_arch = arch
torch.manual_seed(0)
model = build_llm(cfg)
def evaluate():
    return option_accuracy(model, tok, ev)
g = np.random.default_rng(0)
side = json.load(open(os.environ["SIDE_POOL"])) if os.environ.get("SIDE_POOL") else pool
side_steps, side_share = int(os.environ.get("SIDE_STEPS", 0)), float(os.environ.get("SIDE_SHARE", 0))
opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
model.train(); losses = []; t0 = time.time()
for step in range(steps):
    for grp in opt.param_groups: grp["lr"] = cosine_lr(step, steps, lr)
    src = [side if (step < side_steps or g.random() < side_share) else pool for _ in range(16)]
    rows = [encode_reply(tok, s_[k]["prompt"], s_[k]["choices"][s_[k]["answer_index"]], has_image=False)
            for s_ in src for k in [g.integers(len(s_))]]
    losses.append(text_step(model, opt, tok.pad_token_id, rows))
    if step % 500 == 0: print(step, round(np.mean(losses[-100:]), 3), round(time.time() - t0), flush=True)
    if every and step and step % every == 0: print("EVAL", step, evaluate(), flush=True)
print("RESULT", hidden, layers, steps, lr, heads, len(pool), evaluate(), round(time.time() - t0), flush=True)
