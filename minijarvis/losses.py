"""Losses of JARVIS stage 1 (DESIGN §2.5), of the comparison rows (§3) and of VisPer-LM.

* :func:`token_distance` - the one place where the per-token distances live;
* :func:`jepa_loss` - L_JEPA: per target block, mean distance over its (sample, token)
  pairs; then the mean over blocks (the release's averaging);
* :func:`align_loss` - the same distance averaged over all (or some) visual slots, for the
  ``nomask`` and ``viral`` rows;
* :func:`ntp_loss` - next-token cross-entropy (L_NTP); it shifts the labels itself;
* :func:`info_nce` - VisPer-LM's contrastive term, negatives gathered from every rank.

Every loss is computed in float32, whatever the model dtype, and returns a 0-dim float32
tensor. None of them detaches ``target``: the caller passes features of the frozen target
encoder, computed without grad.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

DISTANCES = ("cosine", "smooth_l1")


def token_distance(pred: torch.Tensor, target: torch.Tensor, distance: str = "cosine") -> torch.Tensor:
    """Per-token distance [B, N] (float32) between pred and target features [B, N, D].

    * ``"cosine"``: -cos(pred, target), in [-1, 1] (the release; -1 = same direction).
    * ``"smooth_l1"``: I-JEPA's: smooth-L1 (beta = 1) between pred and
      layer_norm(target) over the feature dim (no affine), averaged over the feature dim.
      The normalisation makes the loss blind to a per-token shift and scale of the target.
    """
    if distance not in DISTANCES:
        raise ValueError(f"distance must be one of {DISTANCES}, got {distance!r}")
    if pred.dim() != 3 or pred.shape != target.shape:
        raise ValueError(
            f"pred and target must both be [B, N, D], got {tuple(pred.shape)} and {tuple(target.shape)}"
        )
    pred, target = pred.float(), target.float()
    if distance == "cosine":
        return -F.cosine_similarity(pred, target, dim=-1)
    target = F.layer_norm(target, target.shape[-1:])
    return F.smooth_l1_loss(pred, target, reduction="none", beta=1.0).mean(-1)


def jepa_loss(
    pred: torch.Tensor, target: torch.Tensor, targets: torch.Tensor, distance: str = "cosine"
) -> torch.Tensor:
    """L_JEPA: mean over target blocks of the mean distance inside the block.

    Args:
        pred: [B, N, D] predictions proj_tgt(h_j) at the N visual slots.
        target: [B, N, D] target-encoder features at the same slots.
        targets: bool [B, K, N], True = slot i of sample b lies in target block k (blocks may
            overlap: a slot in two blocks counts in both).
        distance: one of DISTANCES (see :func:`token_distance`).

    For block k: sum_{b,i} d[b,i] * targets[b,k,i] / sum_{b,i} targets[b,k,i], i.e. one
    mean over all samples' tokens of block k. Blocks with no token anywhere in the batch
    are left out of the mean over blocks; with no token at all the loss is 0 (still
    connected to ``pred``), never NaN.
    """
    if targets.dtype != torch.bool or targets.dim() != 3:
        raise ValueError(f"targets must be a bool tensor [B, K, N], got {targets.dtype} {tuple(targets.shape)}")
    if pred.dim() != 3 or targets.shape[0] != pred.shape[0] or targets.shape[2] != pred.shape[1]:
        raise ValueError(
            f"targets {tuple(targets.shape)} must be [B, K, N] with [B, N] from pred {tuple(pred.shape)}"
        )
    d = token_distance(pred, target, distance)  # [B, N]
    # mean_k (1/c_k) sum_{b,i} t[b,k,i] d[b,i]  =  sum_{b,i} d[b,i] w[b,i]  with the constant
    # weight w[b,i] = mean_k t[b,k,i] / c_k: all blocks at once, and autograd sees one product.
    with torch.no_grad():
        weights = targets.to(d.dtype)
        count = weights.sum((0, 2))  # c_k, tokens of block k in the batch
        present = (count > 0).sum().clamp(min=1)  # empty blocks leave the mean (never 0/0 = NaN)
        w = (weights / count.clamp(min=1)[:, None]).sum(1) / present
    return (d * w).sum()


def align_loss(
    pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None, distance: str = "cosine"
) -> torch.Tensor:
    """Mean distance over the (sample, slot) pairs where ``mask`` is True (``nomask``/``viral`` rows).

    pred, target: [B, N, D]; mask: bool [B, N] (None = every slot). An all-False mask gives
    0 (connected to ``pred``), never NaN.
    """
    d = token_distance(pred, target, distance)
    if mask is None:
        return d.mean()
    if mask.dtype != torch.bool or mask.shape != d.shape:
        raise ValueError(
            f"mask must be a bool tensor {tuple(d.shape)} or None, got {mask.dtype} {tuple(mask.shape)}"
        )
    weights = mask.to(d.dtype)
    return (d * weights).sum() / weights.sum().clamp(min=1)


def ntp_loss(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int = -100) -> torch.Tensor:
    """L_NTP: next-token cross-entropy, mean over supervised tokens, in float32.

    Args:
        logits: [B, L, V] LLM output at every position.
        labels: [B, L] token ids aligned with the *input* (not yet shifted); ``ignore_index``
            marks unsupervised positions (image slots, prompt, padding).

    This function shifts: logits[:, t] predicts labels[:, t + 1]. The mean is over all
    supervised tokens of the batch (not per sample). With no supervised token the loss is
    exactly 0 with a (zero) gradient to ``logits``, never NaN.
    """
    if logits.dim() != 3 or labels.shape != logits.shape[:2]:
        raise ValueError(
            f"logits must be [B, L, V] and labels [B, L], got {tuple(logits.shape)} and {tuple(labels.shape)}"
        )
    if labels.dtype.is_floating_point:
        raise ValueError(f"labels must be integer token ids, got {labels.dtype}")
    labels = labels[:, 1:]
    keep = labels != ignore_index
    return token_cross_entropy(logits[:, :-1][keep], labels[keep])


def token_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of already selected, already shifted predictions, in float32.

    ``logits`` [M, V], ``targets`` [M]. The model calls this with the LM head applied only to
    the M supervised positions (equal to :func:`ntp_loss` on the full logits, much cheaper).
    M = 0 gives exactly 0, connected to ``logits``, never NaN.
    """
    if logits.shape[0] == 0:
        return logits.float().sum() * 0.0
    return F.cross_entropy(logits.float(), targets.long())


