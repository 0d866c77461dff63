"""Exact multiplication of a fixed-point stream by β < 1: the bits it discards go to a buffer.

``y_i = β·x_{i-1}`` contracts: from ``round(β·X)`` alone ``X`` cannot be recovered. With ``β = n/d``
(``fixed_point.beta_fraction``) each element carries an integer ``B >= 0`` (its *buffer*, 0 at the start
of a segment), and one multiplication maps (X, B) to (Y, B') bijectively::

    X = q·d + r                 (0 <= r < d)        push r onto the buffer ...
    B·d + r = B'·n + s          (0 <= s < n)        ... and pop the digit that a product by n needs
    Y = q·n + s

so ``|Y − β·X| < n`` grid units, and :meth:`BetaBuffer.divide` undoes it step by step (``q, s =
divmod(Y, n)``; ``B·n + s = B_old·d + r``; ``X = q·d + r``). The buffer grows by ``log2(d/n) =
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
from typing import List, Tuple

import torch
from torch import Tensor

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


class BetaBuffer:
    """The buffers of one tensor's elements for repeated exact products by ``β = numerator/denominator``.

    ``multiply(X)`` returns ``Y`` and records the discarded bits; ``divide(Y)`` returns ``X`` and
    removes them (last in, first out). ``bounds`` lists the bound after every multiplication so far.
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

    # --------------------------------------------------------------- limb arithmetic (int64 values)
    def _limb(self, k: int) -> Tensor:
        return self.limbs[k].to(torch.int64)

    def _divide_small(self, divisor: int) -> Tensor:
        """B <- B div divisor; returns B mod divisor (divisor <= 2^24: every step fits int64)."""
        remainder = None
        for k in reversed(range(len(self.limbs))):
            current = self._limb(k)
            if remainder is not None:
                current.add_(remainder.bitwise_left_shift_(LIMB_BITS))
            quotient = torch.div(current, divisor, rounding_mode='floor')
            remainder = current.sub_(quotient, alpha=divisor)
            self.limbs[k] = quotient.to(torch.int32)
            del quotient
        if remainder is None:
            return torch.zeros(self.shape, dtype=torch.int64, device=self.device)
        return remainder

    def _multiply_small(self, factor: int, addend: List[Tensor], count: int) -> None:
        """B <- B·factor + a (0 <= a < factor <= 2^24), on ``count`` limbs. ``addend`` is ``[a]``: the
        list is emptied, so that ``a`` is freed as soon as the carry replaces it."""
        carry = addend.pop()
        for k in range(count):
            current = carry if k >= len(self.limbs) else self._limb(k).mul_(factor).add_(carry)
            low = current.to(torch.int32).bitwise_and_(_LIMB_MASK)  # int64 -> int32 wraps
            if k < len(self.limbs):
                self.limbs[k] = low
            else:
                self.limbs.append(low)
            carry = current.bitwise_right_shift_(LIMB_BITS)
            del current, low

    def _trim(self) -> None:
        del self.limbs[_limbs_for(self.bounds[-1]):]

    # --------------------------------------------------------------- the exact product and its inverse
    def multiply(self, fixed: Tensor) -> Tensor:
        """``Y ≈ X·β`` (``q·n + s``, see the module doc); records the discarded bits."""
        n, d = self.numerator, self.denominator
        if n == d:
            return fixed.clone()
        quotient = torch.div(fixed, d, rounding_mode='floor')
        remainder = [(quotient * -d).add_(fixed)]  # handed over: it becomes the carry
        self._multiply_small(d, remainder, _limbs_for((self.bounds[-1] + 1) * d - 1))
        digit = self._divide_small(n)
        self.bounds.append(next_bound(self.bounds[-1], n, d))
        self._trim()
        return quotient.mul_(n).add_(digit)

    def divide(self, fixed: Tensor) -> Tensor:
        """The ``X`` that :meth:`multiply` turned into ``fixed`` (the last product not yet undone),
        in ``fixed``'s buffer."""
        n, d = self.numerator, self.denominator
        if n == d:
            return fixed.clone()
        if len(self.bounds) < 2:
            raise RuntimeError('BetaBuffer.divide: every multiplication has been undone already')
        digit = torch.remainder(fixed, n)
        quotient = fixed.sub_(digit).div_(n, rounding_mode='floor')
        self.bounds.pop()
        digit = [digit]  # handed over: it becomes the carry
        self._multiply_small(n, digit, _limbs_for((self.bounds[-1] + 1) * d - 1))
        low = self._divide_small(d)
        self._trim()
        return quotient.mul_(d).add_(low)

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
