"""study.py's parts: the runs of one (method, seed), the statistics over seeds, the report.

A run = stage 1 (train.py --stage align), stage 2 (--stage finetune --init), ShapesBench
(eval.py, option likelihood) and, when ``probe.py`` is importable, its per-layer probes on the
stage-1 checkpoint. Every method of one seed trains on the same data (same synthetic records,
same order); seeds change the data, the initialisation of what trains, the masks and the lambda
draws. A run is finished when its ``done.json`` exists (written last, atomically): a finished
run is never rerun, an unfinished one is started again from scratch.

Intervals: mean over seeds +- a 95% Student-t interval, t(0.975, n-1) * sd / sqrt(n) (none with
one seed). The paired comparison takes, seed by seed, method minus llava (same data, same seed)
and gives the mean difference with its own t-interval: an interval that excludes 0 is an effect
at the 5% level (two-sided, no correction for the number of tasks).
"""
from __future__ import annotations

import csv
import importlib.util
import json
import math
import shutil
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

from minijarvis.data.shapes import write_llava_folder
from minijarvis.errors import InputError, read_json
from minijarvis.evaluation.shapesbench import TASKS, bench_item

T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179,
        2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086)  # df = 1..20; 1.96 beyond
VQA_SEED = 5000  # user seed of the stage-2 vision-centric questions: never the bench's seed 0
DONE = "done.json"


@dataclass(frozen=True)
class StudySize:
    synthetic_size: int  # records of stage-1 captions and of stage-2 instructions
    vqa_per_task: int  # stage-2 vision-centric questions per ShapesBench task (0: none)
    align_steps: int
    finetune_steps: int
    batch_size: int
    n_per_task: int  # ShapesBench items per task
    probe_images: int
    probe_steps: int


QUICK = StudySize(synthetic_size=8, vqa_per_task=1, align_steps=1, finetune_steps=1, batch_size=4,
                  n_per_task=1, probe_images=12, probe_steps=2)
DEFAULT = StudySize(synthetic_size=512, vqa_per_task=64, align_steps=96, finetune_steps=128,
                    batch_size=8, n_per_task=40, probe_images=96, probe_steps=100)


def t_interval(values: list[float]) -> dict:
    """Mean and 95% t-interval half-width of ``values`` (half-width None for one value)."""
    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return dict(mean=mean, half=None, n=n)
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    t = T975[n - 2] if n - 1 <= len(T975) else 1.96
    return dict(mean=mean, half=t * sd / math.sqrt(n), n=n)


# ---------------------------------------------------------------- data
def stage2_data(folder: Path, size: StudySize, seed: int) -> tuple[str, str]:
    """Stage-2 data of one seed: the built-in instructions plus ``vqa_per_task`` questions of
    each ShapesBench task in its own wording, answered by the option's text (LLaVA-665k's
    stand-in for VQAv2 / GQA's counting and spatial rows), on "bench"-split scenes of user seed
    VQA_SEED + seed, never the evaluation's seed 0. Cached: written once per folder."""
    path = folder / "study.json"
    if path.exists():
        return str(path), str(folder)
    records = json.loads(write_llava_folder(folder, "instruct", size.synthetic_size, seed=seed).read_text())
    for task in TASKS:
        for i in range(size.vqa_per_task):
            item = bench_item(task, i, VQA_SEED + seed)
            rel = f"images/vqa-{task.lower()}-{i:05d}.png"
            item["image"].save(folder / rel, compress_level=1)
            records.append({"id": f"study-vqa-{task.lower()}-{i:05d}", "image": rel, "conversations": [
                {"from": "human", "value": "<image>\n" + item["prompt"]},
                {"from": "gpt", "value": item["choices"][item["answer_index"]]}]})
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(records))
    tmp.replace(path)
    return str(path), str(folder)


