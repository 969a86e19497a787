"""The operator CLI, ``matcher``: a thin click layer over the store, the importer and the server."""

from __future__ import annotations

import dataclasses
import json
import logging
import signal
import sys
import threading
from pathlib import Path

import click
from rich.console import Console
from rich.table import Table

from matcher.server import _logging
from matcher.server import config as config_mod
from matcher.server import keys as keys_mod
from matcher._cli import ErrorReportingGroup, when
from matcher.errors import InputError
from matcher.log import entries
from matcher.policy import budget_after
from matcher.server.store import Store

console = Console(stderr=True)
_NO_DB = "db_optional"  # set in ctx.meta by `config show`, which reports a missing --db instead of failing


def _read_config(ctx: click.Context, param: click.Parameter, value: Path | None) -> Path | None:
    """Eager, so it runs before every other option: the file's values become the command's defaults
    (click's default_map), which the environment and the command line then override. Keys are
    checked against the flags of `matcher serve` whatever the command; other commands take ``db``."""
    if value is None:
        return None
    settings = config_mod.load(value, _serve_keys(), paths=_serve_path_keys())
    if ctx.command not in (serve, config_show):
        settings = {k: v for k, v in settings.items() if k == "db"}
    ctx.default_map = {**(ctx.default_map or {}), **settings}
    return value


def _require_db(ctx: click.Context, param: click.Parameter, value: Path | None) -> Path | None:
    if value is None and not ctx.meta.get(_NO_DB):
        raise InputError("no database given",
                         hint=f"pass --db PATH, set {DB_ENV_VAR}=PATH, or put db = \"PATH\" in the config file "
                              f"(--config FILE or {config_mod.ENV_VAR}=FILE)")
    return value


DB_ENV_VAR = "MATCHER_DB"
config_option = click.option(
    "--config", "config_file", envvar=config_mod.ENV_VAR, show_envvar=True, is_eager=True, expose_value=False,
    callback=_read_config,
    type=click.Path(dir_okay=False, path_type=Path),
    help="TOML file of settings: top-level keys named like serve's flags (listen = \"0.0.0.0:50051\", "
         "stream-slots = 2, db = \"platform.db\"); flags and environment variables override it.")


def db_option(command):
    """``--db`` (or MATCHER_DB, or the config file's db) and ``--config``, on every command that opens the database."""
    command = click.option("--db", "db", envvar=DB_ENV_VAR, show_envvar=True, callback=_require_db,
                           type=click.Path(dir_okay=False, path_type=Path),
                           help="The operator's SQLite database.")(command)
    return config_option(command)


json_option = click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")


def _print_token(token: str, as_json: bool) -> None:
    """The token goes alone on the last line of stdout (or as JSON), so scripts can take it."""
    click.echo(json.dumps({"token": token}) if as_json else token)


@click.group(cls=ErrorReportingGroup)
@click.version_option(package_name="matcher")
def main() -> None:
    """Operate a matcher server: audience, merchants, policy, audit log."""
    logging.basicConfig(level=logging.INFO, format=_logging.TEXT_FORMAT)


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


def _member_file_options(command):
    """FILE and how to read the members' ids in it: shared by `audience import` and `audience remove`."""
    for option in reversed((
            click.argument("file"),
            click.option("--id-column", "id_column", required=True, multiple=True, metavar="COLUMN[:TYPE]",
                         help="An identifier column, as COLUMN:TYPE (TYPE: phone, email, sha256, opaque; "
                              "COLUMN:sha256:email for hashed emails), or COLUMN with --id-type. Repeat it for "
                              "members known by several identifiers: the first is the member's key, the others "
                              "optional; a person matches through any of them and counts once."),
            click.option("--id-type", default=None, type=click.Choice(["phone", "email", "sha256", "opaque"]),
                         help="The type of a single --id-column given without :TYPE."),
            click.option("--region", default="CN", show_default=True,
                         help="Default region for phones without a country code."),
            click.option("--hashed-kind", default="phone", type=click.Choice(["phone", "email"]),
                         help="For --id-type sha256: what was hashed."),
            click.option("--delimiter", default=None, metavar="CHAR",
                         help="The CSV delimiter, e.g. ';' or tab (default: sniffed from the header: , ; tab |)."))):
        command = option(command)
    return command


