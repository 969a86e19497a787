"""The merchant's Python API: ``match(...)`` runs one job against a matcher server and returns the report.

Everything secret stays in this process: raw IDs are normalized and hashed here, blinded with a
scalar that never leaves memory, and only a·H(x) goes on the wire.

    >>> report = match("platform.example:50051", token, "customers.csv", id_column="phone",
    ...                id_type="phone", label_column="store")
    >>> report["labels"]["all"]["matched"]
"""

from __future__ import annotations

import ast
import contextlib
import itertools
import json
import multiprocessing
import os
import queue
import re
import sys
import threading
import time
from collections import deque
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator, Mapping

from matcher import ids, tabular
from matcher.crypto.kernels import Kernels, local_kernels
from matcher.errors import LimitExceeded, ProtocolError
from matcher.protocol.merchant import MerchantSession
from matcher.protocol.messages import PROTOCOL_CHOICES, SECURE, SEMI_HONEST, AudienceChunk, BlindedChunk, JobAccepted
from matcher.protocol.secure_merchant import SecureMerchantSession
from matcher.v1 import match_pb2, match_pb2_grpc
from matcher_client._rpc import channel, rpc_errors
from matcher_client.enrollment_key import LazyEnrollmentKey, default_path

# Refusals that say the server (or this merchant's share of it) is busy: retried, since nothing was charged.
_BUSY = re.compile(r"already running \d+ jobs|server is busy|job streams open")
# Called as progress(phase, done, total); total may be None.
Progress = Callable[[str, int, "int | None"], None]


@dataclass
class MerchantList:
    """A list read and prepared locally, before any network traffic."""

    prepared: ids.PreparedList
    id_kind: str


def read_list(file: str, *, id_column: str, id_type: str, label_column: str | None = None, region: str = "CN",
              hashed_kind: str = "phone", progress: Progress | None = None, parallel: bool = True) -> MerchantList:
    """Read and normalize a list file. Normalization (phonenumbers) is the slow part: batches are
    prepared on every core and merged in file order, with the same result as one pass.

    A missing or unreadable file (or a directory) is an :class:`~matcher.errors.InputError` naming it.
    Works from any caller: a script without an ``if __name__ == "__main__":`` guard, ``python -c``
    or ``python -`` included (see :func:`_worker_context`)."""
    notify = progress or (lambda phase, done, total: None)
    ids.hash_kind(id_type, hashed_kind)  # refuse a bad id type before reading anything
    total = tabular.count_rows(file)     # and a missing file before starting any process
    batches = ([(r[0] if r[0] is not None else "", r[1]) for r in batch]
               for batch in tabular.read_columns(file, [id_column, label_column]))
    workers = os.cpu_count() or 1
    small = total is not None and total <= tabular.BATCH_ROWS
    context = None if not parallel or workers == 1 or small else _worker_context()
    if context is None:
        parts = []
        for batch in batches:
            parts.append(ids.prepare(batch, id_type, region=region))
            notify("reading", sum(p.rows for p in parts), total)
        if not parts:
            notify("reading", 0, total)
    else:
        parts = []
        with ProcessPoolExecutor(workers, mp_context=context) as pool:
            futures = deque()
            for batch in batches:
                futures.append(pool.submit(ids.prepare, batch, id_type, region=region))
                while len(futures) > 2 * workers:  # bounded read-ahead
                    parts.append(futures.popleft().result())
                    notify("reading", sum(p.rows for p in parts), total)
            while futures:
                parts.append(futures.popleft().result())
                notify("reading", sum(p.rows for p in parts), total)
    return MerchantList(prepared=ids.merge(parts), id_kind=ids.hash_kind(id_type, hashed_kind))


def _worker_context() -> multiprocessing.context.BaseContext | None:
    """How to start the processes that normalize a big list: a multiprocessing context, or None to
    normalize in this process.

    ``spawn`` (the default here, as in the crypto pool: it inherits no threads) starts each worker
    by re-importing ``__main__``. A script that calls us from unguarded top-level code would then run
    again in every worker (multiprocessing refuses: RuntimeError, BrokenProcessPool), and a script
    read from stdin (``python -``) cannot be re-read at all. Only then, ``fork`` instead (Linux, and
    only while this is the process's one Python thread, so no lock can be inherited held; the
    workers run pure Python and exit without running any of the parent's handlers), or else no pool:
    slower, same result."""
    if _spawn_is_safe():
        return multiprocessing.get_context("spawn")
    if sys.platform.startswith("linux") and threading.active_count() == 1:
        return multiprocessing.get_context("fork")
    return None


