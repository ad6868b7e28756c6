"""Planted mistake (A1): the context cut keeps each row's *last* m slots, not its first."""
from course.adapters import solution

globals().update(vars(solution("A1")))


def truncate_context(context):
    m = context.sum(1).min()
    from_end = context.flip(1).cumsum(1).flip(1)
    return context & (from_end <= m)
