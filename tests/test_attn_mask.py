"""Tests for minijarvis.attn_mask: one test per rule of DESIGN §2.4, then padding, shapes, errors.

Layouts are built by hand here (SimpleNamespace with .context / .targets), never by a sampler,
so the tests pin the mask builder alone.
"""

from types import SimpleNamespace

import pytest
import torch

from minijarvis.attn_mask import (
    ROLE_CONTEXT,
    ROLE_DROPPED,
    ROLE_PADDING,
    ROLE_TARGET,
    ROLE_TEXT,
    build_additive_mask,
    build_attention_mask,
    slot_roles,
    to_additive,
    visible_positions,
)


def make_layout(context, targets):
    return SimpleNamespace(context=torch.as_tensor(context, dtype=torch.bool),
                           targets=torch.as_tensor(targets, dtype=torch.bool))


def structured_case():
    """3 samples, 12 slots, 3 blocks; blocks 0 and 1 overlap in one slot, block 2 is apart.

    Per sample (random slot order): 4 context slots, block0 = 3 slots, block1 = 3 slots sharing
    one with block0, block2 = 1 slot, 2 dropped slots. Different image starts, right padding.
    """
    g = torch.Generator().manual_seed(0)
    B, N, K, L = 3, 12, 3, 21
    context = torch.zeros(B, N, dtype=torch.bool)
    targets = torch.zeros(B, K, N, dtype=torch.bool)
    groups = []
    for b in range(B):
        perm = torch.randperm(N, generator=g).tolist()
        grp = dict(context=perm[:4], blocks=[perm[4:7], perm[6:9], perm[9:10]], overlap=perm[6],
                  dropped=perm[10:])
        context[b, grp["context"]] = True
        for k, blk in enumerate(grp["blocks"]):
            targets[b, k, blk] = True
        groups.append(grp)
    start = torch.tensor([1, 3, 0])
    lengths = torch.tensor([21, 19, 17])
    padding = torch.arange(L)[None, :] < lengths[:, None]
    layout = SimpleNamespace(context=context, targets=targets)
    mask = build_attention_mask(layout, start, L, padding)[:, 0]
    return SimpleNamespace(layout=layout, start=start, L=L, N=N, padding=padding, mask=mask,
                           groups=groups, lengths=lengths)


@pytest.fixture(scope="module")
def case():
    return structured_case()


def positions(case, b, what):
    s, g = int(case.start[b]), case.groups[b]
    if what == "text_before":
        return list(range(s))
    if what == "text_after":
        return list(range(s + case.N, int(case.lengths[b])))
    if what == "visual":
        return list(range(s, s + case.N))
    if what == "targets":
        return sorted({s + i for blk in g["blocks"] for i in blk})
    return [s + i for i in g[what]]


def test_rule1_text_before_image_sees_no_visual_key_and_is_causal(case):
    for b in range(3):
        for p in positions(case, b, "text_before"):
            row = case.mask[b, p]
            assert not row[positions(case, b, "visual")].any(), f"rule 1: text at {p} (sample {b}) sees a visual key"
            assert row[: p + 1].all() and not row[p + 1:].any(), f"causal: text at {p} (sample {b}) not causal"


def test_rule1_text_after_image_is_causal_over_text_keys(case):
    for b in range(3):
        text = positions(case, b, "text_before") + positions(case, b, "text_after")
        for p in positions(case, b, "text_after"):
            for q in text:
                assert bool(case.mask[b, p, q]) == (q <= p), f"causal: text {p} -> text {q} wrong (sample {b})"


def test_rule2_every_query_from_image_start_sees_every_context_key(case):
    for b in range(3):
        ctx = positions(case, b, "context")
        for p in positions(case, b, "visual") + positions(case, b, "text_after"):
            assert case.mask[b, p, ctx].all(), f"rule 2: query {p} (sample {b}) misses a context key"


