"""The synthetic LLaVA data: captions (stage 1), instructions (stage 2) and their records, for the
scenes of :mod:`minijarvis.data.shapes`.

The captions deliberately describe only part of a scene -- one or two objects, maybe the ground --
and never counts, relations or depth: that is the paper's premise (captions are incomplete, so a
model trained on them alone learns to read only what captions talk about).

    from minijarvis.data.synthetic import SyntheticLlava, write_llava_folder
    record, image = SyntheticLlava("caption", size=1000)[3]      # on the fly, deterministic per (seed, i)
    write_llava_folder("data/shapes", "instruct", n=5000)          # LLaVA JSON + PNGs, cached
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from minijarvis.data.shapes import (COLORS, DEFAULT_IMAGE_SIZE, KINDS, Scene, SceneObject, render, scene_from_seed,
                                    scene_seed)

TEXT_ONLY_EVERY = 10  # instruct records with index % 10 == 9 are text-only, like LLaVA-665k's ShareGPT rows

SYNONYMS = {"cube": ("cube", "box", "block"), "sphere": ("sphere", "ball"), "cone": ("cone",),
            "cylinder": ("cylinder",)}
GROUND_PHRASES = {"grass": ("a grassy field", "green grass"), "sand": ("a sandy plain", "sand"),
                  "floor": ("a grey floor", "a tiled floor"), "snow": ("snowy ground", "snow")}
# Caption templates name one or two objects and never a count, a relation or depth: the benchmark's
# questions must not be answerable from captions. {a}/{b}: "a red cube"; {g}: the ground.
CAPTIONS_1 = ("{A} on {g}.", "{A} standing on {g}.", "A simple rendering of {a}.", "{A} in a synthetic scene.",
              "Computer graphics image showing {a} on {g}.", "Toy scene with {a}.")
CAPTIONS_2 = ("{A} and {b} on {g}.", "A rendered scene featuring {a} and {b}.", "{A} and {b} in a toy scene.",
              "Simple shapes on {g}, including {a} and {b}.", "{A} and {b} in a computer-generated scene.")
BRIEF_PROMPTS = ("Describe the image briefly.", "Give a short caption for this picture.",
                 "Summarize the visual content of the image.", "Write a concise description of the image.",
                 "What does this image show? Answer briefly.")
SHORT_ANSWER = "\nAnswer the question using a single word or phrase."  # as LLaVA-665k's VQA rows


def _pick(rng: np.random.Generator, seq):
    return seq[rng.integers(len(seq))]


def _with_article(phrase: str) -> str:
    return ("an " if phrase[0] in "aeiou" else "a ") + phrase


def caption_for(scene: Scene, rng=None) -> str:
    """An incomplete caption: names 1 or 2 objects (always fewer than the scene holds) and maybe the ground;
    never counts, positions, relations or depth."""
    if len(scene.objects) < 2:
        raise ValueError("a caption must leave something out; scenes for captions need >= 2 objects")
    rng = np.random.default_rng(rng)
    m = int(rng.integers(1, min(2, len(scene.objects) - 1) + 1))
    objs = [scene.objects[i] for i in rng.permutation(len(scene.objects))[:m]]
    names = [_with_article(f"{o.color} {_pick(rng, SYNONYMS[o.kind])}") for o in objs]
    text = _pick(rng, CAPTIONS_1 if m == 1 else CAPTIONS_2)
    fields = {"a": names[0], "A": names[0].capitalize(), "b": names[-1], "g": _pick(rng, GROUND_PHRASES[scene.ground])}
    return text.format(**fields)


def _left_neighbour(scene: Scene, o: SceneObject, margin: float = 0.1):
    """The object whose centre is nearest to the left of o's (by >= margin), if unambiguous (runner-up 0.05 further)."""
    cand = sorted((o.center[0] - p.center[0], p.name) for p in scene.objects if o.center[0] - p.center[0] >= margin)
    if cand and (len(cand) == 1 or cand[1][0] - cand[0][0] >= 0.05):
        return cand[0][1]
    return None