def _spawn_is_safe() -> bool:
    """Whether a spawned worker can re-import ``__main__`` without failing or calling us again.
    Mirrors what ``multiprocessing.spawn`` re-imports (by module name, else by path, else nothing)."""
    main = sys.modules.get("__main__")
    spec_name = getattr(getattr(main, "__spec__", None), "name", None)
    if spec_name is not None:
        if spec_name == "__main__" or spec_name.endswith(".__main__"):
            return True  # spawn leaves a package's __main__ alone
        path = getattr(main.__spec__, "origin", None)
    else:
        path = getattr(main, "__file__", None)
        if path is None:
            return True  # python -c, the REPL, a notebook: nothing is re-imported
        if os.path.splitext(os.path.basename(path))[0] == "ipython":
            return True  # spawn special-cases it
    if not path or not os.path.isfile(path):
        return False  # '<stdin>' (python -): a worker would try to open it and die
    return _called_under_main_guard(main, path)


def _called_under_main_guard(main, path: str) -> bool:
    """False if ``__main__``'s top-level code is running us from outside an ``if __name__ ==
    "__main__":`` block, i.e. a worker re-importing it would call us again."""
    line = None
    frame = sys._getframe(1)
    while frame is not None:
        if frame.f_globals is main.__dict__ and frame.f_code.co_name == "<module>":
            line = frame.f_lineno
        frame = frame.f_back
    if line is None:
        return True  # called after __main__ ran (a callback, a thread, an interactive session)
    try:
        with open(path, "rb") as source:
            tree = ast.parse(source.read())
    except (OSError, SyntaxError, ValueError):
        return False
    return any(isinstance(node, ast.If) and _is_main_test(node.test) and node.body
               and node.body[0].lineno <= line <= (node.body[-1].end_lineno or node.body[-1].lineno)
               for node in tree.body)


def _is_main_test(test: ast.expr) -> bool:
    """``__name__ == "__main__"`` (either way round)."""
    if not (isinstance(test, ast.Compare) and len(test.ops) == 1 and isinstance(test.ops[0], ast.Eq)):
        return False
    sides = [test.left, test.comparators[0]]
    names = [s for s in sides if isinstance(s, ast.Name) and s.id == "__name__"]
    strings = [s for s in sides if isinstance(s, ast.Constant) and s.value == "__main__"]
    return len(names) == 1 and len(strings) == 1


def prepare_rows(rows: Iterable[tuple[str, str | None]], *, id_type: str, region: str = "CN",
                 hashed_kind: str = "phone") -> MerchantList:
    """Normalize in-memory ``(id, label)`` rows (in this process: no pool, so no start-up concerns)."""
    return MerchantList(prepared=ids.prepare(rows, id_type, region=region), id_kind=ids.hash_kind(id_type, hashed_kind))


def match(server: str, token: str, file: str | None = None, *, id_column: str | None = None, id_type: str,
          label_column: str | None = None, rows: Iterable[tuple[str, str | None]] | None = None,
          region: str = "CN", hashed_kind: str = "phone", tls_ca: str | None = None,
          progress: Progress | None = None, kernels: Kernels | None = None, timeout: float | None = None,
          rng: Callable[[int], bytes] = os.urandom, cache: str | None = None, count_only: bool = False,
          segments: Iterable[str] | None = None, protocol: str = SECURE, retries: int = 10,
          mode: str = "auto", enrollment_key: str | None = None) -> dict:
    """Run a match job on ``file`` (or on in-memory ``rows`` of (id, label)) and return the report dict.

    Every segment is counted unless ``segments`` names some (each costs one more pass over the
    platform members that hold it); ``count_only``: per-label overlap counts only, the fastest job.
    ``protocol="semi_honest"``: the older protocol, which a server runs only when its operator
    enabled it (see docs/threat-model.md). A server too busy to take the job refuses it before
    anything is charged; the job is retried up to ``retries`` times, with backoff.

    ``mode``: "auto" (the server picks by the sizes), "balanced" or "unbalanced" (the platform keeps
    this merchant's blinded copy of its audience between jobs; README "Unbalanced mode"). The
    unbalanced protocol's long-lived key lives in ``enrollment_key`` (default: one file per server
    and token under ~/.matcher-client, or $MATCHER_CLIENT_HOME), encrypted with the token."""
    if (file is None) == (rows is None):
        raise ValueError("give exactly one of file= or rows=")
    if file is not None:
        if not id_column:
            raise ValueError("id_column is required with file=")
        merchant_list = read_list(file, id_column=id_column, id_type=id_type, label_column=label_column,
                                  region=region, hashed_kind=hashed_kind)
    else:
        merchant_list = prepare_rows(rows, id_type=id_type, region=region, hashed_kind=hashed_kind)
    return run_job(server, token, merchant_list, tls_ca=tls_ca, progress=progress, kernels=kernels,
                   timeout=timeout, rng=rng, cache=cache, count_only=count_only, segments=segments, protocol=protocol,
                   retries=retries, mode=mode, enrollment_key=enrollment_key)