def test_rule2_context_is_bidirectional_among_itself(case):
    for b in range(3):
        ctx = positions(case, b, "context")
        assert case.mask[b][ctx][:, ctx].all(), f"rule 2: context of sample {b} not bidirectional"


def test_rule3_target_query_sees_exactly_its_own_blocks_targets(case):
    for b in range(3):
        s, blocks = int(case.start[b]), case.groups[b]["blocks"]
        for p in positions(case, b, "targets"):
            mine = {s + i for blk in blocks if p - s in blk for i in blk}
            seen = {q for q in positions(case, b, "targets") if case.mask[b, p, q]}
            assert seen == mine, f"rule 3: target {p} (sample {b}) sees targets {seen}, its blocks are {mine}"


def test_rule3_overlap_slot_sees_both_blocks_and_separate_blocks_are_isolated(case):
    for b in range(3):
        s, g = int(case.start[b]), case.groups[b]
        ov = s + g["overlap"]
        both = [s + i for i in g["blocks"][0] + g["blocks"][1]]
        assert case.mask[b, ov, both].all(), f"rule 3: overlap slot (sample {b}) misses one of its two blocks"
        b0_only = [s + i for i in g["blocks"][0] if i != g["overlap"]]
        b1_only = [s + i for i in g["blocks"][1] if i != g["overlap"]]
        assert not case.mask[b][b0_only][:, b1_only].any(), f"rule 3: block 0 sees block 1 outside the overlap ({b})"
        assert not case.mask[b][b1_only][:, b0_only].any(), f"rule 3: block 1 sees block 0 outside the overlap ({b})"
        b2 = [s + i for i in g["blocks"][2]]
        assert not case.mask[b][b2][:, both].any(), f"rule 3: block 2 sees another block (sample {b})"
        assert not case.mask[b][both][:, b2].any(), f"rule 3: blocks 0/1 see block 2 (sample {b})"


def test_rule4_text_after_image_sees_every_target_and_no_dropped_slot(case):
    for b in range(3):
        for p in positions(case, b, "text_after"):
            assert case.mask[b, p, positions(case, b, "targets")].all(), f"rule 4: text {p} misses a target ({b})"
            assert not case.mask[b, p, positions(case, b, "dropped")].any(), f"text {p} sees a dropped slot ({b})"


def test_context_never_sees_targets(case):
    for b in range(3):
        ctx, tgt = positions(case, b, "context"), positions(case, b, "targets")
        assert not case.mask[b][ctx][:, tgt].any(), f"context sees a target (sample {b})"


def test_dropped_slot_sees_only_prior_text_and_context_not_itself(case):
    for b in range(3):
        allowed = set(positions(case, b, "text_before")) | set(positions(case, b, "context"))
        for p in positions(case, b, "dropped"):
            seen = set(torch.nonzero(case.mask[b, p]).flatten().tolist())
            assert seen == allowed, f"dropped slot {p} (sample {b}) sees {seen}, expected text-before + context"


def test_nobody_sees_a_dropped_slot(case):
    for b in range(3):
        assert not case.mask[b][:, positions(case, b, "dropped")].any(), f"a query sees a dropped slot ({b})"


def test_per_sample_image_start_shifts_the_visual_span():
    # the same layout for two samples, image at 0 and at 2: the visual block moves diagonally by 2
    layout = make_layout([[1, 0, 0, 1]] * 2, [[[0, 1, 1, 0]]] * 2)
    mask = build_attention_mask(layout, torch.tensor([0, 2]), 8)[:, 0]
    assert torch.equal(mask[0, :4, :4], mask[1, 2:6, 2:6]), "visual block not placed at each sample's start"
    assert not mask[1, :2, 2:6].any(), "rule 1: text before the image of sample 1 sees a visual key"
    assert mask[1, 2:6, :2].all(), "visual slots of sample 1 do not see the text before the image"


