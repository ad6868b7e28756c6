"""The centred linear probes of a study's stage-1 checkpoints over its seeds, with paired
differences to llava (round 8).

    for run in STUDY/*-seed*; do python probe.py --checkpoint $run/align --target tiny-dinov2 \
        --limit 1024 --steps 300 --bootstrap 200 --seed ${run##*seed} --output-dir PROBES/$(basename $run); done
    python research/exp21/probetable.py PROBES      # the table of docs/toyworld.md, seconds
"""
import glob
import json
import statistics as st
import sys
from collections import defaultdict

from minijarvis.toyworld.study_report import t_interval

ORDER = ("llava-blank", "llava", "nomask", "jarvis", "visper", "llava-expert")


def centred(folder: str) -> dict:
    """row -> seed -> layer -> centred cosine (linear probe) from PROBES/<row>-seed<k>/probe.json."""
    res = defaultdict(dict)
    for path in glob.glob(f"{folder}/*/probe.json"):
        row, seed = path.split("/")[-2].rsplit("-seed", 1)
        rows = json.load(open(path))["checkpoints"][0]["rows"]
        res[row][int(seed)] = {r["layer"]: r["mean"] for r in rows if r["metric"] == "centred"}
    return res


if __name__ == "__main__":
    res = centred(sys.argv[1])
    seeds, layers = sorted(res["llava"]), sorted(next(iter(res["llava"].values())))
    print("| LLM layer | " + " | ".join(ORDER) + " | jarvis − llava | visper − llava |")
    print("|---" * (len(ORDER) + 3) + "|")
    for layer in layers:
        cells = [f"{st.mean(v):.3f} ± {st.stdev(v):.3f}"
                 for v in ([res[m][s][layer] for s in seeds] for m in ORDER)]
        for m in ("jarvis", "visper"):
            d = t_interval([100 * (res[m][s][layer] - res["llava"][s][layer]) for s in seeds])
            cells.append(f"{d['mean']:+.1f} ± {d['half']:.1f}")
        print(f"| {layer} | " + " | ".join(cells) + " |")
