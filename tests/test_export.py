"""Export to transformers' LLaVA: the exported model, loaded offline by the Auto classes, gives
minijarvis's token ids, pixels, next-token logits and greedy tokens; what LLaVA cannot express
is refused."""
from __future__ import annotations

import dataclasses
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import (AutoConfig, AutoModelForCausalLM, AutoModelForImageTextToText,
                          AutoProcessor, PreTrainedTokenizerFast)

from conftest import tiny_config
from minijarvis.export import llava as E
from minijarvis.export import hf_vision
from minijarvis.config import IMAGE_ASPECTS, METHODS
from minijarvis.data.llava import encode_prompt
from minijarvis.data.images import load_image
from minijarvis.encoders import VisionEncoder
from minijarvis.errors import InputError, UsageError, run_main
from minijarvis.evaluation.inference import _batch
from minijarvis.model import JarvisModel
from minijarvis.llm import _corpus
from minijarvis.evaluation.inference import generate
from minijarvis.training.checkpoint import save_checkpoint

QUESTION = "How many cubes are there? Answer with the option's letter."
PENULTIMATE = {k: v for k, v in dict(ctx_layer=-2, ctx_norm=False).items()
               if k in {f.name for f in dataclasses.fields(tiny_config())}}  # where configurable


def _image(width=150, height=90, seed=0) -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def _checkpoint(tmp_path, cfg, name="ckpt") -> str:
    torch.manual_seed(0)
    save_checkpoint(JarvisModel(cfg, stage="finetune"), tmp_path / name)
    return str(tmp_path / name)


def _minijarvis_view(mj, image, question, aspect):
    """minijarvis's own inference inputs: the spliced ids, the pixels, the next-token logits."""
    ids = encode_prompt(mj.tokenizer, question)
    spliced = [t for i in ids for t in ([i] * mj.num_visual if i == mj.image_token_id else [i])]
    pixels = load_image(image, mj.image_size, mj.image_mean, aspect)
    with torch.no_grad():
        x = mj.prepare_inputs(_batch(mj, [ids], pixels[None]))
        logits = mj.llm(inputs_embeds=x["embeds"], attention_mask=x["mask"]).logits[0, -1]
    mean = torch.tensor(mj.image_mean).view(3, 1, 1)
    std = torch.tensor(mj.context_encoder.std).view(3, 1, 1)
    return spliced, (pixels - mean) / std, pixels, logits


def assert_export_matches(tmp_path, checkpoint, aspect="pad", image=None, tokens=8, allow_causal=False):
    """Export, load offline with the Auto classes, compare with minijarvis end to end (with
    ``allow_causal``: with minijarvis run causally, which is what the export promises)."""
    out, mj = E.export(checkpoint, tmp_path / "hf", allow_causal, overwrite=True)  # may re-export
    mj.bidirectional_visual = False if allow_causal else mj.bidirectional_visual
    hf = AutoModelForImageTextToText.from_pretrained(out, local_files_only=True).eval()
    processor = AutoProcessor.from_pretrained(out, local_files_only=True, backend="pil")
    image = image or _image()
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": QUESTION}]}]
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
    inputs = processor(images=image, text=prompt, return_tensors="pt")
    ids, normed, pixels, logits = _minijarvis_view(mj, image, QUESTION, aspect)
    tasks = processor.tokenizer.convert_tokens_to_ids(E.task_token_names(mj))  # VisPer-LM's
    at = ids.index(mj.image_token_id) + mj.num_visual
    ids = ids[:at] + tasks + ids[at:]  # minijarvis splices the task tokens after the image
    assert inputs["input_ids"][0].tolist() == ids, "the processor's ids differ from encode_prompt's"
    assert torch.equal(inputs["pixel_values"][0], normed), "the image processor's pixels differ"
    with torch.no_grad():
        hf_logits = hf(**inputs).logits[0, -1]
    # Ids export added to the table (<image>, task tokens) are inputs only: generation suppresses them.
    keep = torch.ones(logits.shape[0], dtype=torch.bool)
    keep[[i for i in hf.generation_config.suppress_tokens or [] if i < len(keep)]] = False
    torch.testing.assert_close(hf_logits[:len(keep)][keep], logits[keep], atol=1e-5, rtol=1e-5)
    generated = hf.generate(**inputs, max_new_tokens=tokens, do_sample=False)[0, inputs["input_ids"].shape[1]:]
    assert len(generated) > 0
    hf_text = processor.tokenizer.decode(generated, skip_special_tokens=True).strip()
    assert hf_text == generate(mj, pixels[None], [QUESTION], tokens)[0], "greedy tokens differ"
    return out, hf, processor, mj


# ---------------------------------------------------------------- the vision tower
@pytest.mark.parametrize("name,size", [
    ("vit_base_patch16_clip_224", 64), ("vit_base_patch16_clip_quickgelu_224", 64),
    ("vit_base_patch16_siglip_224", 64),
    # the real presets' geometry (patch 14: 24x24 + CLS; SigLIP2 27x27, MLP 3.7x), narrow
    ("vit_large_patch14_clip_quickgelu_336", 336), ("vit_so400m_patch14_siglip_378", 378)])
