import pytest
import torch


def _module_state(model: torch.nn.Module) -> list:
    """Classes and attribute names of every submodule: what an exact unpatch must restore."""
    return [(name, type(m), sorted(m.__dict__)) for name, m in model.named_modules()]


@pytest.fixture
def module_state():
    return _module_state


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
