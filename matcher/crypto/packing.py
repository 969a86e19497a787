"""Plaintext packing: many small counters in one Paillier plaintext.

The platform packs one plaintext per audience row -- a count slot, one slot per boolean
segment, optional bounded metrics -- so that the homomorphic sum of the matched rows' ciphertexts
decrypts to every counter of the sum at once. :class:`PackingLayout` chooses slot widths that
make overflow of an honest sum impossible; :meth:`PackingLayout.unpack` rejects any sum that
could only come from overflow or tampering.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass, field
from typing import Iterable, Sequence

from matcher.crypto.paillier import MIN_KEY_BITS
from matcher.errors import CryptoError, InputError

__all__ = ["PackingLayout", "Unpacked"]

# Room left between the largest packed plaintext and n: a plaintext that wrapped modulo n
# or was forged lands in [0, n) essentially uniformly, hence below 2^total_bits with
# probability < 2^-(headroom - 1), so unpack's range check catches it.
_HEADROOM_BITS = 64
_LAYOUT_VERSION = 1


@dataclass(frozen=True)
class Unpacked:
    """A decrypted, unpacked sum: how many rows, per-segment counts, per-metric sums."""

    count: int
    segments: list[int]
    metrics: list[int]


@dataclass(frozen=True)
class PackingLayout:
    """Slot layout of a packed payload, wide enough that no honest sum can overflow.

    From the least significant bit: one ``slot_bits`` slot per segment (segment i at bit
    ``i * slot_bits``), then one slot per metric (widths ``metric_bits``), then the count
    slot on top, so a count that overflows its slot pushes the plaintext past
    ``2^total_bits``. ``slot_bits`` is the width of the count and segment slots; metric
    slot j holds up to ``max_rows * metric_max[j]``.

    Build with :meth:`create` (or :meth:`from_dict` for a layout received over the wire).
    """

    max_rows: int
    n_segments: int
    metric_max: tuple[int, ...] = ()
    key_bits: int = MIN_KEY_BITS
    slot_bits: int = field(init=False)
    metric_bits: tuple[int, ...] = field(init=False)
    total_bits: int = field(init=False)
    _metric_offsets: tuple[int, ...] = field(init=False, repr=False, compare=False)
    _count_offset: int = field(init=False, repr=False, compare=False)
    _spread_tables: tuple[tuple[int, ...], ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        metric_max = tuple(self.metric_max)
        for name, value in (("max_rows", self.max_rows), ("n_segments", self.n_segments),
                            ("key_bits", self.key_bits), *(("metric_max", v) for v in metric_max)):
            if isinstance(value, bool) or not isinstance(value, int):
                raise InputError(f"{name} must be an integer")
        if self.max_rows < 1:
            raise InputError("max_rows must be at least 1")
        if self.n_segments < 0:
            raise InputError("n_segments must be non-negative")
        if any(v < 1 for v in metric_max):
            raise InputError("every metric_max must be at least 1")
        if self.key_bits < MIN_KEY_BITS:
            raise InputError(f"key_bits must be at least {MIN_KEY_BITS}")
        slot_bits = self.max_rows.bit_length()
        metric_bits = tuple((self.max_rows * v).bit_length() for v in metric_max)
        metric_offsets = []
        offset = slot_bits * self.n_segments
        for width in metric_bits:
            metric_offsets.append(offset)
            offset += width
        count_offset = offset
        total_bits = count_offset + slot_bits
        capacity = self.key_bits - _HEADROOM_BITS
        if total_bits > capacity:
            raise InputError(
                f"packed payload needs {total_bits} bits but a {self.key_bits}-bit key holds "
                f"at most {capacity}",
                hint="use fewer segments or metrics, a smaller max_rows, or a larger key",
            )
        setattr_ = object.__setattr__
        setattr_(self, "metric_max", metric_max)
        setattr_(self, "slot_bits", slot_bits)
        setattr_(self, "metric_bits", metric_bits)
        setattr_(self, "total_bits", total_bits)
        setattr_(self, "_metric_offsets", tuple(metric_offsets))
        setattr_(self, "_count_offset", count_offset)
        setattr_(self, "_spread_tables", self._build_spread_tables(self.n_segments, slot_bits))

    @classmethod
    def create(
        cls,
        *,
        max_rows: int,
        n_segments: int,
        metric_max: Sequence[int] = (),
        key_bits: int = MIN_KEY_BITS,
    ) -> PackingLayout:
        return cls(max_rows=max_rows, n_segments=n_segments, metric_max=tuple(metric_max),
                   key_bits=key_bits)

    @classmethod
    def widest(cls, *, n_segments: int, key_bits: int = MIN_KEY_BITS) -> PackingLayout:
        """The layout with the widest slots ``key_bits`` holds for ``n_segments`` (no metrics).

        It depends on nothing but the audience's segment count and the key, so ciphertexts can be
        made before the job whose list size they must fit (precomputed streams): at 60 segments and
        2048 bits each slot is 32 bits wide, room for lists of up to 2^32 - 1 rows."""
        slot_bits = min(64, (key_bits - _HEADROOM_BITS) // (n_segments + 1))
        return cls.create(max_rows=(1 << slot_bits) - 1, n_segments=n_segments, key_bits=key_bits)

    @staticmethod
    def _build_spread_tables(n_segments: int, slot_bits: int) -> tuple[tuple[int, ...], ...]:
        """Table k maps byte k of a segment mask to its 8 bits spread one per slot."""
        tables = []
        for first_segment in range(0, n_segments, 8):
            in_this_byte = min(8, n_segments - first_segment)
            unit = [1 << ((first_segment + j) * slot_bits) for j in range(in_this_byte)]
            table = [0] * 256
            for byte in range(1, 1 << in_this_byte):
                low = byte & -byte
                table[byte] = table[byte ^ low] | unit[low.bit_length() - 1]
            tables.append(tuple(table))
        return tuple(tables)

    # -- packing ------------------------------------------------------------------------

    def _checked_mask(self, segment_bits: int) -> int:
        # numpy integers are welcome (audiences live in numpy arrays); bools and floats are not.
        if isinstance(segment_bits, bool):
            raise InputError("segment_bits must be an integer bitmask")
        try:
            mask = operator.index(segment_bits)
        except TypeError:
            raise InputError("segment_bits must be an integer bitmask") from None
        if mask < 0 or mask >> self.n_segments:
            raise InputError(f"segment_bits has bits beyond the {self.n_segments} segments")
        return mask

    def _metrics_term(self, metrics: Sequence[int]) -> int:
        if len(metrics) != len(self.metric_max):
            raise InputError(f"expected {len(self.metric_max)} metrics, got {len(metrics)}")
        term = 0
        for value, bound, offset in zip(metrics, self.metric_max, self._metric_offsets):
            try:
                number = operator.index(value) if not isinstance(value, bool) else -1
            except TypeError:
                number = -1
            if not 0 <= number <= bound:
                raise InputError(f"metric value {value!r} outside [0, {bound}]")
            term |= number << offset
        return term

    def _spread(self, segment_bits: int) -> int:
        out = 0
        mask_bytes = segment_bits.to_bytes(len(self._spread_tables), "little")
        for table, byte in zip(self._spread_tables, mask_bytes):
            if byte:
                out |= table[byte]
        return out

    def pack(self, segment_bits: int, metrics: Sequence[int] = ()) -> int:
        """Plaintext of one row: count 1, segment i set iff bit i of ``segment_bits``."""
        mask = self._checked_mask(segment_bits)
        return (1 << self._count_offset) | self._metrics_term(metrics) | self._spread(mask)

    def pack_many(
        self, segment_bits: Sequence[int], metrics: Sequence[Sequence[int]] | None = None
    ) -> list[int]:
        """:meth:`pack` for many rows; ``metrics`` is one sequence per row (or None if none)."""
        if metrics is None:
            if self.metric_max:
                raise InputError(f"layout has {len(self.metric_max)} metrics; none given")
            metrics_terms: Iterable[int] = (0 for _ in segment_bits)
        else:
            if len(metrics) != len(segment_bits):
                raise InputError("metrics must have one entry per row")
            metrics_terms = (self._metrics_term(row) for row in metrics)
        count_term = 1 << self._count_offset
        n_segments = self.n_segments
        tables = self._spread_tables
        width = len(tables)
        out = []
        for mask, metric_term in zip(segment_bits, metrics_terms):
            if type(mask) is not int or mask < 0 or mask >> n_segments:
                mask = self._checked_mask(mask)
            value = count_term | metric_term
            for table, byte in zip(tables, mask.to_bytes(width, "little")):
                if byte:
                    value |= table[byte]
            out.append(value)
        return out

    # -- unpacking ----------------------------------------------------------------------

    def unpack(self, plaintext: int) -> Unpacked:
        """Split a decrypted sum into slots; raise :class:`CryptoError` if it overflowed."""
        plaintext = int(plaintext)
        if plaintext < 0 or plaintext >> self.total_bits:
            raise CryptoError("packed sum overflowed: plaintext exceeds the layout width")
        slot_mask = (1 << self.slot_bits) - 1
        count = plaintext >> self._count_offset
        if count > self.max_rows:
            raise CryptoError(f"packed sum overflowed: count {count} > max_rows {self.max_rows}")
        segments = [(plaintext >> (i * self.slot_bits)) & slot_mask for i in range(self.n_segments)]
        if any(s > count for s in segments):
            raise CryptoError("packed sum overflowed: a segment count exceeds the row count")
        metrics = [
            (plaintext >> offset) & ((1 << width) - 1)
            for offset, width in zip(self._metric_offsets, self.metric_bits)
        ]
        for value, bound in zip(metrics, self.metric_max):
            if value > count * bound:
                raise CryptoError("packed sum overflowed: a metric sum exceeds count * max")
        return Unpacked(count=count, segments=segments, metrics=metrics)

    # -- wire form ----------------------------------------------------------------------

    def to_dict(self) -> dict:
        return {
            "version": _LAYOUT_VERSION,
            "max_rows": self.max_rows,
            "n_segments": self.n_segments,
            "metric_max": list(self.metric_max),
            "key_bits": self.key_bits,
            "slot_bits": self.slot_bits,
            "metric_bits": list(self.metric_bits),
            "total_bits": self.total_bits,
        }

    @classmethod
    def from_dict(cls, data: dict) -> PackingLayout:
        """Rebuild a layout and check the declared widths match the recomputed ones."""
        try:
            if data["version"] != _LAYOUT_VERSION:
                raise InputError(f"unsupported packing layout version {data['version']!r}")
            layout = cls.create(
                max_rows=data["max_rows"],
                n_segments=data["n_segments"],
                metric_max=tuple(data["metric_max"]),
                key_bits=data["key_bits"],
            )
            declared = (data["slot_bits"], list(data["metric_bits"]), data["total_bits"])
        except (KeyError, TypeError) as exc:
            raise InputError(f"malformed packing layout: {exc!r}") from None
        if declared != (layout.slot_bits, list(layout.metric_bits), layout.total_bits):
            raise InputError("packing layout widths do not match its parameters")
        return layout