def test_hand_made_layout_gives_the_hand_written_mask():
    # pos 0 text | 1 ctx | 2 blk0 | 3 blk0+blk1 | 4 blk1 | 5 dropped | 6, 7 caption | 8 padding
    layout = make_layout([[1, 0, 0, 0, 0]], [[[0, 1, 1, 0, 0], [0, 0, 1, 1, 0]]])
    padding = torch.tensor([[True] * 8 + [False]])
    expected = torch.tensor([
        [1, 0, 0, 0, 0, 0, 0, 0, 0],  # text: causal
        [1, 1, 0, 0, 0, 0, 0, 0, 0],  # context: prior text + context
        [1, 1, 1, 1, 0, 0, 0, 0, 0],  # block 0: + block 0
        [1, 1, 1, 1, 1, 0, 0, 0, 0],  # overlap: + blocks 0 and 1
        [1, 1, 0, 1, 1, 0, 0, 0, 0],  # block 1: + block 1
        [1, 1, 0, 0, 0, 0, 0, 0, 0],  # dropped: prior text + context only
        [1, 1, 1, 1, 1, 0, 1, 0, 0],  # caption: context + all targets + causal text
        [1, 1, 1, 1, 1, 0, 1, 1, 0],
        [0, 0, 0, 0, 0, 0, 0, 0, 1],  # padding: itself only
    ], dtype=torch.bool)
    mask = build_attention_mask(layout, 1, 9, padding)
    assert mask.shape == (1, 1, 9, 9) and mask.dtype == torch.bool
    bad = (mask[0, 0] != expected).nonzero().tolist()
    assert not bad, f"mask differs from the hand-written one at (query, key) {bad}"


def test_padded_keys_are_never_attended_and_padded_rows_attend_only_themselves(case):
    assert (~case.padding).sum() >= 6, "the case must contain padding"
    for b in range(3):
        pad = (~case.padding[b]).nonzero().flatten()
        assert not case.mask[b][case.padding[b]][:, pad].any(), f"a real query attends a padded key ({b})"
        for p in pad.tolist():
            assert case.mask[b, p].nonzero().flatten().tolist() == [p], f"padded row {p} ({b}) not self-only"


def test_no_row_is_empty(case):
    assert case.mask.any(-1).all(), "some row attends nothing (softmax over nothing)"


def test_dropped_slot_with_nothing_to_see_attends_itself():
    # image at position 0 and no context: the dropped slot has no key under the rules
    layout = make_layout([[0, 0, 0]], [[[1, 1, 0]]])
    mask = build_attention_mask(layout, 0, 5)[0, 0]
    assert mask[2].nonzero().flatten().tolist() == [2], "empty dropped row must fall back to itself"
    assert not mask[[0, 1, 3, 4], 2].any(), "other queries must still not see the dropped slot"


def test_layout_none_is_causal_tril_with_padding():
    L = 7
    mask = build_attention_mask(None, 2, L, torch.ones(2, L, dtype=torch.bool))
    assert torch.equal(mask[:, 0], torch.ones(2, L, L, dtype=torch.bool).tril()), "layout=None is not causal"
    padding = torch.tensor([[True] * 5 + [False] * 2])
    mask = build_attention_mask(None, 2, L, padding)[0, 0]
    assert torch.equal(mask[:5, :5], torch.ones(5, 5, dtype=torch.bool).tril()), "causal part wrong with padding"
    assert not mask[:5, 5:].any() and torch.equal(mask[5:, :], torch.eye(L, dtype=torch.bool)[5:]), "padding wrong"


def test_bidirectional_visual_makes_the_span_a_full_block_and_keeps_the_rest_causal():
    L, start, n = 9, torch.tensor([1, 3]), 4
    mask = build_attention_mask(None, start, L, num_visual=n, bidirectional_visual=True)[:, 0]
    for b, s in enumerate(start.tolist()):
        expected = torch.ones(L, L, dtype=torch.bool).tril()
        expected[s:s + n, s:s + n] = True
        assert torch.equal(mask[b], expected), f"bidirectional visual mask wrong for sample {b}"


