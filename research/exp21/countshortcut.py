"""How far does Count's total-objects shortcut go on ShapesBench? (round 7)

For each number of objects in a Count item, the best single answer; its accuracy on the bench
(seed 0) with the rule fitted on the bench itself (the shortcut's ceiling), and with the rules a
model could learn from the study's stage-2 Count questions (seed 5000: half on scenes of at most
3 objects, the default, or all on full scenes, ``--small-scenes 0 ...``).

    python research/exp21/countshortcut.py [N]      # N bench items (default 800), seconds
"""
import sys
from collections import Counter, defaultdict

from minijarvis.evaluation.shapesbench import bench_item


def joint(seed: int, n: int, small: int) -> Counter:
    """Counts of (objects in the scene, right count) over n Count items; the first `small` on small scenes."""
    out = Counter()
    for i in range(n):
        item = bench_item("Count", i, seed, max_objects=3 if i < small else None, render_image=False)
        out[len(item["scene"].objects), item["answer_index"] + 1] += 1
    return out


def rule(counts: Counter) -> dict[int, int]:
    """The most frequent count for each number of objects."""
    by = defaultdict(Counter)
    for (total, c), k in counts.items():
        by[total][c] += k
    return {total: cs.most_common(1)[0][0] for total, cs in sorted(by.items())}


def accuracy(r: dict[int, int], counts: Counter) -> float:
    return sum(k for (total, c), k in counts.items() if r.get(total) == c) / sum(counts.values())


if __name__ == "__main__":
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 800
    bench = joint(0, n, 0)
    print("bench (objects, count): items", dict(sorted(bench.items())))
    for name, fitted in (("the bench itself (ceiling)", bench), ("stage-2 default, half small", joint(5000, 1000, 500)),
                         ("stage-2 full scenes only", joint(5000, 1000, 0))):
        r = rule(fitted)
        print(f"rule from {name}: {r} -> {accuracy(r, bench):.1%} on the bench")
