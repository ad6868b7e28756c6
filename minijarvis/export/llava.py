"""Export a minijarvis checkpoint to transformers' LLaVA format (``LlavaForConditionalGeneration``
+ ``LlavaProcessor``), the currency of lmms-eval (``--model llava_hf``), vLLM and SGLang.

    python -m minijarvis.export --checkpoint runs/tiny-jarvis-finetune --out hf/tiny --allow-causal

    from transformers import AutoModelForImageTextToText, AutoProcessor
    model = AutoModelForImageTextToText.from_pretrained("hf/tiny")
    processor = AutoProcessor.from_pretrained("hf/tiny", backend="pil")

What goes where (the architecture is LLaVA's, so nothing is approximated):

* F_ctx (timm) -> ``vision_tower`` (``CLIPVisionModel`` / ``SiglipVisionModel``, see
  ``hf_vision.py``), read where minijarvis reads it: ``vision_feature_layer`` = the block
  (-2, the penultimate), ``vision_feature_select_strategy`` "default" (CLS dropped) for CLIP,
  "full" for SigLIP (no CLS). A final norm on the features cannot be expressed: refused.
* ``proj`` -> ``multi_modal_projector`` (linear_1, GELU, linear_2); the LLM as it is. If
  ``<image>`` lies past the LLM's embedding table, the table grows by zero rows (never read:
  LLaVA overwrites the image positions) and generation suppresses those ids.
* The tokenizer with ``<image>``, adding no special tokens by itself (minijarvis never lets it),
  and a chat template that renders LLaVA-style content lists (``{"type": "image"}`` ->
  ``"<image>\\n"``) into the checkpoint's own template, so ``apply_chat_template`` gives the ids
  of ``data.llava.encode_prompt``. Stage-1 (captioning) checkpoints take the plain prompt ``"<image>"``.
* The image processor does what ``data.images.load_image`` does: pad to a square in F_ctx's mean
  colour (``do_pad``), or resize, or CLIP's resize + centre crop; bicubic to the input size;
  F_ctx's normalisation. ``backend="pil"`` reproduces minijarvis's pixels exactly.
* VisPer-LM's task tokens become extra vocabulary entries ``<task_{target}_{i}>`` whose
  embeddings are the tokens; the chat template puts them right after each image, where
  minijarvis splices them (a prompt built without the template must write them itself).
* Generation stops where minijarvis's does (the template's end-of-turn marker and EOS), and
  never emits the added ids.

Refused, not silently changed: bidirectional visual attention (JARVIS's release default; HF
LLaVA is causal) unless ``--allow-causal``, which then measures what causal attention costs on
ShapesBench; methods with parts LLaVA has no place for; encoders other than CLIP / SigLIP ViTs.
tests/test_export.py checks equal ids, pixels, logits and greedy tokens.
"""
from __future__ import annotations

import argparse
import copy
import os
import shutil
from pathlib import Path

import torch
from tqdm import tqdm

from minijarvis.export import hf_vision
from minijarvis.errors import ArgumentParser, HelpFormatter, InputError, UsageError, add_debug_flag, positive_int
from minijarvis.evaluation.inference import score_options
from minijarvis.training.checkpoint import load_checkpoint

EXPORTABLE_METHODS = ("jarvis", "llava", "nomask", "viral", "visper")  # inference = LLaVA's
# Content lists (transformers' multimodal messages) -> the plain strings minijarvis's template
# renders: an image item becomes "<image>\n" (data.llava.encode_prompt puts it before the question),
# followed by VisPer-LM's task tokens where the model has them (IMAGE is "<image>" + those).
CONTENT_TO_TEXT = (
    "{% set _mj = namespace(messages=[]) %}{% for _m in messages %}"
    "{% if _m['content'] is string %}{% set _text = _m['content'] | replace('<image>', 'IMAGE') %}"
    "{% else %}{% set _t = namespace(s='') %}{% for _c in _m['content'] %}"
    "{% if _c['type'] == 'image' %}{% set _t.s = _t.s + 'IMAGE\\n' %}"
    "{% elif _c['type'] == 'text' %}{% set _t.s = _t.s + _c['text'] %}{% endif %}"
    "{% endfor %}{% set _text = _t.s %}{% endif %}"
    "{% set _mj.messages = _mj.messages + [{'role': _m['role'], 'content': _text}] %}"
    "{% endfor %}{% set messages = _mj.messages %}")


