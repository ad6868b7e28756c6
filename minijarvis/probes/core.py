"""Per-layer probes: how well does LLM layer l encode what a target encoder sees? (VISPER.md §9)

For a frozen checkpoint, ONE LLM forward per batch of images records the hidden states of every
probed layer (forward hooks; layer 0 = the input embeddings, layer l = output of decoder layer
l, before any final norm, as HF ``hidden_states[l]`` except the last). The probes of all layers
then train together on those cached activations, as one batched op over a leading layer axis P:

    images --prepare_inputs--> LLM + hooks --> H [n, P, T, d]   (bf16 cache, CPU)
    images --target encoder--------------->   Y [n, M, D]       (M = H*W tokens, or 1 pooled)
    probe_p(H[:, p]) ~ Y, smooth-L1 (beta 1), on the probe-train images
    per probe-test image:  flat  = cos(flatten(pred), flatten(Y))      (the paper's score)
                           token = mean over tokens of cos(pred_t, Y_t)
    mean over images with a seeded 95% bootstrap interval

Probes (both trained the same way; they differ only in what they can read):
* ``resampler`` (the paper's, VISPER.md §5): VisPer-LM's embedding predictor
  (:class:`~minijarvis.visper.Resampler`) with M learnable queries of its own, reading every
  token of the layer (image slots and prompt text).
* ``linear``: one affine map per visual slot, Y_t = W h_t + b (the classic probe); a pooled
  target is read from the mean of the visual slots.

A probe that only learned the average target already scores well when the targets share a
common direction, so :func:`baseline_scores` gives the score of that "mean predictor": a layer
is informative by how far it rises above it. The ``centred`` score removes that common part
before the cosine (the probe-train mean target, from prediction and target alike): the mean
predictor scores 0 on it, and only what a layer says about *this* image counts.
"""
from __future__ import annotations

import contextlib
import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from tqdm import tqdm

from minijarvis.training.runtime import cosine_lr
from minijarvis.visper import Resampler

PROBES = ("resampler", "linear")
METRICS = ("flat", "token", "centred")


# ---------------------------------------------------------------- probes, batched over layers
def _param(generator: torch.Generator, *shape: int, std: float) -> nn.Parameter:
    return nn.Parameter(torch.randn(*shape, generator=generator) * std)


class LinearProbes(nn.Module):
    """P independent affine maps d_in -> d_out, applied per token: [P, B, N, d_in] -> [P, B, N, d_out]."""

    def __init__(self, num: int, d_in: int, d_out: int, generator: torch.Generator):
        super().__init__()
        self.weight = _param(generator, num, d_in, d_out, std=d_in ** -0.5)
        self.bias = nn.Parameter(torch.zeros(num, d_out))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return torch.einsum("pbnd,pde->pbne", h, self.weight) + self.bias[:, None, None]


