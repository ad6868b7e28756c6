"""Evaluate minijarvis checkpoints on vision-centric multiple-choice benchmarks.

Offline, on the built-in ShapesBench (CV-Bench's four tasks on synthetic scenes):

    python eval.py --checkpoint runs/tiny-jarvis-align --bench shapes
    python eval.py --checkpoint runs/tiny-llava-align runs/tiny-jarvis-align --bench shapes --limit 40

Real benchmarks from local copies (folder layouts at the end of --help):

    python eval.py --checkpoint runs/X --bench cvbench --bench-dir data/CV-Bench --answer-mode generate
    python eval.py --checkpoint runs/X --bench mmvp --bench-dir data/MMVP

Every checkpoint answers the same items. Written to --output-dir: <bench>.json (every number),
<bench>.csv (one row per checkpoint and metric), <bench>_predictions.jsonl (one row per item and
checkpoint) and <bench>.png (grouped bars, chance level marked).

Answer modes. "likelihood" (default): the option with the highest mean log-probability per token
after the prompt wins (model.score_options); --score-target picks what is scored: "text", the
option's text ("left"; default, since train.py's built-in data never teaches option letters),
"option" ("(A) left") or "letter" ("A"; what study.py scores, since its stage 2 answers by letter). "generate": greedy decoding, then the option letter is
read from the reply as the official toolkits do (benchmarks.extract_letter); a reply naming no
option counts as wrong and as unparseable. Open-ended RealWorldQA questions are always generated.
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import sys
import time
from pathlib import Path

import torch
from tqdm import tqdm

from minijarvis.evaluation import benchmarks as B
from minijarvis.data.images import blank_image, image_to_float, load_image
from minijarvis.errors import BadRecord
from minijarvis.errors import (ArgumentParser, InputError, add_debug_flag, device, nonnegative_int,
                               positive_int, run_main)
from minijarvis.training.runtime import set_cpu_threads
from minijarvis.evaluation.inference import generate, score_options
from minijarvis.training.checkpoint import load_checkpoint
from minijarvis.training.lock import output_lock

LOADERS = {"cvbench": B.load_cvbench, "mmvp": B.load_mmvp, "blink": B.load_blink,
           "realworldqa": B.load_realworldqa}
TITLES = {"shapes": "ShapesBench", "cvbench": "CV-Bench", "mmvp": "MMVP", "blink": "BLINK",
          "realworldqa": "RealWorldQA"}
TARGET_NAMES = {"text": "option text", "option": "'(X) text' string", "letter": "option letter"}


def parse_args(argv=None) -> argparse.Namespace:
    layouts = B.__doc__.split("Expected layouts:")[1].split("Scores (")[0]
    p = ArgumentParser(prog="eval.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                       epilog="benchmark folder layouts (--bench-dir):" + layouts)
    add = p.add_argument
    add("--checkpoint", nargs="+", required=True, metavar="DIR", help="checkpoint folders (train.py outputs)")
    add("--bench", choices=B.BENCHES, default="shapes", help="benchmark (default: shapes, generated offline)")
    add("--bench-dir", default="", metavar="DIR", help="folder of a local benchmark copy (all but shapes)")
    add("--n-per-task", type=positive_int, default=50, metavar="N", help="ShapesBench items per task (default 50)")
    add("--seed", type=nonnegative_int, default=0, help="ShapesBench seed (default 0)")
    add("--limit", type=positive_int, default=None, metavar="N", help="at most N items, spread over tasks (quick runs)")
    add("--answer-mode", choices=("likelihood", "generate"), default="likelihood",
        help="score each option (default; reliable for small models) or generate and read the letter")
    add("--score-target", choices=B.SCORE_TARGETS, default="text",
        help="likelihood mode: score the option text (default), '(A) text', or the letter alone")
    add("--max-new-tokens", type=positive_int, default=16, metavar="N", help="generation length (default 16)")
    add("--batch-size", type=positive_int, default=16, metavar="N", help="images decoded at a time (lower: less memory)")
    add("--blank-images", action="store_true", help="answer with every image replaced by a blank one (the "
        "encoder's mean colour): what the text alone gives (study.py's llava-blank bound)")
    add("--skip-missing", action="store_true", help="skip and count rows whose image is missing or unreadable "
        "(default: stop and name the row)")
    add("--output-dir", default="runs/eval", metavar="DIR", help="where results go (default runs/eval)")
    add("--device", type=device, default="cuda" if torch.cuda.is_available() else "cpu",
        help="default: cuda if available")
    add_debug_flag(p)
    args = p.parse_args(argv)
    if args.bench != "shapes" and not args.bench_dir:
        p.error(f"--bench {args.bench} reads a local copy: pass --bench-dir (layouts: see --help)")
    if args.bench == "shapes" and args.bench_dir:
        p.error("--bench shapes is generated in memory: it takes no --bench-dir")
    return args


def check_inputs(args) -> None:
    """Every folder the flags name, checked before any model loads: one InputError each."""
    from minijarvis.training.checkpoint import check_checkpoint_dir

    for ckpt in args.checkpoint:
        check_checkpoint_dir(ckpt)
    if args.bench_dir and not Path(args.bench_dir).is_dir():
        raise InputError(f"{args.bench_dir}: no such folder (--bench-dir)")
    if Path(args.output_dir).exists() and not Path(args.output_dir).is_dir():
        raise InputError(f"{args.output_dir}: a file, not a folder (--output-dir)")


def method_name(args) -> str:
    """How answers were obtained, in words: printed, and written next to every number."""
    blank = ", every image blank" if args.blank_images else ""
    if args.answer_mode == "likelihood":
        return f"likelihood of the {TARGET_NAMES[args.score_target]} (mean log-prob per token){blank}"
    return f"generate (greedy, <= {args.max_new_tokens} tokens, letter extraction){blank}"


def shapes_per_task(args) -> int:
    """ShapesBench items per task to render: no more scenes than --limit needs."""
    return args.n_per_task if args.limit is None else min(args.n_per_task, math.ceil(args.limit / 4))


def load_items(args) -> tuple[list[B.Item], list]:
    """The benchmark's items (at most --limit, spread over tasks) and the rows skipped on loading."""
    if args.bench == "shapes":
        items, skipped = B.load_shapes(shapes_per_task(args), args.seed)
    else:
        items, skipped = LOADERS[args.bench](args.bench_dir, skip_missing=args.skip_missing)
    return B.take(items, args.limit), skipped


