"""Pins the I-JEPA multi-block sampler (DESIGN.md §2.2): release quirks in faithful mode,
their absence in clean mode, validity rules, the up-front min_keep check, MaskLayout."""
import math

import pytest
import torch

from minijarvis.masking import MAX_TRIES, MaskLayout, MaskSampler, block_size, truncate_context

H = W = 24


def gen(seed):
    return torch.Generator().manual_seed(seed)


def bbox(mask_n, grid=(H, W)):
    """(h, w, count) of the bounding box of a bool [N] mask."""
    m = mask_n.view(grid)
    rows, cols = m.any(1).nonzero().flatten(), m.any(0).nonzero().flatten()
    return rows.max().item() - rows.min().item() + 1, cols.max().item() - cols.min().item() + 1, m.sum().item()


def layouts(sampler, n, batch_size=16, seed=0, draw=False):
    g = gen(seed)
    return [(sampler.draw_untruncated if draw else sampler)(batch_size, generator=g) for _ in range(n)]


# ---------------------------------------------------------------- block_size formula

@pytest.mark.parametrize("scale, aspect, grid, faithful, expected", [
    (0.15, 1.0, (24, 24), True, (9, 9)),     # n = 86, sqrt = 9.27
    (0.15, 1.0, (24, 24), False, (9, 9)),
    (0.2, 1.5, (24, 24), True, (13, 9)),     # n = 115: sqrt(172.5) = 13.1, sqrt(76.7) = 8.76
    (1.0, 1.0, (24, 24), True, (23, 23)),    # n = 576 -> 24, shrunk until < 24
    (1.0, 1.0, (24, 24), False, (24, 24)),   # clean: shrink only until <= 24
    (1.0, 1.5, (24, 24), True, (23, 20)),    # h = round(29.4) = 29 -> 23, w = round(19.6) = 20
    (1.0, 1.5, (24, 24), False, (24, 20)),
    (0.9, 1.0, (4, 16), True, (3, 8)),       # n = 57 -> 8 x 8, h shrunk to 3 on a 4-row grid
    (0.9, 1.0, (4, 16), False, (4, 8)),
])
def test_block_size_matches_hand_computed_values(scale, aspect, grid, faithful, expected):
    assert block_size(scale, aspect, grid, faithful) == expected, "size formula n=int(HWs), round(sqrt(n*a)), round(sqrt(n/a)), shrink"


# ---------------------------------------------------------------- release quirks vs clean

def target_sizes(faithful, n=300):
    return {bbox(layout.targets[0, 0])[:2] for layout in layouts(MaskSampler((H, W), faithful=faithful), n, batch_size=1)}


def test_faithful_scale_and_aspect_come_from_one_draw():
    curve = {block_size(0.15 + u * 0.05, 0.75 + u * 0.75, (H, W)) for u in torch.linspace(0, 1, 20001).tolist()}
    seen = target_sizes(True)
    assert len(seen) >= 5, "faithful: block sizes should vary across batches"
    assert seen <= curve, f"faithful: sizes {seen - curve} are off the one-u curve (scale and aspect must share u)"


def test_clean_scale_and_aspect_are_drawn_independently():
    curve = {block_size(0.15 + u * 0.05, 0.75 + u * 0.75, (H, W), False) for u in torch.linspace(0, 1, 20001).tolist()}
    assert not target_sizes(False) <= curve, "clean: independent scale/aspect draws should leave the one-u curve"


def edge_hits(layout):
    t = layout.targets.view(*layout.targets.shape[:2], H, W)
    c = layout.context.view(-1, H, W)
    return {"target row": t[..., -1, :].any().item(), "target col": t[..., :, -1].any().item(),
            "context row": c[:, -1, :].any().item(), "context col": c[:, :, -1].any().item()}


def test_faithful_never_covers_last_row_or_column():
    for layout in layouts(MaskSampler((H, W)), 100, draw=True):
        hits = edge_hits(layout)
        assert not any(hits.values()), f"faithful: exclusive corner bound broken, last row/col covered: {hits}"


def test_clean_covers_last_row_and_column_sometimes():
    hits = [edge_hits(layout) for layout in layouts(MaskSampler((H, W), faithful=False), 100)]
    for key in hits[0]:
        assert any(h[key] for h in hits), f"clean: inclusive corner bound should sometimes cover the last {key}"


def test_faithful_truncates_context_to_batch_min_keeping_first_raster_indices():
    sampler = MaskSampler((H, W))
    full = sampler.draw_untruncated(16, generator=gen(3)).context
    cut = sampler(16, generator=gen(3)).context
    counts = full.sum(1)
    assert counts.unique().numel() > 1, "test needs a batch whose raw context counts differ"
    assert (cut.sum(1) == counts.min()).all(), "faithful: every context must be cut to the batch's smallest count"
    for b in range(16):
        first = full[b].nonzero().flatten()[: counts.min()]
        assert torch.equal(cut[b].nonzero().flatten(), first), "faithful: truncation must keep the first raster indices"