@audience.command("import")
@db_option
@_member_file_options
@click.option("--segments", default="", help="Comma-separated yes/no columns, e.g. member,paid_with_platform.")
@click.option("--skip-invalid", is_flag=True,
              help="Skip rows whose segment value is not yes/no (blank included) and import the rest; "
                   "without it such a row fails the import and nothing is written.")
@click.option("--executor", default="local", show_default=True,
              help="Where the hashing runs: local (all cores), inline (this process) or dask://HOST:PORT.")
@click.option("--drop-segment", "drop", multiple=True, metavar="NAME",
              help="Remove segment NAME from the audience (every member; repeatable). Merchants' stored "
                   "unbalanced copies of the streams it moves are made again by their next jobs.")
@click.option("--mode", default="upsert", show_default=True, type=click.Choice(["upsert", "replace"]),
              help="upsert: add new members, update the ones the file names, keep the others. replace: also "
                   "remove every member the file does not name, when the import ends.")
@json_option
def audience_import(db: Path, file: str, id_column: tuple[str, ...], id_type: str | None, segments: str, region: str,
                    hashed_kind: str, skip_invalid: bool, executor: str, drop: tuple[str, ...],
                    delimiter: str | None, mode: str, as_json: bool) -> None:
    """Import (or update) members from a CSV (.csv.gz too) or Parquet FILE (or - for stdin); hashes each id to the
    group once.

    --segments must list every segment the audience already has; a name it lacks adds a segment
    (a new yes/no column, logged) to the existing database: keys, log and merchants stay, and jobs
    may ask about it at once. Members this file does not list are outside the new segment. Leaving
    out a segment the audience has is refused unless --drop-segment names it.

    A member already present (earlier in the file, or from an earlier import) gets the segments of
    its latest row. Segment values are 1/0, true/false or yes/no (any case); any other value, blank
    included, fails the import before anything is written (the error names the first lines), unless
    --skip-invalid. Rows whose id is invalid are skipped and reported; a file with no valid row fails."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from matcher import tabular
    from matcher.server.audience import id_problem, import_file, segment_problem
    from matcher.crypto.kernels import kernels_for, usable_cores

    columns = _id_columns(id_column, id_type, hashed_kind)
    store = Store(db)
    names = [s.strip() for s in segments.split(",") if s.strip()]
    before = store.audience_info()
    version_before = store.get_meta("audience_version")
    segments_before = before["segments"] if before["members"] else []
    store.segments_after_import(names, drop)  # a segment left out fails here, before the file is read
    total = tabular.count_rows(file)  # a missing or unreadable file fails here, before any pool starts
    try:
        kernels = kernels_for(executor)
    except ValueError as err:
        raise click.BadParameter(str(err), param_hint="--executor") from None
    with kernels, Progress(TextColumn("importing"), BarColumn(), MofNCompleteColumn(),
                                              TimeRemainingColumn(), console=console) as progress:
        task = progress.add_task("import", total=total)
        summary = import_file(store, file, id_columns=columns, segments=names, region=region,
                              hashed_kind=hashed_kind, kernels=kernels, skip_invalid=skip_invalid,
                              progress=lambda n: progress.advance(task, n), drop_segments=drop,
                              workers=usable_cores() if (total or 0) > 200_000 else 1,
                              delimiter=tabular.parse_delimiter(delimiter), mode=mode)
    reasons = ", ".join(f"{reason}: {n}" for reason, n in sorted(summary.invalid.items()))
    removed_text = f", removed {summary.removed} the file does not name" if mode == "replace" else ""
    console.print(f"read {summary.rows} rows: imported {summary.imported}, duplicates {summary.duplicates} "
                  f"({summary.unchanged} unchanged, not written again){removed_text}, "
                  f"invalid {sum(summary.invalid.values())}{f' ({reasons})' if reasons else ''}; "
                  f"audience has {summary.members} members", soft_wrap=True, highlight=False)
    if store.get_meta("audience_version") != version_before:
        _audit(store, entries.audience_entry(mode if mode == "replace" else "import", store.get_meta("audience_version")))
    if summary.skipped_segments:
        console.print(f"skipped {segment_problem(file, summary)}", soft_wrap=True, highlight=False)
    if summary.skipped_ids:
        console.print(f"skipped {id_problem(file, summary)}", soft_wrap=True, highlight=False)
    segments_now = store.audience_info()["segments"]
    if segments_now != segments_before:
        # Auditors see which segments a report can name, and from which audience version on.
        added = [s for s in segments_now if s not in segments_before]
        removed = [s for s in segments_before if s not in segments_now]
        _audit(store, entries.audience_segments_entry(segments_now, added, removed, store.get_meta("audience_version")))
        if segments_before and added:
            console.print(f"added segment{'s' if len(added) > 1 else ''} {', '.join(added)}: members this file "
                          "does not list are outside them", soft_wrap=True, highlight=False)
        if removed:
            console.print(f"removed segment{'s' if len(removed) > 1 else ''} {', '.join(removed)}",
                          soft_wrap=True, highlight=False)
    if as_json:
        click.echo(json.dumps(dataclasses.asdict(summary), indent=2))


@audience.command("remove")
@db_option
@_member_file_options
@json_option
def audience_remove(db: Path, file: str, id_column: tuple[str, ...], id_type: str | None, region: str, hashed_kind: str,
                    delimiter: str | None, as_json: bool) -> None:
    """Remove the members a CSV/Parquet FILE (or - for stdin) names: members who left, or asked to be
    forgotten. They go with their identifiers and segments, all at once when the file has been read:
    out of every later job, every precomputed stream (a new audience version), every activation slice,
    and, at their merchants' next jobs, every unbalanced-mode copy. Logged (without a count)."""
    from matcher import tabular
    from matcher.server.audience import id_problem, remove_file

    columns = _id_columns(id_column, id_type, hashed_kind)
    store = Store(db)
    summary = remove_file(store, file, id_columns=columns, region=region, delimiter=tabular.parse_delimiter(delimiter))
    if summary.removed:
        _audit(store, entries.audience_entry("remove", store.get_meta("audience_version")))
    console.print(f"read {summary.rows} rows: removed {summary.removed} members, invalid "
                  f"{sum(summary.invalid.values())}; audience has {summary.members} members",
                  soft_wrap=True, highlight=False)
    if summary.skipped_ids:
        console.print(f"skipped {id_problem(file, summary)}", soft_wrap=True, highlight=False)
    if as_json:
        click.echo(json.dumps({"rows": summary.rows, "removed": summary.removed, "invalid": summary.invalid,
                               "members": summary.members}, indent=2))


