"""ShapesBench: a CV-Bench-style multiple-choice benchmark on the synthetic scenes of `minijarvis.data.shapes`.

CV-Bench's four tasks, with the same question wording. As in CV-Bench, the objects a Relation, Depth
or Distance question names are outlined by coloured boxes in the image and the question says so
("the red cube (annotated by the magenta box)"); the names are the objects' unique colour+kind. The
box colours (MARKS) lie outside the objects' palette; CV-Bench's are red, blue and green.

    Count    (2D)  How many cubes / red objects are in the image?           choices 1, 2, 3, 4, no boxes
    Relation (2D)  where is A with respect to B? left/right or above/below  2 choices, image coordinates
    Depth    (3D)  Which object is closer to the camera, A or B?            2 choices, camera depth z
    Distance (3D)  Which object is closer to C, A or B?                     2 choices, 3D ground distance

Every answer is unambiguous by construction: relations need bbox centres >= RELATION_MARGIN apart,
depths differ by a ratio >= DEPTH_RATIO, distances by a ratio >= DISTANCE_RATIO, and counted objects
keep >= COUNT_MIN_VISIBLE of their bbox unoccluded. The correct letter is assigned round-robin over the
choices, so answers are balanced over letters for every task. Count's choices are always the counts
1 to 4 in order (COUNT_CHOICES), so a letter stands for one count and no choice list hints at the
answer: picking the letter needs the count, not a search of the options for it (the toy LLM does not
learn that search from images, issue 21). Scenes come from the "bench" seed range
of `scene_seed`, disjoint from the training data's. No training caption mentions a count, a relation
or depth, so these questions cannot be answered by reading captions.

    from minijarvis.evaluation.shapesbench import shapes_bench, write_bench_jsonl
    items = shapes_bench(n_per_task=100)                 # list of dicts with PIL images
    write_bench_jsonl("data/shapesbench", n_per_task=100)  # test.jsonl + img/, CV-Bench's file layout
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from minijarvis.data.shapes import COLORS, DEFAULT_IMAGE_SIZE, KINDS, Scene, render, sample_scene, scene_seed

TASKS = ("Count", "Relation", "Depth", "Distance")
TASK_TYPE = {"Count": "2D", "Relation": "2D", "Depth": "3D", "Distance": "3D"}
LETTERS = "ABCDEFGH"
ANSWER_INSTRUCTION = "Answer with the option's letter from the given choices directly."
RELATION_MARGIN = 0.15  # bbox-centre difference along the asked axis, in image fractions
DEPTH_RATIO = 1.35  # farther z / nearer z
DISTANCE_RATIO = 1.5  # farther 3D distance / nearer 3D distance to the reference object
COUNT_MIN_VISIBLE = 0.6
COUNT_CHOICES = ("1", "2", "3", "4")  # Count's choices, in this order: (A) 1 ... (D) 4
COUNT_MAX_OBJECTS = 6  # objects in a Count scene, counted and others
# Box colours, in the order a question names its objects (Relation: A, B; Depth: the two options;
# Distance: the reference, then the two options). CV-Bench draws red, blue and green boxes; red,
# blue and green are object colours here, so the boxes take colours no object has.
MARKS = {"magenta": (255, 0, 255), "cyan": (0, 230, 255), "black": (10, 10, 10)}


def _marked(names: list[str], verb: str) -> list[str]:
    """CV-Bench's annotation after each name: "the X (annotated by the magenta box)" (Relation)
    or "(highlighted by a magenta box)" (Depth, Distance), box colours in MARKS order."""
    return [f"{n} ({verb} {c} box)" for n, c in zip(names, MARKS)]


def draw_marks(image: Image.Image, scene: Scene, names: list[str]) -> Image.Image:
    """Outline the objects ``names`` (in MARKS order) on ``image`` (a render of ``scene``), with
    a margin around each bbox. Returns the image (drawn on in place)."""
    draw, side = ImageDraw.Draw(image), image.size[0]
    objects = {o.name: o for o in scene.objects}
    pad, width = max(1, side // 100), max(2, side // 48)
    for name, rgb in zip(names, MARKS.values()):
        u0, v0, u1, v1 = (side * f for f in objects[name].bbox)
        draw.rectangle([u0 - pad, v0 - pad, u1 + pad, v1 + pad], outline=rgb, width=width)
    return image


def render_item(item: dict, image_size: int = DEFAULT_IMAGE_SIZE) -> Image.Image:
    """The item's image: its scene rendered, with its marked objects outlined (``item["marks"]``)."""
    return draw_marks(render(item["scene"], image_size), item["scene"], item["marks"])


