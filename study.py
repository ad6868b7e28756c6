"""Does JARVIS help? Stage 1 + stage 2 + ShapesBench for each method and seed, with intervals.

The tiny preset's parts are the toy world's pretrained ones (a toy LLM, a caption-trained
"CLIP", a depth expert as target; ``minijarvis/toyworld``), so the papers' question has an
answer at this scale. For each row and seed: stage 1 and stage 2 on the same data (train.py),
ShapesBench per task (eval.py; chance marked), the per-layer probes of the stage-1 checkpoint
when probe.py exists; then accuracy per task and row, mean ± 95% t-interval over seeds, the
paired difference to llava seed by seed, and its half-width, the minimum detectable effect.

Rows: the methods (llava, nomask, jarvis, visper, viral) and two bounds, both llava:
llava-blank (every image blank, in training and in the benchmark: what the text alone gives)
and llava-expert (the toy expert as the context encoder: what its features are worth when the
LLM reads them directly). A method's gain over llava means something between the two; the
verdicts say where each method falls (0 = llava-blank, 1 = llava-expert).

    python study.py                                          # 6 rows x 3 seeds, 2 runs at a time
    python study.py --methods llava jarvis --seeds 5 --output-dir runs/study5
    python study.py --workers 1 --output-dir runs/study-1    # one run after the other, in-process
    python study.py --quick --output-dir /tmp/study          # seconds: the CI size

Parallel: ``--workers N`` runs N (method, seed) at a time, each in its own process with one
thread (the tiny models gain nothing from more), its output in ``OUTPUT/logs/<row>-seed<k>.log``;
a line per run as it ends, with its time; the wall time and each run's time go to study.json.
A failed run is one line; the others finish, and rerunning the same command retries it.
Resumable: a finished (method, seed) has ``OUTPUT/<method>-seed<k>/done.json`` and is not rerun;
rerun the same command after an interruption (Ctrl-C, or SIGTERM to study.py, stops the workers too;
their unfinished runs start again from scratch). Writes OUTPUT/study.{json,csv,md,png}.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import multiprocessing
import signal
import sys
import threading
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

import torch

from minijarvis.evaluation.shapesbench import COUNT_MAX_OBJECTS
from minijarvis.toyworld import study as S
from minijarvis.toyworld import study_report as R
from minijarvis.errors import (InputError, UsageError, add_debug_flag, nonnegative_float, nonnegative_int, positive_float,
                               positive_int, probability, read_json, run_main)
from minijarvis.training.lock import output_lock


DEFAULT_ROWS = ("llava-blank", "llava", "nomask", "jarvis", "visper", "llava-expert")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="study.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add = p.add_argument
    add("--methods", nargs="+", choices=S.ROWS, default=list(DEFAULT_ROWS), metavar="ROW",
        help=f"rows to compare, of {', '.join(S.ROWS)} (default: {' '.join(DEFAULT_ROWS)}); llava is the "
             "baseline of the paired comparison, llava-blank and llava-expert the bounds")
    add("--workers", type=positive_int, default=2, help="runs side by side, each in its own process with one "
        "thread (default 2: both cores of a small machine; 1 = one after the other, in this process)")
    add("--seeds", type=positive_int, default=3, help="seeds 0..N-1 per method (default 3)")
    add("--quick", action="store_true", help="the smallest sizes (a CI check, seconds; numbers mean nothing)")
    d = S.DEFAULT
    add("--synthetic-size", type=positive_int, default=None, help=f"stage-1 captions per seed (default {d.synthetic_size})")
    add("--instructions", type=nonnegative_int, default=None, help=f"stage-2 built-in instructions per seed (default {d.instructions})")
    add("--vqa-per-task", type=nonnegative_int, default=None, help=f"stage-2 vision-centric questions per task (default {d.vqa_per_task})")
    add("--vqa-mix", type=nonnegative_float, nargs=4, default=None, metavar=("COUNT", "RELATION", "DEPTH", "DISTANCE"),
        help=f"each task's stage-2 questions as a multiple of --vqa-per-task (default {' '.join(f'{m:g}' for m in d.vqa_mix)})")
    add("--small-scenes", type=probability, nargs=4, default=None, metavar=("COUNT", "RELATION", "DEPTH", "DISTANCE"),
        help=f"each task's share of its questions on scenes of at most 3 objects "
             f"(default {' '.join(f'{m:g}' for m in d.small_scenes)})")
    add("--count-extras", type=nonnegative_int, default=None, choices=range(COUNT_MAX_OBJECTS), metavar="N",
        help="Count's stage-2 questions: 0 to N other objects, drawn apart from the count, so the "
             f"scene's number of objects gives the answer less often (default {d.count_extras}: the benchmark's draw)")
    add("--count-all", type=nonnegative_int, default=None, metavar="N",
        help=f"stage-2 questions on the scene's number of objects, 1 to {COUNT_MAX_OBJECTS} (default {d.count_all})")
    add("--align-steps", type=positive_int, default=None, help=f"stage-1 optimizer steps (default {d.align_steps})")
    add("--finetune-steps", type=positive_int, default=None, help=f"stage-2 optimizer steps (default {d.finetune_steps})")
    add("--finetune-lr", type=positive_float, default=None, help=f"stage-2 peak learning rate (default {d.finetune_lr})")
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
    for name in ("vqa_mix", "small_scenes"):
        if name in given:
            given[name] = tuple(given[name])
    return dataclasses.replace(base, **given)


def run_all(jobs: list[tuple[str, int]], size: S.StudySize, out: Path, args) -> tuple[list[dict], list[str]]:
    """Every (method, seed) of ``jobs``: finished ones read back, the others run (in-process with
    --workers 1; else each in a worker process of its own, one thread, output in OUTPUT/logs/).
    A line per run as it ends. Returns the results in ``jobs``' order and one line per failure."""
    results, failures, todo = {}, [], []
    for job in jobs:
        found = S.finished(out / f"{job[0]}-seed{job[1]}")
        if found is not None:
            results[job] = dict(found, reused=True)
            print(f"[study] {job[0]} seed {job[1]}: already done; all {found['all']:.3f}", flush=True)
        else:
            todo.append(job)

    def report(job, result):
        if "error" in result:
            failures.append(f"{job[0]} seed {job[1]}: {result['error']}"
                            + (f" (log: {result['log']})" if result.get("log") else ""))
            print(f"[study] FAILED {failures[-1]}", flush=True)
            return
        results[job] = dict(result, reused=False)
        print(f"[study {len(results)}/{len(jobs)}] {job[0]} seed {job[1]}: {result['seconds']:.0f} s; "
              f"all {result['all']:.3f}", flush=True)

    seeds = sorted({s for _, s in todo})  # each seed's data written once, before any run of it reads it
    if args.workers == 1 or len(todo) <= 1:
        for seed in seeds:
            S.prepare_data(out, size, seed)
        torch.set_num_threads(1)  # tiny models: one thread (see runtime.set_cpu_threads)
        for job in todo:
            try:
                report(job, S.run_one(*job, size, out, args.random_init))
            except Exception as e:  # noqa: BLE001  one line; --debug shows the traceback
                if args.debug:
                    raise
                report(job, dict(error=f"{type(e).__name__}: {e}"))
    elif todo:
        # one pool for everything (spawn: a fresh interpreter per worker, no forked torch state):
        # every seed's two data jobs first, then a seed's runs as soon as both its stages are
        # written, so no worker waits while the data of later seeds is drawn
        pool = ProcessPoolExecutor(min(args.workers, max(len(todo), 2 * len(seeds))),
                                   mp_context=multiprocessing.get_context("spawn"))
        main_thread = threading.current_thread() is threading.main_thread()  # signal handlers live there
        previous = signal.signal(signal.SIGTERM, _stop_workers) if main_thread else None
        try:
            data = {pool.submit(S.data_job, out, size, seed, stage): seed for seed in seeds for stage in (2, 1)}
            missing, runs = {seed: 2 for seed in seeds}, {}
            while data or runs:
                for future in wait([*data, *runs], return_when=FIRST_COMPLETED).done:
                    if future in data:
                        seed = data.pop(future)
                        future.result()  # a data job that fails stops the study (its error as raised)
                        missing[seed] -= 1
                        if not missing[seed]:  # the longest first (visper's stage 1: ~3x), so short runs end the study
                            runs.update({pool.submit(S.run_logged, *job, size, out, args.random_init): job
                                         for job in sorted(todo, key=lambda job: job[0] != "visper")
                                         if job[1] == seed})
                        continue
                    job = runs.pop(future)
                    try:
                        report(job, future.result())
                    except BrokenProcessPool:
                        report(job, dict(error="its worker process died (out of memory?)",
                                         log=str(S.log_path(out, *job))))
        finally:
            if main_thread:
                signal.signal(signal.SIGTERM, previous)
            pool.shutdown(wait=True, cancel_futures=True)
    return [results[job] for job in jobs if job in results], failures


