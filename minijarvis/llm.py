"""The language model the MLLM is built around, and its tokenizer.

* :func:`build_llm`: the causal LM, from a hub id or local directory, or randomly initialised
  from a preset's ``llm_arch`` offline; :func:`resolve_attn` picks its attention backend.
* :func:`load_tokenizer`: the LLM's own tokenizer, or (``"builtin"``) an offline byte-level BPE
  for the tiny preset. :func:`build_tokenizer` trains that BPE to fit ``vocab_size=1024`` on a
  small built-in English corpus (colours, shapes, spatial words, numbers, LLaVA-style
  instructions): no download, deterministic (the same ids in every process), and — being
  byte-level, with no normaliser — it encodes ANY string and decodes it back exactly.

``"<image>"`` (:data:`IMAGE_TOKEN`) is one special token: the text ``"<image>"`` always becomes
exactly one id, which the model replaces by H*W visual slots before the embedding layer.
"""
from __future__ import annotations

import functools
from itertools import product

from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers
import torch
from transformers import (AutoConfig, AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerBase,
                          PreTrainedTokenizerFast)

from .config import ModelConfig

IMAGE_TOKEN = "<image>"
PAD, BOS, EOS = "<pad>", "<s>", "</s>"
SYSTEM, USER, ASSISTANT, END = "<|system|>", "<|user|>", "<|assistant|>", "<|end|>"
# Order fixes their ids: <pad>=0, <s>=1, </s>=2, <image>=3, then the chat markers.
SPECIAL_TOKENS = (PAD, BOS, EOS, IMAGE_TOKEN, SYSTEM, USER, ASSISTANT, END)
VOCAB_SIZE = 1024  # the tiny preset's llm_arch vocab_size; the trained vocab never exceeds it

# One turn = "<|role|>\n" + content + "<|end|>\n". Prefix-stable (rendering messages[:i] is a
# prefix of rendering messages[:i+1]), which data.encode_conversation relies on.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] not in ['system', 'user', 'assistant'] %}"
    "{{ raise_exception('role must be system, user or assistant, got ' + message['role']) }}"
    "{% endif %}"
    "{{ '<|' + message['role'] + '|>\n' + message['content'] + '<|end|>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
)

_COLOURS = ("red", "green", "blue", "yellow", "orange", "purple", "pink", "brown", "black",
            "white", "gray", "grey", "cyan", "magenta")
_SHAPES = ("cube", "sphere", "ball", "cone", "cylinder", "box", "pyramid", "circle", "square",
           "triangle", "rectangle", "star", "ring", "disk")
_SIZES = ("small", "large", "big", "tiny", "medium")
_RELATIONS = ("to the left of", "to the right of", "above", "below", "in front of", "behind",
              "next to", "on top of", "under", "closer to the camera than",
              "farther from the camera than", "near")
_NUMBERS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine",
            "ten", "eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen",
            "eighteen", "nineteen", "twenty", "thirty", "hundred", "thousand")
_FIXED_LINES = (
    "Describe the image briefly.", "Describe the image in detail.",
    "Render a clear and concise summary of the photo.", "Give a brief description of the image.",
    "Share a concise interpretation of the image provided.", "Summarize the visual content of the image.",
    "What do you see in this picture?", "What is shown in the image?",
    "Answer with the option's letter from the given choices directly.",
    "Answer the question using a single word or phrase.",
    "Options: (A) (B) (C) (D)", "(A) yes (B) no", "A. B. C. D.", "The answer is (A).",
    "Yes, it is.", "No, it is not.", "There is nothing else in the scene.",
    "Which object is closer to the camera?", "Which object is farther from the camera?",
    "Which one is larger?", "Which one is smaller?", "Where is the object located?",
    "Estimate the distance between the two objects.", "The distance is about 3 units.",
    "Who, what, when, where, why, how, which, whose, whom?",
    "The image shows a simple scene with a few objects on a plain background.",
    "It is a photo of some geometric shapes: a cube, a sphere, a cone and a cylinder.",
    "the a an and or but of to in on at by for with from into onto over between among is are was "
    "were be been has have had do does did this that these those it its there here they them "
    "their one two some many few all each every both no not only also very more most less than",
    "0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 20 25 50 100 1000 0.5 1.5 2.0",
    "left right top bottom middle center centre front back behind above below near far closer "
    "farther nearest farthest distance depth position corner edge side",
)