def answer(model, images: torch.Tensor, items: list[B.Item], args) -> list[dict]:
    """Answer one batch: multiple choice by --answer-mode, open-ended items by generation.
    Per item: reply (generated text, or the winning option string), prediction, correct, method."""
    out = [None] * len(items)
    scored = [i for i, it in enumerate(items) if it.choices and args.answer_mode == "likelihood"]
    generated = [i for i in range(len(items)) if i not in scored]
    if scored:
        options = [B.option_strings(items[i], args.score_target) for i in scored]
        scores = score_options(model, images[scored], [items[i].prompt for i in scored], options, normalize=True)
        for i, opts, s in zip(scored, options, scores):
            k = int(s.argmax())
            out[i] = dict(reply=opts[k], prediction=B.LETTERS[k], correct=B.LETTERS[k] == items[i].answer,
                          method="likelihood", scores=[round(float(v), 4) for v in s])
    if generated:
        replies = generate(model, images[generated], [items[i].prompt for i in generated], args.max_new_tokens)
        for i, reply in zip(generated, replies):
            prediction, correct = B.judge(items[i], reply)
            out[i] = dict(reply=reply, prediction=prediction, correct=correct, method="generate")
    return out


def evaluate(model, items: list[B.Item], args, label: str) -> tuple[list[dict], list]:
    """One record per answered item, and (id, reason) for items whose image could not be read.
    ``items``: :func:`load_items` of the same ``args`` (ShapesBench's images are then read, by
    item id, from ``B.shapes_pixels`` of --n-per-task / --limit and --seed)."""
    records, skipped = [], []
    size, mean, aspect = model.image_size, model.image_mean, model.image_aspect
    fitted = (B.shapes_pixels(shapes_per_task(args), args.seed, size, tuple(mean), aspect)
              if args.bench == "shapes" else {})  # decoded and fitted once per process
    bar = tqdm(total=len(items), desc=label, unit="q")
    for start in range(0, len(items), args.batch_size):
        batch, images = [], []
        for it in items[start:start + args.batch_size]:
            try:
                image = (image_to_float(fitted[it.id]) if it.id in fitted  # same skips when blank
                         else load_image(it.image, size, mean, aspect, record_id=it.id))
                images.append(blank_image(size, mean) if args.blank_images else image)
                batch.append(it)
            except BadRecord as e:
                if not args.skip_missing:
                    raise
                skipped.append((it.id, e.reason))
        if batch:
            for it, res in zip(batch, answer(model, torch.stack(images), batch, args)):
                records.append(dict(id=it.id, task=it.task, source=it.source, type=it.type, pair=it.pair,
                                    chance=it.chance, answer=it.answer, parsed=res["prediction"] is not None,
                                    **res))
        bar.update(len(items[start:start + args.batch_size]))
    bar.close()
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


