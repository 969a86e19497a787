"""All micro-benchmarks in one JSON object, with a description of the machine.

``python -m bench.micro [seconds]`` runs :func:`bench.micro_group.run` (hash-to-curve and X25519
per backend) and :func:`bench.micro_paillier.run` (packed Paillier on each side) and prints one
JSON object::

    {"machine": {...}, "micro_group": {...}, "micro_paillier": {...}}

A micro-benchmark that cannot be imported or fails is recorded as ``{"unavailable": reason}``
instead of stopping the others.
"""

from __future__ import annotations

import importlib
import json
import os
import platform
import sys
import time
import traceback


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def machine_info() -> dict:
    """CPU, cores, memory, Python and which crypto backends this process can use."""
    flags = cpu_flags()
    info: dict = {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "avx512ifma": "avx512ifma" in flags,
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "load_average": [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None,
    }
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemTotal:"):
                    info["memory_gib"] = round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    backends: dict = {}
    try:
        from matcher.crypto import group

        backends["x25519"] = list(group.available_backends())
    except Exception as err:  # a broken backend must not hide the rest of the report
        backends["x25519"] = f"unavailable: {err!r}"
    for module in ("gmpy2", "phe", "cryptography", "psutil", "private_set_intersection.python"):
        try:
            mod = importlib.import_module(module)
            backends[module] = getattr(mod, "__version__", None) or getattr(mod, "version", None) or "present"
            if not isinstance(backends[module], str):
                backends[module] = str(backends[module])
        except Exception:
            backends[module] = None
    info["backends"] = backends
    return info


def _run_one(module_name: str, seconds: float) -> dict:
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        return {"unavailable": f"cannot import {module_name}: {err}"}
    run = getattr(module, "run", None)
    if run is None:
        return {"unavailable": f"{module_name} has no run()"}
    started = time.perf_counter()
    try:
        result = run(seconds)
    except Exception as err:
        return {"unavailable": f"{module_name}.run failed: {err!r}",
                "traceback": traceback.format_exc(limit=5)}
    if isinstance(result, dict):
        result.setdefault("wall_s", round(time.perf_counter() - started, 2))
    return result


def run(seconds: float = 1.0) -> dict:
    return {
        "benchmark": "micro",
        "machine": machine_info(),
        "micro_group": _run_one("bench.micro_group", seconds),
        "micro_paillier": _run_one("bench.micro_paillier", seconds),
    }


def main(argv: list[str]) -> None:
    seconds = float(argv[0]) if argv else 1.0
    print(json.dumps(run(seconds), indent=2))


if __name__ == "__main__":
    main(sys.argv[1:])
