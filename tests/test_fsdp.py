"""Spec of FSDP2 (torch's ``fully_shard``) with reversible stages (dr2net_mm.core.fsdp): 2 gloo CPU
processes give the gradients of one process for units holding whole stages (the whole model, one unit
per stage), and a unit inside a stage (one per block, per branch) stops with a message saying what to
wrap. Exact streams (the default) throughout; one spawn runs every case."""
import pytest
import torch
import torch.multiprocessing as mp
from torch import nn

from dr2net_mm.core import ReversibleSequence
from dr2net_mm.core.chunks import BranchPlan, row_parts
from dr2net_mm.core.fsdp import fully_shard_api, fully_shard_stages, stage_units
from toys import MLPBranch, make_input

try:
    fully_shard_api()
    MISSING = None
except ImportError as error:  # torch < 2.4: no FSDP2 (the compat stack's torch 2.1)
    MISSING = str(error)
needs_fsdp2 = pytest.mark.skipif(MISSING is not None or not torch.distributed.is_available(),
                                 reason=f'FSDP2 unavailable: {MISSING}')

WORLD = 2
# Measured: at most 2.3e-7 of the largest gradient entry (fp32 sums of two half-batch gradients in
# another order); a lost or doubled contribution would be of order 1.
TOLERANCE = 2e-6


class PlannedBranch(MLPBranch):
    """The toy MLP branch with a plan of 3-row parts, so that the engine runs it piece by piece."""

    def plan(self, x, scale=0.0):
        B, N, C = x.shape
        return BranchPlan(x.reshape(B * N, C), row_parts(B * N, 2 * C, part_elements=3 * 2 * C),
                          lambda h, part: self.fc2(nn.functional.gelu(self.fc1(self.norm(h)))),
                          lambda out: out.view(B, N, C))


