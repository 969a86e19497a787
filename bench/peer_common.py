"""What the peer scripts share. They run in their own interpreters (each peer pins its own
dependencies) with ``bench/`` as the script directory, so they import this as ``peer_common``;
it needs nothing beyond the standard library."""

from __future__ import annotations

import resource


def peak_rss_mib() -> float | None:
    """This process's peak RSS: VmHWM, not ru_maxrss (after fork+exec ru_maxrss can report the parent's size)."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
