"""Summarize a py-spy ``--format raw`` profile (collapsed stacks) as top hotspots, JSON out.

    python -m bench.pyspy_top PROFILE.txt [--top 15]

Each line of the profile is ``frame;frame;...;leaf COUNT``; with ``--subprocesses`` the first
frame names the process (``process 123:"cmd"``). Reports samples per process, the leaf
functions with the most samples ("self"), and the functions on the most stacks ("inclusive"),
as percentages of all non-idle samples. ``--exclude "matcher serve"`` drops another process's
stacks (the client's profile of ``bench.e2e`` also sees the server, which is its child). Line numbers are dropped so one function is one row.
"""

from __future__ import annotations

import argparse
import json
import re
from collections import Counter

_LINE = re.compile(r"^(.*) (\d+)$")
_FRAME_LINE = re.compile(r":\d+\)$")


def _function(frame: str) -> str:
    """``encrypt_batch (matcher/crypto/paillier.py:412)`` -> ``encrypt_batch (matcher/crypto/paillier.py)``."""
    frame = _FRAME_LINE.sub(")", frame.strip())
    return re.sub(r"\(/.*?/(site-packages|main|lib/python3\.\d+)/", "(", frame)


def _process_kind(frame: str) -> str:
    if not frame.startswith("process "):
        return "main"
    cmd = frame.split(":", 1)[1] if ":" in frame else frame
    if "spawn_main" in cmd or "multiprocessing-fork" in cmd:
        return "pool worker"
    if "resource_tracker" in cmd:
        return "resource tracker"
    return "main"


def summarize(path: str, top: int = 15, exclude: tuple[str, ...] = ()) -> dict:
    per_process: Counter[str] = Counter()
    self_time: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    with open(path) as profile:
        for line in profile:
            match = _LINE.match(line.rstrip("\n"))
            if not match:
                continue
            stack, count = match.group(1), int(match.group(2))
            frames = stack.split(";")
            # Nested subprocesses appear as several leading "process PID:cmd" frames; the last one
            # is the process that was sampled. Stacks of excluded processes are dropped.
            processes = []
            while frames and frames[0].startswith("process "):
                processes.append(frames.pop(0))
            if any(word in proc for proc in processes for word in exclude):
                continue
            kind = _process_kind(processes[-1]) if processes else "main"
            if frames and frames[0].startswith("thread "):
                frames = frames[1:]
            if not frames:
                continue
            total += count
            per_process[kind] += count
            self_time[f"[{kind}] {_function(frames[-1])}"] += count
            for name in {f"[{kind}] {_function(f)}" for f in frames}:
                inclusive[name] += count

    def pct(counter: Counter[str]) -> list[dict]:
        return [{"function": name, "samples": n, "percent": round(100 * n / total, 1)}
                for name, n in counter.most_common(top)]

    return {
        "profile": path,
        "excluded_processes": list(exclude),
        "samples": total,
        "by_process_kind": {k: {"samples": n, "percent": round(100 * n / max(total, 1), 1)}
                            for k, n in per_process.most_common()},
        "top_self": pct(self_time),
        "top_inclusive": pct(inclusive),
    }


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.pyspy_top")
    parser.add_argument("profile")
    parser.add_argument("--top", type=int, default=15)
    parser.add_argument("--exclude", action="append", default=[],
                        help="drop stacks of processes whose command line contains this (repeatable)")
    args = parser.parse_args()
    print(json.dumps(summarize(args.profile, args.top, tuple(args.exclude)), indent=2))


if __name__ == "__main__":
    main()
