"""Round 12: does a long-lived study worker slow down from run to run? Three cycles, in one
process and one thread, of a 600-step stage 1, a 600-step stage 2 and the 4,000-item ShapesBench,
on seed 0's data of a study folder; prints each cycle's three times.

    python research/exp21/seqcost.py REPO TAG STUDY    # REPO: the checkout to import (a worktree)

Run two side by side (an old worktree and this one) so the host's speed hits both alike."""
import sys
import time

import torch

repo, tag, study = sys.argv[1:4]
sys.path.insert(0, repo)
torch.set_num_threads(1)
import eval as E  # noqa: E402
import train  # noqa: E402

d1, d2, out = f"{study}/data/stage1-seed0", f"{study}/data/stage2-seed0", f"/tmp/seqcost-{tag}"
for k in range(3):
    t = time.perf_counter()
    train.main(["--stage", "align", "--method", "llava", "--data", f"{d1}/caption.json", "--image-folder", d1,
                "--max-steps", "600", "--output-dir", f"{out}/align{k}", "--seed", "0", "--batch-size", "8"])
    t1, t = time.perf_counter() - t, time.perf_counter()
    train.main(["--stage", "finetune", "--init", f"{out}/align{k}", "--data", f"{d2}/study.json", "--image-folder", d2,
                "--max-steps", "600", "--output-dir", f"{out}/ft{k}", "--seed", "0", "--batch-size", "8", "--lr", "1e-3"])
    t2, t = time.perf_counter() - t, time.perf_counter()
    E.main(["--checkpoint", f"{out}/ft{k}", "--bench", "shapes", "--score-target", "letter", "--n-per-task", "1000",
            "--output-dir", f"{out}/ev{k}"])
    print(f"{tag} cycle {k}: stage 1 {t1:.1f} s, stage 2 {t2:.1f} s, ShapesBench {time.perf_counter() - t:.1f} s", flush=True)
