"""Exact streams without host syncs: the range check deferred to the backward (or the next
forward), and what a training step costs in host synchronisations."""
import contextlib
import math

import pytest
import torch
from torch import nn
from torch.autograd.graph import saved_tensors_hooks
from torch.utils._python_dispatch import TorchDispatchMode

from dr2net_mm.core import ReversibleSequence, reversible_stages
from dr2net_mm.core.exact_streams import BetaBuffer, ExactStreams, _layout
from toys import MLPBranch, make_input

RANGE_ERROR = (r"reached \|x\| = .*outside the exact fixed-point streams' range \|x\| < 2\^21"
               r".*stream_dtype='float64'")


class _ScalarReads(TorchDispatchMode):
    """Counts the ATen ops that read a tensor's value on the host (``item``, ``float()``, ``bool()``,
    ``torch.equal``, data-dependent shapes)."""
    SYNCING = {'_local_scalar_dense', 'is_nonzero', 'equal', 'nonzero', 'masked_select',
               'item'}

    def __init__(self):
        super().__init__()
        self.ops = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        if name in self.SYNCING:
            self.ops.append(name)
        return func(*args, **(kwargs or {}))


@contextlib.contextmanager
def host_syncs():
    """Yields the list of host synchronisations made inside the block: the syncing ATen ops, plus
    ``Tensor.tolist``/``numpy``/``cpu`` calls (which read memory without an ATen op on the CPU)."""
    mode, patched = _ScalarReads(), {}
    for name in ('tolist', 'numpy', 'cpu'):
        original = getattr(torch.Tensor, name)
        patched[name] = original

        def counting(self, *args, _original=original, _name=name, **kwargs):
            mode.ops.append(_name)
            return _original(self, *args, **kwargs)
        setattr(torch.Tensor, name, counting)
    try:
        with mode:
            yield mode.ops
    finally:
        for name, original in patched.items():
            setattr(torch.Tensor, name, original)


class ThreeStages(nn.Module):
    """Three exact-stream stages of different widths: one segment of 3; two segments of 2 with
    three outputs; one segment of 2 whose output is kept against the float32 output."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.stages = nn.ModuleList([
            ReversibleSequence([MLPBranch(16) for _ in range(3)]),
            ReversibleSequence([MLPBranch(24) for _ in range(4)], segment_size=2),
            ReversibleSequence([MLPBranch(32) for _ in range(2)], beta=0.7)])
        self.projections = nn.ModuleList([nn.Linear(16, 24), nn.Linear(24, 32)])

    def forward(self, x):
        x = self.stages[0](x)
        outs = self.stages[1](self.projections[0](x), out_positions=(2, 3, 4))
        return self.stages[2](self.projections[1](outs[-1])) + outs[0].mean()


def train_step(model, optimizer, x):
    optimizer.zero_grad()
    model(x.requires_grad_(True)).pow(2).mean().backward()
    optimizer.step()


def test_a_training_step_syncs_with_the_host_once_not_once_per_stage():
    """After the first step (which checks each stage eagerly, as a stage's first forward does), a
    whole training step (forward, backward, optimizer step) reads the device once: the first
    backward node reads every stage's range check at once. At most one per stage per step."""
    model = ThreeStages().train()
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)
    x = make_input(channels=16)
    with host_syncs() as first:
        train_step(model, optimizer, x)
    assert len(first) >= 3  # the eager checks of each stage's first forward
    for _ in range(2):
        with host_syncs() as syncs:
            train_step(model, optimizer, x)
        assert len(syncs) <= len(reversible_stages(model)), syncs
        assert syncs == ['tolist'], syncs  # one read of all the range checks
    errors = torch.cat([stage.reconstruction_errors for stage in reversible_stages(model)])
    assert errors.tolist() == [0.0] * 4  # still bit-exact (segments: 1 + 2 + 1)


def clean_step(stage, scale=1.0, seed=1):
    out = stage(make_input(seed=seed).mul_(scale).requires_grad_(True))
    out.pow(2).mean().backward()
    return out


