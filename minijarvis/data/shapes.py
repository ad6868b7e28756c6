"""Offline synthetic scenes: coloured shapes on a ground plane, and their rendering.

Everything here runs on a laptop CPU in milliseconds, so minijarvis can train and evaluate without any
download. A scene is 2-5 shaded shapes (cube, sphere, cone, cylinder) standing on a ground plane seen
through a pinhole camera: farther objects sit higher in the image and are drawn smaller, and nearer
ones are painted last so they occlude farther ones.

Their captions, instructions and LLaVA records are `minijarvis.data.synthetic`; the vision-centric
benchmark built on the same renderer is `minijarvis.evaluation.shapesbench`.

Seeds: `scene_seed(split, index, seed)` maps every item to its own scene seed; the splits
("caption", "instruct", "bench") occupy disjoint integer ranges, so training and benchmark scenes
can never coincide.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
from PIL import Image, ImageDraw

KINDS = ("cube", "sphere", "cone", "cylinder")
COLORS = {"red": (215, 45, 40), "green": (40, 165, 60), "blue": (45, 85, 225),
          "yellow": (240, 205, 35), "purple": (140, 60, 190), "orange": (245, 130, 30)}
GROUNDS = {"grass": (100, 140, 75), "sand": (205, 185, 140), "floor": (145, 145, 150), "snow": (228, 232, 240)}
SPLITS = ("caption", "instruct", "bench")

# Camera and world, in units where the object size is 0.8 and image coordinates are fractions of the
# image side (u to the right, v down). A pinhole at height CAM_H looking horizontally:
# (X, Y, Z) -> (0.5 + FOCAL*X/Z, HORIZON + FOCAL*(CAM_H - Y)/Z).
FOCAL, HORIZON, CAM_H = 1.0, 0.36, 1.0
SIZE = 0.8  # every object is SIZE wide, deep and tall: projected size tells depth (up to a little per kind)
Z_NEAR, Z_FAR = 2.4, 10.0
MIN_GAP = 1.15  # ground distance between centres: > SIZE*sqrt(2), so footprints never intersect
LIGHT = tuple(float(c) / math.sqrt(0.5**2 + 0.75**2 + 0.45**2) for c in (-0.5, 0.75, -0.45))  # upper left, camera side
DEFAULT_IMAGE_SIZE = 224
VIS_GRID = 96  # raster for visibility checks; a far object still covers ~8x8 cells


@dataclass(frozen=True)
class SceneObject:
    """One shape. World: x lateral (+ right, camera at x=0), z depth along the view axis (metres-ish).
    Image: bbox = (left, top, right, bottom) as fractions of the image side; visible = fraction of the
    object's silhouette not covered by nearer objects' bboxes (a lower bound on the fraction one sees)."""
    kind: str
    color: str
    x: float
    z: float
    bbox: tuple[float, float, float, float]
    visible: float

    @property
    def name(self) -> str:
        return f"{self.color} {self.kind}"

    @property
    def center(self) -> tuple[float, float]:
        """Bounding-box centre (u, v) in image fractions; v grows downwards."""
        return ((self.bbox[0] + self.bbox[2]) / 2, (self.bbox[1] + self.bbox[3]) / 2)

    @property
    def depth(self) -> float:
        """Distance from the camera along the view axis (z of the object's centre)."""
        return self.z


@dataclass(frozen=True)
class Scene:
    """Objects (unique colour+kind names, so "the red cube" always refers to one object) and ground type."""
    objects: tuple[SceneObject, ...]
    ground: str


def scene_seed(split: str, index: int, seed: int = 0) -> int:
    """Integer seed of item `index` of `split` for user seed `seed`.

    The split sits in the top bits, so seeds of different splits are disjoint by construction (not
    merely unlikely to collide): split id << 60 | seed << 40 | index. numpy's default_rng hashes the
    integer through SeedSequence, so neighbouring seeds still give independent streams.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if not 0 <= index < 2**40 or not 0 <= seed < 2**20:
        raise ValueError(f"need 0 <= index < 2**40 and 0 <= seed < 2**20, got index={index}, seed={seed}")
    return (SPLITS.index(split) + 1) << 60 | seed << 40 | index


def _project(x, y, z) -> np.ndarray:
    """World points -> [..., 2] image fractions (u, v). z: an array of the points' shape; x, y: arrays or floats."""
    return np.stack([0.5 + FOCAL * x / z, HORIZON + FOCAL * (CAM_H - y) / z], -1)


def _shade(rgb, normal) -> tuple[int, int, int]:
    """Lambert shading with ambient light; normals need not be unit length. Plain floats."""
    nx, ny, nz = (float(c) for c in normal)
    k = 0.5 + 0.7 * max(0.0, (nx * LIGHT[0] + ny * LIGHT[1] + nz * LIGHT[2]) / math.sqrt(nx * nx + ny * ny + nz * nz))
    return tuple(min(255, int(c * k)) for c in rgb)


class _Layout(NamedTuple):
    """The pieces of one kind of object, the same wherever it stands: vertex i lies at world point
    (x + r*s[i], y[i], z - r*c[i]) for an object at (x, z), r = SIZE/2; pieces[k] = (prim, start, stop,
    normal), in painting order: "poly" (vertices start:stop) or "disc" (its box's two corners)."""
    s: np.ndarray
    c: np.ndarray
    y: np.ndarray
    pieces: tuple


def _layout(pieces) -> _Layout:
    """_Layout of pieces given as [(prim, [(s, y, c) of each vertex], normal)]."""
    s, y, c = (np.array(a, float) for a in zip(*(v for _, vs, _ in pieces for v in vs)))
    ends = np.cumsum([len(vs) for _, vs, _ in pieces]).tolist()
    return _Layout(s, c, y, tuple((prim, e - len(vs), e, n) for (prim, vs, n), e in zip(pieces, ends)))


def _layouts() -> dict[str, _Layout]:
    """Every kind's _Layout ("cube-left", "cube-right": a cube that shows that side face). Its sines and
    cosines are the very arrays the shapes were once drawn with, call for call (numpy's sin and cos may
    round differently on another array length, or on a scalar), so the vertices stay bit for bit the same."""
    r, h = SIZE / 2, SIZE
    top, front = [(-1, h, 1), (1, h, 1), (1, h, -1), (-1, h, -1)], [(-1, 0, 1), (1, 0, 1), (1, h, 1), (-1, h, 1)]
    cube = [("poly", top, (0, 1, 0)), ("poly", front, (0, 0, -1))]  # s = -1: its left side; c = 1: its front
    side = lambda s: ("poly", [(s, 0, 1), (s, h, 1), (s, h, -1), (s, 0, -1)], (s, 0, 0))  # noqa: E731
    th = np.linspace(-np.pi / 2, np.pi / 2, 13)  # only the front half of a cylinder's body faces the camera
    sin, cos = np.sin(th), np.cos(th)
    body = [("poly", [(sin[k], h, cos[k]), (sin[k + 1], h, cos[k + 1]), (sin[k + 1], 0, cos[k + 1]),
                      (sin[k], 0, cos[k])], (np.sin(mid), 0, -np.cos(mid)))
            for k, mid in enumerate((th[k] + th[k + 1]) / 2 for k in range(12))]
    lid = ("poly", list(zip(_SIN_CIRCLE, [h] * 25, _COS_CIRCLE)), (0, 1, 0))
    th = np.linspace(-np.pi, np.pi, 25)
    sin, cos, mids = np.sin(th), np.cos(th), (th[:-1] + th[1:]) / 2
    cone = [("poly", [(0, h, 0), (sin[k], 0, cos[k]), (sin[k + 1], 0, cos[k + 1])],
             (h * np.sin(mids[k]), r, -h * np.cos(mids[k])))
            for k in np.argsort(np.cos(mids))]  # back slivers first: painter's order on the convex surface
    sphere = [("disc", [(0, r, 0)] * 2, (-0.5 * t, t, -1.0)) for t in _SPHERE_T]  # at its centre: see _outline
    return {"cube": _layout(cube), "cube-left": _layout([side(-1)] + cube), "cube-right": _layout([side(1)] + cube),
            "sphere": _layout(sphere), "cylinder": _layout(body + [lid]), "cone": _layout(cone)}


_SPHERE_T = np.linspace(0, 0.85, 8)  # a sphere's discs: how far each drifts toward the light, and shrinks
_CIRCLE = np.linspace(0, 2 * np.pi, 25)  # a cylinder's lid, a shadow
_SIN_CIRCLE, _COS_CIRCLE = np.sin(_CIRCLE), np.cos(_CIRCLE)
_LAYOUTS = _layouts()
_DISC_T = _SPHERE_T.repeat(2)[:, None]  # per corner of the discs' boxes (see _outline)
_DISC_SIGN = np.array([[-1.0], [1.0]] * len(_SPHERE_T))  # a box: centre - radius, centre + radius


def _outline(kind: str, x: float, z: float) -> tuple[np.ndarray, str]:
    """(vertices, layout): the [N, 2] image fractions (u, v) of all of one object's pieces, piece after
    piece as _LAYOUTS[layout] says, projected in one go (each number by the same operations, in the same
    order, as when every piece was projected on its own)."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    r, layout = SIZE / 2, kind
    if kind == "cube":  # the camera (x = 0) sees a side face only when the cube is entirely to one side
        layout = "cube-left" if x - r > 0 else "cube-right" if x + r < 0 else "cube"
    s, c, y, _ = _LAYOUTS[layout]
    pts = _project(x + r * s, y, z - r * c)
    if kind == "sphere":  # shrinking discs drifting toward the light fake a smooth highlight
        rad = FOCAL * r / z
        pts = pts + _DISC_T * rad * np.array([-0.35, -0.4]) + _DISC_SIGN * (rad * (1 - _DISC_T))
    return pts, layout


@functools.lru_cache(maxsize=256)
def _colours(layout: str, rgb: tuple) -> tuple:
    """The shaded colour of each piece of a layout."""
    return tuple(_shade(rgb, normal) for *_, normal in _LAYOUTS[layout].pieces)


def _draw(draw: ImageDraw.ImageDraw, pts: np.ndarray, layout: str, scale: int, colours) -> None:
    """Fill an object's pieces (_outline's vertices, times `scale` pixels) in painting order."""
    flat = (pts * scale).ravel().tolist()  # u0, v0, u1, v1, ... in pixels, for all the pieces at once
    for (prim, a, b, _), colour in zip(_LAYOUTS[layout].pieces, colours):
        (draw.ellipse if prim == "disc" else draw.polygon)(flat[2 * a:2 * b], fill=colour)


def _footprint(kind: str, x: float, z: float, grid: int = VIS_GRID):
    """(bbox, silhouette): bbox (left, top, right, bottom) in image fractions; silhouette a [grid, grid]
    bool raster of the object drawn alone (True = covered by the object)."""
    pts, layout = _outline(kind, x, z)
    bbox = tuple(min(max(c, 0.0), 1.0) for c in pts.min(0).tolist() + pts.max(0).tolist())  # np.clip's numbers
    mask = Image.new("1", (grid, grid))
    _draw(ImageDraw.Draw(mask), pts, layout, grid, [1] * len(_LAYOUTS[layout].pieces))
    return bbox, np.asarray(mask)


def _cells(bbox, grid: int) -> tuple[slice, slice]:
    """The raster rows and columns a bbox (left, top, right, bottom) touches, on a [grid, grid] raster."""
    left, top, right, bottom = bbox
    return slice(int(top * grid), math.ceil(bottom * grid)), slice(int(left * grid), math.ceil(right * grid))


def _visible_fractions(bboxes: list, masks: list, zs: list, which=None) -> list[float]:
    """Fraction of each object's silhouette not under the bbox of any nearer object. Occluding with bboxes
    (which contain the shapes) makes this a lower bound on the fraction actually visible.
    ``which``: the indices of the objects to return (default: all of them)."""
    grid = masks[0].shape[0]
    cells = [_cells(b, grid) for b in bboxes]
    out = []
    for i in range(len(masks)) if which is None else which:
        mask, z = masks[i], zs[i]
        seen = mask.copy()
        for (rows, cols), zj in zip(cells, zs):
            if zj < z:
                seen[rows, cols] = False
        out.append(float(np.count_nonzero(seen) / max(np.count_nonzero(mask), 1)))
    return out


def _assign_attributes(rng: np.random.Generator, attrs) -> list[tuple[str, str]]:
    """Fill the None kinds/colours of [(kind|None, color|None)] at random, keeping colour+kind names unique."""
    used, out = set(), []
    for kind, color in attrs:
        options = [(k, c) for k in KINDS for c in COLORS
                   if (kind is None or k == kind) and (color is None or c == color) and (k, c) not in used]
        if not options:
            raise ValueError(f"cannot add a unique ({kind}, {color}) to a scene holding {sorted(used)}")
        pick = options[rng.integers(len(options))]
        used.add(pick)
        out.append(pick)
    return out


def sample_scene(rng=None, n_objects: int | None = None, attrs=None, min_visible: float = 0.5) -> Scene:
    """Draw a scene. rng: numpy Generator or int seed. attrs: optional [(kind|None, color|None)] per object
    (fixes n_objects); otherwise 2-5 random objects. Positions are uniform in image height (so depths
    spread evenly over the picture), fully in frame, footprints never intersect, and every object keeps
    at least `min_visible` of its silhouette clear of nearer objects' bboxes."""
    rng = np.random.default_rng(rng)
    if attrs is None:
        n = int(rng.integers(2, 6)) if n_objects is None else n_objects
        attrs = [(None, None)] * n
    if not 1 <= len(attrs) <= 8:
        raise ValueError(f"a scene holds 1 to 8 objects, got {len(attrs)}")
    pairs = _assign_attributes(rng, attrs)
    ground = list(GROUNDS)[rng.integers(len(GROUNDS))]
    v_far, v_near = HORIZON + FOCAL * CAM_H / Z_FAR, HORIZON + FOCAL * CAM_H / Z_NEAR
    for _ in range(100):  # objects are placed one at a time; restart when one finds no room
        xz, boxes, masks = [], [], []
        for kind, _ in pairs:
            for _ in range(100):
                z = FOCAL * CAM_H / (rng.uniform(v_far, v_near) - HORIZON)
                zf = z - SIZE / 2  # a cube's front face is the widest thing an object shows; keep it in frame
                half = FOCAL * SIZE / zf / 2 + 0.01
                x = (rng.uniform(half, 1 - half) - 0.5) * zf / FOCAL
                if any(math.hypot(x - a, z - b) < MIN_GAP for a, b in xz):
                    continue
                box, mask = _footprint(kind, x, z)
                zs = [b for _, b in xz] + [z]
                # Only its own fraction and those of the objects behind it can change (the others passed already).
                behind = [i for i, b in enumerate(zs) if b > z]
                if min(_visible_fractions(boxes + [box], masks + [mask], zs, behind + [len(xz)])) >= min_visible:
                    xz.append((x, z))
                    boxes.append(box)
                    masks.append(mask)
                    break
            else:
                break
        else:
            vis = _visible_fractions(boxes, masks, [z for _, z in xz])
            return Scene(tuple(SceneObject(k, c, float(x), float(z), b, v)
                               for (k, c), (x, z), b, v in zip(pairs, xz, boxes, vis)), ground)
    raise RuntimeError(f"could not place {len(pairs)} objects with min_visible={min_visible}; use fewer objects")


