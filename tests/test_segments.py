"""Token ids at segment seams: SentencePiece (marker at the start only / before every split)
and byte-level BPE tokenizers give the ids of the whole text tokenized as one string."""
import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

from minijarvis.data.llava import (IGNORE_INDEX, encode_caption, encode_conversation, encode_prompt,
                             encode_reply, encode_segments)
from minijarvis.llm import IMAGE_TOKEN, build_tokenizer, load_tokenizer

CORPUS = [
    "A red cube is to the left of a blue sphere.", "The image shows a cat on a mat.",
    "Two green cones stand behind a yellow cylinder.", "What is in the picture?",
    "It is a small brown dog sitting next to a white ball.", "Describe the image briefly.",
    "A chat between a curious user and an artificial intelligence assistant.",
    "USER: What color is the cube? ASSISTANT: The cube is red.",
] * 8
CAPTIONS = ["A red cube is to the left of a blue sphere.", "the cat on a mat",
            " Two green cones.", "zebra quilt"]  # a leading space; unseen words
CHAT = [{"from": "human", "value": "<image>\nWhat color is the cube?"},
        {"from": "gpt", "value": "The cube is red."},
        {"from": "human", "value": "What is behind it?"},
        {"from": "gpt", "value": "A blue sphere is behind it."}]
SPECIALS = ["<unk>", "<s>", "</s>", "<pad>"]


def sentencepiece(kind: str, scheme: str) -> PreTrainedTokenizerFast:
    """A Llama-style tokenizer trained here: Metaspace marker (``scheme`` "first" = Llama-2 /
    Vicuna, "always" = legacy), BOS added by the post-processor, "<image>" special."""
    if kind == "bpe":
        tok = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True))
        trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=SPECIALS, show_progress=False)
    else:
        tok = Tokenizer(models.Unigram())
        trainer = trainers.UnigramTrainer(vocab_size=200, special_tokens=SPECIALS,
                                          unk_token="<unk>", show_progress=False)
    tok.pre_tokenizer = pre_tokenizers.Metaspace(prepend_scheme=scheme)
    tok.decoder = decoders.Metaspace(prepend_scheme=scheme)
    tok.train_from_iterator(CORPUS, trainer=trainer)
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", special_tokens=[("<s>", tok.token_to_id("<s>"))])
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>",
                                   eos_token="</s>", pad_token="<pad>",
                                   extra_special_tokens=[IMAGE_TOKEN])


TOKENIZERS = {"sp-bpe-first": ("bpe", "first"), "sp-bpe-always": ("bpe", "always"),
              "sp-unigram-first": ("unigram", "first"), "byte-level": None}


@pytest.fixture(params=list(TOKENIZERS))
def tok(request, tmp_path):
    """Each tokenizer saved to a directory and loaded as a real one is (load_tokenizer: the
    Vicuna v1 chat template when none is shipped)."""
    if TOKENIZERS[request.param] is None:
        return build_tokenizer()
    sentencepiece(*TOKENIZERS[request.param]).save_pretrained(tmp_path)
    return load_tokenizer(str(tmp_path))


def plain(tok, text):
    return tok(text, add_special_tokens=False)["input_ids"]


@pytest.mark.parametrize("caption", CAPTIONS)
def test_caption_ids_and_labels_equal_one_string_then_mark(tok, caption):
    ids, labels = encode_caption(tok, caption)
    ref = plain(tok, IMAGE_TOKEN + caption)  # the release: one string, caption marked
    image = tok.convert_tokens_to_ids(IMAGE_TOKEN)
    assert ids == ref
    assert labels == [IGNORE_INDEX] + ref[1:] and ref[0] == image