def _stop_workers(signum, frame):
    """SIGTERM reaches this process alone (Ctrl-C reaches the whole process group): end the
    workers with it, or they run on, orphaned, into the folders of a rerun. Their unfinished
    runs start again from scratch when the same command is rerun."""
    for child in multiprocessing.active_children():
        child.kill()
    raise SystemExit(128 + signum)


def main(argv=None) -> int:
    args = parse_args(argv)
    size, out = study_size(args), Path(args.output_dir)
    if size.synthetic_size < size.batch_size:
        raise UsageError(f"--synthetic-size {size.synthetic_size} must be >= --batch-size {size.batch_size}")
    if size.instructions + sum(S.task_questions(size).values()) < size.batch_size:
        raise UsageError(f"stage 2 holds --instructions {size.instructions} + --vqa-per-task {size.vqa_per_task} "
                         f"x --vqa-mix {' '.join(f'{m:g}' for m in size.vqa_mix)} records: fewer than "
                         f"--batch-size {size.batch_size}")
    methods = list(dict.fromkeys(args.methods))
    # as JSON reads it back (the mix's tuple becomes a list), so a rerun compares like with like
    settings = dict(methods=methods, seeds=args.seeds, size=json.loads(json.dumps(dataclasses.asdict(size))),
                    random_init=args.random_init)
    with output_lock(out):  # one study per folder (minijarvis/training/lock.py)
        saved = out / "settings.json"
        if saved.exists():
            old = read_json(saved, "study settings")
            if not (isinstance(old, dict) and {"size", "random_init"} <= old.keys()):
                raise InputError(f"{saved}: damaged study settings (no size or random_init); restore it, "
                                 "or use another --output-dir")
            if isinstance(old["size"], dict) and isinstance(old["size"].get("small_scenes"), (int, float)):
                old["size"]["small_scenes"] = [old["size"]["small_scenes"]] * len(S.TASKS)  # before 2026-12-06: one share
            if isinstance(old["size"], dict):
                old["size"].setdefault("count_extras", None)  # before 2026-12-06 (afternoon): always the benchmark's draw
                old["size"].setdefault("count_all", 0)  # before 2026-12-06 (evening): no number-of-objects questions
            if (old["size"], old["random_init"]) != (settings["size"], settings["random_init"]):
                raise UsageError(f"{out} holds runs of other sizes ({old['size']}); "
                                 "use another --output-dir or the same sizes")
        saved.write_text(json.dumps(settings, indent=1))
        # seed-major: an interrupted study has every method's early seeds
        jobs = [(method, seed) for seed in range(args.seeds) for method in methods]
        start = time.perf_counter()
        results, failures = run_all(jobs, size, out, args)
        wall = time.perf_counter() - start
        if failures:
            raise InputError(f"{len(failures)} of {len(jobs)} runs failed, first {failures[0]}; the finished "
                             "runs are kept: rerun the same command to retry the others")
        stats = R.aggregate(results, methods)
        new = [r for r in results if not r["reused"]]
        settings.update(workers=args.workers, seconds=round(wall, 1),
                        run_seconds=[dict(method=r["method"], seed=r["seed"], seconds=r.get("seconds"),
                                          reused=r["reused"]) for r in results],
                        command="python study.py " + " ".join(sys.argv[1:] if argv is None else argv))
        paths = R.write_outputs(out, stats, results, settings)
        print("\nShapesBench accuracy (%), mean ± 95% t-interval over seeds; rows 'x − llava': paired "
              "differences in points\n")
        print(R.markdown_table(stats))
        print("\n".join(R.verdicts(stats)))
        busy = sum(r["seconds"] or 0 for r in new)
        print(f"\n{len(results)} runs ({len(new)} new) in {wall:.0f} s wall with {args.workers} worker(s)"
              + (f"; the new runs took {busy:.0f} s together (x{busy / wall:.2f} of the wall time)" if new else ""))
        print("wrote " + ", ".join(map(str, paths.values())))
        return 0


if __name__ == "__main__":
    sys.exit(run_main(main, prog="study.py"))
