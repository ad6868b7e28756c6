"""Tests for the synthetic scenes (minijarvis.data.shapes) and ShapesBench (minijarvis.evaluation.shapesbench)."""

import hashlib
import json
import math
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from minijarvis.data.shapes import COLORS, DEFAULT_IMAGE_SIZE, make_scene, render, sample_scene, scene_from_seed, scene_seed
from minijarvis.data.synthetic import SYNONYMS, SyntheticLlava, caption_record, instruction_record, write_llava_folder
from minijarvis.evaluation.shapesbench import (ANSWER_INSTRUCTION, COUNT_MIN_VISIBLE, DEPTH_RATIO, TASKS, bench_item, bench_seed,
                                    shapes_bench, write_bench_jsonl)

# Words a caption would need to answer a benchmark question: counts, 2D relations, depth and distance.
BENCH_WORDS = {"zero", "one", "two", "three", "four", "five", "six", "seven", "single", "several", "many",
               "few", "both", "pair", "couple", "number", "left", "right", "above", "below", "under", "over", "top",
               "bottom", "behind", "front", "near", "nearer", "nearest", "close", "closer", "closest", "far",
               "farther", "farthest", "further", "next", "beside", "between", "camera", "distance", "distances",
               "depth", "foreground", "background"}
SYNONYM_TO_KIND = {w: k for k, ws in SYNONYMS.items() for w in ws}


def pixels(img: Image.Image) -> np.ndarray:
    return np.asarray(img)


def mentioned(caption: str) -> list[tuple[str, str]]:
    """(colour, kind) pairs named in a caption: every mention is '<colour> <kind word>'."""
    words = re.findall(r"[a-z]+", caption.lower())
    return [(SYNONYM_TO_KIND[b], a) for a, b in zip(words, words[1:]) if a in COLORS and b in SYNONYM_TO_KIND]


def test_same_seed_gives_identical_scene_pixels_and_text():
    assert scene_from_seed(123) == scene_from_seed(123), "scene_from_seed is not deterministic"
    first, again = render(scene_from_seed(123)), render(scene_from_seed(123))
    assert (pixels(first) == pixels(again)).all(), "render is not deterministic"
    assert scene_from_seed(123) != scene_from_seed(124), "different seeds gave the same scene"
    for make in (caption_record, instruction_record):
        (r1, im1), (r2, im2) = make(7, seed=3, image_size=64), make(7, seed=3, image_size=64)
        assert r1 == r2 and (pixels(im1) == pixels(im2)).all(), f"{make.__name__} not deterministic per (seed, index)"
    assert (pixels(caption_record(7, seed=4)[1]) != pixels(caption_record(7, seed=3)[1])).any(), "seed is ignored"


def test_sampled_scenes_stay_bit_for_bit_the_same():
    """The study's data must be reproducible bit for bit, so sample_scene must keep returning exactly
    these scenes (every float as repr writes it; the values the sampler gave before it was sped up). If
    this fails, every dataset and benchmark drawn from these seeds has changed. The visible fractions come
    from Pillow's rasterisation, so a Pillow that fills polygons differently would fail this too."""
    from minijarvis.data.shapes import Scene, SceneObject
    assert scene_from_seed(0) == Scene(objects=(
        SceneObject(kind='cone', color='yellow', x=0.6393526018238548, z=2.7969244680375893, bbox=(
            0.5855770702995752, 0.43150711514935053, 0.880828741349714, 0.7772012983032044), visible=1.0),
        SceneObject(kind='sphere', color='orange', x=-0.7671396644461992, z=2.7905396483246734, bbox=(
            0.08175126981374287, 0.4316707250943636, 0.3684341701911977, 0.7183536254718184), visible=1.0),
        SceneObject(kind='cube', color='orange', x=-0.2965713148874431, z=5.130605584986465, bbox=(
            0.3527521894663649, 0.39616240517004603, 0.5218637303944359, 0.5713894261600888),
            visible=0.8627450980392157),
        SceneObject(kind='sphere', color='green', x=-2.9311444625750145, z=9.17701486371481, bbox=(
            0.1370121970984164, 0.38179357917254597, 0.22418651378860033, 0.4689678958627299),
            visible=0.5147058823529411),
        SceneObject(kind='cube', color='red', x=0.5157606304865642, z=7.7676862490388485, bbox=(
            0.5141730016257893, 0.38448673882686607, 0.6242941948845921, 0.4957278209465631),
            visible=0.6335877862595419)), ground='grass')
    scenes = ([scene_from_seed(s) for s in range(24)]
              + [sample_scene(s, n_objects=6, min_visible=0.8) for s in range(4)]
              + [sample_scene(s, attrs=[("cube", None), (None, "red"), ("sphere", "blue")]) for s in range(4)])
    assert hashlib.sha256(repr(scenes).encode()).hexdigest() == \
        "329c455956adc1e772101533dd1f404bf6a32bd03cb7ac8266117a55be5e604d", "sampled scenes changed (seeds 0-23 etc.)"


