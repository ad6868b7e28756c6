"""Stage-2 data order: LLaVA-1.5's group_by_modality_length, the split over ranks, resume."""
from pathlib import Path

import pytest
import torch

from minijarvis.data.sampler import (epoch_batches, length_grouped_indices, modality_length_grouped_indices,
                                modality_lengths, rank_batches)


# A plain-Python reference written from LLaVA's description (lists, one index at a time).
def ref_split(indices, lengths, chunks):
    if len(indices) % chunks:
        return [indices[i::chunks] for i in range(chunks)]
    per, out, totals = len(indices) // chunks, [[] for _ in range(chunks)], [0] * chunks
    for i in indices:
        k = totals.index(min(totals))
        out[k].append(i)
        totals[k] += lengths[i]
        if len(out[k]) == per:
            totals[k] = float("inf")
    return out


def ref_length_grouped(lengths, bs, world, g):
    perm, size = torch.randperm(len(lengths), generator=g).tolist(), bs * world
    megas = [sorted(perm[i:i + size], key=lambda i: lengths[i], reverse=True)
             for i in range(0, len(lengths), size)]
    return [i for m in megas for chunk in ref_split(m, lengths, world) for i in chunk]


def ref_modality_grouped(lengths, has_image, bs, world, g):
    if all(has_image) or not any(has_image):
        return ref_length_grouped(lengths, bs, world, g)
    size, megas, rest = bs * world, [], []
    for flag in (True, False):
        rows = [i for i, h in enumerate(has_image) if h == flag]
        order = [rows[i] for i in ref_length_grouped([lengths[i] for i in rows], bs, world, g)]
        chunks = [order[i:i + size] for i in range(0, len(order), size)]
        megas += chunks[:-1]
        rest += chunks[-1]
    megas = [megas[i] for i in torch.randperm(len(megas), generator=g).tolist()]
    return [i for m in megas for i in m] + sorted(rest)


def data(n=1000, text_every=7, seed=0):
    g = torch.Generator().manual_seed(seed)
    lengths = (torch.randn(n, generator=g).exp() * 60 + 5).long().tolist()  # long tail
    return lengths, [i % text_every != 3 for i in range(n)]


@pytest.mark.parametrize("n,bs,world", [(1000, 4, 2), (1000, 16, 8), (997, 3, 5), (50, 8, 4), (7, 2, 2)])
def test_order_equals_the_reference(n, bs, world):
    lengths, has_image = data(n)
    got = modality_length_grouped_indices(lengths, has_image, bs, world, torch.Generator().manual_seed(1))
    want = ref_modality_grouped(lengths, has_image, bs, world, torch.Generator().manual_seed(1))
    assert got.tolist() == want


def test_one_modality_is_length_grouping_alone():
    lengths, _ = data(300)
    got = modality_length_grouped_indices(lengths, [True] * 300, 4, 3, torch.Generator().manual_seed(2))
    assert got.tolist() == ref_length_grouped(lengths, 4, 3, torch.Generator().manual_seed(2))


def test_every_record_once_and_deterministic_under_a_seed():
    lengths, has_image = data(1003)
    a = modality_length_grouped_indices(lengths, has_image, 8, 4, torch.Generator().manual_seed(3))
    b = modality_length_grouped_indices(lengths, has_image, 8, 4, torch.Generator().manual_seed(3))
    c = modality_length_grouped_indices(lengths, has_image, 8, 4, torch.Generator().manual_seed(4))
    assert sorted(a.tolist()) == list(range(1003))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_no_batch_mixes_modalities_before_the_last_megabatch():
    lengths, has_image = data(2000)
    bs, world = 8, 4
    order = modality_length_grouped_indices(lengths, has_image, bs, world, torch.Generator().manual_seed(5))
    flags = torch.tensor(has_image)[order]
    n_image, n_text = sum(has_image), 2000 - sum(has_image)
    mixed_tail = (n_image - 1) % (bs * world) + 1 + (n_text - 1) % (bs * world) + 1
    head = flags[: 2000 - mixed_tail].view(-1, bs)
    assert (head.all(1) | ~head.any(1)).all(), "a batch mixes image and text-only rows"
    assert head.all(1).any() and (~head.any(1)).any()


def test_megabatch_is_sorted_then_dealt_to_balance_totals():
    lengths, has_image = data(1024, text_every=10**9)  # one modality: mega-batches from 0
    bs, world = 16, 8
    order = length_grouped_indices(torch.tensor(lengths), bs, world, torch.Generator().manual_seed(6))
    lens = torch.tensor(lengths)[order].view(-1, world, bs)
    # within a batch, longest first; the first record of batch k is the k-th longest of its mega-batch
    assert (lens[..., :-1] >= lens[..., 1:]).all()
    mega_sorted = lens.flatten(1).sort(1, descending=True).values
    assert torch.equal(lens[:, :, 0], mega_sorted[:, :world])
    totals = lens.sum(-1).double()
    shuffled = torch.randperm(1024, generator=torch.Generator().manual_seed(0))
    random_totals = torch.tensor(lengths)[shuffled].view(-1, world, bs).sum(-1).double()
    assert totals.std(1).mean() < random_totals.std(1).mean() / 3, "rank totals not balanced"


