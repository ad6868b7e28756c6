"""Text -> token ids + labels, built together segment by segment (DESIGN.md §1).

* Stage 1 (``align``): the plain template, ``<image>`` + caption, labels on the caption only
  (:func:`encode_caption`).
* Stage 2 (``finetune``): the tokenizer's chat template, labels on assistant turns only
  (:func:`encode_conversation`); prompts for inference (:func:`encode_prompt`) and scored
  replies (:func:`encode_reply`) get the ids training gave them.

Ids and labels are built together, segment by segment (as nanochat does), so LLaVA's
"tokenization mismatch" cannot happen; the segments are tokenized as one string
(:func:`encode_segments`), so the seams get the ids the whole text gets (SentencePiece
word-start markers, spaces), as the release tokenizes ``"<image>" + caption``.

The text ``"<image>"`` is one token id; the model later expands it into H*W visual slots, so
lengths that matter (``max_length``) are *spliced* lengths: text tokens - 1 + H*W.
"""
from __future__ import annotations

import numpy as np

from minijarvis.llm import IMAGE_TOKEN

IGNORE_INDEX = -100
ROLES = {"human": "user", "gpt": "assistant"}  # LLaVA's "from" -> chat-template role
PLAIN_STYLES = ("release", "llava")


def image_token_id(tokenizer) -> int:
    """Id of ``"<image>"``; ValueError if the tokenizer does not know it as one token."""
    ids = tokenizer(IMAGE_TOKEN, add_special_tokens=False)["input_ids"]
    if len(ids) != 1:
        raise ValueError(f"tokenizer splits {IMAGE_TOKEN!r} into {len(ids)} ids; "
                         "load it with minijarvis.llm.load_tokenizer")
    return ids[0]


