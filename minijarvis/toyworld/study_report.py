"""study.py's statistics and report: intervals over seeds, paired differences to llava, the
minimum detectable effect, where each method falls between the bounds; table, CSV, JSON, figure.

Intervals: mean over seeds +- a 95% Student-t interval, t(0.975, n-1) * sd / sqrt(n) (none with
one seed). The paired comparison takes, seed by seed, row minus llava (same data, same seed) and
gives the mean difference with its own t-interval: an interval that excludes 0 is an effect at
the 5% level (two-sided, no correction for the number of tasks). The minimum detectable effect
(MDE) is that paired interval's half-width (issue 21's definition): a true difference smaller
than it cannot be told from 0 by this study (to find one with 80% power takes about 1.4 times
it). When every seed gives the same difference the interval is 0 wide; the verdict says so.

Bounds (``study.BOUNDS``): llava-blank (lower: the text alone) and llava-expert (upper: the
expert's features read directly). ``bound_gap``: upper minus lower, seed by seed, with its
t-interval. A method's position between them is (method - lower) / (upper - lower) on the
means: 0 = the text alone, 1 = as good as reading the expert; none where the bounds are not
shown apart (the gap's interval does not lie above 0; never with one seed), since a ratio over
a gap of noise means nothing.
"""
from __future__ import annotations

import csv
import json
import math
from pathlib import Path

from minijarvis.evaluation.shapesbench import TASKS
from minijarvis.toyworld.study import BOUNDS

T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179,
        2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086)  # df = 1..20; 1.96 beyond
COLUMNS = TASKS + ("all",)
MDE_AIM = 0.04  # issue 21: a minimum detectable effect of at most 4 points on "all"


def t_interval(values: list[float]) -> dict:
    """Mean and 95% t-interval half-width of ``values`` (half-width None for one value)."""
    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return dict(mean=mean, half=None, n=n)
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    sd = 0.0 if sd < 1e-12 else sd  # equal values: exactly 0, not float dust
    t = T975[n - 2] if n - 1 <= len(T975) else 1.96
    return dict(mean=mean, half=t * sd / math.sqrt(n), n=n)


def _accuracy(result: dict, task: str) -> float:
    return result["all"] if task == "all" else result["per_task"][task]


def display_order(rows: list[str]) -> list[str]:
    """The lower bound first, the methods as given, the upper bound last."""
    rank = {"lower": 0, "upper": 2}
    return sorted(rows, key=lambda r: rank.get(BOUNDS.get(r), 1))


def label(row: str) -> str:
    return f"{row} ({BOUNDS[row]} bound)" if row in BOUNDS else row


def aggregate(results: list[dict], methods: list[str]) -> dict:
    """Per row and task: mean +- t-interval over seeds (and the seeds' values); per row other
    than llava: the paired difference to llava seed by seed, and its half-width as ``mde``; when
    both bounds ran, the gap between them and each method's position between them."""
    rows = display_order(list(dict.fromkeys(methods)))
    by = {m: sorted((r for r in results if r["method"] == m), key=lambda r: r["seed"]) for m in rows}
    table = {m: {t: dict(t_interval([_accuracy(r, t) for r in rs]), values=[_accuracy(r, t) for r in rs])
                 for t in COLUMNS} for m, rs in by.items()}
    paired = {}
    if "llava" in by:
        base = {r["seed"]: r for r in by["llava"]}
        for m in rows:
            pairs = [(r, base[r["seed"]]) for r in by[m] if r["seed"] in base]
            if m != "llava" and pairs:
                paired[m] = {t: t_interval([_accuracy(a, t) - _accuracy(b, t) for a, b in pairs]) for t in COLUMNS}
    bounds = {m: BOUNDS[m] for m in rows if m in BOUNDS}
    gap, position = {}, {}
    if set(bounds.values()) == {"lower", "upper"}:
        low, high = (next(m for m, r in bounds.items() if r == side) for side in ("lower", "upper"))
        under = {r["seed"]: r for r in by[low]}
        pairs = [(r, under[r["seed"]]) for r in by[high] if r["seed"] in under]
        gap = {t: t_interval([_accuracy(a, t) - _accuracy(b, t) for a, b in pairs]) for t in COLUMNS} if pairs else {}
        apart = {t: g["half"] is not None and g["mean"] > g["half"] for t, g in gap.items()}
        for m in (m for m in rows if m not in BOUNDS):
            position[m] = {t: (table[m][t]["mean"] - table[low][t]["mean"]) / gap[t]["mean"]
                           if apart.get(t) else None for t in COLUMNS}
    chance = dict(results[0]["chance"])
    chance["all"] = sum(chance[t] for t in TASKS) / len(TASKS)  # equal items per task
    return dict(table=table, paired=paired, mde={m: {t: s["half"] for t, s in per.items()} for m, per in paired.items()},
                bounds=bounds, bound_gap=gap, position=position, chance=chance)


def _fmt(s: dict, pct: bool = True) -> str:
    k = 100 if pct else 1
    half = "" if s["half"] is None else f" ± {k * s['half']:.1f}"
    return f"{k * s['mean']:.1f}{half}"


def _points(x) -> str:
    return "-" if x is None else f"{100 * x:.1f}"


