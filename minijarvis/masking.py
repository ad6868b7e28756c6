"""I-JEPA multi-block masks on the context token grid (DESIGN.md §2.2).

A layout gives every visual slot (one per grid cell, raster order) a role: *context* (carries
proj(F_ctx)), member of one or more *target blocks* (carries the latent z), or *dropped*.

Recipe, per batch: draw ONE target block size and ONE context block size; per sample, put
k target blocks at random corners (they may overlap), one context block, and make the
context the context block minus the union of the targets.

``faithful=True`` (default) reproduces the official release, quirks included:
  * one uniform u sets both scale and aspect (scale = s0 + u(s1-s0), aspect = a0 + u(a1-a0));
  * block sizes shrink until h < H, w < W, and corners are drawn with an exclusive upper
    bound (top ~ randint(0, H-h)), so the last row and column are never in any block;
  * every context is cut to the batch's smallest context, keeping its first raster indices.
``faithful=False`` is the clean variant: independent u's for scale and aspect, blocks may
fill the grid (h <= H, w <= W) and touch the last row/column, no truncation. Sizes are still
drawn once per batch, so in both modes all target blocks of a batch share one h x w.

Validity: every block must hold more than ``min_keep`` tokens. A target block is an
unconstrained h x w rectangle, so its validity is h*w > min_keep -- fixed once the size is
drawn; if it fails the release loops forever (e.g. an 8x8 grid with min_keep=10). The
constructor therefore enumerates every size the ranges can produce and raises ValueError
unless  min over attainable (h, w) of h*w  >  min_keep  for targets and for the context
block. The context minus the targets can still be too small for some corners: that
sample's context corner is re-drawn (targets kept), at most ``MAX_TRIES`` = 20 draws in all.
Relaxing: after 20 failed draws minijarvis *accepts the 20th draw as is* (its context may
hold <= min_keep tokens, even none). The release instead stops excluding one more target
block per 20 failures, letting context overlap targets; a slot cannot have two roles here.
With the default ranges on a 24x24 grid this branch is never reached.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch

MAX_TRIES = 20  # context draws per sample before the constraint is relaxed (release: 20)
RELEASE_MIN_KEEP = 10  # every block holds more tokens than this (release; min_keep=None lowers it on small grids)


@dataclass(frozen=True, eq=False)
class MaskLayout:
    """Slot roles of one batch. B samples, K target blocks, N = H*W visual slots (raster order).

    context: bool [B, N]; True = the slot is a context slot.
    targets: bool [B, K, N]; True = the slot lies in target block k (blocks may overlap).
    A slot is never context and target at once; a slot that is neither is *dropped*.
    Both tensors live on one device. Build it directly (e.g. an all-context layout with
    K = 0 for an unmasked step) or get one from :class:`MaskSampler`.
    """

    context: torch.Tensor
    targets: torch.Tensor

    def __post_init__(self):
        c, t = self.context, self.targets
        if not (isinstance(c, torch.Tensor) and isinstance(t, torch.Tensor)):
            raise ValueError("MaskLayout: context and targets must be torch.Tensors")
        if c.dtype != torch.bool or t.dtype != torch.bool:
            raise ValueError(f"MaskLayout: context and targets must be torch.bool, got {c.dtype} and {t.dtype}")
        if c.dim() != 2 or t.dim() != 3:
            raise ValueError(f"MaskLayout: context must be [B, N] and targets [B, K, N], "
                             f"got shapes {tuple(c.shape)} and {tuple(t.shape)}")
        if t.shape[0] != c.shape[0] or t.shape[2] != c.shape[1]:
            raise ValueError(f"MaskLayout: B and N must match: context {tuple(c.shape)} vs targets {tuple(t.shape)}")
        if c.device != t.device:
            raise ValueError(f"MaskLayout: context on {c.device} but targets on {t.device}")
        if (c.unsqueeze(1) & t).any():
            raise ValueError("MaskLayout: a slot cannot be both context and target (context & targets must be empty)")

    @property
    def batch_size(self) -> int:
        return self.context.shape[0]

    @property
    def num_targets(self) -> int:
        return self.targets.shape[1]

    @property
    def num_slots(self) -> int:
        return self.context.shape[1]

    @functools.cached_property  # the step reads it three times (z, L_JEPA, the attention mask)
    def target_union(self) -> torch.Tensor:
        """bool [B, N]: the slot lies in at least one target block."""
        return self.targets.any(1)

    @property
    def dropped(self) -> torch.Tensor:
        """bool [B, N]: the slot is neither context nor in any target block."""
        return ~(self.context | self.target_union)

    def to(self, device) -> "MaskLayout":
        if self.context.device == torch.device(device):
            return self  # immutable: no copy, no second validation
        return MaskLayout(self.context.to(device), self.targets.to(device))


def _size_from_count(n: int, aspect: float, grid: tuple[int, int], faithful: bool) -> tuple[int, int]:
    h = int(round(math.sqrt(n * aspect)))
    w = int(round(math.sqrt(n / aspect)))
    H, W = grid
    # the release shrinks "while h >= H": h ends at most H-1, which keeps its exclusive
    # corner bound randint(0, H-h) non-empty; the clean variant lets a block fill the grid
    return (min(h, H - 1), min(w, W - 1)) if faithful else (min(h, H), min(w, W))


def block_size(scale: float, aspect: float, grid: tuple[int, int], faithful: bool = True) -> tuple[int, int]:
    """Block (h, w) for scale s and aspect a (= h/w) on grid (H, W).

    n = int(H*W*s); h = round(sqrt(n*a)); w = round(sqrt(n/a)) (Python round: half to even);
    then shrink h while h >= H and w while w >= W (faithful), or while h > H / w > W (clean).
    May return 0 for a grid too small for the scale; MaskSampler rejects such settings.
    """
    H, W = grid
    return _size_from_count(int(H * W * scale), aspect, grid, faithful)


def _attainable_sizes(scale, aspect, grid, faithful) -> set[tuple[int, int]]:
    """Every (h, w) a draw can give (up to measure-zero ties), found exactly, not by sampling:
    for each count n, h and w only change where n*a or n/a crosses a squared half-integer,
    so the aspect endpoints plus one point between consecutive crossings cover all cases."""
    H, W = grid
    (s0, s1), (a0, a1) = scale, aspect
    sizes = set()
    for n in range(int(H * W * s0), int(H * W * s1) + 1):
        if n == 0:
            sizes.add((0, 0))
            continue
        lo, hi = a0, a1
        if faithful and s1 > s0:  # one u sets both: only aspects whose u gives this n
            u_lo = max(0.0, (n / (H * W) - s0) / (s1 - s0))
            u_hi = min(1.0, ((n + 1) / (H * W) - s0) / (s1 - s0))
            if u_lo > u_hi:
                continue
            lo, hi = a0 + u_lo * (a1 - a0), a0 + u_hi * (a1 - a0)
        cuts = [(k + 0.5) ** 2 / n for k in range(int(math.sqrt(n * hi)) + 2)]
        cuts += [n / (k + 0.5) ** 2 for k in range(int(math.sqrt(n / lo)) + 2)]
        pts = sorted({lo, hi, *(c for c in cuts if lo < c < hi)})
        pts += [(p + q) / 2 for p, q in zip(pts, pts[1:])]
        sizes.update(_size_from_count(n, a, grid, faithful) for a in pts)
    return sizes


def truncate_context(context: torch.Tensor) -> torch.Tensor:
    """Release quirk: bool [B, N] -> bool [B, N] keeping, in every row, only the first m True
    slots in raster order, m = the smallest row count of the batch (all rows end with m)."""
    if not (isinstance(context, torch.Tensor) and context.dtype == torch.bool and context.dim() == 2):
        raise ValueError("truncate_context: context must be a bool tensor [B, N]")
    m = context.sum(1).min()
    return context & (context.cumsum(1) <= m)


def _check_range(name, r, upper=None):
    if len(r) != 2 or not r[0] <= r[1]:
        raise ValueError(f"{name} must be a pair (min, max) with min <= max, got {r}")
    if r[0] <= 0 or (upper is not None and r[1] > upper):
        raise ValueError(f"{name} must lie in (0, {upper if upper is not None else 'inf'}], got {r}")


class MaskSampler:
    """I-JEPA multi-block sampler: ``sampler(batch_size, generator=g) -> MaskLayout``.

    grid (H, W) is the context encoder's token grid (N = H*W slots). See the module docstring
    for the recipe, the ``faithful`` switch, the min_keep rule and its up-front check.
    """

    def __init__(self, grid, num_targets=4, target_scale=(0.15, 0.2), target_aspect=(0.75, 1.5),
                 context_scale=(0.85, 1.0), context_aspect=(1.0, 1.0), min_keep=10, faithful=True):
        """``min_keep=None``: the release's 10, or, on a grid too small for it, one less than the
        smallest block the grid allows (the tiny preset's 6x6 grid: 3)."""
        if len(grid) != 2 or any(not isinstance(g, int) or g < 1 for g in grid):
            raise ValueError(f"grid must be two ints (H, W) >= 1, got {grid}")
        if not isinstance(num_targets, int) or num_targets < 1:
            raise ValueError(f"num_targets must be an int >= 1, got {num_targets}")
        if min_keep is not None and (not isinstance(min_keep, int) or min_keep < 0):
            raise ValueError(f"min_keep must be None or an int >= 0, got {min_keep}")
        _check_range("target_scale", target_scale, 1.0)
        _check_range("context_scale", context_scale, 1.0)
        _check_range("target_aspect", target_aspect)
        _check_range("context_aspect", context_aspect)
        self.grid, self.num_targets, self.min_keep, self.faithful = tuple(grid), num_targets, min_keep, faithful
        self.target_scale, self.target_aspect = tuple(target_scale), tuple(target_aspect)
        self.context_scale, self.context_aspect = tuple(context_scale), tuple(context_aspect)
        H, W = self.grid
        blocks = (("target", target_scale, target_aspect), ("context", context_scale, context_aspect))
        smallest = {}
        for name, sc, ar in blocks:
            sizes = _attainable_sizes(sc, ar, self.grid, faithful)
            if min(min(hw) for hw in sizes) == 0:
                raise ValueError(f"grid {H}x{W} is too small for a {name} block with scale {sc}: "
                                 f"n = int(H*W*scale) or the shrunk h/w reaches 0; use a larger grid or scale")
            smallest[name] = min(h * w for h, w in sizes)
        if min_keep is None:
            min_keep = self.min_keep = min(RELEASE_MIN_KEEP, min(smallest.values()) - 1)
        for name, sc, ar in blocks:
            if smallest[name] <= min_keep:  # the release would re-draw this block forever
                raise ValueError(f"min_keep={min_keep}, but the smallest {name} block that scale {sc} and aspect "
                                 f"{ar} can give on a {H}x{W} grid holds {smallest[name]} tokens; every block must "
                                 f"hold more than min_keep tokens. Use min_keep <= {smallest[name] - 1} or a larger scale.")

    def __call__(self, batch_size: int, generator: torch.Generator | None = None) -> MaskLayout:
        """Sample a layout: context bool [B, H*W], targets bool [B, num_targets, H*W].

        All randomness comes from ``generator``; its device is the layout's device. With
        generator=None a fresh generator with a non-deterministic seed is used (not reproducible).
        """
        context, targets = self._draw(batch_size, generator)
        return MaskLayout(truncate_context(context) if self.faithful else context, targets)

    def draw_untruncated(self, batch_size, generator=None) -> MaskLayout:
        """The layout before the release's truncation (same draws as ``__call__``)."""
        return MaskLayout(*self._draw(batch_size, generator))

    def _draw(self, batch_size, generator) -> tuple[torch.Tensor, torch.Tensor]:
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be an int >= 1, got {batch_size}")
        g = generator
        if g is None:
            g = torch.Generator()
            g.seed()
        B, K, N = batch_size, self.num_targets, self.grid[0] * self.grid[1]
        th, tw = self._draw_size(self.target_scale, self.target_aspect, g)
        ch, cw = self._draw_size(self.context_scale, self.context_aspect, g)
        targets = self._blocks(th, tw, (B, K), g)
        outside = ~targets.any(1)
        context = self._blocks(ch, cw, (B,), g) & outside
        for _ in range(MAX_TRIES - 1):  # re-draw the samples whose context is too small
            todo = (context.sum(1) <= self.min_keep).nonzero().squeeze(1)
            if len(todo) == 0:
                break
            context[todo] = self._blocks(ch, cw, (len(todo),), g) & outside[todo]
        return context, targets  # a sample still too small after 20 draws keeps its 20th

    def _draw_size(self, scale, aspect, g) -> tuple[int, int]:
        u_s = torch.rand(1, generator=g, device=g.device).item()
        u_a = u_s if self.faithful else torch.rand(1, generator=g, device=g.device).item()  # release: one u
        return block_size(scale[0] + u_s * (scale[1] - scale[0]), aspect[0] + u_a * (aspect[1] - aspect[0]),
                          self.grid, self.faithful)

    def _blocks(self, h, w, shape, g) -> torch.Tensor:
        """bool [*shape, H*W]: independent h x w rectangles at uniform random corners."""
        H, W = self.grid
        # release: randint(0, H - h) with exclusive bound, so no block reaches the last row/col
        extra = 0 if self.faithful else 1
        top = torch.randint(0, H - h + extra, shape, generator=g, device=g.device)
        left = torch.randint(0, W - w + extra, shape, generator=g, device=g.device)
        return place_blocks(top, left, h, w, self.grid)


def place_blocks(top: torch.Tensor, left: torch.Tensor, h: int, w: int, grid: tuple[int, int]) -> torch.Tensor:
    """bool [*S, H*W] (raster order): the h x w rectangle whose first row is ``top`` and first
    column ``left`` (integer tensors of one shape S), cut at the grid's edge."""
    H, W = grid
    rows = torch.arange(H, device=top.device) - top.unsqueeze(-1)  # [*S, H]: row minus first row
    cols = torch.arange(W, device=left.device) - left.unsqueeze(-1)
    in_rows, in_cols = (rows >= 0) & (rows < h), (cols >= 0) & (cols < w)
    return (in_rows.unsqueeze(-1) & in_cols.unsqueeze(-2)).flatten(-2)