@audience.command("show")
@db_option
def audience_show(db: Path) -> None:
    """Size, id kind and segments of the audience."""
    click.echo(json.dumps(Store(db).audience_info(), indent=2))


def _id_columns(specs: tuple[str, ...], id_type: str | None, hashed_kind: str) -> list:
    """``--id-column`` options as :class:`matcher.ids.IdColumn`; a malformed one is a usage error naming it."""
    from matcher import ids

    try:
        return ids.parse_id_columns(specs, id_type, hashed_kind=hashed_kind)
    except InputError as err:
        raise click.BadParameter(str(err), param_hint="--id-column") from None


def _require_tls_pair(tls_cert: Path | None, tls_key: Path | None) -> None:
    """`serve` and `console` take TLS as a pair: a certificate without its key (or the reverse) is a usage error."""
    if bool(tls_cert) != bool(tls_key):
        raise click.UsageError("TLS needs both --tls-cert and --tls-key")


def _audit(store: Store, entry: dict) -> None:
    """Operator actions are logged like job decisions: auditors see every policy and principal change."""
    from matcher.server.auditlog import AuditLog

    AuditLog.for_store(store, keys_mod.load(keys_mod.key_path_for(store.path)).signer).record(entry)


def _add_principal(role: str, db: Path, name: str, as_json: bool) -> None:
    store = Store(db)
    _, token = store.add_principal(role, name)
    _audit(store, entries.principal_entry(role, "added", name))
    console.print(f"{role} '{name}' added; the token is shown once, store it safely")
    _print_token(token, as_json)


