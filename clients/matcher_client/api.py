"""The merchant's Python API: ``match(...)`` runs one job against a matcher server and returns the report.

Everything secret stays in this process: raw IDs are normalized and hashed here, blinded with a
scalar that never leaves memory, and only a·H(x) goes on the wire.

    >>> report = match("platform.example:50051", token, "customers.csv", id_column="phone",
    ...                id_type="phone", label_column="store")
    >>> report["labels"]["north"]["matched"]
    >>> report.to_pandas()

The order of a job: the server and the token are checked first (one cheap call), then the list is
read and normalized (the slow local part); the server checks its policy before any crypto (and
logs a refusal), and a refusal names the published setting that refused it.
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

import grpc

from matcher import ids, tabular
from matcher.crypto.kernels import Kernels, local_kernels, usable_cores
from matcher.errors import InputError, LimitExceeded, PolicyRefused, ProtocolDeviation, ProtocolError
from matcher.protocol.merchant import MerchantSession
from matcher.protocol.messages import PROTOCOL_CHOICES, SECURE, SEMI_HONEST, AudienceChunk, BlindedChunk
from matcher.protocol.secure_merchant import SecureMerchantSession
from matcher.protocol.wire import job_accepted_from_proto, job_start_to_proto
from matcher.v1 import match_pb2, match_pb2_grpc
from matcher_client import inputs
from matcher_client._rpc import connect, rpc_errors
from matcher_client.enrollment_key import LazyEnrollmentKey, default_path
from matcher_client.report import Report

# Refusals that say the server (or this merchant's share of it) is busy: retried, since nothing was charged.
_BUSY = re.compile(r"already running \d+ jobs|server is busy|job streams open")
# Called as progress(phase, done, total); total may be None. Phases, in order: "reading" (normalizing the
# list), "blinding" (hashing and blinding each copy of it), "matching" (the platform's streams, received and
# blinded), "returning" (sent back), "waiting for the report" (the server matches and releases), "done";
# and "waiting for the server" while a busy server is retried.
Progress = Callable[[str, int, "int | None"], None]
# Rows normalized between two progress reports, in this process (a pool reports per batch).
_PROGRESS_ROWS = 8_192
# How often a request waiting for room in a job stream's queue looks whether the call has ended.
_SEND_POLL_S = 0.5
# How long the first call, which checks the server and the token, may take.
CHECK_TIMEOUT = 15.0


@dataclass
class MerchantList:
    """A list read and prepared locally, before any network traffic. ``id_kind``: the kind of its
    IDs (of several identifier columns: the first column's kind that the list holds);
    ``id_columns``: the identifier columns it was read from."""

    prepared: ids.PreparedList
    id_kind: str
    id_columns: tuple[ids.IdColumn, ...] = ()

    def session_kinds(self) -> tuple[str, list[str] | None]:
        """What the protocol sessions take: ``(id_kind, kinds)``, ``kinds`` being each key's kind when
        the list holds keys of several kinds (else None: every key is ``id_kind``)."""
        kinds = self.prepared.kinds()
        if kinds is None:
            return self.id_kind, None
        present = set(self.prepared.column_idx)
        held = list(dict.fromkeys(c.kind for i, c in enumerate(self.prepared.columns) if i in present))
        if len(held) <= 1:
            return (held or [self.id_kind])[0], None
        return held[0], kinds

    def id_columns_summary(self) -> list[dict]:
        """For the report: each identifier column, its type and kind, the IDs it sent and its invalid cells."""
        prepared = self.prepared
        sent = prepared.ids_by_column() if prepared.columns else {}
        out = []
        for column in self.id_columns:
            if prepared.columns:
                n, bad = sent.get(column.column, 0), prepared.invalid_by_column.get(column.column, {})
            else:  # one column: every key and every invalid row is its own
                n, bad = len(prepared.keys), {r: k for r, k in prepared.invalid.items() if r != "empty"}
            out.append({"column": column.column, "type": column.id_type, "kind": column.kind, "ids": n,
                        "invalid": dict(bad)})
        return out


def read_list(file, *, id_column: str | None = None, id_type: str | None = None, label_column: str | None = None,
              region: str = "CN", hashed_kind: str = "phone", progress: Progress | None = None,
              parallel: bool = True, delimiter: str | None = None, id_columns=None) -> MerchantList:
    """Read and normalize a list: ``file`` is a path (CSV, .csv.gz, Parquet, ``-``), a DataFrame
    (pandas, Polars, pyarrow) or rows (see :mod:`matcher_client.inputs`). Normalization
    (phonenumbers) is the slow part: batches are prepared on every core and merged in order, with
    the same result as one pass.

    The IDs are in ``id_column`` (of ``id_type``), or in several columns: ``id_columns``, e.g.
    ``[("phone", "phone"), ("email", "email"), ("openid", "opaque")]`` (see :func:`matcher.ids.id_columns_of`).
    Then each row sends each of its valid identifiers, under the row's label; blank cells are
    normal; an identifier (kind and match key) seen before is a duplicate (see
    :func:`matcher.ids.prepare_columns` for how invalid cells and rows are counted).

    A missing or unreadable file (or a directory) is an :class:`~matcher.errors.InputError` naming it.
    Works from any caller: a script without an ``if __name__ == "__main__":`` guard, ``python -c``
    or ``python -`` included (see :func:`_worker_context`)."""
    notify = progress or (lambda phase, done, total: None)
    wide = id_columns is not None
    # A bad id type or column spec is refused before anything is read.
    columns = ids.id_columns_of(id_columns, id_column=id_column, id_type=id_type, hashed_kind=hashed_kind)
    if wide:
        source = inputs.open_source(file, id_columns=[c.column for c in columns], label_column=label_column,
                                    delimiter=tabular.parse_delimiter(delimiter))
    else:
        source = inputs.open_source(file, id_column=id_column, label_column=label_column,
                                    delimiter=tabular.parse_delimiter(delimiter))
    total, batches = source.total, source.batches  # a missing file failed already, before any process starts
    first = next(batches, [])
    batches = itertools.chain([first], batches)
    workers = usable_cores()
    # One batch or less (stdin, a generator: known once the first batch is short) is not worth a pool.
    small = (total is not None and total <= tabular.BATCH_ROWS) or len(first) < tabular.BATCH_ROWS
    context = None if not parallel or workers == 1 or small else _worker_context()
    if context is None:
        parts = []
        notify("reading", 0, total)
        for batch in batches:
            for lo in range(0, len(batch), _PROGRESS_ROWS):  # smaller steps, for a progress bar that moves
                parts.append(ids.prepare_columns(batch[lo:lo + _PROGRESS_ROWS], columns, region=region))
                notify("reading", sum(p.rows for p in parts), total)
    else:
        parts = []
        with ProcessPoolExecutor(workers, mp_context=context) as pool:
            futures = deque()
            for batch in batches:
                futures.append(pool.submit(ids.prepare_columns, batch, columns, region=region))
                while len(futures) > 2 * workers:  # bounded read-ahead
                    parts.append(futures.popleft().result())
                    notify("reading", sum(p.rows for p in parts), total)
            while futures:
                parts.append(futures.popleft().result())
                notify("reading", sum(p.rows for p in parts), total)
    return _merchant_list(ids.merge(parts or [ids.prepare_columns([], columns, region=region)]), columns)


def _merchant_list(prepared: ids.PreparedList, columns: tuple[ids.IdColumn, ...]) -> MerchantList:
    present = set(prepared.column_idx) if prepared.columns else {0}
    id_kind = next((c.kind for i, c in enumerate(columns) if i in present), columns[0].kind)
    return MerchantList(prepared=prepared, id_kind=id_kind, id_columns=columns)


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


def prepare_rows(rows: Iterable[tuple[str, str | None]], *, id_type: str | None = None, region: str = "CN",
                 hashed_kind: str = "phone", id_columns=None) -> MerchantList:
    """Normalize in-memory ``(id, label)`` rows (in this process: no pool, so no start-up concerns);
    with ``id_columns`` (n of them), rows of ``(id 1, ..., id n, label)``."""
    columns = ids.id_columns_of(id_columns, id_type=id_type, hashed_kind=hashed_kind)
    if id_columns is None:
        return _merchant_list(ids.prepare(rows, id_type, region=region), columns)
    return _merchant_list(ids.prepare_columns(rows, columns, region=region), columns)


@dataclass
class ServerCheck:
    """What the first, cheap call learned: the server answers and takes the token; the policy it
    publishes to this merchant (empty from a server too old to say)."""

    budget: dict
    policy: dict


def check_server(server: str, token: str, *, tls_ca: str | None = None,
                 timeout: float | None = CHECK_TIMEOUT, channel: grpc.Channel | None = None) -> ServerCheck:
    """Reach the server and have it check the token (the authenticated GetBudget call: no job, no ε),
    before anything slow happens here. Raises :class:`~matcher.errors.ConnectionFailed` or
    :class:`~matcher.errors.AuthenticationError` with what to do about it."""
    with rpc_errors(server), connect(server, tls_ca, channel) as chan:
        reply = match_pb2_grpc.MatchServiceStub(chan).GetBudget(
            match_pb2.GetBudgetRequest(), metadata=[("authorization", f"Bearer {token}")], timeout=timeout)
    try:
        policy = json.loads(reply.policy_json) if reply.policy_json else {}
    except ValueError:
        policy = {}
    return ServerCheck(budget=_budget(reply), policy=policy if isinstance(policy, dict) else {})


def policy_problem(policy: Mapping, merchant_list: MerchantList) -> tuple[str, str, str] | None:
    """What in the server's published ``policy`` refuses this list, or None: ``(reason, the setting
    and its value, the fix)``. The server decides, before any crypto, and logs the refusal in the
    audit log; this only names the setting when it refuses (:func:`explained_refusals`)."""
    prepared = merchant_list.prepared
    size, sizes = len(prepared.keys), prepared.label_sizes or {"all": 0}
    low, high, most = (policy.get(k) for k in ("min_list_size", "max_list_size", "max_labels"))
    if isinstance(low, int) and size < low:
        return "list_too_small", f"the policy's min_list_size is {low}, the list has {size} unique IDs " \
                                 f"in {prepared.rows} rows", "add IDs, or ask the operator about min_list_size"
    if isinstance(high, int) and size > high:
        return "list_too_large", f"the policy's max_list_size is {high}", "split the list into several jobs"
    if isinstance(most, int) and len(sizes) > most:
        return "too_many_labels", f"the policy's max_labels is {most}", "merge labels or drop the label column"
    small = {label: n for label, n in sizes.items() if isinstance(low, int) and n < low}
    if small:
        named = ", ".join(f"'{label}' has {n}" for label, n in small.items())
        return "label_too_small", f"the policy's min_list_size of {low} holds for each label: {named}", \
            "merge the small labels into others or drop the label column"
    return None


@contextlib.contextmanager
def explained_refusals(policy: Mapping, merchant_list: MerchantList) -> Iterator[None]:
    """A job the server refused (FAILED_PRECONDITION) becomes a :class:`~matcher.errors.PolicyRefused`
    with the server's words and, as the hint, the published setting that refused it."""
    try:
        yield
    except ProtocolError as refused:
        problem = policy_problem(policy, merchant_list)
        if problem is None or isinstance(refused, ProtocolDeviation):
            raise
        reason, setting, fix = problem
        raise PolicyRefused(refused.message, reason=reason, hint=f"{setting}: {fix}") from None


