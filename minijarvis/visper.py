"""VisPer-LM (OLA-VLM): task tokens, embedding predictors and their loss (VISPER.md §5-§7).

Data flow of one stage-1 VisPer-LM step, next to JARVIS's in ``model.py``:

    images --F_ctx--> proj --> [B,N,d]                      N = H*W image slots
    tokens = TaskTokens()                                     8 per target, [T*8, d]
    seq    = [text before image][N slots][T*8 task tokens][caption][pad]   (splice_indices)
    targets Y_t = target_t(images)                            frozen, before the LLM
    LLM(seq, causal mask); hooks on the chosen layers -> h_l
    P_{t,l} = predictor_{t,l}(h_l without the other tasks' tokens and padding, queries_t)
    loss   = L_NTP + weight * sum_t sum_l [smoothL1(P, Y_t) + contrastive * InfoNCE(P, Y_t)]

Stage 2 and inference keep the task tokens (frozen) in the sequence; predictors, temperatures
and target encoders exist in stage 1 only.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .losses import info_nce
from .targets import TargetSpec, build_target, parse_target, resolve_layers

TOKENS_PER_TARGET = 8  # task tokens each target inserts after the image (VISPER.md §6)


def chunk_means(rows: torch.Tensor, k: int = TOKENS_PER_TARGET) -> torch.Tensor:
    """[N, d] -> [k, d]: token i = mean of the i-th of k contiguous chunks of rows (chunk
    sizes differ by at most one when k does not divide N). 576 rows: rows 72i ... 72i+71."""
    n = rows.shape[0]
    chunk = torch.arange(n, device=rows.device) * k // n  # contiguous, nondecreasing chunk ids
    weights = F.one_hot(chunk, k).to(rows.dtype).T  # [k, N]
    return (weights @ rows) / weights.sum(1, keepdim=True)


class TaskTokens(nn.Module):
    """The learnable task tokens, N(0, 1) raw embeddings (not vocabulary entries).

    Token target: a [num_queries, d] parameter = the predictor's queries; its 8 tokens are
    :func:`chunk_means` of it. Pooled target: 8 raw rows. ``forward()`` -> [T*8, d] in the
    order of ``names`` (the order the targets are given)."""

    def __init__(self, specs: list[TargetSpec], num_queries: int, d_llm: int):
        super().__init__()
        self.names = [s.name for s in specs]
        self.pooled = {s.name: s.rule == "pooled" for s in specs}
        self.rows = nn.ParameterDict({
            s.name: nn.Parameter(torch.randn(TOKENS_PER_TARGET if s.rule == "pooled" else num_queries, d_llm))
            for s in specs})
        self.count = TOKENS_PER_TARGET * len(specs)

    def forward(self) -> torch.Tensor:
        return torch.cat([self.rows[n] if self.pooled[n] else chunk_means(self.rows[n])
                          for n in self.names])


def task_token_index(image_start: torch.Tensor, length: int, num_visual: int,
                     num_targets: int) -> torch.Tensor:
    """[B, L] long: the target whose task token sits at each position, -1 elsewhere.

    Positions come from the spliced sequence: target t's tokens sit at ``image_start + N +
    8t ... + 8t + 7`` (rows without an image have ``image_start = L``: no tokens)."""
    p = torch.arange(length, device=image_start.device)
    offset = p[None] - image_start[:, None] - num_visual  # [B, L]
    inside = (offset >= 0) & (offset < TOKENS_PER_TARGET * num_targets)
    return torch.where(inside, offset.div(TOKENS_PER_TARGET, rounding_mode="floor"), -1)


class Resampler(nn.Module):
    """One-block Perceiver resampler (OpenFlamingo style), VISPER.md §5.

    ``q = proj_in(q); x = proj_in(x)``; ``q = q + Attn(LN(q), kv = [LN(x); LN(q)])``;
    ``q = q + FFN(q)`` (LN -> Linear -> GELU -> Linear); ``out = LN(proj_out(q))``.
    No biases in attention or FFN; ``heads`` x ``head_dim`` attention, FFN multiplier 1."""

    def __init__(self, d_in: int, width: int, d_out: int, heads: int = 4, head_dim: int = 32):
        super().__init__()
        inner = heads * head_dim
        self.heads, self.head_dim = heads, head_dim
        self.proj_in = nn.Linear(d_in, width)  # shared by inputs and queries
        self.norm_x, self.norm_q = nn.LayerNorm(width), nn.LayerNorm(width)
        self.to_q = nn.Linear(width, inner, bias=False)
        self.to_kv = nn.Linear(width, 2 * inner, bias=False)
        self.to_out = nn.Linear(inner, width, bias=False)
        self.ffn = nn.Sequential(nn.LayerNorm(width), nn.Linear(width, width, bias=False), nn.GELU(),
                                 nn.Linear(width, width, bias=False))
        self.proj_out = nn.Linear(width, d_out)
        self.norm_out = nn.LayerNorm(d_out)

    def forward(self, x: torch.Tensor, queries: torch.Tensor, keys: torch.Tensor | None = None) -> torch.Tensor:
        """x [B, L, d_in]; queries [B or 1, Q, d_in]; keys bool [B, L] (True = x[b, p] may be
        attended; None = all). The queries always attend each other. -> [B, Q, d_out]."""
        b = x.shape[0]
        # Shared queries ([1, Q]) get their norm, attention query and key/value once, not per image.
        x, q = self.proj_in(x), self.proj_in(queries)
        q_in = self.norm_q(q)
        kv = torch.cat([self.to_kv(self.norm_x(x)), self.to_kv(q_in).expand(b, -1, -1)], 1)
        split = lambda t: t.unflatten(-1, (self.heads, self.head_dim)).transpose(1, 2)  # noqa: E731
        k, v = kv.chunk(2, dim=-1)
        mask = None
        if keys is not None:
            mask = torch.cat([keys, keys.new_ones(b, q.shape[1])], 1)[:, None, None, :]
        query = self.to_q(q_in).expand(b, -1, -1)
        attn = F.scaled_dot_product_attention(split(query), split(k), split(v), attn_mask=mask)
        q = q + self.to_out(attn.transpose(1, 2).flatten(2))
        q = q + self.ffn(q)
        return self.norm_out(self.proj_out(q))


def embedding_loss(pred: torch.Tensor, target: torch.Tensor, log_scale: torch.Tensor,
                   contrastive: float = 0.3) -> torch.Tensor:
    """L_{t,l} = smoothL1(P, Y).mean() + contrastive * InfoNCE(P, Y) (VISPER.md §7), float32.

    pred, target [B, ...]; smooth-L1 with beta = 1 over every element; ``log_scale`` is the
    task's learnable temperature s_t (gets a gradient through InfoNCE). B = 0 (a rank without
    images) gives 0 connected to ``pred`` and still joins InfoNCE's gather."""
    loss = (F.smooth_l1_loss(pred.float(), target.float(), beta=1.0) if pred.numel()
            else pred.sum() * 0.0)
    if contrastive:
        loss = loss + contrastive * info_nce(pred, target, log_scale)
    return loss