def _rotate_token(role: str, db: Path, name: str, as_json: bool) -> None:
    store = Store(db)
    token = store.rotate_token(role, name)
    _audit(store, entries.principal_entry(role, "token_rotated", name))
    console.print(f"{role} '{name}' has a new token (the old one no longer works); it is shown once, store it safely")
    _print_token(token, as_json)


def _set_disabled(role: str, db: Path, name: str, disabled: bool) -> None:
    store = Store(db)
    store.set_disabled(role, name, disabled)
    state = "disabled" if disabled else "enabled"
    _audit(store, entries.principal_entry(role, state, name))
    console.print(f"{role} '{name}' {state}")


def _list_principals(role: str, db: Path, as_json: bool) -> None:
    import datetime

    store = Store(db)
    rows = []
    for p in store.list_principals(role):
        created = datetime.datetime.fromtimestamp(p["created"], datetime.timezone.utc).astimezone()
        row = {"name": p["name"], "enabled": not p["disabled"], "created": created.isoformat(timespec="seconds")}
        if role == "merchant":  # one indexed sum per merchant: cheap, and what an operator asks next
            pol = store.effective_policy(p["name"])
            used = store.budget_spent(store.principal(role, p["name"]).id, pol.budget_period_seconds)
            row |= {"epsilon_used": used, "epsilon_left": budget_after(pol, used),
                    "budget_period": pol.budget_period}
        rows.append(row)
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    table = Table(title=f"{role}s")
    columns = ["name", "enabled", "created"] + (["ε used", "ε left", "period"] if role == "merchant" else [])
    for column in columns:
        table.add_column(column)
    for row in rows:
        cells = [row["name"], "yes" if row["enabled"] else "no", row["created"]]
        if role == "merchant":
            cells += [f"{row['epsilon_used']:g}", f"{row['epsilon_left']:g}", row["budget_period"]]
        table.add_row(*cells)
    Console().print(table)


def _principal_commands(group: click.Group, role: str, add_help: str) -> None:
    """add, list, disable, enable and rotate-token: the same for merchants and auditors."""

    @group.command("add", help=add_help)
    @db_option
    @click.argument("name")
    @json_option
    def add(db: Path, name: str, as_json: bool) -> None:
        _add_principal(role, db, name, as_json)

    @group.command("list", help=f"Every {role}: name, enabled, created"
                   + (", and the privacy budget used and left in the current period." if role == "merchant" else "."))
    @db_option
    @json_option
    def list_(db: Path, as_json: bool) -> None:
        _list_principals(role, db, as_json)

    @group.command("disable", help=f"Revoke {role} NAME's token (logged).")
    @db_option
    @click.argument("name")
    def disable(db: Path, name: str) -> None:
        _set_disabled(role, db, name, True)

    @group.command("enable", help=f"Restore {role} NAME's token after `{role} disable`"
                   + (" or a suspension for a protocol deviation" if role == "merchant" else "") + " (logged).")
    @db_option
    @click.argument("name")
    def enable(db: Path, name: str) -> None:
        _set_disabled(role, db, name, False)

    @group.command("rotate-token", help=f"Give {role} NAME a new bearer token, printed once; the old one stops "
                                        "working at once (logged).")
    @db_option
    @click.argument("name")
    @json_option
    def rotate_token(db: Path, name: str, as_json: bool) -> None:
        _rotate_token(role, db, name, as_json)


