"""The operator CLI, ``matcher``: a thin click layer over the store, the importer and the server."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import signal
import sys
import threading
from pathlib import Path

import click
from rich.console import Console
from rich.table import Table

from matcher import keys as keys_mod
from matcher._cli import ErrorReportingGroup
from matcher.store import Store

console = Console(stderr=True)
db_option = click.option("--db", "db", required=True, type=click.Path(dir_okay=False, path_type=Path),
                         help="The operator's SQLite database.")
json_option = click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")


def _print_token(token: str, as_json: bool) -> None:
    """The token goes alone on the last line of stdout (or as JSON), so scripts can take it."""
    click.echo(json.dumps({"token": token}) if as_json else token)


@click.group(cls=ErrorReportingGroup)
@click.version_option(package_name="matcher")
def main() -> None:
    """Operate a matcher server: audience, merchants, policy, audit log."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


@main.command()
@db_option
@click.option("--origin", default=None, help="Name of the audit log (default: matcher.<db file stem>).")
@click.option("--paillier-bits", default=2048, show_default=True, type=click.IntRange(2048, 4096))
def init(db: Path, origin: str | None, paillier_bits: int) -> None:
    """Create the database, the schema and the operator's keys (key file DB.keys, mode 0600)."""
    if db.exists():
        raise click.UsageError(f"{db} already exists")
    key_path = keys_mod.key_path_for(db)
    origin = origin or f"matcher.{db.stem}"
    with console.status("generating keys (Paillier, Ed25519)"):
        keys = keys_mod.create(key_path, origin=origin, paillier_bits=paillier_bits)
    store = Store(db, create=True)
    store.set_meta({"origin": origin})
    store.close()
    console.print(f"created {db} and {key_path}")
    click.echo(f"verifier key: {keys.signer.verifier_key}")


@main.command()
@db_option
def status(db: Path) -> None:
    """Audience, merchants, jobs by state, audit log, precomputation and activations, as JSON."""
    click.echo(json.dumps(Store(db).status(), indent=2, sort_keys=True))


@main.group()
def audience() -> None:
    """The platform's member audience."""


@audience.command("import")
@db_option
@click.argument("file")
@click.option("--id-column", required=True)
@click.option("--id-type", required=True, type=click.Choice(["phone", "email", "sha256", "opaque"]))
@click.option("--segments", default="", help="Comma-separated yes/no columns, e.g. member,paid_with_platform.")
@click.option("--region", default="CN", show_default=True, help="Default region for phones without a country code.")
@click.option("--hashed-kind", default="phone", type=click.Choice(["phone", "email"]),
              help="For --id-type sha256: what was hashed.")
@click.option("--skip-invalid", is_flag=True,
              help="Skip rows whose segment value is not yes/no (blank included) and import the rest; "
                   "without it such a row fails the import and nothing is written.")
@click.option("--executor", default="local", show_default=True,
              help="Where the hashing runs: local (all cores), inline (this process) or dask://HOST:PORT.")
@click.option("--delimiter", default=None, metavar="CHAR",
              help="The CSV delimiter, e.g. ';' or tab (default: sniffed from the header: , ; tab |).")
