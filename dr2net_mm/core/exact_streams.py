"""Exact streams (``stream_dtype='exact'``): fixed point, so that Eq. 2 rebuilds Eq. 1 bit for bit.

With ``X = round(x·2^40)`` and ``β = n/d`` (``fixed_point``), :class:`ExactStreams` computes::

    X_i = T(f, X_{i-1}) + Y_{i-1}        Y_i = β ⊗ X_{i-1}
    X_0 = round(x_0·2^40)                 Y_0 = β ⊗ X_0

where ``T(f, X) = round(f·2^40) + X`` at α = 1 (``round(f·2^40)`` at α = 0) and
``round(f·2^40 + α·X)`` in float64 otherwise, and F_i gets ``fp(X·2^-40)`` in the model dtype.
Sums of grid values are exact and ``T`` is recomputed from the same ``f`` and an exactly rebuilt
``X``, so Eq. 2 undoes all of it, given an exactly invertible ``β ⊗``.

The exact product ``β ⊗`` (:class:`BetaBuffer`). ``y_i = β·x_{i-1}`` contracts: from ``round(β·X)``
alone ``X`` cannot be recovered. Each element carries an integer ``B >= 0`` (its *buffer*, 0 at the
start of a segment), and one product maps (X, B) to (Y, B') bijectively::

    X = q·d + r                 (0 <= r < d)        push r onto the buffer ...
    B·d + r = B'·n + s          (0 <= s < n)        ... and pop the digit that a product by n needs
    Y = q·n + s

so ``|Y − β·X| < n`` grid units; the inverse is the same exchange with n and d swapped (``q, s =
divmod(Y, n)``; ``B'·n + s = B·d + r``; ``X = q·d + r``). The buffer grows by ``log2(d/n) =
log2(1/β)`` bits per product, the information that β discards; its bound after m products follows
``B_max' = floor(((B_max + 1)·d − 1)/n)`` (``bounds``), known in advance: no host sync.

Representation. The buffer is one int64 *state* kept below 2^53, so that every division by n or d
is a float64 estimate plus one exact correction (an int64 division is several times slower on a
CPU): before a product that could take the state past 2^53, its low 31 bits are *emitted* as an
int32 limb, which stays untouched until the inverse takes it back (``_layout``: when, a function of
n, d and the product count only). So a product costs a few passes over the stream, whatever the
buffer's size. A kept buffer is its limbs plus the state with exactly its bound's bit count (byte
planes plus 4-, 2- and 1-bit pieces packed several to a byte): about ``m·log2(1/β)`` bits plus one
per limb.

Range checks without host syncs: NOTE [ Deferred range checks ].
"""
import math
import weakref
from functools import lru_cache, partialmethod
from typing import Dict, List, Optional, Tuple

import torch
from torch import Tensor

from .fixed_point import MAX_VALUE, SCALE, beta_fraction, grid_parts, magnitude

LIMB_BITS = 31
_LIMB_MASK = (1 << LIMB_BITS) - 1


def _low_bits_(limbs: Tensor) -> Tensor:
    """``limbs &= 2^31 - 1`` in place. The mask is a 0-dim tensor, not a Python int: torch 2.1
    rejects an int operand of ``bitwise_and_`` under a dispatch mode (fake tensors, sync counters)."""
    return limbs.bitwise_and_(torch.tensor(_LIMB_MASK, dtype=limbs.dtype))
_EXACT_FLOAT = 1 << 53  # integers below this are exact in float64, and so are their quotients


def next_bound(bound: int, numerator: int, denominator: int) -> int:
    """The largest buffer value after one product by ``n/d`` from buffer values ``<= bound``."""
    return ((bound + 1) * denominator - 1) // numerator


def buffer_bits(numerator: int, denominator: int, multiplications: int) -> int:
    """Bits per element of information a buffer holds after ``multiplications`` products."""
    bound = 0
    for _ in range(multiplications):
        bound = next_bound(bound, numerator, denominator)
    return bound.bit_length()