@main.group()
def merchant() -> None:
    """Merchants allowed to run jobs."""


@main.group()
def auditor() -> None:
    """Auditors allowed to read the audit log."""


_principal_commands(merchant, "merchant", "Add merchant NAME and print its bearer token once.")
_principal_commands(auditor, "auditor", "Add auditor NAME and print its bearer token once.")


@main.group()
def policy() -> None:
    """The release policy (operator default, per-merchant overrides)."""


_NO_DP_WARNING = (
    "noise none turns differential privacy off{scope}: released counts are exact, so a merchant can infer one "
    "person's membership and segments by differencing (two lists that differ in that person alone), and the "
    "ε charged no longer bounds what a job reveals. Use it for tests and benchmarks, not for real audiences.")


def _interactive() -> bool:
    return sys.stdin.isatty()


def _confirm_no_dp(merchant: str | None, yes: bool) -> None:
    """Say what turning noise off means and ask, unless --yes; with no one to ask, refuse."""
    scope = f" for merchant '{merchant}'" if merchant else ""
    console.print(f"[bold yellow]warning:[/] {_NO_DP_WARNING.format(scope=scope)}", highlight=False, soft_wrap=True)
    if yes:
        return
    if not _interactive():
        raise InputError("refusing to turn noise off without confirmation", hint="pass --yes to confirm")
    if not click.confirm("turn noise off?", default=False, err=True):
        raise InputError("noise left unchanged", hint="pass --yes to confirm without a prompt")


@policy.command("set")
@db_option
@click.argument("key")
@click.argument("value")
@click.option("--merchant", default=None, help="Override for one merchant only.")
@click.option("--yes", is_flag=True, help="Confirm a setting that turns differential privacy off (noise none) "
                                          "without a prompt.")
def policy_set(db: Path, key: str, value: str, merchant: str | None, yes: bool) -> None:
    """Set KEY to VALUE: min_list_size, k, noise, epsilon_per_job, epsilon_budget, budget_period, jobs_per_hour, dummies, ...

    noise none makes released counts exact (no differential privacy): it prints what that means and asks
    first; --yes confirms without asking, and without a terminal it is refused unless --yes."""
    store = Store(db)
    if merchant is not None:
        store.principal("merchant", merchant)  # an unknown merchant is named before any warning
    store.effective_policy(merchant).with_setting(key, value)  # a bad value is refused before any prompt
    if key == "noise" and value.strip().lower() == "none" and store.effective_policy(merchant).noise != "none":
        _confirm_no_dp(merchant, yes)
    effective = store.set_policy(key, value, merchant=merchant)
    _audit(store, entries.policy_entry(key, value, merchant, effective))
    console.print(f"{key} = {getattr(effective, key)}" + (f" for merchant '{merchant}'" if merchant else ""))


@policy.command("show")
@db_option
@click.option("--merchant", default=None, help="The policy in force for this merchant.")
@json_option
def policy_show(db: Path, merchant: str | None, as_json: bool) -> None:
    """Print the effective policy."""
    store = Store(db)
    if merchant is not None:
        store.principal("merchant", merchant)  # refused like `policy set`: a typo must not show the default
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
    from matcher.server import activations

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
                      str(a["noisy_size"]), when(a["expires"]), a["state"])
    Console().print(table)


@activation.command("export")
@db_option
@click.argument("handle")
@click.option("--out", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="CSV file (or .parquet) for the campaign system.")
def activation_export(db: Path, handle: str, out: Path) -> None:
    """Write the platform member ids of activation HANDLE."""
    from matcher.server import activations

    store = Store(db)
    count = activations.export(store, lambda entry: _audit(store, entry), handle, out)
    console.print(f"wrote {count} member ids to {out}")


