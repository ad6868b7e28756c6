"""Run by tests/test_visper.py under torchrun (2 gloo ranks): InfoNCE with negatives from
every rank. Each rank takes 3 of the 6 samples of :func:`data` and writes its loss and the
gradient of its predictions."""
import json

import torch

from minijarvis.losses import info_nce


def data():
    g = torch.Generator().manual_seed(0)
    return torch.randn(6, 4, 5, generator=g), torch.randn(6, 4, 5, generator=g), torch.tensor(2.0)


if __name__ == "__main__":
    import torch.distributed as dist
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    pred, target, s = data()
    mine = pred[rank * 3:(rank + 1) * 3].clone().requires_grad_(True)
    loss = info_nce(mine, target[rank * 3:(rank + 1) * 3], s)
    loss.backward()
    with open(f"nce{rank}.json", "w") as f:
        json.dump(dict(loss=loss.item(), grad=mine.grad.tolist()), f)
    dist.destroy_process_group()