@lru_cache(maxsize=None)
def _layout(numerator: int, denominator: int, products: int) -> Tuple[Tuple[int, ...],
                                                                      Tuple[bool, ...]]:
    """The state's bound after each of ``products`` products (from 0) and whether a limb was
    emitted before each: emit when ``state·d + r`` could reach 2^53."""
    if products == 0:
        return (0, ), ()
    bounds, emits = _layout(numerator, denominator, products - 1)
    state = bounds[-1]
    emit = (state + 1) * denominator + 2 * denominator > _EXACT_FLOAT
    if emit:
        state >>= LIMB_BITS
    return bounds + (next_bound(state, numerator, denominator), ), emits + (emit, )


class StreamOverflow(OverflowError):
    """A forward's exact streams left their range (NOTE [ Deferred range checks ])."""


class BetaBuffer:
    """The buffers of one tensor's elements for repeated exact products by ``β = numerator/denominator``.

    ``scale(X)`` returns ``Y = β ⊗ X`` and records the discarded bits; ``scale(Y, inverse=True)``
    returns ``X`` and removes them (last in, first out). ``bounds`` lists the information bound
    after every product so far; ``state`` and ``limbs`` hold the bits (module doc).
    """

    def __init__(self, numerator: int, denominator: int, shape: torch.Size, device: torch.device):
        if not 0 < numerator <= denominator <= 1 << 24:
            raise ValueError(f'β = {numerator}/{denominator} must be a fraction in (0, 1] with a '
                             'denominator <= 2^24')
        self.numerator, self.denominator = numerator, denominator
        self.shape = torch.Size(shape)
        self.device = device
        self.parts = grid_parts(self.shape.numel())
        self.state: Optional[Tensor] = None  # int64, < 2^53; None: 0
        self.limbs: List[Tensor] = []  # int32, values in [0, 2^31), emitted by the state
        self.bounds: List[int] = [0]

    def scale(self, fixed: Tensor, inverse: bool = False, in_place: bool = False) -> Tensor:
        """``β ⊗ X`` as a new tensor (``in_place``: in ``fixed``'s memory), recording the discarded
        bits; ``inverse``: the ``X`` that ``β ⊗`` turned into ``fixed`` (the last product not yet
        undone), in ``fixed``'s memory. Both are one exchange with the buffer, with
        ``(a, b) = (d, n)``, or ``(n, d)`` for the inverse::

            value = q·a + r        B·a + r = B'·b + s        result = q·b + s

        Each division is exact: of ``value`` (up to 2^62), a float64 estimate and a correction by
        the small remainder's own estimate; of ``t`` (below 2^53), the float64 quotient's floor."""
        n, d = self.numerator, self.denominator
        if n == d:
            return fixed.clone()
        if inverse and len(self.bounds) < 2:
            raise RuntimeError('BetaBuffer.scale(inverse=True): every product has been undone already')
        products = len(self.bounds) - 1 + (0 if inverse else 1)
        emit = _layout(n, d, products)[1][-1]  # a limb emitted before this product
        if inverse:
            self.bounds.pop()
        else:
            self.bounds.append(next_bound(self.bounds[-1], n, d))
        a, b = (n, d) if inverse else (d, n)
        if self.state is None:
            self.state = torch.zeros(self.shape, dtype=torch.int64, device=self.device)
        result = fixed if inverse or in_place else torch.empty_like(fixed)
        limb = (self.limbs.pop() if inverse else torch.empty(self.shape, dtype=torch.int32,
                                                             device=self.device)) if emit else None
        values, results, states = fixed.view(-1), result.view(-1), self.state.view(-1)
        size = self.parts[0].stop - self.parts[0].start
        rests, quotients, fixes, estimates = (
            torch.empty(size, dtype=dtype, device=self.device)
            for dtype in (torch.int64, torch.int64, torch.int64, torch.float64))
        for part in self.parts:
            value, out, state = values[part], results[part], states[part]
            count = value.numel()
            rest, quotient, fix, estimate = (t[:count]
                                             for t in (rests, quotients, fixes, estimates))
            if emit and not inverse:  # state = state'·2^31 + limb (exact in float64: < 2^53)
                limb_part = limb.view(-1)[part]
                _low_bits_(limb_part.copy_(state))  # int64 -> int32 keeps the low bits
                estimate.copy_(state.sub_(limb_part)).mul_(2.0**-LIMB_BITS)
                state.copy_(estimate)
            if a > 1:  # value = quotient·a + rest: a float64 estimate (off by < 2^11), corrected
                if b == 1 and result is not fixed:  # (b = 1: the result is the quotient)
                    quotient = out
                estimate.copy_(value).mul_(1 / a).floor_()
                quotient.copy_(estimate)
                torch.sub(value, quotient, alpha=a, out=rest)
                estimate.copy_(rest).add_(0.5).mul_(1 / a).floor_()  # exact: |rest| < 2^11 + 2a
                quotient.add_(fix.copy_(estimate))
                rest.sub_(fix, alpha=a)
                if b == 1:  # B' = B·a + rest
                    torch.add(rest, state, alpha=a, out=state)
                    if quotient is not out:
                        out.copy_(quotient)
                    continue
                rest.add_(state, alpha=a)  # t = B·a + rest
            else:  # a = 1: quotient = value, t = B
                quotient = value
                rest.copy_(state)
            # t = B'·b + s, exactly in float64 (t + b <= 2^53: the layout emits limbs before)
            state.copy_(estimate.copy_(rest).div_(b).floor_())
            rest.sub_(state, alpha=b)
            torch.add(rest, quotient, alpha=b, out=out)  # result = quotient·b + s
            if emit and inverse:
                state.mul_(1 << LIMB_BITS).add_(limb.view(-1)[part])
        if emit and not inverse:
            self.limbs.append(limb)
        return result

    def is_empty(self) -> Tensor:
        """0-dim bool tensor: every element's buffer is 0 (true at the start of a segment)."""
        if self.state is None:
            return torch.ones((), dtype=torch.bool, device=self.device)
        # (limbs remain only while products remain to undo)
        return self.state.eq(0).all() & (len(self.limbs) == 0)

    # --------------------------------------------------------------- keeping a buffer for backward
    def pack(self) -> Tuple[Tensor, ...]:
        """The buffer as tensors to save: the limbs, then the state's bit pieces."""
        bits = _layout(self.numerator, self.denominator, len(self.bounds) - 1)[0][-1].bit_length()
        if bits == 0 or self.state is None:
            return tuple(self.limbs)
        low = _low_bits_(self.state.to(torch.int32))
        if bits <= LIMB_BITS:
            return tuple(self.limbs) + pack_bits(low, bits)
        high = self.state.sub(low).to(torch.float64).mul_(2.0**-LIMB_BITS).to(torch.int32)
        return tuple(self.limbs) + (low, ) + pack_bits(high, bits - LIMB_BITS)

    def unpack(self, packed: Tuple[Tensor, ...], consume: bool = False) -> None:
        """Restore the buffer saved by :meth:`pack` (``bounds`` must be the packing buffer's); its
        limbs are copies, or with ``consume`` the packed tensors themselves."""
        state_bounds, emits = _layout(self.numerator, self.denominator, len(self.bounds) - 1)
        count, bits = sum(emits), state_bounds[-1].bit_length()
        self.limbs = list(packed[:count]) if consume else [t.clone() for t in packed[:count]]
        if bits == 0:
            self.state = None
            return
        low = packed[count] if bits > LIMB_BITS else None
        pieces = packed[count + 1:] if low is not None else packed[count:]
        state = unpack_bits(pieces, bits - (LIMB_BITS if low is not None else 0), self.shape)
        state = state.to(torch.int64)
        self.state = state if low is None else state.mul_(1 << LIMB_BITS).add_(low)


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


