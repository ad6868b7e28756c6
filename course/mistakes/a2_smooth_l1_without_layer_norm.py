"""Planted mistake (A2): smooth-L1 against the raw target, without I-JEPA's layer norm."""
import torch.nn.functional as F

from course.adapters import solution

globals().update(vars(solution("A2")))
_right = token_distance  # noqa: F821


def token_distance(pred, target, distance="cosine"):
    if distance != "smooth_l1":
        return _right(pred, target, distance)
    return F.smooth_l1_loss(pred.float(), target.float(), reduction="none", beta=1.0).mean(-1)
