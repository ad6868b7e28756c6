"""Free-form lookups by name (round 9): "What color is the cube?" (the scene's only cube; the six
colours scored as answers) and "What shape is the red object?" (the only red one; four kinds), in the
built-in instructions' wording, 150 and about 180 random scenes.

    python research/exp21/colorquestion.py CHECKPOINT      # seconds
"""
import sys, numpy as np, torch
from PIL import Image
torch.set_num_threads(1)
from minijarvis.training.checkpoint import load_checkpoint
from minijarvis.evaluation.inference import score_options
from minijarvis.data.shapes import COLORS, KINDS, render, sample_scene
from minijarvis.data.synthetic import SHORT_ANSWER
model = load_checkpoint(sys.argv[1]).eval()
rng = np.random.default_rng(5)
hits = n = 0; hits_shape = n_shape = 0
with torch.no_grad():
    while n < 150:
        s = sample_scene(rng); o = s.objects[rng.integers(len(s.objects))]
        img = torch.from_numpy(np.array(render(s).resize((model.image_size,) * 2, Image.BICUBIC))).permute(2, 0, 1).float()[None] / 255
        if [p.kind for p in s.objects].count(o.kind) == 1:
            sc = score_options(model, img, [f"<image>\nWhat color is the {o.kind}?" + SHORT_ANSWER], [[c.capitalize() + "." for c in COLORS]])[0]
            hits += list(COLORS)[int(sc.argmax())] == o.color; n += 1
        if [p.color for p in s.objects].count(o.color) == 1:
            sc = score_options(model, img, [f"<image>\nWhat shape is the {o.color} object?" + SHORT_ANSWER], [[k.capitalize() + "." for k in KINDS]])[0]
            hits_shape += KINDS[int(sc.argmax())] == o.kind; n_shape += 1
print(f"{sys.argv[1]}: colour of the named kind {hits}/{n} = {hits/n:.3f} (chance 1/6); kind of the named colour {hits_shape}/{n_shape} = {hits_shape/n_shape:.3f} (chance 1/4)")
