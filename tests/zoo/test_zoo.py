"""Every shipped checkpoint loads, matches its manifest, and reaches its metric."""
import pytest
import torch

from prunekit.zoo import load, read_manifest
from prunekit.zoo.store import CHECKPOINT_DIR, sha256

TARGETS = {"fmnist-resnet": ("top1", 0.92), "fmnist-vit": ("top1", 0.87),
           "fmnist-vit-dynamic": ("top1", 0.8654),  # within 0.5 point of fmnist-vit's 0.8704 (the DynamicViT issue)
           "mosaic-segvit": ("miou", 0.65), "mosaic-det": ("map", 0.50), "motion-vivit": ("top1", 0.85),
           "motion-vivit-pan": ("top1", 0.80)}  # the video-merging issue's camera-motion workload
# Shipped checkpoints known to fall short of the target: strict xfail, so the mark must go once they pass.
SHORTFALLS = {
    "fmnist-vit-dynamic": "1 epoch of DynamicViT training on all 60,000 images with the paper's Gumbel decisions "
                          "(whole backbone at 1e-4, scorers at 1e-3, distilled from fmnist-vit), then 0.5 epoch with "
                          "Gumbel-top-k decisions, 96.8 CPU min in all: top1 0.852, 1.8 points below fmnist-vit "
                          "(ToMe at the same token counts loses 0.4); the paper's 30 epochs need a GPU",
    "mosaic-segvit": "the CPU route (encoder distilled on textured items, 28 px crops at 49 tokens, 3 epochs on "
                     "whole mosaics at 196 tokens: mIoU 0.462 in 107.4 CPU min), 17.35 epochs on 96,000 mosaics on "
                     "a lent H200 (0.607), then a pixel-refinement head trained 8 CPU min with the encoder frozen: "
                     "mIoU 0.625 < 0.65; the encoder memorised its 96,000 mosaics (0.689 on them, 0.610 on fresh "
                     "training mosaics, 0.596 on test), so GPU epochs on many more mosaics are the next step",
    "mosaic-det": "its encoder from mosaic-segvit's, then 3 epochs on 32,000 mosaics in 60.7 CPU min: mAP 0.3905 "
                  "< 0.50 and mAP@.5 0.667 < 0.80 (at step 600 of 1500 it was 0.32 on 500 mosaics, so more epochs "
                  "would help; the detection issue asks for a GPU run)",
}
OUT_SHAPE = {"fmnist-resnet": (8, 10), "fmnist-vit": (8, 10), "mosaic-segvit": (8, 11, 56, 56),
             "mosaic-det": (8, 14, 28, 28), "motion-vivit": (8, 10), "motion-vivit-pan": (8, 10),
             "fmnist-vit-dynamic": (8, 10)}


def _entry(name):
    entry = read_manifest().get(name)
    if entry is None:
        pytest.skip(f"no shipped checkpoint for {name} yet (train it: prunekit zoo train {name})")
    return entry


@pytest.mark.parametrize("name", list(TARGETS))
def test_manifest_records_how_it_was_made(name):
    entry = _entry(name)
    key, target = TARGETS[name]
    assert entry["sha256"] == sha256(CHECKPOINT_DIR / entry["file"])
    assert entry["bytes"] <= 8 * 2**20
    for field in ("seed", "command", "route", "train_minutes"):
        assert field in entry
    if name in SHORTFALLS:
        if entry["metric"][key] >= target:
            pytest.fail(f"{name} now meets its target: remove it from SHORTFALLS")
        pytest.xfail(SHORTFALLS[name])
    assert entry["metric"][key] >= target, f"{name}: recorded {entry['metric']} below {target}"


@pytest.mark.parametrize("name", list(TARGETS))
def test_checkpoint_reaches_metric_on_fixed_subset(name):
    entry = _entry(name)
    key, target = TARGETS[name]
    wl = load(name)
    assert not wl.model.training
    with torch.no_grad():
        out = wl.model(*wl.example_inputs)
    assert tuple(out.shape) == OUT_SHAPE[name] and torch.isfinite(out).all()
    got = wl.evaluate(wl.model, limit=500)[key]
    if "metric_subset" in entry:  # evaluation is deterministic: the same number as at training time
        assert got == pytest.approx(entry["metric_subset"][key], abs=1e-3)
    if name not in SHORTFALLS:
        assert got >= target - 0.03  # a 500-sample subset is noisier than the full split


def test_vits_see_196_patch_tokens():
    from prunekit.zoo import build
    for name in ("fmnist-vit", "mosaic-segvit", "motion-vivit"):
        m = build(name)
        enc = getattr(m, "encoder", m)
        assert enc.patch_embed.num_patches == 196
        assert len(enc.blocks) >= 8
    assert len(build("fmnist-vit").blocks) == 12


def test_the_zoo_dynamic_vit_runs_the_gathered_path_of_fmnist_vit():
    """fmnist-vit-dynamic is fmnist-vit's architecture plus scorers; in eval mode blocks 3-11 really see
    fewer tokens (0.7, 0.49, 0.343 of 196), so its MACs are those of the smaller blocks."""
    from prunekit.measure import count_macs
    from prunekit.tokens import DynamicViT
    from prunekit.zoo import build
    m = build("fmnist-vit-dynamic").eval()
    assert isinstance(m, DynamicViT) and m.stages == (3, 6, 9) and m.keep == 0.7
    assert m.token_counts() == [196] * 3 + [137] * 3 + [96] * 3 + [67] * 3
    dense = build("fmnist-vit").eval()
    x = torch.randn(2, 1, 28, 28)
    assert count_macs(m, (x,)) < 0.7 * count_macs(dense, (x,))
    _entry("fmnist-vit-dynamic")
    wl = load("fmnist-vit-dynamic")
    assert isinstance(wl.model, DynamicViT) and not wl.model.training
    for field in ("seed", "command", "route"):
        assert field in wl.info
    assert "keep 0.7" in wl.info["route"]


def test_unknown_name_is_a_clear_error():
    with pytest.raises(KeyError, match="unknown zoo model"):
        load("resnet-9000")


def test_minilm_matches_sentence_transformers():
    from sentence_transformers import SentenceTransformer

    from prunekit.zoo.minilm import embed, eval_sentences, model_path
    wl = load("minilm")
    sentences = eval_sentences(8)
    ours = embed(wl.model, sentences)
    ref = SentenceTransformer(model_path(), device="cpu").encode(sentences, convert_to_tensor=True,
                                                                 normalize_embeddings=True)
    assert torch.allclose(ours, ref, atol=1e-4)
    assert wl.evaluate(wl.model, limit=32) == {"fidelity": 1.0, "retrieval_top1": 1.0}
