"""The built-in byte-level BPE and load_tokenizer (minijarvis/llm.py)."""
import json
import subprocess
import sys
import time

import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from minijarvis import llm as tkn
from minijarvis.config import preset
from minijarvis.llm import IMAGE_TOKEN, build_tokenizer, load_tokenizer

SAMPLE = "A small red cube is to the left of a blue sphere. (A) 12 (B) 3"
_FINGERPRINT = ("from minijarvis.llm import build_tokenizer as b; import json; t = b(); "
                f"print(json.dumps([sorted(t.get_vocab().items()), t({SAMPLE!r})['input_ids']]))")


@pytest.fixture(scope="module")
def tok():
    return build_tokenizer()


def test_build_gives_same_ids_in_another_process(tok):
    out = subprocess.run([sys.executable, "-c", _FINGERPRINT], capture_output=True, text=True,
                         check=True).stdout
    vocab, ids = json.loads(out)
    assert [tuple(v) for v in vocab] == sorted(tok.get_vocab().items()), "vocab differs between processes"
    assert ids == tok(SAMPLE)["input_ids"], "same text gave different ids in another process"


def test_build_returns_fresh_independent_objects():
    a, b = build_tokenizer(), build_tokenizer()
    assert a is not b
    a.add_tokens(["<extra-token>"])
    assert len(b) == len(build_tokenizer()) == len(a) - 1, "mutating one copy changed another"
    assert a(SAMPLE)["input_ids"] == b(SAMPLE)["input_ids"]


def test_build_takes_well_under_a_second():
    tkn._trained_json.cache_clear()
    start = time.perf_counter()
    build_tokenizer()
    assert time.perf_counter() - start < 1.0, "training the built-in BPE is too slow"


def test_vocab_fits_the_tiny_llm(tok):
    assert len(tok) <= preset("tiny").llm_arch["vocab_size"] == 1024, f"vocab {len(tok)} > 1024"


def test_special_tokens_are_single_distinct_ids(tok):
    ids = [tok(s, add_special_tokens=False)["input_ids"] for s in tkn.SPECIAL_TOKENS]
    assert all(len(i) == 1 for i in ids), f"a special token is split: {ids}"
    assert len({i[0] for i in ids}) == len(ids), "two special tokens share an id"
    assert (tok.pad_token, tok.bos_token, tok.eos_token) == ("<pad>", "<s>", "</s>")
    assert tok.convert_tokens_to_ids(IMAGE_TOKEN) in tok.all_special_ids


def test_image_string_is_one_id_inside_text(tok):
    ids = tok("look:<image>\nwhat?", add_special_tokens=False)["input_ids"]
    assert ids.count(tok.convert_tokens_to_ids(IMAGE_TOKEN)) == 1, "<image> not kept as one id"


def test_encoding_adds_no_bos_or_eos(tok):
    ids = tok(SAMPLE)["input_ids"]
    assert tok.bos_token_id not in ids and tok.eos_token_id not in ids


@pytest.mark.parametrize("text", [
    "", " ", "  two  spaces\tand\ttabs\n\nnewlines \r\n", "Ünïcødé café naïve façade",
    "emoji 🙂👍🏽 and flags 🇫🇷", "中文 日本語 한국어 العربية עברית", "e\u0301 combining \u200b zero-width",
    "\x00\x01 control \x7f", "tokens <image> <|user|> </s> <pad> kept", "((A)) 3.14 -7 1e9 $%&*",
])
def test_any_string_round_trips(tok, text):
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert tok.decode(ids) == text, f"decode(encode(s)) != s for {text!r}"


def test_chat_template_renders_roles_and_generation_prompt(tok):
    messages = [{"role": "system", "content": "S"}, {"role": "user", "content": "<image>\nQ"},
                {"role": "assistant", "content": "A"}, {"role": "user", "content": "Q2"}]
    text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert text == ("<|system|>\nS<|end|>\n<|user|>\n<image>\nQ<|end|>\n"
                    "<|assistant|>\nA<|end|>\n<|user|>\nQ2<|end|>\n<|assistant|>\n")


def test_chat_template_rejects_unknown_role(tok):
    with pytest.raises(Exception, match="role must be system, user or assistant"):
        tok.apply_chat_template([{"role": "robot", "content": "x"}], tokenize=False)


def test_save_and_load_local_directory_round_trip(tok, tmp_path):
    tok.save_pretrained(tmp_path)
    loaded = load_tokenizer(str(tmp_path))
    assert loaded(SAMPLE + " <image>")["input_ids"] == tok(SAMPLE + " <image>")["input_ids"]
    assert loaded.chat_template == tok.chat_template, "chat template lost on save/load"
    assert (loaded.pad_token_id, loaded.eos_token_id, len(loaded)) == (tok.pad_token_id, tok.eos_token_id, len(tok))


def test_load_builtin_is_build_tokenizer(tok):
    assert load_tokenizer("builtin").get_vocab() == tok.get_vocab()


def test_load_adds_image_token_and_pad_fallback(tmp_path):
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator(["a plain corpus with <image> inside"] * 3, trainers.BpeTrainer(
        vocab_size=300, special_tokens=["</s>"], show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="</s>").save_pretrained(tmp_path)
    loaded = load_tokenizer(str(tmp_path))
    image_id = loaded.convert_tokens_to_ids(IMAGE_TOKEN)
    assert loaded("x<image>\ny", add_special_tokens=False)["input_ids"].count(image_id) == 1, \
        "load_tokenizer did not make <image> a single special token"
    assert IMAGE_TOKEN in loaded.all_special_tokens
    assert loaded.pad_token == "</s>", "pad should fall back to eos"


def test_a_tokenizer_without_chat_template_gets_llava_v1(tmp_path):
    """vicuna-7b-v1.5 ships no chat template; stage 2 must still build ids and labels."""
    from minijarvis.data.llava import encode_conversation
    from minijarvis.llm import VICUNA_V1_TEMPLATE, build_tokenizer, load_tokenizer
    tok = build_tokenizer()
    tok.chat_template = None
    tok.save_pretrained(tmp_path)
    loaded = load_tokenizer(str(tmp_path))
    assert loaded.chat_template == VICUNA_V1_TEMPLATE
    ids, labels = encode_conversation(loaded, [{"from": "human", "value": "<image>\nHi"},
                                               {"from": "gpt", "value": "Hello"}])
    text = loaded.decode([i for i, lab in zip(ids, labels) if lab != -100])
    assert text.strip() == "Hello</s>", text
    assert "USER: " in loaded.decode(ids) and "ASSISTANT:" in loaded.decode(ids)


def test_builtin_knows_the_benchmark_wording(tok):
    """CV-Bench's phrases are in the BPE's corpus (llm._benchmark_wording): their words are whole
    tokens, as in a real LLM's tokenizer, so a ShapesBench prompt is not spelt letter by letter
    (a Distance question with its chat markers took 135 ids before, 84 now)."""
    from minijarvis.evaluation.shapesbench import ANSWER_INSTRUCTION, bench_item
    for word in ("highlighted", " distances", " option", " choices", " directly"):
        assert len(tok(word, add_special_tokens=False)["input_ids"]) == 1, word
    assert len(tok(ANSWER_INSTRUCTION)["input_ids"]) <= 14
    item = bench_item("Distance", 0, render_image=False)
    assert len(tok(item["prompt"])["input_ids"]) < 80
