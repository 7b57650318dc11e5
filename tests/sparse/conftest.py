import pytest
import torch
from torch import nn


class TinyCNN(nn.Module):
    """Conv + Linear model with a get_classifier() like timm's."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(4, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 16, 3, padding=1)
        self.fc1 = nn.Linear(16, 32)
        self.head = nn.Linear(32, 5)

    def get_classifier(self):
        return self.head

    def forward(self, x):
        x = torch.relu(self.conv1(x))
        x = torch.relu(self.conv2(x)).mean((2, 3))
        return self.head(torch.relu(self.fc1(x)))


@pytest.fixture
def cnn():
    torch.manual_seed(0)
    return TinyCNN().eval()


@pytest.fixture
def mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(32, 64), nn.GELU(), nn.Linear(64, 48), nn.GELU(), nn.Linear(48, 3)).eval()


def snapshot(model: nn.Module) -> dict:
    """Everything a failed call must leave as it was: tensors, hooks, module types."""
    return {"state": {k: v.clone() for k, v in model.state_dict(keep_vars=False).items()},
            "buffers": sorted(n for n, _ in model.named_buffers()),
            "hooks": [(n, len(m._forward_pre_hooks), len(m._forward_hooks)) for n, m in model.named_modules()],
            "types": [type(m).__name__ for m in model.modules()]}


def same(a: dict, b: dict) -> bool:
    return (a["state"].keys() == b["state"].keys()
            and all(torch.equal(a["state"][k], b["state"][k]) for k in a["state"])
            and a["buffers"] == b["buffers"] and a["hooks"] == b["hooks"] and a["types"] == b["types"])


@pytest.fixture
def unchanged():
    """``check = unchanged(model)`` ... ``assert check()``: the model is exactly as it was."""
    def take(model):
        before = snapshot(model)
        return lambda: same(before, snapshot(model))
    return take