def test_ranks_get_disjoint_equal_shares_batch_j_to_rank_j_mod_world():
    order = torch.randperm(103)
    shares = [rank_batches(order, r, 3, 4) for r in range(3)]
    assert [len(s) for s in shares] == [8, 8, 8]  # 103 // 12 full rounds
    flat = [i for s in shares for b in s for i in b]
    assert len(flat) == len(set(flat)) == 96 and set(flat) == set(order[:96].tolist())
    assert shares[1][0] == order[4:8].tolist() and shares[0][1] == order[12:16].tolist()


@pytest.mark.parametrize("group", [False, True])
def test_epoch_batches_depend_on_seed_and_epoch_alone(group):
    lengths, has_image = data(400)
    grouping = (lengths, has_image) if group else None
    kw = dict(batch_size=4, grad_accum=2, world_size=2, seed=0)
    a = epoch_batches(400, grouping, rank=1, epoch=3, **kw)
    assert a == epoch_batches(400, grouping, rank=1, epoch=3, **kw), "resume would not replay"
    assert a != epoch_batches(400, grouping, rank=1, epoch=4, **kw)
    assert a != epoch_batches(400, grouping, rank=0, epoch=3, **kw)
    ranks = [epoch_batches(400, grouping, rank=r, epoch=3, **kw) for r in range(2)]
    assert not {i for b in ranks[0] for i in b} & {i for b in ranks[1] for i in b}


def test_a_grouped_optimizer_step_is_one_megabatch():
    """With accumulation the mega-batch is ranks x accumulation batches: all of one step."""
    lengths, has_image = data(640)
    kw = dict(batch_size=4, grad_accum=2, world_size=2, seed=1, epoch=0)
    ranks = [epoch_batches(640, (lengths, has_image), rank=r, **kw) for r in range(2)]
    step = [i for r in ranks for b in r[:2] for i in b]  # first optimizer step, both ranks
    order = modality_length_grouped_indices(lengths, has_image, 4, 4, torch.Generator().manual_seed(1))
    assert sorted(step) == sorted(order[:16].tolist())


def test_modality_lengths_count_words_and_images():
    records = [{"image": "a.png", "conversations": [{"value": "<image>\nWhat is it?"}, {"value": "A cat."}]},
               {"conversations": [{"value": "Hi  there"}, {"value": "Hello"}]}]
    assert modality_lengths(records) == ([6, 3], [True, False])  # "<image>" counts as a word


@pytest.mark.parametrize("argv,want", [(["--stage", "finetune", "--llm", "x"], True),
                                       (["--stage", "align"], False),
                                       (["--stage", "finetune", "--llm", "x", "--no-group-by-modality-length"], False),
                                       (["--stage", "align", "--group-by-modality-length"], True)])
def test_grouping_is_the_stage2_default_and_a_flag(argv, want, tmp_path):
    from minijarvis.training.cli import new_train_config, parse_args
    assert new_train_config(parse_args(argv), False, 1, tmp_path).group_by_modality_length is want


def test_grouped_stage2_run_resumes_with_the_same_losses(tmp_path, monkeypatch):
    import json
    import train
    from minijarvis.training.runtime import read_log
    monkeypatch.chdir(tmp_path)
    fast = ["--synthetic-size", "48", "--batch-size", "4"]
    assert train.main(["--stage", "align", *fast, "--max-steps", "1", "--output-dir", "s1"]) == 0
    args = ["--stage", "finetune", "--init", "s1", *fast, "--max-steps", "14", "--save-every", "4"]
    assert train.main([*args, "--output-dir", "full"]) == 0  # 12 micro-batches an epoch: crosses one
    saved = json.loads(Path("full/config.json").read_text())
    assert saved["train"]["group_by_modality_length"] is True

    def crash(trainer, row):
        if row["step"] == 10:
            raise RuntimeError("simulated crash")
    with pytest.raises(RuntimeError, match="simulated crash"):
        train.main([*args, "--output-dir", "cut"], on_step=crash)
    assert train.main([*args, "--output-dir", "cut", "--resume"]) == 0
    rows = lambda path: [(r["step"], r["loss"]) for r in read_log(path)]  # noqa: E731
    assert rows("cut/log.jsonl") == rows("full/log.jsonl"), "resume must replay exactly"


def test_padding_stats_count_padded_positions_and_mixed_batches():
    from minijarvis.bench.padding import padding_stats
    tokens, image = torch.tensor([10, 4, 6, 6]), torch.tensor([True, False, True, True])
    s = padding_stats([[0, 1], [2, 3]], tokens, image)
    assert s == dict(padded=pytest.approx(6 / 32), mixed=1, batches=2)


def test_grouping_pads_less_and_never_mixes_on_llava665k_like_rows():
    from minijarvis.bench.padding import llava665k_rows, stage2_padding
    words, has_image, tokens = llava665k_rows(scale=0.01)
    assert len(words) == 6653 and len(words) - sum(has_image) == 407
    assert tokens.max() <= 2048 and tokens[torch.tensor(has_image)].min() > 576
    r = stage2_padding(scale=0.05)  # the release's 16 per device x 8 ranks
    assert r["grouped"]["padded"] < r["plain"]["padded"] - 0.03
    assert r["grouped"]["mixed"] <= 2 * 8 < r["plain"]["mixed"]  # only the last mega-batch may mix
