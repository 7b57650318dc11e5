"""DynamicViT learned token pruning: masked attention, training vs inference paths, counts, save/load."""
import doctest
import math

import pytest
import torch
from timm.models.vision_transformer import VisionTransformer

import prunekit
import prunekit.tokens.dynamic as dynamic_module
import prunekit.tokens.dynamic_train as dynamic_train_module
from prunekit.errors import PruningError
from prunekit.measure import count_macs
from prunekit.tokens.dynamic import DynamicViT, masked_attention
from prunekit.tokens.dynamic_train import dynamic_loss
from prunekit.train import fit_dynamic

KW = dict(img_size=32, patch_size=4, embed_dim=32, depth=4, num_heads=2, num_classes=10)  # 64 patches
X = torch.randn(3, 3, 32, 32)


def test_docstring_examples_run():
    assert doctest.testmod(dynamic_module).failed == 0
    assert doctest.testmod(dynamic_train_module).failed == 0


def test_masked_attention_equals_attention_over_the_kept_keys():
    q, k, v = torch.randn(3, 2, 2, 6, 8, dtype=torch.float64).unbind(0)
    keep = torch.tensor([[1., 0., 1., 1., 0., 1.], [1., 1., 1., 1., 1., 0.]], dtype=torch.float64)
    got = masked_attention(q, k, v, keep, 8 ** -0.5, eps=0.0)
    for b in range(2):
        for i in range(6):   # query i sees the kept keys and itself
            cols = [j for j in range(6) if keep[b, j] or j == i]
            a = ((q[b, :, i:i + 1] @ k[b, :, cols].transpose(-1, -2)) * 8 ** -0.5).softmax(-1)
            want = (a @ v[b, :, cols]).transpose(0, 1).reshape(-1)
            assert torch.allclose(got[b, i], want)


@torch.no_grad()
def test_keep_one_is_the_dense_model_in_both_paths():
    vit = VisionTransformer(**KW).eval()
    want = vit(X)
    dyn = DynamicViT(vit, stages=(1, 3), keep=1.0).eval()
    assert (dyn(X) - want).abs().max() <= 1e-5
    dyn.train()
    for s in dyn.scorers:   # scorers that always say keep: the training path is the dense model too
        s.out[-1].bias.copy_(torch.tensor([50.0, -50.0]))
    vit.eval()  # no dropout anywhere; the wrapper's train() only switches the path
    dyn.vit.eval()
    assert (dyn(X) - want).abs().max() <= 1e-5


@torch.no_grad()
def test_inference_keeps_the_scheduled_tokens_and_cuts_macs():
    vit = VisionTransformer(**KW).eval()
    dyn = DynamicViT(vit, stages=(1, 2), keep=0.5).eval()
    assert dyn.token_counts() == [64, 32, 16, 16]
    logits, tokens, kept = dyn.forward_with_masks(X)
    assert logits.shape == (3, 10) and tokens.shape == (3, 17, 32)
    assert [k.shape for k in kept] == [(3, 32), (3, 16)]
    assert all(set(kept[1][b].tolist()) <= set(kept[0][b].tolist()) for b in range(3))
    assert count_macs(dyn, (X[:1],)) < 0.6 * count_macs(vit, (X[:1],))   # blocks: 65, 33, 17, 17 tokens


class Certain(torch.nn.Module):
    """A scorer with fixed keep logits: +-scores."""

    def __init__(self, scores):
        super().__init__()
        self.scores = scores

    def forward(self, t, mask=None):
        return torch.stack([self.scores, -self.scores], -1).expand(t.shape[0], -1, -1)


