from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class MatchRequest(_message.Message):
    __slots__ = ("start", "blinded", "list_end", "sums", "activation", "claims", "proofs", "claims_end", "returned", "returned_end")
    START_FIELD_NUMBER: _ClassVar[int]
    BLINDED_FIELD_NUMBER: _ClassVar[int]
    LIST_END_FIELD_NUMBER: _ClassVar[int]
    SUMS_FIELD_NUMBER: _ClassVar[int]
    ACTIVATION_FIELD_NUMBER: _ClassVar[int]
    CLAIMS_FIELD_NUMBER: _ClassVar[int]
    PROOFS_FIELD_NUMBER: _ClassVar[int]
    CLAIMS_END_FIELD_NUMBER: _ClassVar[int]
    RETURNED_FIELD_NUMBER: _ClassVar[int]
    RETURNED_END_FIELD_NUMBER: _ClassVar[int]
    start: JobStart
    blinded: BlindedChunk
    list_end: ListEnd
    sums: LabelSums
    activation: ActivationStart
    claims: Claims
    proofs: Proofs
    claims_end: ClaimsEnd
    returned: StreamValues
    returned_end: ListEnd
    def __init__(self, start: _Optional[_Union[JobStart, _Mapping]] = ..., blinded: _Optional[_Union[BlindedChunk, _Mapping]] = ..., list_end: _Optional[_Union[ListEnd, _Mapping]] = ..., sums: _Optional[_Union[LabelSums, _Mapping]] = ..., activation: _Optional[_Union[ActivationStart, _Mapping]] = ..., claims: _Optional[_Union[Claims, _Mapping]] = ..., proofs: _Optional[_Union[Proofs, _Mapping]] = ..., claims_end: _Optional[_Union[ClaimsEnd, _Mapping]] = ..., returned: _Optional[_Union[StreamValues, _Mapping]] = ..., returned_end: _Optional[_Union[ListEnd, _Mapping]] = ...) -> None: ...

class MatchResponse(_message.Message):
    __slots__ = ("accepted", "double_blinded", "audience", "audience_end", "report", "challenges", "activation_result")
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    DOUBLE_BLINDED_FIELD_NUMBER: _ClassVar[int]
    AUDIENCE_FIELD_NUMBER: _ClassVar[int]
    AUDIENCE_END_FIELD_NUMBER: _ClassVar[int]
    REPORT_FIELD_NUMBER: _ClassVar[int]
    CHALLENGES_FIELD_NUMBER: _ClassVar[int]
    ACTIVATION_RESULT_FIELD_NUMBER: _ClassVar[int]
    accepted: JobAccepted
    double_blinded: BlindedChunk
    audience: AudienceChunk
    audience_end: AudienceEnd
    report: Report
    challenges: Challenges
    activation_result: ActivationResult
    def __init__(self, accepted: _Optional[_Union[JobAccepted, _Mapping]] = ..., double_blinded: _Optional[_Union[BlindedChunk, _Mapping]] = ..., audience: _Optional[_Union[AudienceChunk, _Mapping]] = ..., audience_end: _Optional[_Union[AudienceEnd, _Mapping]] = ..., report: _Optional[_Union[Report, _Mapping]] = ..., challenges: _Optional[_Union[Challenges, _Mapping]] = ..., activation_result: _Optional[_Union[ActivationResult, _Mapping]] = ...) -> None: ...

class ActivationStart(_message.Message):
    __slots__ = ("job", "name", "where", "label")
    JOB_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    WHERE_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    job: JobStart
    name: str
    where: str
    label: str
    def __init__(self, job: _Optional[_Union[JobStart, _Mapping]] = ..., name: _Optional[str] = ..., where: _Optional[str] = ..., label: _Optional[str] = ...) -> None: ...

class Claims(_message.Message):
    __slots__ = ("positions", "values")
    POSITIONS_FIELD_NUMBER: _ClassVar[int]
    VALUES_FIELD_NUMBER: _ClassVar[int]
    positions: _containers.RepeatedScalarFieldContainer[int]
    values: bytes
    def __init__(self, positions: _Optional[_Iterable[int]] = ..., values: _Optional[bytes] = ...) -> None: ...

class Challenges(_message.Message):
    __slots__ = ("points",)
    POINTS_FIELD_NUMBER: _ClassVar[int]
    points: bytes
    def __init__(self, points: _Optional[bytes] = ...) -> None: ...

class Proofs(_message.Message):
    __slots__ = ("points",)
    POINTS_FIELD_NUMBER: _ClassVar[int]
    points: bytes
    def __init__(self, points: _Optional[bytes] = ...) -> None: ...

