"""Evaluate minijarvis checkpoints on vision-centric multiple-choice benchmarks.

Offline, on the built-in ShapesBench (CV-Bench's four tasks on synthetic scenes):

    python eval.py --checkpoint runs/tiny-jarvis-align --bench shapes
    python eval.py --checkpoint runs/tiny-llava-align runs/tiny-jarvis-align --bench shapes --limit 40

Real benchmarks from local copies (folder layouts below):

    python eval.py --checkpoint runs/X --bench cvbench --bench-dir data/CV-Bench --answer-mode generate
    python eval.py --checkpoint runs/X --bench mmvp --bench-dir data/MMVP

Every checkpoint answers the same items. Written to --output-dir: <bench>.json (every number, per
checkpoint), <bench>.csv (one row per checkpoint and metric), <bench>_predictions.jsonl (one row
per item and checkpoint) and <bench>.png (grouped bars, chance level marked).

Answer modes. "likelihood" (default): the option with the highest mean log-probability per token
after the prompt wins (model.score_options); --score-target says what is scored: "text" (the
option's text, "left"; default, because minijarvis's own training never teaches option letters),
"option" ("(A) left") or "letter" ("A"). "generate": greedy decoding, then the option letter is
read from the reply as the official toolkits do (benchmarks.extract_letter); a reply naming no
option counts as wrong and is reported as unparseable. Open-ended RealWorldQA questions are
always answered by generation.
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import time
from pathlib import Path

import torch
from tqdm import tqdm

from minijarvis import benchmarks as B
from minijarvis.data import BadRecord, load_image

LOADERS = {"cvbench": B.load_cvbench, "mmvp": B.load_mmvp, "blink": B.load_blink, "realworldqa": B.load_realworldqa}
TITLES = {"shapes": "ShapesBench", "cvbench": "CV-Bench", "mmvp": "MMVP", "blink": "BLINK", "realworldqa": "RealWorldQA"}


def parse_args(argv=None) -> argparse.Namespace:
    layouts = B.__doc__.split("Expected layouts:")[1].split("Scores (")[0]
    p = argparse.ArgumentParser(description="Evaluate minijarvis checkpoints (accuracy per task, chance level).",
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="benchmark folder layouts (--bench-dir):" + layouts)
    p.add_argument("--checkpoint", nargs="+", required=True, metavar="DIR", help="one or more checkpoint directories (train.py outputs)")
    p.add_argument("--bench", choices=B.BENCHES, default="shapes", help="benchmark (default: shapes, generated offline)")
    p.add_argument("--bench-dir", default="", help="folder of a local benchmark copy (all but shapes)")
    p.add_argument("--n-per-task", type=int, default=50, help="ShapesBench items per task (default 50)")
    p.add_argument("--seed", type=int, default=0, help="ShapesBench seed (default 0)")
    p.add_argument("--limit", type=int, default=None, help="evaluate at most N items, spread over the tasks (quick runs)")
    p.add_argument("--answer-mode", choices=("likelihood", "generate"), default="likelihood",
                   help="likelihood of each option (default; reliable for small models) or greedy generation")
    p.add_argument("--score-target", choices=B.SCORE_TARGETS, default="text",
                   help="likelihood mode: score the option text (default), '(A) text', or the letter")
    p.add_argument("--max-new-tokens", type=int, default=16, help="generation length limit (default 16)")
    p.add_argument("--batch-size", type=int, default=16, help="images decoded at a time (default 16)")
    p.add_argument("--skip-missing", action="store_true", help="skip and count rows whose image is missing/unreadable instead of stopping")
    p.add_argument("--output-dir", default="runs/eval", help="where results go (default runs/eval)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="torch device (default: cuda if available)")
    args = p.parse_args(argv)
    if args.bench != "shapes" and not args.bench_dir:
        p.error(f"--bench {args.bench} reads a local copy: pass --bench-dir (layouts below, see --help)")
    for name in ("n_per_task", "limit", "max_new_tokens", "batch_size"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    return args


def method_name(args) -> str:
    if args.answer_mode == "likelihood":
        what = {"text": "option text", "option": "'(X) text' string", "letter": "option letter"}[args.score_target]
        return f"likelihood of the {what} (mean log-prob per token)"
    return f"generate (greedy, <= {args.max_new_tokens} tokens, letter extraction)"


def load_items(args) -> tuple[list[B.Item], list]:
    """The benchmark's items (at most --limit, spread over tasks) and its skipped rows."""
    if args.bench == "shapes":
        n = args.n_per_task if args.limit is None else min(args.n_per_task, math.ceil(args.limit / 4))
        items, skipped = B.load_shapes(n, args.seed)
    else:
        items, skipped = LOADERS[args.bench](args.bench_dir, skip_missing=args.skip_missing)
    return B.take(items, args.limit), skipped