class ResamplerProbes(nn.Module):
    """P independent VisPer-LM predictors (:class:`~minijarvis.visper.Resampler`, VISPER.md §5),
    each with Q learnable queries of its own: [P, B, T, d_in] -> [P, B, Q, d_out].

    As the paper's probe, the queries live in d_in (the LLM's width) and go through the
    predictor's ``proj_in``. The P predictors' weights are stacked on a leading axis and run
    as ONE call (``torch.vmap`` of ``functional_call``), not a Python loop over layers.
    """

    def __init__(self, num: int, d_in: int, d_out: int, queries: int, generator: torch.Generator,
                 width: int = 256):
        super().__init__()
        # Resampler initialises as torch's modules do, from the global RNG: fork it, seeded
        # from ``generator``, so the probes depend on the seed only and the caller's RNG is untouched.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(torch.randint(2 ** 62, (), generator=generator)))
            nets = [Resampler(d_in, width, d_out) for _ in range(num)]
        stacked, _ = torch.func.stack_module_state(nets)  # name -> [P, ...]; Resampler has no buffers
        # ParameterDict names may not hold dots; "/" stands for them.
        self.stacked = nn.ParameterDict({n.replace(".", "/"): nn.Parameter(t) for n, t in stacked.items()})
        self.queries = _param(generator, num, queries, d_in, std=1.0)  # N(0, 1), as TaskTokens
        self._net = (nets[0].to("meta"),)  # weightless template for functional_call, not a submodule

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        params = {n.replace("/", "."): p for n, p in self.stacked.items()}

        def one(p: dict, x: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
            return torch.func.functional_call(self._net[0], p, (x, q[None]))
        # vmap has batching rules for the CUDA attention kernels but not for CPU flash attention
        # (it would loop over P): on the CPU, SDPA's math path, plain batched matmuls.
        cpu = h.device.type == "cpu"
        with sdpa_kernel(SDPBackend.MATH) if cpu else contextlib.nullcontext():
            return torch.vmap(one)(params, h, self.queries)


def make_probes(kind: str, num: int, d_in: int, d_out: int, queries: int, seed: int,
                width: int = 256) -> nn.Module:
    """``num`` probes of ``kind`` (see :data:`PROBES`), initialised from ``seed``."""
    if kind not in PROBES:
        raise ValueError(f"probe must be one of {', '.join(PROBES)}; got {kind!r}")
    g = torch.Generator().manual_seed(seed)
    if kind == "linear":
        return LinearProbes(num, d_in, d_out, g)
    return ResamplerProbes(num, d_in, d_out, queries, g, width=width)


def probe_inputs(kind: str, hidden: torch.Tensor, visual: slice, num_targets: int) -> torch.Tensor:
    """What a probe reads from cached states [B, P, T, d] -> [P, B, ., d]: every token
    (resampler); the visual slots (linear), or their mean for a pooled target (M = 1)."""
    h = hidden.transpose(0, 1)
    if kind == "resampler":
        return h
    h = h[:, :, visual]
    if num_targets == 1:
        return h.mean(2, keepdim=True)
    if num_targets != h.shape[2]:
        raise ValueError(f"a linear probe maps slot t to target token t: {h.shape[2]} visual slots "
                         f"but {num_targets} target tokens (resize the target to the context grid)")
    return h


# ---------------------------------------------------------------- training and scores
def train_probes(probes: nn.Module, kind: str, hidden: torch.Tensor, targets: torch.Tensor, visual: slice,
                 steps: int, batch_size: int, seed: int, lr: float = 1e-3, device="cpu",
                 desc: str = "probes") -> list[float]:
    """Fit all layers' probes at once on cached ``hidden`` [n, P, T, d] and ``targets`` [n, M, D]:
    AdamW, cosine schedule, smooth-L1 (beta 1) summed over probes (each probe's gradient is its
    own loss's). Batches of images drawn from ``seed``. Returns the mean loss per step."""
    probes.to(device).train()
    opt = torch.optim.AdamW(probes.parameters(), lr=lr, weight_decay=0.0)
    g, n, losses = torch.Generator().manual_seed(seed), hidden.shape[0], []
    for step in tqdm(range(steps), desc=desc, unit="step", leave=False):
        for group in opt.param_groups:
            group["lr"] = cosine_lr(step, steps, lr)
        idx = torch.randperm(n, generator=g)[:batch_size]
        pred = probes(probe_inputs(kind, hidden[idx].to(device).float(), visual, targets.shape[1]))
        y = targets[idx].to(device).float()
        loss = F.smooth_l1_loss(pred, y.expand_as(pred), reduction="none").flatten(1).mean(1)
        opt.zero_grad(set_to_none=True)
        loss.sum().backward()
        opt.step()
        losses.append(float(loss.detach().mean()))
    return losses


def cosine_scores(pred: torch.Tensor, target: torch.Tensor, mean: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """Per-image scores of predictions [..., B, M, D] against targets [B, M, D]: ``flat`` =
    cosine of the flattened [M*D] vectors (VisPer-LM's), ``token`` = mean over the M tokens of
    the per-token cosine, and, given the probe-train mean target ``mean`` [1, M, D],
    ``centred`` = the flat cosine of ``pred - mean`` and ``target - mean``. Each [..., B]."""
    target = target.expand_as(pred)
    scores = {"flat": F.cosine_similarity(pred.flatten(-2), target.flatten(-2), dim=-1),
              "token": F.cosine_similarity(pred, target, dim=-1).mean(-1)}
    if mean is not None:
        scores["centred"] = F.cosine_similarity((pred - mean).flatten(-2), (target - mean).flatten(-2), dim=-1)
    return scores


@torch.no_grad()
def score_probes(probes: nn.Module, kind: str, hidden: torch.Tensor, targets: torch.Tensor,
                 visual: slice, batch_size: int, device="cpu", mean: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """Scores of every probe on every image of ``hidden`` / ``targets``: metric -> [P, n]
    (``centred`` only given ``mean``, the probe-train mean target)."""
    probes.to(device).eval()
    mean = None if mean is None else mean.to(device).float()
    parts = []
    for start in range(0, hidden.shape[0], batch_size):
        h, y = hidden[start:start + batch_size].to(device).float(), targets[start:start + batch_size].to(device).float()
        parts.append(cosine_scores(probes(probe_inputs(kind, h, visual, y.shape[1])), y, mean))
    return {m: torch.cat([p[m] for p in parts], dim=1).cpu() for m in parts[0]}


def baseline_scores(train_targets: torch.Tensor, test_targets: torch.Tensor) -> dict[str, torch.Tensor]:
    """Scores of the 'mean predictor' (the probe-train images' mean target, whatever the layer):
    the level a probe reaches without reading anything. metric -> [n_test]."""
    mean = train_targets.float().mean(0, keepdim=True)
    return cosine_scores(mean.expand_as(test_targets), test_targets.float(), mean)  # centred: 0


def bootstrap(scores: torch.Tensor, resamples: int = 1000, seed: int = 0,
              level: float = 0.95) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Mean over the last axis of ``scores`` [..., n] and its percentile bootstrap interval:
    ``resamples`` draws of n images with replacement (from ``seed``, the same draws for every
    row). Returns (mean, lo, hi), each [...]."""
    n = scores.shape[-1]
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(n, (resamples, n), generator=g)
    means = scores.double()[..., idx].mean(-1)  # [..., resamples]
    alpha = (1.0 - level) / 2
    lo, hi = torch.quantile(means, torch.tensor([alpha, 1 - alpha], dtype=means.dtype), dim=-1)
    return scores.double().mean(-1), lo, hi


# ---------------------------------------------------------------- hidden states, one forward
@torch.no_grad()
def collect_hidden_states(model, images: torch.Tensor, prompt_ids: list[int], layers: list[int],
                          batch_size: int, device="cpu", bf16: bool = False,
                          desc: str = "hidden states") -> tuple[torch.Tensor, slice]:
    """Hidden states of ``layers`` for every image, ONE LLM forward per batch.

    ``images`` [n, 3, S, S] in [0, 1]; every row gets the same ``prompt_ids`` (one ``<image>``
    token), spliced and masked as in training (``model.prepare_inputs``, unmasked). Layer 0 is
    the input embeddings, layer l the output of decoder layer l (a forward hook each).
    Returns (H [n, P, T, d] bfloat16 on the CPU, the slice of the visual slots in T).
    """
    device = torch.device(device)
    wanted = {l: k for k, l in enumerate(layers)}
    seen: dict[int, torch.Tensor] = {}
    hooks = [model.llm.model.layers[l - 1].register_forward_hook(
        lambda mod, inp, out, l=l: seen.__setitem__(l, out[0] if isinstance(out, tuple) else out))
        for l in wanted if l > 0]
    ids = torch.tensor(prompt_ids)
    chunks, visual = [], None
    try:
        for start in tqdm(range(0, images.shape[0], batch_size), desc=desc, unit="batch", leave=False):
            imgs = images[start:start + batch_size].to(device)
            b = imgs.shape[0]
            batch = dict(input_ids=ids.expand(b, -1).to(device), labels=torch.full((b, len(ids)), -100, device=device),
                         attention_mask=torch.ones(b, len(ids), dtype=torch.long, device=device), images=imgs)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                x = model.prepare_inputs(batch)
                seen[0] = x["embeds"]
                model.llm.model(inputs_embeds=x["embeds"], attention_mask=x["mask"],
                                position_ids=x["positions"], use_cache=False)
            start_slot = int(x["image_start"][0])
            visual = slice(start_slot, start_slot + model.num_visual)
            chunks.append(torch.stack([seen[l].to("cpu", torch.bfloat16) for l in layers], dim=1))
            seen.clear()
    finally:
        for hook in hooks:
            hook.remove()
    return torch.cat(chunks), visual


def cache_bytes(num_images: int, num_layers: int, tokens: int, width: int) -> int:
    """Size of the bf16 hidden-state cache, to print before the work starts."""
    return 2 * num_images * num_layers * tokens * width


def human_bytes(n: float) -> str:
    units = ("B", "KiB", "MiB", "GiB", "TiB")
    k = min(len(units) - 1, int(math.log(max(n, 1), 1024)))
    return f"{n / 1024 ** k:.1f} {units[k]}"
