"""LLaVA data -> token ids + labels -> batches (DESIGN.md §1); text -> ids is ``text.py``.

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

import numpy as np
import torch
from PIL import Image
from torch.nn.utils.rnn import pad_sequence

from minijarvis.config import IMAGE_ASPECTS, release_image_aspect
from minijarvis.errors import InputError
from minijarvis.data.text import (  # noqa: F401 (text -> ids lives in text.py; re-exported here)
    IGNORE_INDEX, PLAIN_STYLES, ROLES, encode_caption, encode_conversation, encode_prompt,
    encode_reply, encode_segments, image_token_id, stop_token_ids, truncate_spliced)
from minijarvis.llm import IMAGE_TOKEN


class BadRecord(InputError):
    """A data record that cannot be used: ``record_id`` (str), a human-readable ``reason`` and
    the ``source`` file if known. An InputError: uncaught (``--strict``), it ends the run with
    one line, exit status 1."""

    def __init__(self, record_id: str, reason: str, source: str = ""):
        super().__init__(record_id, reason, source)  # all in args, so it pickles across workers
        self.record_id, self.reason, self.source = record_id, reason, source

    def __str__(self) -> str:
        where = f"{self.source}: " if self.source else ""
        return f"{where}record {self.record_id!r}: {self.reason}"


class Skip(NamedTuple):
    """What the dataset returns instead of an item for a bad record (when not strict)."""

    id: str
    reason: str


# ---------------------------------------------------------------- images
def _to_rgb(img: Image.Image, background: tuple[int, int, int]) -> Image.Image:
    """Any PIL mode -> RGB. 16/32-bit grayscale is rescaled (PIL's own convert would clip it
    to white); transparency is composited on ``background`` (transparent = no content, like
    the padding), where LLaVA's plain ``convert("RGB")`` would expose hidden colours."""
    if img.mode in ("I", "F") or img.mode.startswith("I;16"):
        a = np.asarray(img, dtype=np.float64)
        scale = 65535.0 if img.mode.startswith("I;16") or a.max(initial=0) > 255 else 255.0
        img = Image.fromarray(np.clip(a / scale * 255 + 0.5, 0, 255).astype(np.uint8), "L")
    if img.mode in ("P", "L", "RGB") and "transparency" in img.info or img.mode in (
            "LA", "La", "PA", "RGBa"):
        img = img.convert("RGBA")
    if img.mode == "RGBA":
        out = Image.new("RGB", img.size, background)
        out.paste(img, mask=img.getchannel("A"))
        return out
    return img.convert("RGB")