def test_bidirectional_visual_needs_num_visual_and_no_layout():
    with pytest.raises(ValueError, match="num_visual"):
        build_attention_mask(None, 0, 8, bidirectional_visual=True)
    layout = make_layout([[1, 0]], [[[0, 1]]])
    with pytest.raises(ValueError, match="layout=None"):
        build_attention_mask(layout, 0, 8, bidirectional_visual=True)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_to_additive_gives_zero_and_finfo_min_in_the_model_dtype(dtype):
    mask = torch.tensor([[[[True, False], [False, True]]]])
    add = to_additive(mask, dtype)
    assert add.dtype == dtype and add.shape == mask.shape
    lo = torch.finfo(dtype).min
    assert torch.equal(add, torch.tensor([[[[0.0, lo], [lo, 0.0]]]], dtype=dtype)), "not 0 / finfo.min"
    assert torch.isfinite(add).all(), "-inf would make fully masked rows NaN under eager attention"


def test_to_additive_rejects_non_bool_mask_and_non_float_dtype():
    with pytest.raises(ValueError, match="bool"):
        to_additive(torch.zeros(1, 1, 2, 2), torch.float32)
    with pytest.raises(ValueError, match="floating"):
        to_additive(torch.ones(1, 1, 2, 2, dtype=torch.bool), torch.int64)


def test_slot_roles_codes(case):
    roles = slot_roles(case.layout, case.start, case.L, case.padding)
    assert roles.shape == (3, case.L) and roles.dtype == torch.long
    for b in range(3):
        for what, code in [("text_before", ROLE_TEXT), ("text_after", ROLE_TEXT), ("context", ROLE_CONTEXT),
                           ("targets", ROLE_TARGET), ("dropped", ROLE_DROPPED)]:
            assert (roles[b, positions(case, b, what)] == code).all(), f"role of {what} wrong (sample {b})"
        assert (roles[b, ~case.padding[b]] == ROLE_PADDING).all(), f"padding role wrong (sample {b})"


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(image_start=6), "visual span"),  # 6 + 4 > 8
        (dict(image_start=-1), "visual span"),
        (dict(image_start=torch.tensor([0, 5])), "visual span"),
        (dict(padding=torch.ones(2, 7, dtype=torch.bool)), "seq_len"),
        (dict(padding=torch.ones(3, 8, dtype=torch.bool)), "batch sizes"),
        (dict(padding=torch.ones(2, 8)), "bool"),
        (dict(image_start=torch.tensor([0, 1, 2])), "batch sizes"),
        (dict(image_start=1.5), "image_start"),
        (dict(num_visual=5), "num_visual"),
    ],
)
def test_invalid_inputs_raise_value_error(kwargs, match):
    layout = make_layout([[1, 0, 0, 0], [1, 1, 0, 0]], [[[0, 1, 0, 0]], [[0, 0, 1, 0]]])
    args = dict(image_start=0, padding=None) | kwargs
    with pytest.raises(ValueError, match=match):
        build_attention_mask(layout, args.pop("image_start"), 8, **args)


def test_malformed_layouts_raise_value_error():
    with pytest.raises(ValueError, match="targets"):  # N disagrees
        build_attention_mask(make_layout([[1, 0, 0]], [[[0, 1]]]), 0, 8)
    with pytest.raises(ValueError, match="context"):  # not bool
        build_attention_mask(SimpleNamespace(context=torch.ones(1, 3), targets=torch.zeros(1, 1, 3).bool()), 0, 8)
    with pytest.raises(ValueError, match="disjoint"):
        build_attention_mask(make_layout([[1, 1, 0]], [[[0, 1, 0]]]), 0, 8)
    with pytest.raises(ValueError, match="context"):
        build_attention_mask(object(), 0, 8)


