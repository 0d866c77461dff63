"""Spec of ``torch.compile`` with reversible stages (MMEngine's ``cfg.compile=True``, which compiles
the model's ``train_step``): the reversible chain and its backward run eagerly (a graph break), the
layers around them are compiled, and a few training iterations with AlphaBetaHook moving (α, β)
give the losses and weights of eager execution. Exact streams (the default)."""
import pytest
import torch
from mmengine.config import ConfigDict
from mmengine.hooks import Hook
from mmengine.runner import Runner

from dr2net_mm.compiling import compile_refusal
from test_alpha_beta_hook import SwinClassifier, ToyClassifier, ToyData, make_runner, weights

# Measured (CPU, torch 2.14): losses within 1.1e-7 and weights within 3.2e-7 (of each tensor's
# largest entry) of eager after 4 SGD iterations.
TOLERANCE = 1e-5


class Losses(Hook):
    def __init__(self):
        self.losses = []

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None):
        self.losses.append(float(outputs['loss'].detach()))


def train(tmp_path, model, compile_cfg, iters, dataset=None, optim_wrapper=None):
    """``iters`` iterations with (α, β) moving from (1, 0.1) at every one of them; returns the
    losses, the final weights and how many graphs dynamo compiled."""
    from torch._dynamo.utils import counters
    torch._dynamo.reset()
    counters.clear()
    losses = Losses()
    runner = make_runner(tmp_path / str(compile_cfg), model,
                         dict(type='AlphaBetaHook', end_iter=iters, interval=1), max_iters=iters,
                         extra_hooks=[losses], dataset=dataset, optim_wrapper=optim_wrapper,
                         cfg=dict(compile=compile_cfg))
    runner.train()
    graphs = counters['stats']['unique_graphs']
    torch._dynamo.reset()
    return losses.losses, weights(runner.model), graphs


def assert_same_run(eager, compiled):
    (eager_losses, eager_weights, eager_graphs), (losses, final, graphs) = eager, compiled
    assert eager_graphs == 0 and graphs > 0  # the compiled run did compile
    assert losses == pytest.approx(eager_losses, rel=TOLERANCE)
    for key, value in eager_weights.items():
        if value.is_floating_point():
            scale = value.abs().max().item() or 1.0
            assert (final[key] - value).abs().max().item() <= TOLERANCE * scale, key
        else:
            assert torch.equal(final[key], value), key


def detector_optim_wrapper():
    """As a detector's, read from a config file: gradient clipping and ``paramwise_cfg`` (which make
    MMEngine build ConfigDict param groups); SGD, whose update is linear in the gradient (AdamW's
    amplifies the rounding of near-zero gradients)."""
    return ConfigDict(optimizer=dict(type='SGD', lr=0.05, momentum=0.9, weight_decay=1e-4),
                      clip_grad=dict(max_norm=0.1, norm_type=2),
                      paramwise_cfg=dict(custom_keys={'backbone': dict(lr_mult=0.1)}))


@pytest.mark.slow  # ~90 s with an empty inductor cache, as on CI: C++ kernels built (make test-all)
@pytest.mark.skipif(compile_refusal(ToyClassifier(), torch.__version__) is not None,
                    reason=f'compile=True is refused on torch {torch.__version__}')
def test_compile_true_trains_a_tiny_dr2net_swin_as_eager(tmp_path):
    images = ToyData(n=8, shape=(3, 32, 32))
    eager = train(tmp_path, SwinClassifier(stream_dtype='exact'), False, 4, images,
                  detector_optim_wrapper())
    compiled = train(tmp_path, SwinClassifier(stream_dtype='exact'), True, 4, images,
                     detector_optim_wrapper())
    assert_same_run(eager, compiled)


def test_param_groups_become_plain_dicts_before_compiling():
    from mmengine.optim import OptimWrapper, OptimWrapperDict
    from torch import nn

    from dr2net_mm.compiling import plain_param_groups
    weight, bias = nn.Linear(2, 2).parameters()
    optimizer = torch.optim.SGD([ConfigDict(params=[weight], lr=0.1), dict(params=[bias])], lr=1.0)
    wrappers = OptimWrapperDict(a=OptimWrapper(optimizer))
    assert plain_param_groups(wrappers) == 1
    assert [type(g) for g in optimizer.param_groups] == [dict, dict]
    assert optimizer.param_groups[0]['lr'] == 0.1 and optimizer.param_groups[0]['params'] == [weight]
    assert plain_param_groups(wrappers) == 0
    assert Runner._maybe_compile._dr2net_plain_groups  # installed by import dr2net_mm


def test_compile_true_on_torch_2_1_is_refused_naming_what_to_do(tmp_path):
    message = compile_refusal(ToyClassifier(), '2.1.2+cu121')
    assert message.startswith('compile=True: torch 2.1.2+cu121 cannot compile a model with '
                              'reversible Dr²Net stages')
    assert 'Remove compile from the config' in message
    assert compile_refusal(ToyClassifier(), '2.14.1') is None
    assert compile_refusal(torch.nn.Linear(2, 2), '2.1.2') is None  # not a Dr²Net model
    if torch.__version__ < '2.2':  # this torch: the Runner refuses before it compiles
        with pytest.raises(RuntimeError, match='compile=True: torch'):
            train(tmp_path, ToyClassifier(), True, 1)
