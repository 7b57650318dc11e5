"""Run under torchrun by test_distributed.py: prune, fine-tune with pruning callbacks, dump each rank's state."""
import sys

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import prunekit
from prunekit.train import GradualPruning, IterativeCuts, distributed, fit


def main(out: str) -> None:
    torch.set_num_threads(1)
    distributed.setup()
    rank, size = distributed.world()
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                        nn.Conv2d(16, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 4))
    g = torch.Generator().manual_seed(1)
    x = torch.randn(256, 1, 8, 8, generator=g)
    y = (x.mean((1, 2, 3)) * 4).clamp(-1.9, 1.9).add(2).long()
    prunekit.prune(net, (x[:1],), ratio=0.25)  # a physical cut before training, on every rank
    if rank == 1:  # a rank that starts from other weights must still end in step (DDP broadcasts rank 0's)
        with torch.no_grad():
            net[0].weight.add_(1.0)
    loader = DataLoader(TensorDataset(x, y), batch_size=16, shuffle=True, drop_last=True)
    gradual = GradualPruning(0.6, start=0.0, end=0.5, every=2)
    cuts = IterativeCuts(0.5, rounds=2)
    res = fit(net, loader, epochs=2, lr=1e-2, callbacks=[gradual, cuts], progress=False)
    state = {k: v.clone() for k, v in net.state_dict().items()}
    masks = {n: m.weight_mask.clone() for n, m in net.named_modules() if hasattr(m, "weight_mask")}
    torch.save({"state": state, "masks": masks, "history": gradual.pruner.history, "steps": res.steps,
                "world": res.world_size, "images": res.images, "shapes": [tuple(p.shape) for p in net.parameters()],
                "cuts": cuts.done}, f"{out}/rank{rank}.pt")
    distributed.shutdown()


if __name__ == "__main__":
    main(sys.argv[1])