def make_scene(specs, ground: str = "floor") -> Scene:
    """Scene from hand-placed objects [(kind, color, x, z)]: computes bboxes and visible fractions.
    Does not check overlaps or framing (sample_scene does)."""
    if ground not in GROUNDS:
        raise ValueError(f"ground must be one of {tuple(GROUNDS)}, got {ground!r}")
    specs = [(k, c, float(x), float(z)) for k, c, x, z in specs]
    if any(c not in COLORS or z <= SIZE for _, c, _, z in specs):
        raise ValueError(f"colours must be in {tuple(COLORS)} and every z > {SIZE} (in front of the camera)")
    boxes, masks = zip(*(_footprint(k, x, z) for k, _, x, z in specs))
    vis = _visible_fractions(list(boxes), list(masks), [z for *_, z in specs])
    return Scene(tuple(SceneObject(*spec, b, v) for spec, b, v in zip(specs, boxes, vis)), ground)


def scene_from_seed(seed: int) -> Scene:
    """The default scene of an integer seed: sample_scene(np.random.default_rng(seed))."""
    return sample_scene(np.random.default_rng(seed))


@functools.lru_cache(maxsize=16)
def _background(ground: str, size: int) -> Image.Image:
    """Sky, ground and its perspective grid: the same for every scene on this ground at this size, so drawn
    once (render draws on a copy)."""
    v = (np.arange(size) + 0.5)[:, None] / size
    sky = np.array([95, 150, 225]) + (v / HORIZON) * np.array([105, 70, 15])
    near = np.clip((v - HORIZON) / (1 - HORIZON), 0, 1)
    haze = np.exp(-12 * near)  # the ground fades into the sky colour near the horizon
    ground = (np.array(GROUNDS[ground]) * (0.8 + 0.2 * near)) * (1 - haze) + np.array([200, 220, 240]) * haze
    rows = np.where(v < HORIZON, sky, ground).astype(np.uint8)
    img = Image.fromarray(np.repeat(rows[:, None, :], size, 1))
    draw = ImageDraw.Draw(img, "RGBA")  # RGBA mode blends translucent fills
    px = lambda uv: [tuple(p) for p in (uv * size).tolist()]  # noqa: E731
    for zl in (2.0, 3.0, 4.0, 5.5, 7.5, 10.0, 14.0, 20.0):
        draw.line(px(_project(np.array([-60.0, 60.0]), 0.0, np.full(2, zl))), fill=(0, 0, 0, 28))
    for xl in np.arange(-12, 13) * 1.5 + 0.75:
        draw.line(px(_project(xl, 0.0, np.array([1.0, 60.0]))), fill=(0, 0, 0, 28))
    return img


def render(scene: Scene, size: int = DEFAULT_IMAGE_SIZE) -> Image.Image:
    """Draw a scene as a size x size RGB image: sky, ground with a perspective grid, shadows, then the
    objects back to front (nearer objects occlude farther ones)."""
    if size < 16:
        raise ValueError(f"size must be >= 16 pixels, got {size}")
    img = _background(scene.ground, size).copy()
    draw = ImageDraw.Draw(img, "RGBA")  # RGBA mode blends translucent fills (shadows)
    for o in sorted(scene.objects, key=lambda o: -o.z):
        r = SIZE * 0.6  # a shadow: a ring on the ground, shifted away from the light
        shadow = _project(o.x + 0.25 + r * _SIN_CIRCLE, 0.0, o.z + 0.15 - r * _COS_CIRCLE)
        draw.polygon((shadow * size).ravel().tolist(), fill=(0, 0, 0, 60))
        pts, layout = _outline(o.kind, o.x, o.z)
        _draw(draw, pts, layout, size, _colours(layout, COLORS[o.color]))
    return img
