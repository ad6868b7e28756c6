"""4D attention masks: the masked JARVIS step and the unmasked steps (DESIGN §2.4, §5).

The sequence is ``[text before image] [N visual slots] [caption] [padding]`` (DESIGN §2.3):
one slot per grid cell, in raster order, starting at ``image_start[b]``. A mask layout says
what each slot is. Any object with two attributes works (duck typing; ``masking.MaskLayout``
is one):

* ``layout.context``: bool [B, N], True = the slot is a context token (carries proj(F_ctx));
* ``layout.targets``: bool [B, K, N], True = the slot lies in target block k (carries the
  latent z). Blocks may overlap each other; they must not overlap the context.

Slots in neither are "dropped": they keep their features but nobody may attend to them.
Padding wins over the layout: a padded position is padding whatever its slot says.

:func:`build_attention_mask` returns bool [B, 1, L, L], True = the row (query) may attend the
column (key). The LLM takes the additive form, 0 / ``finfo.min``: :func:`build_additive_mask`
(same rules, built directly) or :func:`to_additive` of a bool mask. A bool 4D mask is silently
ignored by HF's ``eager`` attention, and ``-inf`` turns a fully masked row into NaN (DESIGN §5).
Since nobody attends a dropped slot, a masked step may leave them out: :func:`visible_positions`
gives the positions to keep, and both builders take them as ``positions=`` (rows and columns
at those positions only).

Every row has at least one True, so no softmax row is empty:

* a padded row attends only itself (the release lets padded rows see real tokens; their
  outputs are unused either way, and "only itself" keeps padding out of the picture);
* a dropped slot sees the real text before the image and the context; if both are empty
  (image at position 0, or only padding before it, and a sample with no context token) it
  attends itself instead. That is the only case where a dropped slot is ever attended.

Time it on your machine (B=16, L=1024, 24x24 grid) with::

    python -c "import minijarvis.attn_mask as m; m._benchmark()"
"""

from __future__ import annotations

import torch

from .masking import MaskLayout

# Role codes returned by slot_roles (one per sequence position); viz.py colours by them.
ROLE_TEXT = 0  # a real text token (before or after the image)
ROLE_CONTEXT = 1  # a visual slot in layout.context
ROLE_TARGET = 2  # a visual slot in at least one target block (use layout.targets for which)
ROLE_DROPPED = 3  # a visual slot in neither: invisible to every query
ROLE_PADDING = 4  # padding (takes precedence over every other role)
ROLE_NAMES = ("text", "context", "target", "dropped", "padding")


def _check_layout(layout) -> tuple[torch.Tensor, torch.Tensor]:
    ctx, tgt = getattr(layout, "context", None), getattr(layout, "targets", None)
    if not (torch.is_tensor(ctx) and ctx.dtype == torch.bool and ctx.dim() == 2):
        raise ValueError("layout.context must be a bool tensor [B, N]")
    if not (torch.is_tensor(tgt) and tgt.dtype == torch.bool and tgt.dim() == 3):
        raise ValueError("layout.targets must be a bool tensor [B, K, N]")
    if tgt.shape[0] != ctx.shape[0] or tgt.shape[2] != ctx.shape[1]:
        raise ValueError(
            f"layout.targets {tuple(tgt.shape)} must be [B, K, N] with [B, N] = layout.context "
            f"{tuple(ctx.shape)}"
        )
    if ctx.shape[1] == 0:
        raise ValueError("layout must have at least one visual slot (N >= 1)")
    if not isinstance(layout, MaskLayout) and (ctx[:, None, :] & tgt).any():  # MaskLayout checked it
        raise ValueError("layout.context and layout.targets must be disjoint (context excludes targets)")
    return ctx, tgt.to(ctx.device)