def llava_chat_template(template: str, task_tokens: list[str] = ()) -> str:
    """``template`` (a checkpoint tokenizer's) accepting transformers' content lists too; every
    image is followed by ``task_tokens`` (VisPer-LM), as minijarvis splices them."""
    return CONTENT_TO_TEXT.replace("IMAGE", "<image>" + "".join(task_tokens)) + template


def task_token_names(model) -> list[str]:
    """Vocabulary entries for VisPer-LM's task tokens (none for other methods), in sequence
    order: ``<task_{target}_{i}>``."""
    tokens = getattr(model, "task_tokens", None)
    if tokens is None:
        return []
    per = tokens.count // len(tokens.names)
    return [f"<task_{name}_{i}>" for name in tokens.names for i in range(per)]


def context_features(cfg) -> tuple[int, bool]:
    """(block, final norm) F_ctx reads; checkpoints without that setting read (-2, no norm)."""
    return cfg.context_features() if hasattr(cfg, "context_features") else (-2, False)


def image_aspect(cfg, stage: str) -> str:
    """How minijarvis fits an image to the square input for this checkpoint."""
    return cfg.resolved_image_aspect(stage) if hasattr(cfg, "resolved_image_aspect") else cfg.image_aspect


def check_exportable(cfg, allow_causal: bool = False) -> None:
    """UsageError / InputError for what transformers' LLaVA cannot express (module docstring),
    from a checkpoint's ModelConfig alone (before any weights load)."""
    if cfg.method not in EXPORTABLE_METHODS:
        raise InputError(f"method {cfg.method!r}: its checkpoints hold parts transformers' LLaVA "
                         f"has no place for; export supports {', '.join(EXPORTABLE_METHODS)}")
    layer, norm = context_features(cfg)
    if norm or layer >= 0:
        raise InputError(f"the context encoder is read at block {layer}{' through its final norm' if norm else ''}: "
                         "LLaVA's vision_feature_layer reads a block's output without the final "
                         "norm (negative index); export needs ctx_norm off")
    hf_vision.family(cfg.ctx_encoder)
    if cfg.resolved_bidirectional_visual() and not allow_causal:
        raise UsageError("this model was trained with bidirectional visual attention (JARVIS's "
                         "release default); transformers' LLaVA runs it causally. Pass "
                         "--allow-causal to export anyway: the export then measures the change")


def image_processor(model, aspect: str):
    """LLaVA's image processor doing what ``data.images.load_image`` does at this checkpoint."""
    from transformers.models.llava.image_processing_pil_llava import LlavaImageProcessorPil
    from transformers.image_utils import PILImageResampling

    if aspect not in ("pad", "resize", "crop"):
        raise InputError(f"image aspect {aspect!r} has no transformers equivalent here")
    side = model.image_size
    size = {"shortest_edge": side} if aspect == "crop" else {"height": side, "width": side}
    return LlavaImageProcessorPil(
        do_pad=aspect == "pad", do_resize=True, size=size, resample=PILImageResampling.BICUBIC,
        do_center_crop=aspect == "crop", crop_size={"height": side, "width": side},
        do_rescale=True, rescale_factor=1 / 255, do_normalize=True,
        image_mean=list(model.image_mean), image_std=list(model.context_encoder.std),
        do_convert_rgb=True)


def exported_tokenizer(model):
    """A copy of the tokenizer that adds no special tokens by itself, takes content lists, and
    knows VisPer-LM's task tokens as special tokens (placed after each image by the template)."""
    from tokenizers import AddedToken

    tok = copy.deepcopy(model.tokenizer)
    tasks = task_token_names(model)
    if tasks:
        tok.add_special_tokens({"extra_special_tokens": [AddedToken(t, special=True, normalized=False)
                                                         for t in tasks]},
                               replace_extra_special_tokens=False)
    tok.chat_template = llava_chat_template(tok.chat_template, tasks)
    for flag in ("add_bos_token", "add_eos_token"):
        if hasattr(tok, flag):
            setattr(tok, flag, False)
    backend = getattr(tok, "backend_tokenizer", None)
    if backend is not None and tok("a b")["input_ids"] != tok("a b", add_special_tokens=False)["input_ids"]:
        backend.post_processor = None  # its template added BOS / EOS; minijarvis never does
    if tok("a b")["input_ids"] != tok("a b", add_special_tokens=False)["input_ids"]:
        raise InputError("the tokenizer adds special tokens by itself and cannot be told not to")
    return tok


