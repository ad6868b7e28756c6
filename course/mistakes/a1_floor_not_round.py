"""Planted mistake (A1): block sizes floored instead of rounded (int(sqrt(n*a)))."""
import math

from course.adapters import solution

globals().update(vars(solution("A1")))


def block_size(scale, aspect, grid, faithful=True):
    H, W = grid
    n = int(H * W * scale)
    h, w = int(math.sqrt(n * aspect)), int(math.sqrt(n / aspect))
    return (min(h, H - 1), min(w, W - 1)) if faithful else (min(h, H), min(w, W))
