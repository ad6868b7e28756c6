import sys, torch, numpy as np
torch.set_num_threads(1)
from minijarvis.training.checkpoint import load_checkpoint
from minijarvis.evaluation.inference import score_options
from minijarvis.data.images import load_image
from minijarvis.data import shapes as S
from minijarvis.data.synthetic import SHORT_ANSWER
m = load_checkpoint(sys.argv[1]).eval()
size, mean = m.context_encoder.image_size, m.context_encoder.mean
res = {}
for nobj in (1, 2, 3, 5):
    hit = tot = 0
    for i in range(120):
        rng = np.random.default_rng([777, nobj, i])
        sc = S.sample_scene(rng, n_objects=nobj)
        o = sc.objects[int(rng.integers(nobj))]
        if abs(o.center[0] - 0.5) < 0.15: continue
        q = f"Is the {o.name} on the left or the right side of the image?" + SHORT_ANSWER
        img = load_image(S.render(sc), size, mean)[None]
        with torch.no_grad():
            s = score_options(m, img, [q], [["Left.", "Right."]])[0]
        hit += int(s.argmax()) == (0 if o.center[0] < 0.5 else 1); tot += 1
    res[nobj] = round(hit / tot, 3)
print("side accuracy by objects in scene", res)
