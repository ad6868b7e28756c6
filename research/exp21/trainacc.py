import json, sys, torch
torch.set_num_threads(1)
from pathlib import Path
from minijarvis.training.checkpoint import load_checkpoint
from minijarvis.evaluation.inference import score_options
from minijarvis.data.images import load_image
ck, data, n = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3])
m = load_checkpoint(ck).eval()
recs = json.load(open(data / "study.json"))
by = {}
for r in recs:
    if not r["id"].startswith("vqa-"): continue
    t = r["id"].split("-")[1]; by.setdefault(t, []).append(r)
size = m.context_encoder.image_size
mean = m.context_encoder.mean
for t, rs in by.items():
    hit = 0
    for r in rs[:n]:
        q = r["conversations"][0]["value"].replace("<image>\n", "")
        lines = q.split("\n"); opts = [l[4:] for l in lines if l.startswith("(")]
        img = load_image(data / r["image"], size, mean)[None]
        with torch.no_grad():
            s = score_options(m, img, [q], [opts])[0]
        hit += opts[int(s.argmax())] == r["conversations"][1]["value"]
    print(t, hit / min(n, len(rs)))
