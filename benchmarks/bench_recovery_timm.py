"""Recovery of a user's model: timm resnet18 on an ImageFolder of Fashion-MNIST PNGs, pruned to 50% MACs.

What a user types, run as subprocesses of ``python -m prunekit`` (the commands are recorded):

1. write ``--train`` training and ``--val`` test images of Fashion-MNIST as PNG files in two
   ImageFolder trees (:func:`prunekit.data.fashion_mnist.write_image_folder`);
2. ``prunekit finetune timm:resnet18 --data imagefolder:train --val imagefolder:val --epochs E1``
   (random init: no model hub here; the 1000-class head is replaced by a 10-class one);
3. ``prunekit prune dense.safetensors --target-macs 0.5 --finetune-epochs E2 --data ... --distill``
   (the dense model as teacher), and the same without ``--distill``, and with no fine-tune at all;
4. the control: ``prunekit finetune dense.safetensors --epochs E2`` (dense, trained as long again),
   since a dense model trained for E1 epochs only may itself gain from E2 more.

Top-1 on the ``--val`` images; ``--img-size`` px inputs (a CPU budget). Resumable: a step whose
output file exists is not run again. Threads: ``--threads``.

    python benchmarks/bench_recovery_timm.py [--train 8000] [--val 2000] [--epochs 5] [--recover-epochs 2]
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import write_result  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / ".cache" / "recovery_timm"


def prunekit(args: list[str], out: Path, threads: int) -> dict:
    """Run ``python -m prunekit ARGS --json`` once (cached in ``out``.json); its JSON and the command."""
    record = CACHE / out.with_suffix(".json")
    cmd = ["prunekit", "--threads", str(threads), *args, "--json"]
    if record.exists():
        return json.loads(record.read_text())
    t = time.time()
    proc = subprocess.run([sys.executable, "-m", *cmd], capture_output=True, text=True, cwd=CACHE)
    if proc.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    doc = {"result": json.loads(proc.stdout.strip().splitlines()[-1]), "command": " ".join(cmd),
           "wall_s": round(time.time() - t, 1)}
    record.write_text(json.dumps(doc, indent=2))
    return doc


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--train", type=int, default=8000, help="training images (the first N of the train split)")
    ap.add_argument("--val", type=int, default=2000, help="validation images (the first N of the test split)")
    ap.add_argument("--epochs", type=float, default=5, help="dense training epochs")
    ap.add_argument("--recover-epochs", type=float, default=2, help="fine-tune epochs after the cut")
    ap.add_argument("--img-size", type=int, default=32)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--target-macs", type=float, default=0.5)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    from prunekit.data.fashion_mnist import write_image_folder
    tag = f"t{args.train}-v{args.val}-e{args.epochs:g}-r{args.recover_epochs:g}-s{args.img_size}-b{args.batch}"
    (CACHE / tag).mkdir(parents=True, exist_ok=True)
    work = Path(tag)  # the commands run in CACHE, so they read as a user's would
    for split, n, name in (("train", args.train, "train"), ("test", args.val, "val")):
        if not (CACHE / work / name / ".done").exists():
            write_image_folder(CACHE / work / name, split, n)
            (CACHE / work / name / ".done").write_text("ok")
    data = ["--data", f"imagefolder:{work / 'train'}", "--val", f"imagefolder:{work / 'val'}", "--img-size",
            str(args.img_size), "--batch", str(args.batch), "--crop-scale", "0.5"]
    dense_file = work / "dense.safetensors"
    dense = prunekit(["finetune", "timm:resnet18", "--epochs", f"{args.epochs:g}", *data, "--out", str(dense_file)],
                     dense_file, args.threads)
    more = work / "dense-more.safetensors"  # the control: the dense model trained as long again
    control = prunekit(["finetune", str(dense_file), "--epochs", f"{args.recover_epochs:g}", *data, "--out",
                        str(more)], more, args.threads)
    arms = {}
    for arm, extra in (("cut only", []),
                       ("fine-tune", ["--finetune-epochs", f"{args.recover_epochs:g}", *data]),
                       ("fine-tune + distillation", ["--finetune-epochs", f"{args.recover_epochs:g}", *data,
                                                     "--distill"])):
        out = work / f"pruned-{arm.replace(' ', '').replace('+', '-')}.safetensors"
        if not extra:  # measured on the validation images too
            extra = ["--data", f"imagefolder:{work / 'train'}", "--val", f"imagefolder:{work / 'val'}",
                     "--img-size", str(args.img_size)]
        arms[arm] = prunekit(["prune", str(dense_file), "--target-macs", f"{args.target_macs:g}", *extra,
                              "--repeats", "5", "--out", str(out)], out, args.threads)
    d = dense["result"]
    rows = [["timm resnet18, dense", f"{args.epochs:g} epochs from random init", d["top1"], 1.0, "-",
             round(d["seconds"], 1)]]
    c = control["result"]
    rows.append(["timm resnet18, dense", f"+ {args.recover_epochs:g} more epochs (control)", c["top1"], 1.0, "-",
                 round(c["seconds"], 1)])
    gaps = {"dense + more epochs (control)": round(100 * (c["top1"] - d["top1"]), 2)}
    for arm, doc in arms.items():
        r = doc["result"]
        top1 = r["metric"]["top1"]
        gaps[arm] = round(100 * (top1 - d["top1"]), 2)
        ft = r["prune"].get("finetune", {})
        rows.append([f"pruned to {args.target_macs:.0%} MACs (l2, global)",
                     arm if arm == "cut only" else f"{arm}, {args.recover_epochs:g} epochs", top1,
                     r["ratios"]["macs"], r["ratios"]["speedup"], ft.get("seconds", "-")])
    write_result("recovery_timm", "Recovery of a user's model: timm resnet18 on Fashion-MNIST PNGs (ImageFolder), "
                 f"pruned to {args.target_macs:.0%} of its MACs",
                 ["model", "training", "top1", "MACs ratio", "latency speed-up (batch 1)", "train seconds"], rows,
                 notes=(f"{args.train} training / {args.val} validation PNGs (Fashion-MNIST train / test splits), "
                        f"{args.img_size} px, batch {args.batch}, timm preprocessing (random resized crop >= 50% "
                        "area, flip, colour jitter), AdamW lr 1e-3 warm-up + cosine, one process. Points vs dense: "
                        f"{json.dumps(gaps)} (the goal: within 1 point of dense; against the control trained as long, "
                        "compare the rows). The speed-up column is prunekit prune's batch-1 latency ratio, taken "
                        "while other jobs shared the 2 cores: indicative only (the MACs ratio is exact). Commands: "
                        + " ; ".join([dense["command"], control["command"]] + [a["command"] for a in arms.values()])),
                 setup={"train_images": args.train, "val_images": args.val, "epochs": args.epochs,
                        "recover_epochs": args.recover_epochs, "img_size": args.img_size, "batch": args.batch,
                        "threads": args.threads},
                 raw={"dense": dense, "control": control, "arms": arms, "points_vs_dense": gaps})


if __name__ == "__main__":
    main()