def _image_qa(scene: Scene, rng: np.random.Generator) -> list[tuple[str, str]]:
    """1-3 short question/answer pairs about colours, kinds, existence and left/right."""
    objs, qa = scene.objects, []
    kinds = [o.kind for o in objs]
    colors = [o.color for o in objs]
    for task in rng.permutation(["color", "shape", "exist", "left", "side"])[: int(rng.integers(1, 4))]:
        o = objs[rng.integers(len(objs))]
        if task == "color" and kinds.count(o.kind) == 1:
            qa.append((f"What color is the {o.kind}?", f"{o.color.capitalize()}."))
        elif task == "shape" and colors.count(o.color) == 1:
            qa.append((f"What shape is the {o.color} object?", f"{o.kind.capitalize()}."))
        elif task == "exist":
            present = rng.random() < 0.5
            absent = [(k, c) for k in KINDS for c in COLORS if f"{c} {k}" not in {p.name for p in objs}]
            name = o.name if present else "{1} {0}".format(*_pick(rng, absent))
            qa.append((f"Is there {_with_article(name)} in the image?", "Yes." if present else "No."))
        elif task == "left" and (left := _left_neighbour(scene, o)) is not None:
            qa.append((f"What is to the left of the {o.name}?", f"The {left}."))
        elif task == "side" and abs(o.center[0] - 0.5) > 0.15:
            qa.append((f"Is the {o.name} on the left or the right side of the image?",
                       "Left." if o.center[0] < 0.5 else "Right."))
    if not qa:  # every scene has a nameable object, so the existence question always works
        qa.append((f"Is there {_with_article(objs[0].name)} in the image?", "Yes."))
    return qa


def _text_qa(rng: np.random.Generator) -> list[tuple[str, str]]:
    """1-2 text-only turns (LLaVA-665k mixes in ShareGPT conversations that carry no image)."""
    mixes = {("red", "yellow"): "orange", ("blue", "yellow"): "green", ("red", "blue"): "purple"}
    bank = [("Which of these shapes can roll in any direction: a cube, a cone or a sphere?", "A sphere."),
            ("How many faces does a cube have?", "A cube has six faces."),
            ("Which shape has a circular base and a single point at the top?", "A cone."),
            ("Which shape looks like a can: a cylinder or a cone?", "A cylinder.")]
    for (c1, c2), c in mixes.items():
        bank.append((f"What color do you get by mixing {c1} and {c2} paint?", f"{c.capitalize()}."))
    for w in list(COLORS) + list(KINDS):
        bank.append((f"Write the word '{w}' in capital letters.", w.upper()))
        bank.append((f"Spell the word '{w}' backwards.", w[::-1]))
    return [bank[i] for i in rng.choice(len(bank), size=int(rng.integers(1, 3)), replace=False)]


def _conversation(turns: list[tuple[str, str]], with_image: bool, suffix: str = "") -> list[dict]:
    conv = []
    for t, (q, a) in enumerate(turns):
        q = ("<image>\n" if with_image and t == 0 else "") + q + suffix
        conv += [{"from": "human", "value": q}, {"from": "gpt", "value": a}]
    return conv


def caption_record(index: int, seed: int = 0, image_size: int = DEFAULT_IMAGE_SIZE) -> tuple[dict, Image.Image]:
    """Stage-1 record, LLaVA-558k shaped: human "<image>\\n<brief instruction>", gpt the (incomplete) caption.
    Its scene is scene_from_seed(scene_seed("caption", index, seed)). The image path is relative to the
    folder of the JSON file written by write_llava_folder."""
    s = scene_seed("caption", index, seed)
    scene, rng = scene_from_seed(s), np.random.default_rng([s, 1])  # the text gets its own stream
    turns = [(_pick(rng, BRIEF_PROMPTS), caption_for(scene, rng))]
    record = {"id": f"shapes-caption-{index:06d}", "image": f"images/caption-{index:06d}.png",
              "conversations": _conversation(turns, with_image=True)}
    return record, render(scene, image_size)


