import copy
import doctest

import pytest
import torch
from torch import nn

import prunekit
from prunekit.errors import PruningError
from prunekit.structured import slimming as slimming_module
from prunekit.structured import slimming_penalty
from prunekit.structured.slimming import scale_share_below


def _net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                         nn.Conv2d(16, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4))


def test_docstring_examples_run():
    assert doctest.testmod(slimming_module).failed == 0


def test_penalty_is_strength_times_l1_of_the_scales_and_its_gradient_is_the_sign():
    net = _net()
    with torch.no_grad():
        net[1].weight.uniform_(-2, 2)
    pen = slimming_penalty(net, 1e-3)
    expected = 1e-3 * (net[1].weight.abs().sum() + net[4].weight.abs().sum())
    assert torch.allclose(pen(), expected)
    pen().backward()
    assert torch.allclose(net[1].weight.grad, 1e-3 * net[1].weight.sign())
    assert net[0].weight.grad is None  # only the scales are penalised


@pytest.mark.parametrize("strength", [-1.0, float("nan")])
def test_bad_strength_is_refused(strength):
    with pytest.raises(PruningError, match="strength"):
        slimming_penalty(_net(), strength)


def test_a_model_without_batchnorm_is_refused_with_the_fix():
    with pytest.raises(PruningError, match="criterion='l2'"):
        slimming_penalty(nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4)))
    assert len(slimming_penalty(nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4)), types=(nn.LayerNorm,)).scales) == 1


def test_training_with_the_penalty_switches_off_the_channels_the_loss_does_not_need():
    """The target needs one input channel's mean, so most of the 16 channels are spare: with the L1 term
    their scales fall below 1e-2, without it none do; bn_scale then removes exactly the smallest, and the
    cut costs the penalised model far less than the unpenalised one.

    Asserted as properties with margin, not as a near-equality of outputs: the trained values depend on
    the CPU's reduction order (measured here: share 0.54-0.79 for strengths 0.008-0.012 at 1 and 2 threads,
    post-cut MSE 0.004-0.009 against 0.039 without the penalty), and a cut channel's BatchNorm shift
    still feeds the next layer, so outputs move by a few hundredths even when its scale is ~0.
    """
    torch.manual_seed(0)
    x = torch.randn(256, 3, 6, 6)
    y = x[:, 0].mean((1, 2))[:, None].expand(-1, 4).contiguous()
    runs, cut_loss = {}, {}
    for strength in (0.0, 0.01):
        net = _net()
        pen = slimming_penalty(net, strength)
        opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
        for _ in range(300):
            opt.zero_grad()
            (nn.functional.mse_loss(net(x), y) + pen()).backward()
            opt.step()
        runs[strength] = net.eval()
    assert scale_share_below(runs[0.01], 1e-2) > 0.4 > 0.1 > scale_share_below(runs[0.0], 1e-2)
    gammas = runs[0.01][1].weight.detach().abs()
    keep = set(gammas.argsort(descending=True)[:8].tolist())
    kernels = runs[0.01][0].weight.detach()[sorted(keep)]
    for strength, net in runs.items():
        prunekit.prune(net, (x[:1],), ratio=0.5, criterion="bn_scale", scope="local")
        with torch.no_grad():
            cut_loss[strength] = float(nn.functional.mse_loss(net(x), y))
    assert runs[0.01][0].out_channels == 8 and torch.equal(runs[0.01][0].weight.detach(), kernels)
    assert cut_loss[0.01] < 0.5 * cut_loss[0.0]  # the channels it cut were (nearly) off already
    assert cut_loss[0.01] < 0.5 * float(y.var())


def test_fit_adds_the_regularizer_to_every_step():
    from prunekit.zoo import build
    from prunekit.zoo.finetune import finetune
    norms = []
    for strength in (0.0, 1e-2):
        torch.manual_seed(0)
        m = build("fmnist-resnet")
        before = copy.deepcopy(m)
        finetune(m, "fmnist-resnet", epochs=2, samples=256, batch=64, regularizer=slimming_penalty(m, strength))
        norms.append(sum(float(w.detach().abs().sum()) for _, w in slimming_penalty(m).scales))
        assert any(not torch.equal(a, b) for a, b in zip(m.state_dict().values(), before.state_dict().values(),
                                                         strict=True))
    assert norms[1] < norms[0] - 1.0
