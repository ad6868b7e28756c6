"""A3's autograder: VisPer-LM's task tokens, the resampler predictor and its loss, compared
with minijarvis's on seeded cases (the package's weights are loaded into your Resampler)."""
from __future__ import annotations

import torch

from minijarvis import losses as ref_losses
from minijarvis import visper as ref

from ..cases import check, same


@check(2)
def chunk_means_pool_contiguous_rows(impl, cases):
    g = cases.gen("chunks")
    for n, k in ((576, 8), (10, 8), (8, 8), (17, 3)):
        rows = torch.randn(n, 6, generator=g)
        same(f"chunk_means of {n} rows into {k}", impl.chunk_means(rows, k), ref.chunk_means(rows, k))


@check(2)
def task_tokens_sit_right_after_the_image(impl, cases):
    g, rng = cases.gen("index"), cases.rng("index")
    for _ in range(4):
        b, n, t = rng.randint(1, 4), rng.randint(1, 9), rng.randint(1, 3)
        length = rng.randint(n + 8 * t, n + 8 * t + 6)
        start = torch.randint(0, length - n - 8 * t + 1, (b,), generator=g)
        start[0] = length if b > 1 else start[0]  # a row without an image: image_start = L
        same(f"task_token_index(B={b}, L={length}, N={n}, T={t})", impl.task_token_index(start, length, n, t),
             ref.task_token_index(start, length, n, t))


def _resamplers(impl, cases, d_in=24, width=40, d_out=12):
    torch.manual_seed(cases.rng("resampler").getrandbits(32))
    want = ref.Resampler(d_in, width, d_out)
    got = impl.Resampler(d_in, width, d_out)
    got.load_state_dict(want.state_dict())  # your parameter names must be the handout's
    return got, want


@check(3)
def resampler_matches_with_shared_and_per_sample_queries(impl, cases):
    got, want = _resamplers(impl, cases)
    g = cases.gen("resampler-inputs")
    x = torch.randn(3, 11, 24, generator=g)
    keys = torch.rand(3, 11, generator=g) < 0.7
    for name, queries, k in (("shared queries [1, Q, d]", torch.randn(1, 5, 24, generator=g), None),
                             ("per-sample queries [B, 1, d]", torch.randn(3, 1, 24, generator=g), None),
                             ("shared queries with a key mask", torch.randn(1, 5, 24, generator=g), keys)):
        same(f"Resampler, {name}", got(x, queries, k), want(x, queries, k), atol=1e-4)


@check(1)
def resampler_ignores_masked_keys(impl, cases):
    got, _ = _resamplers(impl, cases)
    g = cases.gen("resampler-mask")
    x, queries = torch.randn(2, 9, 24, generator=g), torch.randn(1, 4, 24, generator=g)
    keys = torch.ones(2, 9, dtype=torch.bool)
    keys[:, 6:] = False  # padding
    noisy = x.clone()
    noisy[:, 6:] = 100 * torch.randn(2, 3, 24, generator=g)
    same("Resampler output when only masked keys change", got(noisy, queries, keys), got(x, queries, keys), atol=1e-4)


@check(2)
def info_nce_matches(impl, cases):
    g = cases.gen("nce")
    for log_scale in (2.0, 6.0):  # exp(6) > 100: the scale is clamped at max_scale
        pred, target = torch.randn(4, 5, 6, generator=g), torch.randn(4, 5, 6, generator=g)
        s1, s2 = torch.tensor(log_scale, requires_grad=True), torch.tensor(log_scale, requires_grad=True)
        got, want = impl.info_nce(pred, target, s1), ref_losses.info_nce(pred, target, s2)
        same(f"info_nce (log_scale {log_scale})", got, want)
        if log_scale == 2.0:
            got.backward(), want.backward()
            assert s1.grad is not None, "info_nce: no gradient reaches log_scale"
            same("d info_nce / d log_scale", s1.grad, s2.grad)


@check(2)
def embedding_loss_is_smooth_l1_plus_weighted_info_nce(impl, cases):
    g = cases.gen("embedding")
    for contrastive in (0.3, 0.0, 1.0):
        pred, target = torch.randn(3, 7, 5, generator=g), torch.randn(3, 7, 5, generator=g)
        s = torch.tensor(2.0)
        same(f"embedding_loss (contrastive {contrastive})", impl.embedding_loss(pred, target, s, contrastive),
             ref.embedding_loss(pred, target, s, contrastive))


@check(1)
def the_temperature_is_learned(impl, cases):
    g = cases.gen("temperature")
    pred = torch.randn(3, 4, 5, generator=g, requires_grad=True)
    s = torch.tensor(2.0, requires_grad=True)
    impl.embedding_loss(pred, torch.randn(3, 4, 5, generator=g), s, 0.3).backward()
    assert s.grad is not None and s.grad.abs() > 0, "embedding_loss: the temperature log_scale gets no gradient"
    assert pred.grad is not None, "embedding_loss: pred gets no gradient"


@check(1)
def embedding_loss_without_images_is_zero(impl, cases):
    pred = torch.zeros(0, 4, 5, requires_grad=True)
    loss = impl.embedding_loss(pred, torch.zeros(0, 4, 5), torch.tensor(2.0), 0.3)
    assert torch.is_tensor(loss) and loss.dim() == 0 and not loss.isnan() and loss.item() == 0, \
        f"embedding_loss with B = 0 must be 0 (got {loss})"
    assert loss.requires_grad, "embedding_loss with B = 0 must stay connected to pred"