# ---------------------------------------------------------------- one run
def run_one(method: str, seed: int, size: StudySize, out: Path, random_init: bool = False) -> dict:
    """Stage 1, stage 2, ShapesBench and probes of (method, seed) in ``out/<method>-seed<seed>``;
    returns (and writes last, as the done-marker) its results. Skipped if already done."""
    import eval as eval_script  # the repository's entry points, called in-process
    import train

    run = out / f"{method}-seed{seed}"
    done = run / DONE
    if done.exists():
        try:
            result = read_json(done, "run result")
            if isinstance(result, dict) and {"method", "seed", "all"} <= result.keys():
                return result
            print(f"warning: {done}: not a run result; running {method} seed {seed} again", file=sys.stderr)
        except InputError as e:
            print(f"warning: {e}; running {method} seed {seed} again", file=sys.stderr)
    if run.exists():
        shutil.rmtree(run)  # an unfinished run starts again from scratch
    common = ["--seed", str(seed), "--batch-size", str(size.batch_size)]
    common += ["--random-init"] * random_init
    stage1 = ["--stage", "align", "--method", method, "--synthetic-size", str(size.synthetic_size),
              "--max-steps", str(size.align_steps), "--output-dir", str(run / "align"), *common]
    if train.main(stage1) != 0:
        raise RuntimeError(f"stage 1 of {method} seed {seed} failed")
    data, folder = stage2_data(out / "data" / f"stage2-seed{seed}", size, seed)
    stage2 = ["--stage", "finetune", "--init", str(run / "align"), "--data", data, "--image-folder", folder,
              "--max-steps", str(size.finetune_steps), "--output-dir", str(run / "finetune"), "--seed", str(seed),
              "--batch-size", str(size.batch_size)]
    if train.main(stage2) != 0:
        raise RuntimeError(f"stage 2 of {method} seed {seed} failed")
    bench = eval_script.main(["--checkpoint", str(run / "finetune"), "--bench", "shapes",
                              "--n-per-task", str(size.n_per_task), "--output-dir", str(run / "eval")])
    summary = bench["checkpoints"][0]["summary"]
    result = dict(method=method, seed=seed, size=asdict(size), random_init=random_init,
                  per_task={t: m["accuracy"] for t, m in summary["per_task"].items()},
                  chance={t: m["chance"] for t, m in summary["per_task"].items()},
                  all=summary["all"]["accuracy"], n=summary["all"]["n"], probe=run_probe(run, size, seed))
    tmp = done.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=1))
    tmp.replace(done)
    return result


def run_probe(run: Path, size: StudySize, seed: int):
    """probe.py's per-layer scores on the stage-1 checkpoint against the tiny expert, when a
    ``probe`` module exists (None otherwise; the error text if it fails: the study goes on)."""
    if importlib.util.find_spec("probe") is None:
        return None
    try:
        import probe
        out = probe.main(["--checkpoint", str(run / "align"), "--target", "tiny-dinov2",
                          "--limit", str(size.probe_images), "--steps", str(size.probe_steps),
                          "--seed", str(seed), "--bootstrap", "100", "--output-dir", str(run / "probe")])
        return [dict(layer=r["layer"], target=r["target"], metric=r["metric"], mean=r["mean"])
                for r in out["checkpoints"][0]["rows"]]
    except Exception as e:  # noqa: BLE001  another branch's tool: report, do not lose the study
        return f"probe.py failed: {type(e).__name__}: {e}"


# ---------------------------------------------------------------- statistics and report
COLUMNS = TASKS + ("all",)


def _accuracy(result: dict, task: str) -> float:
    return result["all"] if task == "all" else result["per_task"][task]


def aggregate(results: list[dict], methods: list[str]) -> dict:
    """Per method and task: mean +- t-interval over seeds (and the seeds' values); per method
    other than llava: the paired difference to llava, seed by seed."""
    by = {m: sorted((r for r in results if r["method"] == m), key=lambda r: r["seed"]) for m in methods}
    table = {m: {t: dict(t_interval([_accuracy(r, t) for r in rs]), values=[_accuracy(r, t) for r in rs])
                 for t in COLUMNS} for m, rs in by.items()}
    paired = {}
    if "llava" in by:
        base = {r["seed"]: r for r in by["llava"]}
        for m in methods:
            if m == "llava":
                continue
            pairs = [(r, base[r["seed"]]) for r in by[m] if r["seed"] in base]
            paired[m] = {t: t_interval([_accuracy(a, t) - _accuracy(b, t) for a, b in pairs]) for t in COLUMNS}
    chance = dict(results[0]["chance"])
    chance["all"] = sum(chance[t] for t in TASKS) / len(TASKS)  # equal items per task
    return dict(table=table, paired=paired, chance=chance)