def test_an_overflow_in_steady_state_raises_at_the_backward_before_any_gradient_is_used():
    """Past its first clean forward a stage does not read its range check in the forward: the
    forward returns zeros (finite), and the backward raises the same error as an eager check, at
    the stage's first backward node, before any of the stage's gradients exist."""
    torch.manual_seed(0)
    stage = ReversibleSequence([MLPBranch(32) for _ in range(4)], beta=0.5).train()
    clean_step(stage)
    stage.zero_grad(set_to_none=True)
    with host_syncs() as syncs:
        out = stage(make_input().mul_(3e6).requires_grad_(True))  # |x| >= 2^21
    assert syncs == [] and torch.equal(out, torch.zeros_like(out))
    with pytest.raises(OverflowError, match=RANGE_ERROR):
        out.sum().backward()
    assert all(p.grad is None for p in stage.parameters())
    clean_step(stage)  # the stage still works afterwards, bit-exact
    assert stage.reconstruction_error() == 0.0


def test_an_overflow_without_a_backward_raises_at_the_stage_next_forward():
    torch.manual_seed(0)
    stage = ReversibleSequence([MLPBranch(32) for _ in range(2)]).train()
    clean_step(stage)
    stage(make_input().mul_(3e6).requires_grad_(True))  # no backward follows
    with pytest.raises(OverflowError, match=RANGE_ERROR):
        stage(make_input().requires_grad_(True))
    clean_step(stage)
    assert stage.reconstruction_error() == 0.0


def test_a_recording_stage_keeps_a_deferred_overflow_for_its_caller():
    """``record_overflow`` (what ``ReversibleGuardHook`` sets): reading ``stage.overflow`` reads the
    pending check, and keeps the error there; a backward of that forward would still raise."""
    torch.manual_seed(0)
    stage = ReversibleSequence([MLPBranch(32) for _ in range(3)], beta=0.5).train()
    clean_step(stage)
    stage.record_overflow = True
    out = stage(make_input().mul_(3e6).requires_grad_(True))
    assert torch.equal(out, torch.zeros_like(out))
    with host_syncs() as syncs:
        error = stage.overflow
    assert syncs == ['tolist'] and isinstance(error, OverflowError)
    assert 'reached |x| = ' in str(error) and stage.overflow is error
    with pytest.raises(OverflowError, match=RANGE_ERROR):
        out.sum().backward()
    stage.overflow = None
    clean_step(stage)
    assert stage.overflow is None and stage.reconstruction_error() == 0.0


def test_a_non_finite_forward_in_steady_state_gives_nan_outputs_and_monitor_not_an_error():
    torch.manual_seed(0)
    stage = ReversibleSequence([MLPBranch(32) for _ in range(3)]).train()
    clean_step(stage)
    x = make_input()
    x[0, 0, 0] = float('nan')
    out = stage(x.requires_grad_(True))
    assert torch.isnan(out).all()
    out.sum().backward()  # no error: the step is skipped like any non-finite step
    assert math.isnan(stage.reconstruction_error())
    clean_step(stage)
    assert stage.reconstruction_error() == 0.0


def test_a_kept_stream_too_large_for_its_remainder_raises_once_then_is_kept_in_full():
    """x_n is kept as an int32 remainder against the float32 output while |x_n| < 2^16; a stage
    that saw small outputs keeps it so; a step whose output jumps past 2^16 cannot be rebuilt and
    says so at its backward; from then on the stage keeps x_n in full, and rebuilds it exactly."""
    torch.manual_seed(0)
    stage = ReversibleSequence([MLPBranch(32) for _ in range(3)]).train()
    clean_step(stage)
    clean_step(stage)  # steady state, x_n kept as an int32 remainder
    with pytest.raises(OverflowError, match=r'a stream it keeps for backward reached \|x\| = .*'
                                            r'4-byte remainder .*\|x\| < 65536.*run the step again'):
        clean_step(stage, scale=1e5)
    out = clean_step(stage, scale=1e5)
    assert out.abs().max() > 2**16 and stage.reconstruction_error() == 0.0


def kept_step(stage, scale):
    """One training step of ``stage``: the dtypes of the integer stream tensors its forward saved
    (x_n's kept form, then y_n), and its output's largest magnitude."""
    x = make_input().mul_(scale).requires_grad_(True)
    dtypes = []

    def pack(tensor):
        if tensor.shape == x.shape and not tensor.is_floating_point():
            dtypes.append(tensor.dtype)
        return tensor
    with saved_tensors_hooks(pack, lambda tensor: tensor):
        out = stage(x)
    out.pow(2).mean().backward()
    assert stage.reconstruction_error() == 0.0
    return dtypes, out.abs().max().item()


