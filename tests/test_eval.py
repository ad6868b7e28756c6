"""eval.py + minijarvis.evaluation.benchmarks: each benchmark format from a tiny fixture, exact scores, the CLI.

Fixture images are solid grey squares whose level encodes the row (level = 10 * k), so the fake
model below can answer each row as the test scripts it, and every number is known exactly.
"""
from __future__ import annotations

import csv
import json

import pytest
import torch
from PIL import Image

import eval as evalpy
from minijarvis.evaluation import benchmarks as B
from minijarvis.errors import BadRecord
from minijarvis.model import JarvisModel
from minijarvis.training.checkpoint import load_checkpoint, save_checkpoint


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """The tiny model's matrices are too small to gain from threads, and on a shared 2-core machine
    two processes with 2 OpenMP threads each slow each other down ~10x."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# ---------------------------------------------------------------- fixtures in each real format
def _image(path, k: int) -> None:
    """A 24x24 grey square of level 10 * k (PNG or JPG by the suffix)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (24, 24), (10 * k,) * 3).save(path)


def _jsonl(path, rows) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def write_cvbench(root):
    """ADE20K: 2 Count rows, COCO: 4 Relation rows (2D); Omni3D: 4 Depth rows (3D)."""
    plan = [("2D", "Count", "ADE20K")] * 2 + [("2D", "Relation", "COCO")] * 4 + [("3D", "Depth", "Omni3D")] * 4
    rows = []
    for k, (kind, task, source) in enumerate(plan):
        rel = f"img/{kind}/{task.lower()}/{source.lower()}_{k}.png"
        _image(root / rel, k)
        choices = ["0", "1", "2", "3"] if task == "Count" else ["left", "right"]
        rows.append(dict(idx=k, type=kind, task=task, image=rel, question=f"q{k}?", choices=choices,
                         answer="(A)", source=source, filename=rel,
                         prompt=f"q{k}? Select from the following choices.\n" + "\n".join(
                             f"({'ABCD'[i]}) {c}" for i, c in enumerate(choices))))
    _jsonl(root / "test.jsonl", rows)


