"""Pictures of mask layouts and attention masks (DESIGN §2.2-2.4).

* :func:`draw_layout`: one sample of a MaskLayout as the H x W token grid over a photo:
  context slots tinted blue, each target block k tinted and outlined in its own colour,
  dropped slots darkened and hatched.
* :func:`draw_attention_mask`: the L x L mask, row = query, column = key. An allowed cell
  takes the colour of its KEY's role (text, context, target block k, dropped, padding); a
  blocked cell is white; padded rows and columns are shaded. Strips along the top and left
  show every position's role; ticks mark the span boundaries.
* :func:`layout_side_by_side`: several layouts over one photo (e.g. faithful vs clean).
* :func:`save_figure`: PNG at a fixed dpi.

A slot in several target blocks gets the mean of their colours (in both pictures); in the
layout picture every block's outline stays visible. Each function builds a fresh
``matplotlib.figure.Figure`` (no pyplot, no global state) under fixed rcParams; pass ``ax``
to draw into your own axes. In a notebook, ``display(fig)`` shows a returned figure.

The README pictures, which are also the goldens of tests/test_viz.py, come from
:func:`example_figures`; after a deliberate change of the pictures regenerate them with::

    python -m minijarvis.viz --out-dir tests/golden
"""
from __future__ import annotations

import io
import pathlib

import matplotlib
import numpy as np
import torch
from matplotlib.collections import LineCollection, PatchCollection
from matplotlib.figure import Figure
from matplotlib.patches import Patch, Rectangle
from PIL import Image

from .attn_mask import ROLE_CONTEXT, ROLE_DROPPED, ROLE_PADDING, ROLE_TARGET, ROLE_TEXT, build_attention_mask, slot_roles
from .masking import MaskSampler

DPI = 100
IMAGE_SIZE = 336  # the photo is shown at the context encoder's resolution (CLIP ViT-L/14@336)
CONTEXT_COLOR = "#0072B2"  # Okabe-Ito palette: readable with the common colour-vision deficiencies
TARGET_COLORS = ("#E69F00", "#009E73", "#CC79A7", "#F0E442", "#D55E00", "#56B4E9")  # block k: [k % 6]
DROPPED_COLOR, TEXT_COLOR, PADDING_COLOR, BLOCKED_COLOR = "#303030", "#9A9A9A", "#D0D0D0", "#FFFFFF"
CONTEXT_ALPHA, TARGET_ALPHA, DROPPED_ALPHA = 0.35, 0.5, 0.75  # tints over the photo
# Every figure is drawn under these settings, so a golden PNG depends on nothing global.
STYLE = {"font.family": "DejaVu Sans", "font.size": 9, "axes.titlesize": 10, "svg.hashsalt": "minijarvis",
         "hatch.linewidth": 0.8, "figure.dpi": DPI, "savefig.dpi": DPI, "image.resample": True}


def _rgb(color) -> np.ndarray:
    return np.array(matplotlib.colors.to_rgb(color))


def _check_sample(sample: int, batch: int) -> int:
    if not 0 <= sample < batch:
        raise ValueError(f"sample must be in [0, {batch}), got {sample}")
    return sample


def _target_rgb(in_blocks: np.ndarray) -> np.ndarray:
    """in_blocks bool [K, M] -> RGB [M, 3]: mean colour of the blocks each item is in (0 if none)."""
    palette = np.array([_rgb(TARGET_COLORS[k % len(TARGET_COLORS)]) for k in range(in_blocks.shape[0])])
    return (in_blocks.T.astype(float) @ palette.reshape(-1, 3)) / np.maximum(in_blocks.sum(0), 1)[:, None]


def default_image(size: int = IMAGE_SIZE) -> Image.Image:
    """The photo shipped with matplotlib (Grace Hopper), centre-cropped square, size x size RGB."""
    with Image.open(matplotlib.cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)) as im:
        return _square(im.convert("RGB"), size)


def _square(im: Image.Image, size: int) -> Image.Image:
    s = min(im.size)
    left, top = (im.size[0] - s) // 2, (im.size[1] - s) // 2
    return im.crop((left, top, left + s, top + s)).resize((size, size), Image.BICUBIC)


