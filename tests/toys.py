"""Small pure-PyTorch residual branches for engine tests (shaped like a transformer MLP branch)."""
import torch
from torch import nn

from dr2net_mm.core import ReversibleSequence


class DropPath(nn.Module):
    """Stochastic depth: zero the whole branch of a sample with probability p."""

    def __init__(self, p: float):
        super().__init__()
        self.p = p

    def forward(self, x):
        if not self.training or self.p == 0:
            return x
        keep = x.new_empty((x.shape[0], ) + (1, ) * (x.dim() - 1)).bernoulli_(1 - self.p)
        return x * keep / (1 - self.p)


class MLPBranch(nn.Module):
    """F(x) = drop_path(fc2(dropout(gelu(fc1(norm(x))))) + scale · x.mean(-2)): shape-preserving."""

    def __init__(self, channels: int, dropout: float = 0.0, drop_path: float = 0.0):
        super().__init__()
        self.norm = nn.LayerNorm(channels)
        self.fc1 = nn.Linear(channels, 2 * channels)
        self.fc2 = nn.Linear(2 * channels, channels)
        self.dropout = nn.Dropout(dropout)
        self.drop_path = DropPath(drop_path)

    def forward(self, x, scale: float = 0.0):
        out = self.fc2(self.dropout(nn.functional.gelu(self.fc1(self.norm(x)))))
        if scale:
            out = out + scale * x.mean(-2, keepdim=True)
        return self.drop_path(out)


def make_stage(n: int = 12, channels: int = 32, seed: int = 0, dropout: float = 0.0,
               drop_path: float = 0.0, **kwargs) -> ReversibleSequence:
    torch.manual_seed(seed)
    branches = [MLPBranch(channels, dropout, drop_path) for _ in range(n)]
    return ReversibleSequence(branches, **kwargs).train()


def make_input(batch: int = 4, tokens: int = 50, channels: int = 32, seed: int = 1) -> torch.Tensor:
    return torch.randn(batch, tokens, channels, generator=torch.Generator().manual_seed(seed))
