"""Vision-centric benchmarks from local files: loading, answer extraction, scoring. No model here.

Every loader returns ``(items, skipped)``: :class:`Item` s in file order, and ``(row id, reason)``
for each row that could not be used (malformed, or a missing image with ``skip_missing=True``;
without it a missing image raises ``data.BadRecord`` naming the row). Image paths are relative
to the benchmark folder. Expected layouts:

    ShapesBench   nothing: generated in memory (shapesbench.shapes_bench)
    cvbench/      test.jsonl + img/...   rows: idx, type (2D|3D), task (Count|Relation|Depth|Distance),
                  image ("img/2D/count/ade20k_10.png"), question, choices, answer ("(C)"), prompt, source
    mmvp/         Questions.csv (Index, Question, Options "(a) X (b) Y", Correct Answer "(a)")
                  + "MMVP Images/<Index>.jpg"; pairs are Index (1,2), (3,4), ...
    blink/        one or more *.jsonl (e.g. Counting.jsonl, Depth.jsonl, or one file for all); rows:
                  idx, prompt (question + "(A) .." options), choices, answer ("(A)"), image_1 (path),
                  sub_task (optional: else the file name is the sub-task). Rows with image_2 set are
                  multi-image: skipped and counted, since a minijarvis model takes one image.
    realworldqa/  test.jsonl, rows: question (with "A. x\\nB. y" options when multiple-choice, as
                  released), answer (a letter, an option's text, or a short text), image (path).
                  Task "multiple-choice" when options parse from the question, else "open":
                  answered by generation, scored by normalised exact match (lower case, no
                  punctuation, single spaces).

Scores (:func:`summarize`): accuracy per task (and per source), chance level = mean of 1/#choices;
CV-Bench's official combination (2D = mean over the 2D sources, ADE20K and COCO; 3D = Omni3D;
overall = mean of 2D and 3D); MMVP pair accuracy (both questions of a pair right); BLINK the mean
over sub-tasks. A reply from which no option can be read (:func:`extract_letter`) counts as wrong
and is counted in ``unparseable``.
"""
from __future__ import annotations

import csv
import functools
import io
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from minijarvis.data.images import load_image_uint8
from minijarvis.errors import BadRecord
from minijarvis.evaluation.shapesbench import ANSWER_INSTRUCTION, LETTERS, format_prompt, shapes_bench

BENCHES = ("shapes", "cvbench", "mmvp", "blink", "realworldqa")
SCORE_TARGETS = ("text", "option", "letter")


@dataclass
class Item:
    """One question. ``answer``: the correct letter ("B") if ``choices`` is non-empty, else the
    reference text (open-ended). ``image``: a path or a PIL image. ``pair``: MMVP pair number."""
    id: str
    task: str
    prompt: str
    choices: list[str]
    answer: str
    image: object
    source: str = ""
    type: str = ""
    pair: int | None = None

    @property
    def chance(self) -> float | None:
        return 1.0 / len(self.choices) if self.choices else None


# ---------------------------------------------------------------- loaders
def _letter(answer: str, n: int) -> str:
    """"(C)" / "C" / "c)" -> "C"; ValueError unless it names one of the first n letters."""
    m = re.fullmatch(r"\s*\(?([A-Za-z])\)?\.?\s*", str(answer))
    if not m or m.group(1).upper() not in LETTERS[:n]:
        raise ValueError(f"answer {answer!r} is not a letter among {LETTERS[:n]}")
    return m.group(1).upper()


def _with_instruction(prompt: str) -> str:
    """Append the official "Answer with the option's letter ..." line (Cambrian/LLaVA eval) once."""
    return prompt if ANSWER_INSTRUCTION in prompt else prompt.rstrip() + "\n" + ANSWER_INSTRUCTION


def _collect(rows, root: Path, make, skip_missing: bool):
    """Apply ``make(row) -> Item`` to (row id, row) pairs; bad rows become (id, reason)."""
    items, skipped = [], []
    for rid, row in rows:
        try:
            item = make(row)
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            skipped.append((rid, f"malformed row: {type(e).__name__}: {e}"))
            continue
        item.id = item.id or rid
        if isinstance(item.image, (str, Path)):
            item.image = root / item.image
            if not item.image.is_file():
                if not skip_missing:
                    raise BadRecord(rid, f"image file not found: {item.image} "
                                         "(pass --skip-missing to skip such rows)")
                skipped.append((rid, "missing image"))
                continue
        items.append(item)
    return items, skipped


def _jsonl(path: Path):
    """(row id, parsed dict) per line; an undecodable line yields (id, None) -> malformed."""
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if line.strip():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                row = None
            rid = row.get("idx", row.get("id")) if isinstance(row, dict) else None
            yield (f"{path.name}:{n}" if rid is None else str(rid)), row


