"""A self-contained HTML report of one ``matcher-audit verify`` run: what was checked and what passed.

    html = render(result, server="platform.example:50051")    # a verified log
    html = render_failure("entry 4 ...: below the policy's k", server=...)   # a log that lied

One file, inline CSS, no scripts and nothing loaded from anywhere, so it can be archived or
mailed as evidence. Every value from the log is escaped: entries are the operator's data.
"""

from __future__ import annotations

import datetime
import time
from html import escape
from typing import Any, Iterable, Sequence

from matcher_client.audit import AuditResult

__all__ = ["render", "render_failure"]

# The policy values a release is held to, in the order the report lists them.
_POLICY_KEYS = ("min_list_size", "max_list_size", "max_labels", "k", "noise", "epsilon_per_job", "epsilon_budget",
                "budget_period", "dummies")

_CSS = """
body{margin:0;font:14px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif;color:#1a202c;background:#f7fafc}
main{max-width:1200px;margin:0 auto;padding:20px 24px 40px}
h1{font-size:20px;margin:0 0 4px}h2{font-size:16px;margin:24px 0 8px;color:#2a4365}
.verdict{padding:12px 16px;border-radius:6px;color:#fff;font-weight:600;margin:12px 0}
.ok{background:#2f855a}.fail{background:#c53030}
table{border-collapse:collapse;width:100%;font-size:13px;background:#fff}
th,td{text-align:left;padding:4px 8px;border:1px solid #e2e8f0;vertical-align:top}
th{background:#edf2f7}td.num{text-align:right;font-variant-numeric:tabular-nums}
code,pre{font-size:12px;word-break:break-all}pre{white-space:pre-wrap;margin:0}
ul{margin:0;padding-left:18px}.muted{color:#718096}
"""


def _page(title: str, body: str) -> str:
    return (f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{escape(title)}</title>'
            f"<style>{_CSS}</style></head><body><main>{body}</main></body></html>\n")


def _when(timestamp: float) -> str:
    return datetime.datetime.fromtimestamp(timestamp, datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def _table(headers: Sequence[str], rows: Iterable[Sequence[str]], *, numeric: Sequence[int] = (),
           table_id: str = "") -> str:
    """Cells arrive escaped (a cell may hold a list built here)."""
    head = "".join(f"<th>{escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f'<td{" class=num" if i in numeric else ""}>{c}</td>' for i, c in enumerate(row))
                   + "</tr>" for row in rows)
    if not body:
        body = f'<tr><td colspan="{len(headers)}" class="muted">none in this run</td></tr>'
    thead = f"<thead><tr>{head}</tr></thead>" if any(headers) else ""  # a key-value table needs no header row
    return f'<table id="{table_id}">{thead}<tbody>{body}</tbody></table>'


def _value(value: Any) -> str:
    return escape("—" if value is None else f"{value:g}" if isinstance(value, float) else str(value))


def render(result: AuditResult, *, server: str = "", generated_at: float | None = None) -> str:
    """The report of a successful verification."""
    generated_at = time.time() if generated_at is None else generated_at
    summary = _table(["", ""], [
        ("server", escape(server)), ("log origin", escape(result.origin)),
        ("verifier key", f"<code>{escape(result.verifier_key)}</code> "
                         f"({'pinned by this run: trust on first use' if result.key_pinned_now else 'pinned'})"),
        ("log size", f"{result.previous_size:,} → {result.size:,} entries"),
        ("root", f"<code>{escape(result.root)}</code>"),
        ("checkpoints verified", f"{result.checkpoints_verified:,}"),
        ("entries checked", f"{result.entries_checked:,}"),
        ("jobs (this run)", escape(", ".join(f"{d}: {n:,}" for d, n in result.jobs.items()))),
        ("warnings", f"{len(result.warnings)}"),
    ], table_id="summary")
    checkpoints = _table(["origin", "size", "root", "signature", "signed note"], (
        (escape(c.origin), f"{c.size:,}", f"<code>{escape(c.root)}</code>", "OK (pinned key)",
         f"<pre>{escape(c.note)}</pre>") for c in result.checkpoints), numeric=(1,), table_id="checkpoints")
    releases = _table(["entry", "job", "merchant", "decision", "time", "ε", "policy obeyed", "checks passed"], (
        (f"{r.index:,}", f"<code>{escape(r.job_id)}</code>", escape(r.merchant), escape(r.decision), _when(r.time),
         _value(r.epsilon),
         "<ul>" + "".join(f"<li>{escape(k)} = {_value(r.policy.get(k))}</li>" for k in _POLICY_KEYS) + "</ul>",
         "<ul>" + "".join(f"<li>{escape(c)}</li>" for c in r.checks) + "</ul>") for r in result.releases),
        numeric=(0, 5), table_id="releases")
    budgets = _table(["merchant", "released", "activated", "refused", "failed", "ε spent (all)",
                      "ε in last budget period", "ε budget", "budget period", "policy digest"], (
        (escape(name), f"{m.released:,}", f"{m.activated:,}", f"{m.refused:,}", f"{m.failed:,}", _value(m.epsilon_spent),
         _value(m.epsilon_window), _value(m.epsilon_budget), _value(m.budget_period),
         f"<code>{escape((m.policy_digest or '')[:16])}</code>") for name, m in result.merchants.items()),
        numeric=(1, 2, 3, 4, 5, 6, 7), table_id="budgets")
    warnings = ("<ul>" + "".join(f"<li>{escape(w)}</li>" for w in result.warnings) + "</ul>"
                if result.warnings else '<p class="muted">none</p>')
    body = (f"<h1>matcher audit report: {escape(result.origin)}</h1>"
            f'<p class="muted">generated {_when(generated_at)} by matcher-audit verify</p>'
            f'<div class="verdict ok" id="verdict">VERIFIED: {result.size:,} entries, every signed checkpoint '
            f"consistent, every release within its policy</div>"
            f"<h2>Summary</h2>{summary}<h2>Checkpoints verified in this run</h2>{checkpoints}"
            f"<h2>Releases checked in this run</h2>{releases}"
            f"<h2>Privacy budget per merchant (all verified entries)</h2>{budgets}<h2>Warnings</h2>{warnings}")
    return _page(f"matcher audit report: {result.origin}", body)


def render_failure(message: str, *, server: str = "", generated_at: float | None = None) -> str:
    """The report of a log that failed verification: the violation, and nothing presented as verified."""
    generated_at = time.time() if generated_at is None else generated_at
    body = (f"<h1>matcher audit report</h1>"
            f'<p class="muted">generated {_when(generated_at)} by matcher-audit verify; server {escape(server)}</p>'
            f'<div class="verdict fail" id="verdict">VIOLATION: {escape(message)}</div>'
            f"<p>The log failed verification at this check; nothing in it should be trusted until the operator "
            f"explains the violation. The saved state (if any) was not updated.</p>")
    return _page("matcher audit report: VIOLATION", body)
