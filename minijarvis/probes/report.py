"""probe.py's outputs: probe.json (every number and the settings), probe.csv (one row per score)
and probe.png (score vs layer: one panel per target and metric, one line per checkpoint, the
95% bootstrap intervals as bands, each method's own layers marked, the mean-predictor baseline
dashed)."""
from __future__ import annotations

import csv
import json
from pathlib import Path

CSV_COLUMNS = ("checkpoint", "target", "layer", "probe", "metric", "mean", "lo", "hi")
METRIC_NAMES = {"flat": "cosine of flattened features (paper)", "token": "mean per-token cosine",
                "centred": "flat cosine, probe-train mean removed"}


def csv_rows(runs: list[dict], probe: str):
    """Every score as a CSV row; the mean-predictor baseline as probe "baseline", layer "all"."""
    for run in runs:
        for r in run["rows"]:
            yield [run["label"], r["target"], r["layer"], probe, r["metric"], r["mean"], r["lo"], r["hi"]]
        for target, metrics in run["baseline"].items():
            for metric, b in metrics.items():
                yield [run["label"], target, "all", "baseline", metric, b["mean"], b["lo"], b["hi"]]


def write_outputs(out_dir: Path, runs: list[dict], settings: dict) -> dict[str, Path]:
    """probe.json, probe.csv, probe.png under ``out_dir``; returns their paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {ext: out_dir / f"probe{ext}" for ext in (".json", ".csv", ".png")}
    paths[".json"].write_text(json.dumps(dict(settings=settings, checkpoints=runs), indent=1))
    with open(paths[".csv"], "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(CSV_COLUMNS)
        w.writerows(csv_rows(runs, settings["probe"]))
    plot(runs, settings, paths[".png"])
    return paths


def plot(runs: list[dict], settings: dict, path: Path) -> None:
    """Rows: the metrics; columns: the targets. x = layer (0 = input embeddings)."""
    from matplotlib.figure import Figure  # no pyplot: the process's backend stays untouched
    from matplotlib.lines import Line2D
    from matplotlib.ticker import MaxNLocator

    targets = list(dict.fromkeys(r["target"] for run in runs for r in run["rows"]))
    metrics = list(METRIC_NAMES)
    fig = Figure(figsize=(max(7.0, 1.5 + 4.2 * len(targets)), 1.2 + 2.7 * len(metrics)), dpi=80)
    axes = fig.subplots(len(metrics), len(targets), squeeze=False)
    colors = [f"C{k % 10}" for k in range(len(runs))]
    for i, metric in enumerate(metrics):
        for j, target in enumerate(targets):
            ax = axes[i][j]
            for run, color in zip(runs, colors):
                rows = sorted((r for r in run["rows"] if r["target"] == target and r["metric"] == metric),
                              key=lambda r: r["layer"])
                xs = [r["layer"] for r in rows]
                ax.plot(xs, [r["mean"] for r in rows], "o-", color=color, ms=3, label=run["label"])
                ax.fill_between(xs, [r["lo"] for r in rows], [r["hi"] for r in rows], color=color, alpha=0.2)
                for k, layer in enumerate(run["method_layers"]):
                    ax.axvline(layer, color=color, ls=":", lw=1.5,
                               label=f"{run['label']}: {run['method']} layer" if k == 0 else None)
                base = run["baseline"].get(target, {}).get(metric)
                if base is not None:
                    ax.axhline(base["mean"], color=color, ls="--", lw=0.8, alpha=0.7)
            ax.set_title(f"{target}: {METRIC_NAMES[metric]}", fontsize=9)
            ax.set_xlabel("LLM layer (0 = input embeddings)")
            ax.set_ylabel("cosine")
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.grid(alpha=0.3)
    handles, labels = axes[0][0].get_legend_handles_labels()
    handles.append(Line2D([], [], color="grey", ls="--", lw=0.8))
    labels.append("mean-predictor baseline")
    fig.legend(handles, labels, loc="lower center", ncol=min(3, len(labels)), fontsize=8)
    n_tr, n_te = settings["n_train"], settings["n_test"]
    fig.suptitle(f"{settings['probe']} probes, {settings['steps']} steps, {n_tr} train / {n_te} test images "
                 f"({settings['images']}); bands: 95% bootstrap", fontsize=9)
    fig.tight_layout(rect=(0, 0.05 + 0.035 * ((len(labels) - 1) // 3), 1, 0.96))
    fig.savefig(path)
