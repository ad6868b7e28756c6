"""study.py's parts: the rows, each seed's data, the runs of one (method, seed).

A run = stage 1 (train.py --stage align), stage 2 (--stage finetune --init), ShapesBench
(eval.py, likelihood of each option's letter) and, when ``probe.py`` is importable, its per-layer probes on the
stage-1 checkpoint. Every row of one seed trains on the same data (same synthetic records,
same order), written once per seed before any run starts (``prepare_data``: runs in parallel
never write the same file); seeds change the data, the initialisation of what trains, the masks
and the lambda draws. A run is finished when its ``done.json`` exists (written last,
atomically): a finished run is never rerun, an unfinished one is started again from scratch.

Rows: the methods (config.METHODS) and two bounds, both llava (issue 21):

* ``llava-blank`` (lower bound): every image replaced by a blank one, in both stages and in
  the benchmark (train.py / eval.py ``--blank-images``): what the text alone gives.
* ``llava-expert`` (upper bound): the toy expert, the features JARVIS's F_tgt gives (last
  block, final norm), as the context encoder: what the expert's features are worth when the
  LLM reads them directly.

The statistics and the report are in ``study_report.py``.
"""
from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import shutil
import sys
import time
import traceback
from dataclasses import asdict, dataclass
from pathlib import Path

from tqdm import tqdm

from minijarvis.config import ENCODERS, METHODS
from minijarvis.data.synthetic import save_image, write_llava_folder
from minijarvis.errors import InputError, read_json
from minijarvis.evaluation.shapesbench import LETTERS, TASKS, bench_item, count_all_item

VQA_SEED = 5000  # user seed of the stage-2 vision-centric questions: never the bench's seed 0
DONE = "done.json"
# The study's images are stored already fitted to the tiny encoders' input (the same tensors as
# fitting the 224 px renders at load time, and a cheaper decode at every step).
IMAGE_SIZE = ENCODERS["tiny-clip"][1]["img_size"]

# The bounds: row name -> "lower" / "upper"; both are llava plus the flags below.
BOUNDS = {"llava-blank": "lower", "llava-expert": "upper"}
ROWS = METHODS + tuple(BOUNDS)
_EXPERT = ["--context-encoder", "tiny-dinov2", "--context-layer", "last", "--context-norm", "on"]
# (stage-1 flags, stage-2 flags, eval.py flags) on top of --method llava
BOUND_FLAGS = {"llava-blank": (["--blank-images"], ["--blank-images"], ["--blank-images"]),
               "llava-expert": (_EXPERT, [], [])}


@dataclass(frozen=True)
class StudySize:
    synthetic_size: int  # stage-1 caption records
    instructions: int  # stage-2 built-in instruction records
    vqa_per_task: int  # stage-2 vision-centric questions per ShapesBench task (0: none), times vqa_mix
    vqa_mix: tuple[float, ...]  # each task's multiple of vqa_per_task, in TASKS order
    small_scenes: tuple[float, ...]  # each task's share of its questions on scenes of at most 3 objects
    count_extras: int | None  # Count questions: 0..this many other objects, drawn apart from the count (None: the benchmark's draw)
    count_all: int  # stage-2 questions on the scene's number of objects (shapesbench.count_all_item)
    align_steps: int
    finetune_steps: int
    finetune_lr: float
    batch_size: int
    n_per_task: int  # ShapesBench items per task
    probe_images: int
    probe_steps: int


QUICK = StudySize(synthetic_size=8, instructions=8, vqa_per_task=1, vqa_mix=(1, 1, 1, 1), small_scenes=(0.5, 0.5, 0.5, 0.5), count_extras=None, count_all=1, align_steps=1,
                  finetune_steps=1, finetune_lr=1e-3, batch_size=4, n_per_task=1, probe_images=12, probe_steps=2)
DEFAULT = StudySize(synthetic_size=1000, instructions=200, vqa_per_task=1000, vqa_mix=(1, 1, 1, 2.5), small_scenes=(0, 0.5, 0.5, 0.5), count_extras=None, count_all=1000,
                    align_steps=600, finetune_steps=2500, finetune_lr=1e-3, batch_size=8, n_per_task=1000,
                    probe_images=96, probe_steps=100)


