"""Planted mistake (A1): rule 2 off by one slot - context keys are visible only to queries
*after* the image start (``offset > 0`` instead of ``>= 0``), so visual slot 0 misses them."""
import torch

from course.adapters import solution

globals().update(vars(solution("A1")))
_right = build_attention_mask  # noqa: F821  (from the solution, above)


def build_attention_mask(layout, image_start, seq_len, padding=None):
    mask = _right(layout, image_start, seq_len, padding).clone()
    start = torch.as_tensor(image_start).expand(mask.shape[0])
    for b, s in enumerate(start.tolist()):
        if not layout.context[b, 0]:  # slot 0 keeps its own diagonal and, if context, itself
            keys = s + layout.context[b].nonzero()[:, 0]
            mask[b, 0, s, keys] = False
    return mask
