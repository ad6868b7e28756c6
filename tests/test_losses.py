"""Tests for minijarvis.losses: hand-computed values on tiny tensors, edge cases, gradients."""

import math

import pytest
import torch

from minijarvis.losses import DISTANCES, align_loss, jepa_loss, ntp_loss, token_distance


def t(x):
    return torch.tensor(x, dtype=torch.float32)


# One sample, four tokens whose cosine distances are easy by hand: -1, 0, +1, -24/25.
PRED = t([[[1, 0], [1, 0], [1, 1], [3, 4]]])
TARGET = t([[[2, 0], [0, 1], [-1, -1], [4, 3]]])
COS_D = [-1.0, 0.0, 1.0, -0.96]


def test_cosine_distance_by_hand():
    d = token_distance(PRED, TARGET, "cosine")
    assert d.shape == (1, 4) and d.dtype == torch.float32
    assert torch.allclose(d, t([COS_D]), atol=1e-6), f"cosine distance is not -cos: {d}"


def test_jepa_loss_with_overlapping_blocks_by_hand():
    targets = torch.tensor([[[1, 1, 0, 0], [0, 1, 1, 1]]], dtype=torch.bool)  # slot 1 in both blocks
    block0 = (COS_D[0] + COS_D[1]) / 2
    block1 = (COS_D[1] + COS_D[2] + COS_D[3]) / 3
    loss = jepa_loss(PRED, TARGET, targets)
    assert math.isclose(loss.item(), (block0 + block1) / 2, abs_tol=1e-6), "not the mean over blocks of block means"


def test_jepa_loss_pools_a_block_over_samples_not_per_sample_means():
    pred = t([[[1, 0], [1, 0], [1, 0], [1, 0]], [[1, 0], [1, 0], [1, 0], [1, 0]]])
    target = t([[[1, 0], [0, 1], [0, 1], [0, 1]], [[0, 1], [0, 1], [0, 1], [0, 1]]])
    # block 0 holds one token of sample 0 (d = -1) and three of sample 1 (d = 0)
    targets = torch.tensor([[[1, 0, 0, 0]], [[1, 1, 1, 0]]], dtype=torch.bool)
    loss = jepa_loss(pred, target, targets)
    assert math.isclose(loss.item(), -1 / 4, abs_tol=1e-6), f"release averages over (sample, token) pairs, got {loss}"


def test_jepa_loss_skips_an_empty_block():
    targets = torch.tensor([[[1, 1, 0, 0], [0, 0, 0, 0]]], dtype=torch.bool)
    loss = jepa_loss(PRED, TARGET, targets)
    assert not torch.isnan(loss), "an empty block gave NaN"
    assert math.isclose(loss.item(), (COS_D[0] + COS_D[1]) / 2, abs_tol=1e-6), "an empty block was averaged in"


@pytest.mark.parametrize("K", [0, 2])
def test_jepa_loss_with_no_target_token_is_zero_with_finite_grad(K):
    pred = PRED.clone().requires_grad_()
    loss = jepa_loss(pred, TARGET, torch.zeros(1, K, 4, dtype=torch.bool))
    assert loss.item() == 0.0, f"no target token must give 0, got {loss}"
    loss.backward()
    assert pred.grad is not None and torch.isfinite(pred.grad).all(), "gradient missing or not finite"


@pytest.mark.parametrize("distance", DISTANCES)
def test_identical_pred_and_target(distance):
    x = torch.randn(2, 5, 8, generator=torch.Generator().manual_seed(0))
    targets = torch.ones(2, 3, 5, dtype=torch.bool)
    if distance == "cosine":
        assert math.isclose(jepa_loss(x, x, targets).item(), -1.0, abs_tol=1e-6), "cos(x, x) must give -1"
        assert math.isclose(align_loss(x, x).item(), -1.0, abs_tol=1e-6), "cos(x, x) must give -1"
    else:  # smooth-L1 compares to layer_norm(x): zero iff x is already normalised
        xn = torch.nn.functional.layer_norm(x, (8,))
        assert jepa_loss(xn, x, targets).item() < 1e-6, "smooth-L1 of pred = layer_norm(target) must be 0"


def test_smooth_l1_distance_by_hand():
    # target (1, 3) normalises to (-1, 1); (0, 4) too. Diffs (-0.5, 0.2) -> (0.125 + 0.02) / 2;
    # diffs (3, 0) -> ((3 - 0.5) + 0) / 2 (the linear part of smooth-L1, beta = 1).
    pred = t([[[-1.5, 1.2], [2.0, 1.0]]])
    target = t([[[1, 3], [0, 4]]])
    d = token_distance(pred, target, "smooth_l1")
    assert torch.allclose(d, t([[0.0725, 1.25]]), atol=1e-4), f"smooth-L1 against layer-normed target wrong: {d}"


def test_smooth_l1_uses_layer_normed_targets():
    g = torch.Generator().manual_seed(1)
    pred, target = torch.randn(2, 6, 16, generator=g), torch.randn(2, 6, 16, generator=g)
    targets = torch.rand(2, 3, 6, generator=g) < 0.5
    scale, shift = torch.rand(2, 6, 1, generator=g) * 5 + 0.5, torch.randn(2, 6, 1, generator=g) * 10
    base = jepa_loss(pred, target, targets, "smooth_l1")
    moved = jepa_loss(pred, target * scale + shift, targets, "smooth_l1")
    assert torch.allclose(base, moved, atol=1e-5), "per-token scale/shift of the target changed the loss"
    shuffled = jepa_loss(pred, target.flip(-1), targets, "smooth_l1")
    assert not torch.allclose(base, shuffled), "loss ignores the target altogether"