def expand2square(img: Image.Image, background: tuple[int, int, int]) -> Image.Image:
    """LLaVA's "pad": the image centred on a square canvas of side max(w, h) in ``background``."""
    w, h = img.size
    if w == h:
        return img
    side = max(w, h)
    out = Image.new(img.mode, (side, side), background)
    out.paste(img, ((side - w) // 2, (side - h) // 2))
    return out


def shortest_edge_size(width: int, height: int, size: int) -> tuple[int, int]:
    """(width, height) after resizing the short side to ``size`` and the long side in
    proportion, truncated as transformers' ``get_resize_output_image_size`` does
    (``int(size * long / short)``, never rounded up)."""
    short, long = (width, height) if width <= height else (height, width)
    new_long = int(size * long / short)
    return (size, new_long) if width <= height else (new_long, size)


def resize_and_center_crop(img: Image.Image, size: int) -> Image.Image:
    """CLIP's processor (``CLIPImageProcessor`` on PIL, shortest_edge = crop = ``size``): PIL
    bicubic resize of the uint8 image to :func:`shortest_edge_size`, then the centred
    ``size x size`` window whose top-left corner is ``((w - size) // 2, (h - size) // 2)``."""
    width, height = shortest_edge_size(*img.size, size)
    img = img.resize((width, height), Image.BICUBIC)
    left, top = (width - size) // 2, (height - size) // 2
    return img.crop((left, top, left + size, top + size))


MAX_ASPECT = 50  # long side / short side; LLaVA's data has panoramas and banners up to ~20:1


def fit_problem(width: int, height: int, size: int, aspect: str) -> str:
    """Why fitting a ``width x height`` image costs too much, or "" if it does not: an aspect
    ratio above MAX_ASPECT, or more pixels made by the resize / padding than PIL's own
    decompression-bomb limit (a 1 x 50,000 PNG of 281 bytes passes that limit, but its crop
    resize would be 192 x 9,600,000)."""
    short, long = min(width, height), max(width, height)
    if short < 1 or long / short > MAX_ASPECT:
        return f"image {width}x{height}: aspect ratio {long}:{short} is beyond {MAX_ASPECT}:1"
    made = {"crop": size * int(size * long / short), "pad": long * long, "resize": size * size}[aspect]
    limit = Image.MAX_IMAGE_PIXELS or 89_478_485
    if made > limit:
        return f"image {width}x{height}: fitting it ({aspect}) makes {made:,} pixels, over {limit:,}"
    return ""


def load_image(src, size: int, mean, aspect: str = "pad", record_id: str = "") -> torch.Tensor:
    """Path or PIL image -> float [3, size, size] in [0, 1] (uint8 / 255, as the processor's
    rescale; each encoder applies its own mean/std).

    ``aspect="crop"``: :func:`resize_and_center_crop` (CLIP's processor; the release's stage 1);
    ``"pad"``: :func:`expand2square` in the encoder's mean colour ``int(m * 255)``, then bicubic
    resize (LLaVA's stage 2); ``"resize"``: bicubic resize straight to size x size (distorts).
    A missing or undecodable file, or one too costly to fit (:func:`fit_problem`), raises
    :class:`BadRecord` (id = ``record_id`` or the path).
    """
    if aspect not in IMAGE_ASPECTS:
        raise ValueError(f"aspect must be one of {', '.join(IMAGE_ASPECTS)}; got {aspect!r}")
    background = tuple(int(m * 255) for m in mean)
    rid = record_id or str(src)
    if isinstance(src, Image.Image):
        if fit_problem(*src.size, size, aspect):
            raise BadRecord(rid, fit_problem(*src.size, size, aspect))
        rgb = _to_rgb(src, background)
    else:
        try:
            with Image.open(src) as f:
                if fit_problem(*f.size, size, aspect):  # from the header: before decoding
                    raise BadRecord(rid, fit_problem(*f.size, size, aspect))
                f.load()  # decode now: truncated/corrupt files fail here, not later
                rgb = _to_rgb(f, background)
        except FileNotFoundError:
            raise BadRecord(rid, f"image file not found: {src}") from None
        except BadRecord:
            raise
        except Exception as e:  # PIL raises many types for bad files; all mean "unreadable"
            raise BadRecord(rid, f"cannot decode image {src}: {type(e).__name__}: {e}") from None
    if aspect == "crop":
        rgb = resize_and_center_crop(rgb, size)
    else:
        if aspect == "pad":
            rgb = expand2square(rgb, background)
        rgb = rgb.resize((size, size), Image.BICUBIC)
    return torch.from_numpy(np.asarray(rgb, dtype=np.uint8).copy()).permute(2, 0, 1).float().div(255)


def blank_image(size: int, mean) -> torch.Tensor:
    """A blank image as :func:`load_image` returns one: [3, size, size] in the encoder's mean
    colour ``int(m * 255) / 255`` (the colour LLaVA pads with, "no content"). ``--blank-images``
    puts it in place of every image: the text-only bound (study.py's ``llava-blank``)."""
    colour = torch.tensor([int(m * 255) / 255 for m in mean], dtype=torch.float32)
    return colour[:, None, None].expand(3, size, size).clone()


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
            return self._load(self.records[i], self.ids[i])
        except BadRecord as e:
            if self.strict:
                raise BadRecord(e.record_id, e.reason + " (--strict stops here)", self.source) from None
            return Skip(e.record_id, e.reason)

    def _load(self, record, rid: str) -> dict:
        payload, path = _prepare(record, rid, self.stage, self.image_folder)
        try:  # _prepare's checks should leave nothing for these to refuse; if not: a bad record
            if self.stage == "align":
                ids, labels = encode_caption(self.tokenizer, payload, self.plain_style)
            else:
                ids, labels = encode_conversation(self.tokenizer, payload)
        except ValueError as e:
            raise BadRecord(rid, str(e)) from None
        try:
            ids, labels = truncate_spliced(ids, labels, self.max_length, self.num_visual,
                                           self.image_id)
        except ValueError as e:
            raise BadRecord(rid, str(e)) from None
        image = None if path is None else load_image(path, self.image_size, self.image_mean,
                                                     self.aspect, record_id=rid)
        if image is not None and self.blank_images:
            image = blank_image(self.image_size, self.image_mean)
        return dict(input_ids=torch.tensor(ids, dtype=torch.long),
                    labels=torch.tensor(labels, dtype=torch.long), image=image, id=rid)


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