def match(server: str, token: str, data=None, *, id_column: str | None = None, id_type: str | None = None,
          id_columns=None, label_column: str | None = None, rows: Iterable | None = None, delimiter: str | None = None,
          region: str = "CN", hashed_kind: str = "phone", tls_ca: str | None = None,
          progress: Progress | bool | None = None, kernels: Kernels | None = None, timeout: float | None = None,
          rng: Callable[[int], bytes] = os.urandom, cache: str | None = None, count_only: bool = False,
          segments: Iterable[str] | None = None, protocol: str = SECURE, retries: int = 10,
          mode: str = "auto", enrollment_key: str | None = None, channel: grpc.Channel | None = None) -> Report:
    """Run a match job on your list and return the released :class:`~matcher_client.report.Report`
    (a dict: the report JSON of ``matcher-client match --json``; plus ``.to_pandas()`` and ``.plot()``).

    ``data`` is the list, in any of these forms:

    - a path, ``str`` or :class:`pathlib.Path`: CSV with a header row (delimiter , ; tab or |,
      sniffed; or give ``delimiter``), gzip-compressed CSV (``.csv.gz``), Parquet (``.parquet``;
      needs pyarrow), or ``"-"`` for standard input;
    - a pandas or Polars DataFrame (or a pyarrow Table): ``id_column`` names the IDs, ``label_column``
      an optional small label per row. Integer phone numbers (pandas' default for a column of
      digits) are read as their digits, whole floats too (a column with gaps), NaN as blank;
    - rows: an iterable of ``(id, label)`` pairs or of bare IDs (also accepted as ``rows=``).

    Several identifiers per customer: ``id_columns=[("phone", "phone"), ("email", "email"),
    ("openid", "opaque")]`` instead of ``id_column``/``id_type`` (a column of hashed emails:
    ``("email_sha", "sha256", "email")``; ``"COLUMN:TYPE"`` strings as ``--id-column`` takes them
    work too). Each row then sends each of its valid identifiers under the row's label (a blank
    cell is normal); the platform counts a member once, whichever of its identifiers the list holds.
    Rows are then ``(id 1, ..., id n, label)`` tuples or mappings by column name.

    Examples::

        report = match(server, token, "customers.csv", id_column="phone", id_type="phone")
        report = match(server, token, pd.read_csv("customers.csv"), id_column="phone", id_type="phone",
                       label_column="store")
        report = match(server, token, Path("customers.parquet"), id_column="email", id_type="email")
        report = match(server, token, [("13800138000", "north"), ("13900139000", "south")], id_type="phone")
        report = match(server, token, "customers.csv", label_column="store",
                       id_columns=[("phone", "phone"), ("email", "email"), ("openid", "opaque")])
        report["labels"]["north"]["matched"]        # None when suppressed (below the policy's k)
        report.to_pandas(); report.plot()           # pip install 'matcher[notebook]'

    ``progress=True`` shows a progress bar per step (normalize, hash & blind, stream, return,
    match) with rates and ETA, in a terminal or a notebook; a callable gets ``(phase, done, total)``.

    The server and ``token`` are checked first (a wrong token or an unreachable server fails in
    about a second, before the list is read), then the list is normalized, then the job runs; a job
    the policy refuses (list size, labels) is a :class:`~matcher.errors.PolicyRefused` naming the
    setting. Every failure is a :class:`~matcher.errors.MatcherError` naming the problem and the fix.

    Every segment is counted unless ``segments`` names some (each costs one more pass over the
    platform members that hold it); ``count_only``: per-label overlap counts only, the fastest job.
    ``protocol="semi_honest"``: the older protocol, which a server runs only when its operator
    enabled it (see docs/threat-model.md). A server too busy to take the job refuses it before
    anything is charged; the job is retried up to ``retries`` times, with backoff.

    ``mode``: "auto" (the server picks by the sizes), "balanced" or "unbalanced" (the platform keeps
    this merchant's blinded copy of its audience between jobs; README "Unbalanced mode"). The
    unbalanced protocol's long-lived key lives in ``enrollment_key`` (default: one file per server
    and token under ~/.matcher-client, or $MATCHER_CLIENT_HOME), encrypted with the token.

    ``channel``: a gRPC channel to use instead of dialling ``server`` (e.g. one wrapped with
    ``grpc.intercept_channel`` to measure the traffic); it stays open. Every call here takes it."""
    with _progress_bars(progress) as progress:
        merchant_list, policy = read_checked(server, token, data, rows, id_column=id_column, id_type=id_type,
                                             id_columns=id_columns, label_column=label_column, delimiter=delimiter,
                                             region=region, hashed_kind=hashed_kind, tls_ca=tls_ca, progress=progress,
                                             timeout=timeout, channel=channel)
        with explained_refusals(policy, merchant_list):
            return run_job(server, token, merchant_list, tls_ca=tls_ca, progress=progress, kernels=kernels,
                           timeout=timeout, rng=rng, cache=cache, count_only=count_only, segments=segments,
                           protocol=protocol, retries=retries, mode=mode, enrollment_key=enrollment_key,
                           channel=channel)