@json_option
def audience_import(db: Path, file: str, id_column: str, id_type: str, segments: str, region: str,
                    hashed_kind: str, skip_invalid: bool, executor: str, delimiter: str | None, as_json: bool) -> None:
    """Import (or update) members from a CSV (.csv.gz too) or Parquet FILE (or - for stdin); hashes each id to the
    group once.

    A member already present (earlier in the file, or from an earlier import) gets the segments of
    its latest row. Segment values are 1/0, true/false or yes/no (any case); any other value, blank
    included, fails the import before anything is written (the error names the first lines), unless
    --skip-invalid. Rows whose id is invalid are skipped and reported; a file with no valid row fails."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from matcher import tabular
    from matcher.audience import id_problem, import_file, segment_problem
    from matcher.crypto.kernels import kernels_for

    store = Store(db)
    names = [s.strip() for s in segments.split(",") if s.strip()]
    total = tabular.count_rows(file)  # a missing or unreadable file fails here, before any pool starts
    try:
        kernels = kernels_for(executor)
    except ValueError as err:
        raise click.BadParameter(str(err), param_hint="--executor") from None
    with kernels, Progress(TextColumn("importing"), BarColumn(), MofNCompleteColumn(),
                                              TimeRemainingColumn(), console=console) as progress:
        task = progress.add_task("import", total=total)
        summary = import_file(store, file, id_column=id_column, id_type=id_type, segments=names, region=region,
                              hashed_kind=hashed_kind, kernels=kernels, skip_invalid=skip_invalid,
                              progress=lambda n: progress.advance(task, n),
                              workers=(os.cpu_count() or 1) if (total or 0) > 200_000 else 1,
                              delimiter=tabular.parse_delimiter(delimiter))
    reasons = ", ".join(f"{reason}: {n}" for reason, n in sorted(summary.invalid.items()))
    console.print(f"read {summary.rows} rows: imported {summary.imported}, duplicates {summary.duplicates} "
                  f"({summary.unchanged} unchanged, not written again), "
                  f"invalid {sum(summary.invalid.values())}{f' ({reasons})' if reasons else ''}; "
                  f"audience has {summary.members} members", soft_wrap=True, highlight=False)
    if summary.skipped_segments:
        console.print(f"skipped {segment_problem(file, summary)}", soft_wrap=True, highlight=False)
    if summary.skipped_ids:
        console.print(f"skipped {id_problem(file, summary)}", soft_wrap=True, highlight=False)
    if as_json:
        click.echo(json.dumps(dataclasses.asdict(summary), indent=2))


@audience.command("show")
@db_option
def audience_show(db: Path) -> None:
    """Size, id kind and segments of the audience."""
    click.echo(json.dumps(Store(db).audience_info(), indent=2))


def _audit(store: Store, entry: dict) -> None:
    """Operator actions are logged like job decisions: auditors see every policy and principal change."""
    from matcher.log.auditlog import AuditLog

    AuditLog.for_store(store, keys_mod.load(keys_mod.key_path_for(store.path)).signer).record(entry)


def _add_principal(role: str, db: Path, name: str, as_json: bool) -> None:
    store = Store(db)
    _, token = store.add_principal(role, name)
    _audit(store, {"type": f"{role}_added", "name": name})
    console.print(f"{role} '{name}' added; the token is shown once, store it safely")
    _print_token(token, as_json)


@main.group()
def merchant() -> None:
    """Merchants allowed to run jobs."""


@merchant.command("add")
@db_option
@click.argument("name")
@json_option
def merchant_add(db: Path, name: str, as_json: bool) -> None:
    """Add merchant NAME and print its bearer token once."""
    _add_principal("merchant", db, name, as_json)


@merchant.command("list")
@db_option
def merchant_list(db: Path) -> None:
    click.echo(json.dumps(Store(db).list_principals("merchant"), indent=2))


@merchant.command("disable")
@db_option
@click.argument("name")
def merchant_disable(db: Path, name: str) -> None:
    """Revoke merchant NAME's token."""
    _set_merchant_disabled(db, name, True)


@merchant.command("enable")
@db_option
@click.argument("name")
def merchant_enable(db: Path, name: str) -> None:
    """Restore merchant NAME's token (after `merchant disable`, or a suspension for a protocol deviation)."""
    _set_merchant_disabled(db, name, False)


def _set_merchant_disabled(db: Path, name: str, disabled: bool) -> None:
    store = Store(db)
    store.set_disabled("merchant", name, disabled)
    state = "disabled" if disabled else "enabled"
    _audit(store, {"type": f"merchant_{state}", "name": name})
    console.print(f"merchant '{name}' {state}")