# NOTE [ Deferred range checks ]
#
# A stream or branch output that leaves |x| < 2^21 makes the integers wrap: the forward's outputs
# and the backward's rebuild would be wrong. Every forward records the largest magnitude it met in a
# 0-dim device tensor (``ExactStreams.peak``); reading it is a host sync, which on a GPU stalls the
# pipeline. So a stage reads it eagerly (``finish_forward``) only until its first clean forward;
# after that the forward only *registers* the check (``_PENDING``) and its outputs carry the verdict
# on the device: they are computed as ``X·u`` with ``u = 2^-40`` in range, 0 out of range and NaN
# after a non-finite value (a finite, zero loss; or the NaN that makes the step skipped). One read
# of all pending checks at once (``resolve_checks``: one sync per step and device) happens at
#
#   * the first backward node of any stage (``check_forward``): an overflow raises there, before
#     any gradient reaches a parameter of that stage and before any optimizer step;
#   * the stage's next forward, if no backward came in between;
#   * a read of ``stage.overflow`` (``RecordedOverflow``; ``ReversibleGuardHook`` reads it after the
#     forward): a stage with ``record_overflow`` keeps the error there instead of raising it.
#
# The same read decides how kept streams are packed: x_i, kept against the stage output
# fp(X_i·2^-40), costs 4 bytes (its int32 remainder) only while |x_i| stays below a bound of the
# output dtype (``_narrow_limit``: 2^16 for float32, where the remainder fits exactly); a stage
# keeps it so on its first forward when |x_i| is below that bound, and later when the previous
# check saw |x_i| below a quarter of it, in full int64 otherwise. A step that still passes the
# bound cannot be rebuilt: its check raises, and the next step keeps that stream in full.