def answer(model, images, items: list[B.Item], args) -> list[dict]:
    """Answer one batch. Multiple choice by likelihood or generation (--answer-mode); open-ended
    items by generation. Returns per item: reply (text or scored option), prediction, correct, method."""
    out = [None] * len(items)
    by_likelihood = [i for i, it in enumerate(items) if it.choices and args.answer_mode == "likelihood"]
    by_generation = [i for i in range(len(items)) if i not in by_likelihood]
    if by_likelihood:
        opts = [B.option_strings(items[i], args.score_target) for i in by_likelihood]
        scores = model.score_options(images[by_likelihood], [items[i].prompt for i in by_likelihood], opts, normalize=True)
        for i, o, s in zip(by_likelihood, opts, scores):
            k = int(s.argmax())
            out[i] = dict(reply=o[k], prediction=B.LETTERS[k], correct=B.LETTERS[k] == items[i].answer,
                          method="likelihood", scores=[round(float(v), 4) for v in s])
    if by_generation:
        replies = model.generate(images[by_generation], [items[i].prompt for i in by_generation], args.max_new_tokens)
        for i, reply in zip(by_generation, replies):
            pred, ok = B.judge(items[i], reply)
            out[i] = dict(reply=reply, prediction=pred, correct=ok, method="generate")
    return out


def evaluate(model, items: list[B.Item], args, label: str) -> tuple[list[dict], list]:
    """Records (one per answered item) and the items skipped for an unreadable image."""
    records, skipped = [], []
    size, mean, aspect = model.image_size, model.image_mean, model.cfg.image_aspect
    with tqdm(total=len(items), desc=label, unit="q") as bar:
        for start in range(0, len(items), args.batch_size):
            batch, images = [], []
            for it in items[start:start + args.batch_size]:
                try:
                    images.append(load_image(it.image, size, mean, aspect, record_id=it.id))
                    batch.append(it)
                except BadRecord as e:
                    if not args.skip_missing:
                        raise
                    skipped.append((it.id, e.reason))
            if batch:
                for it, res in zip(batch, answer(model, torch.stack(images), batch, args)):
                    records.append(dict(id=it.id, task=it.task, source=it.source, type=it.type, pair=it.pair,
                                        chance=it.chance, answer=it.answer, parsed=res["prediction"] is not None, **res))
            bar.update(len(items[start:start + args.batch_size]))
    return records, skipped


def table_rows(summary: dict) -> dict[str, dict]:
    """Label -> metric (accuracy, n, chance), in the order the table and the CSV show them."""
    rows = {f"task {k}": v for k, v in summary["per_task"].items()}
    rows.update({f"source {k}": v for k, v in summary.get("per_source", {}).items()})
    rows.update({f"CV-Bench {k}": v for k, v in summary.get("combined", {}).items()})
    if "pairs" in summary:
        rows["MMVP pairs"] = summary["pairs"]
    if "subtask_mean" in summary:
        rows["mean over sub-tasks"] = summary["subtask_mean"]
    rows["all questions"] = summary["all"]
    return rows


def _fmt(x) -> str:
    return "  -  " if x is None else f"{x:.3f}"


def print_table(title: str, method: str, runs: list[dict]) -> None:
    labels = list(table_rows(runs[0]["summary"]))
    width = max(len(l) for l in labels + ["unparseable answers"]) + 2
    print(f"\n{title} | answer mode: {method} | {runs[0]['summary']['all']['n']} questions")
    print("".ljust(width) + "".join(r["label"][:12].rjust(14) for r in runs) + "n".rjust(7) + "chance".rjust(9))
    for name in labels:
        cells = [table_rows(r["summary"]).get(name, {}).get("accuracy") for r in runs]
        ref = table_rows(runs[0]["summary"])[name]
        print(name.ljust(width) + "".join(_fmt(c).rjust(14) for c in cells) + str(ref["n"]).rjust(7) + _fmt(ref["chance"]).rjust(9))
    for key, name in (("unparseable", "unparseable answers"), ("skipped", "skipped rows/images")):
        vals = [r["summary"]["unparseable"] if key == "unparseable" else len(r["skipped"]) for r in runs]
        print(name.ljust(width) + "".join(str(v).rjust(14) for v in vals))