def print_table(title: str, method: str, runs: list[dict]) -> None:
    fmt = lambda x: "-" if x is None else f"{x:.3f}"  # noqa: E731
    first = table_rows(runs[0]["summary"])
    width = max(len(name) for name in first) + 2
    cols = [max(8, len(r["label"]) + 2) for r in runs]
    print(f"\n{title} | answer mode: {method} | {runs[0]['summary']['all']['n']} questions")
    header = "".join(r["label"].rjust(c) for r, c in zip(runs, cols))
    print(" " * width + header + "n".rjust(7) + "chance".rjust(9))
    for name, ref in first.items():
        cells = [table_rows(r["summary"]).get(name, {}).get("accuracy") for r in runs]
        print(name.ljust(width) + "".join(fmt(x).rjust(c) for x, c in zip(cells, cols))
              + str(ref["n"]).rjust(7) + fmt(ref["chance"]).rjust(9))
    for name, counts in (("unparseable", [r["summary"]["unparseable"] for r in runs]),
                         ("skipped images", [len(r["skipped"]) for r in runs])):
        print(name.ljust(width) + "".join(str(n).rjust(c) for n, c in zip(counts, cols)))


def plot_bars(runs: list[dict], title: str, path: Path) -> None:
    """Grouped bars: one group per task plus the headline number, one bar per checkpoint; chance
    is the dashed black line across each group."""
    from matplotlib.figure import Figure  # no pyplot: the process's backend stays untouched

    def groups(summary):
        return {**summary["per_task"], summary["headline"]["name"].split(" (")[0]: summary["headline"]}

    names, width = list(groups(runs[0]["summary"])), 0.8 / len(runs)
    fig = Figure(figsize=(2 + len(names) * (0.5 + 0.35 * len(runs)), 3.8), dpi=110)
    ax = fig.subplots()
    for k, run in enumerate(runs):
        found = groups(run["summary"])
        ys = [(found.get(g, {}).get("accuracy") or 0.0) for g in names]
        ax.bar([x - 0.4 + width * (k + 0.5) for x in range(len(names))], ys, width, label=run["label"])
    for x, g in enumerate(groups(runs[0]["summary"]).values()):
        if g["chance"] is not None:
            ax.hlines(g["chance"], x - 0.45, x + 0.45, colors="black", linestyles="--", linewidth=1.2,
                      label="chance" if x == 0 else None)
    ax.set_xticks(range(len(names)), names, rotation=25 if len(names) > 6 else 0,
                  ha="right" if len(names) > 6 else "center")
    ax.set(ylim=(0, 1), ylabel="accuracy", title=title)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))  # outside: never hides a bar
    fig.tight_layout()
    fig.savefig(path)


