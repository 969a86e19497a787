"""The protocol messages on the wire: the gRPC message-size limit both sides configure, and the
protobuf ⇄ dataclass conversions of the messages both sides exchange (the engines in
matcher.protocol see only the dataclasses of matcher.protocol.messages).

Conversions are plain field copies; validating what a peer sent (sizes, names) is the
receiving side's job (the server's in matcher.server.service).
"""

from __future__ import annotations

from matcher.protocol.messages import SEMI_HONEST, JobAccepted, JobStart
from matcher.v1 import match_pb2

__all__ = ["CHANNEL_OPTIONS", "MAX_MESSAGE_BYTES", "job_accepted_from_proto", "job_accepted_to_proto",
           "job_start_from_proto", "job_start_to_proto"]

# The largest gRPC message either side sends or accepts. A blinded chunk is at most 64k points (2 MiB),
# an audience chunk ~4k ciphertexts (~2 MiB): both stay well under it.
MAX_MESSAGE_BYTES = 8 * 1024 * 1024
# gRPC channel and server options that apply the limit in both directions.
CHANNEL_OPTIONS = [("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                   ("grpc.max_send_message_length", MAX_MESSAGE_BYTES)]


def job_start_to_proto(start: JobStart) -> match_pb2.JobStart:
    return match_pb2.JobStart(protocol_version=start.protocol_version, id_kind=start.id_kind, labels=start.labels,
                              label_sizes=start.label_sizes, merchant_base=start.merchant_base,
                              segments=start.segments, all_segments=start.all_segments,
                              # On the wire "" means the server picks, which a caller may spell "auto".
                              protocol="" if start.protocol == "auto" else start.protocol,
                              enrollment_key_id=start.enrollment_key_id, id_kinds=start.id_kinds)


def job_start_from_proto(start: match_pb2.JobStart) -> JobStart:
    return JobStart(id_kind=start.id_kind, labels=tuple(start.labels), label_sizes=tuple(start.label_sizes),
                    merchant_base=start.merchant_base, protocol_version=start.protocol_version,
                    segments=tuple(start.segments), all_segments=start.all_segments,
                    protocol=start.protocol, enrollment_key_id=bytes(start.enrollment_key_id),
                    id_kinds=tuple(start.id_kinds))


def job_accepted_to_proto(accepted: JobAccepted) -> match_pb2.JobAccepted:
    return match_pb2.JobAccepted(
        job_id=accepted.job_id, paillier_n=accepted.paillier_n, segments=accepted.segments,
        layout_json=accepted.layout_json, max_chunk_elements=accepted.max_chunk_elements,
        stream_elements=accepted.stream_elements, stream_names=accepted.stream_names,
        stream_sizes=accepted.stream_sizes, protocol=accepted.protocol, tuple_width=accepted.tuple_width)


def job_accepted_from_proto(accepted: match_pb2.JobAccepted) -> JobAccepted:
    return JobAccepted(job_id=accepted.job_id, paillier_n=accepted.paillier_n, segments=tuple(accepted.segments),
                       layout_json=accepted.layout_json, max_chunk_elements=accepted.max_chunk_elements,
                       stream_elements=accepted.stream_elements, stream_names=tuple(accepted.stream_names),
                       stream_sizes=tuple(accepted.stream_sizes),
                       # A server from before the secure protocol names none: it ran the semi-honest one.
                       protocol=accepted.protocol or SEMI_HONEST,
                       # A server from before several identifiers per member sends 0: one value a member.
                       tuple_width=accepted.tuple_width or 1)