def test_a_stage_keeps_its_output_as_an_int32_remainder_up_to_2_16_then_with_a_4x_margin():
    """x_n against the float32 output costs 4 bytes wherever the remainder fits, |x_n| < 2^16: on
    a stage's first forward (checked eagerly), and later when the previous step saw |x_n| < 2^14
    (a quarter of it, the margin against growth between steps); 8 bytes otherwise."""
    narrow, full = [torch.int32, torch.int64], [torch.int64, torch.int64]
    torch.manual_seed(0)
    stage = ReversibleSequence([MLPBranch(32) for _ in range(3)]).train()
    dtypes, peak = kept_step(stage, 1e4)
    assert 2**15 < peak < 2**16 and dtypes == narrow
    dtypes, peak = kept_step(stage, 2500)
    assert 2**13 < peak < 2**14 and dtypes == full  # the previous step was above 2^14
    assert kept_step(stage, 2500)[0] == narrow


def test_a_kept_output_below_2_16_is_rebuilt_from_its_int32_remainder_at_exact_ties_too():
    """Below 2^16 neighbouring float32 values are at most 2^32 grid units apart, so X is within
    2^31 of its output: all of int32 and one value more, a tie that rounding to even took down.
    That output takes the float above instead, so ties there round up, and X is rebuilt exactly."""
    ties = [2**55 + 2**31, 2**55 + 3 * 2**31, -2**55 - 2**31, -2**55 - 3 * 2**31, -2**56 + 2**31]
    top = 2**56 - 2**12
    gen = torch.Generator().manual_seed(0)
    fixed = torch.cat([torch.tensor(ties), torch.randint(-top, top, (10_000, ), generator=gen)])
    streams = ExactStreams(1.0, 0.1, torch.float32)
    zero, _ = streams.start(torch.zeros(fixed.shape))
    fixed = streams.next_x(torch.zeros(fixed.shape), zero, fixed.clone())  # X_1 = 0 + Y_0
    shared = streams.output(fixed)
    packed = streams.pack(fixed, shared)
    assert packed[0].dtype == torch.int32
    assert torch.equal(streams.unpack(packed, shared), fixed)
    assert shared[:len(ties)].tolist() == [(t + 2**31) / 2**40 for t in ties]


@pytest.mark.parametrize('beta', [0.1, 0.01, 0.7, 1 / 1024])
def test_the_beta_buffer_emits_limbs_and_takes_them_back_over_many_products(monkeypatch, beta):
    """A long segment (60 products) crosses several limb emissions (the state stays below 2^53);
    every product is undone exactly, down to an empty buffer, and the kept buffer holds the
    information bound plus about one bit per limb."""
    from dr2net_mm.core import fixed_point
    from dr2net_mm.core.fixed_point import LIMIT, beta_fraction
    monkeypatch.setattr(fixed_point, 'MIN_CHUNK', 1 << 14)  # 4 parts of the 70001 elements
    n, d = beta_fraction(beta)
    products = 60
    bounds, emits = _layout(n, d, products)
    assert max(bounds) < 2**53 and (beta > 0.5 or sum(emits) >= 1)
    gen = torch.Generator().manual_seed(0)
    x = torch.randint(-LIMIT, LIMIT, (70_001, ), generator=gen, dtype=torch.int64)
    buffer, xs = BetaBuffer(n, d, x.shape, x.device), []
    assert len(buffer.parts) == 4
    for _ in range(products):
        xs.append(x)
        x = buffer.scale(x)
    packed = buffer.pack()
    stored = sum(t.numel() * t.element_size() * 8 for t in packed) / x.numel()
    information = buffer.bounds[-1].bit_length()
    assert information <= stored <= information + sum(emits) + 8
    restored = BetaBuffer(n, d, x.shape, x.device)
    restored.bounds = list(buffer.bounds)
    restored.unpack(packed)
    for k in reversed(range(products)):
        x = restored.scale(x, inverse=True)
        assert torch.equal(x, xs[k]), k
    assert bool(restored.is_empty())
