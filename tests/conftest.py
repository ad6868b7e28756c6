"""Shared fixtures: tiny random models of each LLM family, and hand-made batches."""
from __future__ import annotations

import dataclasses
import functools

import pytest
import torch

from minijarvis.config import ENCODERS, MaskConfig, ModelConfig, preset
from minijarvis.llm import build_tokenizer

FAMILIES = {
    "llama": dict(model_type="llama"),
    "qwen2": dict(model_type="qwen2"),
    "mistral": dict(model_type="mistral", sliding_window=None),
    "gemma2": dict(model_type="gemma2", head_dim=16, query_pre_attn_scalar=16,
                   sliding_window=512, attn_logit_softcapping=50.0,
                   final_logit_softcapping=30.0),
}


def tiny_config(family: str = "llama", layers: int = 2, **overrides) -> ModelConfig:
    """The tiny preset with an LLM of ``family`` and ``layers`` decoder layers."""
    cfg = preset("tiny", pretrained=False)  # random weights: these tests pin plumbing
    arch = dict(vocab_size=1024, hidden_size=64, intermediate_size=128, num_hidden_layers=layers,
                num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024)
    arch.update(FAMILIES[family])
    if family == "mistral":
        arch["sliding_window"] = None
    # 8x8 grid at 128 px keeps the tests fast; min_keep scaled to the grid below.
    ctx, ctx_kw = ENCODERS["tiny-clip"]
    tgt, tgt_kw = ENCODERS["tiny-dinov2"]
    cfg = dataclasses.replace(cfg, llm_arch=arch, ctx_kwargs={**ctx_kw, "img_size": 128},
                              tgt_kwargs={**tgt_kw, "img_size": 128})
    return dataclasses.replace(cfg, **overrides)


SMALL_MASKS = MaskConfig(mask_min_keep=4)  # an 8x8 grid's target blocks hold 9-12 slots


@functools.lru_cache(maxsize=1)
def _tokenizer():
    return build_tokenizer()


@pytest.fixture
def tokenizer():
    return _tokenizer()


def make_batch(model, batch_size: int = 2, text_len: int = 12, image_at=(0, 3), seed: int = 0,
               text_only=(), pad_last: int = 0) -> dict:
    """Random token rows with one <image> token at ``image_at[b]`` (none for ``text_only`` rows);
    the last ``pad_last`` positions of the last row are padding. Labels on all text tokens."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(10, 200, (batch_size, text_len), generator=g)
    has_image = torch.ones(batch_size, dtype=torch.bool)
    for b in range(batch_size):
        if b in text_only:
            has_image[b] = False
        else:
            ids[b, image_at[b % len(image_at)]] = model.image_token_id
    attention = torch.ones_like(ids)
    if pad_last:
        attention[-1, -pad_last:] = 0
        ids[-1, -pad_last:] = model.tokenizer.pad_token_id
    labels = ids.masked_fill((ids == model.image_token_id) | (attention == 0), -100)
    images = torch.rand((batch_size, 3, model.image_size, model.image_size), generator=g)
    images[~has_image] = 0
    return dict(input_ids=ids, attention_mask=attention, labels=labels, images=images,
                has_image=has_image)


# One intra-op thread: the tiny models gain nothing from more, and spinning OpenMP threads
# collapse when other processes share the two cores (see runtime.set_cpu_threads).
torch.set_num_threads(1)