def info_nce(pred: torch.Tensor, target: torch.Tensor, log_scale: torch.Tensor,
             max_scale: float = 100.0) -> torch.Tensor:
    """VisPer-LM's contrastive term (VISPER.md §7): prediction -> target cross-entropy.

    Each sample's ``pred`` and ``target`` [B, ...] are flattened and L2-normalised; logits =
    pred @ targets_all^T * min(exp(log_scale), max_scale), where targets_all holds the targets
    of **every rank** (:func:`gather_rows`; the local ones when not distributed), and sample i
    of rank r has label offset_r + i. Mean over the local samples, float32. The gathered
    targets carry no gradient (they come from frozen encoders); the local predictions and
    ``log_scale`` do. With B = 0 (a rank without images) it still joins the gather and
    returns 0 connected to ``pred``, never NaN.
    """
    if pred.shape != target.shape:
        raise ValueError(f"pred and target must have one shape, got {tuple(pred.shape)} and {tuple(target.shape)}")
    b = pred.shape[0]
    p = F.normalize(pred.flatten(1).float(), dim=-1)
    y = F.normalize(target.flatten(1).float(), dim=-1)
    y_all, offset = gather_rows(y.detach())
    scale = log_scale.float().exp().clamp(max=max_scale)
    if b == 0:
        return p.sum() * scale * 0.0
    logits = scale * p @ y_all.T
    return F.cross_entropy(logits, offset + torch.arange(b, device=logits.device))


def gather_rows(x: torch.Tensor) -> tuple[torch.Tensor, int]:
    """All ranks' rows [sum_r B_r, D] (rank order) and the offset of this rank's first row.
    Ranks may hold different row counts; without torch.distributed: ``(x, 0)``."""
    import torch.distributed as dist
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x, 0
    world, rank = dist.get_world_size(), dist.get_rank()
    sizes = [torch.zeros(1, dtype=torch.long, device=x.device) for _ in range(world)]
    dist.all_gather(sizes, torch.tensor([x.shape[0]], device=x.device))
    sizes = [int(s) for s in sizes]
    padded = x.new_zeros(max(sizes), x.shape[1])
    padded[:x.shape[0]] = x
    parts = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(parts, padded)
    return torch.cat([part[:n] for part, n in zip(parts, sizes)]), sum(sizes[:rank])
