"""LLaVA data -> token ids + labels -> batches (DESIGN.md §1); text -> ids is ``text.py``,
images are ``images.py``.

* Stage 1 (``align``, LLaVA-558k): the plain template, ``<image>`` + caption, labels on the
  caption only (:func:`encode_caption`).
* Stage 2 (``finetune``, LLaVA-665k): the tokenizer's chat template, labels on assistant turns
  only (:func:`encode_conversation`). Ids and labels are built together, segment by segment
  (as nanochat does), so LLaVA's "tokenization mismatch" cannot happen; the segments are
  tokenized as one string (:func:`encode_segments`), so the seams get the ids the whole
  text gets (SentencePiece word-start markers, spaces).

The text ``"<image>"`` is one token id; the model later expands it into H*W visual slots, so
lengths that matter (``max_length``) are *spliced* lengths: text tokens - 1 + H*W.

Bad records never crash an epoch: :class:`LlavaDataset` returns a :class:`Skip` marker (id,
reason), :func:`collate` drops it and reports it in ``batch["skipped"]``; ``strict=True``
raises :class:`BadRecord` instead. Structural problems are found once, at construction.
"""
from __future__ import annotations

import functools
import json
import os
from pathlib import Path
from typing import NamedTuple

import torch
from torch.nn.utils.rnn import pad_sequence

from minijarvis.config import IMAGE_ASPECTS, release_image_aspect
from minijarvis.data.images import blank_image, image_to_float, load_image_uint8
from minijarvis.errors import BadRecord, InputError
from minijarvis.data.text import (  # noqa: F401 (text -> ids lives in text.py; re-exported here)
    IGNORE_INDEX, PLAIN_STYLES, ROLES, encode_caption, encode_conversation, encode_prompt,
    encode_reply, encode_segments, image_token_id, stop_token_ids, truncate_spliced)
from minijarvis.llm import IMAGE_TOKEN

TOKEN_CACHE_RECORDS = 50_000  # data sets up to this size keep each record's token ids after a first load
IMAGE_CACHE_BYTES = 256 * 2**20  # data sets whose fitted images (uint8) all fit in this keep them after a
# first load: the toy world's runs decode each of their few thousand PNGs once, not once per epoch


class Skip(NamedTuple):
    """What the dataset returns instead of an item for a bad record (when not strict)."""

    id: str
    reason: str


# ---------------------------------------------------------------- records
def _record_id(record, index: int) -> str:
    if isinstance(record, dict) and record.get("id") is not None:
        return str(record["id"])
    return f"#{index}"