def bench_seed(task: str, index: int, seed: int = 0) -> int:
    """Seed of item `index` of `task`: a scene_seed in the "bench" split (disjoint from training seeds)."""
    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}")
    if not 0 <= index < 2**32:
        raise ValueError(f"need 0 <= index < 2**32, got {index}")
    return scene_seed("bench", TASKS.index(task) << 32 | index, seed)


def format_prompt(question: str, choices: list[str]) -> str:
    """'question\\n(A) x\\n(B) y\\nAnswer with the option's letter from the given choices directly.'"""
    lines = [question] + [f"({LETTERS[k]}) {c}" for k, c in enumerate(choices)] + [ANSWER_INSTRUCTION]
    return "\n".join(lines)


def _distance(a, b) -> float:
    return math.hypot(a.x - b.x, a.z - b.z)  # all objects stand on the ground with equal heights


def _count(rng: np.random.Generator, answer: int, max_objects: int | None = None, extras: int | None = None):
    """A scene with c = ``answer`` + 1 objects of one kind (or colour) among 0-2 distractors (at
    least one when c is 1), choices COUNT_CHOICES. With ``max_objects``: at most that many objects
    in all, or the c counted ones alone when c is larger. With ``extras``: 0 to ``extras``
    distractors drawn apart from c (at most COUNT_MAX_OBJECTS in all), so the scene's number of
    objects says less about the answer than on the benchmark, where it alone gives ~50%."""
    c = int(COUNT_CHOICES[answer])
    cap = COUNT_MAX_OBJECTS if max_objects is None else max(max_objects, c)
    n_extra = int(rng.integers(int(c == 1), max(int(c == 1), min(2, cap - c)) + 1))
    if extras is not None:  # drawn after the benchmark's draw, as in research/exp21 round 9's runs
        n_extra = int(rng.integers(0, min(extras, cap - c) + 1))
    if rng.random() < 0.6:
        kind = KINDS[rng.integers(len(KINDS))]
        others = [k for k in KINDS if k != kind]
        target, question = (kind, None), f"How many {kind}s are in the image?"
        extra = [(others[rng.integers(len(others))], None) for _ in range(n_extra)]
    else:  # unique colour+kind names: at most len(KINDS) objects of one colour
        color = list(COLORS)[rng.integers(len(COLORS))]
        others = [k for k in COLORS if k != color]
        target, question = (None, color), f"How many {color} objects are in the image?"
        extra = [(None, others[rng.integers(len(others))]) for _ in range(n_extra)]
    scene = sample_scene(rng, attrs=[target] * c + extra, min_visible=COUNT_MIN_VISIBLE)
    return scene, question, list(COUNT_CHOICES), []


def _scene(rng: np.random.Generator, max_objects: int | None, least: int = 2):
    """sample_scene's 2-5 objects, or ``least`` to ``max_objects`` of them (the same draws when None)."""
    if max_objects is None:
        return sample_scene(rng) if least == 2 else sample_scene(rng, n_objects=int(rng.integers(least, 6)))
    return sample_scene(rng, n_objects=int(rng.integers(least, max(least, max_objects) + 1)))


