"""``matcher-client``: the merchant's command line, a thin layer over :mod:`matcher_client.api`."""

from __future__ import annotations

import json
from pathlib import Path

import click
from rich.console import Console
from rich.table import Table

from matcher import ids
from matcher._cli import ErrorReportingGroup, when
from matcher.errors import InputError
from matcher_client import api
from matcher_client._progress import MODES, progress
from matcher_client.report import SUPPRESSED_LEGEND, Report

console = Console(stderr=True)
server_option = click.option("--server", required=True, help="HOST:PORT of the matcher server.")
token_option = click.option("--token", envvar="MATCHER_TOKEN", required=True,
                            help="Your bearer token (or set MATCHER_TOKEN).")
cache_option = click.option("--cache", default="auto", show_default=True,
                            help="Where hashed IDs are kept between runs, so a list that comes back with a few "
                                 "new rows hashes only those: auto (~/.matcher-client/hash-cache, or "
                                 "$MATCHER_CLIENT_HOME's; one file per ID kind, 0600, as sensitive as your "
                                 "lists), a directory, a file, or none.")
json_option_client = click.option("--json", "as_json", is_flag=True, help="Print JSON.")
tls_option = click.option("--tls-ca", type=click.Path(exists=True, dir_okay=False),
                          help="CA certificate of a TLS server (plaintext when omitted).")


def list_job_options(command):
    """The options every job on a list takes (match, activate): server, token, file and how to read it."""
    for option in reversed([
        server_option, token_option, click.argument("file"),
        click.option("--id-column", "id_columns", required=True, multiple=True, metavar="COLUMN[:TYPE]",
                     help="An identifier column and its type: phone, email, sha256 (hashed phones; "
                          "COLUMN:sha256:email for hashed emails) or opaque (an OpenID, a member number). "
                          "Repeat it for customers known by several: --id-column phone:phone --id-column "
                          "email:email --id-column openid:opaque (each row then sends each of its valid IDs; "
                          "blank cells are fine). A bare COLUMN takes its type from --id-type."),
        click.option("--id-type", default=None, type=click.Choice(["phone", "email", "sha256", "opaque"]),
                     help="The type of a bare --id-column COLUMN."),
        click.option("--label-column", default=None, help="Column with a small label per row (store, tier, ...)."),
        click.option("--delimiter", default=None, metavar="CHAR",
                     help="CSV delimiter, e.g. ';' or tab (default: sniffed from the header line: , ; tab |)."),
        click.option("--json", "json_out", type=click.Path(dir_okay=False, allow_dash=True, path_type=Path),
                     help="Write the result here as JSON; - for stdout (then progress is JSON lines on stderr "
                          "and no table is printed, unless --progress bar: the table goes to stderr)."),
        click.option("--region", default="CN", show_default=True,
                     help="Default region for phones without a country code."),
        click.option("--hashed-kind", default="phone", type=click.Choice(["phone", "email"]),
                     help="For a sha256 column: what was hashed (or write COLUMN:sha256:email)."),
        tls_option,
        click.option("--timeout", type=float, default=None, help="Give up after this many seconds."),
        cache_option,
        click.option("--quiet", is_flag=True, help="No progress bars (same as --progress none)."),
        click.option("--progress", "progress_mode", type=click.Choice(MODES), default=None,
                     help="bar: bars with rates and ETA on stderr (the default); json: one JSON object per line "
                          "on stderr, {phase, done, total, rate, eta_s} (the default with --json -); none."),
    ]):
        command = option(command)
    return command


def _to_stdout(json_out: Path | None) -> bool:
    return json_out is not None and str(json_out) == "-"


def _progress_mode(mode: str | None, quiet: bool, json_out: Path | None) -> str:
    if quiet:
        return "none"
    return mode or ("json" if _to_stdout(json_out) else "bar")


def _read_checked(server: str, token: str, tls_ca: str | None, timeout: float | None, file: str,
                  id_columns: list[ids.IdColumn], label_column: str | None, delimiter: str | None, region: str,
                  mode: str):
    """The server and the token first (a second), then the list (the slow part); and the server's policy."""
    with progress(mode, console) as notify:
        merchant_list, policy = api.read_checked(server, token, file, id_columns=id_columns,
                                                 label_column=label_column, delimiter=delimiter, region=region,
                                                 tls_ca=tls_ca, progress=notify, timeout=timeout)
    if mode != "json":
        console.print(list_summary(merchant_list), highlight=False)
    return merchant_list, policy


def list_summary(merchant_list: api.MerchantList) -> str:
    """One line on what was read: rows, unique IDs, duplicates and what was invalid (per column, for
    several identifier columns)."""
    prepared = merchant_list.prepared
    if not prepared.columns:
        return (f"{prepared.rows} rows: {len(prepared.keys)} unique ids, {prepared.duplicates} duplicates, "
                f"{sum(prepared.invalid.values())} invalid {_reasons(prepared.invalid)}")
    per_column = ", ".join(f"{name}: {n}" for name, n in prepared.ids_by_column().items())
    empty = prepared.invalid.get("empty", 0)
    line = (f"{prepared.rows} rows: {len(prepared.keys)} unique ids ({per_column}) from {prepared.rows_sent} rows, "
            f"{prepared.duplicates} duplicates, {prepared.invalid_rows} rows without a valid id"
            + (f" ({empty} blank)" if empty else ""))
    if prepared.invalid_by_column:
        line += "; invalid cells: " + ", ".join(f"{column} {sum(bad.values())} {_reasons(bad)}"
                                                for column, bad in prepared.invalid_by_column.items())
    return line


