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
