"""Two gloo processes under torchrun: pruning decisions and weights must stay bit-identical on both ranks."""
import os
import subprocess
import sys
from pathlib import Path

import torch

WORKER = Path(__file__).with_name("ddp_worker.py")


def _torchrun(tmp_path, nproc: int) -> list[dict]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           str(WORKER), str(tmp_path)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(nproc)]


def test_two_gloo_ranks_prune_and_train_in_step(tmp_path):
    a, b = _torchrun(tmp_path, 2)
    assert a["world"] == b["world"] == 2
    # 256 samples / 2 ranks / batch 16 = 8 steps an epoch, 2 epochs; images counted over both ranks
    assert a["steps"] == b["steps"] == 16 and a["images"] == 16 * 16 * 2
    assert a["cuts"] == b["cuts"] == 2 and a["shapes"] == b["shapes"]
    assert a["shapes"][0][0] < 12  # the two cuts removed channels beyond the first 25%
    assert a["history"] == b["history"] and a["history"][-1][1] > 0.59  # the schedule in step, and reached
    assert a["masks"].keys() == b["masks"].keys() and a["masks"]
    for name in a["masks"]:
        assert torch.equal(a["masks"][name], b["masks"][name])
    for name in a["state"]:
        assert torch.equal(a["state"][name], b["state"][name]), name



def test_torchrun_prunekit_finetune_trains_in_ddp(tmp_path):
    """The CLI under torchrun: 2 gloo ranks split the ImageFolder, rank 0 alone prints and saves."""
    import json

    from PIL import Image

    import prunekit
    for c in range(2):
        (tmp_path / "imgs" / f"c{c}").mkdir(parents=True)
        for i in range(32):
            px = torch.full((12, 12, 3), 200 if c else 30, dtype=torch.uint8)
            Image.fromarray(px.numpy()).save(tmp_path / "imgs" / f"c{c}" / f"{i}.png")
    out = tmp_path / "ddp.safetensors"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "prunekit",
           "finetune", "timm:resnet18", "--data", f"imagefolder:{tmp_path / 'imgs'}", "--epochs", "2", "--batch", "8",
           "--img-size", "16", "--out", str(out), "--json"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [json.loads(x) for x in proc.stdout.splitlines() if x.startswith("{")]
    assert len(lines) == 1  # rank 0 prints, once
    doc = lines[0]
    # 64 images / 2 ranks / batch 8 = 4 steps an epoch on each rank
    assert doc["world_size"] == 2 and doc["steps"] == 8 and doc["epochs"] == 2.0
    assert prunekit.load(out)(torch.randn(1, 3, 16, 16)).shape == (1, 2)