def _tokens(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def encode_segments(tokenizer, segments: list[str]) -> tuple[list[int], list[int]]:
    """Texts -> (ids of their concatenation, tokenized as ONE string; the segment of each id).

    Tokenizing each segment on its own would change the ids at the seams: a SentencePiece
    tokenizer that adds its word-start marker only at the start of the text (Llama-2 /
    Vicuna: Metaspace ``prepend_scheme="first"``) gives the first word after ``"<image>"``
    without the marker in context and with it alone, and whitespace at a seam merges with the
    next word. So the whole text is tokenized once and every id is assigned to the segment
    that holds the last character of its span (a leading space or marker belongs to the word
    it starts; an empty span counts at its start). Needs a fast tokenizer (offsets).
    """
    text = "".join(segments)
    try:
        enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    except NotImplementedError:
        raise ValueError(f"tokenizer {tokenizer.name_or_path!r} gives no character offsets; "
                         "load a fast (tokenizers-backed) tokenizer") from None
    ends = np.cumsum([len(s) for s in segments])
    last = [end - 1 if end > start else start for start, end in enc["offset_mapping"]]
    which = np.searchsorted(ends, last, side="right").clip(max=len(segments) - 1)
    return list(enc["input_ids"]), which.tolist()


def encode_caption(tokenizer, caption: str, plain_style: str = "release") -> tuple[list[int], list[int]]:
    """Stage-1 plain template -> (ids, labels), labels = ids on the caption, -100 elsewhere.

    ``"release"`` (JARVIS, default): ``"<image>" + caption`` tokenized as one string, the
    caption's ids labelled (no BOS, no EOS, no newline). With a Llama-2-style SentencePiece
    tokenizer the first caption word then has no word-start marker, as in the release.
    ``"llava"`` (LLaVA's ``preprocess_plain``, separator "\\n"): ``[BOS, <image>] + ids of
    caption + "\\n"``, the newline labelled (it plays the EOS role); BOS omitted if the
    tokenizer has none. LLaVA's ``tokenizer_image_token`` tokenizes the text after
    ``"<image>"`` on its own, so here the caption is tokenized alone (with the marker).
    """
    if plain_style not in PLAIN_STYLES:
        raise ValueError(f"plain_style must be one of {PLAIN_STYLES}, got {plain_style!r}")
    if not caption.strip():
        raise ValueError("empty caption")
    image = image_token_id(tokenizer)
    if plain_style == "llava":
        prefix = ([tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []) + [image]
        text = _tokens(tokenizer, caption + "\n")
        return prefix + text, [IGNORE_INDEX] * len(prefix) + text
    ids, which = encode_segments(tokenizer, [IMAGE_TOKEN, caption])
    if ids.count(image) != 1 or which[0] != 0 or 0 in which[1:]:
        raise ValueError(f"the caption merged with {IMAGE_TOKEN!r} or holds one itself")
    return ids, [IGNORE_INDEX if w == 0 else t for t, w in zip(ids, which)]


def _render(tokenizer, messages: list[dict], generation_prompt: bool = False) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False,
                                         add_generation_prompt=generation_prompt)


def _suffix(tokenizer, shorter: str, longer: str, turn: int) -> str:
    """``longer`` minus its prefix ``shorter``; the template must be prefix-stable."""
    if not longer.startswith(shorter):
        raise ValueError(
            f"the chat template of {tokenizer.name_or_path!r} is not prefix-stable at message "
            f"{turn}: rendering fewer messages does not give a prefix of rendering more. "
            "Segment-by-segment label masking needs a prefix-stable template (templates that "
            "move the system prompt into the last user turn are not); set tokenizer.chat_template")
    return longer[len(shorter):]


def encode_conversation(tokenizer, conversations: list[dict]) -> tuple[list[int], list[int]]:
    """Stage-2 chat template -> (ids, labels); labels = ids on each assistant turn's content and
    its end-of-turn marker (the last special token of the turn), -100 elsewhere.

    ``conversations``: LLaVA turns ``{"from": "human"|"gpt", "value": str}``, starting with a
    human turn. The segments are the render of messages[:i+1] minus the render of
    messages[:i], an assistant one split at the generation-prompt header (unlabelled); ids =
    the whole render tokenized as one string (:func:`encode_segments`), so they equal
    ``apply_chat_template(tokenize=True)`` and what :func:`encode_prompt` gives at inference.
    Text the template appends after the end marker (e.g. "\\n") is not labelled: the model
    stops at the marker.
    """
    if not conversations or conversations[0].get("from") != "human":
        raise ValueError("a conversation must be a non-empty list starting with a human turn")
    if tokenizer.chat_template is None:
        raise ValueError(f"tokenizer {tokenizer.name_or_path!r} has no chat_template; set one")
    if any(t.get("from") not in ROLES or not isinstance(t.get("value"), str) for t in conversations):
        raise ValueError('every turn needs "from" in human|gpt and a string "value"')
    messages = [{"role": ROLES[t["from"]], "content": t["value"]} for t in conversations]
    special = set(tokenizer.all_special_ids) - {image_token_id(tokenizer)}
    segments, bodies, prev = [], set(), ""
    for i, message in enumerate(messages):
        full = _render(tokenizer, messages[: i + 1])
        if message["role"] == "assistant":
            if not message["content"].strip():
                raise ValueError(f"empty assistant text in turn {i}")
            header = _render(tokenizer, messages[:i], generation_prompt=True)
            segments.append(_suffix(tokenizer, prev, header, i))
            prev = header
            bodies.add(len(segments))
        segments.append(_suffix(tokenizer, prev, full, i))
        prev = full
    ids, which = encode_segments(tokenizer, segments)
    labels, by_segment = [IGNORE_INDEX] * len(ids), {}
    for k, w in enumerate(which):
        by_segment.setdefault(w, []).append(k)
    for b in bodies:  # content + end marker (the body's last special token)
        pos = by_segment.get(b, [])
        ends = [k for k in pos if ids[k] in special]
        for k in pos[: pos.index(ends[-1]) + 1 if ends else len(pos)]:
            labels[k] = ids[k]
    if all(label == IGNORE_INDEX for label in labels):
        raise ValueError("conversation has no assistant turn")
    n_text = sum(t["value"].count(IMAGE_TOKEN) for t in conversations)
    if ids.count(image_token_id(tokenizer)) != n_text:
        raise ValueError(f"{n_text} {IMAGE_TOKEN!r} in the text did not become as many ids")
    return ids, labels


def _question(question: str, has_image: bool) -> str:
    if has_image and IMAGE_TOKEN not in question:
        return IMAGE_TOKEN + "\n" + question
    if not has_image and IMAGE_TOKEN in question:
        raise ValueError(f"has_image=False but the question contains {IMAGE_TOKEN!r}")
    return question


def encode_prompt(tokenizer, question: str, has_image: bool = True) -> list[int]:
    """Ids of one user message + generation prompt (chat template), for eval-time generation.
    With ``has_image`` the question gets a leading ``"<image>\\n"`` unless it has one already."""
    question = _question(question, has_image)
    return _tokens(tokenizer, _render(tokenizer, [{"role": "user", "content": question}], True))


def encode_reply(tokenizer, question: str, answer: str, has_image: bool = True):
    """(ids, labels) of ``question`` then ``answer`` as an assistant reply, tokenized as in
    training (:func:`encode_conversation`), cut after the answer's last id; labels on the
    answer's ids only (not the end marker). For scoring answer options after a prompt."""
    turns = [{"from": "human", "value": _question(question, has_image)},
             {"from": "gpt", "value": answer}]
    ids, labels = encode_conversation(tokenizer, turns)
    keep = [k for k, label in enumerate(labels) if label != IGNORE_INDEX]
    if keep and ids[keep[-1]] in tokenizer.all_special_ids:
        keep = keep[:-1]  # the end-of-turn marker
    if not keep:
        raise ValueError(f"answer {answer!r} tokenizes to nothing")
    return ids[: keep[-1] + 1], labels[: keep[-1] + 1]


def stop_token_ids(tokenizer) -> list[int]:
    """Ids that end a generated assistant turn: the template's end-of-turn marker (the last
    labelled id of a one-turn reply, if special) then eos. Builtin: [<|end|>, </s>]."""
    _, labels = encode_conversation(tokenizer, [{"from": "human", "value": "Hi"},
                                                {"from": "gpt", "value": "Hello"}])
    last = [label for label in labels if label != IGNORE_INDEX][-1]
    out = [last] if last in tokenizer.all_special_ids else []
    eos = tokenizer.eos_token_id
    return out + ([eos] if eos is not None and eos not in out else [])


def truncate_spliced(ids: list[int], labels: list[int], max_length: int, num_visual: int,
                     image_id: int) -> tuple[list[int], list[int]]:
    """Cut the text end so that the spliced length (text - 1 + num_visual per image token) is
    <= max_length. ValueError (with the reason) if the image token itself would be cut or if
    no label survives."""
    extra = (num_visual - 1) * ids.count(image_id)
    if len(ids) + extra <= max_length:
        return ids, labels
    keep = max_length - extra
    if image_id in ids and ids.index(image_id) >= keep:
        raise ValueError(f"the image placeholder (text token {ids.index(image_id)}) ends past "
                         f"max_length={max_length} once expanded to {num_visual} slots")
    ids, labels = ids[:keep], labels[:keep]
    if all(label == IGNORE_INDEX for label in labels):
        raise ValueError(f"no supervised token left after truncation to max_length={max_length}")
    return ids, labels
