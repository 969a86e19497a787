"""Assembles the gRPC server: store, keys, job runner, servicers, auth interceptor, TLS, health, reflection."""

from __future__ import annotations

import logging
import os
import threading
import time
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from matcher.server import keys as keys_mod
from matcher.server._logging import fields
from matcher.errors import InputError
from matcher.crypto import pool
from matcher.crypto.kernels import EncryptionContext, Kernels, local_kernels
from matcher.server import slots
from matcher.server.jobs import JobRunner
from matcher.server.auditlog import AuditLog
from matcher.server.metrics import MetricsEndpoint, PrometheusRecorder
from matcher.policy import NoiseSource
from matcher.protocol.platform import precompute_stream
from matcher.protocol.wire import MAX_MESSAGE_BYTES
from matcher.server.service import METHOD_ROLES, AuditServicer, Authenticator, MatchServicer
from matcher.server.store import Store
from matcher.v1 import audit_pb2, audit_pb2_grpc, match_pb2, match_pb2_grpc

log = logging.getLogger("matcher.server")

_MATCH_SERVICE = match_pb2.DESCRIPTOR.services_by_name["MatchService"].full_name
_AUDIT_SERVICE = audit_pb2.DESCRIPTOR.services_by_name["AuditService"].full_name


@dataclass
class ServerConfig:
    db: Path
    listen: str = "127.0.0.1:50051"
    tls_cert: Path | None = None
    tls_key: Path | None = None
    max_workers: int = 16
    max_concurrent_jobs: int = 4
    # A job stream that sends nothing for this long is cancelled (its job fails, logged, its place freed).
    idle_timeout: float = 60.0
    # Job streams one merchant may hold open at once.
    streams_per_merchant: int = 2
    parallel: bool = True
    kernels: Kernels | None = None
    noise: NoiseSource | None = None
    rng: Callable[[int], bytes] = field(default=os.urandom)
    clock: Callable[[], float] = field(default=time.time)
    # Precomputed Paillier randomness to keep ready (values; 0 = none): encrypting then costs one product.
    randomness_pool: int = 0
    # Precomputed member halves of job streams (b, order, b·H(y)) to keep ready; 0 = none.
    stream_slots: int = 0
    # HOST:PORT of the Prometheus endpoint (matcher.server.metrics); None = no metrics, nothing recorded.
    metrics: str | None = None
    # An audience of at most this many members is read into memory at start-up; a bigger one when a
    # job first streams it, or by the precomputer while idle. 0: never at start-up.
    audience_at_start: int = 2_000_000


class _StreamGuard:
    """Keeps job streams from starving the server: at most ``max_streams`` at once (the rest of the
    worker threads stay free for health checks and the read-only calls), at most ``per_merchant`` for
    one merchant, and any stream that neither sends nor reads for ``idle_timeout`` seconds is
    cancelled, which fails its job (logged) and frees its place. Reading counts: while the platform
    streams a large audience the merchant only receives and blinds, sending nothing for minutes at
    10^6-10^7 members, and must not be cut off for it. A refusal says when to retry."""

    def __init__(self, max_streams: int, per_merchant: int, idle_timeout: float):
        self._max, self._per_merchant, self._idle = max_streams, per_merchant, idle_timeout
        self._lock = threading.Lock()
        self._open: dict[int, list] = {}   # id -> [merchant, context, last activity]
        self._halt = threading.Event()
        threading.Thread(target=self._watch, name="matcher-stream-watch", daemon=True).start()

    def wrap(self, handler: grpc.RpcMethodHandler, merchant: str) -> grpc.RpcMethodHandler:
        behavior = handler.stream_stream

        def guarded(requests, context):
            ticket = self._enter(merchant, context)
            try:
                for response in behavior(self._watched(ticket, requests), context):
                    yield response
                    # gRPC asks for the next response once this one is on its way: the client reads.
                    self._touch(ticket)
            finally:
                with self._lock:
                    self._open.pop(ticket, None)

        return grpc.stream_stream_rpc_method_handler(guarded, request_deserializer=handler.request_deserializer,
                                                     response_serializer=handler.response_serializer)

    def _enter(self, merchant: str, context) -> int:
        with self._lock:
            mine = sum(1 for entry in self._open.values() if entry[0] == merchant)
            if mine >= self._per_merchant:
                context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED,
                              f"this merchant already has {mine} job streams open (limit {self._per_merchant}); "
                              "retry when one has finished")
            if len(self._open) >= self._max:
                context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED,
                              "the server is busy with other jobs; retry in a few seconds")
            ticket = id(context)
            self._open[ticket] = [merchant, context, time.monotonic()]
            return ticket

    def _watched(self, ticket: int, requests):
        for request in requests:
            self._touch(ticket)
            yield request

    def _touch(self, ticket: int) -> None:
        with self._lock:
            if ticket in self._open:
                self._open[ticket][2] = time.monotonic()

    def _watch(self) -> None:
        while not self._halt.wait(min(1.0, self._idle / 4)):
            now = time.monotonic()
            with self._lock:
                stalled = [entry for entry in self._open.values() if now - entry[2] > self._idle]
            for merchant, context, _ in stalled:
                log.warning("a job stream of %s neither sent nor read for %g s: cancelled", merchant, self._idle,
                            extra=fields(merchant=merchant, outcome="cancelled"))
                context.cancel()

    def stop(self) -> None:
        self._halt.set()


