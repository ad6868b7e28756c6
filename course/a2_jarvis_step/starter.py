"""A2 - the JARVIS step: z at the target slots, L_JEPA at layer j, the lambda coin, L = L_NTP + L_JEPA.

Fill in every function below (handout: course/a2_jarvis_step/handout.md), then grade yourself:

    python -m course.grade A2 --impl path/to/this/file.py

The grader also runs one real stage-1 step of a tiny JarvisModel with your insert_latent,
jepa_loss and set_stage1_trainable in place of the package's. Keep names and signatures.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F  # noqa: F401  (you will want it)


def insert_latent(vis: torch.Tensor, target_union: torch.Tensor, latent: torch.Tensor) -> torch.Tensor:
    """The slots the LLM sees: ``latent`` ([d], or [N, d] for z + phi(i)) where ``target_union``
    bool [B, N] is True, ``vis`` [B, N, d] elsewhere. Out of place; the result has vis's dtype,
    and the latent must get the gradient."""
    raise NotImplementedError


def token_distance(pred: torch.Tensor, target: torch.Tensor, distance: str = "cosine") -> torch.Tensor:
    """Per-token distance [B, N] in float32 between pred and target [B, N, D] (any float dtype).

    "cosine": -cos(pred, target) over D. "smooth_l1": smooth-L1 (beta = 1) between pred and the
    layer norm of target over D (no affine, eps 1e-5), averaged over D.
    """
    raise NotImplementedError


def jepa_loss(pred: torch.Tensor, target: torch.Tensor, targets: torch.Tensor, distance: str = "cosine") -> torch.Tensor:
    """L_JEPA, 0-dim float32: for each block k, the mean of d over every (sample, slot) in block k
    (targets bool [B, K, N]; a slot in two blocks counts in both); then the mean over the blocks
    that hold at least one slot in the batch. No slot at all: 0, still connected to pred (no NaN)."""
    raise NotImplementedError


def jepa_coin(generator: torch.Generator | None, lam: float) -> bool:
    """The lambda coin, True = run JEPA this step. Exactly one draw: u = torch.rand((), generator);
    JEPA is skipped (plain NTP on the unmasked image) with probability lam."""
    raise NotImplementedError


def set_stage1_trainable(model) -> None:
    """Set requires_grad on a stage-1 JARVIS ``JarvisModel``: ``proj``, ``proj_tgt`` and ``z``
    train; the LLM (``model.llm``) and both encoders (``model.context_encoder``,
    ``model.target_encoder``) are frozen. Whatever the flags were before."""
    raise NotImplementedError