@main.group()
def auditor() -> None:
    """Auditors allowed to read the audit log."""


@auditor.command("add")
@db_option
@click.argument("name")
@json_option
def auditor_add(db: Path, name: str, as_json: bool) -> None:
    """Add auditor NAME and print its bearer token once."""
    _add_principal("auditor", db, name, as_json)


@main.group()
def policy() -> None:
    """The release policy (operator default, per-merchant overrides)."""


@policy.command("set")
@db_option
@click.argument("key")
@click.argument("value")
@click.option("--merchant", default=None, help="Override for one merchant only.")
def policy_set(db: Path, key: str, value: str, merchant: str | None) -> None:
    """Set KEY to VALUE: min_list_size, k, noise, epsilon_per_job, epsilon_budget, budget_period, jobs_per_hour, dummies, ..."""
    store = Store(db)
    effective = store.set_policy(key, value, merchant=merchant)
    _audit(store, {"type": "policy", "key": key, "value": value, "merchant": merchant,
                   "policy": effective.to_dict(), "policy_digest": effective.digest()})
    console.print(f"{key} = {getattr(effective, key)}" + (f" for merchant '{merchant}'" if merchant else ""))


@policy.command("show")
@db_option
@click.option("--merchant", default=None, help="The policy in force for this merchant.")
@json_option
def policy_show(db: Path, merchant: str | None, as_json: bool) -> None:
    """Print the effective policy."""
    store = Store(db)
    effective = store.effective_policy(merchant)
    if as_json:
        click.echo(json.dumps(effective.to_dict(), indent=2, sort_keys=True))
        return
    overrides = {**store.policy_settings(""), **(store.policy_settings(merchant) if merchant else {})}
    table = Table(title=f"policy{' for ' + merchant if merchant else ''} (digest {effective.digest()[:12]})")
    table.add_column("key")
    table.add_column("value")
    table.add_column("source")
    for key, value in effective.to_dict().items():
        source = "merchant" if merchant and key in store.policy_settings(merchant) else (
            "operator" if key in overrides else "default")
        table.add_row(key, str(value), source)
    Console().print(table)


@main.group()
def activation() -> None:
    """Audiences merchants activated for campaigns (platform member ids only)."""


@activation.command("list")
@db_option
@json_option
def activation_list(db: Path, as_json: bool) -> None:
    """Every activation with its true size, state and expiry (expired ones are deleted first)."""
    from matcher import activations

    store = Store(db)
    activations.expire(store, lambda entry: _audit(store, entry))
    rows = store.list_activations()
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    table = Table(title="activations")
    for column in ("handle", "merchant", "name", "where", "label", "size", "noisy size", "expires", "state"):
        table.add_column(column)
    for a in rows:
        table.add_row(a["handle"], a["merchant"], a["name"], a["where_expr"], a["label"] or "all", str(a["size"]),
                      str(a["noisy_size"]), _when(a["expires"]), a["state"])
    Console().print(table)


