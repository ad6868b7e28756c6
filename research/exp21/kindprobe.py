import torch, sys
torch.set_num_threads(1)
from minijarvis.config import ENCODERS, TOY_CAPTION_ENCODER, TOY_EXPERT
from minijarvis.encoders import VisionEncoder
from minijarvis.toyworld.world import scene_tensors, PHRASES
d = scene_tensors(600, seed=0, offset=1 << 31)
share, phrase = d["share"], d["phrase"]  # [N,5,P], [N,5]
best, idx = share.max(1)  # [N,P]
lab = torch.gather(phrase, 1, idx)  # phrase idx per patch
keep = best >= 0.5
kind = lab % 4; color = lab // 4
def probe(f, y, keep):
    x = f[keep].double(); y = y[keep]
    n = len(x) * 2 // 3
    mu = x[:n].mean(0); xa = x - mu
    Y = torch.nn.functional.one_hot(y, int(y.max()) + 1).double()
    w = torch.linalg.solve(xa[:n].T @ xa[:n] + 1.0 * torch.eye(x.shape[1], dtype=x.dtype), xa[:n].T @ Y[:n])
    return float(((xa[n:] @ w).argmax(1) == y[n:]).float().mean())
for label, key, file, layer, norm in (("F_ctx", "tiny-clip", TOY_CAPTION_ENCODER, -2, False), ("expert", "tiny-dinov2", TOY_EXPERT, -1, True),
                                      ("random ctx", "tiny-clip", "", -2, False)):
    name, kw = ENCODERS[key]
    enc = VisionEncoder(name, weights=str(file), layer=layer, norm=norm, **kw)
    with torch.no_grad(): f = enc(d["images"])
    print(label, "kind", round(probe(f, kind, keep), 3), "colour", round(probe(f, color, keep), 3), "patches", int(keep.sum()))
maj = torch.bincount(kind[keep]).max() / keep.sum()
print("majority kind", float(maj))
