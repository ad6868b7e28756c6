"""Planted mistake (A2): the lambda coin runs JEPA with probability lambda (it should skip it)."""
import torch

from course.adapters import solution

globals().update(vars(solution("A2")))


def jepa_coin(generator, lam):
    return bool(torch.rand((), generator=generator) < lam)