def predictor_width(name: str, d_llm: int, d_target: int) -> int:
    """The release's widths: depth = d_llm, seg = 1536 and gen = 1024 (= their target dims)."""
    return d_llm if name == "depth" else d_target


def parse_targets(texts) -> list[TargetSpec]:
    """Spec strings -> specs; task names must be unique (they name parameters and log keys)."""
    specs = [parse_target(t) for t in texts]
    names = [s.name for s in specs]
    if not specs or len(set(names)) != len(names):
        raise ValueError(f"visper needs at least one target with unique names, got {names}")
    return specs


class VisperHead(nn.Module):
    """Stage 1's additions: target encoders, one predictor per (target, layer), temperatures."""

    def __init__(self, specs: list[TargetSpec], num_layers: int, d_llm: int, image_size: int,
                 grid: tuple[int, int], temperature: float = 2.0):
        super().__init__()
        self.specs = specs
        self.layers = {s.name: resolve_layers(s, num_layers) for s in specs}
        self.targets = nn.ModuleDict({s.name: build_target(s, image_size, grid) for s in specs})
        self.predictors = nn.ModuleDict({
            f"{s.name}_l{layer}": Resampler(d_llm, predictor_width(s.name, d_llm, self.targets[s.name].dim),
                                            self.targets[s.name].dim)
            for s in specs for layer in self.layers[s.name]})
        self.log_scales = nn.ParameterDict({s.name: nn.Parameter(torch.tensor(float(temperature)))
                                            for s in specs})

    @property
    def all_layers(self) -> list[int]:
        return sorted({layer for layers in self.layers.values() for layer in layers})

    def encode(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """Every target's features of ``images`` (frozen, detached)."""
        return {name: target(images) for name, target in self.targets.items()}

    def encode_batch(self, images: torch.Tensor, has_image: torch.Tensor) -> dict | None:
        """Targets of the samples with an image. None when there is none, except under
        torch.distributed, where empty targets let this rank join the InfoNCE gathers."""
        if has_image.any():
            return self.encode(images if has_image.all() else images[has_image])
        if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
            return None
        return {n: images.new_zeros(0, t.num_tokens, t.dim) for n, t in self.targets.items()}

    def losses(self, hidden: dict[int, torch.Tensor], targets: dict[str, torch.Tensor],
               image_start: torch.Tensor, padding: torch.Tensor, num_visual: int,
               tokens: TaskTokens, contrastive: float = 0.3, attend_padding: bool = False) -> dict:
        """L_{t,l} = smoothL1(P, Y).mean() + contrastive * InfoNCE(P, Y) for every (target, layer).

        hidden: layer -> [B', L, d] outputs of the samples with an image only; targets: name ->
        [B', n, D]; image_start [B']; padding bool [B', L] (True = real). Returns
        ``{"visper/<name>/l<layer>": loss}``. The inputs of predictor t see neither the other
        targets' tokens nor (unless ``attend_padding``, the release) the padding."""
        length = padding.shape[1]
        owner = task_token_index(image_start, length, num_visual, len(tokens.names))
        out = {}
        for t, spec in enumerate(self.specs):
            keys = (owner == -1) | (owner == t)
            if not attend_padding:
                keys = keys & padding
            own = image_start[:, None] + num_visual + TOKENS_PER_TARGET * t + torch.arange(
                TOKENS_PER_TARGET, device=image_start.device)  # [B', 8] positions of own tokens
            for layer in self.layers[spec.name]:
                h = hidden[layer]
                if tokens.pooled[spec.name]:  # one query: mean of h_l at the target's own tokens
                    queries = h.gather(1, own[..., None].expand(-1, -1, h.shape[-1])).mean(1, keepdim=True)
                else:
                    queries = tokens.rows[spec.name][None]
                pred = self.predictors[f"{spec.name}_l{layer}"](h, queries.to(h.dtype), keys)
                out[f"visper/{spec.name}/l{layer}"] = embedding_loss(
                    pred, targets[spec.name], self.log_scales[spec.name], contrastive)
        return out


def visper_losses(model, hidden: dict[int, torch.Tensor], targets: dict, x: dict) -> dict:
    """Every term ``visper/<name>/l<layer>`` and ``visper_loss`` = weight * their sum, from
    the hooked layer outputs of a :class:`~minijarvis.model.JarvisModel` forward. Samples
    without an image contribute nothing."""
    cfg, keep = model.cfg, x["has_image"]
    rows = (lambda t: t) if bool(keep.all()) else (lambda t: t[keep])  # no copy when every row has one
    terms = model.visper.losses({layer: rows(h) for layer, h in hidden.items()}, targets,
                                rows(x["image_start"]), rows(x["padding"]), model.num_visual,
                                model.task_tokens, cfg.visper_contrastive, cfg.visper_attend_padding)
    return {**terms, "visper_loss": cfg.visper_weight * sum(terms.values())}
