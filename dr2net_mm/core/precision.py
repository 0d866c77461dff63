"""How precise are reversible gradients? Compare them with ordinary autograd and with float64 truth.

For a model containing reversible stages, :func:`gradient_error` computes the gradients of one loss
three ways, all with the same random draws:

* ``reversible``: the model as configured, stages in reversible mode (activations rebuilt by Eq. 2);
* ``reference``: the same model with ordinary autograd (stages ``reversible=False``), i.e. what
  conventional training in the model's dtype computes;
* ``truth``: a float64 copy of the model (parameters, input, streams), ordinary autograd.

and reports relative errors ``‖g − g_ref‖ / ‖g_ref‖`` per parameter and for the input. The reference's
own error against the truth is the floor that ordinary training sits at; "as precise as fp32 training"
means ``reversible_vs_truth.worst ≤ c · reference_vs_truth.worst`` for a small c.
"""
import copy
import statistics
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Callable, Dict, Iterator, Optional, Sequence, Union

import torch
from torch import Tensor, nn

from .reversible import reversible_stages, set_reversible, set_stream_dtype

Outputs = Union[Tensor, Sequence[Tensor]]


def relative_error(value: Tensor, truth: Tensor) -> float:
    """``‖value − truth‖ / ‖truth‖`` computed in float64 (0 when both are zero)."""
    value, truth = value.detach().double(), truth.detach().double()
    denom = torch.linalg.vector_norm(truth).item()
    num = torch.linalg.vector_norm(value - truth).item()
    return num / denom if denom > 0 else (0.0 if num == 0 else float('inf'))


@dataclass
class ErrorSummary:
    """Relative gradient errors of one comparison."""
    max: float  # worst parameter
    median: float  # median over parameters
    input: Optional[float]  # the input's gradient (None when the input has none)
    per_parameter: Dict[str, float] = field(default_factory=dict)

    @property
    def worst(self) -> float:
        """The largest error over parameters and input."""
        return max(self.max, self.input if self.input is not None else 0.0)

    @staticmethod
    def of(grads: Dict[str, Tensor], truth: Dict[str, Tensor]) -> 'ErrorSummary':
        errors = {name: relative_error(grads[name], truth[name]) for name in truth}
        params = {k: v for k, v in errors.items() if k != '<input>'}
        values = list(params.values()) or [0.0]
        return ErrorSummary(max=max(values), median=statistics.median(values),
                            input=errors.get('<input>'), per_parameter=params)


@dataclass
class GradientErrorReport:
    reversible_vs_reference: ErrorSummary
    reversible_vs_truth: ErrorSummary
    reference_vs_truth: ErrorSummary  # the floor of ordinary autograd in the model's dtype

    @property
    def ratio_to_floor(self) -> float:
        """worst reversible error against truth / worst reference error against truth."""
        floor = self.reference_vs_truth.worst
        return self.reversible_vs_truth.worst / floor if floor > 0 else float('inf')

    def as_dict(self, per_parameter: bool = False) -> dict:
        out = {}
        for key in ('reversible_vs_reference', 'reversible_vs_truth', 'reference_vs_truth'):
            summary = asdict(getattr(self, key))
            if not per_parameter:
                summary.pop('per_parameter')
            summary['worst'] = getattr(self, key).worst
            out[key] = summary
        out['ratio_to_floor'] = self.ratio_to_floor
        return out


def weighted_sum_loss(seed: int = 0) -> Callable[[Outputs], Tensor]:
    """A loss ``Σ_k ⟨w_k, out_k⟩`` with fixed pseudo-random weights ``w_k`` (a plain sum would give
    zero gradients through normalisation layers)."""
    weights: Dict[tuple, Tensor] = {}

    def loss(outputs: Outputs) -> Tensor:
        outputs = [outputs] if isinstance(outputs, Tensor) else list(outputs)
        total = 0
        for k, out in enumerate(outputs):
            key = (k, tuple(out.shape))
            if key not in weights:
                gen = torch.Generator().manual_seed(seed + k)
                weights[key] = torch.randn(out.shape, generator=gen, dtype=torch.float64)
            total = total + (out * weights[key].to(out.device, out.dtype)).sum()
        return total

    return loss