def _corpus() -> list[str]:
    """A few hundred deterministic lines (no randomness: the merges must not vary by run)."""
    lines = list(_FIXED_LINES)
    n_col, n_shp, n_rel = len(_COLOURS), len(_SHAPES), len(_RELATIONS)
    for i, (colour, shape) in enumerate(product(_COLOURS, _SHAPES)):
        other = f"{_COLOURS[(5 * i + 3) % n_col]} {_SHAPES[(7 * i + 2) % n_shp]}"
        lines.append(f"A {_SIZES[i % len(_SIZES)]} {colour} {shape} is "
                     f"{_RELATIONS[i % n_rel]} a {other}.")
    for i, relation in enumerate(_RELATIONS):
        a, b = _SHAPES[i % n_shp], _SHAPES[(i + 5) % n_shp]
        lines.append(f"Is the {_COLOURS[i % n_col]} {a} {relation} the {b}? Answer yes or no.")
        lines.append(f"What is {relation} the {b}? (A) the {a} (B) the {_SHAPES[(i + 3) % n_shp]}")
    for i, shape in enumerate(_SHAPES):
        lines.append(f"How many {shape}s are there? There are {_NUMBERS[i % 21]} {shape}s.")
        lines.append(f"What color is the {shape}? The {shape} is {_COLOURS[i % n_col]}.")
        lines.append(f"What colour is the {_SIZES[i % len(_SIZES)]} {shape}? It is {_COLOURS[-1 - i]}.")
    lines.append(" ".join(_NUMBERS))
    lines += _benchmark_wording()
    return lines


def _benchmark_wording() -> list[str]:
    """CV-Bench's question wording (ShapesBench asks in it), each phrase more than once so the
    BPE merges its words (min_frequency 2): a real LLM's tokenizer knows these common English
    words. Without them the toy one spelt "highlighted" in 11 pieces, and a Distance question
    with its chat markers took 135 ids instead of 84: a study's stage-2 step cost 1.4 times as much."""
    marks = ("magenta", "cyan", "black")
    lines = []
    for i in range(4):
        a, b, c = (f"{_COLOURS[(i + k) % 3]} {_SHAPES[(2 * i + k) % 4]}" for k in range(3))
        hl = [f"the {n} (highlighted by a {m} box)" for n, m in zip((a, b, c), marks)]
        lines += [
            f"How many {_SHAPES[i]}s are in the image? How many {_COLOURS[i]} objects are in the image?",
            f"Considering the relative positions of the {a} (annotated by the {marks[0]} box) and the "
            f"{b} (annotated by the {marks[1]} box) in the image provided, where is the {a} located "
            f"with respect to the {b}?",
            f"Which object is closer to the camera taking this photo, {hl[0]} or {hl[1]}?",
            f"Estimate the real-world distances between objects in this image. Which object is "
            f"closer to {hl[0]}, {hl[1]} or {hl[2]}?",
            "Answer with the option's letter from the given choices directly.",
        ]
    return lines


@functools.lru_cache(maxsize=1)
def _trained_json() -> str:
    """Train the BPE once per process; cached as JSON text (immutable), not as an object."""
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=VOCAB_SIZE, min_frequency=2, show_progress=False,
                                  special_tokens=list(SPECIAL_TOKENS),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    bpe.train_from_iterator(_corpus(), trainer=trainer)
    return bpe.to_str()


def build_tokenizer() -> PreTrainedTokenizerFast:
    """The built-in tokenizer: byte-level BPE, <= 1024 ids, specials <pad>=0 <s>=1 </s>=2
    <image>=3 and the chat markers, plus :data:`CHAT_TEMPLATE`. Adds no BOS/EOS by itself.

    Training runs once per process (cached); every call returns a fresh object, so callers
    may mutate theirs (add tokens, change padding side) without affecting anyone else.
    """
    tok = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(_trained_json()),
        pad_token=PAD, bos_token=BOS, eos_token=EOS,
        extra_special_tokens=[IMAGE_TOKEN, SYSTEM, USER, ASSISTANT, END],
        padding_side="right", clean_up_tokenization_spaces=False, model_max_length=1 << 20)
    tok.chat_template = CHAT_TEMPLATE
    return tok


