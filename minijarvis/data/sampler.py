"""The order of the records in an epoch, and each rank's share of it.

Stage 2 of the release passes ``--group_by_mod_lens True``: LLaVA-1.5's
``group_by_modality_length`` sampler. Reimplemented here from its description:

1. Lengths are a cheap estimate, not token counts: the number of whitespace-separated words in
   all turns of a record (:func:`modality_lengths`; no image tokens added). Image rows and
   text-only rows are grouped apart.
2. Within each modality (:func:`length_grouped_indices`): a random permutation is cut into
   mega-batches of ``batch_size * world_size`` records (``world_size`` = ranks x gradient
   accumulation, as LLaVA passes it); each mega-batch is sorted by length, longest first, then
   dealt into ``world_size`` batches of ``batch_size``: each record goes to the batch with the
   smallest total length so far that is not yet full. So batches of one mega-batch carry
   similar *total* lengths (ranks wait less on each other); the lengths inside a batch still
   span the mega-batch's range.
3. The full mega-batches of both modalities are shuffled together; the last (possibly partial)
   mega-batch of each modality is merged into one, sorted by record index, and put last: the
   only place where modalities can share a batch (:func:`modality_length_grouped_indices`).

The order is split over ranks as HF Trainer + accelerate does (:func:`rank_batches`): global
batch j (``order[j*bs:(j+1)*bs]``) goes to rank ``j % world``, so one optimizer step consumes
one mega-batch. Every rank gets the same number of full batches; the last
``len(order) % (batch_size * ranks)`` records of the order are left out of the epoch (LLaVA
keeps them in smaller or padded batches). Everything is a function of the seed and the epoch
(:func:`epoch_batches`), which is what makes ``--resume`` exact.
"""
from __future__ import annotations

import torch


def modality_lengths(records) -> tuple[list[int], list[bool]]:
    """LLaVA's ``modality_lengths``: per record, the word count of all its turns, and whether it
    has an image. Costs a ``str.split`` per turn, no tokenizer."""
    lengths, has_image = [], []
    for record in records:
        lengths.append(sum(len(t["value"].split()) for t in record["conversations"]))
        has_image.append(record.get("image") is not None)
    return lengths, has_image


def _deal(mega: torch.Tensor, lengths: torch.Tensor, world_size: int) -> torch.Tensor:
    """Rows of ``mega`` [M, S] (record ids sorted longest first) dealt into ``world_size``
    batches of S/world_size each: every record, in order, joins the not-yet-full batch with the
    smallest total length (ties: the lowest batch). Returns [M, S], the batches one after the
    other. All M mega-batches at once; the loop runs over the S positions."""
    m, s = mega.shape
    if s % world_size:  # LLaVA: uneven sizes are dealt round-robin
        return torch.cat([mega[:, k::world_size] for k in range(world_size)], dim=1)
    per, rows = s // world_size, torch.arange(m)
    totals = torch.zeros(m, world_size, dtype=torch.float64)
    counts = torch.zeros(m, world_size, dtype=torch.long)
    out = torch.empty(m, world_size, per, dtype=torch.long)
    for k in range(s):
        b = totals.argmin(1)  # first minimum, as list.index(min(...))
        out[rows, b, counts[rows, b]] = mega[:, k]
        counts[rows, b] += 1
        totals[rows, b] += lengths[mega[:, k]].double()
        totals[rows, b] = torch.where(counts[rows, b] == per, torch.inf, totals[rows, b])
    return out.view(m, s)


def length_grouped_indices(lengths: torch.Tensor, batch_size: int, world_size: int,
                           generator: torch.Generator) -> torch.Tensor:
    """Step 2 above, one modality: a permutation of ``range(len(lengths))`` (Long[N]) made of
    mega-batches of ``batch_size * world_size`` (the last one may be shorter)."""
    n, size = len(lengths), batch_size * world_size
    perm = torch.randperm(n, generator=generator)
    parts = []
    for start, stop in ((0, n - n % size), (n - n % size, n)):
        if stop == start:
            continue
        mega = perm[start:stop].view(-1, min(size, stop - start))
        by_length = torch.sort(lengths[mega], dim=1, descending=True, stable=True).indices
        parts.append(_deal(mega.gather(1, by_length), lengths, world_size).reshape(-1))
    return torch.cat(parts) if parts else perm


def modality_length_grouped_indices(lengths, has_image, batch_size: int, world_size: int,
                                    generator: torch.Generator) -> torch.Tensor:
    """LLaVA-1.5's ``group_by_modality_length`` order (steps 2-3 above): a permutation (Long[N])
    of the records, given their estimated ``lengths`` (ints, N) and ``has_image`` (bools, N).

    ``world_size`` is the number of batches per mega-batch: ranks x gradient accumulation.
    Three draws from ``generator``, in LLaVA's order: the image rows' permutation, the
    text-only rows', the shuffle of the mega-batches.
    """
    lengths = torch.as_tensor(lengths, dtype=torch.long)
    has_image = torch.as_tensor(has_image, dtype=torch.bool)
    if lengths.shape != has_image.shape or lengths.dim() != 1:
        raise ValueError(f"lengths and has_image must be two lists of the same length, "
                         f"got shapes {tuple(lengths.shape)} and {tuple(has_image.shape)}")
    if has_image.all() or not has_image.any():
        return length_grouped_indices(lengths, batch_size, world_size, generator)
    size, full, rest = batch_size * world_size, [], []
    for rows in (has_image.nonzero()[:, 0], (~has_image).nonzero()[:, 0]):
        order = rows[length_grouped_indices(lengths[rows], batch_size, world_size, generator)]
        keep = (len(order) - 1) // size * size  # LLaVA sets the last mega-batch aside, full or not
        full.append(order[:keep].view(-1, size))
        rest.append(order[keep:])
    mega = torch.cat(full)
    mega = mega[torch.randperm(len(mega), generator=generator)]
    return torch.cat([mega.reshape(-1), torch.cat(rest).sort().values])


def rank_batches(order: torch.Tensor, rank: int, world_size: int, batch_size: int) -> list[list[int]]:
    """Rank ``rank``'s micro-batches of an epoch's ``order``: global batch j goes to rank
    ``j % world_size``; only full rounds (every rank the same number, the rest left out)."""
    rounds = len(order) // (batch_size * world_size)
    mine = order[: rounds * world_size * batch_size].view(rounds, world_size, batch_size)[:, rank]
    return mine.tolist()


def epoch_batches(n: int, grouping=None, *, batch_size: int, grad_accum: int, rank: int,
                  world_size: int, seed: int, epoch: int) -> list[list[int]]:
    """Rank ``rank``'s micro-batches (indices into ``n`` records) in epoch ``epoch``: grouped by
    modality and length if ``grouping`` = (lengths, has_image) is given (the release's stage 2),
    else a plain permutation. Seeded by ``seed + epoch`` alone, so micro-batch k of an epoch
    is found again on resume."""
    g = torch.Generator().manual_seed(seed + epoch)
    if grouping is None:
        order = torch.randperm(n, generator=g)
    else:
        lengths, has_image = grouping
        if len(lengths) != n:
            raise ValueError(f"{len(lengths)} lengths for {n} records")
        order = modality_length_grouped_indices(lengths, has_image, batch_size,
                                                world_size * grad_accum, g)
    return rank_batches(order, rank, world_size, batch_size)