class ClaimsEnd(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class StreamValues(_message.Message):
    __slots__ = ("points", "stream")
    POINTS_FIELD_NUMBER: _ClassVar[int]
    STREAM_FIELD_NUMBER: _ClassVar[int]
    points: bytes
    stream: int
    def __init__(self, points: _Optional[bytes] = ..., stream: _Optional[int] = ...) -> None: ...

class ActivationResult(_message.Message):
    __slots__ = ("handle", "noisy_size", "expires_at", "checkpoint", "leaf_index")
    HANDLE_FIELD_NUMBER: _ClassVar[int]
    NOISY_SIZE_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINT_FIELD_NUMBER: _ClassVar[int]
    LEAF_INDEX_FIELD_NUMBER: _ClassVar[int]
    handle: str
    noisy_size: int
    expires_at: float
    checkpoint: str
    leaf_index: int
    def __init__(self, handle: _Optional[str] = ..., noisy_size: _Optional[int] = ..., expires_at: _Optional[float] = ..., checkpoint: _Optional[str] = ..., leaf_index: _Optional[int] = ...) -> None: ...

class ListActivationsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class Activation(_message.Message):
    __slots__ = ("handle", "name", "where", "label", "noisy_size", "created_at", "expires_at", "state")
    HANDLE_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    WHERE_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    NOISY_SIZE_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    handle: str
    name: str
    where: str
    label: str
    noisy_size: int
    created_at: float
    expires_at: float
    state: str
    def __init__(self, handle: _Optional[str] = ..., name: _Optional[str] = ..., where: _Optional[str] = ..., label: _Optional[str] = ..., noisy_size: _Optional[int] = ..., created_at: _Optional[float] = ..., expires_at: _Optional[float] = ..., state: _Optional[str] = ...) -> None: ...

class ActivationList(_message.Message):
    __slots__ = ("activations",)
    ACTIVATIONS_FIELD_NUMBER: _ClassVar[int]
    activations: _containers.RepeatedCompositeFieldContainer[Activation]
    def __init__(self, activations: _Optional[_Iterable[_Union[Activation, _Mapping]]] = ...) -> None: ...

class JobStart(_message.Message):
    __slots__ = ("protocol_version", "id_kind", "labels", "label_sizes", "merchant_base", "segments", "all_segments", "protocol", "enrollment_key_id", "id_kinds")
    PROTOCOL_VERSION_FIELD_NUMBER: _ClassVar[int]
    ID_KIND_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    LABEL_SIZES_FIELD_NUMBER: _ClassVar[int]
    MERCHANT_BASE_FIELD_NUMBER: _ClassVar[int]
    SEGMENTS_FIELD_NUMBER: _ClassVar[int]
    ALL_SEGMENTS_FIELD_NUMBER: _ClassVar[int]
    PROTOCOL_FIELD_NUMBER: _ClassVar[int]
    ENROLLMENT_KEY_ID_FIELD_NUMBER: _ClassVar[int]
    ID_KINDS_FIELD_NUMBER: _ClassVar[int]
    protocol_version: int
    id_kind: str
    labels: _containers.RepeatedScalarFieldContainer[str]
    label_sizes: _containers.RepeatedScalarFieldContainer[int]
    merchant_base: bytes
    segments: _containers.RepeatedScalarFieldContainer[str]
    all_segments: bool
    protocol: str
    enrollment_key_id: bytes
    id_kinds: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, protocol_version: _Optional[int] = ..., id_kind: _Optional[str] = ..., labels: _Optional[_Iterable[str]] = ..., label_sizes: _Optional[_Iterable[int]] = ..., merchant_base: _Optional[bytes] = ..., segments: _Optional[_Iterable[str]] = ..., all_segments: _Optional[bool] = ..., protocol: _Optional[str] = ..., enrollment_key_id: _Optional[bytes] = ..., id_kinds: _Optional[_Iterable[str]] = ...) -> None: ...

class JobAccepted(_message.Message):
    __slots__ = ("job_id", "paillier_n", "segments", "layout_json", "max_chunk_elements", "stream_elements", "stream_names", "stream_sizes", "protocol", "tuple_width")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    PAILLIER_N_FIELD_NUMBER: _ClassVar[int]
    SEGMENTS_FIELD_NUMBER: _ClassVar[int]
    LAYOUT_JSON_FIELD_NUMBER: _ClassVar[int]
    MAX_CHUNK_ELEMENTS_FIELD_NUMBER: _ClassVar[int]
    STREAM_ELEMENTS_FIELD_NUMBER: _ClassVar[int]
    STREAM_NAMES_FIELD_NUMBER: _ClassVar[int]
    STREAM_SIZES_FIELD_NUMBER: _ClassVar[int]
    PROTOCOL_FIELD_NUMBER: _ClassVar[int]
    TUPLE_WIDTH_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    paillier_n: bytes
    segments: _containers.RepeatedScalarFieldContainer[str]
    layout_json: str
    max_chunk_elements: int
    stream_elements: int
    stream_names: _containers.RepeatedScalarFieldContainer[str]
    stream_sizes: _containers.RepeatedScalarFieldContainer[int]
    protocol: str
    tuple_width: int
    def __init__(self, job_id: _Optional[str] = ..., paillier_n: _Optional[bytes] = ..., segments: _Optional[_Iterable[str]] = ..., layout_json: _Optional[str] = ..., max_chunk_elements: _Optional[int] = ..., stream_elements: _Optional[int] = ..., stream_names: _Optional[_Iterable[str]] = ..., stream_sizes: _Optional[_Iterable[int]] = ..., protocol: _Optional[str] = ..., tuple_width: _Optional[int] = ...) -> None: ...