def test_scenes_have_unique_names_in_frame_and_visible_objects():
    for s in range(200):
        scene = scene_from_seed(s)
        names = [o.name for o in scene.objects]
        assert 2 <= len(names) <= 5, f"seed {s}: default scenes hold 2-5 objects, got {len(names)}"
        assert len(set(names)) == len(names), f"seed {s}: colour+kind names must be unique, got {names}"
        for o in scene.objects:
            assert 0 < o.bbox[0] < o.bbox[2] < 1 and 0 < o.bbox[1] < o.bbox[3] < 1, f"seed {s}: {o.name} out of frame"
            assert o.visible >= 0.5, f"seed {s}: {o.name} is {o.visible:.2f} visible, below 0.5"


def test_nearer_object_is_larger_and_lower_on_screen():
    # Same kind: strictly, for any depth difference. Different kinds (a cube's front face sits nearer than
    # a sphere's centre): whenever the depths differ by the Depth task's ratio.
    for s in range(300):
        objs = scene_from_seed(s).objects
        for a in objs:
            for b in objs:
                if a.z < b.z and (a.kind == b.kind or b.z / a.z >= DEPTH_RATIO):
                    assert a.bbox[3] - a.bbox[1] > b.bbox[3] - b.bbox[1], f"seed {s}: nearer {a.name} not taller"
                    assert a.bbox[3] > b.bbox[3], f"seed {s}: nearer {a.name} does not stand lower on screen"


def test_unoccluded_object_shows_its_colour_at_its_bbox_centre():
    base = {c: np.array(rgb, float) / np.linalg.norm(rgb) for c, rgb in COLORS.items()}
    checked = 0
    for s in range(60):
        scene = scene_from_seed(s)
        img = pixels(render(scene, 224)).astype(float)
        for o in scene.objects:
            if o.visible < 1.0:
                continue
            u, v = (min(int(c * 224), 223) for c in o.center)
            rgb = img[v, u] / np.linalg.norm(img[v, u])
            nearest = max(base, key=lambda c: base[c] @ rgb)
            assert nearest == o.color, f"seed {s}: {o.name} at its bbox centre looks {nearest}"
            checked += 1
    assert checked > 100, "too few unoccluded objects were checked"


def test_nearer_objects_occlude_farther_ones():
    # A blue cube right in front of a red one (listed first, so only depth can decide the painting order):
    # the red cube's centre must show blue, and its visible fraction must drop.
    scene = make_scene([("cube", "blue", 0.0, 3.0), ("cube", "red", 0.0, 6.0)], ground="floor")
    img = pixels(render(scene, 224)).astype(int)
    u, v = (int(c * 224) for c in scene.objects[1].center)
    assert img[v, u, 2] > img[v, u, 0], "the farther red cube was painted over the nearer blue one"
    assert scene.objects[1].visible < 0.5 and scene.objects[0].visible == 1.0, "visible fractions ignore occlusion"


def test_captions_mention_only_part_of_the_scene_and_only_what_is_there():
    for i in range(200):
        record, _ = caption_record(i, image_size=32)
        scene = scene_from_seed(scene_seed("caption", i))
        names = mentioned(record["conversations"][1]["value"])
        assert 1 <= len(names) < len(scene.objects), f"record {i}: mentions {names} of {len(scene.objects)} objects"
        for kind, color in names:
            assert f"{color} {kind}" in {o.name for o in scene.objects}, f"record {i}: {color} {kind} is not there"