def _write_json(json_out: Path, result: dict) -> None:
    text = json.dumps(result, indent=2, ensure_ascii=False) + "\n"
    if _to_stdout(json_out):
        click.echo(text, nl=False)
    else:
        json_out.write_text(text, encoding="utf-8")


def _check_plot(plot: Path | None) -> None:
    """--plot needs matplotlib: say so before the job runs, not after."""
    if plot is not None:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            raise InputError("--plot needs matplotlib", hint="pip install 'matcher[notebook]'") from None


def _save_plot(report: Report, plot: Path) -> None:
    from matplotlib.figure import Figure  # no pyplot: no GUI backend, no global state

    labels, segments = len(report["labels"]), max(1, len(report.segments))
    figure = Figure(figsize=(8, 1.6 + 0.4 * segments * max(1, labels)), layout="constrained")
    report.plot(ax=figure.subplots())
    try:
        figure.savefig(plot, dpi=120)
    except (OSError, ValueError) as err:
        raise InputError(f"cannot write the plot to '{plot}': {err}",
                         hint="give a writable path ending in .png, .svg or .pdf") from None


@click.group(cls=ErrorReportingGroup)
@click.version_option(package_name="matcher")
def main() -> None:
    """Match your customer list against a platform's audience without revealing it."""


@main.command()
@list_job_options
@click.option("--plot", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also draw the segment rates per label to this image (.png, .svg, .pdf; needs matplotlib).")
@click.option("--count-only", is_flag=True,
              help="Only how many of your IDs are members (per label): no segments, the fastest job.")
@click.option("--segments", "segment_names", default=None, metavar="A,B,...",
              help="Count only these platform segments (default: all). Each segment asked for costs one more "
                   "pass over the members that hold it.")
@click.option("--protocol", type=click.Choice(["secure", "balanced", "unbalanced", "semi-honest"]), default="secure",
              show_default=True,
              help="secure: the server picks balanced or unbalanced by the sizes (README, 'Unbalanced mode'); "
                   "unbalanced: the platform keeps your blinded copy of its audience, so later jobs cost what "
                   "your list costs; semi-honest: the older protocol, safe only against honest clients, run only "
                   "when the operator enabled it.")
@click.option("--enrollment-key", type=click.Path(dir_okay=False), default=None,
              help="The unbalanced protocol's key file (default: one per server and token under "
                   "~/.matcher-client or $MATCHER_CLIENT_HOME), encrypted with the token.")
def match(server: str, token: str, file: str, id_columns: tuple[str, ...], id_type: str | None,
          label_column: str | None,
          delimiter: str | None, json_out: Path | None, region: str, hashed_kind: str, tls_ca: str | None,
          timeout: float | None, cache: str | None, quiet: bool, progress_mode: str | None, plot: Path | None,
          count_only: bool, segment_names: str | None, protocol: str, enrollment_key: str | None) -> None:
    """Match the IDs in FILE and print the report.

    The IDs are in the --id-column(s): one (--id-column phone:phone), or several for customers known
    by more than one (--id-column phone:phone --id-column email:email --id-column openid:opaque).

    FILE is a CSV file with a header row (delimiter , ; tab or |, sniffed from the header; or
    --delimiter), gzip-compressed CSV (.csv.gz), Parquet (.parquet, needs pyarrow), or - for
    standard input (any of these). The server and the token are checked before the file is read.

    \b
    --json report.json   the report JSON (design.md) in a file
    --json -             on stdout, and progress as JSON lines on stderr (no table)
    --plot rates.png     segment rates per label, as a chart"""
    segments = [s.strip() for s in segment_names.split(",") if s.strip()] if segment_names is not None else None
    if count_only and segments:
        raise click.UsageError("--count-only and --segments ask for different things; give one")
    if protocol == "semi-honest" and (count_only or segments is not None):
        raise click.UsageError("the semi-honest protocol always counts every segment")
    columns = ids.parse_id_columns(id_columns, id_type, hashed_kind=hashed_kind)
    _check_plot(plot)
    mode = _progress_mode(progress_mode, quiet, json_out)
    merchant_list, policy = _read_checked(server, token, tls_ca, timeout, file, columns, label_column, delimiter,
                                          region, mode)
    with progress(mode, console) as notify, api.explained_refusals(policy, merchant_list):
        report = api.run_job(server, token, merchant_list, tls_ca=tls_ca, progress=notify, timeout=timeout,
                             cache=cache, count_only=count_only, segments=segments,
                             protocol="semi_honest" if protocol == "semi-honest" else "secure",
                             mode="auto" if protocol in ("secure", "semi-honest") else protocol,
                             enrollment_key=enrollment_key)
    if json_out:
        _write_json(json_out, report)
    if plot:
        _save_plot(report, plot)
    if mode == "json":
        return  # a program is reading: stdout has the JSON, stderr had the progress lines
    # The table on stdout, unless stdout carries the JSON.
    Console(width=max(80, _table_width(report)), stderr=_to_stdout(json_out)).print(report_table(report))
    written = [f"report written to {json_out}"] if json_out and not _to_stdout(json_out) else []
    written += [f"plot written to {plot}"] if plot else []
    console.print(f"job {report['job_id']} ({report['protocol'].replace('_', '-')} protocol): "
                  f"ε spent {report['epsilon_spent']:g}, ε left {report['epsilon_left']:g}; "
                  f"logged at leaf {report['leaf_index']}" + "".join(f"; {w}" for w in written), highlight=False)


def _reasons(invalid: dict[str, int]) -> str:
    return "(" + ", ".join(f"{k}: {v}" for k, v in sorted(invalid.items())) + ")" if invalid else ""


def _table_width(report: dict) -> int:
    """Wide enough that no label or segment name is cut (rich cuts to the terminal, 80 when piped)."""
    segments = report.get("segments") or []
    first = max([len("matched"), *map(len, segments)]) + 3
    return first + sum(max(len(label), 9) + 3 for label in report["labels"]) + 1


def report_table(report: dict) -> Table:
    """Segments down, labels across; suppressed cells (noisy value below the threshold) show as '—',
    with a legend under the table saying so."""
    labels = list(report["labels"])
    cells = [c for lb in labels for c in [report["labels"][lb]["matched"], *report["labels"][lb]["segments"].values()]]
    title = f"matcher report — job {report['job_id'][:12]}, {report['list_size']} ids"
    legend = SUPPRESSED_LEGEND if None in cells else None
    table = Table(title=title, caption=legend, caption_justify="left",
                  min_width=max(len(title), len(legend or "")) + 2)
    table.add_column("")
    for label in labels:
        table.add_column(label, justify="right")
    show = lambda v: "—" if v is None else f"{v:,}"  # noqa: E731
    table.add_row("matched", *(show(report["labels"][lb]["matched"]) for lb in labels), style="bold")
    for segment in report.get("segments") or next(iter(report["labels"].values()))["segments"]:
        table.add_row(segment, *(show(report["labels"][lb]["segments"].get(segment)) for lb in labels))
    return table


@main.command()
@list_job_options
@click.option("--where", "where_expr", required=True,
              help="Segments the slice must satisfy, e.g. \"member & paid_with_platform & !favourited_mini_program\".")
@click.option("--label", default=None, help="Only the matches of this label.")
@click.option("--name", required=True, help="Campaign name the platform sees, e.g. spring-coupon.")
def activate(server: str, token: str, file: str, id_columns: tuple[str, ...], id_type: str | None,
             label_column: str | None,
             delimiter: str | None, json_out: Path | None, region: str, hashed_kind: str, tls_ca: str | None,
             timeout: float | None, cache: str | None, quiet: bool, progress_mode: str | None, where_expr: str,
             label: str | None, name: str) -> None:
    """Let the platform target your matches in FILE that satisfy --where (opt-in: the platform learns
    which of ITS members they are; you learn only a noisy size). FILE as for `match` (CSV, .csv.gz,
    Parquet, - for stdin; --id-column as for `match`)."""
    columns = ids.parse_id_columns(id_columns, id_type, hashed_kind=hashed_kind)
    mode = _progress_mode(progress_mode, quiet, json_out)
    merchant_list, policy = _read_checked(server, token, tls_ca, timeout, file, columns, label_column, delimiter,
                                          region, mode)
    with progress(mode, console) as notify, api.explained_refusals(policy, merchant_list):
        result = api.activate(server, token, merchant_list, name=name, where=where_expr, label=label, tls_ca=tls_ca,
                              progress=notify, timeout=timeout, cache=cache)
    if json_out:
        _write_json(json_out, result)
    if mode != "json":
        console.print(f"activation {result['handle']} '{name}': about {result['noisy_size']:,} members "
                      f"(noisy), expires {when(result['expires_at'])}")
    if not _to_stdout(json_out):
        click.echo(result["handle"])


@main.command()
@server_option
@token_option
@tls_option
@json_option_client
def activations(server: str, token: str, tls_ca: str | None, as_json: bool) -> None:
    """Your activations: handles, noisy sizes, status."""
    rows = api.activations(server, token, tls_ca=tls_ca)
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    table = Table(title="activations")
    for column in ("handle", "name", "where", "label", "size (noisy)", "expires", "state"):
        table.add_column(column)
    for a in rows:
        table.add_row(a["handle"], a["name"], a["where"], a["label"] or "all", f"{a['noisy_size']:,}",
                      when(a["expires_at"]), a["state"])
    Console().print(table)


@main.command()
@server_option
@token_option
@tls_option
def budget(server: str, token: str, tls_ca: str | None) -> None:
    """Show your privacy budget."""
    click.echo(json.dumps(api.budget(server, token, tls_ca=tls_ca), indent=2))


if __name__ == "__main__":
    main()
