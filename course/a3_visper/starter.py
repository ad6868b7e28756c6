"""A3 - VisPer-LM: task tokens, the resampler predictor, smooth-L1 + InfoNCE.

Fill in every function below (handout: course/a3_visper/handout.md), then grade yourself:

    python -m course.grade A3 --impl path/to/this/file.py

Keep names and signatures, and the Resampler's parameter names (the grader loads the package's
weights into yours).
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F  # noqa: F401  (you will want it)

TOKENS_PER_TARGET = 8


def chunk_means(rows: torch.Tensor, k: int = TOKENS_PER_TARGET) -> torch.Tensor:
    """[N, d] -> [k, d]: token i = mean of the i-th of k contiguous chunks of rows; row p is in
    chunk p*k // N (576 rows: rows 72i ... 72i+71). Vectorised."""
    raise NotImplementedError


def task_token_index(image_start: torch.Tensor, length: int, num_visual: int, num_targets: int) -> torch.Tensor:
    """[B, L] long: the target t whose task token sits at each position, -1 elsewhere. Target t's
    8 tokens follow the image's num_visual slots: positions image_start + num_visual + 8t ...
    + 8t + 7. A row without an image has image_start = L (no tokens)."""
    raise NotImplementedError


class Resampler(nn.Module):
    """One-block Perceiver resampler (VISPER.md §5). The parameters are given (keep their names).

    forward(x [B, L, d_in], queries [B or 1, Q, d_in], keys bool [B, L] or None) -> [B, Q, d_out]:
      x, q = proj_in(x), proj_in(queries)
      q = q + to_out(Attn(to_q(LN_q(q)), keys and values = to_kv([LN_x(x); LN_q(q)])))
          (``heads`` heads of ``head_dim``, scaled dot product; keys False are not attended,
          the queries' own keys always are)
      q = q + ffn(q);  out = norm_out(proj_out(q))
    """

    def __init__(self, d_in: int, width: int, d_out: int, heads: int = 4, head_dim: int = 32):
        super().__init__()
        inner = heads * head_dim
        self.heads, self.head_dim = heads, head_dim
        self.proj_in = nn.Linear(d_in, width)
        self.norm_x, self.norm_q = nn.LayerNorm(width), nn.LayerNorm(width)
        self.to_q = nn.Linear(width, inner, bias=False)
        self.to_kv = nn.Linear(width, 2 * inner, bias=False)  # keys = first half, values = second
        self.to_out = nn.Linear(inner, width, bias=False)
        self.ffn = nn.Sequential(nn.LayerNorm(width), nn.Linear(width, width, bias=False), nn.GELU(),
                                 nn.Linear(width, width, bias=False))
        self.proj_out = nn.Linear(width, d_out)
        self.norm_out = nn.LayerNorm(d_out)

    def forward(self, x: torch.Tensor, queries: torch.Tensor, keys: torch.Tensor | None = None) -> torch.Tensor:
        raise NotImplementedError


def info_nce(pred: torch.Tensor, target: torch.Tensor, log_scale: torch.Tensor, max_scale: float = 100.0) -> torch.Tensor:
    """Prediction -> target InfoNCE, 0-dim float32 (one process: the batch's own targets are the
    negatives). Flatten each sample's pred and target, L2-normalise; logits = P Y^T *
    min(exp(log_scale), max_scale); cross-entropy with label i for sample i. log_scale learns."""
    raise NotImplementedError


def embedding_loss(pred: torch.Tensor, target: torch.Tensor, log_scale: torch.Tensor,
                   contrastive: float = 0.3) -> torch.Tensor:
    """L_{t,l} = smoothL1(pred, target) (beta 1, mean over every element) + contrastive *
    info_nce(pred, target, log_scale), float32. B = 0 gives 0, still connected to pred."""
    raise NotImplementedError
