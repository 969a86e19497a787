"""``matcher-audit``: the auditor's command line, a thin click layer over :mod:`matcher_client.audit`.

Exit codes are part of the interface, so scripts and CI can gate on them: 0 the log verified,
1 the log lied (``VIOLATION: ...`` on stdout), 2 the check could not run (usage, connection,
authentication, a bad state or key file).
"""

from __future__ import annotations

import json
from pathlib import Path

import click
from rich.console import Console
from rich.table import Table

from matcher._cli import ErrorReportingGroup
from matcher.errors import MatcherError, VerificationError
from matcher_client import audit

console = Console(stderr=True)
server_option = click.option("--server", required=True, help="HOST:PORT of the matcher server.")
token_option = click.option("--token", envvar="MATCHER_TOKEN", required=True,
                            help="Your auditor (or, for prove, merchant) token; or set MATCHER_TOKEN.")
key_option = click.option("--key", "key", default=None,
                          help="The operator's published verifier key, or a file holding it (`matcher audit key`).")
tls_option = click.option("--tls-ca", type=click.Path(exists=True, dir_okay=False),
                          help="CA certificate of a TLS server (plaintext when omitted).")


class _Group(ErrorReportingGroup):
    """A lying log is exit 1 with one VIOLATION line; anything that kept the check from running is exit 2."""

    error_exit_code = 2

    def handle(self, err: MatcherError) -> int:
        if isinstance(err, VerificationError):
            click.echo(f"VIOLATION: {err}")
            return 1
        return super().handle(err)


@click.group(cls=_Group)
@click.version_option(package_name="matcher")
def main() -> None:
    """Verify a matcher server's audit log: signatures, history and every release against its policy."""


def _read_key(key: str | None) -> str | None:
    """A key given inline or as a file; the file wins when both readings are possible."""
    if key is None:
        return None
    path = Path(key)
    return path.read_text().strip() if path.is_file() else key.strip()


@main.command()
@server_option
@token_option
@click.option("--state", "state_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Where to keep the pinned key and the last verified checkpoint between runs (created if absent).")
@key_option
@tls_option
@click.option("--html", "html_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also write a self-contained HTML report of what was checked (a failing one on a violation).")
def verify(server: str, token: str, state_path: Path | None, key: str | None, tls_ca: str | None,
           html_path: Path | None) -> None:
    """Verify everything new in the log since the last run (everything on the first) and print a summary."""
    from matcher_client import audit_report

    state = audit.AuditState.load(state_path) if state_path else None
    try:
        with audit.GrpcLogSource(server, token, tls_ca) as source:
            result = audit.verify(source, state=state, pinned_key=_read_key(key))
    except VerificationError as err:
        if html_path:
            try:
                _write_report(html_path, audit_report.render_failure(str(err), server=server))
            except click.UsageError as problem:  # the violation, and its exit code 1, matter more
                console.print(f"[yellow]warning:[/] {problem.message}", highlight=False)
        raise
    if state_path:
        result.state.save(state_path)
    if html_path:
        _write_report(html_path, audit_report.render(result, server=server))
    out = Console()
    out.print(_summary_table(result))
    if result.merchants:
        out.print(_merchant_table(result))
    for warning in result.warnings:
        console.print(f"[yellow]warning:[/] {warning}", highlight=False)
    if result.key_pinned_now:
        console.print(f"pinned the server's key {result.verifier_key} (trust on first use)"
                      + ("" if state_path else "; without --state it is not kept"), highlight=False)
    click.echo(f"OK: {result.size} entries verified, root {result.root}")


def _write_report(path: Path, html: str) -> None:
    try:
        path.write_text(html, encoding="utf-8")
    except OSError as err:
        raise click.UsageError(f"cannot write the HTML report to {path}: {err.strerror}") from None
    console.print(f"wrote the HTML report to {path}", highlight=False)


def _summary_table(result: audit.AuditResult) -> Table:
    table = Table(title=f"audit log {result.origin}", show_header=False)
    table.add_column("")
    table.add_column("", overflow="fold")  # keys and roots are copied by hand: never elide them
    table.add_row("verifier key", result.verifier_key + (" (pinned now)" if result.key_pinned_now else " (pinned)"))
    table.add_row("tree size", f"{result.previous_size:,} → {result.size:,}")
    table.add_row("root", result.root)
    table.add_row("new checkpoints verified", f"{result.checkpoints_verified:,}")
    table.add_row("new entries checked", f"{result.entries_checked:,}")
    for decision in ("released", "activated", "refused", "failed"):
        table.add_row(f"new jobs {decision}", f"{result.jobs[decision]:,}")
    table.add_row("warnings", str(len(result.warnings)))
    return table


def _merchant_table(result: audit.AuditResult) -> Table:
    table = Table(title="per merchant (all verified entries)")
    for name, justify in (("merchant", "left"), ("released", "right"), ("activated", "right"),
                          ("refused", "right"), ("failed", "right"),
                          ("ε spent", "right"), ("ε in last period", "right"), ("policy", "left")):
        table.add_column(name, justify=justify)
    for name, m in result.merchants.items():
        table.add_row(name, f"{m.released:,}", f"{m.activated:,}", f"{m.refused:,}", f"{m.failed:,}",
                      f"{m.epsilon_spent:g}",
                      f"{m.epsilon_window:g}", (m.policy_digest or "")[:12])
    return table


@main.command()
@click.option("--report", "report_path", required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="The report JSON `matcher-client match --json` wrote.")
@server_option
@token_option
@key_option
@tls_option
def prove(report_path: Path, server: str, token: str, key: str | None, tls_ca: str | None) -> None:
    """Prove that a report is in the log, unchanged, and that the log has not been rewritten since."""
    try:
        report = json.loads(report_path.read_text())
    except ValueError as err:
        raise click.UsageError(f"{report_path} is not JSON: {err}") from None
    if not isinstance(report, dict):
        raise click.UsageError(f"{report_path} is not a report object")
    with audit.GrpcLogSource(server, token, tls_ca) as source:
        result = audit.prove(report, source, pinned_key=_read_key(key))
    if result.key_source != "pinned":
        console.print("[yellow]warning:[/] no --key: checked against the key the server presents, "
                      "not the operator's published one", highlight=False)
    click.echo(f"OK: job {result.job_id} is entry {result.leaf_index} of the log (report sha256 "
               f"{result.report_digest}), included under checkpoint size {result.checkpoint_size}, "
               f"consistent with the latest size {result.latest_size}")


if __name__ == "__main__":
    main()
