"""The console's HTML: whole pages built from a :class:`~matcher.server.console.snapshot.Snapshot`.

Templates are Python functions rather than a template engine: the page is small, and one
``escape`` helper in front of every value keeps operator-chosen text (merchant names, refusal
reasons, policy values) from ever becoming markup. The CSS is inline; the page loads nothing.
"""

from __future__ import annotations

import datetime
from html import escape
from typing import Any, Iterable, Sequence

from matcher.server.console import charts
from matcher.server.console.snapshot import Snapshot

_CSS = """
*{box-sizing:border-box}
body{margin:0;font:14px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif;color:#1a202c;background:#f7fafc}
header{background:#1a365d;color:#fff;padding:12px 24px;display:flex;align-items:center;gap:16px}
header h1{font-size:18px;margin:0;font-weight:600}
header .when{opacity:.8;font-size:12px;margin-left:auto}
header form{margin:0}
main{max-width:1320px;margin:0 auto;padding:16px 24px 40px}
section{background:#fff;border:1px solid #e2e8f0;border-radius:6px;padding:12px 16px;margin:0 0 16px}
h2{font-size:15px;margin:0 0 8px;color:#2a4365}
.cards{display:grid;grid-template-columns:repeat(auto-fill,minmax(170px,1fr));gap:12px;margin-bottom:16px}
.card{background:#fff;border:1px solid #e2e8f0;border-radius:6px;padding:10px 14px}
.card .n{font-size:22px;font-weight:600}.card .k{font-size:12px;color:#4a5568}
.row{display:grid;grid-template-columns:repeat(auto-fit,minmax(560px,1fr));gap:16px}
table{border-collapse:collapse;width:100%;font-size:13px}
th,td{text-align:left;padding:4px 8px;border-bottom:1px solid #edf2f7;vertical-align:top}
th{color:#4a5568;font-weight:600;background:#f7fafc}
td.num,th.num{text-align:right;font-variant-numeric:tabular-nums}
.state{display:inline-block;padding:0 6px;border-radius:9px;font-size:12px;color:#fff;background:#718096}
.state.released{background:#2f855a}.state.refused{background:#b7791f}.state.failed{background:#c53030}
.state.running{background:#2b6cb0}
pre{background:#f7fafc;border:1px solid #e2e8f0;padding:8px;overflow-x:auto;font-size:12px;margin:0}
.muted{color:#718096}
button{font:inherit;padding:5px 14px;border-radius:4px;border:1px solid #2b6cb0;background:#2b6cb0;color:#fff;cursor:pointer}
header button{background:transparent;border-color:#90cdf4}
.login{max-width:380px;margin:12vh auto;background:#fff;border:1px solid #e2e8f0;border-radius:6px;padding:24px}
.login input{width:100%;font:inherit;padding:6px 8px;margin:6px 0 12px;border:1px solid #cbd5e0;border-radius:4px}
.error{color:#c53030}
.chart{max-width:100%;height:auto}
"""