class _AuthInterceptor(grpc.ServerInterceptor):
    """Refuses calls without a valid token for the service before any handler runs. The reply is the
    same UNAUTHENTICATED with the same text whether the token is missing, unknown or of the wrong role.
    Job streams (MatchService's streaming calls) also pass the stream guard."""

    def __init__(self, auth: Authenticator, guard: _StreamGuard | None = None):
        self._auth = auth
        self._guard = guard

    def intercept_service(self, continuation, details):
        service = details.method.rsplit("/", 2)[-2] if details.method.count("/") >= 2 else ""
        roles = METHOD_ROLES.get(details.method)
        handler = continuation(details)
        if roles is None or handler is None:
            return handler
        who = self._auth.principal(details.invocation_metadata)
        if who is None or who.role not in roles:
            return _refusal(handler)
        if self._guard is not None and service == _MATCH_SERVICE and handler.request_streaming:
            return self._guard.wrap(handler, who.name)
        return handler


def _refusal(handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
    def deny(request, context):
        context.abort(grpc.StatusCode.UNAUTHENTICATED, "authentication required")

    kinds = {(False, False): grpc.unary_unary_rpc_method_handler, (False, True): grpc.unary_stream_rpc_method_handler,
             (True, False): grpc.stream_unary_rpc_method_handler, (True, True): grpc.stream_stream_rpc_method_handler}
    return kinds[(handler.request_streaming, handler.response_streaming)](
        deny, request_deserializer=handler.request_deserializer, response_serializer=handler.response_serializer)


class _Stopping(Exception):
    """The server stops while a slot is being made: the half-made slot is dropped."""


def _paced(pieces: Iterator, busy: Callable[[], bool], halt: threading.Event) -> Iterator:
    """``pieces``, paused while ``busy()`` (a job runs): a slot of a big audience takes minutes to
    make (mostly its Paillier encryptions), and a job that arrives meanwhile gets the cores."""
    for piece in pieces:
        while busy() and not halt.is_set():
            halt.wait(0.5)
        if halt.is_set():
            raise _Stopping()
        yield piece


class _Precomputer(threading.Thread):
    """While no job runs: keeps ``stream_slots`` precomputed stream halves for the current audience
    (matcher.protocol.platform.PrecomputedStream: a secure job uses one for its stream 0) and, when
    the semi-honest protocol is enabled, the slots' ciphertexts and the randomness pool topped up
    (matcher.crypto.pool). Jobs that find them ready skip that work; jobs that don't, do it."""

    def __init__(self, runner: JobRunner, pool_values: int, stream_slots: int):
        super().__init__(name="matcher-precompute", daemon=True)
        self._runner = runner
        self._target_batches = -(-pool_values // pool.BATCH)
        self._stream_slots = stream_slots
        self._halt = threading.Event()

    def run(self) -> None:
        runner = self._runner
        context, rounds = EncryptionContext(runner.keys.paillier), 0
        while not self._halt.wait(0.05):
            try:
                if runner.active_jobs:
                    self._halt.wait(1.0)
                elif (segment := self._stream_slot_wanted()) is not None:
                    self._make_stream_slot(segment)
                elif (self._semi_honest()
                      and runner.store.pool_batches(runner.pool_key_id) < self._target_batches):
                    if rounds % 64 == 0:
                        context = EncryptionContext(runner.keys.paillier)  # a fresh secret base h now and then
                    rounds += 1
                    self._top_up_pool(context)
                else:
                    self._halt.wait(1.0)
            except Exception:  # kernels or store closed under us, or _Stopping: stopping
                if not self._halt.is_set():
                    log.exception("precomputation failed")
                return

    def _stream_slot_wanted(self) -> str | None:
        """The stream that lacks a slot: '' (every member) first, then each segment's (the secure
        protocol's segment streams); None when all have ``stream_slots``."""
        if not self._stream_slots:
            return None  # before the audience is read: the randomness pool alone does not need it
        store = self._runner.store
        audience = store.load_audience()
        # Spent slots, and those of an older snapshot (a new import), are useless.
        store.drop_stream_slots(keep_version=audience.version)
        if not len(audience) or audience.width > 1:
            # Members of several identifiers go out as tuples, which slots do not hold (yet).
            return None
        for segment in ("", *audience.segments):
            if store.stream_slots(audience.version, segment) < self._stream_slots:
                return segment
        return None

    def _semi_honest(self) -> bool:
        """Paillier work (slot ciphertexts, the randomness pool) serves only the semi-honest protocol,
        so it is done only while the operator's policy enables that protocol."""
        return self._runner.store.effective_policy().semi_honest_match

    def _make_stream_slot(self, segment: str) -> None:
        runner = self._runner
        audience = runner.store.load_audience()
        # Ciphertexts serve only the semi-honest protocol, which streams every member at once.
        key = runner.keys.paillier if self._semi_honest() and not segment else None
        stream = precompute_stream(audience, runner.kernels, key=key,
                                   rows=audience.segment_rows(segment) if segment else None)
        slots.write(runner.store, runner.keys.pool_key, stream, audience_version=audience.version, segment=segment,
                    pieces=_paced(stream.pieces, lambda: runner.active_jobs > 0, self._halt))

    def _top_up_pool(self, context: EncryptionContext) -> None:
        runner = self._runner
        size = runner.keys.paillier.public_key.ciphertext_size
        # Encryptions of zero are exactly the randomness r = h^alpha.
        data = runner.kernels.submit_encrypt(context, [0] * (pool.BATCH * max(1, runner.kernels.workers))).result()
        batch = pool.BATCH * size
        runner.store.pool_add(runner.pool_key_id, [pool.seal_serialized(runner.keys.pool_key, size, data[i:i + batch])
                                                   for i in range(0, len(data), batch)])

    def stop(self) -> None:
        self._halt.set()
        self.join(timeout=30)


@dataclass
class MatcherServer:
    """The gRPC server with what it owns; ``stop`` is the graceful shutdown SIGTERM triggers."""

    grpc_server: grpc.Server
    store: Store
    runner: JobRunner
    health: health.HealthServicer
    filler: _Precomputer | None = None
    metrics: MetricsEndpoint | None = None
    _stopping: threading.Lock = field(default_factory=threading.Lock)
    _stopped: bool = False

    def start(self) -> None:
        self.grpc_server.start()
        if self.filler:
            self.filler.start()
        if self.metrics:
            self.metrics.start()

    def wait_for_termination(self, timeout: float | None = None) -> bool:
        return self.grpc_server.wait_for_termination(timeout)

    def stop(self, grace: float | None = 10.0) -> None:
        """Stop taking calls, let running jobs finish for ``grace`` seconds, then fail the rest cleanly.
        Idempotent: a signal handler and a test teardown may both call it."""
        with self._stopping:
            if self._stopped:
                return
            self._stopped = True
        self.health.enter_graceful_shutdown()
        self.grpc_server.stop(grace).wait()
        if getattr(self, "guard", None) is not None:
            self.guard.stop()
        if self.filler and self.filler.is_alive():
            self.filler.stop()
        for job in self.runner.running():  # past the grace: each ends as failed, logged with its charge
            job.abort("server shut down during the job")
        self.runner.recover_interrupted("server shut down during the job")
        if self.metrics:  # before the store closes: a scrape reads it
            self.metrics.stop()
        self.runner.kernels.close()
        self.store.close()


def _bind(add_port: Callable[[], int], listen: str) -> int:
    try:
        port = add_port()
    except RuntimeError:  # grpcio raises where older versions returned 0
        port = 0
    if port == 0:
        raise InputError(f"cannot listen on {listen}: the address is in use or not this machine's",
                         hint="stop the other server, or pick another --listen HOST:PORT")
    return port


def build_server(config: ServerConfig) -> tuple[MatcherServer, int]:
    store = Store(config.db, clock=config.clock)
    keys = keys_mod.load(keys_mod.key_path_for(config.db))
    # The audience's arrays (48 B a member, 229 MiB at 5M) are read here when they are small, so
    # that the first balanced job does not wait for them. A bigger audience is read by the first job
    # that streams it (balanced, or an activation; then kept until an import) or by the precomputer
    # making stream slots: an unbalanced job never reads it, and a server that runs only those
    # would hold it for nothing.
    members = store.audience_info()["members"]
    if 0 < members <= config.audience_at_start:
        members = len(store.load_audience())
        log.info("audience loaded: %d members", members)
    else:
        log.info("audience: %d members (read when a job first streams it)", members)
    audit_log = AuditLog.for_store(store, keys.signer)
    kernels = config.kernels or local_kernels(config.parallel)
    recorder = PrometheusRecorder() if config.metrics else None
    runner = JobRunner(store, keys, audit_log, kernels=kernels, noise=config.noise,
                       max_concurrent_jobs=config.max_concurrent_jobs,
                       rng=config.rng, metrics=recorder)
    auth = Authenticator(store)
    # No SO_REUSEPORT: a second server on a port in use must fail, not take part of the traffic.
    options = [("grpc.so_reuseport", 0),
               ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
               ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
               ("grpc.keepalive_time_ms", 60_000)]
    # Job streams may take all but 4 worker threads; those stay for health checks and unary calls.
    guard = _StreamGuard(max(1, config.max_workers - 4), config.streams_per_merchant, config.idle_timeout)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=config.max_workers),
                         interceptors=[_AuthInterceptor(auth, guard)], options=options,
                         maximum_concurrent_rpcs=config.max_workers)
    match_pb2_grpc.add_MatchServiceServicer_to_server(MatchServicer(runner, auth), server)
    audit_pb2_grpc.add_AuditServiceServicer_to_server(
        AuditServicer(store, keys.signer.verifier_key, audit_log.origin, auth), server)
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    for name in (_MATCH_SERVICE, _AUDIT_SERVICE, ""):
        health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    reflection.enable_server_reflection(
        (_MATCH_SERVICE, _AUDIT_SERVICE, health.SERVICE_NAME, reflection.SERVICE_NAME), server)
    try:
        if config.tls_cert or config.tls_key:
            if not (config.tls_cert and config.tls_key):
                raise ValueError("TLS needs both --tls-cert and --tls-key")
            creds = grpc.ssl_server_credentials([(Path(config.tls_key).read_bytes(), Path(config.tls_cert).read_bytes())])
            port = _bind(lambda: server.add_secure_port(config.listen, creds), config.listen)
        else:
            port = _bind(lambda: server.add_insecure_port(config.listen), config.listen)
        if recorder is not None:
            recorder.watch(runner, stream_slots=config.stream_slots, randomness_pool=config.randomness_pool)
            endpoint = MetricsEndpoint(recorder.registry, config.metrics)
    except (InputError, ValueError, OSError):
        server.stop(None)  # gives back a port it may have bound
        if config.kernels is None:
            kernels.close()
        store.close()
        raise
    # Only once the port is ours: a second server started by mistake on the same database must not
    # fail the first one's running jobs.
    recovered = runner.recover_interrupted("server restarted during the job")
    if recovered:
        log.warning("%d jobs interrupted by the last stop ended as failed (logged with their charge)", recovered)
    # Slots taken by jobs a crash interrupted are spent; slots of an older audience are useless.
    store.drop_stream_slots(keep_version=store.get_meta("audience_version", ""), at_startup=True)
    filler = (_Precomputer(runner, config.randomness_pool, config.stream_slots)
              if config.randomness_pool > 0 or config.stream_slots > 0 else None)
    matcher_server = MatcherServer(server, store, runner, health_servicer, filler,
                                   metrics=endpoint if recorder is not None else None)
    matcher_server.guard = guard
    return matcher_server, port