class _Memo:
    """What one stage's earlier checks found: whether it had a clean forward, and per kept stream
    (in forward order) whether the next forward may keep it as an int32 remainder."""

    def __init__(self):
        self.settled = False
        self.narrow: Dict[int, bool] = {}


_MEMOS: 'weakref.WeakKeyDictionary' = weakref.WeakKeyDictionary()
_PENDING: List['ExactStreams'] = []


def _narrow_limit(dtype: torch.dtype) -> float:
    """|x| below which ``X − round(fp(X·2^-40)·2^40)`` fits in int32, for output dtype ``dtype``.
    float32: 2^16, where X is rounded once to the nearest float32, 2^32 grid units apart at most,
    so the remainder is in [−2^31, 2^31] (``pack`` moves the one value past int32, a tie, to
    −2^31). Narrower dtypes round twice (via float32): 2^(fraction bits − 8), |remainder| < 2^31."""
    if dtype == torch.float64:
        return math.inf
    if dtype == torch.float32:
        return 2.0**16
    return 2.0**(round(-math.log2(torch.finfo(dtype).eps)) - 8)


def resolve_checks() -> None:
    """Read every pending range check (one host sync per device) and act on it: raise the first
    overflow of a stage that does not record it (NOTE [ Deferred range checks ])."""
    pending, _PENDING[:] = list(_PENDING), []
    by_device: Dict[torch.device, List[ExactStreams]] = {}
    for streams in pending:
        by_device.setdefault(streams.peak.device, []).append(streams)
    failures = []
    for group in by_device.values():
        values = torch.stack([t for s in group for t in s.check_tensors()]).tolist()
        for streams in group:
            count = len(streams.check_tensors())
            streams.judge(values[:count])
            values = values[count:]
            owner = streams.owner() if streams.owner is not None else None
            if streams.failure is not None and not (owner is not None and owner.record_overflow):
                failures.append(streams.failure)
            elif streams.failure is not None:
                owner.overflow = streams.failure
    if failures:
        raise failures[0]


class RecordedOverflow:
    """``stage.overflow``: the :class:`StreamOverflow` a stage with ``record_overflow`` recorded (or
    None), after reading the stage's pending checks."""

    def __get__(self, stage, owner=None):
        if stage is None:
            return self
        if any(s.owner is not None and s.owner() is stage for s in _PENDING):
            resolve_checks()
        return stage.__dict__.get('_recorded_overflow')

    def __set__(self, stage, value) -> None:
        stage.__dict__['_recorded_overflow'] = value