def test_align_loss_by_hand_with_and_without_mask():
    assert math.isclose(align_loss(PRED, TARGET).item(), sum(COS_D) / 4, abs_tol=1e-6), "unmasked mean wrong"
    mask = torch.tensor([[True, False, True, True]])
    expected = (COS_D[0] + COS_D[2] + COS_D[3]) / 3
    assert math.isclose(align_loss(PRED, TARGET, mask).item(), expected, abs_tol=1e-6), "masked mean wrong"


def test_align_loss_empty_mask_is_zero_not_nan():
    pred = PRED.clone().requires_grad_()
    loss = align_loss(pred, TARGET, torch.zeros(1, 4, dtype=torch.bool))
    assert loss.item() == 0.0, f"an empty mask must give 0, got {loss}"
    loss.backward()
    assert torch.isfinite(pred.grad).all()


@pytest.mark.parametrize("distance", DISTANCES)
def test_gradients_reach_pred_and_are_finite_in_bfloat16(distance):
    g = torch.Generator().manual_seed(2)
    pred = torch.randn(2, 6, 8, generator=g).bfloat16().requires_grad_()
    target = torch.randn(2, 6, 8, generator=g).bfloat16()
    targets = torch.rand(2, 4, 6, generator=g) < 0.5
    loss = jepa_loss(pred, target, targets, distance) + align_loss(pred, target, distance=distance)
    assert loss.dtype == torch.float32, "losses must be computed in float32"
    loss.backward()
    assert torch.isfinite(pred.grad).all() and pred.grad.abs().sum() > 0, "no finite gradient reached pred"


def test_cosine_with_a_zero_vector_is_finite():
    pred = torch.zeros(1, 2, 4, requires_grad=True)
    loss = jepa_loss(pred, torch.ones(1, 2, 4), torch.ones(1, 1, 2, dtype=torch.bool))
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(pred.grad).all(), "zero vector gives NaN"


def test_ntp_loss_by_hand_shifts_the_labels():
    # logits at t predict labels[t + 1]: pos 0 -> label 0 with (0, 0): log 2; pos 1 -> label 1
    # with (ln 3, 0): -log(1/4). Position 2's logits and label 0's value play no part.
    logits = t([[[0.0, 0.0], [math.log(3), 0.0], [9.0, -9.0]]])
    labels = torch.tensor([[1, 0, 1]])
    loss = ntp_loss(logits, labels)
    assert math.isclose(loss.item(), (math.log(2) + math.log(4)) / 2, rel_tol=1e-6), f"wrong shift or mean: {loss}"
    assert math.isclose(ntp_loss(logits, torch.tensor([[-100, 0, 1]])).item(), loss.item(), rel_tol=1e-6)


def test_ntp_loss_means_over_supervised_tokens_of_the_whole_batch():
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(2, 5, 7, generator=g)
    labels = torch.tensor([[-100, -100, -100, -100, 3], [-100, 1, 2, 3, -100]])
    per_token = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, 7), labels[:, 1:].reshape(-1),
                                                  reduction="none")
    expected = per_token[labels[:, 1:].reshape(-1) != -100].mean()
    assert torch.allclose(ntp_loss(logits, labels), expected), "not the mean over all supervised tokens"


def test_ntp_loss_computes_in_float32():
    logits = torch.randn(2, 4, 9, generator=torch.Generator().manual_seed(4)).bfloat16()
    labels = torch.tensor([[0, 1, 2, 3], [-100, 4, 5, -100]])
    loss = ntp_loss(logits, labels)
    assert loss.dtype == torch.float32 and torch.equal(loss, ntp_loss(logits.float(), labels)), "not float32"


def test_ntp_loss_without_supervised_tokens_is_zero_with_gradient():
    logits = torch.randn(2, 4, 5, requires_grad=True)
    loss = ntp_loss(logits, torch.full((2, 4), -100))
    assert loss.item() == 0.0 and not torch.isnan(loss), f"no supervised token must give exactly 0, got {loss}"
    assert loss.requires_grad, "the zero loss must stay connected to the logits"
    loss.backward()
    assert torch.equal(logits.grad, torch.zeros_like(logits)), "gradient of the zero loss must be zero"


def test_unknown_distance_lists_the_allowed_ones():
    with pytest.raises(ValueError, match="cosine.*smooth_l1"):
        jepa_loss(PRED, TARGET, torch.ones(1, 1, 4, dtype=torch.bool), distance="l2")


@pytest.mark.parametrize(
    "call",
    [
        lambda: jepa_loss(PRED, TARGET[:, :3], torch.ones(1, 1, 4, dtype=torch.bool)),  # pred/target differ
        lambda: jepa_loss(PRED, TARGET, torch.ones(1, 1, 3, dtype=torch.bool)),  # N differs
        lambda: jepa_loss(PRED, TARGET, torch.ones(2, 1, 4, dtype=torch.bool)),  # B differs
        lambda: jepa_loss(PRED, TARGET, torch.ones(1, 4, dtype=torch.bool)),  # not [B, K, N]
        lambda: jepa_loss(PRED, TARGET, torch.ones(1, 1, 4)),  # not bool
        lambda: align_loss(PRED, TARGET, torch.ones(1, 3, dtype=torch.bool)),
        lambda: align_loss(PRED[0], TARGET[0]),  # not [B, N, D]
        lambda: ntp_loss(torch.zeros(2, 4, 5), torch.zeros(2, 3, dtype=torch.long)),
        lambda: ntp_loss(torch.zeros(2, 4, 5), torch.zeros(2, 4)),  # float labels
    ],
)
def test_shape_errors_raise_value_error(call):
    with pytest.raises(ValueError):
        call()
