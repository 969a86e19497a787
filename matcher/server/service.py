"""gRPC servicers: translation between protobuf and the job engine, and error mapping. No crypto, no SQL."""

from __future__ import annotations

import contextlib
import json
import time
from typing import Iterator

import grpc

from matcher.errors import AuthenticationError, InputError, MatcherError, NotFound, ProtocolDeviation, ProtocolError
from matcher.server.jobs import ActivationRequest, JobRunner, MatchJob, Report
from matcher.log.merkle import MerkleTree
from matcher.policy import budget_after
from matcher.protocol.messages import PROTOCOL_CHOICES, SECURE, SEMI_HONEST, BlindedChunk, JobStart, LabelSums
from matcher.protocol.wire import job_accepted_to_proto, job_start_from_proto
from matcher.server.store import Principal, Store
from matcher.v1 import audit_pb2, audit_pb2_grpc, match_pb2, match_pb2_grpc

MERCHANT = "merchant"
AUDITOR = "auditor"


def _method_roles() -> dict[str, tuple[str, ...]]:
    """Who may call each RPC, by its full path: the one place roles are decided. MatchService is the
    merchants'; AuditService is for auditors and merchants (a merchant proves its report is in the
    log), except the raw entries, which name every merchant's jobs: auditors only."""
    roles: dict[str, tuple[str, ...]] = {}
    for module, service, default in ((match_pb2, "MatchService", (MERCHANT,)),
                                     (audit_pb2, "AuditService", (AUDITOR, MERCHANT))):
        descriptor = module.DESCRIPTOR.services_by_name[service]
        for method in descriptor.methods:
            roles[f"/{descriptor.full_name}/{method.name}"] = default
    roles[f"/{audit_pb2.DESCRIPTOR.services_by_name['AuditService'].full_name}/GetEntries"] = (AUDITOR,)
    return roles


# Health and reflection are not listed: they need no token.
METHOD_ROLES = _method_roles()


class Authenticator:
    """Maps the bearer token in the call metadata to a principal. The interceptor (matcher.server.app)
    refuses a call whose caller lacks the role METHOD_ROLES gives its method, before any handler
    runs; the servicers then only ask who is calling."""

    def __init__(self, store: Store):
        self._store = store

    def principal(self, metadata) -> Principal | None:
        for key, value in metadata or ():
            if key == "authorization" and isinstance(value, str) and value.startswith("Bearer "):
                return self._store.authenticate(value[len("Bearer "):].strip())
        return None

    def caller(self, context: grpc.ServicerContext) -> Principal:
        """The principal the interceptor let through (a token revoked in between is refused)."""
        who = self.principal(context.invocation_metadata())
        if who is None:
            raise AuthenticationError()
        return who


def _abort(context: grpc.ServicerContext, err: MatcherError):
    code = getattr(grpc.StatusCode, err.grpc_code, grpc.StatusCode.INTERNAL)
    # Authentication failures say nothing beyond the code, whatever the cause.
    context.abort(code, "authentication required" if isinstance(err, AuthenticationError) else str(err))


@contextlib.contextmanager
def _errors_to_status(context: grpc.ServicerContext):
    try:
        yield
    except MatcherError as err:
        _abort(context, err)


