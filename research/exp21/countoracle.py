"""What can a model that reads patches, not objects, get on Count? (round 9)

For each Count item, the named objects' (kind or colour the question asks) share of each cell of a
g x g grid, from the renderer's silhouettes (nearer objects painted last). The best answer for each
value of a feature, fitted on N items of bench seed 1 and scored on the 800 first items of seed 0:
the scene's number of objects; the number of cells the named objects cover (at three thresholds),
alone and with the number of objects; the named objects' area in cells.

    python research/exp21/countoracle.py [N]      # N fitting items (default 1600), about a minute
"""
import sys, collections, numpy as np
from minijarvis.evaluation.shapesbench import bench_item
from minijarvis.data.shapes import _footprint
R = 96
def labels(scene):
    lab = -np.ones((R, R), int)
    order = sorted(range(len(scene.objects)), key=lambda i: -scene.objects[i].z)
    for i in order:
        o = scene.objects[i]
        _, m = _footprint(o.kind, o.x, o.z, R)
        lab[m] = i
    return lab
def feats(item, g):
    sc = item["scene"]; q = item["question"]
    named = [i for i, o in enumerate(sc.objects) if (o.kind + "s" in q.split() or f" {o.color} " in q)]
    lab = labels(sc); s = R // g
    cov = np.zeros((g, g)); tot = np.zeros((g, g))
    for a in range(g):
        for b in range(g):
            cell = lab[a*s:(a+1)*s, b*s:(b+1)*s]
            cov[a, b] = np.isin(cell, named).mean(); tot[a, b] = (cell >= 0).mean()
    return len(named), len(sc.objects), cov, tot
def bayes(train, test):
    tab = collections.defaultdict(collections.Counter)
    for f, c in train: tab[f][c] += 1
    prior = collections.Counter(c for _, c in train).most_common(1)[0][0]
    return np.mean([(tab[f].most_common(1)[0][0] if f in tab else prior) == c for f, c in test])
N = int(sys.argv[1]) if len(sys.argv) > 1 else 1600
items = [bench_item("Count", i, seed=1, render_image=False) for i in range(N)] + \
        [bench_item("Count", i, seed=0, render_image=False) for i in range(800)]
for g in (4, 6, 8, 12):
    rows = [feats(it, g) for it in items]
    data = {}
    data["total objects"] = [((t,), c) for c, t, _, _ in rows]
    for th in (0.1, 0.25, 0.5):
        data[f"named cells>={th}"] = [((int((cov >= th).sum()),), c) for c, t, cov, _ in rows]
        data[f"named cells>={th} + total"] = [((int((cov >= th).sum()), t), c) for c, t, cov, _ in rows]
    data["named area (0.5 cell bins)"] = [((round(cov.sum() * 2),), c) for c, t, cov, _ in rows]
    for k, v in data.items():
        print(f"g={g} {k:32s} {bayes(v[:N], v[N:]):.3f}", flush=True)
