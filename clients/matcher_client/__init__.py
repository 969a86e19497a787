"""matcher's merchant client: run match jobs from your own machine; your raw IDs never leave it.

    >>> from matcher_client import match
    >>> report = match("platform.example:50051", token, df, id_column="phone", id_type="phone")
    >>> report.to_pandas()
"""

from matcher_client.api import activate, activations, budget, check_server, match, read_list
from matcher_client.report import Report

__all__ = ["match", "activate", "activations", "budget", "check_server", "read_list", "Report"]
