"""The centred linear probes of a study's stage-1 checkpoints, 3 seeds, with paired differences (round 8).

    for run in STUDY/*-seed*; do python probe.py --checkpoint $run/align --target tiny-dinov2 \
        --limit 1024 --steps 300 --bootstrap 200 --seed ${run##*seed} --output-dir PROBES/$(basename $run); done
    python research/exp21/probetable.py PROBES      # the table of docs/toyworld.md, seconds
"""
import sys
import json, glob, statistics as st, math
from collections import defaultdict
res = defaultdict(dict)
for p in glob.glob(f"{sys.argv[1]}/*/probe.json"):
    run = p.split("/")[-2]; m, s = run.rsplit("-seed", 1)
    rows = json.load(open(p))["checkpoints"][0]["rows"]
    res[m][int(s)] = {r["layer"]: r["mean"] for r in rows if r["metric"] == "centred"}
order = ["llava-blank", "llava", "nomask", "jarvis", "visper", "llava-expert"]
T2 = 4.303  # t(0.975, 2)
print("| LLM layer | " + " | ".join(order) + " | jarvis − llava | visper − llava |")
print("|---" * (len(order) + 3) + "|")
for L in range(5):
    cells = [f"{st.mean([res[m][s][L] for s in range(3)]):.3f} ± {st.stdev([res[m][s][L] for s in range(3)]):.3f}" for m in order]
    for m in ("jarvis", "visper"):
        d = [res[m][s][L] - res["llava"][s][L] for s in range(3)]
        cells.append(f"{100*st.mean(d):+.1f} ± {100*T2*st.stdev(d)/math.sqrt(3):.1f}")
    print(f"| {L} | " + " | ".join(cells) + " |")