@contextlib.contextmanager
def _kernels(kernels: Kernels | None, list_size: int, cache: str | None) -> Iterator[Kernels]:
    """The caller's kernels, or our own (a pool for big lists), behind the hash cache when asked.
    What we create we close; the caller's kernels stay open."""
    own = kernels is None
    # A pool of spawned workers re-imports __main__: not from unguarded scripts or `python -`
    # (see _worker_context), where the job blinds in this process instead (slower, same result).
    kernels = kernels or local_kernels(parallel=list_size > 20_000 and _spawn_is_safe())
    caching = None
    if cache:
        from matcher_client.hash_cache import CachingKernels, HashCache

        caching = CachingKernels(kernels, HashCache(cache))
    try:
        yield caching or kernels
    finally:
        if caching:
            caching.flush()
        if own:
            kernels.close()


def run_job(server: str, token: str, merchant_list: MerchantList, *, tls_ca: str | None = None,
            progress: Progress | None = None, kernels: Kernels | None = None, timeout: float | None = None,
            rng: Callable[[int], bytes] = os.urandom, cache: str | None = None, count_only: bool = False,
            segments: Iterable[str] | None = None, protocol: str = SECURE, retries: int = 10,
            mode: str = "auto", enrollment_key: str | None = None) -> dict:
    if protocol not in (SECURE, SEMI_HONEST):
        raise ValueError(f"protocol must be {SECURE!r} or {SEMI_HONEST!r}")
    if mode not in PROTOCOL_CHOICES:
        raise ValueError(f"mode must be one of {', '.join(PROTOCOL_CHOICES)}")
    enrollment = None
    if protocol == SECURE and mode != "balanced":
        enrollment = LazyEnrollmentKey(enrollment_key or default_path(server, token), token)
    if count_only and segments:
        raise ValueError("count_only asks for no segments; give one or the other")
    if protocol == SEMI_HONEST and (count_only or segments is not None):
        raise ValueError("the semi-honest protocol always sums every segment")
    prepared = merchant_list.prepared
    notify = progress or (lambda phase, done, total: None)
    with _kernels(kernels, len(prepared.keys), cache) as kernels:
        for attempt in itertools.count():
            try:
                with rpc_errors(), channel(server, tls_ca) as chan:
                    stub = match_pb2_grpc.MatchServiceStub(chan)
                    if protocol == SECURE:
                        session = SecureMerchantSession(prepared.keys, prepared.labels, id_kind=merchant_list.id_kind,
                                                        rng=rng, kernels=kernels, protocol=mode, enrollment=enrollment)
                        start = session.start(segments=tuple(segments or ()),
                                              all_segments=not count_only and segments is None)
                        report = _secure_exchange(stub.Count, token, session, start, len(prepared.keys), notify,
                                                  timeout)
                    else:
                        session = MerchantSession(prepared.keys, prepared.labels, id_kind=merchant_list.id_kind,
                                                  rng=rng, kernels=kernels)
                        report = _semi_honest_exchange(stub, token, session, len(prepared.keys), notify, timeout)
                break
            except LimitExceeded as busy:
                if attempt >= retries or not _BUSY.search(str(busy)):
                    raise
                # Refused before anything was charged: wait (1, 2, 4, ... s, with jitter) and try again.
                delay = min(10.0, 2.0 ** attempt) * (0.75 + 0.5 * int.from_bytes(rng(1), "big") / 255)
                notify("waiting for the server", attempt + 1, retries)
                time.sleep(delay)
    released = json.loads(report.report_json)
    return {
        "job_id": report.job_id,
        "list_size": released["list_size"],
        "rows": prepared.rows,
        "invalid": dict(prepared.invalid),
        "duplicates": prepared.duplicates,
        "labels": released["labels"],
        "epsilon_spent": released["epsilon_spent"],
        "epsilon_left": released["epsilon_left"],
        "checkpoint": report.checkpoint,
        "leaf_index": report.leaf_index,
        "segments": list(session.segments),
        "protocol": released.get("protocol", SEMI_HONEST),
        "policy_digest": released.get("policy_digest"),
        # What `matcher-audit prove` needs to show this report is in the log.
        "report_json": report.report_json,
        "log_entry": report.log_entry.decode(),
    }