def instruction_record(index: int, seed: int = 0, image_size: int = DEFAULT_IMAGE_SIZE):
    """Stage-2 record, LLaVA-665k shaped: 1-3 short Q&A turns about the image, "<image>\\n" in the first
    human turn. Every TEXT_ONLY_EVERY-th record (index % 10 == 9) is text-only: no "image" key, no
    <image> token, and None in place of the image. Returns (record, PIL image or None). The scene of an
    image record is scene_from_seed(scene_seed("instruct", index, seed))."""
    s = scene_seed("instruct", index, seed)
    rng, rid = np.random.default_rng([s, 1]), f"shapes-instruct-{index:06d}"
    if index % TEXT_ONLY_EVERY == TEXT_ONLY_EVERY - 1:
        return {"id": rid, "conversations": _conversation(_text_qa(rng), with_image=False)}, None
    scene = scene_from_seed(s)
    record = {"id": rid, "image": f"images/instruct-{index:06d}.png",
              "conversations": _conversation(_image_qa(scene, rng), with_image=True, suffix=SHORT_ANSWER)}
    return record, render(scene, image_size)


class SyntheticLlava:
    """Torch-free, on-the-fly dataset of LLaVA records: ds[i] -> (record, PIL image or None), the same
    for the same (kind, seed, i). kind "caption" (stage 1) or "instruct" (stage 2)."""

    def __init__(self, kind: str = "caption", size: int = 1000, seed: int = 0, image_size: int = DEFAULT_IMAGE_SIZE):
        if kind not in ("caption", "instruct"):
            raise ValueError(f"kind must be 'caption' or 'instruct', got {kind!r}")
        if size < 1:
            raise ValueError(f"size must be >= 1, got {size}")
        self.kind, self.size, self.seed, self.image_size = kind, size, seed, image_size

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, i: int):
        if not -self.size <= i < self.size:
            raise IndexError(f"index {i} out of range for {self.size} records")
        make = caption_record if self.kind == "caption" else instruction_record
        return make(i % self.size, seed=self.seed, image_size=self.image_size)


def write_llava_folder(out_dir, kind: str, n: int, seed: int = 0, image_size: int = DEFAULT_IMAGE_SIZE,
                       save_size: int | None = None) -> Path:
    """Write n records as LLaVA JSON (out_dir/<kind>.json) with PNGs under out_dir/images/, image paths
    relative to out_dir. ``save_size``: store each image (rendered at ``image_size``) already fitted to
    that square size, bicubic, exactly as ``data.images.load_image`` fits a square image for an
    encoder of that size, so loading it is the same tensor and a cheaper decode (study.py). Cached:
    if out_dir/<kind>.meta.json says the same (n, seed, sizes) were written, nothing is redone.
    Returns the JSON path."""
    out = Path(out_dir)
    path, meta_path = out / f"{kind}.json", out / f"{kind}.meta.json"
    meta = {"kind": kind, "n": n, "seed": seed, "image_size": image_size}
    if save_size is not None:
        meta["save_size"] = save_size
    if path.exists() and meta_path.exists() and json.loads(meta_path.read_text()) == meta:
        return path
    ds = SyntheticLlava(kind, n, seed, image_size)  # validates kind and n
    (out / "images").mkdir(parents=True, exist_ok=True)
    records = []
    for i in tqdm(range(n), desc=f"shapes {kind}", unit="img"):
        record, image = ds[i]
        if image is not None:
            save_image(image, out / record["image"], save_size)
        records.append(record)
    path.write_text(json.dumps(records, indent=1))
    meta_path.write_text(json.dumps(meta))
    return path


def save_image(image, path, size: int | None = None) -> None:
    """PNG (fast compression, still lossless) of a square PIL image, first fitted to ``size`` x
    ``size`` the way ``load_image`` fits it (bicubic) when ``size`` is given."""
    if size is not None and image.size != (size, size):
        image = image.resize((size, size), Image.BICUBIC)
    image.save(path, compress_level=1)