def test_captions_contain_no_bench_answering_words():
    used = Counter()
    for i in range(200):
        record, _ = caption_record(i, image_size=32)
        assert record["conversations"][0]["value"].startswith("<image>\n"), "stage-1 human turn must start with <image>"
        words = set(re.findall(r"[a-z]+", record["conversations"][1]["value"].lower()))
        assert not words & BENCH_WORDS, f"record {i}: caption uses benchmark words {words & BENCH_WORDS}"
        assert not re.search(r"\d", record["conversations"][1]["value"]), f"record {i}: caption has a digit"
        used[record["conversations"][1]["value"].split()[0]] += 1
    assert len(used) >= 4, "captions show too little variety in phrasing"


def test_instruction_answers_agree_with_the_scene():
    checked = 0
    for i in range(200):
        record, image = instruction_record(i, image_size=32)
        if image is None:
            continue
        scene = scene_from_seed(scene_seed("instruct", i))
        by_name = {o.name: o for o in scene.objects}
        conv = record["conversations"]
        for q, a in zip(conv[0::2], conv[1::2]):
            q, a = q["value"], a["value"]
            if m := re.search(r"What color is the (\w+)\?", q):
                assert [o.color for o in scene.objects if o.kind == m[1]] == [a.rstrip(".").lower()], f"record {i}: {q}"
            elif m := re.search(r"What shape is the (\w+) object\?", q):
                assert [o.kind for o in scene.objects if o.color == m[1]] == [a.rstrip(".").lower()], f"record {i}: {q}"
            elif m := re.search(r"Is there an? (\w+ \w+) in the image\?", q):
                assert (m[1] in by_name) == (a == "Yes."), f"record {i}: {q} -> {a}"
            elif m := re.search(r"What is to the left of the (\w+ \w+)\?", q):
                other = by_name[a[len("The "):].rstrip(".")]
                assert other.center[0] < by_name[m[1]].center[0], f"record {i}: {q} -> {a} is not on its left"
            checked += 1
    assert checked > 200, "too few instruction answers were checked"