def _when(timestamp: float) -> str:
    import datetime

    return datetime.datetime.fromtimestamp(timestamp, datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


@activation.command("export")
@db_option
@click.argument("handle")
@click.option("--out", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="CSV file (or .parquet) for the campaign system.")
def activation_export(db: Path, handle: str, out: Path) -> None:
    """Write the platform member ids of activation HANDLE."""
    from matcher import activations

    store = Store(db)
    count = activations.export(store, lambda entry: _audit(store, entry), handle, out)
    console.print(f"wrote {count} member ids to {out}")


@activation.command("delete")
@db_option
@click.argument("handle")
def activation_delete(db: Path, handle: str) -> None:
    """Delete activation HANDLE and its rows now."""
    from matcher import activations

    store = Store(db)
    activations.delete(store, lambda entry: _audit(store, entry), handle)
    console.print(f"deleted {handle}")


@main.group()
def audit() -> None:
    """The audit log."""


@audit.command("key")
@db_option
def audit_key(db: Path) -> None:
    """Print the verifier key auditors should pin."""
    click.echo(keys_mod.load(keys_mod.key_path_for(db)).signer.verifier_key)


@main.command()
@db_option
@click.option("--listen", default="127.0.0.1:50051", show_default=True, help="HOST:PORT to listen on.")
@click.option("--tls-cert", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--tls-key", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--workers", default=16, show_default=True, help="gRPC worker threads.")
@click.option("--executor", default="local", show_default=True,
              help="Where the crypto runs: local (all cores), inline (this process) or dask://HOST:PORT.")
@click.option("--randomness-pool", default="auto", show_default=True,
              help="Paillier randomness to precompute while idle, in values: a number, 0 (off) or auto "
                   "(the audience size, at most 2,000,000). Only while the semi-honest protocol is enabled.")
@click.option("--stream-slots", default=1, show_default=True, type=click.IntRange(0, 16),
              help="Job streams to precompute while idle (a scalar b, an order and b·H(y) of every member: "
                   "32 bytes a member on disk, about 550 with the Paillier ciphertexts the semi-honest protocol "
                   "needs when it is enabled), each used by one job; 0 computes them during the job.")
@click.option("--grace", default=10.0, show_default=True, type=click.FloatRange(0, 600),
              help="Seconds running jobs get to finish after SIGTERM before they are failed (an accepted job stays charged).")
@click.option("--idle-timeout", default=60.0, show_default=True, type=click.FloatRange(1, 3600),
              help="A job stream that sends nothing for this many seconds is cancelled: its job fails (logged) "
                   "and frees its slot.")
@click.option("--streams-per-merchant", default=2, show_default=True, type=click.IntRange(1, 64),
              help="Job streams one merchant may hold open at once (4 worker threads always stay free for health "
                   "checks and the read-only calls).")
def serve(db: Path, listen: str, tls_cert: Path | None, tls_key: Path | None, workers: int, executor: str,
          randomness_pool: str, stream_slots: int, grace: float, idle_timeout: float,
          streams_per_merchant: int) -> None:
    """Serve MatchService and AuditService until SIGTERM or Ctrl-C, then shut down gracefully."""
    from matcher.crypto.kernels import kernels_for
    from matcher.server import ServerConfig, build_server

    if bool(tls_cert) != bool(tls_key):
        raise click.UsageError("TLS needs both --tls-cert and --tls-key")
    try:
        kernels = kernels_for(executor)
    except ValueError as err:
        raise click.BadParameter(str(err), param_hint="--executor") from None
    if randomness_pool == "auto":
        pool_values = min(2_000_000, Store(db).audience_info()["members"])
    elif randomness_pool.isdigit():
        pool_values = int(randomness_pool)
    else:
        raise click.BadParameter("a number of values, 0 or auto", param_hint="--randomness-pool")
    server, port = build_server(ServerConfig(db=db, listen=listen, tls_cert=tls_cert, tls_key=tls_key,
                                             max_workers=workers, kernels=kernels, randomness_pool=pool_values,
                                             stream_slots=stream_slots, idle_timeout=idle_timeout,
                                             streams_per_merchant=streams_per_merchant))
    stopping = threading.Event()

    def shutdown(signum, frame):
        if not stopping.is_set():
            stopping.set()
            console.print(f"shutting down: finishing running jobs ({grace:g} s grace)")
            threading.Thread(target=server.stop, args=(grace,), daemon=True).start()

    signal.signal(signal.SIGTERM, shutdown)
    signal.signal(signal.SIGINT, shutdown)
    server.start()
    host = listen.rsplit(":", 1)[0]
    console.print(f"matcher serving on {host}:{port} ({'TLS' if tls_cert else 'plaintext'})")
    sys.stdout.flush()
    server.wait_for_termination()


if __name__ == "__main__":
    main()
