"""Does JARVIS help? Stage 1 + stage 2 + ShapesBench for each method and seed, with intervals.

The tiny preset's parts are the toy world's pretrained ones (a toy LLM, a caption-trained
"CLIP", a depth expert as target; ``minijarvis/toyworld``), so the papers' question has an
answer at this scale. For each method and seed: stage 1 and stage 2 on the same data (train.py,
in-process), ShapesBench per task (eval.py; chance marked), the per-layer probes when probe.py
exists; then accuracy per task and method, mean ± 95% t-interval over seeds, and the paired
difference to llava seed by seed.

    python study.py                                          # llava nomask jarvis, 3 seeds
    python study.py --methods llava jarvis --seeds 5 --output-dir runs/study5
    python study.py --quick --output-dir /tmp/study          # seconds: the CI size

Resumable: a finished (method, seed) has ``OUTPUT/<method>-seed<k>/done.json`` and is not rerun;
rerun the same command after an interruption. Writes OUTPUT/study.{json,csv,md,png}.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import torch

from minijarvis.toyworld import study as S
from minijarvis.config import METHODS
from minijarvis.errors import (InputError, UsageError, add_debug_flag, nonnegative_int, positive_int, read_json,
                               run_main)
from minijarvis.training.lock import output_lock


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="study.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add = p.add_argument
    add("--methods", nargs="+", choices=METHODS, default=["llava", "nomask", "jarvis"],
        help="rows to compare (llava is the baseline of the paired comparison)")
    add("--seeds", type=positive_int, default=3, help="seeds 0..N-1 per method (default 3)")
    add("--quick", action="store_true", help="the smallest sizes (a CI check, seconds; numbers mean nothing)")
    d = S.DEFAULT
    add("--synthetic-size", type=positive_int, default=None, help=f"captions and instructions per seed (default {d.synthetic_size})")
    add("--vqa-per-task", type=nonnegative_int, default=None, help=f"stage-2 vision-centric questions per task (default {d.vqa_per_task})")
    add("--align-steps", type=positive_int, default=None, help=f"stage-1 optimizer steps (default {d.align_steps})")
    add("--finetune-steps", type=positive_int, default=None, help=f"stage-2 optimizer steps (default {d.finetune_steps})")
    add("--batch-size", type=positive_int, default=None, help=f"per step, both stages (default {d.batch_size})")
    add("--n-per-task", type=positive_int, default=None, help=f"ShapesBench items per task (default {d.n_per_task})")
    add("--random-init", action="store_true", help="random LLM and encoders instead of the toy world's parts")
    add("--output-dir", default="runs/study", help="runs, data and the study's outputs (default runs/study)")
    add_debug_flag(p)
    return p.parse_args(argv)


def study_size(args) -> S.StudySize:
    base = S.QUICK if args.quick else S.DEFAULT
    given = {f.name: getattr(args, f.name) for f in dataclasses.fields(S.StudySize)
             if getattr(args, f.name, None) is not None}
    return dataclasses.replace(base, **given)


def main(argv=None) -> int:
    args = parse_args(argv)
    size, out = study_size(args), Path(args.output_dir)
    if size.synthetic_size < size.batch_size:
        raise UsageError(f"--synthetic-size {size.synthetic_size} must be >= --batch-size {size.batch_size}")
    methods = list(dict.fromkeys(args.methods))
    settings = dict(methods=methods, seeds=args.seeds, size=dataclasses.asdict(size), random_init=args.random_init)
    with output_lock(out):  # one study per folder (minijarvis/training/lock.py)
        saved = out / "settings.json"
        if saved.exists():
            old = read_json(saved, "study settings")
            if not (isinstance(old, dict) and {"size", "random_init"} <= old.keys()):
                raise InputError(f"{saved}: damaged study settings (no size or random_init); restore it, "
                                 "or use another --output-dir")
            if (old["size"], old["random_init"]) != (settings["size"], settings["random_init"]):
                raise UsageError(f"{out} holds runs of other sizes ({old['size']}); "
                                 "use another --output-dir or the same sizes")
        saved.write_text(json.dumps(settings, indent=1))
        torch.set_num_threads(1)  # tiny models: one thread each (see runtime.set_cpu_threads)
        start, results = time.perf_counter(), []
        for seed in range(args.seeds):  # seed-major: an interrupted study has every method's early seeds
            for method in methods:
                t0 = time.perf_counter()
                was_done = (out / f"{method}-seed{seed}" / S.DONE).exists()
                results.append(S.run_one(method, seed, size, out, args.random_init))
                print(f"[study] {method} seed {seed}: " + ("already done" if was_done else
                      f"{time.perf_counter() - t0:.0f} s") + f"; all {results[-1]['all']:.3f}", flush=True)
        stats = S.aggregate(results, methods)
        settings["seconds"] = round(time.perf_counter() - start, 1)
        settings["command"] = "python study.py " + " ".join(sys.argv[1:] if argv is None else argv)
        paths = S.write_outputs(out, stats, results, settings)
        print("\nShapesBench accuracy (%), mean ± 95% t-interval over seeds; rows 'x − llava': paired "
              "differences in points\n")
        print(S.markdown_table(stats))
        print("\n".join(S.verdicts(stats)))
        print(f"\n{len(results)} runs in {settings['seconds']:.0f} s; wrote " + ", ".join(map(str, paths.values())))
        return 0


if __name__ == "__main__":
    sys.exit(run_main(main, prog="study.py"))