def read_llava_json(path) -> list[dict]:
    """A LLaVA JSON file (a list of records) -> records, each object's ``id`` as str (the 665k
    file mixes ints and strings; a record without id gets ``"#<index>"``). A file that cannot be
    read as such a list raises :class:`InputError` naming it; a record that is not an object is
    kept, to be skipped and counted like any bad record (:func:`_prepare`)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"LLaVA data file not found: {path}")
    try:
        records = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise InputError(f"{path} is not valid JSON: {e.msg} at line {e.lineno} column "
                         f"{e.colno} (char {e.pos})") from None
    except UnicodeDecodeError as e:
        raise InputError(f"{path} is not UTF-8 text: {e}") from None
    if not isinstance(records, list):
        raise InputError(f"{path} must hold a JSON list of records, got {type(records).__name__}")
    for i, record in enumerate(records):
        if isinstance(record, dict):
            record["id"] = _record_id(record, i)
    return records


def _prepare(record, rid: str, stage: str, folder: str):
    """Structural checks (no I/O) -> (caption str | LLaVA turns, image path | None).

    Raises BadRecord. A record with an image but no ``<image>`` in its text gets ``"<image>\\n"``
    prepended to the first human turn; an existing one is moved to the front of its turn as
    ``"<image>\\n"`` (LLaVA's ``preprocess_multimodal``). A leading gpt turn is dropped (LLaVA).
    """
    if not isinstance(record, dict):
        raise BadRecord(rid, f"record is a JSON {type(record).__name__}, not an object")
    turns = record.get("conversations")
    if not isinstance(turns, list) or not turns:
        raise BadRecord(rid, 'no "conversations" list')
    for j, t in enumerate(turns):
        if not (isinstance(t, dict) and t.get("from") in ROLES and isinstance(t.get("value"), str)):
            raise BadRecord(rid, f"turn {j} is malformed: needs from=human|gpt and a string value")
    rel, path = record.get("image"), None
    n_image = sum(t["value"].count(IMAGE_TOKEN) for t in turns)
    if rel is not None:
        if not isinstance(rel, str) or not rel:
            raise BadRecord(rid, f"image must be a non-empty relative path, got {rel!r}")
        # Lexical check, not resolve(): LLaVA's image folders often hold symlinked subfolders.
        path = os.path.normpath(os.path.join(folder, rel))
        if os.path.isabs(rel) or os.path.commonpath([path, folder]) != folder:
            raise BadRecord(rid, f"image path {rel!r} escapes the image folder {folder}")
        if n_image > 1:
            raise BadRecord(rid, f"{n_image} {IMAGE_TOKEN} tokens; one image per record is supported")
    elif n_image:
        raise BadRecord(rid, f"text contains {IMAGE_TOKEN} but the record has no image")
    if stage == "align":
        if path is None:
            raise BadRecord(rid, "stage 'align' needs an image")
        caption = next((t["value"] for t in turns if t["from"] == "gpt"), "")
        if not caption.strip():
            raise BadRecord(rid, "empty caption")
        if IMAGE_TOKEN in caption:
            raise BadRecord(rid, f"the caption holds {IMAGE_TOKEN}; the image goes before it, not in it")
        return caption, path
    if turns[0]["from"] == "gpt":
        turns = turns[1:]
    if any(t["from"] != ("human", "gpt")[j % 2] for j, t in enumerate(turns)):
        raise BadRecord(rid, "turns do not alternate human, gpt, human, ...")
    if not any(t["from"] == "gpt" for t in turns):
        raise BadRecord(rid, "no gpt turn to learn from")
    for j, t in enumerate(turns):
        if t["from"] == "gpt" and not t["value"].strip():
            raise BadRecord(rid, f"empty assistant text in turn {j}")
        if t["from"] == "gpt" and IMAGE_TOKEN in t["value"]:  # moving it would change the answer
            raise BadRecord(rid, f"{IMAGE_TOKEN} in assistant turn {j}; it belongs in a human turn")
    turns = [dict(t) for t in turns]
    if path is not None:
        k = next((j for j, t in enumerate(turns) if IMAGE_TOKEN in t["value"]), 0)
        turns[k]["value"] = IMAGE_TOKEN + "\n" + turns[k]["value"].replace(IMAGE_TOKEN, "").strip()
    return turns, path


class LlavaDataset(torch.utils.data.Dataset):
    """LLaVA JSON records -> dict(input_ids Long[T], labels Long[T], image float[3,S,S] | None,
    id str), or :class:`Skip` for a bad record (``strict=True``: raise :class:`BadRecord`).

    Records failing the structural checks are dropped at construction (``strict``: raise);
    ``problems`` lists them as (id, reason) and ``num_invalid`` counts them; ``len`` counts the
    rest. Image and length problems surface when an item is loaded. ``num_visual`` = H*W;
    ``aspect`` (:func:`load_image`) None = the release's for ``stage`` (crop, or pad in stage 2).
    ``blank_images``: each image is still loaded (the same records pass or fail), then replaced
    by :func:`blank_image`.
    """

    def __init__(self, records_or_path, image_folder, tokenizer, *, stage: str, image_size: int,
                 image_mean, aspect: str | None = None, max_length: int, num_visual: int,
                 strict: bool = False, plain_style: str = "release", source: str = "",
                 blank_images: bool = False):
        if stage not in ("align", "finetune"):
            raise ValueError(f"stage must be 'align' or 'finetune', got {stage!r}")
        if not 0 < num_visual < max_length:
            raise ValueError(f"need 0 < num_visual < max_length, got {num_visual} and {max_length}")
        aspect = aspect or release_image_aspect(stage)  # None: the release's (crop in stage 1)
        if aspect not in IMAGE_ASPECTS or plain_style not in PLAIN_STYLES:
            raise ValueError(f"aspect must be one of {IMAGE_ASPECTS} and plain_style one of {PLAIN_STYLES}")
        self.source = source  # the file the records came from, named in errors
        if isinstance(records_or_path, (str, Path)):
            self.source = str(records_or_path)
            records_or_path = read_llava_json(records_or_path)
        self.records = records_or_path
        self.ids = [_record_id(r, i) for i, r in enumerate(self.records)]
        self.image_folder = os.path.normpath(os.path.abspath(image_folder))
        self.tokenizer, self.stage, self.strict = tokenizer, stage, strict
        self.image_size, self.image_mean, self.aspect = image_size, tuple(image_mean), aspect
        self.max_length, self.num_visual, self.plain_style = max_length, num_visual, plain_style
        self.blank_images = blank_images
        self.image_id = image_token_id(tokenizer)
        # token ids per record, kept after the first load when the data set is small (the toy
        # world's runs see each record many times; 50k records of ~500 int64 ids and labels: ~0.4 GB)
        self._tokens = {} if len(self.records) <= TOKEN_CACHE_RECORDS else None
        # fitted images (uint8 [3, S, S]) likewise, when every record's fits in IMAGE_CACHE_BYTES
        self._images = {} if len(self.records) * 3 * image_size**2 <= IMAGE_CACHE_BYTES else None
        self.valid, self.problems = [], []
        for i, record in enumerate(self.records):
            try:
                _prepare(record, self.ids[i], stage, self.image_folder)
                self.valid.append(i)
            except BadRecord as e:
                if strict:
                    raise BadRecord(e.record_id, e.reason + " (--strict stops here)", self.source) from None
                self.problems.append((e.record_id, e.reason))

    def modality_lengths(self) -> tuple[list[int], list[bool]]:
        """Per usable record: LLaVA's word-count length estimate and whether it has an image
        (:func:`minijarvis.data.sampler.modality_lengths`), for stage 2's grouped batches."""
        from minijarvis.data.sampler import modality_lengths
        return modality_lengths(self.records[i] for i in self.valid)

    @property
    def num_invalid(self) -> int:
        return len(self.problems)

    def __len__(self) -> int:
        return len(self.valid)

    def __getitem__(self, index: int):
        i = self.valid[index]
        try:
            return self._load(i)
        except BadRecord as e:
            if self.strict:
                raise BadRecord(e.record_id, e.reason + " (--strict stops here)", self.source) from None
            return Skip(e.record_id, e.reason)

    def _load(self, i: int) -> dict:
        record, rid = self.records[i], self.ids[i]
        payload, path = _prepare(record, rid, self.stage, self.image_folder)
        cached = None if self._tokens is None else self._tokens.get(i)
        if cached is None:
            cached = tuple(torch.tensor(x, dtype=torch.long) for x in self._encode(payload, rid))
            if self._tokens is not None:
                self._tokens[i] = cached
        ids, labels = cached  # shared with the cache: collate copies them into the batch
        image = None if path is None else image_to_float(self._pixels(i, path, rid))
        if image is not None and self.blank_images:
            image = blank_image(self.image_size, self.image_mean)
        return dict(input_ids=ids, labels=labels, image=image, id=rid)

    def _pixels(self, i: int, path: str, rid: str) -> torch.Tensor:
        """Record ``i``'s image as :func:`load_image_uint8` fits it; kept after the first load
        when the data set's images fit ``IMAGE_CACHE_BYTES`` (the same pixels either way)."""
        pixels = None if self._images is None else self._images.get(i)
        if pixels is None:
            pixels = load_image_uint8(path, self.image_size, self.image_mean, self.aspect, record_id=rid)
            if self._images is not None:
                self._images[i] = pixels
        return pixels

    def _encode(self, payload, rid: str) -> tuple[list[int], list[int]]:
        """Token ids and labels of one record's text, truncated around its image's slots."""
        try:  # _prepare's checks should leave nothing for these to refuse; if not: a bad record
            if self.stage == "align":
                ids, labels = encode_caption(self.tokenizer, payload, self.plain_style)
            else:
                ids, labels = encode_conversation(self.tokenizer, payload)
        except ValueError as e:
            raise BadRecord(rid, str(e)) from None
        try:
            return truncate_spliced(ids, labels, self.max_length, self.num_visual, self.image_id)
        except ValueError as e:
            raise BadRecord(rid, str(e)) from None


# ---------------------------------------------------------------- batches
def collate(items: list, pad_id: int, image_size: int | None = None) -> dict:
    """Items (dicts or Skip) -> batch for ``JarvisModel.forward``:

    input_ids Long[B,T] right-padded with ``pad_id``; labels Long[B,T] padded with -100;
    attention_mask Long[B,T] (1 = real token); images float[B,3,S,S] (zeros for text-only rows;
    None if no row has an image and ``image_size`` is not given); has_image bool[B];
    ids list[str]; skipped list[(id, reason)]. If every item is a Skip the batch is
    ``{"skipped": [...]}`` alone (no "input_ids"): the caller counts it and moves on.
    """
    skipped = [(s.id, s.reason) for s in items if isinstance(s, Skip)]
    good = [x for x in items if not isinstance(x, Skip)]
    if not good:
        return {"skipped": skipped}
    lengths = torch.tensor([len(x["input_ids"]) for x in good])
    input_ids = pad_sequence([x["input_ids"] for x in good], batch_first=True, padding_value=pad_id)
    labels = pad_sequence([x["labels"] for x in good], batch_first=True, padding_value=IGNORE_INDEX)
    attention_mask = (torch.arange(input_ids.shape[1])[None] < lengths[:, None]).long()
    has_image = torch.tensor([x["image"] is not None for x in good], dtype=torch.bool)
    real = [x["image"] for x in good if x["image"] is not None]
    images = None
    if real or image_size is not None:
        shape = real[0].shape if real else (3, image_size, image_size)
        images = torch.zeros(len(good), *shape)
        if real:
            images[has_image] = torch.stack(real)
    return dict(input_ids=input_ids, labels=labels, attention_mask=attention_mask, images=images,
                has_image=has_image, ids=[x["id"] for x in good], skipped=skipped)


def make_collate(pad_id: int, image_size: int | None = None):
    """``collate`` with its settings bound (a picklable partial, fine for DataLoader workers)."""
    return functools.partial(collate, pad_id=pad_id, image_size=image_size)


def format_skips(skipped: list[tuple[str, str]], limit: int = 5) -> str:
    """One line for logs: ``skipped N records: 'id' (reason); ... and K more``."""
    shown = "; ".join(f"{rid!r} ({reason})" for rid, reason in skipped[:limit])
    more = f"; and {len(skipped) - limit} more" if len(skipped) > limit else ""
    return f"skipped {len(skipped)} records: {shown}{more}"