class BlindedChunk(_message.Message):
    __slots__ = ("points", "labels", "stream")
    POINTS_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    STREAM_FIELD_NUMBER: _ClassVar[int]
    points: bytes
    labels: bytes
    stream: int
    def __init__(self, points: _Optional[bytes] = ..., labels: _Optional[bytes] = ..., stream: _Optional[int] = ...) -> None: ...

class ListEnd(_message.Message):
    __slots__ = ("stream", "merchant_base")
    STREAM_FIELD_NUMBER: _ClassVar[int]
    MERCHANT_BASE_FIELD_NUMBER: _ClassVar[int]
    stream: int
    merchant_base: bytes
    def __init__(self, stream: _Optional[int] = ..., merchant_base: _Optional[bytes] = ...) -> None: ...

class AudienceChunk(_message.Message):
    __slots__ = ("points", "ciphertexts", "stream")
    POINTS_FIELD_NUMBER: _ClassVar[int]
    CIPHERTEXTS_FIELD_NUMBER: _ClassVar[int]
    STREAM_FIELD_NUMBER: _ClassVar[int]
    points: bytes
    ciphertexts: bytes
    stream: int
    def __init__(self, points: _Optional[bytes] = ..., ciphertexts: _Optional[bytes] = ..., stream: _Optional[int] = ...) -> None: ...

class AudienceEnd(_message.Message):
    __slots__ = ("elements", "stream")
    ELEMENTS_FIELD_NUMBER: _ClassVar[int]
    STREAM_FIELD_NUMBER: _ClassVar[int]
    elements: int
    stream: int
    def __init__(self, elements: _Optional[int] = ..., stream: _Optional[int] = ...) -> None: ...

class LabelSums(_message.Message):
    __slots__ = ("sums",)
    SUMS_FIELD_NUMBER: _ClassVar[int]
    sums: _containers.RepeatedScalarFieldContainer[bytes]
    def __init__(self, sums: _Optional[_Iterable[bytes]] = ...) -> None: ...

class Report(_message.Message):
    __slots__ = ("job_id", "report_json", "checkpoint", "leaf_index", "log_entry")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    REPORT_JSON_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINT_FIELD_NUMBER: _ClassVar[int]
    LEAF_INDEX_FIELD_NUMBER: _ClassVar[int]
    LOG_ENTRY_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    report_json: str
    checkpoint: str
    leaf_index: int
    log_entry: bytes
    def __init__(self, job_id: _Optional[str] = ..., report_json: _Optional[str] = ..., checkpoint: _Optional[str] = ..., leaf_index: _Optional[int] = ..., log_entry: _Optional[bytes] = ...) -> None: ...

class GetJobRequest(_message.Message):
    __slots__ = ("job_id",)
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    def __init__(self, job_id: _Optional[str] = ...) -> None: ...

class JobStatus(_message.Message):
    __slots__ = ("job_id", "state", "reason", "report_json")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    REPORT_JSON_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    state: str
    reason: str
    report_json: str
    def __init__(self, job_id: _Optional[str] = ..., state: _Optional[str] = ..., reason: _Optional[str] = ..., report_json: _Optional[str] = ...) -> None: ...

class GetBudgetRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class Budget(_message.Message):
    __slots__ = ("epsilon_budget", "epsilon_spent", "epsilon_left", "period", "epsilon_per_job", "policy_json")
    EPSILON_BUDGET_FIELD_NUMBER: _ClassVar[int]
    EPSILON_SPENT_FIELD_NUMBER: _ClassVar[int]
    EPSILON_LEFT_FIELD_NUMBER: _ClassVar[int]
    PERIOD_FIELD_NUMBER: _ClassVar[int]
    EPSILON_PER_JOB_FIELD_NUMBER: _ClassVar[int]
    POLICY_JSON_FIELD_NUMBER: _ClassVar[int]
    epsilon_budget: float
    epsilon_spent: float
    epsilon_left: float
    period: str
    epsilon_per_job: float
    policy_json: str
    def __init__(self, epsilon_budget: _Optional[float] = ..., epsilon_spent: _Optional[float] = ..., epsilon_left: _Optional[float] = ..., period: _Optional[str] = ..., epsilon_per_job: _Optional[float] = ..., policy_json: _Optional[str] = ...) -> None: ...