def markdown_table(stats: dict) -> str:
    """Accuracy (%) per row and task, mean ± 95% interval over seeds, the bounds marked; the
    paired differences to llava (points); then the minimum detectable effect (points)."""
    head = "| {} | " + " | ".join(COLUMNS) + " |\n|---|" + "---|" * len(COLUMNS) + "\n"
    rows = [f"| chance | " + " | ".join(f"{100 * stats['chance'][t]:.1f}" for t in COLUMNS) + " |"]
    rows += [f"| {label(m)} | " + " | ".join(_fmt(s[t]) for t in COLUMNS) + " |" for m, s in stats["table"].items()]
    rows += [f"| {m} − llava | " + " | ".join(_fmt(s[t]) for t in COLUMNS) + " |" for m, s in stats["paired"].items()]
    text = head.format("row") + "\n".join(rows) + "\n"
    if stats["mde"]:
        text += ("\nMinimum detectable effect vs llava (points; the paired 95% interval's half-width):\n\n"
                 + head.format("row") + "\n".join(f"| {m} | " + " | ".join(_points(h[t]) for t in COLUMNS) + " |"
                                                  for m, h in stats["mde"].items()) + "\n")
    return text


def verdicts(stats: dict) -> list[str]:
    """One line per (row, task): the paired difference and whether its interval excludes 0; one
    line per method: where it falls between the bounds; the largest MDE on "all" vs the aim."""
    lines = []
    for m, per in stats["paired"].items():
        for t, s in per.items():
            if s["half"] is None:
                word = "one seed: no interval"
            elif s["half"] == 0 and s["mean"] != 0:  # a degenerate interval is no evidence
                word = "the same difference on every seed: the interval is 0 wide, no effect claimed"
            elif s["mean"] - s["half"] > 0:
                word = "better than llava"
            elif s["mean"] + s["half"] < 0:
                word = "worse than llava"
            else:
                word = "no difference shown"
            lines.append(f"{label(m)} - llava, {t}: {_fmt(s)} points ({word})")
    if stats["position"]:
        low, high = (next(m for m, r in stats["bounds"].items() if r == side) for side in ("lower", "upper"))
        lines.append(f"room between the bounds, {high} - {low}: " + ", ".join(
            f"{t} {_fmt(g)}" for t, g in stats["bound_gap"].items()) + " points")
        lines.append(f"between the bounds (0 = {low}, 1 = {high}; '-' where {high} is not shown above {low}):")
        lines += [f"  {m}: " + ", ".join(f"{t} {'-' if p[t] is None else f'{p[t]:.2f}'}" for t in COLUMNS)
                  for m, p in stats["position"].items()]
    elif stats["table"]:
        lines.append("bounds: run llava-blank and llava-expert too to place the methods between them")
    mdes = {m: h["all"] for m, h in stats["mde"].items() if h["all"] is not None}
    if mdes:
        worst = max(mdes, key=mdes.get)
        lines.append(f"minimum detectable effect on all: up to {100 * mdes[worst]:.1f} points ({worst}); "
                     f"aim: <= {100 * MDE_AIM:.0f}")
    return lines


def plot(stats: dict, path: Path, title: str) -> None:
    """Grouped bars (one group per task, one bar per row, bounds hatched) with 95% intervals,
    each seed as a dot, chance as a dashed line."""
    from matplotlib.figure import Figure  # no pyplot: the process's backend stays untouched

    rows = list(stats["table"])
    width = 0.8 / len(rows)
    fig = Figure(figsize=(8, 3.4), dpi=100)
    ax = fig.subplots()
    for k, m in enumerate(rows):
        xs = [x - 0.4 + width * (k + 0.5) for x in range(len(COLUMNS))]
        s = [stats["table"][m][t] for t in COLUMNS]
        err = [0 if v["half"] is None else v["half"] for v in s]
        ax.bar(xs, [v["mean"] for v in s], width, yerr=err, capsize=3, label=label(m),
               hatch="//" if m in BOUNDS else None, fill=m not in BOUNDS, edgecolor=f"C{k}")
        for x, v in zip(xs, s):
            ax.plot([x] * len(v["values"]), v["values"], ".", color="black", markersize=3)
    for x, t in enumerate(COLUMNS):
        ax.hlines(stats["chance"][t], x - 0.45, x + 0.45, colors="black", linestyles="--", linewidth=1,
                  label="chance" if x == 0 else None)
    ax.set_xticks(range(len(COLUMNS)), COLUMNS)
    ax.set(ylim=(0, 1), ylabel="ShapesBench accuracy", title=title)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    fig.savefig(path)


def write_outputs(out: Path, stats: dict, results: list[dict], settings: dict) -> dict:
    """study.json (every number), study.csv (row, task, mean, half-width, n, seeds' values,
    kind), study.md (the tables and verdicts) and study.png under ``out``."""
    paths = {k: out / f"study.{k}" for k in ("json", "csv", "md", "png")}
    paths["json"].write_text(json.dumps(dict(settings=settings, stats=stats, runs=results), indent=1))
    with open(paths["csv"], "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["row", "task", "mean", "ci95_half", "n_seeds", "values", "kind"])
        for m, per in stats["table"].items():
            kind = f"{BOUNDS[m]} bound" if m in BOUNDS else "method"
            w.writerows([m, t, s["mean"], s["half"], s["n"], " ".join(map(str, s["values"])), kind]
                        for t, s in per.items())
        for m, per in stats["paired"].items():  # ci95_half of a paired row = its MDE
            w.writerows([f"{m} - llava", t, s["mean"], s["half"], s["n"], "", "paired"] for t, s in per.items())
    paths["md"].write_text(markdown_table(stats) + "\n" + "\n".join(f"- {v}" for v in verdicts(stats)) + "\n")
    seeds = max(s["all"]["n"] for s in stats["table"].values())
    plot(stats, paths["png"], f"ShapesBench after stage 1 + 2, mean ± 95% CI over {seeds} seeds")
    return paths