def plot_bars(runs: list[dict], title: str, path: Path) -> None:
    """Grouped bars: one group per task (+ the headline number), one bar per checkpoint; chance
    is the dashed black line over each group."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = {**runs[0]["summary"]["per_task"], "headline": runs[0]["summary"]["headline"]}
    width = 0.8 / len(runs)
    fig, ax = plt.subplots(figsize=(1.6 + 1.3 * len(groups) * max(1, len(runs) / 2), 3.8), dpi=110)
    for k, run in enumerate(runs):
        found = {**run["summary"]["per_task"], "headline": run["summary"]["headline"]}
        ys = [found.get(g, {}).get("accuracy") or 0.0 for g in groups]
        ax.bar([x - 0.4 + width * (k + 0.5) for x in range(len(groups))], ys, width, label=run["label"])
    for x, g in enumerate(groups.values()):
        if g["chance"] is not None:
            ax.hlines(g["chance"], x - 0.45, x + 0.45, colors="black", linestyles="--", linewidth=1.2,
                      label="chance" if x == 0 else None)
    names = list(groups)[:-1] + [runs[0]["summary"]["headline"]["name"].split(" (")[0]]
    ax.set_xticks(range(len(groups)), names, rotation=20 if len(groups) > 6 else 0, ha="right" if len(groups) > 6 else "center")
    ax.set_ylim(0, 1)
    ax.set_ylabel("accuracy")
    ax.set_title(title)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, loc="upper right")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def write_outputs(out_dir: Path, args, runs: list[dict], load_skipped: list, n_items: int) -> dict[str, Path]:
    """<bench>.json, .csv, _predictions.jsonl and .png under out_dir; returns their paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {ext: out_dir / f"{args.bench}{ext}" for ext in (".json", ".csv", ".png")}
    paths["predictions"] = out_dir / f"{args.bench}_predictions.jsonl"
    method = method_name(args)
    result = dict(bench=args.bench, bench_dir=args.bench_dir, answer_mode=args.answer_mode, method=method,
                  score_target=args.score_target if args.answer_mode == "likelihood" else None,
                  n_items=n_items, limit=args.limit, skipped_rows=[list(s) for s in load_skipped],
                  checkpoints=[{k: r[k] for k in ("label", "path", "seconds", "summary")} | {"skipped_images": r["skipped"]}
                               for r in runs])
    paths[".json"].write_text(json.dumps(result, indent=1))
    with open(paths[".csv"], "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["checkpoint", "bench", "answer_mode", "method", "metric", "accuracy", "n", "chance"])
        for r in runs:
            for name, m in table_rows(r["summary"]).items():
                w.writerow([r["label"], args.bench, args.answer_mode, method, name, m["accuracy"], m["n"], m["chance"]])
            w.writerow([r["label"], args.bench, args.answer_mode, method, "unparseable answers", "", r["summary"]["unparseable"], ""])
    with open(paths["predictions"], "w") as f:
        for r in runs:
            f.writelines(json.dumps({"checkpoint": r["label"], **rec}) + "\n" for rec in r["records"])
    plot_bars(runs, f"{TITLES[args.bench]}: {method}", paths[".png"])
    return paths


def _labels(dirs: list[str]) -> list[str]:
    names = [Path(d).resolve().name for d in dirs]
    return [n if names.count(n) == 1 else f"{n}#{k}" for k, n in enumerate(names)]


def main(argv=None) -> dict:
    """Run the CLI; returns the JSON result (also written to --output-dir)."""
    from minijarvis.model import JarvisModel

    args = parse_args(argv)
    try:
        items, skipped = load_items(args)
        if not items:
            raise SystemExit(f"eval.py: no usable items in {args.bench} ({len(skipped)} rows skipped)")
        runs = []
        for ckpt, label in zip(args.checkpoint, _labels(args.checkpoint)):
            t0 = time.time()
            model = JarvisModel.from_checkpoint(ckpt).to(args.device).eval()
            records, bad_images = evaluate(model, items, args, label)
            runs.append(dict(label=label, path=str(ckpt), records=records, skipped=[list(s) for s in bad_images],
                             summary=B.summarize(args.bench, records), seconds=round(time.time() - t0, 2)))
            del model
    except BadRecord as e:
        raise SystemExit(f"eval.py: {e}") from None
    if skipped:
        print(f"skipped {len(skipped)} rows while loading, e.g. {skipped[0][0]!r}: {skipped[0][1]}")
    print_table(TITLES[args.bench], method_name(args), runs)
    paths = write_outputs(Path(args.output_dir), args, runs, skipped, len(items))
    print("\nwrote " + ", ".join(str(p) for p in paths.values()))
    return json.loads(paths[".json"].read_text())


if __name__ == "__main__":
    main()
