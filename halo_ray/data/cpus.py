"""How many CPUs this process may use, for the data code's worker pools."""

from __future__ import annotations

import os


def usable_cpus() -> int:
    """CPUs this process may run on: its affinity where the OS reports one (a ``taskset``, a
    container's or a batch job's cpuset), not every CPU of the machine."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


__all__ = ["usable_cpus"]