def reference_mask(context, targets, start, L, padding):
    """The rules of DESIGN §2.4 as explicit loops: slow, obviously correct."""
    B, K, N = targets.shape
    out = torch.zeros(B, L, L, dtype=torch.bool)
    for b in range(B):
        s = int(start[b])

        def role(p):
            if not padding[b, p]:
                return "pad"
            if p < s:
                return "text_before"
            if p >= s + N:
                return "text_after"
            if context[b, p - s]:
                return "context"
            return "target" if targets[b, :, p - s].any() else "dropped"

        for p in range(L):
            for q in range(L):
                rp, rq = role(p), role(q)
                if rp == "pad" or rq == "pad":
                    ok = False
                elif rq.startswith("text"):
                    ok = q <= p  # causal text
                elif rq == "context":
                    ok = p >= s  # rule 2
                elif rq == "target":
                    same_block = rp == "target" and any(
                        targets[b, k, p - s] and targets[b, k, q - s] for k in range(K))
                    ok = same_block or rp == "text_after"  # rules 3, 4
                else:
                    ok = False  # dropped keys: rule 1
                out[b, p, q] = ok
            if not out[b, p].any():
                out[b, p, p] = True  # padded row, or a dropped slot with nothing to see
    return out


def test_vectorised_builder_matches_loop_reference_on_random_layouts():
    g = torch.Generator().manual_seed(1234)
    for trial in range(12):
        B = 3
        N = int(torch.randint(1, 10, (1,), generator=g))
        K = int(torch.randint(0, 4, (1,), generator=g))
        L = N + int(torch.randint(0, 8, (1,), generator=g))
        density = float(torch.rand(1, generator=g))
        context = torch.rand(B, N, generator=g) < density * 0.6
        targets = (torch.rand(B, K, N, generator=g) < 0.4) & ~context[:, None]
        start = torch.randint(0, L - N + 1, (B,), generator=g)
        padding = torch.rand(B, L, generator=g) < 0.85  # padding anywhere, even inside the span
        layout = SimpleNamespace(context=context, targets=targets)
        got = build_attention_mask(layout, start, L, padding)[:, 0]
        want = reference_mask(context, targets, start, L, padding)
        bad = (got != want).nonzero().tolist()
        assert not bad, f"trial {trial}: vectorised mask differs from the loop reference at (b, query, key) {bad[:5]}"
        assert got.any(-1).all(), f"trial {trial}: an empty row"


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_build_additive_mask_is_to_additive_of_the_bool_mask(dtype):
    """The fast additive builder gives bit for bit what the bool builder + to_additive give,
    with a layout, without one, and with the bidirectional visual span."""
    g = torch.Generator().manual_seed(7)
    for trial in range(6):
        B, N, K = 3, int(torch.randint(1, 10, (1,), generator=g)), int(torch.randint(0, 4, (1,), generator=g))
        L = N + int(torch.randint(0, 8, (1,), generator=g))
        context = torch.rand(B, N, generator=g) < 0.4
        layout = make_layout(context, (torch.rand(B, K, N, generator=g) < 0.4) & ~context[:, None])
        start = torch.randint(0, L - N + 1, (B,), generator=g)
        padding = torch.rand(B, L, generator=g) < 0.85
        for lay, kw in ((layout, {}), (None, {}), (None, dict(num_visual=N, bidirectional_visual=True))):
            want = to_additive(build_attention_mask(lay, start, L, padding, **kw), dtype)
            got = build_additive_mask(lay, start, L, padding, dtype=dtype, **kw)
            assert got.dtype == dtype and torch.equal(got, want), f"trial {trial}, layout={lay is not None}, {kw}"


