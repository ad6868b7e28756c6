"""Planted mistake (A1): place_blocks reads ``top`` as the column and ``left`` as the row."""
from course.adapters import solution

globals().update(vars(solution("A1")))
_right = place_blocks  # noqa: F821  (from the solution, above)


def place_blocks(top, left, h, w, grid):
    return _right(left, top, h, w, grid)
