"""A1's autograder: the I-JEPA multi-block sampler and the four attention rules, each compared
with minijarvis's own on seeded cases (random grids, tiny grids, one row, no target at all)."""
from __future__ import annotations

import torch

from minijarvis import attn_mask as ref_mask
from minijarvis import masking as ref
from minijarvis.viz import draw_attention_mask, layout_side_by_side

from ..cases import check, same


def _random_layout(gen, batch, n, k, p_ctx=0.4, p_tgt=0.25):
    context = torch.rand(batch, n, generator=gen) < p_ctx
    targets = (torch.rand(batch, k, n, generator=gen) < p_tgt) & ~context[:, None]
    return ref.MaskLayout(context, targets)


def _compare_masks(impl, cases, name, layout, start, length, padding=None):
    want = ref_mask.build_attention_mask(layout, start, length, padding)
    got = impl.build_attention_mask(layout, start, length, padding)
    try:
        same(f"{name}: the mask", got, want)
    except AssertionError as e:
        message = str(e)
        if torch.is_tensor(got) and got.shape == want.shape and got.dtype == torch.bool:
            b, _, q, k = (got != want).nonzero()[0].tolist()
            roles = ref_mask.slot_roles(layout, start, length, padding)[b]
            role = lambda p: ref_mask.ROLE_NAMES[roles[p]]  # noqa: E731
            message = (f"{name}: sample {b}, query {q} ({role(q)}) -> key {k} ({role(k)}): "
                       f"expected {bool(want[b, 0, q, k])}, got {bool(got[b, 0, q, k])}")
            from matplotlib.figure import Figure
            fig = Figure(figsize=(14, 5.9))
            for i, (title, m) in enumerate((("expected", want), ("yours", got))):
                ax = fig.add_axes((0.05 + 0.5 * i, 0.1, 0.33, 0.75))
                draw_attention_mask(m, layout, start, padding, sample=b, ax=ax, title=title, legend=i == 1)
            message += cases.save(f"attention-{name.replace(' ', '-')}", fig)
        raise AssertionError(message) from None


@check(2)
def block_size_matches_the_release(impl, cases):
    rng = cases.rng("block_size")
    for _ in range(400):
        grid = (rng.randint(2, 32), rng.randint(2, 32))
        scale, aspect, faithful = rng.uniform(0.05, 1.0), rng.uniform(0.3, 3.0), rng.random() < 0.5
        want = ref.block_size(scale, aspect, grid, faithful)
        got = impl.block_size(scale, aspect, grid, faithful)
        assert tuple(got) == want, f"block_size({scale:.4f}, {aspect:.4f}, {grid}, faithful={faithful}) " \
                                   f"= {tuple(got)}, expected {want}"


@check(1)
def block_size_on_tiny_grids(impl, cases):
    for grid in ((1, 1), (1, 7), (7, 1), (2, 2), (3, 2)):
        for scale, aspect in ((1.0, 1.0), (0.5, 2.0), (0.9, 0.5)):
            for faithful in (True, False):
                want, got = ref.block_size(scale, aspect, grid, faithful), impl.block_size(scale, aspect, grid, faithful)
                assert tuple(got) == want, f"block_size({scale}, {aspect}, {grid}, faithful={faithful}) " \
                                           f"= {tuple(got)}, expected {want}"


@check(2)
def place_blocks_draws_the_rectangles(impl, cases):
    g, rng = cases.gen("place"), cases.rng("place")
    for grid, shape in (((6, 9), (3, 4)), ((24, 24), (5,)), ((1, 8), (2, 2)), ((5, 1), (3,)), ((4, 4), ())):
        H, W = grid
        h, w = rng.randint(1, H), rng.randint(1, W)
        top = torch.randint(0, H - h + 1, shape, generator=g)
        left = torch.randint(0, W - w + 1, shape, generator=g)
        same(f"place_blocks(h={h}, w={w}, grid={grid}, corners {tuple(shape)})",
             impl.place_blocks(top, left, h, w, grid), ref.place_blocks(top, left, h, w, grid))


@check(2)
def truncate_context_keeps_the_first_slots(impl, cases):
    g = cases.gen("truncate")
    inputs = [torch.rand(5, 40, generator=g) < p for p in (0.3, 0.7)]
    inputs += [torch.rand(1, 12, generator=g) < 0.5,  # one row: nothing to cut
               torch.zeros(3, 9, dtype=torch.bool),  # no context at all
               torch.cat([torch.zeros(1, 9, dtype=torch.bool), torch.ones(2, 9, dtype=torch.bool)])]
    for i, context in enumerate(inputs):
        same(f"truncate_context, case {i} {tuple(context.shape)}", impl.truncate_context(context.clone()),
             ref.truncate_context(context))


def _sampler_settings(cases):
    rng = cases.rng("sampler")
    yield dict(grid=(24, 24)), 4
    yield dict(grid=(8, 8), min_keep=4), 3
    yield dict(grid=(6, 10), min_keep=2, num_targets=2), 1
    yield dict(grid=(24, 24), faithful=False), 2
    yield dict(grid=(12, 12), min_keep=4, context_aspect=(0.75, 1.5), faithful=rng.random() < 0.5), 5


