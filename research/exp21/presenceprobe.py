"""Is the presence of a kind or a colour linearly readable from a checkpoint's image slots? (round 9)

1,500 random scenes; the hidden states of the visual slots at LLM layers 0 (the projected image
tokens), 2 and 4; a multi-label logistic probe (1,000 scenes to fit, 500 to score) on their mean,
their max and the flattened slots, against "is there a <kind>" (4) and "is there a <colour> object"
(6). Prints held-out accuracy with the majority-answer baseline.

    python research/exp21/presenceprobe.py CHECKPOINT      # a minute or two
"""
import sys, numpy as np, torch
from PIL import Image
torch.set_num_threads(1)
from minijarvis.training.checkpoint import load_checkpoint
from minijarvis.probes.core import collect_hidden_states
from minijarvis.data.shapes import COLORS, KINDS, render, sample_scene
from minijarvis.data.text import encode_reply
ck = sys.argv[1]
model = load_checkpoint(ck).eval()
rng = np.random.default_rng(11)
N = 1500
scenes = [sample_scene(rng) for _ in range(N)]
imgs = torch.stack([torch.from_numpy(np.asarray(render(s).resize((model.image_size,) * 2, Image.BICUBIC))).permute(2, 0, 1).float() / 255 for s in scenes])
attrs = list(KINDS) + list(COLORS)
Y = torch.tensor([[float(any(o.kind == a or o.color == a for o in s.objects)) for a in attrs] for s in scenes])
ids, _ = encode_reply(model.tokenizer, "Describe the image.", "x")
H, vis = collect_hidden_states(model, imgs, ids, [0, 2, 4], 64)
for li, layer in enumerate([0, 2, 4]):
    v = H[:, li, vis].float()
    for pool in ("mean", "max", "flat"):
        X = v.mean(1) if pool == "mean" else v.max(1).values if pool == "max" else v.flatten(1)
        X = (X - X[:1000].mean(0)) / (X[:1000].std(0) + 1e-5)
        W = torch.zeros(X.shape[1], len(attrs), requires_grad=True); b = torch.zeros(len(attrs), requires_grad=True)
        opt = torch.optim.Adam([W, b], lr=1e-2)
        for _ in range(400):
            loss = torch.nn.functional.binary_cross_entropy_with_logits(X[:1000] @ W + b, Y[:1000]) + 1e-3 * W.pow(2).sum()
            opt.zero_grad(); loss.backward(); opt.step()
        acc = ((X[1000:] @ W + b > 0).float() == Y[1000:]).float().mean(0)
        base = torch.maximum(Y[1000:].mean(0), 1 - Y[1000:].mean(0))
        print(f"layer {layer} {pool:5s} kinds {acc[:4].mean():.3f} (base {base[:4].mean():.3f})  colours {acc[4:].mean():.3f} (base {base[4:].mean():.3f})", flush=True)
