"""sparsify's result: what it covered and what it left alone."""
import pytest


def test_weights_no_target_covers_are_reported_not_hidden():
    """An LSTM's matrices are not Linear/Conv targets: the result names them and the coverage says how little
    of the model was sparsified, instead of a bare 0.5."""
    import torch
    from torch import nn

    import prunekit

    class Rec(nn.Module):
        def __init__(self):
            super().__init__()
            self.lstm, self.mid, self.fc = nn.LSTM(16, 32, batch_first=True), nn.Linear(32, 32), nn.Linear(32, 3)

        def forward(self, x):
            return self.fc(self.mid(self.lstm(x)[0][:, -1]))
    res = prunekit.sparsify(Rec(), 0.5)
    assert res.total == 0.5 and set(res.untouched) == {"lstm.weight_ih_l0", "lstm.weight_hh_l0"}
    assert res.coverage == pytest.approx(32 * 32 / (32 * 32 + 4 * 32 * 16 + 4 * 32 * 32))
    from prunekit.measure import count_macs
    macs = count_macs(Rec(), (torch.randn(2, 7, 16),))
    assert macs == 2 * 7 * 4 * 32 * (16 + 32) + 2 * (32 * 32 + 32 * 3)  # the recurrent MACs are counted