def _as_image(image, grey: bool) -> np.ndarray:
    """None, PIL image, array [H, W(, 3|4)] or tensor [3, H, W] in [0, 1] -> square uint8 RGB."""
    image = default_image() if image is None else image
    if torch.is_tensor(image):
        if image.dim() != 3 or image.shape[0] != 3:
            raise ValueError(f"an image tensor must be [3, H, W] in [0, 1], got shape {tuple(image.shape)}")
        image = image.detach().float().clamp(0, 1).permute(1, 2, 0).cpu().numpy()
    if isinstance(image, np.ndarray):
        if image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] not in (3, 4)):
            raise ValueError(f"an image array must be [H, W], [H, W, 3] or [H, W, 4], got {image.shape}")
        scale = 255 if image.dtype.kind == "f" else 1  # float images are in [0, 1]
        image = Image.fromarray((image * scale).clip(0, 255).astype(np.uint8))
    if not isinstance(image, Image.Image):
        raise ValueError(f"image must be None, a PIL image, a numpy array or a torch tensor, got {type(image)}")
    image = image.convert("L") if grey else image  # in grey levels the role colours read clearly
    return np.asarray(_square(image.convert("RGB"), IMAGE_SIZE))


def _grid(n: int, grid) -> tuple[int, int]:
    grid = (round(n ** 0.5),) * 2 if grid is None else tuple(grid)
    if len(grid) != 2 or grid[0] * grid[1] != n:
        raise ValueError(f"grid must be (H, W) with H*W = N = {n} (None: N must be a square), got {grid}")
    return grid


def _outline(member: np.ndarray) -> np.ndarray:
    """bool [H, W] -> segments [S, 2, 2] of (x, y) in cell units: the boundary of the True cells."""
    m = np.pad(member, 1)
    rows, cols = np.nonzero(m[1:, 1:-1] != m[:-1, 1:-1])  # horizontal edge above cell (r, c)
    horiz = np.stack([np.stack([cols, rows], -1), np.stack([cols + 1, rows], -1)], 1)
    rows, cols = np.nonzero(m[1:-1, 1:] != m[1:-1, :-1])  # vertical edge left of cell (r, c)
    vert = np.stack([np.stack([cols, rows], -1), np.stack([cols, rows + 1], -1)], 1)
    return np.concatenate([horiz, vert]).astype(float)


def _new_axes(ax, size, rect):
    """``ax`` and its figure, or a new figure of ``size`` inches with one axes at ``rect`` =
    (left, bottom, width, height) inches. Fixed positions, no layout engine: an equal-aspect
    axes defeats constrained layout, and goldens need stable pixels."""
    if ax is not None:
        return ax.figure, ax
    fig = Figure(figsize=size, dpi=DPI)
    (w, h), (left, bottom, aw, ah) = size, rect
    return fig, fig.add_axes((left / w, bottom / h, aw / w, ah / h))


def draw_layout(layout, sample: int = 0, image=None, grid=None, ax=None, title=None, legend=True,
                grey=True) -> Figure:
    """Draw sample ``sample`` of ``layout`` (.context [B, N], .targets [B, K, N]) over an image.

    image: PIL image, array, or tensor [3, H, W] in [0, 1]; None = the matplotlib sample photo.
    It is centre-cropped square and, with ``grey``, shown in grey levels so the tints read
    clearly. grid: (H, W) with H*W = N; None = square. Cell (r, c) = slot r*W + c spans
    data coordinates x in [c, c+1], y in [r, r+1]. Returns the figure.
    """
    b = _check_sample(sample, layout.context.shape[0])
    ctx, tgt = layout.context[b].cpu().numpy(), layout.targets[b].cpu().numpy()
    H, W = _grid(ctx.shape[0], grid)
    in_target = tgt.any(0)
    with matplotlib.rc_context(STYLE):
        fig, ax = _new_axes(ax, (4.4, 5.15), (0.2, 0.8, 4.0, 4.0))
        ax.imshow(_as_image(image, grey), extent=(0, W, H, 0), interpolation="antialiased")
        overlay = np.zeros((ctx.shape[0], 4))  # RGBA tint per slot, drawn at grid resolution
        overlay[ctx] = [*_rgb(CONTEXT_COLOR), CONTEXT_ALPHA]
        overlay[in_target] = np.c_[_target_rgb(tgt)[in_target], np.full(in_target.sum(), TARGET_ALPHA)]
        ax.imshow(overlay.reshape(H, W, 4), extent=(0, W, H, 0), interpolation="nearest")
        dropped = np.argwhere(~(ctx | in_target).reshape(H, W))
        ax.add_collection(PatchCollection([Rectangle((c, r), 1, 1) for r, c in dropped], hatch="////",
                                          facecolor=(*_rgb(DROPPED_COLOR), DROPPED_ALPHA), edgecolor="none",
                                          hatchcolor="#B0B0B0", linewidth=0))
        lines = [[(x, 0), (x, H)] for x in range(1, W)] + [[(0, y), (W, y)] for y in range(1, H)]
        ax.add_collection(LineCollection(lines, colors="white", linewidths=0.4, alpha=0.35))
        for k in range(tgt.shape[0]):
            ax.add_collection(LineCollection(_outline(tgt[k].reshape(H, W)), linewidths=2.0,
                                             colors=TARGET_COLORS[k % len(TARGET_COLORS)]))
        ax.set(xlim=(0, W), ylim=(H, 0), xticks=[], yticks=[])
        ax.set_title(title or f"mask layout, sample {sample} ({H}x{W} grid)")
        if legend:
            handles = [Patch(facecolor=CONTEXT_COLOR, alpha=0.6, label=f"context ({ctx.sum()})")]
            handles += [Patch(color=TARGET_COLORS[k % len(TARGET_COLORS)], label=f"target block {k + 1} "
                              f"({tgt[k].sum()})") for k in range(tgt.shape[0])]
            handles += [Patch(facecolor=DROPPED_COLOR, hatch="////", edgecolor="#B0B0B0",
                              label=f"dropped ({(~(ctx | in_target)).sum()})")]
            ax.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, -0.01), ncols=2,
                      frameon=False, handlelength=1.4, columnspacing=1.2)
    return fig


