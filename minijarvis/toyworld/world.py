"""What the toy world's pretrained parts learn from: text, and scenes with their geometry.

* :func:`text_corpus` -- the toy language, in the formats train.py feeds the LLM: stage-1
  captions (the caption alone, as the plain template labels it), stage-2 conversations (the
  chat template, ``<image>`` removed: the LLM never sees pixels), CV-Bench-style questions
  with their options, answered with the right option's letter as their prompt asks
  (``shapesbench.format_prompt``; the answer is right for a scene the text does not show, so
  the LLM learns the questions and their format, not the answers), and multiple-choice
  exercises whose text states the answer (:func:`mc_exercise`: a real LLM arrives knowing how
  to pick an option by its letter; the toy one learns it here).
* :func:`scene_tensors` -- rendered scenes as the encoders see them ([0, 1] images at the tiny
  preset's size, resized like ``data.images.load_image``), their incomplete captions, where each
  object the caption names is (its visible share of every patch: what a region-level caption
  loss pools over), and what the renderer knows that captions omit: per-patch log-depth,
  per-patch object occupancy, object count.

Seeds: scenes come from the "caption" and "instruct" splits with a user seed (``WORLD_SEED`` +
build seed) that the training data of train.py (seed 0, 1, 2, ...) does not use by default;
questions from the "bench" split with that seed, never the evaluation's seed 0.
"""
from __future__ import annotations

import math

import numpy as np
import torch
from tqdm import tqdm

from minijarvis.data import shapes as S
from minijarvis.data import synthetic as T
from minijarvis.data.images import load_image
from minijarvis.evaluation.shapesbench import COUNT_CHOICES, LETTERS, TASKS, bench_item, format_prompt

WORLD_SEED = 1000  # offset of the build's user seed: away from train.py's seeds 0, 1, 2, ...
SKY_DEPTH = 30.0  # depth given to sky patches (beyond the farthest ground line drawn, 20)
RASTER = 96  # silhouettes are rasterised at 96 px, then averaged onto the patch grid


def _chat(tokenizer, turns: list[tuple[str, str]]) -> str:
    messages = []
    for q, a in turns:
        messages += [{"role": "user", "content": q}, {"role": "assistant", "content": a}]
    return tokenizer.apply_chat_template(messages, tokenize=False)


def instruct_turns(index: int, seed: int) -> list[tuple[str, str]]:
    """The (question, answer) turns of ``synthetic.instruction_record(index, seed)`` without
    rendering its image (same scene, same text stream, same suffix)."""
    s = S.scene_seed("instruct", index, seed)
    rng = np.random.default_rng([s, 1])
    if index % T.TEXT_ONLY_EVERY == T.TEXT_ONLY_EVERY - 1:
        return T._text_qa(rng)
    return [(q + T.SHORT_ANSWER, a) for q, a in T._image_qa(S.scene_from_seed(s), rng)]


def caption_text(index: int, seed: int) -> tuple[S.Scene, str]:
    """Scene and caption of ``synthetic.caption_record(index, seed)`` without rendering."""
    s = S.scene_seed("caption", index, seed)
    scene = S.scene_from_seed(s)
    return scene, T.caption_for(scene, np.random.default_rng([s, 1]))


def text_corpus(tokenizer, n_captions: int, n_instruct: int, n_questions: int, seed: int,
                offset: int = 0, n_exercises: int = 0) -> list[str]:
    """Training text of the toy LLM: captions, conversations, benchmark-style questions
    (``n_questions`` per ShapesBench task) and ``n_exercises`` multiple-choice exercises.
    ``offset`` shifts every index (held-out text)."""
    world = WORLD_SEED + seed
    out = []
    for i in tqdm(range(n_captions), desc="text: captions", unit="doc", leave=False):
        out.append(caption_text(offset + i, world)[1])
    for i in tqdm(range(n_instruct), desc="text: conversations", unit="doc", leave=False):
        out.append(_chat(tokenizer, instruct_turns(offset + i, world)))
    for task in TASKS:
        for i in tqdm(range(n_questions), desc=f"text: {task}", unit="doc", leave=False):
            item = bench_item(task, offset + i, world, render_image=False)
            out.append(_chat(tokenizer, [(format_prompt(item["question"], item["choices"]), LETTERS[item["answer_index"]])]))
    for i in tqdm(range(n_exercises), desc="text: exercises", unit="doc", leave=False):
        out.append(_chat(tokenizer, [mc_exercise(offset + i, world)]))
    return out


COMPARISONS = ("closer to the camera", "bigger", "further to the left", "higher up", "closer to the magenta box")