@pytest.mark.parametrize("sampling", DynamicViT.SAMPLINGS)
def test_training_and_inference_paths_agree_on_what_is_kept(sampling):
    """With confident scorers the Gumbel sample (or the Gumbel-top-k draw) is the top-k choice: both
    paths keep the same tokens and give the same logits."""
    torch.manual_seed(0)
    vit = VisionTransformer(**KW).eval()
    dyn = DynamicViT(vit, stages=(2,), keep=0.5, sampling=sampling)
    with torch.no_grad():   # keep exactly the patches whose first embedding feature is largest
        scorer = dyn.scorers[0]
        scorer.out[-1].weight.zero_()
        scorer.out[-1].bias.zero_()
    x = X[:1]
    dyn.eval()
    want_logits, _, kept = dyn.forward_with_masks(x)
    dyn.train()
    dyn.vit.eval()
    scores = torch.full((1, 64), -100.0)
    scores[0, kept[0][0]] = 100.0           # the kept tokens, now with certain keep logits
    dyn.scorers[0] = Certain(scores)
    logits, _, masks = dyn.forward_with_masks(x)
    assert masks[0].sum() == 32 and torch.equal(masks[0][0].nonzero()[:, 0], kept[0][0])
    assert (logits - want_logits).abs().max() <= 1e-4


def test_topk_sampling_keeps_exactly_the_inference_counts_and_trains_the_scorers():
    torch.manual_seed(0)
    dyn = DynamicViT(VisionTransformer(**KW), stages=(1, 2, 3), keep=0.6, sampling="topk").train()
    loss, parts = dynamic_loss(dyn, X, torch.tensor([0, 1, 2]), VisionTransformer(**KW).eval())
    _, _, masks = dyn.forward_with_masks(X)
    counts = dyn.token_counts()                                  # [64, 38, 23, 14]
    for stage, (m, prev) in enumerate(zip(masks, [torch.ones(3, 64)] + masks[:-1], strict=True)):
        assert set(m.detach().unique().tolist()) <= {0.0, 1.0}
        assert m.sum(1).tolist() == [float(counts[dyn.stages[stage]])] * 3    # exactly what inference keeps
        assert bool((m.detach() <= prev.detach()).all())         # a dropped token never comes back
    assert parts["kept"] == pytest.approx(counts[-1] / 64)
    loss.backward()
    grads = [p.grad for p in dyn.scorers.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads) and any(g.abs().sum() > 0 for g in grads)


def test_topk_sampling_draws_without_replacement_by_the_scores():
    """Gumbel-top-k: a token is drawn first with probability softmax(score); a clearly higher score
    is kept far more often, yet every still-kept token can be drawn."""
    torch.manual_seed(0)
    score = torch.tensor([[2.0, 0.0, 0.0, -50.0]]).expand(4000, -1)
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0]]).expand(4000, -1)
    hard = dynamic_module.sample_topk(score, mask, 1)
    share = hard.mean(0)
    p = torch.tensor([2.0, 0.0, 0.0]).softmax(0)                 # 0.787, 0.107, 0.107
    assert share[3] == 0 and torch.allclose(share[:3], p, atol=0.03)  # 3 sigma of a 4000-draw share: 0.02


def test_loss_parts_and_gradients_reach_the_scorers():
    vit = VisionTransformer(**KW)
    dyn = DynamicViT(vit, stages=(1, 2), keep=0.7).train()
    teacher = VisionTransformer(**KW).eval()
    loss, parts = dynamic_loss(dyn, X, torch.tensor([0, 1, 2]), teacher)
    loss.backward()
    assert set(parts) == {"loss", "ce", "kl", "tokens", "ratio", "kept", "kept1", "kept2"} and parts["ratio"] >= 0
    assert parts["kept2"] == parts["kept"] <= parts["kept1"]  # the share after the last stage, and each stage's
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in dyn.scorers.parameters())


def test_fit_learns_the_keep_ratio_and_leaves_eval_mode():
    torch.manual_seed(0)
    dyn = DynamicViT(VisionTransformer(**KW), stages=(1,), keep=0.3)
    batches = [(torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,))) for _ in range(4)]
    hist = fit_dynamic(dyn, batches, epochs=8, lr=3e-3, progress=False)
    assert not dyn.training
    assert abs(hist[-1]["kept"] - 0.3) < abs(hist[0]["kept"] - 0.3) or abs(hist[-1]["kept"] - 0.3) < 0.05