def _geometry(layout, image_start, seq_len, padding, num_visual, positions=None):
    """Validate the inputs; return (ctx, tgt, N, offset [B, L], real [B, L]).

    ``offset[b, p] = p - image_start[b]``: position p relative to the image start, so slot i
    of sample b sits where offset == i. ``ctx``/``tgt`` are None without a layout. With
    ``positions`` [B, L'] (ascending per row): offset and real at those positions only.
    """
    if isinstance(seq_len, bool) or not isinstance(seq_len, int) or seq_len < 1:
        raise ValueError(f"seq_len must be a positive int, got {seq_len!r}")
    ctx = tgt = None
    sizes = {}  # where each batch size came from, to report mismatches
    if layout is not None:
        ctx, tgt = _check_layout(layout)
        n = ctx.shape[1]
        if num_visual is not None and num_visual != n:
            raise ValueError(f"num_visual={num_visual} disagrees with the layout's N={n}")
        sizes["layout"] = ctx.shape[0]
        device = ctx.device
    else:
        n = 0 if num_visual is None else num_visual
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise ValueError(f"num_visual must be a non-negative int, got {num_visual!r}")
        device = padding.device if torch.is_tensor(padding) else None
    if torch.is_tensor(image_start):
        if image_start.dtype.is_floating_point or image_start.dtype == torch.bool or image_start.dim() > 1:
            raise ValueError("image_start must be an int or an integer tensor [B]")
        device = device or image_start.device
        if image_start.dim() == 1:
            sizes["image_start"] = image_start.shape[0]
    elif isinstance(image_start, bool) or not isinstance(image_start, int):
        raise ValueError(f"image_start must be an int or an integer tensor [B], got {image_start!r}")
    if padding is not None:
        if not (torch.is_tensor(padding) and padding.dtype == torch.bool and padding.dim() == 2):
            raise ValueError("padding must be a bool tensor [B, L] (True = real token) or None")
        if padding.shape[1] != seq_len:
            raise ValueError(f"padding has length {padding.shape[1]}, seq_len is {seq_len}")
        sizes["padding"] = padding.shape[0]
    if len(set(sizes.values())) > 1:
        raise ValueError(f"batch sizes disagree: {sizes}")
    batch = next(iter(sizes.values()), 1)  # nothing says B: a [1, 1, L, L] mask that broadcasts
    device = device or torch.device("cpu")

    start = torch.as_tensor(image_start, dtype=torch.long, device=device).expand(batch)
    lo, hi = torch.aminmax(start)
    if int(lo) < 0 or int(hi) + n > seq_len:
        raise ValueError(
            f"the visual span [image_start, image_start + {n}) must lie inside [0, {seq_len}); "
            f"got image_start={start.tolist()}"
        )
    real = torch.ones(batch, seq_len, dtype=torch.bool, device=device) if padding is None else padding.to(device)
    if positions is None:
        return ctx, tgt, n, torch.arange(seq_len, device=device)[None, :] - start[:, None], real
    if not (torch.is_tensor(positions) and positions.dim() == 2 and positions.shape[0] == batch
            and not positions.dtype.is_floating_point and positions.dtype != torch.bool):
        raise ValueError(f"positions must be an integer tensor [{batch}, L'] (visible_positions)")
    positions = positions.to(device)
    return ctx, tgt, n, positions - start[:, None], real.gather(1, positions)


def _slot_membership(ctx, tgt, n, offset):
    """Per sequence position: in the visual span [B, L], context [B, L], in block k [B, K, L]."""
    in_span = (offset >= 0) & (offset < n)
    slot = offset.clamp(0, n - 1)  # positions outside the span read slot 0, then get masked out
    is_ctx = ctx.gather(1, slot) & in_span
    in_block = tgt.gather(2, slot[:, None, :].expand(-1, tgt.shape[1], -1)) & in_span[:, None, :]
    return in_span, is_ctx, in_block