@activation.command("delete")
@db_option
@click.argument("handle")
def activation_delete(db: Path, handle: str) -> None:
    """Delete activation HANDLE and its rows now."""
    from matcher.server import activations

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
@click.option("--audience-at-start", default=2_000_000, show_default=True, type=click.IntRange(0),
              metavar="MEMBERS",
              help="Read an audience of at most this many members into memory at start-up (about 50 bytes a "
                   "member), so the first balanced job does not wait for it; a bigger one is read by the first "
                   "job that streams it, or while idle when --stream-slots is above 0. Unbalanced jobs never "
                   "need it. 0: never at start-up.")
@click.option("--grace", default=10.0, show_default=True, type=click.FloatRange(0, 600),
              help="Seconds running jobs get to finish after SIGTERM before they are failed (an accepted job stays charged).")
@click.option("--idle-timeout", default=60.0, show_default=True, type=click.FloatRange(1, 3600),
              help="A job stream that sends nothing for this many seconds is cancelled: its job fails (logged) "
                   "and frees its slot.")
@click.option("--streams-per-merchant", default=2, show_default=True, type=click.IntRange(1, 64),
              help="Job streams one merchant may hold open at once (4 worker threads always stay free for health "
                   "checks and the read-only calls).")
@click.option("--metrics", "metrics", default=None, metavar="HOST:PORT",
              help="Serve Prometheus metrics on HOST:PORT (jobs, refusals, phase durations, ε per merchant, "
                   "audience and log sizes, precomputation; never an ID or an unreleased count). Off by default.")
@click.option("--log-format", default="text", show_default=True, type=click.Choice(_logging.LOG_FORMATS),
              help="json: one JSON object a line on stderr (timestamp, level, logger, message, job_id, merchant, "
                   "phase, duration, outcome).")
def serve(db: Path, listen: str, tls_cert: Path | None, tls_key: Path | None, workers: int, executor: str,
          randomness_pool: str, stream_slots: int, audience_at_start: int, grace: float, idle_timeout: float,
          streams_per_merchant: int, metrics: str | None, log_format: str) -> None:
    """Serve MatchService and AuditService until SIGTERM or Ctrl-C, then shut down gracefully.

    Every flag can be set in the --config file (top-level keys named like the flags, see
    `matcher config show --help`); a flag given here wins over the file."""
    from matcher.crypto.kernels import kernels_for
    from matcher.server.app import ServerConfig, build_server

    _require_tls_pair(tls_cert, tls_key)
    say = console.print
    if log_format == "json":  # text is what `main` set up already
        _logging.configure("json")
        # Every stderr line is then JSON: the server's own messages become log records too.
        say = logging.getLogger("matcher.serve").info
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
                                             streams_per_merchant=streams_per_merchant, metrics=metrics,
                                             audience_at_start=audience_at_start))
    stopping = threading.Event()

    def shutdown(signum, frame):
        if not stopping.is_set():
            stopping.set()
            say(f"shutting down: finishing running jobs ({grace:g} s grace)")
            threading.Thread(target=server.stop, args=(grace,), daemon=True).start()

    signal.signal(signal.SIGTERM, shutdown)
    signal.signal(signal.SIGINT, shutdown)
    server.start()
    host = listen.rsplit(":", 1)[0]
    say(f"matcher serving on {host}:{port} ({'TLS' if tls_cert else 'plaintext'})")
    if server.metrics:
        say(f"metrics on http://{metrics.rpartition(':')[0]}:{server.metrics.port}/metrics")
    sys.stdout.flush()
    server.wait_for_termination()


def _serve_keys() -> list[str]:
    """What a config file may set: every option of `matcher serve`, including ones added later."""
    return [p.name for p in serve.params if isinstance(p, click.Option) and p.name != "config_file"]


def _serve_path_keys() -> list[str]:
    return [p.name for p in serve.params if isinstance(p.type, click.Path)]