def test_save_load_round_trip(tmp_path):
    dyn = DynamicViT(VisionTransformer(**KW), stages=(1, 2), keep=0.6, sampling="topk").eval()
    path = tmp_path / "dyn.safetensors"
    prunekit.save(dyn, path)
    back = prunekit.load(path).eval()
    assert isinstance(back, DynamicViT) and back.stages == (1, 2) and back.keep == 0.6 and back.sampling == "topk"
    with torch.no_grad():
        assert torch.equal(back(X), dyn(X))


@pytest.mark.parametrize("kwargs,match", [
    (dict(stages=(0, 2)), "increasing block indices in 1..3"),
    (dict(stages=(2, 2)), "increasing"),
    (dict(stages=(4,)), "1..3"),
    (dict(stages=(1,), keep=0.0), "keep=0.0"),
    (dict(stages=(1,), sampling="bernoulli"), "sampling='bernoulli': choose one of gumbel, topk"),
])
def test_bad_settings_are_refused(kwargs, match):
    with pytest.raises(PruningError, match=match):
        DynamicViT(VisionTransformer(**KW), **kwargs)


def test_models_without_a_class_token_head_are_refused():
    with pytest.raises(PruningError, match="class-token head"):
        DynamicViT(VisionTransformer(**KW, global_pool="avg"))
    with pytest.raises(PruningError, match="not a timm VisionTransformer"):
        DynamicViT(torch.nn.Linear(2, 2))


def test_fresh_scorers_start_near_the_share_to_keep():
    torch.manual_seed(0)
    dyn = DynamicViT(VisionTransformer(**KW), stages=(1, 2, 3), keep=0.7).train()
    with torch.no_grad():
        _, _, masks = dyn.forward_with_masks(torch.randn(16, 3, 32, 32))
    for m, target in zip(masks, dyn.keep_targets(), strict=True):
        assert abs(float(m.mean()) - target) < 0.08


def test_fit_restores_the_callers_requires_grad():
    vit = VisionTransformer(**KW)
    vit.patch_embed.requires_grad_(False)
    dyn = DynamicViT(vit, stages=(1,), keep=0.5)
    fit_dynamic(dyn, [(torch.randn(4, 3, 32, 32), torch.randint(0, 10, (4,)))], backbone_lr=0.0, progress=False)
    assert not any(p.requires_grad for p in vit.patch_embed.parameters())
    assert all(p.requires_grad for p in vit.blocks.parameters())
    before = vit.patch_embed.proj.weight.clone()
    fit_dynamic(dyn, [(torch.randn(4, 3, 32, 32), torch.randint(0, 10, (4,)))], backbone_lr=1e-3, progress=False)
    assert torch.equal(vit.patch_embed.proj.weight, before)   # frozen by the caller: not trained


def test_low_keep_rates_train_for_hundreds_of_steps_without_nan():
    """Users of other implementations report the loss going NaN at low keep rates (a masked softmax
    over a row with nothing kept). keep 0.3 at three stages leaves 0.027 of the tokens (2 of 64)."""
    torch.manual_seed(0)
    vit = VisionTransformer(img_size=32, patch_size=4, embed_dim=32, depth=4, num_heads=2, num_classes=10)
    dyn = DynamicViT(vit, stages=(1, 2, 3), keep=0.3)
    g = torch.Generator().manual_seed(0)
    batches = [(torch.randn(8, 3, 32, 32, generator=g), torch.randint(0, 10, (8,), generator=g)) for _ in range(20)]
    hist = fit_dynamic(dyn, batches, epochs=15, lr=3e-3, backbone_lr=1e-3, progress=False, clip_grad=None)
    assert len(hist) == 300
    assert all(math.isfinite(h["loss"]) for h in hist), next(h for h in hist if not math.isfinite(h["loss"]))
    assert all(torch.isfinite(p).all() for p in dyn.parameters())
    assert dyn.token_counts()[-1] == 2 and torch.isfinite(dyn(torch.randn(2, 3, 32, 32))).all()
