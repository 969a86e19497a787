"""What the auditor remembers between runs: one JSON file, trusted, kept where the operator cannot write."""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from matcher.errors import InputError
from matcher.log.merkle import EMPTY_ROOT

__all__ = ["STATE_VERSION", "AuditState"]

STATE_VERSION = 1


@dataclass
class AuditState:
    """Everything needed to continue verification without refetching old entries; a JSON file.

    ``compact`` holds the right-edge perfect subtrees of the verified tree as
    ``[level, index, hex hash]``; with them new entries extend the tree exactly as the log does.
    ``merchants`` holds, per merchant, the ε ledger that budget windows still need (rows of
    :class:`~matcher_client.audit.rules.LedgerItem`, only jobs that spent ε), the policy last
    seen in force and running counts. The file is trusted: keep it where the operator cannot
    write.
    """

    verifier_key: str | None = None
    origin: str | None = None
    checkpoint: str | None = None
    size: int = 0
    root: str = EMPTY_ROOT.hex()
    compact: list[list] = field(default_factory=list)
    merchants: dict[str, dict[str, Any]] = field(default_factory=dict)
    # Entry index of the latest `policy` entry per scope ("" = operator default, else a merchant).
    policy_announced: dict[str, int] = field(default_factory=dict)
    entry_types: dict[str, int] = field(default_factory=dict)

    @classmethod
    def load(cls, path: str | Path) -> AuditState:
        """The saved state, or a fresh one when the file does not exist yet."""
        path = Path(path)
        if not path.exists():
            return cls()
        try:
            data = json.loads(path.read_text())
            if data.get("version") != STATE_VERSION:
                raise InputError(f"{path} is audit state version {data.get('version')}, expected {STATE_VERSION}")
            data.pop("version")
            return cls(**data)
        except (ValueError, TypeError, AttributeError) as err:
            raise InputError(f"{path} is not a matcher-audit state file: {err}",
                             hint="pass another --state file, or delete it to start over") from None

    def save(self, path: str | Path) -> None:
        """Atomically: a crash mid-write must not leave a state that trusts nothing (or too much)."""
        path = Path(path)
        data = {"version": STATE_VERSION, **{k: getattr(self, k) for k in self.__dataclass_fields__}}
        fd, tmp = tempfile.mkstemp(dir=path.parent or ".", prefix=f".{path.name}.")
        try:
            with os.fdopen(fd, "w") as f:
                json.dump(data, f, indent=1, sort_keys=True)
                f.write("\n")
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