def _relation(rng: np.random.Generator, answer: int, horizontal: bool, max_objects: int | None = None):
    choices = ["left", "right"] if horizontal else ["above", "below"]
    axis, sign = (0 if horizontal else 1), (-1 if answer == 0 else 1)  # left/above: smaller u/v
    while True:
        scene = _scene(rng, max_objects)
        pairs = [(a, b) for a in scene.objects for b in scene.objects
                 if sign * (a.center[axis] - b.center[axis]) >= RELATION_MARGIN]
        if pairs:
            a, b = pairs[rng.integers(len(pairs))]
            ma, mb = _marked([a.name, b.name], "annotated by the")
            return scene, (f"Considering the relative positions of the {ma} and the {mb} in the image "
                           f"provided, where is the {ma} located with respect to the {mb}?"), choices, [a.name, b.name]


def _depth(rng: np.random.Generator, answer: int, max_objects: int | None = None):
    while True:
        scene = _scene(rng, max_objects)
        pairs = [(a, b) for a in scene.objects for b in scene.objects if b.z / a.z >= DEPTH_RATIO]
        if pairs:
            near, far = pairs[rng.integers(len(pairs))]
            choices = [near.name, far.name] if answer == 0 else [far.name, near.name]
            m0, m1 = _marked(choices, "highlighted by a")
            return scene, f"Which object is closer to the camera taking this photo, the {m0} or the {m1}?", choices, list(choices)


def _distance_task(rng: np.random.Generator, answer: int, max_objects: int | None = None):
    while True:
        scene = _scene(rng, max_objects, least=3)
        objs = scene.objects
        triples = [(r, a, b) for r in objs for a in objs for b in objs if len({r, a, b}) == 3
                   and _distance(b, r) >= DISTANCE_RATIO * _distance(a, r)]
        if triples:
            ref, near, far = triples[rng.integers(len(triples))]
            choices = [near.name, far.name] if answer == 0 else [far.name, near.name]
            mr, m0, m1 = _marked([ref.name] + choices, "highlighted by a")
            return scene, (f"Estimate the real-world distances between objects in this image. Which object is "
                           f"closer to the {mr}, the {m0} or the {m1}?"), choices, [ref.name] + choices


