"""A2's autograder: the JARVIS stage-1 step - z at the target slots, L_JEPA (cosine and
smooth-L1), the lambda coin, the freezing, and one real step of a tiny model with your pieces."""
from __future__ import annotations

import dataclasses
from unittest import mock

import torch

from minijarvis import losses as ref_losses
from minijarvis import model as ref_model

from ..cases import check, same, tiny_batch, tiny_model

TRAINED = ("proj.", "proj_tgt.", "z")


@check(2)
def insert_latent_puts_z_at_the_target_slots(impl, cases):
    g = cases.gen("latent")
    for dtype, shared in ((torch.float32, True), (torch.bfloat16, True), (torch.float32, False)):
        vis = torch.randn(3, 10, 8, generator=g).to(dtype)
        union = torch.rand(3, 10, generator=g) < 0.4
        union[0] = False  # a sample with every target dropped
        z = torch.randn(8 if shared else (10, 8), generator=g, requires_grad=True)
        got = impl.insert_latent(vis, union, z)
        same(f"insert_latent ({dtype}, latent {tuple(z.shape)})", got, ref_model.insert_latent(vis, union, z))
        got.float().sum().backward()
        assert z.grad is not None and z.grad.abs().sum() > 0, "z gets no gradient through insert_latent"


@check(1)
def cosine_distance_is_minus_cos(impl, cases):
    g = cases.gen("cosine")
    pred, target = torch.randn(2, 5, 16, generator=g), torch.randn(2, 5, 16, generator=g)
    same("token_distance cosine", impl.token_distance(pred, target, "cosine"),
         ref_losses.token_distance(pred, target, "cosine"))
    same("token_distance cosine, bf16 in -> float32 out", impl.token_distance(pred.bfloat16(), target.bfloat16(), "cosine"),
         ref_losses.token_distance(pred.bfloat16(), target.bfloat16(), "cosine"), atol=1e-3)


@check(2)
def smooth_l1_distance_normalises_the_target(impl, cases):
    g = cases.gen("smooth")
    pred, target = torch.randn(2, 6, 32, generator=g), 3 * torch.randn(2, 6, 32, generator=g) + 1
    same("token_distance smooth_l1", impl.token_distance(pred, target, "smooth_l1"),
         ref_losses.token_distance(pred, target, "smooth_l1"))
    shifted = 5 * target - 2  # a per-token shift and scale of the target must not matter
    same("token_distance smooth_l1 of a shifted, scaled target", impl.token_distance(pred, shifted, "smooth_l1"),
         impl.token_distance(pred, target, "smooth_l1"), atol=1e-4)


@check(3)
def jepa_loss_averages_each_block_then_the_blocks(impl, cases):
    g, rng = cases.gen("jepa"), cases.rng("jepa")
    for i in range(4):
        b, n, k, d = rng.randint(1, 3), rng.randint(4, 30), rng.randint(1, 4), 8
        pred, target = torch.randn(b, n, d, generator=g), torch.randn(b, n, d, generator=g)
        targets = torch.rand(b, k, n, generator=g) < 0.3  # blocks may overlap
        for distance in ("cosine", "smooth_l1"):
            same(f"jepa_loss case {i} ({b}x{k}x{n}, {distance})", impl.jepa_loss(pred, target, targets, distance),
                 ref_losses.jepa_loss(pred, target, targets, distance))


@check(2)
def jepa_loss_edge_cases(impl, cases):
    g = cases.gen("jepa-edges")
    pred = torch.randn(2, 9, 4, generator=g, requires_grad=True)
    target = torch.randn(2, 9, 4, generator=g)
    none = torch.zeros(2, 3, 9, dtype=torch.bool)
    loss = impl.jepa_loss(pred, target, none, "cosine")
    same("jepa_loss with every target dropped", loss, ref_losses.jepa_loss(pred, target, none, "cosine"))
    assert loss.requires_grad, "jepa_loss with no target token must stay connected to pred (0, not a constant)"
    one_empty = torch.zeros(2, 3, 9, dtype=torch.bool)
    one_empty[0, 0, :4], one_empty[1, 2, 3:] = True, True  # block 1 empty in the whole batch
    same("jepa_loss with an empty block", impl.jepa_loss(pred, target, one_empty, "cosine"),
         ref_losses.jepa_loss(pred, target, one_empty, "cosine"))


@check(2)
def jepa_coin_skips_with_probability_lambda(impl, cases):
    for lam in (0.2, 0.5, 0.9):
        g1, g2 = cases.gen(f"coin{lam}"), cases.gen(f"coin{lam}")
        got = [impl.jepa_coin(g1, lam) for _ in range(200)]
        want = [ref_model.jepa_coin(g2, lam) for _ in range(200)]
        assert got == want, f"jepa_coin(g, {lam}): {sum(a != b for a, b in zip(got, want))} of 200 draws differ " \
                            f"from the release's (True = run JEPA: yours {sum(got)} times, the release's {sum(want)})"
    g = cases.gen("coin-ends")
    assert all(impl.jepa_coin(g, 0.0) for _ in range(50)), "lambda = 0 must always run JEPA"
    assert not any(impl.jepa_coin(g, 1.0) for _ in range(50)), "lambda = 1 must never run JEPA"


def _trainable(model):
    return {n for n, p in model.named_parameters() if p.requires_grad}


@check(2)
def stage1_trains_exactly_proj_proj_tgt_and_z(impl, cases):
    model = tiny_model()
    model.requires_grad_(True)  # every part wrong: the LLM and the encoders unfrozen...
    for part in (model.proj, model.proj_tgt):
        part.requires_grad_(False)  # ...and what must train frozen
    model.z.requires_grad_(False)
    impl.set_stage1_trainable(model)
    got = _trainable(model)
    want = {n for n, _ in model.named_parameters() if n.startswith(TRAINED)}
    assert got == want, f"trainable in stage 1: missing {sorted(want - got)[:4]}, extra {sorted(got - want)[:4]}"


@check(3)
def a_step_with_your_pieces_matches_and_trains_only_proj_proj_tgt_z(impl, cases):
    model = tiny_model()
    batch = tiny_batch(model, cases.gen("step-batch"))
    seed = cases.rng("step").getrandbits(32)
    for distance in ("cosine", "smooth_l1"):
        model.cfg = dataclasses.replace(model.cfg, jepa_distance=distance)
        model.set_trainable()
        want = model(batch, generator=torch.Generator().manual_seed(seed), run_jepa=True)
        model.zero_grad(set_to_none=True)
        impl.set_stage1_trainable(model)
        with mock.patch.object(ref_model, "insert_latent", impl.insert_latent), \
                mock.patch.object(ref_model, "jepa_loss", impl.jepa_loss), \
                mock.patch.object(ref_model, "jepa_coin", impl.jepa_coin):
            got = model(batch, generator=torch.Generator().manual_seed(seed), run_jepa=True)
        same(f"{distance}: L_JEPA of the step", got["jepa_loss"], want["jepa_loss"], atol=1e-4)
        same(f"{distance}: L = L_NTP + L_JEPA", got["loss"], want["ntp_loss"] + want["jepa_loss"], atol=1e-4)
        got["loss"].backward()
        moved = {n for n, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
        want_moved = {n for n, _ in model.named_parameters() if n.startswith(TRAINED)}
        assert moved == want_moved, f"{distance}: gradients reach {sorted(moved - want_moved)[:4]} (must not) " \
                                    f"and miss {sorted(want_moved - moved)[:4]}"
