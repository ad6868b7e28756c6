"""Round 13: what the exact speed-ups save, and a hash to show they change nothing. One thread.

    python research/exp21/round13_timing.py REPO data OUT    # seed 0's stage-2 + stage-1 data of the study into a fresh OUT
    python research/exp21/round13_timing.py REPO bench       # ShapesBench rendered, 1,000 items per task
    python research/exp21/round13_timing.py REPO eval CKPT   # eval.py on 4,000 items, three times in one process

REPO: the checkout to import (an old clone, or this one). Run old and new alternately, so the
host's speed hits both alike; each line names the code it ran. ``data`` prints an md5 over every
file it wrote (name and bytes), ``bench`` a sha256 over the items and PNG bytes: equal hashes,
equal data. ``eval`` writes /tmp/round13-eval-<REPO's folder name>/; compare the predictions files."""
import hashlib
import sys
import time
from pathlib import Path

import torch

repo, what, *rest = sys.argv[1:]
sys.path.insert(0, repo)
torch.set_num_threads(1)
import minijarvis  # noqa: E402

code = Path(minijarvis.__file__).parents[1].name
if what == "data":
    from minijarvis.toyworld import study as S
    out = Path(rest[0])
    out.mkdir(parents=True)
    t = time.perf_counter()
    S.stage2_data(out / "stage2", S.DEFAULT, 0)
    t2, t = time.perf_counter() - t, time.perf_counter()
    S.stage1_data(out / "stage1", S.DEFAULT, 0)
    t1, h = time.perf_counter() - t, hashlib.md5()
    for p in sorted(p for p in out.rglob("*") if p.is_file()):
        h.update(str(p.relative_to(out)).encode() + p.read_bytes())
    print(f"{code}: stage-2 data {t2:.1f} s, stage-1 data {t1:.1f} s; md5 {h.hexdigest()}")
elif what == "bench":
    from minijarvis.evaluation import benchmarks as B
    t = time.perf_counter()
    items = B._shapes_rendered(1000, 0)
    dt, h = time.perf_counter() - t, hashlib.sha256()
    for fields, png in items:
        h.update(repr(fields).encode() + png)
    print(f"{code}: ShapesBench rendered, {len(items)} items, {dt:.1f} s; sha256 {h.hexdigest()}")
elif what == "eval":
    import eval as E
    for k in range(3):
        t = time.perf_counter()
        E.main(["--checkpoint", rest[0], "--bench", "shapes", "--score-target", "letter", "--n-per-task", "1000",
                "--output-dir", f"/tmp/round13-eval-{code}"])
        print(f"{code}: eval call {k}: {time.perf_counter() - t:.1f} s", flush=True)
else:
    sys.exit(f"unknown: {what} (data, bench or eval)")