def bench_item(task: str, index: int, seed: int = 0, image_size: int = DEFAULT_IMAGE_SIZE,
               render_image: bool = True, max_objects: int | None = None, count_extras: int | None = None) -> dict:
    """Item `index` of `task`, deterministic per (task, index, seed). Keys: id, task, type, question,
    choices, answer_index (int), answer ("(B)"), prompt, seed (of the item's generator), scene (Scene),
    marks (the names of the boxed objects, in MARKS order; [] for Count), source, and image (PIL RGB,
    boxes drawn; absent when render_image=False -- use render_item(item, size)).
    ``max_objects`` (training questions only, never the benchmark): scenes of at most that many
    objects (Distance: at least 3; Count: at least its count), the easy end of a curriculum.
    ``count_extras`` (training questions only): a Count scene's other objects number 0 to
    ``count_extras``, drawn apart from its count (see ``_count``)."""
    if max_objects is not None and not 3 <= max_objects <= 5:
        raise ValueError(f"max_objects must be None or 3 to 5, got {max_objects}")
    if count_extras is not None and not 0 <= count_extras <= COUNT_MAX_OBJECTS - 1:
        raise ValueError(f"count_extras must be None or 0 to {COUNT_MAX_OBJECTS - 1}, got {count_extras}")
    item_seed = bench_seed(task, index, seed)
    rng = np.random.default_rng(item_seed)
    n_choices = 4 if task == "Count" else 2
    answer = index % n_choices  # round-robin: letters are balanced by construction
    if task == "Count":
        scene, question, choices, marks = _count(rng, answer, max_objects, count_extras)
    elif task == "Relation":
        scene, question, choices, marks = _relation(rng, answer, (index // 2) % 2 == 0, max_objects)
    elif task == "Depth":
        scene, question, choices, marks = _depth(rng, answer, max_objects)
    else:
        scene, question, choices, marks = _distance_task(rng, answer, max_objects)
    return _item(task, TASK_TYPE[task], index, question, choices, answer, item_seed, scene, marks,
                 image_size if render_image else None)


def _item(task, type_, index, question, choices, answer, item_seed, scene, marks, image_size) -> dict:
    """The item dict (keys in ``bench_item``'s docstring); ``image_size`` None: no image."""
    item = {"id": f"shapesbench-{task.lower()}-{index:05d}", "task": task, "type": type_,
            "question": question, "choices": choices, "answer_index": answer, "answer": f"({LETTERS[answer]})",
            "prompt": format_prompt(question, choices), "seed": item_seed, "scene": scene, "marks": marks,
            "source": "ShapesBench"}
    if image_size is not None:
        item["image"] = render_item(item, image_size)
    return item


TOTAL_CHOICES = tuple(str(n) for n in range(1, COUNT_MAX_OBJECTS + 1))  # count_all_item's choices


def count_all_item(index: int, seed: int, image_size: int = DEFAULT_IMAGE_SIZE) -> dict:
    """A training question (never the benchmark) on the scene's number of objects: "How many objects
    are in the image?" with choices 1 to COUNT_MAX_OBJECTS, so (A) stands for 1 as in Count. The
    number of objects is ``index % COUNT_MAX_OBJECTS + 1`` (balanced), each keeping
    COUNT_MIN_VISIBLE of its bbox, on "bench"-split scenes after the four tasks' ranges. Keys as
    ``bench_item``'s, with task "CountAll"."""
    item_seed = scene_seed("bench", len(TASKS) << 32 | index, seed)
    rng = np.random.default_rng(item_seed)
    answer = index % COUNT_MAX_OBJECTS
    scene = sample_scene(rng, n_objects=answer + 1, min_visible=COUNT_MIN_VISIBLE)
    return _item("CountAll", "2D", index, "How many objects are in the image?", list(TOTAL_CHOICES), answer,
                 item_seed, scene, [], image_size)


def shapes_bench(n_per_task: int = 100, seed: int = 0, image_size: int = DEFAULT_IMAGE_SIZE,
                 tasks=TASKS, render_image: bool = True) -> list[dict]:
    """n_per_task items of each task, task by task (see bench_item). With n_per_task a multiple of 4,
    every letter is correct equally often within each task."""
    if n_per_task < 1:
        raise ValueError(f"n_per_task must be >= 1, got {n_per_task}")
    return [bench_item(t, i, seed, image_size, render_image) for t in tasks for i in range(n_per_task)]


def scene_to_dict(scene: Scene) -> dict:
    """JSON-ready description of a scene (objects with world position, depth, bbox, visible fraction)."""
    return {"ground": scene.ground, "objects": [
        {"name": o.name, "kind": o.kind, "color": o.color, "x": o.x, "z": o.z, "bbox": list(o.bbox),
         "visible": o.visible} for o in scene.objects]}


def write_bench_jsonl(out_dir, n_per_task: int = 100, seed: int = 0, image_size: int = DEFAULT_IMAGE_SIZE) -> Path:
    """Export in CV-Bench's layout: out_dir/test.jsonl (one row per item: idx, type, task, image, question,
    choices, answer "(C)", prompt, source "ShapesBench", plus seed and scene) and the PNGs under
    out_dir/img/<type>/<task>/, paths relative to out_dir. Returns the path of test.jsonl."""
    out = Path(out_dir)
    rows = []
    for idx, item in enumerate(shapes_bench(n_per_task, seed, image_size, render_image=False)):
        rel = f"img/{item['type']}/{item['task'].lower()}/{item['id']}.png"
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        render_item(item, image_size).save(out / rel, compress_level=1)
        rows.append({"idx": idx, "type": item["type"], "task": item["task"], "image": rel, "filename": rel,
                     "question": item["question"], "choices": item["choices"], "answer": item["answer"],
                     "prompt": item["prompt"], "source": "ShapesBench", "seed": item["seed"],
                     "marks": item["marks"], "scene": scene_to_dict(item["scene"])})
    path = out / "test.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path
