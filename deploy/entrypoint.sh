#!/bin/sh
# The container's entrypoint: on the first `matcher serve` against an empty volume, create the
# database and the operator's keys, then run the command as given.
#
# `matcher init` prints the audit log's verifier key once, to the container log; auditors pin it
# (`matcher audit key --db /data/matcher.db` prints it again). Only `serve` initialises: a mistyped
# admin command against a missing database should fail, not create a new, empty one.
set -eu

if [ "${1:-}" = "matcher" ] && [ "${2:-}" = "serve" ]; then
    # The database serve will open: its --db, else MATCHER_DB (e.g. when --config holds the path).
    db="${MATCHER_DB:-/data/matcher.db}"
    previous=""
    for arg in "$@"; do
        case "$previous:$arg" in
            --db:*) db="$arg" ;;
            *:--db=*) db="${arg#--db=}" ;;
        esac
        previous="$arg"
    done
    if [ ! -e "$db" ]; then
        echo "first start: no database at $db, running matcher init" >&2
        # MATCHER_ORIGIN names the audit log (default matcher.<db file stem>); auditors see it.
        matcher init --db "$db" ${MATCHER_ORIGIN:+--origin "$MATCHER_ORIGIN"}
    fi
fi
exec "$@"