def slot_roles(layout, image_start, seq_len: int, padding: torch.Tensor | None = None) -> torch.Tensor:
    """Role of every sequence position: LongTensor [B, L] of ROLE_* codes.

    Same arguments as :func:`build_attention_mask` (``layout`` required). Padding wins over
    every other role. For "which target block" use ``layout.targets`` directly.
    """
    if layout is None:
        raise ValueError("slot_roles needs a layout (an object with .context and .targets)")
    ctx, tgt, n, offset, real = _geometry(layout, image_start, seq_len, padding, None)
    in_span, is_ctx, in_block = _slot_membership(ctx, tgt, n, offset)
    roles = torch.full_like(offset, ROLE_TEXT)
    roles = torch.where(in_span, ROLE_DROPPED, roles)
    roles = torch.where(is_ctx, ROLE_CONTEXT, roles)
    roles = torch.where(in_block.any(1), ROLE_TARGET, roles)
    return torch.where(real, roles, ROLE_PADDING)


def _rule_counts(layout, image_start, seq_len, padding, num_visual, bidirectional_visual, dtype,
                 positions=None):
    """For every (query, key): how many rules allow it, as a float tensor [B, L, L] in ``dtype``
    (> 0 = allowed). The one implementation of the rules; :func:`build_attention_mask` and
    :func:`build_additive_mask` only change its form.

    Every rule is "queries with property Q may attend keys with property K", except the causal
    one, so the mask is one outer product kept lower-triangular (rule 1: real queries, text
    keys) plus one batched product ``Q^T K`` that ORs the rest as a count > 0 (counts are
    non-negative integers; in bf16 a large count may round, but a sum of 0/1 terms with a 1 in
    it never rounds to 0, so "> 0" is exact in any float dtype). Then the diagonal (module
    docstring): every real row sees itself, a padded row only itself, a dropped slot itself
    only when it has nothing else to see.
    All in-place after one [B, L, L] allocation, and no bool [B, L, L] pass (they are slow).
    """
    ctx, tgt, n, offset, real = _geometry(layout, image_start, seq_len, padding, num_visual, positions)
    queries = keys = None
    if layout is None:
        text_keys, self_ok = real, True
        if bidirectional_visual:  # the whole visual span attends itself both ways
            queries = keys = ((offset >= 0) & (offset < n) & real)[:, None]
    else:
        in_span, is_ctx, in_block = _slot_membership(ctx, tgt, n, offset)
        text_keys = real & ~in_span  # rule 1: text keys stay causal, visual keys are hidden
        blocks, context = in_block & real[:, None], is_ctx & real  # padding joins no rule
        any_block = blocks.any(1)
        #   rule 2: Q = at/after the image start, K = context
        #   rule 4: Q = text after the image,     K = target (any block)
        #   rule 3: Q = in block k,               K = in block k   (one pair per block)
        queries = torch.cat([((offset >= 0) & real)[:, None], ((offset >= n) & real)[:, None], blocks], 1)
        keys = torch.cat([context[:, None], any_block[:, None], blocks], 1)
        dropped = in_span & real & ~is_ctx & ~any_block
        sees = (text_keys & (offset < 0)).any(1) | context.any(1)  # text before the image, or context
        self_ok = ~(dropped & sees[:, None])
    counts = (real[:, :, None].to(dtype) * text_keys[:, None, :].to(dtype)).tril_()
    if queries is not None:
        counts.baddbmm_(queries.transpose(1, 2).to(dtype), keys.to(dtype))
    diagonal = counts.diagonal(dim1=1, dim2=2)
    if self_ok is True:  # no layout: every row sees itself
        diagonal.fill_(1)
    else:
        diagonal.copy_(self_ok)
    return counts


def _check_bidirectional(layout, num_visual, bidirectional_visual) -> None:
    if bidirectional_visual and layout is not None:
        raise ValueError("bidirectional_visual=True applies to unmasked steps only: pass layout=None")
    if bidirectional_visual and num_visual is None:
        raise ValueError("bidirectional_visual=True needs num_visual (the number of visual slots)")


