import torch
from torch import nn

from prunekit import measure


def test_conv_and_linear_macs_match_formula():
    conv = nn.Conv2d(3, 16, kernel_size=3, padding=1)
    x = torch.randn(2, 3, 32, 32)
    assert measure.count_macs(conv, (x,)) == 2 * 16 * 32 * 32 * 3 * 3 * 3
    lin = nn.Linear(100, 7)
    assert measure.count_macs(lin, (torch.randn(5, 100),)) == 5 * 100 * 7
    grouped = nn.Conv2d(8, 8, 3, padding=1, groups=8)  # depthwise: one input channel per output
    assert measure.count_macs(grouped, (torch.randn(1, 8, 10, 10),)) == 8 * 10 * 10 * 9


def test_params_and_nonzero():
    lin = nn.Linear(10, 10)
    assert measure.count_params(lin) == 110
    with torch.no_grad():
        lin.weight[:5] = 0
    assert measure.count_nonzero_params(lin) == 110 - 50


def test_latency_and_profile_shape():
    m = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 4))
    x = torch.randn(8, 32)
    lat = measure.measure_latency(m, (x,), warmup=1, repeats=5, num_threads=1)
    assert lat["batch_size"] == 8 and lat["threads"] == 1 and lat["repeats"] == 5
    assert 0 < lat["latency_p10_ms"] <= lat["latency_ms"] <= lat["latency_p90_ms"]
    p = measure.profile(m, (x,), evaluate=lambda model: {"top1": 0.5}, repeats=3)
    for key in ("params", "macs", "latency_ms", "batch_size", "threads", "metric", "peak_memory_mb"):
        assert key in p
    assert p["macs"] == 8 * (32 * 64 + 64 * 4) and p["metric"] == {"top1": 0.5}


def test_peak_memory_counts_weights_and_activations():
    m = nn.Linear(1000, 1000, bias=False)
    x = torch.randn(256, 1000)
    mem = measure.peak_memory(m, (x,))
    assert abs(mem["weights_mb"] - 1000 * 1000 * 4 / 2**20) < 1e-3
    assert mem["activations_peak_mb"] >= 256 * 1000 * 4 / 2**20 - 1e-3  # the output alone


def test_dict_inputs_and_fidelity():
    class KW(nn.Module):
        def forward(self, a, b):
            return a + b
    assert measure.batch_size_of({"a": torch.ones(3, 2), "b": torch.ones(3, 2)}) == 3
    assert measure.run_model(KW(), {"a": torch.ones(1), "b": torch.ones(1)}).item() == 2
    e = torch.randn(20, 8)
    f = measure.embedding_fidelity(e + 0.01 * torch.randn(20, 8), e)
    assert f["fidelity"] > 0.99
    assert measure.embedding_fidelity(-e, e)["fidelity"] < -0.99


def test_compare_latency_interleaves_rounds():
    from prunekit.measure import compare_latency
    calls = []

    class Tagged(torch.nn.Module):
        def __init__(self, tag):
            super().__init__()
            self.tag = tag

        def forward(self, x):
            calls.append(self.tag)
            return x

    med = compare_latency({"a": Tagged("a"), "b": Tagged("b")}, torch.zeros(3, 2), rounds=3, warmup=1, repeats=2)
    assert set(med) == {"a", "b"} and all(v >= 0 for v in med.values())
    # every round runs a fully, then b fully: a a a b b b, three times (interleaved, never a then all of b)
    assert calls == (["a"] * 3 + ["b"] * 3) * 3


def test_count_macs_of_a_model_that_passes_a_parameter_view_to_a_block():
    """CaiT expands its cls_token under no_grad; torch's module tracker rejects that view, we count anyway."""
    import timm
    model = timm.create_model("cait_xxs24_224", img_size=32, patch_size=8, embed_dim=64, num_heads=4, depth=1,
                              num_classes=10).eval()
    assert measure.count_macs(model, (torch.randn(2, 3, 32, 32),)) > 0


def test_no_process_wide_state_is_left_changed(monkeypatch):
    """Counting MACs turns the MHA fast path off only while it counts; loading MiniLM sets no env var."""
    import os

    import torch

    from prunekit.measure import count_macs
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    mha = torch.nn.MultiheadAttention(8, 2, batch_first=True).eval()
    x = torch.randn(1, 4, 8)
    before = torch.backends.mha.get_fastpath_enabled()
    macs = count_macs(_Self(mha), (x,))
    assert torch.backends.mha.get_fastpath_enabled() == before
    assert macs >= 3 * 4 * 8 * 8 + 4 * 8 * 8  # the in- and out-projections at least: the fused path counts none
    from prunekit.zoo.minilm import _load_model
    _load_model()
    assert "HF_HUB_OFFLINE" not in os.environ


class _Self(__import__("torch").nn.Module):
    def __init__(self, mha):
        super().__init__()
        self.mha = mha

    def forward(self, x):
        return self.mha(x, x, x, need_weights=False)[0]


def test_counting_matches_torchs_flop_counter_on_convs_norms_and_attention():
    """The lean tally uses torch's formulas and dispatch rule: same count as FlopCounterMode (whose CPU
    attention is given the same SDPA formula), here over conv + batch norm, depthwise conv, MHA and SDPA."""
    import timm
    from torch.utils.flop_counter import FlopCounterMode
    torch.manual_seed(0)
    models = [(timm.create_model("efficientnet_b0", num_classes=10).eval(), torch.randn(1, 3, 64, 64)),
              (timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=8, num_classes=10).eval(),
               torch.randn(2, 3, 32, 32))]
    for model, x in models:
        ref = FlopCounterMode(display=False, custom_mapping=measure.CPU_ATTENTION_FLOPS)
        with torch.no_grad(), measure.no_mha_fastpath(), ref:
            model(x)
        assert measure.count_macs(model, (x,)) == ref.get_total_flops() // 2 > 0


def test_cpu_attention_is_counted():
    """F.scaled_dot_product_attention on the CPU: QK^T and AV, B*H*N*N*d MACs each."""
    class Attn(nn.Module):
        def forward(self, q):
            return torch.nn.functional.scaled_dot_product_attention(q, q, q)
    b, h, n, d = 2, 3, 16, 8
    assert measure.count_macs(Attn(), (torch.randn(b, h, n, d),)) == 2 * b * h * n * n * d