@contextlib.contextmanager
def _progress_bars(progress: Progress | bool | None) -> Iterator[Progress | None]:
    """``progress=True``: rich bars (as the CLI draws them); anything else as given."""
    if progress is not True:
        yield progress or None
        return
    from rich.console import Console

    from matcher_client._progress import progress as bars

    with bars("bar", Console(stderr=True)) as notify:
        yield notify


def read_checked(server: str, token: str, data, rows=None, *, id_column: str | None = None,
                 id_type: str | None = None, id_columns=None, label_column: str | None = None,
                 delimiter: str | None = None, region: str = "CN", hashed_kind: str = "phone",
                 tls_ca: str | None = None, progress: Progress | None = None, timeout: float | None = None,
                 channel: grpc.Channel | None = None) -> tuple[MerchantList, dict]:
    """The list of a job (:func:`read_list`), read only after the server answered and took the
    token (:func:`check_server`), and the policy the server publishes (for :func:`explained_refusals`).
    Local problems that need no reading (a bad id type, a missing file, an Excel workbook) come first."""
    if (data is None) == (rows is None):
        raise InputError("give the list once: as data (a path, a DataFrame or rows) or as rows=")
    data = rows if data is None else data
    # A bad id type, hashed kind or column spec, before anything else.
    ids.id_columns_of(id_columns, id_column=id_column, id_type=id_type, hashed_kind=hashed_kind)
    tabular.parse_delimiter(delimiter)   # a bad --delimiter
    inputs.check_local(data)              # a missing file too: no need to ask the server about it
    checked = check_server(server, token, tls_ca=tls_ca, timeout=min(timeout or CHECK_TIMEOUT, CHECK_TIMEOUT),
                           channel=channel)
    merchant_list = read_list(data, id_column=id_column, id_type=id_type, id_columns=id_columns,
                              label_column=label_column, region=region, hashed_kind=hashed_kind, progress=progress,
                              delimiter=delimiter)
    return merchant_list, checked.policy