class MatchServicer(match_pb2_grpc.MatchServiceServicer):
    def __init__(self, runner: JobRunner, auth: Authenticator):
        self._runner = runner
        self._auth = auth

    def Match(self, request_iterator, context) -> Iterator[match_pb2.MatchResponse]:
        """The semi-honest protocol, refused unless the operator's policy enables it."""
        return self._job(request_iterator, context, "start", self._semi_honest, protocol=SEMI_HONEST)

    def Activate(self, request_iterator, context) -> Iterator[match_pb2.MatchResponse]:
        return self._job(request_iterator, context, "activation", self._secure)

    def Count(self, request_iterator, context) -> Iterator[match_pb2.MatchResponse]:
        return self._job(request_iterator, context, "start", self._secure)

    def _job(self, request_iterator, context, first: str, exchange, protocol: str = SECURE
             ) -> Iterator[match_pb2.MatchResponse]:
        """One job stream: authenticate, begin (policy before crypto), the protocol's exchange; any
        matcher error fails the job (audited with its charge) and ends the call."""
        job: MatchJob | None = None
        try:
            merchant = self._auth.caller(context)
            requests = iter(request_iterator)
            opening = getattr(_next(requests, first), first)
            if first == "activation":
                job = self._runner.begin(merchant, _job_start(opening.job), ActivationRequest(
                    name=opening.name, where=opening.where, label=opening.label or None))
            else:
                job = self._runner.begin(merchant, _job_start(opening), protocol=protocol)
            context.add_callback(lambda: job.abort("the stream ended before the job finished"))
            yield match_pb2.MatchResponse(accepted=job_accepted_to_proto(job.accepted))
            yield from exchange(job, requests, context)
        except MatcherError as err:
            if job is not None:
                if isinstance(err, ProtocolDeviation) or not _went_away(context, err):
                    job.fail(err)
                else:
                    # The client went away: the error is the handler seeing it, racing the cancel
                    # callback. Either way the job was cancelled (and a deviation still suspends).
                    job.abort("the stream ended before the job finished")
            _abort(context, err)

    @staticmethod
    def _secure(job: MatchJob, requests, context) -> Iterator[match_pb2.MatchResponse]:
        for index, name in enumerate(job.accepted.stream_names):
            while (request := _next(requests, "blinded", "list_end")).HasField("blinded"):
                if request.blinded.stream != index:
                    raise ProtocolError(f"a list chunk for stream {request.blinded.stream} came while stream {index}'s "
                                        "was expected")
                job.receive_blinded(BlindedChunk(points=request.blinded.points, labels=request.blinded.labels),
                                    stream=index)
            if request.list_end.stream != index:
                raise ProtocolError(f"the list of stream {request.list_end.stream} ended while stream {index}'s was due")
            if len(request.list_end.merchant_base) != 32:
                raise InputError(f"the list of stream {index} must end with its 32-byte a_s·G, got "
                                 f"{len(request.list_end.merchant_base)} bytes")
            job.finish_list(stream=index, merchant_base=request.list_end.merchant_base)
            sent = 0
            for points in job.stream(index):
                if not context.is_active():
                    raise ProtocolError("the client went away")
                sent += len(points) // 32
                yield match_pb2.MatchResponse(audience=match_pb2.AudienceChunk(points=points, stream=index))
            yield match_pb2.MatchResponse(audience_end=match_pb2.AudienceEnd(elements=sent, stream=index))
            while (request := _next(requests, "returned", "returned_end")).HasField("returned"):
                if request.returned.stream != index:
                    raise ProtocolError(f"values of stream {request.returned.stream} came back while stream {index} "
                                        f"('{name}') was expected")
                job.receive_returned(request.returned.points, stream=index)
            job.finish_stream(index)
        if job.activation is None:
            yield _report(job.finish_count())
            return
        result = job.finish_activation()
        yield match_pb2.MatchResponse(activation_result=match_pb2.ActivationResult(
            handle=result.handle, noisy_size=result.noisy_size, expires_at=result.expires_at,
            checkpoint=result.checkpoint, leaf_index=result.leaf_index))

    @staticmethod
    def _semi_honest(job: MatchJob, requests, context) -> Iterator[match_pb2.MatchResponse]:
        """List up, double-blinded list and audience (with ciphertexts) down, sums up, report down."""
        while (request := _next(requests, "blinded", "list_end")).HasField("blinded"):
            job.receive_blinded(BlindedChunk(points=request.blinded.points, labels=request.blinded.labels))
        job.finish_list()
        for chunk in job.double_blinded():
            yield match_pb2.MatchResponse(double_blinded=match_pb2.BlindedChunk(points=chunk.points, labels=chunk.labels))
        sent = 0
        for chunk in job.audience():
            if not context.is_active():
                raise ProtocolError("the client went away")
            sent += len(chunk.points) // 32
            yield match_pb2.MatchResponse(audience=match_pb2.AudienceChunk(points=chunk.points,
                                                                         ciphertexts=chunk.ciphertexts))
        yield match_pb2.MatchResponse(audience_end=match_pb2.AudienceEnd(elements=sent))
        sums = _next(requests, "sums").sums
        yield _report(job.finish(LabelSums(sums=tuple(sums.sums))))

    def ListActivations(self, request, context):
        with _errors_to_status(context):
            merchant = self._auth.caller(context)
            return match_pb2.ActivationList(activations=[match_pb2.Activation(
                handle=a["handle"], name=a["name"], where=a["where_expr"], label=a["label"] or "",
                noisy_size=a["noisy_size"], created_at=a["created"], expires_at=a["expires"], state=a["state"])
                for a in self._runner.store.list_activations(merchant)])

    def GetJob(self, request, context):
        with _errors_to_status(context):
            merchant = self._auth.caller(context)
            if len(request.job_id) > _MAX_JOB_ID:
                raise NotFound("no such job (job ids are 32 hex digits)")
            job = self._runner.store.job(request.job_id, merchant)
            return match_pb2.JobStatus(job_id=job["job_id"], state=job["state"], reason=job["reason"] or "",
                                       report_json=job["report_json"] or "")

    def GetBudget(self, request, context):
        with _errors_to_status(context):
            merchant = self._auth.caller(context)
            store = self._runner.store
            pol = store.effective_policy(merchant.name)
            spent = store.budget_spent(merchant.id, pol.budget_period_seconds)
            return match_pb2.Budget(epsilon_budget=pol.epsilon_budget, epsilon_spent=spent,
                                    epsilon_left=budget_after(pol, spent), period=pol.budget_period,
                                    epsilon_per_job=pol.epsilon_per_job,
                                    policy_json=json.dumps(pol.to_dict(), sort_keys=True))