@check(2)
def sampler_layouts_follow_the_recipe(impl, cases):
    for i, (kwargs, batch) in enumerate(_sampler_settings(cases)):
        layout = impl.MaskSampler(**kwargs)(batch, generator=cases.gen(f"recipe{i}"))
        ctx, tgt = layout.context, layout.targets
        H, W = kwargs["grid"]
        assert ctx.shape == (batch, H * W) and tgt.shape == (batch, kwargs.get("num_targets", 4), H * W), \
            f"{kwargs}: shapes {tuple(ctx.shape)}, {tuple(tgt.shape)}"
        assert not (ctx[:, None] & tgt).any(), f"{kwargs}: a slot is both context and target"
        sizes = set()
        for block in tgt.reshape(-1, H, W):
            rows, cols = block.any(1).nonzero()[:, 0], block.any(0).nonzero()[:, 0]
            h, w = len(rows), len(cols)
            assert block.sum() == h * w and rows[-1] - rows[0] + 1 == h and cols[-1] - cols[0] + 1 == w, \
                f"{kwargs}: a target block is not a filled rectangle"
            sizes.add((h, w))
            if kwargs.get("faithful", True):
                assert rows[-1] < H - 1 and cols[-1] < W - 1, f"{kwargs}: a block reaches the last row or column"
        assert len(sizes) == 1, f"{kwargs}: target blocks of one batch have different sizes {sizes}"
        if kwargs.get("faithful", True):
            counts = ctx.sum(1).tolist()
            assert len(set(counts)) == 1, f"{kwargs}: contexts not cut to the batch's smallest: {counts}"


@check(3)
def sampler_draws_what_the_release_draws(impl, cases):
    for i, (kwargs, batch) in enumerate(_sampler_settings(cases)):
        want = ref.MaskSampler(**kwargs)(batch, generator=cases.gen(f"draw{i}"))
        got = impl.MaskSampler(**kwargs)(batch, generator=cases.gen(f"draw{i}"))
        try:
            same(f"{kwargs}: context", got.context, want.context)
            same(f"{kwargs}: targets", got.targets, want.targets)
        except AssertionError as e:
            pictures = cases.save(f"layout-{i}", layout_side_by_side({"expected": want, "yours": got},
                                                                     grid=kwargs["grid"]))
            raise AssertionError(f"{e}{pictures}") from None


@check(1)
def sampler_rejects_a_min_keep_it_cannot_meet(impl, cases):
    for kwargs in (dict(grid=(8, 8), min_keep=10), dict(grid=(4, 4))):
        try:
            impl.MaskSampler(**kwargs)
        except ValueError:
            continue
        raise AssertionError(f"MaskSampler({kwargs}) must raise ValueError: its target blocks hold <= min_keep "
                             "tokens, and the release would re-draw them forever")


@check(4)
def attention_mask_matches_on_random_layouts(impl, cases):
    g, rng = cases.gen("attention"), cases.rng("attention")
    for i in range(6):
        batch, grid, k = rng.randint(1, 3), (rng.randint(1, 5), rng.randint(2, 5)), rng.randint(1, 4)
        n = grid[0] * grid[1]
        layout = _random_layout(g, batch, n, k)
        before, after = rng.randint(0, 4), rng.randint(1, 5)
        start = torch.randint(0, before + 1, (batch,), generator=g)
        length = before + n + after
        padding = torch.arange(length)[None] < torch.randint(length - 2, length + 1, (batch, 1), generator=g)
        _compare_masks(impl, cases, f"random case {i}", layout, start, length, padding if i % 2 else None)


@check(2)
def attention_mask_edge_cases(impl, cases):
    g = cases.gen("attention-edges")
    no_targets = ref.MaskLayout(torch.rand(2, 6, generator=g) < 0.5, torch.zeros(2, 3, 6, dtype=torch.bool))
    _compare_masks(impl, cases, "all targets dropped", no_targets, torch.tensor([1, 2]), 11)
    empty = ref.MaskLayout(torch.zeros(1, 4, dtype=torch.bool), torch.eye(4, dtype=torch.bool)[None, :2])
    _compare_masks(impl, cases, "image at 0 no context", empty, 0, 7)
    one = ref.MaskLayout(torch.ones(1, 1, dtype=torch.bool), torch.zeros(1, 1, 1, dtype=torch.bool))
    _compare_masks(impl, cases, "one slot", one, 2, 5)
    overlap = ref.MaskLayout(torch.tensor([[True, False, False, False, True]]),
                             torch.tensor([[[False, True, True, False, False], [False, False, True, True, False]]]))
    _compare_masks(impl, cases, "overlapping blocks with padding", overlap, torch.tensor([1]), 9,
                   torch.tensor([[True] * 7 + [False] * 2]))
