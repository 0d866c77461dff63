"""Exact streams (``stream_dtype='exact'``): fixed point, so that Eq. 2 rebuilds Eq. 1 bit for bit.

With ``X = round(x·2^40)`` and ``β = n/d`` (``fixed_point``), :class:`ExactStreams` computes::

    X_i = round(f·2^40) + round(α·X_{i-1}) + Y_{i-1}     Y_i = β ⊗ X_{i-1}
    X_0 = round(x_0·2^40)                                 Y_0 = floor(X_0·β)

and F_i gets ``fp(X·2^-40)`` in the model dtype. Sums of grid values are exact and ``round(α·X)`` is
recomputed from an exactly rebuilt ``X``, so Eq. 2 undoes all of it, given an exactly invertible
``β ⊗``.

The exact product ``β ⊗`` (:class:`BetaBuffer`). ``y_i = β·x_{i-1}`` contracts: from ``round(β·X)``
alone ``X`` cannot be recovered. Each element carries an integer ``B >= 0`` (its *buffer*, 0 at the
start of a segment), and one product maps (X, B) to (Y, B') bijectively::

    X = q·d + r                 (0 <= r < d)        push r onto the buffer ...
    B·d + r = B'·n + s          (0 <= s < n)        ... and pop the digit that a product by n needs
    Y = q·n + s

so ``|Y − β·X| < n`` grid units; the inverse is the same exchange with n and d swapped (``q, s =
divmod(Y, n)``; ``B'·n + s = B·d + r``; ``X = q·d + r``). The buffer grows by ``log2(d/n) =
log2(1/β)`` bits per product, the information that β discards. Its bound ``B_max`` after m products
follows ``B_max' = floor(((B_max + 1)·d − 1)/n)``, so the number of limbs is known in advance (no host
sync). Since ``B_max + 1 <= (m + 1)·(d/n)^m``, a buffer needs at most ``m·log2(1/β) + log2(m + 1)``
bits: the information bound plus a few bits (relatively many only for β near 1, where the bound is
small).

Representation. ``B`` is an unsigned big integer in little-endian 31-bit limbs, each an int32 tensor of
the stream's shape (31 bits keep every limb and every per-limb product positive in int64 arithmetic).
:meth:`BetaBuffer.pack` stores the full limbs as they are and the top limb with exactly its bound's
bit count (byte planes plus 4-, 2- and 1-bit pieces packed several to a byte), so a kept buffer costs
``32·(limbs − 1) + bits(top)`` bits per element for ``bits(B_max) = 31·(limbs − 1) + bits(top)``.
"""
from typing import Dict, List, Optional, Tuple

import torch
from torch import Tensor

from .fixed_point import (FRACTION_BITS, MAX_VALUE, SCALE, beta_fraction, grid_parts, magnitude,
                          scale_floor)

LIMB_BITS = 31
_LIMB_MASK = (1 << LIMB_BITS) - 1