def mc_exercise(index: int, seed: int) -> tuple[str, str]:
    """A text-only multiple-choice question whose own text states the answer, in ShapesBench's
    format: (prompt, the right option's letter). Half count ("There are 3 cones in the box. How
    many cones are in the box?", options 1-4 as ShapesBench's Count), half pick one of two named
    objects by a comparison the text states ("The red cube is bigger than the blue cone. Which
    object is bigger, ...?"). Teaches the letter-picking step alone: nothing in it is about an
    image. Deterministic per (index, seed)."""
    rng = np.random.default_rng([seed, 77, index])
    if rng.random() < 0.5:
        n = int(rng.integers(1, len(COUNT_CHOICES) + 1))
        what = f"{S.KINDS[rng.integers(len(S.KINDS))]}s" if rng.random() < 0.6 else f"{list(S.COLORS)[rng.integers(len(S.COLORS))]} objects"
        question, choices, answer = f"There are {n} {what} in the box. How many {what} are in the box?", list(COUNT_CHOICES), str(n)
    else:
        a, b = (PHRASES[k] for k in rng.choice(len(PHRASES), 2, replace=False))
        rel = COMPARISONS[rng.integers(len(COMPARISONS))]
        question = f"The {a} is {rel} than the {b}. Which object is {rel}, the {a} or the {b}?"
        choices, answer = ([a, b] if rng.random() < 0.5 else [b, a]), a
    return format_prompt(question, choices), LETTERS[choices.index(answer)]


MAX_OBJECTS = 5  # sample_scene draws 2-5 objects
PHRASES = tuple(f"{c} {k}" for c in S.COLORS for k in S.KINDS)  # every object name a caption says


def depth_grid(scene: S.Scene, grid: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-patch (log-depth, occupancy, visible share of each object) on a ``grid`` x ``grid``
    patch grid, float32: [grid, grid], [grid, grid], [len(scene.objects), grid * grid].

    Depth of a pixel: the camera depth z of the nearest object whose silhouette covers it
    (silhouettes painted far to near, as ``render`` paints), else of the ground at that image
    row (z = FOCAL * CAM_H / (v - HORIZON)), else ``SKY_DEPTH``. A patch gets the mean log-depth
    of its pixels and the fraction of them covered by an object; object k's share of a patch is
    the fraction of the patch's pixels where k is the visible (nearest) object.
    """
    v = (np.arange(RASTER) + 0.5) / RASTER
    ground = np.where(v > S.HORIZON, S.FOCAL * S.CAM_H / np.maximum(v - S.HORIZON, 1e-6), SKY_DEPTH)
    depth = np.repeat(np.minimum(ground, SKY_DEPTH)[:, None], RASTER, 1)
    owner = np.full((RASTER, RASTER), -1)
    for k in sorted(range(len(scene.objects)), key=lambda k: -scene.objects[k].z):
        o = scene.objects[k]
        _, mask = S._footprint(o.kind, o.x, o.z, RASTER)
        depth[mask], owner[mask] = o.z, k
    cell = RASTER // grid
    if cell * grid != RASTER:
        raise ValueError(f"grid {grid} must divide the raster side {RASTER}")
    pool = lambda a: a.reshape(grid, cell, grid, cell).mean((1, 3)).astype(np.float32)  # noqa: E731
    share = np.stack([pool((owner == k).astype(np.float32)).reshape(-1) for k in range(len(scene.objects))])
    return pool(np.log(depth)), pool((owner >= 0).astype(np.float32)), share


def scene_tensors(n: int, seed: int, image_size: int = 96, grid: int = 6, mean=(0.5, 0.5, 0.5),
                  offset: int = 0) -> dict:
    """``n`` caption-split scenes as tensors: images float [n,3,S,S] in [0,1] (rendered at
    224 px and resized like ``data.images.load_image``), captions (list), log_depth and occupancy
    [n, grid, grid], count long [n], share [n, MAX_OBJECTS, grid*grid] (each object's visible
    share of every patch, zero rows past the scene's objects) and phrase long [n, MAX_OBJECTS]
    (index of the object's name in PHRASES, -1 past the scene's objects)."""
    world = WORLD_SEED + seed
    images, captions, depth, occ, count = [], [], [], [], []
    share = torch.zeros(n, MAX_OBJECTS, grid * grid)
    phrase = torch.full((n, MAX_OBJECTS), -1, dtype=torch.long)
    for i in tqdm(range(n), desc="scenes", unit="img", leave=False):
        scene, caption = caption_text(offset + i, world)
        images.append(load_image(S.render(scene), image_size, mean))
        d, o, sh = depth_grid(scene, grid)
        captions.append(caption)
        depth.append(torch.from_numpy(d))
        occ.append(torch.from_numpy(o))
        count.append(len(scene.objects))
        share[i, :len(sh)] = torch.from_numpy(sh)
        phrase[i, :len(sh)] = torch.tensor([PHRASES.index(ob.name) for ob in scene.objects])
    return dict(images=torch.stack(images), captions=captions, log_depth=torch.stack(depth),
                occupancy=torch.stack(occ), count=torch.tensor(count), share=share, phrase=phrase)


def log_depth_range() -> tuple[float, float]:
    """Smallest and largest per-pixel log-depth (nearest object front, sky)."""
    return math.log(S.Z_NEAR - S.SIZE / 2), math.log(SKY_DEPTH)
