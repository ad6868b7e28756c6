"""Run by tests/test_train.py under torchrun: trains, then writes what each rank saw."""
import hashlib
import json
import sys

import torch
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

import train

seen = {"jepa_ran": []}


def on_step(trainer, row):
    seen["jepa_ran"].append(row["jepa_ran"])
    if trainer.step == trainer.total:  # gather full weights (collective) and fingerprint them
        state = get_model_state_dict(trainer.model, options=StateDictOptions(full_state_dict=True))
        digest = hashlib.sha256()
        for key in sorted(state):
            if key.startswith(("proj", "z", "llm")):
                digest.update(state[key].detach().float().cpu().numpy().tobytes())
        seen["checksum"] = digest.hexdigest()
        seen["fsdp"] = type(trainer.wrapped).__name__.startswith("FSDP")
        t = trainer.tcfg
        seen["global_batch"] = t.batch_size * t.grad_accum * trainer.info.world_size
        seen["rank"] = trainer.info.rank


code = train.main(sys.argv[1:], on_step=on_step)
with open(f"rank{seen['rank']}.json", "w") as f:
    json.dump(seen, f)
sys.exit(code)