def build_attention_mask(
    layout,
    image_start: int | torch.Tensor,
    seq_len: int,
    padding: torch.Tensor | None = None,
    *,
    num_visual: int | None = None,
    bidirectional_visual: bool = False,
    positions: torch.Tensor | None = None,
) -> torch.Tensor:
    """Bool attention mask [B, 1, L, L], True = query (row) may attend key (column).

    Args:
        layout: object with ``.context`` bool [B, N] and ``.targets`` bool [B, K, N] (see the
            module docstring), or None for an unmasked step.
        image_start: int or integer tensor [B]: the visual span of sample b is positions
            ``[image_start[b], image_start[b] + N)``; it must lie inside [0, L).
        seq_len: L.
        padding: bool [B, L], True = real token; None = all real. Padded keys are never
            attended; a padded row attends only itself.
        num_visual: N when ``layout`` is None (required with ``bidirectional_visual``); must
            equal the layout's N if both are given.
        bidirectional_visual: only with ``layout=None``: causal, but the whole visual span
            attends itself in both directions (the release's ``bidir_visual_attn``). A masked
            step already has its own visual rules, so combining it with a layout is a
            ValueError (pass layout=None for unmasked steps).
        positions: integer [B, L'], each row ascending (:func:`visible_positions`): build only
            those rows and columns, [B, 1, L', L'], the full mask's restriction to them.

    With a layout (DESIGN §2.4), start from causal + padding, then over the visual span:
    (1) no query attends any visual key, except (2) every query at or after the image start
    attends every context key, (3) a target query attends the target keys of the blocks it is
    in (within a block attention is bidirectional; blocks meet only where they overlap), and
    (4) every text query after the image attends every target key. B is taken from the
    layout, padding or image_start tensor, and is 1 if none of them says.
    The LLM takes the same mask as :func:`build_additive_mask`.
    """
    _check_bidirectional(layout, num_visual, bidirectional_visual)
    counts = _rule_counts(layout, image_start, seq_len, padding, num_visual, bidirectional_visual,
                          torch.float32, positions)
    return counts.bool()[:, None]  # counts >= 0: the same as "> 0", and ~7x faster on a CPU (a cast, not a compare)


def build_additive_mask(
    layout,
    image_start: int | torch.Tensor,
    seq_len: int,
    padding: torch.Tensor | None = None,
    *,
    dtype: torch.dtype,
    num_visual: int | None = None,
    bidirectional_visual: bool = False,
    positions: torch.Tensor | None = None,
) -> torch.Tensor:
    """``to_additive(build_attention_mask(...), dtype)`` in one pass, the form the LLM takes:
    [B, 1, L, L] in ``dtype``, 0 where allowed, ``finfo(dtype).min`` elsewhere. Same arguments
    as :func:`build_attention_mask`; about 2x faster (the bool form costs slow bool passes)."""
    if not dtype.is_floating_point:
        raise ValueError(f"dtype must be a floating dtype (the model's), got {dtype}")
    _check_bidirectional(layout, num_visual, bidirectional_visual)
    counts = _rule_counts(layout, image_start, seq_len, padding, num_visual, bidirectional_visual, dtype,
                          positions)
    # count >= 1 -> (1 - 1) * max = 0;  count 0 -> (0 - 1) * max = -max = finfo.min
    return counts.clamp_(max=1).sub_(1).mul_(torch.finfo(dtype).max).to(dtype)[:, None]


