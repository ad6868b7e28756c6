import torch
torch.set_num_threads(1)
from minijarvis.config import preset
from minijarvis.encoders import build_context_encoder
from minijarvis.toyworld.world import scene_tensors
cfg = preset("tiny")
enc = build_context_encoder(cfg)
d = scene_tensors(64, seed=0, offset=1 << 31)
f = enc(d["images"])  # [N,36,D]
N, P, D = f.shape
col = torch.arange(P) % 6
x = f.reshape(-1, D); y = col.repeat(N).float()
n = x.shape[0] // 2
mu = x[:n].mean(0); a = x[:n] - mu
w = torch.linalg.solve(a.T @ a + 1e-3 * torch.eye(D), a.T @ (y[:n] - y[:n].mean()))
pred = (x[n:] - mu) @ w + y[:n].mean()
print("column R2", 1 - ((pred - y[n:])**2).sum() / ((y[n:] - y[n:].mean())**2).sum())
print("feature norm", f.norm(dim=-1).mean(), "std over positions of mean feature", f.mean(0).std(0).mean(), "std over images", f.std(0).mean())