def _limbs_for(bound: int) -> int:
    return max(1, -(-bound.bit_length() // LIMB_BITS))


def next_bound(bound: int, numerator: int, denominator: int) -> int:
    """The largest buffer value after one product by ``n/d`` from buffer values ``<= bound``."""
    return ((bound + 1) * denominator - 1) // numerator


def buffer_bits(numerator: int, denominator: int, multiplications: int) -> int:
    """Bits per element that a buffer needs after ``multiplications`` products by ``n/d``."""
    bound = 0
    for _ in range(multiplications):
        bound = next_bound(bound, numerator, denominator)
    return bound.bit_length()


class StreamOverflow(OverflowError):
    """A forward's exact streams left their range ``|x| < 2^21`` (``ExactStreams.finish_forward``)."""


class BetaBuffer:
    """The buffers of one tensor's elements for repeated exact products by ``β = numerator/denominator``.

    ``scale(X)`` returns ``Y = β ⊗ X`` and records the discarded bits; ``scale(Y, inverse=True)``
    returns ``X`` and removes them (last in, first out). ``bounds`` lists the bound after every
    product so far.
    """

    def __init__(self, numerator: int, denominator: int, shape: torch.Size, device: torch.device):
        if not 0 < numerator <= denominator <= 1 << 24:
            raise ValueError(f'β = {numerator}/{denominator} must be a fraction in (0, 1] with a '
                             'denominator <= 2^24')
        self.numerator, self.denominator = numerator, denominator
        self.shape = torch.Size(shape)
        self.device = device
        self.limbs: List[Tensor] = []  # int32, values in [0, 2^31)
        self.bounds: List[int] = [0]

    def scale(self, fixed: Tensor, inverse: bool = False) -> Tensor:
        """``β ⊗ X`` as a new tensor, recording the discarded bits; ``inverse``: the ``X`` that ``β ⊗``
        turned into ``fixed`` (the last product not yet undone), in ``fixed``'s memory. Both are one
        exchange with the buffer, with ``(a, b) = (d, n)``, or ``(n, d)`` for the inverse::

            value = q·a + r        B·a + r = B'·b + s        result = q·b + s
        """
        n, d = self.numerator, self.denominator
        if n == d:
            return fixed.clone()
        if inverse and len(self.bounds) < 2:
            raise RuntimeError('BetaBuffer.scale(inverse=True): every product has been undone already')
        if inverse:
            self.bounds.pop()
        into, out_of = (n, d) if inverse else (d, n)
        largest = (self.bounds[-1] + 1) * d - 1  # of B·a + r, in both directions
        pushed_limbs = max(1, -(-largest.bit_length() // LIMB_BITS))
        if not inverse:
            self.bounds.append(next_bound(self.bounds[-1], n, d))
        value = fixed if inverse else fixed.clone()
        carry = torch.remainder(value, into)  # r, pushed: B <- B·a + r (limb by limb, int64 values)
        quotient = value.sub_(carry).div_(into, rounding_mode='floor')
        for k in range(pushed_limbs):
            current = (carry if k >= len(self.limbs)
                       else self.limbs[k].to(torch.int64).mul_(into).add_(carry))
            low = current.to(torch.int32).bitwise_and_(_LIMB_MASK)  # int64 -> int32 wraps
            if k < len(self.limbs):
                self.limbs[k] = low
            else:
                self.limbs.append(low)
            carry = current.bitwise_right_shift_(LIMB_BITS)
            del current, low
        digit = None  # s, popped: s = B mod b, B <- B div b (from the top limb down)
        for k in reversed(range(len(self.limbs))):
            current = self.limbs[k].to(torch.int64)
            if digit is not None:
                current.add_(digit.bitwise_left_shift_(LIMB_BITS))
            limb = torch.div(current, out_of, rounding_mode='floor')
            digit = current.sub_(limb, alpha=out_of)
            self.limbs[k] = limb.to(torch.int32)
            del limb
        del self.limbs[max(1, -(-self.bounds[-1].bit_length() // LIMB_BITS)):]  # the new bound's limbs
        return quotient.mul_(out_of).add_(digit)

    def is_empty(self) -> Tensor:
        """0-dim bool tensor: every element's buffer is 0 (true at the start of a segment)."""
        if not self.limbs:
            return torch.ones((), dtype=torch.bool, device=self.device)
        return torch.stack([limb.eq(0).all() for limb in self.limbs]).all()

    # --------------------------------------------------------------- keeping a buffer for backward
    def pack(self) -> Tuple[Tensor, ...]:
        """The buffer as tensors to save: the full limbs, then the top limb's bit pieces."""
        if not self.limbs:
            return ()
        top_bits = self.bounds[-1].bit_length() - LIMB_BITS * (len(self.limbs) - 1)
        return tuple(self.limbs[:-1]) + pack_bits(self.limbs[-1], top_bits)

    def unpack(self, packed: Tuple[Tensor, ...]) -> None:
        """Restore the limbs saved by :meth:`pack` (``bounds`` must be the packing buffer's)."""
        count = _limbs_for(self.bounds[-1]) if self.bounds[-1] else 0
        if count == 0:
            self.limbs = []
            return
        top_bits = self.bounds[-1].bit_length() - LIMB_BITS * (count - 1)
        top = unpack_bits(packed[count - 1:], top_bits, self.shape)
        self.limbs = [t.clone() for t in packed[:count - 1]] + [top]


def _pieces(bits: int) -> List[int]:
    """Widths that add up to ``bits``: whole bytes, then 4, 2 and 1 as needed."""
    return [8] * (bits // 8) + [w for w in (4, 2, 1) if bits % 8 & w]


def pack_bits(values: Tensor, bits: int) -> Tuple[Tensor, ...]:
    """Non-negative int32 ``values < 2^bits`` as uint8 tensors holding exactly ``bits`` bits per
    element (plus padding to a whole byte per piece)."""
    flat = values.reshape(-1)
    out, shift = [], 0
    for width in _pieces(bits):
        per_byte = 8 // width
        part = ((flat >> shift) & ((1 << width) - 1)).to(torch.uint8)
        part = torch.nn.functional.pad(part, (0, (-part.numel()) % per_byte)).view(-1, per_byte)
        packed = part[:, 0].clone()
        for j in range(1, per_byte):
            packed.bitwise_or_(part[:, j] << (width * j))
        out.append(packed)
        shift += width
    return tuple(out)


def unpack_bits(packed: Tuple[Tensor, ...], bits: int, shape: torch.Size) -> Tensor:
    """Inverse of :func:`pack_bits`: int32 values of ``shape``."""
    count = shape.numel()
    values = None
    shift = 0
    for width, piece in zip(_pieces(bits), packed):
        per_byte = 8 // width
        part = torch.stack([(piece >> (width * j)) & ((1 << width) - 1) for j in range(per_byte)], 1)
        part = part.reshape(-1)[:count].to(torch.int32) << shift
        values = part if values is None else values.bitwise_or_(part)
        shift += width
    return values.view(shape)


class ExactStreams:
    """Fixed-point streams with an exact β buffer: Eq. 2 rebuilds Eq. 1's streams bit for bit (module
    doc). Conversions between values and the grid run part by part over ``parts`` (set by
    :meth:`start`: a stage's streams all have its input's size). Every forward records the largest
    magnitude it met; :meth:`finish_forward` raises :class:`StreamOverflow` if a stream or branch
    output left ``|x| < 2^21`` and returns False if one was not finite (the stage then returns NaN,
    so the step is skipped like any non-finite step).
    """
    exact = True

    def __init__(self, alpha: float, beta: float, model_dtype: torch.dtype):
        self.alpha, self.beta_fraction = alpha, beta_fraction(beta)
        self.model_dtype = model_dtype
        self.buffer: Optional[BetaBuffer] = None
        self.segment_bounds: Dict[int, List[int]] = {}  # segment end position -> buffer bounds
        self.peak: Optional[Tensor] = None
        self.parts: List[slice] = []  # fixed_point.grid_parts of the stream size

    def _observe(self, value: Tensor) -> None:
        peak = magnitude(value)
        self.peak = peak if self.peak is None else torch.maximum(self.peak, peak)

    def to_fixed(self, values: Tensor) -> Tensor:
        """``round(values·2^40)`` as a new int64 tensor (round half to even). ``values`` must be finite
        with ``|values| < 2^21`` (see ``_observe``); others give meaningless integers, no error."""
        out = torch.empty(values.shape, dtype=torch.int64, device=values.device)
        flat, source = out.view(-1), values.reshape(-1)
        for part in self.parts:
            flat[part] = source[part].to(torch.float64, copy=True).mul_(SCALE).round_().to(torch.int64)
        return out

    def start(self, x0: Tensor) -> Tuple[Tensor, Tensor]:
        self.parts = grid_parts(x0.numel())
        self._observe(x0)
        x = self.to_fixed(x0)
        return x, self.initial_y(x)

    def initial_y(self, x: Tensor) -> Tensor:
        return scale_floor(x, *self.beta_fraction)

    def initial_y_residual(self, y: Tensor, x: Tensor) -> Tensor:
        return y.sub_(self.initial_y(x))

    def branch_input(self, x: Tensor, dtype: Optional[torch.dtype] = None) -> Tensor:
        """``X·2^-40`` in ``dtype`` (default: the model dtype), through float64: deterministic, within
        one ``dtype`` rounding of the exact value for float32 and narrower."""
        out = torch.empty(x.shape, dtype=dtype or self.model_dtype, device=x.device)
        flat, source = out.view(-1), x.view(-1)
        for part in self.parts:
            flat[part] = source[part].to(torch.float64).div_(SCALE)
        return out

    def next_x(self, f: Tensor, x: Tensor, y: Tensor) -> Tensor:
        """Eq. 1: ``X_i = round(f·2^40) + round(α·X_{i-1}) + Y_{i-1}``."""
        self._observe(f)
        x_new = self.to_fixed(f)
        if self.alpha != 0.0:
            flat, source = x_new.view(-1), x.view(-1)
            for part in self.parts:
                flat[part].add_(source[part].to(torch.float64).mul_(self.alpha).round_().to(torch.int64))
        x_new.add_(y)
        self._observe(x_new)
        return x_new

    def next_y(self, x: Tensor) -> Tensor:
        """Eq. 1: ``Y_i = β ⊗ X_{i-1}``."""
        if self.buffer is None:  # β = 0 (reference mode only)
            return torch.zeros_like(x)
        return self.buffer.scale(x)

    def undo_beta(self, y: Tensor) -> Tensor:
        """Eq. 2: ``X_{i-1}`` from ``Y_i = β ⊗ X_{i-1}``, in place on y."""
        return self.buffer.scale(y, inverse=True)

    def undo_step(self, x: Tensor, f: Tensor, x_prev: Tensor) -> Tensor:
        """Eq. 2: ``Y_{i-1} = X_i − round(f·2^40) − round(α·X_{i-1})``, in place on x."""
        flat, values, source = x.view(-1), f.reshape(-1), x_prev.view(-1)
        for part in self.parts:
            grid = values[part].to(torch.float64, copy=True).mul_(SCALE).round_().to(torch.int64)
            flat[part].sub_(grid)
            if self.alpha != 0.0:
                flat[part].sub_(source[part].to(torch.float64).mul_(self.alpha).round_().to(torch.int64))
        return x

    def output(self, x: Tensor) -> Tensor:
        return self.branch_input(x)

    def as_float64(self, stream: Tensor) -> Tensor:
        return self.branch_input(stream, torch.float64)

    def pack(self, x: Tensor, shared: Optional[Tensor]) -> Tuple[Tensor, ...]:
        """``X`` itself, or, where the stage returns ``shared = fp(X·2^-40)`` anyway, the int32
        remainder ``X − round(shared·2^40)`` (it fits for float32 outputs with ``|x| < 2^15``;
        checked here, one host sync per kept stream)."""
        if shared is not None:
            low = self.to_fixed(shared).neg_().add_(x)
            if float(magnitude(low)) * 2.0**FRACTION_BITS < 2.0**31:
                return (low.to(torch.int32), )
        return (x, )

    def unpack(self, packed: Tuple[Tensor, ...], shared: Optional[Tensor]) -> Tensor:
        if packed[0].dtype == torch.int32:
            return self.to_fixed(shared).add_(packed[0])
        return packed[0]

    def begin_segment(self, like: Tensor) -> None:
        if self.beta_fraction[0] > 0:
            self.buffer = BetaBuffer(*self.beta_fraction, like.shape, like.device)

    def end_segment(self, position: int) -> Tuple[Tensor, ...]:
        self.segment_bounds[position] = list(self.buffer.bounds)
        packed = self.buffer.pack()
        self.buffer = None
        return packed

    def load_segment(self, position: int, packed: Tuple[Tensor, ...], like: Tensor) -> None:
        self.buffer = BetaBuffer(*self.beta_fraction, like.shape, like.device)
        self.buffer.bounds = list(self.segment_bounds[position])
        self.buffer.unpack(packed)

    def segment_undone(self) -> Optional[Tensor]:
        """0-dim bool: the current segment's buffer is back to 0 (every product undone exactly)."""
        return self.buffer.is_empty()

    def finish_forward(self) -> bool:
        """Check the forward's range (one host sync per stage); False when it met a non-finite value."""
        peak = float(self.peak) if self.peak is not None else 0.0
        self.peak = None
        if peak != peak or peak == float('inf'):
            return False
        if peak >= MAX_VALUE:
            raise StreamOverflow(
                f'reversible stage: a stream or branch output reached |x| = {peak:.4g}, outside '
                f'the exact fixed-point streams\' range |x| < 2^21 = {MAX_VALUE:.4g}. Use '
                "stream_dtype='float64' for this model (with segment_size to bound the rounding), or "
                'find why its activations grow this large (learning rate, missing normalisation)')
        return True
