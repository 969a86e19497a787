"""Release policy (being split into one module per concern)."""

from matcher.policy.settings import *  # noqa: F401,F403
