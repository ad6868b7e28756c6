"""Build a toy LLM of another shape (the full build's corpus and schedule), for issue-21 runs:
    PYTHONPATH=<branch> python research/exp21/buildllm_arch.py OUT HIDDEN LAYERS HEADS
Then: exp.py --extra1 "--llm OUT/llm" (stage 2 inherits it through --init)."""
import sys
from pathlib import Path
import torch
torch.set_num_threads(1)
from minijarvis import config as C
from minijarvis.llm import build_tokenizer
from minijarvis.toyworld import build as B
out, hidden, layers, heads = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
C._LLM_ARCH["tiny"] = dict(C._LLM_ARCH["tiny"], hidden_size=hidden, intermediate_size=2 * hidden,
                           num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=heads)
out.mkdir(parents=True, exist_ok=True)
print(B._build_llm(out, B.SIZES["full"], 0, build_tokenizer()))
