"""A match job from the platform's point of view: policy, budget, protocol engine and audit log, in order.

The secure protocol (the default; matcher.protocol.secure_platform, docs/threat-model.md)::

    runner.begin(merchant, start)    policy check, ε reserved atomically — before any crypto — then,
                                     once the streams are fixed, ε committed: from here on nothing
                                     that happens (failure, disconnect, crash) gives it back
    for s in streams:                the merchant's copy s of its list, stream s down, stream s back
        job.receive_blinded(chunk, stream=s) ...; job.finish_list(stream=s, merchant_base=a_s_G)
        job.stream(s); job.receive_returned(points, stream=s) ...; job.finish_stream(s)
    job.finish_count()               release policy (noise, then k on the noisy value), audit entry
    job.fail(error)                  anything else: nothing released, the failure audited with its
                                     charge; a protocol deviation also suspends the merchant

An activation job (``begin(..., activation=ActivationRequest(...))``) runs stream 0 only, returned
in stream order, then ``job.finish_activation()``: the matched rows, filtered by the --where
expression, become a stored slice if its *noisy* size reaches k; refused or not, the ε is spent.

The semi-honest protocol (``protocol=SEMI_HONEST``, only when the policy enables it) keeps the
older flow: ``double_blinded``, ``audience``, ``finish(sums)``; it reserves ε at the start and
refunds it when nothing was released.

Every decision — refused, released, failed — becomes one audit-log entry. Entries never hold an ID,
a point or a ciphertext: only sizes, the policy in force, ε and the released cells.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
import uuid
from dataclasses import dataclass
from typing import Callable, Iterator

import numpy as np

from matcher.server import activations, faults, slots
from matcher.server._logging import fields
from matcher import policy as policy_mod
from matcher import where
from matcher.crypto import pool
from matcher.crypto.kernels import Kernels
from matcher.errors import InputError, LimitExceeded, MatcherError, PolicyRefused, ProtocolDeviation, ProtocolError
from matcher.server.keys import OperatorKeys
from matcher.log.entries import canonical_json, job_entry, principal_entry
from matcher.server.auditlog import AuditLog
from matcher.server.metrics import PhaseClock, Recorder
from matcher.server import unbalanced
from matcher.protocol.messages import (
    SECURE,
    SEMI_HONEST,
    UNBALANCED,
    AudienceChunk,
    BlindedChunk,
    JobAccepted,
    JobStart,
    LabelSums,
)
from matcher.protocol.platform import Audience, PlatformSession, PrecomputedStream
from matcher.protocol.secure_platform import SecurePlatformSession
from matcher.protocol.unbalanced_platform import StoredCopy, UnbalancedPlatformSession
from matcher.server.store import Principal, Store

Rng = Callable[[int], bytes]
# One line per decision for the operator's logs: ids, names and sizes, never an ID, point or key.
log = logging.getLogger("matcher.jobs")


@dataclass(frozen=True)
class ActivationRequest:
    name: str
    where: str
    label: str | None = None


@dataclass(frozen=True)
class ActivationResult:
    handle: str
    noisy_size: int
    expires_at: float
    checkpoint: str
    leaf_index: int


@dataclass(frozen=True)
class Report:
    job_id: str
    report_json: str
    checkpoint: str
    leaf_index: int
    log_entry: bytes


class JobRunner:
    """Shared by every RPC of one server."""

    def __init__(self, store: Store, keys: OperatorKeys, audit_log: AuditLog, *, kernels: Kernels | None = None,
                 noise: policy_mod.NoiseSource | None = None, rng: Rng = os.urandom, max_concurrent_jobs: int = 4,
                 metrics: Recorder | None = None):
        self.store = store
        self.metrics = metrics or Recorder()
        self.max_concurrent_jobs = max_concurrent_jobs
        self.keys = keys
        self.audit_log = audit_log
        self.kernels = kernels or Kernels()
        self.noise = noise or policy_mod.OpenDPNoise()
        self.rng = rng
        self.pool_key_id = pool.key_id(keys.paillier.public_key)
        self._active = 0
        self._active_lock = threading.Lock()
        self._running: dict[str, "MatchJob"] = {}  # admitted and not yet ended

    @property
    def active_jobs(self) -> int:
        return self._active

    def running(self) -> list["MatchJob"]:
        with self._active_lock:
            return list(self._running.values())

    def _job_started(self) -> None:
        """Count the job in, or refuse it when the server is at its limit (memory and cores are
        shared by all running jobs; a refused job spent nothing and can simply retry)."""
        with self._active_lock:
            if self._active >= self.max_concurrent_jobs:
                raise LimitExceeded(f"the server is already running {self._active} jobs", reason="server_busy",
                                    hint="retry in a minute")
            self._active += 1

    def _job_ended(self) -> None:
        with self._active_lock:
            self._active -= 1

    def begin(self, merchant: Principal, start: JobStart, activation: ActivationRequest | None = None, *,
              protocol: str = SECURE) -> "MatchJob":
        """Admit a job (policy and budget before any crypto). ``protocol``: SECURE (the default) or
        SEMI_HONEST (refused unless the policy enables it; never for an activation)."""
        if activation is not None and protocol != SECURE:
            raise ProtocolError("an activation runs the secure protocol only")
        try:
            seat = _JobSeat(self)
        except LimitExceeded as busy:
            self.metrics.job_refused(kind=job_kind(start, activation, protocol), protocol=protocol, reason=busy.reason)
            raise
        try:
            return self._begin(merchant, start, activation, seat, protocol)
        except BaseException:
            seat.release()  # idempotent: a job that already ended released it itself
            raise

    def _one_copy_user(self, merchant: Principal) -> None:
        """Two jobs of one merchant would patch the same stored copies: the second is refused as busy
        (the client retries). The check runs before the job is registered, so two jobs that start at
        the same instant can both pass; save_sync's compare-and-set then stores only the first one's
        sync, and each job's count stays its own consistent view."""
        with self._active_lock:
            if any(job.merchant.id == merchant.id and job.protocol == UNBALANCED for job in self._running.values()):
                raise LimitExceeded("this merchant is already running 1 jobs on its stored copies (unbalanced "
                                    "protocol)", reason="merchant_busy", hint="retry when it ends")

    def recover_interrupted(self, reason: str) -> int:
        """Jobs a crash (or a shutdown past its grace) left running end now, each with its 'failed'
        log entry carrying its charge, in the same transaction that marks it failed: every job the
        ledger saw start ends in the log. Reserved ε goes back; ε committed at acceptance stays."""
        running = self.store.running_jobs()
        if not running:
            return 0
        now = self.store.now()
        entries = [_interrupted_entry(job, now, reason) for job in running]
        self.audit_log.append(entries, then=lambda conn, first: self.store.fail_jobs_in(
            conn, [job["job_id"] for job in running], reason))
        for job in running:
            log.warning("job %s for %s failed: %s (ε %s)", job["job_id"], job["merchant"], reason,
                        "spent" if job["budget_state"] == "committed" else "refunded",
                        extra=fields(job_id=job["job_id"], merchant=job["merchant"], outcome="failed", reason=reason))
        return len(running)

    def suspend(self, merchant: Principal, reason: str) -> None:
        """A merchant caught deviating from the protocol loses its access until the operator restores it."""
        self.store.set_disabled("merchant", merchant.name, True)
        self.audit_log.record(principal_entry("merchant", "disabled", merchant.name, reason=reason[:500]))
        log.warning("merchant %s suspended: %s", merchant.name, reason[:200],
                    extra=fields(merchant=merchant.name, outcome="suspended"))

    def _begin(self, merchant: Principal, start: JobStart, activation: ActivationRequest | None,
               seat: "_JobSeat", protocol: str) -> "MatchJob":
        job_id = uuid.UUID(bytes=self.rng(16), version=4).hex
        phases = PhaseClock()
        phases.enter("admit")
        pol = self.store.effective_policy(merchant.name)
        info = self.store.audience_info()
        segments = tuple(info["segments"])
        sizes = dict(zip(start.labels, start.label_sizes))
        expression = None
        if activation is not None:
            activations.expire(self.store, self.audit_log.record)
            if not activation.name or len(activation.name) > 200:
                raise InputError("an activation needs a --name of 1-200 characters")
            expression = where.parse(activation.where, segments)
        try:
            if protocol == SEMI_HONEST and not pol.semi_honest_match:
                raise PolicyRefused("this server runs only the protocol that is secure against modified clients; "
                                    "the semi-honest Match call is switched off", reason="protocol_disabled",
                                    hint="upgrade matcher-client: it uses the secure protocol by default")
            policy_mod.check_request(pol, list_size=start.list_size, label_sizes=sizes,
                                     n_segments=len(segments))
            several = len(start.kinds) > 1 or self.store.identifier_columns() > 1
            if protocol == SEMI_HONEST and several:
                raise PolicyRefused("the semi-honest protocol matches one identifier a person, and this job has "
                                    "several (in the audience or in the list)", reason="protocol_not_allowed",
                                    hint="use the secure protocol (matcher-client's default)")
            if protocol == SECURE and activation is None and policy_mod.choose_protocol(
                    pol, requested=start.protocol, audience_size=info["members"], list_size=start.list_size,
                    client_can_enroll=bool(start.enrollment_key_id),
                    several_identifiers=several) == "unbalanced":
                protocol = UNBALANCED
                self._one_copy_user(merchant)
            epsilon = policy_mod.job_epsilon(pol)
            self.store.open_job(job_id, merchant, pol=pol, epsilon=epsilon, list_size=start.list_size,
                                labels=len(start.labels), label_sizes=start.label_sizes, protocol=protocol)
        except PolicyRefused as refused:
            log.info("job %s for %s refused: %s", job_id, merchant.name, refused.reason,
                     extra=fields(job_id=job_id, merchant=merchant.name, outcome="refused", reason=refused.reason))
            self.metrics.job_refused(kind=job_kind(start, activation, protocol), protocol=protocol,
                                     reason=refused.reason)
            self.store.record_refusal(job_id, merchant, refused.reason, start.list_size, len(start.labels))
            self.audit_log.append([job_entry("refused", job_id, merchant.name, pol, start.label_sizes,
                                             self.store.now(), reason=refused.reason, protocol=protocol)])
            raise
        job = MatchJob(self, job_id, merchant, pol, epsilon, start, activation, expression, seat, protocol=protocol,
                       phases=phases)
        with self._active_lock:
            self._running[job_id] = job
        faults.point("job.opened")
        # The unbalanced protocol reads the members from its copies and history, never all of them.
        audience = Audience(id_kind=info["id_kind"] or "", points=np.empty((0, 32), np.uint8),
                            segment_bits=np.empty(0, np.uint64), segments=segments) \
            if protocol == UNBALANCED else self.store.load_audience()
        job.audience_version = self.store.get_meta("audience_version") if protocol == UNBALANCED else audience.version
        try:
            secure = dict(job_id=job_id, rng=self.rng, kernels=self.kernels, audit_rows=pol.audit_rows,
                          padding=lambda n_streams: policy_mod.stream_padding(pol, n_streams=n_streams, noise=self.noise))
            if protocol == UNBALANCED:
                job.session = UnbalancedPlatformSession(audience, **secure, **job.stored_copies(audience))
            elif protocol == SECURE:
                job.session = SecurePlatformSession(
                    audience, **secure,
                    ordered=activation is not None, activation_label=activation.label if activation else None,
                    precomputed=lambda segment: job.take_stream_slot(audience, segment))
            if protocol != SEMI_HONEST:
                job.accepted = job.session.start(start)
                phases.enter("list")
                # JobAccepted carries the (noisy) stream sizes: from here on the job's ε is spent.
                self.store.commit_budget(job_id)
                job.charged = True
                faults.point("job.accepted")
                return job
            # Dummies hide the overlap from the merchant's own count.
            dummies = [policy_mod.dummy_count(pol, self.noise) for _ in start.labels] if pol.dummies else []
            randomness = pool.PooledRandomness(self.store, self.pool_key_id, self.keys.pool_key,
                                               self.keys.paillier.public_key.ciphertext_size)
            job.session = PlatformSession(audience, self.keys.paillier, job_id=job_id, dummies=dummies,
                                          rng=self.rng, kernels=self.kernels, randomness=randomness.take,
                                          precomputed=job.take_stream_slot(audience))
            job.accepted = job.session.start(start)
            phases.enter("list")
        except MatcherError as err:
            job.fail(err)
            raise
        return job


