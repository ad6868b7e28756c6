"""Can a toy LLM learn ShapesBench reasoning in TEXT (scene described with columns, rows, depths)?
    PYTHONPATH=<branch> python research/exp21/textonly.py HIDDEN LAYERS STEPS [LR]"""
import sys, copy, torch, numpy as np
torch.set_num_threads(1)
from minijarvis.config import preset
from minijarvis.llm import build_llm, build_tokenizer
from minijarvis.toyworld import parts as P
from minijarvis.toyworld.world import WORLD_SEED, _chat
from minijarvis.evaluation.shapesbench import TASKS, bench_item, format_prompt
from minijarvis.data.text import encode_reply
hidden, layers, steps = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
lr = float(sys.argv[4]) if len(sys.argv) > 4 else 1e-3
EVAL_EVERY = int(sys.argv[5]) if len(sys.argv) > 5 else 0


sys.path.insert(0, __file__.rsplit("/", 1)[0])
from textpool import describe  # noqa: E402  the scene in words, shared by the text-only scripts


tok = build_tokenizer()
def item_text(task, i):
    item = bench_item(task, i, WORLD_SEED, render_image=False)
    rng = np.random.default_rng([31, TASKS.index(task), i])
    return item, describe(item["scene"], rng) + "\n" + format_prompt(item["question"], item["choices"])
rows = []
for task in TASKS:
    for i in range(1500):
        item, prompt = item_text(task, 100_000 + i)
        rows.append(encode_reply(tok, prompt, item["choices"][item["answer_index"]], has_image=False))
cfg = preset("tiny", pretrained=False)
cfg.llm_arch = dict(cfg.llm_arch, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers)
torch.manual_seed(0)
import os
if os.environ.get("INIT_TOY"):  # start from the shipped toy LLM (hidden 64, 4 layers), as stage 2 does
    from transformers import AutoModelForCausalLM
    from minijarvis.config import TOY_LLM
    model = AutoModelForCausalLM.from_pretrained(str(TOY_LLM))
else:
    model = build_llm(cfg)
def evaluate(n=60):
  model.eval()
  res = {}
  for task in TASKS:
    hit = 0
    for i in range(n):
        item, prompt = item_text(task, 900_000 + i)
        scores = []
        for opt in item["choices"]:
            ids, lab = encode_reply(tok, prompt, opt, has_image=False)
            with torch.no_grad():
                lp = model(input_ids=torch.tensor([ids])).logits[0, :-1].log_softmax(-1)
            t = torch.tensor(lab[1:]); keep = t != -100
            scores.append(float(lp[keep].gather(-1, t[keep][:, None]).sum()))
        hit += int(np.argmax(scores)) == item["answer_index"]
    res[task] = round(hit / n, 2)
  model.train()
  return res
# stage 2's loss: only the answer is labelled (encode_reply's labels), batches of 16
g = torch.Generator().manual_seed(0)
opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
from minijarvis.training.runtime import cosine_lr
model.train()
losses = []
for step in range(steps):
    for grp in opt.param_groups:
        grp["lr"] = cosine_lr(step, steps, lr)
    idx = torch.randint(len(rows), (16,), generator=g).tolist()
    width = max(len(rows[k][0]) for k in idx)
    ids = torch.full((16, width), tok.pad_token_id); lab = torch.full((16, width), -100); att = torch.zeros(16, width, dtype=torch.long)
    for b, k in enumerate(idx):
        n = len(rows[k][0]); ids[b, :n] = torch.tensor(rows[k][0]); lab[b, :n] = torch.tensor(rows[k][1]); att[b, :n] = 1
    loss = model(input_ids=ids, attention_mask=att, labels=lab).loss
    loss.backward(); torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0); opt.step(); opt.zero_grad()
    losses.append(float(loss.detach()))
    if step % 250 == 0: print(step, np.mean(losses[-50:]), flush=True)
    if EVAL_EVERY and step and step % EVAL_EVERY == 0: print("EVAL", step, evaluate(40), flush=True)
print("final loss", np.mean(losses[-50:]))
print("RESULT", hidden, layers, steps, lr, evaluate())
