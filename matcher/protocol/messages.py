"""The protocol's messages, as plain dataclasses: the engines speak these, the servicer maps them to protobuf.

Points are concatenated 32-byte X25519 u-coordinates; label indexes are one byte per point.
"""

from __future__ import annotations

from dataclasses import dataclass, field

PROTOCOL_VERSION = 1
# Names of the protocols a report and a log entry can name (docs/threat-model.md).
SECURE = "secure"
SEMI_HONEST = "semi_honest"
# The secure protocol with the merchant's blinded copy of each stream kept between jobs.
UNBALANCED = "unbalanced"
# What a merchant may ask for (JobStart.protocol) and an operator may fix (policy "protocol").
PROTOCOL_CHOICES = ("auto", "balanced", "unbalanced")
# The stream of every member, which gives each label's matched count; the others are segment names.
MATCHED_STREAM = "matched"
MAX_CHUNK_ELEMENTS = 65_536
# An audience chunk carries a 512-byte ciphertext per row: keep messages near 4 MiB.
AUDIENCE_CHUNK_ROWS = 4_096
MAX_LABELS = 32


@dataclass(frozen=True)
class JobStart:
    id_kind: str
    labels: tuple[str, ...]
    label_sizes: tuple[int, ...]
    merchant_base: bytes
    protocol_version: int = PROTOCOL_VERSION
    # Secure protocol: which segments to count (one stream each); all_segments: every one.
    segments: tuple[str, ...] = ()
    all_segments: bool = False
    # "" / "auto": the server picks; "balanced" or "unbalanced" (PROTOCOL_CHOICES).
    protocol: str = ""
    # Names the merchant's long-lived key for unbalanced copies; empty: the client cannot run them.
    enrollment_key_id: bytes = b""
    # Every kind the list's identifiers hold, id_kind first; (): id_kind only.
    id_kinds: tuple[str, ...] = ()

    @property
    def list_size(self) -> int:
        return sum(self.label_sizes)

    @property
    def kinds(self) -> tuple[str, ...]:
        return self.id_kinds or (self.id_kind,)


@dataclass(frozen=True)
class JobAccepted:
    job_id: str
    paillier_n: bytes
    segments: tuple[str, ...]
    layout_json: str
    max_chunk_elements: int = MAX_CHUNK_ELEMENTS
    stream_elements: int = 0
    # Secure protocol: the streams in sending order ("matched", then segment names) and their sizes.
    stream_names: tuple[str, ...] = ()
    stream_sizes: tuple[int, ...] = ()
    protocol: str = "semi_honest"
    # Secure protocol: a member is this many consecutive values of a stream (its identifiers, padded).
    tuple_width: int = 1


@dataclass(frozen=True)
class BlindedChunk:
    points: bytes
    labels: bytes

    def __len__(self) -> int:
        return len(self.labels)


@dataclass(frozen=True)
class AudienceChunk:
    points: bytes
    ciphertexts: bytes


@dataclass(frozen=True)
class LabelSums:
    sums: tuple[bytes, ...]


@dataclass
class LabelAggregate:
    """What the platform decrypted for one label: true values, before the release policy."""

    matched: int
    segments: dict[str, int] = field(default_factory=dict)
    metrics: list[int] = field(default_factory=list)