def layout_side_by_side(layouts: dict, sample: int = 0, image=None, grid=None, grey=True) -> Figure:
    """One panel per named layout ({title: layout}), same image and sample, one legend each."""
    if not layouts:
        raise ValueError("layouts must be a non-empty dict {name: MaskLayout}")
    n = len(layouts)
    fig = Figure(figsize=(4.4 * n, 5.15), dpi=DPI)
    for i, (name, layout) in enumerate(layouts.items()):
        ax = fig.add_axes(((0.2 + 4.4 * i) / (4.4 * n), 0.8 / 5.15, 4.0 / (4.4 * n), 4.0 / 5.15))
        draw_layout(layout, sample, image, grid, ax=ax, title=name, grey=grey)
    return fig


def draw_attention_mask(mask, layout=None, image_start=0, padding=None, sample: int = 0, ax=None,
                        title=None, legend=True) -> Figure:
    """Draw one sample of a bool mask [B, 1, L, L] or [L, L], True = row (query) may attend column (key).

    layout / image_start / padding: as given to ``build_attention_mask`` (padding bool [B, L],
    True = real token); they give each position its role. Without a layout every real
    position counts as text. Cell (q, k) spans data coordinates x in [k, k+1], y in [q, q+1].
    """
    if not (torch.is_tensor(mask) and mask.dtype == torch.bool and mask.dim() in (2, 4)):
        raise ValueError("mask must be a bool tensor [B, 1, L, L] or [L, L]")
    mask = mask.reshape(-1, *mask.shape[-2:]) if mask.dim() == 4 else mask[None]
    L, b = mask.shape[-1], _check_sample(sample, mask.shape[0])
    if layout is not None:
        roles = slot_roles(layout, image_start, L, padding)
        roles = roles[b if roles.shape[0] > 1 else 0].cpu().numpy()
        starts = torch.as_tensor(image_start).reshape(-1)
        start = int(starts[b if len(starts) > 1 else 0])
        blocks = np.zeros((layout.targets.shape[1], L), dtype=bool)  # [K, L]: position in block k
        blocks[:, start:start + layout.context.shape[1]] = layout.targets[b].cpu().numpy()
    else:
        real = np.ones(L, bool) if padding is None else padding[b].cpu().numpy()
        roles, blocks = np.where(real, ROLE_TEXT, ROLE_PADDING), np.zeros((0, L), dtype=bool)
    colors = np.stack([_rgb(c) for c in (TEXT_COLOR, CONTEXT_COLOR, "black", DROPPED_COLOR, PADDING_COLOR)])
    key_rgb = colors[roles]  # [L, 3], rows indexed by the ROLE_* codes; targets get their block colour
    key_rgb[roles == ROLE_TARGET] = _target_rgb(blocks)[roles == ROLE_TARGET]
    picture = np.where(mask[b].cpu().numpy()[..., None], key_rgb[None], _rgb(BLOCKED_COLOR))
    pad = roles == ROLE_PADDING
    picture[pad[:, None] | pad[None, :]] *= 0.9  # shade padded rows and columns
    with matplotlib.rc_context(STYLE):
        fig, ax = _new_axes(ax, (7.0, 5.9), (0.8, 0.65, 4.6, 4.6))
        ax.imshow(picture, extent=(0, L, L, 0), interpolation="nearest")
        for strip, where in ((key_rgb[None], [0, 1.01, 1, 0.025]), (key_rgb[:, None], [-0.035, 0, 0.025, 1])):
            inset = ax.inset_axes(where)
            inset.imshow(strip, aspect="auto", interpolation="nearest")
            inset.set_axis_off()
        # span boundaries: where "visual slot" or "padding" changes (text before and after the
        # image look alike here, but the image sits between them)
        span = np.isin(roles, (ROLE_CONTEXT, ROLE_TARGET, ROLE_DROPPED)) + 2 * pad
        edges = [0, *(np.nonzero(np.diff(span))[0] + 1).tolist(), L]
        ax.hlines(edges[1:-1], 0, L, colors="#707070", linewidths=0.6)
        ax.vlines(edges[1:-1], 0, L, colors="#707070", linewidths=0.6)
        ax.set_xticks(edges, [str(e) for e in edges], rotation=90)
        ax.set_yticks(edges, [str(e) for e in edges])
        ax.tick_params(labelsize=7, length=3)
        ax.tick_params(axis="y", pad=16)  # clear the role strip
        ax.set(xlim=(0, L), ylim=(L, 0), xlabel="key position", ylabel="query position")
        ax.set_title(title or f"attention mask, sample {sample} (row = query, column = key)", pad=18)
        if legend:
            ax.legend(handles=_mask_handles(blocks, layout is not None), loc="upper left", bbox_to_anchor=(1.02, 1),
                      frameon=False, title="key role")
    return fig


