"""How much padding stage 2's batch order costs: grouped by modality and length (the release)
or a plain permutation, on synthetic rows with LLaVA-665k's mix (``python bench.py
--stage2-padding``).

The rows are synthetic (no data download here); the assumptions, per source of
``llava_v1_5_mix665k.json`` (counts as in LLaVA-1.5's paper, 665,298 rows, 40,688 text-only
ShareGPT rows): words per record log-normal with the median and spread in :data:`SOURCES`
(multi-question VQA rows and long-tailed ShareGPT chats); tokens = words x U(1.2, 1.6) + 40
for the chat template; image rows add 575 (576 CLIP-L/336 slots replace the placeholder);
rows are cut at 2048 tokens (LLaVA's ``model_max_length``). The sampler groups by the word
count, as LLaVA does; padding is counted in tokens. A padded position = a row shorter than
the longest row of its per-device micro-batch.
"""
from __future__ import annotations

import torch

from minijarvis.data.sampler import epoch_batches

# source: (rows, has image, median words, log-normal sigma)
SOURCES = {
    "llava-conversation": (58_000, True, 220, 0.45), "llava-detail": (23_000, True, 130, 0.3),
    "llava-reasoning": (77_000, True, 140, 0.35), "sharegpt": (40_688, False, 600, 0.9),
    "vqav2": (83_000, True, 70, 0.6), "gqa": (72_000, True, 90, 0.6), "okvqa": (9_000, True, 25, 0.3),
    "ocrvqa": (80_000, True, 60, 0.4), "a-okvqa": (66_000, True, 45, 0.3),
    "textcaps": (22_000, True, 30, 0.3), "refcoco": (48_000, True, 110, 0.5),
    "vg": (86_610, True, 120, 0.5),
}
NUM_VISUAL, MAX_LENGTH, TEMPLATE_TOKENS = 576, 2048, 40


def llava665k_rows(seed: int = 0, scale: float = 1.0) -> tuple[list[int], list[bool], torch.Tensor]:
    """Synthetic LLaVA-665k rows (``scale`` x each source's count): (word counts, has image,
    spliced token lengths Long[N])."""
    g = torch.Generator().manual_seed(seed)
    words, images = [], []
    for rows, image, median, sigma in SOURCES.values():
        rows = round(rows * scale)
        w = (torch.randn(rows, generator=g, dtype=torch.float64) * sigma).exp() * median
        words.append(w.round().clamp(min=3).long())
        images.append(torch.full((rows,), image))
    words, images = torch.cat(words), torch.cat(images)
    ratio = 1.2 + 0.4 * torch.rand(len(words), generator=g, dtype=torch.float64)
    tokens = (words * ratio).round().long() + TEMPLATE_TOKENS + images.long() * (NUM_VISUAL - 1)
    return words.tolist(), images.tolist(), tokens.clamp(max=MAX_LENGTH)


def padding_stats(batches: list[list[int]], tokens: torch.Tensor, has_image: torch.Tensor) -> dict:
    """Share of padded positions over ``batches`` (lists of row ids) and the number of batches
    that mix image and text-only rows."""
    n, size = len(batches), max(len(b) for b in batches)
    ids = torch.tensor([b + [b[0]] * (size - len(b)) for b in batches])  # all full in practice
    lens, img = tokens[ids], has_image[ids]
    area = lens.max(1).values * size
    return dict(padded=float(1 - lens.sum() / area.sum()),
                mixed=int((img.any(1) & ~img.all(1)).sum()), batches=n)


def stage2_padding(batch_size: int = 16, world_size: int = 8, grad_accum: int = 1,
                   seed: int = 0, scale: float = 1.0) -> dict:
    """One epoch of every rank's micro-batches, grouped (release) and plain, on the rows above.
    Defaults: LLaVA-1.5's stage 2 (8 GPUs x 16 per device, no accumulation = global 128)."""
    words, has_image, tokens = llava665k_rows(seed, scale)
    flags = torch.tensor(has_image)
    out = {}
    for name, grouping in (("grouped", (words, has_image)), ("plain", None)):
        batches = [b for rank in range(world_size)
                   for b in epoch_batches(len(words), grouping, batch_size=batch_size,
                                          grad_accum=grad_accum, rank=rank,
                                          world_size=world_size, seed=seed, epoch=0)]
        out[name] = padding_stats(batches, tokens, flags)
    return dict(rows=len(words), text_only=len(words) - sum(has_image), batch_size=batch_size,
                world_size=world_size, grad_accum=grad_accum, mean_tokens=float(tokens.double().mean()),
                **out)


def report(r: dict) -> str:
    lines = [f"stage-2 padding, {r['rows']:,} synthetic LLaVA-665k rows ({r['text_only']:,} text-only, "
             f"mean {r['mean_tokens']:.0f} tokens), per-device batch {r['batch_size']} x "
             f"{r['world_size']} ranks x {r['grad_accum']} accumulation:"]
    for name in ("grouped", "plain"):
        s = r[name]
        lines.append(f"  {name:8s} padded positions {100 * s['padded']:5.1f}%  "
                     f"{s['mixed']:6,} of {s['batches']:,} batches mix image and text-only rows")
    fewer = 1 - (1 - r["plain"]["padded"]) / (1 - r["grouped"]["padded"])
    lines.append(f"  grouped batches compute {100 * fewer:.1f}% fewer positions than plain ones")
    return "\n".join(lines)
