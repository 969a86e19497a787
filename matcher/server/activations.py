"""The operator's side of blind activation: expiry, export to the campaign system, deletion.

Every one of these is written to the audit log; an expired or deleted audience has no rows left
to export.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Callable

from matcher.errors import InputError
from matcher.log.entries import activation_entry
from matcher.server.store import Store

Audit = Callable[[dict], None]


def expire(store: Store, audit: Audit) -> list[str]:
    """Delete every audience past its expiry, with its rows."""
    handles = store.expired_activations()
    for handle in handles:
        store.end_activation(handle, "expired")
        audit(activation_entry("expired", handle))
    return handles


def export(store: Store, audit: Audit, handle: str, out: Path) -> int:
    """Write the platform's own member ids of an active audience to CSV (or Parquet by extension)."""
    expire(store, audit)
    activation = store.activation(handle)
    if activation["state"] != "active":
        raise InputError(f"activation {handle} is {activation['state']}; its rows are gone and cannot be exported")
    batches = store.activation_member_ids(handle)
    if out.suffix.lower() in (".parquet", ".pq"):
        count = _write_parquet(out, batches)
    else:
        with out.open("w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["member_id"])
            count = 0
            for batch in batches:
                writer.writerows([m] for m in batch)
                count += len(batch)
    audit(activation_entry("exported", handle, rows=count))
    return count


def delete(store: Store, audit: Audit, handle: str) -> None:
    activation = store.activation(handle)
    if activation["state"] != "active":
        raise InputError(f"activation {handle} is already {activation['state']}")
    store.end_activation(handle, "deleted")
    audit(activation_entry("deleted", handle))


def _write_parquet(out: Path, batches) -> int:
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise InputError("writing Parquet needs pyarrow", hint="pip install 'matcher[parquet]', or export to .csv") from None
    members = [m for batch in batches for m in batch]
    pq.write_table(pa.table({"member_id": members}), out)
    return len(members)