class SequenceNet(nn.Module):
    """A ReversibleSequence of 4 branches (2 planned) that owns them, and a linear head."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        branches = [PlannedBranch(8) if i % 2 else MLPBranch(8) for i in range(4)]
        self.stage = ReversibleSequence(branches, alpha=0.8, beta=0.3)
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        return self.head(self.stage(x).mean(1))

    @staticmethod
    def inputs():
        return make_input(batch=4, tokens=6, channels=8)


class SwinNet(nn.Module):
    """A tiny Dr2NetSwin (16 channels, depths 2-2, 32×32 input, no drop path) with a linear head."""

    def __init__(self):
        super().__init__()
        from dr2net_mm.models import Dr2NetSwin
        torch.manual_seed(0)
        self.backbone = Dr2NetSwin(pretrain_img_size=32, embed_dims=16, depths=(2, 2),
                                   num_heads=(1, 2), window_size=4, strides=(4, 2),
                                   out_indices=(1, ), drop_path_rate=0.0)
        self.backbone.init_weights()
        self.head = nn.Linear(32, 3)

    def forward(self, x):
        return self.head(self.backbone(x)[-1].mean((2, 3)))

    @staticmethod
    def inputs():
        return torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))


NETS = {'sequence': SequenceNet, 'swin': SwinNet}


def inner_units(model):
    """Modules inside the stages: every branch of the sequence, every SwinBlock."""
    if isinstance(model, SequenceNet):
        return list(model.stage.functions)
    return [block for stage in model.backbone.stages for block in stage.blocks]


def loss_of(model, x):
    return model(x).square().mean()


def gradients(model, batches):
    """Two forward/backward passes (the second accumulates), the loss of each averaged over
    ``batches``; the full gradient of every parameter."""
    for _ in range(2):
        for x in batches:
            (loss_of(model, x) / len(batches)).backward()
    return {n: p.grad.full_tensor() if hasattr(p.grad, 'full_tensor') else p.grad
            for n, p in model.named_parameters()}


def _worker(rank, init_file, out):
    import torch.distributed as tdist
    from torch.distributed.device_mesh import init_device_mesh
    torch.set_num_threads(1)
    tdist.init_process_group('gloo', init_method=f'file://{init_file}', rank=rank,
                             world_size=WORLD)
    try:
        fully_shard = fully_shard_api()
        mesh = init_device_mesh('cpu', (WORLD, ))
        results = {}
        for net, wrap in [(n, w) for n in NETS for w in ('whole', 'stages', 'inner')]:
            model = NETS[net]().train()
            if wrap == 'stages':
                fully_shard_stages(model, mesh=mesh)
            else:
                for unit in inner_units(model) if wrap == 'inner' else []:
                    fully_shard(unit, mesh=mesh)
                fully_shard(model, mesh=mesh)
            try:
                results[net, wrap] = gradients(model, [NETS[net].inputs().chunk(WORLD)[rank]])
            except RuntimeError as error:
                results[net, wrap] = str(error)
            # Both ranks finish each case (a refused case may leave collectives in flight) before
            # the next; neither leaves while the other still talks to it (gloo aborts the process
            # on a peer's closed connection: CI lost rank 1 to SIGABRT once).
            del model
            tdist.barrier()
        if rank == 0:
            torch.save(results, out)
        tdist.barrier()
    finally:
        tdist.destroy_process_group()


@pytest.fixture(scope='module')
def fsdp_results(tmp_path_factory):
    root = tmp_path_factory.mktemp('fsdp')
    mp.spawn(_worker, args=(str(root / 'init'), str(root / 'rank0.pt')), nprocs=WORLD, join=True)
    return torch.load(root / 'rank0.pt', weights_only=False)


def one_process_gradients(net):
    return gradients(NETS[net]().train(), list(NETS[net].inputs().chunk(WORLD)))


def assert_same_gradients(got, want):
    assert sorted(got) == sorted(want)
    for name, g in want.items():
        scale = g.abs().max().item()
        assert scale > 0, name
        assert (got[name] - g).abs().max().item() <= TOLERANCE * scale, name


@needs_fsdp2
@pytest.mark.parametrize('net', sorted(NETS))
@pytest.mark.parametrize('wrap', ['whole', 'stages'])
def test_fsdp2_two_processes_give_the_gradients_of_one(fsdp_results, net, wrap):
    got = fsdp_results[net, wrap]
    assert not isinstance(got, str), got
    assert_same_gradients(got, one_process_gradients(net))


@needs_fsdp2
@pytest.mark.parametrize('net', sorted(NETS))
def test_fsdp2_unit_inside_a_stage_is_refused_naming_what_to_wrap(fsdp_results, net):
    message = fsdp_results[net, 'inner']
    assert isinstance(message, str), 'a unit per block/branch must not train'
    assert 'would run with the sharded parameter' in message
    assert 'an FSDP2 unit (fully_shard) sits inside this reversible stage' in message
    assert 'fully_shard_stages(model)' in message


def test_stage_units_are_the_smallest_modules_holding_whole_stages():
    swin = SwinNet()
    assert [id(u) for u in stage_units(swin)] == [id(s) for s in swin.backbone.stages]
    seq = SequenceNet()
    assert [id(u) for u in stage_units(seq)] == [id(seq.stage)]
    assert [id(u) for u in stage_units(seq.stage)] == [id(seq.stage)]
    assert stage_units(nn.Linear(2, 2)) == []


def test_stage_units_skip_containers_without_forward():
    class Holder(nn.Module):  # the branches and the stage in a ModuleList, run by the holder
        def __init__(self):
            super().__init__()
            branches = [MLPBranch(8), MLPBranch(8)]
            self.layers = nn.ModuleList(branches + [ReversibleSequence(branches,
                                                                       register_functions=False)])

        def forward(self, x):
            return self.layers[2](x)

    holder = Holder()
    assert [id(u) for u in stage_units(holder)] == [id(holder)]


def test_stage_units_needs_the_model_that_owns_the_branches():
    sequence = SwinNet().backbone.stages[0].sequence  # the blocks live beside it, in the stage
    with pytest.raises(ValueError, match='are not submodules of the given ReversibleSequence'):
        stage_units(sequence)


# FSDP1 and DeepSpeed need a GPU: a warning at wrap time says what is verified ----------------------
@pytest.fixture
def logged(monkeypatch):
    import dr2net_mm.distributed as distributed
    messages = []
    monkeypatch.setattr(distributed, 'print_log', lambda msg, **kwargs: messages.append(msg))
    return messages


def test_fsdp1_wrapper_warns_what_is_verified_before_it_wraps(logged):
    from mmengine.model import MMFullyShardedDataParallel
    for model in (nn.Linear(2, 2), SequenceNet()):
        try:
            MMFullyShardedDataParallel(module=model)
        except (RuntimeError, ValueError):  # FSDP1 needs an accelerator and a process group
            pass
    assert len(logged) == 1  # the model with a reversible stage only
    message = logged[0]
    assert message.startswith('dr2net_mm: FSDP1 (MMFullyShardedDataParallel, FSDPStrategy) wraps '
                              'SequenceNet with 1 reversible stage(s). Not verified: it needs a GPU')
    assert 'Verified (CPU, 2 gloo processes' in message and 'DDP' in message
    assert 'fully_shard_stages' in message


def test_deepspeed_wrapper_warns_what_is_verified(logged):
    from types import SimpleNamespace

    from mmengine._strategy.deepspeed import MMDeepSpeedEngineWrapper
    wrapper = MMDeepSpeedEngineWrapper(model=SimpleNamespace(module=SwinNet()), inputs_to_half=None)
    assert isinstance(wrapper.model.module, SwinNet)  # wrapped as before
    MMDeepSpeedEngineWrapper(model=SimpleNamespace(module=nn.Linear(2, 2)))
    assert len(logged) == 1
    assert logged[0].startswith('dr2net_mm: DeepSpeed (DeepSpeedStrategy) wraps SwinNet with 2 '
                                'reversible stage(s). Not verified')


def test_wrap_warnings_are_installed_once():
    from mmengine.model import MMFullyShardedDataParallel

    import dr2net_mm.distributed as distributed
    init = MMFullyShardedDataParallel.__init__
    distributed.install()
    assert MMFullyShardedDataParallel.__init__ is init and init._dr2net_warns