def _fmt(s: dict, pct: bool = True) -> str:
    k = 100 if pct else 1
    half = "" if s["half"] is None else f" ± {k * s['half']:.1f}"
    return f"{k * s['mean']:.1f}{half}"


def markdown_table(stats: dict) -> str:
    """Accuracy (%) per method and task, mean ± 95% interval over seeds; then the paired
    differences to llava (percentage points)."""
    head = "| method | " + " | ".join(COLUMNS) + " |\n|---|" + "---|" * len(COLUMNS) + "\n"
    rows = [f"| chance | " + " | ".join(f"{100 * stats['chance'][t]:.1f}" for t in COLUMNS) + " |"]
    rows += [f"| {m} | " + " | ".join(_fmt(s[t]) for t in COLUMNS) + " |" for m, s in stats["table"].items()]
    rows += [f"| {m} − llava | " + " | ".join(_fmt(s[t]) for t in COLUMNS) + " |" for m, s in stats["paired"].items()]
    return head + "\n".join(rows) + "\n"


def verdicts(stats: dict) -> list[str]:
    """One line per (method, task): the paired difference and whether its interval excludes 0."""
    lines = []
    for m, per in stats["paired"].items():
        for t, s in per.items():
            if s["half"] is None:
                word = "one seed: no interval"
            elif s["mean"] - s["half"] > 0:
                word = "better than llava"
            elif s["mean"] + s["half"] < 0:
                word = "worse than llava"
            else:
                word = "no difference shown"
            lines.append(f"{m} - llava, {t}: {_fmt(s)} points ({word})")
    return lines


def plot(stats: dict, path: Path, title: str) -> None:
    """Grouped bars (one group per task, one bar per method) with 95% intervals, each seed as a
    dot, chance as a dashed line."""
    from matplotlib.figure import Figure  # no pyplot: the process's backend stays untouched

    methods = list(stats["table"])
    width = 0.8 / len(methods)
    fig = Figure(figsize=(7.5, 3.4), dpi=100)
    ax = fig.subplots()
    for k, m in enumerate(methods):
        xs = [x - 0.4 + width * (k + 0.5) for x in range(len(COLUMNS))]
        s = [stats["table"][m][t] for t in COLUMNS]
        err = [0 if v["half"] is None else v["half"] for v in s]
        bars = ax.bar(xs, [v["mean"] for v in s], width, yerr=err, capsize=3, label=m)
        for x, v in zip(xs, s):
            ax.plot([x] * len(v["values"]), v["values"], ".", color="black", markersize=3)
        del bars
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
    """study.json (every number), study.csv (method, task, mean, half-width, n, seeds' values),
    study.md (the table) and study.png under ``out``."""
    paths = {k: out / f"study.{k}" for k in ("json", "csv", "md", "png")}
    paths["json"].write_text(json.dumps(dict(settings=settings, stats=stats, runs=results), indent=1))
    with open(paths["csv"], "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["row", "task", "mean", "ci95_half", "n_seeds", "values"])
        for m, per in stats["table"].items():
            w.writerows([m, t, s["mean"], s["half"], s["n"], " ".join(map(str, s["values"]))] for t, s in per.items())
        for m, per in stats["paired"].items():
            w.writerows([f"{m} - llava", t, s["mean"], s["half"], s["n"], ""] for t, s in per.items())
    paths["md"].write_text(markdown_table(stats))
    seeds = max(s["all"]["n"] for s in stats["table"].values())
    plot(stats, paths["png"], f"ShapesBench after stage 1 + 2, mean ± 95% CI over {seeds} seeds")
    return paths