class ExactStreams:
    """Fixed-point streams with an exact β buffer: Eq. 2 rebuilds Eq. 1's streams bit for bit (module
    doc). Conversions run part by part over ``parts`` (set by :meth:`start`: a stage's streams all
    have its input's size), so that their temporaries stay small. Every forward records the largest
    magnitude it met and checks it (NOTE [ Deferred range checks ]): ``owner`` is the stage whose
    forward this is (None: check eagerly, at :meth:`finish_forward`).
    """
    exact = True

    def __init__(self, alpha: float, beta: float, model_dtype: torch.dtype, owner=None):
        self.alpha, self.beta_fraction = alpha, beta_fraction(beta)
        self.model_dtype = model_dtype
        self.buffer: Optional[BetaBuffer] = None
        self.segment_bounds: Dict[int, List[int]] = {}  # segment end position -> buffer bounds
        self.peak: Optional[Tensor] = None
        self.parts: List[slice] = []  # fixed_point.grid_parts of the stream size
        self.owner = weakref.ref(owner) if owner is not None else None
        if owner is not None and any(s.owner is not None and s.owner() is owner for s in _PENDING):
            resolve_checks()  # the stage's previous forward had no backward
        self.memo = _MEMOS.setdefault(owner, _Memo()) if owner is not None else _Memo()
        self.eager = not self.memo.settled
        self.kept: List[Tuple[Tensor, float, bool]] = []  # per kept x_i: peak, bound, int32 used
        self.failure: Optional[StreamOverflow] = None
        self._last_peak: Optional[Tensor] = None
        self._reusable = True  # the streams next_x/next_y get are nobody else's (not kept)

    def _observe(self, value: Tensor) -> Tensor:
        peak = magnitude(value)
        self.peak = peak if self.peak is None else torch.maximum(self.peak, peak)
        return peak

    def to_fixed(self, values: Tensor) -> Tensor:
        """``round(values·2^40)`` as a new int64 tensor (round half to even; exact: the product is
        exact in float32 for float32 values and in float64 for float64 ones). ``values`` must be
        finite with ``|values| < 2^21`` (see ``_observe``); others give meaningless integers."""
        out = torch.empty(values.shape, dtype=torch.int64, device=values.device)
        flat, source = out.view(-1), values.reshape(-1)
        wide = values.dtype == torch.float64
        scratch = torch.empty(self.parts[0].stop, dtype=torch.float64 if wide else torch.float32,
                              device=values.device)
        for part in self.parts:
            grid = scratch[:flat[part].numel()].copy_(source[part]).mul_(SCALE).round_()
            flat[part].copy_(grid)
        return out

    def start(self, x0: Tensor) -> Tuple[Tensor, Tensor]:
        self.parts = grid_parts(x0.numel())
        self._observe(x0)
        x = self.to_fixed(x0)
        return x, self.initial_y(x)

    def initial_y(self, x: Tensor) -> Tensor:
        """``Y_0 = β ⊗ X_0`` with an empty buffer, then dropped (y_0 is recomputed, not undone)."""
        if self.beta_fraction[0] == 0:
            return torch.zeros_like(x)
        return BetaBuffer(*self.beta_fraction, x.shape, x.device).scale(x)

    def initial_y_residual(self, y: Tensor, x: Tensor) -> Tensor:
        return y.sub_(self.initial_y(x))

    def branch_input(self, x: Tensor, dtype: Optional[torch.dtype] = None) -> Tensor:
        """``fp(X·2^-40)`` in ``dtype`` (default: the model dtype): ``X`` rounded once to float32
        (or float64) and scaled by 2^-40 (exact); narrower dtypes round from float32."""
        dtype = dtype or self.model_dtype
        out = torch.empty(x.shape, dtype=dtype if dtype == torch.float64 else torch.float32,
                          device=x.device)
        out.copy_(x).mul_(2.0**-40)  # (torch.mul(x, 2^-40) would convert element by element)
        return out if out.dtype == dtype else out.to(dtype)

    def add_step(self, out: Tensor, f: Tensor, x_prev: Tensor, sign: int = 1) -> Tensor:
        """``out + sign·T(f, X_{i-1})`` in place on ``out`` (``T``: module doc): Eq. 1 with
        ``out = Y_{i-1}``, Eq. 2 (:meth:`undo_step`) with ``out = X_i`` and ``sign = -1``."""
        flat, values, source = out.view(-1), f.reshape(-1), x_prev.view(-1)
        wide = self.alpha not in (0.0, 1.0) or f.dtype == torch.float64
        size = self.parts[0].stop
        scratch = torch.empty(size, dtype=torch.float64 if wide else torch.float32,
                              device=out.device)
        grid = torch.empty(size, dtype=torch.int64, device=out.device)
        for part in self.parts:
            count = flat[part].numel()
            t, g = scratch[:count], grid[:count]
            if self.alpha not in (0.0, 1.0):  # round(f·2^40 + α·X) in float64
                t.copy_(source[part]).mul_(self.alpha).add_(values[part], alpha=SCALE).round_()
            elif values.dtype == t.dtype:  # round(f·2^40), exact in f's dtype
                torch.mul(values[part], SCALE, out=t).round_()
            else:
                t.copy_(values[part]).mul_(SCALE).round_()
            flat[part].add_(g.copy_(t), alpha=sign)
            if self.alpha == 1.0:  # + X, exactly
                flat[part].add_(source[part], alpha=sign)
        return out

    # Eq. 2: ``Y_{i-1} = X_i − T(f, X_{i-1})``, in place on x: ``undo_step(x, f, x_prev)``
    undo_step = partialmethod(add_step, sign=-1)

    def next_x(self, f: Tensor, x: Tensor, y: Tensor) -> Tensor:
        """Eq. 1: ``X_i = T(f, X_{i-1}) + Y_{i-1}``, in y's memory unless a node keeps y (the
        caller drops y)."""
        self._observe(f)
        x_new = self.add_step(y if self._reusable else y.clone(), f, x)
        self._last_peak = self._observe(x_new)
        return x_new

    def next_y(self, x: Tensor) -> Tensor:
        """Eq. 1: ``Y_i = β ⊗ X_{i-1}``, in x's memory unless a node keeps x (the caller drops
        x)."""
        reusable, self._reusable = self._reusable, True  # (until end_segment keeps the new pair)
        if self.buffer is None:  # β = 0 (reference mode only)
            return torch.zeros_like(x)
        return self.buffer.scale(x, in_place=reusable)

    def undo_beta(self, y: Tensor) -> Tensor:
        """Eq. 2: ``X_{i-1}`` from ``Y_i = β ⊗ X_{i-1}``, in place on y."""
        return self.buffer.scale(y, inverse=True)

    def output(self, x: Tensor) -> Tensor:
        """The stage output ``fp(X·2^-40)``; 0 after an overflow, NaN after a non-finite value
        (NOTE [ Deferred range checks ])."""
        wide = self.model_dtype == torch.float64
        out = torch.empty(x.shape, dtype=torch.float64 if wide else torch.float32, device=x.device)
        unit = torch.full((), 2.0**-40, dtype=out.dtype, device=x.device)
        if self.peak is not None:
            unit = torch.where(self.peak < MAX_VALUE, unit, 0.0) + (self.peak * 0.0).to(out.dtype)
        out.copy_(x).mul_(unit)
        return out if out.dtype == self.model_dtype else out.to(self.model_dtype)

    def as_float64(self, stream: Tensor) -> Tensor:
        return self.branch_input(stream, torch.float64)

    def pack(self, x: Tensor, shared: Optional[Tensor]) -> Tuple[Tensor, ...]:
        """``X`` itself, or, where the stage returns ``shared = fp(X·2^-40)`` anyway and ``|x|`` is
        small enough for its dtype (NOTE [ Deferred range checks ]), the int32 remainder
        ``X − round(shared·2^40)``. ``shared`` is still X's nearest float; at an exact tie with
        |x| in [2^15, 2^16), the one above (``_narrow_limit``)."""
        if shared is None:
            return (x, )
        limit, key = _narrow_limit(shared.dtype), len(self.kept)
        if self.eager or key not in self.memo.narrow:
            narrow = float(self._last_peak) < limit  # a host sync: a stage's first forward only
        else:
            narrow = self.memo.narrow[key]
        self.kept.append((self._last_peak, limit, narrow))
        if not narrow:
            return (x, )
        rest = self.to_fixed(shared).neg_().add_(x)
        if shared.dtype == torch.float32:  # a tie that rounding to even took down leaves 2^31, one
            tie = rest.eq(1 << 31)  # past int32: such an output takes the float above (2^-8 up)
            rest.masked_fill_(tie, -(1 << 31))
            shared.add_(tie, alpha=2.0**-8)
        return (rest.to(torch.int32), )

    def unpack(self, packed: Tuple[Tensor, ...], shared: Optional[Tensor]) -> Tensor:
        if packed[0].dtype == torch.int32:
            return self.to_fixed(shared).add_(packed[0])
        return packed[0]

    def begin_segment(self, like: Tensor) -> None:
        if self.beta_fraction[0] > 0:
            self.buffer = BetaBuffer(*self.beta_fraction, like.shape, like.device)

    def end_segment(self, position: int) -> Tuple[Tensor, ...]:
        self._reusable = False  # the node saves x_i (or its remainder) and y_i
        self.segment_bounds[position] = list(self.buffer.bounds)
        packed = self.buffer.pack()
        self.buffer = None
        return packed

    def load_segment(self, position: int, packed: Tuple[Tensor, ...], like: Tensor,
                     consume: bool = False) -> None:
        """The β buffer saved at ``position``; ``consume``: its limbs are the saved tensors
        themselves (NOTE [ Kept streams are consumed ] in ``stage_call``)."""
        self.buffer = BetaBuffer(*self.beta_fraction, like.shape, like.device)
        self.buffer.bounds = list(self.segment_bounds[position])
        self.buffer.unpack(packed, consume)

    def segment_undone(self) -> Optional[Tensor]:
        """0-dim bool: the current segment's buffer is back to 0 (every product undone exactly)."""
        return self.buffer.is_empty()

    # ------------------------------------------------------------------ range checks
    def check_tensors(self) -> List[Tensor]:
        """The 0-dim tensors a check reads: the forward's peak, then each kept stream's."""
        return [self.peak] + [peak for peak, _, _ in self.kept]

    def judge(self, values: List[float]) -> bool:
        """Check the forward's range from the values of :meth:`check_tensors`, set ``failure`` and
        remember what it found; False when the forward met a non-finite value."""
        peak = values[0]
        if peak != peak or peak == math.inf:
            return False
        if peak >= MAX_VALUE:
            self.failure = StreamOverflow(
                f'reversible stage: a stream or branch output reached |x| = {peak:.4g}, outside '
                f'the exact fixed-point streams\' range |x| < 2^21 = {MAX_VALUE:.4g}. Use '
                "stream_dtype='float64' for this model (with segment_size to bound the rounding), or "
                'find why its activations grow this large (learning rate, missing normalisation)')
            return True
        for key, ((_, limit, narrow), value) in enumerate(zip(self.kept, values[1:])):
            if narrow and value >= limit and self.failure is None:
                self.failure = StreamOverflow(
                    f'reversible stage: a stream it keeps for backward reached |x| = {value:.4g}, '
                    f'too large for the 4-byte remainder against its output (|x| < {limit:g}), in '
                    'one step from below a quarter of that; this step cannot be rebuilt. The stage '
                    'keeps that stream in full from now on: run the step again')
            self.memo.narrow[key] = value < limit / 4
        self.memo.settled = self.memo.settled or self.failure is None
        return True

    def finish_forward(self):
        """The end of a forward: an eager check (a host sync; raises :class:`StreamOverflow`,
        returns False after a non-finite value, else True), or, for a stage past its first clean
        forward, a deferred one: returns a 0-dim tensor, 0, or NaN after a non-finite value
        (NOTE [ Deferred range checks ])."""
        if self.peak is None:
            return True
        if not self.eager:
            _PENDING.append(self)
            return self.peak * 0.0
        finite = self.judge(torch.stack(self.check_tensors()).tolist())
        if self.failure is not None:
            raise self.failure
        return finite

    def check_forward(self) -> None:
        """At the stage's first backward node: read the deferred check (if still pending) and raise
        its overflow, so that no gradient of a wrong forward is used."""
        if self in _PENDING:
            resolve_checks()
        if self.failure is not None:
            raise self.failure
