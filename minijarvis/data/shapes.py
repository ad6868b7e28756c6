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


def _project(p: np.ndarray) -> np.ndarray:
    """[..., 3] world points (x, y, z) -> [..., 2] image fractions (u, v)."""
    return np.stack([0.5 + FOCAL * p[..., 0] / p[..., 2], HORIZON + FOCAL * (CAM_H - p[..., 1]) / p[..., 2]], -1)


def _shade(rgb, normal) -> tuple[int, int, int]:
    """Lambert shading with ambient light; normals need not be unit length. Plain floats: called ~50x per object."""
    nx, ny, nz = (float(c) for c in normal)
    k = 0.5 + 0.7 * max(0.0, (nx * LIGHT[0] + ny * LIGHT[1] + nz * LIGHT[2]) / math.sqrt(nx * nx + ny * ny + nz * nz))
    return tuple(min(255, int(c * k)) for c in rgb)


def _ring(x: float, y: float, z: float, r: float, theta: np.ndarray) -> np.ndarray:
    """World points on a horizontal circle; theta = 0 is the point nearest the camera."""
    return np.stack([x + r * np.sin(theta), np.full_like(theta, y), z - r * np.cos(theta)], -1)


def _primitives(kind: str, rgb, x: float, z: float) -> list[tuple[str, np.ndarray, tuple]]:
    """Shaded 2D pieces of one object, in painting order: ("poly", [N,2] u,v) or ("disc", [2,2] box).
    ``rgb=None``: the shapes alone, colour None (a footprint needs no shading)."""
    r, h = SIZE / 2, SIZE
    out = []
    shade = (lambda normal: None) if rgb is None else functools.partial(_shade, rgb)  # noqa: E731
    if kind == "cube":
        x0, x1, zf, zb = x - r, x + r, z - r, z + r
        box = lambda pts: _project(np.array(pts, float))  # noqa: E731
        if x0 > 0:  # the camera (x = 0) sees a side face only when the cube is entirely to one side
            out.append(("poly", box([(x0, 0, zf), (x0, h, zf), (x0, h, zb), (x0, 0, zb)]), shade((-1, 0, 0))))
        if x1 < 0:
            out.append(("poly", box([(x1, 0, zf), (x1, h, zf), (x1, h, zb), (x1, 0, zb)]), shade((1, 0, 0))))
        out.append(("poly", box([(x0, h, zf), (x1, h, zf), (x1, h, zb), (x0, h, zb)]), shade((0, 1, 0))))
        out.append(("poly", box([(x0, 0, zf), (x1, 0, zf), (x1, h, zf), (x0, h, zf)]), shade((0, 0, -1))))
    elif kind == "sphere":
        c, rad = _project(np.array([x, r, z])), FOCAL * r / z
        for t in np.linspace(0, 0.85, 8):  # shrinking discs drifting toward the light fake a smooth highlight
            ctr = c + t * rad * np.array([-0.35, -0.4])
            out.append(("disc", np.array([ctr - rad * (1 - t), ctr + rad * (1 - t)]),
                        shade((-0.5 * t, t, -1.0))))
    elif kind == "cylinder":
        th = np.linspace(-np.pi / 2, np.pi / 2, 13)  # only the front half of the body faces the camera
        top, bot = _project(_ring(x, h, z, r, th)), _project(_ring(x, 0, z, r, th))
        for k in range(len(th) - 1):
            mid = (th[k] + th[k + 1]) / 2
            out.append(("poly", np.array([top[k], top[k + 1], bot[k + 1], bot[k]]),
                        shade((np.sin(mid), 0, -np.cos(mid)))))
        out.append(("poly", _project(_ring(x, h, z, r, np.linspace(0, 2 * np.pi, 25))), shade((0, 1, 0))))
    elif kind == "cone":
        th = np.linspace(-np.pi, np.pi, 25)
        apex, base = _project(np.array([x, h, z])), _project(_ring(x, 0, z, r, th))
        mids = (th[:-1] + th[1:]) / 2
        for k in np.argsort(np.cos(mids)):  # back slivers first: painter's order on the convex surface
            out.append(("poly", np.array([apex, base[k], base[k + 1]]),
                        shade((h * np.sin(mids[k]), r, -h * np.cos(mids[k])))))
    else:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    return out


