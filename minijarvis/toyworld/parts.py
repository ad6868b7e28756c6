"""The three pretrained parts of the toy world: how each is trained, and how each is measured.

* LLM: the tiny preset's Llama (hidden 64, 4 layers, builtin BPE) trained by next-token
  prediction on :func:`world.text_corpus`; measured by perplexity on held-out toy text.
* Caption encoder ("toy CLIP"): the tiny-clip ViT trained contrastively (symmetric InfoNCE,
  CLIP's loss) against the scenes' incomplete captions, with a bag-of-words text tower, plus a
  region-level term (RegionCLIP's idea): the F_ctx tokens (penultimate block, what the MLLM
  reads) pooled over each named object's patches must match that object's phrase ("red cube")
  among all 24 phrases, in the same text tower. It can only learn what captions say (colours,
  kinds, ground), now per patch: a real CLIP's patch tokens know what is where, a 2-block toy
  trained on whole captions does not (its tokens' kind probe sat at chance). Measured by
  caption retrieval.
* Expert ("toy DINOv2", a depth expert): the tiny-dinov2 ViT trained, through linear heads on its
  final-normed patch tokens (exactly the features JARVIS distils), to predict per-patch
  log-depth and object occupancy, the object count from their mean (what captions omit), and
  each object's name from its pooled tokens (DINOv2's features know objects too). Measured by
  ridge probes of per-patch depth and of the count on the features JARVIS would use.

Both ViTs have fixed 2D sin-cos position codes (:func:`fix_position_codes`).

All training is seeded and single-process; every function returns plain numbers or modules.
"""
from __future__ import annotations

import math

import timm
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from minijarvis.config import ENCODERS
from minijarvis.training.runtime import cosine_lr

MAX_TOKENS = 160  # longest toy text (a 3-turn conversation) is ~110 tokens
ROW = 128  # packed training rows of the LLM
MIN_COUNT = 2  # sample_scene draws 2-5 objects


# ---------------------------------------------------------------- the LLM
def encode_texts(tokenizer, texts: list[str]) -> list[list[int]]:
    return [tokenizer(t, add_special_tokens=False)["input_ids"][:MAX_TOKENS] for t in texts]


def _lm_batch(rows: list[list[int]], pad: int) -> dict:
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    for b, r in enumerate(rows):
        ids[b, :len(r)] = torch.tensor(r)
    keep = torch.arange(width)[None] < torch.tensor([len(r) for r in rows])[:, None]
    return dict(input_ids=ids, attention_mask=keep.long(), labels=ids.masked_fill(~keep, -100))


def pack(rows: list[list[int]], length: int, sep: int, seed: int) -> torch.Tensor:
    """Texts in a seeded random order, joined by ``sep`` (EOS) and cut into rows of ``length``
    ids [n, length]: no padding, so every token of a step trains (the tail is dropped)."""
    order = torch.randperm(len(rows), generator=torch.Generator().manual_seed(seed)).tolist()
    flat = [t for i in order for t in rows[i] + [sep]]
    n = len(flat) // length
    if n == 0:
        raise ValueError(f"{len(flat)} tokens of text do not fill one row of {length}")
    return torch.tensor(flat[:n * length]).view(n, length)


def train_llm(model, packed: torch.Tensor, steps: int, batch: int, seed: int,
              lr: float = 3e-3) -> list[float]:
    """Next-token prediction on packed rows [n, length]; AdamW, cosine schedule, 3% warm-up.
    Rows are drawn with a generator seeded by ``seed``. Returns the loss of every step."""
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    model.train()
    losses = []
    for step in tqdm(range(steps), desc="toy LLM", unit="step"):
        for group in opt.param_groups:
            group["lr"] = cosine_lr(step, steps, lr)
        ids = packed[torch.randint(len(packed), (batch,), generator=g)]
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(float(loss.detach()))
    model.eval()
    return losses


@torch.no_grad()
def perplexity(model, rows: list[list[int]], pad: int, batch: int = 64) -> float:
    """exp(mean next-token NLL) over every predicted token of ``rows``."""
    model.eval()
    total, count = 0.0, 0
    for start in range(0, len(rows), batch):
        b = _lm_batch(rows[start:start + batch], pad)
        logits = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits
        target = b["labels"][:, 1:]
        nll = F.cross_entropy(logits[:, :-1].flatten(0, 1), target.flatten(), reduction="sum",
                              ignore_index=-100)
        total, count = total + float(nll), count + int((target != -100).sum())
    return math.exp(total / count)


# ---------------------------------------------------------------- the encoders
def new_vit(key: str) -> nn.Module:
    """The timm model of ``config.ENCODERS[key]`` exactly as ``encoders.VisionEncoder`` builds it
    (no classifier head), randomly initialised from torch's global generator."""
    name, kwargs = ENCODERS[key]
    return timm.create_model(name, pretrained=False, num_classes=0, **kwargs)


