"""Planted mistake (A2): stage 1 trains proj and proj_tgt but forgets the latent z."""
from course.adapters import solution

globals().update(vars(solution("A2")))
_right = set_stage1_trainable  # noqa: F821


def set_stage1_trainable(model):
    _right(model)
    model.z.requires_grad_(False)