# ---------------------------------------------------------------- data
def stage1_data(folder: Path, size: StudySize, seed: int) -> tuple[str, str]:
    """Stage-1 captions of one seed: train.py's built-in data, written once per folder."""
    return str(write_llava_folder(folder, "caption", size.synthetic_size, seed=seed, save_size=IMAGE_SIZE)), str(folder)


def task_questions(size: StudySize) -> dict[str, int]:
    """Stage-2 questions of each ShapesBench task: ``vqa_per_task`` times the task's ``vqa_mix``."""
    return {task: round(size.vqa_per_task * m) for task, m in zip(TASKS, size.vqa_mix)}


def _letter_record(folder: Path, name: str, item: dict) -> dict:
    """A LLaVA record of a multiple-choice ``item`` answered by its letter; its image saved under
    ``folder/images/<name>.png`` at the encoders' size."""
    rel = f"images/{name}.png"
    save_image(item["image"], folder / rel, IMAGE_SIZE)
    return {"id": f"study-{name}", "image": rel, "conversations": [
        {"from": "human", "value": "<image>\n" + item["prompt"]},
        {"from": "gpt", "value": LETTERS[item["answer_index"]]}]}


def stage2_data(folder: Path, size: StudySize, seed: int) -> tuple[str, str]:
    """Stage-2 data of one seed: ``instructions`` built-in instructions plus each ShapesBench
    task's questions (:func:`task_questions`) in its own multiple-choice wording, answered with
    the right option's letter, as the prompt asks (LLaVA-665k's stand-in: its multiple-choice
    rows, A-OKVQA's, answer a prompt ending "Answer with the option's letter from the given
    choices directly." with the letter), on "bench"-split scenes of user seed VQA_SEED + seed,
    never the evaluation's seed 0. The first ``small_scenes`` share of each task's questions
    (one share per task, in TASKS order) are on scenes of at most 3 objects (Distance: exactly
    3), the easy end of a curriculum (``bench_item(max_objects=3)``). With ``count_extras``,
    Count's other objects are drawn apart from its count (``bench_item(count_extras=...)``).
    Then ``count_all`` questions on the scene's number of objects (``count_all_item``).
    Cached: written once per folder."""
    path = folder / "study.json"
    if path.exists():
        return str(path), str(folder)
    records = json.loads(write_llava_folder(folder, "instruct", size.instructions, seed=seed,
                                            save_size=IMAGE_SIZE).read_text()) if size.instructions else []
    (folder / "images").mkdir(parents=True, exist_ok=True)
    for (task, n), small in zip(task_questions(size).items(), size.small_scenes):
        n_small = round(small * n)
        for i in tqdm(range(n), desc=f"stage-2 {task} questions", unit="img", leave=False):
            item = bench_item(task, i, VQA_SEED + seed, max_objects=3 if i < n_small else None,
                              count_extras=size.count_extras if task == "Count" else None)
            records.append(_letter_record(folder, f"vqa-{task.lower()}-{i:05d}", item))
    for i in tqdm(range(size.count_all), desc="stage-2 number-of-objects questions", unit="img", leave=False):
        records.append(_letter_record(folder, f"vqa-countall-{i:05d}", count_all_item(i, VQA_SEED + seed)))
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(records))
    tmp.replace(path)
    return str(path), str(folder)


def data_job(out: Path, size: StudySize, seed: int, stage: int) -> tuple[str, str]:
    """Stage ``stage``'s data of ``seed`` under ``out/data`` (a job of its own: study.py
    writes every seed's two stages side by side before any run starts)."""
    return (stage1_data if stage == 1 else stage2_data)(out / "data" / f"stage{stage}-seed{seed}", size, seed)


def prepare_data(out: Path, size: StudySize, seed: int) -> dict:
    """Both stages' data of ``seed`` under ``out/data`` (before any run of it starts)."""
    return dict(stage1=data_job(out, size, seed, 1), stage2=data_job(out, size, seed, 2))


# ---------------------------------------------------------------- one run
def finished(run: Path) -> dict | None:
    """The result in ``run/done.json``, or None (no such file, or not a run result: warned)."""
    done = run / DONE
    if not done.exists():
        return None
    try:
        result = read_json(done, "run result")
        if isinstance(result, dict) and {"method", "seed", "all"} <= result.keys():
            return result
        print(f"warning: {done}: not a run result; running {run.name} again", file=sys.stderr)
    except InputError as e:
        print(f"warning: {e}; running {run.name} again", file=sys.stderr)
    return None