def test_clean_does_not_truncate_context():
    sampler = MaskSampler((H, W), faithful=False)
    layout = sampler(16, generator=gen(3))
    assert torch.equal(layout.context, sampler.draw_untruncated(16, generator=gen(3)).context), "clean: context must not be cut"
    assert layout.context.sum(1).unique().numel() > 1, "clean: context counts should differ across the batch"


def test_truncate_context_on_hand_built_rows():
    ctx = torch.tensor([[1, 1, 0, 1], [0, 1, 0, 0], [1, 1, 1, 1]], dtype=torch.bool)
    out = torch.tensor([[1, 0, 0, 0], [0, 1, 0, 0], [1, 0, 0, 0]], dtype=torch.bool)
    assert torch.equal(truncate_context(ctx), out), "truncate_context must keep the first min-count slots per row"
    with pytest.raises(ValueError, match="bool"):
        truncate_context(ctx.long())


# ---------------------------------------------------------------- invariants in both modes

@pytest.mark.parametrize("faithful", [True, False])
def test_context_never_overlaps_targets(faithful):
    for layout in layouts(MaskSampler((H, W), faithful=faithful), 20, draw=True):
        assert not (layout.context.unsqueeze(1) & layout.targets).any(), "context := context block minus targets"


@pytest.mark.parametrize("faithful", [True, False])
def test_target_blocks_are_filled_rectangles_of_one_shared_size_per_batch(faithful):
    for layout in layouts(MaskSampler((H, W), faithful=faithful), 20):
        shapes = {bbox(block) for block in layout.targets.flatten(0, 1)}
        assert len(shapes) == 1, f"all target blocks of a batch must share one h x w, got {shapes}"
        h, w, count = shapes.pop()
        assert count == h * w, "each target block must be a filled h x w rectangle"


@pytest.mark.parametrize("faithful", [True, False])
def test_same_seed_same_layout_different_seed_different_layout(faithful):
    sampler = MaskSampler((H, W), faithful=faithful)
    a, b, c = (sampler(8, generator=gen(s)) for s in (7, 7, 8))
    assert torch.equal(a.context, b.context) and torch.equal(a.targets, b.targets), "same seed must give same layout"
    assert not torch.equal(a.targets, c.targets), "different seeds should give different layouts"


def test_generator_none_uses_a_fresh_nondeterministic_seed():
    sampler = MaskSampler((H, W))
    a, b = sampler(4), sampler(4)
    assert a.targets.shape == (4, 4, H * W) and a.context.shape == (4, H * W)
    assert not torch.equal(a.targets, b.targets), "generator=None must not reuse a fixed default seed"


def test_context_redrawn_until_it_holds_more_than_min_keep():
    kw = dict(grid=(H, W), context_scale=(0.4, 0.5))
    raw = torch.cat([lay.context.sum(1) for lay in layouts(MaskSampler(**kw, min_keep=0), 50, 64, draw=True)])
    assert (raw <= 40).any(), "test needs draws whose context is <= 40 before re-drawing"
    for layout in layouts(MaskSampler(**kw, min_keep=40), 50, 64, draw=True):
        assert (layout.context.sum(1) > 40).all(), "every context must hold > min_keep tokens after re-drawing"
        assert (layout.targets.sum(-1) > 40).all(), "every target block must hold > min_keep tokens"


def test_relaxed_after_max_tries_by_accepting_the_last_draw():
    # targets fill the whole 6x6 grid, so no context draw can ever keep a token
    sampler = MaskSampler((6, 6), 1, (1.0, 1.0), (1.0, 1.0), (1.0, 1.0), min_keep=10, faithful=False)
    calls = []
    blocks = sampler._blocks
    sampler._blocks = lambda h, w, shape, g: calls.append(shape) or blocks(h, w, shape, g)
    layout = sampler(3, generator=gen(0))
    assert len(calls) == 1 + MAX_TRIES == 21, "targets drawn once, then exactly 20 context draws before relaxing"
    assert not layout.context.any(), "after 20 failed draws the last draw is accepted as is"


# ---------------------------------------------------------------- DESIGN statistics

def test_faithful_statistics_match_design_on_24x24_batch_16():
    raw = layouts(MaskSampler((H, W)), 200, draw=True)
    before = torch.stack([lay.context.sum(1).float().mean() for lay in raw]).mean().item()
    after = torch.stack([truncate_context(lay.context).sum(1).float().mean() for lay in raw]).mean().item()
    union = torch.stack([lay.target_union.sum(1).float().mean() for lay in raw]).mean().item()
    for name, got, want in (("context before truncation", before, 263), ("context after", after, 198),
                            ("target union", union, 259)):
        assert abs(got - want) <= 0.08 * want, f"DESIGN §2.2: {name} averages {got:.1f}, expected about {want}"