def _report(report: Report) -> match_pb2.MatchResponse:
    return match_pb2.MatchResponse(report=match_pb2.Report(
        job_id=report.job_id, report_json=report.report_json, checkpoint=report.checkpoint,
        leaf_index=report.leaf_index, log_entry=report.log_entry))


# Edge limits: beyond them a field is refused here, with one clear status, before anything stores it.
_MAX_COUNT = 2**40          # list and label sizes (SQLite INTEGER holds 2^63; no list is near 2^40)
_MAX_NAME = 200             # label, segment, activation and id-kind names
_MAX_JOB_ID = 64            # job ids are 32 hex digits


def _job_start(start: match_pb2.JobStart) -> JobStart:
    """The opening message, validated field by field (a bad one is INVALID_ARGUMENT, naming it)."""
    if len(start.merchant_base) != 32:
        raise InputError(f"merchant_base must be one 32-byte point, got {len(start.merchant_base)} bytes")
    if any(size > _MAX_COUNT for size in start.label_sizes) or sum(start.label_sizes) > _MAX_COUNT:
        raise InputError(f"label sizes must each, and together, stay under {_MAX_COUNT}")
    names = [start.id_kind, *start.labels, *start.segments]
    if any(len(name) > _MAX_NAME for name in names):
        raise InputError(f"names (id kind, labels, segments) must be at most {_MAX_NAME} characters")
    if start.protocol not in ("", *PROTOCOL_CHOICES):
        raise InputError(f"protocol must be one of {', '.join(PROTOCOL_CHOICES)}, not {start.protocol[:_MAX_NAME]!r}")
    if len(start.enrollment_key_id) not in (0, 16):
        raise InputError(f"enrollment_key_id must be 16 bytes, got {len(start.enrollment_key_id)}")
    return job_start_from_proto(start)


class _StreamEnded(ProtocolError):
    """The requests stopped before the job was done: a client that closed its side early, or one
    that cancelled the call (see :func:`_went_away`)."""


# How long a stream that ended early is given to show a cancel (only that error path waits).
_CANCEL_SETTLE_S = 0.5


def _went_away(context, err: MatcherError) -> bool:
    """Whether the client cancelled the call. gRPC can end a cancelled call's requests (as if the
    client had closed its side) a moment before it marks the call inactive, so a stream that ended
    early waits up to ``_CANCEL_SETTLE_S`` to tell the two apart; any other error is decided now."""
    deadline = time.monotonic() + (_CANCEL_SETTLE_S if isinstance(err, _StreamEnded) else 0.0)
    while context.is_active():
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.01)
    return True


def _next(requests, *expected: str):
    """The next request, which must be one of the expected kinds (a truncated stream is an error)."""
    request = next(requests, None)
    if request is None:
        raise _StreamEnded(f"the stream ended while the server waited for {' or '.join(expected)}")
    kind = request.WhichOneof("msg")
    if kind not in expected:
        raise ProtocolError(f"expected {' or '.join(expected)}, got {kind or 'an empty message'}")
    return request


class AuditServicer(audit_pb2_grpc.AuditServiceServicer):
    """Auditors read everything; merchants may read checkpoints and proofs (to prove their reports),
    not other merchants' entries."""

    def __init__(self, store: Store, verifier_key: str, origin: str, auth: Authenticator):
        self._store = store
        self._verifier_key = verifier_key
        self._origin = origin
        self._auth = auth

    def _tree(self) -> MerkleTree:
        return MerkleTree(self._store, self._store.log_size())

    def GetCheckpoint(self, request, context):
        with _errors_to_status(context):
            self._auth.caller(context)
            latest = self._store.latest_checkpoint()
            if latest is None:
                context.abort(grpc.StatusCode.NOT_FOUND, "the log is empty")
            return audit_pb2.SignedCheckpoint(size=latest[0], note=latest[1])

    def ListCheckpoints(self, request, context):
        with _errors_to_status(context):
            self._auth.caller(context)
            for size, note in self._store.checkpoints(min(request.min_size, 2**63 - 1)):
                yield audit_pb2.SignedCheckpoint(size=size, note=note)

    def GetEntries(self, request, context):
        with _errors_to_status(context):
            self._auth.caller(context)
            end = min(request.end, self._store.log_size())
            for lo in range(request.start, end, 1000):
                for index, data in self._store.log_entries(lo, min(end, lo + 1000)):
                    yield audit_pb2.LogEntry(index=index, data=data)

    def GetInclusionProof(self, request, context):
        with _errors_to_status(context):
            self._auth.caller(context)
            return audit_pb2.Proof(hashes=self._tree().inclusion_proof(request.index, request.tree_size))

    def GetConsistencyProof(self, request, context):
        with _errors_to_status(context):
            self._auth.caller(context)
            return audit_pb2.Proof(hashes=self._tree().consistency_proof(request.old_size, request.new_size))

    def GetVerifierKey(self, request, context):
        with _errors_to_status(context):
            self._auth.caller(context)
            return audit_pb2.VerifierKey(key=self._verifier_key, origin=self._origin)
