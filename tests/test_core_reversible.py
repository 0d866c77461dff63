"""Spec of the reversible dual-residual engine (dr2net_mm.core), on CPU."""
import gc
import inspect
import math
import os
import sys
import weakref

import pytest
import torch
from torch.autograd.graph import saved_tensors_hooks
from torch.nn.parallel import DistributedDataParallel

import dr2net_mm
from dr2net_mm.core import (ReversibleSequence, branch_input, count_saved_bytes, dual_residual_step,
                            gradient_error, set_reversible)
from dr2net_mm.core.autocast import autocast_state
from dr2net_mm.core.streams import ExactStreams, pack_stream, unpack_stream
from toys import MLPBranch, make_input, make_stage
from two_processes import on_two_processes, weighted_loss

ALPHA_BETA_GRID = [(a, b) for a in (0.0, 0.3, 0.7, 1.0) for b in (0.1, 0.3, 0.7, 1.0)]


def param_grads(module):
    return {n: p.grad.clone() for n, p in module.named_parameters() if p.grad is not None}


def rel(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def grads_of(stage, x, seed=0, reversible=True, loss_weight=None):
    """Input and parameter gradients of Σ w·stage(x) with the given mode, starting from `seed`."""
    stage.zero_grad(set_to_none=True)
    set_reversible(stage, reversible)
    x = x.detach().clone().requires_grad_(True)
    torch.manual_seed(seed)
    out = stage(x)
    w = loss_weight if loss_weight is not None else torch.linspace(-1, 1, out.numel()).view_as(out)
    (out * w).sum().backward()
    return x.grad, param_grads(stage), out.detach()


# 1. Forward ------------------------------------------------------------------------------------
@pytest.mark.parametrize('stream_dtype', [torch.float32, torch.float64])
def test_reversible_and_reference_forward_agree(stream_dtype):
    stage = make_stage(alpha=0.6, beta=0.4, stream_dtype=stream_dtype)
    x = make_input().requires_grad_(True)
    reversible_out = stage(x)
    assert reversible_out.grad_fn is not None
    set_reversible(stage, False)
    reference_out = stage(x)
    assert rel(reversible_out, reference_out) <= 1e-7


def test_forward_implements_eq1_with_y0_equal_beta_x0():
    """x_i = F_i(x_{i-1}) + α·x_{i-1} + y_{i-1}, y_i = β·x_{i-1}, (x_0, y_0) = (x_0, β·x_0)."""
    alpha, beta = 0.6, 0.4
    stage = make_stage(n=5, alpha=alpha, beta=beta).double()
    x0 = make_input().double()
    x, y = x0, beta * x0
    with torch.no_grad():
        for f in stage.functions:
            x, y = f(x) + alpha * x + y, beta * x
        got = stage(x0)
    assert rel(got, x) <= 1e-15


def test_alpha1_beta0_reference_is_the_plain_residual_network():
    stage = make_stage(n=6, alpha=1.0, beta=0.0, reversible=False, stream_dtype=torch.float32)
    x = make_input()
    expected = x
    for f in stage.functions:
        expected = f(expected) + expected
    assert torch.equal(stage(x), expected)


def test_no_grad_forward_keeps_nothing_and_matches():
    stage = make_stage(alpha=0.6, beta=0.4)
    x = make_input()
    with torch.no_grad(), count_saved_bytes() as saved:
        fast = stage(x)
    assert fast.grad_fn is None and saved.total == 0
    set_reversible(stage, False)
    assert rel(fast, stage(x)) <= 1e-6  # float32 streams without grad vs float64 in training


def test_extra_outputs_are_the_streams_at_those_positions():
    stage = make_stage(n=6, alpha=0.5, beta=0.5, reversible=False)
    x = make_input()
    outs = stage(x, out_positions=(2, 4, 6))
    for k, out in zip((2, 4, 6), outs):
        prefix = ReversibleSequence(list(stage.functions)[:k], alpha=0.5, beta=0.5, reversible=False,
                                    register_functions=False).train()
        assert torch.equal(out, prefix(x))


# 2. Gradient precision -------------------------------------------------------------------------
@pytest.mark.parametrize('alpha,beta,stream_dtype', [(0.3, 0.7, torch.float64), (0.0, 1.0, torch.float32)])
def test_gradients_as_precise_as_ordinary_autograd(alpha, beta, stream_dtype):
    """Against a float64 copy of the model (the truth), reversible gradients are within 2x of the
    error ordinary autograd itself has against that truth (max over parameters and input)."""
    stage = make_stage(n=12, alpha=alpha, beta=beta, stream_dtype=stream_dtype)
    report = gradient_error(stage, make_input())
    floor = report.reference_vs_truth.worst
    assert 0 < floor < 1e-5
    assert report.reversible_vs_truth.worst <= 2 * floor, report.as_dict()


def test_start_point_error_is_measured_and_segments_reduce_it():
    """At (1, 0.1) the inverse amplifies rounding ~10x per module: float32 streams are garbage,
    float64 streams are usable, and shorter segments bound the amplification."""
    x = make_input()
    errors = {}
    for name, kwargs in {'fp32': dict(stream_dtype=torch.float32),
                         'fp64': dict(stream_dtype=torch.float64),
                         'fp64_seg4': dict(stream_dtype=torch.float64, segment_size=4)}.items():
        stage = make_stage(n=12, alpha=1.0, beta=0.1, **kwargs)
        errors[name] = gradient_error(stage, x).reversible_vs_truth.worst
    assert errors['fp32'] > 1e-2
    assert errors['fp64'] < errors['fp32'] / 10
    assert errors['fp64_seg4'] < errors['fp64'] / 100


def test_extra_output_gradients_match_reference():
    stage = make_stage(n=6, alpha=0.5, beta=0.5)
    x = make_input()
    results = []
    for reversible in (True, False):
        set_reversible(stage, reversible)
        stage.zero_grad(set_to_none=True)
        xi = x.clone().requires_grad_(True)
        outs = stage(xi, out_positions=(1, 3, 6))
        sum((o * (k + 1)).sin().sum() for k, o in enumerate(outs)).backward()
        results.append((xi.grad, param_grads(stage)))
    (gx_rev, g_rev), (gx_ref, g_ref) = results
    assert rel(gx_rev, gx_ref) <= 1e-6
    assert max(rel(g_rev[n], g_ref[n]) for n in g_ref) <= 1e-6


# 3. Memory -------------------------------------------------------------------------------------
def saved_bytes(stage, x, **kwargs):
    with count_saved_bytes(stage.parameters()) as saved:
        out = stage(x.requires_grad_(True), **kwargs)
    del out
    return saved.total


def test_float_streams_save_one_stream_pair_per_segment_whatever_the_depth():
    x = make_input()
    numel = x.numel()
    shallow = saved_bytes(make_stage(n=4, stream_dtype=torch.float64), x)
    deep = saved_bytes(make_stage(n=24, stream_dtype=torch.float64), x)
    assert abs(deep - shallow) <= 0.05 * shallow
    # float64 streams: x_n as the float32 output + float32 remainder, y_n in float64 = 16 B/element
    assert abs(deep - 16 * numel) <= 0.01 * 16 * numel
    segmented = saved_bytes(make_stage(n=24, segment_size=6, stream_dtype=torch.float64), x)
    assert abs(segmented - 4 * 16 * numel) <= 0.01 * 4 * 16 * numel  # 4 segments: 4 stream pairs
    float32_streams = saved_bytes(make_stage(n=24, stream_dtype=torch.float32), x)  # x_n is the output
    assert abs(float32_streams - 8 * numel) <= 0.01 * 8 * numel


@pytest.mark.parametrize('alpha,beta', [(1.0, 0.1), (1.0, 0.01), (0.3, 0.7), (0.5, 0.5)])
@pytest.mark.parametrize('n', [4, 12, 36])
def test_exact_streams_save_one_stream_pair_plus_the_information_beta_discards(alpha, beta, n):
    """Exact streams keep x_n (the float32 output + an int32 remainder) and y_n (int64): 16 B per
    element, plus the β buffer: within 1.5x of the bound, log2(1/β) bits per element and function."""
    x = make_input()
    numel = x.numel()
    bound = n * math.log2(1 / beta) / 8 * numel
    saved = saved_bytes(make_stage(n=n, alpha=alpha, beta=beta), x)
    buffer = saved - 16 * numel
    assert bound <= buffer <= 1.5 * bound, (buffer / bound)


def test_reference_mode_grows_linearly_with_depth():
    x = make_input()
    shallow = saved_bytes(make_stage(n=4, reversible=False), x)
    deep = saved_bytes(make_stage(n=24, reversible=False), x)
    assert deep > 5 * shallow
    assert deep > 10 * saved_bytes(make_stage(n=24), x)


def test_extra_outputs_cost_no_extra_saved_bytes():
    x = make_input()
    stage = make_stage(n=12)
    assert saved_bytes(stage, x, out_positions=(3, 6, 9, 12)) == saved_bytes(stage, x)


# 4. Randomness ---------------------------------------------------------------------------------
def test_dropout_and_drop_path_replay_the_forward_masks():
    stage = make_stage(n=8, alpha=0.5, beta=0.5, dropout=0.2, drop_path=0.3)
    x = make_input()
    gx_rev, g_rev, out_rev = grads_of(stage, x, seed=7, reversible=True)
    state_after_reversible = torch.get_rng_state()
    gx_ref, g_ref, out_ref = grads_of(stage, x, seed=7, reversible=False)
    assert torch.equal(out_rev, out_ref)
    assert rel(gx_rev, gx_ref) <= 1e-6
    assert max(rel(g_rev[n], g_ref[n]) for n in g_ref) <= 1e-6
    # the backward's replay leaves the global random stream where ordinary training leaves it
    assert torch.equal(state_after_reversible, torch.get_rng_state())


def test_masks_change_between_iterations():
    stage = make_stage(n=4, alpha=0.5, beta=0.5, dropout=0.2, drop_path=0.3)
    x = make_input().requires_grad_(True)
    torch.manual_seed(3)
    first = stage(x)
    first.sum().backward()
    second = stage(x)
    assert not torch.equal(first, second)


# 5. DistributedDataParallel (gloo, CPU) --------------------------------------------------------
DDP_MODES = {'static': dict(find_unused_parameters=False), 'find_unused': dict(
    find_unused_parameters=True), 'no_sync_accumulation': dict(find_unused_parameters=False)}


def _ddp_rank(rank, world_size):
    part = make_input(batch=8).chunk(world_size)[rank]
    results = {}
    for mode, kwargs in DDP_MODES.items():
        stage = make_stage(n=6, alpha=0.5, beta=0.5)
        model = DistributedDataParallel(stage, **kwargs)
        for _ in range(2):  # a parameter marked ready twice fails on the second iteration
            model.zero_grad(set_to_none=True)
            if mode == 'no_sync_accumulation':
                first, second = part.chunk(2)
                with model.no_sync():
                    (weighted_loss(model(first)) / 2).backward()
                (weighted_loss(model(second)) / 2).backward()
            else:
                weighted_loss(model(part)).backward()
        results[mode] = param_grads(stage)
    return results


def test_ddp_two_processes_match_one_process_on_the_full_batch(tmp_path):
    ranks = on_two_processes(_ddp_rank, tmp_path)
    stage = make_stage(n=6, alpha=0.5, beta=0.5)
    weighted_loss(stage(make_input(batch=8))).backward()
    expected = param_grads(stage)
    for rank, results in enumerate(ranks):
        for mode in DDP_MODES:
            got = results[mode]
            assert set(got) == set(expected), mode
            worst = max(rel(got[n], expected[n]) for n in expected)
            assert worst <= 1e-6, (rank, mode, worst)


# 6. Autocast -----------------------------------------------------------------------------------
class AutocastRecordingBranch(MLPBranch):
    calls = []

    def forward(self, x, scale: float = 0.0):
        state = autocast_state(torch.device('cpu'))  # the torch 2.1 ... 2.15 query
        AutocastRecordingBranch.calls.append((state['enabled'], state['dtype']))
        return super().forward(x, scale)


def test_bf16_autocast_recomputes_under_the_same_autocast():
    torch.manual_seed(0)
    branches = [AutocastRecordingBranch(32) for _ in range(6)]
    stage = ReversibleSequence(branches, alpha=0.3, beta=0.7).train()
    x = make_input()
    AutocastRecordingBranch.calls = []
    with torch.autocast('cpu', dtype=torch.bfloat16):
        gx_rev, g_rev, out = grads_of(stage, x, reversible=True)
    assert out.dtype == torch.float32
    assert len(AutocastRecordingBranch.calls) == 12  # 6 forward + 6 recomputed in backward
    assert all(call == (True, torch.bfloat16) for call in AutocastRecordingBranch.calls)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        gx_amp_ref, g_amp_ref, _ = grads_of(stage, x, reversible=False)
    gx_fp32, g_fp32, _ = grads_of(stage, x, reversible=False)
    # the recomputation reproduces the bf16 forward: reversible == ordinary autograd under autocast
    assert max(rel(g_rev[n], g_amp_ref[n]) for n in g_fp32) <= 1e-3
    # and bf16 training is close to float32 training
    assert rel(gx_rev, gx_fp32) <= 5e-2
    assert max(rel(g_rev[n], g_fp32[n]) for n in g_fp32) <= 5e-2


# 7. Reconstruction-error monitor ---------------------------------------------------------------
def true_reconstruction_error(stage, x0):
    """Rebuild (x_0, y_0) with Eq. 2 from the streams the stage keeps, exactly as its backward does,
    and return max(‖x_0' − x_0‖/‖x_0‖, ‖y_0' − β·x_0‖/‖β·x_0‖)."""
    alpha, beta, sd = stage.alpha, stage.beta, stage.stream_dtype
    with torch.no_grad():
        x, y = x0.to(sd), beta * x0.to(sd)
        for f in stage.functions:
            x, y = dual_residual_step(f(branch_input(x, x0.dtype)).to(sd), x, y, alpha), beta * x
        hi = x.to(x0.dtype)
        x = unpack_stream(pack_stream(x, hi), hi, sd)
        for f in reversed(stage.functions):
            x_prev = y / beta
            x, y = x_prev, x - f(branch_input(x_prev, x0.dtype)).to(sd) - alpha * x_prev
    x0 = x0.to(sd)
    return max(rel(x, x0), rel(y, beta * x0))


@pytest.mark.parametrize('stream_dtype', [torch.float32, torch.float64])
def test_monitor_tracks_true_reconstruction_error(stream_dtype):
    x = make_input()
    for alpha, beta in ALPHA_BETA_GRID:
        stage = make_stage(n=12, alpha=alpha, beta=beta, stream_dtype=stream_dtype)
        stage(x.clone().requires_grad_(True)).sum().backward()
        monitored = stage.reconstruction_error()
        true = true_reconstruction_error(stage, x)
        if true == 0:
            assert monitored == 0, (alpha, beta)
        else:
            assert 0.1 <= monitored / true <= 10, (alpha, beta, monitored, true)


def test_monitor_flags_bad_steps_and_reports_per_segment():
    x = make_input()
    good = make_stage(n=12, alpha=0.3, beta=0.7, max_error=1e-3)
    good(x.clone().requires_grad_(True)).sum().backward()
    assert good.reconstruction_ok()
    bad = make_stage(n=12, alpha=1.0, beta=0.1, stream_dtype=torch.float32, max_error=1e-3)
    bad(x.clone().requires_grad_(True)).sum().backward()
    assert not bad.reconstruction_ok()
    segmented = make_stage(n=12, alpha=1.0, beta=0.1, segment_size=4)
    assert segmented.reconstruction_error() is None  # no backward yet
    segmented(x.clone().requires_grad_(True)).sum().backward()
    assert segmented.reconstruction_errors.shape == (3, )
    assert math.isfinite(segmented.reconstruction_error())


def test_monitor_reports_non_finite_streams():
    stage = make_stage(n=4, alpha=0.5, beta=0.5)
    x = make_input()
    x[0, 0, 0] = float('inf')
    stage(x.requires_grad_(True)).sum().backward()
    assert math.isnan(stage.reconstruction_error())
    assert not stage.reconstruction_ok()


# 8. Frozen parameters, inputs without grad, no leaks ---------------------------------------------
def test_frozen_parameters_and_input_without_grad():
    stage = make_stage(n=6, alpha=0.5, beta=0.5)
    for f in list(stage.functions)[:3]:
        f.requires_grad_(False)
    x = make_input()  # requires_grad=False
    grads = {}
    for reversible in (True, False):
        set_reversible(stage, reversible)
        stage.zero_grad(set_to_none=True)
        stage(x).pow(2).sum().backward()
        grads[reversible] = param_grads(stage)
    frozen = {n for n, p in stage.named_parameters() if not p.requires_grad}
    assert frozen and not frozen & set(grads[True])
    assert set(grads[True]) == set(grads[False])
    assert max(rel(grads[True][n], grads[False][n]) for n in grads[False]) <= 1e-6


def test_fully_frozen_stage_runs_without_bookkeeping():
    stage = make_stage(n=4, alpha=0.5, beta=0.5).requires_grad_(False)
    with count_saved_bytes() as saved:
        out = stage(make_input())
    assert out.grad_fn is None and saved.total == 0


def test_hundred_iterations_leave_nothing_alive():
    """Everything saved for backward is freed by reference counting alone (gc disabled): no
    reference cycle runs through the autograd context."""
    stage = make_stage(n=4, alpha=0.5, beta=0.5, dropout=0.1)
    x = make_input()
    saved = []

    def pack(tensor):
        saved.append(weakref.ref(tensor))
        return tensor

    gc.collect()
    gc.disable()
    try:
        for _ in range(100):
            with saved_tensors_hooks(pack, lambda t: t):
                out = stage(x.clone().requires_grad_(True))
            out.sum().backward()
            del out
        alive = [r for r in saved if r() is not None]
    finally:
        gc.enable()
    assert len(saved) >= 100 and not alive


# 9. Bad input ----------------------------------------------------------------------------------
@pytest.mark.parametrize('kwargs,error,match', [
    (dict(beta=0.0), ValueError, r'beta=0.0 must be > 0 when reversible=True'),
    (dict(beta=-0.1), ValueError, r'beta=-0.1 is outside \[0, 1\]'),
    (dict(beta=float('nan')), ValueError, r'beta=nan'),
    (dict(beta=float('inf')), ValueError, r'beta=inf'),
    (dict(alpha=1.5), ValueError, r'alpha=1.5 is outside \[0, 1\]'),
    (dict(alpha='0.5'), TypeError, r"alpha must be a number in \[0, 1\], got '0.5'"),
    (dict(stream_dtype=torch.float16), TypeError, r'stream_dtype=torch.float16'),
    (dict(segment_size=0), ValueError, r'segment_size=0'),
])
def test_bad_constructor_arguments_raise_clear_errors(kwargs, error, match):
    with pytest.raises(error, match=match):
        make_stage(n=2, **kwargs)


def test_beta_zero_is_fine_for_the_reference_but_not_for_reversible():
    stage = make_stage(n=2, alpha=1.0, beta=0.0, reversible=False)
    with pytest.raises(ValueError, match='beta=0.0 must be > 0'):
        stage.reversible = True
    assert not stage.reversible
    reversible = make_stage(n=2)
    with pytest.raises(ValueError, match='beta=0.0 must be > 0'):
        reversible.set_coefficients(0.3, 0.0)
    assert (reversible.alpha, reversible.beta) == (1.0, 0.1)  # unchanged after the failed call


class ShapeChanging(torch.nn.Module):

    def forward(self, x):
        return x[..., :-1]


def test_function_that_changes_shape_raises():
    stage = ReversibleSequence([MLPBranch(32), ShapeChanging()]).train()
    with pytest.raises(ValueError, match=r'residual function 2 \(ShapeChanging\) returned \(4, 50, 31\)'):
        stage(make_input().requires_grad_(True))


def test_bad_forward_arguments_raise():
    stage = make_stage(n=3)
    with pytest.raises(ValueError, match='out_positions'):
        stage(make_input(), out_positions=(2, 1))
    with pytest.raises(ValueError, match='out_positions'):
        stage(make_input(), out_positions=(4, ))
    with pytest.raises(ValueError, match=r'argument 0 .* inside a tuple.*argument of its own'):
        stage(make_input(), (torch.ones(1, requires_grad=True), ))
    with pytest.raises(TypeError, match='floating-point'):
        stage(torch.ones(2, 3, 32, dtype=torch.long))


def test_backward_holds_one_function_gradients_at_a_time():
    """Parameter gradients leave the stage node by node (accumulated at once), so the peak of a
    training step stays near one function's parameters, not the stage's (12 functions here)."""
    from dr2net_mm.benchmark import _cpu_peak_bytes
    stage = make_stage(n=12, channels=256, alpha=0.5, beta=0.5)
    x = make_input(batch=1, tokens=4, channels=256)
    stage_param_bytes = sum(p.numel() * 4 for p in stage.parameters())
    stage(x).sum().backward()  # allocates the .grad buffers

    def step():
        stage(x).sum().backward()

    peak = _cpu_peak_bytes(step)
    assert peak < 0.25 * stage_param_bytes, (peak, stage_param_bytes)


def test_gradient_reaching_an_early_output_only():
    """The loss uses the stream after F_3 only: F_4..F_6 get no gradient, and F_1..F_3 still get
    the reference gradients (their streams are rebuilt from the kept end streams)."""
    stage = make_stage(n=6, alpha=0.5, beta=0.5)
    x = make_input()
    grads = {}
    for reversible in (True, False):
        set_reversible(stage, reversible)
        stage.zero_grad(set_to_none=True)
        early, _ = stage(x, out_positions=(3, 6))
        early.pow(2).sum().backward()
        grads[reversible] = param_grads(stage)
    assert set(grads[True]) == set(grads[False])
    assert not any(n.startswith(('functions.3', 'functions.4', 'functions.5')) for n in grads[True])
    assert max(rel(grads[True][n], grads[False][n]) for n in grads[False]) <= 1e-6


class RandDropPath(torch.nn.Module):
    """Drop path drawing its mask with torch.rand(dtype=x.dtype), as mmcv's DropPath does."""

    def forward(self, x):
        keep = (0.5 + torch.rand((x.shape[0], 1, 1), dtype=x.dtype)).floor()
        return x * keep / 0.5


def test_float64_truth_draws_the_same_masks_as_the_model():
    torch.manual_seed(0)
    branches = [torch.nn.Sequential(MLPBranch(32), RandDropPath()) for _ in range(6)]
    stage = ReversibleSequence(branches, alpha=0.5, beta=0.5).train()
    report = gradient_error(stage, make_input(batch=8))
    assert report.reference_vs_truth.worst < 1e-5  # other masks would give errors of order 1
    assert report.reversible_vs_truth.worst <= 2 * report.reference_vs_truth.worst


# 9. Lean backward: model-dtype gradients, parameter gradients into .grad, branches by parts ------
class PlannedMLPBranch(MLPBranch):
    """The toy MLP branch with a plan: body = fc2(gelu(fc1(norm(rows)))) on rows of tokens, merge =
    drop path per sample (see dr2net_mm.core.chunks)."""

    def plan(self, x, scale=0.0):
        from dr2net_mm.core.chunks import BranchPlan, row_parts
        if scale or (self.training and self.dropout.p > 0):
            return None
        B, N, C = x.shape
        return BranchPlan(x.reshape(B * N, C), row_parts(B * N, 2 * C, part_elements=128 * 2 * C),
                          lambda h, part: self.fc2(self.dropout(torch.nn.functional.gelu(
                              self.fc1(self.norm(h))))),
                          lambda out: self.drop_path(out.view(B, N, C)))


def planned_stage(n=6, channels=32, drop_path=0.0, **kwargs):
    torch.manual_seed(0)
    return ReversibleSequence([PlannedMLPBranch(channels, 0.0, drop_path) for _ in range(n)],
                              **kwargs).train()


def step_nodes(output):
    """Every _StepFunction node reachable from ``output``'s graph."""
    seen, stack, nodes = set(), [output.grad_fn], []
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        if type(node).__name__ == '_StepFunctionBackward':
            nodes.append(node)
        stack.extend(n for n, _ in node.next_functions)
    return nodes


@pytest.mark.parametrize('stream_dtype', [torch.float32, torch.float64])
def test_every_gradient_leaving_a_node_has_the_model_dtype(stream_dtype):
    stage = make_stage(n=8, alpha=0.5, beta=0.5, stream_dtype=stream_dtype, segment_size=3)
    x = make_input().requires_grad_(True)
    early, out = stage(x, out_positions=(4, 8))
    seen = []
    for node in step_nodes(out):
        node.register_hook(lambda grad_inputs, grad_outputs: seen.extend(
            g.dtype for g in grad_inputs if g is not None))
    (early.sum() + out.pow(2).sum()).backward()
    assert len(seen) >= 8
    assert set(seen) == {torch.float32}
    assert x.grad.dtype == torch.float32


def test_parameter_gradients_accumulate_into_existing_grad_buffers():
    stage = make_stage(n=4, alpha=0.5, beta=0.5)
    x = make_input()
    gx, once, _ = grads_of(stage, x, reversible=True)
    buffers = {n: p.grad for n, p in stage.named_parameters()}
    out = stage(x.clone().requires_grad_(True))
    (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
    for name, param in stage.named_parameters():
        assert param.grad is buffers[name]  # added in place, as autograd accumulates
        assert rel(param.grad, 2 * once[name]) <= 1e-6


def test_autograd_grad_returns_gradients_and_leaves_grad_untouched():
    stage = make_stage(n=4, alpha=0.5, beta=0.5)
    x = make_input()
    gx_ref, g_ref, _ = grads_of(stage, x, reversible=True)  # loss.backward(): into .grad
    stage.zero_grad(set_to_none=True)
    xg = x.clone().requires_grad_(True)
    out = stage(xg)
    names, params = zip(*stage.named_parameters())
    grads = torch.autograd.grad((out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum(),
                                [xg, *params])
    assert all(p.grad is None for p in params)
    assert torch.equal(grads[0], gx_ref)
    assert all(torch.equal(g, g_ref[n]) for n, g in zip(names, grads[1:]))
    only_x, = torch.autograd.grad(stage(xg).sum(), [xg])  # no parameter gradient computed at all
    assert only_x.shape == xg.shape and all(p.grad is None for p in params)


@pytest.mark.parametrize('alpha,beta', [(1.0, 0.1), (0.3, 0.7)])
def test_branches_with_a_plan_give_reference_gradients_and_the_same_masks(alpha, beta):
    stage = planned_stage(n=6, drop_path=0.3, alpha=alpha, beta=beta)
    x = make_input(batch=6)
    gx_rev, g_rev, out_rev = grads_of(stage, x, seed=5, reversible=True)
    gx_ref, g_ref, out_ref = grads_of(stage, x, seed=5, reversible=False)
    assert rel(out_rev, out_ref) <= 1e-6  # parts vs the whole branch: GEMM rounding only
    assert rel(gx_rev, gx_ref) <= 1e-5
    assert max(rel(g_rev[n], g_ref[n]) for n in g_ref) <= 1e-5


class StackRecorder(torch.autograd.Function):
    """Identity whose backward records the Python call stack, once per branch position."""
    stacks = {}

    @staticmethod
    def forward(ctx, x, position):
        ctx.position = position
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        StackRecorder.stacks.setdefault(ctx.position, inspect.stack(0))
        return grad, None


class StackRecordingBranch(PlannedMLPBranch):
    """The planned toy branch with a StackRecorder in its body."""

    def __init__(self, channels, position):
        super().__init__(channels)
        self.position = position

    def plan(self, x, scale=0.0):
        plan = super().plan(x, scale)
        body = plan.body
        return plan._replace(body=lambda h, part: StackRecorder.apply(body(h, part), self.position))


def test_one_backward_step_reaches_the_branch_backward_through_few_frames():
    """loss.backward() through a node that does not end a segment, with exact streams and a planned
    branch: from the node's backward to the branch's own backward, at most 10 frames in at most 4
    files of dr2net_mm (the call path written in NOTE [ One backward step ])."""
    package = os.path.dirname(os.path.abspath(dr2net_mm.__file__)) + os.sep
    torch.manual_seed(0)
    stage = ReversibleSequence([StackRecordingBranch(32, i) for i in (1, 2, 3)]).train()
    assert stage.stream_dtype == 'exact' and stage.segment_boundaries() == (3, )
    StackRecorder.stacks = {}
    stage(make_input().requires_grad_(True)).sum().backward()
    files = [(os.path.abspath(f.filename), f.function) for f in StackRecorder.stacks[2][1:]]
    path = [(os.path.relpath(file, package), name) for file, name in files if file.startswith(package)]
    assert path and path[-1] == (os.path.join('core', 'reversible.py'), 'backward'), path
    assert len(path) <= 10 and len({file for file, _ in path}) <= 4, path


def test_one_backward_step_enters_few_functions_in_few_files():
    """loss.backward() through a node that does not end a segment (node 2 of 3), with exact streams
    and a planned branch, enters at most 10 distinct functions of dr2net_mm in at most 4 files (a
    comprehension counts as its function; the branch's own code and what it calls do not count):
    the list in NOTE [ One backward step ]."""
    package = os.path.dirname(os.path.abspath(dr2net_mm.__file__)) + os.sep
    model_code = os.path.abspath(__file__)  # PlannedMLPBranch: forward, plan, body, merge
    torch.manual_seed(0)
    stage = ReversibleSequence([PlannedMLPBranch(32) for _ in range(3)]).train()
    assert stage.stream_dtype == 'exact' and stage.segment_boundaries() == (3, )
    out = stage(make_input().requires_grad_(True))
    entered = set()

    def profile(frame, event, arg):
        file = os.path.abspath(frame.f_code.co_filename)
        if event != 'call' or not file.startswith(package):
            return
        caller = frame.f_back  # the first caller outside dr2net_mm: the branch's code?
        while caller is not None and os.path.abspath(caller.f_code.co_filename).startswith(package):
            caller = caller.f_back
        if caller is not None and os.path.abspath(caller.f_code.co_filename) == model_code:
            return
        name = getattr(frame.f_code, 'co_qualname', frame.f_code.co_name)
        if name.endswith(('.<listcomp>', '.<genexpr>', '.<dictcomp>', '.<setcomp>')):
            name = name.rsplit('.<locals>.', 1)[0]
        entered.add((os.path.relpath(file, package), name))

    node = next(n for n in step_nodes(out) if n.position == 2)
    node.register_prehook(lambda grad_outputs: sys.setprofile(profile))
    node.register_hook(lambda grad_inputs, grad_outputs: sys.setprofile(None))
    try:
        out.sum().backward()
    finally:
        sys.setprofile(None)
    path = sorted(entered)
    assert (os.path.join('core', 'reversible.py'), '_StepFunction.backward') in entered, path
    assert (os.path.join('core', 'chunks.py'), 'backward_branch') in entered, path
    assert len(entered) <= 10 and len({file for file, _ in entered}) <= 4, path


def test_a_plan_splits_the_rows_into_parts_that_cover_them_once():
    from dr2net_mm.core.chunks import row_parts
    for rows, width, budget, align in [(200, 64, 1000, 1), (7, 10, 1, 1), (5, 3, 10**6, 1),
                                       (96, 8, 100, 12)]:
        parts = row_parts(rows, width, budget, align)
        assert parts[0].start == 0 and parts[-1].stop == rows
        assert all(a.stop == b.start for a, b in zip(parts, parts[1:]))
        assert all(p.start % align == 0 for p in parts)
        assert len(parts) <= max(1, rows // align)


class SharedMeanBranch(PlannedMLPBranch):
    """A toy branch whose parts read one shared tensor: rows + the mean of all rows (``shared``
    returns ``h`` itself, or, broken, a new tensor computed from it)."""

    def __init__(self, channels, views=True):
        super().__init__(channels)
        self.views = views

    def forward(self, x, scale=0.0):
        h = self.fc2(self.fc1(self.norm(x)))
        return h.tanh() + h.mean(1, keepdim=True)

    def plan(self, x, scale=0.0):
        from dr2net_mm.core.chunks import BranchPlan
        B, N, C = x.shape
        h = self.fc2(self.fc1(self.norm(x))).reshape(B * N, C)
        parts = [slice(s, min(s + 3, B * N)) for s in range(0, B * N, 3)]

        def body(rows, part, whole):
            b = part.start // N
            return rows.tanh() + whole[b].mean(0, keepdim=True)

        shared = (lambda t: [t.view(B, N, C)]) if self.views else (lambda t: [t.view(B, N, C) * 1])
        return BranchPlan(h, parts, body, lambda out: out.view(B, N, C), shared=shared)


def test_a_plan_with_a_shared_view_gives_reference_gradients_and_refuses_other_tensors():
    """Parts that read a tensor shared by all (a view of the plan's inputs) add their gradients for
    it in place: the reversible gradients equal the reference mode's; ``shared`` returning anything
    but views of ``h`` is refused with a clear error."""
    torch.manual_seed(0)
    stage = ReversibleSequence([SharedMeanBranch(32) for _ in range(3)], alpha=0.3,
                               beta=0.7).train()
    x = make_input(batch=2, tokens=8)
    gx_rev, g_rev, _ = grads_of(stage, x, seed=5, reversible=True)
    gx_ref, g_ref, _ = grads_of(stage, x, seed=5, reversible=False)
    assert rel(gx_rev, gx_ref) <= 1e-5
    assert max(rel(g_rev[n], g_ref[n]) for n in g_ref) <= 1e-5
    assert stage.reconstruction_errors.max().item() == 0.0
    broken = ReversibleSequence([SharedMeanBranch(32, views=False)], beta=0.5).train()
    with pytest.raises(ValueError, match='must return views of h'):
        broken(x).sum().backward()


def test_a_plan_lowers_the_backward_peak():
    """Recomputing a branch part by part holds one part's activations (plus the streams) instead of
    the whole branch's: the training step's peak falls well below the unplanned engine's."""
    from dr2net_mm.benchmark import _cpu_peak_bytes
    x = make_input(batch=2, tokens=2048, channels=64)
    peaks = {}
    for planned in (False, True):
        torch.manual_seed(0)
        cls = PlannedMLPBranch if planned else MLPBranch
        stage = ReversibleSequence([cls(64) for _ in range(4)], alpha=0.5, beta=0.5,
                                   stream_dtype=torch.float64).train()
        stage(x).pow(2).mean().backward()  # allocates the .grad buffers
        peaks[planned] = _cpu_peak_bytes(lambda: stage(x).pow(2).mean().backward())
    assert peaks[True] < 0.75 * peaks[False], peaks


# 10. Exact streams: fixed point with an exact β buffer ------------------------------------------
class RecordingExactStreams(ExactStreams):
    """Exact streams that keep a copy of every stream the forward computes and the backward rebuilds:
    forward[i] = (x_i, y_i), rebuilt[i] = (x_i', y_i')."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.forward, self.rebuilt, self.pending_x = {}, {}, {}
        self.position = 0

    def start(self, x0):
        x, y = super().start(x0)
        self.forward[0] = (x.clone(), y.clone())
        return x, y

    def next_x(self, f, x, y):
        self.position += 1
        x_new = super().next_x(f, x, y)
        self.pending_x[self.position] = x_new.clone()
        return x_new

    def next_y(self, x):
        y_new = super().next_y(x)
        self.forward[self.position] = (self.pending_x.pop(self.position), y_new.clone())
        return y_new

    def undo_beta(self, y):
        self.x_prev = super().undo_beta(y)
        return self.x_prev

    def undo_step(self, x, f, x_prev):
        y_prev = super().undo_step(x, f, x_prev)
        self.rebuilt[len(self.forward) - 2 - len(self.rebuilt)] = (x_prev.clone(), y_prev.clone())
        return y_prev


def recorded_run(monkeypatch, stage, x):
    """Train-mode forward and backward of ``stage``, recording the exact streams."""
    import dr2net_mm.core.reversible as engine
    runs = []

    def arithmetic(*args, **kwargs):
        runs.append(RecordingExactStreams(*args[1:], **kwargs))
        return runs[-1]

    monkeypatch.setattr(engine, 'stream_arithmetic', arithmetic)
    out = stage(x.clone().requires_grad_(True))
    (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
    return runs[0]


EXACT_GRID = sorted(set(ALPHA_BETA_GRID) | {(1.0, 0.1), (1.0, 0.01), (0.3, 0.7), (0.0, 0.05)})


@pytest.mark.parametrize('alpha,beta', EXACT_GRID)
def test_exact_streams_rebuild_every_stream_bit_for_bit(monkeypatch, alpha, beta):
    """Every (x_i, y_i) that Eq. 2 rebuilds equals the forward's bit for bit (torch.equal), over an
    α×β grid including the start point (1, 0.1), (1, 0.01) and the end point (0.3, 0.7), with drop
    path on; the monitor reads exactly 0."""
    n = 12
    stage = make_stage(n=n, alpha=alpha, beta=beta, drop_path=0.2)
    assert stage.stream_dtype == 'exact'  # the default
    torch.manual_seed(0)
    run = recorded_run(monkeypatch, stage, make_input())
    assert sorted(run.forward) == list(range(n + 1)) and sorted(run.rebuilt) == list(range(n))
    for i in range(n):
        assert torch.equal(run.rebuilt[i][0], run.forward[i][0]), (alpha, beta, i, 'x')
        assert torch.equal(run.rebuilt[i][1], run.forward[i][1]), (alpha, beta, i, 'y')
    assert stage.reconstruction_error() == 0.0


def test_exact_streams_rebuild_bit_for_bit_across_segments(monkeypatch):
    stage = make_stage(n=12, alpha=1.0, beta=0.1, segment_size=5)
    run = recorded_run(monkeypatch, stage, make_input())
    assert all(torch.equal(run.rebuilt[i][k], run.forward[i][k]) for i in range(12) for k in (0, 1))
    assert stage.reconstruction_errors.tolist() == [0.0, 0.0, 0.0]


def test_exact_reference_mode_computes_the_reversible_modes_values_bitwise():
    stage = make_stage(n=12, alpha=1.0, beta=0.1, drop_path=0.2)
    x = make_input()
    _, _, out_rev = grads_of(stage, x, seed=3, reversible=True)
    gx_ref, _, out_ref = grads_of(stage, x, seed=3, reversible=False)
    assert torch.equal(out_rev, out_ref)


def test_exact_streams_leave_their_range_with_a_clear_error():
    stage = make_stage(n=4, alpha=1.0, beta=0.5)
    x = make_input() * 3e6  # |x| >= 2^21
    with pytest.raises(OverflowError, match=r"reached \|x\| = .*outside the exact fixed-point "
                                            r"streams' range \|x\| < 2\^21.*stream_dtype='float64'"):
        stage(x.requires_grad_(True))
    stage(make_input().requires_grad_(True)).sum().backward()  # the stage still works afterwards
    assert stage.reconstruction_error() == 0.0


def test_beta_is_the_nearest_small_fraction_in_every_mode():
    """β is used as n/d with d <= 2^10 (the exact buffer needs a fraction): the paper's values are
    exact, any other within 1/(1024·d) <= 5e-4; every stream mode multiplies by the same number."""
    for beta in (0.1, 0.7, 0.01, 0.5, 1.0):
        assert ReversibleSequence([MLPBranch(8)], beta=beta).beta == beta
    stage = ReversibleSequence([MLPBranch(8)], beta=0.43721)
    assert stage.beta != 0.43721 and abs(stage.beta - 0.43721) < 1e-6
    assert ReversibleSequence([MLPBranch(8)], beta=0.0, reversible=False).beta == 0.0


@pytest.mark.parametrize('beta', [0.1, 0.01, 0.7, 0.3, 0.999, 1 / 1024, 0.43721, 1.0])
def test_beta_buffer_multiplies_exactly_and_divides_back(beta):
    from dr2net_mm.core.exact_streams import BetaBuffer, buffer_bits
    from dr2net_mm.core.fixed_point import LIMIT, beta_fraction, scale_floor
    n, d = beta_fraction(beta)
    gen = torch.Generator().manual_seed(0)
    shape = torch.Size((333, 3))
    x = torch.randint(-LIMIT // 4, LIMIT // 4, shape, generator=gen, dtype=torch.int64)
    x[0, :] = torch.tensor([LIMIT - 1, -LIMIT, 0])
    buffer, xs, ys = BetaBuffer(n, d, shape, x.device), [], []
    for _ in range(30):
        xs.append(x)
        ys.append(buffer.scale(x))
        assert ((ys[-1] - scale_floor(x, n, d)).abs() < max(n, 1)).all()  # |Y − β·X| < n units
        x = ys[-1] + torch.randint(-2**40, 2**40, shape, generator=gen, dtype=torch.int64)
    assert len(buffer.pack()) == 0 if n == d else buffer.bounds[-1].bit_length() == buffer_bits(
        n, d, 30)
    # B_max + 1 <= (m + 1)·(d/n)^m: the information bound plus at most log2(m + 1) bits
    assert buffer_bits(n, d, 30) <= math.ceil(30 * math.log2(d / n) + math.log2(31))
    restored = BetaBuffer(n, d, shape, x.device)
    restored.bounds = list(buffer.bounds)
    restored.unpack(buffer.pack())
    for k in reversed(range(30)):
        assert torch.equal(restored.scale(ys[k].clone(), inverse=True), xs[k])
    assert bool(restored.is_empty())


# 11. Side inputs: extra arguments that need gradients ---------------------------------------------
class SideInputBranch(MLPBranch):
    """F(x, pos) = drop_path(mlp(x + pos)); ``planned``: None, 'inputs' (the plan's inputs are
    x + pos) or 'body' (each part adds its rows of pos)."""

    def __init__(self, channels, planned=None, dropout=0.0, drop_path=0.0):
        super().__init__(channels, 0.0 if planned else dropout, drop_path)
        self.planned = planned

    def forward(self, x, pos):
        return super().forward(x + pos)

    def plan(self, x, pos):
        from dr2net_mm.core.chunks import BranchPlan, row_parts
        if self.planned is None:
            return None
        B, N, C = x.shape
        mlp = lambda h: self.fc2(torch.nn.functional.gelu(self.fc1(self.norm(h))))  # noqa: E731
        rows, pos_rows = x.reshape(B * N, C), pos.expand(B, N, C).reshape(B * N, C)
        parts = row_parts(B * N, 2 * C, part_elements=2 * 2 * C)
        if self.planned == 'inputs':
            body = lambda h, part: mlp(h)  # noqa: E731
            rows = rows + pos_rows
        else:
            body = lambda h, part: mlp(h + pos_rows[part])  # noqa: E731
        return BranchPlan(rows, parts, body, lambda out: self.drop_path(out.view(B, N, C)))


def side_input_stage(plans=('inputs', None, 'body'), channels=32, dropout=0.0, drop_path=0.0,
                     **kwargs):
    torch.manual_seed(0)
    return ReversibleSequence([SideInputBranch(channels, p, dropout, drop_path) for p in plans],
                              **kwargs).train()


@pytest.mark.parametrize('stream_dtype', ['exact', torch.float64])
def test_side_input_gradients_pass_gradcheck(stream_dtype):
    """gradcheck in float64 of (x, pos) -> stage(x, pos) over three branches (two planned: pos in the
    plan's inputs and in its body) that all take the side input pos."""
    stage = side_input_stage(channels=4, alpha=0.7, beta=0.3, stream_dtype=stream_dtype).double()
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 4, dtype=torch.float64, generator=gen).requires_grad_(True)
    pos = torch.randn(2, 3, 4, dtype=torch.float64, generator=gen).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda a, p: stage(a, p), (x, pos))
    assert stage.reconstruction_error() is not None  # the reversible backward ran


@pytest.mark.parametrize('stream_dtype,segment_size', [('exact', None), (torch.float32, 2),
                                                        (torch.float64, None)])
def test_side_input_gradients_equal_the_plain_stages(stream_dtype, segment_size):
    """pos = 0.1·embedding (a parameter upstream of the stage, broadcast over the batch): its gradient
    and every other gradient equal the plain (reversible=False) stage's, through loss.backward() and
    torch.autograd.grad(..., inputs=[pos]), with dropout, drop path and an extra output: within the
    tolerance, or within twice the plain fp32 gradient's own error against the same plain stage in
    float64 (torch 2.1 sums one bias gradient with a relative error of 1.2e-5 in plain fp32)."""
    stage = side_input_stage(plans=('inputs', None, 'body', None, 'inputs'), dropout=0.1,
                             drop_path=0.2, alpha=0.5, beta=0.5, stream_dtype=stream_dtype,
                             segment_size=segment_size)
    embedding = torch.nn.Parameter(torch.randn(1, 50, 32, generator=torch.Generator().manual_seed(2)))
    x = make_input()
    weight = torch.linspace(-1, 1, x.numel()).view_as(x)

    def run(reversible, inputs=None, dtype=torch.float32):
        stage.to(dtype).zero_grad(set_to_none=True)
        embedding.data, embedding.grad = embedding.data.to(dtype), None
        stage.reversible = reversible
        xg = x.to(dtype).clone().requires_grad_(True)
        torch.manual_seed(4)
        pos = 0.1 * embedding
        early, out = stage(xg, pos, out_positions=(2, 5))
        loss = (out * weight.to(dtype)).sum() + early.pow(2).sum()
        if inputs == 'pos':
            return torch.autograd.grad(loss, [pos])[0]
        loss.backward()
        return [xg.grad, embedding.grad, *param_grads(stage).values()]

    exact = [g.float() for g in run(False, dtype=torch.float64)]
    exact_pos = run(False, 'pos', dtype=torch.float64).float()
    reference, reversible = run(False), run(True)
    tolerance = 1e-5 if stream_dtype == torch.float32 else 1e-6

    def close(got, plain, truth):
        return rel(got, plain) <= max(tolerance, 2 * rel(plain, truth))

    assert len(reversible) == len(reference) == 2 + len(list(stage.parameters()))
    assert all(close(a, b, c) for a, b, c in zip(reversible, reference, exact))
    assert close(run(True, 'pos'), run(False, 'pos'), exact_pos)
    assert close(run(True, 'pos'), reference[1] / 0.1, exact_pos)


def test_side_input_alone_gets_its_gradient_and_values_equal_every_path():
    """A frozen stage whose input needs no gradient still back-propagates to its side input; the
    reversible, reference and no-grad forwards give bitwise the same values (exact streams)."""
    stage = side_input_stage(drop_path=0.0, alpha=1.0, beta=0.1)
    stage.requires_grad_(False)
    x, pos = make_input(), (0.1 * make_input(seed=3)).requires_grad_(True)
    out = stage(x, pos)
    assert out.grad_fn is not None
    grad, = torch.autograd.grad(out.pow(2).sum(), [pos])
    stage.reversible = False
    reference = stage(x, pos)
    reference_grad, = torch.autograd.grad(reference.pow(2).sum(), [pos])
    assert torch.equal(out, reference)
    assert rel(grad, reference_grad) <= 1e-6
    with torch.no_grad():
        assert rel(stage(x, pos), out) <= 1e-6  # input-dtype streams without gradients


def test_side_input_of_a_wrong_shape_raises_the_branchs_own_error():
    """The engine adds no check of its own: the error is the one the plain stage raises."""
    stage = side_input_stage()
    pos = torch.zeros(4, 50, 31, requires_grad=True)
    errors = []
    for reversible in (True, False):
        stage.reversible = reversible
        with pytest.raises(RuntimeError, match=r'size .*\(32\) must match .*size .*\(31\)') as error:
            stage(make_input().requires_grad_(True), pos)
        errors.append(str(error.value))
    assert errors[0] == errors[1]


def test_the_first_backward_node_rebuilds_in_what_it_saved_unless_the_graph_is_kept(monkeypatch):
    """Without retain_graph the segment-end node rebuilds its streams in the tensors it saved and
    lets the int32 remainder of x_n go (NOTE [ Kept streams are consumed ]): the backward's peak is
    at least one int64 stream below the same backward with copies (what retain_graph=True, and
    torch 2.1, get), and the gradients are the same."""
    from dr2net_mm.core import stage_call
    if not hasattr(torch._C._autograd, '_get_current_graph_task_keep_graph'):
        assert stage_call.graph_kept()  # this torch cannot say: always copies
        pytest.skip(f'torch {torch.__version__} cannot say whether a backward keeps the graph')

    def backward_peak_and_grads():
        stage = planned_stage(n=4, channels=32)
        x = torch.randn(4, 256, 32, generator=torch.Generator().manual_seed(1)).requires_grad_()
        loss = stage(x).square().sum()
        with torch.profiler.profile(profile_memory=True) as prof:
            loss.backward()
        live = peak = 0
        events = [e for e in prof.profiler.kineto_results.events() if e.name() == '[memory]']
        for event in sorted(events, key=lambda e: e.start_ns()):
            live += event.nbytes()
            peak = max(peak, live)
        return peak, [x.grad] + [p.grad for p in stage.parameters()]

    consumed, grads = backward_peak_and_grads()
    monkeypatch.setattr(stage_call, 'graph_kept', lambda: True)
    copied, copied_grads = backward_peak_and_grads()
    assert all(torch.equal(a, b) for a, b in zip(grads, copied_grads))
    assert consumed <= copied - 8 * 4 * 256 * 32, (consumed, copied)