@main.group("config")
def config_group() -> None:
    """The config file (TOML) that `matcher serve` and --db read."""


@config_group.command("show", context_settings={"ignore_unknown_options": True})
@config_option
@json_option
@click.argument("serve_flags", nargs=-1, type=click.UNPROCESSED)
def config_show(as_json: bool, serve_flags: tuple[str, ...]) -> None:
    """Print the settings `matcher serve` would run with, and where each comes from.

    Later sources win: default < config file < environment (MATCHER_DB) < flag. SERVE_FLAGS are
    serve's own flags, to see their effect (`matcher config show --config f.toml --listen :50052`).
    The file's keys are top-level, named like serve's flags with dashes or underscores:

    \b
        db = "platform.db"          # relative to the file; every command reads it
        listen = "0.0.0.0:50051"
        stream-slots = 2
    """
    parent = click.get_current_context()
    parent.meta[_NO_DB] = True
    ctx = serve.make_context("serve", list(serve_flags), parent=parent, default_map=parent.default_map)
    labels = {click.core.ParameterSource.COMMANDLINE: "flag", click.core.ParameterSource.ENVIRONMENT: "environment",
              click.core.ParameterSource.DEFAULT_MAP: "config file", click.core.ParameterSource.DEFAULT: "default"}
    rows = []
    for name in _serve_keys():
        value = ctx.params.get(name)
        source = labels.get(ctx.get_parameter_source(name), "default")
        if source == "environment":
            option = next(p for p in serve.params if p.name == name)
            source = f"environment ({option.resolve_envvar_value(ctx) and option.envvar})"
        rows.append({"key": config_mod.dashed(name), "value": str(value) if isinstance(value, Path) else value,
                     "source": source})
    if as_json:
        click.echo(json.dumps({r["key"]: {"value": r["value"], "source": r["source"]} for r in rows}, indent=2))
        return
    table = Table(title="matcher serve settings")
    for column in ("key", "value", "source"):
        table.add_column(column)
    for r in rows:
        table.add_row(r["key"], "(not set)" if r["value"] is None else str(r["value"]), r["source"])
    Console().print(table)


@main.command("console")
@db_option
@click.option("--listen", default="127.0.0.1:8080", show_default=True, help="HOST:PORT for the web console.")
@click.option("--tls-cert", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--tls-key", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--new-token", is_flag=True,
              help="Create (or replace) the console token (its hash goes to DB.console-token), print it once, exit.")
@json_option
def console_command(db: Path, listen: str, tls_cert: Path | None, tls_key: Path | None, new_token: bool,
                    as_json: bool) -> None:
    """Serve the read-only operator web console (audience, merchants, jobs, policy, audit log) until SIGTERM or Ctrl-C."""
    from matcher.server.console import ConsoleApp, auth, make_server

    token_file = auth.token_path_for(db)
    if new_token:
        Store(db, read_only=True).close()  # a token for a database that exists
        token = auth.new_token(token_file)
        console.print(f"console token written (hashed) to {token_file}; it is shown once, store it safely; "
                      "restart a running console to use it")
        _print_token(token, as_json)
        return
    _require_tls_pair(tls_cert, tls_key)
    host, _, port = listen.rpartition(":")
    if not host or not port.isdigit() or int(port) > 65535:
        raise click.BadParameter(f"{listen!r} is not HOST:PORT", param_hint="--listen")
    app = ConsoleApp(db, auth.load_token_hash(token_file), secure_cookie=bool(tls_cert))
    server = make_server(app, host, int(port), tls_cert=tls_cert, tls_key=tls_key)
    signal.signal(signal.SIGTERM, lambda signum, frame: threading.Thread(target=server.shutdown, daemon=True).start())
    scheme = "https" if tls_cert else "http"
    console.print(f"matcher console on {scheme}://{host}:{server.server_address[1]}/ (read-only)")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


if __name__ == "__main__":
    main()