def test_instruct_data_has_text_only_rows_without_image_token():
    rows = [instruction_record(i, image_size=32) for i in range(40)]
    text_only = [(r, im) for r, im in rows if "image" not in r]
    assert len(text_only) == 4, f"expected every 10th instruct record text-only, got {len(text_only)} of 40"
    for r, im in rows:
        n_tokens = sum(t["value"].count("<image>") for t in r["conversations"])
        if "image" in r:
            assert n_tokens == 1 and r["conversations"][0]["value"].startswith("<image>\n"), f"{r['id']}: bad <image>"
        else:
            assert n_tokens == 0 and im is None, f"{r['id']}: text-only row carries an image"
        assert [t["from"] for t in r["conversations"]] == ["human", "gpt"] * (len(r["conversations"]) // 2)


def test_synthetic_llava_indexes_like_a_dataset():
    ds = SyntheticLlava("caption", size=5, seed=2, image_size=48)
    assert len(ds) == 5
    record, image = ds[4]
    assert record == caption_record(4, seed=2)[0] and image.size == (48, 48) and image.mode == "RGB"
    with pytest.raises(IndexError):
        ds[5]
    with pytest.raises(ValueError, match="kind"):
        SyntheticLlava("captions")


def test_write_llava_folder_round_trips_through_json(tmp_path):
    for kind in ("caption", "instruct"):
        path = write_llava_folder(tmp_path, kind, n=12, seed=1, image_size=40)
        assert path == tmp_path / f"{kind}.json"
        records = json.loads(path.read_text())
        assert records == [SyntheticLlava(kind, 12, seed=1)[i][0] for i in range(12)], f"{kind}: JSON != on-the-fly"
        for r in records:
            if "image" in r:
                assert not Path(r["image"]).is_absolute() and (tmp_path / r["image"]).is_file(), f"{r['image']} missing"
        with Image.open(tmp_path / records[0]["image"]) as im:
            expected = SyntheticLlava(kind, 12, seed=1, image_size=40)[0][1]
            assert (np.asarray(im.convert("RGB")) == pixels(expected)).all(), f"{kind}: PNG differs from the render"
    mtime = (tmp_path / "caption.json").stat().st_mtime_ns
    write_llava_folder(tmp_path, "caption", n=12, seed=1, image_size=40)
    assert (tmp_path / "caption.json").stat().st_mtime_ns == mtime, "an identical second call should be cached"


def _find(scene, name):
    matches = [o for o in scene.objects if o.name == name]
    assert len(matches) == 1, f"'{name}' must name exactly one object, found {len(matches)}"
    return matches[0]


def test_bench_answers_follow_from_scene_geometry():
    for item in shapes_bench(n_per_task=24, seed=5, image_size=32, render_image=False):
        scene, q, answer = item["scene"], item["question"], item["choices"][item["answer_index"]]
        assert len(set(item["choices"])) == len(item["choices"]), f"{item['id']}: repeated choices"
        if item["task"] == "Count":
            m = re.fullmatch(r"How many (\w+?)s are in the image\?|How many (\w+) objects are in the image\?", q)
            hits = [o for o in scene.objects if o.kind == m[1] or o.color == m[2]]
            assert int(answer) == len(hits), f"{item['id']}: answer {answer}, scene has {len(hits)}"
            assert all(o.visible >= 0.5 for o in hits), f"{item['id']}: a counted object is mostly hidden"
        elif item["task"] == "Relation":
            m = re.search(r"positions of the (\w+ \w+) \(annotated by the magenta box\) and the (\w+ \w+) "
                          r"\(annotated by the cyan box\) in", q)
            a, b = _find(scene, m[1]), _find(scene, m[2])
            assert item["marks"] == [a.name, b.name]
            du, dv = a.center[0] - b.center[0], a.center[1] - b.center[1]
            truth = {"left": du < -0.1, "right": du > 0.1, "above": dv < -0.1, "below": dv > 0.1}
            assert truth[answer], f"{item['id']}: {answer} is wrong (du={du:.2f}, dv={dv:.2f})"
            if answer in ("left", "right"):  # the same order must hold in world coordinates (u = x/z)
                assert (a.x / a.z < b.x / b.z) == (answer == "left"), f"{item['id']}: world disagrees"
            else:  # on a ground plane seen from above, higher on screen means farther away
                assert (a.z > b.z) == (answer == "above"), f"{item['id']}: world disagrees"
        elif item["task"] == "Depth":
            assert item["marks"] == item["choices"] and "(highlighted by a cyan box)?" in q
            near, far = (_find(scene, c) for c in (answer, item["choices"][1 - item["answer_index"]]))
            assert far.z / near.z >= 1.3 and math.hypot(near.x, near.z) < math.hypot(far.x, far.z), \
                f"{item['id']}: {answer} is not clearly closer to the camera"
        else:
            ref = _find(scene, re.search(r"closer to the (\w+ \w+) \(highlighted by a magenta box\), the", q)[1])
            assert item["marks"] == [ref.name] + item["choices"]
            near, far = (_find(scene, c) for c in (answer, item["choices"][1 - item["answer_index"]]))
            d = lambda o: math.hypot(o.x - ref.x, o.z - ref.z)  # noqa: E731
            assert d(far) >= 1.4 * d(near), f"{item['id']}: {answer} is not clearly closer to the {ref.name}"


def test_count_choices_are_the_counts_one_to_four_so_a_letter_is_a_count():
    items = [bench_item("Count", i, seed=3, render_image=False) for i in range(16)]
    assert all(it["choices"] == ["1", "2", "3", "4"] for it in items)
    assert [it["choices"][it["answer_index"]] for it in items[:4]] == ["1", "2", "3", "4"]
    assert all(bench_item("Count", i, seed=3, render_image=False, max_objects=3)["choices"] == ["1", "2", "3", "4"]
               for i in range(8))


def test_bench_answers_are_balanced_over_letters():
    items = shapes_bench(n_per_task=8, render_image=False)
    for task in TASKS:
        letters = Counter(it["answer"] for it in items if it["task"] == task)
        assert len(set(letters.values())) == 1, f"{task}: answer letters unbalanced {dict(letters)}"
        assert len(letters) == (4 if task == "Count" else 2), f"{task}: some letter is never correct {dict(letters)}"
        for it in items:
            assert it["answer"] == f"({'ABCD'[it['answer_index']]})"


def test_bench_items_are_deterministic_and_cvbench_formatted():
    a, b = bench_item("Depth", 3, seed=1, image_size=48), bench_item("Depth", 3, seed=1, image_size=48)
    assert a["prompt"] == b["prompt"] and (pixels(a["image"]) == pixels(b["image"])).all(), "bench not deterministic"
    assert a["type"] == "3D" and bench_item("Count", 0)["type"] == "2D"
    lines = a["prompt"].split("\n")
    assert lines[0] == a["question"] and lines[-1] == ANSWER_INSTRUCTION, "prompt = question, choices, instruction"
    assert lines[1:-1] == [f"({L}) {c}" for L, c in zip("AB", a["choices"])], f"bad choice lines {lines[1:-1]}"


def test_train_and_bench_seed_spaces_are_disjoint():
    train = {scene_seed(k, i) for k in ("caption", "instruct") for i in range(3000)}
    bench = {bench_seed(t, i) for t in TASKS for i in range(3000)}
    assert len(train) == 6000 and not train & bench, "training and benchmark scene seeds intersect"
    digest = lambda im: hashlib.sha1(im.tobytes()).hexdigest()  # noqa: E731
    train_imgs = {digest(caption_record(i, image_size=32)[1]) for i in range(60)}
    bench_imgs = {digest(it["image"]) for it in shapes_bench(n_per_task=15, image_size=32)}
    assert not train_imgs & bench_imgs, "a benchmark image also appears in the training data"
    with pytest.raises(ValueError, match="split"):
        scene_seed("test", 0)


def test_write_bench_jsonl_uses_cvbench_layout(tmp_path):
    path = write_bench_jsonl(tmp_path, n_per_task=3, image_size=32)
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert path.name == "test.jsonl" and len(rows) == 12
    assert [r["idx"] for r in rows] == list(range(12))
    for r in rows:
        for key in ("idx", "type", "task", "image", "question", "choices", "answer", "prompt", "source"):
            assert key in r, f"row {r['idx']} lacks CV-Bench field {key}"
        assert re.fullmatch(r"\([A-D]\)", r["answer"]) and r["source"] == "ShapesBench"
        assert r["image"].startswith(f"img/{r['type']}/") and (tmp_path / r["image"]).is_file(), f"{r['image']} missing"


def test_invalid_inputs_raise_value_error():
    with pytest.raises(ValueError, match="unique"):
        sample_scene(0, attrs=[("cube", "red"), ("cube", "red")])
    with pytest.raises(ValueError, match="size"):
        render(scene_from_seed(0), size=8)
    with pytest.raises(ValueError, match="task"):
        bench_seed("Counting", 0)
    with pytest.raises(ValueError, match="kind"):
        write_llava_folder("/nonexistent/never", "captions", n=1)


def test_images_saved_at_the_encoder_size_load_as_the_same_tensor(tmp_path):
    from minijarvis.data.images import load_image
    from minijarvis.data.synthetic import save_image
    scene_image = render(scene_from_seed(3))  # 224 px, as the benchmark renders
    save_image(scene_image, tmp_path / "small.png", 96)
    assert Image.open(tmp_path / "small.png").size == (96, 96)
    for aspect in ("pad", "crop", "resize"):
        want = load_image(scene_image, 96, (0.5, 0.5, 0.5), aspect)
        assert torch.equal(load_image(tmp_path / "small.png", 96, (0.5, 0.5, 0.5), aspect), want), aspect
    path = write_llava_folder(tmp_path / "f", "caption", n=3, seed=1, save_size=48)
    assert Image.open(tmp_path / "f" / json.loads(path.read_text())[0]["image"]).size == (48, 48)


def test_bench_items_with_max_objects_are_small_scenes_and_the_default_is_untouched():
    for task in TASKS:
        for i in range(8):
            small = bench_item(task, i, seed=9, render_image=False, max_objects=3)
            most = max(3, int(small["choices"][small["answer_index"]])) if task == "Count" else 3
            assert (3 if task == "Distance" else 1) <= len(small["scene"].objects) <= most
            default = bench_item(task, i, seed=9, render_image=False)
            assert default == bench_item(task, i, seed=9, render_image=False, max_objects=None)
    with pytest.raises(ValueError, match="max_objects"):
        bench_item("Count", 0, max_objects=2)


def test_count_extras_draws_the_other_objects_apart_from_the_count_and_leaves_the_bench_untouched():
    from collections import Counter
    from minijarvis.evaluation.shapesbench import COUNT_MAX_OBJECTS
    totals = {c: Counter() for c in range(1, 5)}
    for i in range(160):
        item = bench_item("Count", i, seed=4, render_image=False, count_extras=3)
        c, n = item["answer_index"] + 1, len(item["scene"].objects)
        assert item["answer_index"] == i % 4 and c <= n <= min(c + 3, COUNT_MAX_OBJECTS)
        q = item["question"].split()[2]  # "How many cubes ..." / "How many red objects ..."
        named = [o for o in item["scene"].objects if f"{o.kind}s" == q or o.color == q]
        assert len(named) == c
        totals[c][n - c] += 1
        assert bench_item("Count", i, seed=4, render_image=False) == bench_item("Count", i, seed=4, render_image=False,
                                                                                 count_extras=None)
    assert totals[1][0] > 0 and totals[1][3] > 0  # a lone counted object, or one among three others
    assert set(totals[4]) == {0, 1, 2}  # capped at COUNT_MAX_OBJECTS in all
    with pytest.raises(ValueError, match="count_extras"):
        bench_item("Count", 0, count_extras=6)


def test_count_all_items_ask_for_the_number_of_objects_balanced_and_apart_from_the_bench():
    from minijarvis.evaluation.shapesbench import COUNT_MAX_OBJECTS, count_all_item
    items = [count_all_item(i, seed=3) for i in range(2 * COUNT_MAX_OBJECTS)]
    for it in items:
        n = len(it["scene"].objects)
        assert it["choices"] == [str(k) for k in range(1, COUNT_MAX_OBJECTS + 1)]
        assert it["choices"][it["answer_index"]] == str(n) and it["answer"] == f"({'ABCDEF'[n - 1]})"
        assert min(o.visible for o in it["scene"].objects) >= COUNT_MIN_VISIBLE
        assert it["image"].size == (DEFAULT_IMAGE_SIZE, DEFAULT_IMAGE_SIZE)
    assert sorted(len(it["scene"].objects) for it in items) == sorted(2 * list(range(1, COUNT_MAX_OBJECTS + 1)))
    bench_seeds = {bench_item(t, i, 3, render_image=False)["seed"] for t in TASKS for i in range(2 * COUNT_MAX_OBJECTS)}
    assert not bench_seeds & {it["seed"] for it in items}
    assert count_all_item(5, seed=3)["seed"] == items[5]["seed"]  # deterministic


def test_bench_marks_outline_the_named_objects_in_cvbench_colours():
    from minijarvis.evaluation.shapesbench import MARKS
    for task in TASKS:
        item = bench_item(task, 5, seed=2)
        plain = pixels(render(item["scene"]))
        drawn = pixels(item["image"])
        if task == "Count":
            assert item["marks"] == [] and (drawn == plain).all(), "Count items carry no boxes"
            continue
        assert len(item["marks"]) == (3 if task == "Distance" else 2)
        objects = {o.name: o for o in item["scene"].objects}
        side = drawn.shape[0]
        for name, rgb in zip(item["marks"], MARKS.values()):
            assert f"{name} (" in item["question"] and f"{list(MARKS)[item['marks'].index(name)]} box)" in item["question"]
            u0, v0, u1, v1 = (int(side * f) for f in objects[name].bbox)
            ring = np.zeros(drawn.shape[:2], bool)
            ring[max(0, v0 - 6):v1 + 6, max(0, u0 - 6):u1 + 6] = True
            ring[v0 + 3:v1 - 3, u0 + 3:u1 - 3] = False
            hit = (np.abs(drawn.astype(int) - np.array(rgb)).sum(-1) < 30) & ring
            assert hit.sum() > 2 * (u1 - u0), f"{task}: no {rgb} box around the {name}"
