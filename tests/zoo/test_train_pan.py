"""motion-vivit-pan's recipe: motion-vivit continued on camera-motion clips, resumable."""
import pytest
import torch

from prunekit.zoo import read_manifest
from prunekit.zoo.entries import entry


@pytest.fixture(autouse=True)
def _runs(tmp_path, monkeypatch):
    monkeypatch.setenv("PRUNEKIT_TRAIN_DIR", str(tmp_path / "runs"))
    if "motion-vivit" not in read_manifest():
        pytest.skip("no motion-vivit checkpoint shipped")


def test_the_pan_workload_evaluates_on_camera_motion_clips():
    from prunekit.data import load_motion
    x, y = entry("motion-vivit-pan").eval_data(limit=3)
    still, labels = entry("motion-vivit").eval_data(limit=3)
    assert x.shape == still.shape == (3, 1, 8, 56, 56) and torch.equal(y, labels)   # the same garments ...
    assert not torch.equal(x, still)                                                # ... under camera motion
    assert torch.equal(x, load_motion("test", n=3, camera=True)[0])


def test_the_recipe_starts_from_motion_vivit_trains_and_resumes(tmp_path):
    from prunekit.zoo.store import load_state
    from prunekit.zoo.train_pan import recipe_vivit_pan
    model, route = recipe_vivit_pan(0, True, epochs=0.25)   # 2 steps of 64 camera-motion clips
    start = read_manifest()["motion-vivit"]["sha256"][:12]
    assert route.startswith(f"the shipped motion-vivit (sha256 {start}; first 256 camera-motion test clips: top1 0.")
    assert "0.25 epochs on 512 camera-motion training clips" in route
    shipped = load_state("motion-vivit")
    assert not torch.equal(model.head.weight, shipped["head.weight"])   # it trained, from the shipped weights
    folder = next((tmp_path / "runs").iterdir())
    assert folder.name.endswith(f"-{start}-quick") and any(folder.iterdir())
    again, _ = recipe_vivit_pan(0, True, epochs=0.25)   # the finished run's checkpoint: resumed, not retrained
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values(),
                                                  strict=True))