def _page(title: str, body: str) -> str:
    return (f'<!doctype html><html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{escape(title)}</title><style>{_CSS}</style></head><body>{body}</body></html>")


def _when(timestamp: float | None) -> str:
    if timestamp is None:
        return ""
    return datetime.datetime.fromtimestamp(timestamp, datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S")


def _num(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4g}"
    return f"{value:,}" if isinstance(value, int) else escape(str(value))


def _table(headers: Sequence[str], rows: Iterable[Sequence[str]], *, numeric: Sequence[int] = (),
           table_id: str | None = None, empty: str = "none") -> str:
    """Cells arrive already escaped (so a cell may hold markup built here, like a state badge)."""
    head = "".join(f'<th{" class=num" if i in numeric else ""}>{escape(h)}</th>' for i, h in enumerate(headers))
    body = "".join("<tr>" + "".join(f'<td{" class=num" if i in numeric else ""}>{cell}</td>'
                                    for i, cell in enumerate(row)) + "</tr>" for row in rows)
    if not body:
        body = f'<tr><td colspan="{len(headers)}" class="muted">{escape(empty)}</td></tr>'
    thead = f"<thead><tr>{head}</tr></thead>" if any(headers) else ""  # a key-value table needs no header row
    return f'<table{f" id={table_id}" if table_id else ""}>{thead}<tbody>{body}</tbody></table>'


def _state(state: str) -> str:
    return f'<span class="state {escape(state)}">{escape(state)}</span>'


def login_page(error: str | None = None) -> str:
    problem = f'<p class="error">{escape(error)}</p>' if error else ""
    return _page("matcher console: sign in", f"""<div class="login"><h2>matcher console</h2>{problem}
<form method="post" action="/login"><label for="token">Operator console token</label>
<input id="token" name="token" type="password" autocomplete="current-password" required autofocus>
<button type="submit">Sign in</button></form>
<p class="muted">Create a token with <code>matcher console --db DB --new-token</code>.</p></div>""")


def unauthorized_page() -> str:
    return _page("matcher console: sign in required", '<div class="login"><h2>Sign in required</h2>'
                 '<p>This console needs the operator token.</p><p><a href="/login">Sign in</a></p></div>')


def not_found_page() -> str:
    return _page("matcher console: not found", '<div class="login"><h2>Not found</h2><p><a href="/">Back</a></p></div>')


def _bucket_label(start: float, width: int) -> str:
    moment = datetime.datetime.fromtimestamp(start, datetime.timezone.utc)
    return moment.strftime("%H:%M" if width < 86400 else "%m-%d")


def dashboard_page(snap: Snapshot) -> str:
    audience = snap.audience
    cards = "".join(f'<div class="card"><div class="n">{value}</div><div class="k">{escape(key)}</div></div>' for key, value in (
        ("audience members", _num(audience["members"])),
        ("merchants", _num(len(snap.merchants))),
        ("auditors", _num(snap.auditors)),
        ("jobs", _num(sum(snap.jobs_by_state.values()))),
        ("audit log entries", _num(snap.log_size)),
    ))
    b = snap.job_buckets
    labels = [_bucket_label(b.start + i * b.bucket_seconds, b.bucket_seconds) for i in range(len(b.counts))]
    width = f"{b.bucket_seconds // 60} min" if b.bucket_seconds < 3600 else (
        f"{b.bucket_seconds // 3600} h" if b.bucket_seconds < 86400 else f"{b.bucket_seconds // 86400} d")
    jobs_chart = charts.stacked_bars(f"Jobs over time by state ({width} bars, UTC)", b.counts, labels,
                                     ["released", "refused", "failed", "running"])
    eps_chart = charts.budget_bars("ε used per merchant (current budget period)",
                                   [(m.name, m.epsilon_used, m.epsilon_budget) for m in snap.merchants])

    audience_rows = [("id kind", escape(audience["id_kind"] or "(no audience yet)")),
                     ("members", _num(audience["members"])),
                     ("version", f"<code>{escape(snap.audience_version) or '—'}</code>"),
                     ("segments", escape(", ".join(audience["segments"])) or '<span class="muted">none</span>')]
    merchants = _table(["merchant", "state", "ε used", "ε left", "ε budget", "budget period"], (
        (escape(m.name), _state("disabled" if m.disabled else "active"), _num(m.epsilon_used), _num(m.epsilon_left),
         _num(m.epsilon_budget), escape(m.budget_period)) for m in snap.merchants),
        numeric=(2, 3, 4), table_id="merchants", empty="no merchants yet")
    jobs = _table(["job", "merchant", "state", "kind", "protocol", "list size", "labels", "started (UTC)",
                   "duration", "ε", "reason"], (
        (f'<code title="{escape(j.job_id)}">{escape(j.job_id[:8])}</code>', escape(j.merchant), _state(j.state),
         escape(j.kind), escape(j.protocol), _num(j.list_size), _num(j.labels), _when(j.created),
         "" if j.duration is None else f"{j.duration:.2f} s",
         "" if j.epsilon is None else f"{j.epsilon:.4g} ({escape(j.budget_state or '')})", escape(j.reason or ""))
        for j in snap.jobs), numeric=(5, 6, 8), table_id="jobs", empty="no jobs yet")
    policy = _table(["setting", "value", "source"], (
        (escape(key), escape(str(value)), "operator" if key in snap.policy_set else '<span class="muted">default</span>')
        for key, value in snap.policy.items()), table_id="policy")
    overrides = _table(["merchant", "setting", "value"], (
        (escape(name), escape(key), escape(value)) for name, own in snap.overrides.items() for key, value in own.items()),
        table_id="overrides", empty="no per-merchant overrides")
    pre = snap.precomputation
    segment_slots = ", ".join(f"{escape(s)}: {n}" for s, n in sorted(pre["segment_stream_slots_ready"].items()))
    pre_rows = [("stream slots ready (every member)", _num(pre["stream_slots_ready"])),
                ("segment stream slots ready", segment_slots or '<span class="muted">none</span>'),
                ("stream rows being written", _num(pre["stream_slot_rows_in_progress"])),
                ("randomness pool (sealed batches)", _num(pre["randomness_pool_batches"])),
                ("unbalanced preprocessing ready", "yes" if pre["preprocessing_ready"] else "no"),
                ("unbalanced merchant copies", _num(pre["unbalanced_copies"])),
                ("activations", escape(", ".join(f"{s}: {n}" for s, n in sorted(snap.activations.items())) or "none"))]
    checkpoint = (f"<pre id=checkpoint>{escape(snap.checkpoint)}</pre>" if snap.checkpoint
                  else '<p class="muted">no checkpoint signed yet</p>')
    by_state = ", ".join(f"{escape(s)}: {n:,}" for s, n in sorted(snap.jobs_by_state.items())) or "none"
    body = f"""<header><h1>matcher console — {escape(snap.origin or "")}</h1>
<span class="when">as of {_when(snap.taken_at)} UTC · read-only</span>
<form method="post" action="/logout"><button type="submit">Sign out</button></form></header>
<main><div class="cards">{cards}</div>
<div class="row"><section id="jobs-chart">{jobs_chart}</section><section id="epsilon-chart">{eps_chart}</section></div>
<div class="row"><section><h2>Audience</h2>{_table(["", ""], audience_rows, table_id="audience")}</section>
<section><h2>Merchants and privacy budget</h2>{merchants}</section></div>
<section><h2>Recent jobs</h2><p class="muted">all jobs by state: {by_state}</p>{jobs}</section>
<div class="row"><section><h2>Release policy (operator default)</h2>{policy}</section>
<section><h2>Per-merchant overrides</h2>{overrides}<h2 style="margin-top:16px">Precomputation</h2>
{_table(["", ""], pre_rows, table_id="precomputation")}</section></div>
<section><h2>Audit log</h2><p>{_num(snap.log_size)} entries; latest signed checkpoint:</p>{checkpoint}</section>
</main>"""
    return _page(f"matcher console — {snap.origin or ''}", body)


def error_page(message: str) -> str:
    return _page("matcher console: error", f'<div class="login"><h2>The console could not read the database</h2>'
                 f'<p class="error">{escape(message)}</p></div>')