def sincos_2d(grid: int, dim: int) -> torch.Tensor:
    """Fixed 2D sin-cos position codes [grid*grid, dim] (MAE's): half the channels code the
    row, half the column, each as sin/cos at dim/4 frequencies; row-major like the patches."""
    if dim % 4:
        raise ValueError(f"dim must be a multiple of 4, got {dim}")
    freq = 1.0 / 10000 ** (torch.arange(dim // 4, dtype=torch.float64) / (dim // 4))
    pos = torch.arange(grid, dtype=torch.float64)[:, None] * freq[None]  # [grid, dim/4]
    axis = torch.cat([pos.sin(), pos.cos()], 1)  # [grid, dim/2]
    rows = axis[:, None].expand(grid, grid, dim // 2)
    cols = axis[None].expand(grid, grid, dim // 2)
    return torch.cat([rows, cols], -1).reshape(grid * grid, dim).float()


def fix_position_codes(vit: nn.Module) -> None:
    """Give ``vit`` fixed 2D sin-cos position embeddings (zero for a prefix slot) that never
    train, as MAE and I-JEPA do: learned ones stay near their tiny initialisation when nothing in
    the training signal is about place (the toy CLIP's captions), which would leave the patch
    tokens with no usable "where"; a real CLIP's patch tokens know where they are."""
    grid = vit.patch_embed.grid_size
    codes = sincos_2d(grid[0], vit.pos_embed.shape[-1])
    prefix = vit.pos_embed.shape[1] - codes.shape[0]
    with torch.no_grad():
        vit.pos_embed.zero_()
        vit.pos_embed[0, prefix:] = codes
    vit.pos_embed.requires_grad_(False)


def normalise(vit: nn.Module, images: torch.Tensor) -> torch.Tensor:
    cfg = timm.data.resolve_model_data_config(vit)
    mean = torch.tensor(cfg["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(cfg["std"]).view(1, 3, 1, 1)
    return (images - mean) / std


class CaptionHeads(nn.Module):
    """The toy CLIP's parts outside the ViT: an image projection of the final-normed CLS token,
    a region projection of pooled F_ctx tokens, a bag-of-words text tower (mean of token
    embeddings, then a projection), a temperature."""

    def __init__(self, vocab: int, dim: int, width: int = 64):
        super().__init__()
        self.image_proj = nn.Linear(dim, width, bias=False)
        self.region_proj = nn.Linear(dim, width, bias=False)
        self.text_embed = nn.EmbeddingBag(vocab, width, mode="mean")
        self.text_proj = nn.Linear(width, width, bias=False)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))

    def image(self, vit: nn.Module, images: torch.Tensor) -> torch.Tensor:
        cls = vit.forward_features(normalise(vit, images))[:, 0]
        return F.normalize(self.image_proj(cls), dim=-1)

    def image_and_tokens(self, vit: nn.Module, images: torch.Tensor):
        """(CLS embedding [B, width], F_ctx tokens [B, P, dim]: the penultimate block's output,
        prefix dropped, exactly what ``encoders.VisionEncoder(layer=-2)`` gives the MLLM)."""
        final, (tokens,) = vit.forward_intermediates(normalise(vit, images), indices=[-2], output_fmt="NLC")
        return F.normalize(self.image_proj(final[:, 0]), dim=-1), tokens

    def text(self, token_rows: list[list[int]]) -> torch.Tensor:
        flat = torch.tensor([t for r in token_rows for t in r])
        offsets = torch.tensor([0] + [len(r) for r in token_rows[:-1]]).cumsum(0)
        return F.normalize(self.text_proj(self.text_embed(flat, offsets)), dim=-1)


def pool_regions(tokens: torch.Tensor, share: torch.Tensor) -> torch.Tensor:
    """Each object's tokens [B, M, D]: the mean of ``tokens`` [B, P, D] weighted by the object's
    visible share of each patch ``share`` [B, M, P] (rows of absent objects come out zero)."""
    weights = share / share.sum(-1, keepdim=True).clamp_min(1e-6)
    return weights @ tokens


def region_loss(region_logits: torch.Tensor, phrase: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of each present object's logits over the phrases [B, M, K] against its own
    phrase ``phrase`` [B, M] (-1: no object)."""
    present = phrase >= 0
    return F.cross_entropy(region_logits[present], phrase[present])


def caption_loss(heads: "CaptionHeads", vit: nn.Module, images, rows, phrase_rows, share, phrase):
    """The toy CLIP's loss: CLIP's symmetric InfoNCE on (image, caption) plus the region term,
    each object's pooled F_ctx tokens against the 24 phrases (``phrase_rows``: their token ids)
    in the same text tower and temperature."""
    img, tokens = heads.image_and_tokens(vit, images)
    regions = F.normalize(heads.region_proj(pool_regions(tokens, share)), dim=-1)
    logits = heads.logit_scale.exp().clamp(max=100) * regions @ heads.text(phrase_rows).T
    return clip_loss(img, heads.text(rows), heads.logit_scale) + region_loss(logits, phrase)


def clip_loss(img: torch.Tensor, txt: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE over a batch of matching (image, caption) embeddings (CLIP's loss)."""
    logits = scale.exp().clamp(max=100) * img @ txt.T
    target = torch.arange(len(img))
    return (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2


class ExpertHeads(nn.Module):
    """Linear read-outs of the expert's final-normed patch tokens: per-patch log-depth (in
    units of the training set's spread) and occupancy logit; object count from their mean;
    each object's name (one of ``phrases``) from its pooled tokens."""

    def __init__(self, dim: int, counts: int = 4, phrases: int = 24):
        super().__init__()
        self.depth = nn.Linear(dim, 1)
        self.occupancy = nn.Linear(dim, 1)
        self.count = nn.Linear(dim, counts)
        self.identity = nn.Linear(dim, phrases)

    def forward(self, tokens: torch.Tensor):
        return self.depth(tokens)[..., 0], self.occupancy(tokens)[..., 0], self.count(tokens.mean(1))


def expert_tokens(vit: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """Final-normed patch tokens, prefix (CLS, registers) dropped: F_tgt's features."""
    return vit.forward_features(normalise(vit, images))[:, vit.num_prefix_tokens:]


def expert_loss(heads: ExpertHeads, tokens, data: dict, idx, depth_stats) -> torch.Tensor:
    mu, sd = depth_stats
    depth, occ, count = heads(tokens)
    names = heads.identity(pool_regions(tokens, data["share"][idx]))
    return (F.mse_loss(depth, (data["log_depth"][idx].flatten(1) - mu) / sd)
            + F.binary_cross_entropy_with_logits(occ, data["occupancy"][idx].flatten(1))
            + F.cross_entropy(count, (data["count"][idx] - MIN_COUNT).clamp(0, 3))
            + region_loss(names, data["phrase"][idx]))


def train_encoder(vit: nn.Module, heads: nn.Module, loss_fn, n: int, steps: int, batch: int,
                  seed: int, desc: str, lr: float = 1e-3) -> list[float]:
    """AdamW on ViT + heads; ``loss_fn(vit, heads, idx)`` gives the loss of the samples ``idx``
    (drawn without replacement within a step, by a generator seeded with ``seed``)."""
    g = torch.Generator().manual_seed(seed)
    params = [p for p in list(vit.parameters()) + list(heads.parameters()) if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.05)
    vit.train(), heads.train()
    losses = []
    for step in tqdm(range(steps), desc=desc, unit="step"):
        for group in opt.param_groups:
            group["lr"] = cosine_lr(step, steps, lr, 0.05)
        idx = torch.randperm(n, generator=g)[:batch]
        loss = loss_fn(vit, heads, idx)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(float(loss.detach()))
    vit.eval(), heads.eval()
    return losses


# ---------------------------------------------------------------- measurements
@torch.no_grad()
def retrieval_top1(image_emb: torch.Tensor, text_emb: torch.Tensor, group: int = 8) -> float:
    """Image -> caption retrieval in consecutive groups of ``group`` pairs: the fraction of
    images whose own caption scores highest among the group's captions (chance 1/group)."""
    hits, total = 0, 0
    for start in range(0, len(image_emb) - group + 1, group):
        sims = image_emb[start:start + group] @ text_emb[start:start + group].T
        hits += int((sims.argmax(1) == torch.arange(group)).sum())
        total += group
    return hits / max(total, 1)


def ridge_r2(train_x, train_y, test_x, test_y, alpha: float = 1.0) -> float:
    """Fit ridge regression (with intercept) on [N, D] -> [N]; R^2 on the test set."""
    mu_x, mu_y = train_x.mean(0), train_y.mean()
    x, y = (train_x - mu_x).double(), (train_y - mu_y).double()
    w = torch.linalg.solve(x.T @ x + alpha * torch.eye(x.shape[1], dtype=x.dtype), x.T @ y)
    pred = (test_x - mu_x).double() @ w + mu_y
    return float(1 - ((pred - test_y) ** 2).sum() / ((test_y - test_y.mean()) ** 2).sum())


def depth_probe_r2(features: torch.Tensor, log_depth: torch.Tensor, split: float = 0.5) -> float:
    """R^2 of a ridge probe from per-patch features [N, P, D] to per-patch log-depth [N, P]
    (grids flattened), fitted on the first ``split`` of the images, scored on the rest."""
    n = int(len(features) * split)
    f, d = features.flatten(0, 1).float(), log_depth.flatten().float()
    cut = n * features.shape[1]
    return ridge_r2(f[:cut], d[:cut], f[cut:], d[cut:])


def count_probe_acc(features: torch.Tensor, count: torch.Tensor, split: float = 0.5) -> float:
    """Accuracy of a ridge probe from mean-pooled features [N, P, D] to the object count [N]
    (prediction rounded), fitted on the first ``split`` of the images, scored on the rest."""
    n = int(len(features) * split)
    x, y = features.mean(1).float(), count.float()
    mu_x, mu_y = x[:n].mean(0), y[:n].mean()
    a, b = (x[:n] - mu_x).double(), (y[:n] - mu_y).double()
    w = torch.linalg.solve(a.T @ a + torch.eye(a.shape[1], dtype=a.dtype), a.T @ b)
    pred = ((x[n:] - mu_x).double() @ w + mu_y).round()
    return float((pred == y[n:].double()).float().mean())