def write_mmvp(root):
    """Two pairs: Index 1-4, images 'MMVP Images/<Index>.jpg' (grey level 10 * Index)."""
    root.mkdir(parents=True, exist_ok=True)
    with open(root / "Questions.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["Index", "Question", "Options", "Correct Answer"])
        for i in range(1, 5):
            w.writerow([i, "Is the door open?", "(a) Open (b) Closed", "(a)" if i % 2 else "(b)"])
            _image(root / "MMVP Images" / f"{i}.jpg", i)


def write_blink(root):
    """Counting.jsonl (2 rows, sub-task from the file name), other.jsonl (1 row with sub_task,
    1 multi-image row, 1 row with a bad answer)."""
    def row(k, **extra):
        _image(root / "images" / f"{k}.png", k)
        return dict(idx=f"val_{k}", prompt=f"q{k}?\n(A) yes\n(B) no", choices=["yes", "no"], answer="(B)",
                    image_1=f"images/{k}.png", image_2=None, **extra)
    _jsonl(root / "Counting.jsonl", [row(1), row(2)])
    _jsonl(root / "other.jsonl", [row(3, sub_task="Depth"),
                                  row(4, sub_task="Jigsaw") | {"image_2": "images/4.png"},
                                  row(5, sub_task="Depth") | {"answer": "(Z)"}])


def write_realworldqa(root):
    """Multiple choice with a letter answer, with a text answer, and one open question."""
    mc = ("Which way is the car facing?\n\nA. Left\nB. Straight\nC. Right\n\n"
          "Please answer directly with only the letter of the correct option and nothing else.")
    rows = [dict(question=mc, answer="C", image="images/1.png"),
            dict(question=mc, answer="Straight", image="images/2.png"),
            dict(question="How many cars are there? Answer with a number.", answer="3", image="images/3.png")]
    for k in (1, 2, 3):
        _image(root / "images" / f"{k}.png", k)
    _jsonl(root / "test.jsonl", rows)


class FakeModel:
    """Stands in for JarvisModel: replies[k] (generate) or scores[k] (likelihood) for the image of
    grey level 10 * k. Records the option strings it was asked to score."""

    image_size, image_mean, image_aspect = 24, (0.5, 0.5, 0.5), "pad"

    def __init__(self, replies=None, scores=None):
        self.replies, self.scores, self.scored = replies or {}, scores or {}, []

    def to(self, device):
        return self

    def eval(self):
        return self

    @staticmethod
    def _keys(images):
        return [round(float(im[0, 0, 0]) * 255 / 10) for im in images]

    def generate(self, images, prompts, max_new_tokens=32):
        return [self.replies.get(k, "") for k in self._keys(images)]

    def score_options(self, images, prompts, options, normalize=False):
        self.scored += options
        return [torch.tensor(self.scores[k], dtype=torch.float) for k in self._keys(images)]


def run_main(monkeypatch, tmp_path, model, argv):
    monkeypatch.setattr(evalpy, "load_checkpoint", lambda d, **kw: model)
    monkeypatch.setattr(evalpy, "generate", lambda m, *a, **kw: m.generate(*a, **kw))
    monkeypatch.setattr(evalpy, "score_options", lambda m, *a, **kw: m.score_options(*a, **kw))
    for part in ("config.json", "model.safetensors", "tokenizer"):  # what eval.py checks up front
        (tmp_path / "ckpt").mkdir(exist_ok=True)
        (tmp_path / "ckpt" / part).touch()
    return evalpy.main(["--checkpoint", str(tmp_path / "ckpt"), "--output-dir", str(tmp_path / "out")] + argv)


def metric(result, *keys):
    node = result["checkpoints"][0]["summary"]
    for k in keys:
        node = node[k]
    return node


# ---------------------------------------------------------------- letter extraction
@pytest.mark.parametrize("reply", ["(B)", "B", "B.", "b)", "b", "Answer: B", "The answer is (B) left",
                                   "answer: b)", "B. right", "right", "Right.", "The object is on the right.",
                                   "I pick B"])
def test_extract_letter_reads_each_answer_form(reply):
    assert B.extract_letter(reply, ["left", "right"]) == "B", f"{reply!r} names option B"


@pytest.mark.parametrize("reply,choices", [
    ("", ["left", "right"]), ("I don't know", ["left", "right"]), ("left or right", ["left", "right"]),
    ("(C)", ["left", "right"]), ("E", ["left", "right"]), ("The answer is a cube", ["ball", "cone"]),
    ("A cube is on the left side of it", ["1", "2"])])
def test_extract_letter_returns_none_unless_exactly_one_option_is_named(reply, choices):
    assert B.extract_letter(reply, choices) is None, f"{reply!r} must be unparseable with options {choices}"


def test_extract_letter_prefers_the_longest_matching_option_text():
    assert B.extract_letter("the dark red cube", ["red cube", "dark red cube"]) == "B"


# ---------------------------------------------------------------- formats and scores
def test_cvbench_official_combination_averages_sources_not_items(monkeypatch, tmp_path, capsys):
    write_cvbench(tmp_path / "cv")
    # ADE20K 1/2 right, COCO 4/4, Omni3D 1/4 -> 2D = (0.5 + 1) / 2 (pooled would be 5/6), 3D = 0.25
    wrong = {1, 6, 7, 8}
    model = FakeModel(scores={k: [-1.0, -2.0, -3.0, -4.0][:4 if k < 2 else 2][::-1 if k in wrong else 1]
                              for k in range(10)})
    res = run_main(monkeypatch, tmp_path, model, ["--bench", "cvbench", "--bench-dir", str(tmp_path / "cv")])
    assert metric(res, "per_source", "ADE20K", "accuracy") == 0.5
    assert metric(res, "per_source", "COCO", "accuracy") == 1.0
    assert metric(res, "combined", "2D", "accuracy") == pytest.approx(0.75), "2D = mean of ADE20K and COCO"
    assert metric(res, "combined", "3D", "accuracy") == pytest.approx(0.25), "3D = Omni3D"
    assert metric(res, "combined", "overall", "accuracy") == pytest.approx(0.5), "overall = mean of 2D and 3D"
    assert metric(res, "combined", "overall", "chance") == pytest.approx((0.375 + 0.5) / 2)
    assert metric(res, "per_task", "Count", "chance") == 0.25 and res["answer_mode"] == "likelihood"
    printed = capsys.readouterr().out
    assert "answer mode: likelihood of the option text" in printed and "chance" in printed, \
        "the printed header names the method and the table shows chance"


def test_likelihood_scores_the_requested_option_strings(monkeypatch, tmp_path):
    write_mmvp(tmp_path / "mmvp")
    model = FakeModel(scores={k: [0.0, -1.0] for k in range(1, 5)})
    res = run_main(monkeypatch, tmp_path, model, ["--bench", "mmvp", "--bench-dir", str(tmp_path / "mmvp"),
                                                   "--score-target", "option"])
    assert model.scored[0] == ["(A) Open", "(B) Closed"], "option target scores '(X) text'"
    assert "'(X) text'" in res["method"] and res["score_target"] == "option"
    assert B.option_strings(B.Item("1", "t", "p", ["x", "y"], "A", None), "letter") == ["A", "B"]


def test_mmvp_pair_accuracy_needs_both_questions_of_a_pair(monkeypatch, tmp_path):
    write_mmvp(tmp_path / "mmvp")
    # pair (1,2): both right; pair (3,4): 3 right, 4 wrong -> pairs 1/2, questions 3/4
    model = FakeModel(replies={1: "(a)", 2: "Closed", 3: "A", 4: "Open"})
    res = run_main(monkeypatch, tmp_path, model, ["--bench", "mmvp", "--bench-dir", str(tmp_path / "mmvp"),
                                                   "--answer-mode", "generate"])
    assert metric(res, "pairs", "accuracy") == 0.5 and metric(res, "pairs", "n") == 2
    assert metric(res, "pairs", "chance") == 0.25, "pair chance = 0.5 * 0.5"
    assert metric(res, "all", "accuracy") == 0.75 and metric(res, "headline", "name") == "pair accuracy"
    assert "generate" in res["method"]


def test_images_are_fitted_as_the_checkpoints_stage_was_trained(monkeypatch, tmp_path, tiny_checkpoint):
    assert load_checkpoint(tiny_checkpoint).image_aspect == "crop", "a stage-1 model crops"
    write_mmvp(tmp_path / "mmvp")
    model, seen = FakeModel(replies={1: "A"}), []
    model.image_aspect = "crop"
    real = evalpy.load_image
    monkeypatch.setattr(evalpy, "load_image", lambda *a, **kw: seen.append(a[3]) or real(*a, **kw))
    run_main(monkeypatch, tmp_path, model, ["--bench", "mmvp", "--bench-dir", str(tmp_path / "mmvp"),
                                            "--answer-mode", "generate"])
    assert seen and set(seen) == {"crop"}, f"eval must load images as the model's stage did, got {set(seen)}"


def test_unparseable_answers_count_as_wrong_and_are_counted(monkeypatch, tmp_path):
    write_mmvp(tmp_path / "mmvp")
    model = FakeModel(replies={1: "A", 2: "maybe", 3: "", 4: "B"})
    res = run_main(monkeypatch, tmp_path, model, ["--bench", "mmvp", "--bench-dir", str(tmp_path / "mmvp"),
                                                   "--answer-mode", "generate"])
    assert metric(res, "unparseable") == 2 and metric(res, "all", "accuracy") == 0.5
    rows = [json.loads(l) for l in (tmp_path / "out" / "mmvp_predictions.jsonl").read_text().splitlines()]
    assert [r["parsed"] for r in rows] == [True, False, False, True]


def test_blink_takes_subtasks_from_files_or_field_and_skips_multi_image_and_bad_rows(tmp_path):
    write_blink(tmp_path / "blink")
    items, skipped = B.load_blink(tmp_path / "blink")
    assert sorted(it.task for it in items) == ["Counting", "Counting", "Depth"]
    assert {s[0] for s in skipped} == {"val_4", "val_5"} and "multi-image" in dict(skipped)["val_4"]
    recs = [dict(task=it.task, source="", type="", pair=None, chance=it.chance, parsed=True,
                 correct=it.id != "val_1") for it in items]
    assert B.summarize("blink", recs)["headline"]["accuracy"] == pytest.approx((0.5 + 1.0) / 2), \
        "BLINK's headline is the mean over sub-tasks"


def test_realworldqa_parses_options_and_generates_open_questions(monkeypatch, tmp_path):
    write_realworldqa(tmp_path / "rw")
    items, _ = B.load_realworldqa(tmp_path / "rw")
    assert items[0].choices == ["Left", "Straight", "Right"] and items[0].answer == "C"
    assert items[1].answer == "B", "a text answer maps to its option's letter"
    assert items[2].choices == [] and items[2].task == "open"
    model = FakeModel(replies={3: "3."}, scores={1: [0.0, -1.0, -2.0], 2: [-1.0, 0.0, -2.0]})
    res = run_main(monkeypatch, tmp_path, model, ["--bench", "realworldqa", "--bench-dir", f"{tmp_path}/rw"])
    assert metric(res, "per_task", "multiple-choice", "accuracy") == 0.5
    assert metric(res, "per_task", "open", "accuracy") == 1.0, "'3.' matches '3' after normalisation"
    assert metric(res, "per_task", "open", "chance") is None


def test_missing_image_stops_naming_the_row_unless_skip_missing(monkeypatch, tmp_path):
    write_mmvp(tmp_path / "mmvp")
    (tmp_path / "mmvp" / "MMVP Images" / "3.jpg").unlink()
    args = ["--bench", "mmvp", "--bench-dir", str(tmp_path / "mmvp"), "--answer-mode", "generate"]
    model = FakeModel(replies={1: "A", 2: "B", 4: "B"})
    with pytest.raises(BadRecord, match="record '3'.*3.jpg"):
        run_main(monkeypatch, tmp_path, model, args)
    res = run_main(monkeypatch, tmp_path, model, args + ["--skip-missing"])
    assert res["skipped_rows"] == [["3", "missing image"]]
    assert metric(res, "pairs", "incomplete") == 1 and metric(res, "pairs", "accuracy") == 1.0


def test_unreadable_image_is_skipped_and_counted_with_skip_missing(monkeypatch, tmp_path):
    write_mmvp(tmp_path / "mmvp")
    (tmp_path / "mmvp" / "MMVP Images" / "2.jpg").write_bytes(b"not a jpeg")
    args = ["--bench", "mmvp", "--bench-dir", str(tmp_path / "mmvp"), "--answer-mode", "generate"]
    model = FakeModel(replies={1: "A", 3: "A", 4: "B"})
    with pytest.raises(BadRecord, match="record '2'.*cannot decode"):
        run_main(monkeypatch, tmp_path, model, args)
    res = run_main(monkeypatch, tmp_path, model, args + ["--skip-missing"])
    assert [s[0] for s in res["checkpoints"][0]["skipped_images"]] == ["2"]
    assert metric(res, "all", "n") == 3 and metric(res, "pairs", "n") == 1


def test_malformed_rows_are_skipped_and_counted(tmp_path):
    write_cvbench(tmp_path / "cv")
    path = tmp_path / "cv" / "test.jsonl"
    rows = path.read_text().splitlines()
    bad_answer = json.loads(rows[0]) | {"answer": "(E)"}
    no_choices = {k: v for k, v in json.loads(rows[1]).items() if k != "choices"}
    path.write_text("\n".join([json.dumps(bad_answer), json.dumps(no_choices), "{not json"] + rows[2:]) + "\n")
    items, skipped = B.load_cvbench(tmp_path / "cv")
    assert len(items) == 8 and len(skipped) == 3, "three bad rows skipped, the other eight kept"
    assert all(reason.startswith("malformed row") for _, reason in skipped)


def test_shapesbench_exported_in_cvbench_format_loads_as_the_same_items(tmp_path):
    from minijarvis.evaluation.shapesbench import write_bench_jsonl
    write_bench_jsonl(tmp_path / "sb", n_per_task=1)
    from_files, skipped = B.load_cvbench(tmp_path / "sb")
    in_memory, _ = B.load_shapes(n_per_task=1)
    assert not skipped and len(from_files) == 4
    for a, b in zip(from_files, in_memory):
        fields = ("task", "prompt", "choices", "answer", "type")
        assert [getattr(a, f) for f in fields] == [getattr(b, f) for f in fields], f"{a.id} differs"


def test_take_spreads_a_limit_over_tasks_in_file_order():
    items = [B.Item(str(i), t, "p", ["a", "b"], "A", None) for i, t in enumerate("AAAABBBC")]
    assert [it.id for it in B.take(items, 5)] == ["0", "1", "4", "5", "7"]
    assert len(B.take(items, None)) == 8


def test_bench_dir_is_required_for_real_benchmarks(capsys):
    with pytest.raises(SystemExit):
        evalpy.parse_args(["--checkpoint", "x", "--bench", "cvbench"])
    assert "--bench-dir" in capsys.readouterr().err


def test_help_documents_every_folder_layout(capsys):
    with pytest.raises(SystemExit):
        evalpy.parse_args(["--help"])
    text = capsys.readouterr().out
    for needle in ("test.jsonl", "Questions.csv", "MMVP Images", "image_1", "sub_task", "A. x"):
        assert needle in text, f"--help must document {needle!r}"


# ---------------------------------------------------------------- end to end on a real tiny model
@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    from minijarvis.config import preset
    torch.manual_seed(0)
    return save_checkpoint(JarvisModel(preset("tiny")), tmp_path_factory.mktemp("ckpt") / "tiny")


@pytest.mark.parametrize("mode,copies,limit", [("likelihood", 2, 8), ("generate", 1, 4)])
def test_main_evaluates_checkpoints_on_shapesbench_and_writes_results(tiny_checkpoint, tmp_path, mode, copies,
                                                                        limit):
    out = tmp_path / "eval"
    res = evalpy.main(["--checkpoint"] + [str(tiny_checkpoint)] * copies + [
        "--bench", "shapes", "--limit", str(limit), "--answer-mode", mode, "--max-new-tokens", "3",
        "--output-dir", str(out)])
    for name in ("shapes.json", "shapes.csv", "shapes.png", "shapes_predictions.jsonl"):
        assert (out / name).stat().st_size > 0, f"{name} was not written"
    if copies == 2:
        assert [c["label"] for c in res["checkpoints"]] == ["tiny#0", "tiny#1"], "repeated names told apart"
    summary = res["checkpoints"][0]["summary"]
    assert summary["all"]["n"] == limit, "--limit caps the number of items"
    assert set(summary["per_task"]) == {"Count", "Relation", "Depth", "Distance"}, "--limit spreads over tasks"
    rows = list(csv.DictReader(open(out / "shapes.csv")))
    accs = [float(r["accuracy"]) for r in rows if r["accuracy"]]
    assert accs and all(0.0 <= a <= 1.0 for a in accs), "accuracies lie in [0, 1]"
    assert all(r["answer_mode"] == mode for r in rows), "the answer mode is written next to every number"


def test_load_shapes_keeps_the_rendered_pixels_and_gives_fresh_items_each_call():
    """load_shapes keeps the rendered benchmark (as PNG) for the next call with the same size and
    seed: the images must be the renderer's pixels, and a caller that edits its items must not
    change the next caller's."""
    import numpy as np
    from minijarvis.evaluation.shapesbench import shapes_bench
    B._shapes_rendered.cache_clear()
    first, _ = B.load_shapes(n_per_task=2, seed=3)
    rendered = shapes_bench(2, 3)
    assert [it.id for it in first] == [r["id"] for r in rendered]
    for it, r in zip(first, rendered):
        assert it.image.mode == "RGB" and np.array_equal(np.asarray(it.image), np.asarray(r["image"]))
        assert it.answer == B.LETTERS[r["answer_index"]] and it.choices == r["choices"]
    first[0].choices.append("edited")
    again, _ = B.load_shapes(n_per_task=2, seed=3)
    assert B._shapes_rendered.cache_info().hits == 1, "the second call reuses the render"
    assert again[0].choices == rendered[0]["choices"] and again[0] is not first[0]
    other, _ = B.load_shapes(n_per_task=2, seed=4)
    assert [it.id for it in other] != [it.id for it in first] or not np.array_equal(
        np.asarray(other[0].image), np.asarray(first[0].image)), "another seed is another benchmark"


def test_shapesbench_is_decoded_and_fitted_once_per_process_with_the_same_pixels(monkeypatch):
    """eval.py reads ShapesBench's images through shapes_pixels: the pixels fitting load_shapes'
    images gives, and a second evaluation with the same sizes decodes and fits nothing."""
    from minijarvis.data.images import load_image
    import minijarvis.evaluation.benchmarks as bm
    B.shapes_pixels.cache_clear()
    model = type("Stub", (), dict(image_size=24, image_mean=[0.5, 0.4, 0.3], image_aspect="pad"))()
    args = evalpy.parse_args(["--checkpoint", "x", "--n-per-task", "2", "--seed", "3"])
    items, _ = evalpy.load_items(args)
    seen = []
    monkeypatch.setattr(evalpy, "answer", lambda model, images, items, args: seen.append(images) or [
        dict(prediction="A", correct=True, reply="x", method="likelihood")] * len(items))
    evalpy.evaluate(model, items, args, "x")
    expected = torch.stack([load_image(it.image, 24, (0.5, 0.4, 0.3), "pad") for it in items])
    assert torch.equal(torch.cat(seen), expected), "the cached pixels are the fitted images, bit for bit"
    fits = []
    monkeypatch.setattr(bm, "load_image_uint8", lambda *a, **k: fits.append(a) or None)
    monkeypatch.setattr(evalpy, "load_image", lambda *a, **k: fits.append(a) or None)
    evalpy.evaluate(model, evalpy.load_items(args)[0], args, "x")
    assert not fits and torch.equal(seen[-1], seen[0]), "the second evaluation fits no image again"
    B.shapes_pixels.cache_clear()
