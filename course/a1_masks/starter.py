"""A1 - masks: the I-JEPA multi-block sampler and JARVIS's four attention rules.

Fill in every function below (handout: course/a1_masks/handout.md), then grade yourself:

    python -m course.grade A1 --impl path/to/this/file.py

Keep the names and signatures: the grader imports them. You may import torch, math and
``MaskLayout`` (a plain container of two bool tensors); do not import minijarvis's answers.
"""
from __future__ import annotations

import math  # noqa: F401  (you will want it)

import torch

from minijarvis.masking import MaskLayout  # noqa: F401  (return one from MaskSampler.__call__)


def block_size(scale: float, aspect: float, grid: tuple[int, int], faithful: bool = True) -> tuple[int, int]:
    """Block (h, w) for scale s and aspect a (= h/w) on grid (H, W).

    n = int(H*W*s); h = round(sqrt(n*a)); w = round(sqrt(n/a)) (Python's round); then
    faithful: shrink h while h >= H and w while w >= W; clean (faithful=False): while h > H / w > W.
    """
    raise NotImplementedError


def place_blocks(top: torch.Tensor, left: torch.Tensor, h: int, w: int, grid: tuple[int, int]) -> torch.Tensor:
    """bool [*S, H*W] in raster order (slot r*W + c): the h x w rectangle whose first row is
    ``top`` and first column ``left`` (long tensors of one shape S, possibly 0-d), cut at the
    grid's edge. Vectorised: no Python loop over blocks."""
    raise NotImplementedError


def truncate_context(context: torch.Tensor) -> torch.Tensor:
    """The release's context cut: bool [B, N] -> bool [B, N] keeping in every row only its first
    m True slots in raster order, m = the smallest number of True slots of any row."""
    raise NotImplementedError


class MaskSampler:
    """I-JEPA multi-block sampler: ``MaskSampler(grid, ...)(batch_size, generator) -> MaskLayout``.

    __init__ raises ValueError if a block the ranges can produce holds <= min_keep tokens
    (checking the extreme scales and aspects is enough for the graded cases).

    __call__ draws, in this order, all from ``generator`` (the grader compares your draws with
    the release's, so the order matters):
      1. target size: u = torch.rand(1); scale = s0 + u (s1 - s0); aspect = a0 + u (a1 - a0)
         (faithful: one u for both; clean: a second torch.rand(1) for the aspect);
      2. context size: the same with the context ranges;
      3. target corners: top = torch.randint(0, H - h + e, (B, K)), then left likewise with W, w,
         e = 0 when faithful (exclusive bound: the last row/column is never in a block), else 1;
      4. context corners: top, left of shape (B,) likewise; context = block & ~union(targets);
      5. up to 19 re-draws: while some rows hold <= min_keep context slots, re-draw (step 4,
         shape (len(rows),)) for those rows only, targets kept;
      6. faithful: truncate_context.
    """

    def __init__(self, grid, num_targets=4, target_scale=(0.15, 0.2), target_aspect=(0.75, 1.5),
                 context_scale=(0.85, 1.0), context_aspect=(1.0, 1.0), min_keep=10, faithful=True):
        raise NotImplementedError

    def __call__(self, batch_size: int, generator: torch.Generator) -> MaskLayout:
        raise NotImplementedError


def build_attention_mask(layout, image_start, seq_len: int, padding: torch.Tensor | None = None) -> torch.Tensor:
    """Bool [B, 1, L, L], True = query (row) may attend key (column).

    layout: ``.context`` bool [B, N], ``.targets`` bool [B, K, N] (N visual slots, raster order);
    image_start: int or long [B] (the slots sit at image_start ... image_start + N - 1);
    padding: bool [B, L], True = real token, or None (all real).
    Start from causal attention over real keys, then over the visual span:
      1. no query attends any visual key, except
      2. every query at or after the image start attends every context key;
      3. a query in target block k attends every key in block k;
      4. every text query after the image attends every target key.
    Then the diagonal: a padded row attends only itself and no row attends a padded key; every
    real row attends itself, except a dropped slot that already sees something (text before the
    image or a context key) - that one does not attend itself.
    """
    raise NotImplementedError