class _Conversation:
    """One bidirectional job stream: requests go through a small queue (gRPC pulls them on its own
    thread), responses are read in order."""

    def __init__(self, call, token: str, timeout: float | None):
        self._outbox: queue.Queue = queue.Queue(maxsize=4)
        self.responses = call(self._requests(), metadata=[("authorization", f"Bearer {token}")], timeout=timeout)

    def _requests(self):
        while (item := self._outbox.get()) is not None:
            yield item

    def send(self, **message) -> None:
        self._outbox.put(match_pb2.MatchRequest(**message))

    def expect(self, kind: str):
        return getattr(_expect(self.responses, kind), kind)

    def close(self) -> None:
        self._outbox.put(None)


def _accepted(accepted: match_pb2.JobAccepted) -> JobAccepted:
    return JobAccepted(job_id=accepted.job_id, paillier_n=accepted.paillier_n, segments=tuple(accepted.segments),
                       layout_json=accepted.layout_json, max_chunk_elements=accepted.max_chunk_elements,
                       stream_elements=accepted.stream_elements, stream_names=tuple(accepted.stream_names),
                       stream_sizes=tuple(accepted.stream_sizes), protocol=accepted.protocol or SEMI_HONEST)


def _send_list(talk: _Conversation, session, list_size: int, notify: Progress) -> None:
    sent = 0
    for chunk in session.blinded_chunks():
        talk.send(blinded=match_pb2.BlindedChunk(points=chunk.points, labels=chunk.labels))
        sent += len(chunk)
        notify("blinding", sent, list_size)
    talk.send(list_end=match_pb2.ListEnd())


def _start_message(start) -> match_pb2.JobStart:
    return match_pb2.JobStart(protocol_version=start.protocol_version, id_kind=start.id_kind, labels=start.labels,
                              label_sizes=start.label_sizes, merchant_base=start.merchant_base,
                              segments=start.segments, all_segments=start.all_segments,
                              protocol="" if start.protocol == "auto" else start.protocol,
                              enrollment_key_id=start.enrollment_key_id)


def _secure_exchange(call, token: str, session: SecureMerchantSession, start, list_size: int, notify: Progress,
                     timeout: float | None, *, opening: Callable[[match_pb2.JobStart], dict] | None = None,
                     result: str = "report"):
    """The secure protocol's conversation: start, list up, then each stream down and back blinded."""
    talk = _Conversation(call, token, timeout)
    try:
        talk.send(**(opening(_start_message(start)) if opening else {"start": _start_message(start)}))
        session.accept(_accepted(talk.expect("accepted")))
        # One copy of the list per stream: progress counts them all, and all the streams.
        total, done, sent = sum(session.stream_sizes), 0, 0
        for index, name in enumerate(session.stream_names):
            for chunk in session.blinded_chunks(index):
                talk.send(blinded=match_pb2.BlindedChunk(points=chunk.points, labels=chunk.labels, stream=index))
                sent += len(chunk)
                notify("blinding", sent, list_size * len(session.stream_names))
            talk.send(list_end=match_pb2.ListEnd(stream=index, merchant_base=session.merchant_base(index)))
            for response in talk.responses:
                kind = response.WhichOneof("msg")
                if kind == "audience":
                    if response.audience.stream != index:
                        raise ProtocolError(f"the server sent stream {response.audience.stream} during stream {index}")
                    session.receive_stream(index, response.audience.points)
                    done += len(response.audience.points) // 32
                    notify("matching", done, total)
                elif kind == "audience_end":
                    break
                else:
                    raise ProtocolError(f"unexpected '{kind}' from the server")
            else:
                raise ProtocolError(f"the server closed the stream during stream '{name}'")
            for points in session.returned_chunks(index):
                talk.send(returned=match_pb2.StreamValues(points=points, stream=index))
            talk.send(returned_end=match_pb2.ListEnd(stream=index))
        answer = talk.expect(result)
        notify("done", 1, 1)
        return answer
    finally:
        talk.close()