@contextmanager
def same_random_draws_in_float64() -> Iterator[None]:
    """Inside the block, random tensors asked for in float64 (``torch.rand``/``torch.rand_like``) are
    drawn in float32 and cast. ``torch.rand`` consumes the generator differently per dtype, so without
    this a float64 copy of a model (mmcv's DropPath draws ``torch.rand(dtype=x.dtype)``) would drop
    other branches than the float32 model; ``bernoulli_`` (torch dropout, timm DropPath) already
    agrees across dtypes."""
    rand, rand_like = torch.rand, torch.rand_like

    def rand_f32(*size, dtype=None, **kwargs):
        if dtype == torch.float64:
            return rand(*size, dtype=torch.float32, **kwargs).to(torch.float64)
        return rand(*size, dtype=dtype, **kwargs)

    def rand_like_f32(tensor, *, dtype=None, **kwargs):
        if (dtype or tensor.dtype) == torch.float64:
            return rand_like(tensor, dtype=torch.float32, **kwargs).to(torch.float64)
        return rand_like(tensor, dtype=dtype, **kwargs)

    torch.rand, torch.rand_like = rand_f32, rand_like_f32
    try:
        yield
    finally:
        torch.rand, torch.rand_like = rand, rand_like


def compute_gradients(model: nn.Module, x: Tensor, loss_fn: Callable[[Outputs], Tensor],
               seed: int) -> Dict[str, Tensor]:
    """Gradients of ``loss_fn(model(x))`` for the input (key ``'<input>'``) and every trainable
    parameter (by name), with ``torch.manual_seed(seed)`` inside ``fork_rng`` (same random draws on
    every call, in float64 too: :func:`same_random_draws_in_float64`; the caller's RNG state is
    unchanged). ``.grad`` fields are not touched."""
    x = x.detach().clone().requires_grad_(True)
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    with torch.random.fork_rng(devices=[x.device.index or 0] if x.is_cuda else []), \
            same_random_draws_in_float64():
        torch.manual_seed(seed)
        loss = loss_fn(model(x))
        grads = torch.autograd.grad(loss, [x] + [p for _, p in named], allow_unused=True)
    out = {'<input>': grads[0]}
    for (name, p), g in zip(named, grads[1:]):
        out[name] = g if g is not None else torch.zeros_like(p)
    return out


def gradient_error(model: nn.Module, x: Tensor,
                   loss_fn: Optional[Callable[[Outputs], Tensor]] = None,
                   seed: int = 0) -> GradientErrorReport:
    """Gradient errors of the reversible backward of ``model`` at input ``x`` (see module doc).

    The model is used as it is (train mode, coefficients, stream dtype); its stages' ``reversible``
    flags are restored afterwards and its ``.grad`` fields are not touched. Random layers draw the same
    masks in all three runs (each starts from ``torch.manual_seed(seed)`` inside ``fork_rng``, so the
    caller's RNG state is unchanged).
    """
    if not reversible_stages(model):
        raise ValueError('gradient_error needs a model with at least one ReversibleSequence stage')
    loss_fn = loss_fn or weighted_sum_loss(seed)
    flags = [(stage, stage.reversible) for stage in reversible_stages(model)]
    try:
        set_reversible(model, True)
        reversible = compute_gradients(model, x, loss_fn, seed)
        set_reversible(model, False)
        reference = compute_gradients(model, x, loss_fn, seed)
    finally:
        for stage, flag in flags:
            stage.reversible = flag
    truth_model = copy.deepcopy(model).double()
    set_stream_dtype(truth_model, torch.float64)
    set_reversible(truth_model, False)
    truth = compute_gradients(truth_model, x.double(), loss_fn, seed)
    return GradientErrorReport(
        reversible_vs_reference=ErrorSummary.of(reversible, reference),
        reversible_vs_truth=ErrorSummary.of(reversible, truth),
        reference_vs_truth=ErrorSummary.of(reference, truth))