def llava_state_dict(model, vocab: int, task_ids: list[int] = ()) -> dict[str, torch.Tensor]:
    """Every tensor under LlavaForConditionalGeneration's names; the LLM's embedding table (and
    an untied LM head) grown with zero rows to ``vocab`` entries; the embedding rows of
    ``task_ids`` hold VisPer-LM's task tokens."""
    state = {f"model.vision_tower.{k}": v for k, v in hf_vision.vision_state_dict(model.context_encoder).items()}
    for i, name in ((0, "linear_1"), (2, "linear_2")):
        state[f"model.multi_modal_projector.{name}.weight"] = model.proj[i].weight.detach()
        state[f"model.multi_modal_projector.{name}.bias"] = model.proj[i].bias.detach()
    tied = model.llm.config.get_text_config().tie_word_embeddings
    for key, value in model.llm.state_dict().items():
        if key == "lm_head.weight" and tied:
            continue
        value = value.detach()
        if key.endswith("embed_tokens.weight") or key == "lm_head.weight":
            value = torch.cat([value, value.new_zeros(vocab - value.shape[0], value.shape[1])])
        if key.endswith("embed_tokens.weight") and task_ids:
            value[list(task_ids)] = model.task_tokens().detach().to(value.dtype)
        name = "lm_head.weight" if key == "lm_head.weight" else "model.language_model." + key.removeprefix("model.")
        state[name] = value.contiguous()
    return state


def check_out(out: Path, overwrite: bool) -> None:
    """``--out`` must be new or an empty folder (the export would mix with, or replace, what is
    there); with ``overwrite`` a folder is replaced as a whole. InputError otherwise."""
    if out.exists() and not out.is_dir():
        raise InputError(f"{out}: a file, not a folder (--out)")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise InputError(f"{out}: not empty; the export would mix with what is there. Choose a new "
                         "--out, or pass --overwrite to replace the folder and all it holds")