# ---------------------------------------------------------------- up-front checks

@pytest.mark.parametrize("faithful", [True, False])
def test_8x8_grid_with_default_min_keep_is_rejected_up_front(faithful):
    with pytest.raises(ValueError, match="min_keep") as err:
        MaskSampler((8, 8), faithful=faithful)
    suggested = int(err.value.args[0].split("min_keep <= ")[1].split()[0])
    MaskSampler((8, 8), min_keep=suggested, faithful=faithful)(4, generator=gen(0))  # the advice must work


def test_min_keep_check_uses_the_smallest_attainable_block():
    us = torch.linspace(0, 1, 200001).tolist()
    smallest = min(math.prod(block_size(0.15 + u * 0.05, 0.75 + u * 0.75, (H, W))) for u in us)
    assert smallest == 80, "dense search: a (8, 10) target block is attainable on 24x24"
    MaskSampler((H, W), min_keep=smallest - 1)
    with pytest.raises(ValueError, match="holds 80 tokens"):
        MaskSampler((H, W), min_keep=smallest)


@pytest.mark.parametrize("kwargs, match", [
    (dict(grid=(0, 24)), "grid"),
    (dict(grid=(24,)), "grid"),
    (dict(grid=(24.0, 24)), "grid"),
    (dict(num_targets=0), "num_targets"),
    (dict(target_scale=(0.0, 0.2)), "target_scale"),
    (dict(target_scale=(0.15, 1.2)), "target_scale"),
    (dict(context_scale=(0.9, 0.8)), "min <= max"),
    (dict(target_aspect=(0.0, 1.0)), "target_aspect"),
    (dict(context_aspect=(1.5, 1.0)), "min <= max"),
    (dict(min_keep=-1), "min_keep"),
    (dict(grid=(2, 2)), "too small"),            # n = int(4 * 0.15) = 0
    (dict(grid=(1, 24)), "too small"),           # faithful shrink takes h to 0
    (dict(context_scale=(0.1, 0.1), min_keep=70), "smallest context block"),  # 8x8 = 64 <= 70
])
def test_invalid_settings_are_rejected_with_a_clear_message(kwargs, match):
    kwargs = {"grid": (H, W), **kwargs}
    with pytest.raises(ValueError, match=match):
        MaskSampler(**kwargs)


@pytest.mark.parametrize("batch_size", [0, -1, 2.0])
def test_invalid_batch_size_is_rejected(batch_size):
    with pytest.raises(ValueError, match="batch_size"):
        MaskSampler((H, W))(batch_size, generator=gen(0))


# ---------------------------------------------------------------- MaskLayout

def test_mask_layout_built_directly_exposes_roles():
    context = torch.tensor([[1, 0, 0, 0, 0], [0, 0, 1, 1, 0]], dtype=torch.bool)
    targets = torch.zeros(2, 3, 5, dtype=torch.bool)
    targets[0, 0, 1:3] = targets[0, 2, 2] = targets[1, 1, 0] = True
    layout = MaskLayout(context, targets)
    assert (layout.batch_size, layout.num_targets, layout.num_slots) == (2, 3, 5)
    assert layout.target_union.tolist() == [[0, 1, 1, 0, 0], [1, 0, 0, 0, 0]], "target_union = any over blocks"
    assert layout.dropped.tolist() == [[0, 0, 0, 1, 1], [0, 1, 0, 0, 1]], "dropped = neither context nor target"
    moved = layout.to("cpu")
    assert isinstance(moved, MaskLayout) and torch.equal(moved.targets, targets)
    MaskLayout(torch.ones(2, 5, dtype=torch.bool), torch.zeros(2, 0, 5, dtype=torch.bool))  # unmasked: K = 0


@pytest.mark.parametrize("context, targets, match", [
    (torch.zeros(2, 5, dtype=torch.long), torch.zeros(2, 1, 5, dtype=torch.bool), "torch.bool"),
    (torch.zeros(2, 5, dtype=torch.bool), torch.zeros(2, 5, dtype=torch.bool), r"\[B, K, N\]"),
    (torch.zeros(3, 5, dtype=torch.bool), torch.zeros(2, 1, 5, dtype=torch.bool), "must match"),
    (torch.zeros(2, 6, dtype=torch.bool), torch.zeros(2, 1, 5, dtype=torch.bool), "must match"),
    (torch.ones(2, 5, dtype=torch.bool), torch.ones(2, 1, 5, dtype=torch.bool), "both context and target"),
    ([[True]], torch.zeros(1, 1, 1, dtype=torch.bool), "torch.Tensor"),
])
def test_mask_layout_rejects_bad_tensors(context, targets, match):
    with pytest.raises(ValueError, match=match):
        MaskLayout(context, targets)