def test_marker_at_start_only_changes_the_first_caption_id():
    """Why encoding the caption alone was wrong: with Llama-2's marker the first word differs."""
    tok = sentencepiece("bpe", "first")
    _, labels = encode_caption(tok, "the cat on a mat")
    alone = plain(tok, "the cat on a mat")
    assert labels[1:] != alone, "test needs a tokenizer where context changes the first id"
    assert tok.convert_ids_to_tokens(alone[0]).startswith("▁")
    assert not tok.convert_ids_to_tokens(labels[1]).startswith("▁")
    always = sentencepiece("bpe", "always")
    assert encode_caption(always, "the cat on a mat")[1][1:] == plain(always, "the cat on a mat")


def tokenizer_image_token(tok, prompt):
    """LLaVA's tokenizer_image_token, from its description: chunks around "<image>" tokenized
    separately with special tokens; the BOS of every chunk but the first dropped."""
    chunks = [tok(c)["input_ids"] for c in prompt.split(IMAGE_TOKEN)]
    offset = 1 if chunks[0] and chunks[0][0] == tok.bos_token_id else 0
    out = chunks[0][:offset]
    for k, chunk in enumerate(chunks):
        out += ([tok.convert_tokens_to_ids(IMAGE_TOKEN)] if k else []) + chunk[offset:]
    return out


@pytest.mark.parametrize("caption", CAPTIONS)
def test_llava_style_equals_llava_preprocess_plain(tok, caption):
    ids, labels = encode_caption(tok, caption, plain_style="llava")
    ref = tokenizer_image_token(tok, IMAGE_TOKEN + caption + "\n")
    n = len(tokenizer_image_token(tok, IMAGE_TOKEN))
    if tok.bos_token_id is not None and tok("x")["input_ids"][0] != tok.bos_token_id:
        ref = [tok.bos_token_id] + ref  # builtin: no post-processor; minijarvis adds BOS itself
        n += 1
    assert ids == ref
    assert labels == [IGNORE_INDEX] * n + ref[n:]


def test_conversation_ids_equal_the_render_tokenized_as_one_string(tok):
    ids, labels = encode_conversation(tok, CHAT)
    messages = [{"role": {"human": "user", "gpt": "assistant"}[t["from"]], "content": t["value"]}
                for t in CHAT]
    assert ids == plain(tok, tok.apply_chat_template(messages, tokenize=False))
    runs, run = [], []
    for t, label in zip(ids, labels):
        if label != IGNORE_INDEX:
            run.append(t)
        elif run:
            runs, run = runs + [run], []
    runs += [run] if run else []
    end = "<|end|>" if "<|end|>" in tok.chat_template else "</s>"
    assert [tok.decode(r).strip() for r in runs] == [t["value"] + end for t in CHAT[1::2]]


def test_prompt_ids_are_a_prefix_of_the_training_ids(tok):
    """What the model sees at inference is what it was trained on."""
    ids, _ = encode_conversation(tok, CHAT[:2])
    prompt = encode_prompt(tok, "What color is the cube?")
    assert ids[: len(prompt)] == prompt


def test_segments_assign_a_leading_space_to_the_word_it_starts(tok):
    ids, which = encode_segments(tok, ["USER: hi ", "ASSISTANT:", " The cube"])
    assert ids == plain(tok, "USER: hi ASSISTANT: The cube")
    assert which == sorted(which) and set(which) == {0, 1, 2}
    assert tok.decode([t for t, w in zip(ids, which) if w == 2]).strip() == "The cube"


def test_scored_option_has_the_ids_training_gave_the_reply(tok):
    """Option scoring (inference.score_options) sees the answer as training did, end marker cut."""
    full, full_labels = encode_conversation(tok, CHAT[:2])
    ids, labels = encode_reply(tok, "What color is the cube?", "The cube is red.")
    assert ids == full[: len(ids)] and labels == full_labels[: len(ids)]
    assert ids[: len(encode_prompt(tok, "What color is the cube?"))] == encode_prompt(tok, "What color is the cube?")
    assert tok.decode([t for t in labels if t != IGNORE_INDEX]).strip() == "The cube is red."