def visible_positions(layout, image_start, seq_len: int, needed: torch.Tensor | None = None) -> torch.Tensor:
    """The sequence positions a masked step must compute: LongTensor [B, L'], each row ascending.

    No query attends a dropped slot (module docstring; a dropped slot with nothing else to see
    attends only itself), so nothing downstream depends on it and the LLM can skip it: every
    other position gives the same output without it, if each keeps its position id (RoPE).
    Every row skips as many dropped slots as the row with the fewest (its first ones), so the
    rows keep one length; the dropped slots a row keeps stay as invisible as before.
    ``needed`` bool [B, L]: positions whose own output is read (the model passes those whose
    next label is supervised: in the release the last visual slot, always dropped, predicts
    the first caption token). Build the mask with ``positions=`` these.
    """
    if layout is None:
        raise ValueError("visible_positions needs a layout (a masked step)")
    ctx, tgt, n, offset, _ = _geometry(layout, image_start, seq_len, None, None)
    if needed is not None and (needed.dtype != torch.bool or needed.shape != offset.shape):
        raise ValueError(f"needed must be a bool tensor {tuple(offset.shape)}")
    dropped = ~(ctx | (layout.target_union if isinstance(layout, MaskLayout) else tgt.any(1)))  # [B, N]
    skip = dropped.gather(1, offset.clamp(0, n - 1)) & (offset >= 0) & (offset < n)
    if needed is not None:
        skip &= ~needed
    count = int(skip.sum(1).min())
    skip &= skip.cumsum(1) <= count  # the first `count` of each row
    return (~skip).nonzero()[:, 1].view(skip.shape[0], seq_len - count)  # row-major: ascending


def to_additive(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Bool mask (True = attend) -> additive mask in ``dtype``: 0 where True, finfo.min elsewhere.

    Same shape. finfo.min rather than -inf so a fully masked row gives a uniform softmax
    instead of NaN under HF ``eager`` attention (DESIGN §5).
    """
    if not (torch.is_tensor(mask) and mask.dtype == torch.bool):
        raise ValueError("mask must be a bool tensor (True = may attend)")
    if not dtype.is_floating_point:
        raise ValueError(f"dtype must be a floating dtype (the model's), got {dtype}")
    out = torch.zeros(mask.shape, dtype=dtype, device=mask.device)
    return out.masked_fill_(~mask, torch.finfo(dtype).min)


def _benchmark(batch: int = 16, seq_len: int = 1024, grid: int = 24, repeats: int = 7) -> None:
    """Print median build / to_additive times on a random release-like layout."""
    import time

    n, g = grid * grid, torch.Generator().manual_seed(0)
    context = torch.rand(batch, n, generator=g) < 0.45
    targets = (torch.rand(batch, 4, n, generator=g) < 0.12) & ~context[:, None]

    class _Layout:  # duck-typed layout, as the module docstring allows
        pass

    layout = _Layout()
    layout.context, layout.targets = context, targets
    start = torch.randint(0, 40, (batch,), generator=g)
    padding = torch.arange(seq_len)[None, :] < torch.randint(700, seq_len + 1, (batch, 1), generator=g)

    def median(fn):
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        return sorted(times)[len(times) // 2] * 1e3

    mask = build_attention_mask(layout, start, seq_len, padding)
    print(f"B={batch} L={seq_len} N={n} threads={torch.get_num_threads()}")
    print(f"build_attention_mask {'(bool)':17s}{median(lambda: build_attention_mask(layout, start, seq_len, padding)):8.1f} ms")
    for dtype in (torch.bfloat16, torch.float32):
        print(f"build_additive_mask {str(dtype):15s}"
              f"{median(lambda: build_additive_mask(layout, start, seq_len, padding, dtype=dtype)):8.1f} ms")
        print(f"to_additive {str(dtype):23s}{median(lambda: to_additive(mask, dtype)):8.1f} ms")


def to_block_mask(mask: torch.Tensor):
    """A FlexAttention ``BlockMask`` from a dense bool mask [B,1,L,L] (True = may attend).

    FlexAttention skips fully masked 128x128 blocks, so JARVIS's sparse layout costs less
    than a dense additive mask. Forward works on CPU; the backward needs CUDA (DESIGN.md §5).
    """
    from torch.nn.attention.flex_attention import create_block_mask

    dense = mask[:, 0]
    bsz, length = dense.shape[0], dense.shape[-1]

    def mask_mod(b, h, q, kv):
        return dense[b, q, kv]

    return create_block_mask(mask_mod, bsz, None, length, length, device=mask.device)
