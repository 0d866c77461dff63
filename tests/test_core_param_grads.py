"""dr2net_mm.core.param_grads: recomputed branches whose linear layers add their gradients into
``.grad`` (no weight-sized transient) behave like ordinary autograd for any branch code."""
import pytest
import torch
from torch import nn

from dr2net_mm.core import ReversibleSequence


class InPlaceBranch(nn.Module):
    """fc2(relu_(fc1(x))) then scaled in place: in-place ops on the outputs of linear layers."""

    def __init__(self, channels: int):
        super().__init__()
        self.fc1 = nn.Linear(channels, 2 * channels)
        self.act = nn.ReLU(inplace=True)
        self.fc2 = nn.Linear(2 * channels, channels)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x))).mul_(0.5)


@pytest.mark.parametrize('shape', [(2, 5, 16), (7, 16)], ids=['tokens', 'rows'])
def test_in_place_ops_on_linear_outputs_give_the_reference_gradients(shape):
    torch.manual_seed(0)
    stage = ReversibleSequence([InPlaceBranch(16) for _ in range(4)], alpha=0.5, beta=0.5)
    x = torch.randn(*shape, dtype=torch.float64)
    stage.double()
    grads = {}
    for reversible in (False, True):
        stage.reversible = reversible
        stage.zero_grad(set_to_none=True)
        xr = x.clone().requires_grad_(True)
        stage(xr).square().sum().backward()
        grads[reversible] = [xr.grad] + [p.grad for p in stage.parameters()]
    for ref, got in zip(grads[False], grads[True]):
        assert torch.allclose(got, ref, rtol=1e-10, atol=1e-12)
    assert stage.reconstruction_error() == 0.0