def write_outputs(out_dir: Path, args, runs: list[dict], load_skipped: list, n_items: int) -> dict:
    """<bench>.json, .csv, .png and _predictions.jsonl under out_dir; returns their paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {ext: out_dir / f"{args.bench}{ext}" for ext in (".json", ".csv", ".png")}
    paths["predictions"] = out_dir / f"{args.bench}_predictions.jsonl"
    method = method_name(args)
    result = dict(bench=args.bench, bench_dir=args.bench_dir, answer_mode=args.answer_mode, method=method,
                  score_target=args.score_target if args.answer_mode == "likelihood" else None,
                  n_items=n_items, limit=args.limit, blank_images=args.blank_images,
                  skipped_rows=[list(s) for s in load_skipped],
                  checkpoints=[dict(label=r["label"], path=r["path"], seconds=r["seconds"],
                                    skipped_images=r["skipped"], summary=r["summary"]) for r in runs])
    paths[".json"].write_text(json.dumps(result, indent=1))
    with open(paths[".csv"], "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["checkpoint", "bench", "answer_mode", "method", "metric", "accuracy", "n", "chance"])
        for r in runs:
            head = [r["label"], args.bench, args.answer_mode, method]
            w.writerows(head + [name, m["accuracy"], m["n"], m["chance"]]
                        for name, m in table_rows(r["summary"]).items())
            w.writerow(head + ["unparseable answers", "", r["summary"]["unparseable"], ""])
    with open(paths["predictions"], "w") as f:
        for r in runs:
            f.writelines(json.dumps({"checkpoint": r["label"], **rec}) + "\n" for rec in r["records"])
    plot_bars(runs, f"{TITLES[args.bench]}: {method}", paths[".png"])
    return paths


def _labels(dirs: list[str]) -> list[str]:
    """Checkpoint folder names; repeated names get #k so bars and columns stay apart."""
    names = [Path(d).resolve().name for d in dirs]
    return [n if names.count(n) == 1 else f"{n}#{k}" for k, n in enumerate(names)]


def main(argv=None) -> dict:
    """Run the CLI; returns the JSON result (also written to --output-dir)."""
    args = parse_args(argv)
    check_inputs(args)
    with output_lock(Path(args.output_dir)):  # one writer per output folder (minijarvis/training/lock.py)
        # A missing image without --skip-missing raises BadRecord, an InputError: one line (run_main).
        items, skipped = load_items(args)
        if not items:
            raise InputError(f"{args.bench_dir or args.bench}: no usable items ({len(skipped)} rows skipped"
                             + (f", e.g. {skipped[0][0]!r}: {skipped[0][1]})" if skipped else ")"))
        runs = []
        for ckpt, label in zip(args.checkpoint, _labels(args.checkpoint)):
            t0 = time.time()
            model = load_checkpoint(ckpt).to(args.device).eval()
            if isinstance(model, torch.nn.Module):  # (tests pass stand-ins)
                set_cpu_threads(model, torch.device(args.device))
            records, bad_images = evaluate(model, items, args, label)
            runs.append(dict(label=label, path=str(ckpt), records=records, seconds=round(time.time() - t0, 2),
                             summary=B.summarize(args.bench, records), skipped=[list(s) for s in bad_images]))
            del model  # one model in memory at a time
        if skipped:
            print(f"skipped {len(skipped)} rows while loading, e.g. {skipped[0][0]!r}: {skipped[0][1]}")
        print_table(TITLES[args.bench], method_name(args), runs)
        paths = write_outputs(Path(args.output_dir), args, runs, skipped, len(items))
        print("\nwrote " + ", ".join(str(p) for p in paths.values()))
        return json.loads(paths[".json"].read_text())


if __name__ == "__main__":
    sys.exit(run_main(main, prog="eval.py"))
