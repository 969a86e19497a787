"""Policy settings as stored: key/value text per scope ('' for the operator's default, else a
merchant's name). The policy model (:class:`matcher.policy.Policy`) parses and validates them."""

from __future__ import annotations

from matcher import policy as policy_mod
from matcher.server.store.db import Database


class PolicyTable(Database):
    """The operator's policy settings and each merchant's overrides."""

    def policy_settings(self, scope: str = "") -> dict[str, str]:
        return dict(self.db.execute("SELECT key, value FROM policy WHERE scope = ? ORDER BY key", [scope]).fetchall())

    def effective_policy(self, merchant: str | None = None) -> policy_mod.Policy:
        current = policy_mod.Policy()
        for scope in ("",) + ((merchant,) if merchant else ()):
            for key, value in self.policy_settings(scope).items():
                current = current.with_setting(key, value)
        return current

    def set_policy(self, key: str, value: str, *, merchant: str | None = None) -> policy_mod.Policy:
        """Validate against the policy model first, so a bad value never reaches the table."""
        if merchant is not None:
            self.principal("merchant", merchant)
        self.effective_policy(merchant).with_setting(key, value)
        with self.transaction() as conn:
            conn.execute("INSERT INTO policy (scope, key, value) VALUES (?, ?, ?) "
                         "ON CONFLICT(scope, key) DO UPDATE SET value = excluded.value", [merchant or "", key, value])
        return self.effective_policy(merchant)