def run_one(method: str, seed: int, size: StudySize, out: Path, random_init: bool = False) -> dict:
    """Stage 1, stage 2, ShapesBench and probes of row ``method`` at ``seed`` in
    ``out/<method>-seed<seed>``; returns (and writes last, as the done-marker) its results, with
    its wall time in seconds. Skipped if already done."""
    import eval as eval_script  # the repository's entry points, called in-process
    import train

    run = out / f"{method}-seed{seed}"
    result = finished(run)
    if result is not None:
        return result
    if run.exists():
        shutil.rmtree(run)  # an unfinished run starts again from scratch
    start = time.perf_counter()
    flags1, flags2, flags_eval = BOUND_FLAGS.get(method, ([], [], []))
    data = prepare_data(out, size, seed)
    common = ["--seed", str(seed), "--batch-size", str(size.batch_size)]
    common += ["--random-init"] * random_init
    stage1 = ["--stage", "align", "--method", "llava" if method in BOUNDS else method,
              "--data", data["stage1"][0], "--image-folder", data["stage1"][1],
              "--max-steps", str(size.align_steps), "--output-dir", str(run / "align"), *common, *flags1]
    if train.main(stage1) != 0:
        raise RuntimeError(f"stage 1 of {method} seed {seed} failed")
    stage2 = ["--stage", "finetune", "--init", str(run / "align"), "--data", data["stage2"][0],
              "--image-folder", data["stage2"][1], "--max-steps", str(size.finetune_steps),
              "--output-dir", str(run / "finetune"), "--seed", str(seed), "--batch-size", str(size.batch_size),
              "--lr", str(size.finetune_lr), *flags2]
    if train.main(stage2) != 0:
        raise RuntimeError(f"stage 2 of {method} seed {seed} failed")
    bench = eval_script.main(["--checkpoint", str(run / "finetune"), "--bench", "shapes", "--score-target", "letter",
                              *flags_eval,
                              "--n-per-task", str(size.n_per_task), "--output-dir", str(run / "eval")])
    summary = bench["checkpoints"][0]["summary"]
    result = dict(method=method, seed=seed, size=asdict(size), random_init=random_init,
                  per_task={t: m["accuracy"] for t, m in summary["per_task"].items()},
                  chance={t: m["chance"] for t, m in summary["per_task"].items()},
                  all=summary["all"]["accuracy"], n=summary["all"]["n"], probe=run_probe(run, size, seed))
    result["seconds"] = round(time.perf_counter() - start, 1)
    run.mkdir(parents=True, exist_ok=True)
    done = run / DONE
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


# ---------------------------------------------------------------- a run in a worker process
def log_path(out: Path, method: str, seed: int) -> Path:
    return out / "logs" / f"{method}-seed{seed}.log"


def run_logged(method: str, seed: int, size: StudySize, out: Path, random_init: bool = False) -> dict:
    """:func:`run_one` as a worker process runs it (study.py --workers): one thread, everything
    it prints (progress bars included) in ``log_path``. Never raises: a failure comes back as
    dict(method, seed, error="Type: message", log=path), its traceback in the log."""
    import torch

    torch.set_num_threads(1)  # tiny models: one thread per run, runs side by side
    log = log_path(out, method, seed)
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as f, _output_to(f):
        try:
            return run_one(method, seed, size, out, random_init)
        except Exception as e:  # noqa: BLE001  reported as one line by the parent
            sys.stderr.flush()
            traceback.print_exc(file=f)
            return dict(method=method, seed=seed, error=f"{type(e).__name__}: {e}", log=str(log))


@contextlib.contextmanager
def _output_to(f):
    """File descriptors 1 and 2 (Python's prints and C libraries' alike) go to ``f``."""
    sys.stdout.flush(), sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    os.dup2(f.fileno(), 1), os.dup2(f.fileno(), 2)
    try:
        yield
    finally:
        sys.stdout.flush(), sys.stderr.flush()
        os.dup2(saved[0], 1), os.dup2(saved[1], 2)
        os.close(saved[0]), os.close(saved[1])
