"""What every autograder shares: the ``@check`` mark, seeded hidden cases, comparisons, pictures.

The cases are drawn from ``--seed`` (default :data:`DEFAULT_SEED`): the student sees how cases are
made, not which ones; an instructor makes a new variant by changing the seed (INSTRUCTORS.md).
"""
from __future__ import annotations

import dataclasses
import random
from pathlib import Path

import torch

DEFAULT_SEED = 2211  # the hidden cases of this term's variant


def check(points: int):
    """Mark a function ``fn(impl, cases)`` as one graded test worth ``points``; it passes if it
    returns, fails with its AssertionError's message, scores 0 on NotImplementedError."""
    def mark(fn):
        fn.points = points
        return fn
    return mark


class Cases:
    """Seeded randomness for one grading run, and where failure pictures go."""

    def __init__(self, seed: int = DEFAULT_SEED, pictures: str | Path | None = None):
        self.seed, self.pictures = seed, Path(pictures) if pictures else None

    def rng(self, salt: str) -> random.Random:
        return random.Random(f"{self.seed}/{salt}")  # a str seed is hashed stably (sha512)

    def gen(self, salt: str) -> torch.Generator:
        return torch.Generator().manual_seed(self.rng(salt).getrandbits(62))

    def save(self, name: str, fig) -> str:
        """Save a matplotlib figure as PICTURES/name.png (if pictures were asked for)."""
        if self.pictures is None:
            return ""
        from minijarvis.viz import save_figure
        self.pictures.mkdir(parents=True, exist_ok=True)
        return f" (picture: {save_figure(fig, self.pictures / f'{name}.png')})"


def same(what: str, got, want, atol: float = 1e-5, rtol: float = 1e-4) -> None:
    """Assert ``got`` is a tensor like ``want``: shape, dtype, values (close for floats)."""
    assert torch.is_tensor(got), f"{what}: expected a tensor, got {type(got).__name__}"
    assert got.shape == want.shape, f"{what}: shape {tuple(got.shape)}, expected {tuple(want.shape)}"
    assert got.dtype == want.dtype, f"{what}: dtype {got.dtype}, expected {want.dtype}"
    got, want = got.detach(), want.detach()
    if want.dtype == torch.bool or not want.dtype.is_floating_point:
        bad = (got != want).nonzero()
        assert len(bad) == 0, f"{what}: {len(bad)} entries differ, first at index {tuple(bad[0].tolist())}: " \
                              f"got {got[tuple(bad[0])].item()}, expected {want[tuple(bad[0])].item()}"
    else:
        assert not got.isnan().any(), f"{what}: NaN in your result"
        assert torch.allclose(got.float(), want.float(), atol=atol, rtol=rtol), \
            f"{what}: values differ by up to {(got.float() - want.float()).abs().max().item():.3g}"


def tiny_model(seed: int = 0, method: str = "jarvis", stage: str = "align"):
    """A random 2-layer LLaMA-style JarvisModel on an 8x8 grid (seconds on a CPU)."""
    from minijarvis.config import ENCODERS, MaskConfig, preset
    from minijarvis.llm import build_tokenizer
    from minijarvis.model import JarvisModel

    torch.manual_seed(seed)
    arch = dict(model_type="llama", vocab_size=1024, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024)
    (ctx, ctx_kw), (tgt, tgt_kw) = ENCODERS["tiny-clip"], ENCODERS["tiny-dinov2"]
    cfg = dataclasses.replace(preset("tiny", pretrained=False), llm_arch=arch, method=method,
                              ctx_kwargs={**ctx_kw, "img_size": 128}, tgt_kwargs={**tgt_kw, "img_size": 128})
    return JarvisModel(cfg, MaskConfig(mask_min_keep=4), stage=stage, tokenizer=build_tokenizer())


def tiny_batch(model, gen: torch.Generator, batch_size: int = 2, text_len: int = 10) -> dict:
    """Random rows, one <image> each at a random place, labels on every text token."""
    ids = torch.randint(10, 200, (batch_size, text_len), generator=gen)
    at = torch.randint(0, text_len - 2, (batch_size,), generator=gen)
    ids[torch.arange(batch_size), at] = model.image_token_id
    labels = ids.masked_fill(ids == model.image_token_id, -100)
    images = torch.rand((batch_size, 3, model.image_size, model.image_size), generator=gen)
    return dict(input_ids=ids, attention_mask=torch.ones_like(ids), labels=labels, images=images,
                has_image=torch.ones(batch_size, dtype=torch.bool))
