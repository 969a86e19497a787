"""matcher's merchant client: run match jobs from your own machine; your raw IDs never leave it."""

from matcher_client.api import budget, match

__all__ = ["match", "budget"]
