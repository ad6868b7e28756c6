"""Round-3 experiment: the toy LLM's text pretraining plus ShapesBench questions after a textual
scene, with correct answers (it learns which named object a question asks about and how to
compare). Writes the LLM to OUT (an HF folder). One thread.
    PYTHONPATH=<branch> python research/exp21/buildllm_described.py OUT [N_PER_TASK]"""
import sys, torch
import numpy as np
torch.set_num_threads(1)
from minijarvis.config import preset
from minijarvis.llm import build_llm, build_tokenizer
from minijarvis.toyworld import parts as P
from minijarvis.toyworld.build import SIZES
from minijarvis.toyworld.world import WORLD_SEED, _chat, text_corpus
from minijarvis.evaluation.shapesbench import TASKS, bench_item, format_prompt

out, n = sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 1500


sys.path.insert(0, __file__.rsplit("/", 1)[0])
from textpool import describe  # noqa: E402  the scene in words, shared by the text-only scripts


tok, sz, seed = build_tokenizer(), SIZES["full"], 0
texts = text_corpus(tok, sz.captions, sz.conversations, sz.questions, seed)
world = WORLD_SEED + seed
for task in TASKS:
    for i in range(n):
        item = bench_item(task, 100_000 + i, world, render_image=False)
        rng = np.random.default_rng([31, TASKS.index(task), i])
        texts.append(_chat(tok, [(describe(item["scene"], rng) + "\n" + format_prompt(item["question"], item["choices"]),
                                  item["choices"][item["answer_index"]])]))
print(len(texts), "texts")
rows = P.encode_texts(tok, texts)
torch.manual_seed(seed)
model = build_llm(preset("tiny", pretrained=False))
packed = P.pack(rows, P.ROW, tok.eos_token_id, seed)
steps = int(sz.llm_steps * len(texts) / (sz.captions + sz.conversations + 4 * sz.questions))
losses = P.train_llm(model, packed, steps, sz.llm_batch, seed)
print("steps", steps, "final loss", losses[-1])
model.save_pretrained(out)
tok.save_pretrained(out)