def test_build_additive_mask_in_bf16_with_more_overlapping_blocks_than_bf16_counts_exactly():
    """bf16 holds integers exactly only up to 256: 300 overlapping blocks make counts round,
    but a positive count never rounds to 0, so the mask is still exact."""
    N, K, L = 4, 300, 6
    layout = make_layout([[True, False, False, False]], torch.zeros(1, K, N, dtype=torch.bool).index_fill_(2, torch.tensor([1, 2]), True))
    got = build_additive_mask(layout, 1, L, dtype=torch.bfloat16)
    want = to_additive(build_attention_mask(layout, 1, L), torch.bfloat16)
    assert got.dtype == torch.bfloat16 and torch.equal(got, want)


def test_build_additive_mask_rejects_non_float_dtype_and_bad_bidirectional_use():
    with pytest.raises(ValueError, match="floating"):
        build_additive_mask(None, 0, 4, dtype=torch.int32)
    with pytest.raises(ValueError, match="num_visual"):
        build_additive_mask(None, 0, 4, dtype=torch.float32, bidirectional_visual=True)


def test_visible_positions_leave_out_exactly_the_slots_nobody_attends():
    """What a masked step may skip: dropped slots (unless ``needed``), as many per row as the
    row with the fewest. No kept query attends a skipped position, so kept rows attend as
    before; and the mask built at the positions is the full mask's restriction to them."""
    g = torch.Generator().manual_seed(7)
    for trial in range(12):
        B, N, K = 3, int(torch.randint(2, 10, (1,), generator=g)), int(torch.randint(1, 4, (1,), generator=g))
        L = N + int(torch.randint(1, 8, (1,), generator=g))
        context = torch.rand(B, N, generator=g) < 0.4
        targets = (torch.rand(B, K, N, generator=g) < 0.3) & ~context[:, None]
        start = torch.randint(0, L - N + 1, (B,), generator=g)
        padding = torch.rand(B, L, generator=g) < 0.85
        needed = torch.rand(B, L, generator=g) < 0.2
        layout = SimpleNamespace(context=context, targets=targets)
        full = build_attention_mask(layout, start, L, padding)
        skippable = (slot_roles(layout, start, L) == ROLE_DROPPED) & ~needed
        pos = visible_positions(layout, start, L, needed)
        assert pos.shape[1] == L - int(skippable.sum(1).min())
        for b in range(B):
            row = pos[b].tolist()
            gone = [p for p in range(L) if p not in row]
            assert row == sorted(set(row)), f"trial {trial}: ascending, no repeats"
            assert all(skippable[b, p] for p in gone), f"trial {trial}: only skippable slots go"
            assert not full[b, 0][row][:, gone].any(), f"trial {trial}: a kept query attends a skipped slot"
        want = torch.stack([full[b, 0][pos[b]][:, pos[b]] for b in range(B)])[:, None]
        assert torch.equal(build_attention_mask(layout, start, L, padding, positions=pos), want)
        additive = build_additive_mask(layout, start, L, padding, dtype=torch.bfloat16, positions=pos)
        assert torch.equal(additive, to_additive(want, torch.bfloat16))


def test_visible_positions_on_the_structured_case_and_errors(case):
    pos = visible_positions(case.layout, case.start, case.L)
    assert pos.shape == (3, case.L - 2), "every sample has two dropped slots"
    for b in range(3):
        dropped = set(positions(case, b, "dropped"))
        assert set(pos[b].tolist()) == set(range(case.L)) - dropped, "exactly the dropped slots go"
    needed = torch.zeros(3, case.L, dtype=torch.bool)
    needed[:, positions(case, 0, "dropped")[0]] = True
    assert positions(case, 0, "dropped")[0] in visible_positions(case.layout, case.start, case.L, needed)[0]
    with pytest.raises(ValueError, match="layout"):
        visible_positions(None, case.start, case.L)
    with pytest.raises(ValueError, match="needed"):
        visible_positions(case.layout, case.start, case.L, torch.zeros(3, case.L))
    with pytest.raises(ValueError, match="positions"):
        build_attention_mask(case.layout, case.start, case.L, positions=pos.float())