@contextlib.contextmanager
def _kernels(kernels: Kernels | None, list_size: int, cache: str | None,
             notify: Progress | None = None) -> Iterator[Kernels]:
    """The caller's kernels, or our own (a pool for big lists), behind the hash cache when asked
    (``"auto"``: the merchant's own cache directory, see :func:`hash_cache.default_dir`). What we
    create we close; the caller's kernels stay open. How many IDs came from the cache is reported
    as the progress phase ``from the hash cache`` (done = reused, total = hashed or reused)."""
    own = kernels is None
    # A pool of spawned workers re-imports __main__: not from unguarded scripts or `python -`
    # (see _worker_context), where the job blinds in this process instead (slower, same result).
    kernels = kernels or local_kernels(parallel=list_size > 20_000 and _spawn_is_safe())
    caching = None
    if cache and cache != "none":
        from matcher_client.hash_cache import CachingKernels, open_cache

        caching = CachingKernels(kernels, open_cache(cache))
    try:
        yield caching or kernels
    finally:
        if caching:
            caching.flush()
            if notify and caching.hits + caching.misses:
                notify("from the hash cache", caching.hits, caching.hits + caching.misses)
        if own:
            kernels.close()


def run_job(server: str, token: str, merchant_list: MerchantList, *, tls_ca: str | None = None,
            progress: Progress | None = None, kernels: Kernels | None = None, timeout: float | None = None,
            rng: Callable[[int], bytes] = os.urandom, cache: str | None = None, count_only: bool = False,
            segments: Iterable[str] | None = None, protocol: str = SECURE, retries: int = 10,
            mode: str = "auto", enrollment_key: str | None = None, channel: grpc.Channel | None = None) -> Report:
    """Run a job on a list already read (:func:`read_list`); see :func:`match`."""
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
    id_kind, kinds = merchant_list.session_kinds()
    if protocol == SEMI_HONEST and len({c.kind for c in merchant_list.id_columns}) > 1:
        raise InputError("the semi-honest protocol matches one kind of identifier; this list has "
                         f"{', '.join(_column_names(merchant_list))}",
                         hint="use the secure protocol (the default), or one identifier column")
    prepared = merchant_list.prepared
    notify = progress or (lambda phase, done, total: None)
    with _kernels(kernels, len(prepared.keys), cache, notify) as kernels, _columns_named(merchant_list):
        for attempt in itertools.count():
            try:
                with rpc_errors(server), connect(server, tls_ca, channel) as chan:
                    stub = match_pb2_grpc.MatchServiceStub(chan)
                    if protocol == SECURE:
                        session = SecureMerchantSession(prepared.keys, prepared.labels, id_kind=id_kind, kinds=kinds,
                                                        rng=rng, kernels=kernels, protocol=mode, enrollment=enrollment)
                        start = session.start(segments=tuple(segments or ()),
                                              all_segments=not count_only and segments is None)
                        report = _secure_exchange(stub.Count, token, session, start, len(prepared.keys), notify,
                                                  timeout)
                    else:
                        session = MerchantSession(prepared.keys, prepared.labels, id_kind=id_kind,
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
    return Report({
        "job_id": report.job_id,
        "list_size": released["list_size"],
        "rows": prepared.rows,
        "invalid": dict(prepared.invalid),
        "duplicates": prepared.duplicates,
        "invalid_rows": prepared.invalid_rows,
        "id_columns": merchant_list.id_columns_summary(),
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
    }, label_sizes=prepared.label_rows)


# The server's refusal of identifier kinds its audience does not hold (secure_platform._check_kinds).
_MISSING_KINDS = re.compile(r"audience holds .*: it has no ([a-z]+(?:, [a-z]+)*)")


@contextlib.contextmanager
def _columns_named(merchant_list: MerchantList) -> Iterator[None]:
    """A server that holds no identifiers of some kind of the list refuses the job; the hint then
    names the list's columns of that kind (the server knows only kinds)."""
    try:
        yield
    except InputError as refused:
        found = _MISSING_KINDS.search(refused.message)
        columns = [c for c in merchant_list.id_columns if found and c.kind in found.group(1).split(", ")]
        if refused.hint is not None or not columns:
            raise
        named = " ".join(f"--id-column {spec}" for spec in _column_names(merchant_list, columns))
        raise InputError(refused.message, hint=f"the platform cannot match column{'s' if len(columns) > 1 else ''} "
                                               f"{', '.join(repr(c.column) for c in columns)}: run without {named}, "
                                               "or ask the operator which identifiers the audience holds") from None


def _column_names(merchant_list: MerchantList, columns=None) -> list[str]:
    return [f"{c.column}:{c.id_type}" + (f":{c.kind}" if c.id_type == "sha256" else "")
            for c in (merchant_list.id_columns if columns is None else columns)]


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
        """Queue a request for gRPC. Once the call has ended (the server failed or cancelled it)
        nobody takes requests any more: the call's status is raised instead of waiting forever."""
        request = match_pb2.MatchRequest(**message)
        while True:
            try:
                self._outbox.put(request, timeout=_SEND_POLL_S)
                return
            except queue.Full:
                if not self.responses.is_active():
                    for _ in self.responses:  # what is left, then the call's status as a grpc.RpcError
                        pass
                    raise ProtocolError("the server ended the job stream") from None

    def expect(self, kind: str):
        return getattr(_expect(self.responses, kind), kind)

    def close(self) -> None:
        try:
            self._outbox.put_nowait(None)
        except queue.Full:  # gRPC stopped taking requests: we are abandoning the call
            self.responses.cancel()


def _send_list(talk: _Conversation, session, list_size: int, notify: Progress) -> None:
    sent = 0
    for chunk in session.blinded_chunks():
        talk.send(blinded=match_pb2.BlindedChunk(points=chunk.points, labels=chunk.labels))
        sent += len(chunk)
        notify("blinding", sent, list_size)
    talk.send(list_end=match_pb2.ListEnd())


def _secure_exchange(call, token: str, session: SecureMerchantSession, start, list_size: int, notify: Progress,
                     timeout: float | None, *, opening: Callable[[match_pb2.JobStart], dict] | None = None,
                     result: str = "report"):
    """The secure protocol's conversation: start, list up, then each stream down and back blinded."""
    talk = _Conversation(call, token, timeout)
    try:
        talk.send(**(opening(job_start_to_proto(start)) if opening else {"start": job_start_to_proto(start)}))
        session.accept(job_accepted_from_proto(talk.expect("accepted")))
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
            returned = done - session.stream_sizes[index]
            for points in session.returned_chunks(index):
                talk.send(returned=match_pb2.StreamValues(points=points, stream=index))
                returned += len(points) // 32
                notify("returning", returned, total)
            talk.send(returned_end=match_pb2.ListEnd(stream=index))
        notify("waiting for the report", 0, None)
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
        talk.send(start=job_start_to_proto(session.start()))
        accepted = talk.expect("accepted")
        session.accept(job_accepted_from_proto(accepted))
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
        notify("waiting for the report", 0, None)
        report = talk.expect("report")
        notify("done", 1, 1)
        return report
    finally:
        talk.close()


def activate(server: str, token: str, merchant_list, *, name: str, where: str,
             label: str | None = None, tls_ca: str | None = None, progress: Progress | None = None,
             kernels: Kernels | None = None, timeout: float | None = None,
             rng: Callable[[int], bytes] = os.urandom, cache: str | None = None, id_column: str | None = None,
             id_type: str | None = None, label_column: str | None = None, delimiter: str | None = None,
             region: str = "CN", hashed_kind: str = "phone", channel: grpc.Channel | None = None,
             id_columns=None) -> dict:
    """Opt in to tell the platform which of its members are your matches (optionally one label's),
    filtered by ``where``; the platform stores that slice for a campaign. You get a handle and a
    noisy size — never the members. The job's ε is spent whether or not the slice is large enough.

    ``merchant_list``: a list read already (:func:`read_list`), or anything :func:`match` takes (a
    path, a DataFrame, rows; then give ``id_type``, and ``id_column`` for a path or a DataFrame; or
    ``id_columns`` as :func:`match` takes them: the kinds are passed to the server, which may refuse
    to activate a list of several identifier kinds)::

        activate(server, token, df, id_column="phone", id_type="phone", name="spring-coupon",
                 where="member & !holds_coupon")"""
    if not isinstance(merchant_list, MerchantList):
        merchant_list, policy = read_checked(server, token, merchant_list, None, id_column=id_column,
                                              id_type=id_type, id_columns=id_columns, label_column=label_column,
                                              delimiter=delimiter, region=region, hashed_kind=hashed_kind,
                                              tls_ca=tls_ca, progress=progress, timeout=timeout, channel=channel)
        with explained_refusals(policy, merchant_list):
            return activate(server, token, merchant_list, name=name, where=where, label=label, tls_ca=tls_ca,
                            progress=progress, kernels=kernels, timeout=timeout, rng=rng, cache=cache,
                            channel=channel)
    prepared = merchant_list.prepared
    notify = progress or (lambda phase, done, total: None)
    id_kind, kinds = merchant_list.session_kinds()
    with _kernels(kernels, len(prepared.keys), cache, notify) as kernels, _columns_named(merchant_list):
        session = SecureMerchantSession(prepared.keys, prepared.labels, id_kind=id_kind, kinds=kinds, rng=rng,
                                        kernels=kernels, ordered=True)
        with rpc_errors(server), connect(server, tls_ca, channel) as chan:
            result = _secure_exchange(
                match_pb2_grpc.MatchServiceStub(chan).Activate, token, session, session.start(), len(prepared.keys),
                notify, timeout, result="activation_result",
                opening=lambda start: {"activation": match_pb2.ActivationStart(job=start, name=name, where=where,
                                                                               label=label or "")})
    return {"handle": result.handle, "name": name, "where": where, "label": label, "noisy_size": result.noisy_size,
            "expires_at": result.expires_at, "checkpoint": result.checkpoint, "leaf_index": result.leaf_index,
            "list_size": len(prepared.keys), "invalid": dict(prepared.invalid), "duplicates": prepared.duplicates,
            "rows": prepared.rows, "invalid_rows": prepared.invalid_rows,
            "id_columns": merchant_list.id_columns_summary()}


def activations(server: str, token: str, *, tls_ca: str | None = None,
                channel: grpc.Channel | None = None) -> list[dict]:
    with rpc_errors(server), connect(server, tls_ca, channel) as chan:
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


def budget(server: str, token: str, *, tls_ca: str | None = None,
           channel: grpc.Channel | None = None) -> Mapping[str, float]:
    with rpc_errors(server), connect(server, tls_ca, channel) as chan:
        reply = match_pb2_grpc.MatchServiceStub(chan).GetBudget(
            match_pb2.GetBudgetRequest(), metadata=[("authorization", f"Bearer {token}")])
    return _budget(reply)


def _budget(reply: match_pb2.Budget) -> dict:
    return {"epsilon_budget": reply.epsilon_budget, "epsilon_spent": reply.epsilon_spent,
            "epsilon_left": reply.epsilon_left, "period": reply.period, "epsilon_per_job": reply.epsilon_per_job}
