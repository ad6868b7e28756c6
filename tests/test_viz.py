"""Pictures of mask layouts and attention masks (minijarvis/viz.py).

Two kinds of test: golden images (the README pictures must not drift unnoticed) and
properties (the colour at each cell's centre must say that cell's role, whatever the goldens).
A failing golden test writes tests/_failures/<name>.actual.png and <name>.diff.png.
After a deliberate change of the pictures, regenerate the goldens with:

    python -m minijarvis.viz --out-dir tests/golden
"""
from __future__ import annotations

import pathlib

import numpy as np
import pytest
import torch
from matplotlib.colors import rgb_to_hsv, to_rgb
from PIL import Image

from minijarvis import viz
from minijarvis.attn_mask import build_attention_mask
from minijarvis.masking import MaskLayout, MaskSampler

HERE = pathlib.Path(__file__).parent
GOLDEN, FAILURES = HERE / "golden", HERE / "_failures"
REGENERATE = "python -m minijarvis.viz --out-dir tests/golden"
MEAN_TOL = 2 / 255  # mean absolute difference per channel, in [0, 1]
BIG_DIFF, BIG_FRACTION = 32, 0.005  # at most 0.5% of pixels may differ by more than 32/255


def _read_png(path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB")).astype(np.int16)


def _render(fig, path) -> np.ndarray:
    """Full-colour pixels [H, W, 3] in [0, 1], as save_figure draws them."""
    return _read_png(viz.save_figure(fig, path, colors=None)) / 255.0


def _cell_pixels(fig, pixels, xy) -> np.ndarray:
    """RGB [M, 3] of ``pixels`` at data points xy [M, 2] of the figure's first axes (drawn already)."""
    disp = fig.axes[0].transData.transform(xy)  # display pixels, origin at the bottom left
    rows = (pixels.shape[0] - disp[:, 1]).astype(int)
    return pixels[rows, disp[:, 0].astype(int)]


def _hue(color) -> float:
    return rgb_to_hsv(np.array(to_rgb(color)))[0]


@pytest.fixture(scope="module")
def examples():
    return viz.example_figures()


@pytest.mark.parametrize("name", ["layout", "attention"])
def test_example_picture_matches_golden(examples, name, tmp_path):
    golden_path = GOLDEN / f"{name}.png"
    assert golden_path.exists(), f"missing golden {golden_path}; create it with: {REGENERATE}"
    actual, golden = _read_png(viz.save_figure(examples[name], tmp_path / f"{name}.png")), _read_png(golden_path)
    if actual.shape == golden.shape:
        diff = np.abs(actual - golden)
        mean, big = diff.mean() / 255, (diff.max(-1) > BIG_DIFF).mean()
        if mean < MEAN_TOL and big < BIG_FRACTION:
            return
        problem = f"mean |diff| {mean * 255:.2f}/255 (max {MEAN_TOL * 255:.0f}), {big:.2%} of pixels off by >32"
    else:
        diff, problem = None, f"size {actual.shape[:2]} != golden {golden.shape[:2]}"
    FAILURES.mkdir(exist_ok=True)
    Image.fromarray(actual.astype(np.uint8)).save(FAILURES / f"{name}.actual.png")
    saved = [FAILURES / f"{name}.actual.png"]
    if diff is not None:
        Image.fromarray(np.clip(diff * 8, 0, 255).astype(np.uint8)).save(FAILURES / f"{name}.diff.png")
        saved.append(FAILURES / f"{name}.diff.png")
    pytest.fail(f"{name} picture drifted from {golden_path}: {problem}. Wrote {', '.join(map(str, saved))} "
                f"(diff amplified x8). If the change is intended, regenerate: {REGENERATE}")


def test_golden_pictures_stay_small():
    for name in ("layout", "attention"):
        size = (GOLDEN / f"{name}.png").stat().st_size
        assert size < 150_000, f"golden {name}.png is {size} bytes; keep README pictures under 150 kB"


def test_layout_picture_tints_every_cell_by_its_role(tmp_path):
    layout = MaskSampler((24, 24))(4, generator=torch.Generator().manual_seed(3))
    grey = np.full((64, 64, 3), 128, dtype=np.uint8)  # tints over neutral grey keep their hue
    fig = viz.draw_layout(layout, sample=2, image=grey)
    pixels = _render(fig, tmp_path / "layout.png")
    rows, cols = np.divmod(np.arange(24 * 24), 24)
    hsv = rgb_to_hsv(_cell_pixels(fig, pixels, np.c_[cols + 0.5, rows + 0.5]))
    ctx, tgt, dropped = layout.context[2].numpy(), layout.targets[2].numpy(), layout.dropped[2].numpy()
    assert ctx.any() and dropped.any(), "test layout must hold context and dropped slots"
    assert np.allclose(hsv[ctx, 0], _hue(viz.CONTEXT_COLOR), atol=0.02) and (hsv[ctx, 1] > 0.2).all(), \
        "every context cell must be tinted in the context colour"
    for k in range(tgt.shape[0]):
        only_k = tgt[k] & (tgt.sum(0) == 1)
        assert only_k.any(), f"test layout: block {k} must own a cell of its own"
        assert np.allclose(hsv[only_k, 0], _hue(viz.TARGET_COLORS[k]), atol=0.02), \
            f"every cell of target block {k} alone must be tinted in block {k}'s colour"
    assert (hsv[dropped, 1] < 0.1).all() and (hsv[dropped, 2] < 0.45).all(), \
        "every dropped cell must be grey and darker than the photo (value 0.5)"


def test_attention_picture_colours_each_cell_by_key_role(tmp_path):
    layout = MaskSampler((8, 8), min_keep=4)(2, generator=torch.Generator().manual_seed(1))
    L, start, n_pad = 4 + 64 + 10 + 3, 2, 3  # sample 1: image at 2, caption 66..77, padding 78..80
    padding = torch.arange(L)[None] < torch.tensor([[L], [L - n_pad]])
    mask = build_attention_mask(layout, torch.tensor([4, start]), L, padding)
    fig = viz.draw_attention_mask(mask, layout, image_start=torch.tensor([4, start]), padding=padding, sample=1)
    pixels = _render(fig, tmp_path / "attention.png")
    q, k = np.divmod(np.arange(L * L), L)
    color = _cell_pixels(fig, pixels, np.c_[k + 0.5, q + 0.5]).reshape(L, L, 3)
    allowed, real = mask[1, 0].numpy(), padding[1].numpy()
    inside = real[:, None] & real[None, :]  # padded rows and columns are shaded
    assert ((color > 0.97).all(-1) == ~allowed)[inside].all(), "a real cell must be white exactly where the mask blocks it"
    expected = np.zeros(L, dtype=object)  # key colour by role; 0 = not checked (dropped, overlaps, padding)
    expected[:start] = expected[start + 64:L - n_pad] = viz.TEXT_COLOR
    slots, tgt = np.arange(64), layout.targets[1].numpy()
    expected[start + slots[layout.context[1].numpy()]] = viz.CONTEXT_COLOR
    for b in range(tgt.shape[0]):
        expected[start + slots[tgt[b] & (tgt.sum(0) == 1)]] = viz.TARGET_COLORS[b]
    checked = 0
    for key in np.nonzero(expected != 0)[0]:  # a loop over <= 81 keys: clarity over speed
        rows = allowed[:, key] & real
        assert np.allclose(color[rows, key], to_rgb(expected[key]), atol=3 / 255), \
            f"allowed cells of key {key} must have its role colour {expected[key]}"
        checked += rows.sum()
    assert checked > 1000, "the test must check many allowed cells"


def test_layout_on_non_square_grid_needs_grid_argument():
    layout = MaskLayout(torch.ones(1, 12, dtype=torch.bool), torch.zeros(1, 1, 12, dtype=torch.bool))
    with pytest.raises(ValueError, match="grid"):
        viz.draw_layout(layout)
    assert viz.draw_layout(layout, grid=(3, 4)).axes[0].get_xlim() == (0, 4), "grid=(H, W) must give W columns"


def test_draw_functions_reject_bad_arguments():
    layout = MaskSampler((8, 8), min_keep=4)(1, generator=torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match="sample"):
        viz.draw_layout(layout, sample=1)
    with pytest.raises(ValueError, match="bool"):
        viz.draw_attention_mask(torch.ones(5, 5))
    with pytest.raises(ValueError, match="image"):
        viz.draw_layout(layout, image=torch.rand(8, 8))


def test_attention_picture_without_layout_shows_causal_text():
    fig = viz.draw_attention_mask(torch.ones(6, 6, dtype=torch.bool).tril())
    labels = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert labels == ["text", "padding", "blocked"], f"without a layout only text roles exist, got {labels}"


def test_side_by_side_draws_one_titled_panel_per_layout():
    g = torch.Generator().manual_seed(0)
    layouts = {"faithful": MaskSampler((8, 8), min_keep=4)(2, generator=g),
               "clean": MaskSampler((8, 8), min_keep=4, faithful=False)(2, generator=g)}
    fig = viz.layout_side_by_side(layouts, sample=1)
    assert [ax.get_title() for ax in fig.axes] == ["faithful", "clean"], "one panel per layout, titled by its key"