def _footprint(kind: str, x: float, z: float, grid: int = VIS_GRID):
    """(bbox, silhouette): bbox (left, top, right, bottom) in image fractions; silhouette a [grid, grid]
    bool raster of the object drawn alone (True = covered by the object)."""
    prims = _primitives(kind, None, x, z)
    pts = np.concatenate([p.reshape(-1, 2) for _, p, _ in prims])
    lo, hi = np.clip(pts.min(0), 0, 1), np.clip(pts.max(0), 0, 1)
    mask = Image.new("1", (grid, grid))
    draw = ImageDraw.Draw(mask)
    for prim, p, _ in prims:
        (draw.ellipse if prim == "disc" else draw.polygon)([tuple(q) for q in (p * grid).tolist()], fill=1)
    return (float(lo[0]), float(lo[1]), float(hi[0]), float(hi[1])), np.asarray(mask)


def _visible_fractions(bboxes: list, masks: list, zs: list) -> list[float]:
    """Fraction of each object's silhouette not under the bbox of any nearer object. Occluding with bboxes
    (which contain the shapes) makes this a lower bound on the fraction actually visible."""
    grid = masks[0].shape[0]
    out = []
    for i, mask in enumerate(masks):
        covered = np.zeros_like(mask)
        for j, (left, top, right, bottom) in enumerate(bboxes):
            if zs[j] < zs[i]:
                covered[int(top * grid):math.ceil(bottom * grid), int(left * grid):math.ceil(right * grid)] = True
        out.append(float((mask & ~covered).sum() / max(mask.sum(), 1)))
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
                if min(_visible_fractions(boxes + [box], masks + [mask], [b for _, b in xz] + [z])) >= min_visible:
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


def render(scene: Scene, size: int = DEFAULT_IMAGE_SIZE) -> Image.Image:
    """Draw a scene as a size x size RGB image: sky, ground with a perspective grid, shadows, then the
    objects back to front (nearer objects occlude farther ones)."""
    if size < 16:
        raise ValueError(f"size must be >= 16 pixels, got {size}")
    v = (np.arange(size) + 0.5)[:, None] / size
    sky = np.array([95, 150, 225]) + (v / HORIZON) * np.array([105, 70, 15])
    near = np.clip((v - HORIZON) / (1 - HORIZON), 0, 1)
    haze = np.exp(-12 * near)  # the ground fades into the sky colour near the horizon
    ground = (np.array(GROUNDS[scene.ground]) * (0.8 + 0.2 * near)) * (1 - haze) + np.array([200, 220, 240]) * haze
    rows = np.where(v < HORIZON, sky, ground).astype(np.uint8)
    img = Image.fromarray(np.repeat(rows[:, None, :], size, 1))
    draw = ImageDraw.Draw(img, "RGBA")  # RGBA mode blends translucent fills (grid, shadows)
    px = lambda pts: [tuple(p) for p in (np.asarray(pts) * size).tolist()]  # noqa: E731
    for zl in (2.0, 3.0, 4.0, 5.5, 7.5, 10.0, 14.0, 20.0):
        draw.line(px(_project(np.array([[-60.0, 0, zl], [60.0, 0, zl]]))), fill=(0, 0, 0, 28))
    for xl in np.arange(-12, 13) * 1.5 + 0.75:
        draw.line(px(_project(np.array([[xl, 0, 1.0], [xl, 0, 60.0]]))), fill=(0, 0, 0, 28))
    for o in sorted(scene.objects, key=lambda o: -o.z):
        shadow = _ring(o.x + 0.25, 0.0, o.z + 0.15, SIZE * 0.6, np.linspace(0, 2 * np.pi, 25))
        draw.polygon(px(_project(shadow)), fill=(0, 0, 0, 60))
        for prim, pts, rgb in _primitives(o.kind, COLORS[o.color], o.x, o.z):
            if prim == "disc":
                draw.ellipse(px(pts), fill=rgb)
            else:
                draw.polygon(px(pts), fill=rgb)
    return img