def _mask_handles(blocks, has_layout):
    items = [("text", TEXT_COLOR)]
    if has_layout:
        items += [("context", CONTEXT_COLOR)]
        items += [(f"target block {k + 1}", TARGET_COLORS[k % len(TARGET_COLORS)]) for k in range(blocks.shape[0])]
        if (blocks.sum(0) > 1).any():  # show what a key in several blocks looks like (blocks 1 and 2)
            items += [("several blocks:\nmean colour", _target_rgb(np.ones((2, 1), bool))[0])]
        items += [("dropped", DROPPED_COLOR)]
    items += [("padding", PADDING_COLOR), ("blocked", BLOCKED_COLOR)]
    return [Patch(facecolor=c, edgecolor="#606060", linewidth=0.5, label=n) for n, c in items]


def save_figure(fig: Figure, path, colors: int | None = 256) -> pathlib.Path:
    """Write ``fig`` as PNG at DPI, pixel for pixel as drawn (no tight bbox, no metadata).

    colors: quantise to an adaptive palette of that many colours (halves a photo figure, mean
    error about 1/255); None keeps full RGB. Returns the path.
    """
    path, buf = pathlib.Path(path), io.BytesIO()
    with matplotlib.rc_context(STYLE):
        fig.savefig(buf, dpi=DPI, format="png")
    image = Image.open(buf).convert("RGB")
    image = image.quantize(colors) if colors else image
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, format="png", optimize=True)  # PIL writes no timestamp or version
    return path


def example_figures() -> dict[str, Figure]:
    """The README pictures and goldens of tests/test_viz.py, {file stem: figure}:

    layout: a faithful 24x24 layout (batch 8, seed 0), sample 1 over the sample photo: its
    context is cut to the batch's smallest, which drops its last rows (release quirk);
    attention: 4 text tokens + an 8x8 image (min_keep=4, seed 0) + 10 caption tokens + 3 padding.
    """
    layout = MaskSampler((24, 24))(8, generator=torch.Generator().manual_seed(0))
    small = MaskSampler((8, 8), min_keep=4)(1, generator=torch.Generator().manual_seed(0))
    L, start = 4 + 64 + 10 + 3, 4
    padding = torch.arange(L)[None] < L - 3
    mask = build_attention_mask(small, start, L, padding)
    return {"layout": draw_layout(layout, 1, title="faithful 24x24 layout, sample 1 of a batch of 8"),
            "attention": draw_attention_mask(mask, small, image_start=start, padding=padding, title="JARVIS "
                                             "attention mask (row = query, column = key)\n4 text tokens, "
                                             "8x8 image, 10 caption tokens, 3 padding")}


def parse_args(argv=None):
    from .errors import ArgumentParser, add_debug_flag

    parser = ArgumentParser(prog="python -m minijarvis.viz",
                            description="Draw the example pictures (README figures, test goldens).")
    parser.add_argument("--out-dir", required=True, help="folder for layout.png and attention.png; "
                        "tests/golden regenerates the goldens of tests/test_viz.py")
    add_debug_flag(parser)
    return parser.parse_args(argv)


def main(argv=None) -> None:
    out_dir = pathlib.Path(parse_args(argv).out_dir)
    for name, fig in example_figures().items():
        print(save_figure(fig, out_dir / f"{name}.png"))


if __name__ == "__main__":
    import sys

    from .errors import run_main
    sys.exit(run_main(main, prog="python -m minijarvis.viz"))