def _need(path: Path) -> Path:
    if not path.exists():
        raise FileNotFoundError(f"{path} not found; see the folder layouts in `python eval.py --help`")
    return path


@functools.lru_cache(maxsize=1)
def _shapes_rendered(n_per_task: int, seed: int) -> tuple:
    """ShapesBench's items as (Item fields, PNG bytes), kept for the process's next call with the
    same size and seed. study.py's workers score the same benchmark after each of their runs, and
    rendering it (about 6 ms an item) would otherwise cost more than scoring it; PNG is lossless,
    so the images are pixel for pixel the rendered ones (about 10 kB an item in memory)."""
    out = []
    for it in shapes_bench(n_per_task, seed):
        png = io.BytesIO()
        it["image"].save(png, format="PNG")
        out.append(((it["id"], it["task"], it["prompt"], tuple(it["choices"]), LETTERS[it["answer_index"]],
                     it["source"], it["type"]), png.getvalue()))
    return tuple(out)


def load_shapes(n_per_task: int = 50, seed: int = 0) -> tuple[list[Item], list]:
    """ShapesBench generated in memory, n_per_task items of each of its 4 tasks. Images as PIL,
    opened lazily: a PNG is decoded when its pixels are first read (eval.py reads them through
    :func:`shapes_pixels`, so a repeated evaluation decodes none)."""
    return [Item(id_, task, prompt, list(choices), answer, Image.open(io.BytesIO(png)), source=source, type=type_)
            for (id_, task, prompt, choices, answer, source, type_), png in _shapes_rendered(n_per_task, seed)], []


@functools.lru_cache(maxsize=1)
def shapes_pixels(n_per_task: int, seed: int, size: int, mean: tuple, aspect: str) -> dict:
    """ShapesBench's images by item id, fitted as an encoder of ``size``, ``mean`` and ``aspect``
    sees them (``load_image_uint8``: uint8 [3, size, size], the same pixels as fitting
    :func:`load_shapes`' images), kept for the process's next call with the same arguments
    (1,000 items per task at 96 px: 110 MB). study.py's workers score the same benchmark after
    every run, and decoding and fitting its 4,000 images costs about 5 s a time."""
    return {fields[0]: load_image_uint8(io.BytesIO(png), size, mean, aspect, record_id=fields[0])
            for fields, png in _shapes_rendered(n_per_task, seed)}


def load_cvbench(root, skip_missing: bool = False):
    """CV-Bench (or ShapesBench exported with write_bench_jsonl): root/test.jsonl + images."""
    def make(r):
        choices = [str(c) for c in r["choices"]]
        prompt = r.get("prompt") or format_prompt(r["question"], choices)
        answer = _letter(r["answer"], len(choices))
        return Item(str(r["idx"]), r["task"], _with_instruction(prompt), choices, answer, r["image"],
                    source=r["source"], type=r["type"])
    root = Path(root)
    return _collect(_jsonl(_need(root / "test.jsonl")), root, make, skip_missing)


def parse_mmvp_options(options: str) -> list[str]:
    """"(a) Open (b) Closed" -> ["Open", "Closed"]."""
    parts = re.split(r"\(([a-h])\)", options.strip())
    letters, texts = parts[1::2], [t.strip() for t in parts[2::2]]
    if parts[0].strip() or len(texts) < 2 or letters != list("abcdefgh"[:len(texts)]) or not all(texts):
        raise ValueError(f"options {options!r} are not '(a) X (b) Y ...'")
    return texts