def export(checkpoint, out, allow_causal: bool = False, overwrite: bool = False):
    """Write ``out`` (model, config, processor, generation config) from a minijarvis checkpoint;
    returns (out, the loaded minijarvis model). Written next to ``out``, then moved into place:
    an interrupted export leaves no half model (:func:`check_out` for an existing ``out``)."""
    from transformers import GenerationConfig, LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor

    from minijarvis.training.checkpoint import check_checkpoint_dir, checkpoint_configs
    from minijarvis.evaluation.inference import _stop_ids

    checkpoint, out = Path(checkpoint), Path(out)
    check_out(out, overwrite)
    check_exportable(checkpoint_configs(check_checkpoint_dir(checkpoint))["model"], allow_causal)
    model = load_checkpoint(checkpoint).eval()
    tok = exported_tokenizer(model)
    text_config = copy.deepcopy(model.llm.config)
    old_vocab = model.llm.get_input_embeddings().weight.shape[0]
    vocab = max(old_vocab, len(tok), model.image_token_id + 1)
    text_config.vocab_size = vocab
    layer, _ = context_features(model.cfg)
    clip = hf_vision.family(model.cfg.ctx_encoder) == "clip"
    config = LlavaConfig(vision_config=hf_vision.vision_config(model.context_encoder),
                         text_config=text_config, image_token_index=model.image_token_id,
                         image_seq_length=model.num_visual, projector_hidden_act="gelu",
                         vision_feature_select_strategy="default" if clip else "full",
                         vision_feature_layer=layer, multimodal_projector_bias=True,
                         tie_word_embeddings=text_config.tie_word_embeddings)
    with torch.device("meta"):
        hf = LlavaForConditionalGeneration(config)
    task_ids = tok.convert_tokens_to_ids(task_token_names(model))
    result = hf.load_state_dict(llava_state_dict(model, vocab, task_ids), strict=False, assign=True)
    persistent = set(hf.state_dict())
    missing = [k for k in result.missing_keys if k in persistent and not (
        k == "lm_head.weight" and config.tie_word_embeddings)]
    if missing or result.unexpected_keys:
        raise RuntimeError(f"LLaVA weights: missing {missing[:5]}, unexpected {result.unexpected_keys[:5]}")
    if config.tie_word_embeddings:
        hf.tie_weights()
    generation = copy.deepcopy(model.llm.generation_config)
    generation.eos_token_id = sorted(_stop_ids(model))
    generation.pad_token_id = tok.pad_token_id
    # Rows without a token of minijarvis's tokenizer (a padded table, rows added for <image> &
    # co.) and the task tokens (inputs only): never a prediction, as in inference.next_token.
    suppress = sorted(set(range(min(old_vocab, len(model.tokenizer)), vocab)) | set(task_ids))
    if suppress:
        generation.suppress_tokens = suppress
    hf.generation_config = GenerationConfig.from_dict(generation.to_dict())
    staging = out.with_name(f"{out.name}.export-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    hf.save_pretrained(staging)
    processor = LlavaProcessor(image_processor=image_processor(model, image_aspect(model.cfg, model.stage)),
                               tokenizer=tok, patch_size=config.vision_config.patch_size,
                               vision_feature_select_strategy=config.vision_feature_select_strategy,
                               chat_template=tok.chat_template, num_additional_image_tokens=int(clip))
    processor.save_pretrained(staging)
    check_out(out, overwrite)  # again: another process may have written there meanwhile
    if out.is_dir() and not any(out.iterdir()):
        out.rmdir()
    replaced = out.with_name(f"{out.name}.replaced-{os.getpid()}")
    if out.exists():  # --overwrite
        os.rename(out, replaced)
    os.rename(staging, out)
    shutil.rmtree(replaced, ignore_errors=True)
    return out, model


@torch.no_grad()
def causal_change(model, n_per_task: int = 8) -> dict:
    """What running ``model`` causally (as the export does) changes on ShapesBench items: mean
    |delta log-prob| per token of the answer options, and the accuracy of both, scored as
    eval.py scores by default (the option's text, mean log-prob per token). The exported model
    is this model run causally (equal logits: tests/test_export.py); on CUDA if there is one."""
    from minijarvis.evaluation.benchmarks import LETTERS, load_shapes
    from minijarvis.data.images import load_image

    items, _ = load_shapes(n_per_task)
    aspect = image_aspect(model.cfg, model.stage)
    if torch.cuda.is_available():
        model.cuda()
    trained = model.bidirectional_visual
    scores = {"minijarvis": [], "exported": []}
    try:
        for it in tqdm(items, desc="causal vs bidirectional", unit="item"):
            image = load_image(it.image, model.image_size, model.image_mean, aspect)[None]
            for name, bidirectional in (("minijarvis", trained), ("exported", False)):
                model.bidirectional_visual = bidirectional
                scores[name] += score_options(model, image, [it.prompt], [list(it.choices)], normalize=True)
    finally:
        model.bidirectional_visual = trained
    delta = torch.cat([(a - b).abs() for a, b in zip(scores["minijarvis"], scores["exported"])])
    acc = {name: sum(LETTERS[int(s.argmax())] == it.answer for s, it in zip(ss, items)) / len(items)
           for name, ss in scores.items()}
    return dict(items=len(items), mean_abs_delta_logprob=float(delta.mean()), accuracy=acc)


def parse_args(argv=None) -> argparse.Namespace:
    p = ArgumentParser(prog="python -m minijarvis.export", description=__doc__.split("\n\n")[0],
                                formatter_class=HelpFormatter)
    p.add_argument("--checkpoint", required=True, help="a minijarvis output directory (stage 2: runs/X-finetune)")
    p.add_argument("--out", required=True, help="directory to write the transformers LLaVA model to")
    p.add_argument("--allow-causal", action="store_true", help="export a model trained with bidirectional visual attention; LLaVA runs it causally (the change is measured and printed)")
    p.add_argument("--measure-items", type=positive_int, default=8, help="ShapesBench items per task for that measurement")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it is a non-empty folder (all it holds is deleted)")
    add_debug_flag(p)
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    check_out(Path(args.out), args.overwrite)  # before the model loads
    out, model = export(args.checkpoint, args.out, args.allow_causal, args.overwrite)
    print(f"wrote {out}: load it with transformers.AutoModelForImageTextToText / AutoProcessor")
    if model.bidirectional_visual:
        m = causal_change(model, args.measure_items)
        print(f"causal instead of bidirectional visual attention, on {m['items']} ShapesBench items: "
              f"mean |delta log-prob| per option token {m['mean_abs_delta_logprob']:.4f}; accuracy "
              f"{m['accuracy']['minijarvis']:.3f} in minijarvis -> {m['accuracy']['exported']:.3f} exported")
    return 0