def _semi_honest_exchange(stub, token: str, session: MerchantSession, list_size: int, notify: Progress,
                          timeout: float | None) -> match_pb2.Report:
    """The older protocol: the merchant matches the stream against the double-blinded list and sums."""
    talk = _Conversation(stub.Match, token, timeout)
    try:
        talk.send(start=_start_message(session.start()))
        accepted = talk.expect("accepted")
        session.accept(_accepted(accepted))
        _send_list(talk, session, list_size, notify)
        for response in talk.responses:
            kind = response.WhichOneof("msg")
            if kind == "double_blinded":
                session.receive_double_blinded(BlindedChunk(points=response.double_blinded.points,
                                                            labels=response.double_blinded.labels))
            elif kind == "audience":
                session.receive_audience(AudienceChunk(points=response.audience.points,
                                                       ciphertexts=response.audience.ciphertexts))
                notify("matching", session.stream_elements, accepted.stream_elements or None)
            elif kind == "audience_end":
                if response.audience_end.elements != session.stream_elements:
                    raise ProtocolError(f"the server announced {response.audience_end.elements} audience elements "
                                        f"but sent {session.stream_elements}")
                break
            else:
                raise ProtocolError(f"unexpected '{kind}' from the server")
        else:
            raise ProtocolError("the server closed the stream before the audience ended")
        talk.send(sums=match_pb2.LabelSums(sums=session.finish().sums))
        report = talk.expect("report")
        notify("done", 1, 1)
        return report
    finally:
        talk.close()


def activate(server: str, token: str, merchant_list: MerchantList, *, name: str, where: str,
             label: str | None = None, tls_ca: str | None = None, progress: Progress | None = None,
             kernels: Kernels | None = None, timeout: float | None = None,
             rng: Callable[[int], bytes] = os.urandom, cache: str | None = None) -> dict:
    """Opt in to tell the platform which of its members are your matches (optionally one label's),
    filtered by ``where``; the platform stores that slice for a campaign. You get a handle and a
    noisy size — never the members. The job's ε is spent whether or not the slice is large enough."""
    prepared = merchant_list.prepared
    notify = progress or (lambda phase, done, total: None)
    with _kernels(kernels, len(prepared.keys), cache) as kernels:
        session = SecureMerchantSession(prepared.keys, prepared.labels, id_kind=merchant_list.id_kind, rng=rng,
                                        kernels=kernels, ordered=True)
        with rpc_errors(), channel(server, tls_ca) as chan:
            result = _secure_exchange(
                match_pb2_grpc.MatchServiceStub(chan).Activate, token, session, session.start(), len(prepared.keys),
                notify, timeout, result="activation_result",
                opening=lambda start: {"activation": match_pb2.ActivationStart(job=start, name=name, where=where,
                                                                               label=label or "")})
    return {"handle": result.handle, "name": name, "where": where, "label": label, "noisy_size": result.noisy_size,
            "expires_at": result.expires_at, "checkpoint": result.checkpoint, "leaf_index": result.leaf_index,
            "list_size": len(prepared.keys), "invalid": dict(prepared.invalid), "duplicates": prepared.duplicates}


def activations(server: str, token: str, *, tls_ca: str | None = None) -> list[dict]:
    with rpc_errors(), channel(server, tls_ca) as chan:
        reply = match_pb2_grpc.MatchServiceStub(chan).ListActivations(
            match_pb2.ListActivationsRequest(), metadata=[("authorization", f"Bearer {token}")])
    return [{"handle": a.handle, "name": a.name, "where": a.where, "label": a.label or None,
             "noisy_size": a.noisy_size, "created_at": a.created_at, "expires_at": a.expires_at, "state": a.state}
            for a in reply.activations]


def _expect(responses, kind: str):
    response = next(responses, None)
    if response is None or response.WhichOneof("msg") != kind:
        raise ProtocolError(f"expected '{kind}' from the server")
    return response


def budget(server: str, token: str, *, tls_ca: str | None = None) -> Mapping[str, float]:
    with rpc_errors(), channel(server, tls_ca) as chan:
        reply = match_pb2_grpc.MatchServiceStub(chan).GetBudget(
            match_pb2.GetBudgetRequest(), metadata=[("authorization", f"Bearer {token}")])
    return {"epsilon_budget": reply.epsilon_budget, "epsilon_spent": reply.epsilon_spent,
            "epsilon_left": reply.epsilon_left, "period": reply.period, "epsilon_per_job": reply.epsilon_per_job}
