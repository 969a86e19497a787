"""A pool sized by the cores this process may use (taskset, a container's cpuset), not the machine's."""

import os
import subprocess
import sys

import pytest

from matcher.crypto.kernels import usable_cores

pytestmark = pytest.mark.skipif(not hasattr(os, "sched_getaffinity"), reason="no CPU affinity on this OS")


def test_usable_cores_follows_affinity():
    assert usable_cores() == len(os.sched_getaffinity(0))


def test_a_process_pinned_to_one_core_gets_no_pool():
    """Pinned to one core, local_kernels gives the in-process kernels and PoolKernels one worker,
    where os.cpu_count() (the machine's count) would have started a pool of every core."""
    one_core = min(os.sched_getaffinity(0))
    code = (
        "import os; os.sched_setaffinity(0, {%d});"
        "from matcher.crypto.kernels import Kernels, PoolKernels, local_kernels, usable_cores;"
        "assert usable_cores() == 1;"
        "assert type(local_kernels(True)) is Kernels;"
        "pool = PoolKernels(); assert pool.workers == 1; pool.close(); print('ok')" % one_core
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"