def test_converted_vision_tower_gives_timms_features(name, size):
    torch.manual_seed(0)
    encoder = VisionEncoder(name, img_size=size, depth=3, embed_dim=64, num_heads=2)
    hf = hf_vision.hf_vision_model(encoder)
    assert type(hf).__name__ == hf_vision.SUPPORTED[hf_vision.family(name)]
    images = torch.rand(2, 3, size, size)
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in (encoder.mean, encoder.std))
    states = hf(pixel_values=(images - mean) / std, output_hidden_states=True).hidden_states
    ours = encoder(images)
    torch.testing.assert_close(states[-2][:, encoder.num_prefix_tokens:], ours, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(states[-1][:, encoder.num_prefix_tokens:], ours, atol=1e-3), \
        "the last block must differ, else the test could not catch a wrong layer"


def test_qkv_is_split_in_query_key_value_order():
    torch.manual_seed(0)
    encoder = VisionEncoder("vit_base_patch16_clip_224", img_size=32, depth=2, embed_dim=64, num_heads=2)
    state = hf_vision.vision_state_dict(encoder)
    qkv = encoder.model.blocks[1].attn.qkv.weight
    for i, part in enumerate("qkv"):
        assert torch.equal(state[f"encoder.layers.1.self_attn.{part}_proj.weight"], qkv[i * 64:(i + 1) * 64])


def test_other_encoders_are_refused_naming_the_supported_ones():
    with pytest.raises(InputError, match=r"CLIP.*SigLIP"):
        hf_vision.family("vit_small_patch14_reg4_dinov2")


# ---------------------------------------------------------------- end to end
def test_tiny_stage2_export_matches_minijarvis(tmp_path):
    checkpoint = _checkpoint(tmp_path, tiny_config(method="llava"))
    out, hf, processor, _ = assert_export_matches(tmp_path, checkpoint)
    assert hf.config.vision_feature_layer == -2 and hf.config.vision_feature_select_strategy == "default"
    assert type(hf.model.vision_tower).__name__ == "CLIPVisionModel"
    assert processor.image_processor.do_pad, "stage 2 pads to a square (LLaVA-1.5)"


def test_text_only_messages_render_as_minijarvis_does(tmp_path):
    out, mj = E.export(_checkpoint(tmp_path, tiny_config(method="llava")), tmp_path / "hf")
    processor = AutoProcessor.from_pretrained(out, local_files_only=True, backend="pil")
    for content in ("Hi there", [{"type": "text", "text": "Hi there"}]):
        ids = processor.apply_chat_template([{"role": "user", "content": content}],
                                            add_generation_prompt=True, tokenize=True, return_dict=True)["input_ids"]
        ids = ids[0] if isinstance(ids[0], list) else ids
        assert ids == encode_prompt(mj.tokenizer, "Hi there", has_image=False)


def test_siglip_resize_export_matches_minijarvis(tmp_path):
    cfg = tiny_config(method="llava", ctx_encoder="vit_base_patch16_siglip_224", image_aspect="resize",
                      ctx_kwargs=dict(img_size=128, depth=2, embed_dim=64, num_heads=2), **PENULTIMATE)
    _, hf, processor, _ = assert_export_matches(tmp_path, _checkpoint(tmp_path, cfg), aspect="resize")
    assert hf.config.vision_feature_select_strategy == "full"
    assert type(hf.model.vision_tower).__name__ == "SiglipVisionModel"
    assert not processor.image_processor.do_pad


@pytest.mark.skipif("crop" not in IMAGE_ASPECTS, reason="this minijarvis has no crop mode")
def test_crop_export_matches_minijarvis(tmp_path):
    cfg = tiny_config(method="llava", image_aspect="crop")
    assert_export_matches(tmp_path, _checkpoint(tmp_path, cfg), aspect="crop", image=_image(90, 150))


def _bpe(specials: list[str]) -> Tokenizer:
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator(_corpus(), trainers.BpeTrainer(
        vocab_size=400, special_tokens=specials, show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return bpe


QWEN_TEMPLATE = (  # Qwen2-Instruct's ChatML with its default system turn
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")


def _local_llm(tmp_path, family: str) -> str:
    """A tiny random LLM directory with its own tokenizer, as a hub download would look.

    llama: the tokenizer adds BOS by itself, has no chat template (minijarvis uses LLaVA's
    vicuna v1) and fills the embedding table, so <image> lands past it. qwen2: ChatML, tied
    embeddings, a table larger than the tokenizer (as Qwen2's)."""
    if family == "llama":
        bpe = _bpe(["<unk>", "<s>", "</s>"])
        bpe.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
        tok = PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token="<s>", eos_token="</s>", unk_token="<unk>")
        arch = dict(model_type="llama", vocab_size=len(tok), tie_word_embeddings=False)
    else:
        tok = PreTrainedTokenizerFast(tokenizer_object=_bpe(["<|endoftext|>", "<|im_start|>", "<|im_end|>"]),
                                      eos_token="<|im_end|>", pad_token="<|endoftext|>")
        tok.chat_template = QWEN_TEMPLATE
        arch = dict(model_type="qwen2", vocab_size=len(tok) + 64, tie_word_embeddings=True)
    config = AutoConfig.for_model(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                  num_attention_heads=4, num_key_value_heads=2,
                                  max_position_embeddings=512, **arch)
    torch.manual_seed(1)
    path = tmp_path / family
    AutoModelForCausalLM.from_config(config).save_pretrained(path)
    tok.save_pretrained(path)
    return str(path)


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_local_hf_llm_export_matches_minijarvis(tmp_path, family):
    llm = _local_llm(tmp_path, family)
    cfg = tiny_config(method="llava", llm_name=llm, llm_pretrained=True, llm_arch={}, tokenizer=llm)
    _, hf, processor, mj = assert_export_matches(tmp_path, _checkpoint(tmp_path, cfg))
    vocab = mj.llm.get_input_embeddings().weight.shape[0]
    if family == "llama":  # <image> was appended past the table: grown, and never generated
        assert mj.image_token_id == vocab and hf.config.text_config.vocab_size == vocab + 1
        assert hf.generation_config.suppress_tokens == [vocab]
        assert processor.tokenizer("a b")["input_ids"] == processor.tokenizer("a b", add_special_tokens=False)["input_ids"]
    else:
        assert hf.config.text_config.vocab_size == vocab and hf.config.tie_word_embeddings
    assert set(hf.generation_config.eos_token_id) >= {processor.tokenizer.eos_token_id}


# ---------------------------------------------------------------- refused
def test_bidirectional_visual_attention_is_refused_unless_allowed(tmp_path, capsys):
    checkpoint = _checkpoint(tmp_path, tiny_config())  # jarvis: bidirectional (release default)
    with pytest.raises(UsageError, match="--allow-causal"):
        E.export(checkpoint, tmp_path / "refused")
    assert not (tmp_path / "refused").exists()
    args = ["--checkpoint", checkpoint, "--out", str(tmp_path / "hf"), "--measure-items", "1"]
    assert run_main(E.main, "export", args) == 2
    assert run_main(E.main, "export", [*args, "--allow-causal"]) == 0
    printed = capsys.readouterr().out
    assert "mean |delta log-prob|" in printed and "accuracy" in printed
    assert (tmp_path / "hf" / "model.safetensors").exists()
    assert_export_matches(tmp_path, checkpoint, allow_causal=True)  # = minijarvis run causally


def test_causal_change_is_zero_for_a_causal_model_and_not_for_a_bidirectional_one(tmp_path):
    torch.manual_seed(0)
    model = JarvisModel(tiny_config(), stage="finetune").eval()
    change = E.causal_change(model, n_per_task=1)
    assert change["items"] == 4 and change["mean_abs_delta_logprob"] > 1e-4
    model.bidirectional_visual = False
    assert E.causal_change(model, n_per_task=1)["mean_abs_delta_logprob"] == 0.0


def test_methods_llava_cannot_hold_are_refused():
    with pytest.raises(InputError, match="future"):
        E.check_exportable(tiny_config(method="future"))  # a method export does not know


@pytest.mark.skipif("visper" not in METHODS, reason="this minijarvis has no VisPer-LM")
@pytest.mark.parametrize("family", ["builtin", "qwen2"])
def test_visper_task_tokens_export_as_vocabulary_entries(tmp_path, family):
    llm = {} if family == "builtin" else dict(llm_name=_local_llm(tmp_path, family), llm_pretrained=True,
                                               llm_arch={})
    if llm:
        llm["tokenizer"] = llm["llm_name"]
    checkpoint = _checkpoint(tmp_path, tiny_config(method="visper", **llm))
    out, hf, processor, mj = assert_export_matches(tmp_path, checkpoint)
    names = E.task_token_names(mj)
    assert len(names) == mj.task_tokens.count > 0
    ids = processor.tokenizer.convert_tokens_to_ids(names)
    table = hf.get_input_embeddings().weight
    assert torch.equal(table[ids], mj.task_tokens().detach()), "the task tokens are the embeddings"
    assert set(ids) <= set(hf.generation_config.suppress_tokens), "inputs only, never generated"


def test_features_through_the_final_norm_are_refused():
    cfg = SimpleNamespace(method="llava", ctx_encoder="vit_so400m_patch14_siglip_378",
                          context_features=lambda: (-1, True), resolved_bidirectional_visual=lambda: False)
    with pytest.raises(InputError, match="final norm"):
        E.check_exportable(cfg)


def test_a_missing_checkpoint_is_one_line(tmp_path, capsys):
    assert run_main(E.main, "export", ["--checkpoint", str(tmp_path / "nope"), "--out", str(tmp_path / "o")]) == 1
    assert capsys.readouterr().err.count("\n") == 1