def load_tokenizer(name: str) -> PreTrainedTokenizerBase:
    """``"builtin"`` -> :func:`build_tokenizer`; otherwise ``AutoTokenizer.from_pretrained(name)``
    (a local directory such as a checkpoint's ``tokenizer/``, or a hub id: only then is the
    network touched).

    Guarantees on the result: ``"<image>"`` is a special token (never split, one id) and a pad
    token exists (falls back to eos, then unk). Adding ``"<image>"`` may append an id past the
    LLM's embedding table; that is fine without any resize, because the model replaces every
    ``<image>`` id by visual features before the embedding lookup and never predicts it.
    """
    if name == "builtin":
        return build_tokenizer()
    tok = AutoTokenizer.from_pretrained(name)
    image = AddedToken(IMAGE_TOKEN, special=True, normalized=False, lstrip=False, rstrip=False)
    if IMAGE_TOKEN not in tok.all_special_tokens:
        tok.add_special_tokens({"extra_special_tokens": [image]}, replace_extra_special_tokens=False)
    if tok.pad_token is None:
        fallback = tok.eos_token or tok.unk_token
        if fallback is None:
            raise ValueError(f"tokenizer {name!r} has neither pad, eos nor unk token; "
                             "set tokenizer.pad_token before training")
        tok.pad_token = fallback
    if len(tok(IMAGE_TOKEN, add_special_tokens=False)["input_ids"]) != 1:
        raise ValueError(f"tokenizer {name!r} splits {IMAGE_TOKEN!r} into several ids")
    if tok.chat_template is None:
        # vicuna-7b-v1.5 ships none: LLaVA-1.5 trains it with its "v1" conversation format.
        tok.chat_template = VICUNA_V1_TEMPLATE
    return tok


# LLaVA's conv_vicuna_v1: a fixed system line, "USER: ... ASSISTANT: ...</s>" turns.
VICUNA_V1_TEMPLATE = (
    "{% for m in messages %}"
    "{% if loop.first and m['role'] != 'system' %}A chat between a curious user and an "
    "artificial intelligence assistant. The assistant gives helpful, detailed, and polite "
    "answers to the user's questions. {% endif %}"
    "{% if m['role'] == 'system' %}{{ m['content'] }} "
    "{% elif m['role'] == 'user' %}USER: {{ m['content'] }} "
    "{% elif m['role'] == 'assistant' %}ASSISTANT: {{ m['content'] }}</s>"
    "{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}ASSISTANT:{% endif %}")


SDPA_UNSUPPORTED = ("gemma2",)  # attention soft-capping: eager only (DESIGN.md §5)


def resolve_attn(cfg: ModelConfig, model_type: str) -> str:
    """The attention backend: eager for Gemma2 (soft-capping), SDPA for the others."""
    if cfg.llm_attn != "auto":
        return cfg.llm_attn
    return "eager" if model_type in SDPA_UNSUPPORTED else "sdpa"


def build_llm(cfg: ModelConfig) -> torch.nn.Module:
    """The causal LM: from ``llm_name`` (hub id or local directory) when ``llm_pretrained``,
    else randomly initialised from ``llm_arch`` offline. Only a pretrained load can reach
    the network, and only when ``llm_name`` is a hub id."""
    if cfg.llm_pretrained:
        config = AutoConfig.from_pretrained(cfg.llm_name)
        attn = resolve_attn(cfg, config.model_type)
        return AutoModelForCausalLM.from_pretrained(cfg.llm_name, attn_implementation=attn)
    arch = dict(cfg.llm_arch)
    model_type = arch.pop("model_type")
    config = AutoConfig.for_model(model_type, **arch)
    return AutoModelForCausalLM.from_config(config, attn_implementation=resolve_attn(cfg, model_type))