def load_mmvp(root, skip_missing: bool = False):
    """MMVP: root/Questions.csv + root/"MMVP Images"/<Index>.jpg; pair = (Index - 1) // 2."""
    def make(r):
        index, choices = int(r["Index"]), parse_mmvp_options(r["Options"])
        return Item(str(index), "MMVP", format_prompt(r["Question"].strip(), choices), choices,
                    _letter(r["Correct Answer"], len(choices)), f"MMVP Images/{index}.jpg",
                    pair=(index - 1) // 2)
    root = Path(root)
    with open(_need(root / "Questions.csv"), newline="", encoding="utf-8-sig") as f:
        rows = [(str(r.get("Index") or f"row {n}"), r) for n, r in enumerate(csv.DictReader(f), 2)]
    return _collect(rows, root, make, skip_missing)


def load_blink(root, skip_missing: bool = False):
    """BLINK exported to JSONL: every root/*.jsonl; sub-task from ``sub_task`` or the file name."""
    def rows():
        for path in sorted(_need(Path(root)).glob("*.jsonl")):
            for rid, r in _jsonl(path):
                yield rid, (r, path.stem)

    def make(arg):
        r, stem = arg
        if r.get("image_2"):
            raise ValueError("multi-image row (image_2 set); a minijarvis model takes one image")
        choices = [str(c) for c in r["choices"]]
        return Item(str(r.get("idx", "")), r.get("sub_task") or stem, _with_instruction(r["prompt"]), choices,
                    _letter(r["answer"], len(choices)), r["image_1"])
    items, skipped = _collect(rows(), Path(root), make, skip_missing)
    if not items and not skipped:
        raise FileNotFoundError(f"no *.jsonl rows under {root}")
    return items, skipped


def parse_lettered_options(question: str) -> list[str]:
    """Options written as lines "A. xxx" (or "A) xxx") in a question, A, B, C... in order; [] if none
    (RealWorldQA writes its options into the question)."""
    found = re.findall(r"^\s*([A-H])[.)]\s+(.+?)\s*$", question, flags=re.M)
    letters = "".join(letter for letter, _ in found)
    return [text for _, text in found] if len(found) >= 2 and LETTERS.startswith(letters) else []


def load_realworldqa(root, skip_missing: bool = False):
    """RealWorldQA exported to root/test.jsonl (question, answer, image)."""
    def make(r):
        question, answer = r["question"], str(r["answer"]).strip()
        if not answer:
            raise ValueError("empty answer")
        choices = parse_lettered_options(question)
        texts = [normalize_answer(c) for c in choices]
        if choices:  # the released answers are letters; an option's text is accepted too
            norm = normalize_answer(answer)
            answer = LETTERS[texts.index(norm)] if norm in texts else _letter(answer, len(choices))
        return Item(str(r.get("idx", r.get("id", ""))), "multiple-choice" if choices else "open", question,
                    choices, answer, r["image"])
    root = Path(root)
    return _collect(_jsonl(_need(root / "test.jsonl")), root, make, skip_missing)


def take(items: list[Item], limit: int | None) -> list[Item]:
    """At most ``limit`` items, taken round-robin over tasks (so a quick run sees every task),
    in their original order. MMVP keeps pairs together when ``limit`` is even (one task)."""
    if limit is None or limit >= len(items):
        return list(items)
    by_task: dict[str, list[int]] = {}
    for i, it in enumerate(items):
        by_task.setdefault(it.task, []).append(i)
    chosen, depth = [], 0
    while len(chosen) < limit:
        chosen += [ix[depth] for ix in by_task.values() if depth < len(ix)][:limit - len(chosen)]
        depth += 1
    return [items[i] for i in sorted(chosen)]


# ---------------------------------------------------------------- answers
def normalize_answer(text: str) -> str:
    """Lower case, punctuation removed, whitespace collapsed: "The Red cube." -> "the red cube"."""
    return " ".join(re.sub(r"[^\w\s]", " ", str(text).lower()).split())


def extract_letter(reply: str, choices: list[str]) -> str | None:
    """The option letter a free-form reply names, or None (unparseable). Rules, first hit wins:

    1. the whole reply is a letter: "B", "(B)", "B.", "b)", "b";
    2. after "answer is" / "answer:": "Answer: B", "The answer is (B) left", "answer: b)";
    3. the reply starts with "B." / "b)" / "(B)" / "B:" then text;
    4. exactly one distinct "(X)" anywhere;
    5. the option text: the reply equals one option, or contains exactly one (as whole words);
    6. exactly one distinct bare capital letter among the words ("I pick B"), except "A" in a
       reply of several words, which may be the article (VLMEvalKit has the same guard).
    Letters outside the options (e.g. "E" with 2 choices) never count.
    """
    valid = LETTERS[:len(choices)]
    text = str(reply).strip()
    ok = lambda ch: ch.upper() if ch.upper() in valid else None  # noqa: E731
    if (m := re.fullmatch(r"\(?([A-Za-z])\)?[.:]?", text)) and ok(m.group(1)):
        return ok(m.group(1))
    # Case matters for a bare letter: "the answer is a cube" names no option.
    m = re.search(r"(?i:answer\s*(?:is|:))\s*:?\s*(?:\(([A-Za-z])\)|([A-Z])(?![\w'])|([a-z])[.)])", text)
    if m and ok(next(g for g in m.groups() if g)):
        return ok(next(g for g in m.groups() if g))
    if (m := re.match(r"\(?([A-Za-z])[.):](?:\s|$)", text)) and ok(m.group(1)):
        return ok(m.group(1))
    inside = {ok(ch) for ch in re.findall(r"\(([A-Za-z])\)", text)} - {None}
    if len(inside) == 1:
        return inside.pop()
    norm, texts = normalize_answer(text), [normalize_answer(c) for c in choices]
    if norm and texts.count(norm) == 1:
        return valid[texts.index(norm)]
    hits = {k for k, t in enumerate(texts) if t and re.search(rf"(?<!\w){re.escape(t)}(?!\w)", norm)}
    hits = {k for k in hits if not any(texts[k] != texts[j] and texts[k] in texts[j] for j in hits)}
    if len(hits) == 1:
        return valid[hits.pop()]
    words = [w.strip(".,:;!?()\"'") for w in text.split()]
    bare = {w for w in words if len(w) == 1 and w in valid}
    if len(bare) == 1 and not (bare == {"A"} and len(words) > 1):
        return bare.pop()
    return None


def option_strings(item: Item, target: str) -> list[str]:
    """What likelihood scoring compares: "text" (the option's text, "left"), "option" ("(A) left")
    or "letter" ("A")."""
    if target not in SCORE_TARGETS:
        raise ValueError(f"score target must be one of {SCORE_TARGETS}, got {target!r}")
    if target == "text":
        return list(item.choices)
    if target == "option":
        return [f"({LETTERS[k]}) {c}" for k, c in enumerate(item.choices)]
    return list(LETTERS[:len(item.choices)])


def judge(item: Item, reply: str) -> tuple[str | None, bool]:
    """(prediction, correct) for a generated reply: the extracted letter for multiple choice, the
    normalised reply for open-ended items. A prediction of None means unparseable (and wrong)."""
    if item.choices:
        letter = extract_letter(reply, item.choices)
        return letter, letter == item.answer
    norm = normalize_answer(reply)
    return (norm or None), bool(norm) and norm == normalize_answer(item.answer)


# ---------------------------------------------------------------- scores
def _metric(recs: list[dict]) -> dict:
    """accuracy, n and chance (mean of each item's chance; None if some item has none)."""
    chances = [r["chance"] for r in recs]
    return {"accuracy": sum(r["correct"] for r in recs) / len(recs) if recs else None, "n": len(recs),
            "chance": None if not recs or None in chances else sum(chances) / len(recs)}


def _group(recs: list[dict], key: str) -> dict:
    out: dict[str, list] = {}
    for r in recs:
        out.setdefault(r[key], []).append(r)
    return {k: _metric(v) for k, v in out.items()}


def _combine(metrics: list[dict]) -> dict:
    """Unweighted mean of several accuracies (and of their chance levels); n = their total."""
    def mean(key):
        vals = [m[key] for m in metrics]
        return None if not vals or None in vals else sum(vals) / len(vals)
    return {"accuracy": mean("accuracy"), "n": sum(m["n"] for m in metrics), "chance": mean("chance")}


def cvbench_combined(recs: list[dict]) -> dict:
    """CV-Bench's official numbers: 2D = mean over the 2D items' sources (ADE20K, COCO) of their
    accuracy, 3D = mean over the 3D sources (Omni3D), overall = mean of 2D and 3D."""
    out = {}
    for kind in ("2D", "3D"):
        per_source = _group([r for r in recs if r["type"] == kind], "source")
        if per_source:
            out[kind] = _combine(list(per_source.values()))
    if out:
        out["overall"] = _combine(list(out.values()))
    return out


def mmvp_pairs(recs: list[dict]) -> dict:
    """Pair accuracy over complete pairs (both questions evaluated); ``incomplete`` counts the rest.
    Chance = mean over pairs of the product of the two questions' chance levels."""
    pairs: dict[int, list] = {}
    for r in recs:
        pairs.setdefault(r["pair"], []).append(r)
    full = [p for p in pairs.values() if len(p) == 2]
    both = [{"correct": all(r["correct"] for r in p), "chance": math.prod(r["chance"] for r in p)}
            for p in full]
    return {**_metric(both), "incomplete": len(pairs) - len(full)}


def summarize(bench: str, recs: list[dict]) -> dict:
    """Every number of a run. ``recs``: one dict per evaluated item with task, source, type, pair,
    correct (bool), parsed (bool: an option or text could be read) and chance (float or None).
    ``headline`` is the benchmark's usual single number (see the module docstring)."""
    if bench not in BENCHES:
        raise ValueError(f"bench must be one of {BENCHES}, got {bench!r}")
    out = {"all": _metric(recs), "per_task": _group(recs, "task"),
           "unparseable": sum(not r["parsed"] for r in recs)}
    if len({r["source"] for r in recs}) > 1:
        out["per_source"] = _group(recs, "source")
    if bench in ("cvbench", "shapes"):
        out["combined"] = cvbench_combined(recs)
        out["headline"] = {"name": "overall (CV-Bench combination)",
                           **out["combined"].get("overall", _metric([]))}
    elif bench == "mmvp":
        out["pairs"] = mmvp_pairs(recs)
        out["headline"] = {"name": "pair accuracy", **out["pairs"]}
    elif bench == "blink":
        out["subtask_mean"] = _combine(list(out["per_task"].values()))
        out["headline"] = {"name": "mean over sub-tasks", **out["subtask_mean"]}
    else:
        out["headline"] = {"name": "accuracy", **out["all"]}
    return out