class _JobSeat:
    """One of the server's ``max_concurrent_jobs`` seats, taken at begin and given back exactly once."""

    def __init__(self, runner: JobRunner):
        runner._job_started()
        self._runner = runner
        self._held = True
        self._lock = threading.Lock()

    def release(self) -> None:
        with self._lock:
            if not self._held:
                return
            self._held = False
        self._runner._job_ended()


class MatchJob:
    def __init__(self, runner: JobRunner, job_id: str, merchant: Principal, pol: policy_mod.Policy,
                 epsilon: float, start: JobStart, activation: ActivationRequest | None = None,
                 expression: where.Expr | None = None, seat: "_JobSeat | None" = None, *, protocol: str = SECURE,
                 phases: PhaseClock | None = None):
        self._runner = runner
        self.protocol = protocol
        self.kind = job_kind(start, activation, protocol)
        # Wall time by phase (matcher.server.metrics.PHASES), for the metrics and the job's last log line.
        self.phases = phases or PhaseClock()
        # True once the job's ε is spent whatever happens (secure protocol, after acceptance).
        self.charged = False
        self._seat = seat
        self._stream_slots: list[int] = []  # ids of the precomputed stream slots this job took
        self.started = runner.store.now()
        self.activation = activation
        self._expression = expression
        self.job_id = job_id
        self.merchant = merchant
        self.policy = pol
        self.epsilon = epsilon
        self.start = start
        # The audience version the job ran against: its log entry names it (imports and removals change it).
        self.audience_version: str | None = None
        self.session: PlatformSession | SecurePlatformSession
        self.accepted: JobAccepted
        self._ended = threading.Event()
        self._end_lock = threading.Lock()

    def receive_blinded(self, chunk: BlindedChunk, stream: int | None = None) -> None:
        """A chunk of the list (secure protocol: of the merchant's copy for ``stream``)."""
        if self.protocol != SEMI_HONEST:
            self.session.receive_blinded(stream or 0, chunk)
        else:
            self.session.receive_blinded(chunk)

    def finish_list(self, stream: int | None = None, merchant_base: bytes = b"") -> None:
        if self.protocol != SEMI_HONEST:
            self.session.finish_list(stream or 0, merchant_base)
        else:
            self.session.finish_list()
        self.phases.enter("stream")

    def double_blinded(self) -> Iterator[BlindedChunk]:
        return self.session.double_blinded()

    def audience(self) -> Iterator[AudienceChunk]:
        yield from self.session.audience()
        self.phases.enter("return")

    def receive_returned(self, points: bytes, stream: int) -> None:
        self.session.receive_returned(stream, points)

    def stream(self, index: int) -> Iterator[bytes]:
        """Secure protocol: stream ``index`` (see matcher.protocol.secure_platform)."""
        yield from self.session.stream(index)
        self.phases.enter("return")

    def finish_stream(self, index: int) -> None:
        self.session.finish_stream(index)
        self.phases.enter("list")  # the next stream's, if any

    def finish(self, sums: LabelSums) -> Report:
        """Decrypt the merchant's sums, release them under the policy, log the release."""
        self.phases.enter("release")
        return self._release(self.session.receive_sums(sums), n_segments=len(self.accepted.segments))

    def finish_count(self) -> Report:
        """Secure protocol: release the counts of the streams that came back."""
        self.phases.enter("release")
        return self._release(self.session.aggregates(), n_segments=len(self.accepted.segments))

    def _release(self, aggregates: dict, n_segments: int) -> Report:
        runner = self._runner
        released = policy_mod.release(
            self.policy, {label: {"matched": a.matched, "segments": a.segments} for label, a in aggregates.items()},
            n_segments=n_segments, noise=runner.noise)
        spent = runner.store.budget_spent(self.merchant.id, self.policy.budget_period_seconds)
        report = {
            "job_id": self.job_id,
            "list_size": self.start.list_size,
            "labels": released,
            "epsilon_spent": self.epsilon,
            "epsilon_left": policy_mod.budget_after(self.policy, spent),
            "policy_digest": self.policy.digest(),
            "protocol": self.protocol,
        }
        report_json = canonical_json(report).decode()
        digest = hashlib.sha256(report_json.encode()).hexdigest()
        entry = job_entry("released", self.job_id, self.merchant.name, self.policy, self.start.label_sizes,
                          runner.store.now(), started=self.started, protocol=self.protocol,
                       epsilon=self.epsilon, report_digest=digest, released=released,
                          audience_version=self.audience_version)
        self._claim_end()
        faults.point("release.before_log")
        # The log entry, the job's state and its ε ledger row land in one transaction: a crash
        # leaves either all of them or none (then the job is recovered as failed at restart).
        leaf_index, checkpoint = runner.audit_log.append([entry], then=lambda conn, first: runner.store.finish_job_in(
            conn, self.job_id, released=True, report_json=report_json, leaf_index=first))
        faults.point("release.after_log")
        # The list size is the platform's to see; the matched counts before noise are not logged.
        log.info("job %s for %s released: %d ids, %d labels, ε %g, leaf %d", self.job_id, self.merchant.name,
                 self.start.list_size, len(self.start.labels), self.epsilon, leaf_index,
                 extra=self._record_end("released"))
        return Report(self.job_id, report_json, checkpoint, leaf_index, canonical_json(entry))

    def stored_copies(self, audience) -> dict:
        """The unbalanced session's access to this merchant's stored copies (matcher.server.unbalanced), as of
        the last whole import."""
        store, merchant, key_id = self._runner.store, self.merchant, self.start.enrollment_key_id
        # Registered as a reader of the history as of `upto`: each stream's delta is read later, when
        # the stream is reached, and no prune may take what it needs in between.
        upto = store.read_history_for(self.job_id)
        read: dict[str, unbalanced.Enrollment | None] = {}

        def copies(key: str) -> StoredCopy:
            was = unbalanced.enrollment(store, merchant.id, key)
            if was is not None and was.key_id != key_id:
                was = None  # the merchant has a new key: a new copy, in full
            read[key] = was
            bit = None if key == "" else audience.segments.index(key)
            return StoredCopy(scalar=unbalanced.stream_scalar(store, self._runner.keys.pool_key, key),
                              delta=unbalanced.delta(store, bit, since=was.synced if was else -1, upto=upto),
                              stored=lambda query: unbalanced.stored_tags(store, was, query) if was else query[:0],
                              merchant_base=was.merchant_base if was else None)

        def synced(key: str, merchant_base: bytes, toggles: np.ndarray) -> None:
            unbalanced.save_sync(store, merchant.id, key, key_id=key_id, merchant_base=merchant_base,
                                 was=read[key], synced=upto, toggles=toggles)

        return dict(copies=copies, synced=synced, key_changed=lambda key: unbalanced.drop(store, merchant.id, key))

    def take_stream_slot(self, audience, segment: str = "") -> PrecomputedStream | None:
        """The member half of this job's stream (of every member, or of ``segment``'s), if the server
        made one while idle (used once)."""
        taken = slots.take(self._runner.store, self._runner.keys.pool_key, audience.version, segment)
        if taken is None:
            return None
        self._stream_slots.append(taken.slot_id)
        return taken.stream

    def _claim_end(self) -> None:
        if not self._end():
            raise ProtocolError("the job was aborted before its release")

    def _end(self) -> bool:
        """Mark the job ended; True for the one caller that ended it (finish and abort may race)."""
        with self._end_lock:
            if self._ended.is_set():
                return False
            self._ended.set()
        with self._runner._active_lock:
            self._runner._running.pop(self.job_id, None)
        if self._seat:
            self._seat.release()
        for slot_id in self._stream_slots:
            slots.spend(self._runner.store, slot_id)
        return True

    def finish_activation(self) -> ActivationResult:
        """Filter the matched rows, refuse a slice whose noisy size is under k, store it, log it."""
        runner, activation = self._runner, self.activation
        assert activation is not None and self._expression is not None
        self.phases.enter("release")
        audience = self.session.members  # the snapshot the stream was built from, even if an import ran since
        rows = self.session.matched_rows()
        chosen = rows[self._expression.mask_filter(audience.segment_bits[rows])]
        # One noisy size decides and is released: the refusal is post-processing of it, and charged.
        released = policy_mod.release(self.policy, {"slice": {"matched": len(chosen), "segments": {}}},
                                      n_segments=0, noise=runner.noise)["slice"]["matched"]
        if released is None:
            raise PolicyRefused(f"the slice's noisy size is under k = {self.policy.k}; nothing was activated "
                                f"(the job's ε is spent)", reason="slice_too_small",
                                hint="widen the --where expression or the label")
        handle = f"act_{self.job_id[:16]}"
        self._claim_end()
        now = runner.store.now()
        expires = now + self.policy.activation_ttl_seconds
        entry = job_entry("activated", self.job_id, self.merchant.name, self.policy, self.start.label_sizes, now,
                          started=self.started, protocol=self.protocol,
                       epsilon=self.epsilon, audience_version=self.audience_version)
        entry.update({"activation": handle, "name": activation.name, "where": str(self._expression),
                      "label": activation.label, "released": {"slice": {"matched": released, "segments": {}}},
                      "expires": round(expires, 3)})

        def store_slice(conn, first: int) -> None:
            runner.store.create_activation_in(
                conn, handle, self.merchant, job_id=self.job_id, name=activation.name, where=str(self._expression),
                label=activation.label, row_ids=audience.row_ids[chosen].tolist(), noisy_size=released,
                ttl_seconds=self.policy.activation_ttl_seconds, created=now)
            runner.store.finish_job_in(conn, self.job_id, released=True, leaf_index=first)

        faults.point("release.before_log")
        leaf_index, checkpoint = runner.audit_log.append([entry], then=store_slice)
        faults.point("release.after_log")
        # The noisy size, as released: the slice's true size is not the logs' to hold.
        log.info("activation %s (job %s) for %s stored: noisy size %d, expires %s", handle, self.job_id,
                 self.merchant.name, released, round(expires), extra=self._record_end("released"))
        return ActivationResult(handle, released, expires, checkpoint, leaf_index)

    def fail(self, error: BaseException) -> None:
        """End the job on ``error``: audited with its charge; a deviation also suspends the merchant."""
        refused = isinstance(error, PolicyRefused)
        self.abort(str(error) or type(error).__name__, state="refused" if refused else "failed",
                   code=error.reason if refused else None)
        if isinstance(error, ProtocolDeviation):
            self._runner.suspend(self.merchant, f"job {self.job_id}: {error}")

    def abort(self, reason: str, *, state: str = "cancelled", code: str | None = None) -> None:
        """Idempotent, and a no-op after a release: safe to call from any cleanup path. ``state`` and
        ``code`` (a refusal's reason code) are for the metrics: without an error, the job was cancelled."""
        if not self._end():
            return
        runner = self._runner
        log.info("job %s for %s failed: %s", self.job_id, self.merchant.name, reason[:200],
                 extra=self._record_end(state, code))
        entry = job_entry("failed", self.job_id, self.merchant.name, self.policy, self.start.label_sizes,
                          runner.store.now(), started=self.started, reason=reason[:500], protocol=self.protocol,
                       epsilon=self.epsilon if self.charged else 0.0, charged=self.charged)
        faults.point("fail.before_log")
        runner.audit_log.append([entry], then=lambda conn, first: runner.store.finish_job_in(
            conn, self.job_id, released=False, reason=reason[:500]))

    def _record_end(self, state: str, code: str | None = None) -> dict:
        """Record the job's end in the metrics; the structured fields of its last log line."""
        phases = self.phases.stop()
        self._runner.metrics.job_ended(kind=self.kind, protocol=self.protocol, state=state, reason=code,
                                       phases=phases)
        for phase, seconds in phases.items():
            if phase != "total":
                log.debug("job %s phase %s: %.3f s", self.job_id, phase, seconds,
                          extra=fields(job_id=self.job_id, merchant=self.merchant.name, phase=phase, duration=seconds))
        return fields(job_id=self.job_id, merchant=self.merchant.name, kind=self.kind, protocol=self.protocol,
                      outcome=state, reason=code, duration=round(phases["total"], 6),
                      phases={phase: round(s, 6) for phase, s in phases.items() if phase != "total"})


def job_kind(start: JobStart, activation: ActivationRequest | None, protocol: str) -> str:
    """activation, count_only (secure protocol, no segment asked: per-label overlap counts only) or match."""
    if activation is not None:
        return "activation"
    if protocol != SEMI_HONEST and not start.all_segments and not start.segments:
        return "count_only"
    return "match"


def _interrupted_entry(job: dict, now: float, reason: str) -> dict:
    """The 'failed' entry of a job found running at start-up, from what the store kept of it."""
    pol = policy_mod.Policy.from_dict(json.loads(job["policy_json"])) if job["policy_json"] else \
        policy_mod.Policy()
    charged = job["budget_state"] == "committed"
    sizes = json.loads(job["label_sizes"]) if job["label_sizes"] else [job["list_size"] or 0]
    return job_entry("failed", job["job_id"], job["merchant"], pol, sizes, now, started=job["created"], reason=reason,
                     protocol=job["protocol"] or SEMI_HONEST, epsilon=float(job["epsilon"]) if charged else 0.0,
                     charged=charged)
