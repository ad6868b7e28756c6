"""CV-Bench's markers for ShapesBench (import to patch): the objects a Relation / Depth / Distance
question names are outlined by coloured boxes in the image, and the question says so, as CV-Bench
does ("the trees (annotated by the red box)", "the lamp (highlighted by a red box)"). The box
colours are outside the objects' palette: magenta (first object / the reference), cyan, black."""
import re
from PIL import ImageDraw
from minijarvis.evaluation import shapesbench as SB
from minijarvis.data import shapes as S

BOX = {"magenta": (255, 0, 255), "cyan": (0, 230, 255), "black": (10, 10, 10)}
_orig = SB.bench_item


def _names(item):
    q, c = item["question"], item["choices"]
    if item["task"] == "Relation":
        m = re.search(r"where is the (\w+ \w+) located with respect to the (\w+ \w+)\?", q)
        return [m.group(1), m.group(2)]
    if item["task"] == "Depth":
        return [c[0], c[1]]
    if item["task"] == "Distance":
        return [re.search(r"closer to the (\w+ \w+),", q).group(1), c[0], c[1]]
    return []


def boxed_item(task, index, seed=0, image_size=S.DEFAULT_IMAGE_SIZE, render_image=True, max_objects=None):
    item = _orig(task, index, seed, image_size, render_image, max_objects)
    names = _names(item)
    if not names:
        return item
    word = "annotated by the" if task == "Relation" else "highlighted by a"
    q = item["question"]
    for name, colour in zip(names, BOX):
        q = re.sub(rf"the {name}(?=[ ,?])", f"the {name} ({word} {colour} box)", q)
    item["question"] = q
    item["prompt"] = SB.format_prompt(q, item["choices"])
    if render_image:
        img = item["image"]; d = ImageDraw.Draw(img); W = img.size[0]
        objs = {o.name: o for o in item["scene"].objects}
        for name, colour in zip(names, BOX):
            u0, v0, u1, v1 = objs[name].bbox
            d.rectangle([u0 * W - 2, v0 * W - 2, u1 * W + 2, v1 * W + 2], outline=BOX[colour], width=max(2, W // 48))
    return item


SB.bench_item = boxed_item
